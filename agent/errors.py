"""Errors of the normal world. Each class carries the CLI exit code it maps to (typed exits).

Exit codes: 1 general, 3 configuration, 10-19 secure world, 20-29 private chain, 30-39 data integrity,
40-49 privacy (agent/privacy/errors.py), 50-59 sensor link (agent/ingest), 60-69 training
(agent/train/errors.py), 70-84 uplink and node (agent/uplink/errors.py), 85-87 work utility and
incentives (agent/utility/errors.py), 88 device identity (agent/identity/errors.py), 90-94 TEE
debugging tools (agent/tee/debug_errors.py).
"""

from __future__ import annotations

from tee_sim.abi.ids import Origin, TeecResult


class AgentError(Exception):
    exit_code = 1


class ConfigError(AgentError):
    exit_code = 3


class IntegrityError(AgentError):
    """Stored or received content that does not match its address or format (CID, dag-pb, CAR)."""

    exit_code = 31


class TeeError(AgentError):
    """Anything between the normal world and the secure world."""

    exit_code = 10


class TeeUnavailable(TeeError):
    """The secure world cannot be reached at its URL (not running, wrong URL, link down)."""

    exit_code = 11


class TeeProtocolError(TeeError):
    """The secure world answered with something this client cannot accept."""

    exit_code = 12


class ChainError(AgentError):
    exit_code = 20


class ChainCorrupt(ChainError):
    """A block whose hash, link or checksum does not verify (beyond a torn tail, which is dropped)."""

    exit_code = 21


class ChainBusy(ChainError):
    """Another normal-world process holds the chain."""

    exit_code = 22


class NotPaired(ChainError):
    """No pairing yet on one side or the other: run `aitn tee pair`."""

    exit_code = 23


class ChainBehind(ChainError):
    """The normal world's chain is older than what the secure world committed: restored from a backup."""

    exit_code = 24


class ChainMismatch(ChainError):
    """The two copies disagree (a forked or foreign chain, or an impostor)."""

    exit_code = 25


class TeeResultError(TeeError):
    """The secure world answered a request with a TEEC error result; ``result`` and ``origin`` say which."""

    exit_code = 13

    def __init__(self, what: str, result: int, origin: int, hint: str = "") -> None:
        try:
            rname = f"TEEC_ERROR_{TeecResult(result).name}"
        except ValueError:
            rname = "unknown result"
        try:
            oname = Origin(origin).name
        except ValueError:
            oname = str(origin)
        super().__init__(f"{what}: {rname} (0x{result:08X}) origin {oname}" + (f": {hint}" if hint else ""))
        self.what, self.result, self.origin = what, result, origin


class TeeAccessDenied(TeeResultError):
    exit_code = 14


class TeeBadParameters(TeeResultError):
    exit_code = 15


class TeeBadState(TeeResultError):
    exit_code = 16


class TeeLockedOut(TeeResultError):
    """Too many failed proofs: the secure world refuses to sign until the lockout ends."""

    exit_code = 17


class ProofRejected(TeeResultError):
    """The secure world did not accept a proof or sync tag (MAC_INVALID)."""

    exit_code = 18


class KeyExists(TeeResultError):
    exit_code = 19


class TeeNotFound(TeeResultError):
    exit_code = 13


class TeeCommsError(TeeResultError):
    """The secure world could not decode what it received (origin COMMS)."""

    exit_code = 12
