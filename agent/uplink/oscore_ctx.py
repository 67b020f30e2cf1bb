"""OSCORE security contexts made at enrollment: key agreement, derivation, and the context folders.

Enrollment is an ephemeral X25519 exchange whose two halves are signed (the device's half by its
secure world, the node's by the node key), so each side knows whom it agreed a key with. Both sides
derive the OSCORE master secret and salt with HKDF-SHA256 from the shared secret, salted with the
signed enrollment request's digest: a context exists only on the two machines that made it, is
never part of an image, and a re-enrollment makes a fresh one.

A context is a folder in aiocoap's FilesystemSecurityContext layout: settings.json (ids),
secret.json (master secret and salt, 0600) and sequence.json, which aiocoap rewrites (fsync,
rename) ahead of the sequence numbers it uses, so a restart never reuses one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..fsio import fsync_dir, write_atomic

SECRET_BYTES = 16  # AES-CCM-16-64-128, aiocoap's default algorithm
SALT_BYTES = 8
_INFO = b"aitn-oscore-v1"


def x25519_keypair() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive(own: X25519PrivateKey, peer_public: bytes, request_digest: bytes) -> tuple[bytes, bytes]:
    """(master secret, master salt) from the exchange. Raises ValueError on a degenerate peer key."""
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    okm = HKDF(hashes.SHA256(), SECRET_BYTES + SALT_BYTES, request_digest, _INFO).derive(shared)
    return okm[:SECRET_BYTES], okm[SECRET_BYTES:]


def write_context(folder: Path, sender_id: bytes, recipient_id: bytes, secret: bytes, salt: bytes) -> None:
    """Create a context folder whole or not at all (built aside, then renamed into place)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    write_atomic(tmp / "settings.json", json.dumps({"sender-id_hex": sender_id.hex(),
                                                    "recipient-id_hex": recipient_id.hex()}).encode())
    write_atomic(tmp / "secret.json", json.dumps({"secret_hex": secret.hex(), "salt_hex": salt.hex()}).encode())
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    fsync_dir(folder.parent)


def load_context(folder: Path):
    """aiocoap's context over ``folder`` (takes its lock file: one process at a time)."""
    from aiocoap.oscore import FilesystemSecurityContext

    return FilesystemSecurityContext(str(folder))
