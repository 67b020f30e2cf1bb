"""agent.train.weights: the deterministic weights file."""

from __future__ import annotations

import numpy as np
import pytest

from agent.train import weights as w
from agent.train.errors import WeightsError


def _tensors():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 4)).astype(np.float32), np.arange(4, dtype=np.float32), np.float32(2.5) * np.ones(())]


def test_round_trip_is_exact_and_deterministic():
    t = _tensors()
    data = w.encode(t)
    assert data == w.encode([x.copy() for x in t])
    back = w.decode(data, [x.shape for x in t])
    assert all(a.dtype == np.float32 and np.array_equal(a, b) for a, b in zip(back, t))


def test_known_layout():
    data = w.encode([np.array([1.0, -2.0], np.float32)])
    assert data == b"AITW" + bytes([1, 1, 0, 1, 2, 0, 0, 0]) + np.array([1.0, -2.0], "<f4").tobytes()


@pytest.mark.parametrize("mutate", [
    lambda d: b"XXXX" + d[4:],                 # magic
    lambda d: d[:4] + b"\x02" + d[5:],         # version
    lambda d: d[:-1],                          # truncated body
    lambda d: d + b"\0",                       # trailing bytes
    lambda d: d[:9],                           # truncated header
])
def test_malformed_files_raise(mutate):
    with pytest.raises(WeightsError):
        w.decode(mutate(w.encode(_tensors())))


def test_shape_mismatch_raises():
    with pytest.raises(WeightsError, match="shapes"):
        w.decode(w.encode(_tensors()), [(4, 3), (4,), ()])
