"""agent.ingest.frames: codec round trips, COBS vectors, and a decoder that survives any stream.

Every record type round-trips; a stream split at every byte boundary decodes the same; garbage,
flipped bits, a cable pulled mid-frame and oversize runs are counted by reason and the next good
frame still decodes; sequence gaps, u32 wrap-around, duplicates and MCU restarts are reported.
"""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ingest import frames as fr
from agent.ingest.frames import (MAX_ENCODED, CobsError, CrcError, Duplicate, FieldError, Frame, FrameDecoder,
                                 FrameError, Gap, LengthError, PayloadError, RecordType, Restart,
                                 UnknownRecordType, VersionError, cobs_decode, cobs_encode, decode_payload,
                                 encode_record)

#: One realistic record per type (extreme values included), used across the tests.
SAMPLES: dict[RecordType, dict] = {
    RecordType.POSE: {"t_ms": 123456, "x_mm": -2_000_000, "y_mm": 1500, "heading_cdeg": -17999},
    RecordType.GPS: {"t_ms": 0xFFFFFFFF, "lat_e7": 483_584_370, "lon_e7": -1_234_567_890},
    RecordType.IMU: {"t_ms": 7, "ax": -19613, "ay": 12, "az": 9806, "gx": 250_000, "gy": -1, "gz": 0},
    RecordType.MOTORS: {"t_ms": 99, "currents_ma": [1200, -350, 32767, -32768]},
    RecordType.BATTERY: {"t_ms": 5000, "mv": 7400, "soc_pct": 55, "temp_dc": -105},
    RecordType.TASK_EVENT: {"t_ms": 42, "task_id": 0xDEADBEEF, "event": 3},
    RecordType.NOTE: {"t_ms": 1, "text": "pelouse mouillée, zone B — ne pas tondre ✓"},
    RecordType.FAULT: {"t_ms": 2, "code": 0x0101},
    RecordType.OPERATOR: {"t_ms": 3, "badge": "04:A2:19:7C:3B:5D:80"},
}

# COBS vectors from the Wikipedia article "Consistent Overhead Byte Stuffing" (examples 1-10).
_R = bytes(range(256))
COBS_VECTORS = [
    (b"\x00", b"\x01\x01"), (b"\x00\x00", b"\x01\x01\x01"), (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"), (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"), (_R[1:255], b"\xff" + _R[1:255]),
    (_R[0:255], b"\x01\xff" + _R[1:255]), (_R[1:256], b"\xff" + _R[1:255] + b"\x02\xff"),
    (_R[2:256] + b"\x00", b"\xff" + _R[2:256] + b"\x01\x01"),
    (_R[3:256] + b"\x00\x01", b"\xfe" + _R[3:256] + b"\x02\x01"),
]
#: Pinned from this module's encoder: the wire format must not drift silently (bump VERSION if it must).
MOTORS_FRAME = bytes.fromhex("03010401010205020b01010301030a01fffe012c79cd626800")


def stream(*seqs: int, rtype: RecordType = RecordType.POSE) -> list[bytes]:
    return [encode_record(rtype, s, SAMPLES[rtype]) for s in seqs]


def kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


def frames_of(events: list) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


# -- codec ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rtype", list(RecordType), ids=lambda t: t.name)
def test_every_record_type_round_trips(rtype):
    frame = encode_record(rtype, 77, SAMPLES[rtype])
    assert frame.endswith(b"\x00") and frame.count(0) == 1
    [got] = FrameDecoder().feed(frame)
    assert got == Frame(rtype, 77, SAMPLES[rtype], 0, len(frame))
    packet = cobs_decode(frame[:-1])
    assert packet[0] == fr.VERSION and packet[1] == rtype
    assert struct.unpack(">I", packet[-4:])[0] == zlib.crc32(packet[:-4])
    assert decode_payload(rtype, packet[8:-4]) == SAMPLES[rtype]


def test_known_answer_frame():
    assert encode_record(RecordType.MOTORS, 5, {"t_ms": 1, "currents_ma": [1, -2, 300]}) == MOTORS_FRAME


@pytest.mark.parametrize("data, encoded", COBS_VECTORS, ids=range(len(COBS_VECTORS)))
def test_cobs_vectors(data, encoded):
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("bad", [b"\x00", b"\x05\x11\x22", b"\x03\x11\x00", b"\x02"])
def test_bad_cobs_raises(bad):
    with pytest.raises(CobsError):
        cobs_decode(bad)


@pytest.mark.parametrize("rtype, fields", [
    (RecordType.POSE, {"t_ms": 1, "x_mm": 1, "y_mm": 2}),                                   # missing
    (RecordType.FAULT, {"t_ms": 1, "code": 2, "extra": 3}),                                 # extra
    (RecordType.BATTERY, {"t_ms": 1, "mv": 70000, "soc_pct": 5, "temp_dc": 0}),             # u16 overflow
    (RecordType.GPS, {"t_ms": -1, "lat_e7": 0, "lon_e7": 0}),                               # negative u32
    (RecordType.MOTORS, {"t_ms": 1, "currents_ma": [0] * 256}),                             # n > u8
    (RecordType.NOTE, {"t_ms": 1, "text": "x" * 509}),                                      # payload > 512
    (RecordType.NOTE, {"t_ms": 1, "text": b"bytes"}),                                       # not str
])
def test_encode_rejects_bad_fields(rtype, fields):
    with pytest.raises(FieldError):
        encode_record(rtype, 1, fields)


def test_encode_rejects_bad_seq_and_type():
    with pytest.raises(FieldError):
        encode_record(RecordType.FAULT, 1 << 32, SAMPLES[RecordType.FAULT])
    with pytest.raises(UnknownRecordType):
        encode_record(99, 1, {})


def test_largest_note_fits():
    text = "x" * (fr.MAX_PAYLOAD - 4)
    [got] = FrameDecoder().feed(encode_record(RecordType.NOTE, 0, {"t_ms": 0, "text": text}))
    assert isinstance(got, Frame) and got.fields["text"] == text and got.size <= MAX_ENCODED + 1


@pytest.mark.parametrize("rtype, payload", [
    (RecordType.POSE, b"\x00" * 13), (RecordType.POSE, b"\x00" * 15),
    (RecordType.MOTORS, b"\x00\x00\x00\x01\x02\x00\x01"),
    (RecordType.NOTE, b"\x00\x00\x00\x01\xff\xfe"), (RecordType.FAULT, b""),
])
def test_decode_payload_rejects_misfits(rtype, payload):
    with pytest.raises(PayloadError):
        decode_payload(rtype, payload)


# -- the stream decoder -----------------------------------------------------------------------------

def test_split_at_every_byte_boundary():
    data = b"".join(stream(1, 2) + [encode_record(t, 3 + i, SAMPLES[t]) for i, t in enumerate(RecordType)])
    whole = FrameDecoder().feed(data)
    assert [f.seq for f in frames_of(whole)] == list(range(1, 3 + len(RecordType)))
    for cut in range(len(data) + 1):
        d = FrameDecoder()
        assert d.feed(data[:cut]) + d.feed(data[cut:]) == whole, cut
        assert d.counters.bytes == len(data) and d.pending == 0
    d = FrameDecoder()
    assert [e for b in data for e in d.feed(bytes([b]))] == whole   # one byte at a time


def test_garbage_between_frames_is_counted_and_skipped():
    a, b, c = stream(1, 2, 3)
    d = FrameDecoder()
    events = d.feed(b"\xde\xad\xbe\xef\x00" + a + b"\x00\x00" + b"\x01\x02\x03" + b + b"\x07\x00" + c)
    # the garbage glued to frame 2 takes it down; the lone b"\x07" is bad COBS; frame 3 follows a gap
    assert kinds(events) == ["CobsError", "Frame", "CrcError", "CobsError", "Gap", "Frame"]
    assert [e.offset for e in events[:3]] == [0, 5, 5 + len(a) + 2]
    assert events[4] == Gap(2, 3, 1, events[5].offset) and events[5].seq == 3
    assert d.counters.corrupt == {"cobs": 2, "crc": 1} and d.counters.frames == 2


def test_flipped_bits_are_counted_and_the_next_frame_decodes():
    rng = random.Random(7)
    reasons = {}
    for trial in range(300):
        a, b = stream(10, 11)
        bad = bytearray(a)
        bad[rng.randrange(len(a) - 1)] ^= 1 << rng.randrange(8)
        d = FrameDecoder()
        events = d.feed(bytes(bad) + b)
        assert isinstance(events[-1], Frame) and events[-1].seq == 11, trial
        assert all(isinstance(e, (FrameError, Gap, Frame)) for e in events)
        for reason, n in d.counters.corrupt.items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert reasons.get("crc", 0) > 100       # most flips are caught by the CRC


def test_cable_pulled_mid_frame():
    a, b, c, e = stream(1, 2, 3, 4)
    d = FrameDecoder()
    first = d.feed(a + b[:9])                      # cable pulled in the middle of frame 2
    assert kinds(first) == ["Frame"] and d.pending == 9
    later = d.feed(c + e)                          # plugged back: the half frame swallows frame 3
    assert isinstance(later[0], FrameError) and later[0].offset == len(a)
    assert later[1:] == [Gap(2, 4, 2, len(a) + 9 + len(c)), Frame(RecordType.POSE, 4, SAMPLES[RecordType.POSE],
                                                               len(a) + 9 + len(c), len(e))]
    assert d.counters.missing == 2 and d.counters.gaps == 1 and sum(d.counters.corrupt.values()) == 1


def test_sender_resync_delimiter_recovers_everything_after_it():
    a, b, c = stream(1, 2, 3)
    events = FrameDecoder().feed(a + b[:9] + b"\x00" + b + c)   # the MCU rebooted and wrote a lone 0x00
    assert kinds(events) == ["Frame", "LengthError", "Frame", "Frame"]


@pytest.mark.parametrize("make, error, seq", [
    (lambda p: p[:-1] + bytes([p[-1] ^ 0x80]), CrcError, None),             # seq unknown: nothing verified
    (lambda p: _recrc(bytes([2]) + p[1:-4]), VersionError, 5),
    (lambda p: _recrc(p[:6] + b"\x00\x05" + p[8:-4]), LengthError, 5),
    (lambda p: _recrc(p[:1] + b"\x63" + p[2:-4]), UnknownRecordType, 5),
    (lambda p: b"\x01\x02\x03", LengthError, None),
], ids=["crc", "version", "length-field", "record-type", "short"])
def test_each_corruption_has_its_type_and_location(make, error, seq):
    packet = cobs_decode(stream(5)[0][:-1])
    d = FrameDecoder()
    events = d.feed(b"\x00\x00" + cobs_encode(make(packet)) + b"\x00")
    assert len(events) == 1 and type(events[0]) is error
    assert (events[0].offset, events[0].seq) == (2, seq)
    assert d.counters.corrupt == {error.reason: 1} and d.counters.frames == 0


def _recrc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_oversized_frame_is_dropped_without_unbounded_buffering():
    d = FrameDecoder()
    events = []
    for _ in range(100):                               # 100 kB without a delimiter
        events += d.feed(b"\x55" * 1000)
        assert d.pending <= MAX_ENCODED
    assert kinds(events) == ["OversizeError"] and events[0].offset == 0 and d.pending == 0
    events = d.feed(b"\x55\x00" + stream(1)[0])
    assert kinds(events) == ["Frame"] and d.counters.corrupt == {"oversize": 1}


def test_gap_wraparound_duplicate_restart():
    d = FrameDecoder()
    seqs = [0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF, 0, 3, 3, 4, 1_000_000, 0, 1]
    events = d.feed(b"".join(stream(*seqs)))
    assert kinds(events) == ["Frame", "Frame", "Frame", "Frame", "Gap", "Frame", "Duplicate", "Frame",
                             "Gap", "Frame", "Restart", "Frame", "Frame"]
    assert (events[4].expected, events[4].got, events[4].missing_count) == (1, 3, 2)
    assert (events[8].expected, events[8].missing_count) == (5, 999_995)
    assert (events[10].previous, events[10].got) == (1_000_000, 0)
    assert [f.seq for f in frames_of(events)] == [0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF, 0, 3, 4, 1_000_000, 0, 1]
    c = d.counters
    assert (c.gaps, c.missing, c.duplicates, c.restarts, c.frames) == (2, 999_997, 1, 1, 9)


def test_gap_across_wraparound():
    events = FrameDecoder().feed(b"".join(stream(0xFFFFFFFE, 2)))
    assert events[1] == Gap(0xFFFFFFFF, 2, 3, events[2].offset)


# -- property: any bytes, any split --------------------------------------------------------------------

RESULTS = (Frame, Gap, Restart, Duplicate, FrameError)
chunks = st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(stream(1, 2, 9) + [b"\x00"])), max_size=40)


def _check_any_stream(parts: list[bytes]) -> None:
    d = FrameDecoder()
    for part in parts:
        for e in d.feed(part):
            assert isinstance(e, RESULTS)
        assert d.pending <= MAX_ENCODED
    assert d.counters.bytes == sum(map(len, parts))


@given(chunks)
def test_any_bytes_yield_only_the_module_s_results(parts):
    _check_any_stream(parts)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(chunks)
def test_any_bytes_yield_only_the_module_s_results_many(parts):
    _check_any_stream(parts)
