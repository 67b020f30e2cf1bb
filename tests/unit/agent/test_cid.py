"""agent.store: CIDv1 text/binary, the UnixFS file DAG kubo builds, the dag-pb codec, CARv1.

Root CIDs below were computed by this code and checked equal to npm ipfs-unixfs-importer 17.1.1
(tests/interop, same data), the independent reference named in shared/notes/references.md.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random

import pytest

from agent.store import car, cid, dagpb
from agent.store.car import CarBlockMismatch, CarError
from agent.store.cid import CidError
from agent.store.dagpb import DagPbError, PBLink, PBNode

K = cid.CHUNK_SIZE
EMPTY = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
HELLO = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"

# (file size, root CID, distinct blocks) for prefixes of sample_bytes(); every chunk-count boundary.
BOUNDARIES = [
    (0, EMPTY, 1),
    (1, "bafkreie2pn5tuxkqpanu6r3izv6oeiywr5vujg3yvvvmlfg3k6emhoaf2e", 1),
    (K - 1, "bafkreihdjbhhbwyqdmrh34mzxqdyenzp26zmnoue64mt3djsjgytb2gfpy", 1),
    (K, "bafkreifhe7x7hwd4tig6aptckr3qi7w5offmp7iivt4o4cxwam7byvzq4u", 1),
    (K + 1, "bafybeibthquxxso2nts5jdz3mbyo73b3ygdaqfdlwr2ldcehv4kh5kwgpi", 3),
    (174 * K, "bafybeih3fbiplmu5eaeecmc7x3p6h62eccwlfya2sul26vrjol3lh5vx6y", 175),
    (174 * K + 1, "bafybeid622hooqrb2yaedusc53gpdtr6t37suilprvtqqxrxff3bpvtuia", 178),
    (175 * K, "bafybeihqv35pfycappu42nd677vsvrcz7pg2lfnfjrmkr7hlbg5ypyeufm", 178),
]


@pytest.fixture(scope="module")
def sample() -> bytes:
    """175 chunks of seeded random bytes (distinct chunks, so no block is de-duplicated)."""
    return random.Random("aitn-cid").randbytes(175 * K)


def _walk(dag: cid.Dag) -> tuple[bytes, int]:
    """Reassemble the file from `dag.blocks`, checking each node's sizes; returns (bytes, depth)."""
    blocks = dict(dag.blocks)

    def visit(c: bytes) -> tuple[bytes, int, int]:  # (file bytes, tsize, depth)
        codec, digest = cid.decode_cid(c)
        block = blocks[c]
        assert hashlib.sha256(block).digest() == digest
        if codec == cid.RAW:
            return block, len(block), 0
        assert codec == cid.DAG_PB
        node = dagpb.decode_node(block)
        fs = dagpb.decode_unixfs(node.data)
        assert fs.type == dagpb.UNIXFS_FILE and fs.data is None
        parts = [visit(link.hash) for link in node.links]
        assert [link.name for link in node.links] == [""] * len(parts)
        assert [link.tsize for link in node.links] == [p[1] for p in parts]
        assert list(fs.blocksizes) == [len(p[0]) for p in parts]
        content = b"".join(p[0] for p in parts)
        assert fs.filesize == len(content)
        assert len({p[2] for p in parts}) == 1, "leaves at different depths: not balanced"
        return content, len(block) + sum(p[1] for p in parts), parts[0][2] + 1

    content, _, depth = visit(dag.root)
    return content, depth


# --- CIDs ------------------------------------------------------------------------------------

def test_known_vectors_empty_and_hello_world():
    assert cid.file_cid(b"") == EMPTY
    assert cid.file_cid(b"hello world") == HELLO
    assert cid.cid_text(cid.block_cid(cid.RAW, b"hello world")) == HELLO
    assert cid.build_dag(b"").blocks == [(cid.parse_cid(EMPTY), b"")]


def test_binary_layout_and_text_round_trip():
    digest = hashlib.sha256(b"hello world").digest()
    binary = cid.cid_v1(cid.RAW, digest)
    assert binary == bytes.fromhex("01551220") + digest
    assert cid.cid_v1(cid.DAG_PB, digest)[:4] == bytes.fromhex("01701220")
    assert cid.parse_cid(HELLO) == binary
    assert cid.decode_cid(binary) == (cid.RAW, digest)
    assert cid.cid_text(cid.parse_cid(EMPTY)) == EMPTY


def _b32(raw: bytes) -> str:
    return "b" + base64.b32encode(raw).decode().rstrip("=").lower()


@pytest.mark.parametrize("text, why", [
    ("QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR", "multibase"),   # CIDv0 text
    (HELLO.upper(), "multibase"),
    ("b" + HELLO[1:].upper(), "lower-case"),
    (HELLO[:-1] + "1", "lower-case"),
    (HELLO[:-1], "length"),
    (HELLO[:-1] + "f", "canonical"),        # the spare bits of the last character are not zero
    ("b", "multibase"),
    ("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5eaa", "trailing"),
    (_b32(bytes.fromhex("01551314") + bytes(20)), "multihash"),      # sha2-512/20
    (_b32(bytes.fromhex("02551220") + bytes(32)), "version"),
])
def test_parse_cid_refuses_bad_text(text, why):
    with pytest.raises(CidError, match=why):
        cid.parse_cid(text)


def test_bad_binary_and_digests_are_refused():
    with pytest.raises(CidError, match="32 bytes"):
        cid.cid_v1(cid.RAW, b"\x00" * 31)
    with pytest.raises(CidError, match="truncated"):
        cid.decode_cid(cid.parse_cid(HELLO)[:-1])
    with pytest.raises(CidError, match="version"):
        cid.cid_text(bytes.fromhex("1220") + bytes(32))  # CIDv0 binary
    with pytest.raises(CidError, match="must be str"):
        cid.parse_cid(cid.parse_cid(HELLO))  # type: ignore[arg-type]


# --- the UnixFS DAG --------------------------------------------------------------------------

@pytest.mark.parametrize("size, root, nblocks", BOUNDARIES, ids=[str(b[0]) for b in BOUNDARIES])
def test_root_cid_at_every_boundary(sample, size, root, nblocks):
    dag = cid.build_dag(memoryview(sample)[:size])
    assert (cid.cid_text(dag.root), len(dag.blocks)) == (root, nblocks)
    assert dag.blocks[-1][0] == dag.root  # the root comes last, children before parents
    content, depth = _walk(dag)
    assert content == sample[:size]
    assert depth == (0 if size <= K else 1 if size <= 174 * K else 2)


def test_175_chunks_root_is_a_full_node_and_a_one_leaf_node(sample):
    dag = cid.build_dag(memoryview(sample)[:174 * K + 1])
    blocks = dict(dag.blocks)
    root = dagpb.decode_node(blocks[dag.root])
    assert len(root.links) == 2
    full, tail = (dagpb.decode_node(blocks[link.hash]) for link in root.links)
    assert len(full.links) == 174 and len(tail.links) == 1
    assert dagpb.decode_unixfs(root.data).blocksizes == (174 * K, 1)
    assert cid.decode_cid(tail.links[0].hash)[0] == cid.RAW


def test_small_tree_shape_with_three_links_per_node():
    # 10 chunks, at most 3 links: depth 3 (9 < 10 <= 27); boxo keeps the single-child chain.
    data = bytes(range(40))
    dag = cid.build_dag(data, chunk_size=4, max_links=3)
    content, depth = _walk(dag)
    assert (content, depth, len(dag.blocks)) == (data, 3, 10 + 4 + 2 + 1)
    blocks = dict(dag.blocks)
    root = dagpb.decode_node(blocks[dag.root])
    assert dagpb.decode_unixfs(root.data).blocksizes == (36, 4)
    chain = dagpb.decode_node(blocks[root.links[1].hash])
    assert len(chain.links) == 1 and len(dagpb.decode_node(blocks[chain.links[0].hash]).links) == 1


def test_internal_node_bytes_match_the_hand_written_encoding():
    dag = cid.build_dag(b"abcdefgh", chunk_size=4)
    leaf_a, leaf_b = cid.block_cid(cid.RAW, b"abcd"), cid.block_cid(cid.RAW, b"efgh")
    # PBLink: 0a 24 <cid>  12 00 (Name "")  18 04 (Tsize 4); links (field 2) before Data (field 1).
    # UnixFS: 08 02 (File)  18 08 (filesize 8)  20 04  20 04 (blocksizes, not packed).
    expected = (b"\x12\x2a\x0a\x24" + leaf_a + b"\x12\x00\x18\x04"
                + b"\x12\x2a\x0a\x24" + leaf_b + b"\x12\x00\x18\x04"
                + b"\x0a\x08\x08\x02\x18\x08\x20\x04\x20\x04")
    assert dag.blocks == [(leaf_a, b"abcd"), (leaf_b, b"efgh"),
                          (cid.block_cid(cid.DAG_PB, expected), expected)]


def test_repeated_chunks_are_stored_once():
    dag = cid.build_dag(b"x" * (3 * K))
    assert len(dag.blocks) == 2  # one leaf, one root with three links to it
    root = dagpb.decode_node(dag.blocks[-1][1])
    assert [link.hash for link in root.links] == [dag.blocks[0][0]] * 3


def test_leaves_view_immutable_input_and_copy_mutable_input():
    data = bytes(range(10))
    assert isinstance(cid.build_dag(data, chunk_size=4).blocks[0][1], memoryview)
    buf = bytearray(data)
    dag = cid.build_dag(buf, chunk_size=4)
    buf[0] = 99  # the caller reuses its buffer: the DAG's blocks must not change
    assert dag.blocks[0] == (cid.block_cid(cid.RAW, data[:4]), data[:4])
    assert isinstance(dag.blocks[0][1], bytes)


class _Dribble(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, as a pipe or a serial port might."""

    def __init__(self, data: bytes) -> None:
        self.src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.src.read(min(n, 1000))


def test_streamed_short_reads_give_the_same_root(sample):
    data = sample[:3 * K + 17]
    want = cid.build_dag(data).root
    assert cid.file_root(cid.read_chunks(_Dribble(data))) == want  # type: ignore[arg-type]
    assert cid.build_dag_from_chunks(cid.read_chunks(io.BytesIO(data))).root == want
    assert [len(c) for c in cid.read_chunks(_Dribble(data))] == [K, K, K, 17]  # type: ignore[arg-type]


def test_builder_limits():
    with pytest.raises(ValueError, match="max_links"):
        cid.build_dag(b"abc", max_links=1)
    with pytest.raises(ValueError, match="leaf limit"):
        cid.file_root([bytes(cid.MAX_LEAF + 1)])


# --- dag-pb ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, hexed", [(0, "00"), (127, "7f"), (128, "8001"), (300, "ac02"),
                                      (2**63 - 1, "ffffffffffffffff7f")])
def test_varint_round_trip(n, hexed):
    assert dagpb.encode_varint(n).hex() == hexed
    assert dagpb.decode_varint(bytes.fromhex(hexed)) == (n, len(hexed) // 2)


@pytest.mark.parametrize("hexed, why", [("80", "truncated"), ("8000", "non-minimal"),
                                        ("ffffffffffffffffff01", "too long")])
def test_varint_refusals(hexed, why):
    with pytest.raises(DagPbError, match=why):
        dagpb.decode_varint(bytes.fromhex(hexed))


def test_decoder_reads_back_every_node_the_builder_wrote(sample):
    for c, block in cid.build_dag(memoryview(sample)[:3 * K]).blocks:
        if cid.decode_cid(c)[0] == cid.DAG_PB:
            node = dagpb.decode_node(block)
            assert dagpb.encode_node(node) == block
            assert dagpb.decode_unixfs(node.data) == dagpb.UnixFSData(2, None, 3 * K, (K, K, K))
    node = PBNode((PBLink(b"\x01" * 36, None, None), PBLink(b"\x02" * 36, "a/b", 7)), None)
    assert dagpb.decode_node(dagpb.encode_node(node)) == node


@pytest.mark.parametrize("block, why", [
    (b"\x0a\x00\x12\x02\x0a\x00", "link after Data"),
    (b"\x0a\x00\x0a\x00", "Data twice"),
    (b"\x1a\x00", "unknown PBNode field"),
    (b"\x0a\x05ab", "runs past"),
    (b"\x12\x02\x18\x01", "without Hash"),
    (b"\x12\x04\x12\x00\x0a\x00", "out of order"),
    (b"\x12\x03\x0a\x00\x18", "truncated"),
    (b"\x12\x04\x0a\x00\x12\x7f", "runs past"),
    (b"\x12\x03\x0a\x00\x18\x01", "overruns"),
])
def test_decoder_refuses_non_canonical_blocks(block, why):
    with pytest.raises(DagPbError, match=why):
        dagpb.decode_node(block)


def test_unixfs_decoder_accepts_packed_blocksizes_and_refuses_garbage():
    assert dagpb.decode_unixfs(bytes.fromhex("0802180822020404")).blocksizes == (4, 4)
    with pytest.raises(DagPbError, match="without Type"):
        dagpb.decode_unixfs(bytes.fromhex("1808"))
    with pytest.raises(DagPbError, match="repeated"):
        dagpb.decode_unixfs(bytes.fromhex("08020802"))


# --- CAR -------------------------------------------------------------------------------------

def test_car_header_bytes():
    root = cid.parse_cid(HELLO)
    assert car.encode_header([root]) == (bytes.fromhex("a265726f6f747381d82a58250001551220")
                                         + root[4:] + bytes.fromhex("6776657273696f6e01"))


def test_car_round_trip(sample):
    dag = cid.build_dag(memoryview(sample)[:2 * K + 5])
    data = car.write_car([dag.root], dag.blocks)
    assert data[:1] == b"\x3a" and data[0x3b:0x3e] == b"\xa4\x80\x10"  # header 58 B; then varint(36 + K)
    assert car.read_car(data) == ([dag.root], dag.blocks)
    assert b"".join(car.iter_car([dag.root], dag.blocks)) == data


def test_tampered_block_is_detected_and_named(sample):
    dag = cid.build_dag(memoryview(sample)[:2 * K + 5])
    data = bytearray(car.write_car([dag.root], dag.blocks))
    data[-1] ^= 1  # last byte of the root node
    with pytest.raises(CarBlockMismatch) as exc:
        car.read_car(bytes(data))
    assert exc.value.cid == dag.root


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d[:-1], "section length"),                               # truncated last section
    (lambda d: d[:1] + b"\xa3" + d[2:], "not the map"),                 # three-entry map
    (lambda d: d.replace(b"version\x01", b"version\x02"), "version must be 1"),
    (lambda d: d.replace(b"roots\x81", b"roots\x98\x01"), "shortest form"),
    (lambda d: b"\x00" + d[1:], "header length"),
    (lambda d: d + b"\x05\x01\x55\x12\x20\x00", "truncated CID"),
    (lambda d: d + b"\x80", "truncated varint"),
])
def test_malformed_car_is_refused(mutate, why):
    data = car.write_car([cid.parse_cid(HELLO)], [(cid.parse_cid(HELLO), b"hello world")])
    with pytest.raises(CarError, match=why):
        car.read_car(mutate(data))


def test_cli_data_cid_prints_kubo_s_cid(cli, tmp_path):
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello world")
    assert cli("data", "cid", str(f)).stdout.strip() == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 4096)  # 1 MiB: four chunks under one dag-pb root
    import json

    out = json.loads(cli("data", "cid", str(big), "--json").stdout)
    assert out["cid"] == cid.file_cid(big.read_bytes()) and out["cid"].startswith("bafybei")
    res = cli("data", "cid", str(tmp_path / "missing"), check=False)
    assert res.returncode == 1 and "missing" in res.stderr
