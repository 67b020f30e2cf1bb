"""The edge data path: sensor link -> spool -> table -> clean -> desensitize -> stored batch.

`Ingest` owns the order of things and the crash rules; each stage is its own module:

    reader.SerialReader  bytes from the MCU, decoded, through a bounded queue
    spool.Spool          every received record on disk (accepted) before anything else happens
    records.build        frames to a Table in SI units, anchored to wall-clock time
    records.clean        validation, duplicates, reordering, Hampel, gaps (counted by reason)
    privacy.apply        the deployment policy: nothing identifying leaves this step
    records.batch        the released bytes; store.datasets compresses, slices and stores them

A batch is cut every `batch_records` rows or `batch_seconds`. Its manifest carries the batch's
counts (link, cleaning, privacy) in `extra`, so `aitn data report` sums what every batch did and
the counts can never disagree with what is stored. State that must carry from one batch to the
next (cleaning windows, time anchor, the last sequence number) is saved atomically after each
batch together with the number of the next spool generation; see spool.py for why a replay after
a crash stores the very same batch again rather than a different one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..fsio import write_atomic
from ..records import batch as batchfmt
from ..records.build import TableBuilder
from ..records.clean import CleanConfig, clean
from ..records.clean_state import CleanReport, CleanState
from ..privacy.apply import desensitize
from ..privacy.policy import Policy
from ..store.datasets import DatasetStore, Manifest
from .frames import SEQ_MOD, Duplicate, Frame, FrameError, Gap, Restart
from .spool import Spool

STATE_VERSION = 1
UNRELEASED = "unreleased.jsonl"


@dataclass(frozen=True)
class IngestConfig:
    batch_records: int = 20_000
    batch_seconds: float = 60.0
    sync_seconds: float = 1.0   # the spool is fdatasync'd at least this often (power-loss window)


@dataclass
class LinkCounts:
    """What the link did during one batch (the reader's own counters are per process)."""

    frames: int = 0
    corrupt: dict[str, int] = field(default_factory=dict)   # FrameError.reason -> count
    duplicates: int = 0
    gaps: int = 0
    missing: int = 0
    restarts: int = 0
    dropped_backpressure: int = 0
    link_downs: int = 0

    def add(self, event: Any) -> None:
        name = type(event).__name__
        if isinstance(event, Frame):
            self.frames += 1
        elif isinstance(event, FrameError):
            self.corrupt[event.reason] = self.corrupt.get(event.reason, 0) + 1
        elif isinstance(event, Duplicate):
            self.duplicates += 1
        elif isinstance(event, Gap):
            self.gaps += 1
            self.missing += event.missing_count
        elif isinstance(event, Restart):
            self.restarts += 1
        elif name == "Dropped":
            self.dropped_backpressure += event.frames
        elif name == "LinkDown":
            self.link_downs += 1


@dataclass
class _State:
    generation: int = 0
    last_seq: int | None = None
    clean: str = ""                                         # CleanState.to_json()
    builder: dict = field(default_factory=dict)             # TableBuilder.snapshot()


class Ingest:
    def __init__(self, home: Path, *, device: str, clean_cfg: CleanConfig, policy: Policy,
                 pseudonymize: Callable[[int, list[bytes]], list[bytes]], store: DatasetStore,
                 cfg: IngestConfig = IngestConfig(), clock: Callable[[], float] = time.time) -> None:
        self.dir = home / "ingest"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device, self.clean_cfg, self.policy = device, clean_cfg, policy
        self.pseudonymize, self.store, self.cfg, self.clock = pseudonymize, store, cfg, clock
        self.spool = Spool(self.dir / "spool")
        self.state = self._load_state()
        self.builder = TableBuilder(device)
        if self.state.builder:
            self.builder.restore(self.state.builder)
        self.clean_state = CleanState.from_json(self.state.clean) if self.state.clean else CleanState()
        self.link = LinkCounts()
        self.rows = 0
        self.work = {"cleaned_bytes": 0, "desensitized_bytes": 0}   # for the work-utility meters (take_work)
        self.stored: list[Manifest] = []
        self._first_live = True
        self._batch_started = clock()
        self._last_sync = clock()
        self.replayed = self._recover()
        self.spool.open(self.state.generation)

    # -- state -------------------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.dir / "state.json"

    def _load_state(self) -> _State:
        try:
            obj = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return _State()
        if obj.get("version") != STATE_VERSION:
            raise ValueError(f"{self._state_path}: state version {obj.get('version')!r}, expected {STATE_VERSION}")
        return _State(obj["generation"], obj["last_seq"], obj["clean"], obj["builder"])

    def _state_json(self, s: _State, commit: str | None = None) -> bytes:
        return json.dumps({"version": STATE_VERSION, "generation": s.generation, "last_seq": s.last_seq,
                           "clean": s.clean, "builder": s.builder, "commit": commit}, sort_keys=True).encode()

    def _committed(self, commit: str) -> bool:
        """Whether the batch a pending state names made it to disk (a manifest, or an unreleased entry)."""
        if commit.startswith("unreleased:"):
            gen = int(commit.split(":", 1)[1])
            return any(e.get("generation") == gen for e in _unreleased(self.dir))
        return (self.store.dir / f"{commit}.json").exists()

    def _recover(self) -> int:
        """Finish or forget an interrupted flush, drop stored generations, replay the current one."""
        pending = self._state_path.with_name("state.pending.json")
        if pending.exists():
            try:
                obj = json.loads(pending.read_text())
                committed = self._committed(obj["commit"])
            except (ValueError, KeyError):
                committed = False   # torn: the batch it announced was not written yet
            if committed:
                write_atomic(self._state_path, pending.read_bytes())
                self.state = self._load_state()
            pending.unlink()
        replayed = 0
        for gen in self.spool.generations():
            if gen < self.state.generation:
                self.spool.remove(gen)   # stored, state saved, removal interrupted
            elif gen == self.state.generation:
                for event, recv_ms in self.spool.read(gen):
                    self._take(event, recv_ms)
                    replayed += 1
        return replayed

    # -- feeding -------------------------------------------------------------------------------------

    def _take(self, event: Any, recv_ms: int) -> None:
        self.link.add(event)
        self.builder.add(event, recv_ms)
        if isinstance(event, Frame):
            self.rows += 1
            self.state.last_seq = event.seq
        elif isinstance(event, Restart):
            self.state.last_seq = event.got

    def _continuity(self, event: Any, recv_ms: int) -> list[tuple[Any, int]]:
        """Before the first live frame after a start: the gap (or MCU restart) since the last one kept."""
        if not isinstance(event, Frame) or not self._first_live:
            return []
        self._first_live = False
        last = self.state.last_seq
        if last is None:
            return []
        ahead = (event.seq - last - 1) % SEQ_MOD
        if ahead == 0 or event.seq == last:
            return []
        if ahead < SEQ_MOD // 2:
            return [(Gap((last + 1) % SEQ_MOD, event.seq, ahead, -1), recv_ms)]
        return [(Restart(last, event.seq, -1), recv_ms)]

    def feed(self, items: list) -> list[Manifest]:
        """Accept reader items (Received: .event, .recv_ms); returns the batches this completed."""
        pairs: list[tuple[Any, int]] = []
        for item in items:
            pairs.extend(self._continuity(item.event, item.recv_ms))
            pairs.append((item.event, item.recv_ms))
        self.spool.append(pairs)
        for event, recv_ms in pairs:
            self._take(event, recv_ms)
        now = self.clock()
        if now - self._last_sync >= self.cfg.sync_seconds:
            self.spool.sync()
            self._last_sync = now
        if self.rows >= self.cfg.batch_records or (self.rows and now - self._batch_started >= self.cfg.batch_seconds):
            m = self.flush()
            return [m] if m else []
        return []

    # -- batches -------------------------------------------------------------------------------------

    def flush(self, final: bool = False) -> Manifest | None:
        """Turn the current generation into a stored batch (or a report-only entry if nothing is released).

        `final`: the link ends here (a clean stop), so cleaning releases the rows it holds back.

        Commit protocol: the state after this batch goes to state.pending.json first, naming the
        batch; then the batch is stored; then the pending state replaces state.json. A crash in
        between is settled at the next start by whether the named batch exists, so a generation is
        never stored twice and never skipped.
        """
        self.spool.sync()
        gen = self.state.generation
        table = self.builder.build()
        rows_in = len(table)
        cleaned, crep = clean(table, self.clean_cfg, self.clean_state, final=final)
        released, prep = desensitize(cleaned, self.policy, self.pseudonymize)
        self.work["cleaned_bytes"] += _table_bytes(table)
        self.work["desensitized_bytes"] += _table_bytes(cleaned)
        extra = {"generation": gen, "link": asdict(self.link), "clean": crep.to_json(),
                 "privacy": prep.to_json(), "rows_built": rows_in}
        payload = self.store.prepare(batchfmt.encode(released)) if len(released) else None
        if payload is None and not rows_in and not any(asdict(self.link).values()) and not crep.held:
            commit = None   # nothing happened: nothing to store, nothing to count
        else:
            commit = payload.root if payload is not None else f"unreleased:{gen}"
        after = _State(gen + 1, self.state.last_seq, self.clean_state.to_json(), self.builder.snapshot())
        pending = self._state_path.with_name("state.pending.json")
        if commit:
            write_atomic(pending, self._state_json(after, commit))
        m: Manifest | None = None
        if payload is not None:
            t = released.columns["t_ms"]
            m = self.store.add_batch(payload, records=len(released), time_range_ms=(int(t.min()), int(t.max())),
                                     policy=self.policy.ref, extra=extra)
            self.stored.append(m)
        elif commit:
            self._append_unreleased(extra)
        write_atomic(self._state_path, self._state_json(after))
        pending.unlink(missing_ok=True)
        self.state = after
        self.spool.remove(gen)
        self.spool.open(gen + 1)
        self.link = LinkCounts()
        self.rows = 0
        self._batch_started = self.clock()
        return m

    def take_work(self) -> dict[str, int]:
        """Bytes cleaned and desensitized since the last call."""
        out, self.work = self.work, {"cleaned_bytes": 0, "desensitized_bytes": 0}
        return out

    def _append_unreleased(self, extra: dict) -> None:
        """Counts of a batch with nothing to release (all suppressed): kept for `aitn data report`."""
        with open(self.dir / UNRELEASED, "a", encoding="utf-8") as f:
            f.write(json.dumps(extra, sort_keys=True) + "\n")
            f.flush()
            os.fdatasync(f.fileno())

    def close(self) -> None:
        self.spool.sync()
        self.spool.close()


def _table_bytes(t) -> int:
    return sum(int(col.nbytes) for col in t.columns.values())


def report(home: Path, store: DatasetStore) -> dict:
    """The cumulative counts of every batch: what `aitn data report` prints."""
    extras = [m.extra for m in store.manifests() if m.extra] + _unreleased(home / "ingest")
    link: dict[str, Any] = {}
    total = CleanReport()
    privacy: dict[str, Any] = {}
    for e in extras:
        _sum_into(link, e.get("link", {}))
        if "clean" in e:
            total = total.merge(CleanReport.from_json(e["clean"]))
        _sum_into(privacy, e.get("privacy", {}))
    return {"batches": len(extras), "link": link, "clean": total.to_json(), "privacy": privacy}


def _unreleased(ingest_dir: Path) -> list[dict]:
    try:
        text = (ingest_dir / UNRELEASED).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line
    return out


def _sum_into(acc: dict, d: dict) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _sum_into(acc.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            acc[k] = acc.get(k, 0) + v
