"""Decoding a pcapng capture of frames between the worlds: what `aitn tee decode` prints.

The same decoding as the Wireshark dissector (scripts/wireshark/aitn_tee.lua): the frame header,
commands, results and origins by name, each parameter, and what the parameters mean for each
command (challenge nonce and heights, proof, signature, SYNC heights and tags, session nonce...).
It also follows the private chain: after a successful SYNC it knows the head height, so every
chained request and response on that session gets its block height and body digest, the values
`aitn chain show` lists. Bytes that are not a valid frame are decoded as far as their header goes
and marked malformed with the reason. Pure: takes a parsed ``pcapng.Capture``.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

from tee_sim.abi import block as blk
from tee_sim.abi import frame as fr
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import (FLAG_KEY, FLAG_LOCKED, FLAG_PAIRED, FLAG_STATE_ERROR, UNCHAINED, Cmd, Login, Origin,
                             ParamType, Purpose, TeecResult, split_param_types)

from . import pcapng
from .trace import describe

_FLAGS = ((FLAG_KEY, "KEY"), (FLAG_PAIRED, "PAIRED"), (FLAG_LOCKED, "LOCKED"), (FLAG_STATE_ERROR, "STATE_ERROR"))


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"0x{value:x}"


@dataclass
class Decoded:
    """One packet of the capture, decoded."""

    number: int  # 1-based, as Wireshark counts
    ts_us: int
    outbound: bool | None
    interface: int  # the capture's interface: one per connection
    transport: str  # its if_name: the secure world's URL
    raw: bytes
    frame: Frame | None = None
    error: str = ""  # why the bytes are not a valid frame, or its parameters not their command's layout
    comment: str = ""  # the capture's own note (the relay's reason for skipped bytes)
    header: dict[str, Any] = field(default_factory=dict)  # header fields, also for a malformed frame
    meaning: dict[str, Any] = field(default_factory=dict)  # per-command meaning of the parameters
    height: int | None = None  # block height in the private chain, when the capture shows it
    body_digest: bytes | None = None  # the block's body digest (abi.block.message_digest)

    @property
    def direction(self) -> str:
        return {True: "NW -> SW", False: "SW -> NW", None: "?"}[self.outbound]


def _u64(v: Value) -> int:
    return v.a | v.b << 32


def _flags(bits: int) -> list[str]:
    return [n for bit, n in _FLAGS if bits & bit]


def _header(raw: bytes) -> dict[str, Any]:
    """Whatever header fields the bytes hold (up to 40 bytes), named; for malformed frames too."""
    if len(raw) < fr.HEADER_SIZE:
        return {}
    (magic, version, kind, reserved, request_id, session, command, types, result, origin, body_len,
     crc) = fr.HEADER.unpack_from(raw)
    base = kind & ~Kind.RESPONSE
    h: dict[str, Any] = {"magic": f"0x{magic:08X}", "version": version, "kind": _name(Kind, base),
                         "response": bool(kind & Kind.RESPONSE), "request_id": request_id, "session": session,
                         "command": _name(Cmd, command) if base == Kind.INVOKE else command,
                         "param_types": f"0x{types:04x}", "body_len": body_len, "crc32": f"0x{crc:08X}"}
    if reserved:
        h["reserved"] = reserved
    if kind & Kind.RESPONSE:
        h["result"] = _name(TeecResult, result)
        h["result_code"] = f"0x{result:08X}"
        h["origin"] = _name(Origin, origin)
    return h


def _meaning(f: Frame) -> dict[str, Any]:
    """What each parameter is, by command and direction (docs/handshake.md's parameter table)."""
    p = f.params
    base = f.kind & ~Kind.RESPONSE
    m: dict[str, Any] = {}
    if f.is_response and f.result != TeecResult.SUCCESS:
        return m
    if base == Kind.OPEN_SESSION:
        if not f.is_response:
            m["login"] = _name(Login, f.command)
            if isinstance(p[0], bytes) and len(p[0]) == 16:
                m["ta_uuid"] = str(uuid.UUID(bytes=p[0]))
        else:
            if isinstance(p[1], Value):
                m["committed_height"] = _u64(p[1])
            if isinstance(p[2], bytes):
                m["session_nonce"] = p[2].hex()
            if isinstance(p[3], Value):
                m["flags"] = _flags(p[3].a)
                m["timelock"] = p[3].b
        return m
    if base != Kind.INVOKE:
        return m
    cmd = f.command
    if cmd == Cmd.STATUS and f.is_response:
        if isinstance(p[0], Value):
            m["flags"], m["lockout_seconds"] = _flags(p[0].a), p[0].b
        if isinstance(p[1], bytes):
            m["status"] = p[1].decode(errors="replace")
    elif cmd in (Cmd.GET_PUBKEY, Cmd.CREATE_KEY) and f.is_response:
        if isinstance(p[0], bytes):
            m["public_key"] = p[0].hex()
        if isinstance(p[1], bytes):
            m["address"] = "0x" + p[1].hex()
    elif cmd == Cmd.PAIR:
        if not f.is_response:
            if isinstance(p[0], bytes):
                m["nw_x25519"] = p[0].hex()
            if isinstance(p[1], Value):
                m["timelock_asked"] = p[1].a
        else:
            if isinstance(p[2], bytes) and len(p[2]) == 32 + blk.PAIRING_ID_SIZE:
                m["tee_x25519"], m["pairing_id"] = p[2][:32].hex(), p[2][32:].hex()
            if isinstance(p[3], Value):
                m["timelock"], m["k"] = p[3].a, p[3].b
    elif cmd == Cmd.SYNC:
        if not f.is_response:
            if isinstance(p[0], Value):
                m["claimed_height"] = _u64(p[0])
            if isinstance(p[1], bytes) and len(p[1]) == 32 + blk.NONCE_SIZE:
                m["sync_tag"], m["nw_nonce"] = p[1][:32].hex(), p[1][32:].hex()
        else:
            if isinstance(p[2], bytes) and len(p[2]) >= 32:
                m["ack_tag"] = p[2][:32].hex()
                if len(p[2]) == 32 + blk.BLOCK_FIELDS_SIZE:
                    height, direction, command, digest = struct.unpack(">QBI32s", p[2][32:])
                    m["redelivered_block"] = {"height": height, "direction": "response" if direction else "request",
                                              "command": _name(Cmd, command), "body_digest": digest.hex()}
            if isinstance(p[3], Value):
                m["committed_height"] = _u64(p[3])
    elif cmd == Cmd.SIGN:
        if not f.is_response:
            purpose = p[1].a if isinstance(p[1], Value) else None
            if purpose is not None:
                m["purpose"] = _name(Purpose, purpose)
            if isinstance(p[0], bytes):
                if purpose == Purpose.RAW_DIGEST:
                    m["digest"] = p[0].hex()
                elif purpose == Purpose.PERSONAL_MESSAGE:
                    m["message"] = p[0].decode(errors="replace")
                elif purpose == Purpose.BATCH:
                    m["batch_items"] = len(p[0]) // 32
        elif isinstance(p[2], bytes):
            try:
                c = blk.Challenge.decode(p[2])
                m["challenge"] = {"nonce": c.nonce.hex(), "heights": list(c.heights)}
            except ValueError as e:
                m["malformed"] = str(e)  # a well-formed frame whose challenge is not
    elif cmd == Cmd.PROOF:
        if not f.is_response:
            if isinstance(p[0], bytes):
                m["proof"] = p[0].hex()
        else:
            if isinstance(p[1], bytes) and len(p[1]) == 65:
                m["signature"] = {"r": p[1][:32].hex(), "s": p[1][32:64].hex(), "v": p[1][64]}
            if isinstance(p[2], bytes):
                m["signed_digest"] = p[2].hex()
    elif cmd == Cmd.PSEUDONYM:
        if not f.is_response and isinstance(p[1], Value):
            m["domain"] = p[1].a
        elif f.is_response and isinstance(p[2], bytes):
            m["pseudonym"] = p[2].hex()
    return m


class _Chain:
    """Follows block heights per (interface, session): known after a successful SYNC answer."""

    def __init__(self) -> None:
        self.head: dict[tuple[int, int], int] = {}
        self.pending: dict[tuple[int, int], tuple[int, int]] = {}  # (iface, request id) -> session key

    def place(self, iface: int, f: Frame) -> int | None:
        key = (iface, f.session)
        base = f.kind & ~Kind.RESPONSE
        if base == Kind.CLOSE_SESSION:
            self.head.pop(key, None)
            return None
        if base != Kind.INVOKE:
            return None
        if not f.is_response:
            if f.command in UNCHAINED or key not in self.head:
                return None
            self.head[key] += 1
            self.pending[(iface, f.request_id)] = key
            return self.head[key]
        if f.command == Cmd.SYNC:
            if f.result == TeecResult.SUCCESS and isinstance(f.params[3], Value):
                self.head[key] = _u64(f.params[3])
            else:
                self.head.pop(key, None)
            return None
        owner = self.pending.pop((iface, f.request_id), None)
        if owner is None or owner not in self.head:
            return None
        if f.result != TeecResult.SUCCESS:  # a failed exchange ends the sync; its blocks are dropped
            del self.head[owner]
            return None
        self.head[owner] += 1
        return self.head[owner]


def decode_capture(capture: pcapng.Capture) -> list[Decoded]:
    chain = _Chain()
    out = []
    for n, pkt in enumerate(capture.packets, 1):
        iface = capture.interfaces[pkt.interface]
        d = Decoded(n, pkt.ts_us, pkt.outbound, pkt.interface, iface.name, pkt.data, comment=pkt.comment,
                    header=_header(pkt.data))
        if iface.linktype != pcapng.LINKTYPE:
            d.error = f"link type {iface.linktype} is not this project's ({pcapng.LINKTYPE})"
        else:
            try:
                d.frame = fr.decode(pkt.data)
            except fr.FrameError as e:
                d.error = f"{type(e).__name__}: {e.reason}"
        if d.frame is not None:
            d.meaning = _meaning(d.frame)
            if "malformed" in d.meaning:
                d.error = f"{Cmd(d.frame.command).name} parameters: {d.meaning.pop('malformed')}"
            d.height = chain.place(pkt.interface, d.frame)
            if d.height is not None:
                d.body_digest = blk.message_digest(pkt.data)
        out.append(d)
    return out


def _param_json(f: Frame) -> list[dict[str, Any]]:
    out = []
    for slot, t in enumerate(split_param_types(f.types)):
        if t == ParamType.NONE:
            continue
        p = f.params[slot]
        entry: dict[str, Any] = {"slot": slot, "type": _name(ParamType, t)}
        if isinstance(p, Value):
            entry.update(a=p.a, b=p.b)
        elif isinstance(p, bytes):
            entry.update(len=len(p), hex=p.hex())
        elif isinstance(p, int):
            entry["capacity"] = p
        out.append(entry)
    return out


def to_json(d: Decoded, t0_us: int) -> dict[str, Any]:
    obj: dict[str, Any] = {"no": d.number, "time": d.ts_us / 1e6, "t_ms": round((d.ts_us - t0_us) / 1e3, 3),
                           "direction": d.direction, "outbound": d.outbound, "interface": d.interface,
                           "transport": d.transport,
                           "length": len(d.raw), **d.header}
    if d.frame is not None:
        obj["params"] = _param_json(d.frame)
        if d.meaning:
            obj["meaning"] = d.meaning
    if d.height is not None:
        obj["block"] = {"height": d.height, "body_digest": d.body_digest.hex() if d.body_digest else None}
    if d.error:
        obj["malformed"] = d.error
        obj["hex"] = d.raw.hex()
    if d.comment:
        obj["comment"] = d.comment
    return obj


def _meaning_lines(m: dict[str, Any]) -> list[str]:
    lines = []
    for k, v in m.items():
        if isinstance(v, dict):
            v = " ".join(f"{kk}={vv}" for kk, vv in v.items())
        elif isinstance(v, list):
            v = json.dumps(v)
        lines.append(f"    {k}: {v}")
    return lines


def format_packet(d: Decoded, t0_us: int) -> list[str]:
    head = (f"#{d.number:<4} {(d.ts_us - t0_us) / 1e3:10.3f} ms  {d.direction}  {len(d.raw)} bytes  "
            f"if{d.interface} {d.transport}")
    if d.height is not None:
        head += f"  block {d.height}"
    lines = [head]
    if d.frame is not None:
        lines += ["  " + line for line in describe(d.frame)]
        lines += _meaning_lines(d.meaning)
        if d.body_digest is not None:
            lines.append(f"    body_digest: {d.body_digest.hex()}")
        if d.error:
            lines.append(f"  MALFORMED: {d.error}")
    else:
        lines.append(f"  MALFORMED: {d.error}")
        if d.header:
            lines.append("  header: " + " ".join(f"{k}={v}" for k, v in d.header.items()))
        shown = d.raw[:64].hex() + ("..." if len(d.raw) > 64 else "")
        lines.append(f"    hex {shown}")
    if d.comment:
        lines.append(f"  comment: {d.comment}")
    return lines


def summary(decoded: list[Decoded]) -> dict[str, Any]:
    return {"packets": len(decoded), "malformed": sum(1 for d in decoded if d.error),
            "transports": sorted({d.transport for d in decoded})}
