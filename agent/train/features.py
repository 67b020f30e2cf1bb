"""Window features and activity labels from a record Table (agent/records/schema.py), vectorised.

A window is `imu_rows` consecutive IMU rows (every `stride` IMU rows); its span is the rows between
its first and last IMU row, in link order. Windows whose span crosses a row flagged FLAG_GAP_BEFORE
are skipped (records are missing there). Per window, N_FEATURES values, in FEATURE_NAMES order:

    acc_mean acc_std acc_min acc_max   |a| over the window's IMU rows, m/s^2
    gyro_mean gyro_std gyro_max        |omega| over the IMU rows, deg/s
    yaw_rate                           mean |gz|, deg/s
    wheel_a_mean wheel_a_std           motors 0 and 1 (the drive wheels) summed, per MOTORS row in the span, A
    tool_a_mean tool_a_std             motors 2.. (blade, brush) summed, A
    speed                              straight-line distance between the span's first and last POSE / time, m/s
    soc_trend                          (last - first soc) of the BATTERY rows in the `trend_s` before the
                                       window's end (not before the last gap), per minute, %/min
    battery_v temp_c                   the last BATTERY row in that look-back, V and degrees C

A window also needs at least one MOTORS row, two POSE rows in its span and two BATTERY rows (30 s or more
apart) in its look-back; one that lacks them is skipped, so every feature is finite. The look-back may
cross a gap of a few lost frames but not an outage (a gap whose time jump exceeds `outage_s`): a noisy
UART loses a frame every few seconds, and a trend over it is still a trend.

Activity labels (ACTIVITIES), derived from what the robot logs, first rule that holds wins:
    charging  soc rising (soc_trend > 0) while still (speed < 0.05 m/s, wheel_a_mean < 0.1 A)
    working   a tool motor running (tool_a_mean > 0.5 A)
    driving   moving (speed > 0.1 m/s) or wheels drawing current (wheel_a_mean > 0.3 A)
    idle      otherwise
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records.schema import FLAG_GAP_BEFORE, Table
from .errors import FeatureError

IMU, MOTORS, POSE, BATTERY = 3, 4, 1, 5          # agent.ingest.frames.RecordType values (schema.CARRIES)
FEATURE_NAMES = ("acc_mean", "acc_std", "acc_min", "acc_max", "gyro_mean", "gyro_std", "gyro_max", "yaw_rate",
                 "wheel_a_mean", "wheel_a_std", "tool_a_mean", "tool_a_std", "speed", "soc_trend",
                 "battery_v", "temp_c")
N_FEATURES = len(FEATURE_NAMES)
ACTIVITIES = ("idle", "driving", "working", "charging")
_F = {n: i for i, n in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class WindowConfig:
    imu_rows: int = 64          # IMU rows per window
    stride: int = 64            # IMU rows between window starts (= imu_rows: no overlap)
    trend_s: float = 180.0      # look-back for the battery trend, s (soc is logged in whole %)
    min_trend_s: float = 30.0   # shortest look-back that gives a trend, s
    outage_s: float = 5.0       # a gap whose time jump exceeds this restarts the look-back (a link outage)

    def __post_init__(self) -> None:
        if self.imu_rows < 2 or self.stride < 1 or not 0 < self.min_trend_s <= self.trend_s:
            raise FeatureError(f"bad window config {self}")


@dataclass(frozen=True)
class Windows:
    x: np.ndarray               # (k, N_FEATURES) float32
    first_row: np.ndarray       # (k,) int64 table row of the first IMU row
    last_row: np.ndarray        # (k,) int64 table row of the last IMU row
    t_ms: np.ndarray            # (k,) int64 time of the last IMU row

    def __len__(self) -> int:
        return len(self.x)


def _span_counts(rows: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) indices into the sorted `rows` of the rows inside each span [first, last]."""
    return np.searchsorted(rows, first, "left"), np.searchsorted(rows, last, "right")


def _span_mean_std(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c1 = np.concatenate([[0.0], np.cumsum(values)])
    c2 = np.concatenate([[0.0], np.cumsum(values * values)])
    n = np.maximum(hi - lo, 1)
    mean = (c1[hi] - c1[lo]) / n
    return mean, np.sqrt(np.maximum((c2[hi] - c2[lo]) / n - mean * mean, 0.0))


def windows(table: Table, cfg: WindowConfig = WindowConfig()) -> Windows:
    """The feature windows of `table` (rows in link order), gaps and incomplete windows skipped."""
    rtype, t = table["rtype"], table["t_ms"]
    gap = (table["flags"] & FLAG_GAP_BEFORE) != 0
    segment = np.cumsum(gap)                                        # rows between two gaps share a segment
    # A few lost frames leave the battery trend valid (its rows carry their own times); an outage does not.
    jump = np.diff(t.astype(np.int64), prepend=t[:1].astype(np.int64) if len(t) else np.zeros(0, np.int64))
    outage = np.cumsum(gap & (jump > cfg.outage_s * 1000.0))
    acc = np.stack([table["ax"], table["ay"], table["az"]], axis=1)
    gyr = np.stack([table["gx"], table["gy"], table["gz"]], axis=1)
    imu = np.flatnonzero((rtype == IMU) & np.isfinite(acc).all(axis=1) & np.isfinite(gyr).all(axis=1))
    n = cfg.imu_rows
    if len(imu) < n:
        return _empty()
    starts = np.arange(0, len(imu) - n + 1, cfg.stride)
    win = starts[:, None] + np.arange(n)                            # (k, n) indices into imu
    first, last = imu[starts], imu[starts + n - 1]

    a = np.linalg.norm(acc[imu], axis=1)[win]
    g = np.linalg.norm(gyr[imu], axis=1)[win]
    yaw = np.abs(table["gz"][imu])[win]

    motor_a = np.nan_to_num(table["motor_a"])
    mot = np.flatnonzero(rtype == MOTORS)
    m_lo, m_hi = _span_counts(mot, first, last)
    wheel_mean, wheel_std = _span_mean_std(motor_a[mot, :2].sum(axis=1), m_lo, m_hi)
    tool_mean, tool_std = _span_mean_std(motor_a[mot, 2:].sum(axis=1), m_lo, m_hi)

    pose = np.flatnonzero((rtype == POSE) & np.isfinite(table["x_m"]) & np.isfinite(table["y_m"]))
    p_lo, p_hi = _span_counts(pose, first, last)
    p0, p1 = (pose[np.minimum(p_lo, len(pose) - 1)], pose[np.maximum(p_hi - 1, 0)]) if len(pose) else (first, first)
    dist = np.hypot(table["x_m"][p1] - table["x_m"][p0], table["y_m"][p1] - table["y_m"][p0])
    speed = dist / np.maximum((t[p1] - t[p0]) / 1000.0, 1e-3)

    bat = np.flatnonzero((rtype == BATTERY) & np.isfinite(table["soc_pct"]) & np.isfinite(table["battery_v"])
                         & np.isfinite(table["temp_c"]))
    # look-back: BATTERY rows up to the window's last row, no earlier than trend_s before it or the last outage
    # (t_ms is searched as sorted: assumed non-decreasing in link order)
    seg_start = np.searchsorted(outage, outage[last], "left")
    b_hi = np.searchsorted(bat, last, "right")
    b_lo = np.maximum(np.searchsorted(bat, seg_start, "left"),
                      np.searchsorted(t[bat], t[last] - cfg.trend_s * 1000.0, "left") if len(bat) else 0)
    b0, b1 = (bat[np.minimum(b_lo, len(bat) - 1)], bat[np.maximum(b_hi - 1, 0)]) if len(bat) else (first, first)
    trend_min = (t[b1] - t[b0]) / 60_000.0
    soc_trend = (table["soc_pct"][b1] - table["soc_pct"][b0]) / np.maximum(trend_min, 1e-6)

    ok = ((segment[first] == segment[last]) & (m_hi > m_lo) & (p_hi - p_lo >= 2) & (b_hi - b_lo >= 2)
          & (trend_min * 60.0 >= cfg.min_trend_s))
    x = np.stack([a.mean(1), a.std(1), a.min(1), a.max(1), g.mean(1), g.std(1), g.max(1), yaw.mean(1),
                  wheel_mean, wheel_std, tool_mean, tool_std, speed, soc_trend,
                  table["battery_v"][b1], table["temp_c"][b1]], axis=1)[ok]
    return Windows(x.astype(np.float32), first[ok].astype(np.int64), last[ok].astype(np.int64),
                   t[last][ok].astype(np.int64))


def _empty() -> Windows:
    z = np.zeros(0, np.int64)
    return Windows(np.zeros((0, N_FEATURES), np.float32), z, z.copy(), z.copy())


def activity_labels(x: np.ndarray) -> np.ndarray:
    """Class index into ACTIVITIES for each feature row (the rule in the module docstring)."""
    speed, wheel, tool, trend = (x[:, _F[k]] for k in ("speed", "wheel_a_mean", "tool_a_mean", "soc_trend"))
    label = np.zeros(len(x), np.int32)                                          # idle
    label[(speed > 0.1) | (wheel > 0.3)] = ACTIVITIES.index("driving")
    label[tool > 0.5] = ACTIVITIES.index("working")
    label[(trend > 0) & (speed < 0.05) & (wheel < 0.1)] = ACTIVITIES.index("charging")
    return label


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation fitted on a device's own windows (the models expect standardised input)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Scaler":
        if len(x) == 0:
            raise FeatureError("cannot fit a scaler on no windows")
        return cls(x.mean(axis=0).astype(np.float32), (x.std(axis=0) + 1e-6).astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)
