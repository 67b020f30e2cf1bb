"""agent.train.client: one federated local round against the real LiteRT interpreter, on the Shuttle data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.train import client
from agent.train.errors import TrainDataError, WeightsError
from agent.train.runtime import Model

from support.datasets import shuttle16 as load_shuttle16

pytestmark = pytest.mark.litert_train


@pytest.fixture(scope="module")
def shuttle16():
    """2,000 standardised Shuttle rows and their anomaly labels (classes 0/1 of the 4-way classifier)."""
    data = load_shuttle16(2000)
    if data is None:
        pytest.skip("river (test extra) not installed: it ships the Shuttle data set")
    return data


def _rand(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 16)).astype(np.float32), rng.integers(0, 4, n).astype(np.int32)


def test_update_is_local_minus_global_exactly_and_loss_falls_on_shuttle(shuttle16):
    x, y = shuttle16
    glob = client.initial_weights("activity", 1.0)
    glob = [w + np.float32(0.01) for w in glob]             # not the initial weights: restore must happen
    r = client.local_round("activity", 1.0, glob, x, y, epochs=2, lr=0.05, seed=3)
    assert r.n_samples == 2000 and r.epochs == 2 and r.batch_size == 32
    assert r.steps == 2 * math.ceil(2000 / 32)
    # replay the same round by hand: same seed, same order, same interpreter kind
    m = Model.load("activity", 1.0)
    m.set_weights(glob)
    rng = np.random.default_rng(3)
    for _ in range(2):
        order = rng.permutation(2000)
        for i in range(0, 2000, 32):
            m.train_step(x[order[i:i + 32]], y[order[i:i + 32]], 0.05)
    for u, loc, g in zip(r.update, m.get_weights(), glob):
        assert u.dtype == np.float32 and np.array_equal(u, loc - g)
    assert r.loss_after < 0.5 * r.loss_before
    # the losses are the infer-based mean cross-entropy, not the running training loss
    m.set_weights(glob)
    p = m.infer(x).astype(np.float64)
    assert r.loss_before == pytest.approx(-np.log(p[np.arange(2000), y]).mean(), rel=1e-6)
    assert r.seconds > 0


def test_autoencoder_round_uses_the_input_as_target(shuttle16):
    x, y = shuttle16
    normal = x[y == 0][:500]
    r = client.local_round("anomaly", 0.5, client.initial_weights("anomaly", 0.5), normal, normal,
                           epochs=3, lr=0.02, seed=0)
    assert r.loss_after < r.loss_before
    assert [u.shape for u in r.update] == [w.shape for w in client.initial_weights("anomaly", 0.5)]


@pytest.mark.parametrize("n,epochs,batch,steps", [(100, 1, 32, 4), (96, 1, 32, 3), (100, 3, 32, 12),
                                                  (5, 2, 32, 2), (33, 1, 1, 33), (64, 2, 64, 2)])
def test_step_counts_cover_partial_batches(n, epochs, batch, steps):
    x, y = _rand(n)
    r = client.local_round("activity", 0.25, client.initial_weights("activity", 0.25), x, y,
                           epochs=epochs, batch_size=batch, lr=0.05, seed=0)
    assert r.steps == steps == client.steps_for(n, epochs, batch)
    assert r.n_samples == n


def test_shuffling_is_seeded():
    x, y = _rand(200, 1)
    g = client.initial_weights("activity", 0.5)
    a, b, c = (client.local_round("activity", 0.5, g, x, y, epochs=1, lr=0.05, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(p, q) for p, q in zip(a.update, b.update))
    assert any(not np.array_equal(p, q) for p, q in zip(a.update, c.update))


def test_bad_data_and_weights_raise_typed_errors():
    g = client.initial_weights("activity", 1.0)
    x, y = _rand(10)
    cases = [(x[:0], y[:0]), (x[:, :15], y), (x, y[:9]), (x, y.astype(np.float32)), (x, y + 4),
             (np.where(np.arange(16) == 3, np.nan, x), y)]
    for xx, yy in cases:
        with pytest.raises(TrainDataError):
            client.local_round("activity", 1.0, g, xx, yy, epochs=1, lr=0.05, seed=0)
    with pytest.raises(TrainDataError):                 # autoencoder targets must be shaped like the output
        client.local_round("anomaly", 1.0, client.initial_weights("anomaly", 1.0), x, x[:, :8], epochs=1,
                           lr=0.02, seed=0)
    for kw in ({"epochs": 0, "lr": 0.05}, {"epochs": 1, "lr": 0.0}, {"epochs": 1, "lr": 0.05, "batch_size": 0}):
        with pytest.raises(TrainDataError):
            client.local_round("activity", 1.0, g, x, y, seed=0, **kw)
    with pytest.raises(WeightsError):
        client.local_round("activity", 1.0, g[:-1], x, y, epochs=1, lr=0.05, seed=0)
    with pytest.raises(WeightsError):
        client.local_round("activity", 0.5, g, x, y, epochs=1, lr=0.05, seed=0)
    assert issubclass(TrainDataError, Exception) and TrainDataError.exit_code == 65


def test_l2_norm_is_over_all_tensors():
    assert client.l2_norm([np.array([3.0], np.float32), np.array([[4.0]], np.float32)]) == 5.0
