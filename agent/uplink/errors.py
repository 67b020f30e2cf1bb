"""Errors of the uplink (device side) and the node. Exit codes 70-79, and 80-84 (fedavg, fedbuff, bridge,
demand server, UntrustedRound below).

On the node the same types choose the CoAP error a request gets (agent/node/resources.py):
unknown device 4.01, bad signature 4.03, everything else malformed or conflicting 4.00.
"""

from __future__ import annotations

from ..errors import AgentError


class UplinkError(AgentError):
    exit_code = 70


class OutboxFull(UplinkError):
    """The outbox is at its quota and the new item may not displace anything (docs/uplink.md)."""

    exit_code = 71


class OutboxCorrupt(UplinkError):
    """An outbox file whose checksum or layout does not verify (it is quarantined, not deleted)."""

    exit_code = 72


class MessageError(UplinkError):
    """CBOR that does not decode, or a message that does not follow its schema; ``where`` names the field."""

    exit_code = 73

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason, self.where = reason, where


class UnknownDevice(UplinkError):
    """A request from a device the node has not enrolled (CoAP 4.01)."""

    exit_code = 74


class BadSignature(UplinkError):
    """An item whose secure-world signature does not recover the enrolled address (CoAP 4.03)."""

    exit_code = 75


class SequenceConflict(UplinkError):
    """A sequence number the node already accepted with other content (CoAP 4.00)."""

    exit_code = 76


class NodeRejected(UplinkError):
    """The node answered an item with a 4.xx error: retrying the same bytes cannot help."""

    exit_code = 77

    def __init__(self, code: str, diagnostic: str) -> None:
        super().__init__(f"node answered {code}: {diagnostic}")
        self.code, self.diagnostic = code, diagnostic


class NodeUnreachable(UplinkError):
    """No answer from the node (timeout, network down): the item stays in the outbox and is retried."""

    exit_code = 78


class EnrollmentError(UplinkError):
    """Enrollment failed: the node refused, or its answer does not verify (wrong node key, bad signature)."""

    exit_code = 79
    unreachable = False   # True when no node answered at all (worth retrying)


class UntrustedRound(UplinkError):
    """A round announcement (and so the model it names) not signed by the node this device enrolled with."""

    exit_code = 84
