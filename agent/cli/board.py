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


def cmd_board_apply(g: Globals, args: argparse.Namespace) -> int:
    """The boot files' serial settings for the sensor link (agent/daemon/boot_config.py), with backups."""
    from pathlib import Path

    from ..daemon import boot_config

    if g.board is None:
        raise config.ConfigError("no board selected: pass --board NAME or set AITN_BOARD")
    plan = boot_config.plan(g.board.name, Path(args.boot) if args.boot else None)
    backups = {} if args.dry_run else boot_config.apply(plan)
    obj = {"board": plan.board, "boot": str(plan.boot) if plan.boot else None, "changed": sorted(plan.files),
           "backups": backups, "dry_run": args.dry_run, "notes": plan.notes,
           "content": plan.files if args.dry_run else {}}
    lines = [f"{'would change' if args.dry_run else 'changed'} {plan.boot / name}"
             + (f" (backup {backups[name]})" if name in backups else "") for name in sorted(plan.files)]
    if plan.files and not args.dry_run:
        lines.append("takes effect at the next boot")
    _print(args, obj, "\n".join(lines + plan.notes))
    return 0


def add_parsers(sub, json_flag) -> None:
    b_p = sub.add_parser("board", help="board files").add_subparsers(dest="cmd", required=True)
    p = b_p.add_parser("list", help="known boards")
    json_flag(p)
    p.set_defaults(func=cmd_board_list)
    p = b_p.add_parser("show", help="the selected board's settings (--board or $AITN_BOARD)")
    json_flag(p)
    p.set_defaults(func=cmd_board_show)
    p = b_p.add_parser("apply", help="serial settings in the Pi's config.txt and cmdline.txt, with backups (root)")
    p.add_argument("--boot", metavar="DIR", help="the boot partition (default /boot/firmware, then /boot)")
    p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    json_flag(p)
    p.set_defaults(func=cmd_board_apply)
