"""agent.train.ldp: clipping, the noise's scale, and epsilon from dp-accounting through the durable ledger."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from agent.train import ldp
from agent.train.errors import LdpLedgerError, LdpUnavailable, TrainError

needs_dpa = pytest.mark.skipif(importlib.util.find_spec("dp_accounting") is None,
                               reason="dp-accounting (the `ldp` extra) not installed: epsilon cannot be computed "
                                      "(the arm64 guest leaves it out: it pulls scipy)")


def _update(scale, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, s).astype(np.float32) for s in ((16, 32), (32,), (32, 4), (4,))]


def _norm(ts):
    return math.sqrt(sum(float(np.square(t.astype(np.float64)).sum()) for t in ts))


@pytest.mark.parametrize("scale", [0.001, 0.1, 10.0])
def test_clip_bounds_the_whole_update_and_keeps_its_direction(scale):
    u = _update(scale)
    c, before = ldp.clip(u, 1.0)
    assert before == pytest.approx(_norm(u), rel=1e-6)
    assert _norm(c) <= 1.0 + 1e-6
    if before <= 1.0:
        assert all(np.array_equal(a, b) for a, b in zip(c, u))          # inside the ball: untouched
    else:
        assert _norm(c) == pytest.approx(1.0, rel=1e-5)
        k = 1.0 / before
        assert all(np.allclose(a, b * k, rtol=1e-5, atol=1e-9) for a, b in zip(c, u))
    zero = [np.zeros((3, 2), np.float32)]
    assert np.array_equal(ldp.clip(zero, 1.0)[0][0], zero[0])


def test_noise_std_is_z_times_c_per_coordinate():
    cfg = ldp.LdpConfig(clip=0.5, noise_multiplier=1.3, delta=1e-5)
    zero = [np.zeros((200, 250), np.float32)]          # 50,000 coordinates of pure noise
    noisy = ldp.privatize(zero, cfg, seed=1)[0].astype(np.float64)
    want = 1.3 * 0.5
    # the sample std of 50,000 normals is within 1% of the true value far beyond 5 sigma (sd ~ 0.32%)
    assert noisy.std() == pytest.approx(want, rel=0.02)
    assert abs(noisy.mean()) < 5 * want / math.sqrt(noisy.size)
    # privatize clips before adding noise: a huge update comes out as (at most C) + noise
    big = [np.full((200, 250), 100.0, np.float32)]
    out = ldp.privatize(big, cfg, seed=1)[0].astype(np.float64)
    signal = out - noisy                               # same seed, same noise draws
    assert _norm([signal]) == pytest.approx(0.5, rel=1e-4)


def test_unseeded_noise_differs_each_time():
    cfg = ldp.LdpConfig(1.0, 1.0, 1e-5)
    a, b = (ldp.privatize([np.zeros(64, np.float32)], cfg)[0] for _ in range(2))
    assert not np.array_equal(a, b)


def test_config_is_validated():
    for bad in ((0, 1, 1e-5), (1, 0, 1e-5), (1, 1, 0), (1, 1, 1), (math.inf, 1, 1e-5), (1, math.nan, 1e-5)):
        with pytest.raises(TrainError):
            ldp.LdpConfig(*bad)


@needs_dpa
def test_epsilon_is_dp_accountings_and_grows_across_a_reopened_ledger(tmp_path):
    import dp_accounting
    from dp_accounting import pld, rdp

    def direct(z, n, delta):
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(z / 2), n)     # local DP: sensitivity 2C
        return acc.get_epsilon(delta)

    led = ldp.Ledger(tmp_path)
    assert led.rounds == 0
    led.record(1.0)
    e1 = led.epsilon(1e-5)
    assert e1 == direct(1.0, 1, 1e-5)
    # an independent check of the sensitivity: PLD with the REPLACE_ONE relation, the noise multiplier as
    # given, is the tight figure for the same mechanism; RDP is an upper bound on it and close
    p = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    p.compose(dp_accounting.GaussianDpEvent(1.0), 1)
    assert p.get_epsilon(1e-5) <= e1 < 1.2 * p.get_epsilon(1e-5)
    led.record(1.0)
    led = ldp.Ledger(tmp_path)                           # a reboot
    assert led.rounds == 2
    e2 = led.epsilon(1e-5)
    assert e2 == direct(1.0, 2, 1e-5) and e2 > e1
    led.record(2.0)                                      # a different noise level composes too
    led = ldp.Ledger(tmp_path)
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(0.5), 2)
    acc.compose(dp_accounting.GaussianDpEvent(1.0), 1)
    assert led.epsilon(1e-5) == acc.get_epsilon(1e-5) > e2
    assert led.epsilon(1e-3) < led.epsilon(1e-5)


def test_a_damaged_ledger_is_refused(tmp_path):
    path = tmp_path / ldp.LEDGER
    path.parent.mkdir(parents=True)
    for text in ("{", json.dumps({"version": 2, "events": []}),
                 json.dumps({"version": 1, "events": [{"noise_multiplier": -1, "rounds": 1}]}),
                 json.dumps({"version": 1, "events": [{"rounds": 1}]})):
        path.write_text(text)
        with pytest.raises(LdpLedgerError):
            ldp.Ledger(tmp_path)


def test_missing_dp_accounting_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dpa(name, *a, **k):
        if name.startswith("dp_accounting"):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_dpa)
    with pytest.raises(LdpUnavailable, match="ldp"):
        ldp.require_accountant()
    with pytest.raises(LdpUnavailable):
        ldp.epsilon({1.0: 1}, 1e-5)
