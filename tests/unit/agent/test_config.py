"""Board files: every shipped file validates; every kind of bad file is a ConfigError naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config
from agent.errors import ConfigError

BOARDS = Path(__file__).resolve().parents[3] / "board_configs"
GOOD = (BOARDS / "rpi4b.toml").read_text()


@pytest.mark.parametrize("name", config.board_names())
def test_every_shipped_board_file_is_valid(name):
    cfg = config.load_board(name)
    assert cfg.name == name and cfg.path.parent == BOARDS
    assert cfg.hardware.cpu_cores >= 1 and cfg.hardware.ram_mb >= 512
    assert cfg.limits.battery_v.min < cfg.limits.battery_v.max
    assert config.tee_url(cfg).startswith(("unix://", "/dev/", "socket://"))


def test_the_issue_s_boards_are_all_there():
    assert set(config.board_names()) >= {"qemu-virt", "qemu-raspi3b", "rpi3b", "rpi4b", "rpi5", "rpi-zero2w"}


def _write(tmp_path: Path, text: str, name: str = "rpi4b") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.replace('baudrate = 115200', 'baudrate = 115200\nparity = "N"'), "unknown key [sensor].parity"),
    (lambda t: t.replace('cpu_cores = 4', ''), "missing key [hardware].cpu_cores"),
    (lambda t: t.replace('cpu_cores = 4', 'cpu_cores = "four"'), "[hardware].cpu_cores: expected int"),
    (lambda t: t.replace('cpu_cores = 4', 'cpu_cores = true'), "[hardware].cpu_cores: expected int"),
    (lambda t: t.replace('ram_mb = 4096', 'ram_mb = 1'), "[hardware].ram_mb: 1 is outside"),
    (lambda t: t.replace('gpu = true', 'gpu = "yes"'), "[hardware].gpu: expected bool"),
    (lambda t: t.replace('battery_v = [0.0, 60.0]', 'battery_v = [60.0, 0.0]'), "[limits].battery_v: min 60.0"),
    (lambda t: t.replace('battery_v = [0.0, 60.0]', 'battery_v = [0.0]'), "[limits].battery_v: expected [min, max]"),
    (lambda t: t.replace('name = "rpi4b"', 'name = "rpi5"'), "does not match the file name"),
    (lambda t: t + "\n[extra]\nx = 1\n", "unknown section [extra]"),
    (lambda t: t.replace('[limits]', '[limits'), "not valid TOML"),
    (lambda t: t.replace('url = "unix:///run/aitn/tee.sock"', 'url = "tcp://x"'), "[tee].url must be"),
    (lambda t: t.replace('url = "unix:///run/aitn/tee.sock"', 'url = "serial"').replace(
        'serial_url = "/dev/ttyAMA1"', 'serial_url = ""'), "serial_url is empty"),
])
def test_bad_files_are_refused_with_file_and_key(tmp_path, mutate, message):
    path = _write(tmp_path, mutate(GOOD))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_missing_section(tmp_path):
    text = GOOD[: GOOD.index("[limits]")]
    with pytest.raises(ConfigError, match=r"missing section \[limits\]"):
        config.load(_write(tmp_path, text))


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*rpi4b"):
        config.load_board("no-such-board")


def test_serial_secure_world(tmp_path):
    text = GOOD.replace('url = "unix:///run/aitn/tee.sock"', 'url = "serial"')
    cfg = config.load(_write(tmp_path, text))
    assert config.tee_url(cfg) == "/dev/ttyAMA1"


def test_precedence_flag_env_board_default():
    g = config.resolve_globals(None, None, None, 5.0, environ={})
    assert (str(g.home), g.tee, g.board) == (config.DEFAULT_HOME, config.DEFAULT_TEE, None)
    g = config.resolve_globals(None, None, "qemu-virt", 5.0, environ={})
    assert g.board.name == "qemu-virt" and g.tee == "unix:///run/aitn/tee.sock"
    g = config.resolve_globals(None, None, None, 5.0, environ={"AITN_BOARD": "rpi5", "AITN_TEE": "loop://"})
    assert g.board.name == "rpi5" and g.tee == "loop://"
    g = config.resolve_globals("/x", "unix:///y", "rpi5", 5.0, environ={"AITN_HOME": "/z", "AITN_TEE": "loop://"})
    assert (str(g.home), g.tee) == ("/x", "unix:///y")


def test_cli_board_show_and_a_bad_board(cli, tmp_path):
    import json

    out = json.loads(cli("--board", "rpi-zero2w", "board", "show", "--json").stdout)
    assert out["hardware"]["ram_mb"] == 512 and out["effective"]["tee"] == "unix:///run/aitn/tee.sock"
    res = cli("--board", "nope", "board", "show", check=False)
    assert res.returncode == ConfigError.exit_code and "no board named 'nope'" in res.stderr
