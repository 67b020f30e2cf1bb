"""The node's aggregation modes through its real rules (NodeService): HeteroFL widths by capacity,
FedBuff asynchronous windows with staleness, a robust rule against a scaled attacker, clipping."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest
from aiocoap.credentials import CredentialsMap

from agent.node.rounds import RoundConfig
from agent.node.service import NodeService
from agent.train import submodel
from agent.train import weights as weights_codec
from agent.train.manifest import spec_for
from agent.uplink import enroll, items, messages
from tests.support.soft_device import SoftDevice


def _node(tmp_path, **cfg) -> NodeService:
    return NodeService(tmp_path / "node", RoundConfig(round_seconds=600.0, **cfg), CredentialsMap())


def _enroll(node, dev: SoftDevice, home, capacity: float) -> bytes:
    p = enroll.request(dev=dev.addr, pub=dev.pub, board="b", capacity=capacity, sign=dev.sign)
    return bytes.fromhex(enroll.complete(home, "coap://node", p, node.enroll(p.data))["sid"])


def _send(node, dev, sid, rnd: dict, tensors, samples: int, seq: int) -> str:
    payload = items.update_payload(weights_codec.encode(tensors), round_id=rnd["round"], model=rnd["model"],
                                   base=rnd["hash"], width=rnd["width"], samples=samples)
    body = items.envelope("update", payload, dev=dev.addr, seq=seq, sign=dev.sign, t=1.8e9)
    return cbor2.loads(node.receive("update", sid, body))["status"]


def _rand(shapes, seed, scale=0.01):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, s).astype(np.float32) for s in shapes]


def test_heterofl_widths_by_capacity(tmp_path):
    node = _node(tmp_path, widths=(1.0, 0.5, 0.25), min_updates=3, max_norm=50.0)
    devs = [SoftDevice() for _ in range(3)]
    sids = [_enroll(node, d, tmp_path / f"d{i}", c) for i, (d, c) in enumerate(zip(devs, (1.0, 0.6, 0.3)))]
    start = node.rounds.global_weights()
    full_shapes = [w.shape for w in start]
    sent = []
    for i, (d, sid) in enumerate(zip(devs, sids)):
        rnd = messages.decode("round", node.round_message(sid))
        assert rnd["width"] == (1.0, 0.5, 0.25)[i]
        served = node.model_for(sid)
        shapes = spec_for("activity", rnd["width"]).tensor_shapes
        assert [t.shape for t in weights_codec.decode(served)] == [tuple(s) for s in shapes]
        if rnd["width"] != 1.0:   # the slice is the global model's leading blocks, and its hash is announced
            import hashlib
            assert hashlib.sha256(served).digest() == rnd["sub"]
            for t, g in zip(weights_codec.decode(served), submodel.slice_weights(start, shapes)):
                np.testing.assert_array_equal(t, g)
        u = _rand(shapes, i)
        sent.append((u, 10 * (i + 1)))
        assert _send(node, d, sid, rnd, u, 10 * (i + 1), 1) == "aggregated"
    assert messages.decode("round", node.round_message(None))["round"] == 2
    num = [np.zeros(s) for s in full_shapes]
    den = [np.zeros(s) for s in full_shapes]
    for u, w in sent:
        e = submodel.embed(u, full_shapes)
        for i in range(len(num)):
            num[i] += w * e.values[i] * e.mask[i]
            den[i] += w * e.mask[i]
    for i, g in enumerate(node.rounds.global_weights()):
        want = start[i] + np.divide(num[i], den[i], out=np.zeros_like(num[i]), where=den[i] > 0)
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-6)
    node.close()


def test_fedbuff_windows_and_staleness(tmp_path):
    node = _node(tmp_path, mode="async", k=2, max_staleness=1, max_norm=50.0)
    devs = [SoftDevice() for _ in range(4)]
    sids = [_enroll(node, d, tmp_path / f"d{i}", 1.0) for i, d in enumerate(devs)]
    r1 = messages.decode("round", node.round_message(None))
    start = node.rounds.global_weights()
    shapes = [w.shape for w in start]
    u = [_rand(shapes, 10 + i) for i in range(4)]
    assert _send(node, devs[0], sids[0], r1, u[0], 10, 1) == "aggregated"
    assert _send(node, devs[1], sids[1], r1, u[1], 30, 1) == "aggregated"     # window of k=2: version 2
    r2 = messages.decode("round", node.round_message(None))
    assert r2["round"] == 2
    v2 = node.rounds.global_weights()
    for i in range(len(start)):
        np.testing.assert_allclose(v2[i], start[i] + (10 * u[0][i] + 30 * u[1][i]) / 40, atol=1e-6)
    # device 2 trained on version 1: staleness 1, weight 1/sqrt(2); device 3 on version 2: staleness 0
    assert _send(node, devs[2], sids[2], r1, u[2], 20, 1) == "aggregated"
    node.close()
    node = _node(tmp_path, mode="async", k=2, max_staleness=1, max_norm=50.0)   # a restart mid-window
    assert _send(node, devs[3], sids[3], r2, u[3], 20, 1) == "aggregated"
    a, b = 20 / np.sqrt(2), 20.0
    v3 = node.rounds.global_weights()
    for i in range(len(start)):
        np.testing.assert_allclose(v3[i], v2[i] + (a * u[2][i] + b * u[3][i]) / (a + b), atol=1e-6)
    # trained on version 1 while version 3 is current: staleness 2 > 1, acknowledged but not aggregated
    assert _send(node, devs[0], sids[0], r1, u[0], 10, 2) == "stale"
    assert messages.decode("round", node.round_message(None))["accepted"] == 0
    node.close()


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_robust_rule_bounds_a_scaled_attacker(tmp_path, rule):
    node = _node(tmp_path, rule=rule, trim=0.2, min_updates=5, max_norm=1e9)
    devs = [SoftDevice() for _ in range(5)]
    sids = [_enroll(node, d, tmp_path / f"d{i}", 1.0) for i, d in enumerate(devs)]
    rnd = messages.decode("round", node.round_message(None))
    start = node.rounds.global_weights()
    honest = [_rand([w.shape for w in start], i) for i in range(4)]
    attacker = [-1e4 * t for t in honest[0]]                  # sign-flipped and scaled
    for i, u in enumerate(honest + [attacker]):
        _send(node, devs[i], sids[i], rnd, u, 10 if i < 4 else 10_000, 1)
    moved = [g - s for g, s in zip(node.rounds.global_weights(), start)]
    for i, m in enumerate(moved):
        lo = np.min([h[i] for h in honest], axis=0)
        hi = np.max([h[i] for h in honest], axis=0)
        assert np.all(m >= lo - 1e-6) and np.all(m <= hi + 1e-6)
    node.close()


def test_clip_policy_bounds_the_attackers_pull(tmp_path):
    bound = 0.5
    node = _node(tmp_path, norm_policy="clip", min_updates=4, max_norm=bound)
    devs = [SoftDevice() for _ in range(4)]
    sids = [_enroll(node, d, tmp_path / f"d{i}", 1.0) for i, d in enumerate(devs)]
    rnd = messages.decode("round", node.round_message(None))
    start = node.rounds.global_weights()
    honest = [_rand([w.shape for w in start], i, scale=0.001) for i in range(3)]
    for i, u in enumerate(honest + [[1e6 * t for t in honest[0]]]):
        assert _send(node, devs[i], sids[i], rnd, u, 10, 1) == "aggregated"   # clipped, not refused
    moved = np.sqrt(sum(float(np.square(g.astype(np.float64) - s).sum())
                        for g, s in zip(node.rounds.global_weights(), start)))
    honest_norm = max(np.sqrt(sum(float(np.square(t.astype(np.float64)).sum()) for t in h)) for h in honest)
    # the mean of four updates each of norm <= bound: the attacker's share is at most bound / 4
    assert moved <= (3 * honest_norm + bound) / 4 + 1e-6
    node.close()


def test_config_is_checked():
    with pytest.raises(ValueError, match="widths"):
        RoundConfig(widths=(0.5,))
    with pytest.raises(ValueError, match="rule"):
        RoundConfig(rule="mode")
    with pytest.raises(ValueError, match="width"):
        RoundConfig(width=0.5)


def test_upstream_node_restarts_between_rounds(tmp_path):
    """Upstream (demand server) mode: a node restarted after a group round closed waits, then opens the next."""
    node = _node(tmp_path, upstream=True, min_updates=1, max_norm=50.0)
    assert messages.decode("round", node.round_message(None))["open"] is False
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "d", 1.0)
    start = node.rounds.global_weights()
    node.rounds.open_with(start, 1, 60.0)
    rnd = messages.decode("round", node.round_message(sid))
    assert rnd["open"] and rnd["round"] == 1
    assert _send(node, dev, sid, rnd, _rand([w.shape for w in start], 1), 5, 1) == "aggregated"
    status = messages.decode("demand_status", node.demand_status())
    assert status["open"] is False and status["samples"] == 5 and "model" in status
    node.close()
    node = _node(tmp_path, upstream=True, min_updates=1, max_norm=50.0)     # restarted while closed
    assert messages.decode("round", node.round_message(None))["open"] is False
    node.rounds.open_with(start, 1, 60.0)
    assert messages.decode("round", node.round_message(None))["round"] == 2
    node.close()
