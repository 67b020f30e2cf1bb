"""Errors of the privacy package, with their CLI exit codes (40-49; agent/errors.py owns the rest)."""

from __future__ import annotations

from ..errors import AgentError, ConfigError


class PrivacyError(AgentError):
    exit_code = 40


class PolicyError(ConfigError):
    """A policy file that cannot be used: the message names the file and the key."""

    exit_code = 41


class BudgetExhausted(PrivacyError):
    """A release would spend more than the privacy budget has left; nothing was spent or released."""

    exit_code = 42


class BudgetCorrupt(PrivacyError):
    """The budget ledger is unreadable or inconsistent. It is never reset silently."""

    exit_code = 43


class BudgetBusy(PrivacyError):
    """Another process held the ledger's lock for longer than the timeout."""

    exit_code = 44


class PseudonymError(PrivacyError):
    """The pseudonym function (the secure world) answered something that is not one 32-byte HMAC per value."""

    exit_code = 45
