"""Local differential privacy of a model update: clip, add Gaussian noise, account with dp-accounting.

Mechanism: the whole update (every tensor as one vector) is scaled down to L2 norm at most C, then
every coordinate gets independent N(0, (z*C)^2) noise. The noise comes from a numpy Generator seeded
from `secrets` (a seed is for tests only: reproducible noise is no noise).

Accounting: local DP protects the device's whole dataset against *any* other dataset, so two clipped
updates can differ by up to 2C (the diameter of the ball), not C. A Gaussian mechanism with std z*C
and L2 sensitivity 2C is exactly a unit-sensitivity Gaussian with noise multiplier z/2, which is the
event composed here (`GaussianDpEvent(z / 2)` under dp-accounting's RDP accountant, add-or-remove
relation). Note: `RdpAccountant(neighboring_relation=REPLACE_ONE)` does NOT double the sensitivity of
a GaussianDpEvent (it returns the add-or-remove figure), hence the explicit z/2.

The ledger (HOME/train/ldp-ledger.json) counts the rounds released per noise multiplier, so epsilon
accumulates across rounds and reboots; a round is recorded before its update is written (a crash in
between over-counts, never under-counts). dp-accounting (which pulls scipy) is the optional `ldp`
extra, imported only when epsilon is asked for.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fsio import write_atomic
from .errors import LdpLedgerError, LdpUnavailable, TrainError

LEDGER = Path("train") / "ldp-ledger.json"
LEDGER_VERSION = 1


@dataclass(frozen=True)
class LdpConfig:
    clip: float                 # C: L2 bound of the whole update
    noise_multiplier: float     # z: noise std is z * C per coordinate
    delta: float                # the delta epsilon is reported at

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise TrainError(f"LDP clip must be > 0, got {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise TrainError(f"LDP noise multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise TrainError(f"LDP delta must be in (0, 1), got {self.delta}")


def clip(update: Sequence[np.ndarray], c: float) -> tuple[list[np.ndarray], float]:
    """The update scaled to L2 norm <= c (unchanged if already inside), and its norm before clipping."""
    norm = math.sqrt(sum(float(np.square(t, dtype=np.float64).sum()) for t in update))
    factor = min(1.0, c / norm) if norm > 0 else 1.0
    return [(np.asarray(t, np.float64) * factor).astype(np.float32) for t in update], norm


def add_noise(update: Sequence[np.ndarray], std: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Each coordinate plus independent N(0, std^2) noise."""
    return [(np.asarray(t, np.float64) + rng.normal(0.0, std, np.shape(t))).astype(np.float32) for t in update]


def privatize(update: Sequence[np.ndarray], cfg: LdpConfig, seed: int | None = None) -> list[np.ndarray]:
    """Clip to cfg.clip, then add N(0, (z*C)^2) per coordinate. seed: tests only (None: from `secrets`)."""
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    clipped, _ = clip(update, cfg.clip)
    return add_noise(clipped, cfg.noise_multiplier * cfg.clip, rng)


def _accounting():
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError:
        raise LdpUnavailable("local DP needs dp-accounting: install the `ldp` extra "
                             "(pip install 'aitn-agent[ldp]')") from None
    return dp_accounting, rdp


def require_accountant() -> None:
    """Raise LdpUnavailable now (before any training) if epsilon could not be computed."""
    _accounting()


def epsilon(events: dict[float, int], delta: float) -> float:
    """Epsilon at `delta` of the rounds in `events` ({noise multiplier z: rounds}), composed by dp-accounting."""
    dpa, rdp = _accounting()
    acc = rdp.RdpAccountant()
    for z, count in sorted(events.items()):
        if count:
            acc.compose(dpa.GaussianDpEvent(z / 2.0), int(count))
    return float(acc.get_epsilon(delta))


class Ledger:
    """Rounds released under LDP, per noise multiplier; durable (write_atomic) across rounds and reboots."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / LEDGER
        self.events = self._load()

    def _load(self) -> dict[float, int]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise LdpLedgerError(f"LDP ledger {self.path} unreadable: {e!r}") from None
        try:
            if doc["version"] != LEDGER_VERSION:
                raise ValueError(f"version {doc['version']}")
            events = {float(e["noise_multiplier"]): int(e["rounds"]) for e in doc["events"]}
        except (KeyError, TypeError, ValueError) as e:
            raise LdpLedgerError(f"LDP ledger {self.path} malformed: {e!r}") from None
        if any(z <= 0 or not math.isfinite(z) or n < 0 for z, n in events.items()):
            raise LdpLedgerError(f"LDP ledger {self.path} has impossible entries")
        return events

    @property
    def rounds(self) -> int:
        return sum(self.events.values())

    def record(self, noise_multiplier: float) -> None:
        """Count one more released round at `noise_multiplier`, durably."""
        self.events[float(noise_multiplier)] = self.events.get(float(noise_multiplier), 0) + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"version": LEDGER_VERSION, "accountant": "dp_accounting.rdp.RdpAccountant",
               "event": "GaussianDpEvent(noise_multiplier / 2) per round (local DP: sensitivity 2C)",
               "events": [{"noise_multiplier": z, "rounds": n} for z, n in sorted(self.events.items())]}
        write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def epsilon(self, delta: float) -> float:
        return epsilon(self.events, delta)
