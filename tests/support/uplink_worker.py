"""Queue synthetic items in a device's outbox, signed by the real secure world (a separate process).

    python -m tests.support.uplink_worker --home H --tee URL --node coap://HOST:PORT \
        --updates N --manifests M --seed S

Updates are random deltas shaped like the node's current global model (read from the node, as a
device would), so the node aggregates them. Prints one JSON line per queued item: seq, kind and the
sha256 of what the node should end up storing (the update's weights file, the manifest's body).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np

from agent.tee.handshake import sign_digest
from agent.tee.session import ChainedSession
from agent.train import weights as weights_codec
from agent.uplink import items, messages
from agent.uplink.link import NodeLink
from agent.uplink.outbox import Outbox


async def _round_and_model(home: Path, uri: str) -> tuple[dict, bytes]:
    link = await NodeLink.open(home, uri, protected=False)
    try:
        rnd = await link.round()
        return rnd, await link.model(rnd["hash"])
    finally:
        await link.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--tee", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--updates", type=int, default=0)
    ap.add_argument("--manifests", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--quota", type=int, default=64 << 20)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    outbox = Outbox(a.home / "uplink" / "outbox", a.quota)
    rnd, model = asyncio.run(_round_and_model(a.home, a.node)) if a.updates else (None, b"")
    shapes = [w.shape for w in weights_codec.decode(model)] if a.updates else []
    dev = _address(a.tee)
    with ChainedSession.open(a.tee, a.home) as s:
        sign = lambda d: sign_digest(s, d).signature  # noqa: E731
        plan = ["update"] * a.updates + ["manifest"] * a.manifests
        for i, kind in enumerate(plan):
            if kind == "update":
                tensors = [rng.normal(0, a.scale, sh).astype(np.float32) for sh in shapes]
                raw = weights_codec.encode(tensors)
                payload = items.update_payload(raw, round_id=rnd["round"], model=rnd["model"], base=rnd["hash"],
                                               width=rnd["width"], samples=int(rng.integers(10, 1000)))
                stored = raw
            else:
                payload = {"cids": [f"bafkrei{a.seed:04d}{i:06d}"], "records": i, "bytes": 100 * i, "policy": "p@x"}
                stored = messages.encode("manifest", payload)
            item = outbox.put(kind, lambda seq: items.envelope(kind, payload, dev=dev, seq=seq, sign=sign))
            print(json.dumps({"seq": item.seq, "kind": kind, "sha256": hashlib.sha256(stored).hexdigest(),
                              "samples": payload.get("samples")}), flush=True)


def _address(url: str) -> bytes:
    from agent.tee.client import TeeClient
    from tee_sim.abi.ids import Cmd

    client = TeeClient.connect(url)
    try:
        sid = client.open_session().id
        return client.invoke(sid, Cmd.GET_PUBKEY, (65, 20, None, None)).params[1]
    finally:
        client.close()


if __name__ == "__main__":
    main()
