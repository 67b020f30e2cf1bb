"""`aitn board apply`: the Pi boot files' serial settings, backups, idempotence (on copies of real-shaped files)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.daemon import boot_config as bc
from agent.errors import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
CONFIG = """# For more options and information see http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
enable_uart=0

[cm4]
otg_mode=1

[all]
"""
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n"


@pytest.fixture
def boot(tmp_path):
    d = tmp_path / "firmware"
    d.mkdir()
    (d / "config.txt").write_text(CONFIG)
    (d / "cmdline.txt").write_text(CMDLINE)
    return d


def test_pi4_gets_the_uart_back_from_bluetooth_and_loses_the_serial_console(boot):
    p = bc.plan("rpi4b", boot)
    assert set(p.files) == {"config.txt", "cmdline.txt"}
    cfg = p.files["config.txt"]
    assert "enable_uart=0" not in cfg and cfg.rstrip().endswith("[all]\nenable_uart=1\ndtoverlay=disable-bt")
    assert "[cm4]\notg_mode=1" in cfg and "dtparam=audio=on" in cfg     # the rest is kept as it was
    assert p.files["cmdline.txt"] == "console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
    backups = bc.apply(p)
    assert (boot / "config.txt").read_text() == cfg
    assert {n: open(b).read() for n, b in backups.items()} == {"config.txt": CONFIG, "cmdline.txt": CMDLINE}
    again = bc.plan("rpi4b", boot)                                       # applied: nothing more to do
    assert again.files == {} and "already applied" in again.notes[0]


def test_pi5_needs_only_enable_uart(boot):
    p = bc.plan("rpi5", boot)
    assert "disable-bt" not in p.files["config.txt"] and "enable_uart=1" in p.files["config.txt"]


def test_qemu_boards_have_nothing_to_apply(tmp_path):
    p = bc.plan("qemu-virt", tmp_path)
    assert p.boot is None and p.files == {} and "nothing to apply" in p.notes[0]


def test_a_directory_without_config_txt_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="config.txt"):
        bc.plan("rpi3b", tmp_path)


def test_cli_dry_run_changes_nothing(boot):
    res = subprocess.run([sys.executable, "-m", "agent", "--board", "rpi-zero2w", "board", "apply", "--boot",
                          str(boot), "--dry-run", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["changed"] == ["cmdline.txt", "config.txt"] and out["backups"] == {}
    assert "dtoverlay=disable-bt" in out["content"]["config.txt"]
    assert (boot / "config.txt").read_text() == CONFIG and len(list(boot.iterdir())) == 2
