"""The computing-reward schedule: how many AITN the network pays per incentive cycle.

Pure functions of one parameter table (schedule.toml, beside this file). Before the network's
work utility first reaches the milestone, the reward per cycle jumps up in steps with the
network's work utility (the ``jump_up`` table); from the milestone's cycle on it is the peak,
halved every ``halving_years`` (1095 cycles). Every amount is integer base units (10^-18 AITN) and
no cycle pays more than the training reserve has left, whatever the network's path.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..utility.errors import AllocationError

TABLE = Path(__file__).with_name("schedule.toml")
KEYS = ("total_supply", "training_reserve", "decimals", "cycle_hours", "milestone_wu", "halving_years",
        "cycles_per_year", "peak_per_cycle", "jump_up")


@dataclass(frozen=True)
class Params:
    total_supply: int
    training_reserve: int
    decimals: int
    cycle_hours: int
    milestone_wu: float
    halving_years: int
    cycles_per_year: int
    peak_per_cycle: int
    jump_up: tuple[tuple[float, float], ...]

    @property
    def unit(self) -> int:
        return 10 ** self.decimals

    @property
    def reserve_units(self) -> int:
        return self.training_reserve * self.unit

    @property
    def halving_cycles(self) -> int:
        return self.halving_years * self.cycles_per_year


def load(path: Path = TABLE) -> Params:
    """Read and check the table. Raises AllocationError naming the key."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise AllocationError(f"{path}: {e}") from None
    unknown, missing = set(raw) - set(KEYS), set(KEYS) - set(raw)
    if unknown or missing:
        raise AllocationError(f"{path}: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
    for k in KEYS[:-1]:
        if not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] <= 0:
            raise AllocationError(f"{path}: {k} must be a positive integer, got {raw[k]!r}")
    steps = raw["jump_up"]
    try:
        jump = tuple((float(a), float(f)) for a, f in steps)
    except (TypeError, ValueError):
        raise AllocationError(f"{path}: jump_up must be a list of [work utility, fraction] pairs") from None
    if not jump or jump[0][0] != 0 or jump[-1] != (raw["milestone_wu"], 1.0):
        raise AllocationError(f"{path}: jump_up must start at 0 and end at [milestone_wu, 1.0]")
    if any(b[0] <= a[0] or b[1] < a[1] for a, b in zip(jump, jump[1:])) or not all(0 < f <= 1 for _, f in jump):
        raise AllocationError(f"{path}: jump_up must be ascending in both columns, fractions in (0, 1]")
    if raw["training_reserve"] > raw["total_supply"]:
        raise AllocationError(f"{path}: training_reserve above total_supply")
    if raw["peak_per_cycle"] * 2 * raw["halving_years"] * raw["cycles_per_year"] > raw["training_reserve"]:
        raise AllocationError(f"{path}: peak_per_cycle's halvings alone would exceed the training reserve")
    return Params(**{**raw, "jump_up": jump})


def jump_fraction(p: Params, network_wu: float) -> float:
    f = p.jump_up[0][1]
    for at, frac in p.jump_up:
        if network_wu >= at:
            f = frac
    return f


def scheduled(p: Params, network_wu: float, since_milestone: int | None) -> int:
    """The cycle's reward before the reserve cap, in base units. ``since_milestone``: cycles since the
    milestone's cycle (0 in it), None before it."""
    peak = p.peak_per_cycle * p.unit
    if since_milestone is None:
        num, den = jump_fraction(p, network_wu).as_integer_ratio()
        return peak * num // den
    return peak >> (since_milestone // p.halving_cycles)


@dataclass
class Emission:
    """Walks the schedule cycle by cycle: feed each cycle's network work utility, get its reward."""

    params: Params
    cycle: int = 0
    milestone_cycle: int | None = None
    emitted: int = 0

    def next(self, network_wu: float) -> int:
        if self.milestone_cycle is None and network_wu >= self.params.milestone_wu:
            self.milestone_cycle = self.cycle
        since = None if self.milestone_cycle is None else self.cycle - self.milestone_cycle
        amount = min(scheduled(self.params, network_wu, since), self.params.reserve_units - self.emitted)
        self.emitted += amount
        self.cycle += 1
        return amount


def emissions(p: Params, network_wu: Iterable[float]) -> Iterator[int]:
    e = Emission(p)
    for u in network_wu:
        yield e.next(u)
