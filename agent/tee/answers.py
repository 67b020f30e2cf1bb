"""When two answers to the same request are "the same": the comparison rule of `aitn tee replay`.

A replay sends a capture's requests to a fresh secure world: a new device key, a new pairing
secret, new session nonces and challenges. So an answer is compared field by field, each field in
one of four classes (``SLOTS`` lists every response parameter that is not EXACT):

- EXACT: must be equal. The header's kind, response bit, command, request id, parameter types,
  result and origin; value outputs (flags, lockout seconds, time-lock, k); and the outputs that
  depend only on the request (PROOF's signed digest, UNSEAL's plaintext).
- HEIGHT: a chain height. Compared relative to the committed height each world reported in its
  first OPEN_SESSION answer (the fresh chain is brought to the capture's height when it can be,
  so the offset is usually 0).
- FRESH: depends on the key, a nonce or the pairing secret (session nonce, public key and address,
  pairing key, SYNC ack, signature, pseudonym, sealed blob): compared by length only. The length
  still tells a re-delivered block (SYNC's 32 + 45 bytes) from a plain ack (32).
- VARIABLE: a length that legitimately varies: the challenge (its k heights depend on the chain's
  length and on chance) must decode with 1..4 heights; the STATUS document must parse and agree on
  ``ta_uuid``, ``ta_version``, ``key``, ``paired``, ``timelock`` and whether there is a state error.

Session ids are the secure world's choice and are not compared; nor is the CRC. ``strict``
additionally compares heights absolutely, the body length (so the challenge's k too) and the
STATUS document's set of keys: the fresh world must then be indistinguishable except for what its
new key, nonces and pairing make different. Pure: bytes in, a list of differences out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tee_sim.abi import block as blk
from tee_sim.abi import frame as fr
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import (FLAG_KEY, FLAG_LOCKED, FLAG_PAIRED, FLAG_STATE_ERROR, Cmd, Origin, ParamType,
                             TeecResult, split_param_types)

EXACT, HEIGHT, FRESH, VARIABLE = "exact", "height", "fresh", "variable"

#: (request kind, command or None) -> {slot: class} for response parameters that are not EXACT.
SLOTS: dict[tuple[int, int | None], dict[int, str]] = {
    (Kind.OPEN_SESSION, None): {1: HEIGHT, 2: FRESH},
    (Kind.INVOKE, Cmd.STATUS): {1: VARIABLE},
    (Kind.INVOKE, Cmd.GET_PUBKEY): {0: FRESH, 1: FRESH},
    (Kind.INVOKE, Cmd.CREATE_KEY): {0: FRESH},
    (Kind.INVOKE, Cmd.PAIR): {2: FRESH},
    (Kind.INVOKE, Cmd.SYNC): {2: FRESH, 3: HEIGHT},
    (Kind.INVOKE, Cmd.SIGN): {2: VARIABLE},
    (Kind.INVOKE, Cmd.PROOF): {1: FRESH},
    (Kind.INVOKE, Cmd.PSEUDONYM): {2: FRESH},
    (Kind.INVOKE, Cmd.SEAL): {1: FRESH},
}
_STATUS_KEYS = ("ta_uuid", "ta_version", "key", "paired", "timelock")
#: Value outputs whose ``a`` is a set of flags: shown by name in a difference.
_FLAG_SLOTS = {(Kind.OPEN_SESSION, None, 3), (Kind.INVOKE, Cmd.STATUS, 0)}
_FLAGS = ((FLAG_KEY, "KEY"), (FLAG_PAIRED, "PAIRED"), (FLAG_LOCKED, "LOCKED"), (FLAG_STATE_ERROR, "STATE_ERROR"))


@dataclass(frozen=True)
class Difference:
    field: str
    captured: str
    replayed: str


@dataclass(frozen=True)
class Bases:
    """Each world's committed height at its first OPEN_SESSION answer (HEIGHT fields are relative to it)."""

    captured: int = 0
    replayed: int = 0


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"0x{value:x}"


def _origin(value: int) -> str:
    return "none" if value == 0 else _name(Origin, value)


def slot_class(f: Frame, slot: int) -> str:
    base = f.kind & ~Kind.RESPONSE
    key = (base, None) if base == Kind.OPEN_SESSION else (base, f.command)
    return SLOTS.get(key, {}).get(slot, EXACT)


def _value_text(f: Frame, slot: int, v: Value) -> str:
    base = f.kind & ~Kind.RESPONSE
    if (base, None if base == Kind.OPEN_SESSION else f.command, slot) in _FLAG_SLOTS:
        names = " ".join(n for bit, n in _FLAGS if v.a & bit) or "none"
        return f"flags {names}, b={v.b}"
    return f"a={v.a} b={v.b}"


def _u64(v: Value) -> int:
    return v.a | v.b << 32


def _challenge(data: bytes) -> blk.Challenge | None:
    try:
        return blk.Challenge.decode(data)
    except ValueError:
        return None


def _variable(f: Frame, slot: int, c: bytes, r: bytes, strict: bool, where: str) -> list[Difference]:
    if f.command == Cmd.SIGN:
        cc, rc = _challenge(c), _challenge(r)
        if cc is None or rc is None:
            return [Difference(where + " challenge", "decodes" if cc else "malformed", "decodes" if rc else "malformed")]
        if not 1 <= len(rc.heights) <= blk.CHALLENGE_K:  # (strict: the body length already fixed k)
            return [Difference(where + " challenge k", str(len(cc.heights)), str(len(rc.heights)))]
        return []
    try:
        cs, rs = json.loads(c), json.loads(r)
    except ValueError:
        return [] if c == r else [Difference(where + " status", c[:60].decode(errors="replace"),
                                             r[:60].decode(errors="replace"))]
    out = [Difference(f"{where} status.{k}", json.dumps(cs.get(k)), json.dumps(rs.get(k)))
           for k in _STATUS_KEYS if cs.get(k) != rs.get(k)]
    if (cs.get("state_error") is None) != (rs.get("state_error") is None):
        out.append(Difference(where + " status.state_error", json.dumps(cs.get("state_error")),
                              json.dumps(rs.get("state_error"))))
    if strict and set(cs) != set(rs):
        out.append(Difference(where + " status keys", ",".join(sorted(set(cs) - set(rs))) or "-",
                              ",".join(sorted(set(rs) - set(cs))) or "-"))
    return out


def compare(captured: bytes, replayed: bytes, *, strict: bool = False, bases: Bases = Bases()) -> list[Difference]:
    """The differences between a captured answer and a replayed one, by the rule above; [] when they match."""
    try:
        c = fr.decode(captured)
    except fr.FrameError as e:
        c, c_err = None, e.reason
    try:
        r = fr.decode(replayed)
    except fr.FrameError as e:
        r, r_err = None, e.reason
    if c is None or r is None:
        if captured == replayed:
            return []
        return [Difference("frame", f"not a frame: {c_err}" if c is None else "a frame",
                           f"not a frame: {r_err}" if r is None else "a frame")]
    out: list[Difference] = []
    header = [("kind", _name(Kind, c.kind & ~Kind.RESPONSE), _name(Kind, r.kind & ~Kind.RESPONSE)),
              ("response", str(c.is_response), str(r.is_response)),
              ("command", _name(Cmd, c.command) if c.kind & ~Kind.RESPONSE == Kind.INVOKE else str(c.command),
               _name(Cmd, r.command) if r.kind & ~Kind.RESPONSE == Kind.INVOKE else str(r.command)),
              ("request_id", str(c.request_id), str(r.request_id)),
              ("result", _name(TeecResult, c.result), _name(TeecResult, r.result)),
              ("origin", _origin(c.origin), _origin(r.origin)),
              ("param_types", f"0x{c.types:04x}", f"0x{r.types:04x}")]
    if strict:
        header.append(("body_len", str(len(captured) - fr.HEADER_SIZE), str(len(replayed) - fr.HEADER_SIZE)))
    out += [Difference(k, a, b) for k, a, b in header if a != b]
    if out:
        return out  # parameters are only comparable between frames of the same shape
    for slot, t in enumerate(split_param_types(c.types)):
        if t == ParamType.NONE:
            continue
        pc, pr, where = c.params[slot], r.params[slot], f"p{slot}"
        cls = slot_class(c, slot)
        if isinstance(pc, Value) and isinstance(pr, Value):
            if cls == HEIGHT:
                hc, hr = _u64(pc), _u64(pr)
                if strict and hc != hr:
                    out.append(Difference(where + " height", str(hc), str(hr)))
                elif not strict and hc - bases.captured != hr - bases.replayed:
                    out.append(Difference(where + " height (relative)", f"{hc} = {bases.captured}{hc - bases.captured:+d}",
                                          f"{hr} = {bases.replayed}{hr - bases.replayed:+d}"))
            elif pc != pr:
                out.append(Difference(where + " value", _value_text(c, slot, pc), _value_text(r, slot, pr)))
        elif isinstance(pc, bytes) and isinstance(pr, bytes):
            if cls == VARIABLE:
                out += _variable(c, slot, pc, pr, strict, where)
            elif len(pc) != len(pr):
                out.append(Difference(where + " length", str(len(pc)), str(len(pr))))
            elif cls == EXACT and pc != pr:
                out.append(Difference(where + " bytes", pc.hex()[:64], pr.hex()[:64]))
        elif pc != pr:
            out.append(Difference(where, repr(pc), repr(pr)))
    return out
