"""`aitn utility`: this cycle's work meters; `utility report`: sign ended cycles into the outbox;
`utility allocation`: the node's signed statement for a cycle and this device's share."""

from __future__ import annotations

import argparse
import asyncio
import time

from ..config import Globals
from ..uplink.errors import UnknownDevice
from .common import _identity, _print, chain_access


def _meters(g: Globals):
    from ..utility.meters import Meters

    return Meters(g.home, g.cycle_s)


def cmd_utility_show(g: Globals, args: argparse.Namespace) -> int:
    from ..utility import capacity as cap_mod
    from ..utility import report

    probe = cap_mod.probe(g.board.hardware if g.board else None)
    cap = cap_mod.capacity(probe)
    with _meters(g) as m:
        cycle = m.cycle()
        meters = m.read(cycle)
        due = m.due()
    start = cycle * g.cycle_s
    obj = {"cycle": cycle, "cycle_s": g.cycle_s, "start": start, "ends_in_s": round(start + g.cycle_s - time.time(), 1),
           "meters": meters, "fixed": cap_mod.fixed_wu(cap, g.cycle_s), "variable": report.variable_wu(meters),
           "capacity": cap, "hardware": {"cores": probe.cores, "max_mhz": probe.max_mhz, "ram_mb": probe.ram_mb,
                                         "gpu": probe.gpu, "npu": probe.npu, "source": probe.source},
           "unreported_cycles": due}
    text = [f"cycle {cycle} ({g.cycle_s:g} s, ends in {obj['ends_in_s']:.0f} s): "
            f"fixed {obj['fixed']:.6g} WU, variable so far {obj['variable']:.6g} WU",
            *(f"  {k:<19} {v:,.3f}" if k.endswith("_s") else f"  {k:<19} {v:,.0f}" for k, v in meters.items()),
            f"capacity {cap:g} x Pi 4B ({probe.cores} cores, {probe.max_mhz} MHz, {probe.ram_mb} MiB"
            f"{', GPU' if probe.gpu else ''}{', NPU' if probe.npu else ''})"]
    if due:
        text.append(f"ended cycles not reported yet: {due} (aitn utility report)")
    _print(args, obj, "\n".join(text))
    return 0


def cmd_utility_report(g: Globals, args: argparse.Namespace) -> int:
    """Queue a signed report for every ended cycle not reported yet (then `aitn uplink send`)."""
    from ..uplink.link import read_node
    from ..utility.emit import emit_due
    from .uplink import _outbox

    node = read_node(g.home)
    if node is None or "capacity" not in node:
        raise UnknownDevice("not enrolled (or enrolled by an older agent): run `aitn uplink enroll` first; "
                            "reports are checked against the enrolled capacity")
    _, dev = _identity(g)
    with _meters(g) as m:
        if not m.due():
            done = []
        else:
            done = emit_due(m, _outbox(g), dev=dev, sign=chain_access(g).sign_digest, capacity=node["capacity"])
    _print(args, {"queued": [{"cycle": c, "seq": q} for c, q in done]},
           f"queued {len(done)} report(s)" + (f" for cycles {[c for c, _ in done]}" if done else ""))
    return 0


def cmd_utility_allocation(g: Globals, args: argparse.Namespace) -> int:
    """The enrolled node's statement for a cycle, signature and arithmetic checked; this device's row."""
    from ..incentive import statement
    from ..uplink.link import NodeLink
    from ..utility.errors import AllocationError

    _, dev = _identity(g)

    async def fetch() -> tuple[bytes, bytes]:
        link = await NodeLink.open(g.home)
        try:
            path = "allocation" + (f"?cycle={args.cycle}" if args.cycle is not None else "")
            return await link.get(path), link.node_address
        finally:
            await link.close()

    data, node = asyncio.run(fetch())
    msg = statement.verify(data, node)
    mine = next((row for row in msg["shares"] if row[0] == dev), None)
    obj = statement.to_json(msg)
    obj["device"] = "0x" + dev.hex()
    obj["units"] = str(mine[3]) if mine else "0"
    if mine is None and args.require_share:
        raise AllocationError(f"cycle {msg['cycle']}: this device has no share")
    _print(args, obj, statement.describe(msg) + f"\nthis device: {statement.aitn(int(obj['units']))} AITN")
    return 0


def add_parsers(sub, json_flag) -> None:
    u = sub.add_parser("utility", help="work utility: this cycle's meters (and report, allocation)")
    json_flag(u)
    u.set_defaults(func=cmd_utility_show)
    us = u.add_subparsers(dest="cmd")
    p = us.add_parser("report", help="sign a report for each ended cycle into the outbox")
    json_flag(p)
    p.set_defaults(func=cmd_utility_report)
    p = us.add_parser("allocation", help="the node's signed allocation statement, checked, and this device's share")
    p.add_argument("--cycle", type=int, help="the cycle (default: the latest the node allocated)")
    p.add_argument("--require-share", action="store_true", help="fail when this device has no share")
    json_flag(p)
    p.set_defaults(func=cmd_utility_allocation)
