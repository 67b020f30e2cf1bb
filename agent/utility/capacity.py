"""The fixed part of work utility: what the hardware could process, from /proc and /sys.

One standard work utility (WU) is 1 PB of possible computing capacity per incentive cycle (the
seed whitepaper, 3.2.2). The fixed part is a simple weighted function of the hardware, in bytes
per second, scaled to the cycle:

    rate (B/s) = cores x max_MHz x 1e6 x 1 B/cycle x ram_factor x (1 + 0.25 gpu + 0.5 npu)
    ram_factor = min(1, ram_MiB / (512 MiB x cores))        a core without 512 MiB cannot be kept busy
    fixed (WU) = rate x cycle_seconds / 1e15

A Raspberry Pi 4B (4 x 1500 MHz, 4 GiB, VideoCore) is 7.5e9 B/s: 0.648 WU per 24-hour cycle.
``capacity`` is the same rate relative to that Pi 4B (1.0); the node sizes HeteroFL sub-models by
it and checks reports against it. ``fixed_nano_wu`` is the 24-hour figure in 1e-9 WU (= MB per
cycle), the integer the device NFT's mint request carries.

Inputs come from the running kernel where it says them (CPUs online, cpufreq maximum, MemTotal,
/dev/dri render nodes, /dev/accel and known NPU device nodes) and from the board file otherwise;
``Probe.source`` says which for each.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Hardware

BYTES_PER_CYCLE = 1.0
RAM_PER_CORE_MB = 512
GPU_WEIGHT = 0.25
NPU_WEIGHT = 0.5
WU_BYTES = 1e15               # 1 WU = 1 PB per cycle
DAY_S = 86400.0
#: Fallbacks when neither the kernel nor a board file says (a bare x86 machine without cpufreq).
DEFAULT_MHZ = 1000
#: The reference: Raspberry Pi 4B, as in board_configs/rpi4b.toml.
PI4B = Hardware(soc="BCM2711", cpu="Cortex-A72", cpu_cores=4, cpu_max_mhz=1500, ram_mb=4096, gpu=True, npu=False)
NPU_NODES = ("/dev/accel/accel*", "/dev/hailo*", "/dev/apex_*")


@dataclass(frozen=True)
class Probe:
    cores: int
    max_mhz: int
    ram_mb: int
    gpu: bool
    npu: bool
    source: dict[str, str] = field(default_factory=dict, compare=False)


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel.lstrip("/")).read_text()
    except OSError:
        return None


def _cpu_list(text: str) -> int:
    """'0-3,6' -> 5."""
    n = 0
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            n += int(hi) - int(lo) + 1
        elif part:
            n += 1
    return n


def _cores(root: Path) -> int | None:
    text = _read(root, "/sys/devices/system/cpu/online")
    if text:
        try:
            return _cpu_list(text) or None
        except ValueError:
            pass
    info = _read(root, "/proc/cpuinfo")
    n = sum(1 for line in (info or "").splitlines() if line.startswith("processor"))
    return n or None


def _max_mhz(root: Path) -> int | None:
    khz = []
    for path in glob.glob(str(root / "sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq")):
        try:
            khz.append(int(Path(path).read_text().strip()))
        except (OSError, ValueError):
            continue
    return max(khz) // 1000 if khz else None


def _ram_mb(root: Path) -> int | None:
    for line in (_read(root, "/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            try:
                return int(line.split()[1]) // 1024
            except (IndexError, ValueError):
                return None
    return None


def _any(root: Path, patterns: tuple[str, ...]) -> bool:
    return any(glob.glob(str(root / p.lstrip("/"))) for p in patterns)


def probe(board: Hardware | None, root: Path = Path("/")) -> Probe:
    """Read the hardware; the board file fills what the kernel does not say. ``root``: for tests."""
    src: dict[str, str] = {}

    def pick(name: str, found, board_value, default):
        if found is not None:
            src[name] = "kernel"
            return found
        if board_value is not None:
            src[name] = "board"
            return board_value
        src[name] = "default"
        return default

    cores = pick("cores", _cores(root), board.cpu_cores if board else None, os.cpu_count() or 1)
    mhz = pick("max_mhz", _max_mhz(root), board.cpu_max_mhz if board else None, DEFAULT_MHZ)
    ram = pick("ram_mb", _ram_mb(root), board.ram_mb if board else None, 1024)
    # An accelerator the kernel exposes counts; one the board file names counts too (VideoCore has
    # no render node for compute on every kernel, and a board file is written for the product).
    gpu = _any(root, ("/dev/dri/renderD*",)) or bool(board and board.gpu)
    npu = _any(root, NPU_NODES) or bool(board and board.npu)
    src["gpu"] = src["npu"] = "kernel or board"
    return Probe(int(cores), int(mhz), int(ram), gpu, npu, src)


def rate(p: Probe | Hardware) -> float:
    """Theoretical bytes per second (the weighted function above)."""
    if isinstance(p, Hardware):
        p = Probe(p.cpu_cores, p.cpu_max_mhz, p.ram_mb, p.gpu, p.npu)
    ram_factor = min(1.0, p.ram_mb / (RAM_PER_CORE_MB * p.cores))
    accel = 1.0 + GPU_WEIGHT * p.gpu + NPU_WEIGHT * p.npu
    return p.cores * p.max_mhz * 1e6 * BYTES_PER_CYCLE * ram_factor * accel


REFERENCE_RATE = rate(PI4B)


def capacity(p: Probe) -> float:
    """Relative to a Raspberry Pi 4B (1.0), rounded to 4 places so that it is the same number everywhere."""
    return round(rate(p) / REFERENCE_RATE, 4)


def fixed_wu(cap: float, cycle_s: float) -> float:
    """The fixed part for a cycle, from the capacity the node knows (so the node can recompute it)."""
    return cap * REFERENCE_RATE * cycle_s / WU_BYTES


def fixed_nano_wu(p: Probe) -> int:
    """The 24-hour fixed part in 1e-9 WU (MB per cycle): the integer a mint request carries."""
    return round(fixed_wu(capacity(p), DAY_S) * 1e9)
