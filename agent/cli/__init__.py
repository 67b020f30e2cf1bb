"""`aitn`: the command-line tree. One function per command; AgentError -> exit code + one-line reason.

The commands live in one module per group (tee, data, sensor, train, board); each adds its own
subcommands to the parser.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__, config
from ..errors import AgentError
from . import board, daemon, data, demand, node, sensor, tee, train, uplink, utility

GROUPS = (tee, data, train, uplink, node, demand, board, sensor, utility, daemon)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aitn", description="aitn-agent: a robot's atom of the AI Technology Network")
    ap.add_argument("--version", action="version", version=f"aitn {__version__}")
    ap.add_argument("--board", help="board file from board_configs/ (or $AITN_BOARD): sets the defaults below")
    ap.add_argument("--home", help=f"normal-world state directory ($AITN_HOME, the board's, or {config.DEFAULT_HOME})")
    ap.add_argument("--tee", help="secure world URL: unix:///path or a pyserial URL "
                                  f"($AITN_TEE, the board's, or {config.DEFAULT_TEE})")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the secure world")
    ap.add_argument("--cycle-seconds", type=float, help="incentive cycle length ($AITN_CYCLE_S, or "
                                                        f"{config.DEFAULT_CYCLE_S:g} s)")
    ap.add_argument("--lock-wait", type=float, metavar="SECONDS",
                    help="how long to wait while another normal-world process holds the chain "
                         f"($AITN_LOCK_WAIT_S, or {config.DEFAULT_LOCK_WAIT_S:g} s; 0: fail at once with exit 22)")
    sub = ap.add_subparsers(dest="group", required=True)

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object")

    for group in GROUPS:
        group.add_parsers(sub, json_flag)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        g = config.resolve_globals(args.home, args.tee, args.board, args.timeout, cycle_s=args.cycle_seconds,
                                   lock_wait_s=args.lock_wait)
        return args.func(g, args)
    except AgentError as e:
        print(f"aitn: error: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:  # bad hex and similar argument errors
        print(f"aitn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
