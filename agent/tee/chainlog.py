"""The normal world's copy of the private chain: one append-only file of fixed-size records.

    header   128 B   magic "AITNCHN1", pairing id (16 B), time-lock iterations (u32), crc32
    record   128 B   height u64, direction u8, command u32, body digest, stamp, hash (32 B each), crc32

Records are appended with one write per exchange and made durable with fdatasync when the
protocol requires it (before a PROOF or a commit-triggering request). After a crash, the tail
written since the last fdatasync may be torn: on open, records at the end with a bad checksum, a
bad link or a short length are dropped (and reported), never accepted. A bad record *before* a
good one is corruption, not a torn tail, and is refused. The file is locked (flock) while open:
one normal-world process drives the pairing at a time; another one may wait for it (``wait_s``), as a
command run by hand waits for the agent service's pass to end.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tee_sim.abi import block as blk

from ..errors import ChainBusy, ChainCorrupt, NotPaired
from ..fsio import write_atomic

RECORD_SIZE = 128
HEADER_SIZE = 128
_MAGIC = b"AITNCHN1"
_HDR = struct.Struct(">8s16sI")
_REC = struct.Struct(">QBI32s32s32s")
#: At most this many records are written between two fdatasyncs: a bad record deeper than that is damage.
UNSYNCED_MAX = blk.MAX_TENTATIVE + 4
#: Records checked at open.
TAIL_CHECK = 2 * UNSYNCED_MAX
#: Hashes of this many most recent blocks are kept in memory: challenges mostly ask for recent
#: heights, and answering from memory spares a read per challenged block.
RECENT_HASHES = 1024


def _lock(fd: int, op: int, path: Path, wait_s: float) -> None:
    """flock ``op`` within ``wait_s`` seconds (polled, so a stuck holder cannot hang us); closes ``fd``
    and raises ChainBusy when the lock stays taken."""
    deadline = time.monotonic() + max(0.0, wait_s)
    pause = 0.02
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                os.close(fd)
                waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                raise ChainBusy(f"{path}: in use by another normal-world process{waited}") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.25)


def _pack_record(b: blk.Block) -> bytes:
    body = _REC.pack(b.height, b.direction, b.command, b.body_digest, b.stamp, b.hash)
    return (body + struct.pack(">I", zlib.crc32(body))).ljust(RECORD_SIZE, b"\0")


@dataclass(slots=True)  # treated as immutable
class Record:
    height: int
    direction: int
    command: int
    body_digest: bytes
    stamp: bytes
    hash: bytes


def _unpack_record(raw: bytes) -> Record | None:
    if len(raw) != RECORD_SIZE:
        return None
    body = raw[:_REC.size]
    (crc,) = struct.unpack_from(">I", raw, _REC.size)
    if zlib.crc32(body) != crc:
        return None
    return Record(*_REC.unpack(body))


def _read_header(fd: int, path: Path) -> tuple[bytes, int]:
    """(pairing id, time-lock iterations); raises ChainCorrupt."""
    raw = os.pread(fd, HEADER_SIZE, 0)
    if len(raw) < HEADER_SIZE:
        raise ChainCorrupt(f"{path}: {len(raw)} bytes, shorter than the chain header")
    magic, pairing_id, timelock = _HDR.unpack_from(raw)
    (crc,) = struct.unpack_from(">I", raw, _HDR.size)
    if magic != _MAGIC or zlib.crc32(raw[:_HDR.size]) != crc:
        raise ChainCorrupt(f"{path}: not a chain file (bad header)")
    return pairing_id, timelock


@dataclass(frozen=True)
class OpenReport:
    dropped: int  # torn records dropped at open


class ChainLog:
    def __init__(self, path: Path, fd: int, pairing_id: bytes, timelock: int) -> None:
        self.path = path
        self._fd = fd
        self.pairing_id = pairing_id
        self.timelock = timelock
        self.head: Record
        self.dropped = 0
        self._recent: dict[int, bytes] = {}  # height -> hash of blocks this process verified or wrote

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, pairing_id: bytes, timelock: int, genesis: blk.Block) -> None:
        """Write a new chain holding only genesis, atomically (tmp, fsync, rename, fsync dir)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        hdr = _HDR.pack(_MAGIC, pairing_id, timelock)
        hdr = (hdr + struct.pack(">I", zlib.crc32(hdr))).ljust(HEADER_SIZE, b"\0")
        write_atomic(path, hdr + _pack_record(genesis))

    @classmethod
    def open(cls, path: Path, wait_s: float = 0.0) -> "ChainLog":
        """Lock (waiting up to ``wait_s`` for another process to let go), check and recover the chain."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise NotPaired(f"{path}: no chain here; run `aitn tee pair`") from None
        _lock(fd, fcntl.LOCK_EX, path, wait_s)
        try:
            pairing_id, timelock = _read_header(fd, path)
            log = cls(path, fd, pairing_id, timelock)
            log._recover()
            return log
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def __enter__(self) -> "ChainLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- recovery --------------------------------------------------------------------------------

    def _recover(self) -> None:
        size = os.fstat(self._fd).st_size
        count = (size - HEADER_SIZE) // RECORD_SIZE
        if count < 1:
            raise ChainCorrupt(f"{self.path}: no genesis record")
        first = max(0, count - TAIL_CHECK)
        raw = os.pread(self._fd, (count - first) * RECORD_SIZE, HEADER_SIZE + first * RECORD_SIZE)
        records = [_unpack_record(raw[i * RECORD_SIZE:(i + 1) * RECORD_SIZE]) for i in range(count - first)]
        good = 0  # records of the window that verify, in order from the start of the window
        prev = records[0]
        if prev is None or prev.height != first:
            raise ChainCorrupt(f"{self.path}: record {first} does not verify")
        good = 1
        recent = {prev.height: prev.hash}
        for rec in records[1:]:
            if rec is None or rec.height != prev.height + 1:
                break
            b = blk.next_block(prev.hash, rec.height, rec.direction, rec.command, rec.body_digest, self.timelock)
            if b.hash != rec.hash or b.stamp != rec.stamp:
                break
            prev, good = rec, good + 1
            recent[rec.height] = rec.hash
        self._recent = recent
        keep = first + good
        if count - keep > UNSYNCED_MAX:
            raise ChainCorrupt(f"{self.path}: block {keep} does not verify, {count - keep - 1} blocks after it: "
                               "damage, not a torn tail")
        self.dropped = count - keep + (1 if (size - HEADER_SIZE) % RECORD_SIZE else 0)
        if size != HEADER_SIZE + keep * RECORD_SIZE:
            os.ftruncate(self._fd, HEADER_SIZE + keep * RECORD_SIZE)
            os.fdatasync(self._fd)
        self.head = prev

    # -- reading ---------------------------------------------------------------------------------

    def record(self, height: int) -> Record:
        if not 0 <= height <= self.head.height:
            raise ChainCorrupt(f"{self.path}: no block at height {height} (head {self.head.height})")
        rec = _unpack_record(os.pread(self._fd, RECORD_SIZE, HEADER_SIZE + height * RECORD_SIZE))
        if rec is None or rec.height != height:
            raise ChainCorrupt(f"{self.path}: block {height} fails its checksum")
        return rec

    def hash_at(self, height: int) -> bytes:
        if height <= self.head.height:
            h = self._recent.get(height)
            if h is not None:
                return h
        return self.record(height).hash

    def records(self, start: int = 0) -> Iterator[Record]:
        chunk = 1024
        for first in range(start, self.head.height + 1, chunk):
            n = min(chunk, self.head.height + 1 - first)
            raw = os.pread(self._fd, n * RECORD_SIZE, HEADER_SIZE + first * RECORD_SIZE)
            for i in range(n):
                rec = _unpack_record(raw[i * RECORD_SIZE:(i + 1) * RECORD_SIZE])
                if rec is None or rec.height != first + i:
                    raise ChainCorrupt(f"{self.path}: block {first + i} fails its checksum")
                yield rec

    def verify(self) -> int:
        """Recompute every stamp and hash from genesis; returns the number of blocks; raises ChainCorrupt."""
        prev = None
        n = 0
        for rec in self.records():
            if prev is not None:
                b = blk.next_block(prev.hash, rec.height, rec.direction, rec.command, rec.body_digest,
                                   self.timelock)
                if b.stamp != rec.stamp:
                    raise ChainCorrupt(f"{self.path}: block {rec.height}: time-lock stamp does not verify")
                if b.hash != rec.hash:
                    raise ChainCorrupt(f"{self.path}: block {rec.height}: hash does not verify")
            prev = rec
            n += 1
        return n

    # -- writing ---------------------------------------------------------------------------------

    def append(self, entries: list[tuple[int, int, bytes]]) -> list[blk.Block]:
        """Append blocks for (direction, command, body_digest) entries in one write (not yet durable)."""
        if not entries:
            return []
        blocks = []
        prev_hash, height = self.head.hash, self.head.height
        for direction, command, digest in entries:
            height += 1
            b = blk.next_block(prev_hash, height, direction, command, digest, self.timelock)
            blocks.append(b)
            prev_hash = b.hash
        data = b"".join(_pack_record(b) for b in blocks)
        offset = HEADER_SIZE + (self.head.height + 1) * RECORD_SIZE
        if os.pwrite(self._fd, data, offset) != len(data):
            raise OSError(f"{self.path}: short write")
        last = blocks[-1]
        self.head = Record(last.height, last.direction, last.command, last.body_digest, last.stamp, last.hash)
        recent = self._recent
        for b in blocks:
            recent[b.height] = b.hash
        if len(recent) > 2 * RECENT_HASHES:  # trim now and then, not on every append
            low = last.height - RECENT_HASHES
            self._recent = {h: v for h, v in recent.items() if h > low}
        return blocks

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, height: int) -> None:
        """Drop blocks above ``height`` (tentative blocks the secure world does not hold)."""
        if height >= self.head.height:
            return
        rec = self.record(height)
        os.ftruncate(self._fd, HEADER_SIZE + (height + 1) * RECORD_SIZE)
        self._recent = {h: v for h, v in self._recent.items() if h <= height}
        self.head = rec



# -- read-only access, for diagnostics ------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """What a read-only pass over a chain file found, verifying every block from genesis."""

    records: int  # whole records in the file
    partial_bytes: int  # bytes of a record cut short at the end
    head: Record | None  # the last block that verifies from genesis
    bad_height: int | None  # the first block that does not (None: every record verifies)
    bad_reason: str

    @property
    def torn_tail(self) -> bool:
        """ChainLog.open would drop the bad records as a torn tail rather than refuse the file."""
        return self.bad_height is not None and self.records - self.bad_height <= UNSYNCED_MAX


class ChainReader:
    """A chain file opened read-only under a shared lock: nothing is repaired, truncated or written.

    For `aitn chain diff`, `aitn tee selftest` and `aitn tee replay`, which must report what they
    find rather than fix it (ChainLog.open drops a torn tail as it opens). The shared lock fails
    while a normal-world process holds the chain (ChainBusy): its view would be moving.
    """

    def __init__(self, path: Path, fd: int, pairing_id: bytes, timelock: int) -> None:
        self.path = path
        self._fd = fd
        self.pairing_id = pairing_id
        self.timelock = timelock
        size = os.fstat(fd).st_size - HEADER_SIZE
        self.records = max(0, size) // RECORD_SIZE
        self.partial_bytes = max(0, size) % RECORD_SIZE

    @classmethod
    def open(cls, path: Path, wait_s: float = 0.0) -> "ChainReader":
        """Raises NotPaired (no file), ChainBusy (locked by a writer past ``wait_s``), ChainCorrupt (bad header)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotPaired(f"{path}: no chain here; run `aitn tee pair`") from None
        _lock(fd, fcntl.LOCK_SH, path, wait_s)
        try:
            return cls(path, fd, *_read_header(fd, path))
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ChainReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record(self, height: int) -> Record | None:
        """The record stored at ``height`` if it is there and passes its checksum (not re-verified)."""
        if not 0 <= height < self.records:
            return None
        rec = _unpack_record(os.pread(self._fd, RECORD_SIZE, HEADER_SIZE + height * RECORD_SIZE))
        return rec if rec is not None and rec.height == height else None

    def scan(self) -> Scan:
        """Recompute every stamp and hash from genesis; stops at the first block that fails."""
        prev: Record | None = None
        chunk = 1024
        for first in range(0, self.records, chunk):
            n = min(chunk, self.records - first)
            raw = os.pread(self._fd, n * RECORD_SIZE, HEADER_SIZE + first * RECORD_SIZE)
            for i in range(n):
                h = first + i
                rec = _unpack_record(raw[i * RECORD_SIZE:(i + 1) * RECORD_SIZE])
                reason = ""
                if rec is None:
                    reason = "fails its checksum"
                elif rec.height != h:
                    reason = f"holds height {rec.height}"
                elif prev is not None:
                    b = blk.next_block(prev.hash, h, rec.direction, rec.command, rec.body_digest, self.timelock)
                    if b.stamp != rec.stamp:
                        reason = "time-lock stamp does not verify"
                    elif b.hash != rec.hash:
                        reason = "hash does not verify"
                if reason:
                    return Scan(self.records, self.partial_bytes, prev, h, reason)
                prev = rec
        return Scan(self.records, self.partial_bytes, prev, None, "")
