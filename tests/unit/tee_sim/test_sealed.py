"""tee_sim.sealed: the hardware-unique key, AES-GCM sealed state and its RPMB rollback counter."""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from tee_sim.rpmb import HEADER_SIZE, Rpmb
from tee_sim.sealed import (RollbackDetected, SealedStateError, SealedStore, State, derive,
                            hardware_unique_key)

HUK = b"\x11" * 32


@pytest.fixture
def rpmb(tmp_path: Path):
    r = Rpmb(tmp_path / "rpmb.bin", derive(HUK, b"rpmb"))
    r.create()
    yield r
    r.close()


def store(tmp_path: Path, rpmb: Rpmb, huk: bytes = HUK) -> SealedStore:
    return SealedStore(tmp_path / "sealed.bin", derive(huk, b"sealed-state"), rpmb)


def state(n: int) -> State:
    return State(device_key=bytes([n]) * 32, pseudonym_key=bytes([n + 1]) * 32, created=1000.0 + n)


def reopen_rpmb(rpmb: Rpmb) -> Rpmb:
    rpmb.close()
    r = Rpmb(rpmb.path, rpmb._key)
    r.open()
    return r


# -- keys ------------------------------------------------------------------------------------------


def test_derive_separates_labels_and_keys():
    a, b = derive(HUK, b"rpmb"), derive(HUK, b"sealed-state")
    assert len(a) == len(b) == 32
    assert a != b
    assert derive(HUK, b"rpmb") == a
    assert derive(b"\x12" * 32, b"rpmb") != a


def test_hardware_unique_key_creates_otp_once_read_only(tmp_path):
    otp = tmp_path / "otp.bin"
    huk = hardware_unique_key(otp, "SN-1", create=True)
    assert len(otp.read_bytes()) == 32
    assert otp.stat().st_mode & 0o777 == 0o400
    assert hardware_unique_key(otp, "SN-1", create=True) == huk  # an existing secret is never replaced
    assert hardware_unique_key(otp, "SN-1", create=False) == huk
    assert hardware_unique_key(otp, "SN-2", create=False) != huk


def test_hardware_unique_key_missing_otp_without_create_raises(tmp_path):
    with pytest.raises(SealedStateError, match="provisioned secret missing"):
        hardware_unique_key(tmp_path / "otp.bin", "SN-1", create=False)
    assert not (tmp_path / "otp.bin").exists()


def test_hardware_unique_key_wrong_otp_size_raises(tmp_path):
    otp = tmp_path / "otp.bin"
    otp.write_bytes(b"\0" * 31)
    with pytest.raises(SealedStateError, match="31 bytes, expected 32"):
        hardware_unique_key(otp, "SN-1", create=False)


# -- state ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [state(1), State(device_key=None, pseudonym_key=b"\x05" * 32, created=2.5)])
def test_state_json_round_trip(s):
    assert State.from_json(s.to_json()) == s


def test_new_states_get_distinct_pseudonym_keys():
    assert State().pseudonym_key != State().pseudonym_key


# -- write / read ----------------------------------------------------------------------------------------


def test_write_bumps_version_and_rpmb_counter(tmp_path, rpmb):
    st = store(tmp_path, rpmb)
    seq = rpmb.header.seq
    st.write(state(1))
    assert (st.version, rpmb.header.state_counter, rpmb.header.seq) == (1, 1, seq + 1)
    st.write(state(2))
    assert (st.version, rpmb.header.state_counter, rpmb.header.seq) == (2, 2, seq + 2)
    assert not (tmp_path / "sealed.tmp").exists()
    assert (tmp_path / "sealed.bin").stat().st_mode & 0o777 == 0o600


def test_read_returns_the_last_write(tmp_path, rpmb):
    st = store(tmp_path, rpmb)
    st.write(state(1))
    st.write(state(2))
    rpmb = reopen_rpmb(rpmb)
    try:
        fresh = store(tmp_path, rpmb)
        assert fresh.read() == state(2)
        assert (fresh.version, rpmb.header.state_counter) == (2, 2)
        fresh.write(state(3))
        assert (fresh.version, rpmb.header.state_counter) == (3, 3)
    finally:
        rpmb.close()


def test_sealed_file_holds_no_plaintext_key(tmp_path, rpmb):
    store(tmp_path, rpmb).write(state(7))
    blob = (tmp_path / "sealed.bin").read_bytes()
    assert blob[:8] == b"AITNSEAL"
    assert struct.unpack_from(">Q", blob, 8)[0] == 1
    assert state(7).device_key not in blob
    assert state(7).device_key.hex().encode() not in blob


def test_rollback_to_an_older_copy_is_refused(tmp_path, rpmb):
    st = store(tmp_path, rpmb)
    st.write(state(1))
    shutil.copy(tmp_path / "sealed.bin", tmp_path / "old.bin")
    st.write(state(2))
    os.replace(tmp_path / "old.bin", tmp_path / "sealed.bin")
    with pytest.raises(RollbackDetected, match="version 1 is older than the RPMB counter 2"):
        store(tmp_path, rpmb).read()


def test_write_that_finished_before_its_counter_update_is_completed(tmp_path, rpmb):
    st = store(tmp_path, rpmb)
    st.write(state(1))
    st.write(state(2))  # counter 2, newest header copy at (seq % 2)
    seq = rpmb.header.seq
    rpmb.close()
    with open(rpmb.path, "r+b") as f:  # power loss during the counter update: newest copy torn
        f.seek((seq % 2) * HEADER_SIZE + 10)
        f.write(b"\xff\xff")
    rpmb = Rpmb(rpmb.path, rpmb._key)
    rpmb.open()
    try:
        assert rpmb.header.state_counter == 1
        fresh = store(tmp_path, rpmb)
        assert fresh.read() == state(2)
        assert (fresh.version, rpmb.header.state_counter) == (2, 2)
    finally:
        rpmb.close()


def test_version_two_ahead_of_the_counter_is_refused(tmp_path, rpmb):
    st = store(tmp_path, rpmb)
    st.write(state(1))
    st.write(state(2))
    st.write(state(3))
    rpmb.write_header(replace(rpmb.header, state_counter=1))
    with pytest.raises(SealedStateError, match="version 3 is ahead of the RPMB counter 1"):
        store(tmp_path, rpmb).read()


def test_missing_file_is_refused(tmp_path, rpmb):
    store(tmp_path, rpmb).write(state(1))
    (tmp_path / "sealed.bin").unlink()
    with pytest.raises(SealedStateError, match="missing while the RPMB counter is 1"):
        store(tmp_path, rpmb).read()


def test_other_key_cannot_read(tmp_path, rpmb):
    store(tmp_path, rpmb).write(state(1))
    with pytest.raises(SealedStateError, match="cannot be opened with this device's hardware key"):
        store(tmp_path, rpmb, huk=b"\x22" * 32).read()


@pytest.mark.parametrize("offset, message", [
    (0, "not a sealed state file"),        # magic
    (8 + 7, "ahead of the RPMB counter"),  # version 1 -> 0xfe
    (16, "hardware key"),                  # nonce
    (40, "hardware key"),                  # ciphertext
    (-1, "hardware key"),                  # tag
])
def test_bit_flips_are_refused(tmp_path, rpmb, offset, message):
    store(tmp_path, rpmb).write(state(1))
    path = tmp_path / "sealed.bin"
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(SealedStateError, match=message):
        store(tmp_path, rpmb).read()


def test_version_edited_down_to_the_counter_fails_authentication(tmp_path, rpmb):
    st = store(tmp_path, rpmb)
    st.write(state(1))
    shutil.copy(tmp_path / "sealed.bin", tmp_path / "old.bin")
    st.write(state(2))
    blob = bytearray((tmp_path / "old.bin").read_bytes())
    struct.pack_into(">Q", blob, 8, 2)  # claim to be version 2: the version is in the AAD
    (tmp_path / "sealed.bin").write_bytes(bytes(blob))
    with pytest.raises(SealedStateError, match="hardware key"):
        store(tmp_path, rpmb).read()


def test_truncated_file_is_refused(tmp_path, rpmb):
    store(tmp_path, rpmb).write(state(1))
    path = tmp_path / "sealed.bin"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(SealedStateError, match="30 bytes is too short"):
        store(tmp_path, rpmb).read()
