"""agent.tee.chainlog: the normal world's append-only chain file, torn-tail recovery, verification, locking."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from agent.errors import ChainBusy, ChainCorrupt, NotPaired
from agent.tee.chainlog import (HEADER_SIZE, RECORD_SIZE, TAIL_CHECK, UNSYNCED_MAX, ChainLog, ChainReader,
                                Record)
from tee_sim.abi import block as blk

PAIRING = b"\x0a" * 16
TIMELOCK = 2
GENESIS = blk.genesis(b"pairing secret".ljust(32, b"."), PAIRING, TIMELOCK)


def entry(i: int) -> tuple[int, int, bytes]:
    return (i % 2, 2 + i % 3, hashlib.sha256(b"msg" + i.to_bytes(8, "big")).digest())


def pack(height: int, direction: int, command: int, body_digest: bytes, stamp: bytes, hash_: bytes) -> bytes:
    """A record as chainlog documents it: height u64, direction u8, command u32, digest, stamp, hash, crc32."""
    body = struct.pack(">QBI32s32s32s", height, direction, command, body_digest, stamp, hash_)
    return (body + struct.pack(">I", zlib.crc32(body))).ljust(RECORD_SIZE, b"\0")


def offset(height: int) -> int:
    return HEADER_SIZE + height * RECORD_SIZE


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "chain" / "chain.bin"
    ChainLog.create(p, PAIRING, TIMELOCK, GENESIS)
    return p


def build(path: Path, n: int, sync_every: int = 10) -> list[blk.Block]:
    """Append n blocks (heights 1..n) in small batches, syncing now and then; returns genesis + the blocks."""
    blocks = [GENESIS]
    with ChainLog.open(path) as log:
        i = 0
        while i < n:
            batch = [entry(j) for j in range(i, min(n, i + 3))]
            blocks += log.append(batch)
            i += len(batch)
            if i % sync_every < 3:
                log.sync()
    return blocks


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[bytes, list[blk.Block]]:
    """The bytes of a 200-block chain file, built once."""
    p = tmp_path_factory.mktemp("pristine") / "chain.bin"
    ChainLog.create(p, PAIRING, TIMELOCK, GENESIS)
    blocks = build(p, 200)
    return p.read_bytes(), blocks


def as_record(b: blk.Block) -> Record:
    return Record(b.height, b.direction, b.command, b.body_digest, b.stamp, b.hash)


# -- create / open / append -------------------------------------------------------------------------


def test_create_writes_header_and_genesis(path):
    assert path.stat().st_size == HEADER_SIZE + RECORD_SIZE
    assert path.stat().st_mode & 0o777 == 0o600
    assert not path.with_suffix(".tmp").exists()
    raw = path.read_bytes()
    assert raw[:8] == b"AITNCHN1"
    assert raw[HEADER_SIZE:] == pack(0, GENESIS.direction, GENESIS.command, GENESIS.body_digest, GENESIS.stamp,
                                     GENESIS.hash)
    with ChainLog.open(path) as log:
        assert (log.pairing_id, log.timelock, log.dropped) == (PAIRING, TIMELOCK, 0)
        assert log.head == as_record(GENESIS)


def test_append_links_blocks_and_reopen_sees_them(path):
    with ChainLog.open(path) as log:
        blocks = log.append([entry(0), entry(1)])
        assert blocks[0] == blk.next_block(GENESIS.hash, 1, *entry(0), TIMELOCK)
        assert blocks[1] == blk.next_block(blocks[0].hash, 2, *entry(1), TIMELOCK)
        assert log.head == as_record(blocks[1])
        blocks += log.append([entry(2)])
        log.sync()
    assert path.stat().st_size == HEADER_SIZE + 4 * RECORD_SIZE
    with ChainLog.open(path) as log:
        assert log.head == as_record(blocks[2])
        assert log.dropped == 0
        assert log.verify() == 4


def test_record_hash_at_and_records(path):
    blocks = build(path, 30)
    with ChainLog.open(path) as log:
        assert log.record(0) == as_record(GENESIS)
        assert log.record(17) == as_record(blocks[17])
        assert log.hash_at(30) == blocks[30].hash
        assert log.hash_at(5) == blocks[5].hash
        assert list(log.records()) == [as_record(b) for b in blocks]
        assert [r.height for r in log.records(25)] == [25, 26, 27, 28, 29, 30]
        assert list(log.records(31)) == []


@pytest.mark.parametrize("height", [-1, 31, 1000])
def test_record_out_of_range_raises(path, height):
    build(path, 30)
    with ChainLog.open(path) as log, pytest.raises(ChainCorrupt, match=f"no block at height {height}"):
        log.record(height)


def test_records_spans_read_chunks(path):
    blocks = build(path, 1100, sync_every=100)
    with ChainLog.open(path) as log:
        assert [r.hash for r in log.records()] == [b.hash for b in blocks]
        assert log.verify() == 1101


def test_truncate_drops_the_tail(path):
    blocks = build(path, 20)
    with ChainLog.open(path) as log:
        log.truncate(12)
        assert log.head == as_record(blocks[12])
        assert path.stat().st_size == offset(13)
        new = log.append([entry(100)])
        assert (new[0].height, new[0].prev_hash) == (13, blocks[12].hash)
        log.truncate(13)  # at or above the head: nothing to do
        log.truncate(50)
        assert log.head.height == 13
    with ChainLog.open(path) as log:
        assert (log.head.hash, log.dropped, log.verify()) == (new[0].hash, 0, 14)


def test_hash_at_answers_the_blocks_on_file_after_truncation_reopen_and_trimming(path, monkeypatch):
    """Hashes held in memory never outlive the blocks they name: a truncated height answers its
    replacement; a reopened chain, or one past the in-memory window, answers what the file holds."""
    import agent.tee.chainlog as chainlog

    monkeypatch.setattr(chainlog, "RECENT_HASHES", 8)
    blocks = build(path, 20)
    with ChainLog.open(path) as log:
        assert [log.hash_at(h) for h in range(21)] == [b.hash for b in blocks]
        log.truncate(12)
        new = log.append([entry(200), entry(201)])
        assert [log.hash_at(h) for h in (12, 13, 14)] == [blocks[12].hash, new[0].hash, new[1].hash]
        with pytest.raises(ChainCorrupt, match="no block at height 15"):
            log.hash_at(15)
        for i in range(30):  # past 2 * RECENT_HASHES: the window is trimmed, old heights come from the file
            new += log.append([entry(300 + i)])
        assert len(log._recent) <= 2 * chainlog.RECENT_HASHES + 1
        assert log.hash_at(5) == blocks[5].hash
        assert log.hash_at(log.head.height) == new[-1].hash
    with ChainLog.open(path) as log:
        assert log.hash_at(13) == new[0].hash and log.hash_at(log.head.height) == new[-1].hash


# -- open refusals ------------------------------------------------------------------------------------


def test_open_missing_file_raises_not_paired(tmp_path):
    with pytest.raises(NotPaired, match="run `aitn tee pair`"):
        ChainLog.open(tmp_path / "nothing.bin")


@pytest.mark.parametrize("byte", [0, 9, 25, 29])  # magic, pairing id, timelock, crc
def test_bad_header_raises_chain_corrupt(path, byte):
    raw = bytearray(path.read_bytes())
    raw[byte] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(ChainCorrupt, match="bad header"):
        ChainLog.open(path)


def test_header_without_genesis_raises_chain_corrupt(path):
    os.truncate(path, HEADER_SIZE + RECORD_SIZE - 1)
    with pytest.raises(ChainCorrupt, match="no genesis record"):
        ChainLog.open(path)


@pytest.mark.parametrize("size", [0, 16])
def test_file_shorter_than_a_header_raises_chain_corrupt(path, size):
    os.truncate(path, size)
    try:
        ChainLog.open(path)
    except ChainCorrupt:
        return
    except struct.error as e:
        raise AssertionError(f"struct.error: {e}") from None
    raise AssertionError("opened")


def test_corrupt_genesis_raises_chain_corrupt(path):
    build(path, 5)
    raw = bytearray(path.read_bytes())
    raw[offset(0) + 50] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ChainCorrupt, match="record 0 does not verify"):
        ChainLog.open(path)


# -- locking ----------------------------------------------------------------------------------------------


def test_second_open_in_the_same_process_is_busy(path):
    with ChainLog.open(path):
        with pytest.raises(ChainBusy, match="in use"):
            ChainLog.open(path)
    with ChainLog.open(path) as log:  # released on close
        assert log.head.height == 0


def test_open_from_another_process_is_busy(path):
    code = ("import sys\nfrom pathlib import Path\nfrom agent.errors import ChainBusy\n"
            "from agent.tee.chainlog import ChainLog\n"
            "try:\n    ChainLog.open(Path(sys.argv[1]))\nexcept ChainBusy:\n    sys.exit(22)\nsys.exit(0)\n")
    run = lambda: subprocess.run([sys.executable, "-c", code, str(path)], cwd=Path(__file__).parents[3],  # noqa: E731
                                 timeout=60).returncode
    with ChainLog.open(path):
        assert run() == 22
    assert run() == 0


def test_open_waits_for_another_process_to_let_go(path):
    code = ("import sys, time\nfrom pathlib import Path\nfrom agent.tee.chainlog import ChainLog\n"
            "with ChainLog.open(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(0.6)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=Path(__file__).parents[3],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with ChainLog.open(path, wait_s=30) as log:
            waited = time.monotonic() - t0
            assert holder.poll() is not None   # we got it only once the holder had let go
            assert log.head.height == 0
        assert 0.2 < waited < 30
    finally:
        holder.wait(timeout=60)


@pytest.mark.parametrize("opener", [ChainLog.open, ChainReader.open])
def test_open_gives_up_after_its_wait_and_says_so(path, opener):
    with ChainLog.open(path):
        t0 = time.monotonic()
        with pytest.raises(ChainBusy, match=r"in use by another normal-world process \(waited 0.3 s\)"):
            opener(path, 0.3)
        assert time.monotonic() - t0 >= 0.3
    with opener(path, 0.3):   # the failed waits left nothing locked
        pass


def test_readers_share_the_lock(path):
    with ChainReader.open(path), ChainReader.open(path, 0):
        with pytest.raises(ChainBusy):
            ChainLog.open(path)


def test_failed_open_releases_its_descriptor_and_lock(path):
    raw = bytearray(path.read_bytes())
    raw[0] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ChainCorrupt):
        ChainLog.open(path)
    raw[0] ^= 1
    path.write_bytes(bytes(raw))
    with ChainLog.open(path) as log:
        assert log.head.height == 0


# -- torn tail ---------------------------------------------------------------------------------------------


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_truncation_at_every_byte_of_the_last_records(tmp_path, pristine):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    top = len(blocks) - 1
    for cut in range(offset(top - 3), len(data) + 1):
        write(path, data[:cut])
        intact = (cut - HEADER_SIZE) // RECORD_SIZE - 1  # height of the last whole record
        partial = (cut - HEADER_SIZE) % RECORD_SIZE != 0
        with ChainLog.open(path) as log:
            assert (log.head.height, log.head.hash, log.dropped) == (intact, blocks[intact].hash, int(partial)), cut
        assert path.stat().st_size == offset(intact + 1), cut
    with ChainLog.open(path) as log:
        assert log.verify() == top + 1


@pytest.mark.parametrize("torn", [1, 2, 5, UNSYNCED_MAX])
@pytest.mark.parametrize("fill", ["zeros", "random", "ones"])
def test_overwritten_last_records_are_dropped(tmp_path, pristine, torn, fill):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    top = len(blocks) - 1
    rng = random.Random(torn)
    junk = {"zeros": bytes(torn * RECORD_SIZE), "ones": b"\xff" * (torn * RECORD_SIZE),
            "random": rng.randbytes(torn * RECORD_SIZE)}[fill]
    write(path, data[:offset(top + 1 - torn)] + junk)
    with ChainLog.open(path) as log:
        assert (log.head.height, log.dropped) == (top - torn, torn)
        assert log.head.hash == blocks[top - torn].hash
        assert log.verify() == top - torn + 1
    assert path.stat().st_size == offset(top - torn + 1)
    with ChainLog.open(path) as log:  # recovery is durable: nothing left to drop
        assert (log.head.height, log.dropped) == (top - torn, 0)


def test_torn_tail_followed_by_a_partial_record(tmp_path, pristine):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    write(path, data[:offset(195)] + bytes(2 * RECORD_SIZE) + data[offset(197):offset(197) + 40])
    with ChainLog.open(path) as log:
        assert (log.head.height, log.dropped) == (194, 3)


def test_tail_of_valid_records_that_do_not_link_is_dropped(tmp_path, pristine):
    """A rewrite after truncate that tore: old records with good CRCs left behind a new one."""
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    top = len(blocks) - 1
    write(path, data)
    with ChainLog.open(path) as log:
        log.truncate(top - 3)
        new = log.append([entry(500)])
        log.sync()
    with open(path, "ab") as f:  # the old records top-1, top, as if the truncate had not reached disk
        f.write(data[offset(top - 1):])
    with ChainLog.open(path) as log:
        assert (log.head.height, log.head.hash, log.dropped) == (top - 2, new[0].hash, 2)


def test_forged_record_with_good_crc_at_the_tail_is_dropped(tmp_path, pristine):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    top = len(blocks) - 1
    b = blocks[top]
    write(path, data[:offset(top)] + pack(top, b.direction, b.command, b.body_digest, b.stamp, b"\x01" * 32))
    with ChainLog.open(path) as log:
        assert (log.head.height, log.dropped) == (top - 1, 1)


def test_damage_just_within_unsynced_max_is_a_torn_tail(tmp_path, pristine):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    count = len(blocks)
    raw = bytearray(data)
    raw[offset(count - UNSYNCED_MAX) + 3] ^= 1
    write(path, bytes(raw))
    with ChainLog.open(path) as log:
        assert (log.head.height, log.dropped) == (count - UNSYNCED_MAX - 1, UNSYNCED_MAX)


@pytest.mark.parametrize("from_end", [UNSYNCED_MAX + 1, UNSYNCED_MAX + 30, TAIL_CHECK])
def test_damage_deeper_than_unsynced_max_raises_chain_corrupt(tmp_path, pristine, from_end):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    height = len(blocks) - from_end
    raw = bytearray(data)
    raw[offset(height) + 3] ^= 1
    write(path, bytes(raw))
    with pytest.raises(ChainCorrupt, match=f"(block|record) {height} does not verify"):
        ChainLog.open(path)
    assert path.read_bytes() == bytes(raw)  # nothing was cut


# -- verify ---------------------------------------------------------------------------------------------


def forge(blocks: list[blk.Block], height: int, field: str) -> bytes:
    b = blocks[height]
    stamp, hash_ = b.stamp, b.hash
    if field == "stamp":
        stamp = bytes(x ^ 0x80 for x in stamp)
    else:
        hash_ = bytes(x ^ 0x80 for x in hash_)
    return pack(b.height, b.direction, b.command, b.body_digest, stamp, hash_)


@pytest.mark.parametrize("field, message", [("stamp", "time-lock stamp does not verify"),
                                            ("hash", "hash does not verify")])
def test_verify_detects_an_altered_record_with_a_valid_crc(path, field, message):
    blocks = build(path, 40)
    with ChainLog.open(path) as log:
        assert log.verify() == 41
        with open(path, "r+b") as f:
            f.seek(offset(20))
            f.write(forge(blocks, 20, field))
        assert log.record(20).height == 20  # the CRC is fine
        with pytest.raises(ChainCorrupt, match=f"block 20: {message}"):
            log.verify()


def test_verify_detects_an_altered_body_digest(path):
    blocks = build(path, 10)
    b = blocks[4]
    with ChainLog.open(path) as log:
        with open(path, "r+b") as f:
            f.seek(offset(4))
            f.write(pack(4, b.direction, b.command, b"\x00" * 32, b.stamp, b.hash))
        with pytest.raises(ChainCorrupt, match="block 4: time-lock stamp does not verify"):
            log.verify()


def test_altered_record_deeper_than_the_open_check_is_found_by_verify(tmp_path, pristine):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    height = len(blocks) - TAIL_CHECK - 10
    raw = bytearray(data)
    raw[offset(height):offset(height + 1)] = forge(blocks, height, "hash")
    write(path, bytes(raw))
    with ChainLog.open(path) as log:
        assert log.head.height == len(blocks) - 1  # open only checks the tail
        with pytest.raises(ChainCorrupt, match=f"block {height}: hash does not verify"):
            log.verify()


def test_bad_crc_deep_in_the_file_is_found_by_records(tmp_path, pristine):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    raw = bytearray(data)
    raw[offset(10) + 100] ^= 1
    write(path, bytes(raw))
    with ChainLog.open(path) as log:
        with pytest.raises(ChainCorrupt, match="block 10 fails its checksum"):
            log.record(10)
        with pytest.raises(ChainCorrupt, match="block 10 fails its checksum"):
            log.verify()


# -- the read-only reader (chain diff, self-test, replay) ------------------------------------------------


def test_reader_scans_a_good_chain_and_reads_records(path):
    blocks = build(path, 30)
    with ChainReader.open(path) as r:
        assert (r.pairing_id, r.timelock, r.records, r.partial_bytes) == (PAIRING, TIMELOCK, 31, 0)
        scan = r.scan()
        assert scan.head == as_record(blocks[30]) and scan.bad_height is None and not scan.torn_tail
        assert r.record(17) == as_record(blocks[17])
        assert r.record(31) is None and r.record(-1) is None


@pytest.mark.parametrize("field, reason", [("stamp", "time-lock stamp does not verify"),
                                           ("hash", "hash does not verify")])
def test_reader_finds_the_first_altered_block_and_repairs_nothing(tmp_path, pristine, field, reason):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    raw = bytearray(data)
    raw[offset(40):offset(41)] = forge(blocks, 40, field)
    raw += b"\x01" * 50  # and a torn partial record
    write(path, bytes(raw))
    with ChainReader.open(path) as r:
        scan = r.scan()
        assert (scan.bad_height, scan.bad_reason, scan.head) == (40, reason, as_record(blocks[39]))
        assert not scan.torn_tail and scan.partial_bytes == 50 and scan.records == len(blocks)
    assert path.read_bytes() == bytes(raw)  # read-only: ChainLog.open would have cut the partial record


def test_reader_calls_damage_near_the_end_a_torn_tail(tmp_path, pristine):
    data, blocks = pristine
    path = tmp_path / "chain.bin"
    raw = bytearray(data)
    height = len(blocks) - UNSYNCED_MAX
    raw[offset(height) + 3] ^= 1
    write(path, bytes(raw))
    with ChainReader.open(path) as r:
        scan = r.scan()
        assert (scan.bad_height, scan.bad_reason, scan.torn_tail) == (height, "fails its checksum", True)
    with ChainLog.open(path) as log:  # and open agrees: dropped, not refused
        assert log.head.height == height - 1


def test_reader_shares_the_lock_with_readers_not_with_the_writer(path):
    with ChainReader.open(path), ChainReader.open(path):
        pass
    with ChainLog.open(path):
        with pytest.raises(ChainBusy):
            ChainReader.open(path)
    with ChainReader.open(path):
        with pytest.raises(ChainBusy):
            ChainLog.open(path)


def test_reader_refuses_a_missing_file_and_a_bad_header(tmp_path, path):
    with pytest.raises(NotPaired):
        ChainReader.open(tmp_path / "none.bin")
    raw = bytearray(path.read_bytes())
    raw[3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ChainCorrupt, match="bad header"):
        ChainReader.open(path)
