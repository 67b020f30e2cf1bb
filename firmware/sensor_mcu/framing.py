"""Frames sensor records for the UART link to the Pi: the MCU side of agent/ingest/frames.py.

That module's docstring is the wire format's one definition; this file mirrors it (same record
type numbers, same struct formats, same COBS and CRC-32) and tests/firmware checks, under real
MicroPython, that the bytes it produces are the bytes the agent's encoder produces.

Runs unchanged under MicroPython and CPython: it imports only `struct` and `binascii`, and uses no
`typing` or `__future__` at run time (MicroPython has neither; it ignores annotations).

    encode_record(rtype, seq, values) -> bytes   a complete frame: COBS(packet) + 0x00

`values` are the layout's values in order; for MOTORS the last value is the list of currents
(mA), for NOTE the text and for OPERATOR the badge id (str). Raises ValueError for a payload over
MAX_PAYLOAD or a bad type, and whatever struct.pack raises for values out of range.
"""

import binascii
import struct

VERSION = 1
MAX_PAYLOAD = 512

POSE = 1
GPS = 2
IMU = 3
MOTORS = 4
BATTERY = 5
TASK_EVENT = 6
NOTE = 7
FAULT = 8
OPERATOR = 9

# record type -> (struct format of the fixed part, tail): the agent's LAYOUTS, minus field names.
# tail "i16[n]": the fixed part ends with a count n of i16 that follow; "utf8": text to the end.
LAYOUTS = {
    POSE: (">Iiih", None),
    GPS: (">Iii", None),
    IMU: (">Iiiiiii", None),
    MOTORS: (">IB", "i16[n]"),
    BATTERY: (">IHBh", None),
    TASK_EVENT: (">IIB", None),
    NOTE: (">I", "utf8"),
    FAULT: (">IH", None),
    OPERATOR: (">I", "utf8"),
}


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32_table(data: bytes, crc: int = 0) -> int:
    """CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320), equal to zlib.crc32(data, crc)."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# MicroPython's zlib has no crc32; binascii.crc32 (C) exists on builds with
# MICROPY_PY_BINASCII_CRC32 (rp2, the wasm port) and on CPython. The table is the fallback.
_native_crc32 = getattr(binascii, "crc32", None)


def crc32(data: bytes) -> int:
    """CRC-32 of `data` as an unsigned int, native when the build has it."""
    if _native_crc32 is not None:
        return int(_native_crc32(data)) & 0xFFFFFFFF
    return crc32_table(data)


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode `data` (no delimiter); same algorithm, same bytes as the agent's cobs_encode."""
    out = bytearray(b"\x01")
    code_at = 0
    for b in data:
        if out[code_at] == 0xFF:  # the block is full (254 bytes): open the next, no implied zero
            code_at = len(out)
            out.append(1)
        if b:
            out.append(b)
            out[code_at] += 1
        else:  # the zero is implied by closing the block here
            code_at = len(out)
            out.append(1)
    return bytes(out)


def pack_payload(rtype: int, values: tuple[int | str | list[int], ...]) -> bytes:
    """The payload of a record of type `rtype` from its values in layout order."""
    layout = LAYOUTS.get(rtype)
    if layout is None:
        raise ValueError("unknown record type %d" % rtype)
    fmt, tail = layout
    last = values[-1] if values else None
    if tail == "i16[n]":
        if not isinstance(last, list):
            raise ValueError("type %d ends with a list of i16" % rtype)
        payload = struct.pack(fmt, *values[:-1], len(last)) + struct.pack(">%dh" % len(last), *last)
    elif tail == "utf8":
        if not isinstance(last, str):
            raise ValueError("type %d ends with a str" % rtype)
        payload = struct.pack(fmt, *values[:-1]) + last.encode("utf-8")
    else:
        payload = struct.pack(fmt, *values)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload of %d bytes" % len(payload))
    return payload


def encode_record(rtype: int, seq: int, values: tuple[int | str | list[int], ...]) -> bytes:
    """The complete frame for one record: COBS(header | payload | crc) + 0x00."""
    payload = pack_payload(rtype, values)
    packet = struct.pack(">BBIH", VERSION, rtype, seq, len(payload)) + payload
    return cobs_encode(packet + struct.pack(">I", crc32(packet))) + b"\x00"
