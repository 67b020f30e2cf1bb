"""agent.train.features: window features, gap handling and the activity label rule on hand-made tables."""

from __future__ import annotations

import numpy as np
import pytest

from agent.records.schema import FLAG_GAP_BEFORE, Table
from agent.train import features as F
from agent.train.errors import FeatureError

RATES = {F.IMU: 100, F.MOTORS: 50, F.POSE: 10, F.BATTERY: 1}     # rows per s


def robot_table(phases, seed=0):
    """Rows of a robot going through `phases` = [(seconds, speed m/s, wheel A, tool A, soc %/min)], in time order."""
    rng = np.random.default_rng(seed)
    parts, t0, x0, soc0 = [], 0.0, 0.0, 50.0
    for secs, speed, wheel, tool, soc_rate in phases:
        for rtype, hz in RATES.items():
            ts = t0 + np.arange(int(secs * hz)) / hz
            n = len(ts)
            tab = Table.empty(n)
            tab["t_ms"][:] = np.round(ts * 1000)
            tab["rtype"][:] = rtype
            if rtype == F.IMU:
                vib = 0.05 + 0.25 * speed + (0.6 if tool else 0)
                tab["ax"][:], tab["ay"][:] = rng.normal(0, vib, n), rng.normal(0, vib, n)
                tab["az"][:] = 9.81 + rng.normal(0, vib, n)
                for k in ("gx", "gy", "gz"):
                    tab[k][:] = rng.normal(0, 0.3 + 2 * vib, n)
            elif rtype == F.MOTORS:
                tab["motor_a"][:, :4] = [wheel / 2, wheel / 2, tool * 0.75, tool * 0.25]
                tab["motor_a"][:, :4] += rng.normal(0, 0.02, (n, 4))
            elif rtype == F.POSE:
                tab["x_m"][:] = x0 + speed * (ts - t0)
                tab["y_m"][:] = 1.0
                tab["heading_deg"][:] = 0.0
            else:
                tab["soc_pct"][:] = np.round(soc0 + soc_rate * (ts - t0) / 60)
                tab["battery_v"][:] = 7.6
                tab["temp_c"][:] = 20.0
            parts.append((ts, rtype, tab))
        t0, x0, soc0 = t0 + secs, x0 + speed * secs, soc0 + soc_rate * secs / 60
    table = Table.concat([p[2] for p in parts])
    order = np.lexsort((table["rtype"], table["t_ms"]))
    return table.take(order)


def test_feature_names_match_the_models_input():
    assert F.N_FEATURES == 16 == len(set(F.FEATURE_NAMES))
    assert F.ACTIVITIES == ("idle", "driving", "working", "charging")


def test_each_phase_gets_its_label():
    phases = [(240, 0.0, 0.0, 0.0, 0.0),     # idle (warm-up for the battery look-back)
              (240, 0.8, 1.2, 0.0, -0.5),    # driving
              (240, 0.4, 0.8, 2.8, -1.0),    # working
              (240, 0.0, 0.0, 0.0, 0.0),     # idle
              (400, 0.0, 0.0, 0.0, 0.7)]     # charging
    table = robot_table(phases)
    w = F.windows(table, F.WindowConfig(imu_rows=64, stride=64))
    assert w.x.shape[1] == 16 and w.x.dtype == np.float32 and np.isfinite(w.x).all()
    labels = F.activity_labels(w.x)
    t = w.t_ms / 1000
    bounds = np.cumsum([0] + [p[0] for p in phases])

    def labels_in(i, settle):
        sel = (t > bounds[i] + settle) & (t < bounds[i + 1] - 1)
        assert sel.sum() > 10
        return set(labels[sel].tolist())
    assert labels_in(1, 2) == {F.ACTIVITIES.index("driving")}
    assert labels_in(2, 2) == {F.ACTIVITIES.index("working")}
    assert labels_in(3, 200) == {F.ACTIVITIES.index("idle")}       # after the soc trend has settled
    assert labels_in(4, 200) == {F.ACTIVITIES.index("charging")}
    driving = (t > bounds[1] + 2) & (t < bounds[2] - 1)
    i = F.FEATURE_NAMES.index
    assert np.allclose(w.x[driving, i("speed")], 0.8, atol=0.02)
    assert np.allclose(w.x[driving, i("wheel_a_mean")], 1.2, atol=0.05)
    assert np.allclose(w.x[driving, i("battery_v")], 7.6)


def test_window_values_are_the_plain_statistics():
    table = robot_table([(200, 0.5, 1.0, 2.0, -0.5)], seed=3)
    w = F.windows(table, F.WindowConfig(imu_rows=50, stride=50))
    k = len(w) - 1
    rows = np.arange(w.first_row[k], w.last_row[k] + 1)
    imu = rows[table["rtype"][rows] == F.IMU]
    assert len(imu) == 50
    a = np.linalg.norm(np.stack([table["ax"][imu], table["ay"][imu], table["az"][imu]], 1), axis=1)
    mot = rows[table["rtype"][rows] == F.MOTORS]
    tool = table["motor_a"][mot, 2:4].sum(1)
    want = {"acc_mean": a.mean(), "acc_std": a.std(), "acc_min": a.min(), "acc_max": a.max(),
            "tool_a_mean": tool.mean(), "tool_a_std": tool.std(),
            "yaw_rate": np.abs(table["gz"][imu]).mean()}
    for name, v in want.items():
        assert w.x[k, F.FEATURE_NAMES.index(name)] == pytest.approx(v, rel=1e-5, abs=1e-6), name


def test_windows_never_span_a_gap():
    table = robot_table([(300, 0.5, 1.0, 0.0, -0.5)])
    imu = np.flatnonzero(table["rtype"] == F.IMU)
    gap_row = imu[len(imu) // 2 + 7]
    table["flags"][gap_row] |= FLAG_GAP_BEFORE          # a few lost frames: no time jump
    w = F.windows(table, F.WindowConfig(imu_rows=64, stride=16))
    assert len(w) > 0
    assert not ((w.first_row < gap_row) & (w.last_row >= gap_row)).any()
    # the battery look-back crosses a short gap: windows right after it still have their trend
    t_gap = table["t_ms"][gap_row]
    assert ((w.t_ms >= t_gap) & (w.t_ms < t_gap + 30_000)).any()


def test_an_outage_restarts_the_look_back():
    table = robot_table([(300, 0.5, 1.0, 0.0, -0.5)])
    imu = np.flatnonzero(table["rtype"] == F.IMU)
    gap_row = imu[len(imu) // 2 + 7]
    table["flags"][gap_row] |= FLAG_GAP_BEFORE
    table["t_ms"][gap_row:] += 60_000                     # the link was down for a minute
    w = F.windows(table, F.WindowConfig(imu_rows=64, stride=16))
    t_gap = table["t_ms"][gap_row]
    assert not ((w.first_row < gap_row) & (w.last_row >= gap_row)).any()
    assert not ((w.t_ms >= t_gap) & (w.t_ms < t_gap + 30_000)).any()
    assert (w.t_ms > t_gap + 30_000).any()


def test_incomplete_and_tiny_inputs():
    assert len(F.windows(Table.empty(0))) == 0
    table = robot_table([(120, 0.5, 1.0, 0.0, 0.0)])
    no_motors = table.take(table["rtype"] != F.MOTORS)
    assert len(F.windows(no_motors)) == 0
    with pytest.raises(FeatureError):
        F.WindowConfig(imu_rows=1)


def test_scaler():
    x = np.random.default_rng(0).normal(3, 2, (100, 16)).astype(np.float32)
    s = F.Scaler.fit(x)
    z = s.apply(x)
    assert np.allclose(z.mean(0), 0, atol=1e-5) and np.allclose(z.std(0), 1, atol=1e-3)
    with pytest.raises(FeatureError):
        F.Scaler.fit(x[:0])
