"""agent.train.submodel: HeteroFL slices, mapping updates back, and sub-model equivalence in LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from agent.train import submodel
from agent.train.errors import WeightsError
from agent.train.manifest import load_manifest
from agent.train.runtime import Model

MANIFEST = load_manifest()


def test_units_is_ceil_of_ratio():
    assert [submodel.units(32, r) for r in (1, 0.5, 0.25)] == [32, 16, 8]
    assert [submodel.units(8, r) for r in (1, 0.5, 0.25)] == [8, 4, 2]
    assert submodel.units(10, 0.25) == 3 and submodel.units(3, 0.25) == 1
    with pytest.raises(ValueError):
        submodel.units(8, 0)


@pytest.mark.parametrize("name", ["activity", "anomaly"])
@pytest.mark.parametrize("width", [0.5, 0.25])
def test_manifest_widths_are_leading_slices_of_the_full_model(name, width):
    full, sub = MANIFEST[f"{name}-w1"], MANIFEST[f"{name}-w{width:g}"]
    want = [full.layers[0]] + [submodel.units(c, width) for c in full.layers[1:-1]] + [full.layers[-1]]
    assert list(sub.layers) == want
    # the shipped initial weights of a narrow model are the slices of the full one
    fw, sw = Model.load(name, 1.0).get_weights(), Model.load(name, width).get_weights()
    for a, b in zip(submodel.slice_weights(fw, sub.tensor_shapes), sw):
        assert np.array_equal(a, b)


@pytest.mark.litert_train
def test_update_lands_on_the_right_slices():
    spec_full, spec_sub = MANIFEST["activity-w1"], MANIFEST["activity-w0.25"]
    sub = Model.load("activity", 0.25)
    before = sub.get_weights()
    rng = np.random.default_rng(0)
    sub.train_step(rng.normal(size=(32, 16)).astype(np.float32), rng.integers(0, 4, 32), 0.1)
    delta = [a - b for a, b in zip(sub.get_weights(), before)]
    e = submodel.embed(delta, spec_full.tensor_shapes)
    # w0 (16, 32): all input rows, first 8 hidden columns; w1 (32, 32): 8x8 block; w2 (32, 4): first 8 rows
    assert [m.sum() for m in e.mask] == [16 * 8, 8, 8 * 8, 8, 8 * 4, 4]
    assert e.mask[0][:, :8].all() and not e.mask[0][:, 8:].any()
    assert e.mask[2][:8, :8].all() and not e.mask[2][8:].any() and not e.mask[2][:, 8:].any()
    assert e.mask[4][:8].all() and not e.mask[4][8:].any()
    for v, m, d in zip(e.values, e.mask, delta):
        assert v.shape == m.shape and not v[~m].any()
        assert np.array_equal(v[m].reshape(d.shape), d)
    assert all(v.shape == tuple(s) for v, s in zip(e.values, spec_full.tensor_shapes))
    assert len(spec_sub.tensor_shapes) == len(e.values)


def test_embed_then_slice_is_identity_and_bad_shapes_raise():
    full = [np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(4, dtype=np.float32)]
    sub = submodel.slice_weights(full, [(3, 2), (2,)])
    assert np.array_equal(sub[0], full[0][:, :2]) and np.array_equal(sub[1], [0, 1])
    back = submodel.embed(sub, [(3, 4), (4,)])
    assert np.array_equal(submodel.slice_weights(back.values, [(3, 2), (2,)])[0], sub[0])
    with pytest.raises(WeightsError):
        submodel.slice_weights(full, [(4, 2), (2,)])
    with pytest.raises(WeightsError):
        submodel.embed(sub, [(3, 4)])


@pytest.mark.parametrize("name", ["activity", "anomaly"])
@pytest.mark.parametrize("width", [0.5, 0.25])
def test_sub_model_equals_full_model_with_other_units_zeroed(name, width):
    """With ReLU dense chains, zeroing the units a sub-model drops (their in- and out-weights) leaves the
    full model computing exactly the sub-model's function."""
    full, sub = Model.load(name, 1.0), Model.load(name, width)
    rng = np.random.default_rng(5)
    fw = [rng.normal(size=s).astype(np.float32) * 0.3 for s in MANIFEST[f"{name}-w1"].tensor_shapes]
    sw = submodel.slice_weights(fw, sub.spec.tensor_shapes)
    sub.set_weights(sw)
    full.set_weights(submodel.embed(sw, full.spec.tensor_shapes).values)
    x = rng.normal(size=(20, 16)).astype(np.float32)
    np.testing.assert_allclose(full.infer(x), sub.infer(x), atol=1e-6, rtol=0)
