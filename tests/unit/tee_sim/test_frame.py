"""tee_sim.abi.frame: the wire format between the worlds, its strict decoder and the stream splitter."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tee_sim.abi import frame
from tee_sim.abi.frame import (HEADER_SIZE, MAX_BODY, MAX_MEMREF, Frame, FrameCorrupt, FrameError,
                               FrameMalformed, FrameTooLarge, FrameTruncated, Kind, Value)
from tee_sim.abi.ids import CMD_PARAMS, TA_UUID, Cmd, Login, Origin, TeecResult, param_types

from frame_helpers import (OFF_BODY_LEN, OFF_CRC, OFF_KIND, OFF_MAGIC, OFF_ORIGIN, OFF_REQUEST_ID,
                           OFF_RESERVED, OFF_RESULT, OFF_TYPES, OFF_VERSION, _MI, _MIO, _MO, _V, _VIO, _VO,
                           build, crc_of, expected_body_len, flip, invoke, put, reply)

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "frames.json"

# -- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", list(CMD_PARAMS), ids=lambda c: c.name)
def test_request_round_trip_for_every_command(cmd):
    f = invoke(cmd)
    raw = frame.encode(f)
    assert len(raw) == HEADER_SIZE + expected_body_len(f.types, f.params, response=False)
    assert frame.decode(raw) == f


@pytest.mark.parametrize("cmd", list(CMD_PARAMS), ids=lambda c: c.name)
def test_response_round_trip_for_every_command(cmd):
    f = reply(cmd)
    raw = frame.encode(f)
    assert len(raw) == HEADER_SIZE + expected_body_len(f.types, f.params, response=True)
    back = frame.decode(raw)
    assert back == f and back.is_response


def test_output_memref_in_a_request_is_a_capacity_not_bytes():
    f = Frame(Kind.INVOKE, 1, 1, Cmd.GET_PUBKEY, CMD_PARAMS[Cmd.GET_PUBKEY], (65, 20, None, None))
    raw = frame.encode(f)
    assert frame.body_of(raw) == struct.pack("<II", 65, 20)
    assert frame.decode(raw).params == (65, 20, None, None)


def test_inout_params_travel_both_ways():
    types = param_types(_VIO, _MIO)
    for kind in (Kind.INVOKE, Kind.INVOKE | Kind.RESPONSE):
        f = Frame(kind, 9, 9, 0, types, (Value(1, 2), b"both", None, None))
        raw = frame.encode(f)
        assert frame.body_of(raw) == struct.pack("<II", 1, 2) + struct.pack("<I", 4) + b"both"
        assert frame.decode(raw) == f


def test_open_and_close_session_round_trip():
    open_types = param_types(_MI, _VO, _MO, _VO)
    frames = [
        Frame(Kind.OPEN_SESSION, 1, 0, Login.USER, open_types, (TA_UUID.bytes, None, 16, None)),
        Frame(Kind.OPEN_SESSION | Kind.RESPONSE, 1, 77, Login.USER, open_types,
              (None, Value(5, 0), bytes(range(16)), Value(2, 16))),
        Frame(Kind.CLOSE_SESSION, 2, 77, 0, 0),
        Frame(Kind.CLOSE_SESSION | Kind.RESPONSE, 2, 77, 0, 0),
    ]
    for f in frames:
        assert frame.decode(frame.encode(f)) == f


def test_error_response_carries_result_and_origin():
    f = Frame(Kind.INVOKE | Kind.RESPONSE, 3, 4, Cmd.SIGN, 0, frame.NO_PARAMS,
              TeecResult.SIGNATURE_INVALID, Origin.TRUSTED_APP)
    back = frame.decode(frame.encode(f))
    assert (back.result, back.origin) == (0xFFFF3072, 4)


def test_largest_frame_is_exactly_max_body_and_round_trips():
    types = param_types(_MIO, _MIO, _MIO, _MIO)
    f = Frame(Kind.INVOKE, 1, 1, 0, types, tuple(bytes([i]) * MAX_MEMREF for i in range(4)))
    raw = frame.encode(f)
    assert len(raw) == HEADER_SIZE + MAX_BODY
    assert frame.decode(raw) == f


def test_capacity_bounds_round_trip():
    for cap in (0, MAX_MEMREF):
        f = Frame(Kind.INVOKE, 1, 1, 0, param_types(_MO), (cap, None, None, None))
        assert frame.decode(frame.encode(f)).params[0] == cap


# -- header layout ---------------------------------------------------------------------------------

def test_header_layout():
    f = Frame(Kind.INVOKE | Kind.RESPONSE, 0x01020304, 0x0A0B0C0D, Cmd.PROOF, CMD_PARAMS[Cmd.PROOF],
              (None, b"s" * 65, b"d" * 32, None), TeecResult.SHORT_BUFFER, Origin.TEE)
    raw = frame.encode(f)
    assert HEADER_SIZE == 40
    assert raw[0:4] == bytes.fromhex("e00e77a1")  # 0xA1770EE0 little-endian
    assert raw[OFF_VERSION] == 1
    assert raw[OFF_KIND] == 0x82
    assert raw[OFF_RESERVED:OFF_RESERVED + 2] == b"\0\0"
    fields = struct.unpack_from("<8I", raw, OFF_REQUEST_ID)
    body_len = 4 + 65 + 4 + 32
    assert fields == (0x01020304, 0x0A0B0C0D, 0x11, 0x0665, 0xFFFF0010, 3, body_len, crc_of(raw))
    assert len(raw) == HEADER_SIZE + body_len
    assert raw[HEADER_SIZE:] == struct.pack("<I", 65) + b"s" * 65 + struct.pack("<I", 32) + b"d" * 32


def test_param_types_packing_matches_teec_macro():
    # TEEC_PARAM_TYPES(MEMREF_TEMP_INPUT, VALUE_INPUT, MEMREF_TEMP_OUTPUT, VALUE_OUTPUT) == 0x2615
    assert param_types(_MI, _V, _MO, _VO) == 0x2615
    assert frame.split_param_types(0x2615) == (5, 1, 6, 2)


# -- strict decoding -------------------------------------------------------------------------------

def _good() -> bytes:
    return frame.encode(invoke(Cmd.SIGN))


DEFECTS = [
    # (id, tampering, exact exception class)
    ("bad-magic", lambda r: put(r, OFF_MAGIC, "I", 0xA1770EE1), FrameCorrupt),
    ("magic-byteswapped", lambda r: put(r, OFF_MAGIC, "I", 0xE00E77A1), FrameCorrupt),
    ("crc-field-flipped", lambda r: flip(r, OFF_CRC), FrameCorrupt),
    ("body-byte-flipped", lambda r: flip(r, HEADER_SIZE + 5), FrameCorrupt),
    ("request-id-flipped", lambda r: flip(r, OFF_REQUEST_ID), FrameCorrupt),
    ("version-0", lambda r: put(r, OFF_VERSION, "B", 0), FrameMalformed),
    ("version-2", lambda r: put(r, OFF_VERSION, "B", 2), FrameMalformed),
    ("reserved-1", lambda r: put(r, OFF_RESERVED, "H", 1), FrameMalformed),
    ("reserved-8000", lambda r: put(r, OFF_RESERVED, "H", 0x8000), FrameMalformed),
    ("kind-0", lambda r: put(r, OFF_KIND, "B", 0), FrameMalformed),
    ("kind-4", lambda r: put(r, OFF_KIND, "B", 4), FrameMalformed),
    ("kind-7f", lambda r: put(r, OFF_KIND, "B", 0x7F), FrameMalformed),
    ("kind-80", lambda r: put(r, OFF_KIND, "B", 0x80), FrameMalformed),
    ("kind-84", lambda r: put(r, OFF_KIND, "B", 0x84), FrameMalformed),
    ("kind-c2", lambda r: put(r, OFF_KIND, "B", 0xC2), FrameMalformed),
    ("request-with-result", lambda r: put(r, OFF_RESULT, "I", TeecResult.GENERIC), FrameMalformed),
    ("request-with-origin", lambda r: put(r, OFF_ORIGIN, "I", Origin.TEE), FrameMalformed),
    ("types-above-16-bits", lambda r: put(r, OFF_TYPES, "I", CMD_PARAMS[Cmd.SIGN] | 0x10000), FrameMalformed),
    ("trailing-byte", lambda r: r + b"\0", FrameMalformed),
    ("trailing-frame", lambda r: r + r, FrameMalformed),
    ("body-len-over-max", lambda r: put(r, OFF_BODY_LEN, "I", MAX_BODY + 1), FrameTooLarge),
    ("body-len-u32-max", lambda r: put(r, OFF_BODY_LEN, "I", 0xFFFFFFFF, seal=False), FrameTooLarge),
    ("body-len-one-more", lambda r: put(r, OFF_BODY_LEN, "I", len(r) - HEADER_SIZE + 1), FrameTruncated),
    ("body-len-max-short-buffer", lambda r: put(r, OFF_BODY_LEN, "I", MAX_BODY), FrameTruncated),
    ("header-only", lambda r: r[:HEADER_SIZE], FrameTruncated),
    ("empty", lambda r: b"", FrameTruncated),
]


@pytest.mark.parametrize("tamper,expected", [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS])
def test_decode_rejects_defect_with_its_error_class(tamper, expected):
    good = _good()
    frame.decode(good)  # the untampered frame is fine
    with pytest.raises(FrameError) as e:
        frame.decode(tamper(good))
    assert type(e.value) is expected, e.value.reason
    assert e.value.reason == str(e.value) and e.value.reason


@pytest.mark.parametrize("slot", range(4))
@pytest.mark.parametrize("nibble", [0x4, 0x8, 0x9, 0xA, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_decode_rejects_unknown_param_type_nibble(slot, nibble):
    raw = build(Kind.INVOKE, nibble << (4 * slot), b"")
    with pytest.raises(FrameMalformed, match=f"p{slot} has unknown type"):
        frame.decode(raw)


def test_every_prefix_of_a_frame_is_truncated():
    good = _good()
    for n in range(len(good)):
        with pytest.raises(FrameTruncated):
            frame.decode(good[:n])


def test_response_may_carry_result_and_origin_but_request_may_not():
    f = reply(Cmd.SEAL)
    raw = put(frame.encode(f), OFF_RESULT, "I", TeecResult.BUSY)
    assert frame.decode(raw).result == TeecResult.BUSY
    req = put(frame.encode(invoke(Cmd.SEAL)), OFF_RESULT, "I", TeecResult.BUSY)
    with pytest.raises(FrameMalformed, match="result or origin"):
        frame.decode(req)


BODY_DEFECTS = [
    # (id, types, body, kind, exact exception class): bodies built by hand, CRC correct
    ("memref-over-max", param_types(_MI), struct.pack("<I", MAX_MEMREF + 1), Kind.INVOKE, FrameTooLarge),
    ("capacity-over-max", param_types(_MO), struct.pack("<I", MAX_MEMREF + 1), Kind.INVOKE, FrameTooLarge),
    ("response-memref-over-max", param_types(_MO), struct.pack("<I", 0xFFFFFFFF),
     Kind.INVOKE | Kind.RESPONSE, FrameTooLarge),
    ("value-runs-past-body", param_types(_V), b"\0" * 7, Kind.INVOKE, FrameMalformed),
    ("length-runs-past-body", param_types(_V, _MI), b"\0" * 8 + b"\0" * 3, Kind.INVOKE, FrameMalformed),
    ("memref-runs-past-body", param_types(_MI), struct.pack("<I", 5) + b"abcd", Kind.INVOKE, FrameMalformed),
    ("bytes-left-after-p3", param_types(_MI), struct.pack("<I", 1) + b"ab", Kind.INVOKE, FrameMalformed),
    ("body-for-no-params", 0, b"\0", Kind.INVOKE, FrameMalformed),
    ("output-value-sent-in-request", param_types(_VO), b"\0" * 8, Kind.INVOKE, FrameMalformed),
    ("input-memref-sent-in-response", param_types(_MI), struct.pack("<I", 0),
     Kind.INVOKE | Kind.RESPONSE, FrameMalformed),
]


@pytest.mark.parametrize("types,body,kind,expected", [d[1:] for d in BODY_DEFECTS],
                         ids=[d[0] for d in BODY_DEFECTS])
def test_decode_rejects_body_that_does_not_fit_param_types(types, body, kind, expected):
    with pytest.raises(FrameError) as e:
        frame.decode(build(kind, types, body))
    assert type(e.value) is expected, e.value.reason


def test_hand_built_frame_decodes_like_encoder_output():
    # Guards the helpers above: the hand-built frame is a real one.
    body = struct.pack("<I", 3) + b"abc" + struct.pack("<I", 32)
    raw = build(Kind.INVOKE, CMD_PARAMS[Cmd.SEAL], body, command=Cmd.SEAL, request_id=1, session=2)
    f = frame.decode(raw)
    assert f == Frame(Kind.INVOKE, 1, 2, Cmd.SEAL, CMD_PARAMS[Cmd.SEAL], (b"abc", 32, None, None))
    assert frame.encode(f) == raw


# -- strict encoding -------------------------------------------------------------------------------

ENCODE_DEFECTS = [
    ("memref-over-max", param_types(_MI), (b"x" * (MAX_MEMREF + 1), None, None, None), FrameTooLarge),
    ("value-slot-given-bytes", param_types(_V), (b"12345678", None, None, None), FrameMalformed),
    ("memref-slot-given-value", param_types(_MI), (Value(1, 2), None, None, None), FrameMalformed),
    ("memref-slot-given-none", param_types(_MI), frame.NO_PARAMS, FrameMalformed),
    ("capacity-over-max", param_types(_MO), (MAX_MEMREF + 1, None, None, None), FrameTooLarge),  # the same class decode() raises
    ("capacity-negative", param_types(_MO), (-1, None, None, None), FrameMalformed),
    ("capacity-bool", param_types(_MO), (True, None, None, None), FrameMalformed),
    ("capacity-bytes", param_types(_MO), (b"\0" * 4, None, None, None), FrameMalformed),
    ("unknown-type-nibble", 0x4, frame.NO_PARAMS, FrameMalformed),
    ("types-above-16-bits", 0x10000, frame.NO_PARAMS, FrameMalformed),
]


@pytest.mark.parametrize("types,params,expected", [d[1:] for d in ENCODE_DEFECTS],
                         ids=[d[0] for d in ENCODE_DEFECTS])
def test_encode_rejects_frame_that_breaks_its_types_or_limits(types, params, expected):
    with pytest.raises(FrameError) as e:
        frame.encode(Frame(Kind.INVOKE, 1, 1, 0, types, params))
    assert type(e.value) is expected, e.value.reason


# -- known-answer vectors (tests/vectors/frames.json) ----------------------------------------------

def _load_vectors() -> dict:
    return json.loads(VECTORS.read_text())


def _param_from_json(p):
    if p is None:
        return None
    (tag, v), = p.items()
    return {"value": lambda: Value(*v), "memref": lambda: bytes.fromhex(v), "capacity": lambda: v}[tag]()


def _frame_from_json(d: dict) -> Frame:
    return Frame(d["kind"], d["request_id"], d["session"], d["command"], d["types"],
                 tuple(_param_from_json(p) for p in d["params"]), d["result"], d["origin"])


_VECTORS = _load_vectors()
_VALID, _INVALID = _VECTORS["valid"], _VECTORS["invalid"]


@pytest.mark.parametrize("vec", _VALID, ids=[v["name"] for v in _VALID])
def test_vector_decodes_to_its_fields(vec):
    assert frame.decode(bytes.fromhex(vec["hex"])) == _frame_from_json(vec["frame"])


@pytest.mark.parametrize("vec", _VALID, ids=[v["name"] for v in _VALID])
def test_vector_encodes_to_its_bytes(vec):
    assert frame.encode(_frame_from_json(vec["frame"])).hex() == vec["hex"]


@pytest.mark.parametrize("vec", _INVALID, ids=[v["name"] for v in _INVALID])
def test_invalid_vector_raises_its_error(vec):
    with pytest.raises(FrameError) as e:
        frame.decode(bytes.fromhex(vec["hex"]))
    assert type(e.value).__name__ == vec["error"], e.value.reason


def test_vector_file_covers_every_kind_and_error_class():
    kinds = {v["frame"]["kind"] for v in _VALID}
    assert kinds >= {1, 2, 3, 0x81, 0x82, 0x83}
    assert {v["error"] for v in _INVALID} == {"FrameCorrupt", "FrameMalformed", "FrameTooLarge",
                                              "FrameTruncated"}
