"""The local blockstore: content-addressed blocks on disk, crash-safe writes, verified reads, a quota.

Layout: ``ROOT/<2 characters>/<cid>`` where the 2 characters are the last two of the CID's text
(spreading files over directories as kubo's flatfs does with its suffix shard).

- ``put`` writes a block to a temporary file in the same directory, fsyncs it, renames it into
  place and fsyncs the directory: a power loss leaves either no block or the whole block, never a
  torn one under its final name. Temporary files left by a power loss are removed at open.
- ``get`` re-hashes what it reads and raises ``BlockCorrupt`` on a mismatch: a damaged block is
  reported, never returned.
- The quota counts the bytes of stored blocks. ``put`` refuses with ``StoreFull`` (and changes
  nothing) when a block would exceed it; what may be evicted to make room is the caller's policy
  (datasets.py evicts only batches the node acknowledged).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

from ..errors import AgentError, IntegrityError
from ..fsio import write_atomic
from .cid import cid_text, decode_cid, parse_cid

_TMP_SUFFIX = ".tmp"


class BlockCorrupt(IntegrityError):
    """A stored block whose bytes no longer hash to its CID."""


class BlockMissing(AgentError):
    exit_code = 32


class StoreFull(AgentError):
    """The block would exceed the store's quota and nothing may be evicted."""

    exit_code = 33


class BlockStore:
    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        root.mkdir(parents=True, exist_ok=True)
        self.used_bytes = 0
        self.removed_tmp = 0
        for shard in root.iterdir():
            if not shard.is_dir():
                continue
            for f in shard.iterdir():
                if f.name.endswith(_TMP_SUFFIX):  # a write cut by a power loss: never a block
                    f.unlink()
                    self.removed_tmp += 1
                else:
                    self.used_bytes += f.stat().st_size

    def _path(self, cid: bytes) -> Path:
        text = cid_text(cid)
        return self.root / text[-2:] / text

    def has(self, cid: bytes) -> bool:
        return self._path(cid).exists()

    def put(self, cid: bytes, block: bytes | memoryview) -> bool:
        """Store a block under its CID (checked); returns False if it was already there."""
        _codec, digest = decode_cid(cid)
        if hashlib.sha256(block).digest() != digest:
            raise BlockCorrupt(f"refusing to store {cid_text(cid)}: the bytes do not hash to it")
        path = self._path(cid)
        if path.exists():
            return False
        size = len(block)
        if self.used_bytes + size > self.quota_bytes:
            raise StoreFull(f"{self.root}: storing {size} bytes would exceed the quota of {self.quota_bytes} "
                            f"({self.used_bytes} used)")
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, block, tmp_suffix=f".{os.getpid()}{_TMP_SUFFIX}")
        self.used_bytes += size
        return True

    def get(self, cid: bytes) -> bytes:
        path = self._path(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlockMissing(f"block {cid_text(cid)} is not in {self.root}") from None
        if hashlib.sha256(data).digest() != decode_cid(cid)[1]:
            raise BlockCorrupt(f"{path}: content does not match its CID")
        return data

    def delete(self, cid: bytes) -> int:
        """Remove a block; returns the bytes freed (0 if it was not there)."""
        path = self._path(cid)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        self.used_bytes -= size
        return size

    def cids(self) -> Iterator[bytes]:
        for shard in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for f in sorted(shard.iterdir()):
                if not f.name.endswith(_TMP_SUFFIX):
                    yield parse_cid(f.name)
