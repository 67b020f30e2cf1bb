"""`aitn node serve`: this device as its group's node (aiocoap server, rounds, aggregation)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
from pathlib import Path

from ..config import Globals
from ..errors import ConfigError
from .common import _print


def cmd_node_serve(g: Globals, args: argparse.Namespace) -> int:
    from ..node.incentives import IncentiveConfig
    from ..node.rounds import RoundConfig
    from ..node.server import parse_listen, serve

    listen = parse_listen(args.listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        widths = tuple(sorted({float(w) for w in args.widths.split(",")}, reverse=True))
        cfg = RoundConfig(model=args.model, min_updates=args.min_updates, round_seconds=args.round_seconds,
                          max_norm=args.max_norm, upstream=bool(args.superlink), widths=widths, rule=args.rule,
                          trim=args.trim, norm_policy=args.norm_policy, mode=args.mode, k=args.k,
                          max_staleness=args.max_staleness, hold_late=args.hold_late)
        incentives = IncentiveConfig(cycle_s=g.cycle_s, grace_s=args.report_grace, rule=args.allocation_rule,
                                     base=args.cycle_reward)
        incentives.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    folder = args.state if args.state else g.home / "node"
    supernode: list[subprocess.Popen] = []

    def ready(service) -> None:
        print(f"node 0x{service.key.address.hex()} listening on {listen[0]}:{listen[1]}", flush=True)
        if args.superlink:   # this node's Flower SuperNode: the demand server reaches the group through it
            supernode.append(start_supernode(args.superlink, listen[1], folder))
            print(f"Flower SuperNode pid {supernode[0].pid} joined the SuperLink at {args.superlink}", flush=True)

    try:
        asyncio.run(serve(folder, listen, cfg, board=g.board.name if g.board else "", ready=ready,
                          max_body=args.max_item_bytes, incentives=incentives))
    finally:
        for p in supernode:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def cmd_node_allocation(g: Globals, args: argparse.Namespace) -> int:
    from ..incentive import statement
    from ..node.identity import NodeKey
    from ..node.incentives import IncentiveConfig, Incentives
    from ..node.state import NodeState
    from ..utility.errors import AllocationError

    folder = args.state if args.state else g.home / "node"
    if not (folder / "node.db").exists():
        raise ConfigError(f"{folder}: no node state here (pass --state)")
    state = NodeState(folder / "node.db")
    try:
        key = NodeKey.load_or_create(folder)
        data = Incentives(state, key, IncentiveConfig(cycle_s=g.cycle_s)).statement(args.cycle)
    finally:
        state.close()
    if data is None:
        raise AllocationError(f"no allocation statement for cycle {args.cycle if args.cycle is not None else 'any'} "
                              f"of {g.cycle_s:g} s")
    msg = statement.verify(data, key.address)
    _print(args, statement.to_json(msg), statement.describe(msg))
    return 0


def start_supernode(superlink: str, coap_port: int, folder: Path) -> subprocess.Popen:
    """`flower-supernode` whose ClientApp (flower_app/) bridges Flower rounds to this node's daemon."""
    import socket

    from ..demand.serve import flower_bin, flower_env

    with socket.socket() as s:   # its local runtime API needs a port of its own
        s.bind(("127.0.0.1", 0))
        api_port = s.getsockname()[1]
    log = open(Path(folder) / "supernode.log", "ab")
    return subprocess.Popen([flower_bin("flower-supernode"), "--insecure", "--superlink", superlink,
                             "--node-config", f"node-uri='coap://127.0.0.1:{coap_port}'", "--port", str(api_port)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=flower_env())


def cmd_node_status(g: Globals, args: argparse.Namespace) -> int:
    """A node's /status over CoAP (what an operator's tool reads): round, devices, counters."""
    from ..uplink.link import NodeLink

    async def fetch() -> dict:
        link = await NodeLink.open(g.home, args.node, protected=False)
        try:
            return await link.status()
        finally:
            await link.close()

    st = asyncio.run(fetch())
    r = st["round"]
    rejected = {k: v for k, v in st["counters"].items() if k.startswith("rejected")}
    text = (f"node {st['node']}: {st['devices']} device(s); round {r['id']} ({r['model']} w{r['width']:g}) "
            f"{r['updates']}/{r['min_updates']} updates, {r['samples']} samples; model {r['hash'][:16]}..\n"
            f"accepted {sum(v for k, v in st['counters'].items() if k.startswith('accepted'))}, "
            f"duplicates {sum(v for k, v in st['counters'].items() if k.startswith('duplicate'))}, "
            f"rejected {rejected or 0}")
    _print(args, st, text)
    return 0


def add_parsers(sub, json_flag) -> None:
    n = sub.add_parser("node", help="run this device as its group's node").add_subparsers(dest="cmd", required=True)
    p = n.add_parser("serve", help="serve enrollment, rounds, the global model and uploads over CoAP")
    p.add_argument("--listen", default="0.0.0.0:5683", metavar="HOST:PORT")
    p.add_argument("--state", type=Path, help="node state folder (default: HOME/node)")
    p.add_argument("--model", choices=("activity", "anomaly"), default="activity")
    p.add_argument("--widths", default="1.0", help="HeteroFL: sub-model widths handed out by device capacity, "
                                                   "e.g. 1,0.5,0.25 (default 1.0: everyone trains the full model)")
    p.add_argument("--mode", choices=("sync", "async"), default="sync",
                   help="sync rounds, or async (FedBuff: a new global model every --k updates)")
    p.add_argument("--k", type=int, default=10, help="async: updates per aggregation window")
    p.add_argument("--max-staleness", type=int, default=4, help="async: oldest model version still aggregated")
    p.add_argument("--hold-late", action="store_true",
                   help="async under a demand server: keep updates that arrive between rounds for the next one "
                        "(default: acknowledge them stale)")
    p.add_argument("--rule", choices=("fedavg", "median", "trimmed_mean"), default="fedavg")
    p.add_argument("--trim", type=float, default=0.1, help="trimmed_mean: fraction cut from each end")
    p.add_argument("--norm-policy", choices=("reject", "clip"), default="reject",
                   help="an update above --max-norm is refused, or scaled down to it")
    p.add_argument("--min-updates", type=int, default=3, help="updates that close a round")
    p.add_argument("--round-seconds", type=float, default=300.0, help="a round's deadline")
    p.add_argument("--max-norm", type=float, default=100.0, help="updates with a larger L2 norm are refused")
    p.add_argument("--max-item-bytes", type=int, default=16 << 20,
                   help="largest item a device may POST (4.13 above it, before more is kept)")
    p.add_argument("--superlink", metavar="HOST:PORT",
                   help="join the demand server's Flower SuperLink: rounds are opened by it, not one after another")
    p.add_argument("--allocation-rule", choices=("utility", "variable"), default="utility",
                   help="share a cycle's incentive by work utility (fixed + variable) or by the variable part only")
    p.add_argument("--cycle-reward", type=int, default=1000 * 10**18,
                   help="the cycle's incentive before the node's addition, token base units (default 1000 AITN)")
    p.add_argument("--report-grace", type=float,
                   help="seconds after a cycle ends that its reports are still taken (default: a quarter cycle)")
    p.set_defaults(func=cmd_node_serve)
    p = n.add_parser("allocation", help="a cycle's signed allocation statement from a node's state, checked")
    p.add_argument("--state", type=Path, help="node state folder (default: HOME/node)")
    p.add_argument("--cycle", type=int, help="the cycle (default: the latest allocated)")
    json_flag(p)
    p.set_defaults(func=cmd_node_allocation)
    p = n.add_parser("status", help="a node's status over CoAP: round, devices, accepted and rejected items")
    p.add_argument("--node", required=True, metavar="URI", help="coap://HOST:PORT")
    json_flag(p)
    p.set_defaults(func=cmd_node_status)
