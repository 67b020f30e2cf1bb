"""agent.train.runtime and manifest against the real LiteRT interpreter: manifest, refusal, weights, one SGD step."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from agent.train import weights as wcodec
from agent.train.errors import ModelRejected, WeightsError
from agent.train.manifest import MODELS_DIR, load_manifest
from agent.train import runtime
from agent.train.runtime import Model

MANIFEST = load_manifest()
KEYS = sorted(MANIFEST)


def reference_step(ws, x, y, lr, loss):
    """Forward, gradient and SGD update of a ReLU dense chain in float64 numpy: (loss, new weights)."""
    ws = [w.astype(np.float64) for w in ws]
    x = x.astype(np.float64)
    n_layers = len(ws) // 2
    acts, pres = [x], []
    h = x
    for i in range(n_layers):
        z = h @ ws[2 * i] + ws[2 * i + 1]
        pres.append(z)
        h = np.maximum(z, 0.0) if i < n_layers - 1 else z
        acts.append(h)
    z, b = acts[-1], x.shape[0]
    if loss == "cross_entropy":
        zs = z - z.max(axis=1, keepdims=True)
        logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
        onehot = np.eye(z.shape[1])[y]
        value = -(onehot * logp).sum() / b
        dz = (np.exp(logp) - onehot) / b
    else:
        diff = z - y
        value = (diff * diff).sum() / (b * z.shape[1])
        dz = 2 * diff / (b * z.shape[1])
    new = list(ws)
    for i in reversed(range(n_layers)):
        gw, gb = acts[i].T @ dz, dz.sum(axis=0)
        if i:
            dz = (dz @ ws[2 * i].T) * (pres[i - 1] >= 0)   # tf.maximum passes the gradient where x >= 0
        new[2 * i] = ws[2 * i] - lr * gw
        new[2 * i + 1] = ws[2 * i + 1] - lr * gb
    return value, new


def _batch(spec, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, spec.layers[0])).astype(np.float32)
    y = (rng.integers(0, spec.layers[-1], n).astype(np.int32) if spec.loss == "cross_entropy"
         else rng.normal(size=(n, spec.layers[-1])).astype(np.float32))
    return x, y


def test_manifest_matches_the_files():
    doc = json.loads((MODELS_DIR / "manifest.json").read_text())
    assert {m["name"] for m in doc["models"].values()} == {"activity", "anomaly"}
    assert {(m["name"], m["width"]) for m in doc["models"].values()} == {
        (n, w) for n in ("activity", "anomaly") for w in (1.0, 0.5, 0.25)}
    for key, spec in MANIFEST.items():
        for kind, entry in spec.files.items():
            data = (MODELS_DIR / entry["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], (key, kind)
            assert len(data) == entry["size"]
        init = wcodec.decode((MODELS_DIR / spec.files["weights"]["path"]).read_bytes(), spec.tensor_shapes)
        assert sum(t.size for t in init) == spec.parameter_count
        assert spec.signatures["parameters"]["outputs"] == {n: list(s) for n, s in
                                                           zip(spec.tensor_names, spec.tensor_shapes)}
    total = sum(p.stat().st_size for p in MODELS_DIR.iterdir())
    assert total < 1_000_000


@pytest.mark.parametrize("key", KEYS)
def test_interpreter_has_the_manifests_signatures_and_shapes(key):
    spec = MANIFEST[key]
    m = Model.load(spec.name, spec.width)
    sigs = m._interp.get_signature_list()
    assert set(sigs) == {"train", "infer", "parameters", "restore"}
    for name, sig in spec.signatures.items():
        assert sorted(sigs[name]["inputs"]) == sorted(sig["inputs"]), name
        assert sorted(sigs[name]["outputs"]) == sorted(sig["outputs"]), name
    assert [w.shape for w in m.get_weights()] == list(spec.tensor_shapes)
    x, _ = _batch(spec, 5, 0)
    assert m.infer(x).shape == (5, spec.layers[-1])


def _copy_models(tmp_path):
    d = tmp_path / "models"
    shutil.copytree(MODELS_DIR, d)
    return d


def test_a_tampered_model_is_refused_before_an_interpreter_exists(tmp_path, monkeypatch):
    d = _copy_models(tmp_path)
    f = d / "activity-w1.tflite"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    import agent.train.runtime as rt

    def no_interpreter(*a, **k):
        raise AssertionError("interpreter created for a rejected model")
    monkeypatch.setattr(rt, "Interpreter", no_interpreter)
    with pytest.raises(ModelRejected, match="sha256"):
        Model.load("activity", 1.0, models_dir=d)


def test_tampered_weights_unknown_width_and_missing_file_are_refused(tmp_path):
    d = _copy_models(tmp_path)
    w = d / "anomaly-w0.5.weights"
    w.write_bytes(w.read_bytes()[:-1] + b"\x7f")
    with pytest.raises(ModelRejected, match="weights"):
        Model.load("anomaly", 0.5, models_dir=d)
    with pytest.raises(ModelRejected, match="not in the manifest"):
        Model.load("anomaly", 0.75, models_dir=d)
    (d / "activity-w0.25.tflite").unlink()
    with pytest.raises(ModelRejected, match="unreadable"):
        Model.load("activity", 0.25, models_dir=d)


@pytest.mark.parametrize("key", KEYS)
def test_parameters_restore_round_trip_exactly(key):
    spec = MANIFEST[key]
    m = Model.load(spec.name, spec.width)
    init = wcodec.decode((MODELS_DIR / spec.files["weights"]["path"]).read_bytes())
    for a, b in zip(m.get_weights(), init):
        assert np.array_equal(a, b)
    rng = np.random.default_rng(1)
    new = [rng.normal(size=s).astype(np.float32) for s in spec.tensor_shapes]
    m.set_weights(new)
    for a, b in zip(m.get_weights(), new):
        assert a.dtype == np.float32 and np.array_equal(a, b)


def test_set_weights_checks_count_and_shapes():
    m = Model.load("activity", 0.5)
    w = m.get_weights()
    with pytest.raises(WeightsError):
        m.set_weights(w[:-1])
    with pytest.raises(WeightsError):
        m.set_weights([w[0][:, :-1]] + w[1:])


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.litert_train
def test_one_train_step_equals_the_numpy_reference(key):
    spec = MANIFEST[key]
    m = Model.load(spec.name, spec.width)
    before = m.get_weights()
    for seed, n in ((0, 32), (1, 7)):               # a full batch and a ragged last batch
        x, y = _batch(spec, n, seed)
        want_loss, want = reference_step(m.get_weights(), x, y, 0.05, spec.loss)
        loss = m.train_step(x, y, 0.05)
        assert loss == pytest.approx(want_loss, abs=1e-5)
        for got, exp in zip(m.get_weights(), want):
            np.testing.assert_allclose(got, exp, atol=1e-5, rtol=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, m.get_weights()))


@pytest.mark.parametrize("key", KEYS)
def test_infer_equals_the_numpy_forward(key):
    spec = MANIFEST[key]
    m = Model.load(spec.name, spec.width)
    x, _ = _batch(spec, 9, 3)
    h = x.astype(np.float64)
    ws = m.get_weights()
    for i in range(len(ws) // 2):
        h = h @ ws[2 * i] + ws[2 * i + 1]
        h = np.maximum(h, 0) if i < len(ws) // 2 - 1 else h
    if spec.head == "softmax":
        h = np.exp(h - h.max(axis=1, keepdims=True))
        h /= h.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(m.infer(x), h, atol=1e-5, rtol=0)


def test_bad_input_shapes_raise():
    m = Model.load("activity", 1.0)
    with pytest.raises(ValueError):
        m.infer(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError):
        m.train_step(np.zeros((3, 16), np.float32), np.zeros(2, np.int32), 0.1)


@pytest.mark.litert_train
def test_the_runtime_leaves_ieee_subnormals_alone():
    """tflite-runtime's aarch64 library sets flush-to-zero for the whole process when it loads; the
    runtime module puts the default back, so numbers below 2.2e-308 survive in every later computation."""
    import struct

    from agent.train import client

    tiny = struct.unpack("<d", struct.pack("<Q", 1))[0]   # the smallest subnormal double, 5e-324
    assert runtime.Interpreter is not None
    w = client.initial_weights("activity", 1.0)
    rng = np.random.default_rng(0)
    client.local_round("activity", 1.0, w, rng.normal(size=(32, 16)).astype(np.float32), rng.integers(0, 4, 32),
                       epochs=1, batch_size=32, lr=0.05, seed=1)
    assert tiny * 1.0 > 0 and np.float64(tiny) * 2 == 2 * tiny
    assert np.nextafter(np.float32(0), np.float32(1)) * np.float32(1) > 0
