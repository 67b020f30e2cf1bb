"""Draining the outbox to the node: oldest first, exponential backoff with jitter, ack then remove.

An item leaves the outbox only after the node's 2.04 (accepted, aggregated, held, duplicate or stale): a crash before
that resends it, and the node's (device, sequence number) dedup makes the resend harmless. A 4.01
means the node no longer knows this device's context: sending stops with UnknownDevice (enroll
again), items kept. Any other 4.xx means these bytes will never be accepted: the item moves to the
outbox's rejected folder with the node's reason (kept for the operator, never resent), and the
queue goes on. Timeouts and 5.xx back off: base * 2^n, capped, times a random factor in [0.5, 1].
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Callable

from .errors import NodeRejected, NodeUnreachable
from .link import NodeLink
from .outbox import Item, Outbox

log = logging.getLogger("aitn.uplink")


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int, rng: random.Random) -> float:
        return min(self.cap, self.base * 2 ** max(0, failures - 1)) * rng.uniform(0.5, 1.0)


@dataclass
class DrainStats:
    sent: int = 0
    acks: dict = field(default_factory=dict)      # status -> count (accepted, aggregated, held, duplicate, stale)
    rejected: int = 0
    retries: int = 0


async def drain(outbox: Outbox, link: NodeLink, *, backoff: Backoff = Backoff(), until_empty: bool = True,
                stop: asyncio.Event | None = None, rng: random.Random | None = None,
                max_failures: int | None = None,
                on_ack: Callable[[Item, dict], None] | None = None) -> DrainStats:
    """Send until the outbox is empty (or forever, polling, if not ``until_empty``) or ``stop`` is set.

    on_ack(item, ack): called after the node acknowledged an item, before it leaves the outbox.
    max_failures: give up with NodeUnreachable after that many consecutive failures (None: never).
    """
    rng = rng or random.Random()
    stats, failures = DrainStats(), 0
    while stop is None or not stop.is_set():
        item = outbox.peek()
        if item is None:
            if until_empty:
                return stats
            await asyncio.sleep(1.0)
            continue
        try:
            ack = await link.send_item(item.kind, item.body)
        except NodeRejected as e:
            outbox.reject(item.seq, f"{e.code} {e.diagnostic}")
            stats.rejected += 1
            log.warning("item %d (%s) rejected by the node: %s", item.seq, item.kind, e)
            continue
        except NodeUnreachable as e:
            failures += 1
            stats.retries += 1
            if max_failures is not None and failures >= max_failures:
                raise
            delay = backoff.delay(failures, rng)
            log.info("item %d: %s; retry in %.1f s", item.seq, e, delay)
            await asyncio.sleep(delay)
            continue
        failures = 0
        if ack.get("seq") != item.seq:
            raise NodeUnreachable(f"acknowledgement for seq {ack.get('seq')}, sent {item.seq}")
        if on_ack is not None:
            on_ack(item, ack)
        outbox.ack(item.seq)
        stats.sent += 1
        status = str(ack.get("status"))
        stats.acks[status] = stats.acks.get(status, 0) + 1
    return stats
