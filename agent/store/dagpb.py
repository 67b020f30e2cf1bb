"""The dag-pb block codec and the UnixFS `Data` message, byte for byte as kubo (boxo) writes them.

dag-pb (https://ipld.io/specs/codecs/dag-pb/spec/) is a protobuf subset:

    PBLink { 1: Hash bytes, 2: Name string, 3: Tsize uint64 }       fields in this order
    PBNode { 2: Links repeated PBLink, 1: Data bytes }               ALL Links before Data

boxo's merkledag (coding.go) always sets Name (so an empty name is written as `12 00`) and Tsize.
UnixFS `Data` (boxo ipld/unixfs/pb/unixfs.proto, proto2) for a file node written by the importer:

    { 1: Type varint (File = 2), 3: filesize varint, 4: blocksizes varint, repeated NOT packed }

Varints are unsigned LEB128, as both protobuf and multiformats use them. Decoding is strict:
truncation, wrong wire types, fields out of canonical order, unknown fields and non-minimal or
over-long varints raise `DagPbError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import IntegrityError

# UnixFS Data.DataType values (unixfs.proto).
UNIXFS_RAW, UNIXFS_DIRECTORY, UNIXFS_FILE = 0, 1, 2

_MAX_VARINT_BYTES = 9  # multiformats caps varints at 9 bytes (63 bits)


class DagPbError(IntegrityError, ValueError):
    """A varint, dag-pb block or UnixFS message that does not decode; `offset` says where."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at byte {offset}")
        self.reason, self.offset = reason, offset


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128 of `n` (0 <= n < 2**63). Raises ValueError outside that range."""
    if not 0 <= n < 1 << 63:
        raise ValueError(f"varint out of range: {n}")
    if n < 0x80:  # the common case: codecs, small lengths
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode the varint at `buf[pos:]`; returns (value, position after it). Raises DagPbError."""
    value = shift = 0
    start = pos
    while True:
        if pos >= len(buf):
            raise DagPbError("truncated varint", start)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            # A trailing 0x00 byte would give a second encoding of the same number.
            if b == 0 and pos - start > 1:
                raise DagPbError("non-minimal varint", start)
            return value, pos
        shift += 7
        if pos - start >= _MAX_VARINT_BYTES:
            raise DagPbError("varint too long", start)


def _field(key: int, payload: bytes) -> bytes:
    """A length-delimited field: key byte, varint length, payload (keys here are all < 0x80)."""
    return bytes((key,)) + encode_varint(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class PBLink:
    """One link: `hash` is the child's binary CID, `tsize` the encoded size of its whole subtree."""

    hash: bytes
    name: str | None = ""
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def encode_link(link: PBLink) -> bytes:
    out = _field(0x0A, link.hash)
    if link.name is not None:
        out += _field(0x12, link.name.encode())
    if link.tsize is not None:
        out += b"\x18" + encode_varint(link.tsize)
    return out


def encode_node(node: PBNode) -> bytes:
    """The canonical dag-pb bytes of `node`: every link (field 2), then Data (field 1) if present."""
    parts = [_field(0x12, encode_link(link)) for link in node.links]
    if node.data is not None:
        parts.append(_field(0x0A, node.data))
    return b"".join(parts)


def _read_bytes(buf: bytes, pos: int, end: int) -> tuple[bytes, int]:
    n, pos = decode_varint(buf, pos)
    if pos + n > end:
        raise DagPbError("length-delimited field runs past its end", pos)
    return bytes(buf[pos:pos + n]), pos + n


def _decode_link(buf: bytes, pos: int, end: int) -> PBLink:
    fields: dict[int, object] = {}
    last = 0
    while pos < end:
        start = pos
        key, pos = decode_varint(buf, pos)
        num, wire = key >> 3, key & 7
        if num <= last or num > 3:
            raise DagPbError(f"PBLink field {num} out of order or unknown", start)
        if num == 3:
            if wire != 0:
                raise DagPbError("PBLink.Tsize must be a varint", start)
            fields[3], pos = decode_varint(buf, pos)
        else:
            if wire != 2:
                raise DagPbError(f"PBLink field {num} must be length-delimited", start)
            fields[num], pos = _read_bytes(buf, pos, end)
        last = num
    if pos != end:
        raise DagPbError("PBLink overruns its length", end)
    if 1 not in fields:
        raise DagPbError("PBLink without Hash", end)
    name = fields.get(2)
    try:
        text = None if name is None else name.decode()  # type: ignore[union-attr]
    except UnicodeDecodeError:
        raise DagPbError("PBLink.Name is not UTF-8", end) from None
    return PBLink(fields[1], text, fields.get(3))  # type: ignore[arg-type]


def decode_node(block: bytes) -> PBNode:
    """Parse a dag-pb block. Raises DagPbError unless it is in the canonical form described above."""
    links: list[PBLink] = []
    data: bytes | None = None
    pos, end = 0, len(block)
    while pos < end:
        start = pos
        key, pos = decode_varint(block, pos)
        if key == 0x12:
            if data is not None:
                raise DagPbError("PBNode link after Data", start)
            n, body = decode_varint(block, pos)
            if body + n > end:
                raise DagPbError("PBLink runs past the block", body)
            links.append(_decode_link(block, body, body + n))
            pos = body + n
        elif key == 0x0A:
            if data is not None:
                raise DagPbError("PBNode.Data twice", start)
            data, pos = _read_bytes(block, pos, end)
        else:
            raise DagPbError(f"unknown PBNode field key 0x{key:x}", start)
    return PBNode(tuple(links), data)


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS fields this project writes and reads (mode/mtime/hamt fields are refused)."""

    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()


def encode_unixfs_file(filesize: int, blocksizes: list[int] | tuple[int, ...]) -> bytes:
    """UnixFS Data of an internal file node, exactly as boxo's FSNode.GetBytes() writes it."""
    out = bytearray(b"\x08\x02\x18")  # Type = File; then filesize's key
    out += encode_varint(filesize)
    for size in blocksizes:  # proto2 repeated scalar: one key per value (not packed)
        out += b"\x20" + encode_varint(size)
    return bytes(out)


def decode_unixfs(buf: bytes) -> UnixFSData:
    """Parse a UnixFS Data message (Type, Data, filesize, blocksizes). Raises DagPbError."""
    typ: int | None = None
    data: bytes | None = None
    filesize: int | None = None
    sizes: list[int] = []
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = decode_varint(buf, pos)
        if key == 0x08 and typ is None:
            typ, pos = decode_varint(buf, pos)
        elif key == 0x12 and data is None:
            data, pos = _read_bytes(buf, pos, end)
        elif key == 0x18 and filesize is None:
            filesize, pos = decode_varint(buf, pos)
        elif key == 0x20:
            size, pos = decode_varint(buf, pos)
            sizes.append(size)
        elif key == 0x22:  # a packed encoding of blocksizes is legal protobuf; accept it on read
            body, pos = _read_bytes(buf, pos, end)
            p = 0
            while p < len(body):
                size, p = decode_varint(body, p)
                sizes.append(size)
        else:
            raise DagPbError(f"unexpected or repeated UnixFS field key 0x{key:x}", start)
    if typ is None:
        raise DagPbError("UnixFS Data without Type", 0)
    return UnixFSData(typ, data, filesize, tuple(sizes))
