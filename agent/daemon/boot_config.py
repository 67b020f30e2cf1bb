"""`aitn board apply`: the Raspberry Pi boot files' serial settings for the sensor link.

The sensor microcontroller talks to the Pi on the primary UART (GPIO 14/15). Three settings make
that UART ours: ``enable_uart=1`` in config.txt; on boards whose Bluetooth sits on the PL011
(Pi 3B, 4B, Zero 2 W), ``dtoverlay=disable-bt`` so the PL011 (/dev/ttyAMA0) comes back to the pins;
and no serial console on it (``console=serial0,115200`` removed from cmdline.txt). The Pi 5 has
its Bluetooth on its own UART and a separate debug UART, so it needs only ``enable_uart=1``.
Every file changed is first copied to ``NAME.aitn-backup-<UTC time>``; a file already right is
not touched. The QEMU boards have no boot files: the command line selects their consoles.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..fsio import write_atomic

BT_ON_PL011 = {"rpi3b", "rpi4b", "rpi-zero2w"}
PI_BOARDS = BT_ON_PL011 | {"rpi5"}
SERIAL_CONSOLES = ("console=serial0,", "console=ttyAMA0,", "console=ttyS0,", "console=serial1,")
BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))   # bookworm, then older Raspberry Pi OS
MARK = "# aitn-agent: the primary UART is the sensor link (aitn board apply)"


@dataclass
class Plan:
    board: str
    boot: Path | None
    files: dict[str, str] = field(default_factory=dict)      # name -> new content (only files that change)
    notes: list[str] = field(default_factory=list)


def config_lines(board: str) -> list[str]:
    return ["enable_uart=1"] + (["dtoverlay=disable-bt"] if board in BT_ON_PL011 else [])


def new_config(text: str, board: str) -> str:
    """config.txt with our lines in an [all] section at the end; enable_uart=0 lines are dropped."""
    lines = text.splitlines()
    active = [line.strip() for line in lines]
    missing = [want for want in config_lines(board) if want not in active]
    kept = [line for line in lines if line.strip() not in ("enable_uart=0",)]
    if not missing and len(kept) == len(lines):
        return text
    out = kept + ([""] if kept and kept[-1].strip() else []) + [MARK, "[all]"] + missing
    return "\n".join(out) + "\n"


def new_cmdline(text: str) -> str:
    tokens = text.split()
    kept = [t for t in tokens if not t.startswith(SERIAL_CONSOLES)]
    return text if kept == tokens else " ".join(kept) + "\n"


def find_boot(explicit: Path | None) -> Path:
    for d in ([explicit] if explicit else list(BOOT_DIRS)):
        if (d / "config.txt").is_file():
            return d
    where = explicit or " or ".join(str(d) for d in BOOT_DIRS)
    raise ConfigError(f"no config.txt in {where}: not a Raspberry Pi boot partition (pass --boot DIR)")


def plan(board: str, boot: Path | None = None) -> Plan:
    if board not in PI_BOARDS:
        return Plan(board, None, notes=[f"{board}: no Raspberry Pi boot files; its consoles are chosen on the "
                                        "kernel command line (docs/qemu.md); nothing to apply"])
    d = find_boot(boot)
    p = Plan(board, d)
    config = (d / "config.txt").read_text()
    if (c := new_config(config, board)) != config:
        p.files["config.txt"] = c
    cmd_path = d / "cmdline.txt"
    if cmd_path.is_file():
        cmd = cmd_path.read_text()
        if (c := new_cmdline(cmd)) != cmd:
            p.files["cmdline.txt"] = c
    else:
        p.notes.append(f"{cmd_path} not found: check by hand that no serial console uses the primary UART")
    if not p.files:
        p.notes.append("already applied: nothing to change")
    elif board in BT_ON_PL011:
        p.notes.append("disable-bt: on-board Bluetooth is off; `systemctl disable hciuart` if it is enabled")
    return p


def apply(p: Plan) -> dict[str, str]:
    """Back up and rewrite each changed file; returns name -> backup path. Takes effect at the next boot."""
    backups = {}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name, content in p.files.items():
        path = p.boot / name
        backup = path.with_name(f"{name}.aitn-backup-{stamp}")
        shutil.copy2(path, backup)
        write_atomic(path, content.encode())
        backups[name] = str(backup)
    return backups
