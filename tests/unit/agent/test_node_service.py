"""The node's rules without the network: enrollment, item checks, dedup, rounds, restart mid-round."""

from __future__ import annotations

import time

import cbor2
import numpy as np
import pytest
from aiocoap.credentials import CredentialsMap

from agent.node.fedavg import UpdateRejected
from agent.node.rounds import RoundConfig
from agent.node.service import NodeService
from agent.train import weights as weights_codec
from agent.uplink import enroll, messages
from agent.uplink.errors import BadSignature, EnrollmentError, MessageError, SequenceConflict, UnknownDevice
from tests.support.soft_device import SoftDevice, manifest, update_payload

CFG = RoundConfig(model="activity", width=1.0, min_updates=3, round_seconds=600.0, max_norm=50.0)


@pytest.fixture
def node(tmp_path):
    s = NodeService(tmp_path / "node", CFG, CredentialsMap())
    yield s
    s.close()


def _enroll(node: NodeService, dev: SoftDevice, home) -> bytes:
    """Enroll ``dev`` (device side: agent.uplink.enroll); returns its OSCORE sender id."""
    pending = enroll.request(dev=dev.addr, pub=dev.pub, board="pi4", capacity=1.0, sign=dev.sign)
    record = enroll.complete(home, "coap://node", pending, node.enroll(pending.data))
    return bytes.fromhex(record["sid"])


def _round(node: NodeService) -> dict:
    return messages.decode("round", node.round_message(None))


def _shapes(node: NodeService):
    return [w.shape for w in node.rounds.global_weights()]


def _rand(node, seed, scale=0.01):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, s).astype(np.float32) for s in _shapes(node)]


def test_enrollment_both_sides_derive_the_same_context(node, tmp_path):
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "dev")
    import json
    dev_secret = json.loads((tmp_path / "dev" / "uplink" / "oscore" / "secret.json").read_text())
    d = node.state.device(dev.addr)
    node_secret = json.loads((node.folder / "oscore" / d.ctx / "secret.json").read_text())
    assert dev_secret == node_secret and len(bytes.fromhex(dev_secret["secret_hex"])) == 16
    assert d.sid == sid and d.board == "pi4"
    # a second device gets another id and another secret
    other = SoftDevice()
    assert _enroll(node, other, tmp_path / "other") != sid
    assert json.loads((tmp_path / "other" / "uplink" / "oscore" / "secret.json").read_text()) != dev_secret


def test_enrollment_refusals(node, tmp_path):
    dev, mallory = SoftDevice(), SoftDevice()
    # signed by another key than the address it claims
    p = enroll.request(dev=dev.addr, pub=dev.pub, board="pi4", capacity=1.0, sign=mallory.sign)
    with pytest.raises(BadSignature):
        node.enroll(p.data)
    # a valid signature, but a public key that is not the address's
    req = messages.decode("enroll", enroll.request(dev=dev.addr, pub=dev.pub, board="b", capacity=1.0,
                                                   sign=dev.sign).data)
    req["pub"] = mallory.pub
    req["sig"] = dev.sign(messages.enroll_digest(req))
    with pytest.raises(BadSignature, match="public key"):
        node.enroll(cbor2.dumps(req))
    # an old request (replayed)
    req = messages.decode("enroll", enroll.request(dev=dev.addr, pub=dev.pub, board="b", capacity=1.0,
                                                   sign=dev.sign).data)
    req["t"] = time.time() - 3 * 86400
    req["sig"] = dev.sign(messages.enroll_digest(req))
    with pytest.raises(MessageError, match="enroll.t"):
        node.enroll(cbor2.dumps(req))
    with pytest.raises(MessageError):
        node.enroll(b"\xa1")
    assert node.state.devices() == []


def test_device_refuses_an_answer_from_another_node(node, tmp_path):
    dev = SoftDevice()
    home = tmp_path / "dev"
    p = enroll.request(dev=dev.addr, pub=dev.pub, board="pi4", capacity=1.0, sign=dev.sign)
    answer = node.enroll(p.data)
    with pytest.raises(EnrollmentError, match="expected 0x"):
        enroll.complete(home, "coap://node", p, answer, node_address=b"\x11" * 20)
    tampered = messages.decode("enrolled", answer)
    tampered["x25519"] = bytes(32 - 1) + b"\x09"
    with pytest.raises(EnrollmentError, match="does not verify"):
        enroll.complete(home, "coap://node", p, cbor2.dumps(tampered))
    assert not (home / "uplink" / "oscore").exists()


def test_items_checked_before_anything_is_stored(node, tmp_path):
    dev, mallory = SoftDevice(), SoftDevice()
    sid = _enroll(node, dev, tmp_path / "dev")
    with pytest.raises(UnknownDevice):
        node.receive("manifest", b"\x7f", dev.item("manifest", manifest(), 1))
    with pytest.raises(BadSignature, match="names device"):
        node.receive("manifest", sid, mallory.item("manifest", manifest(), 1))
    forged = messages.decode("item", dev.item("manifest", manifest(), 1))
    forged["body"] = messages.encode("manifest", manifest(5))       # body swapped after signing
    with pytest.raises(BadSignature):
        node.receive("manifest", sid, cbor2.dumps(forged))
    with pytest.raises(MessageError):
        node.receive("manifest", sid, b"\xff\x00")
    with pytest.raises(MessageError, match="takes 'report'"):
        node.receive("report", sid, dev.item("manifest", manifest(), 1))
    assert node.state.items() == []
    c = node.state.counters()
    assert not any(k.startswith("accepted") for k in c)


def test_exactly_once_by_device_and_sequence_number(node, tmp_path):
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "dev")
    data = dev.item("manifest", manifest(1), 1)
    assert cbor2.loads(node.receive("manifest", sid, data)) == {"seq": 1, "status": "accepted"}
    assert cbor2.loads(node.receive("manifest", sid, data)) == {"seq": 1, "status": "duplicate"}
    with pytest.raises(SequenceConflict):
        node.receive("manifest", sid, dev.item("manifest", manifest(2), 1))
    assert len(node.state.items("manifest")) == 1
    assert node.state.counters()["accepted.manifest"] == 1 and node.state.counters()["duplicate.manifest"] == 1


def test_round_closes_with_the_weighted_mean(node, tmp_path):
    devs = [SoftDevice() for _ in range(3)]
    sids = [_enroll(node, d, tmp_path / f"d{i}") for i, d in enumerate(devs)]
    r = _round(node)
    start = node.rounds.global_weights()
    updates, weights = [_rand(node, i) for i in range(3)], [10, 30, 60]
    for d, sid, u, w in zip(devs, sids, updates, weights):
        ack = cbor2.loads(node.receive("update", sid, d.item("update", update_payload(r, u, w), 1)))
        assert ack["status"] == "aggregated"
    r2 = _round(node)
    assert r2["round"] == r["round"] + 1 and r2["hash"] != r["hash"]
    new = node.rounds.global_weights()
    for i, g in enumerate(start):
        want = g + np.average(np.stack([u[i] for u in updates]), axis=0, weights=weights)
        np.testing.assert_allclose(new[i], want, rtol=0, atol=1e-6)
    # an update trained on the old model is acknowledged as stale, not aggregated
    ack = cbor2.loads(node.receive("update", sids[0], devs[0].item("update", update_payload(r, updates[0], 5), 2)))
    assert ack["status"] == "stale" and _round(node)["accepted"] == 0


@pytest.mark.parametrize("bad, reason", [("nan", "non_finite"), ("norm", "norm"), ("shape", "shape")])
def test_bad_updates_rejected_and_counted(node, tmp_path, bad, reason):
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "dev")
    r = _round(node)
    u = _rand(node, 1)
    if bad == "nan":
        u[0][0, 0] = np.nan
    elif bad == "norm":
        u = [t * 1e4 for t in u]
    else:
        u = u[:-1]
    with pytest.raises(UpdateRejected) as e:
        node.receive("update", sid, dev.item("update", update_payload(r, u, 10), 1))
    assert e.value.reason == reason
    assert node.state.items() == [] and _round(node)["accepted"] == 0
    assert list(node.rounds.updates.iterdir()) == []


def test_restart_mid_round_loses_nothing(tmp_path):
    folder = tmp_path / "node"
    devs = [SoftDevice() for _ in range(3)]
    node = NodeService(folder, CFG, CredentialsMap())
    sids = [_enroll(node, d, tmp_path / f"d{i}") for i, d in enumerate(devs)]
    r = _round(node)
    start = node.rounds.global_weights()
    updates = [_rand(node, 10 + i) for i in range(3)]
    for i in range(2):
        node.receive("update", sids[i], devs[i].item("update", update_payload(r, updates[i], 7 + i), 1))
    node.close()
    del node
    node = NodeService(folder, CFG, CredentialsMap())   # restarted: same round, two updates folded back in
    assert _round(node)["round"] == r["round"] and _round(node)["accepted"] == 2
    # a resend of an accepted update is a duplicate, not a second vote
    assert cbor2.loads(node.receive("update", sids[1], devs[1].item("update", update_payload(r, updates[1], 8), 1)))[
        "status"] == "duplicate"
    node.receive("update", sids[2], devs[2].item("update", update_payload(r, updates[2], 9), 1))
    new = node.rounds.global_weights()
    for i, g in enumerate(start):
        want = g + np.average(np.stack([u[i] for u in updates]), axis=0, weights=[7, 8, 9])
        np.testing.assert_allclose(new[i], want, rtol=0, atol=1e-6)
    node.close()


def test_empty_round_deadline_moves_on(tmp_path):
    now = [1000.0]
    from agent.node.rounds import Rounds
    from agent.node.state import NodeState

    state = NodeState(tmp_path / "n.db")
    rounds = Rounds(state, tmp_path, RoundConfig(round_seconds=10.0, min_updates=5), clock=lambda: now[0])
    assert rounds.current.deadline == 1010.0
    now[0] = 1011.0
    rounds.tick()
    assert rounds.current.id == 1 and rounds.current.deadline == 1021.0
    state.close()


def test_global_model_served_is_the_hashed_one(node):
    import hashlib

    r = _round(node)
    data = node.rounds.model_bytes()
    assert hashlib.sha256(data).digest() == r["hash"]
    assert [w.shape for w in weights_codec.decode(data)] == _shapes(node)


def test_restart_sweeps_update_files_nothing_needs(tmp_path):
    folder = tmp_path / "node"
    dev = SoftDevice()
    node = NodeService(folder, CFG, CredentialsMap())
    sid = _enroll(node, dev, tmp_path / "dev")
    r = _round(node)
    node.receive("update", sid, dev.item("update", update_payload(r, _rand(node, 3), 5), 1))
    kept = sorted(p.name for p in node.rounds.updates.iterdir())
    node.close()
    (folder / "updates" / "0-dead-1.upd").write_bytes(b"left by a crash after its round closed")
    (folder / "updates" / f"{r['round']}-{dev.addr.hex()}-9.upd").write_bytes(b"written, row never committed")
    node = NodeService(folder, CFG, CredentialsMap())
    assert sorted(p.name for p in node.rounds.updates.iterdir()) == kept and len(kept) == 1
    assert _round(node)["accepted"] == 1
    node.close()
