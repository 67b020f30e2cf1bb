"""TableBuilder: the sensor link's received items -> a record Table, in the schema's units and wall-clock time.

The serial reader hands over `Received(event, recv_ms)` items; the pipeline calls `add(event, recv_ms)` for each
and `build()` whenever it wants a batch. An event is one of agent.ingest.frames' (Frame, Gap, Restart,
Duplicate, FrameError) or one of the reader's own (Dropped, LinkDown, LinkUp), which this module recognises by
class name so that it does not import the reader.

Time. `t_ms` on the wire is the MCU's uptime mod 2**32. A `Clock` maps it to Unix ms:
  * anchor: at the first frame of a link session, and after a Restart or a LinkUp, offset = recv_ms - t_ms;
  * wrap: successive uptimes are unwrapped by their signed difference mod 2**32 (records may be a little out
    of uptime order; a real jump of 2**31 ms, 24.8 days, cannot be told from a wrap and is not expected);
  * latency: recv_ms = true time + link latency >= the stamp we want, so the offset tracks the *lower*
    envelope of recv_ms - uptime: a frame that arrives earlier than predicted lowers the offset at once;
  * drift: if the smallest residual recv_ms - predicted over `drift_window_ms` of uptime stayed positive, the
    two clocks drifted apart (the MCU's crystal is slow), and the offset rises by that residual;
  * jump: |recv_ms - predicted| > `max_skew_ms` means one of the clocks jumped (an NTP step on the Pi, a
    reboot the decoder could not see, a long stall): re-anchor on this frame, count `clock_jumps`, and mark
    the row FLAG_GAP_BEFORE since its time axis is discontinuous.

Context carried forward onto every row: `task_id` from TASK_EVENT and `operator` from OPERATOR (the badge).
A Restart or a LinkUp resets both to "none": the MCU, or whoever worked the robot while we could not hear it,
may have changed them, and a wrong attribution is worse than a missing one. Gaps and drops keep them (the
MCU kept running; the row's FLAG_GAP_BEFORE says a TASK_EVENT may have been missed).

FLAG_GAP_BEFORE goes on the next row after a Gap, a Restart, a Dropped, a LinkDown, a LinkUp that follows
earlier frames, a FrameError that carries a seq (its CRC verified, so a real record was rejected and the
decoder moved past its seq without a Gap), and a clock jump. Each is counted in `BuildStats`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from ..ingest.frames import SEQ_MOD, Duplicate, Frame, FrameError, Gap, RecordType, Restart
from .schema import FLAG_GAP_BEFORE, MAX_MOTORS, SCHEMA_VERSION, Table

_HALF = SEQ_MOD // 2


@dataclass
class Clock:
    """MCU uptime (u32 ms) -> Unix ms for one link session. See the module docstring."""

    max_skew_ms: int = 2000
    drift_window_ms: int = 10_000
    offset: int | None = None
    last_raw: int = 0
    uptime: int = 0                 # unwrapped uptime of the last frame
    window_start: int = 0           # uptime where the current drift window opened
    window_min: int | None = None   # smallest residual in it

    def reset(self) -> None:
        self.offset = None

    def stamp(self, raw: int, recv_ms: int) -> tuple[int, str | None]:
        """The Unix ms of a frame with uptime `raw`, read at `recv_ms`; and "anchor", "jump" or None."""
        if self.offset is None:
            self._anchor(raw, recv_ms)
            return recv_ms, "anchor"
        d = (raw - self.last_raw) % SEQ_MOD
        self.uptime += d - SEQ_MOD if d >= _HALF else d
        self.last_raw = raw
        residual = recv_ms - (self.offset + self.uptime)
        if abs(residual) > self.max_skew_ms:
            self._anchor(raw, recv_ms, keep_uptime=True)
            return recv_ms, "jump"
        if residual < 0:          # faster than the anchor frame: its latency was the larger one
            self.offset += residual
            residual = 0
        self.window_min = residual if self.window_min is None else min(self.window_min, residual)
        if self.uptime - self.window_start >= self.drift_window_ms:
            if self.window_min > 0:   # even the quickest frame came late: the clocks drifted apart
                self.offset += self.window_min
            self.window_start, self.window_min = self.uptime, None
        return self.offset + self.uptime, None

    def _anchor(self, raw: int, recv_ms: int, keep_uptime: bool = False) -> None:
        if not keep_uptime:
            self.uptime = raw
        self.last_raw = raw
        self.offset = recv_ms - self.uptime
        self.window_start, self.window_min = self.uptime, None


@dataclass
class BuildStats:
    """What the builder saw; `TableBuilder.stats` is cumulative, `meta["build"]` is per built table."""

    rows: int = 0
    gaps: int = 0                  # Gap events
    missing: int = 0               # records they announce missing
    restarts: int = 0
    duplicates: int = 0            # Duplicate events (the decoder dropped the frame)
    dropped: int = 0               # Dropped events (the reader's back-pressure)
    dropped_frames: int = 0
    link_down: int = 0
    link_up: int = 0
    truncated_bytes: int = 0       # LinkDown.truncated_bytes
    frame_errors: dict[str, int] = field(default_factory=dict)   # FrameError.reason -> count
    anchors: int = 0               # clock anchored (first frame of a session, after a Restart or a LinkUp)
    clock_jumps: int = 0           # clock re-anchored: |recv_ms - predicted| > max_skew_ms
    gap_marks: int = 0             # rows given FLAG_GAP_BEFORE
    motors_truncated: int = 0      # MOTORS frames with more than MAX_MOTORS currents (the rest is dropped)

    def add(self, other: "BuildStats") -> None:
        for k, v in asdict(other).items():
            if isinstance(v, dict):
                mine = getattr(self, k)
                for r, c in v.items():
                    mine[r] = mine.get(r, 0) + c
            else:
                setattr(self, k, getattr(self, k) + v)


def _count(x: Any) -> int:
    """A count the reader may give as an int or as the sequence of the things counted."""
    if isinstance(x, Sized):
        return len(x)
    return int(x or 0)


class TableBuilder:
    """Collects one device's received items and builds Tables from them. Not thread-safe."""

    def __init__(self, device: str, *, max_skew_ms: int = 2000, drift_window_ms: int = 10_000) -> None:
        self.device = device
        self.clock = Clock(max_skew_ms, drift_window_ms)
        self.stats = BuildStats()
        self._batch = BuildStats()
        self._task_id = -1
        self._operator: str | None = None
        self._gap_pending = False
        self._seen_frame = False
        self._reset_rows()

    def _reset_rows(self) -> None:
        # Raw wire integers, converted in build(): common columns per row, channels per record type.
        self._rows: list[tuple[int, int, int, int, int]] = []   # t_ms, seq, rtype, flags, task_id
        self._operators: list[str | None] = []
        self._typed: dict[RecordType, list[tuple]] = {t: [] for t in RecordType}

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, event: Any, recv_ms: int | None = None) -> None:
        """Take one received item: a frames event or a reader event, read at wall-clock `recv_ms` (Unix ms).

        A `Received`-like object (with .event and .recv_ms) is unwrapped. Raises TypeError for anything else.
        """
        if recv_ms is None and hasattr(event, "event") and hasattr(event, "recv_ms"):
            event, recv_ms = event.event, event.recv_ms
        if isinstance(event, Frame):
            if not isinstance(recv_ms, int):
                raise TypeError(f"recv_ms must be int Unix ms, got {recv_ms!r}")
            self._frame(event, recv_ms)
        elif isinstance(event, Gap):
            self._batch.gaps += 1
            self._batch.missing += event.missing_count
            self._gap_pending = True
        elif isinstance(event, Restart):
            self._restart()
        elif isinstance(event, Duplicate):
            self._batch.duplicates += 1
        elif isinstance(event, FrameError):
            errs = self._batch.frame_errors
            errs[event.reason] = errs.get(event.reason, 0) + 1
            if event.seq is not None:
                self._gap_pending = True
        else:
            kind = type(event).__name__
            if kind == "Dropped":
                self._dropped(event)
            elif kind == "LinkDown":
                self._batch.link_down += 1
                self._batch.truncated_bytes += int(getattr(event, "truncated_bytes", 0) or 0)
                self._gap_pending = self._gap_pending or self._seen_frame
            elif kind == "LinkUp":
                self._batch.link_up += 1
                self.clock.reset()
                self._task_id, self._operator = -1, None
                self._gap_pending = self._gap_pending or self._seen_frame
            else:
                raise TypeError(f"not a received event: {event!r}")

    def _restart(self) -> None:
        self._batch.restarts += 1
        self.clock.reset()
        self._task_id, self._operator = -1, None
        self._gap_pending = True

    def _dropped(self, event: Any) -> None:
        self._batch.dropped += 1
        self._batch.dropped_frames += _count(getattr(event, "frames", 0))
        self._gap_pending = True
        # If the reader hands over what it dropped, keep what must not be lost: context and reboots.
        frames = getattr(event, "frames", None)
        others = getattr(event, "other_events", None)
        for e in chain(frames if isinstance(frames, Iterable) else (),
                       others if isinstance(others, Iterable) else ()):
            if isinstance(e, Restart):
                self._restart()
            elif isinstance(e, Frame) and e.record_type == RecordType.TASK_EVENT:
                self._task_id = int(e.fields["task_id"])
            elif isinstance(e, Frame) and e.record_type == RecordType.OPERATOR:
                self._operator = e.fields["badge"]

    def _frame(self, frame: Frame, recv_ms: int) -> None:
        f, rtype = frame.fields, frame.record_type
        t, clock_event = self.clock.stamp(int(f["t_ms"]), recv_ms)
        if clock_event == "anchor":
            self._batch.anchors += 1
        elif clock_event == "jump":
            self._batch.clock_jumps += 1
            self._gap_pending = True
        flags = 0
        if self._gap_pending:
            flags, self._gap_pending = FLAG_GAP_BEFORE, False
            self._batch.gap_marks += 1
        self._seen_frame = True
        if rtype == RecordType.TASK_EVENT:
            self._task_id = int(f["task_id"])
        elif rtype == RecordType.OPERATOR:
            self._operator = f["badge"]
        row = len(self._rows)
        self._rows.append((t, frame.seq, int(rtype), flags, self._task_id))
        self._operators.append(self._operator)
        typed = self._typed[rtype]
        if rtype == RecordType.POSE:
            typed.append((row, f["x_mm"], f["y_mm"], f["heading_cdeg"]))
        elif rtype == RecordType.GPS:
            typed.append((row, f["lat_e7"], f["lon_e7"]))
        elif rtype == RecordType.IMU:
            typed.append((row, f["ax"], f["ay"], f["az"], f["gx"], f["gy"], f["gz"]))
        elif rtype == RecordType.MOTORS:
            currents = f["currents_ma"]
            if len(currents) > MAX_MOTORS:
                self._batch.motors_truncated += 1
                currents = currents[:MAX_MOTORS]
            typed.append((row, currents))
        elif rtype == RecordType.BATTERY:
            typed.append((row, f["mv"], f["soc_pct"], f["temp_dc"]))
        elif rtype == RecordType.TASK_EVENT:
            typed.append((row, f["event"]))
        elif rtype == RecordType.NOTE:
            typed.append((row, f["text"]))
        elif rtype == RecordType.FAULT:
            typed.append((row, f["code"]))
        # OPERATOR: the badge is in the operator column already

    def build(self) -> Table:
        """The rows added since the last build, converted to the schema's units; then start a new batch.

        The link state (clock anchor, carried context, a pending gap mark) carries over to the next batch.
        """
        n = len(self._rows)
        t = Table.empty(n, {"device": self.device, "schema_version": SCHEMA_VERSION})
        c = t.columns
        if n:
            common = np.array(self._rows, dtype=np.int64)
            c["t_ms"][:] = common[:, 0]
            c["seq"][:] = common[:, 1]
            c["rtype"][:] = common[:, 2]
            c["flags"][:] = common[:, 3]
            c["task_id"][:] = common[:, 4]
            c["operator"][:] = self._operators
        typed = self._typed
        if typed[RecordType.POSE]:
            a = np.array(typed[RecordType.POSE], dtype=np.int64)
            r = a[:, 0]
            c["x_m"][r] = a[:, 1] / 1000.0
            c["y_m"][r] = a[:, 2] / 1000.0
            # normalise in integer centidegrees so that the division is the only rounding
            c["heading_deg"][r] = ((a[:, 3] + 18000) % 36000 - 18000) / 100.0
        if typed[RecordType.GPS]:
            a = np.array(typed[RecordType.GPS], dtype=np.int64)
            c["lat"][a[:, 0]] = a[:, 1] / 1e7
            c["lon"][a[:, 0]] = a[:, 2] / 1e7
        if typed[RecordType.IMU]:
            a = np.array(typed[RecordType.IMU], dtype=np.int64)
            for k, name in enumerate(("ax", "ay", "az", "gx", "gy", "gz"), start=1):
                c[name][a[:, 0]] = a[:, k] / 1000.0
        if typed[RecordType.MOTORS]:
            rows = np.array([row for row, _ in typed[RecordType.MOTORS]], dtype=np.int64)
            lens = np.array([len(cur) for _, cur in typed[RecordType.MOTORS]], dtype=np.int64)
            flat = np.fromiter(chain.from_iterable(cur for _, cur in typed[RecordType.MOTORS]), np.int64,
                               int(lens.sum()))
            starts = np.cumsum(lens) - lens
            cols = np.arange(len(flat)) - np.repeat(starts, lens)
            c["motor_a"][np.repeat(rows, lens), cols] = flat / 1000.0
        if typed[RecordType.BATTERY]:
            a = np.array(typed[RecordType.BATTERY], dtype=np.int64)
            c["battery_v"][a[:, 0]] = a[:, 1] / 1000.0
            c["soc_pct"][a[:, 0]] = a[:, 2]
            c["temp_c"][a[:, 0]] = a[:, 3] / 10.0
        if typed[RecordType.TASK_EVENT]:
            a = np.array(typed[RecordType.TASK_EVENT], dtype=np.int64)
            c["event"][a[:, 0]] = a[:, 1]
        if typed[RecordType.FAULT]:
            a = np.array(typed[RecordType.FAULT], dtype=np.int64)
            c["fault"][a[:, 0]] = a[:, 1]
        for row, text in typed[RecordType.NOTE]:
            c["text"][row] = text
        self._batch.rows = n
        t.meta["build"] = asdict(self._batch)
        self.stats.add(self._batch)
        self._batch = BuildStats()
        self._reset_rows()
        return t

    # -- carrying the link state across a restart of the agent ---------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The link state build() carries to the next batch, as JSON-able values (call right after build()).

        The pipeline saves it with each stored batch, so that re-building a spooled batch after a crash
        starts from the same clock anchor and context and yields the same rows.
        """
        if self._rows:
            raise ValueError("snapshot() with rows not yet built")
        return {"clock": asdict(self.clock), "task_id": self._task_id, "operator": self._operator,
                "gap_pending": self._gap_pending, "seen_frame": self._seen_frame}

    def restore(self, snap: dict[str, Any]) -> None:
        self.clock = Clock(**snap["clock"])
        self._task_id = int(snap["task_id"])
        self._operator = snap["operator"]
        self._gap_pending = bool(snap["gap_pending"])
        self._seen_frame = bool(snap["seen_frame"])
