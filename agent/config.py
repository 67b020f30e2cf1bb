"""Configuration: the only module that reads board TOML files and the environment.

A board file (``board_configs/<name>.toml``) describes one kind of board: its hardware (for the
fixed work utility), the sensor microcontroller's serial link, where the secure world is, and the
physical limits of the sensor channels (for cleaning). Loading is strict: an unknown key, a
missing key or a value of the wrong type or range is a ConfigError naming the file and the key.

Precedence for the global settings: command-line flag, then environment (``AITN_HOME``,
``AITN_TEE``, ``AITN_BOARD``, ``AITN_CYCLE_S``), then the board file, then the built-in default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_HOME = "/var/lib/aitn"
DEFAULT_TEE = "unix:///run/aitn/tee.sock"
#: The incentive cycle, seconds (the network's 24 hours; tests shorten it).
DEFAULT_CYCLE_S = 86400.0
#: A command waits this long for the chain while a service's operation holds it (one signature, one
#: batch's pseudonyms: well under a second on a Pi 4, seconds on a loaded Zero 2 W).
DEFAULT_LOCK_WAIT_S = 60.0
#: Disk quota of the local blockstore, bytes.
DEFAULT_STORE_QUOTA = 1 << 30
#: Where board files are looked up: the source tree (or the installed package's copy), then /etc.
BOARD_DIRS = (Path(__file__).resolve().parents[1] / "board_configs", Path("/etc/aitn/boards"))


@dataclass(frozen=True)
class Globals:
    home: Path
    tee: str
    timeout: float = 10.0
    board: "BoardConfig | None" = None
    cycle_s: float = DEFAULT_CYCLE_S
    lock_wait_s: float = 0.0   # how long to wait for another normal-world process to let go of the chain


@dataclass(frozen=True)
class Hardware:
    soc: str
    cpu: str
    cpu_cores: int
    cpu_max_mhz: int
    ram_mb: int
    gpu: bool
    npu: bool


@dataclass(frozen=True)
class SensorLink:
    url: str
    baudrate: int


@dataclass(frozen=True)
class TeeSection:
    url: str
    serial_url: str
    state_dir: str


@dataclass(frozen=True)
class Range:
    min: float
    max: float


@dataclass(frozen=True)
class Limits:
    battery_v: Range
    motor_current_a: Range
    accel_ms2: Range
    gyro_dps: Range
    temperature_c: Range


@dataclass(frozen=True)
class BoardConfig:
    name: str
    description: str
    machine: str
    home: str
    hardware: Hardware
    sensor: SensorLink
    tee: TeeSection
    limits: Limits
    path: Path


_SCHEMA: dict[str, dict[str, Any]] = {
    "board": {"name": str, "description": str, "machine": str, "home": str},
    "hardware": {"soc": str, "cpu": str, "cpu_cores": (int, 1, 256), "cpu_max_mhz": (int, 100, 10_000),
                 "ram_mb": (int, 64, 1 << 20), "gpu": bool, "npu": bool},
    "sensor": {"url": str, "baudrate": (int, 300, 12_000_000)},
    "tee": {"url": str, "serial_url": str, "state_dir": str},
    "limits": {k: Range for k in ("battery_v", "motor_current_a", "accel_ms2", "gyro_dps", "temperature_c")},
}


def _check(path: Path, section: str, key: str, value: Any, spec: Any) -> Any:
    where = f"{path}: [{section}].{key}"
    if spec is Range:
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{where}: expected [min, max] numbers, got {value!r}")
        if value[0] >= value[1]:
            raise ConfigError(f"{where}: min {value[0]} is not below max {value[1]}")
        return Range(float(value[0]), float(value[1]))
    if isinstance(spec, tuple):
        typ, lo, hi = spec
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(f"{where}: {value} is outside {lo}..{hi}")
        return value
    if not isinstance(value, spec) or (spec is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {spec.__name__}, got {type(value).__name__} {value!r}")
    return value


def load(path: Path) -> BoardConfig:
    """Load and validate one board file; raises ConfigError naming the file and key."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such board file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for section in raw:
        if section not in _SCHEMA:
            raise ConfigError(f"{path}: unknown section [{section}]")
    values: dict[str, dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        table = raw.get(section)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: missing section [{section}]")
        for key in table:
            if key not in keys:
                raise ConfigError(f"{path}: unknown key [{section}].{key}")
        missing = [k for k in keys if k not in table]
        if missing:
            raise ConfigError(f"{path}: missing key [{section}].{missing[0]}")
        values[section] = {k: _check(path, section, k, table[k], spec) for k, spec in keys.items()}
    b = values["board"]
    if b["name"] != path.stem:
        raise ConfigError(f"{path}: [board].name {b['name']!r} does not match the file name {path.stem!r}")
    tee = values["tee"]
    if not (tee["url"].startswith("unix://") or tee["url"] == "serial"):
        raise ConfigError(f"{path}: [tee].url must be unix:///path or \"serial\", got {tee['url']!r}")
    if tee["url"] == "serial" and not tee["serial_url"]:
        raise ConfigError(f"{path}: [tee].url is \"serial\" but [tee].serial_url is empty")
    return BoardConfig(b["name"], b["description"], b["machine"], b["home"], Hardware(**values["hardware"]),
                       SensorLink(**values["sensor"]), TeeSection(**values["tee"]), Limits(**values["limits"]),
                       path)


def board_names(dirs: tuple[Path, ...] = BOARD_DIRS) -> list[str]:
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})


def load_board(name: str, dirs: tuple[Path, ...] = BOARD_DIRS) -> BoardConfig:
    for d in dirs:
        path = d / f"{name}.toml"
        if path.exists():
            return load(path)
    known = ", ".join(board_names(dirs)) or "none"
    raise ConfigError(f"no board named {name!r} (known: {known})")


def tee_url(board: BoardConfig) -> str:
    """The secure world's transport on this board: its Unix socket, or its serial line."""
    return board.tee.serial_url if board.tee.url == "serial" else board.tee.url


def _provisioned_board(home: Path) -> str | None:
    import json

    try:
        board = json.loads((home / "provision.json").read_text()).get("board")
    except (OSError, ValueError, AttributeError):
        return None
    return board if isinstance(board, str) and board else None


def resolve_globals(home: str | None, tee: str | None, board: str | None, timeout: float,
                    environ: dict[str, str] | None = None, cycle_s: float | None = None,
                    lock_wait_s: float | None = None) -> Globals:
    """Flag, then environment, then board file, then built-in default."""
    env = os.environ if environ is None else environ
    board_name = board or env.get("AITN_BOARD")
    if not board_name:   # a provisioned device: the board `aitn provision` recorded
        board_name = _provisioned_board(Path(home or env.get("AITN_HOME") or DEFAULT_HOME))
    cfg = load_board(board_name) if board_name else None
    home = home or env.get("AITN_HOME") or (cfg.home if cfg else DEFAULT_HOME)
    tee = tee or env.get("AITN_TEE") or (tee_url(cfg) if cfg else DEFAULT_TEE)
    cycle_s = _seconds(cycle_s, env, "AITN_CYCLE_S", DEFAULT_CYCLE_S)
    if not cycle_s >= 1 or cycle_s == float("inf"):
        raise ConfigError(f"incentive cycle {cycle_s!r} s: must be at least 1 s")
    lock_wait_s = _seconds(lock_wait_s, env, "AITN_LOCK_WAIT_S", DEFAULT_LOCK_WAIT_S)
    if not 0 <= lock_wait_s < float("inf"):
        raise ConfigError(f"chain lock wait {lock_wait_s!r} s: must be 0 or more")
    return Globals(Path(home), tee, timeout, cfg, float(cycle_s), float(lock_wait_s))


def _seconds(given: float | None, env, name: str, default: float) -> float:
    """The flag's value, else the environment variable's, else the default."""
    if given is not None:
        return given
    text = env.get(name)
    try:
        return float(text) if text else default
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected seconds") from None


def as_dict(cfg: BoardConfig) -> dict:
    def conv(obj: Any) -> Any:
        if hasattr(obj, "__dataclass_fields__"):
            return {f.name: conv(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return conv(cfg)
