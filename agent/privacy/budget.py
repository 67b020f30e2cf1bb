"""The privacy budget: a persisted ledger of the epsilon and delta every release has spent.

The ledger is one JSON file, replaced atomically (agent.fsio.write_atomic: write, fsync, rename,
fsync the directory), so after a crash or power loss it is either the state before a spend or the
state after it, never torn. `spend` returns only once its new state is durable: a crash right
after a release cannot give its epsilon back. Spending is serialized by an fcntl lock on a
sibling ``<ledger>.lock`` file (the ledger itself is replaced on each write, so it cannot carry
the lock), so two processes cannot both spend the last of the budget.

The totals come from the policy; the ledger records only what was spent (and the totals in force
at the last spend, for the record). Raising a total in the policy allows more releases; nothing
ever lowers what the ledger says was spent. A ledger that cannot be read is BudgetCorrupt, never a
fresh start; and a missing ledger next to an existing lock file (which is created with the ledger)
means it was deleted, which is refused the same way.

Limit: whoever can write the normal world's files can delete both files. Anchoring the spent total
in the secure world (sealed state with its rollback counter) would close that; it is not done here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..fsio import write_atomic
from .errors import BudgetBusy, BudgetCorrupt, BudgetExhausted

FORMAT = "aitn-privacy-budget/1"
#: The ledger keeps the totals and the last TAIL spends (an audit tail, not unbounded history).
TAIL = 100
#: Relative slack when comparing sums of floats with a total (0.1 spent ten times is 1.0).
_SLACK = 1e-9


@dataclass(frozen=True)
class BudgetState:
    epsilon_total: float
    delta_total: float
    spent_epsilon: float
    spent_delta: float
    releases: int
    tail: tuple[dict, ...] = ()

    @property
    def remaining(self) -> tuple[float, float]:
        return (max(0.0, self.epsilon_total - self.spent_epsilon), max(0.0, self.delta_total - self.spent_delta))


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


class PrivacyBudget:
    """The ledger at ``path`` under the policy's totals."""

    def __init__(self, path: Path, epsilon_total: float, delta_total: float, *, lock_timeout: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not (_number(epsilon_total) and epsilon_total > 0):
            raise ValueError(f"epsilon_total must be a finite number > 0, got {epsilon_total!r}")
        if not (_number(delta_total) and delta_total < 1):
            raise ValueError(f"delta_total must be in [0, 1), got {delta_total!r}")
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.epsilon_total, self.delta_total = float(epsilon_total), float(delta_total)
        self.lock_timeout, self.clock = lock_timeout, clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            pass  # creates the ledger on first use, or checks it is there

    # -- the lock and the file -----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[BudgetState]:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            first_use = True
        except FileExistsError:
            fd = os.open(self.lock_path, os.O_RDWR)
            first_use = False
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise BudgetBusy(f"{self.path}: another process holds the budget lock "
                                         f"({self.lock_path}) for more than {self.lock_timeout} s") from None
                    time.sleep(0.005)
            if not self.path.exists():
                if not first_use:
                    raise BudgetCorrupt(
                        f"{self.path}: the budget ledger is missing but its lock file {self.lock_path} exists, so "
                        "it was deleted; refusing to start again from zero. Restore it from a backup; only on a "
                        "fresh install delete the lock file too")
                self._write(BudgetState(self.epsilon_total, self.delta_total, 0.0, 0.0, 0))
            yield self._read()
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> BudgetState:
        try:
            raw = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as e:
            raise BudgetCorrupt(f"{self.path}: unreadable budget ledger ({e}); it is not reset automatically: "
                                "restore it from a backup") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise BudgetCorrupt(f"{self.path}: not a {FORMAT} ledger")
        keys = ("spent_epsilon", "spent_delta", "releases", "tail")
        if set(raw) != {"format", "epsilon_total", "delta_total", *keys}:
            raise BudgetCorrupt(f"{self.path}: ledger keys {sorted(raw)} are not the format's")
        if not all(_number(raw[k]) for k in ("spent_epsilon", "spent_delta", "epsilon_total", "delta_total")):
            raise BudgetCorrupt(f"{self.path}: a spent or total value is not a finite number >= 0")
        if (not isinstance(raw["releases"], int) or isinstance(raw["releases"], bool) or raw["releases"] < 0
                or not isinstance(raw["tail"], list) or not all(isinstance(t, dict) for t in raw["tail"])):
            raise BudgetCorrupt(f"{self.path}: releases or tail of the wrong type")
        return BudgetState(self.epsilon_total, self.delta_total, float(raw["spent_epsilon"]),
                           float(raw["spent_delta"]), raw["releases"], tuple(raw["tail"]))

    def _write(self, st: BudgetState) -> None:
        doc = {"format": FORMAT, "epsilon_total": st.epsilon_total, "delta_total": st.delta_total,
               "spent_epsilon": st.spent_epsilon, "spent_delta": st.spent_delta, "releases": st.releases,
               "tail": list(st.tail)}
        write_atomic(self.path, json.dumps(doc, sort_keys=True, indent=1).encode())

    # -- the API -------------------------------------------------------------------------------------

    def state(self) -> BudgetState:
        with self._locked() as st:
            return st

    @property
    def remaining(self) -> tuple[float, float]:
        """(epsilon, delta) still available under the current totals."""
        return self.state().remaining

    def spend(self, epsilon: float, delta: float, label: str) -> BudgetState:
        """Record a release's cost durably, then return the new state.

        Raises BudgetExhausted (and records nothing) if it would exceed either total; BudgetCorrupt
        if the ledger cannot be read; BudgetBusy if the lock is not obtained in time."""
        if not (_number(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
        if not (_number(delta) and delta < 1):
            raise ValueError(f"delta must be in [0, 1), got {delta!r}")
        with self._locked() as st:
            eps, dlt = st.spent_epsilon + epsilon, st.spent_delta + delta
            if eps > st.epsilon_total * (1 + _SLACK) or dlt > st.delta_total * (1 + _SLACK):
                raise BudgetExhausted(
                    f"{self.path}: privacy budget exhausted: spent epsilon {st.spent_epsilon:.6g} of "
                    f"{st.epsilon_total:.6g} and delta {st.spent_delta:.3g} of {st.delta_total:.3g}; "
                    f"release {label!r} asks epsilon {epsilon:.6g}, delta {delta:.3g}. Nothing was released "
                    "or spent. To go on, stop releasing aggregates from this robot, or have its owner raise "
                    "[budget].epsilon_total / delta_total in the policy (which lets buyers learn more)")
            entry = {"epsilon": epsilon, "delta": delta, "label": label, "at": self.clock(),
                     "release": st.releases + 1}
            new = BudgetState(st.epsilon_total, st.delta_total, eps, dlt, st.releases + 1,
                              (st.tail + (entry,))[-TAIL:])
            self._write(new)
            return new
