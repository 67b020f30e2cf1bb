"""The ingest spool: every record read from the link, on disk before it is batched.

A record is *accepted* once its line is written to the spool (os.write: it then survives the
agent being killed; `sync()` makes it survive a power loss too, and the pipeline calls it at
least once a second and before every batch). The pipeline turns a spool generation into one
stored batch, records that generation as done in its state file, then deletes it; on start it
replays any generation not yet done. Because cleaning and desensitization are deterministic given
the same input and the same saved state, a replay after a crash yields the very same batch (same
CID): nothing is lost and nothing is stored twice.

Lines are JSON, one per event: frames ("f"), the link events that mark a discontinuity ("gap",
"restart", "dropped", "down", "up"), and what was refused ("err": a corrupt frame's reason, "dup"),
so a replayed batch counts exactly what the original run counted. A torn last line (killed mid-write) is skipped and
counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from .frames import Duplicate, Frame, FrameError, Gap, RecordType, Restart
from .reader import Dropped, LinkDown, LinkUp


def _line(event: Any, recv_ms: int) -> dict | None:
    if isinstance(event, Frame):
        return {"k": "f", "r": recv_ms, "t": int(event.record_type), "s": event.seq, "v": event.fields}
    if isinstance(event, Gap):
        return {"k": "gap", "r": recv_ms, "d": {"expected": event.expected, "got": event.got,
                                                "missing": event.missing_count}}
    if isinstance(event, Restart):
        return {"k": "restart", "r": recv_ms, "d": {"previous": event.previous, "got": event.got}}
    if isinstance(event, FrameError):
        return {"k": "err", "r": recv_ms, "d": {"reason": event.reason}}
    if isinstance(event, Duplicate):
        return {"k": "dup", "r": recv_ms, "d": {"seq": event.seq}}
    if isinstance(event, Dropped):
        return {"k": "dropped", "r": recv_ms, "d": {"frames": event.frames, "first_seq": event.first_seq,
                                                    "last_seq": event.last_seq, "other": event.other_events}}
    if isinstance(event, LinkDown):
        return {"k": "down", "r": recv_ms, "d": {"reason": event.reason, "truncated": event.truncated_bytes}}
    if isinstance(event, LinkUp):
        return {"k": "up", "r": recv_ms, "d": {"url": event.url}}
    return None


def _event(obj: dict) -> tuple[Any, int]:
    r, k, d = int(obj["r"]), obj["k"], obj.get("d", {})
    if k == "f":
        return Frame(RecordType(obj["t"]), int(obj["s"]), obj["v"], -1, 0), r
    if k == "gap":
        return Gap(d["expected"], d["got"], d["missing"], -1), r
    if k == "restart":
        return Restart(d["previous"], d["got"], -1), r
    if k == "dropped":
        return Dropped(d["frames"], d["first_seq"], d["last_seq"], d["other"]), r
    if k == "down":
        return LinkDown(d["reason"], d["truncated"]), r
    if k == "up":
        return LinkUp(d["url"]), r
    if k == "err":  # only its reason is kept: the batch's counts must survive a replay
        err = FrameError("replayed from the spool")
        err.reason = str(d["reason"])
        return err, r
    if k == "dup":
        return Duplicate(d["seq"], -1), r
    raise ValueError(f"unknown spool event {k!r}")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._gen: int | None = None
        self.lines = 0
        self.skipped = 0   # unreadable lines met by read(): a torn tail after a kill

    def path(self, gen: int) -> Path:
        return self.dir / f"spool-{gen:010d}.jsonl"

    def generations(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("spool-*.jsonl"))

    def open(self, gen: int) -> None:
        """Append to generation ``gen`` from now on."""
        self.close()
        self._fd = os.open(self.path(gen), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._gen = gen
        # A torn last line (killed mid-write) must not glue onto the next one.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path(gen), "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def append(self, items: list[tuple[Any, int]]) -> int:
        """Write the spoolable events of ``items`` ((event, recv_ms) pairs) in one write; returns lines written."""
        assert self._fd is not None, "open() a generation first"
        lines = [json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
                 for obj in (_line(e, r) for e, r in items) if obj is not None]
        if lines:
            data = ("\n".join(lines) + "\n").encode()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self.lines += len(lines)
        return len(lines)

    def sync(self) -> None:
        if self._fd is not None:
            os.fdatasync(self._fd)

    def read(self, gen: int) -> Iterator[tuple[Any, int]]:
        """The events of generation ``gen`` in order; a torn or unreadable line is skipped."""
        try:
            data = self.path(gen).read_bytes()
        except FileNotFoundError:
            return
        for raw in data.split(b"\n"):
            if not raw:
                continue
            try:
                yield _event(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                self.skipped += 1  # only the last line can be torn: the writer never rewrites
                continue

    def remove(self, gen: int) -> None:
        if gen == self._gen:
            self.close()
        self.path(gen).unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._gen = None, None
