"""A device watching /round (RFC 7641 Observe) while a real node process closes a round.

aiocoap runs in the test process, over real sockets, against `aitn node serve` started with
min_updates=3 and a round that does not time out. Three software-key devices enroll over CoAP
(agent.uplink.enroll) and each sends one update item over OSCORE (NodeLink.send_item); the third closes
round 1. The observer must then be notified of round 2, whose hash is the sha256 of the new /model,
and the new global weights must be round 1's plus the sample-weighted mean of the three deltas.

Observed twice: in the clear (a plain client context, as any device may read /round before it
enrolls) and through OSCORE (the first device's protected link observes, then sends its own update
on that same link: one OSCORE context, one lock, one sequence-number space).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiocoap
import numpy as np
import pytest
from aiocoap.transports.oscore import OSCOREAddress

from agent.train import weights as weights_codec
from agent.uplink import enroll, messages
from agent.uplink.link import NodeLink
from tests.support.node_process import NodeProcess
from tests.support.soft_device import SoftDevice, update_payload

SAMPLES = [10, 30, 60]
WAIT = 10.0     # seconds for any one notification


@pytest.fixture
def node(workdir):
    n = NodeProcess(workdir / "node", min_updates=3, round_seconds=3600.0).start()
    yield n
    n.stop()


async def _plain(ctx: aiocoap.Context, uri: str) -> aiocoap.Message:
    resp = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
    assert resp.code == aiocoap.CONTENT, (resp.code, resp.payload)
    return resp


async def _enroll_all(node: NodeProcess, workdir) -> list[tuple[SoftDevice, Path]]:
    devices = []
    for i in range(3):
        dev, home = SoftDevice(), workdir / f"dev{i}"
        record = await enroll.enroll(home, node.uri, dev=dev.addr, pub=dev.pub, board="pi4", capacity=1.0,
                                     sign=dev.sign, node_address=node.address)
        assert record["node"] == node.address.hex()
        devices.append((dev, home))
    return devices


def _deltas(shapes) -> list[list[np.ndarray]]:
    return [[np.random.default_rng(i).normal(0, 0.01, s).astype(np.float32) for s in shapes] for i in range(3)]


async def _next_round(observation, seen: list[dict], want: int, protected: bool) -> dict:
    """Read notifications until one is of round ``want``; every one is schema-checked and kept."""
    async def read():
        async for note in observation:
            assert note.code == aiocoap.CONTENT, (note.code, note.payload)
            assert isinstance(note.remote, OSCOREAddress) == protected, note.remote
            r = messages.decode("round", note.payload)
            seen.append(r)
            if r["round"] == want:
                return r
        raise AssertionError(f"the observation ended before round {want}: {seen}")
    return await asyncio.wait_for(read(), WAIT)


async def _check_new_model(ctx: aiocoap.Context, node: NodeProcess, r1: dict, r2: dict, old: list[np.ndarray],
                           deltas: list[list[np.ndarray]]) -> None:
    assert r2["round"] == r1["round"] + 1 == 2
    assert r2["hash"] != r1["hash"] and r2["accepted"] == 0
    assert (r2["model"], r2["width"], r2["min"]) == (r1["model"], r1["width"], 3)
    data = (await _plain(ctx, f"{node.uri}/model")).payload
    assert hashlib.sha256(data).digest() == r2["hash"]
    new = weights_codec.decode(data, [w.shape for w in old])
    for i, g in enumerate(old):
        want = g.astype(np.float64) + np.average(np.stack([d[i] for d in deltas]).astype(np.float64), axis=0,
                                                 weights=SAMPLES)
        np.testing.assert_allclose(new[i], want.astype(np.float32), rtol=0, atol=1e-6)


async def _send_updates(links: list[NodeLink], devices, r1: dict, deltas) -> list[dict]:
    acks = []
    for link, (dev, _home), delta, samples in zip(links, devices, deltas, SAMPLES):
        ack = await link.send_item("update", dev.item("update", update_payload(r1, delta, samples), 1))
        acks.append(ack)
    return acks


def test_plain_observer_sees_the_round_close(node, workdir):
    async def main():
        ctx = await aiocoap.Context.create_client_context()
        links: list[NodeLink] = []
        try:
            pr = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=f"{node.uri}/round", observe=0))
            first = await asyncio.wait_for(pr.response, WAIT)
            assert first.code == aiocoap.CONTENT and first.opt.observe is not None   # registered
            assert not isinstance(first.remote, OSCOREAddress)
            r1 = messages.decode("round", first.payload)
            assert (r1["round"], r1["min"], r1["accepted"]) == (1, 3, 0)
            old_bytes = (await _plain(ctx, f"{node.uri}/model")).payload
            assert hashlib.sha256(old_bytes).digest() == r1["hash"]
            old = weights_codec.decode(old_bytes)

            devices = await _enroll_all(node, workdir)
            deltas = _deltas([w.shape for w in old])
            for _dev, home in devices:
                links.append(await NodeLink.open(home))
            acks = await _send_updates(links, devices, r1, deltas)
            assert [a["status"] for a in acks] == ["aggregated"] * 3 and [a["seq"] for a in acks] == [1, 1, 1]

            seen: list[dict] = []
            r2 = await _next_round(pr.observation, seen, 2, protected=False)
            assert all(r["round"] in (1, 2) for r in seen)
            await _check_new_model(ctx, node, r1, r2, old, deltas)
            # what a fresh GET says is what the observer was told
            assert messages.decode("round", (await _plain(ctx, f"{node.uri}/round")).payload) == r2
            pr.observation.cancel()
        finally:
            for link in links:
                await link.close()
            await ctx.shutdown()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_oscore_observer_sees_the_round_close(node, workdir):
    async def main():
        ctx = await aiocoap.Context.create_client_context()
        links: list[NodeLink] = []
        try:
            devices = await _enroll_all(node, workdir)
            for _dev, home in devices:
                links.append(await NodeLink.open(home))
            watcher = links[0]
            pr = watcher.ctx.request(aiocoap.Message(code=aiocoap.GET, uri=watcher.uri + "/round", observe=0))
            first = await asyncio.wait_for(pr.response, WAIT)
            assert first.code == aiocoap.CONTENT and first.opt.observe is not None
            assert isinstance(first.remote, OSCOREAddress)     # answered through the device's context
            r1 = messages.decode("round", first.payload)
            assert (r1["round"], r1["min"], r1["accepted"]) == (1, 3, 0)
            # the protected link's own GET agrees
            assert await watcher.round() == r1
            old_bytes = await watcher.model(r1["hash"])
            old = weights_codec.decode(old_bytes)
            deltas = _deltas([w.shape for w in old])

            acks = await _send_updates(links, devices, r1, deltas)
            assert [a["status"] for a in acks] == ["aggregated"] * 3

            seen: list[dict] = []
            r2 = await _next_round(pr.observation, seen, 2, protected=True)
            await _check_new_model(ctx, node, r1, r2, old, deltas)
            assert await watcher.round() == r2
            pr.observation.cancel()
            counters = json.loads((await _plain(ctx, f"{node.uri}/status")).payload)["counters"]
            assert counters.get("accepted.update") == 3
            assert not any(k.startswith("rejected") for k in counters), counters
        finally:
            for link in links:
                await link.close()
            await ctx.shutdown()

    asyncio.run(asyncio.wait_for(main(), 60))
