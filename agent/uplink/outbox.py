"""The device's durable store-and-forward outbox: every item is on disk before it is sent, and leaves only when acked.

Several processes share one outbox (the training job enqueues, the uplink daemon sends and acks), so every
operation holds an exclusive ``fcntl.flock`` on ``root/lock`` (blocking: the kernel drops the lock of a
process that dies, so a crashed holder cannot wedge the others).

Layout of ``root`` (created 0700)::

    lock                        the flock'd file; never holds data
    seq                         the sequence high-water mark (JSON: format, last, crc)
    state.json                  dropped counters per kind and a second copy of the high-water mark
    000000000042.update.item    one file per stored item: {seq:012d}.{kind}.item, so a listing sorts by seq
    quarantine/                 files that did not verify, moved aside (never deleted) and counted
    rejected/                   items the node refused for good (4.xx), each with a .reason file beside it
    *.tmp                       write_atomic's scratch files; one left by a crash mid-write is removed on open

An item file (big-endian), written whole with ``write_atomic``::

    offset size
     0      4   magic b"AITO"
     4      1   version (1)
     5      8   seq, u64                       must match the file name
    13      1   kind: 1 update, 2 manifest, 3 report (must match the file name)
    14      8   created, f64 unix seconds
    22      4   body length n, u32             the file must be exactly 58 + n bytes
    26     32   sha256(bytes 0..25 || body)
    58      n   body: the bytes to send (a signed envelope; opaque here)

A file whose name, layout or digest does not verify is moved to ``quarantine/`` when read and skipped, so
one bad file cannot block the rest. The quota counts the bytes of stored item files (header included).

Sequence numbers start at 1, strictly increase and are never reused. The next seq is
``1 + max(seq file, state.json's copy, highest item file, highest quarantined file)``, and ``put`` writes
the seq file before it calls ``make(seq)``: a crash can leave a gap, never a reuse. The second copy in
``state.json`` is written whenever the seq file would otherwise be the only witness of an issued seq (an
ack or drop of the highest stored item, a put that stored nothing), so losing the seq file alone cannot
hand a seq out again. Residual: a crash between writing the seq file and the item file, followed by the
loss of the seq file, can reuse that one seq; its body never left the outbox.

``make`` runs under the lock (items are stored in seq order, so the node never sees a seq after a higher
one), so it must not call the outbox itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..fsio import fsync_dir, write_atomic
from .errors import OutboxCorrupt, OutboxFull

KINDS = ("update", "manifest", "report")
DROPPABLE = ("update",)  # dropped oldest-first when the quota needs room; manifests and reports never are

MAGIC = b"AITO"
VERSION = 1
_HEADER = struct.Struct(">4sBQBdI")
OVERHEAD = _HEADER.size + 32  # what an item file adds to its body: header + sha256
MAX_BODY = 0xFFFFFFFF  # the u32 length field
_KIND_CODE = {"update": 1, "manifest": 2, "report": 3}  # on disk: fixed, not derived from KINDS' order
_CODE_KIND = {code: kind for kind, code in _KIND_CODE.items()}
_ITEM_NAME = re.compile(r"(\d{12,})\.([a-z]+)\.item")
_TMP_SUFFIX = ".tmp"
SEQ_FORMAT = "aitn-outbox-seq/1"
STATE_FORMAT = "aitn-outbox-state/1"


@dataclass(frozen=True)
class Item:
    seq: int  # per-device sequence number, strictly increasing, never reused (even after crashes or acks)
    kind: str
    body: bytes  # the bytes to send (an already-signed envelope; the outbox treats it as opaque)
    created: float  # unix time when enqueued


def item_name(seq: int, kind: str) -> str:
    return f"{seq:012d}.{kind}.item"


def encode_item(item: Item) -> bytes:
    """The item file's bytes (layout in the module docstring)."""
    header = _HEADER.pack(MAGIC, VERSION, item.seq, _KIND_CODE[item.kind], item.created, len(item.body))
    digest = hashlib.sha256(header)
    digest.update(item.body)
    return header + digest.digest() + item.body


def decode_item(name: str, data: bytes) -> Item:
    """The item stored as file ``name`` with content ``data``; OutboxCorrupt says what does not verify."""
    m = _ITEM_NAME.fullmatch(name)
    if m is None or m[2] not in _KIND_CODE:
        raise OutboxCorrupt(f"{name}: not an outbox item file name")
    if len(data) < OVERHEAD:
        raise OutboxCorrupt(f"{name}: {len(data)} bytes, shorter than an item header ({OVERHEAD})")
    magic, version, seq, code, created, length = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise OutboxCorrupt(f"{name}: magic {magic!r} version {version}, expected {MAGIC!r} version {VERSION}")
    if len(data) != OVERHEAD + length:
        raise OutboxCorrupt(f"{name}: {len(data)} bytes, the header says {OVERHEAD + length}")
    view = memoryview(data)
    digest = hashlib.sha256(view[:_HEADER.size])
    digest.update(view[OVERHEAD:])
    if digest.digest() != data[_HEADER.size:OVERHEAD]:
        raise OutboxCorrupt(f"{name}: sha256 does not match")
    # A good file under the wrong name (renamed or copied by hand) would be sent as another seq.
    if seq != int(m[1]) or _CODE_KIND.get(code) != m[2]:
        raise OutboxCorrupt(f"{name}: holds seq {seq} kind code {code}, not what its name says")
    return Item(seq, m[2], bytes(view[OVERHEAD:]), created)


@dataclass(frozen=True)
class _Entry:
    """A stored item as the directory listing shows it (not read, not verified)."""

    seq: int
    kind: str
    path: Path
    size: int


@dataclass
class _State:
    dropped: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    last: int = 0


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _crc(last: int) -> int:
    # A flipped digit would still be valid JSON and could lower the mark: the crc catches it.
    return zlib.crc32(b"%d" % last)


class Outbox:
    """The outbox kept in ``root``, holding at most ``quota_bytes`` of item files."""

    def __init__(self, root: Path, quota_bytes: int, *, clock: Callable[[], float] = time.time) -> None:
        if not _count(quota_bytes) or quota_bytes <= OVERHEAD:
            raise ValueError(f"quota_bytes must be an int > {OVERHEAD}, got {quota_bytes!r}")
        self.root = Path(root)
        self.quota = quota_bytes
        self.clock = clock
        self.quarantine_dir = self.root / "quarantine"
        self.rejected_dir = self.root / "rejected"
        self._lock_path = self.root / "lock"
        self._seq_path = self.root / "seq"
        self._state_path = self.root / "state.json"
        self._local = threading.local()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            # Under the lock: another process's tmp file is only ever there while it holds the lock.
            leftovers = [p for p in self.root.iterdir() if p.name.endswith(_TMP_SUFFIX)]
            for p in leftovers:
                p.unlink()
            if leftovers:
                fsync_dir(self.root)

    # -- the API -------------------------------------------------------------------------------------

    def put(self, kind: str, make: Callable[[int], bytes]) -> Item:
        """Allocate the next seq, store ``make(seq)`` durably and return the Item.

        If it does not fit the quota, the oldest DROPPABLE items are dropped first (never the new one).
        If dropping every droppable item would still not make room, nothing is dropped or stored and
        OutboxFull is raised (the seq stays consumed). Unknown kind: ValueError, no seq consumed.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown outbox kind {kind!r}; expected one of {KINDS}")
        with self._locked():
            entries = self._scan()
            state = self._read_state()
            seq = self._last_seq(entries, state) + 1
            self._write_seq(seq)  # durable before make(seq): from here a crash leaves a gap, never a reuse
            try:
                made = make(seq)
                if not isinstance(made, (bytes, bytearray, memoryview)):  # bytes(5) would be 5 zero bytes
                    raise TypeError(f"make() returned {type(made).__name__}, not bytes")
                body = bytes(made)
                if len(body) > MAX_BODY:
                    raise OutboxFull(f"{kind} seq {seq}: a {len(body)} byte body exceeds the format's limit")
                item = Item(seq, kind, body, float(self.clock()))
                data = encode_item(item)
                victims = self._make_room(kind, seq, len(data), entries)
                if victims:
                    for v in victims:
                        state.dropped[v.kind] = state.dropped.get(v.kind, 0) + 1
                    state.last = max(state.last, seq)
                    # Counted before the unlinks: a crash may over-count a drop, never hide one.
                    self._write_state(state)
                    for v in victims:
                        v.path.unlink(missing_ok=True)
                    fsync_dir(self.root)
                write_atomic(self.root / item_name(seq, kind), data, _TMP_SUFFIX)
                return item
            except BaseException:
                # Nothing stored under seq: only the seq file knows it was issued; keep the second copy.
                if state.last < seq:
                    state.last = seq
                    try:
                        self._write_state(state)
                    except OSError:
                        pass  # the original error matters more; the seq file still holds the mark
                raise

    def pending(self) -> list[Item]:
        """Every stored item in seq order, each read and verified; a bad one is quarantined and skipped."""
        with self._locked():
            return [item for item in map(self._load, self._scan()) if item is not None]

    def peek(self) -> Item | None:
        """The oldest (lowest seq) stored item that verifies, or None."""
        with self._locked():
            for entry in self._scan():
                item = self._load(entry)
                if item is not None:
                    return item
            return None

    def ack(self, seq: int) -> bool:
        """Remove item ``seq`` durably; False if it is not stored (acking twice is fine)."""
        return self._remove(seq, None)

    def reject(self, seq: int, reason: str) -> bool:
        """Move item ``seq`` to ``rejected/`` with the node's reason beside it: never resent, never deleted."""
        return self._remove(seq, reason)

    def _remove(self, seq: int, reject_reason: str | None) -> bool:
        with self._locked():
            entries = self._scan()
            hits = [e for e in entries if e.seq == seq]
            if not hits:
                return False
            if seq == entries[-1].seq:
                # After this unlink no item file shows the mark: keep its second copy before it goes.
                state = self._read_state()
                last = self._last_seq(entries, state)
                if state.last < last:
                    state.last = last
                    self._write_state(state)
            for e in hits:
                if reject_reason is None:
                    e.path.unlink(missing_ok=True)
                else:
                    self.rejected_dir.mkdir(mode=0o700, exist_ok=True)
                    write_atomic(self.rejected_dir / (e.path.name + ".reason"), reject_reason.encode(), _TMP_SUFFIX)
                    os.replace(e.path, self.rejected_dir / e.path.name)
                    fsync_dir(self.rejected_dir)
            fsync_dir(self.root)
            return True

    def stats(self) -> dict:
        """Counts for ``aitn status`` (JSON-able); from the listing, without reading the items."""
        with self._locked():
            entries = self._scan()
            state = self._read_state()
            by_kind = {k: {"items": 0, "bytes": 0} for k in KINDS}
            for e in entries:
                by_kind[e.kind]["items"] += 1
                by_kind[e.kind]["bytes"] += e.size
            return {
                "items": len(entries),
                "bytes": sum(e.size for e in entries),
                "quota": self.quota,
                "by_kind": by_kind,
                "dropped": {k: state.dropped.get(k, 0) for k in KINDS},
                "next_seq": self._last_seq(entries, state) + 1,
                "quarantined": len(self._quarantined()),
                "rejected": self._rejected_count(),
            }

    # -- the lock and the files ----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock on a second fd of the same process would wait for ourselves forever: refuse instead.
        if getattr(self._local, "held", False):
            raise RuntimeError("the outbox is not reentrant: make() must not call the outbox")
        # A fresh fd per operation: flock locks belong to the open file, so threads sharing one fd
        # would not exclude each other.
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.held = True
            try:
                yield
            finally:
                self._local.held = False
        finally:
            os.close(fd)  # releases the lock

    def _scan(self) -> list[_Entry]:
        """The item files in seq order; ``*.item`` files with a foreign name are quarantined."""
        entries, strangers = [], []
        with os.scandir(self.root) as it:
            for d in it:
                if not d.name.endswith(".item") or not d.is_file(follow_symlinks=False):
                    continue
                m = _ITEM_NAME.fullmatch(d.name)
                if m is None or m[2] not in _KIND_CODE:
                    strangers.append(Path(d.path))
                else:
                    entries.append(_Entry(int(m[1]), m[2], Path(d.path), d.stat(follow_symlinks=False).st_size))
        for p in strangers:
            self._quarantine(p)
        entries.sort(key=lambda e: (e.seq, e.kind))
        return entries

    def _load(self, entry: _Entry) -> Item | None:
        try:
            data = entry.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode_item(entry.path.name, data)
        except OutboxCorrupt:
            self._quarantine(entry.path)
            return None

    def _make_room(self, kind: str, seq: int, size: int, entries: list[_Entry]) -> list[_Entry]:
        """The oldest droppable entries whose removal lets ``size`` more bytes fit; OutboxFull if none can."""
        used = sum(e.size for e in entries)
        need = used + size - self.quota
        victims = []
        for e in entries:
            if need <= 0:
                break
            if e.kind in DROPPABLE:
                victims.append(e)
                need -= e.size
        if need > 0:
            droppable = sum(e.size for e in entries if e.kind in DROPPABLE)
            raise OutboxFull(f"{kind} seq {seq} needs {size} bytes: {used} of {self.quota} used, "
                             f"{droppable} of it droppable; nothing was dropped or stored")
        return victims

    def _quarantine(self, path: Path) -> None:
        self.quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        dest, n = self.quarantine_dir / path.name, 1
        while dest.exists():
            dest, n = self.quarantine_dir / f"{path.name}.{n}", n + 1
        os.replace(path, dest)
        fsync_dir(self.quarantine_dir)
        fsync_dir(self.root)

    def _rejected_count(self) -> int:
        try:
            return sum(n.endswith(".item") for n in os.listdir(self.rejected_dir))
        except FileNotFoundError:
            return 0

    def _quarantined(self) -> list[str]:
        try:
            return os.listdir(self.quarantine_dir)
        except FileNotFoundError:
            return []

    def _last_seq(self, entries: list[_Entry], state: _State) -> int:
        """The highest seq ever issued, by every witness there is."""
        seqs = [self._read_seq(), state.last]
        seqs += [e.seq for e in entries]
        # match, not fullmatch: a quarantined name may end in ".N"
        seqs += [int(m[1]) for n in self._quarantined() if (m := _ITEM_NAME.match(n))]
        if self.rejected_dir.is_dir():
            seqs += [int(m[1]) for n in os.listdir(self.rejected_dir) if (m := _ITEM_NAME.fullmatch(n))]
        return max(seqs)

    def _read_seq(self) -> int:
        try:
            raw = json.loads(self._seq_path.read_bytes())
        except FileNotFoundError:
            return 0
        except ValueError:
            raw = None
        if (isinstance(raw, dict) and raw.get("format") == SEQ_FORMAT and _count(raw.get("last"))
                and raw.get("crc") == _crc(raw["last"])):
            return raw["last"]
        self._quarantine(self._seq_path)  # the other witnesses still bound the seq from below
        return 0

    def _write_seq(self, last: int) -> None:
        doc = {"format": SEQ_FORMAT, "last": last, "crc": _crc(last)}
        write_atomic(self._seq_path, json.dumps(doc, sort_keys=True).encode(), _TMP_SUFFIX)

    def _read_state(self) -> _State:
        try:
            raw = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return _State()
        except ValueError:
            raw = None
        if (isinstance(raw, dict) and raw.get("format") == STATE_FORMAT and _count(raw.get("last"))
                and isinstance(raw.get("dropped"), dict) and all(_count(v) for v in raw["dropped"].values())):
            return _State({**{k: 0 for k in KINDS}, **raw["dropped"]}, raw["last"])
        self._quarantine(self._state_path)  # counters restart at 0; the file is kept for a human
        return _State()

    def _write_state(self, state: _State) -> None:
        doc = {"format": STATE_FORMAT, "dropped": state.dropped, "last": state.last}
        write_atomic(self._state_path, json.dumps(doc, sort_keys=True).encode(), _TMP_SUFFIX)
