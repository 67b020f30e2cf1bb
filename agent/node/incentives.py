"""The node's side of work utility: it records devices' cycle reports and allocates each cycle.

A report (an item of kind "report", already signature-checked by service.py) is checked against
the device's enrolled capacity (agent/utility/report.py) and stored, one per (device, cycle): the
same report again is a duplicate, a different one for the same cycle is a conflict. A cycle is
allocated once its end plus the grace period has passed on the node's clock: the statement
(agent/incentive/statement.py) is built from the recorded reports, signed by the node key and
stored; reports for an allocated cycle are refused as late. Tables live in node.db beside the
rounds, so an item's dedup row and its report commit together.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from ..incentive import allocation as alloc
from ..incentive import statement
from ..utility import report as report_mod
from ..utility.errors import ReportRefused
from ..utility.meters import DEFAULT_CYCLE_S
from .identity import NodeKey
from .state import Device, NodeState

log = logging.getLogger("aitn.node")

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    addr BLOB NOT NULL, cycle_s REAL NOT NULL, cycle INTEGER NOT NULL, fixed REAL NOT NULL,
    variable REAL NOT NULL, body_hash BLOB NOT NULL, body BLOB NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (cycle_s, cycle, addr));
CREATE TABLE IF NOT EXISTS allocations (
    cycle_s REAL NOT NULL, cycle INTEGER NOT NULL, statement BLOB NOT NULL, total TEXT NOT NULL,
    PRIMARY KEY (cycle_s, cycle));
"""
#: Default incentive per cycle before the node's addition: 1000 AITN in base units (10^-18 AITN).
DEFAULT_BASE = 1000 * 10**18


@dataclass(frozen=True)
class IncentiveConfig:
    cycle_s: float = DEFAULT_CYCLE_S
    grace_s: float | None = None     # reports accepted this long after a cycle ends (default: a quarter cycle)
    rule: str = "utility"            # "utility" (fixed + variable) or "variable"
    base: int = DEFAULT_BASE         # the cycle's incentive before m(n), integer base units

    @property
    def grace(self) -> float:
        return self.cycle_s / 4 if self.grace_s is None else self.grace_s

    def check(self) -> None:
        if not (math.isfinite(self.cycle_s) and self.cycle_s >= 1):
            raise ValueError(f"cycle length {self.cycle_s} s: must be at least 1 s")
        if self.grace < 0:
            raise ValueError(f"grace {self.grace} s must be >= 0")
        if self.rule not in alloc.RULES:
            raise ValueError(f"rule {self.rule!r}: one of {', '.join(alloc.RULES)}")
        if self.base < 0:
            raise ValueError(f"base {self.base} must be >= 0")


class Incentives:
    def __init__(self, state: NodeState, key: NodeKey, cfg: IncentiveConfig = IncentiveConfig()) -> None:
        cfg.check()
        self.state, self.key, self.cfg = state, key, cfg
        state.db.executescript(SCHEMA)

    def _allocated(self, cycle: int) -> bool:
        return self.state.db.execute("SELECT 1 FROM allocations WHERE cycle_s = ? AND cycle = ?",
                                     (self.cfg.cycle_s, cycle)).fetchone() is not None

    def admit(self, device: Device, payload: dict, body: bytes, now: float | None = None
              ) -> tuple[str, list[tuple[str, tuple]]]:
        """(item status, statements to commit with the item row). Raises ReportRefused."""
        now = time.time() if now is None else now
        report_mod.check(payload, capacity=device.capacity, cycle_s=self.cfg.cycle_s, now=now)
        cycle = payload["cycle"]
        h = hashlib.sha256(body).digest()
        row = self.state.db.execute("SELECT body_hash FROM reports WHERE cycle_s = ? AND cycle = ? AND addr = ?",
                                    (self.cfg.cycle_s, cycle, device.addr)).fetchone()
        if row is not None:
            if row[0] == h:
                return "duplicate", []
            raise ReportRefused(f"cycle {cycle} already has a different report from this device", "report.cycle",
                                conflict=True)
        if self._allocated(cycle):
            raise ReportRefused(f"cycle {cycle} is allocated already (grace {self.cfg.grace:g} s after its end)",
                                "report.cycle", conflict=True)
        return "recorded", [("INSERT INTO reports VALUES (?,?,?,?,?,?,?,?)",
                             (device.addr, self.cfg.cycle_s, cycle, payload["fixed"], payload["variable"], h, body,
                              now))]

    def due(self, now: float | None = None) -> list[int]:
        """Cycles with reports whose grace has passed and that have no statement yet."""
        now = time.time() if now is None else now
        last = math.floor((now - self.cfg.grace) / self.cfg.cycle_s) - 1    # the last cycle whose grace is over
        rows = self.state.db.execute(
            "SELECT DISTINCT r.cycle FROM reports r LEFT JOIN allocations a ON a.cycle_s = r.cycle_s "
            "AND a.cycle = r.cycle WHERE r.cycle_s = ? AND r.cycle <= ? AND a.cycle IS NULL ORDER BY r.cycle",
            (self.cfg.cycle_s, last))
        return [c for (c,) in rows]

    def allocate(self, cycle: int, now: float | None = None) -> dict:
        """Build, sign and store the statement of ``cycle`` (once: a second call returns the stored one)."""
        stored = self.statement(cycle)
        if stored is not None:
            return statement.verify(stored, self.key.address)
        work = {addr: alloc.Work(fixed, variable) for addr, fixed, variable in self.state.db.execute(
            "SELECT addr, fixed, variable FROM reports WHERE cycle_s = ? AND cycle = ?", (self.cfg.cycle_s, cycle))}
        msg = statement.build(node=self.key.address, cycle=cycle, cycle_s=self.cfg.cycle_s, rule=self.cfg.rule,
                              base=self.cfg.base, work=work, t=time.time() if now is None else now)
        msg["sig"] = self.key.sign(statement.digest(msg))
        self.state._tx([("INSERT INTO allocations VALUES (?,?,?,?)",
                         (self.cfg.cycle_s, cycle, statement.encode(msg), str(msg["total"])))])
        log.info("cycle %d allocated: %d devices, m=%.4f, %d units", cycle, msg["n"], msg["m_ppm"] / 1e6,
                 msg["total"])
        return msg

    def tick(self, now: float | None = None) -> list[int]:
        done = []
        for cycle in self.due(now):
            self.allocate(cycle, now)
            done.append(cycle)
        return done

    def statement(self, cycle: int | None = None) -> bytes | None:
        """The stored statement of ``cycle`` (None: the latest), or None."""
        if cycle is None:
            row = self.state.db.execute("SELECT statement FROM allocations WHERE cycle_s = ? ORDER BY cycle DESC "
                                        "LIMIT 1", (self.cfg.cycle_s,)).fetchone()
        else:
            row = self.state.db.execute("SELECT statement FROM allocations WHERE cycle_s = ? AND cycle = ?",
                                        (self.cfg.cycle_s, cycle)).fetchone()
        return row[0] if row else None

    def summary(self) -> dict:
        reports = self.state.db.execute("SELECT COUNT(*), COUNT(DISTINCT cycle) FROM reports WHERE cycle_s = ?",
                                        (self.cfg.cycle_s,)).fetchone()
        last = self.state.db.execute("SELECT cycle, total FROM allocations WHERE cycle_s = ? ORDER BY cycle DESC "
                                     "LIMIT 1", (self.cfg.cycle_s,)).fetchone()
        return {"cycle_s": self.cfg.cycle_s, "rule": self.cfg.rule, "reports": reports[0], "cycles": reports[1],
                "last_allocated": None if last is None else {"cycle": last[0], "total": last[1]}}
