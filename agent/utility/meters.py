"""Per-cycle work meters, shared by every process of the normal world.

Each process that does work adds what it did to the current cycle: ingest the bytes it read from
the sensor link, the edge pipeline the bytes it cleaned and desensitized, training the feature
bytes it went through (times epochs), the uplink the time it spent talking to the node. Cycles are
``floor(unix_time / cycle_s)``, so 24-hour cycles start at 00:00 UTC.

Meters live in HOME/utility/meters.db, one SQLite database in WAL mode that several processes
write at once (each add is one short transaction; busy_timeout rides out the others).
synchronous=NORMAL: a power cut may lose the last adds, never corrupt what is there; a meter is a
count, not a ledger, and the report of a cycle is made from whatever the cycle kept.

Meter names and units:

    produced_bytes      bytes read from the sensor link (decoded frames)
    cleaned_bytes       bytes of records that went through cleaning
    desensitized_bytes  bytes of records that went through desensitization
    trained_bytes       feature bytes a training run went through, times its epochs
    uplink_bytes        bytes exchanged with the node (CoAP payloads, both ways)
    work_s              seconds spent working: ingesting, training, and talking to the node
    comm_s              the part of work_s spent in channel communication with the node
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Mapping

from ..config import DEFAULT_CYCLE_S
from .errors import MeterError

NAMES = ("produced_bytes", "cleaned_bytes", "desensitized_bytes", "trained_bytes", "uplink_bytes",
         "work_s", "comm_s")
#: The bytes that count as data produced or processed (uplink_bytes is communication, not work).
WORK_BYTES = ("produced_bytes", "cleaned_bytes", "desensitized_bytes", "trained_bytes")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meters (
    cycle_s REAL NOT NULL, cycle INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (cycle_s, cycle, name));
CREATE TABLE IF NOT EXISTS reported (
    cycle_s REAL NOT NULL, cycle INTEGER NOT NULL, seq INTEGER NOT NULL, t REAL NOT NULL,
    PRIMARY KEY (cycle_s, cycle));
"""


def cycle_of(t: float, cycle_s: float) -> int:
    return int(t // cycle_s)


def check_values(values: Mapping[str, float]) -> None:
    for name, v in values.items():
        if name not in NAMES:
            raise MeterError(f"unknown meter {name!r}: one of {', '.join(NAMES)}")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise MeterError(f"meter {name}: {v!r} is not a finite number >= 0")


class Meters:
    def __init__(self, home: Path, cycle_s: float = DEFAULT_CYCLE_S) -> None:
        if not (isinstance(cycle_s, (int, float)) and math.isfinite(cycle_s) and cycle_s >= 1):
            raise MeterError(f"cycle length {cycle_s!r} s: must be at least 1 s")
        self.cycle_s = float(cycle_s)
        d = Path(home) / "utility"
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / "meters.db"
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._setup()

    def _setup(self) -> None:
        # Switching a new file to WAL takes an exclusive lock, and SQLite reports a busy database
        # there without waiting, so processes that start together retry it.
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Meters":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cycle(self, t: float | None = None) -> int:
        return cycle_of(time.time() if t is None else t, self.cycle_s)

    def add(self, values: Mapping[str, float], t: float | None = None) -> None:
        """Add to the cycle of ``t`` (now): all names in one transaction. Zero values are skipped."""
        check_values(values)
        c = self.cycle(t)
        rows = [(self.cycle_s, c, k, float(v)) for k, v in values.items() if v]
        if not rows:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO meters VALUES (?, ?, ?, ?) ON CONFLICT (cycle_s, cycle, name) "
                                "DO UPDATE SET value = value + excluded.value", rows)

    def read(self, cycle: int) -> dict[str, float]:
        out = dict.fromkeys(NAMES, 0.0)
        for name, value in self.db.execute("SELECT name, value FROM meters WHERE cycle_s = ? AND cycle = ?",
                                           (self.cycle_s, cycle)):
            out[name] = value
        return out

    def cycles(self) -> list[int]:
        return [c for (c,) in self.db.execute("SELECT DISTINCT cycle FROM meters WHERE cycle_s = ? ORDER BY cycle",
                                              (self.cycle_s,))]

    def reported(self, cycle: int) -> int | None:
        row = self.db.execute("SELECT seq FROM reported WHERE cycle_s = ? AND cycle = ?",
                              (self.cycle_s, cycle)).fetchone()
        return row[0] if row else None

    def mark_reported(self, cycle: int, seq: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO reported VALUES (?, ?, ?, ?)", (self.cycle_s, cycle, seq, time.time()))

    def due(self, now: float | None = None) -> list[int]:
        """Ended cycles with meters and no report yet, oldest first."""
        current = self.cycle(now)
        done = {c for (c,) in self.db.execute("SELECT cycle FROM reported WHERE cycle_s = ?", (self.cycle_s,))}
        return [c for c in self.cycles() if c < current and c not in done]

