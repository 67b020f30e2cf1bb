"""What clean() reports and what it carries from batch to batch: CleanReport and CleanState.

Split from clean.py, which owns the steps; both are JSON-able for the pipeline (per-batch counts in
each manifest, the state in ingest/state.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .schema import CARRIES, SchemaError, Table, table_from_jsonable, table_to_jsonable

_I64_MIN = int(np.iinfo(np.int64).min)
#: Record types that carry sensor channels: the streams cleaned by steps 5-7 of clean.py.
STREAMS = tuple(sorted(CARRIES))


# -- report -----------------------------------------------------------------------------------------------

@dataclass
class CleanReport:
    """Counts for one clean() call, or (merged) for many. rows_in == rows_out + sum(dropped) + held."""

    rows_in: int = 0
    rows_out: int = 0
    held: int = 0                                         # change in rows waiting in the state
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    changed: dict[str, int] = field(default_factory=dict)  # reason -> values (or rows, for `gap`)

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(n)

    def change(self, reason: str, n: int) -> None:
        if n:
            self.changed[reason] = self.changed.get(reason, 0) + int(n)

    def merge(self, other: "CleanReport") -> "CleanReport":
        """A new report with both reports' counts added."""
        out = CleanReport(self.rows_in + other.rows_in, self.rows_out + other.rows_out, self.held + other.held,
                          dict(self.dropped), dict(self.changed))
        for k, v in other.dropped.items():
            out.drop(k, v)
        for k, v in other.changed.items():
            out.change(k, v)
        return out

    def to_json(self) -> str:
        return json.dumps({"rows_in": self.rows_in, "rows_out": self.rows_out, "held": self.held,
                           "dropped": self.dropped, "changed": self.changed}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CleanReport":
        try:
            d = json.loads(text)
            return cls(int(d["rows_in"]), int(d["rows_out"]), int(d["held"]),
                       {str(k): int(v) for k, v in d["dropped"].items()},
                       {str(k): int(v) for k, v in d["changed"].items()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SchemaError("report", f"bad clean report document: {e!r}") from None


def format_report(report: CleanReport) -> str:
    """Human text for `aitn data report`: totals, then each reason and its count (largest first)."""
    lines = [f"{'rows in':<24}{report.rows_in:>14,}", f"{'rows out':<24}{report.rows_out:>14,}"]
    if report.held:
        lines.append(f"{'held for next batch':<24}{report.held:>14,}")
    for title, counts in (("dropped (rows)", report.dropped), ("changed (values)", report.changed)):
        lines.append(f"{title:<24}{sum(counts.values()):>14,}")
        for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<22}{n:>14,}")
    return "\n".join(lines)


# -- state ------------------------------------------------------------------------------------------------

@dataclass
class StreamState:
    """One sensor stream (record type) at the end of what was emitted."""

    last_t: int | None = None             # t_ms of its last emitted row
    gap_since: bool = False               # a link-gap row was emitted after that row
    context: dict[str, list[float]] = field(default_factory=dict)  # channel -> last h values of its segment


@dataclass
class CleanState:
    """Everything clean() carries from one batch of a link to the next; to_json/from_json for the pipeline.

    Duplicates: the boot epoch, the last seq and its unwrapped position, and the dedup keys of the last
    dedup_window rows (+ the largest key before them). Late rows: the t_ms of the last reorder_window + 1
    rows and the largest t_ms before them. Gaps: a flag of trailing dropped rows not yet moved onto a row,
    and per stream its last emitted time, pending link gap and the Hampel left context (original values,
    not replaced ones, as the filter is not recursive). Held rows: `pending`, sorted, with their input flags.
    """

    epoch: int = 0
    last_seq: int | None = None
    u_last: int = 0
    u_start: int = 0
    recent_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    key_prefix_max: int = _I64_MIN
    recent_t: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    t_prefix_max: int = _I64_MIN
    carry_gap: bool = False
    pending: Table = field(default_factory=Table.empty)
    streams: dict[int, StreamState] = field(default_factory=lambda: {r: StreamState() for r in STREAMS})

    def to_json(self) -> str:
        keys = self.recent_keys
        # dedup keys are runs of consecutive numbers: store [first, length] per run
        cut = np.flatnonzero(np.diff(keys) != 1) + 1
        runs = [[int(r[0]), len(r)] for r in np.split(keys, cut) if len(r)]
        return json.dumps({
            "version": 1, "epoch": self.epoch, "last_seq": self.last_seq, "u_last": self.u_last,
            "u_start": self.u_start, "recent_keys": runs, "key_prefix_max": self.key_prefix_max,
            "recent_t": self.recent_t.tolist(), "t_prefix_max": self.t_prefix_max, "carry_gap": self.carry_gap,
            "pending": table_to_jsonable(self.pending),
            "streams": {str(r): {"last_t": s.last_t, "gap_since": s.gap_since, "context": s.context}
                        for r, s in self.streams.items()},
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "CleanState":
        try:
            d = json.loads(text)
            if d["version"] != 1:
                raise ValueError(f"version {d['version']}")
            keys = [np.arange(a, a + n, dtype=np.int64) for a, n in d["recent_keys"]]
            streams = {r: StreamState() for r in STREAMS}
            for r, s in d["streams"].items():
                streams[int(r)] = StreamState(None if s["last_t"] is None else int(s["last_t"]),
                                              bool(s["gap_since"]),
                                              {k: [float(x) for x in v] for k, v in s["context"].items()})
            return cls(int(d["epoch"]), None if d["last_seq"] is None else int(d["last_seq"]), int(d["u_last"]),
                       int(d["u_start"]), np.concatenate(keys) if keys else np.empty(0, np.int64),
                       int(d["key_prefix_max"]), np.array(d["recent_t"], dtype=np.int64),
                       int(d["t_prefix_max"]), bool(d["carry_gap"]), table_from_jsonable(d["pending"]), streams)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SchemaError("state", f"bad clean state document: {e!r}") from None
