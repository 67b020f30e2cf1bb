"""Pairing: an X25519 exchange at `aitn tee pair` yields the secret the genesis block is bound to.

pairing_secret = HKDF-SHA256(X25519(nw, tee), salt = pairing_id,
                             info = "aitn/pair/v1" || device public key || nw_pub || tee_pub)

A passive observer of the PAIR exchange learns neither the secret nor any block hash. An active
man in the middle *during pairing* is out of scope: pairing is a provisioning step (docs/handshake.md).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_SIZE = 32


def new_ephemeral() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, public


def derive_secret(private: X25519PrivateKey, peer_public: bytes, pairing_id: bytes, device_public_key: bytes,
                  nw_public: bytes, tee_public: bytes) -> bytes:
    """The shared pairing secret; raises ValueError on a malformed or low-order peer key."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=pairing_id,
                info=b"aitn/pair/v1" + device_public_key + nw_public + tee_public).derive(shared)
