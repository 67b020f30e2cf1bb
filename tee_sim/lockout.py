"""Lockout after failed proofs: exponential backoff, kept in RPMB so a restart does not reset it.

After FREE_FAILURES consecutive failures (bad proof or bad sync tag) the secure world refuses SYNC,
SIGN and PROOF for base * 2**(failures - FREE_FAILURES) seconds, capped at max_seconds. A success
resets the count. The deadline is wall-clock time (it must survive a reboot); a clock that jumps
backwards cannot stretch a lockout past max_seconds from now.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from .rpmb import Rpmb

FREE_FAILURES = 3


@dataclass(frozen=True)
class LockoutPolicy:
    base_seconds: float = 1.0
    max_seconds: float = 3600.0


class Lockout:
    def __init__(self, rpmb: Rpmb, policy: LockoutPolicy, now: Callable[[], float]) -> None:
        self._rpmb = rpmb
        self._policy = policy
        self._now = now

    @property
    def failures(self) -> int:
        return self._rpmb.header.failures

    def remaining(self) -> float:
        left = self._rpmb.header.lockout_until - self._now()
        return max(0.0, min(left, self._policy.max_seconds))

    def fail(self) -> float:
        """Count one failure durably; returns the lockout now in force (seconds)."""
        failures = self._rpmb.header.failures + 1
        until = 0.0
        if failures >= FREE_FAILURES:
            doublings = min(failures - FREE_FAILURES, 64)  # past the cap anyway; keeps the float finite
            until = self._now() + min(self._policy.base_seconds * 2.0 ** doublings, self._policy.max_seconds)
        self._rpmb.write_header(replace(self._rpmb.header, failures=failures, lockout_until=until))
        return self.remaining()

    def succeed(self) -> None:
        if self._rpmb.header.failures:
            self._rpmb.write_header(replace(self._rpmb.header, failures=0, lockout_until=0.0))
