"""Verifying device signatures in the normal world (and on the node): recover the signer, compare.

Verification raises; it never returns False (pyca/cryptography's InvalidSignature habit).
"""

from __future__ import annotations

import coincurve

from tee_sim.abi.digests import address_of

from .errors import AgentError


class InvalidSignature(AgentError):
    """A signature that does not parse, or that recovers another address than expected."""

    exit_code = 30


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte address that signed ``digest`` with the 65-byte r || s || v ``signature``."""
    if len(digest) != 32 or len(signature) != 65:
        raise InvalidSignature("digest must be 32 bytes and signature 65 bytes")
    v = signature[64]
    recid = v - 27 if v >= 27 else v
    if recid not in (0, 1):
        raise InvalidSignature(f"signature v={v} is not 0, 1, 27 or 28")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes([recid]), digest, hasher=None)
    except Exception as e:  # coincurve raises plain Exception/ValueError on a bad point
        raise InvalidSignature(f"signature does not recover a public key: {e}") from None
    return address_of(pub.format(compressed=False))


def verify(digest: bytes, signature: bytes, address: bytes) -> None:
    got = recover_address(digest, signature)
    if got != address:
        raise InvalidSignature(f"signature recovers 0x{got.hex()}, expected 0x{address.hex()}")
