"""The uplink's messages: CBOR maps with a schema, and the signed item envelope.

Every message is a CBOR map with short text keys. ``decode(kind, data)`` parses and checks it
against its schema (required keys, types, ranges, no unknown keys) and raises MessageError naming
the field, so the node can answer 4.00 with the reason. Encoding is canonical CBOR, so the same
message is always the same bytes.

Items (what the outbox stores and the node acknowledges) travel in an envelope:

    {"v": 1, "kind": "update" | "manifest" | "report", "dev": address (20 bytes), "seq": n,
     "t": unix seconds, "body": CBOR bytes of the kind's payload, "sig": 65 bytes}

``sig`` is the secure world's signature (RAW_DIGEST purpose) over ``item_digest`` =
keccak256("AITN-ITEM" || 0x01 || canonical CBOR [v, kind, dev, seq, t, sha256(body)]), so it binds
the sequence number and the bytes; the node recovers the address and compares it with the
enrolled one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import cbor2

from tee_sim.abi.digests import keccak256

from .errors import MessageError

VERSION = 1
ITEM_KINDS = ("update", "manifest", "report")
MAX_SEQ = (1 << 63) - 1
_DOMAIN = b"AITN-ITEM\x01"


@dataclass(frozen=True)
class F:
    """One field of a schema: its Python type(s), whether it must be present, and an extra check."""

    types: tuple[type, ...]
    required: bool = True
    check: Callable[[Any], str | None] | None = None  # returns a reason when the value is wrong


def _len(n: int) -> Callable[[Any], str | None]:
    return lambda v: None if len(v) == n else f"must be {n} bytes, got {len(v)}"


def _maxlen(n: int) -> Callable[[Any], str | None]:
    return lambda v: None if len(v) <= n else f"longer than {n}"


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, float) and not math.isfinite(v):
            return "must be finite"
        return None if lo <= v <= hi else f"must be in [{lo:g}, {hi:g}], got {v!r}"
    return check


def _cids(v: Any) -> str | None:
    if not v or len(v) > 1024:
        return "must list 1..1024 CIDs"
    if not all(isinstance(c, str) and 0 < len(c) <= 128 for c in v):
        return "every CID must be a text string of at most 128 characters"
    return None


def _meters(v: Any) -> str | None:
    if len(v) > 32:
        return "at most 32 meters"
    for k, x in v.items():
        if not isinstance(k, str) or len(k) > 32:
            return "meter names must be text of at most 32 characters"
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            return f"meter {k}: must be a finite number >= 0"
    return None


def _shares(v: Any) -> str | None:
    """[[device address, fixed WU, variable WU, units], ...], by address."""
    for i, row in enumerate(v):
        if (not isinstance(row, list) or len(row) != 4 or not isinstance(row[0], bytes) or len(row[0]) != 20
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
                           for x in row[1:3])
                or not isinstance(row[3], int) or isinstance(row[3], bool) or row[3] < 0):
            return f"share {i}: must be [20-byte address, fixed >= 0, variable >= 0, units >= 0]"
    if [r[0] for r in v] != sorted({r[0] for r in v}):
        return "shares must be sorted by address, one per device"
    return None


_UINT = (int,)
_NUM = (int, float)
SCHEMAS: dict[str, dict[str, F]] = {
    # device -> node, unprotected (there is no OSCORE context yet), signed by the secure world
    "enroll": {
        "v": F(_UINT, check=_range(VERSION, VERSION)),
        "dev": F((bytes,), check=_len(20)),
        "pub": F((bytes,), check=_len(65)),
        "board": F((str,), check=_maxlen(64)),
        "capacity": F(_NUM, check=_range(0.0, 1e6)),
        "x25519": F((bytes,), check=_len(32)),
        "t": F(_NUM, check=_range(0, 1e11)),
        "sig": F((bytes,), check=_len(65)),
    },
    # node -> device, signed by the node's key
    "enrolled": {
        "v": F(_UINT, check=_range(VERSION, VERSION)),
        "node": F((bytes,), check=_len(20)),
        "x25519": F((bytes,), check=_len(32)),
        "sid": F((bytes,), check=_maxlen(7)),  # the device's OSCORE sender id
        "rid": F((bytes,), check=_maxlen(7)),  # the device's OSCORE recipient id (the node's sender id)
        "sig": F((bytes,), check=_len(65)),
    },
    "round": {
        "round": F(_UINT, check=_range(0, MAX_SEQ)),
        "model": F((str,), check=_maxlen(64)),
        "hash": F((bytes,), check=_len(32)),    # sha256 of the global weights file served at /model
        "width": F(_NUM, check=_range(0.0625, 1.0)),
        "deadline": F(_NUM, check=_range(0, 1e11)),
        "min": F(_UINT, check=_range(1, 100000)),
        "accepted": F(_UINT, check=_range(0, MAX_SEQ)),
        "open": F((bool,)),                     # False: closed, waiting for the next (devices do not train)
        "sub": F((bytes,), required=False, check=_len(32)),   # sha256 of this device's HeteroFL slice at /model
        "sig": F((bytes,), required=False, check=_len(65)),   # the node key's signature over round_digest
    },
    # node -> anyone, GET /allocation: the signed statement of a cycle's shares (agent/incentive/statement.py)
    "allocation": {
        "v": F(_UINT, check=lambda v: None if v == VERSION else f"version {v}, expected {VERSION}"),
        "node": F((bytes,), check=_len(20)),
        "cycle": F(_UINT, check=_range(0, MAX_SEQ)),
        "cycle_s": F(_NUM, check=_range(1.0, 366 * 86400.0)),
        "rule": F((str,), check=lambda v: None if v in ("utility", "variable") else "must be utility or variable"),
        "base": F(_UINT, check=_range(0, 1 << 200)),
        "n": F(_UINT, check=_range(0, 1 << 32)),
        "m_ppm": F(_UINT, check=_range(1_000_000, 1_500_000)),
        "pool": F(_UINT, check=_range(0, 1 << 200)),
        "total": F(_UINT, check=_range(0, 1 << 200)),
        "shares": F((list,), check=_shares),
        "t": F(_NUM, check=_range(0.0, 1e11)),
        "sig": F((bytes,), required=False, check=_len(65)),
    },
    # the demand server's bridge (the node's Flower ClientApp) -> node, loopback only
    "demand": {
        "model": F((bytes,)),                   # AITW global weights for the group round
        "min": F(_UINT, check=_range(1, 100000)),
        "seconds": F(_NUM, check=_range(1.0, 7 * 86400.0)),
    },
    "demand_status": {
        "round": F(_UINT, check=_range(0, MAX_SEQ)),
        "open": F((bool,)),
        "updates": F(_UINT, check=_range(0, MAX_SEQ)),
        "samples": F(_UINT, check=_range(0, 1 << 50)),
        "bytes": F(_UINT, check=_range(0, 1 << 50)),   # update items received in the round
        "model": F((bytes,), required=False),   # the group's aggregate, once closed with updates
    },
    "item": {
        "v": F(_UINT, check=_range(VERSION, VERSION)),
        "kind": F((str,), check=lambda v: None if v in ITEM_KINDS else f"must be one of {ITEM_KINDS}"),
        "dev": F((bytes,), check=_len(20)),
        "seq": F(_UINT, check=_range(1, MAX_SEQ)),
        "t": F(_NUM, check=_range(0, 1e11)),
        "body": F((bytes,)),
        "sig": F((bytes,), check=_len(65)),
    },
    "update": {
        "round": F(_UINT, check=_range(1, MAX_SEQ)),
        "model": F((str,), check=_maxlen(64)),
        "base": F((bytes,), check=_len(32)),    # hash of the global weights it was trained from
        "width": F(_NUM, check=_range(0.0625, 1.0)),
        "samples": F(_UINT, check=_range(1, 1 << 40)),
        "format": F((str,), check=lambda v: None if v in ("aitw", "aitq") else "must be 'aitw' or 'aitq'"),
        "zstd": F((bool,)),
        "data": F((bytes,)),
    },
    "manifest": {
        "cids": F((list,), check=_cids),
        "records": F(_UINT, check=_range(0, 1 << 40)),
        "bytes": F(_UINT, check=_range(0, 1 << 50)),
        "policy": F((str,), check=_maxlen(128)),
    },
    "report": {     # agent/utility/report.py
        "cycle": F(_UINT, check=_range(0, MAX_SEQ)),
        "cycle_s": F(_NUM, check=_range(1.0, 366 * 86400.0)),
        "fixed": F(_NUM, check=_range(0.0, 1e6)),
        "variable": F(_NUM, check=_range(0.0, 1e6)),
        "meters": F((dict,), check=_meters),
    },
}


def encode(kind: str, msg: dict) -> bytes:
    """Check ``msg`` against its schema, then canonical CBOR (a bug here is the sender's, not the wire's)."""
    check(kind, msg)
    return cbor2.dumps(msg, canonical=True)


def decode(kind: str, data: bytes) -> dict:
    """Parse and check one message. Raises MessageError(reason, where)."""
    try:
        msg = cbor2.loads(data)
    except Exception as e:  # cbor2 raises CBORDecodeError, but also ValueError/TypeError/... on odd input
        raise MessageError(f"not CBOR: {e}", kind) from None
    check(kind, msg)
    return msg


def check(kind: str, msg: Any) -> None:
    schema = SCHEMAS[kind]
    if not isinstance(msg, dict):
        raise MessageError(f"must be a CBOR map, got {type(msg).__name__}", kind)
    unknown = sorted(str(k) for k in msg if k not in schema)
    if unknown:
        raise MessageError(f"unknown key(s) {', '.join(unknown)}", kind)
    for name, f in schema.items():
        where = f"{kind}.{name}"
        if name not in msg:
            if f.required:
                raise MessageError("missing", where)
            continue
        v = msg[name]
        if not isinstance(v, f.types) or (isinstance(v, bool) and bool not in f.types):
            want = " or ".join(t.__name__ for t in f.types)
            raise MessageError(f"must be {want}, got {type(v).__name__}", where)
        if f.check is not None:
            reason = f.check(v)
            if reason:
                raise MessageError(reason, where)


# -- items ------------------------------------------------------------------------------------------

def item_digest(kind: str, dev: bytes, seq: int, t: float, body: bytes) -> bytes:
    """What the secure world signs for an item (see the module docstring)."""
    head = cbor2.dumps([VERSION, kind, dev, seq, t, hashlib.sha256(body).digest()], canonical=True)
    return keccak256(_DOMAIN + head)


def enroll_digest(msg: dict) -> bytes:
    """What the device signs to enroll: every field but the signature."""
    fields = {k: v for k, v in msg.items() if k != "sig"}
    return keccak256(b"AITN-ENROLL\x01" + cbor2.dumps(fields, canonical=True))


def enrolled_digest(request_digest: bytes, msg: dict) -> bytes:
    """What the node signs in answer: its fields bound to the request they answer."""
    fields = {k: v for k, v in msg.items() if k != "sig"}
    return keccak256(b"AITN-ENROLLED\x01" + request_digest + cbor2.dumps(fields, canonical=True))


def round_digest(msg: dict) -> bytes:
    """What the node signs in a round announcement: every field but the signature (so the model's hash
    and the device's slice hash reach the device as the node's word)."""
    fields = {k: v for k, v in msg.items() if k != "sig"}
    return keccak256(b"AITN-ROUND\x01" + cbor2.dumps(fields, canonical=True))


def parse_item(data: bytes, expected_kind: str | None = None) -> tuple[dict, dict]:
    """(envelope, payload) of an item, both schema-checked; the signature is NOT verified here."""
    env = decode("item", data)
    if expected_kind is not None and env["kind"] != expected_kind:
        raise MessageError(f"is {env['kind']!r}, this resource takes {expected_kind!r}", "item.kind")
    return env, decode(env["kind"], env["body"])
