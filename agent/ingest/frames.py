"""The sensor MCU's UART wire format, and a sans-I/O decoder for a stream of it.

This is the single definition of the format; `firmware/sensor_mcu/framing.py` mirrors it, and
`tests/firmware/test_micropython.py` checks byte for byte that the two agree.

    stream  = frame*                    bytes between frames that do not decode are skipped
    frame   = COBS(packet) 0x00         COBS leaves no 0x00 inside; 0x00 ends every frame
    packet  = version u8 (= 1) | record_type u8 | seq u32 | length u16 | payload | crc u32
    crc     = CRC-32 (IEEE 802.3, as zlib.crc32) over version .. payload

Integers are big-endian. `length` counts payload bytes, at most MAX_PAYLOAD (512): a packet is at
most 524 bytes, its COBS encoding at most MAX_ENCODED (527), plus the delimiter. `seq` is one
counter per link: the MCU numbers every record it sends, whatever its type, from 0 at boot, and
wraps at 2**32. `t_ms`, first in every payload, is the MCU's uptime in ms modulo 2**32.

Payloads (LAYOUTS; struct formats, big-endian):

    POSE       1  t_ms u32, x_mm i32, y_mm i32, heading_cdeg i16
    GPS        2  t_ms u32, lat_e7 i32, lon_e7 i32                      (degrees x 1e7)
    IMU        3  t_ms u32, ax ay az i32 (mm/s^2), gx gy gz i32 (millidegrees/s)
    MOTORS     4  t_ms u32, n u8, then n x i16 currents_ma
    BATTERY    5  t_ms u32, mv u16, soc_pct u8, temp_dc i16             (0.1 degC)
    TASK_EVENT 6  t_ms u32, task_id u32, event u8
    NOTE       7  t_ms u32, then text: UTF-8 up to the end of the payload (operator's free text)
    FAULT      8  t_ms u32, code u16
    OPERATOR   9  t_ms u32, then badge: UTF-8 to the end of the payload (who is working the robot)

Decoding a stream (FrameDecoder.feed) yields Frame, Gap, Restart, Duplicate and FrameError values,
never raises: a frame that fails a check is counted by reason and skipped, and decoding resumes
after the next 0x00.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Union

from ..errors import AgentError

VERSION = 1
MAX_PAYLOAD = 512
_HEADER = struct.Struct(">BBIH")
_CRC = struct.Struct(">I")
MAX_PACKET = _HEADER.size + MAX_PAYLOAD + _CRC.size
#: COBS adds one code byte per started block of 254 bytes: at most n // 254 + 1.
MAX_ENCODED = MAX_PACKET + MAX_PACKET // 254 + 1
SEQ_MOD = 1 << 32


class RecordType(IntEnum):
    POSE = 1
    GPS = 2
    IMU = 3
    MOTORS = 4
    BATTERY = 5
    TASK_EVENT = 6
    NOTE = 7
    FAULT = 8
    OPERATOR = 9


@dataclass(frozen=True)
class Layout:
    """A payload: a fixed part `fmt` whose values are named by `fields`, then an optional tail.

    tail "i16[n]": the fixed part's last value (not named) counts the i16 items that follow;
    tail "utf8": UTF-8 text to the end of the payload. The tail's value is named `tail_field`.
    """

    fmt: str
    fields: tuple[str, ...]
    tail: str | None = None
    tail_field: str | None = None


LAYOUTS: dict[RecordType, Layout] = {
    RecordType.POSE: Layout(">Iiih", ("t_ms", "x_mm", "y_mm", "heading_cdeg")),
    RecordType.GPS: Layout(">Iii", ("t_ms", "lat_e7", "lon_e7")),
    RecordType.IMU: Layout(">Iiiiiii", ("t_ms", "ax", "ay", "az", "gx", "gy", "gz")),
    RecordType.MOTORS: Layout(">IB", ("t_ms",), "i16[n]", "currents_ma"),
    RecordType.BATTERY: Layout(">IHBh", ("t_ms", "mv", "soc_pct", "temp_dc")),
    RecordType.TASK_EVENT: Layout(">IIB", ("t_ms", "task_id", "event")),
    RecordType.NOTE: Layout(">I", ("t_ms",), "utf8", "text"),
    RecordType.FAULT: Layout(">IH", ("t_ms", "code")),
    RecordType.OPERATOR: Layout(">I", ("t_ms",), "utf8", "badge"),
}
_STRUCTS = {t: struct.Struct(layout.fmt) for t, layout in LAYOUTS.items()}


# -- errors: one base, one class per thing a caller would count or handle differently ---------------

class FrameError(AgentError):
    """A frame or record that cannot be accepted. `offset`: stream offset of the frame's first byte;
    `seq`: its sequence number when the packet's CRC verified (else None). `reason` keys the counters."""

    reason = "frame"

    def __init__(self, detail: str, *, offset: int | None = None, seq: int | None = None) -> None:
        where = "".join([f" at byte {offset}" if offset is not None else "",
                         f" (seq {seq})" if seq is not None else ""])
        super().__init__(f"{self.reason}: {detail}{where}")
        self.detail, self.offset, self.seq = detail, offset, seq


class CobsError(FrameError):
    reason = "cobs"


class LengthError(FrameError):
    """Packet shorter than header + CRC, or its length field disagrees with its size or the limit."""

    reason = "length"


class CrcError(FrameError):
    reason = "crc"


class VersionError(FrameError):
    reason = "version"


class OversizeError(FrameError):
    """No delimiter within MAX_ENCODED bytes: the bytes are dropped up to the next 0x00."""

    reason = "oversize"


class UnknownRecordType(FrameError):
    reason = "record_type"


class PayloadError(FrameError):
    """A payload whose size or text does not fit its record type's layout."""

    reason = "payload"


class FieldError(FrameError):
    """encode_record() was given fields that do not fit the layout (names, ranges, sizes)."""

    reason = "fields"


# -- COBS (consistent overhead byte stuffing) ---------------------------------------------------------

def cobs_encode(data: bytes) -> bytes:
    """COBS-encode `data` (no delimiter added). The result contains no 0x00."""
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


def cobs_decode(data: bytes, *, offset: int | None = None) -> bytes:
    """Decode one COBS block sequence (no delimiter). Raises CobsError (a 0x00, or a block past the end)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n or 0 in data[i + 1:end]:
            raise CobsError(f"bad code byte 0x{code:02x} at packet byte {i}", offset=offset)
        out += data[i + 1:end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# -- records ----------------------------------------------------------------------------------------

def encode_record(record_type: RecordType | int, seq: int, fields: dict[str, Any]) -> bytes:
    """The complete frame (COBS packet + 0x00) carrying `fields` as a record of `record_type`.

    `fields` holds exactly the layout's names (MOTORS: t_ms, currents_ma as a list; NOTE: t_ms,
    text). Raises UnknownRecordType, or FieldError for missing/extra names, out-of-range values,
    a seq outside u32, or a payload over MAX_PAYLOAD.
    """
    try:
        rtype = RecordType(record_type)
    except ValueError:
        raise UnknownRecordType(f"record type {record_type!r}", seq=seq) from None
    layout = LAYOUTS[rtype]
    names = set(layout.fields) | ({layout.tail_field} if layout.tail_field else set())
    if set(fields) != names:
        raise FieldError(f"{rtype.name} takes {sorted(names)}, got {sorted(fields)}", seq=seq)
    if not (isinstance(seq, int) and 0 <= seq < SEQ_MOD):
        raise FieldError(f"seq {seq!r} is not a u32")
    values = [fields[name] for name in layout.fields]
    try:
        if layout.tail == "i16[n]":
            items = list(fields[layout.tail_field or ""])
            payload = _STRUCTS[rtype].pack(*values, len(items)) + struct.pack(f">{len(items)}h", *items)
        elif layout.tail == "utf8":
            text = fields[layout.tail_field or ""]
            if not isinstance(text, str):
                raise FieldError(f"{layout.tail_field} must be str", seq=seq)
            payload = _STRUCTS[rtype].pack(*values) + text.encode("utf-8")
        else:
            payload = _STRUCTS[rtype].pack(*values)
    except (struct.error, UnicodeEncodeError, TypeError) as e:
        raise FieldError(f"{rtype.name}: {e}", seq=seq) from None
    if len(payload) > MAX_PAYLOAD:
        raise FieldError(f"{rtype.name} payload of {len(payload)} bytes > {MAX_PAYLOAD}", seq=seq)
    packet = _HEADER.pack(VERSION, rtype, seq, len(payload)) + payload
    return cobs_encode(packet + _CRC.pack(zlib.crc32(packet))) + b"\x00"


def decode_payload(record_type: int, payload: bytes, *, offset: int | None = None,
                   seq: int | None = None) -> dict[str, Any]:
    """The fields of `payload` as a record of `record_type` (the inverse of encode_record's fields).

    Raises UnknownRecordType, or PayloadError when the size, item count or UTF-8 text does not fit.
    `offset` and `seq` only locate the error.
    """
    try:
        rtype = RecordType(record_type)
    except ValueError:
        raise UnknownRecordType(f"record type {record_type}", offset=offset, seq=seq) from None
    layout, fixed = LAYOUTS[rtype], _STRUCTS[rtype]
    if len(payload) < fixed.size or (layout.tail is None and len(payload) != fixed.size):
        raise PayloadError(f"{rtype.name} payload of {len(payload)} bytes", offset=offset, seq=seq)
    values = fixed.unpack_from(payload)
    rest = payload[fixed.size:]
    tail: Any = None
    if layout.tail == "i16[n]":
        count, values = values[-1], values[:-1]
        if len(rest) != 2 * count:
            raise PayloadError(f"{rtype.name} announces {count} items, carries {len(rest)} bytes",
                               offset=offset, seq=seq)
        tail = list(struct.unpack(f">{count}h", rest))
    elif layout.tail == "utf8":
        try:
            tail = rest.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"{rtype.name} text is not UTF-8", offset=offset, seq=seq) from None
    out = dict(zip(layout.fields, values))
    if layout.tail_field:
        out[layout.tail_field] = tail
    return out


# -- the stream decoder -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """A record that passed every check. `offset`: stream offset of its first byte; `size`: its bytes
    on the wire, delimiter included."""

    record_type: RecordType
    seq: int
    fields: dict[str, Any]
    offset: int
    size: int


@dataclass(frozen=True)
class Gap:
    """Records `expected` .. `got - 1` (mod 2**32) never arrived; reported just before the frame `got`."""

    expected: int
    got: int
    missing_count: int
    offset: int


@dataclass(frozen=True)
class Restart:
    """The sequence went backwards: the MCU started counting again (a reboot), not a gap."""

    previous: int
    got: int
    offset: int


@dataclass(frozen=True)
class Duplicate:
    """The same seq as the frame before: the frame is dropped."""

    seq: int
    offset: int


Event = Union[Frame, Gap, Restart, Duplicate, FrameError]


@dataclass
class Counters:
    frames: int = 0                                        # Frames delivered
    bytes: int = 0                                         # bytes fed
    corrupt: dict[str, int] = field(default_factory=dict)  # FrameError.reason -> count
    gaps: int = 0
    missing: int = 0                                       # sum of Gap.missing_count
    duplicates: int = 0
    restarts: int = 0


class FrameDecoder:
    """Byte-fed decoder for one link. Buffers at most MAX_ENCODED bytes; never raises on input.

    Sequence numbers: the first frame sets the reference. Then, with d = (seq - (last + 1)) mod 2**32:
    d = 0 is in order; seq = last is a Duplicate (dropped); 0 < d < 2**31 is a Gap of d records;
    otherwise the seq went backwards, which a UART (no reordering, no retransmission) only shows when
    the MCU restarted its counter: a Restart, and the new seq becomes the reference. Only packets
    whose CRC verified move the reference, including ones whose payload is then rejected.
    """

    def __init__(self) -> None:
        self.counters = Counters()
        self._buf = bytearray()
        self._start = 0            # stream offset of the frame being collected
        self._discarding = False   # past MAX_ENCODED without a delimiter: drop until the next 0x00
        self._last_seq: int | None = None

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete frame (at most MAX_ENCODED)."""
        return len(self._buf)

    def discard_partial(self) -> int:
        """Drop the incomplete frame held (the link went down mid-frame) and return its byte count.

        A non-empty partial frame counts once under corrupt reason "truncated". Without this, the
        first frame after a reconnect would be glued to the stale bytes and lost as well. Bytes
        being skipped after an oversize run were already counted: they are dropped uncounted.
        """
        n = len(self._buf)
        self._buf.clear()
        self._discarding = False
        if n:
            self.counters.corrupt["truncated"] = self.counters.corrupt.get("truncated", 0) + 1
        return n

    def feed(self, data: bytes) -> list[Event]:
        """Consume `data` (any split of the stream); return the events it completes, in stream order."""
        out: list[Event] = []
        base = self.counters.bytes
        self.counters.bytes += len(data)
        pos = 0
        while pos < len(data):
            end = data.find(b"\x00", pos)
            stop = len(data) if end < 0 else end
            if not self._discarding:
                if not self._buf:
                    self._start = base + pos
                if len(self._buf) + stop - pos > MAX_ENCODED:
                    self._buf.clear()
                    self._discarding = True
                    out.append(self._count(OversizeError(f"no delimiter within {MAX_ENCODED} bytes",
                                                         offset=self._start)))
                else:
                    self._buf += data[pos:stop]
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._buf:  # an empty frame (0x00 0x00) is a sender's resync: nothing to report
                out.extend(self._packet(bytes(self._buf), self._start, base + end + 1 - self._start))
                self._buf.clear()
            pos = end + 1
        return out

    def _count(self, err: FrameError) -> FrameError:
        self.counters.corrupt[err.reason] = self.counters.corrupt.get(err.reason, 0) + 1
        return err

    def _packet(self, raw: bytes, offset: int, size: int) -> list[Event]:
        try:
            packet = cobs_decode(raw, offset=offset)
            if len(packet) < _HEADER.size + _CRC.size:
                raise LengthError(f"packet of {len(packet)} bytes", offset=offset)
            if zlib.crc32(packet[:-_CRC.size]) != _CRC.unpack_from(packet, len(packet) - _CRC.size)[0]:
                raise CrcError("checksum mismatch", offset=offset)
            version, rtype, seq, length = _HEADER.unpack_from(packet)
            if version != VERSION:
                raise VersionError(f"version {version}", offset=offset, seq=seq)
            if length > MAX_PAYLOAD or _HEADER.size + length + _CRC.size != len(packet):
                raise LengthError(f"length field {length} in a {len(packet)}-byte packet",
                                  offset=offset, seq=seq)
        except FrameError as e:
            return [self._count(e)]
        events, duplicate = self._track(seq, offset)
        if duplicate:
            return events
        try:
            fields = decode_payload(rtype, packet[_HEADER.size:-_CRC.size], offset=offset, seq=seq)
        except FrameError as e:
            return [*events, self._count(e)]
        self.counters.frames += 1
        return [*events, Frame(RecordType(rtype), seq, fields, offset, size)]

    def _track(self, seq: int, offset: int) -> tuple[list[Event], bool]:
        """Sequence events for a verified packet, and whether it is a duplicate."""
        last, self._last_seq = self._last_seq, seq
        if last is None:
            return [], False
        ahead = (seq - last - 1) % SEQ_MOD
        if ahead == 0:
            return [], False
        if seq == last:
            self.counters.duplicates += 1
            return [Duplicate(seq, offset)], True
        if ahead < SEQ_MOD // 2:
            self.counters.gaps += 1
            self.counters.missing += ahead
            return [Gap((last + 1) % SEQ_MOD, seq, ahead, offset)], False
        self.counters.restarts += 1
        return [Restart(last, seq, offset)], False
