"""agent.records.clean: every reason counted exactly, Hampel equal to np.median, any batch split the same.

Expected counts are worked out by hand in each test, or by small loop-per-row reference implementations of the
documented rules (kept deliberately naive here) compared on random input with hypothesis.
"""

from __future__ import annotations

import json
import time
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Limits, Range
from agent.errors import ConfigError
from agent.ingest.frames import RecordType as RT
from agent.records.clean import MAD_SCALE, CleanConfig, clean
from agent.records.clean_state import CleanReport, CleanState, format_report
from agent.records.hampel import hampel_windows, sorting_network, wrap180
from agent.records.schema import COLUMNS, FLAG_GAP_BEFORE, FLAG_REPLACED, SchemaError, Table

GAP, REPL = FLAG_GAP_BEFORE, FLAG_REPLACED
T0 = 1_700_000_000_000
LIMITS = Limits(battery_v=Range(0.0, 60.0), motor_current_a=Range(-50.0, 50.0), accel_ms2=Range(-160.0, 160.0),
                gyro_dps=Range(-2000.0, 2000.0), temperature_c=Range(-20.0, 85.0))
#: The mechanics below are written for 7-sample windows and k = 3 (the defaults are wider: see
#: test_defaults_are_the_documented_ones).
H3K3 = {"hampel_half_window": 3, "hampel_k": 3.0}
CFG = CleanConfig(LIMITS, **H3K3)
IMU = ("ax", "ay", "az", "gx", "gy", "gz")


def table(rows: list[dict]) -> Table:
    """A table from row dicts: t (ms after T0), seq (default: the row's index), rtype, flags, channels.
    IMU rows default every axis to 0, BATTERY rows to a valid reading, so that only what a test sets varies."""
    t = Table.empty(len(rows), {"device": "test", "schema_version": 1})
    for i, r in enumerate(rows):
        r = dict(r)
        rtype = r.pop("rtype", RT.IMU)
        t["t_ms"][i] = T0 + r.pop("t", i * 10)
        t["seq"][i] = r.pop("seq", i)
        t["rtype"][i] = rtype
        t["flags"][i] = r.pop("flags", 0)
        if rtype == RT.IMU:
            r = {**dict.fromkeys(IMU, 0.0), **r}
        elif rtype == RT.BATTERY:
            r = {"battery_v": 24.0, "soc_pct": 80.0, "temp_c": 30.0, **r}
        elif rtype == RT.MOTORS:
            r.setdefault("motor_a", [1.0, 1.0])
        for k, v in r.items():
            if k == "motor_a":
                t[k][i, :len(v)] = v
            else:
                t[k][i] = v
    return t


def run(t: Table, cfg: CleanConfig = CFG, state: CleanState | None = None, **kw) -> tuple[Table, CleanReport]:
    return clean(t, cfg, CleanState() if state is None else state, final=kw.pop("final", True), **kw)


def balanced(rep: CleanReport) -> bool:
    return rep.rows_in == rep.rows_out + sum(rep.dropped.values()) + rep.held


# -- 1 type -----------------------------------------------------------------------------------------------

def test_bad_rtype_and_seq_are_dropped_by_reason():
    t = table([{}, {}, {}, {}, {}])
    t["rtype"][1] = 0
    t["rtype"][2] = 42
    t["seq"][3] = 1 << 32
    out, rep = run(t)
    assert rep.dropped == {"type:rtype": 2, "type:seq": 1}
    assert out["seq"].tolist() == [0, 4] and balanced(rep)


def test_wrong_dtype_or_shape_raises_schema_error():
    t = table([{}])
    t.columns["t_ms"] = t["t_ms"].astype(np.float64)
    with pytest.raises(SchemaError) as e:
        run(t)
    assert e.value.column == "t_ms"
    t = table([{}])
    t.columns["motor_a"] = np.zeros((1, 4))
    with pytest.raises(SchemaError):
        run(t)


# -- 2 duplicates -----------------------------------------------------------------------------------------

def test_non_consecutive_duplicates_within_the_window():
    seqs = [10, 11, 12, 11, 13, 10, 14, 15, 12]
    cfg = CleanConfig(LIMITS, **H3K3, dedup_window=5)
    out, rep = run(table([{"seq": s} for s in seqs]), cfg)
    # 11 (3 rows back) and 10 (5 rows back) are within 5 rows; the last 12 is 6 rows after its first.
    assert rep.dropped == {"duplicate": 2}
    assert out["seq"].tolist() == [10, 11, 12, 13, 14, 15, 12]


def test_duplicates_across_batches_and_the_seq_wrap():
    top = (1 << 32) - 2
    state = CleanState()
    out1, r1 = run(table([{"seq": top, "t": 0}, {"seq": top + 1, "t": 10}, {"seq": 0, "t": 20}]),
                   state=state, final=False)
    state = CleanState.from_json(state.to_json())
    out2, r2 = run(table([{"seq": top + 1, "t": 25}, {"seq": 1, "t": 30}, {"seq": 0, "t": 40}]), state=state)
    assert r1.dropped == {} and r2.dropped == {"duplicate": 2}
    assert Table.concat([out1, out2])["seq"].tolist() == [top, top + 1, 0, 1]


def test_in_order_batches_keep_the_window_for_later_ones():
    state, cfg, outs, base = CleanState(), CleanConfig(LIMITS, **H3K3, dedup_window=12), [], 0
    for seqs in ([*range(10)], [*range(10, 20)], [8, 7, 20, 15, 21]):
        out, rep = run(table([{"seq": q, "t": 10 * (base + i)} for i, q in enumerate(seqs)]), cfg, state,
                       final=False)
        outs.append(out)
        base += len(seqs)
    # 8 comes 12 rows after its first (just within the window), 7 comes 14 rows after (kept), 15 comes 8
    assert rep.dropped == {"duplicate": 2}
    out, _ = run(Table.empty(), cfg, state)
    assert Table.concat([*outs, out])["seq"].tolist() == [*range(20), 7, 20, 21]
    # an in-order batch that starts on a recent seq is not taken for new
    _, rep = run(table([{"seq": q, "t": 300 + q} for q in (19, 20, 21, 22)]), cfg, state)
    assert rep.dropped == {"duplicate": 3}


def test_restart_seqs_are_not_duplicates():
    rows = [{"seq": s} for s in (100, 101, 102)] + [{"seq": 0, "flags": GAP}, {"seq": 1}, {"seq": 101},
                                                     {"seq": 1}]
    out, rep = run(table(rows))
    # after the flagged backward step (a reboot) 0, 1 and 101 are new; the second 1 is a duplicate.
    assert rep.dropped == {"duplicate": 1}
    assert out["seq"].tolist() == [100, 101, 102, 0, 1, 101]
    # without the flag the backward step is no reboot: 100 101 102 101 1 101 1 has three duplicates
    rows[3] = {"seq": 101}
    out, rep = run(table(rows))
    assert rep.dropped == {"duplicate": 3} and out["seq"].tolist() == [100, 101, 102, 1]


def dedup_reference(seqs: list[int], flags: list[int], window: int) -> list[bool]:
    """The documented rule, one row at a time: epochs end at a flagged backward step; a seq seen among the
    previous `window` rows of the same epoch is a duplicate."""
    out, epoch, hist = [], 0, []
    for i, (s, f) in enumerate(zip(seqs, flags)):
        if i and f & GAP and ((s - seqs[i - 1] + (1 << 31)) % (1 << 32)) - (1 << 31) < 0:
            epoch += 1
        out.append((epoch, s) in hist[max(0, i - window):i])
        hist.append((epoch, s))
    return out


def mostly_rising(steps: list[int], start: int) -> list[int]:
    """A sequence from steps (mostly +1): long runs in order, so that whole batches are, now and then."""
    out = [start]
    for d in steps:
        out.append(max(0, out[-1] + d))
    return out


rising = st.builds(mostly_rising, st.lists(st.sampled_from([1] * 12 + [0, 2, 5, -1, -2, -4, -9]), max_size=79),
                   st.integers(0, 40))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.lists(st.integers(0, 40), min_size=1, max_size=80), rising),
       st.lists(st.integers(0, 9), min_size=80, max_size=80), st.integers(0, 12),
       st.lists(st.integers(0, 80), max_size=5))
def test_dedup_matches_the_reference_in_any_batching(seqs, flag_rolls, window, cuts):
    flags = [GAP if roll == 0 else 0 for roll in flag_rolls[:len(seqs)]]
    t = table([{"seq": s, "flags": f, "t": i} for i, (s, f) in enumerate(zip(seqs, flags))])
    expected = dedup_reference(seqs, flags, window)
    cfg = CleanConfig(LIMITS, **H3K3, dedup_window=window, reorder_window=0)
    out, rep = batched(t, cfg, cuts)
    assert rep.dropped.get("duplicate", 0) == sum(expected)
    assert out["t_ms"].tolist() == [T0 + i for i, d in enumerate(expected) if not d]


# -- 3 timestamps -----------------------------------------------------------------------------------------

def test_implausible_timestamps():
    t = table([{"t": 0}, {"t": 10}, {"t": 20}, {"t": 30}, {"t": 40}])
    t["t_ms"][1] = 1_000                      # 1970: a Pi that never got NTP
    t["t_ms"][2] = 5_000_000_000_000          # year 2128
    t["t_ms"][3] = T0 + 3_600_000             # an hour ahead of now
    out, rep = run(t, now_ms=T0 + 100)
    assert rep.dropped == {"range:t_ms": 3} and out["t_ms"].tolist() == [T0, T0 + 40]
    _, rep = run(t)
    assert rep.dropped == {"range:t_ms": 2}


# -- 4 reordering -----------------------------------------------------------------------------------------

def test_reorder_within_the_window_and_drop_the_late():
    ts = [0, 10, 20, 5, 30, 40, 50, 60, 15, 70, 65, 65]
    cfg = CleanConfig(LIMITS, **H3K3, reorder_window=3)
    out, rep = run(table([{"t": x, "seq": i} for i, x in enumerate(ts)]), cfg)
    # 5 is 2 places late (kept); 15 is 6 places late (dropped); 65 and 65 are 1 and 2 places late (kept).
    assert rep.dropped == {"late": 1}
    assert out["t_ms"].tolist() == [T0 + x for x in (0, 5, 10, 20, 30, 40, 50, 60, 65, 65, 70)]
    assert out["seq"].tolist() == [0, 3, 1, 2, 4, 5, 6, 7, 10, 11, 9]     # stable: ties keep arrival order


def test_an_in_order_batch_can_still_start_late():
    state, cfg = CleanState(), CleanConfig(LIMITS, **H3K3, reorder_window=1)
    out1, _ = run(table([{"t": x} for x in (0, 10, 20, 30)]), cfg, state, final=False)
    out2, rep = run(table([{"t": x, "seq": 4 + i} for i, x in enumerate((15, 40))]), cfg, state)
    # 15 is below 20, the largest t at least 2 rows before it: late
    assert rep.dropped == {"late": 1}
    assert Table.concat([out1, out2])["t_ms"].tolist() == [T0 + x for x in (0, 10, 20, 30, 40)]


def late_reference(ts: list[int], window: int) -> list[bool]:
    return [i > window and t < max(ts[:i - window]) for i, t in enumerate(ts)]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.lists(st.integers(0, 60), min_size=1, max_size=80), rising), st.integers(0, 6),
       st.lists(st.integers(0, 80), max_size=5))
def test_reordering_property(ts, window, cuts):
    t = table([{"t": x, "seq": i} for i, x in enumerate(ts)])
    cfg = CleanConfig(LIMITS, **H3K3, reorder_window=window)
    out, rep = batched(t, cfg, cuts)
    late = late_reference(ts, window)
    assert rep.dropped.get("late", 0) == sum(late)
    assert rep.rows_in == rep.rows_out + sum(rep.dropped.values())
    assert (np.diff(out["t_ms"]) >= 0).all()
    kept = sorted((x, i) for i, x in enumerate(ts) if not late[i])
    assert out["seq"].tolist() == [i for _, i in kept]


# -- 5 physical ranges ------------------------------------------------------------------------------------

def test_out_of_range_values_become_nan_or_drop_the_row():
    nan, inf = float("nan"), float("inf")
    rows = [
        {"ax": 200.0},                                                # one IMU axis bad: NaN, row kept
        {"rtype": RT.BATTERY, "battery_v": 99.0, "soc_pct": 120.0, "temp_c": nan},   # nothing valid: dropped
        {"rtype": RT.BATTERY, "soc_pct": -1.0},
        {"rtype": RT.GPS, "lat": 91.0, "lon": 10.0},
        {"rtype": RT.GPS, "lat": 45.0, "lon": -180.0},                # the edge is valid
        {"rtype": RT.MOTORS, "motor_a": [1.0, 51.0, inf]},            # NaN padding is not a bad value
        {"rtype": RT.POSE, "x_m": inf, "y_m": 1.0, "heading_deg": 190.0},
        {"rtype": RT.POSE, "x_m": nan, "y_m": nan, "heading_deg": nan},
        {"gx": -2000.5, "gy": 3000.0},
    ]
    out, rep = run(table(rows))
    assert rep.dropped == {"range:battery_v": 1, "range:x_m": 1}
    assert rep.changed == {"range:ax": 1, "range:soc_pct": 1, "range:lat": 1, "range:motor_a[1]": 1,
                           "range:motor_a[2]": 1, "range:x_m": 1, "range:gx": 1, "range:gy": 1,
                           "unit:heading_deg": 1}
    assert len(out) == 7 and balanced(rep)
    assert np.isnan(out["ax"][0]) and out["ay"][0] == 0.0
    assert np.isnan(out["soc_pct"][1]) and out["battery_v"][1] == 24.0
    assert np.isnan(out["lat"][2]) and out["lon"][2] == 10.0 and out["lat"][3] == 45.0
    assert out["motor_a"][4, 0] == 1.0 and np.isnan(out["motor_a"][4, 1:]).all()
    assert np.isnan(out["x_m"][5]) and out["heading_deg"][5] == -170.0


# -- 6 Hampel ---------------------------------------------------------------------------------------------

def test_sorting_networks_sort_by_the_0_1_principle():
    for n in range(2, 12):
        net = sorting_network(n)
        for bits in product((0, 1), repeat=n):
            v = list(bits)
            for i, j in net:
                if v[i] > v[j]:
                    v[i], v[j] = v[j], v[i]
            assert v == sorted(bits), (n, bits)
    assert len(sorting_network(7)) == 16


def hampel_reference(x: np.ndarray, seg: np.ndarray, h: int, k: float, floor: float, circular: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Straight from the definition: np.median over each full window inside one segment."""
    out, hit = x.copy(), np.zeros(len(x), bool)
    for i in range(h, len(x) - h):
        if seg[i - h] != seg[i + h]:
            continue
        win = x[i - h:i + h + 1]
        if circular:
            w = wrap180(win - x[i])
            med = np.median(w)
            dev, repl = abs(0.0 - med), wrap180(x[i] + med)
        else:
            w, med = win, np.median(win)
            dev, repl = abs(x[i] - med), med
        mad = np.median(np.abs(w - med))
        if dev > max(k * MAD_SCALE * mad, floor):
            out[i], hit[i] = repl, True
    return out, hit


values = st.one_of(st.floats(-150, 150, allow_nan=False),                   # anything
                   st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 2.0, 100.0]))  # ties: MAD of 0


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=70), st.integers(1, 4), st.sampled_from([0.5, 2.0, 3.0]),
       st.sampled_from([0.0, 0.01, 1.5]), st.booleans())
def test_kernel_equals_np_median(xs, h, k, floor, circular):
    x = np.array(xs, dtype=float)
    if circular:
        x = wrap180(x * 2.4)
    repl, bad = hampel_windows(x, h, k * MAD_SCALE, floor, circular)
    ref, hit = hampel_reference(x, np.zeros(len(x)), h, k, floor, circular)
    assert np.array_equal(bad, hit[h:len(x) - h]) if len(x) > 2 * h else len(bad) == 0
    assert np.array_equal(repl[bad], ref[h:len(x) - h][bad])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(values, st.sampled_from([10, 10, 10, 20, 1001, 1500]), st.booleans(),
                          st.integers(0, 30)), min_size=1, max_size=90),
       st.integers(1, 4), st.lists(st.integers(0, 90), max_size=4))
def test_clean_hampel_equals_the_reference_per_segment(rows, h, cuts):
    """IMU rows: ax random (NaN now and then, which leaves the series), time steps some above gap_ms,
    some link-gap flags. ax after cleaning == the reference on ax's finite series, segment by segment."""
    xs, t, spec = [], 0, []
    for x, dt, flagged, nan_roll in rows:
        t += dt
        x = float("nan") if nan_roll == 0 else x
        xs.append(x)
        spec.append({"t": t, "ax": x, "flags": GAP if flagged else 0})
    cfg = CleanConfig(LIMITS, hampel_k=3.0, hampel_half_window=h, reorder_window=2)
    out, rep = batched(table(spec), cfg, cuts)
    x, ts = np.array(xs), np.array([r["t"] for r in spec])
    flagged = np.array([r["flags"] == GAP for r in spec])
    new_seg = np.r_[True, (np.diff(ts) > cfg.gap_ms) | flagged[1:]]
    seg = np.cumsum(new_seg)
    fin = np.isfinite(x)
    ref, hit = hampel_reference(x[fin], seg[fin], h, cfg.hampel_k, cfg.hampel_min_dev["ax"], False)
    expected = x.copy()
    expected[fin] = ref
    np.testing.assert_array_equal(out["ax"], expected)
    assert rep.changed.get("hampel:ax", 0) == hit.sum()
    assert rep.changed.get("range:ax", 0) == (~fin).sum()
    assert ((out["flags"] & REPL) != 0).tolist() == (np.isfinite(x) & np.isin(np.arange(len(x)),
                                                                              np.flatnonzero(fin)[hit])).tolist()
    assert rep.changed.get("gap", 0) == (new_seg[1:] & ~flagged[1:]).sum()


def test_hampel_replaces_a_spike_with_the_median_and_flags_it():
    ax = [1.0, 1.1, 0.9, 1.0, 50.0, 1.05, 0.95, 1.0, 1.1]
    out, rep = run(table([{"ax": a} for a in ax]))
    assert rep.changed == {"hampel:ax": 1}
    assert out["ax"][4] == 1.0 and out["flags"].tolist() == [0, 0, 0, 0, REPL, 0, 0, 0, 0]


def test_one_wire_step_of_jitter_is_not_an_outlier():
    soc = [80.0, 80.0, 80.0, 79.0, 80.0, 80.0, 80.0, 80.0, 80.0, 77.0, 80.0, 80.0, 80.0]
    out, rep = run(table([{"rtype": RT.BATTERY, "soc_pct": s, "t": 1000 * i} for i, s in enumerate(soc)]))
    assert rep.changed == {"hampel:soc_pct": 1} and out["soc_pct"][9] == 80.0 and out["soc_pct"][3] == 79.0


def test_heading_is_filtered_on_the_circle():
    hd = [179.0, -179.5, 179.5, -179.0, 180.0 - 0.5, -179.8, 179.9, 0.0, 179.0, -179.0, 179.5]
    hd[4] = 179.5
    out, rep = run(table([{"rtype": RT.POSE, "x_m": 0.0, "y_m": 0.0, "heading_deg": v} for v in hd]))
    # only the 0.0 is an outlier; crossing +-180 is not, as a plain median would make it
    assert rep.changed == {"hampel:heading_deg": 1}
    assert out["heading_deg"][7] in (179.5, -179.8, 179.9, 179.0)


def test_each_motor_is_its_own_channel():
    m = [[1.0, 5.0]] * 4 + [[1.0, 40.0]] + [[1.0, 5.0]] * 4
    m[3] = [9.0, 5.0]
    out, rep = run(table([{"rtype": RT.MOTORS, "motor_a": v} for v in m]))
    assert rep.changed == {"hampel:motor_a[0]": 1, "hampel:motor_a[1]": 1}
    assert out["motor_a"][3].tolist()[:2] == [1.0, 5.0] and out["motor_a"][4].tolist()[:2] == [1.0, 5.0]
    assert np.isnan(out["motor_a"][:, 2:]).all()


# -- 7 gaps -----------------------------------------------------------------------------------------------

def test_time_gaps_per_stream_and_link_gaps_reach_every_stream():
    rows = [{"t": 0}, {"t": 0, "rtype": RT.BATTERY}, {"t": 10}, {"t": 20, "rtype": RT.FAULT, "fault": 1},
            {"t": 1100},                                          # IMU: 1080 ms > 1000: a gap
            {"t": 1100, "rtype": RT.BATTERY},                     # BATTERY: 1100 ms < 5000: not one
            {"t": 1200, "rtype": RT.FAULT, "fault": 2, "flags": GAP},   # a link gap on a FAULT row
            {"t": 1210, "rtype": RT.BATTERY}, {"t": 1220}, {"t": 1230},
            {"t": 1240, "flags": GAP}]                            # already flagged: not counted again
    out, rep = run(table(rows))
    assert out["flags"].tolist() == [0, 0, 0, 0, GAP, 0, GAP, GAP, GAP, 0, GAP]
    assert rep.changed == {"gap": 3}


def test_the_flag_of_a_dropped_row_moves_to_the_next_kept_row():
    state = CleanState()
    t = table([{"seq": 0}, {"seq": 0, "flags": GAP}, {"seq": 2}, {"seq": 2, "flags": GAP}])
    out1, _ = run(t, state=state, final=False)
    out2, rep2 = run(table([{"seq": 3, "t": 50}]), state=state)
    out = Table.concat([out1, out2])
    assert out["seq"].tolist() == [0, 2, 3] and out["flags"].tolist() == [0, GAP, GAP]
    assert "gap" not in rep2.changed


# -- batches ----------------------------------------------------------------------------------------------

def batched(t: Table, cfg: CleanConfig, cuts: list[int], now_ms: int | None = None
            ) -> tuple[Table, CleanReport]:
    """Clean `t` cut at `cuts`, the state going through JSON between batches as the pipeline keeps it."""
    edges = sorted({0, len(t), *(c for c in cuts if c < len(t))})
    state, outs, rep = CleanState(), [], CleanReport()
    for a, b in zip(edges[:-1], edges[1:]):
        out, r = clean(t.take(np.arange(a, b)), cfg, state, now_ms=now_ms, final=b == len(t))
        assert balanced(r)
        state = CleanState.from_json(state.to_json())
        outs.append(out)
        rep = rep.merge(r)
    if len(t) == 0:
        out, rep = clean(t, cfg, state, final=True)
        outs.append(out)
    assert rep.held == 0 and len(state.pending) == 0
    return Table.concat(outs), rep


def messy_stream(n: int, seed: int) -> Table:
    """IMU, MOTORS, POSE and BATTERY rows with every kind of trouble: spikes, duplicates, rows out of order,
    link gaps, a reboot, values out of range, a long silence."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([RT.IMU, RT.IMU, RT.MOTORS, RT.POSE, RT.BATTERY, RT.TASK_EVENT], n)
    rows, t, seq = [], 0, 0
    for i, kind in enumerate(kinds):
        t += int(rng.choice([0, 7, 40, 300, 1200], p=[0.2, 0.6, 0.15, 0.045, 0.005]))
        seq += 1
        r: dict = {"rtype": kind, "t": t, "seq": seq}
        if rng.random() < 0.04:
            r["t"] = t - int(rng.integers(1, 200))       # out of order, a few late
        if rng.random() < 0.04 and i > 5:
            r["seq"] = seq - int(rng.integers(1, 6))     # a duplicate
        if rng.random() < 0.03:
            r["flags"] = GAP
        if i == n // 2:
            seq, r["seq"], r["flags"] = 0, 0, GAP        # reboot
        spike = 30.0 if rng.random() < 0.05 else 0.0
        if kind == RT.IMU:
            r.update({a: float(np.round(rng.normal(0, 1) + spike, 3)) for a in IMU})
            if rng.random() < 0.03:
                r["az"] = 500.0
        elif kind == RT.MOTORS:
            r["motor_a"] = list(np.round(rng.normal(2, 0.2, 3) + spike, 3))
        elif kind == RT.POSE:
            r.update({"x_m": t / 1000 + spike, "y_m": 0.0, "heading_deg": float(wrap180(t / 50 + spike))})
        elif kind == RT.BATTERY:
            r.update({"battery_v": 24.0 + spike, "soc_pct": 80.0 - t // 10000, "temp_c": 30.0})
        elif kind == RT.TASK_EVENT:
            r.update({"task_id": i, "event": 1})
        rows.append(r)
    return table(rows)


def same_tables(a: Table, b: Table) -> bool:
    if len(a) != len(b):
        return False
    for k, c in COLUMNS.items():
        if c.dtype == "object":
            if a[k].tolist() != b[k].tolist():
                return False
        elif not np.array_equal(a[k], b[k], equal_nan=c.dtype == "float64"):
            return False
    return True


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.integers(1, 399), max_size=12), st.integers(1, 3))
def test_any_batching_gives_the_same_result(seed, cuts, h):
    t = messy_stream(400, seed)
    cfg = CleanConfig(LIMITS, hampel_k=3.0, reorder_window=4, dedup_window=16, hampel_half_window=h)
    whole, r1 = batched(t, cfg, [])
    split, r2 = batched(t, cfg, cuts)
    assert same_tables(whole, split)
    assert (r1.rows_in, r1.rows_out, r1.dropped, r1.changed) == (r2.rows_in, r2.rows_out, r2.dropped, r2.changed)
    assert r1.rows_in == r1.rows_out + sum(r1.dropped.values())


def test_a_batch_edge_just_after_a_segment_start():
    """The first batch can emit only up to the first sample of a new segment (h = 2: the next one waits for
    its right half-window). The second sample of that segment has one in-segment sample on its left, so it
    is not tested, whatever the samples of the old segment, which the state must not carry as context."""
    ax = [(0, 0.0), (10, 0.0), (20, 0.0), (30, 0.0), (40, 0.0), (5000, 0.0), (5010, 100.0), (5020, 0.0),
          (5030, 0.0), (5040, 0.0)]
    t = table([{"t": x, "ax": a} for x, a in ax])
    cfg = CleanConfig(LIMITS, hampel_k=3.0, hampel_half_window=2, reorder_window=0)
    state = CleanState()
    out1, _ = clean(t.take(np.arange(8)), cfg, state)
    assert len(out1) == 6 and state.streams[RT.IMU].context["ax"] == [0.0]
    out2, rep = clean(t.take(np.arange(8, 10)), cfg, state, final=True)
    whole, _ = batched(t, cfg, [])
    assert same_tables(Table.concat([out1, out2]), whole) and whole["ax"][6] == 100.0


def test_the_messy_stream_exercises_every_reason():
    _, rep = batched(messy_stream(2000, 1), CleanConfig(LIMITS, **H3K3, reorder_window=4, dedup_window=16), [])
    assert {"duplicate", "late", "range:az"} <= set(rep.dropped) | set(rep.changed)
    assert {"gap", "hampel:ax", "hampel:motor_a[0]", "hampel:x_m", "hampel:battery_v"} <= set(rep.changed)


def test_rows_are_held_until_nothing_later_can_change_them():
    state = CleanState()
    cfg = CleanConfig(LIMITS, **H3K3, reorder_window=2)
    out, rep = clean(table([{"t": 10 * i, "ax": 0.0} for i in range(10)]), cfg, state)
    # A later row that is not late has t >= 70 (the largest t but for the last reorder_window + 1 rows):
    # 80 and 90 may still be passed. 50, 60, 70 wait for their right half-window (h = 3).
    assert (len(out), rep.held, len(state.pending)) == (5, 5, 5)
    out, rep = clean(Table.empty(), cfg, state, final=True)
    assert (len(out), rep.held, rep.rows_in) == (5, -5, 0) and len(state.pending) == 0


def test_a_silent_stream_does_not_hold_rows_forever():
    state = CleanState()
    rows = [{"t": 1000 * i, "rtype": RT.BATTERY} for i in range(3)]
    rows += [{"t": 2000 + 10 * i, "rtype": RT.FAULT, "fault": 0} for i in range(1, 700)]   # 7 s, no BATTERY
    out, _ = clean(table(rows), CleanConfig(LIMITS, **H3K3, reorder_window=2), state)
    # BATTERY's last sample is more than its gap_ms (5 s) behind: its segment is over, nothing waits for
    # it; only the 2 rows a late row could still pass are held.
    assert len(out) == len(rows) - 2 and (out["rtype"] == RT.BATTERY).sum() == 3


def test_decoded_frames_through_builder_and_cleaner():
    """The MCU's own stream: IMU + MOTORS every 20 ms, a spike, a lost frame, a reboot. Nothing the
    decoder already handled is dropped again; the reboot's repeated seqs are kept."""
    from agent.ingest.frames import FrameDecoder, encode_record
    from agent.records.build import TableBuilder

    def tick(seq, up, ax=0):
        return [encode_record(RT.IMU, seq, {"t_ms": up, "ax": ax, "ay": 0, "az": 9806, "gx": 0, "gy": 0,
                                            "gz": 0}),
                encode_record(RT.MOTORS, seq + 1, {"t_ms": up, "currents_ma": [1500, 1490]})]

    wire = []
    for i in range(20):
        wire.append((tick(2 * i, 1000 + 20 * i, ax=90_000 if i == 10 else 10 * (i % 3)), T0 + 20 * i))
    wire[14] = ([wire[14][0][1]], wire[14][1])             # the IMU frame of tick 14 is lost on the wire
    for i in range(10):                                     # rebooted: seq and uptime start again
        wire.append((tick(2 * i, 5 + 20 * i), T0 + 2000 + 20 * i))
    decoder, builder = FrameDecoder(), TableBuilder("robot")
    for chunks, recv in wire:
        for e in decoder.feed(b"".join(chunks)):
            builder.add(e, recv)
    t = builder.build()
    assert len(t) == 59 and t.meta["build"]["gaps"] == 1 and t.meta["build"]["restarts"] == 1
    out, rep = clean(t, CFG, CleanState(), final=True)
    assert rep.dropped == {} and len(out) == 59
    # the builder marks one row per loss; cleaning marks the other stream's next row too
    assert rep.changed == {"hampel:ax": 1, "gap": 2}
    assert out["ax"][out["seq"] == 20][0] == 0.01 and (np.diff(out["t_ms"]) >= 0).all()
    gaps = out["t_ms"][(out["flags"] & GAP) != 0] - T0
    # the lost IMU frame: its MOTORS row (builder), the next IMU row (cleaning); then the reboot, both streams
    assert gaps.tolist() == [280, 300, 2000, 2000]


# -- state and report -------------------------------------------------------------------------------------

def test_state_json_round_trip():
    state = CleanState()
    clean(messy_stream(300, 7), CleanConfig(LIMITS, **H3K3), state)
    text = state.to_json()
    again = CleanState.from_json(text)
    assert again.to_json() == text
    assert len(again.pending) == len(state.pending) > 0
    assert same_tables(again.pending, state.pending)
    with pytest.raises(SchemaError):
        CleanState.from_json('{"version": 2}')
    with pytest.raises(SchemaError):
        CleanState.from_json("not json")


def test_report_merge_json_and_text():
    a = CleanReport(10, 7, 1, {"late": 2}, {"hampel:ax": 3})
    b = CleanReport(5, 6, -1, {"late": 1, "duplicate": 4}, {"gap": 1})
    m = a.merge(b)
    assert (m.rows_in, m.rows_out, m.held, m.dropped, m.changed) == (
        15, 13, 0, {"late": 3, "duplicate": 4}, {"hampel:ax": 3, "gap": 1})
    assert a.dropped == {"late": 2}                     # merge does not touch its inputs
    assert CleanReport.from_json(m.to_json()) == m
    assert json.loads(m.to_json())["dropped"] == {"duplicate": 4, "late": 3}
    text = format_report(m)
    lines = text.splitlines()
    assert lines[0].split()[-1] == "15" and lines[1].split()[-1] == "13"
    assert [ln.split()[0] for ln in lines if ln.startswith("  ")] == ["duplicate", "late", "hampel:ax", "gap"]
    with pytest.raises(SchemaError):
        CleanReport.from_json('{"rows_in": 1}')


def test_config_is_validated():
    with pytest.raises(ConfigError):
        CleanConfig(LIMITS, **H3K3, reorder_window=-1)
    with pytest.raises(ConfigError):
        CleanConfig(LIMITS, hampel_k=3.0, hampel_half_window=0)
    with pytest.raises(ConfigError):
        CleanConfig(LIMITS, **H3K3, t_min_ms=5, t_max_ms=5)


# -- throughput -------------------------------------------------------------------------------------------

def realistic(n: int, seed: int = 0) -> Table:
    """A robot's mix: 45 % IMU, 25 % MOTORS (4 motors), 15 % POSE, 5 % GPS, 5 % BATTERY, 5 % the rare
    kinds; ~150 records/s; smooth signals with sensor noise at the wire's resolution, 0.1 % spikes."""
    rng = np.random.default_rng(seed)
    kinds = np.array([RT.IMU, RT.MOTORS, RT.POSE, RT.GPS, RT.BATTERY, RT.TASK_EVENT, RT.NOTE, RT.FAULT,
                      RT.OPERATOR])
    rt = kinds[rng.choice(9, n, p=[.45, .25, .15, .05, .05, .0125, .0125, .0125, .0125])]
    t = Table.empty(n, {"device": "bench", "schema_version": 1})
    c = t.columns
    c["t_ms"][:] = T0 + (np.arange(n) * 20) // 3
    c["seq"][:] = np.arange(n)
    c["rtype"][:] = rt
    secs = (c["t_ms"] - T0) / 1000.0

    def put(kind, name, signal, noise, step):
        m = rt == kind
        v = signal(secs[m]) + rng.normal(0, noise, m.sum())
        spikes = rng.random(m.sum()) < 0.001
        v[spikes] += 40 * noise
        c[name][m] = np.round(v / step) * step

    for a, f in zip(IMU, (np.sin, np.cos, lambda s: 9.81 + 0 * s, np.sin, np.cos, np.sin)):
        put(RT.IMU, a, f, 0.05, 1e-3)
    m = rt == RT.MOTORS
    c["motor_a"][m, :4] = np.round(rng.normal(1.5, 0.1, (m.sum(), 4)), 3)
    put(RT.POSE, "x_m", lambda s: 0.3 * s, 0.002, 1e-3)
    put(RT.POSE, "y_m", lambda s: 5 * np.sin(s / 60), 0.002, 1e-3)
    put(RT.POSE, "heading_deg", lambda s: wrap180(s * 2), 0.5, 1e-2)
    put(RT.GPS, "lat", lambda s: 48.1 + 1e-6 * s, 2e-6, 1e-7)
    put(RT.GPS, "lon", lambda s: 11.5 + 1e-6 * s, 2e-6, 1e-7)
    put(RT.BATTERY, "battery_v", lambda s: 24 - 1e-4 * s, 0.01, 1e-3)
    put(RT.BATTERY, "soc_pct", lambda s: 90 - 1e-3 * s, 0.0, 1.0)
    put(RT.BATTERY, "temp_c", lambda s: 35 + 0 * s, 0.2, 0.1)
    c["event"][rt == RT.TASK_EVENT] = 1
    c["fault"][rt == RT.FAULT] = 3
    c["task_id"][:] = 7
    c["operator"][:] = "badge-1"
    c["text"][rt == RT.NOTE] = "ok"
    c["heading_deg"][:] = wrap180(c["heading_deg"])
    return t


@pytest.mark.slow
def test_throughput_on_a_million_realistic_rows(capsys):
    t = realistic(1_000_000)
    times = []
    for _ in range(5):
        state = CleanState()
        start = time.perf_counter()
        out, rep = clean(t, CFG, state, final=True)
        times.append(time.perf_counter() - start)
    rate = len(t) / sorted(times)[2]
    with capsys.disabled():
        print(f"\nclean(): {rate:,.0f} rows/s (median of 5: {sorted(times)[2] * 1000:.0f} ms for {len(t):,} rows)")
    assert rep.rows_out + sum(rep.dropped.values()) == len(t)
    assert rate > 500_000       # far below the target, so that only a real regression fails here


def test_defaults_are_the_documented_ones():
    """11-sample windows and k = 5: on Gaussian noise alone h=3, k=3 replaces about 4.8 % of samples
    (a 7-sample MAD is itself noisy), h=5, k=5 about 0.5 %, while single-sample spikes of many
    sigma are still caught (measured, see BENCHMARKS.md)."""
    cfg = CleanConfig(LIMITS)
    assert (cfg.hampel_half_window, cfg.hampel_k) == (5, 5.0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=200_000)
    x[::1000] += 40.0   # spikes
    repl, out = hampel_windows(x, 5, 5.0 * MAD_SCALE, 0.0)
    spikes = np.zeros(len(x) - 10, bool)
    spikes[(np.arange(0, len(x), 1000) - 5)[1:-1]] = True
    assert out[spikes].all()
    assert out[~spikes].mean() < 0.01
