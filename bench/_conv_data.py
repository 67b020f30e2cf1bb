"""bench/convergence.py's data: river's Statlog Shuttle file split, standardised and partitioned non-IID.

- `load_split`: the 49,097 rows of river/datasets/shuttle.csv.gz (9 readings + 0/1 anomaly flag, ~7.2%
  anomalies), read with gzip + csv as tests/unit/agent/test_train_shuttle.py does; a seeded permutation
  gives `n_test` test rows and up to `n_train` training rows. Standardised on the TRAINING split's
  normal rows only, clipped to +-20, the 9 readings in the first 9 of the models' 16 inputs.
- `partition`: label skew and size skew at once. Device i has a size propensity s_i ~ lognormal(0,
  sigma); for each class c, q_c ~ Dirichlet(alpha * 1) over the devices, and class c's rows are dealt
  out with probabilities proportional to q_c,i * s_i (a multinomial). Every device is then topped up to
  `min_rows` from the largest device. Small alpha concentrates each class on a few devices (many devices
  then hold almost only normal rows, a few hold most anomalies); sigma spreads the sizes.
- `auc`: ROC AUC as the Mann-Whitney statistic with average ranks for ties (a softmax probability
  saturates in float32, so ties are common); no sklearn.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray      # (n, 16) float32
    y_train: np.ndarray      # (n,) int32, 1 = anomaly
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def load_split(path, n_train: int, n_test: int, seed: int) -> Split:
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    if rows[0][-1] != "anomaly":
        raise SystemExit(f"{path}: unexpected header {rows[0]}")
    data = np.array(rows[1:], dtype=np.float64)
    idx = np.random.default_rng(seed).permutation(len(data))
    test, train = idx[:n_test], idx[n_test:n_test + n_train]
    x, y = data[:, :9], data[:, 9].astype(np.int32)
    normal = train[y[train] == 0]
    mu, sd = x[normal].mean(axis=0), x[normal].std(axis=0) + 1e-6
    x16 = np.zeros((len(x), 16), np.float32)
    x16[:, :9] = np.clip((x - mu) / sd, -20, 20)     # a few readings sit hundreds of SDs out
    return Split(x16[train], y[train], x16[test], y[test], f"{path.name} ({len(data):,} rows)")


def partition(y: np.ndarray, n_devices: int, alpha: float, sigma: float, seed: int,
              min_rows: int = 32) -> list[np.ndarray]:
    """Row indices of each device (see the module docstring). Every row goes to exactly one device."""
    rng = np.random.default_rng(seed)
    size = rng.lognormal(0.0, sigma, n_devices)
    parts: list[list[int]] = [[] for _ in range(n_devices)]
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        p = rng.dirichlet(np.full(n_devices, alpha)) * size
        counts = rng.multinomial(len(rows), p / p.sum())
        for i, chunk in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
            parts[i].extend(chunk.tolist())
    for i in range(n_devices):                       # top up tiny devices from the largest one
        while len(parts[i]) < min_rows:
            big = max(range(n_devices), key=lambda j: len(parts[j]))
            parts[i].append(parts[big].pop(int(rng.integers(len(parts[big])))))
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """P(a random anomaly scores above a random normal row), ties counted one half."""
    score = np.asarray(score, np.float64)
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s))
    # average rank over each run of equal scores
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0                  # ranks are 1-based: mean of start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    n1 = int(label.sum())
    n0 = len(label) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((ranks[label == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
