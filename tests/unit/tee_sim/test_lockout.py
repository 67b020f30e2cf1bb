"""tee_sim.lockout: exponential backoff after failed proofs, kept in RPMB, on an injected clock."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tee_sim.lockout import FREE_FAILURES, Lockout, LockoutPolicy
from tee_sim.rpmb import Rpmb

KEY = b"\x44" * 32
POLICY = LockoutPolicy(base_seconds=2.0, max_seconds=60.0)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rpmb(tmp_path: Path):
    r = Rpmb(tmp_path / "rpmb.bin", KEY)
    r.create()
    yield r
    r.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lockout(rpmb, clock) -> Lockout:
    return Lockout(rpmb, POLICY, clock)


def test_free_failures_is_three():
    assert FREE_FAILURES == 3


def test_no_lockout_before_any_failure(lockout):
    assert (lockout.failures, lockout.remaining()) == (0, 0.0)


def test_first_free_failures_minus_one_do_not_lock(lockout, rpmb):
    for n in range(1, FREE_FAILURES):
        assert lockout.fail() == 0.0
        assert (lockout.failures, rpmb.header.failures, lockout.remaining()) == (n, n, 0.0)


def test_backoff_doubles_then_caps(lockout):
    got = [lockout.fail() for _ in range(FREE_FAILURES + 7)]
    #       1    2    3    4    5    6     7     8     9     10
    assert got == [0.0, 0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert lockout.failures == FREE_FAILURES + 7


def test_lockout_counts_down_with_the_clock(lockout, clock):
    for _ in range(FREE_FAILURES + 2):
        lockout.fail()
    assert lockout.remaining() == 8.0
    clock.t += 5.5
    assert lockout.remaining() == 2.5
    clock.t += 2.5
    assert lockout.remaining() == 0.0
    clock.t += 100
    assert lockout.remaining() == 0.0
    assert lockout.failures == FREE_FAILURES + 2  # time does not reset the count


def test_failure_after_the_lockout_expires_locks_for_longer(lockout, clock):
    for _ in range(FREE_FAILURES):
        lockout.fail()
    clock.t += 10
    assert lockout.fail() == 4.0


def test_succeed_resets(lockout, rpmb):
    for _ in range(FREE_FAILURES + 1):
        lockout.fail()
    lockout.succeed()
    assert (lockout.failures, lockout.remaining(), rpmb.header.lockout_until) == (0, 0.0, 0.0)
    assert [lockout.fail() for _ in range(FREE_FAILURES)] == [0.0, 0.0, 2.0]


def test_succeed_without_failures_does_not_write(lockout, rpmb):
    seq = rpmb.header.seq
    lockout.succeed()
    assert rpmb.header.seq == seq


def test_every_failure_is_one_durable_header_write(lockout, rpmb):
    seq = rpmb.header.seq
    lockout.fail()
    lockout.fail()
    assert rpmb.header.seq == seq + 2


def test_state_survives_reopening_the_rpmb(lockout, rpmb, clock):
    for _ in range(FREE_FAILURES + 3):
        lockout.fail()
    clock.t += 3
    rpmb.close()
    reopened = Rpmb(rpmb.path, KEY)
    reopened.open()
    try:
        again = Lockout(reopened, POLICY, clock)
        assert (again.failures, again.remaining()) == (FREE_FAILURES + 3, 13.0)
        assert again.fail() == 32.0  # the count goes on where it stopped
    finally:
        reopened.close()


def test_a_policy_change_on_restart_caps_an_old_deadline(lockout, rpmb, clock):
    for _ in range(FREE_FAILURES + 10):
        lockout.fail()
    assert lockout.remaining() == 60.0
    assert Lockout(rpmb, LockoutPolicy(base_seconds=2.0, max_seconds=5.0), clock).remaining() == 5.0


def test_clock_jumping_backwards_never_locks_past_max(lockout, clock):
    for _ in range(FREE_FAILURES + 10):
        lockout.fail()
    clock.t -= 86_400 * 365
    assert lockout.remaining() == POLICY.max_seconds
    assert lockout.fail() == POLICY.max_seconds


def test_random_clock_walk_keeps_remaining_within_bounds(lockout, clock):
    rng = random.Random(7)
    for _ in range(300):
        # A board without an RTC boots near the epoch, then NTP jumps it: the clock is never negative.
        clock.t = max(0.0, clock.t + rng.choice([-1e6, -100.0, -1.0, 0.0, 0.5, 3.0, 100.0, 1e6]))
        left = lockout.fail() if rng.random() < 0.5 else lockout.remaining()
        assert 0.0 <= left <= POLICY.max_seconds
        if rng.random() < 0.05:
            lockout.succeed()
            assert lockout.remaining() == 0.0


def test_lockout_keeps_working_after_a_thousand_failures(lockout, clock):
    for n in range(1, 1100):
        clock.t += POLICY.max_seconds + 1  # the attacker waits out every lockout
        assert lockout.remaining() == 0.0
        try:
            left = lockout.fail()
        except OverflowError:
            raise AssertionError(f"fail() raised OverflowError at failure {n}") from None
        assert left == (0.0 if n < FREE_FAILURES else min(2.0 * 2 ** min(n - FREE_FAILURES, 10), 60.0))
        assert lockout.failures == n
