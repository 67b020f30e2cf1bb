"""Emulated RPMB: the replay-protected storage the secure world keeps its counter, lockout and chain view in.

On a board this is the eMMC's RPMB partition: authenticated writes, a write counter, and no way for
the normal world to roll it back. Here it is one file in the secure world's 0700 directory; every
record carries an HMAC under a key derived from the hardware-unique key, and records are written so
that a torn write (power loss mid-write) leaves the previous valid state readable.

Layout::

    0     512  header copy A   \\  the valid copy with the higher seq wins; a write goes to the
    512   512  header copy B   /   other copy, so a torn write leaves the last good one
    1024  RING_SLOTS * 128     recent ring: block at height h in slot h % RING_SLOTS
    ...   CHECKPOINT_SLOTS*128 checkpoints: heights that are multiples of CHECKPOINT_EVERY

A ring slot holds what the secure world needs to check challenges and to re-deliver the last
committed block: height, hash, direction, command, body digest, and the commit it belongs to
(first and last height, and a tag naming it). A commit counts only if every ring slot of it is
valid and carries the same tag, so a torn commit falls back to the previous one. Checkpoint copies
are written after the ring slots; one lost to a torn write only means that height is never
challenged once the ring has moved past it.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

HEADER_SIZE = 512
SLOT_SIZE = 128
RING_SLOTS = 1024
CHECKPOINT_EVERY = 256
CHECKPOINT_SLOTS = 256
RING_OFFSET = 2 * HEADER_SIZE
CHECKPOINT_OFFSET = RING_OFFSET + RING_SLOTS * SLOT_SIZE
FILE_SIZE = CHECKPOINT_OFFSET + CHECKPOINT_SLOTS * SLOT_SIZE

_HDR = struct.Struct(">8sQQIdB16sI")  # magic, seq, state_counter, failures, lockout_until, paired, pairing_id, timelock
_HDR_MAGIC = b"AITNRPMB"
# height, commit_end, commit length, commit tag, hash, direction, command, body_digest
_SLOT = struct.Struct(">QQH8s32sBI32s")
_MAC = 32


class RpmbError(Exception):
    """The RPMB file is missing, foreign, or has no valid header."""


@dataclass(frozen=True)
class Header:
    seq: int = 0
    state_counter: int = 0
    failures: int = 0
    lockout_until: float = 0.0
    paired: bool = False
    pairing_id: bytes = bytes(16)
    timelock: int = 0


@dataclass(slots=True)  # treated as immutable
class Slot:
    height: int
    commit_start: int
    commit_end: int
    hash: bytes
    direction: int
    command: int
    body_digest: bytes
    #: Identifies the commit this slot belongs to (a prefix of the commit's last block hash), so
    #: leftovers of two different torn commits over the same heights never pass for one commit.
    commit_tag: bytes = bytes(8)


class Rpmb:
    """Authenticated, torn-write-safe records in one file. Every write ends with an fdatasync."""

    def __init__(self, path: Path, mac_key: bytes) -> None:
        self.path = path
        self._key = mac_key
        self._fd = -1
        self.header = Header()

    def _mac(self, data: bytes) -> bytes:
        return hmac.digest(self._key, data, "sha256")

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def exists(path: Path) -> bool:
        return path.exists()

    def create(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, FILE_SIZE)
        self._fd = fd
        self.write_header(Header())
        self.write_header(self.header)  # both copies valid from the start

    def open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            raise RpmbError(f"{self.path}: missing") from None
        if os.fstat(self._fd).st_size != FILE_SIZE:
            raise RpmbError(f"{self.path}: size {os.fstat(self._fd).st_size}, expected {FILE_SIZE}")
        best = None
        for copy in (0, 1):
            h = self._read_header(copy)
            if h is not None and (best is None or h.seq > best.seq):
                best = h
        if best is None:
            raise RpmbError(f"{self.path}: no valid header (foreign file or wrong hardware key)")
        self.header = best

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- header --------------------------------------------------------------------------------

    def _read_header(self, copy: int) -> Header | None:
        raw = os.pread(self._fd, _HDR.size + _MAC, copy * HEADER_SIZE)
        body, mac = raw[:_HDR.size], raw[_HDR.size:]
        if len(raw) != _HDR.size + _MAC or not hmac.compare_digest(self._mac(body), mac):
            return None
        magic, seq, counter, failures, until, paired, pid, timelock = _HDR.unpack(body)
        if magic != _HDR_MAGIC:
            return None
        return Header(seq, counter, failures, until, bool(paired), pid, timelock)

    def write_header(self, new: Header) -> None:
        new = replace(new, seq=self.header.seq + 1)
        body = _HDR.pack(_HDR_MAGIC, new.seq, new.state_counter, new.failures, new.lockout_until,
                         int(new.paired), new.pairing_id, new.timelock)
        os.pwrite(self._fd, body + self._mac(body), (new.seq % 2) * HEADER_SIZE)
        os.fdatasync(self._fd)
        self.header = new

    # -- chain slots ---------------------------------------------------------------------------

    def _slot_bytes(self, s: Slot, pairing_id: bytes) -> bytes:
        body = _SLOT.pack(s.height, s.commit_end, s.commit_end - s.commit_start + 1, s.commit_tag, s.hash,
                          s.direction, s.command, s.body_digest)
        return (body + self._mac(pairing_id + body)).ljust(SLOT_SIZE, b"\0")

    def _parse_slot(self, raw: bytes, pairing_id: bytes) -> Slot | None:
        body, mac = raw[:_SLOT.size], raw[_SLOT.size:_SLOT.size + _MAC]
        if not hmac.compare_digest(self._mac(pairing_id + body), mac):
            return None
        height, end, length, tag, h, direction, command, digest = _SLOT.unpack(body)
        return Slot(height, end - length + 1, end, h, direction, command, digest, tag)

    def write_slots(self, slots: list[Slot], pairing_id: bytes) -> None:
        """Write one commit's slots (ring, plus checkpoints) and fdatasync once."""
        if not slots:
            return
        writes: list[tuple[int, bytes]] = []
        for s in slots:
            data = self._slot_bytes(s, pairing_id)
            writes.append((RING_OFFSET + (s.height % RING_SLOTS) * SLOT_SIZE, data))
            if s.height % CHECKPOINT_EVERY == 0:
                idx = (s.height // CHECKPOINT_EVERY) % CHECKPOINT_SLOTS
                writes.append((CHECKPOINT_OFFSET + idx * SLOT_SIZE, data))
        # Coalesce adjacent ring slots into one pwrite each.
        writes.sort()
        run_off, run = writes[0][0], bytearray(writes[0][1])
        for off, data in writes[1:]:
            if off == run_off + len(run):
                run += data
            else:
                os.pwrite(self._fd, bytes(run), run_off)
                run_off, run = off, bytearray(data)
        os.pwrite(self._fd, bytes(run), run_off)
        os.fdatasync(self._fd)

    def read_slots(self, pairing_id: bytes) -> tuple[list[Slot], list[Slot]]:
        """Valid (ring, checkpoint) slots of this pairing."""
        raw = os.pread(self._fd, FILE_SIZE - RING_OFFSET, RING_OFFSET)
        ring, cps = [], []
        for i in range(RING_SLOTS + CHECKPOINT_SLOTS):
            s = self._parse_slot(raw[i * SLOT_SIZE:(i + 1) * SLOT_SIZE], pairing_id)
            if s is not None:
                (ring if i < RING_SLOTS else cps).append(s)
        return ring, cps
