"""Differentially private aggregates of a batch: Laplace and Gaussian mechanisms, clipped contributions.

Neighbouring batches differ by one record (one row added or removed): the guarantee protects the
presence and content of any single record, not of a whole task or shift. An operator's shift is
many records; by group privacy, k records are protected at k times the epsilon.

Calibration:
    Laplace   b = sensitivity / epsilon                               (L1 sensitivity), delta = 0
    Gaussian  sigma = sqrt(2 ln(1.25 / delta)) * sensitivity / epsilon  (L2 sensitivity); the
              classic analysis (Dwork & Roth, Thm A.1) holds only for epsilon < 1, so a
              per-query epsilon above 1 is refused.

A release answers QUERIES (each sensitivity bounded by clipping to the spec's bounds) and splits
the release's epsilon and delta equally between them (sequential composition). Fault count and the
means are post-processing of noisy answers and cost nothing more.

Floating point: a textbook float Laplace sample leaks through its low-order bits (Mironov, CCS
2012). Every noisy answer is therefore clamped to +-SNAP_BOUND and rounded to a multiple of the
smallest power of two >= the noise scale, Mironov's snapping. His proof assumes an exactly rounded
logarithm and a uniform sample over all doubles, which numpy does not promise, so this closes the
known attack rather than proving the bound; the Gaussian gets the same rounding as defence in depth.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..ingest.frames import RecordType
from ..records.schema import Table
from .budget import PrivacyBudget

MECHANISMS = ("laplace", "gaussian")
#: Public bound on any true answer, for snapping (2^40: far above any batch's count or sum).
SNAP_BOUND = float(2 ** 40)
QUERIES = ("count", "tasks", "battery_v_sum", "distance_m", "motor_a_sum")


def secure_rng() -> np.random.Generator:
    """A numpy Generator seeded from the OS's CSPRNG (256 bits)."""
    return np.random.default_rng(secrets.randbits(256))


def laplace_scale(sensitivity: float, epsilon: float) -> float:
    if not (sensitivity > 0 and epsilon > 0 and math.isfinite(sensitivity / epsilon)):
        raise ValueError(f"Laplace needs sensitivity > 0 and epsilon > 0, got {sensitivity}, {epsilon}")
    return sensitivity / epsilon


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    if not 0 < epsilon <= 1:
        raise ValueError(f"the classic Gaussian mechanism needs 0 < epsilon <= 1, got {epsilon}")
    if not 0 < delta < 1 or not sensitivity > 0:
        raise ValueError(f"the Gaussian mechanism needs 0 < delta < 1 and sensitivity > 0, got {delta}, {sensitivity}")
    return math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon


def _snap(noisy: np.ndarray, scale: float) -> np.ndarray:
    grain = 2.0 ** math.ceil(math.log2(scale))
    return np.clip(np.round(noisy / grain) * grain, -SNAP_BOUND, SNAP_BOUND)


def laplace(value: np.ndarray | float, sensitivity: float, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    b = laplace_scale(sensitivity, epsilon)
    v = np.clip(np.asarray(value, dtype=np.float64), -SNAP_BOUND, SNAP_BOUND)
    return _snap(v + rng.laplace(0.0, b, size=v.shape), b)


def gaussian(value: np.ndarray | float, sensitivity: float, epsilon: float, delta: float,
             rng: np.random.Generator) -> np.ndarray:
    sigma = gaussian_sigma(sensitivity, epsilon, delta)
    v = np.clip(np.asarray(value, dtype=np.float64), -SNAP_BOUND, SNAP_BOUND)
    return _snap(v + rng.normal(0.0, sigma, size=v.shape), sigma)


@dataclass(frozen=True)
class AggregateSpec:
    """One release: its privacy cost and the clipping bounds that bound each query's sensitivity."""

    epsilon: float
    delta: float
    mechanism: str
    battery_v: tuple[float, float]     # V: each BATTERY row's voltage is clipped to this
    motor_a: tuple[float, float]       # A: each MOTORS row's mean current is clipped to this
    max_step_m: float                  # m: each step between consecutive poses is clipped to this

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if self.mechanism == "laplace" and self.delta != 0:
            raise ValueError("the Laplace mechanism has delta = 0")
        if self.mechanism == "gaussian":
            if not 0 < self.delta < 1:
                raise ValueError(f"the Gaussian mechanism needs 0 < delta < 1, got {self.delta}")
            if self.epsilon / len(QUERIES) > 1:
                raise ValueError(f"the Gaussian mechanism needs epsilon <= 1 per query: epsilon "
                                 f"{self.epsilon} over {len(QUERIES)} queries is {self.epsilon / len(QUERIES):g}")
        for name in ("battery_v", "motor_a"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} bounds [{lo}, {hi}]: lower is not below upper")
        if not self.max_step_m > 0:
            raise ValueError(f"max_step_m must be > 0, got {self.max_step_m}")


@dataclass(frozen=True)
class NoisyValue:
    value: float
    epsilon: float        # spent by the query this value comes from (0: pure post-processing)
    delta: float
    mechanism: str
    sensitivity: float    # of the query, under add/remove of one record
    unit: str
    derived_from: str = ""


@dataclass(frozen=True)
class Release:
    label: str
    epsilon: float
    delta: float
    mechanism: str
    values: dict[str, NoisyValue]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "epsilon": self.epsilon, "delta": self.delta, "mechanism": self.mechanism,
                "neighbouring": "add/remove one record", "values": {k: asdict(v) for k, v in self.values.items()}}


def _centred_sum(values: np.ndarray, lo: float, hi: float) -> float:
    """Sum of (clip(v) - mid): one row moves it by at most (hi - lo) / 2; NaN contributes 0."""
    mid = (lo + hi) / 2
    return float(np.nansum(np.clip(values, lo, hi) - mid))


def true_answers(table: Table, spec: AggregateSpec) -> dict[str, np.ndarray]:
    """The exact query answers (never released as such; exposed for tests)."""
    rtype = table["rtype"].astype(np.int64)
    counts = np.array([(rtype == t).sum() for t in RecordType], dtype=np.float64)
    task = table["task_id"]
    tasks = float(len(np.unique(task[task >= 0])))
    batt = table["battery_v"][rtype == RecordType.BATTERY]
    motors = table["motor_a"][rtype == RecordType.MOTORS]
    present = (~np.isnan(motors)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        motor_mean = np.nansum(motors, axis=1) / present  # a row with every motor NaN: NaN, contributes 0
    x, y = table["x_m"], table["y_m"]
    ok = np.isfinite(x) & np.isfinite(y)
    steps = np.minimum(np.hypot(np.diff(x[ok]), np.diff(y[ok])), spec.max_step_m)
    return {"count": counts, "tasks": np.array(tasks),
            "battery_v_sum": np.array(_centred_sum(batt, *spec.battery_v)),
            "distance_m": np.array(float(steps.sum())),
            "motor_a_sum": np.array(_centred_sum(motor_mean, *spec.motor_a))}


def sensitivities(spec: AggregateSpec) -> dict[str, float]:
    """Per query, under add/remove of one row: a row is in one count bin; may be a task's only row;
    moves a centred sum by at most half its range; and, removed between two poses, replaces two
    clipped steps by one (triangle inequality), so the distance moves by at most 2 max_step_m."""
    return {"count": 1.0, "tasks": 1.0, "battery_v_sum": (spec.battery_v[1] - spec.battery_v[0]) / 2,
            "distance_m": 2 * spec.max_step_m, "motor_a_sum": (spec.motor_a[1] - spec.motor_a[0]) / 2}


def release_aggregates(table: Table, spec: AggregateSpec, budget: PrivacyBudget,
                       rng: np.random.Generator | None = None, label: str = "aggregates") -> Release:
    """Spend ``spec.epsilon``/``spec.delta`` from ``budget`` (durably, first), then answer QUERIES with noise.

    Raises BudgetExhausted, before computing anything, when the budget cannot pay for it."""
    budget.spend(spec.epsilon, spec.delta, label)
    rng = rng if rng is not None else secure_rng()
    eps, dlt = spec.epsilon / len(QUERIES), spec.delta / len(QUERIES)
    sens = sensitivities(spec)
    noisy: dict[str, np.ndarray] = {}
    for q, v in true_answers(table, spec).items():
        noisy[q] = (laplace(v, sens[q], eps, rng) if spec.mechanism == "laplace"
                    else gaussian(v, sens[q], eps, dlt, rng))

    def nv(value: float, q: str, unit: str, derived: str = "") -> NoisyValue:
        return NoisyValue(float(value), eps, dlt, spec.mechanism, sens[q], unit, derived)

    out: dict[str, NoisyValue] = {}
    for t, c in zip(RecordType, noisy["count"]):
        out[f"count.{t.name}"] = nv(max(c, 0.0), "count", "records")
    out["tasks"] = nv(max(float(noisy["tasks"]), 0.0), "tasks", "tasks")
    out["faults"] = NoisyValue(out["count.FAULT"].value, 0.0, 0.0, spec.mechanism, 1.0, "records", "count.FAULT")
    out["distance_m"] = nv(max(float(noisy["distance_m"]), 0.0), "distance_m", "m")
    for name, q, bounds, rt, unit in (("battery_v_mean", "battery_v_sum", spec.battery_v, "BATTERY", "V"),
                                      ("motor_a_mean", "motor_a_sum", spec.motor_a, "MOTORS", "A")):
        lo, hi = bounds
        n = max(out[f"count.{rt}"].value, 1.0)
        out[name] = nv(min(max((lo + hi) / 2 + float(noisy[q]) / n, lo), hi), q, unit,
                       f"midpoint + noisy centred {q} / count.{rt}")
    return Release(label, spec.epsilon, spec.delta, spec.mechanism, out)
