"""tee_sim.rpmb: authenticated header A/B copies and chain slots in one file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tee_sim.rpmb import (CHECKPOINT_EVERY, CHECKPOINT_OFFSET, CHECKPOINT_SLOTS, FILE_SIZE, HEADER_SIZE,
                          RING_OFFSET, RING_SLOTS, SLOT_SIZE, Header, Rpmb, RpmbError, Slot)

KEY = bytes(range(32))
PAIRING = b"P" * 16
OTHER_PAIRING = b"Q" * 16


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def slot(height: int, start: int | None = None, end: int | None = None) -> Slot:
    return Slot(height, height if start is None else start, height if end is None else end,
                height.to_bytes(8, "big") * 4, height % 2, 7, bytes([height % 256]) * 32)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "rpmb.bin"


@pytest.fixture
def rpmb(path: Path):
    r = Rpmb(path, KEY)
    r.create()
    yield r
    r.close()


def reopen(path: Path, key: bytes = KEY) -> Rpmb:
    r = Rpmb(path, key)
    r.open()
    return r


# -- lifecycle -------------------------------------------------------------------------------------


def test_create_makes_a_file_of_the_layout_size_with_mode_0600(rpmb, path):
    assert path.stat().st_size == FILE_SIZE == 2 * HEADER_SIZE + (RING_SLOTS + CHECKPOINT_SLOTS) * SLOT_SIZE
    assert path.stat().st_mode & 0o777 == 0o600
    assert rpmb.header == Header(seq=2)  # both copies written


def test_create_refuses_an_existing_file(rpmb, path):
    with pytest.raises(FileExistsError):
        Rpmb(path, KEY).create()


def test_header_round_trips_every_field(rpmb, path):
    rpmb.write_header(Header(state_counter=9, failures=4, lockout_until=1234.5, paired=True,
                             pairing_id=PAIRING, timelock=77))
    rpmb.close()
    r = reopen(path)
    try:
        assert r.header == Header(seq=3, state_counter=9, failures=4, lockout_until=1234.5, paired=True,
                                  pairing_id=PAIRING, timelock=77)
    finally:
        r.close()


def test_write_header_ignores_the_callers_seq_and_counts_up(rpmb):
    rpmb.write_header(Header(seq=1000, state_counter=1))
    assert rpmb.header.seq == 3
    rpmb.write_header(Header(seq=0, state_counter=2))
    assert rpmb.header.seq == 4


def test_open_missing_file_raises(path):
    with pytest.raises(RpmbError, match="missing"):
        Rpmb(path, KEY).open()


def test_open_with_wrong_mac_key_raises(rpmb, path):
    rpmb.close()
    with pytest.raises(RpmbError, match="no valid header"):
        reopen(path, key=b"\x01" * 32)


@pytest.mark.parametrize("size", [0, FILE_SIZE - 1, FILE_SIZE + 1])
def test_open_with_wrong_file_size_raises(rpmb, path, size):
    rpmb.close()
    os.truncate(path, size)
    with pytest.raises(RpmbError, match=f"size {size}, expected {FILE_SIZE}"):
        reopen(path)


# -- header A/B --------------------------------------------------------------------------------------


def write_three_headers(rpmb: Rpmb) -> None:
    for counter in (10, 11, 12):
        rpmb.write_header(Header(state_counter=counter))
    assert rpmb.header.seq == 5


def test_newest_header_wins(rpmb, path):
    write_three_headers(rpmb)
    rpmb.close()
    r = reopen(path)
    assert (r.header.seq, r.header.state_counter) == (5, 12)
    r.close()


@pytest.mark.parametrize("byte", [0, 8, 20, 40, 80])  # magic, seq, counter, pairing id, MAC
def test_corrupt_newest_header_falls_back_to_the_previous_one(rpmb, path, byte):
    write_three_headers(rpmb)
    rpmb.close()
    flip_byte(path, (5 % 2) * HEADER_SIZE + byte)
    r = reopen(path)
    try:
        assert (r.header.seq, r.header.state_counter) == (4, 11)
        # The next write goes over the corrupt copy and becomes the newest again.
        r.write_header(Header(state_counter=13))
        assert r.header.seq == 5
    finally:
        r.close()
    r = reopen(path)
    assert (r.header.seq, r.header.state_counter) == (5, 13)
    r.close()


def test_corrupt_older_header_is_harmless(rpmb, path):
    write_three_headers(rpmb)
    rpmb.close()
    flip_byte(path, (4 % 2) * HEADER_SIZE + 20)
    r = reopen(path)
    assert (r.header.seq, r.header.state_counter) == (5, 12)
    r.close()


def test_both_headers_corrupt_raises(rpmb, path):
    write_three_headers(rpmb)
    rpmb.close()
    flip_byte(path, 20)
    flip_byte(path, HEADER_SIZE + 20)
    with pytest.raises(RpmbError, match="no valid header"):
        reopen(path)


def test_torn_header_write_of_zeros_falls_back(rpmb, path):
    write_three_headers(rpmb)
    rpmb.close()
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE)  # copy of seq 5
        f.write(bytes(40))
    r = reopen(path)
    assert r.header.state_counter == 11
    r.close()


# -- chain slots ---------------------------------------------------------------------------------------


def test_fresh_file_has_no_slots(rpmb):
    assert rpmb.read_slots(PAIRING) == ([], [])


def test_written_slots_come_back(rpmb, path):
    slots = [slot(h, 5, 9) for h in range(5, 10)]
    rpmb.write_slots(slots, PAIRING)
    rpmb.close()
    r = reopen(path)
    ring, cps = r.read_slots(PAIRING)
    r.close()
    assert sorted(ring, key=lambda s: s.height) == slots
    assert cps == []


def test_slots_land_at_height_mod_ring_size(rpmb, path):
    rpmb.write_slots([slot(RING_SLOTS + 3)], PAIRING)
    with open(path, "rb") as f:
        f.seek(RING_OFFSET + 3 * SLOT_SIZE)
        assert int.from_bytes(f.read(8), "big") == RING_SLOTS + 3


def test_a_later_height_overwrites_its_ring_slot(rpmb):
    rpmb.write_slots([slot(3)], PAIRING)
    rpmb.write_slots([slot(3 + RING_SLOTS)], PAIRING)
    ring, _ = rpmb.read_slots(PAIRING)
    assert [s.height for s in ring] == [3 + RING_SLOTS]


def test_slots_of_another_pairing_are_not_returned(rpmb):
    rpmb.write_slots([slot(1), slot(2)], OTHER_PAIRING)
    rpmb.write_slots([slot(3)], PAIRING)
    assert [s.height for s in rpmb.read_slots(PAIRING)[0]] == [3]
    assert [s.height for s in rpmb.read_slots(OTHER_PAIRING)[0]] == [1, 2]


def test_slots_under_another_mac_key_are_not_returned(rpmb, path):
    rpmb.write_slots([slot(1)], PAIRING)
    other = Rpmb(path, b"\x02" * 32)
    other._fd = rpmb._fd  # same file, another key: no header needed to read slots
    assert other.read_slots(PAIRING) == ([], [])


def test_checkpoint_heights_are_copied_to_the_checkpoint_area(rpmb):
    heights = [0, CHECKPOINT_EVERY - 1, CHECKPOINT_EVERY, CHECKPOINT_EVERY + 1, 3 * CHECKPOINT_EVERY]
    rpmb.write_slots([slot(h) for h in heights], PAIRING)
    ring, cps = rpmb.read_slots(PAIRING)
    assert sorted(s.height for s in ring) == heights
    assert [s.height for s in cps] == [0, CHECKPOINT_EVERY, 3 * CHECKPOINT_EVERY]
    assert cps[1] == slot(CHECKPOINT_EVERY)


def test_checkpoint_survives_its_ring_slot_being_overwritten(rpmb):
    rpmb.write_slots([slot(CHECKPOINT_EVERY)], PAIRING)
    rpmb.write_slots([slot(CHECKPOINT_EVERY + RING_SLOTS + 1)], PAIRING)  # another ring slot
    rpmb.write_slots([slot(CHECKPOINT_EVERY + 2 * RING_SLOTS + 1)], PAIRING)
    rpmb.write_slots([slot(CHECKPOINT_EVERY + RING_SLOTS)], PAIRING)  # a checkpoint too, same ring slot
    ring, cps = rpmb.read_slots(PAIRING)
    assert CHECKPOINT_EVERY not in [s.height for s in ring]
    assert [s.height for s in cps] == [CHECKPOINT_EVERY, CHECKPOINT_EVERY + RING_SLOTS]


def test_checkpoint_area_wraps_after_checkpoint_slots(rpmb, path):
    h = CHECKPOINT_EVERY * CHECKPOINT_SLOTS  # same checkpoint index as height 0
    rpmb.write_slots([slot(0)], PAIRING)
    rpmb.write_slots([slot(h)], PAIRING)
    assert [s.height for s in rpmb.read_slots(PAIRING)[1]] == [h]
    with open(path, "rb") as f:
        f.seek(CHECKPOINT_OFFSET)
        assert int.from_bytes(f.read(8), "big") == h


@pytest.mark.parametrize("byte", [0, 30, 90, 100])  # height, hash, body digest, MAC
def test_a_corrupted_slot_is_not_returned(rpmb, path, byte):
    rpmb.write_slots([slot(h, 4, 6) for h in (4, 5, 6)], PAIRING)
    flip_byte(path, RING_OFFSET + 5 * SLOT_SIZE + byte)
    assert [s.height for s in rpmb.read_slots(PAIRING)[0]] == [4, 6]


def test_a_corrupted_checkpoint_copy_is_not_returned_but_its_ring_slot_is(rpmb, path):
    rpmb.write_slots([slot(CHECKPOINT_EVERY)], PAIRING)
    flip_byte(path, CHECKPOINT_OFFSET + 1 * SLOT_SIZE + 40)
    ring, cps = rpmb.read_slots(PAIRING)
    assert [s.height for s in ring] == [CHECKPOINT_EVERY]
    assert cps == []


def test_non_adjacent_slots_in_one_write_all_land(rpmb):
    heights = [RING_SLOTS - 2, RING_SLOTS - 1, RING_SLOTS, RING_SLOTS + 1, RING_SLOTS + 7]  # wraps the ring
    rpmb.write_slots([slot(h) for h in heights], PAIRING)
    ring, cps = rpmb.read_slots(PAIRING)
    assert sorted(s.height for s in ring) == heights
    assert [s.height for s in cps] == [RING_SLOTS]  # 1024 is a multiple of CHECKPOINT_EVERY
