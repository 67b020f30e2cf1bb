"""The node's signed allocation statement for one cycle, and its check by anyone holding the node's address.

A CBOR map (agent/uplink/messages.py, "allocation"): the node's address, cycle, cycle length,
rule, base, device count n, m_ppm, pool, total allocated, and one [device, fixed, variable,
units] row per reporting device, sorted by address. The node signs
keccak256("AITN-ALLOC" || 0x01 || canonical CBOR of every field but ``sig``) with its key;
``verify`` recovers the signer, compares it with the node's address and re-checks the arithmetic
(the pool from base and n, the shares from the weights), so a statement cannot be altered or
mis-added without being noticed.
"""

from __future__ import annotations

import cbor2

from tee_sim.abi.digests import keccak256

from ..signature import InvalidSignature, verify as verify_sig
from ..uplink import messages
from ..uplink.errors import MessageError
from ..utility.errors import AllocationError
from . import allocation as alloc

_DOMAIN = b"AITN-ALLOC\x01"


def digest(msg: dict) -> bytes:
    fields = {k: v for k, v in msg.items() if k != "sig"}
    return keccak256(_DOMAIN + cbor2.dumps(fields, canonical=True))


def build(*, node: bytes, cycle: int, cycle_s: float, rule: str, base: int, work: dict[bytes, alloc.Work],
          t: float) -> dict:
    """The unsigned statement: pool = base x m(n), split by the rule's weights."""
    n = len(work)
    m_ppm = alloc.multiplier_ppm(n)
    pool = alloc.pool(base, n)
    weights = {dev: alloc.weight(w, rule) for dev, w in work.items()}
    shares = alloc.split(pool, weights)
    rows = [[dev, float(work[dev].fixed), float(work[dev].variable), shares[dev]] for dev in sorted(work)]
    return {"v": messages.VERSION, "node": node, "cycle": cycle, "cycle_s": float(cycle_s), "rule": rule,
            "base": base, "n": n, "m_ppm": m_ppm, "pool": pool, "total": sum(shares.values()), "shares": rows,
            "t": t}


def encode(msg: dict) -> bytes:
    return messages.encode("allocation", msg)


def verify(data: bytes, node: bytes) -> dict:
    """Parse, check the node's signature and recompute the arithmetic. Raises AllocationError."""
    try:
        msg = messages.decode("allocation", data)
    except MessageError as e:
        raise AllocationError(f"allocation statement: {e}") from None
    if "sig" not in msg:
        raise AllocationError("allocation statement is not signed")
    if msg["node"] != node:
        raise AllocationError(f"statement names node 0x{msg['node'].hex()}, expected 0x{node.hex()}")
    try:
        verify_sig(digest(msg), msg["sig"], node)
    except InvalidSignature as e:
        raise AllocationError(f"allocation statement signature: {e}") from None
    work = {row[0]: alloc.Work(row[1], row[2]) for row in msg["shares"]}
    again = build(node=node, cycle=msg["cycle"], cycle_s=msg["cycle_s"], rule=msg["rule"], base=msg["base"],
                  work=work, t=msg["t"])
    for k in ("n", "m_ppm", "pool", "total", "shares"):
        if again[k] != msg[k]:
            raise AllocationError(f"allocation statement: {k} does not follow from the rows and base")
    return msg


def to_json(msg: dict) -> dict:
    """JSON form: addresses and the signature as 0x hex, token amounts as decimal strings (they pass 2^53)."""
    out = {k: v for k, v in msg.items() if k not in ("node", "sig", "shares", "base", "pool", "total")}
    out.update(node="0x" + msg["node"].hex(), base=str(msg["base"]), pool=str(msg["pool"]), total=str(msg["total"]),
               shares=[{"device": "0x" + d.hex(), "fixed": f, "variable": v, "units": str(u)}
                       for d, f, v, u in msg["shares"]])
    if "sig" in msg:
        out["sig"] = "0x" + msg["sig"].hex()
    return out


def aitn(units: int) -> str:
    """Base units as AITN, exactly (18 decimals, trailing zeros dropped)."""
    whole, frac = divmod(units, 10**18)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".")


def describe(msg: dict) -> str:
    lines = [f"cycle {msg['cycle']} ({msg['cycle_s']:g} s) by node 0x{msg['node'].hex()}: {msg['n']} device(s), "
             f"m(n) = {msg['m_ppm'] / 1e6:.6f}; pool {aitn(msg['pool'])} AITN (base {aitn(msg['base'])}), "
             f"allocated {aitn(msg['total'])} AITN by {msg['rule']}"]
    lines += [f"  0x{d.hex()}  fixed {f:.6g} WU  variable {v:.6g} WU  -> {aitn(u)} AITN"
              for d, f, v, u in msg["shares"]]
    return "\n".join(lines)
