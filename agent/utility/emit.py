"""Turn ended cycles into signed report items in the outbox.

For each ended cycle with meters and no report yet (oldest first): build the report from the
cycle's meters and the capacity this device enrolled with, have the secure world sign it (through
the handshake, ``sign``), put it in the outbox, then mark the cycle reported. A crash between the
outbox and the mark sends the same report again on the next run: an ended cycle's meters do not
change, so the node sees the same body and acknowledges it as a duplicate.
"""

from __future__ import annotations

from typing import Callable

from ..uplink import items
from ..uplink.outbox import Outbox
from . import report
from .meters import Meters


def training_work(metrics: dict) -> dict[str, float]:
    """What a training run adds to the meters: its feature bytes times epochs and its time."""
    return {"trained_bytes": float(metrics.get("feature_bytes", 0)) * metrics["epochs"],
            "work_s": float(metrics.get("total_seconds", metrics["seconds"]))}


def emit_due(meters: Meters, outbox: Outbox, *, dev: bytes, sign: Callable[[bytes], bytes], capacity: float,
             now: float | None = None) -> list[tuple[int, int]]:
    """Queue a report per due cycle; returns [(cycle, outbox seq)]."""
    done = []
    for cycle in meters.due(now):
        payload = report.build(cycle, meters.cycle_s, capacity, meters.read(cycle))
        item = outbox.put("report", lambda seq, p=payload: items.envelope("report", p, dev=dev, seq=seq, sign=sign))
        meters.mark_reported(cycle, item.seq)
        done.append((cycle, item.seq))
    return done
