"""The secure world's state directory: emulated OTP, RPMB and the sealed state, opened or created together.

    STATE/otp.bin        provisioned secret (emulated fuses); with the board serial it gives the HUK
    STATE/rpmb.bin       emulated RPMB (counter, lockout, pairing, chain view)
    STATE/sealed.bin     AES-GCM sealed state (device key, pseudonym key)
    STATE/repair.allow   present only while an operator allows re-pairing (see allow_repair)

The directory is created 0700; the normal world never reads it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .rpmb import Rpmb, RpmbError
from .sealed import SealedStateError, SealedStore, State, derive, hardware_unique_key


@dataclass
class Storage:
    root: Path
    rpmb: Rpmb
    sealed: SealedStore
    blob_key: bytes
    state: State

    def save(self, state: State) -> None:
        self.sealed.write(state)
        self.state = state


class StorageError(Exception):
    """The state directory cannot be used as it is; the message says why and what recovers it."""


def open_storage(root: Path, board_serial: str) -> Storage:
    """Open the state directory, creating it on first start.

    Raises StorageError (rollback detected, missing or foreign files, wrong hardware key); it never
    replaces unreadable state with new state.
    """
    try:
        return _open(root, board_serial)
    except (RpmbError, SealedStateError) as e:
        raise StorageError(str(e)) from e


def _open(root: Path, board_serial: str) -> Storage:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    otp, rpmb_path, sealed_path = root / "otp.bin", root / "rpmb.bin", root / "sealed.bin"
    first_start = not otp.exists() and not rpmb_path.exists() and not sealed_path.exists()
    huk = hardware_unique_key(otp, board_serial, create=first_start)
    rpmb = Rpmb(rpmb_path, derive(huk, b"rpmb"))
    sealed = SealedStore(sealed_path, derive(huk, b"sealed-state"), rpmb)
    if first_start:
        rpmb.create()
        storage = Storage(root, rpmb, sealed, derive(huk, b"blob"), State(created=time.time()))
        storage.save(storage.state)
        return storage
    if not rpmb_path.exists():
        if sealed_path.exists():
            raise RpmbError(f"{rpmb_path} is missing while {sealed_path.name} exists: refusing to start over")
        raise RpmbError(f"{otp.name} exists but {rpmb_path.name} and {sealed_path.name} do not: an interrupted "
                        f"first start or a wiped state; delete {otp} to provision a NEW device key")
    rpmb.open()
    if not sealed_path.exists() and rpmb.header.state_counter == 0:
        # The first start stopped between creating RPMB and the first sealed write: no key ever existed.
        storage = Storage(root, rpmb, sealed, derive(huk, b"blob"), State(created=time.time()))
        storage.save(storage.state)
        return storage
    return Storage(root, rpmb, sealed, derive(huk, b"blob"), sealed.read())


def allow_repair(root: Path, minutes: float, now: float | None = None) -> Path:
    """Open a re-pairing window: run by the secure world's owner (root or its user), never by the normal world."""
    path = root / "repair.allow"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{(now if now is not None else time.time()) + 60 * minutes:.3f}\n")
    os.chmod(tmp, 0o600)
    owner = root.stat()
    if os.geteuid() == 0:  # run by root for a secure world that dropped to its own user
        os.chown(tmp, owner.st_uid, owner.st_gid)
    os.replace(tmp, path)
    return path


def repair_allowed(root: Path, now: float) -> bool:
    try:
        return float((root / "repair.allow").read_text()) > now
    except (OSError, ValueError):
        return False


def consume_repair(root: Path) -> None:
    try:
        (root / "repair.allow").unlink()
    except FileNotFoundError:
        pass
