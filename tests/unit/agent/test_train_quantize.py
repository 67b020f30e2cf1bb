"""agent.train.quantize: int8 per-tensor round trip within scale/2, zeros exact, strict decoding."""

from __future__ import annotations

import numpy as np
import pytest

from agent.train import quantize as Q
from agent.train.errors import WeightsError


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.3, (16, 32)).astype(np.float32), rng.normal(0, 1e-4, 32).astype(np.float32),
            np.zeros((32, 4), np.float32), np.array([-2.5, 0.0, 2.5, 1e-9], np.float32),
            np.float32(rng.normal(0, 5, (3, 2, 2)))]


def test_round_trip_is_within_half_a_step_and_zeros_are_exact():
    ts = _tensors()
    q = Q.quantize(ts)
    back = Q.dequantize(Q.decode(Q.encode(q), [t.shape for t in ts]))
    for t, b, v, s in zip(ts, back, q.values, q.scales):
        assert v.dtype == np.int8 and b.dtype == np.float32 and b.shape == t.shape
        assert s == pytest.approx(np.abs(t).max() / 127, rel=1e-6)
        assert np.abs(v).max() <= 127
        # scale/2 plus float32 rounding of the dequantized value
        assert (np.abs(b.astype(np.float64) - t) <= s / 2 + np.abs(t) * 2e-7 + 1e-30).all()
        assert (b[t == 0] == 0).all()
        if t.size and np.abs(t).max() > 0:
            assert np.abs(v).max() == 127                    # the peak uses the whole range
    assert q.scales[2] == 0.0 and np.array_equal(back[2], ts[2])


def test_encoding_is_deterministic_and_smaller():
    ts = _tensors(1)
    a, b = Q.encode(Q.quantize(ts)), Q.encode(Q.quantize([t.copy() for t in ts]))
    assert a == b and a[:4] == b"AITQ"
    assert len(a) < sum(t.size for t in ts) * 4 / 3


def test_malformed_bytes_are_refused():
    data = Q.encode(Q.quantize(_tensors()))
    for bad in (b"AITW" + data[4:], data[:4] + b"\x02" + data[5:], data[:-1], data + b"\x00", data[:9], b""):
        with pytest.raises(WeightsError):
            Q.decode(bad)
    with pytest.raises(WeightsError):
        Q.decode(data, [(1,)] * 5)
    neg = bytearray(Q.encode(Q.quantize([np.ones(2, np.float32)])))
    neg[12:16] = np.float32(-1.0).tobytes()                  # the scale after ndim u8 + one u32 dim
    with pytest.raises(WeightsError, match="scale"):
        Q.decode(bytes(neg))
    with pytest.raises(WeightsError):
        Q.quantize([np.array([np.nan], np.float32)])
