"""Attacks on the uplink, against a real node process: each is refused with its CoAP error, counted,
and stores nothing; the node keeps serving the honest device afterwards.

- no OSCORE (a plain CoAP POST), or an OSCORE context the node never made: 4.01
- a recorded OSCORE request sent again (replay): as recorded, CoAP's deduplication answers from its
  cache; with a fresh message id and token, OSCORE's replay window answers 4.01 "Replay detected"
- an item signed by another key than the enrolled device's: 4.03
- a sequence number reused with other content: 4.00
- malformed CBOR and schema violations inside a valid OSCORE request: 4.00 with the reason
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import aiocoap
import cbor2
import pytest
from aiocoap.message import Direction

from agent.uplink import items, messages
from agent.uplink.errors import NodeRejected, UnknownDevice
from agent.uplink.link import LinkConfig, NodeLink
from agent.uplink.oscore_ctx import write_context
from tests.support.node_process import NodeProcess
from tests.support.soft_device import SoftDevice, manifest
from tests.support.udp_relay import UdpRelay


@pytest.fixture
def node(workdir):
    n = NodeProcess(workdir / "node").start()
    yield n
    n.stop()


def _counters(node) -> dict:
    db = sqlite3.connect(f"file:{node.folder / 'node.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT name, value FROM counters"))
    finally:
        db.close()


def _stored(node) -> int:
    db = sqlite3.connect(f"file:{node.folder / 'node.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM items").fetchone()[0]
    finally:
        db.close()


def _device_address(cli, home, tee) -> bytes:
    return bytes.fromhex(json.loads(cli("identity", "show", "--json", home=home, tee=tee).stdout)["address"][2:])


async def _plain(uri: str, code, path: str, payload: bytes = b"") -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        return await ctx.request(aiocoap.Message(code=code, uri=f"{uri}/{path}", payload=payload)).response
    finally:
        await ctx.shutdown()


def test_unprotected_and_unknown_contexts_get_401(cli, tee, home, paired, node, workdir):
    cli("uplink", "enroll", "--node", node.uri, home=home, tee=tee)
    dev = _device_address(cli, home, tee)
    body = SoftDevice().item("manifest", manifest(), 1)
    resp = asyncio.run(_plain(node.uri, aiocoap.POST, "manifest", body))
    assert resp.code == aiocoap.UNAUTHORIZED and b"OSCORE required" in resp.payload
    # an attacker's own OSCORE context: ids and secret the node never agreed to
    fake = workdir / "fake"
    write_context(fake / "uplink" / "oscore", b"\x42\x42", b"", b"\x01" * 16, b"\x02" * 8)
    (fake / "uplink" / "node.json").write_text(json.dumps({"uri": node.uri, "node": node.address.hex(),
                                                            "sid": "4242", "enrolled": 0}))

    async def forged():
        link = await NodeLink.open(fake)
        try:
            await link.send_item("manifest", items.envelope("manifest", manifest(), dev=dev, seq=1,
                                                             sign=SoftDevice().sign))
        finally:
            await link.close()
    with pytest.raises(UnknownDevice, match="4.01"):
        asyncio.run(forged())
    assert _stored(node) == 0
    assert _counters(node)["rejected.manifest.unknown_device"] == 1   # the plain POST (OSCORE's refusal is its own)


def test_replayed_datagram_is_refused(cli, tee, home, paired, node):
    with UdpRelay(("127.0.0.1", node.port)) as relay:
        uri = f"coap://127.0.0.1:{relay.port}"
        cli("uplink", "enroll", "--node", uri, home=home, tee=tee)
        cli("uplink", "queue-manifests", home=home, tee=tee)       # nothing stored yet: queues nothing
        dev = _device_address(cli, home, tee)
        mark = len(relay.records)

        async def send_one():
            link = await NodeLink.open(home)
            try:
                from agent.tee.handshake import sign_digest
                from agent.tee.session import ChainedSession
                with ChainedSession.open(tee.url, home) as s:
                    body = items.envelope("manifest", manifest(3), dev=dev, seq=1,
                                          sign=lambda d: sign_digest(s, d).signature)
                return await link.send_item("manifest", body)
            finally:
                await link.close()
        assert asyncio.run(send_one())["status"] == "accepted"
        ups = [d for d in relay.records[mark:] if d.direction == "up"]
        assert ups, "the protected request went through the relay"
        # 1. the datagram as recorded: CoAP's message-layer dedup answers from its cache, nothing runs twice
        cached = relay.inject(ups[0].data, client=ups[0].client, timeout=2.0)
        # 2. a fresh message id and token around the same OSCORE payload: OSCORE's replay window refuses it
        msg = aiocoap.Message.decode(ups[0].data)
        msg.mid = (msg.mid + 1000) % 65536
        msg.token = b"\x5a" * 4
        msg.direction = Direction.OUTGOING   # decoded as received; re-encoded as the attacker sends it
        replayed = relay.inject(msg.encode(), client=ups[0].client, timeout=2.0)
    assert cached is not None and replayed is not None
    assert aiocoap.Message.decode(cached).code == aiocoap.CHANGED
    resp = aiocoap.Message.decode(replayed)
    assert resp.code == aiocoap.UNAUTHORIZED and b"Replay" in resp.payload
    assert _stored(node) == 1


def test_signature_sequence_and_schema_attacks(cli, tee, home, paired, node):
    cli("uplink", "enroll", "--node", node.uri, home=home, tee=tee)
    dev = _device_address(cli, home, tee)
    mallory = SoftDevice()

    async def run():
        from agent.tee.handshake import sign_digest
        from agent.tee.session import ChainedSession

        link = await NodeLink.open(home, cfg=LinkConfig())
        out = {}
        try:
            with ChainedSession.open(tee.url, home) as s:
                sign = lambda d: sign_digest(s, d).signature  # noqa: E731
                # the device's own address, another key's signature
                with pytest.raises(NodeRejected) as e:
                    await link.send_item("manifest", items.envelope("manifest", manifest(), dev=dev, seq=1,
                                                                     sign=mallory.sign))
                out["forged"] = e.value
                # malformed CBOR and a schema violation inside a valid OSCORE request
                with pytest.raises(NodeRejected) as e:
                    await link.send_item("manifest", b"\xff\xfe garbage")
                out["cbor"] = e.value
                env = messages.decode("item", items.envelope("manifest", manifest(), dev=dev, seq=2, sign=sign))
                env["seq"] = 0
                with pytest.raises(NodeRejected) as e:
                    await link.send_item("manifest", cbor2.dumps(env))
                out["schema"] = e.value
                # honest item, then the same seq with other content
                out["ok"] = await link.send_item("manifest", items.envelope("manifest", manifest(1), dev=dev, seq=5,
                                                                             sign=sign))
                with pytest.raises(NodeRejected) as e:
                    await link.send_item("manifest", items.envelope("manifest", manifest(2), dev=dev, seq=5,
                                                                     sign=sign))
                out["conflict"] = e.value
                out["after"] = await link.send_item("manifest", items.envelope("manifest", manifest(3), dev=dev,
                                                                                seq=6, sign=sign))
        finally:
            await link.close()
        return out

    out = asyncio.run(run())
    assert out["forged"].code == "4.03" and "recovers" in out["forged"].diagnostic
    assert out["cbor"].code == "4.00" and "not CBOR" in out["cbor"].diagnostic
    assert out["schema"].code == "4.00" and "item.seq" in out["schema"].diagnostic
    assert out["conflict"].code == "4.00" and "sequence number 5" in out["conflict"].diagnostic
    assert out["ok"]["status"] == "accepted" and out["after"]["status"] == "accepted"
    assert _stored(node) == 2
    c = _counters(node)
    assert c["rejected.manifest.bad_signature"] == 1 and c["rejected.manifest.schema"] == 2
    assert c["rejected.manifest.seq_conflict"] == 1


def test_sender_sets_refused_items_aside_and_goes_on(cli, tee, home, paired, node):
    from agent.uplink.outbox import Outbox

    cli("uplink", "enroll", "--node", node.uri, home=home, tee=tee)
    dev = _device_address(cli, home, tee)
    box = Outbox(home / "uplink" / "outbox", 1 << 20)
    box.put("manifest", lambda seq: items.envelope("manifest", manifest(), dev=dev, seq=seq, sign=SoftDevice().sign))
    from agent.tee.handshake import sign_digest
    from agent.tee.session import ChainedSession
    with ChainedSession.open(tee.url, home) as s:
        good = box.put("manifest", lambda seq: items.envelope("manifest", manifest(1), dev=dev, seq=seq,
                                                              sign=lambda d: sign_digest(s, d).signature))
    out = json.loads(cli("uplink", "send", "--json", home=home, tee=tee).stdout)
    assert out["sent"] == 1 and out["rejected"] == 1 and out["outbox"]["rejected"] == 1
    reason = next((home / "uplink" / "outbox" / "rejected").glob("*.reason")).read_text()
    assert reason.startswith("4.03")
    assert _stored(node) == 1 and good.seq == 2


def test_unprotected_blockwise_body_refused_at_its_first_block(node):
    """An unauthenticated peer cannot make the node assemble a body: 4.01 at block 0, nothing kept."""
    with UdpRelay(("127.0.0.1", node.port)) as relay:
        resp = asyncio.run(_plain(f"coap://127.0.0.1:{relay.port}", aiocoap.POST, "update", b"\x00" * 200_000))
        ups = [d for d in relay.records if d.direction == "up"]
    assert resp.code == aiocoap.UNAUTHORIZED and b"OSCORE required" in resp.payload
    assert len(ups) <= 2          # the first block (and at most one retransmission), not 196 of them


def test_item_above_the_size_limit_is_refused(cli, tee, home, paired, workdir):
    small = NodeProcess(workdir / "small-node", max_item_bytes=64 << 10).start()
    try:
        cli("uplink", "enroll", "--node", small.uri, home=home, tee=tee)
        dev = _device_address(cli, home, tee)
        big = dict(manifest(), cids=[f"bafkrei{i:0120d}" for i in range(1000)])    # ~125 KB of CIDs

        async def send():
            from agent.tee.handshake import sign_digest
            from agent.tee.session import ChainedSession
            link = await NodeLink.open(home)
            try:
                with ChainedSession.open(tee.url, home) as s:
                    body = items.envelope("manifest", big, dev=dev, seq=1, sign=lambda d: sign_digest(s, d).signature)
                assert len(body) > 64 << 10
                with pytest.raises(NodeRejected) as e:
                    await link.send_item("manifest", body)
                return e.value
            finally:
                await link.close()
        err = asyncio.run(send())
        assert err.code == "4.13"
        assert _stored(small) == 0
    finally:
        small.stop()
