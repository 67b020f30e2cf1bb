"""agent.tee.chaindiff.diagnose: every state, its error name and recovery, and when a probe is needed."""

from __future__ import annotations

import pytest

from agent.tee.chaindiff import NormalView, Probe, SecureView, diagnose, probe_height

PID, OTHER = "aa" * 16, "bb" * 16


def nw(head: int | None = 12, records: int | None = None, pairing: str = PID, **kw) -> NormalView:
    records = records if records is not None else (head + 1 if head is not None else 0)
    return NormalView("/h/chain.log", True, pairing_id=pairing, timelock=16, records=records, head=head, **kw)


def sw(committed: int = 12, **kw) -> SecureView:
    base = dict(key=True, paired=True, pairing_id=PID, committed=committed, tentative=0, timelock=16, failures=0,
                lockout_seconds=0.0, state_error=None)
    base.update(kw)
    return SecureView(**base)


def match(h: int) -> Probe:
    return Probe("match", h, "")


@pytest.mark.parametrize("n, c, probe, state, ok", [
    (12, 12, match(12), "in_sync", True),
    (14, 12, match(12), "nw_ahead", True),
    (11, 12, match(11), "nw_one_behind", True),
    (12, 12, Probe("mismatch", 12, ""), "mismatch", False),
    (12, 12, Probe("ack_mismatch", 12, ""), "probe_failed", False),
])
def test_states_decided_by_the_probe(n, c, probe, state, ok):
    assert probe_height(nw(n), sw(c)) == min(n, c)
    d = diagnose(nw(n), sw(c), probe)
    assert (d.state, d.ok) == (state, ok)


def test_mismatch_names_a_range_not_a_block():
    d = diagnose(nw(12), sw(12), Probe("mismatch", 12, ""))
    assert (d.error, d.recovery, d.first_divergent, d.divergent_range) == ("ChainMismatch", "re-pair", None, (1, 12))
    assert any("allow-repair" in s for s in d.steps)


def test_behind_needs_no_probe_and_names_the_first_missing_block():
    assert probe_height(nw(4), sw(12)) is None
    d = diagnose(nw(4), sw(12), None)
    assert (d.state, d.error, d.recovery, d.first_divergent, d.divergent_range) == (
        "nw_behind", "ChainBehind", "re-pair", 5, (5, 12))


def test_a_torn_tail_counts_as_cut_where_open_would_cut_it():
    torn = nw(head=9, records=14, bad_height=10, bad_reason="fails its checksum", torn_tail=True)
    assert probe_height(torn, sw(12)) is None  # it will be at 9 once opened: behind
    assert diagnose(torn, sw(12), None).state == "nw_behind"
    d = diagnose(torn, sw(8), match(8))
    assert d.state == "nw_ahead" and "torn records from block 10" in d.summary


def test_damage_deeper_than_a_torn_tail_is_corrupt_at_its_height():
    bad = nw(head=4, records=200, bad_height=5, bad_reason="hash does not verify", torn_tail=False)
    assert probe_height(bad, sw(199)) is None
    d = diagnose(bad, sw(199), None)
    assert (d.state, d.error, d.first_divergent) == ("nw_corrupt", "ChainCorrupt", 5)


def test_pairings_that_differ():
    assert probe_height(nw(pairing=OTHER), sw()) is None
    d = diagnose(nw(pairing=OTHER), sw(), None)
    assert (d.state, d.recovery) == ("foreign_pairing", "re-pair")
    d = diagnose(nw(pairing=OTHER, archived={PID: "/h/chain.%s.log" % PID}), sw(), None)
    assert (d.state, d.recovery) == ("foreign_pairing", "restore-chain")
    assert d.steps[1] == f"mv /h/chain.{PID}.log /h/chain.log"


def test_secure_side_states():
    assert diagnose(nw(), sw(state_error="older than the RPMB counter"), None).state == "secure_state_unusable"
    lost = diagnose(nw(), sw(committed=None, paired=False, pairing_id=None, key=False), None)
    assert (lost.state, lost.error, lost.recovery) == ("secure_state_lost", "NotPaired", "re-pair")
    assert "new address" in lost.summary
    kept = diagnose(nw(), sw(committed=None, paired=False, pairing_id=None), None)
    assert "new address" not in kept.summary
    none = NormalView("/h/chain.log", False)
    assert diagnose(none, sw(committed=None, paired=False, pairing_id=None), None).state == "not_paired"
    assert diagnose(none, sw(), None).state == "nw_missing"


def test_lockout_is_reported_before_probing():
    locked = sw(lockout_seconds=8.0, failures=4)
    assert probe_height(nw(), locked) is None
    d = diagnose(nw(), locked, None)
    assert (d.state, d.error, d.recovery) == ("locked_out", "TeeLockedOut", "wait")
    assert d.steps[0].startswith("sleep 8")


def test_consistent_heights_without_a_probe_is_a_programming_error():
    with pytest.raises(ValueError):
        diagnose(nw(12), sw(12), None)


def test_a_lockout_at_its_cap_after_few_failures_points_at_the_clock():
    d = diagnose(nw(), sw(lockout_seconds=3600.0, failures=3), None)
    assert "clock was most likely set back" in d.summary and d.steps[0].startswith("date")
    assert "clock" not in diagnose(nw(), sw(lockout_seconds=3600.0, failures=20), None).summary
    assert "clock" not in diagnose(nw(), sw(lockout_seconds=2.0, failures=4), None).summary
