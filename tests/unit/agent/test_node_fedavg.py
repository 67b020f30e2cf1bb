"""agent.node.fedavg: weighted mean against numpy, int8 path against dequantize, every rejection leaves
the aggregate untouched, order independence, memory bounded by the model, state round trip."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import IntegrityError
from agent.node.fedavg import REASONS, StreamingFedAvg, UpdateRejected
from agent.train import quantize as Q
from agent.uplink.errors import UplinkError

SHAPES = [(7, 5), (5,), (3, 2, 4), (1,)]


def _updates(n, shapes=SHAPES, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    ups = [[rng.normal(0, scale, s).astype(np.float32) for s in shapes] for _ in range(n)]
    weights = [int(w) for w in rng.integers(1, 500, n)]
    return ups, weights


def _reference(ups, weights):
    return [np.average(np.stack([u[i] for u in ups]).astype(np.float64), axis=0, weights=weights)
            for i in range(len(ups[0]))]


def _close(got, want):
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-9)


def _filled(n=5, seed=0):
    agg = StreamingFedAvg(SHAPES, max_norm=10.0)
    ups, ws = _updates(n, seed=seed)
    for u, w in zip(ups, ws):
        agg.add(u, w)
    return agg


def test_weighted_mean_equals_numpy_average():
    ups, ws = _updates(40, seed=1)
    agg = StreamingFedAvg(SHAPES, max_norm=10.0)
    for u, w in zip(ups, ws):
        norm = agg.add(u, w)
        assert norm == pytest.approx(np.linalg.norm(np.concatenate([t.ravel() for t in u]).astype(np.float64)),
                                     rel=1e-12)
    assert agg.count == 40 and agg.total_weight == sum(ws)
    assert agg.rejected == {r: 0 for r in REASONS}
    _close(agg.result(), _reference(ups, ws))
    _close(agg.result(), _reference(ups, ws))         # result() does not consume the sum


def test_quantized_path_equals_dequantize_then_add():
    ups, ws = _updates(30, seed=2)
    qs = [Q.quantize(u) for u in ups]
    a, b = StreamingFedAvg(SHAPES, 10.0), StreamingFedAvg(SHAPES, 10.0)
    for q, w in zip(qs, ws):
        na = a.add_quantized(q, w)
        nb = b.add(Q.dequantize(q), w)
        assert na == pytest.approx(nb, rel=1e-6)
    _close(a.result(), [r.astype(np.float64) for r in b.result()])
    # and the quantized mean is near the float one: each entry off by at most its scale / 2
    worst = max(max(q.scales) for q in qs) / 2
    for x, y in zip(a.result(), _reference(ups, ws)):
        assert np.abs(x - y).max() <= worst


def test_quantized_and_float_updates_mix_in_one_round():
    ups, ws = _updates(10, seed=3)
    agg = StreamingFedAvg(SHAPES, 10.0)
    for i, (u, w) in enumerate(zip(ups, ws)):
        agg.add_quantized(Q.quantize(u), w) if i % 2 else agg.add(u, w)
    want = _reference([Q.dequantize(Q.quantize(u)) if i % 2 else u for i, u in enumerate(ups)], ws)
    _close(agg.result(), want)


def test_all_zero_quantized_tensor_folds_as_zeros():
    u = [np.zeros(s, np.float32) for s in SHAPES]
    agg = StreamingFedAvg(SHAPES, 1.0)
    assert agg.add_quantized(Q.quantize(u), 3) == 0.0
    assert all((t == 0).all() for t in agg.result())


def _bad_float(kind):
    u = [t.copy() for t in _updates(1, seed=9)[0][0]]
    if kind == "nan":
        u[-1][0] = np.nan            # in the last tensor: a fold-as-you-check would already have changed the rest
    elif kind == "inf":
        u[2][1, 0, 3] = np.inf
    elif kind == "-inf":
        u[0][6, 4] = -np.inf
    elif kind == "fewer":
        u = u[:-1]
    elif kind == "more":
        u = u + [np.zeros(1, np.float32)]
    elif kind == "transposed":
        u[0] = np.ascontiguousarray(u[0].T)
    elif kind == "flat":
        u[2] = u[2].ravel()
    elif kind == "int_dtype":
        u[1] = np.ones(5, np.int32)
    elif kind == "norm":
        u[-1][0] = 11.0              # bound is 10
    return u


FLOAT_CASES = [("nan", "non_finite", "tensor 3"), ("inf", "non_finite", "tensor 2"),
               ("-inf", "non_finite", "tensor 0"), ("fewer", "shape", "3 tensors, expected 4"),
               ("more", "shape", "5 tensors, expected 4"), ("transposed", "shape", "(5, 7), expected (7, 5)"),
               ("flat", "shape", "tensor 2 has shape (24,), expected (3, 2, 4)"),
               ("int_dtype", "shape", "dtype int32"), ("norm", "norm", "exceeds the bound 10")]


@pytest.mark.parametrize("kind,reason,where", FLOAT_CASES, ids=[c[0] for c in FLOAT_CASES])
def test_float_rejections_name_the_reason_and_leave_the_sum_untouched(kind, reason, where):
    agg = _filled()
    before, count, weight = agg.result(), agg.count, agg.total_weight
    with pytest.raises(UpdateRejected) as e:
        agg.add(_bad_float(kind), 7)
    assert e.value.reason == reason and where in str(e.value)
    assert agg.rejected == {r: int(r == reason) for r in REASONS}
    assert (agg.count, agg.total_weight) == (count, weight)
    for x, y in zip(agg.result(), before):
        assert np.array_equal(x, y)
    with pytest.raises(UpdateRejected):
        agg.check(_bad_float(kind))                   # check() alone refuses and counts too
    assert agg.rejected[reason] == 2


def test_norm_message_gives_norm_and_bound_and_the_bound_is_inclusive():
    agg = StreamingFedAvg([(2,)], max_norm=5.0)
    assert agg.add([np.array([3.0, 4.0], np.float32)], 1) == 5.0          # exactly on the bound: accepted
    with pytest.raises(UpdateRejected, match=r"L2 norm 5\.0008 exceeds the bound 5$") as e:
        agg.add([np.array([3.0, 4.001], np.float32)], 1)
    assert e.value.reason == "norm"


def test_overflowing_squares_are_a_norm_rejection_not_non_finite():
    agg = StreamingFedAvg([(2,)], max_norm=float("inf"))
    with pytest.raises(UpdateRejected) as e:
        agg.add([np.array([1e200, 0.0])], 1)          # finite float64 whose square overflows
    assert e.value.reason == "norm"


@pytest.mark.parametrize("weight", [0, -3, 2.5, 3.0, True, "5", None, np.float32(4), 2**32 + 1, 10**400])
def test_bad_weights_are_refused(weight):
    agg = _filled()
    before = agg.result()
    with pytest.raises(UpdateRejected) as e:
        agg.add(_updates(1, seed=8)[0][0], weight)
    assert e.value.reason == "weight" and repr(weight) in str(e.value)
    with pytest.raises(UpdateRejected):
        agg.add_quantized(Q.quantize(_updates(1, seed=8)[0][0]), weight)
    with pytest.raises(UpdateRejected):
        agg.check_weight(weight)
    assert agg.rejected == {"shape": 0, "non_finite": 0, "norm": 0, "weight": 3}
    assert agg.count == 5
    for x, y in zip(agg.result(), before):
        assert np.array_equal(x, y)


def test_numpy_integer_weights_are_accepted():
    agg = StreamingFedAvg(SHAPES, 10.0)
    agg.add(_updates(1)[0][0], np.int64(12))
    assert agg.total_weight == 12 and type(agg.total_weight) is int
    agg.add(_updates(1)[0][0], 2**32)                 # the largest weight allowed
    assert agg.total_weight == 12 + 2**32


def _bad_quantized(kind):
    q = Q.quantize(_updates(1, seed=9)[0][0])
    values, scales = list(q.values), list(q.scales)
    if kind == "shape":
        values[1] = values[1][:4]
    elif kind == "fewer":
        values, scales = values[:-1], scales[:-1]
    elif kind == "scales":
        scales = scales + [1.0]
    elif kind == "int16":
        values[0] = values[0].astype(np.int16)
    elif kind == "nan_scale":
        scales[-1] = float("nan")
    elif kind == "inf_scale":
        scales[2] = float("inf")
    elif kind == "norm":
        scales[-1] = 11.0 / 127
        values[-1] = np.array([127], np.int8)
    elif kind == "huge_scale":
        scales[0] = 1e300                             # finite, but its square overflows
    return Q.Quantized(values, scales)


QUANT_CASES = [("shape", "shape", "tensor 1 has shape (4,)"), ("fewer", "shape", "3 tensors"),
               ("scales", "shape", "5 scales"), ("int16", "shape", "dtype int16"),
               ("nan_scale", "non_finite", "tensor 3"), ("inf_scale", "non_finite", "tensor 2"),
               ("norm", "norm", "exceeds the bound 10"), ("huge_scale", "norm", "L2 norm inf")]


@pytest.mark.parametrize("kind,reason,where", QUANT_CASES, ids=[c[0] for c in QUANT_CASES])
def test_quantized_rejections_leave_the_sum_untouched(kind, reason, where):
    agg = _filled()
    before = agg.result()
    with pytest.raises(UpdateRejected) as e:
        agg.add_quantized(_bad_quantized(kind), 7)
    assert e.value.reason == reason and where in str(e.value)
    assert agg.rejected == {r: int(r == reason) for r in REASONS} and agg.count == 5
    for x, y in zip(agg.result(), before):
        assert np.array_equal(x, y)


def test_rejection_is_a_typed_uplink_error():
    e = UpdateRejected("norm", "x")
    assert isinstance(e, UplinkError) and e.exit_code == 80 and e.reason == "norm"


def test_order_does_not_matter():
    ups, ws = _updates(60, seed=4, scale=3.0)
    results = []
    for perm in (range(60), np.random.default_rng(5).permutation(60), range(59, -1, -1)):
        agg = StreamingFedAvg(SHAPES, 100.0)
        for i in perm:
            agg.add(ups[i], ws[i])
        results.append(agg.result())
    for other in results[1:]:
        for x, y in zip(results[0], other):
            # a float64 sum reorders within 2^-50 or so; after the cast to float32 at most one ulp apart
            np.testing.assert_array_max_ulp(x, y, maxulp=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=12), st.integers(0, 2**32 - 1),
       st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=4))
def test_property_matches_numpy_for_any_weights_and_shapes(weights, seed, shapes):
    ups, _ = _updates(len(weights), shapes=[tuple(s) for s in shapes], seed=seed, scale=2.0)
    agg = StreamingFedAvg(shapes, 1e6)
    for u, w in zip(ups, weights):
        agg.add(u, w)
    _close(agg.result(), _reference(ups, weights))


def test_result_with_nothing_added_raises():
    agg = StreamingFedAvg(SHAPES, 1.0)
    with pytest.raises(ValueError):
        agg.result()
    with pytest.raises(UpdateRejected):
        agg.add([np.full(s, 5, np.float32) for s in SHAPES], 1)
    with pytest.raises(ValueError):                   # a rejected update is not "something added"
        agg.result()


def test_bad_bound_is_refused():
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            StreamingFedAvg(SHAPES, bad)


def test_strided_inputs_are_read_correctly():
    ups, ws = _updates(3, seed=6)
    agg = StreamingFedAvg(SHAPES, 10.0)
    for u, w in zip(ups, ws):
        agg.add([np.asfortranarray(t) for t in u], w)
    _close(agg.result(), _reference(ups, ws))


@pytest.mark.parametrize("quantized", [False, True])
def test_folding_allocates_nothing_model_sized(quantized):
    # 150,000 parameters (600 KB as float32); the largest tensor is many scratch chunks, and a
    # temporary of it would take 480 KB as float32, 960 KB as float64: far above the bound below
    shapes = [(300, 400), (25_000,), (5000,)]
    model = 4 * sum(np.prod(s) for s in shapes)
    ups, ws = _updates(12, shapes=shapes, seed=7, scale=0.001)
    ups = [Q.quantize(u) for u in ups] if quantized else ups
    tracemalloc.start()
    try:
        agg = StreamingFedAvg(shapes, 10.0)
        built, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for u, w in zip(ups, ws):
            agg.add_quantized(u, w) if quantized else agg.add(u, w)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert built <= 2.5 * model                       # float64 sum (2x) + scratch chunk
    # what remains is numpy's casting buffer (8192 elements of float64, 64 KiB) and small objects
    assert peak - built <= 0.2 * model


def test_state_round_trip_resumes_the_round():
    ups, ws = _updates(10, seed=10)
    whole = StreamingFedAvg(SHAPES, 10.0)
    for u, w in zip(ups, ws):
        whole.add(u, w)
    first = StreamingFedAvg(SHAPES, 10.0)
    for u, w in zip(ups[:6], ws[:6]):
        first.add(u, w)
    with pytest.raises(UpdateRejected):
        first.add(ups[6], 0)
    resumed = StreamingFedAvg.from_state(first.state(), SHAPES, 10.0)
    assert (resumed.count, resumed.total_weight, resumed.rejected) == (6, sum(ws[:6]), first.rejected)
    for u, w in zip(ups[6:], ws[6:]):
        resumed.add(u, w)
    for x, y in zip(resumed.result(), whole.result()):
        assert np.array_equal(x, y)


def test_bad_state_is_refused():
    agg = _filled()
    data = agg.state()
    for bad in (data[:-1], data + b"\0", b"AITX" + data[4:], data[:4] + b"\x02" + data[5:]):
        with pytest.raises(IntegrityError):
            StreamingFedAvg.from_state(bad, SHAPES, 10.0)
    with pytest.raises(IntegrityError):
        StreamingFedAvg.from_state(data, [(5, 7)] + SHAPES[1:], 10.0)   # same size, other shapes
    nan = bytearray(data)
    nan[-8:] = np.float64(np.nan).tobytes()
    with pytest.raises(IntegrityError):
        StreamingFedAvg.from_state(bytes(nan), SHAPES, 10.0)
