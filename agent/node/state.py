"""The node's durable state: devices, rounds, accepted items (the dedup table) and counters.

One SQLite database in WAL mode with synchronous=FULL: a transaction that returned is on disk, so
an acknowledgement the node sent is never forgotten. Update weights live in files next to it
(written and fsynced before their row commits); a crash between the two leaves an orphan file that
the device's retry overwrites, never a row without its file.

An update item's status is "aggregated" (counted in ``round``), "stale" (never aggregated; ``round`` is
the round it was trained on) or "held" (async under a demand server: it arrived while the round was
closed and waits, file kept, for the next round; ``round`` is the round it was trained on). When the
next round opens, a held row becomes "aggregated" in it (``round``, ``staleness`` rewritten) or
"stale"/"refused", in the same transaction that opens the round: a row is held or counted, never both.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    addr BLOB PRIMARY KEY, pub BLOB NOT NULL, board TEXT NOT NULL, capacity REAL NOT NULL,
    sid BLOB NOT NULL UNIQUE, ctx TEXT NOT NULL, enrolled REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, width REAL NOT NULL, hash BLOB NOT NULL,
    started REAL NOT NULL, deadline REAL NOT NULL, min_updates INTEGER NOT NULL,
    closed REAL, result BLOB, updates INTEGER NOT NULL DEFAULT 0, samples INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS items (
    addr BLOB NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, digest BLOB NOT NULL,
    received REAL NOT NULL, status TEXT NOT NULL, round INTEGER, samples INTEGER, file TEXT, payload BLOB,
    width REAL, staleness INTEGER, size INTEGER, PRIMARY KEY (addr, seq));
CREATE INDEX IF NOT EXISTS items_round ON items (round, status);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Device:
    addr: bytes
    pub: bytes
    board: str
    capacity: float
    sid: bytes  # the device's OSCORE sender id (the node's recipient id for it)
    ctx: str    # its context folder's name under oscore/
    enrolled: float


@dataclass(frozen=True)
class Round:
    id: int
    model: str
    width: float
    hash: bytes
    started: float
    deadline: float
    min_updates: int
    closed: float | None
    result: bytes | None
    updates: int
    samples: int
    bytes: int = 0      # update items received into it (their signed envelopes), for the demand server's figures


@dataclass(frozen=True)
class Held:
    """An update kept for the next round (status "held")."""
    addr: bytes
    seq: int
    samples: int
    file: str
    width: float | None
    base: int          # the round (model version) it was trained on
    size: int | None   # its signed envelope's bytes, counted in the round it is folded into


@dataclass(frozen=True)
class Accepted:
    seq: int
    kind: str
    digest: bytes
    status: str


class NodeState:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        if "size" not in {row[1] for row in self.db.execute("PRAGMA table_info(items)")}:
            self.db.execute("ALTER TABLE items ADD COLUMN size INTEGER")   # a database from before held updates
        self.db.execute("CREATE INDEX IF NOT EXISTS items_held ON items (received, seq) WHERE status = 'held'")

    def close(self) -> None:
        self.db.close()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                cur.execute(sql, args)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    # -- devices -----------------------------------------------------------------------------------

    def device(self, addr: bytes) -> Device | None:
        row = self.db.execute("SELECT * FROM devices WHERE addr = ?", (addr,)).fetchone()
        return Device(*row) if row else None

    def device_by_sid(self, sid: bytes) -> Device | None:
        row = self.db.execute("SELECT * FROM devices WHERE sid = ?", (sid,)).fetchone()
        return Device(*row) if row else None

    def devices(self) -> list[Device]:
        return [Device(*r) for r in self.db.execute("SELECT * FROM devices ORDER BY enrolled")]

    def put_device(self, d: Device) -> None:
        self._tx([("INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (d.addr, d.pub, d.board, d.capacity, d.sid, d.ctx, d.enrolled))])

    def next_sid(self) -> bytes:
        """A fresh OSCORE id: 1..7 bytes, never one in use (the node's own sender id is empty)."""
        n = self.bump("sid", 1)
        return n.to_bytes((n.bit_length() + 7) // 8, "big")

    # -- rounds ------------------------------------------------------------------------------------

    def current_round(self) -> Round | None:
        row = self.db.execute("SELECT * FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
        return Round(*row) if row else None

    def round(self, rid: int) -> Round | None:
        row = self.db.execute("SELECT * FROM rounds WHERE id = ?", (rid,)).fetchone()
        return Round(*row) if row else None

    def open_round(self, r: Round, extra: list[tuple[str, tuple]] = ()) -> None:
        self._tx([self._insert_round(r)] + list(extra))

    @staticmethod
    def _insert_round(r: Round) -> tuple[str, tuple]:
        return ("INSERT INTO rounds (id, model, width, hash, started, deadline, min_updates, closed) "
                "VALUES (?,?,?,?,?,?,?,?)", (r.id, r.model, r.width, r.hash, r.started, r.deadline, r.min_updates,
                                             r.closed))

    def close_round(self, rid: int, result: bytes | None, nxt: Round | None,
                    extra: list[tuple[str, tuple]] = ()) -> None:
        """Close ``rid`` with its result (None: nothing aggregated) and open ``nxt`` if any, in one transaction
        (with ``extra``: statements that commit with it)."""
        stmts = [("UPDATE rounds SET closed = ?, result = ? WHERE id = ?", (time.time(), result, rid))]
        self._tx(stmts + ([self._insert_round(nxt)] if nxt is not None else []) + list(extra))

    def extend_round(self, rid: int, deadline: float) -> None:
        self._tx([("UPDATE rounds SET deadline = ? WHERE id = ?", (deadline, rid))])

    # -- items -------------------------------------------------------------------------------------

    def accepted(self, addr: bytes, seq: int) -> Accepted | None:
        row = self.db.execute("SELECT seq, kind, digest, status FROM items WHERE addr = ? AND seq = ?",
                              (addr, seq)).fetchone()
        return Accepted(*row) if row else None

    def accept(self, addr: bytes, seq: int, kind: str, digest: bytes, status: str, *, round_id: int | None = None,
               samples: int | None = None, file: str | None = None, payload: bytes | None = None,
               width: float | None = None, staleness: int | None = None, size: int = 0,
               extra: list[tuple[str, tuple]] = ()) -> None:
        """Record an item (the dedup row) and, for an aggregated update, count it in its round.
        ``extra``: statements that commit with it (a report's row)."""
        stmts = [("INSERT INTO items (addr, seq, kind, digest, received, status, round, samples, file, payload, "
                  "width, staleness, size) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  (addr, seq, kind, digest, time.time(), status, round_id, samples, file, payload, width, staleness,
                   size if kind == "update" else None))]
        if status == "aggregated":
            stmts.append(("UPDATE rounds SET updates = updates + 1, samples = samples + ?, bytes = bytes + ? "
                          "WHERE id = ?", (samples, size, round_id)))
        self._tx(stmts + list(extra))

    def round_updates(self, rid: int) -> list[tuple[bytes, int, int, str, float, int]]:
        """(addr, seq, samples, file, width, staleness) of the updates aggregated into round ``rid``, in
        arrival order."""
        return list(self.db.execute(
            "SELECT addr, seq, samples, file, width, staleness FROM items WHERE round = ? AND status = 'aggregated' "
            "ORDER BY received, seq", (rid,)))

    def held(self) -> list[Held]:
        """The updates held for the next round, in arrival order."""
        return [Held(*row) for row in self.db.execute(
            "SELECT addr, seq, samples, file, width, round, size FROM items WHERE status = 'held' "
            "ORDER BY received, seq")]

    @staticmethod
    def fold_held(rid: int, folded: list[tuple[Held, int]], dropped: list[tuple[Held, str]]) -> list[tuple[str, tuple]]:
        """Statements (to commit with the opening of round ``rid``) that aggregate held updates into it,
        (held, staleness) each, and record the others as dropped, (held, status) each; with counters
        held.folded and held.dropped.<status>."""
        stmts: list[tuple[str, tuple]] = []
        for h, tau in folded:
            stmts.append(("UPDATE items SET status = 'aggregated', round = ?, staleness = ? "
                          "WHERE addr = ? AND seq = ? AND status = 'held'", (rid, tau, h.addr, h.seq)))
            stmts.append(("UPDATE rounds SET updates = updates + 1, samples = samples + ?, bytes = bytes + ? "
                          "WHERE id = ?", (h.samples, h.size or 0, rid)))
        for h, status in dropped:
            stmts.append(("UPDATE items SET status = ? WHERE addr = ? AND seq = ? AND status = 'held'",
                          (status, h.addr, h.seq)))
        counts: dict[str, int] = {}
        if folded:
            counts["held.folded"] = len(folded)
        for _h, status in dropped:
            counts[f"held.dropped.{status}"] = counts.get(f"held.dropped.{status}", 0) + 1
        return stmts + [NodeState.count(name, n) for name, n in counts.items()]

    def items(self, kind: str | None = None) -> list[tuple]:
        q = "SELECT addr, seq, kind, status, round, payload FROM items"
        if kind is not None:
            return list(self.db.execute(q + " WHERE kind = ? ORDER BY received", (kind,)))
        return list(self.db.execute(q + " ORDER BY received"))

    # -- counters ----------------------------------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> int:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                        (name, by, by))
            value = cur.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return value

    @staticmethod
    def count(name: str, by: int = 1) -> tuple[str, tuple]:
        """A statement adding ``by`` to counter ``name``, to commit with others."""
        return ("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                (name, by, by))

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters ORDER BY name"))
