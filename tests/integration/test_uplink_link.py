"""The device's CoAP link against a real node process: block size, a deadline on every request, and a
fresh client context before message ids could come round (aiocoap's limits, BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.uplink import enroll
from agent.uplink import link as link_mod
from agent.uplink.errors import NodeUnreachable
from agent.uplink.link import LinkConfig, NodeLink
from tests.support.node_process import NodeProcess
from tests.support.soft_device import SoftDevice, manifest
from tests.support.udp_relay import UdpRelay


@pytest.fixture
def node(workdir):
    n = NodeProcess(workdir / "node").start()
    yield n
    n.stop()


def _enrolled(home, uri: str) -> SoftDevice:
    dev = SoftDevice()
    asyncio.run(enroll.enroll(home, uri, dev=dev.addr, pub=dev.pub, board="b", capacity=1.0, sign=dev.sign))
    return dev


def _big_manifest(n: int) -> dict:
    return dict(manifest(), cids=[f"bafkrei{i:050d}" for i in range(n)])


def test_block_size_is_the_configured_one(node, workdir):
    with UdpRelay(("127.0.0.1", node.port)) as relay:
        uri = f"coap://127.0.0.1:{relay.port}"
        dev = _enrolled(workdir / "dev", uri)
        body = dev.item("manifest", _big_manifest(80), 1)          # ~4.6 KB

        async def send(exp: int) -> dict:
            link = await NodeLink.open(workdir / "dev", cfg=LinkConfig(block_exp=exp))
            try:
                mark = len(relay.records)
                ack = await link.send_item("manifest", body if exp == 4 else dev.item("manifest", _big_manifest(81), 2))
                ups = [d for d in relay.records[mark:] if d.direction == "up"]
                return {"ack": ack, "ups": ups}
            finally:
                await link.close()
        small, large = asyncio.run(send(4)), asyncio.run(send(6))
    assert small["ack"]["status"] == "accepted" and large["ack"]["status"] == "accepted"
    assert max(len(d.data) for d in small["ups"]) < 400 and len(small["ups"]) >= 4 * len(large["ups"]) - 4
    assert max(len(d.data) for d in large["ups"]) > 1000


def test_every_request_has_a_deadline(node, workdir):
    with UdpRelay(("127.0.0.1", node.port)) as relay:
        uri = f"coap://127.0.0.1:{relay.port}"
        dev = _enrolled(workdir / "dev", uri)
        relay.blackhole = True        # the node stops answering; aiocoap alone would retransmit 50 times

        async def send():
            link = await NodeLink.open(workdir / "dev", cfg=LinkConfig(ack_timeout=0.2, max_retransmit=50,
                                                                         deadline_s=1.0))
            try:
                t0 = time.monotonic()
                with pytest.raises(NodeUnreachable, match="no answer within"):
                    await link.send_item("manifest", dev.item("manifest", manifest(), 1))
                return time.monotonic() - t0
            finally:
                await link.close()
        took = asyncio.run(send())
    assert took < 5.0


def test_client_context_is_renewed_before_message_ids_come_round(node, workdir, monkeypatch):
    dev = _enrolled(workdir / "dev", node.uri)
    monkeypatch.setattr(link_mod, "MESSAGES_PER_CONTEXT", 67)   # 64 of headroom: renewed every 2 requests

    async def run():
        link = await NodeLink.open(workdir / "dev")
        try:
            for seq in range(1, 9):
                ack = await link.send_item("manifest", dev.item("manifest", manifest(seq), seq))
                assert ack == {"seq": seq, "status": "accepted"}
        finally:
            await link.close()
        return link.renewals
    # new client contexts, the same OSCORE context: the node accepted every item (no replay, no stall)
    assert asyncio.run(run()) >= 2
