"""`aitn demand serve`: the demand server (a Flower SuperLink and the ServerApp run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import Globals
from .common import _print


def format_round(r: dict, total: int) -> str:
    """One progress line per round: a bar, the score, who took part, bytes moved, time."""
    bar = "#" * r["round"] + "." * max(0, total - r["round"])
    acc = "" if r["accuracy"] is None else f"accuracy {r['accuracy']:.3f}, "
    text = f"[{bar}] round {r['round']}/{total}: {acc}loss {r['loss']:.4f}"
    if "train_nodes" in r:
        text += (f"; {r['train_nodes']} nodes, {r['train_updates']} device updates, "
                 f"{r['train_num-examples']} samples, {r['bytes_moved'] / 1024:.0f} KiB moved")
    return text + f"; {r['seconds']:.1f} s"


def cmd_demand_serve(g: Globals, args: argparse.Namespace) -> int:
    from ..demand.serve import run
    from ..node.server import parse_listen

    state = Path(args.state) if args.state else g.home / "demand"
    rc = {"model": args.model, "width": args.width, "num-server-rounds": args.rounds, "min-nodes": args.min_nodes,
          "min-updates": args.min_updates, "round-seconds": args.round_seconds, "out-dir": str(state / "out")}

    def show(line: str) -> None:
        if "AITN-ROUND " in line:
            print(format_round(json.loads(line.split("AITN-ROUND ", 1)[1]), args.rounds), flush=True)
        elif args.verbose:
            print(line, flush=True)

    rounds = run(state, parse_listen(args.listen), rc, on_line=show)
    _print(args, {"rounds": rounds, "out": rc["out-dir"]},
           f"{len(rounds) - 1} round(s); global model in {rc['out-dir']}/global.aitw")
    return 0


def add_parsers(sub, json_flag) -> None:
    d = sub.add_parser("demand", help="the demand server: Flower SuperLink + ServerApp")
    d = d.add_subparsers(dest="cmd", required=True)
    p = d.add_parser("serve", help="start the SuperLink, run the federated rounds over the nodes, stop")
    p.add_argument("--listen", default="0.0.0.0:9091", metavar="HOST:PORT", help="the SuperLink's HTTP port")
    p.add_argument("--state", help="state folder (default HOME/demand)")
    p.add_argument("--model", choices=("activity", "anomaly"), default="activity")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-nodes", type=int, default=2, help="nodes that must answer a round")
    p.add_argument("--min-updates", type=int, default=2, help="device updates that close a node's group round")
    p.add_argument("--round-seconds", type=float, default=120.0, help="a group round's deadline")
    p.add_argument("--verbose", action="store_true", help="show the Flower run's log")
    json_flag(p)
    p.set_defaults(func=cmd_demand_serve)
