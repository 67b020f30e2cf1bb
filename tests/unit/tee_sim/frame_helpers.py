"""Helpers shared by the frame tests: build, tamper with and re-seal frames by hand."""

from __future__ import annotations

import struct
import zlib

from tee_sim.abi import frame
from tee_sim.abi.frame import HEADER_SIZE, MAGIC, Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, Cmd, ParamType

# Header field offsets, written out here rather than taken from the module, so a layout change fails.
OFF_MAGIC, OFF_VERSION, OFF_KIND, OFF_RESERVED = 0, 4, 5, 6
OFF_REQUEST_ID, OFF_SESSION, OFF_COMMAND, OFF_TYPES = 8, 12, 16, 20
OFF_RESULT, OFF_ORIGIN, OFF_BODY_LEN, OFF_CRC = 24, 28, 32, 36

_V, _VO, _VIO = ParamType.VALUE_INPUT, ParamType.VALUE_OUTPUT, ParamType.VALUE_INOUT
_MI, _MO, _MIO = ParamType.MEMREF_TEMP_INPUT, ParamType.MEMREF_TEMP_OUTPUT, ParamType.MEMREF_TEMP_INOUT


# -- helpers ---------------------------------------------------------------------------------------

def crc_of(raw: bytes) -> int:
    """CRC-32 as the header comment defines it: header with the crc field zeroed, then the body."""
    return zlib.crc32(raw[:OFF_CRC] + b"\0\0\0\0" + raw[HEADER_SIZE:])


def recrc(raw: bytes) -> bytes:
    """Re-seal a tampered frame, so decoding gets past the CRC to the check under test."""
    return raw[:OFF_CRC] + struct.pack("<I", crc_of(raw)) + raw[HEADER_SIZE:]


def put(raw: bytes, offset: int, fmt: str, value: int, *, seal: bool = True) -> bytes:
    """Overwrite one little-endian header field; re-CRC unless ``seal`` is False."""
    buf = bytearray(raw)
    struct.pack_into("<" + fmt, buf, offset, value)
    return recrc(bytes(buf)) if seal else bytes(buf)


def flip(raw: bytes, offset: int) -> bytes:
    buf = bytearray(raw)
    buf[offset] ^= 0x01
    return bytes(buf)


def build(kind: int, types: int, body: bytes, *, command: int = 0, result: int = 0, origin: int = 0,
          request_id: int = 7, session: int = 3) -> bytes:
    """A frame assembled by hand (not by frame.encode), with a correct CRC."""
    header = struct.pack("<IBBHIIIIIIII", MAGIC, 1, kind, 0, request_id, session, command, types, result,
                         origin, len(body), 0)
    return recrc(header + body)


def request_params(types: int) -> tuple:
    """Request-side data for each slot: inputs carry data, output memrefs carry a capacity."""
    out = []
    for slot, t in enumerate(frame.split_param_types(types)):
        if t in (_V, _VIO):
            out.append(Value(0x1000 + slot, 0xFFFFFFFF - slot))
        elif t in (_MI, _MIO):
            out.append(bytes([slot]) * (slot + 5))
        elif t == _MO:
            out.append(65 + slot)
        else:
            out.append(None)
    return tuple(out)


def response_params(types: int) -> tuple:
    """Response-side data for each slot: only outputs (and in/outs) travel back."""
    out = []
    for slot, t in enumerate(frame.split_param_types(types)):
        if t in (_VO, _VIO):
            out.append(Value(0x2000 + slot, slot))
        elif t in (_MO, _MIO):
            out.append(bytes([0xA0 + slot]) * (3 * slot + 1))
        else:
            out.append(None)
    return tuple(out)


def invoke(cmd: Cmd = Cmd.SEAL, **kw) -> Frame:
    types = CMD_PARAMS[cmd]
    return Frame(Kind.INVOKE, kw.pop("request_id", 41), kw.pop("session", 5), int(cmd), types,
                 request_params(types), **kw)


def reply(cmd: Cmd = Cmd.SEAL, **kw) -> Frame:
    types = CMD_PARAMS[cmd]
    return Frame(Kind.INVOKE | Kind.RESPONSE, 41, 5, int(cmd), types, response_params(types), **kw)


def expected_body_len(types: int, params: tuple, response: bool) -> int:
    """Body size from the module docstring's table, computed independently of _body_items."""
    n = 0
    for t, p in zip(frame.split_param_types(types), params):
        if t == _VIO or (t == _V and not response) or (t == _VO and response):
            n += 8
        elif t == _MIO or (t == _MI and not response) or (t == _MO and response):
            n += 4 + len(p)
        elif t == _MO and not response:
            n += 4
    return n
