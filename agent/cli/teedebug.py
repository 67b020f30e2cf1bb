"""`aitn tee replay | selftest | bench` and `aitn chain diff`: the debugging kit's checking commands.

`agent/cli/tee.py` adds these to its `tee` and `chain` groups (``add_tee_commands``,
``add_chain_commands``); each prints its report, then raises its typed error when the report is
a failure, so a script gets both (docs/debugging.md).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from itertools import zip_longest
from pathlib import Path

from ..config import Globals
from ..errors import AgentError
from ..tee import bench, chaindiff, pcapng, selftest
from ..tee.debug_errors import ChainsDiverge, NotReplayable, ReplayMismatch, SelftestFailed
from ..tee.decode import Decoded, decode_capture, format_packet, to_json
from ..tee.replay import replay
from .common import _print

COLUMN = 72
LOG_TAIL = 8


def side_by_side(left: list[str], right: list[str], width: int = COLUMN) -> list[str]:
    def cut(s: str) -> str:
        return s if len(s) <= width else s[:width - 1] + "…"

    return [f"{cut(a):<{width}} | {cut(b)}".rstrip() for a, b in zip_longest(left, right, fillvalue="")]


def _packet_lines(d: Decoded | None, t0: int) -> list[str]:
    return format_packet(d, t0) if d is not None else ["(no answer)"]


def cmd_tee_replay(g: Globals, args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        raise AgentError(f"{args.file}: {e.strerror or e}") from None
    try:
        decoded = decode_capture(pcapng.parse(data))
    except pcapng.PcapngError as e:
        raise type(e)(f"{args.file}: {e}") from None
    if not any(d.outbound is not False and d.frame is not None and not d.frame.is_response for d in decoded):
        raise NotReplayable(f"{args.file}: no request of the normal world to replay")
    out, prepared = replay(decoded, g.home, strict=args.strict, timeout=g.timeout, keep=args.keep)
    if args.capture:
        Path(args.capture).write_bytes(pcapng.encode(out.replayed))
    diff = out.difference
    log = prepared.pop("secure_log")
    mode = "strict" if args.strict else "shape"
    obj = {"file": args.file, "matched": diff is None, "mode": mode, "requests": out.requests,
           "answers_compared": out.compared, "connections": out.connections, "prepared": prepared,
           "notes": out.notes, "difference": None, "secure_log": log[-LOG_TAIL:] if diff else []}
    t0c = decoded[0].ts_us if decoded else 0
    t0r = out.replayed.packets[0].ts_us if out.replayed and out.replayed.packets else 0
    what = (f"device key {'yes' if prepared['key'] else 'no'}, paired {'yes' if prepared['paired'] else 'no'}, "
            f"time-lock {prepared['timelock']}, committed height {prepared['committed_height']}")
    lines = [f"replayed {out.requests} requests of {args.file} on {out.connections} connection(s) to a fresh "
             f"secure world ({mode} comparison)", f"prepared as the capture's start: {what}"]
    lines += [f"  {n}" for n in out.notes]
    if diff is None:
        lines.append(f"all {out.compared} answers match")
        _print(args, obj, "\n".join(lines))
        return 0
    obj["difference"] = {"frame": diff["frame"], "request_frame": diff["request_frame"],
                         "differences": [asdict(x) for x in diff["differences"]],
                         "captured": to_json(diff["captured"], t0c),
                         "replayed": to_json(diff["replayed"], t0r) if diff["replayed"] else None,
                         "captured_request": to_json(diff["captured_request"], t0c),
                         "sent_request": to_json(diff["sent_request"], t0r)}
    req = diff["captured_request"]
    name = req.header.get("command", "?") if req.header else "malformed bytes"
    lines.append(f"first difference at frame #{diff['frame']}, the answer to #{diff['request_frame']} ({name}), "
                 f"after {out.compared - 1} matching answers:")
    lines += [f"  {x.field}: captured {x.captured}, replayed {x.replayed}" for x in diff["differences"]]
    lines += ["", *side_by_side([f"request #{req.number} as captured"], ["as sent to the fresh secure world"]),
              *side_by_side(format_packet(req, t0c), format_packet(diff["sent_request"], t0r)), "",
              *side_by_side([f"answer #{diff['frame']} as captured"], ["the fresh secure world's answer"]),
              *side_by_side(format_packet(diff["captured"], t0c), _packet_lines(diff["replayed"], t0r))]
    if log:
        lines += ["", "the fresh secure world's log (last lines):"] + [f"  {x}" for x in log[-LOG_TAIL:]]
    _print(args, obj, "\n".join(lines))
    first = diff["differences"][0]
    raise ReplayMismatch(f"{args.file}: the answer to #{diff['request_frame']} differs at frame #{diff['frame']}: "
                         f"{first.field} {first.captured} -> {first.replayed}", diff["frame"])


def cmd_tee_selftest(g: Globals, args: argparse.Namespace) -> int:
    checks = selftest.run(g.tee, g.home, g.timeout)
    _print(args, selftest.to_json(checks), "\n".join(selftest.format_table(checks)))
    if not all(c.passed for c in checks):
        raise SelftestFailed(selftest.failed_checks(checks))
    return 0


def cmd_tee_bench(g: Globals, args: argparse.Namespace) -> int:
    r = bench.run(g.tee, g.home, args.n, g.timeout)
    _print(args, r, "\n".join(bench.format_report(r)))
    return 0


def cmd_chain_diff(g: Globals, args: argparse.Namespace) -> int:
    report = chaindiff.compare(g.tee, g.home, g.timeout, g.lock_wait_s)
    _print(args, report.to_json(), "\n".join(chaindiff.format_report(report)))
    dg = report.diagnosis
    if not dg.ok:
        raise ChainsDiverge(f"chains differ: {dg.state}" + (f" ({dg.error})" if dg.error else "")
                            + f"; recovery: {dg.recovery}", dg.state, dg.recovery)
    return 0


def add_tee_commands(tee_p, json_flag) -> None:
    p = tee_p.add_parser("replay", help="re-send a capture's requests to a fresh secure world, compare the answers")
    p.add_argument("file", metavar="FILE.pcapng")
    p.add_argument("--strict", action="store_true",
                   help="also compare heights absolutely, body lengths, the challenge's k and STATUS keys")
    p.add_argument("--capture", metavar="OUT.pcapng", help="write the replay's own frames to a pcapng file")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (state, chain, secure log)")
    json_flag(p)
    p.set_defaults(func=cmd_tee_replay)
    p = tee_p.add_parser("selftest", help="factory self-test of both worlds through the ABI (pass/fail table)")
    json_flag(p)
    p.set_defaults(func=cmd_tee_selftest)
    p = tee_p.add_parser("bench", help="handshake and sign latency on this device, with a per-step breakdown")
    p.add_argument("--n", type=int, default=50, help="samples of each kind (default 50; 8 chain blocks each)")
    json_flag(p)
    p.set_defaults(func=cmd_tee_bench)


def add_chain_commands(ch_p, json_flag) -> None:
    p = ch_p.add_parser("diff", help="compare the normal world's chain with the secure world's; say the recovery")
    json_flag(p)
    p.set_defaults(func=cmd_chain_diff)

