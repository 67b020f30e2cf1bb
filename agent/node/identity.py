"""The node's own signing key: it signs enrollment answers and round announcements.

Kept in the node's state folder (0600, created at first start). Signatures have the device's
shape (r || s || v, v in {27, 28}), so `agent.signature.verify` checks both.
"""

from __future__ import annotations

import os
from pathlib import Path

import coincurve

from tee_sim.abi.digests import address_of

from ..errors import ConfigError
from ..fsio import write_atomic

KEY_FILE = "node.key"


class NodeKey:
    def __init__(self, key: coincurve.PrivateKey) -> None:
        self._key = key
        self.public = key.public_key.format(compressed=False)
        self.address = address_of(self.public)

    @classmethod
    def load_or_create(cls, state: Path) -> "NodeKey":
        path = Path(state) / KEY_FILE
        if not path.exists():
            write_atomic(path, coincurve.PrivateKey().secret)
        data = path.read_bytes()
        if len(data) != 32:
            raise ConfigError(f"{path}: a node key is 32 bytes, found {len(data)}")
        if os.stat(path).st_mode & 0o077:
            raise ConfigError(f"{path}: readable by others; chmod 600 it")
        return cls(coincurve.PrivateKey(data))

    def sign(self, digest: bytes) -> bytes:
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([27 + sig[64]])
