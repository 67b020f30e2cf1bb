"""Errors of the device's on-chain identity. Exit code 88: typed data or a mint request that does not verify.

Every error names where it happened (``where``: a path into the request such as
``typed_data.message.owner`` or ``types.Mail[1].type``, or ``signature``), so the one-line CLI
reason points at the field. Both share one exit code: to a caller either means "do not submit this".
"""

from __future__ import annotations

from ..errors import AgentError


class IdentityError(AgentError):
    """Base of this package's errors; ``where`` names the field, ``reason`` what is wrong with it."""

    exit_code = 88

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


class TypedDataError(IdentityError):
    """EIP-712 typed data that cannot be encoded (unknown type, missing field, value out of range)."""


class MintRequestInvalid(IdentityError):
    """A well-formed request that must not be submitted: not our schema, wrong signer, expired."""
