"""`aitn board ...`: the board files."""

from __future__ import annotations

import argparse

from .. import config
from ..config import Globals
from .common import _print


def cmd_board_list(g: Globals, args: argparse.Namespace) -> int:
    names = config.board_names()
    _print(args, {"boards": names}, "\n".join(names))
    return 0


def cmd_board_show(g: Globals, args: argparse.Namespace) -> int:
    if g.board is None:
        raise config.ConfigError("no board selected: pass --board NAME or set AITN_BOARD")
    d = config.as_dict(g.board)
    lines = [f"{g.board.name}: {g.board.description} ({g.board.path})"]
    for section in ("hardware", "sensor", "tee", "limits"):
        lines.append(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in d[section].items()))
    lines.append(f"  effective: --home {g.home} --tee {g.tee}")
    _print(args, dict(d, effective={"home": str(g.home), "tee": g.tee}), "\n".join(lines))
    return 0


def add_parsers(sub, json_flag) -> None:
    b_p = sub.add_parser("board", help="board files").add_subparsers(dest="cmd", required=True)
    p = b_p.add_parser("list", help="known boards")
    json_flag(p)
    p.set_defaults(func=cmd_board_list)
    p = b_p.add_parser("show", help="the selected board's settings (--board or $AITN_BOARD)")
    json_flag(p)
    p.set_defaults(func=cmd_board_show)
