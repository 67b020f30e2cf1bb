"""The privacy budget across processes: a reboot keeps what was spent, SIGKILL in a spend loop never
gives budget back or tears the ledger, and two processes cannot both spend the last of it."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.privacy.budget import PrivacyBudget
from agent.privacy.errors import BudgetExhausted

ROOT = Path(__file__).resolve().parents[2]

# Spends ``eps`` until told no; prints the release count after each spend has returned (is durable).
WORKER = """
import sys, time
from pathlib import Path
from agent.privacy.budget import PrivacyBudget
from agent.privacy.errors import BudgetExhausted
path, total, eps, limit = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
b = PrivacyBudget(path, total, 0.0)
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # start together with the other workers
for _ in range(limit):
    try:
        st = b.spend(eps, 0.0, "worker")
    except BudgetExhausted as e:
        print("exhausted", e.exit_code, flush=True)
        sys.exit(e.exit_code)
    print(st.releases, flush=True)
"""


def worker(path: Path, total: float, eps: float, limit: int = 10 ** 9, start_at: float = 0.0,
           **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(total), str(eps), str(limit), str(start_at)],
                            cwd=ROOT, text=True, **kw)


def test_a_reboot_keeps_what_was_spent(workdir):
    path = workdir / "privacy" / "budget.json"
    a = worker(path, 1.0, 0.25, limit=3, stdout=subprocess.PIPE)
    assert a.communicate(timeout=60)[0].split() == ["1", "2", "3"] and a.returncode == 0
    b = worker(path, 1.0, 0.25, limit=5, stdout=subprocess.PIPE)  # another process, as after a reboot
    out = b.communicate(timeout=60)[0].split()
    assert out == ["4", "exhausted", "42"] and b.returncode == 42
    with pytest.raises(BudgetExhausted, match="spent epsilon 1 of 1"):
        PrivacyBudget(path, 1.0, 0.0).spend(0.01, 0.0, "after")


def test_two_processes_cannot_double_spend(workdir):
    path = workdir / "budget.json"
    PrivacyBudget(path, 2.0, 0.0)
    start_at = time.time() + 1.5  # after both have imported
    procs = [worker(path, 2.0, 0.1, limit=30, start_at=start_at, stdout=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [42, 42], outs  # both ran until told the budget is spent
    spends = [int(x) for out in outs for x in out if x.isdigit() and x != "42"]
    # Every release number was handed out exactly once, and exactly 20 fit.
    assert sorted(spends) == list(range(1, 21))
    assert PrivacyBudget(path, 2.0, 0.0).state().releases == 20


@pytest.mark.slow
def test_sigkill_in_a_spend_loop_never_gives_budget_back(workdir):
    path = workdir / "budget.json"
    rng = random.Random(7)
    seen = 0
    for cycle in range(15):
        out = open(workdir / f"worker{cycle}.out", "w+")
        p = worker(path, 1e9, 1.0, stdout=out, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.25, 0.7))  # imports, then spends as fast as fsync allows
        p.kill()
        p.wait(10)
        out.seek(0)
        text = out.read()
        out.close()
        acked = [int(line) for line in text.split("\n")[:-1] if line.isdigit()]  # whole lines only
        st = PrivacyBudget(path, 1e9, 0.0).state()  # reopen: must parse, never corrupt
        assert st.releases >= max(acked, default=0), "a spend that returned was lost"
        assert st.releases >= seen, "spent went down"
        assert st.spent_epsilon == float(st.releases)
        seen = st.releases
    assert seen >= 15, "the worker never got going"
