"""tee_sim.storage: the state directory (otp, rpmb, sealed) opened or created together, and the repair window."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tee_sim.rpmb import HEADER_SIZE
from tee_sim.sealed import RollbackDetected
from tee_sim.storage import (Storage, StorageError, allow_repair, consume_repair, open_storage,
                             repair_allowed)

SERIAL = "BOARD-0001"
FILES = ("otp.bin", "rpmb.bin", "sealed.bin")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "state"


def first_start(root: Path) -> Storage:
    s = open_storage(root, SERIAL)
    s.rpmb.close()
    return s


def reopen(root: Path, serial: str = SERIAL) -> Storage:
    s = open_storage(root, serial)
    s.rpmb.close()
    return s


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


# -- first start and reopen ------------------------------------------------------------------------


def test_first_start_creates_the_three_files_in_a_0700_directory(root):
    s = first_start(root)
    assert sorted(p.name for p in root.iterdir()) == sorted(FILES)
    assert root.stat().st_mode & 0o777 == 0o700
    assert (s.sealed.version, s.rpmb.header.state_counter) == (1, 1)
    assert s.state.device_key is None
    assert len(s.state.pseudonym_key) == 32
    assert len(s.blob_key) == 32


def test_an_existing_directory_is_tightened_to_0700(root):
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    first_start(root)
    assert root.stat().st_mode & 0o777 == 0o700


def test_reopen_gives_the_same_state_and_keys(root):
    a = first_start(root)
    b = reopen(root)
    assert b.state == a.state
    assert b.blob_key == a.blob_key
    assert (b.sealed.version, b.rpmb.header.state_counter) == (1, 1)


def test_save_persists_and_bumps_the_counter(root):
    s = open_storage(root, SERIAL)
    try:
        new = type(s.state)(device_key=b"\x07" * 32, pseudonym_key=s.state.pseudonym_key, created=s.state.created)
        s.save(new)
        assert s.state == new
        assert (s.sealed.version, s.rpmb.header.state_counter) == (2, 2)
    finally:
        s.rpmb.close()
    again = reopen(root)
    assert again.state.device_key == b"\x07" * 32
    assert (again.sealed.version, again.rpmb.header.state_counter) == (2, 2)


def test_two_boards_get_different_keys(tmp_path):
    a = first_start(tmp_path / "a")
    b = first_start(tmp_path / "b")
    assert a.blob_key != b.blob_key
    assert a.state.pseudonym_key != b.state.pseudonym_key


# -- refusals: never start over ----------------------------------------------------------------------------


def save_twice(root: Path) -> None:
    s = open_storage(root, SERIAL)
    try:
        s.save(s.state)
    finally:
        s.rpmb.close()


def test_restored_old_sealed_file_is_refused_as_a_rollback(root):
    first_start(root)
    old = (root / "sealed.bin").read_bytes()
    save_twice(root)
    (root / "sealed.bin").write_bytes(old)
    before = snapshot(root)
    with pytest.raises(StorageError, match="version 1 is older than the RPMB counter 2") as e:
        open_storage(root, SERIAL)
    assert isinstance(e.value.__cause__, RollbackDetected)
    assert snapshot(root) == before


def test_sealed_write_that_beat_its_counter_update_is_accepted_and_the_counter_advanced(root):
    first_start(root)
    old_rpmb = (root / "rpmb.bin").read_bytes()
    save_twice(root)  # sealed.bin version 2, RPMB counter 2
    (root / "rpmb.bin").write_bytes(old_rpmb)  # as if power failed before the counter update landed
    s = reopen(root)
    assert (s.sealed.version, s.rpmb.header.state_counter) == (2, 2)
    s = reopen(root)
    assert s.rpmb.header.state_counter == 2


def test_torn_counter_update_is_completed_on_open(root):
    first_start(root)
    save_twice(root)
    s = reopen(root)
    seq = s.rpmb.header.seq
    with open(root / "rpmb.bin", "r+b") as f:  # the newest header copy, torn
        f.seek((seq % 2) * HEADER_SIZE)
        f.write(bytes(64))
    s = reopen(root)
    assert (s.sealed.version, s.rpmb.header.state_counter) == (2, 2)


def test_missing_sealed_file_is_refused_and_nothing_is_recreated(root):
    first_start(root)
    (root / "sealed.bin").unlink()
    before = snapshot(root)
    with pytest.raises(StorageError, match="sealed.bin is missing while the RPMB counter is 1"):
        open_storage(root, SERIAL)
    assert snapshot(root) == before
    assert not (root / "sealed.bin").exists()


def test_missing_rpmb_with_sealed_present_is_refused(root):
    first_start(root)
    (root / "rpmb.bin").unlink()
    before = snapshot(root)
    with pytest.raises(StorageError, match="rpmb.bin is missing while sealed.bin exists"):
        open_storage(root, SERIAL)
    assert snapshot(root) == before


def test_missing_otp_is_refused_and_not_reprovisioned(root):
    first_start(root)
    (root / "otp.bin").unlink()
    before = snapshot(root)
    with pytest.raises(StorageError, match="provisioned secret missing"):
        open_storage(root, SERIAL)
    assert snapshot(root) == before


def test_another_board_serial_is_refused(root):
    first_start(root)
    before = snapshot(root)
    with pytest.raises(StorageError, match="wrong hardware key"):
        open_storage(root, "BOARD-0002")
    assert snapshot(root) == before


def test_state_directory_moved_to_another_board_with_its_own_otp_is_refused(tmp_path):
    first_start(tmp_path / "a")
    first_start(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "otp.bin", tmp_path / "otp-b")
    os.chmod(tmp_path / "a" / "otp.bin", 0o600)
    shutil.copy(tmp_path / "otp-b", tmp_path / "a" / "otp.bin")
    with pytest.raises(StorageError, match="no valid header"):
        open_storage(tmp_path / "a", SERIAL)


@pytest.mark.parametrize("offset", [20, 40, -1])
def test_sealed_bit_flip_is_refused(root, offset):
    first_start(root)
    blob = bytearray((root / "sealed.bin").read_bytes())
    blob[offset] ^= 0x01
    (root / "sealed.bin").write_bytes(bytes(blob))
    with pytest.raises(StorageError, match="cannot be opened with this device's hardware key"):
        open_storage(root, SERIAL)


# -- repair window ------------------------------------------------------------------------------------------


def test_repair_is_not_allowed_by_default(root):
    root.mkdir()
    assert repair_allowed(root, now=0.0) is False


def test_allow_repair_opens_a_window_of_the_given_minutes(root):
    root.mkdir()
    path = allow_repair(root, minutes=10, now=1000.0)
    assert path == root / "repair.allow"
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (root / "repair.tmp").exists()
    assert repair_allowed(root, now=1000.0) is True
    assert repair_allowed(root, now=1599.9) is True
    assert repair_allowed(root, now=1600.0) is False
    assert repair_allowed(root, now=5000.0) is False


def test_allow_repair_again_replaces_the_window(root):
    root.mkdir()
    allow_repair(root, minutes=10, now=1000.0)
    allow_repair(root, minutes=1, now=1000.0)
    assert repair_allowed(root, now=1100.0) is False


def test_consume_repair_closes_the_window_and_is_idempotent(root):
    root.mkdir()
    allow_repair(root, minutes=10, now=1000.0)
    consume_repair(root)
    assert repair_allowed(root, now=1000.0) is False
    consume_repair(root)  # nothing to remove: no error
    assert not (root / "repair.allow").exists()


def test_garbage_repair_file_allows_nothing(root):
    root.mkdir()
    (root / "repair.allow").write_text("soon\n")
    assert repair_allowed(root, now=0.0) is False


def test_first_start_interrupted_after_rpmb_creation_completes(tmp_path):
    """Power lost between creating rpmb.bin and the first sealed write: counter 0, no key ever existed."""
    from tee_sim.rpmb import Rpmb
    from tee_sim.sealed import derive, hardware_unique_key

    root = tmp_path / "state"
    root.mkdir()
    huk = hardware_unique_key(root / "otp.bin", "serial-1", create=True)
    Rpmb(root / "rpmb.bin", derive(huk, b"rpmb")).create()
    storage = open_storage(root, "serial-1")
    assert storage.state.device_key is None and (root / "sealed.bin").exists()
    assert storage.rpmb.header.state_counter == 1


def test_only_otp_left_is_refused_with_the_way_out(tmp_path):
    from tee_sim.sealed import hardware_unique_key

    root = tmp_path / "state"
    root.mkdir()
    hardware_unique_key(root / "otp.bin", "serial-1", create=True)
    with pytest.raises(StorageError, match="interrupted first start or a wiped state"):
        open_storage(root, "serial-1")
    assert not (root / "sealed.bin").exists()
