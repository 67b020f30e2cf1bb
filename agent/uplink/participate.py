"""A device's part in federated rounds: watch the node's round, train once per round, send the update.

One pass (``step``): read the round; if it is open and newer than the last one this device trained
for, fetch its model (hash-checked), run one local round on every stored dataset (agent/train/job.py),
sign the update through the secure world into the outbox, and send the outbox. The last round
trained is kept in HOME/uplink/participation.json, written after the update is in the outbox, so a
crash before that trains again (the node keeps one update per sequence number; a second update for
the same round is a second vote only if both reach the node, which the record prevents on restart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..fsio import write_atomic
from ..train import job
from . import items
from .link import NodeLink, uplink_dir
from .outbox import Outbox
from .sender import Backoff, drain

STATE_FILE = "participation.json"


@dataclass(frozen=True)
class Step:
    round: int
    trained: bool
    metrics: dict | None
    sent: int


def last_round(home: Path) -> int:
    try:
        return int(json.loads((uplink_dir(home) / STATE_FILE).read_text())["round"])
    except FileNotFoundError:
        return 0


async def step(home: Path, link: NodeLink, outbox: Outbox, store, *, dev: bytes,
               sign: Callable[[bytes], bytes], datasets: Callable[[], list[str]], quantize: bool = True,
               seed: int | None = None) -> Step:
    rnd = await link.round()
    metrics = None
    if rnd["open"] and rnd["round"] > last_round(home):
        model = await link.model(rnd.get("sub", rnd["hash"]))   # our HeteroFL slice, if we have one
        global_file = uplink_dir(home) / "global.aitw"
        write_atomic(global_file, model)
        cids = datasets()
        if cids:
            req = job.TrainRequest(datasets=tuple(cids), model=rnd["model"], width=rnd["width"],
                                   global_file=global_file, quantize=quantize, seed=seed)
            metrics = job.run(home, store, req)
            payload = items.update_payload(Path(metrics["update_file"]).read_bytes(), round_id=rnd["round"],
                                           model=rnd["model"], base=rnd["hash"], width=rnd["width"],
                                           samples=metrics["samples"])
            outbox.put("update", lambda seq: items.envelope("update", payload, dev=dev, seq=seq, sign=sign))
            write_atomic(uplink_dir(home) / STATE_FILE, json.dumps({"round": rnd["round"]}).encode())
    stats = await drain(outbox, link, backoff=Backoff(0.5, 10.0), max_failures=20)
    return Step(rnd["round"], metrics is not None, metrics, stats.sent)
