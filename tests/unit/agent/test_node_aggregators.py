"""agent.node.aggregators and agent.node.fedbuff: HeteroFL against explicit embedding, FedBuff's
windows and staleness weights, robust rules and clipping against one scaled or sign-flipped device,
and the configuration's validation."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from agent.node.aggregators import AggregationConfig, HeteroFedAvg, clip, coordinate_median, trimmed_count, trimmed_mean
from agent.node.fedavg import MAX_WEIGHT, REASONS, StreamingFedAvg, UpdateRejected
from agent.node.fedbuff import FedBuff, StaleUpdate, staleness_weight
from agent.train import submodel
from agent.train.manifest import spec_for
from agent.uplink.errors import UplinkError

WIDTHS = (1.0, 0.5, 0.25)
SHAPES = {w: spec_for("activity", w).tensor_shapes for w in WIDTHS}
FULL = SHAPES[1.0]


def shapes_for(width):
    return SHAPES[width]


def _update(rng, shapes, scale=0.05):
    return [rng.normal(0, scale, s).astype(np.float32) for s in shapes]


def _flat(tensors):
    return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])


def _norm(tensors):
    return float(np.linalg.norm(_flat(tensors)))


# -- HeteroFL ------------------------------------------------------------------------------------------


def _devices(seed, widths):
    rng = np.random.default_rng(seed)
    return [(w, _update(rng, SHAPES[w]), int(rng.integers(1, 500))) for w in widths]


def _hetero_reference(devices):
    """Embed each update with submodel.embed, then masked weighted sums over masked weight sums."""
    num = [np.zeros(s) for s in FULL]
    den = [np.zeros(s) for s in FULL]
    for _w, u, n in devices:
        e = submodel.embed(u, FULL)
        for i, (v, m) in enumerate(zip(e.values, e.mask)):
            num[i] += n * v.astype(np.float64)
            den[i] += n * m
    return [np.divide(a, b, out=np.zeros_like(a), where=b > 0) for a, b in zip(num, den)], den


def _hetero(devices, max_norm=10.0):
    agg = HeteroFedAvg(FULL, shapes_for, max_norm)
    for w, u, n in devices:
        agg.add(u, n, w)
    return agg


@pytest.mark.parametrize("seed", range(4))
def test_hetero_equals_explicit_embedding(seed):
    devices = _devices(seed, [1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.5])
    agg = _hetero(devices)
    want, den = _hetero_reference(devices)
    got = agg.result()
    assert agg.count == len(devices) and agg.total_weight == sum(n for *_, n in devices)
    for g, w, s in zip(got, want, FULL):
        assert g.dtype == np.float32 and g.shape == s
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-9)
    # entries held only by the full-width device are exactly its update (w * x / w is exact in float64)
    full_update = devices[0][1]
    half_mask = submodel.embed(devices[1][1], FULL).mask
    assert sum(int((~m).sum()) for m in half_mask) > 0
    for g, u, m in zip(got, full_update, half_mask):
        np.testing.assert_array_equal(g[~m], u[~m])


def test_hetero_entries_no_device_covers_are_zero():
    devices = _devices(7, [0.5, 0.25, 0.5])
    got = _hetero(devices).result()
    want, den = _hetero_reference(devices)
    for g, w, d in zip(got, want, den):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-9)
        assert (g[d == 0] == 0).all()
    # the first hidden layer's kernel (16, 32): columns 16.. were trained by nobody
    assert got[0].shape == (16, 32) and not got[0][:, 16:].any() and got[0][:, :16].all()


def test_hetero_full_width_only_equals_streaming_fedavg():
    devices = _devices(3, [1.0] * 6)
    plain = StreamingFedAvg(FULL, 10.0)
    for _w, u, n in devices:
        plain.add(u, n)
    for a, b in zip(_hetero(devices).result(), plain.result()):
        np.testing.assert_array_equal(a, b)


def _rejections():
    rng = np.random.default_rng(11)
    half, quarter = _update(rng, SHAPES[0.5]), _update(rng, SHAPES[0.25])
    nan = [t.copy() for t in half]
    nan[2][1, 1] = np.nan
    inf = [t.copy() for t in half]
    inf[5][0] = np.inf
    return [
        ("shape", half, 3, 0.25),                                   # a half-width update claiming 0.25
        ("shape", quarter, 3, 0.5),
        ("shape", _update(rng, FULL), 3, 0.5),
        ("shape", half[:-1], 3, 0.5),
        ("shape", [t.astype(np.int32) for t in half], 3, 0.5),
        ("shape", half, 3, 0.0),                                    # widths outside (0, 1]
        ("shape", half, 3, 1.5),
        ("shape", half, 3, float("nan")),
        ("shape", half, 3, True),
        ("non_finite", nan, 3, 0.5),
        ("non_finite", inf, 3, 0.5),
        ("norm", [t * 1000 for t in half], 3, 0.5),
        ("weight", half, 0, 0.5),
        ("weight", half, True, 0.5),
        ("weight", half, 3.0, 0.5),
        ("weight", half, MAX_WEIGHT + 1, 0.5),
    ]


@pytest.mark.parametrize("case", range(len(_rejections())))
def test_hetero_rejection_leaves_state_unchanged(case):
    reason, tensors, weight, width = _rejections()[case]
    agg = _hetero(_devices(5, [1.0, 0.5, 0.25]))
    before = agg.result()
    count, total = agg.count, agg.total_weight
    with pytest.raises(UpdateRejected) as e:
        agg.add(tensors, weight, width)
    assert e.value.reason == reason
    assert agg.rejected == {r: int(r == reason) for r in REASONS}
    assert (agg.count, agg.total_weight) == (count, total)
    for a, b in zip(agg.result(), before):
        np.testing.assert_array_equal(a, b)


def test_hetero_unknown_width_propagates_shapes_for_error_and_bad_shapes_for_is_a_value_error():
    agg = HeteroFedAvg(FULL, shapes_for, 10.0)
    with pytest.raises(KeyError):
        agg.add(_update(np.random.default_rng(0), SHAPES[0.5]), 1, 0.75)
    wrong = HeteroFedAvg(FULL, lambda w: [(17, 8)] + list(SHAPES[0.25][1:]), 10.0)
    with pytest.raises(ValueError, match="leading blocks"):
        wrong.add(_update(np.random.default_rng(0), SHAPES[0.25]), 1, 0.25)
    with pytest.raises(ValueError):
        agg.result()                                    # nothing added
    with pytest.raises(ValueError):
        HeteroFedAvg(FULL, shapes_for, float("nan"))


def test_hetero_fold_makes_no_full_size_temporaries():
    full = [(1000, 1000), (1000,)]
    agg = HeteroFedAvg(full, lambda w: [(submodel.units(1000, w), 1000), (1000,)], max_norm=math.inf)
    rng = np.random.default_rng(0)
    big, half = _update(rng, full), _update(rng, agg.sub_shapes(0.5))
    agg.add(big, 1, 1.0)                                # warm up
    tracemalloc.start()
    try:
        agg.add(big, 2, 1.0)
        agg.add(half, 3, 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000, peak                         # the update itself is 4 MB; the sums 16 MB


# -- FedBuff -------------------------------------------------------------------------------------------


def _stream(seed, n, max_staleness=5):
    rng = np.random.default_rng(seed)
    return [(_update(rng, FULL), int(rng.integers(1, 500)), int(rng.integers(0, max_staleness + 1)))
            for _ in range(n)]


def _fedbuff_reference(items, server_lr=1.0):
    a = np.array([n / math.sqrt(1 + tau) for _u, n, tau in items])
    return [server_lr * np.einsum("k,k...->...", a, np.stack([u[i] for u, *_ in items]).astype(np.float64)) / a.sum()
            for i in range(len(FULL))]


def test_staleness_weight_is_fedbuffs():
    assert [staleness_weight(t) for t in (0, 3, 8)] == [1.0, 0.5, 1 / 3]


@pytest.mark.parametrize("seed", range(3))
def test_fedbuff_flushes_every_kth_update_with_the_staleness_weighted_mean(seed):
    k, items = 4, _stream(seed, 12)
    buf = FedBuff(FULL, k=k, max_staleness=5, max_norm=10.0, server_lr=0.5)
    flags, windows = [], []
    for i, (u, n, tau) in enumerate(items):
        flags.append(buf.add(u, n, tau))
        if flags[-1]:
            windows.append((i, buf.flush()))
            assert buf.count == 0 and not buf.full
    assert flags == [(i + 1) % k == 0 for i in range(12)]
    assert buf.flushes == 3
    for i, got in windows:
        want = _fedbuff_reference(items[i + 1 - k:i + 1], server_lr=0.5)    # no leakage across windows
        for g, w in zip(got, want):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-9)


def test_fedbuff_stale_update_is_refused_and_buffer_unchanged():
    items = _stream(1, 3, max_staleness=2)
    buf, twin = (FedBuff(FULL, k=5, max_staleness=2, max_norm=10.0) for _ in range(2))
    for u, n, tau in items:
        buf.add(u, n, tau)
        twin.add(u, n, tau)
    with pytest.raises(StaleUpdate) as e:
        buf.add(items[0][0], 10, 3)
    assert isinstance(e.value, UplinkError) and e.value.exit_code == 81
    assert (e.value.staleness, e.value.max_staleness) == (3, 2)
    assert buf.count == 3 and buf.stale == 1
    assert buf.add(items[0][0], 10, 2) is False         # the bound itself is accepted
    twin.add(items[0][0], 10, 2)
    for a, b in zip(buf.flush(), twin.flush()):
        np.testing.assert_array_equal(a, b)


def test_fedbuff_after_flush_is_empty():
    buf = FedBuff(FULL, k=2, max_staleness=0, max_norm=10.0)
    (u1, n1, _), (u2, n2, _), (u3, n3, _) = _stream(2, 3, max_staleness=0)
    buf.add(u1, n1, 0)
    assert buf.add(u2, n2, 0) is True
    with pytest.raises(RuntimeError):                   # full: the caller must flush first
        buf.add(u3, n3, 0)
    buf.flush()
    with pytest.raises(ValueError):
        buf.flush()
    buf.add(u3, n3, 0)
    for g, u in zip(buf.flush(), u3):                   # a window of one is that update, nothing older
        np.testing.assert_array_equal(g, u)


def test_fedbuff_rejections_leave_buffer_unchanged():
    (u, n, _), = _stream(4, 1)
    buf = FedBuff(FULL, k=3, max_staleness=1, max_norm=10.0)
    buf.add(u, n, 1)
    bad = [("norm", [t * 100 for t in u], 1), ("shape", u[:-1], 1), ("weight", u, 0),
           ("non_finite", [np.full(s, np.nan, np.float32) for s in FULL], 1)]
    for reason, t, w in bad:
        with pytest.raises(UpdateRejected) as e:
            buf.add(t, w, 0)
        assert e.value.reason == reason
    with pytest.raises(ValueError):
        buf.add(u, n, -1)
    assert buf.count == 1 and buf.rejected == {r: 1 for r in REASONS}
    for g, x in zip(buf.flush(), u):
        np.testing.assert_array_equal(g, x)


@pytest.mark.parametrize("kwargs", [dict(k=0), dict(k=2.0), dict(max_staleness=-1), dict(server_lr=0.0),
                                    dict(server_lr=float("inf")), dict(max_norm=0.0)])
def test_fedbuff_constructor_validates(kwargs):
    with pytest.raises(ValueError):
        FedBuff(FULL, **{"k": 3, "max_staleness": 2, "max_norm": 1.0, **kwargs})


# -- robust rules and clipping -------------------------------------------------------------------------


def test_median_and_trimmed_mean_against_numpy():
    rng = np.random.default_rng(0)
    ups = [_update(rng, FULL) for _ in range(9)]
    for i, g in enumerate(coordinate_median(ups)):
        np.testing.assert_allclose(g, np.median(np.stack([u[i] for u in ups]), axis=0), rtol=1e-6)
    for trim in (0.0, 0.1, 0.25, 0.4):
        k = trimmed_count(9, trim)
        for i, g in enumerate(trimmed_mean(ups, trim)):
            s = np.sort(np.stack([u[i] for u in ups]).astype(np.float64), axis=0)
            np.testing.assert_allclose(g, s[k:9 - k].mean(axis=0), rtol=1e-6, atol=1e-9)
    assert [trimmed_count(10, t) for t in (0.0, 0.1, 0.29, 0.49)] == [0, 1, 2, 4]
    assert trimmed_count(100, 0.29) == 29                # not 28 from 0.29 * 100 = 28.999999999999996


def test_robust_rules_refuse_bad_input():
    rng = np.random.default_rng(0)
    a, b = _update(rng, FULL), _update(rng, SHAPES[0.5])
    for bad in ([], [a, b], [a, [np.full(s, np.nan) for s in FULL]]):
        with pytest.raises(ValueError):
            coordinate_median(bad)
    for trim in (0.5, -0.1, float("nan")):
        with pytest.raises(ValueError):
            trimmed_mean([a, a], trim)


def test_clip():
    rng = np.random.default_rng(0)
    u = _update(rng, FULL, scale=1.0)
    n = _norm(u)
    same, orig = clip(u, n * 2)
    assert orig == pytest.approx(n, rel=1e-12) and all(x is y for x, y in zip(same, u))
    for bound in (n / 2, n / 1e6, 1e-30, 0.37):
        c, orig = clip(u, bound)
        assert _norm(c) <= bound and _norm(c) == pytest.approx(bound, rel=1e-6)
        assert all(x.dtype == np.float32 for x in c)
        np.testing.assert_allclose(_flat(c) / bound, _flat(u) / n, rtol=1e-5, atol=1e-12)   # same direction
        StreamingFedAvg(FULL, bound).check(c)           # what it is for: passes a max_norm = bound check
    big = [np.full(3, 1e300)]                            # squares overflow float64; the norm must not
    c, orig = clip(big, 1.0)
    assert orig == pytest.approx(math.sqrt(3) * 1e300) and _norm(c) <= 1.0
    with pytest.raises(UpdateRejected) as e:
        clip([np.array([1.0, np.nan])], 1.0)
    assert e.value.reason == "non_finite"
    with pytest.raises(ValueError):
        clip(u, 0.0)


# One device of n + 1 sends the honest (weighted) mean scaled by 1e6, or that flipped and scaled.
# With FedAvg-style weights, its update c enters as A' = (W_h A + w_a c) / (W_h + w_a), so
#     A' - A = w_a / W * (c - A),        W = W_h + w_a.
# Clipped, ||c|| <= bound: replacing the attacker's update by a zero one of the same weight moves the
# aggregate by exactly w_a / W * ||c|| <= w_a / W * bound; against the aggregate *without* the attacker
# the move is w_a / W * ||c - A|| <= w_a / W * (bound + ||A||), and a sign flip reaches that: the
# w_a / W * bound bound alone does not hold for it (asserted below as well).

ATTACKS = {"scaled": 1e6, "flipped": -1e6}
HONEST = 8
BOUND = 1.0


def _honest(seed):
    rng = np.random.default_rng(seed)
    ups = [_update(rng, FULL, scale=0.02) for _ in range(HONEST)]
    ws = [int(w) for w in rng.integers(1, 500, HONEST)]
    staleness = [int(t) for t in rng.integers(0, 4, HONEST + 1)]
    return ups, ws, staleness, int(rng.integers(1, 500)), int(rng.integers(0, HONEST + 1))


def _fold(kind, items, bound, policy):
    """The aggregate of (update, weight, staleness) items through one aggregator, norm policy applied."""
    if kind == "fedavg":
        agg = StreamingFedAvg(FULL, bound)
    elif kind == "hetero":
        agg = HeteroFedAvg(FULL, shapes_for, bound)
    else:
        agg = FedBuff(FULL, k=len(items), max_staleness=3, max_norm=bound)
    for u, w, tau in items:
        if policy == "clip":
            u, _ = clip(u, bound)
        try:
            if kind == "fedavg":
                agg.add(u, w)
            elif kind == "hetero":
                agg.add(u, w, 1.0)
            else:
                agg.add(u, w, tau)
        except UpdateRejected:
            assert policy == "reject"
    return agg.flush() if kind == "fedbuff" else agg.result()


def _effective(kind, w, tau):
    return w * staleness_weight(tau) if kind == "fedbuff" else w


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", ["fedavg", "hetero", "fedbuff"])
def test_one_attacker_moves_a_clipped_aggregate_at_most_its_share_of_the_bound(kind, attack, seed):
    ups, ws, taus, w_a, pos = _honest(seed)
    honest = list(zip(ups, ws, taus))
    without = _fold(kind, honest, BOUND, "clip")
    evil = [ATTACKS[attack] * t for t in without]
    with_attacker = _fold(kind, honest[:pos] + [(evil, w_a, taus[-1])] + honest[pos:], BOUND, "clip")
    zeroed = _fold(kind, honest[:pos] + [([np.zeros(s, np.float32) for s in FULL], w_a, taus[-1])] + honest[pos:],
                   BOUND, "clip")
    share = _effective(kind, w_a, taus[-1]) / (sum(_effective(kind, w, t) for _u, w, t in honest)
                                               + _effective(kind, w_a, taus[-1]))
    tol = 1e-6 * BOUND
    a = _norm(without)
    assert a < BOUND                                    # the honest updates were within the bound
    # the attacker's own influence (vs. sending nothing) is at most its weight share of the bound
    assert _norm([x - z for x, z in zip(with_attacker, zeroed)]) <= share * BOUND + tol
    # the move from the honest aggregate, exact for a clipped collinear attack
    move = _norm([x - y for x, y in zip(with_attacker, without)])
    assert move <= share * (BOUND + a) + tol
    if attack == "flipped":
        assert move == pytest.approx(share * (BOUND + a), rel=1e-4)
        assert move > share * BOUND                     # why the bound above carries + ||A||
    else:
        assert move == pytest.approx(share * (BOUND - a), rel=1e-4, abs=tol)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", ["fedavg", "hetero", "fedbuff"])
def test_one_attacker_does_not_move_a_rejecting_aggregate(kind, attack, seed):
    ups, ws, taus, w_a, pos = _honest(seed)
    honest = list(zip(ups, ws, taus))
    if kind == "fedbuff":                               # the window closes on k accepted updates
        honest.append(honest[0])
    without = _fold(kind, honest, BOUND, "reject")
    evil = [ATTACKS[attack] * t for t in without]
    k = len(honest)
    items = honest[:pos] + [(evil, w_a, 0)] + honest[pos:]
    if kind == "fedbuff":
        buf = FedBuff(FULL, k=k, max_staleness=3, max_norm=BOUND)
        done = []
        for u, w, tau in items:
            try:
                done.append(buf.add(u, w, tau))
            except UpdateRejected as e:
                assert e.reason == "norm" and u is evil
        assert done[-1] is True and sum(done) == 1
        with_attacker = buf.flush()
    else:
        with_attacker = _fold(kind, items, BOUND, "reject")
    for x, y in zip(with_attacker, without):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "trimmed_mean_0.3"])
def test_one_attacker_stays_inside_the_honest_range_under_robust_rules(rule, attack, seed):
    ups, _ws, _taus, _w_a, pos = _honest(seed)
    trim = {"median": None, "trimmed_mean": 1 / HONEST, "trimmed_mean_0.3": 0.3}[rule]

    def agg(us):
        return coordinate_median(us) if trim is None else trimmed_mean(us, trim)

    without = agg(ups)
    evil = [(ATTACKS[attack] * np.mean([u[i] for u in ups], axis=0)).astype(np.float32) for i in range(len(FULL))]
    with_attacker = agg(ups[:pos] + [evil] + ups[pos:])
    for i, (x, y) in enumerate(zip(with_attacker, without)):
        stack = np.stack([u[i] for u in ups])
        lo, hi = stack.min(axis=0), stack.max(axis=0)
        assert ((lo <= x) & (x <= hi)).all()            # every coordinate within the honest values
        assert (np.abs(x - y) <= hi - lo).all()         # so it moved no more than their range


# -- configuration -------------------------------------------------------------------------------------


def test_config_defaults_and_valid_choices():
    c = AggregationConfig(max_norm=5.0)
    assert (c.rule, c.trim, c.norm_policy, c.mode, c.k, c.max_staleness) == ("fedavg", 0.1, "reject", "sync", 10, 4)
    AggregationConfig(max_norm=math.inf, rule="median", mode="async", k=1, max_staleness=0)
    AggregationConfig(max_norm=1.0, rule="trimmed_mean", trim=0.0, norm_policy="clip", mode="async", k=3)
    AggregationConfig(max_norm=1.0, rule="trimmed_mean", trim=0.2, mode="async", k=5)


@pytest.mark.parametrize("field, kwargs", [
    ("max_norm", dict(max_norm=0.0)), ("max_norm", dict(max_norm=float("nan"))), ("max_norm", dict(max_norm="1")),
    ("max_norm", dict(max_norm=True)), ("max_norm", dict(max_norm=math.inf, norm_policy="clip")),
    ("rule", dict(rule="krum")), ("rule", dict(rule="FedAvg")),
    ("trim", dict(trim=0.5)), ("trim", dict(trim=-0.01)), ("trim", dict(trim=float("nan"))), ("trim", dict(trim="0.1")),
    ("trim", dict(rule="trimmed_mean", trim=0.1, mode="async", k=5)),
    ("norm_policy", dict(norm_policy="drop")),
    ("mode", dict(mode="hybrid")),
    ("k", dict(k=0)), ("k", dict(k=2.0)), ("k", dict(k=True)),
    ("max_staleness", dict(max_staleness=-1)), ("max_staleness", dict(max_staleness=1.5)),
])
def test_config_validation_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=rf"AggregationConfig\.{field}:"):
        AggregationConfig(**{"max_norm": 1.0, **kwargs})
