"""Datasets: a batch of records, compressed, sliced into a UnixFS DAG in the blockstore, with a manifest.

A batch is accepted when ``add_batch`` returns: its blocks are durable, and so is its manifest
(``HOME/datasets/<root cid>.json``, written tmp, fsync, rename, fsync dir). A power loss before
that leaves at most orphan blocks, removed at the next open; never a manifest without its blocks.

Compression is deterministic (zstd level 3, content size in the frame, no dictionary, no
timestamps), so the same records always give the same root CID.

Quota: when a batch would exceed the blockstore's quota, datasets the node has acknowledged are
evicted, oldest first, until it fits (their manifests stay, marked evicted). If it still does not
fit, nothing is written and ``StoreFull`` is raised: ingest stops with a clear error and nothing
already stored is touched.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ..errors import AgentError
from ..fsio import write_atomic
from . import car, dagpb
from .blockstore import BlockCorrupt, BlockMissing, BlockStore, StoreFull
from .cid import DAG_PB, RAW, build_dag, cid_text, decode_cid, parse_cid

ZSTD_LEVEL = 3
UPLINK_STATES = ("pending", "sent", "acked")


class DatasetError(AgentError):
    exit_code = 34


@dataclass
class Manifest:
    root: str
    blocks: list[str]
    compressed_bytes: int
    raw_bytes: int
    records: int
    time_range_ms: list[int]
    policy: str  # the desensitization policy's id and digest
    created: float
    uplink: str = "pending"
    evicted: bool = False
    codec: str = f"zstd-{ZSTD_LEVEL}"
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    root: str
    compressed: bytes
    dag: Any
    raw_bytes: int


class DatasetStore:
    def __init__(self, home: Path, quota_bytes: int) -> None:
        self.dir = home / "datasets"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.blocks = BlockStore(home / "blocks", quota_bytes)
        self._compress = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink()
        self.orphans_removed = self._remove_orphans()

    # -- manifests ---------------------------------------------------------------------------------

    def manifests(self) -> list[Manifest]:
        out = [Manifest(**json.loads(p.read_text())) for p in self.dir.glob("*.json")]
        return sorted(out, key=lambda m: (m.created, m.root))

    def manifest(self, root: str) -> Manifest:
        try:
            return Manifest(**json.loads((self.dir / f"{root}.json").read_text()))
        except FileNotFoundError:
            raise DatasetError(f"no dataset {root}") from None

    def _save(self, m: Manifest) -> None:
        write_atomic(self.dir / f"{m.root}.json", json.dumps(asdict(m), sort_keys=True).encode())

    def mark(self, root: str, uplink: str) -> Manifest:
        if uplink not in UPLINK_STATES:
            raise DatasetError(f"uplink state {uplink!r} is not one of {UPLINK_STATES}")
        m = self.manifest(root)
        m.uplink = uplink
        self._save(m)
        return m

    # -- batches -----------------------------------------------------------------------------------

    def prepare(self, payload: bytes) -> Prepared:
        """Compress and slice ``payload`` without storing it: its root CID is known before any write."""
        compressed = self._compress.compress(payload)
        dag = build_dag(compressed)
        return Prepared(cid_text(dag.root), compressed, dag, len(payload))

    def add_batch(self, payload: bytes | Prepared, *, records: int, time_range_ms: tuple[int, int], policy: str,
                  extra: dict | None = None) -> Manifest:
        """Compress, slice and store a batch; returns its manifest once everything is durable.

        ``payload``: the batch's bytes, or what prepare() made of them. ``extra``: what the producer
        wants kept with the batch (the ingest's per-batch counts).
        """
        prepared = payload if isinstance(payload, Prepared) else self.prepare(payload)
        compressed, dag = prepared.compressed, prepared.dag
        new = [(c, b) for c, b in dag.blocks if not self.blocks.has(c)]
        needed = sum(len(b) for _, b in new)
        if self.blocks.used_bytes + needed > self.blocks.quota_bytes:
            self._evict(needed, keep={c for c, _ in dag.blocks})
        for c, b in new:
            self.blocks.put(c, b)
        m = Manifest(prepared.root, [cid_text(c) for c, _ in dag.blocks], len(compressed), prepared.raw_bytes,
                     records, [int(time_range_ms[0]), int(time_range_ms[1])], policy, time.time(),
                     extra=dict(extra or {}))
        existing = self.dir / f"{m.root}.json"
        if existing.exists():  # the same batch again: keep its history
            return self.manifest(m.root)
        self._save(m)
        return m

    def _evict(self, needed: int, keep: set[bytes]) -> None:
        """Free ``needed`` bytes by evicting acknowledged datasets, oldest first, or raise StoreFull."""
        live = [m for m in self.manifests() if not m.evicted]
        protected = {c for m in live if m.uplink != "acked" for c in m.blocks} | {cid_text(c) for c in keep}
        candidates = [m for m in live if m.uplink == "acked"]
        freeable = sum(self._block_size(c) for c in set().union(*(m.blocks for m in candidates)) - protected)
        if self.blocks.used_bytes + needed - freeable > self.blocks.quota_bytes:
            raise StoreFull(f"{self.blocks.root}: {needed} bytes needed, {self.blocks.quota_bytes - self.blocks.used_bytes}"
                            f" free and {freeable} evictable (only batches the node acknowledged may be evicted)")
        for m in candidates:
            if self.blocks.used_bytes + needed <= self.blocks.quota_bytes:
                break
            still_used = {c for o in live if o is not m and not o.evicted for c in o.blocks}
            for c in set(m.blocks) - still_used - protected:
                self.blocks.delete(parse_cid(c))
            m.evicted = True
            self._save(m)

    def _block_size(self, cid: str) -> int:
        try:
            return (self.blocks.root / cid[-2:] / cid).stat().st_size
        except FileNotFoundError:
            return 0

    def _remove_orphans(self) -> int:
        referenced = {c for m in self.manifests() if not m.evicted for c in m.blocks}
        removed = 0
        for c in list(self.blocks.cids()):
            if cid_text(c) not in referenced:
                self.blocks.delete(c)
                removed += 1
        return removed

    # -- reading, verifying, exporting -------------------------------------------------------------

    def _walk(self, cid: bytes) -> list[bytes]:
        """Leaf CIDs under ``cid`` in file order."""
        codec, _ = decode_cid(cid)
        if codec == RAW:
            return [cid]
        if codec != DAG_PB:
            raise DatasetError(f"unexpected codec 0x{codec:x} in {cid_text(cid)}")
        node = dagpb.decode_node(self.blocks.get(cid))
        return [leaf for link in node.links for leaf in self._walk(link.hash)]

    def read_batch(self, root: str) -> bytes:
        m = self.manifest(root)
        if m.evicted:
            raise DatasetError(f"dataset {root} was evicted after the node acknowledged it")
        compressed = b"".join(self.blocks.get(c) for c in self._walk(parse_cid(root)))
        return zstandard.ZstdDecompressor().decompress(compressed)

    def verify(self) -> dict:
        """Re-hash every block of every live dataset; returns counts and the problems found."""
        problems, blocks = [], 0
        for m in self.manifests():
            if m.evicted:
                continue
            for c in m.blocks:
                blocks += 1
                try:
                    self.blocks.get(parse_cid(c))
                except (BlockCorrupt, BlockMissing) as e:
                    problems.append(str(e))
        return {"datasets": len(self.manifests()), "blocks_checked": blocks, "problems": problems}

    def export_car(self, root: str) -> bytes:
        m = self.manifest(root)
        if m.evicted:
            raise DatasetError(f"dataset {root} was evicted after the node acknowledged it")
        return car.write_car([parse_cid(root)], [(parse_cid(c), self.blocks.get(parse_cid(c))) for c in m.blocks])
