"""A device trains only on a model its own node announced: the round (model hash, the device's slice
hash, deadline...) carries the node key's signature, and the device checks it against the node it
enrolled with before fetching the model (agent/uplink/link.py check_round).

Forged here: a changed model hash, a changed slice hash, a round signed by another node, an unsigned
round. Each is refused with UntrustedRound; the genuine round passes.
"""

from __future__ import annotations

import cbor2
import pytest
from aiocoap.credentials import CredentialsMap

from agent.node.identity import NodeKey
from agent.node.rounds import RoundConfig
from agent.node.service import NodeService
from agent.uplink import enroll, messages
from agent.uplink.errors import UntrustedRound
from agent.uplink.link import check_round
from tests.support.soft_device import SoftDevice


@pytest.fixture
def node(tmp_path):
    s = NodeService(tmp_path / "node", RoundConfig(widths=(1.0, 0.5)), CredentialsMap())
    yield s
    s.close()


def _round_for(node, tmp_path, capacity: float) -> dict:
    dev = SoftDevice()
    p = enroll.request(dev=dev.addr, pub=dev.pub, board="b", capacity=capacity, sign=dev.sign)
    sid = bytes.fromhex(enroll.complete(tmp_path / f"d{capacity}", "coap://n", p, node.enroll(p.data))["sid"])
    return messages.decode("round", node.round_message(sid))


def test_genuine_rounds_verify(node, tmp_path):
    full, half = _round_for(node, tmp_path, 1.0), _round_for(node, tmp_path, 0.6)
    assert "sub" in half and "sub" not in full
    check_round(full, node.key.address)
    check_round(half, node.key.address)


@pytest.mark.parametrize("field, value", [("hash", b"\x66" * 32), ("sub", b"\x77" * 32), ("deadline", 1e10),
                                          ("round", 99)])
def test_a_changed_field_is_refused(node, tmp_path, field, value):
    rnd = _round_for(node, tmp_path, 0.6)
    rnd[field] = value
    with pytest.raises(UntrustedRound):
        check_round(rnd, node.key.address)


def test_another_nodes_round_and_an_unsigned_round_are_refused(node, tmp_path):
    rnd = _round_for(node, tmp_path, 1.0)
    (tmp_path / "impostor").mkdir()
    impostor = NodeKey.load_or_create(tmp_path / "impostor")
    forged = dict(rnd, hash=b"\x55" * 32)
    forged["sig"] = impostor.sign(messages.round_digest(forged))
    with pytest.raises(UntrustedRound, match="recovers"):
        check_round(forged, node.key.address)
    unsigned = {k: v for k, v in rnd.items() if k != "sig"}
    messages.check("round", unsigned)              # well-formed, but not the node's word
    with pytest.raises(UntrustedRound, match="not signed"):
        check_round(cbor2.loads(cbor2.dumps(unsigned)), node.key.address)
