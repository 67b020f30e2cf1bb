"""Human-readable decoding of frames, for `aitn tee handshake --trace` (and later captures)."""

from __future__ import annotations

from tee_sim.abi import block as blk
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import Cmd, Origin, ParamType, TeecResult, split_param_types

from .client import TraceEvent


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"0x{value:x}"


def describe(f: Frame) -> list[str]:
    """One header line and one line per parameter slot."""
    kind = _name(Kind, f.kind & ~Kind.RESPONSE) + (" RESPONSE" if f.is_response else "")
    cmd = _name(Cmd, f.command) if f.kind & ~Kind.RESPONSE == Kind.INVOKE else str(f.command)
    head = f"{kind} cmd={cmd} req#{f.request_id} session={f.session} types=0x{f.types:04x}"
    if f.is_response:
        head += f" result={_name(TeecResult, f.result)} (0x{f.result:08X}) origin={_name(Origin, f.origin)}"
    lines = [head]
    for slot, t in enumerate(split_param_types(f.types)):
        if t == ParamType.NONE:
            continue
        p = f.params[slot]
        tname = _name(ParamType, t)
        if isinstance(p, Value):
            lines.append(f"  p{slot} {tname} a={p.a} b={p.b}")
        elif isinstance(p, bytes):
            detail = ""
            if f.is_response and f.command == Cmd.SIGN and slot == 2:
                try:
                    c = blk.Challenge.decode(p)
                    detail = f" challenge nonce={c.nonce.hex()} heights={list(c.heights)}"
                except ValueError:
                    detail = " (malformed challenge)"
            shown = p.hex() if len(p) <= 48 else p[:48].hex() + "..."
            lines.append(f"  p{slot} {tname} {len(p)} B {shown}{detail}")
        elif isinstance(p, int):
            lines.append(f"  p{slot} {tname} capacity {p}")
    return lines


def format_event(ev: TraceEvent, t0: float) -> list[str]:
    arrow = "NW -> SW" if ev.outbound else "SW -> NW"
    lines = [f"[{(ev.t - t0) * 1e3:9.3f} ms] {arrow} {len(ev.raw)} bytes"]
    lines += ["  " + line for line in describe(ev.frame)]
    raw = ev.raw.hex()
    lines += [f"    hex {raw[i:i + 64]}" for i in range(0, len(raw), 64)]
    return lines
