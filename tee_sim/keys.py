"""The device key and the keyed pseudonym: the only code that touches private key bytes.

secp256k1 through coincurve (libsecp256k1). Signatures are Ethereum's 65-byte r || s || v with
v in {27, 28}, so ecrecover, eth-account and every wallet verify them.
"""

from __future__ import annotations

import hmac
import struct

import coincurve

from .abi.digests import address_of


def new_private_key() -> bytes:
    return coincurve.PrivateKey().secret


class DeviceKey:
    def __init__(self, secret: bytes) -> None:
        self._key = coincurve.PrivateKey(secret)
        self.public_key = self._key.public_key.format(compressed=False)
        self.address = address_of(self.public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        sig = self._key.sign_recoverable(digest, hasher=None)  # r || s || recid
        return sig[:64] + bytes([27 + sig[64]])


def pseudonym(key: bytes, domain: int, value: bytes) -> bytes:
    """HMAC-SHA256 of ``value`` under the pseudonym key, separated by ``domain`` (a field id)."""
    return hmac.digest(key, b"aitn/pseudonym/v1" + struct.pack(">I", domain) + value, "sha256")
