"""Keyed pseudonyms from the secure world: HMAC-SHA256 under a key that never leaves it.

`TeePseudonymizer(open_session)` is the callable the desensitizer takes: (domain, values) -> 32-byte
HMACs, one PSEUDONYM exchange per value it has not seen. ``open_session`` gives a chained session
(``ChainAccess.session``): one is opened per call that has misses and closed after it, so a
stream being ingested for hours holds the chain only for the moments it needs the secure world.
Results are cached in memory (bounded), because identifiers repeat batch after batch (a handful
of operators, one device) and each exchange costs a chained round trip; a pseudonym is released
data anyway, so caching it in the normal world reveals nothing the batches do not.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from tee_sim.abi.frame import Value
from tee_sim.abi.ids import MAX_PSEUDONYM_INPUT, Cmd

from ..errors import TeeProtocolError
from .session import ChainedSession

PSEUDONYM_SIZE = 32


class TeePseudonymizer:
    def __init__(self, open_session: Callable[[], ChainedSession], cache_size: int = 4096) -> None:
        self.open_session = open_session
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self.exchanges = 0
        self.sessions = 0  # chained sessions opened: one per call that missed the cache

    def __call__(self, domain: int, values: list[bytes]) -> list[bytes]:
        for v in values:
            if len(v) > MAX_PSEUDONYM_INPUT:
                # Longer identifiers are not expected; refuse rather than truncate (truncation could link two values).
                raise ValueError(f"identifier of {len(v)} bytes; the secure world takes at most {MAX_PSEUDONYM_INPUT}")
        known = {v: self._cache[(domain, v)] for v in values if (domain, v) in self._cache}
        missing = [v for v in dict.fromkeys(values) if v not in known]
        if missing:
            self.sessions += 1
            with self.open_session() as session:
                known.update((v, self._exchange(session, domain, v)) for v in missing)
        for v in dict.fromkeys(values):
            self._cache[(domain, v)] = known[v]
            self._cache.move_to_end((domain, v))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return [known[v] for v in values]

    def _exchange(self, session: ChainedSession, domain: int, value: bytes) -> bytes:
        resp = session.invoke(Cmd.PSEUDONYM, (value, Value(domain, 0), PSEUDONYM_SIZE, None))
        out = resp.params[2]
        if not isinstance(out, bytes) or len(out) != PSEUDONYM_SIZE:
            raise TeeProtocolError("PSEUDONYM answer is not a 32-byte HMAC")
        self.exchanges += 1
        return out
