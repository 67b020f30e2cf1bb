"""The budget ledger: spends persist, exhaustion records nothing, corruption is never a reset."""

from __future__ import annotations

import json
import threading

import pytest

from agent.errors import AgentError
from agent.privacy.budget import TAIL, PrivacyBudget
from agent.privacy.errors import BudgetBusy, BudgetCorrupt, BudgetExhausted


def test_spend_persists_and_reopens(tmp_path):
    path = tmp_path / "privacy" / "budget.json"
    b = PrivacyBudget(path, 1.0, 1e-6)
    assert b.remaining == (1.0, 1e-6)
    st = b.spend(0.25, 1e-7, "first")
    assert st.spent_epsilon == 0.25 and st.releases == 1
    again = PrivacyBudget(path, 1.0, 1e-6)  # as after a restart
    assert again.remaining == pytest.approx((0.75, 9e-7))
    assert json.loads(path.read_bytes())["tail"][0]["label"] == "first"


def test_ten_tenths_fit_in_one(tmp_path):
    b = PrivacyBudget(tmp_path / "b.json", 1.0, 0.0)
    for i in range(10):
        b.spend(0.1, 0.0, f"r{i}")
    with pytest.raises(BudgetExhausted):
        b.spend(0.1, 0.0, "r10")


def test_exhaustion_records_nothing_and_says_how_to_proceed(tmp_path):
    path = tmp_path / "b.json"
    b = PrivacyBudget(path, 1.0, 0.0)
    b.spend(0.75, 0.0, "a")
    before = path.read_bytes()
    with pytest.raises(BudgetExhausted) as e:
        b.spend(0.5, 0.0, "b")
    assert path.read_bytes() == before
    msg = str(e.value)
    assert str(path) in msg and "spent epsilon 0.75 of 1" in msg and "asks epsilon 0.5" in msg
    assert "Nothing was released" in msg and "epsilon_total" in msg
    assert isinstance(e.value, AgentError) and e.value.exit_code == 42
    with pytest.raises(BudgetExhausted, match="delta"):
        b.spend(0.1, 1e-9, "needs delta")  # delta_total is 0


def test_raising_the_total_allows_more_and_lowering_it_exhausts(tmp_path):
    path = tmp_path / "b.json"
    PrivacyBudget(path, 1.0, 0.0).spend(1.0, 0.0, "all")
    assert PrivacyBudget(path, 2.0, 0.0).spend(0.5, 0.0, "more").spent_epsilon == 1.5
    with pytest.raises(BudgetExhausted):
        PrivacyBudget(path, 1.0, 0.0).spend(0.01, 0.0, "less")
    assert PrivacyBudget(path, 1.0, 0.0).remaining == (0.0, 0.0)


@pytest.mark.parametrize("content,match", [
    (b"", "unreadable"),
    (b"{not json", "unreadable"),
    (b'{"format": "other/1"}', "not a aitn-privacy-budget/1 ledger"),
    (b"[]", "not a aitn-privacy-budget/1"),
])
def test_a_corrupt_ledger_is_an_error_never_a_reset(tmp_path, content, match):
    path = tmp_path / "b.json"
    PrivacyBudget(path, 1.0, 0.0).spend(0.5, 0.0, "x")
    path.write_bytes(content)
    with pytest.raises(BudgetCorrupt, match=match) as e:
        PrivacyBudget(path, 1.0, 0.0)
    assert e.value.exit_code == 43
    assert path.read_bytes() == content  # untouched


@pytest.mark.parametrize("field,value", [("spent_epsilon", -1.0), ("spent_epsilon", "0"), ("releases", 1.5),
                                         ("tail", {}), ("spent_delta", None), ("extra", 1)])
def test_inconsistent_values_are_corrupt(tmp_path, field, value):
    path = tmp_path / "b.json"
    PrivacyBudget(path, 1.0, 0.0).spend(0.5, 0.0, "x")
    doc = json.loads(path.read_bytes())
    doc[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(BudgetCorrupt):
        PrivacyBudget(path, 1.0, 0.0).remaining


def test_a_deleted_ledger_is_not_a_fresh_start(tmp_path):
    path = tmp_path / "b.json"
    PrivacyBudget(path, 1.0, 0.0).spend(0.9, 0.0, "x")
    path.unlink()
    with pytest.raises(BudgetCorrupt, match="deleted"):
        PrivacyBudget(path, 1.0, 0.0)


def test_the_tail_is_bounded(tmp_path):
    b = PrivacyBudget(tmp_path / "b.json", 1e9, 0.0)
    for i in range(TAIL + 5):
        b.spend(1.0, 0.0, f"r{i}")
    st = b.state()
    assert st.releases == TAIL + 5 and len(st.tail) == TAIL and st.tail[-1]["label"] == f"r{TAIL + 4}"


@pytest.mark.parametrize("eps,delta", [(0.0, 0.0), (-1.0, 0.0), (float("nan"), 0.0), (0.1, 1.0), (0.1, -1e-9)])
def test_bad_spends(tmp_path, eps, delta):
    with pytest.raises(ValueError):
        PrivacyBudget(tmp_path / "b.json", 1.0, 0.5).spend(eps, delta, "bad")


def test_a_held_lock_times_out_with_a_clear_error(tmp_path):
    import fcntl
    import os

    b = PrivacyBudget(tmp_path / "b.json", 1.0, 0.0, lock_timeout=0.2)
    fd = os.open(b.lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(BudgetBusy, match="holds the budget lock"):
            b.spend(0.1, 0.0, "x")
    finally:
        os.close(fd)
    assert b.spend(0.1, 0.0, "x").releases == 1


def test_threads_cannot_double_spend(tmp_path):
    path = tmp_path / "b.json"
    PrivacyBudget(path, 1.0, 0.0)
    ok: list[int] = []

    def worker():
        b = PrivacyBudget(path, 1.0, 0.0)  # each with its own descriptor: flock excludes them from each other
        for _ in range(10):
            try:
                b.spend(0.1, 0.0, "t")
                ok.append(1)
            except BudgetExhausted:
                pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 10 and PrivacyBudget(path, 1.0, 0.0).state().releases == 10
