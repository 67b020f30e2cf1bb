"""The node's side of the demand server: one group round on a model from Flower, its aggregate back.

Called by the node's Flower ClientApp (flower_app/aitn_flower/client_app.py), which the node's
SuperNode runs next to the node daemon. Over CoAP on loopback: POST /demand opens the round, GET
/demand is polled until it closes. The aggregate goes back to Flower with num-examples = the
group's total samples, so for full-width synchronous rounds Flower's FedAvg over nodes is exactly the
sample-weighted mean over all devices (with HeteroFL widths or FedBuff, each node's aggregate already
weights by coverage or staleness, and Flower weights the nodes by their sample totals).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import cbor2
import numpy as np

from ..train import weights as weights_codec
from ..uplink import messages
from ..uplink.errors import UplinkError
from ..uplink.link import LinkConfig, NodeLink


class GroupRoundFailed(UplinkError):
    """The group round closed with no update (no device answered in time), or never closed."""

    exit_code = 82


@dataclass(frozen=True)
class GroupResult:
    round: int
    tensors: list[np.ndarray]
    samples: int
    updates: int
    bytes: int          # update items the devices sent in the group round
    seconds: float


async def group_round(uri: str, tensors: list[np.ndarray], *, min_updates: int, seconds: float,
                      poll: float = 0.5, timeout: float | None = None) -> GroupResult:
    t0 = time.monotonic()
    link = await NodeLink.open(None, uri, LinkConfig(ack_timeout=1.0), protected=False)
    try:
        req = messages.encode("demand", {"model": weights_codec.encode(tensors), "min": min_updates,
                                         "seconds": float(seconds)})
        rid = cbor2.loads(await link.post("demand", req))["round"]
        limit = t0 + (timeout if timeout is not None else seconds + 60.0)
        while True:
            st = messages.decode("demand_status", (await link.get("demand")))
            if st["round"] != rid:
                raise GroupRoundFailed(f"the node moved on to round {st['round']} before round {rid} closed")
            if not st["open"]:
                break
            if time.monotonic() > limit:
                raise GroupRoundFailed(f"round {rid} still open after {time.monotonic() - t0:.0f} s")
            await asyncio.sleep(poll)
    finally:
        await link.close()
    if "model" not in st or st["samples"] == 0:
        raise GroupRoundFailed(f"round {rid} closed with no update from the group")
    shapes = [t.shape for t in tensors]
    return GroupResult(rid, weights_codec.decode(st["model"], shapes), st["samples"], st["updates"], st["bytes"],
                       time.monotonic() - t0)
