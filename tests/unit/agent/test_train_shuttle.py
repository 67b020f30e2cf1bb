"""Training on real sensor data: the Statlog Shuttle readings that river ships in its wheel (no download).

river/datasets/shuttle.csv.gz: 49,097 rows, 9 numeric sensor readings, ~7% anomalies. Read directly with
gzip + csv; river itself is not imported. The 9 standardised readings fill the first 9 of the models'
16 inputs; the rest are zero (a zero input only leaves its kernel row untouched).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from agent.train.runtime import Model

pytestmark = pytest.mark.litert_train


def _shuttle() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("river (test extra) not installed: it ships the Shuttle data set")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "shuttle.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "anomaly" and len(rows) - 1 == 49_097
    data = np.array(rows[1:], dtype=np.float64)
    return data[:, :9], data[:, 9].astype(np.int32)


@pytest.fixture(scope="module")
def shuttle():
    x, y = _shuttle()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    train, test = idx[:12_000], idx[12_000:20_000]
    normal = train[y[train] == 0]
    mu, sd = x[normal].mean(axis=0), x[normal].std(axis=0) + 1e-6
    x16 = np.zeros((len(x), 16), np.float32)
    x16[:, :9] = np.clip((x - mu) / sd, -20, 20)     # a few readings sit hundreds of SDs out
    return x16, y, train, test


def _epochs(model, x, y, epochs, lr, seed=0, batch=32):
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        losses = [model.train_step(x[order[i:i + batch]], y[order[i:i + batch]], lr)
                  for i in range(0, len(x), batch)]
        means.append(float(np.mean(losses)))
    return means


def _auc(score, label):
    """Probability that a random anomaly scores above a random normal row (Mann-Whitney)."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(1, len(score) + 1)
    n1 = label.sum()
    return (ranks[label == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(label) - n1))


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_classifier_loss_decreases_and_beats_the_majority(shuttle, width):
    x, y, train, test = shuttle
    m = Model.load("activity", width)
    means = _epochs(m, x[train], y[train], 3, 0.05)
    assert means[2] < means[1] < means[0]
    acc = (m.infer(x[test]).argmax(axis=1) == y[test]).mean()
    majority = 1 - y[test].mean()
    assert acc > majority + 0.5 * (1 - majority), (acc, majority)   # at least half the minority right


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_autoencoder_trained_on_normal_rows_reconstructs_anomalies_worse(shuttle, width):
    x, y, train, test = shuttle
    normal = train[y[train] == 0]
    m = Model.load("anomaly", width)
    means = _epochs(m, x[normal], x[normal], 3, 0.02)
    assert means[2] < means[0]
    err = ((m.infer(x[test]) - x[test]) ** 2).mean(axis=1)
    assert np.median(err[y[test] == 1]) > 3 * np.median(err[y[test] == 0])
    assert _auc(err, y[test]) > 0.9
