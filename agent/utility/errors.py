"""Errors of work-utility metering and the node's incentives. Exit codes 85-87."""

from __future__ import annotations

from ..errors import AgentError


class MeterError(AgentError):
    """A meter name or value that cannot be recorded (unknown name, negative or not finite)."""

    exit_code = 85


class ReportRefused(AgentError):
    """A work-utility report the node does not record; ``where`` names the field (CoAP 4.00/4.09)."""

    exit_code = 86

    def __init__(self, reason: str, where: str = "", conflict: bool = False) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason, self.where, self.conflict = reason, where, conflict


class AllocationError(AgentError):
    """An allocation that cannot be computed or a statement that does not verify."""

    exit_code = 87
