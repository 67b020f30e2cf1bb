"""Sealed state: AES-256-GCM under a key derived from the (emulated) hardware-unique key, with rollback protection.

- Hardware-unique key (HUK): HKDF-SHA256 over a provisioned secret (``otp.bin``, our emulated OTP
  fuses) and the board serial. Moving the state directory to another board makes it unreadable.
- ``sealed.bin``: magic, version, nonce, AES-GCM(key_state, JSON state, aad = magic || version).
- Rollback: every write bumps ``version`` and then the RPMB ``state_counter``. On load a version
  below the counter is a restored old file and is refused; version == counter + 1 is a write that
  completed before the counter did, and is finished. Nothing here ever creates a new key over an
  unreadable state.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .rpmb import Rpmb

_MAGIC = b"AITNSEAL"
_HEAD = struct.Struct(">8sQ12s")


class SealedStateError(Exception):
    """The sealed state cannot be used; the message says why and what recovers it."""


class RollbackDetected(SealedStateError):
    """sealed.bin is older than the RPMB counter says: a restored copy."""


def derive(huk: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"aitn/" + label).derive(huk)


def hardware_unique_key(otp_path: Path, board_serial: str, create: bool) -> bytes:
    if not otp_path.exists():
        if not create:
            raise SealedStateError(f"{otp_path}: provisioned secret missing")
        fd = os.open(otp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        os.write(fd, os.urandom(32))
        os.fsync(fd)
        os.close(fd)
    secret = otp_path.read_bytes()
    if len(secret) != 32:
        raise SealedStateError(f"{otp_path}: {len(secret)} bytes, expected 32")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"aitn/huk/v1",
                info=board_serial.encode()).derive(secret)


@dataclass
class State:
    """What the sealed file holds. Keys are raw 32-byte secrets."""

    device_key: bytes | None = None
    pseudonym_key: bytes = field(default_factory=lambda: os.urandom(32))
    created: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"device_key": self.device_key.hex() if self.device_key else None,
                           "pseudonym_key": self.pseudonym_key.hex(), "created": self.created}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "State":
        d = json.loads(data)
        return cls(bytes.fromhex(d["device_key"]) if d["device_key"] else None,
                   bytes.fromhex(d["pseudonym_key"]), d["created"])


class SealedStore:
    def __init__(self, path: Path, key: bytes, rpmb: Rpmb) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._rpmb = rpmb
        self.version = 0

    def write(self, state: State) -> None:
        """Write-fsync-rename the next version, then advance the RPMB counter."""
        version = self.version + 1
        nonce = os.urandom(12)
        head = _HEAD.pack(_MAGIC, version, nonce)
        blob = head + self._aead.encrypt(nonce, state.to_json(), head[:16])
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.version = version
        self._rpmb.write_header(replace(self._rpmb.header, state_counter=version))

    def read(self) -> State:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            raise SealedStateError(
                f"{self.path} is missing while the RPMB counter is {self._rpmb.header.state_counter}: "
                "the state was deleted; the device key is not regenerated (restore the file or re-provision)"
            ) from None
        if len(blob) < _HEAD.size + 16:
            raise SealedStateError(f"{self.path}: {len(blob)} bytes is too short for sealed state")
        magic, version, nonce = _HEAD.unpack_from(blob)
        if magic != _MAGIC:
            raise SealedStateError(f"{self.path}: not a sealed state file")
        counter = self._rpmb.header.state_counter
        if version < counter:
            raise RollbackDetected(
                f"{self.path}: sealed state version {version} is older than the RPMB counter {counter}: "
                "an old copy was restored; refusing it")
        if version > counter + 1:
            raise SealedStateError(f"{self.path}: version {version} is ahead of the RPMB counter {counter}")
        try:
            plain = self._aead.decrypt(nonce, blob[_HEAD.size:], blob[:16])
        except InvalidTag:
            raise SealedStateError(
                f"{self.path}: cannot be opened with this device's hardware key "
                "(corrupted, or moved from another board)") from None
        self.version = version
        if version == counter + 1:  # the last write finished before its counter update did
            self._rpmb.write_header(replace(self._rpmb.header, state_counter=version))
        return State.from_json(plain)
