"""`aitn ingest`: run the edge data path until stopped (SIGTERM/SIGINT), a duration or a record count.

Wires the parts together from configuration: the secure world's session (pseudonyms), the board's
limits, the deployment policy, the datasets store, the serial reader, and `pipeline.Ingest`. On a
clean stop the records received so far are cut into a last batch; on a kill they stay in the spool
and the next start stores them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Limits
from ..errors import ConfigError
from ..privacy.policy import Policy
from ..records.clean import CleanConfig
from ..store.datasets import DatasetStore, Manifest
from .pipeline import Ingest, IngestConfig
from .reader import ReaderStats, SerialReader

#: Where a deployment's policy is looked for when neither --policy nor $AITN_POLICY names one.
SYSTEM_POLICY = Path("/etc/aitn/policy.toml")


def policy_path(flag: str | None, environ: dict[str, str] | None = None) -> Path:
    """--policy, then $AITN_POLICY, then /etc/aitn/policy.toml; no policy at all is an error, not a default."""
    env = os.environ if environ is None else environ
    chosen = flag or env.get("AITN_POLICY")
    if chosen:
        return Path(chosen)
    if SYSTEM_POLICY.exists():
        return SYSTEM_POLICY
    raise ConfigError("no desensitization policy: pass --policy FILE, set AITN_POLICY, or install "
                      f"{SYSTEM_POLICY} (see docs/privacy.md; nothing is stored without one)")


@dataclass
class RunSummary:
    frames: int
    batches: list[Manifest]
    replayed: int
    reader: ReaderStats
    seconds: float


def run(home: Path, *, url: str, baudrate: int, device: str, limits: Limits, policy: Policy,
        pseudonymize: Callable[[int, list[bytes]], list[bytes]], store: DatasetStore, cfg: IngestConfig,
        duration: float | None = None, count: int | None = None,
        on_batch: Callable[[Manifest], None] | None = None,
        meter: Callable[[dict[str, float]], None] | None = None, meter_every: float = 5.0) -> RunSummary:
    """Read the link until stopped; ``meter`` gets the work done every ``meter_every`` seconds and at the end
    (bytes read, cleaned, desensitized and the seconds spent processing them, not waiting for the link)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    ingest = Ingest(home, device=device, clean_cfg=CleanConfig(limits=limits), policy=policy,
                    pseudonymize=pseudonymize, store=store, cfg=cfg)
    reader = SerialReader(url, baudrate=baudrate)
    t0 = time.monotonic()
    frames = 0
    acc = {"work_s": 0.0, "read": 0, "metered_at": t0}

    def timed_feed(items: list, final: bool = False) -> list[Manifest]:
        t = time.perf_counter()
        out = ingest.feed(items)
        if final:
            m = ingest.flush(final=True)
            out = out + ([m] if m else [])
        acc["work_s"] += time.perf_counter() - t
        return out

    def report_work(force: bool = False) -> None:
        now = time.monotonic()
        if meter is None or (not force and now - acc["metered_at"] < meter_every):
            return
        read = reader.stats.bytes
        meter({"produced_bytes": float(read - acc["read"]), "work_s": acc["work_s"], **ingest.take_work()})
        acc.update(work_s=0.0, read=read, metered_at=now)

    try:
        reader.start()
        while not stop.is_set():
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            if count is not None and frames >= count:
                break
            items = reader.get(timeout=0.2)
            frames += sum(1 for i in items if type(i.event).__name__ == "Frame")
            for m in timed_feed(items):
                if on_batch:
                    on_batch(m)
            report_work()
        reader.stop()
        for m in timed_feed(reader.get(timeout=0), final=True):  # what arrived while stopping, then the rest
            if on_batch:
                on_batch(m)
        report_work(force=True)
    finally:
        reader.stop()
        ingest.close()
        for s, h in previous.items():
            signal.signal(s, h)
    return RunSummary(frames, ingest.stored, ingest.replayed, reader.stats, time.monotonic() - t0)
