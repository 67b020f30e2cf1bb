"""Blockstore and datasets: verified reads, quota and eviction policy, deterministic CIDs, CAR export."""

from __future__ import annotations

import random

import pytest

from agent.store import car
from agent.store.blockstore import BlockCorrupt, BlockMissing, BlockStore, StoreFull
from agent.store.cid import RAW, block_cid, cid_text, file_cid, parse_cid
from agent.store.datasets import DatasetError, DatasetStore


def payload(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    # compressible but not trivially: telemetry-like rows
    return b"".join(b"%d,%d,%d,%.3f\n" % (i, rng.randrange(1000), rng.randrange(50), rng.random()) for i in range(n))


def test_blockstore_put_get_and_refuses_wrong_bytes(tmp_path):
    bs = BlockStore(tmp_path / "b", 1 << 20)
    c = block_cid(RAW, b"hello")
    assert bs.put(c, b"hello") is True and bs.put(c, b"hello") is False
    assert bs.get(c) == b"hello" and bs.used_bytes == 5
    with pytest.raises(BlockCorrupt):
        bs.put(block_cid(RAW, b"other"), b"hello")
    with pytest.raises(BlockMissing):
        bs.get(block_cid(RAW, b"absent"))


def test_blockstore_detects_a_damaged_block_and_survives_reopen(tmp_path):
    bs = BlockStore(tmp_path / "b", 1 << 20)
    c = block_cid(RAW, b"payload bytes")
    bs.put(c, b"payload bytes")
    path = tmp_path / "b" / cid_text(c)[-2:] / cid_text(c)
    path.write_bytes(b"payload bytez")
    with pytest.raises(BlockCorrupt):
        bs.get(c)
    (path.parent / (path.name + ".123.tmp")).write_bytes(b"torn")  # a write cut by a power loss
    again = BlockStore(tmp_path / "b", 1 << 20)
    assert again.removed_tmp == 1 and [cid_text(x) for x in again.cids()] == [cid_text(c)]


def test_blockstore_quota(tmp_path):
    bs = BlockStore(tmp_path / "b", 10)
    bs.put(block_cid(RAW, b"12345678"), b"12345678")
    with pytest.raises(StoreFull):
        bs.put(block_cid(RAW, b"abc"), b"abc")
    assert bs.used_bytes == 8 and not bs.has(block_cid(RAW, b"abc"))


def test_batch_round_trip_and_deterministic_root(tmp_path):
    ds = DatasetStore(tmp_path / "h", 64 << 20)
    data = payload(1, 40_000)  # about 0.7 MB of telemetry-like rows
    m = ds.add_batch(data, records=40_000, time_range_ms=(1000, 2000), policy="policy-1:abc")
    assert ds.read_batch(m.root) == data
    assert m.raw_bytes == len(data) and m.compressed_bytes < len(data) and m.uplink == "pending"
    other = DatasetStore(tmp_path / "h2", 64 << 20).add_batch(data, records=1, time_range_ms=(0, 0), policy="p")
    assert other.root == m.root  # same bytes, same CID on another device
    assert ds.add_batch(data, records=40_000, time_range_ms=(1000, 2000), policy="policy-1:abc").created == m.created


def test_big_batch_spans_a_dag_and_exports_a_car(tmp_path):
    ds = DatasetStore(tmp_path / "h", 64 << 20)
    data = random.Random(7).randbytes(700_000)  # incompressible: three 256 KiB leaves under a dag-pb root
    m = ds.add_batch(data, records=1, time_range_ms=(0, 1), policy="p")
    assert parse_cid(m.root)[1] == 0x70 and len(m.blocks) == 4
    roots, blocks = car.read_car(ds.export_car(m.root))
    assert [cid_text(r) for r in roots] == [m.root] and {cid_text(c) for c, _ in blocks} == set(m.blocks)
    assert ds.read_batch(m.root) == data
    import zstandard

    assert m.root == file_cid(zstandard.ZstdCompressor(level=3, write_content_size=True,
                                                       write_checksum=False).compress(data))


def test_eviction_only_takes_acknowledged_batches(tmp_path):
    quota = 1_500_000
    ds = DatasetStore(tmp_path / "h", quota)
    batches = [random.Random(i).randbytes(600_000) for i in range(3)]
    a = ds.add_batch(batches[0], records=1, time_range_ms=(0, 1), policy="p")
    b = ds.add_batch(batches[1], records=1, time_range_ms=(1, 2), policy="p")
    with pytest.raises(StoreFull, match="only batches the node acknowledged"):
        ds.add_batch(batches[2], records=1, time_range_ms=(2, 3), policy="p")
    assert ds.read_batch(a.root) == batches[0] and ds.read_batch(b.root) == batches[1]  # nothing damaged
    ds.mark(a.root, "sent")
    with pytest.raises(StoreFull):  # sent is not acknowledged
        ds.add_batch(batches[2], records=1, time_range_ms=(2, 3), policy="p")
    ds.mark(a.root, "acked")
    c = ds.add_batch(batches[2], records=1, time_range_ms=(2, 3), policy="p")
    assert ds.manifest(a.root).evicted and not ds.manifest(b.root).evicted
    assert ds.read_batch(b.root) == batches[1] and ds.read_batch(c.root) == batches[2]
    with pytest.raises(DatasetError, match="evicted"):
        ds.read_batch(a.root)
    assert ds.blocks.used_bytes <= quota and ds.verify()["problems"] == []


def test_verify_reports_damage_and_orphans_are_collected(tmp_path):
    ds = DatasetStore(tmp_path / "h", 64 << 20)
    m = ds.add_batch(payload(2, 1000), records=1000, time_range_ms=(0, 1), policy="p")
    leaf = m.blocks[0]
    (tmp_path / "h" / "blocks" / leaf[-2:] / leaf).write_bytes(b"rot")
    assert len(ds.verify()["problems"]) == 1
    orphan = block_cid(RAW, b"written before a power loss, never in a manifest")
    ds.blocks.put(orphan, b"written before a power loss, never in a manifest")
    again = DatasetStore(tmp_path / "h", 64 << 20)
    assert again.orphans_removed == 1 and not again.blocks.has(orphan)


def test_cli_data_ls_verify_export(cli, tmp_path):
    import json

    ds = DatasetStore(tmp_path / "store", 64 << 20)
    data = random.Random(3).randbytes(300_000)
    m = ds.add_batch(data, records=12, time_range_ms=(5, 9), policy="policy-x")
    listed = json.loads(cli("data", "ls", "--json", home=tmp_path).stdout)["datasets"]
    assert [(d["root"], d["records"], d["policy"], d["uplink"]) for d in listed] == [(m.root, 12, "policy-x", "pending")]
    assert json.loads(cli("data", "verify", "--json", home=tmp_path).stdout)["problems"] == []
    import subprocess
    import sys

    exported = subprocess.run([sys.executable, "-m", "agent", "--home", str(tmp_path), "data", "export", m.root],
                              capture_output=True, check=True).stdout
    roots, _ = car.read_car(exported)
    assert [cid_text(r) for r in roots] == [m.root]
    leaf = m.blocks[0]
    (tmp_path / "store" / "blocks" / leaf[-2:] / leaf).write_bytes(b"rot")
    res = cli("data", "verify", home=tmp_path, check=False)
    assert res.returncode == 31 and "PROBLEMS" in res.stdout
