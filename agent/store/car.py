"""CARv1 archives (https://ipld.io/specs/transport/car/carv1/): a writer and a verifying reader.

    car      varint(len(header)) header  section*
    header   dag-cbor {"roots": [CID, ...], "version": 1}
    section  varint(len(cid) + len(block)) cid block

The header is the only CBOR this module needs, so it is written by hand in dag-cbor's one
canonical form: map keys sorted by encoded length then bytes ("roots" before "version"),
shortest-form lengths, and each CID as tag 42 over a byte string of 0x00 + the binary CID.
The reader accepts exactly that form and checks every block's sha2-256 against its CID.
Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

from ..errors import IntegrityError
from .cid import CidError, cid_text, decode_cid, read_cid
from .dagpb import DagPbError, decode_varint, encode_varint

#: A header larger than this is refused before it is parsed (a real one is ~60 bytes per root).
MAX_HEADER = 1 << 16
_TAG_CID = b"\xd8\x2a"  # CBOR tag 42, head with a 1-byte argument


class CarError(IntegrityError, ValueError):
    """A CAR that is malformed; `offset` is where reading stopped making sense."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at byte {offset}")
        self.reason, self.offset = reason, offset


class CarBlockMismatch(CarError):
    """A block whose bytes do not hash to its CID (tampered or corrupted); `cid` names it."""

    def __init__(self, cid: bytes, offset: int) -> None:
        super().__init__(f"block {cid_text(cid)} does not match its CID", offset)
        self.cid = cid


def _head(major: int, n: int) -> bytes:
    """A CBOR head (major type, argument) in its shortest form, as dag-cbor requires."""
    if n < 24:
        return bytes((major << 5 | n,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | extra,)) + n.to_bytes(size, "big")
    raise ValueError(f"CBOR argument too large: {n}")


def encode_header(roots: list[bytes]) -> bytes:
    """The dag-cbor CARv1 header for `roots` (binary CIDs)."""
    out = bytearray(b"\xa2")  # map of 2 entries
    out += _head(3, 5) + b"roots" + _head(4, len(roots))
    for cid in roots:
        out += _TAG_CID + _head(2, len(cid) + 1) + b"\x00" + cid
    out += _head(3, 7) + b"version" + _head(0, 1)
    return bytes(out)


def iter_car(roots: list[bytes], blocks: Iterable[tuple[bytes, bytes | memoryview]]) -> Iterator[bytes]:
    """The CAR as successive byte strings (header, then per block its length+CID, then its bytes).

    Lets a caller write a large archive without joining it in memory. Blocks are written as
    given: the caller vouches that each hashes to its CID (the reader checks).
    """
    if not roots:
        raise ValueError("a CARv1 needs at least one root")
    header = encode_header(roots)
    yield encode_varint(len(header)) + header
    for cid, block in blocks:
        yield encode_varint(len(cid) + len(block)) + cid
        yield bytes(block)


def write_car(roots: list[bytes], blocks: Iterable[tuple[bytes, bytes | memoryview]]) -> bytes:
    """The whole CARv1 archive of `blocks` under `roots` (see iter_car)."""
    return b"".join(iter_car(roots, blocks))


class _Cbor:
    """Reads the few CBOR items a CARv1 header may contain, insisting on shortest-form heads."""

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def head(self) -> tuple[int, int]:
        start = self.pos
        if start >= self.end:
            raise CarError("truncated CAR header", start)
        first = self.buf[start]
        major, arg = first >> 5, first & 0x1F
        self.pos += 1
        if arg >= 24:
            size = {24: 1, 25: 2, 26: 4, 27: 8}.get(arg)
            if size is None or self.pos + size > self.end:
                raise CarError("bad or truncated CBOR head", start)
            arg = int.from_bytes(self.buf[self.pos:self.pos + size], "big")
            self.pos += size
            if _head(major, arg) != self.buf[start:self.pos]:
                raise CarError("CBOR length not in shortest form", start)
        return major, arg

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise CarError("truncated CAR header", self.pos)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def text(self) -> bytes:
        major, n = self.head()
        if major != 3:
            raise CarError("CAR header key is not a text string", self.pos)
        return self.take(n)


def decode_header(buf: bytes, pos: int, end: int) -> list[bytes]:
    """The roots of the dag-cbor header in `buf[pos:end]`. Raises CarError unless it is canonical."""
    r = _Cbor(buf, pos, end)
    if r.head() != (5, 2) or r.text() != b"roots":
        raise CarError("CAR header is not the map {roots, version}", pos)
    major, count = r.head()
    if major != 4 or count == 0:
        raise CarError("CAR roots must be a non-empty array", r.pos)
    roots = []
    for _ in range(count):
        at = r.pos
        if r.take(2) != _TAG_CID:
            raise CarError("CAR root is not a CID (tag 42)", at)
        major, n = r.head()
        if major != 2 or n < 2 or r.take(1) != b"\x00":
            raise CarError("CAR root CID must be bytes with a 0x00 prefix", at)
        cid = r.take(n - 1)
        try:
            decode_cid(cid)
        except CidError as e:
            raise CarError(f"bad root CID: {e}", at) from None
        roots.append(cid)
    if r.text() != b"version" or r.head() != (0, 1):
        raise CarError("CAR header version must be 1", r.pos)
    if r.pos != end:
        raise CarError("trailing bytes in the CAR header", r.pos)
    return roots


def read_car(data: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """(roots, [(cid, block), ...]) of a CARv1, every block checked against its CID.

    Raises CarBlockMismatch for a block that does not hash to its CID, CarError for anything
    else (truncation, bad varints, a header not in canonical dag-cbor, unsupported CIDs).
    """
    data = bytes(data)
    try:
        hlen, pos = decode_varint(data, 0)
    except DagPbError as e:
        raise CarError(f"bad header length: {e.reason}", e.offset) from None
    if hlen == 0 or hlen > MAX_HEADER or pos + hlen > len(data):
        raise CarError(f"bad CAR header length {hlen}", 0)
    roots = decode_header(data, pos, pos + hlen)
    pos += hlen
    blocks: list[tuple[bytes, bytes]] = []
    while pos < len(data):
        start = pos
        try:
            size, pos = decode_varint(data, pos)
        except DagPbError as e:
            raise CarError(f"bad section length: {e.reason}", e.offset) from None
        end = pos + size
        if size == 0 or end > len(data):
            raise CarError(f"bad CAR section length {size}", start)
        try:
            cid, pos = read_cid(data, pos)
        except CidError as e:
            raise CarError(f"bad section CID: {e}", pos) from None
        if pos > end:
            raise CarError("CID runs past its section", start)
        block = data[pos:end]
        if hashlib.sha256(block).digest() != cid[-32:]:
            raise CarBlockMismatch(cid, start)
        blocks.append((cid, block))
        pos = end
    return roots, blocks
