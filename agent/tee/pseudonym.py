"""Keyed pseudonyms from the secure world: HMAC-SHA256 under a key that never leaves it.

`TeePseudonymizer(session)` is the callable the desensitizer takes: (domain, values) -> 32-byte
HMACs, one PSEUDONYM exchange per value it has not seen. Results are cached in memory (bounded),
because identifiers repeat batch after batch (a handful of operators, one device) and each
exchange costs a chained round trip; a pseudonym is released data anyway, so caching it in the
normal world reveals nothing the batches do not.
"""

from __future__ import annotations

from collections import OrderedDict

from tee_sim.abi.frame import Value
from tee_sim.abi.ids import MAX_PSEUDONYM_INPUT, Cmd

from ..errors import TeeProtocolError
from .session import ChainedSession

PSEUDONYM_SIZE = 32


class TeePseudonymizer:
    def __init__(self, session: ChainedSession, cache_size: int = 4096) -> None:
        self.session = session
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self.exchanges = 0

    def __call__(self, domain: int, values: list[bytes]) -> list[bytes]:
        return [self.one(domain, v) for v in values]

    def one(self, domain: int, value: bytes) -> bytes:
        key = (domain, value)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if len(value) > MAX_PSEUDONYM_INPUT:
            # Longer identifiers are not expected; refuse rather than truncate (truncation could link two values).
            raise ValueError(f"identifier of {len(value)} bytes; the secure world takes at most {MAX_PSEUDONYM_INPUT}")
        resp = self.session.invoke(Cmd.PSEUDONYM, (value, Value(domain, 0), PSEUDONYM_SIZE, None))
        out = resp.params[2]
        if not isinstance(out, bytes) or len(out) != PSEUDONYM_SIZE:
            raise TeeProtocolError("PSEUDONYM answer is not a 32-byte HMAC")
        self.exchanges += 1
        self._cache[key] = out
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
