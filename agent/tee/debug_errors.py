"""Errors of the TEE debugging kit (`aitn tee replay | selftest | bench`, `aitn chain diff`): exits 90-94.

Each is raised after the command has printed its report (text or JSON), so a script gets both the
report on stdout and a typed exit code; the one line on stderr says why.
"""

from __future__ import annotations

from ..errors import AgentError


class ReplayMismatch(AgentError):
    """A fresh secure world answered a replayed request differently from the capture."""

    exit_code = 90

    def __init__(self, msg: str, frame_number: int) -> None:
        super().__init__(msg)
        self.frame_number = frame_number


class ChainsDiverge(AgentError):
    """The two copies of the chain disagree in a way only an operator can recover from.

    ``state`` and ``recovery`` are the names `aitn chain diff` prints (docs/debugging.md).
    """

    exit_code = 91

    def __init__(self, msg: str, state: str, recovery: str) -> None:
        super().__init__(msg)
        self.state, self.recovery = state, recovery


class SelftestFailed(AgentError):
    """At least one check of `aitn tee selftest` failed; ``failed`` names them."""

    exit_code = 92

    def __init__(self, failed: list[str]) -> None:
        super().__init__(f"self-test failed: {', '.join(failed)}")
        self.failed = failed


class ScratchWorldError(AgentError):
    """The scratch secure world a replay needs could not be started or brought to the capture's state."""

    exit_code = 93


class NotReplayable(AgentError):
    """A capture with nothing to replay: no request of this project's link type."""

    exit_code = 94
