"""CIDv1 (sha2-256) and the UnixFS file DAG that `ipfs add --cid-version=1` builds.

A CID here is always version 1 with a sha2-256 multihash:

    binary  01 <varint codec> 12 20 <32-byte digest>          (RAW = 0x55, DAG_PB = 0x70)
    text    "b" + base32 (RFC 4648, lower case, no padding) of the binary form

The file DAG matches kubo's defaults with CIDv1 (boxo ipld/unixfs/importer/balanced/builder.go):
fixed 262144-byte chunks, each a raw leaf; balanced layout with at most 174 links per node. A
file of one chunk (or none: the empty file) is its raw leaf. Otherwise a tree of depth d holds up
to 174**d leaves, filled left to right; a partial last subtree keeps single-child nodes (boxo's
fillNodeRec does not collapse them). Every internal node is dag-pb (see `dagpb`): one link per
child (Name "", Tsize = the child subtree's encoded bytes) and UnixFS Data {File, filesize,
blocksizes = file bytes under each child}.

Pure: the caller brings the bytes (or a binary stream to read); nothing else is touched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

from ..errors import IntegrityError
from .dagpb import (PBLink, PBNode, DagPbError, decode_varint, encode_node, encode_unixfs_file,
                    encode_varint)

CID_V1 = 0x01
RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
DIGEST_SIZE = 32

CHUNK_SIZE = 262144  # kubo's default chunker, size-262144
MAX_LINKS = 174  # kubo's default --max-file-links (helpers.DefaultLinksPerBlock)
MAX_LEAF = 1 << 20  # boxo helpers.BlockSizeLimit: the largest leaf the importer accepts

_MULTIHASH_PREFIX = bytes((SHA2_256, DIGEST_SIZE))
_B32 = frozenset(b"abcdefghijklmnopqrstuvwxyz234567")


class CidError(IntegrityError, ValueError):
    """A CID that cannot be accepted (bad text, version, codec varint, hash function or length)."""


def cid_v1(codec: int, digest: bytes) -> bytes:
    """Binary CIDv1 of a sha2-256 `digest` under multicodec `codec`. Raises CidError on a bad digest."""
    if len(digest) != DIGEST_SIZE:
        raise CidError(f"sha2-256 digest must be {DIGEST_SIZE} bytes, got {len(digest)}")
    return bytes((CID_V1,)) + encode_varint(codec) + _MULTIHASH_PREFIX + digest


def block_cid(codec: int, block: bytes | memoryview) -> bytes:
    """Binary CIDv1 of `block`'s bytes (sha2-256) under `codec`."""
    return cid_v1(codec, hashlib.sha256(block).digest())


def read_cid(buf: bytes | memoryview, pos: int = 0) -> tuple[bytes, int]:
    """The CIDv1 starting at `buf[pos]`, and the position after it. Raises CidError.

    Only version 1 with sha2-256 is accepted; the codec may be any multicodec.
    """
    start = pos
    try:
        version, pos = decode_varint(buf, pos)
        if version != CID_V1:
            raise CidError(f"unsupported CID version {version} (only CIDv1)")
        _codec, pos = decode_varint(buf, pos)
        hash_fn, pos = decode_varint(buf, pos)
        size, pos = decode_varint(buf, pos)
    except DagPbError as e:
        raise CidError(f"bad CID varint: {e}") from None
    if hash_fn != SHA2_256 or size != DIGEST_SIZE:
        raise CidError(f"unsupported multihash 0x{hash_fn:x}/{size} (only sha2-256/32)")
    if pos + size > len(buf):
        raise CidError("truncated CID digest")
    return bytes(buf[start:pos + size]), pos + size


def decode_cid(cid: bytes) -> tuple[int, bytes]:
    """(codec, digest) of a binary CIDv1. Raises CidError if `cid` is not exactly one CID."""
    whole, end = read_cid(cid)
    if end != len(cid):
        raise CidError(f"{len(cid) - end} trailing bytes after the CID")
    codec, pos = decode_varint(whole, 1)
    return codec, whole[pos + 2:]


def cid_text(cid: bytes) -> str:
    """The multibase base32 text of a binary CIDv1 ("b" + lower-case base32, unpadded)."""
    decode_cid(cid)  # refuse to print something that is not a CID
    return "b" + base64.b32encode(cid).decode("ascii").rstrip("=").lower()


def parse_cid(text: str) -> bytes:
    """Binary CIDv1 from its base32 text. Raises CidError (CIDv0 "Qm…" text is refused too)."""
    if not isinstance(text, str):
        raise CidError(f"CID text must be str, not {type(text).__name__}")
    if not text.startswith("b") or len(text) < 2:
        raise CidError(f"not a base32 CIDv1 (multibase prefix must be 'b'): {text[:12]!r}")
    body = text[1:].encode("ascii", "replace")
    if not set(body) <= _B32:
        raise CidError("CID text has characters outside lower-case base32")
    if len(body) % 8 in (1, 3, 6):  # lengths no byte string encodes to
        raise CidError("CID text has an impossible base32 length")
    try:
        raw = base64.b32decode(body.upper() + b"=" * (-len(body) % 8))
    except binascii.Error as e:
        raise CidError(f"CID text is not base32: {e}") from None
    # Reject non-canonical text whose spare trailing bits are not zero (two texts, one CID).
    if "b" + base64.b32encode(raw).decode().rstrip("=").lower() != text:
        raise CidError("CID text is not canonical base32")
    decode_cid(raw)
    return raw


# --- the UnixFS file DAG -------------------------------------------------------------------


#: A block's bytes: `bytes`, or a read-only view into an immutable `bytes` (a leaf, not copied).
Block = bytes | memoryview


@dataclass(frozen=True)
class Dag:
    """A file's DAG: `root` (binary CID) and every distinct block, children before parents.

    Leaf blocks cut from a `bytes` input are zero-copy views of it (copying every chunk would
    halve throughput); `bytes(block)` when a real copy is needed.
    """

    root: bytes
    blocks: list[tuple[bytes, Block]]

    @property
    def root_text(self) -> str:
        return cid_text(self.root)


def chunk_bytes(data: bytes | bytearray | memoryview, chunk_size: int = CHUNK_SIZE) -> Iterator[memoryview]:
    """Fixed-size chunks of `data` as zero-copy views (the last one shorter; none for b"")."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    view = memoryview(data).cast("B")
    for off in range(0, len(view), chunk_size):
        yield view[off:off + chunk_size]


def read_chunks(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Fixed-size chunks read from `stream` until EOF; short reads are topped up (as io.ReadFull)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            return
        while len(chunk) < chunk_size:
            more = stream.read(chunk_size - len(chunk))
            if not more:
                break
            chunk += more
        yield chunk


def iter_file_blocks(chunks: Iterable[bytes | memoryview],
                     max_links: int = MAX_LINKS) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """Yield (cid, block) for a file made of `chunks`, children before parents; the root comes last.

    Each chunk becomes one raw leaf (empty chunks are skipped, as the importers do); leaf blocks
    are the chunk objects themselves, not copies. Streaming: only the pending links of the open
    nodes (at most `max_links` per level) are held. Raises ValueError if max_links < 2 or a
    chunk exceeds MAX_LEAF.
    """
    if max_links < 2:
        raise ValueError("max_links must be at least 2")
    # levels[i]: the finished subtrees of height i waiting for their parent, as
    # (cid, tsize, file bytes). A level is flushed into a parent as soon as it holds max_links,
    # which is exactly when boxo's fillNodeRec stops filling that node.
    levels: list[list[tuple[bytes, int, int]]] = [[]]
    sha256 = hashlib.sha256
    leaf_prefix = bytes((CID_V1, RAW)) + _MULTIHASH_PREFIX
    for chunk in chunks:
        size = len(chunk)
        if size == 0:
            continue
        if size > MAX_LEAF:
            raise ValueError(f"chunk of {size} bytes exceeds the {MAX_LEAF}-byte leaf limit")
        cid = leaf_prefix + sha256(chunk).digest()
        yield cid, chunk
        levels[0].append((cid, size, size))
        level = 0
        while len(levels[level]) == max_links:
            parent = _internal_node(levels[level])
            yield parent[0], parent[3]
            levels[level] = []
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(parent[:3])
            level += 1
    if not any(levels):  # the empty file is the raw leaf of b""
        yield block_cid(RAW, b""), b""
        return
    # Close the open nodes bottom-up. The highest non-empty level holding exactly one subtree
    # is the root as is (a single leaf, or an exactly full tree); anything below it is wrapped.
    top = max(i for i, pending in enumerate(levels) if pending)
    for level in range(top + 1):
        pending = levels[level]
        if level == top and len(pending) == 1:
            break
        if not pending:
            continue
        parent = _internal_node(pending)
        yield parent[0], parent[3]
        if level + 1 == len(levels):
            levels.append([])
        levels[level + 1].append(parent[:3])
        if level == top:
            break  # it was the root


def _internal_node(children: list[tuple[bytes, int, int]]) -> tuple[bytes, int, int, bytes]:
    """(cid, tsize, file bytes, block) of the dag-pb File node over `children`."""
    blocksizes = [c[2] for c in children]
    filesize = sum(blocksizes)
    node = PBNode(tuple(PBLink(cid, "", tsize) for cid, tsize, _ in children),
                  encode_unixfs_file(filesize, blocksizes))
    block = encode_node(node)
    return block_cid(DAG_PB, block), len(block) + sum(c[1] for c in children), filesize, block


def build_dag(data: bytes | bytearray | memoryview, chunk_size: int = CHUNK_SIZE,
              max_links: int = MAX_LINKS) -> Dag:
    """The UnixFS DAG of `data` (kubo's `ipfs add --cid-version=1` with the given chunker/links).

    Blocks are de-duplicated (repeated chunks appear once). Leaves are views of `data` when it
    is `bytes`; a mutable input (bytearray, writable memoryview) is copied chunk by chunk.
    """
    return build_dag_from_chunks(chunk_bytes(data, chunk_size), max_links)


def build_dag_from_chunks(chunks: Iterable[bytes | memoryview], max_links: int = MAX_LINKS) -> Dag:
    """As build_dag, from already-cut chunks (e.g. `read_chunks(stream)`)."""
    seen: set[bytes] = set()
    blocks: list[tuple[bytes, Block]] = []
    root = b""
    for root, block in iter_file_blocks(chunks, max_links):
        if root not in seen:
            seen.add(root)
            # A view may stay only if nothing can change the bytes under it afterwards.
            immutable = isinstance(block, bytes) or isinstance(block.obj, bytes)
            blocks.append((root, block if immutable else bytes(block)))
    return Dag(root, blocks)


def file_root(chunks: Iterable[bytes | memoryview], max_links: int = MAX_LINKS) -> bytes:
    """The root CID (binary) of a file from its chunks, keeping no blocks."""
    root = b""
    for root, _ in iter_file_blocks(chunks, max_links):
        pass
    return root


def file_cid(data: bytes | bytearray | memoryview, chunk_size: int = CHUNK_SIZE,
             max_links: int = MAX_LINKS) -> str:
    """The text root CID `ipfs add --cid-version=1` prints for `data`."""
    return cid_text(file_root(chunk_bytes(data, chunk_size), max_links))
