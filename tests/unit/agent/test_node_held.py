"""Held updates: async (FedBuff) under a demand server, an update that arrives while the node's round is
closed is kept for the next round, folded into it with its staleness recomputed, and survives a restart."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest
from aiocoap.credentials import CredentialsMap

from agent.node.rounds import RoundConfig, Rounds
from agent.node.service import NodeService
from agent.train import weights as weights_codec
from agent.uplink import enroll, items, messages
from tests.support.soft_device import SoftDevice


def _node(tmp_path, **cfg) -> NodeService:
    base = dict(round_seconds=600.0, upstream=True, mode="async", k=2, max_staleness=2, max_norm=50.0, hold_late=True)
    return NodeService(tmp_path / "node", RoundConfig(**{**base, **cfg}), CredentialsMap())


def _enroll(node, dev: SoftDevice, home) -> bytes:
    p = enroll.request(dev=dev.addr, pub=dev.pub, board="b", capacity=1.0, sign=dev.sign)
    return bytes.fromhex(enroll.complete(home, "coap://node", p, node.enroll(p.data))["sid"])


def _body(dev, rnd: dict, tensors, samples: int, seq: int) -> bytes:
    payload = items.update_payload(weights_codec.encode(tensors), round_id=rnd["round"], model=rnd["model"],
                                   base=rnd["hash"], width=rnd["width"], samples=samples)
    return items.envelope("update", payload, dev=dev.addr, seq=seq, sign=dev.sign, t=1.8e9)


def _send(node, sid, body: bytes) -> str:
    return cbor2.loads(node.receive("update", sid, body))["status"]


def _rand(shapes, seed, scale=0.01):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, s).astype(np.float32) for s in shapes]


def _round(node) -> dict:
    return messages.decode("round", node.round_message(None))


def _status(node) -> dict:
    return messages.decode("demand_status", node.demand_status())


def _row(node, dev, seq) -> tuple:
    return node.state.db.execute("SELECT status, round, staleness, file FROM items WHERE addr = ? AND seq = ?",
                                 (dev.addr, seq)).fetchone()


def _fedbuff(base, parts):
    """base + sum a_i u_i / sum a_i, a_i = n_i / sqrt(1 + tau_i), parts = [(u, n, tau)]."""
    a = [n / np.sqrt(1 + tau) for _u, n, tau in parts]
    return [b + sum(ai * u[i] for ai, (u, _n, _t) in zip(a, parts)) / sum(a) for i, b in enumerate(base)]


def _model(node):
    return weights_codec.decode(_status(node)["model"])


def _close(got, want):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


@pytest.fixture
def group(tmp_path):
    """A node with 4 devices; round 1 opened by the demand server and closed by its window of k=2."""
    node = _node(tmp_path)
    devs = [SoftDevice() for _ in range(4)]
    sids = [_enroll(node, d, tmp_path / f"d{i}") for i, d in enumerate(devs)]
    start = node.rounds.global_weights()
    shapes = [w.shape for w in start]
    node.rounds.open_with(start, 1, 60.0)
    r1 = _round(node)
    u = [_rand(shapes, 10 + i) for i in range(8)]
    assert _send(node, sids[0], _body(devs[0], r1, u[0], 10, 1)) == "aggregated"
    assert _send(node, sids[1], _body(devs[1], r1, u[1], 30, 1)) == "aggregated"
    assert _round(node)["open"] is False and _status(node)["updates"] == 2
    return {"node": node, "devs": devs, "sids": sids, "start": start, "r1": r1, "u": u, "tmp": tmp_path}


def test_hold_then_fold_with_staleness_recomputed(group):
    node, devs, sids, start, r1, u = (group[k] for k in ("node", "devs", "sids", "start", "r1", "u"))
    v1 = _model(node)
    body = _body(devs[2], r1, u[2], 20, 1)
    assert _send(node, sids[2], body) == "held"               # round 1 closed: kept, not thrown away
    held = node.state.held()
    assert [(h.addr, h.seq, h.samples, h.base) for h in held] == [(devs[2].addr, 1, 20, 1)]
    assert (node.rounds.updates / held[0].file).read_bytes()[:4] == weights_codec.MAGIC
    assert _status(node)["updates"] == 2 and _status(node)["samples"] == 40   # the closed round is unchanged
    assert node.state.counters()["held.update"] == 1
    assert _send(node, sids[2], body) == "duplicate"          # a resend (lost acknowledgement)
    assert len(node.state.held()) == 1

    node.rounds.open_with(v1, 1, 60.0)                        # the demand server opens round 2
    r2 = _round(node)
    assert r2["round"] == 2 and r2["open"] and r2["accepted"] == 1
    assert node.state.held() == []
    status, rid, tau, _file = _row(node, devs[2], 1)
    assert (status, rid, tau) == ("aggregated", 2, 1)         # trained on round 1, folded into round 2
    assert node.state.counters()["held.folded"] == 1
    assert _send(node, sids[2], body) == "duplicate"          # still answered as a duplicate, counted once
    assert _send(node, sids[3], _body(devs[3], r2, u[3], 20, 1)) == "aggregated"
    st = _status(node)
    assert st["open"] is False and st["updates"] == 2 and st["samples"] == 40
    _close(_model(node), _fedbuff(v1, [(u[2], 20, 1), (u[3], 20, 0)]))
    assert list(node.rounds.updates.glob("*.upd")) == []
    node.close()


def test_held_updates_fill_a_window_and_the_rest_wait(group):
    """k=2 and three held: the first two close round 2 at once, the third waits for round 3 (staleness 2)."""
    node, devs, sids, r1, u = (group[k] for k in ("node", "devs", "sids", "r1", "u"))
    v1 = _model(node)
    assert _send(node, sids[2], _body(devs[2], r1, u[2], 20, 1)) == "held"
    assert _send(node, sids[3], _body(devs[3], r1, u[3], 10, 1)) == "held"
    assert _send(node, sids[0], _body(devs[0], r1, u[4], 5, 2)) == "held"
    r = node.rounds.open_with(v1, 1, 60.0)
    assert r.id == 2 and r.closed is not None and r.updates == 2   # closed by the held updates
    v2 = _model(node)
    _close(v2, _fedbuff(v1, [(u[2], 20, 1), (u[3], 10, 1)]))
    assert [(h.addr, h.seq) for h in node.state.held()] == [(devs[0].addr, 2)]
    node.rounds.open_with(v2, 1, 60.0)
    assert _row(node, devs[0], 2)[:3] == ("aggregated", 3, 2)
    r3 = _round(node)
    assert _send(node, sids[1], _body(devs[1], r3, u[5], 10, 2)) == "aggregated"
    _close(_model(node), _fedbuff(v2, [(u[4], 5, 2), (u[5], 10, 0)]))
    node.close()


def test_too_old_for_the_next_round_is_stale_at_once(tmp_path, group):
    """max_staleness 2: trained on round 1 while round 3 is closed it would be 3 versions old in round 4."""
    node, devs, sids, r1, u = (group[k] for k in ("node", "devs", "sids", "r1", "u"))
    v1 = _model(node)
    node.rounds.open_with(v1, 1, 60.0)
    r2 = _round(node)
    assert _send(node, sids[2], _body(devs[2], r2, u[2], 20, 1)) == "aggregated"
    assert _send(node, sids[3], _body(devs[3], r2, u[3], 20, 1)) == "aggregated"
    assert _send(node, sids[0], _body(devs[0], r1, u[4], 20, 2)) == "held"        # 2 versions old in round 3
    node.rounds.open_with(_model(node), 1, 60.0)
    assert _row(node, devs[0], 2)[:3] == ("aggregated", 3, 2)
    r3 = _round(node)
    assert _send(node, sids[1], _body(devs[1], r3, u[5], 20, 2)) == "aggregated"  # round 3 closed
    assert _send(node, sids[2], _body(devs[2], r1, u[6], 20, 2)) == "stale"      # would be 3 in round 4
    assert _send(node, sids[3], _body(devs[3], r2, u[7], 20, 2)) == "held"       # 2 in round 4
    assert _row(node, devs[2], 2)[:2] == ("stale", 1) and len(node.state.held()) == 1
    node.close()


def test_beyond_max_staleness_at_the_fold_is_dropped_with_a_record(group):
    """Held at max_staleness 2, the node restarted with 1: at the fold it is 2 versions old, dropped."""
    node, devs, sids, r1, u, tmp = (group[k] for k in ("node", "devs", "sids", "r1", "u", "tmp"))
    v1 = _model(node)
    node.rounds.open_with(v1, 1, 60.0)
    r2 = _round(node)
    assert _send(node, sids[2], _body(devs[2], r2, u[2], 20, 1)) == "aggregated"
    assert _send(node, sids[3], _body(devs[3], r2, u[3], 20, 1)) == "aggregated"
    assert _send(node, sids[0], _body(devs[0], r1, u[4], 20, 2)) == "held"         # 2 old in round 3: ok at 2
    assert _send(node, sids[1], _body(devs[1], r2, u[5], 20, 2)) == "held"         # 1 old in round 3
    file = node.state.held()[0].file
    node.close()
    node = _node(tmp, max_staleness=1)
    assert len(node.state.held()) == 2
    node.rounds.open_with(_model(node), 1, 60.0)
    assert _row(node, devs[0], 2)[:2] == ("stale", 1)                               # the record: stale
    assert _row(node, devs[1], 2)[:3] == ("aggregated", 3, 1)
    assert not (node.rounds.updates / file).exists()
    c = node.state.counters()
    assert c["held.dropped.stale"] == 1 and c["held.folded"] == 1
    assert _round(node)["accepted"] == 1
    assert _send(node, sids[0], _body(devs[0], r1, u[4], 20, 2)) == "duplicate"
    node.close()


def test_one_left_waiting_past_max_staleness_is_dropped_at_the_fold(tmp_path):
    """max_staleness 1, k=2, three held from round 1: two fill round 2 (staleness 1), the third waits for
    round 3, where it would be 2 versions old: recorded stale, its file removed."""
    node = _node(tmp_path, max_staleness=1)
    devs = [SoftDevice() for _ in range(4)]
    sids = [_enroll(node, d, tmp_path / f"d{i}") for i, d in enumerate(devs)]
    start = node.rounds.global_weights()
    u = [_rand([w.shape for w in start], i) for i in range(5)]
    node.rounds.open_with(start, 1, 60.0)
    r1 = _round(node)
    assert [_send(node, sids[i], _body(devs[i], r1, u[i], 10, 1)) for i in range(2)] == ["aggregated"] * 2
    assert [_send(node, sids[i], _body(devs[i], r1, u[i + 2], 10, 2)) for i in range(3)] == ["held"] * 3
    node.rounds.open_with(_model(node), 1, 60.0)
    assert _status(node)["open"] is False and _status(node)["updates"] == 2
    file = node.state.held()[0].file
    node.rounds.open_with(_model(node), 1, 60.0)
    assert _row(node, devs[2], 2)[:2] == ("stale", 1) and node.state.held() == []
    assert not (node.rounds.updates / file).exists()
    assert _round(node)["accepted"] == 0
    assert node.state.counters()["held.dropped.stale"] == 1 and node.state.counters()["held.folded"] == 2
    node.close()


def test_restart_between_hold_and_fold_loses_nothing_and_counts_nothing_twice(group):
    node, devs, sids, r1, u, tmp = (group[k] for k in ("node", "devs", "sids", "r1", "u", "tmp"))
    v1 = _model(node)
    bodies = [_body(devs[2], r1, u[2], 20, 1), _body(devs[3], r1, u[3], 10, 1)]
    assert [_send(node, sids[i + 2], b) for i, b in enumerate(bodies)] == ["held", "held"]
    (node.rounds.updates / "held-00-9.upd").write_bytes(b"orphan")   # a crash after a write, before its row
    node.close()

    node = _node(tmp, k=3)                                   # restarted (reopened from disk), round 1 closed
    assert _round(node)["open"] is False and _status(node)["updates"] == 2
    assert [(h.addr, h.seq) for h in node.state.held()] == [(devs[2].addr, 1), (devs[3].addr, 1)]
    assert sorted(p.name for p in node.rounds.updates.glob("*.upd")) == sorted(h.file for h in node.state.held())
    assert [_send(node, sids[i + 2], b) for i, b in enumerate(bodies)] == ["duplicate", "duplicate"]
    node.rounds.open_with(v1, 1, 60.0)
    assert _round(node)["accepted"] == 2 and node.state.held() == []
    node.close()

    node = _node(tmp, k=3)                                   # restarted again, mid-round: rebuilt from the files
    r2 = _round(node)
    assert r2["round"] == 2 and r2["open"] and r2["accepted"] == 2
    assert node.rounds.agg.count == 2
    assert [_send(node, sids[i + 2], b) for i, b in enumerate(bodies)] == ["duplicate", "duplicate"]
    assert _send(node, sids[0], _body(devs[0], r2, u[4], 40, 2)) == "aggregated"
    st = _status(node)
    assert st["open"] is False and st["updates"] == 3 and st["samples"] == 70
    _close(_model(node), _fedbuff(v1, [(u[2], 20, 1), (u[3], 10, 1), (u[4], 40, 0)]))
    assert node.state.counters()["held.folded"] == 2
    node.close()


def test_crash_after_the_fold_filled_a_window_closes_it_at_restart(group, monkeypatch):
    node, devs, sids, r1, u, tmp = (group[k] for k in ("node", "devs", "sids", "r1", "u", "tmp"))
    v1 = _model(node)
    assert _send(node, sids[2], _body(devs[2], r1, u[2], 20, 1)) == "held"
    assert _send(node, sids[3], _body(devs[3], r1, u[3], 10, 1)) == "held"

    def crash(self):
        raise KeyboardInterrupt("killed after the fold committed")

    monkeypatch.setattr(Rounds, "close", crash)
    with pytest.raises(KeyboardInterrupt):
        node.rounds.open_with(v1, 1, 60.0)
    monkeypatch.undo()
    node.close()
    node = _node(tmp)
    st = _status(node)
    assert st["round"] == 2 and st["open"] is False and st["updates"] == 2
    _close(_model(node), _fedbuff(v1, [(u[2], 20, 1), (u[3], 10, 1)]))
    node.close()


def test_sync_upstream_still_answers_stale_while_closed(tmp_path):
    node = _node(tmp_path, mode="sync", min_updates=1)
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "d")
    start = node.rounds.global_weights()
    node.rounds.open_with(start, 1, 60.0)
    r1 = _round(node)
    shapes = [w.shape for w in start]
    assert _send(node, sid, _body(dev, r1, _rand(shapes, 1), 5, 1)) == "aggregated"
    assert _send(node, sid, _body(dev, r1, _rand(shapes, 2), 5, 2)) == "stale"
    assert node.state.held() == []
    node.close()


def test_a_held_update_is_checked_when_it_arrives(group):
    """Refused (4.00) at once, not silently at the fold: here its norm is above the bound."""
    from agent.node.fedavg import UpdateRejected

    node, devs, sids, r1, u = (group[k] for k in ("node", "devs", "sids", "r1", "u"))
    with pytest.raises(UpdateRejected):
        node.receive("update", sids[2], _body(devs[2], r1, [1e4 * t for t in u[2]], 20, 1))
    assert node.state.held() == [] and list(node.rounds.updates.glob("held-*")) == []
    node.close()


def _opened(tmp_path, n: int, **cfg):
    """A node with ``n`` enrolled devices and round 1 opened by the demand server."""
    node = _node(tmp_path, **cfg)
    devs = [SoftDevice() for _ in range(n)]
    sids = [_enroll(node, d, tmp_path / f"d{i}") for i, d in enumerate(devs)]
    start = node.rounds.global_weights()
    node.rounds.open_with(start, 1, 60.0)
    return node, devs, sids, start, _round(node)


def test_without_hold_late_async_upstream_answers_stale_while_closed(tmp_path):
    node, devs, sids, start, r1 = _opened(tmp_path, 3, hold_late=False)
    shapes = [w.shape for w in start]
    assert _send(node, sids[0], _body(devs[0], r1, _rand(shapes, 1), 5, 1)) == "aggregated"
    assert _send(node, sids[1], _body(devs[1], r1, _rand(shapes, 2), 5, 1)) == "aggregated"
    assert _round(node)["open"] is False
    assert _send(node, sids[2], _body(devs[2], r1, _rand(shapes, 3), 5, 1)) == "stale"
    assert node.state.held() == [] and not list((tmp_path / "node").rglob("held-*.upd"))
    node.close()


def test_crash_after_a_window_filled_closes_it_at_restart(tmp_path, monkeypatch):
    """The update that fills the window is committed; the node dies before the round closes."""
    node, devs, sids, start, r1 = _opened(tmp_path, 2, hold_late=False)
    shapes = [w.shape for w in start]
    u = [_rand(shapes, 7), _rand(shapes, 8)]
    assert _send(node, sids[0], _body(devs[0], r1, u[0], 10, 1)) == "aggregated"

    def crash(self):
        raise KeyboardInterrupt("killed after the update committed")

    monkeypatch.setattr(Rounds, "close", crash)
    with pytest.raises(KeyboardInterrupt):
        _send(node, sids[1], _body(devs[1], r1, u[1], 30, 1))
    monkeypatch.undo()
    node.close()
    node = _node(tmp_path, hold_late=False)
    st = _status(node)
    assert st["round"] == 1 and st["open"] is False and st["updates"] == 2
    _close(_model(node), _fedbuff(start, [(u[0], 10, 0), (u[1], 30, 0)]))
    node.close()
