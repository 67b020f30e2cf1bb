"""`aitn tee ...`, `identity`, `sign`, `chain`: the secure world and the private chain."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from tee_sim.abi import digests
from tee_sim.abi.ids import Cmd

from ..config import Globals
from ..errors import AgentError
from ..tee import handshake
from ..tee.chainlog import ChainLog
from ..tee import pcapng
from ..tee.capture import CaptureRelay, Recorder, unix_path, write_trace
from ..tee.client import TraceEvent
from ..tee.decode import decode_capture, format_packet, summary, to_json
from ..tee.pairing import pair
from ..tee.session import CHAIN_FILE, ChainedSession
from ..tee.trace import format_event
from .common import _hex, _identity, _print, _unchained, chain_access, verify_and_address
from .identity import add_identity_commands
from .teedebug import add_chain_commands, add_tee_commands


def cmd_tee_serve(g: Globals, args: argparse.Namespace) -> int:
    """Become the secure world's process (a separate program: the normal world imports only its ABI)."""
    argv = [sys.executable, "-m", "tee_sim", "serve", "--state", args.state, "--tee", g.tee,
            "--log", args.log, "--log-level", str(args.log_level), "--lockout-base", str(args.lockout_base)]
    if args.user:
        argv += ["--user", args.user]
    for uid in args.allow_uid or []:
        argv += ["--allow-uid", str(uid)]
    if args.board_serial:
        argv += ["--board-serial", args.board_serial]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached


def cmd_tee_pair(g: Globals, args: argparse.Namespace) -> int:
    p = pair(g.tee, g.home, args.time_lock, g.timeout, g.lock_wait_s)
    addr = digests.checksum_address(p.address)
    obj = {"pairing_id": p.pairing_id.hex(), "timelock": p.timelock, "address": addr,
           "created_key": p.created_key, "archived_chain": str(p.archived) if p.archived else None}
    text = f"paired with the secure world: pairing {p.pairing_id.hex()}, time-lock {p.timelock}, device {addr}"
    if p.created_key:
        text += "\ncreated the device key"
    if p.archived:
        text += f"\nprevious chain kept as {p.archived}"
    _print(args, obj, text)
    return 0


def cmd_tee_status(g: Globals, args: argparse.Namespace) -> int:
    st = json.loads(_unchained(g, Cmd.STATUS, (None, 4096, None, None)).params[1])
    chain_path = g.home / CHAIN_FILE
    st["normal_world"] = {"home": str(g.home), "chain": chain_path.exists()}
    if chain_path.exists():
        try:
            with ChainLog.open(chain_path, g.lock_wait_s) as c:
                st["normal_world"].update({"height": c.head.height, "pairing_id": c.pairing_id.hex(),
                                           "dropped_torn_records": c.dropped})
        except AgentError as e:
            st["normal_world"]["error"] = str(e)
    lines = [f"secure world {g.tee}: TA {st['ta_uuid']} v{st['ta_version']}",
             f"  device key: {st['address'] or 'none'}",
             f"  paired: {st['paired']}" + (f" (pairing {st['pairing_id']}, committed height "
                                            f"{st['committed_height']}, time-lock {st['timelock']})"
                                            if st['paired'] else ""),
             f"  failed proofs in a row: {st.get('failures', 0)}; lockout: {st['lockout_seconds']} s",
             f"  counters: {st['counters']}"]
    if st["state_error"]:
        lines.append(f"  STATE ERROR: {st['state_error']}")
    nw = st["normal_world"]
    lines.append(f"normal world {nw['home']}: " + (f"chain height {nw['height']}" if "height" in nw else
                                                   nw.get("error", "no chain (not paired)")))
    _print(args, st, "\n".join(lines))
    return 2 if st["state_error"] else 0


def cmd_tee_handshake(g: Globals, args: argparse.Namespace) -> int:
    events: list[TraceEvent] = []
    digest = bytes.fromhex(args.digest.removeprefix("0x")) if args.digest else os.urandom(32)
    t0 = time.perf_counter()
    try:
        with ChainedSession.open(g.tee, g.home, timeout=g.timeout, trace=events.append,
                                 lock_wait_s=g.lock_wait_s) as s:
            signed = handshake.sign_digest(s, digest)
            total = time.perf_counter() - t0
            steps = list(s.steps)
    finally:  # a failed handshake is the one worth capturing
        if args.capture:
            with open(args.capture, "wb") as out:
                write_trace(out, events, g.tee, "aitn tee handshake")
    address = verify_and_address(g, signed.digest, signed.signature)
    obj = {"digest": _hex(signed.digest), "signature": _hex(signed.signature), "address": address,
           "height": signed.height, "total_ms": round(total * 1e3, 3),
           "steps": [{"step": k, "ms": round(v * 1e3, 3)} for k, v in steps]}
    lines = []
    if args.trace:
        base = events[0].t if events else t0
        for ev in events:
            lines += format_event(ev, base)
        obj["frames"] = [{"t_ms": round((e.t - base) * 1e3, 3), "outbound": e.outbound, "hex": e.raw.hex()}
                         for e in events]
    lines += [f"  {k:<18} {v * 1e3:8.3f} ms" for k, v in steps]
    lines += [f"handshake ok in {total * 1e3:.3f} ms: digest {_hex(signed.digest)}",
              f"signature {_hex(signed.signature)}", f"signer {address} (chain height {signed.height})"]
    _print(args, obj, "\n".join(lines))
    return 0


def cmd_tee_capture(g: Globals, args: argparse.Namespace) -> int:
    """Relay between the normal world (at --listen) and the secure world (--tee), recording every frame."""
    def stop(_signum, _frame) -> None:
        relay.stop()

    unix_path(args.listen, "--listen")  # refuse bad URLs before creating the file
    unix_path(g.tee, "the secure world's URL (--tee)")
    try:
        out = open(args.out, "wb")
    except OSError as e:
        raise AgentError(f"{args.out}: {e.strerror or e}") from None
    with out:
        recorder = Recorder(out, args.count)
        relay = CaptureRelay(args.listen, g.tee, recorder,
                             log=lambda line: print(f"aitn: capture: {line}", file=sys.stderr, flush=True))
        try:
            relay.start()
        except AgentError:
            os.unlink(args.out)
            raise
        previous = signal.signal(signal.SIGTERM, stop)
        t0 = time.monotonic()
        print(f"capturing to {args.out}: listening on {args.listen}, forwarding to {g.tee}", file=sys.stderr,
              flush=True)
        try:
            relay.wait(args.duration)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            relay.close()
    obj = {"file": args.out, "frames": recorder.packets, "connections": relay.connections,
           "seconds": round(time.monotonic() - t0, 3)}
    _print(args, obj, f"captured {obj['frames']} frames on {obj['connections']} connections in "
                      f"{obj['seconds']:.1f} s to {args.out}")
    return 0


def cmd_tee_decode(g: Globals, args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        raise AgentError(f"{args.file}: {e.strerror or e}") from None
    try:
        capture = pcapng.parse(data)
    except pcapng.PcapngError as e:
        raise type(e)(f"{args.file}: {e}") from None
    decoded = decode_capture(capture)
    t0 = decoded[0].ts_us if decoded else 0
    if args.json:
        print(json.dumps({**summary(decoded), "frames": [to_json(d, t0) for d in decoded]}, indent=2))
        return 0
    try:
        for d in decoded:
            print("\n".join(format_packet(d, t0)))
        s = summary(decoded)
        print(f"{s['packets']} frames, {s['malformed']} malformed, transports: "
              f"{', '.join(s['transports']) or 'none'}", flush=True)
    except BrokenPipeError:  # `aitn tee decode F | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_identity_show(g: Globals, args: argparse.Namespace) -> int:
    public_key, address = _identity(g)
    checksum = digests.checksum_address(address)
    _print(args, {"address": checksum, "public_key": _hex(public_key)},
           f"address    {checksum}\npublic key {_hex(public_key)}")
    return 0


def cmd_sign(g: Globals, args: argparse.Namespace) -> int:
    with chain_access(g).session() as s:
        if args.message is not None:
            signed = handshake.sign_message(s, args.message.encode())
        else:
            signed = handshake.sign_digest(s, bytes.fromhex(args.digest.removeprefix("0x")))
    address = verify_and_address(g, signed.digest, signed.signature)
    obj = {"address": address, "signature": _hex(signed.signature), "digest": _hex(signed.digest)}
    if args.message is not None:
        obj["message"] = args.message
    _print(args, obj, f"{_hex(signed.signature)}\nsigned by {address}")
    return 0


def cmd_chain_verify(g: Globals, args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    with ChainLog.open(g.home / CHAIN_FILE, g.lock_wait_s) as c:
        n = c.verify()
        obj = {"blocks": n, "head_height": c.head.height, "pairing_id": c.pairing_id.hex(), "timelock": c.timelock,
               "dropped_torn_records": c.dropped, "seconds": round(time.perf_counter() - t0, 3)}
    _print(args, obj, f"chain ok: {n} blocks verified (head {obj['head_height']}, time-lock {obj['timelock']})"
           + (f"; dropped {obj['dropped_torn_records']} torn records at open" if obj["dropped_torn_records"] else ""))
    return 0


def cmd_chain_show(g: Globals, args: argparse.Namespace) -> int:
    # Block hashes are the pairing's secret: only an 8-hex-digit prefix is ever shown.
    with ChainLog.open(g.home / CHAIN_FILE, g.lock_wait_s) as c:
        start = max(0, c.head.height - args.tail + 1)
        rows = [{"height": r.height, "direction": "NW->SW" if r.direction == 0 else "SW->NW",
                 "command": Cmd(r.command).name if r.command in Cmd._value2member_map_ else r.command,
                 "body_digest": r.body_digest.hex(), "hash_prefix": r.hash.hex()[:8]}
                for r in c.records(start)]
    text = "\n".join(f"{r['height']:>8}  {r['direction']}  {str(r['command']):<10} body {r['body_digest'][:16]}.."
                     f"  hash {r['hash_prefix']}.." for r in rows)
    _print(args, {"blocks": rows}, text)
    return 0


def add_parsers(sub, json_flag) -> None:
    tee_p = sub.add_parser("tee", help="the secure world").add_subparsers(dest="cmd", required=True)
    p = tee_p.add_parser("serve", help="run the secure world (same as python -m tee_sim serve)")
    p.add_argument("--state", required=True)
    p.add_argument("--user")
    p.add_argument("--allow-uid", type=int, action="append")
    p.add_argument("--log", default="-", help="the secure log channel (a secure UART), OP-TEE's line format: "
                                              "FILE, '-' (stderr, default), a pyserial URL or a serial port")
    p.add_argument("--log-level", type=int, default=2, choices=range(5), help="0 none, 1 error, 2 info, 3 debug, 4 flow")
    p.add_argument("--board-serial")
    p.add_argument("--lockout-base", type=float, default=1.0)
    p.set_defaults(func=cmd_tee_serve)
    p = tee_p.add_parser("pair", help="pair the worlds (creates the device key on first use)")
    p.add_argument("--time-lock", type=int, default=0, help="time-lock iterations per block (0: default)")
    json_flag(p)
    p.set_defaults(func=cmd_tee_pair)
    p = tee_p.add_parser("status", help="secure-world status and counters, and the normal world's chain")
    json_flag(p)
    p.set_defaults(func=cmd_tee_status)
    p = tee_p.add_parser("handshake", help="run one SIGN/CHALLENGE/PROOF handshake")
    p.add_argument("--trace", action="store_true", help="print every frame as hex and decoded fields")
    p.add_argument("--digest", help="32-byte hex digest to sign (default: random)")
    p.add_argument("--capture", metavar="FILE.pcapng", help="write the handshake's frames to a pcapng file")
    json_flag(p)
    p.set_defaults(func=cmd_tee_handshake)
    p = tee_p.add_parser("capture", help="relay the normal world to the secure world, recording frames (pcapng)")
    p.add_argument("--out", required=True, metavar="FILE.pcapng", help="capture file to write")
    p.add_argument("--listen", required=True, metavar="unix:///PATH",
                   help="socket the normal world connects to instead of the secure world (point its --tee here)")
    until = p.add_mutually_exclusive_group()
    until.add_argument("--count", type=int, help="stop after N frames (default: until interrupted)")
    until.add_argument("--duration", type=float, help="stop after S seconds (default: until interrupted)")
    json_flag(p)
    p.set_defaults(func=cmd_tee_capture)
    p = tee_p.add_parser("decode", help="decode a capture: frames, commands, results, chain heights")
    p.add_argument("file", metavar="FILE.pcapng")
    json_flag(p)
    p.set_defaults(func=cmd_tee_decode)
    add_tee_commands(tee_p, json_flag)

    id_p = sub.add_parser("identity", help="the device identity").add_subparsers(dest="cmd", required=True)
    p = id_p.add_parser("show", help="EVM address and public key of the device key")
    json_flag(p)
    p.set_defaults(func=cmd_identity_show)
    add_identity_commands(id_p, json_flag)

    p = sub.add_parser("sign", help="sign through the handshake (EIP-191 message or raw digest)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--message", help="text to sign as an EIP-191 personal message")
    what.add_argument("--digest", help="32-byte hex digest to sign as is")
    json_flag(p)
    p.set_defaults(func=cmd_sign)
    ch_p = sub.add_parser("chain", help="the normal world's copy of the private chain").add_subparsers(
        dest="cmd", required=True)
    p = ch_p.add_parser("verify", help="recompute every block from genesis")
    json_flag(p)
    p.set_defaults(func=cmd_chain_verify)
    p = ch_p.add_parser("show", help="the last blocks")
    p.add_argument("--tail", type=int, default=10)
    json_flag(p)
    p.set_defaults(func=cmd_chain_show)
    add_chain_commands(ch_p, json_flag)
