"""Frames between the worlds: a versioned fixed header, a length-prefixed body, hard limits, strict decoding.

Header (40 bytes, little-endian, like Parsec's fixed header)::

    off size field
      0   4  magic        0xA1770EE0
      4   1  version      1
      5   1  kind         Kind (responses have bit 7 set)
      6   2  reserved     must be 0
      8   4  request_id   chosen by the normal world, echoed by the secure world
     12   4  session      session id (0 before OPEN_SESSION answers)
     16   4  command      Cmd for INVOKE, Login for OPEN_SESSION, 0 otherwise
     20   4  param_types  TEEC_PARAM_TYPES(p0..p3)
     24   4  result       TeecResult (responses; 0 in requests)
     28   4  origin       Origin (responses; 0 in requests)
     32   4  body_len     bytes following the header, <= MAX_BODY
     36   4  crc32        zlib CRC-32 of the header (with this field zero) and the body

Body: for p0..p3 in order, by type and direction:

- VALUE_INPUT / INOUT in requests, VALUE_OUTPUT / INOUT in responses: ``a:u32 b:u32``
- MEMREF_TEMP_INPUT / INOUT in requests: ``len:u32`` then ``len`` bytes
- MEMREF_TEMP_OUTPUT in requests: ``capacity:u32`` (the caller's buffer size; no bytes)
- MEMREF_TEMP_OUTPUT / INOUT in responses: ``len:u32`` then ``len`` bytes
- anything else: nothing

The CRC protects serial links against line noise; it is not a security measure.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from .ids import ParamType, split_param_types

MAGIC = 0xA1770EE0
VERSION = 1
HEADER = struct.Struct("<IBBHIIIIIIII")
HEADER_SIZE = HEADER.size  # 40
MAX_MEMREF = 32 * 1024
MAX_BODY = 4 * (4 + MAX_MEMREF)
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_U32 = struct.Struct("<I")
_VAL = struct.Struct("<II")
_VALID_TYPES = {int(t) for t in ParamType}
_U32_MAX = 0xFFFFFFFF
_NO_CRC = b"\0\0\0\0"


class Kind(IntEnum):
    OPEN_SESSION = 1
    INVOKE = 2
    CLOSE_SESSION = 3
    RESPONSE = 0x80  # OR-ed with the request's kind


# Plain ints for the per-frame checks: arithmetic on IntEnum members costs more than on ints.
_RESPONSE = int(Kind.RESPONSE)
_REQUEST_KINDS = frozenset({int(Kind.OPEN_SESSION), int(Kind.INVOKE), int(Kind.CLOSE_SESSION)})


class FrameError(ValueError):
    """A frame that cannot be accepted; ``reason`` says what was wrong and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTruncated(FrameError):
    """Fewer bytes than the header or its body_len announce."""


class FrameTooLarge(FrameError):
    """body_len or a memref above the hard limits; nothing was allocated for it."""


class FrameCorrupt(FrameError):
    """Bad magic or CRC: line noise or a stream out of step."""


class FrameMalformed(FrameError):
    """Well delimited but not a valid frame (version, kind, reserved bits, parameter layout)."""


@dataclass(slots=True)  # treated as immutable; slots make the hot path cheap
class Value:
    a: int = 0
    b: int = 0


#: A parameter slot: Value for value types; bytes for memref contents; int for an output
#: memref's capacity in a request; None for TEEC_NONE (or a slot with no data in this direction).
Param = Union[Value, bytes, int, None]
NO_PARAMS: tuple[Param, Param, Param, Param] = (None, None, None, None)


@dataclass(slots=True)  # treated as immutable
class Frame:
    kind: int
    request_id: int
    session: int
    command: int
    types: int
    params: tuple[Param, Param, Param, Param] = NO_PARAMS
    result: int = 0
    origin: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.kind & _RESPONSE)


@functools.lru_cache(maxsize=256)
def _layout(types: int, response: bool) -> tuple[tuple[int, str], ...]:
    """(slot, encoding) for slots carrying data in this direction: 'v', 'm' or 'cap'. Checks the types."""
    check_types(types)
    out = []
    for slot, t in enumerate(split_param_types(types)):
        if t == ParamType.VALUE_INOUT or (t == ParamType.VALUE_INPUT and not response) or (
                t == ParamType.VALUE_OUTPUT and response):
            out.append((slot, "v"))
        elif t == ParamType.MEMREF_TEMP_INOUT or (t == ParamType.MEMREF_TEMP_INPUT and not response) or (
                t == ParamType.MEMREF_TEMP_OUTPUT and response):
            out.append((slot, "m"))
        elif t == ParamType.MEMREF_TEMP_OUTPUT and not response:
            out.append((slot, "cap"))
    return tuple(out)


def check_types(types: int) -> None:
    if types >> 16:
        raise FrameMalformed(f"param_types 0x{types:08x}: bits above 16 set")
    for slot, t in enumerate(split_param_types(types)):
        if t not in _VALID_TYPES:
            raise FrameMalformed(f"param_types 0x{types:04x}: p{slot} has unknown type 0x{t:x}")


def encode_body(types: int, params: tuple[Param, ...], response: bool) -> bytes:
    out = bytearray()
    for slot, enc in _layout(types, response):
        p = params[slot]
        if enc == "v":
            if not isinstance(p, Value):
                raise FrameMalformed(f"p{slot}: value parameter expected, got {type(p).__name__}")
            if not (0 <= p.a <= 0xFFFFFFFF and 0 <= p.b <= 0xFFFFFFFF):
                raise FrameMalformed(f"p{slot}: value a={p.a} b={p.b} does not fit 32 bits")
            out += _VAL.pack(p.a, p.b)
        elif enc == "m":
            if not isinstance(p, (bytes, bytearray)):
                raise FrameMalformed(f"p{slot}: memref contents expected, got {type(p).__name__}")
            if len(p) > MAX_MEMREF:
                raise FrameTooLarge(f"p{slot}: memref of {len(p)} bytes exceeds {MAX_MEMREF}")
            out += _U32.pack(len(p)) + p
        else:
            if not isinstance(p, int) or isinstance(p, bool) or p < 0:
                raise FrameMalformed(f"p{slot}: output capacity 0..{MAX_MEMREF} expected, got {p!r}")
            if p > MAX_MEMREF:
                raise FrameTooLarge(f"p{slot}: output capacity {p} exceeds {MAX_MEMREF}")
            out += _U32.pack(p)
    return bytes(out)


def encode(frame: Frame) -> bytes:
    """Serialize a frame; raises FrameError for anything decode() would refuse."""
    kind, request_id, session, command = frame.kind, frame.request_id, frame.session, frame.command
    result, origin = frame.result, frame.origin
    if kind & ~_RESPONSE not in _REQUEST_KINDS or kind > 0xFF:
        raise FrameMalformed(f"kind 0x{kind:x} unknown")
    response = bool(kind & _RESPONSE)
    if not response and (result or origin):
        raise FrameMalformed("request carries a result or origin")
    if not (0 <= request_id <= _U32_MAX and 0 <= session <= _U32_MAX and 0 <= command <= _U32_MAX
            and 0 <= result <= _U32_MAX and 0 <= origin <= _U32_MAX):
        for name in ("request_id", "session", "command", "result", "origin"):
            if not 0 <= getattr(frame, name) <= _U32_MAX:
                raise FrameMalformed(f"{name} {getattr(frame, name)} does not fit 32 bits")
    body = encode_body(frame.types, frame.params, response)
    header = HEADER.pack(MAGIC, VERSION, kind, 0, request_id, session, command, frame.types, result, origin,
                         len(body), 0)
    crc = zlib.crc32(body, zlib.crc32(header))
    return header[:-4] + _U32.pack(crc) + body


def _frame_crc(raw: bytes) -> int:
    """CRC-32 of a whole encoded frame, its crc32 field counted as zero."""
    return zlib.crc32(raw[HEADER_SIZE:], zlib.crc32(raw[:HEADER_SIZE - 4] + _NO_CRC))


def parse_header(header: bytes) -> int:
    """Check a 40-byte header's magic, version and limits; return body_len (before reading the body)."""
    return _header(header)[10]


def _header(header: bytes) -> tuple:
    """The header's fields once parse_header's checks pass."""
    if len(header) < HEADER_SIZE:
        raise FrameTruncated(f"header: {len(header)} of {HEADER_SIZE} bytes")
    fields = HEADER.unpack_from(header)
    magic, version, reserved, body_len = fields[0], fields[1], fields[3], fields[10]
    if magic != MAGIC:
        raise FrameCorrupt(f"header: bad magic 0x{magic:08x}")
    if version != VERSION:
        raise FrameMalformed(f"header: version {version}, this end speaks {VERSION}")
    if reserved:
        raise FrameMalformed(f"header: reserved field 0x{reserved:04x} is not zero")
    if body_len > MAX_BODY:
        raise FrameTooLarge(f"header: body_len {body_len} exceeds {MAX_BODY}")
    return fields


def decode(buf: bytes) -> Frame:
    """Decode exactly one frame occupying all of ``buf``; raises a FrameError subclass otherwise."""
    (_m, _v, kind, _r, request_id, session, command, types, result, origin, body_len, crc) = _header(buf)
    if len(buf) < HEADER_SIZE + body_len:
        raise FrameTruncated(f"body: {len(buf) - HEADER_SIZE} of {body_len} bytes")
    if len(buf) > HEADER_SIZE + body_len:
        raise FrameMalformed(f"{len(buf) - HEADER_SIZE - body_len} bytes after the body")
    if _frame_crc(buf) != crc:
        raise FrameCorrupt(f"crc32 mismatch (request_id {request_id})")
    if kind & ~_RESPONSE not in _REQUEST_KINDS:
        raise FrameMalformed(f"kind 0x{kind:02x} unknown")
    response = bool(kind & _RESPONSE)
    if not response and (result or origin):
        raise FrameMalformed("request carries a result or origin")
    layout = _layout(types, response)
    params: list[Param] = [None, None, None, None]
    body = memoryview(buf)[HEADER_SIZE:]
    pos = 0
    for slot, enc in layout:
        if enc == "v":
            if pos + 8 > body_len:
                raise FrameMalformed(f"p{slot}: value runs past the body")
            params[slot] = Value(*_VAL.unpack_from(body, pos))
            pos += 8
            continue
        if pos + 4 > body_len:
            raise FrameMalformed(f"p{slot}: length runs past the body")
        (n,) = _U32.unpack_from(body, pos)
        pos += 4
        if n > MAX_MEMREF:
            raise FrameTooLarge(f"p{slot}: memref length {n} exceeds {MAX_MEMREF}")
        if enc == "cap":
            params[slot] = n
            continue
        if pos + n > body_len:
            raise FrameMalformed(f"p{slot}: memref of {n} bytes runs past the body")
        params[slot] = bytes(body[pos:pos + n])
        pos += n
    if pos != body_len:
        raise FrameMalformed(f"body: {body_len - pos} bytes left after p3")
    return Frame(kind, request_id, session, command, types, tuple(params), result, origin)  # type: ignore[arg-type]


def body_of(frame_bytes: bytes) -> bytes:
    """The body of an encoded frame: what a chain block's body digest covers."""
    return frame_bytes[HEADER_SIZE:]


def find_magic(buf: bytes, start: int = 1) -> int:
    """Offset of the next possible header in a byte stream (for resynchronising a serial link), or -1."""
    return buf.find(_MAGIC_BYTES, start)


def _next_start(buf: bytearray) -> int:
    """Offset (>= 1) where the next frame may start: the next magic, or a partial magic at the end."""
    idx = buf.find(_MAGIC_BYTES, 1)
    if idx >= 0:
        return idx
    keep = next((n for n in (3, 2, 1) if len(buf) > n and bytes(buf[-n:]) == _MAGIC_BYTES[:n]), 0)
    return len(buf) - keep


class StreamSplitter:
    """Sans-I/O splitter for a byte stream (socket or serial line): feed bytes, get frames or errors.

    ``feed`` returns a list of items, each either the raw bytes of one CRC-checked frame or a
    FrameError describing bytes that were skipped. After garbage, a bad header or a bad CRC it
    resynchronises on the next magic, so one corrupt frame never swallows the frame behind it.
    The buffer never holds more than one maximal frame plus one read.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Union[bytes, FrameError]]:
        if not self._buf and len(data) >= HEADER_SIZE:  # the usual case: exactly one whole frame arrived
            try:
                fields = _header(data)
            except FrameError:
                fields = None  # the general path below reports it and resynchronises
            if fields is not None and len(data) == HEADER_SIZE + fields[10] and _frame_crc(data) == fields[11]:
                return [bytes(data)]
        self._buf += data
        out: list[Union[bytes, FrameError]] = []
        buf = self._buf
        while buf:
            if not buf.startswith(_MAGIC_BYTES[:min(4, len(buf))]):
                cut = _next_start(buf)
                out.append(FrameCorrupt(f"{cut} bytes of garbage skipped"))
                del buf[:cut]
                continue
            if len(buf) < HEADER_SIZE:
                break
            try:
                body_len = parse_header(bytes(buf[:HEADER_SIZE]))
            except FrameError as e:
                out.append(e)
                self._skip_to_next_magic()
                continue
            if len(buf) < HEADER_SIZE + body_len:
                break
            raw = bytes(buf[:HEADER_SIZE + body_len])
            (crc,) = _U32.unpack_from(raw, HEADER_SIZE - 4)
            if _frame_crc(raw) != crc:
                out.append(FrameCorrupt("crc32 mismatch"))
                self._skip_to_next_magic()
                continue
            del buf[:HEADER_SIZE + body_len]
            out.append(raw)
        return out

    def _skip_to_next_magic(self) -> None:
        del self._buf[:_next_start(self._buf)]

    def reset(self) -> None:
        """Drop a partial frame (a peer that stalled mid-frame)."""
        self._buf.clear()
