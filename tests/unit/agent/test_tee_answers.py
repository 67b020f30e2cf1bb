"""agent.tee.answers: the replay's comparison rule, field class by field class."""

from __future__ import annotations

import json

import pytest

from agent.tee.answers import EXACT, FRESH, HEIGHT, VARIABLE, Bases, compare, slot_class
from tee_sim.abi import block as blk
from tee_sim.abi import frame as fr
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, Cmd, Origin, TeecResult

RESP = Kind.INVOKE | Kind.RESPONSE
OPEN_TYPES = 0x2625


def invoke(cmd: Cmd, params: tuple, *, request_id: int = 3, session: int = 6) -> bytes:
    return fr.encode(Frame(RESP, request_id, session, int(cmd), CMD_PARAMS[cmd], params))


def error(cmd: Cmd, result: TeecResult, origin: Origin = Origin.TRUSTED_APP) -> bytes:
    return fr.encode(Frame(RESP, 3, 6, int(cmd), 0, fr.NO_PARAMS, int(result), int(origin)))


def opened(height: int, nonce: bytes = b"n" * 16, flags: int = 3, session: int = 6) -> bytes:
    return fr.encode(Frame(Kind.OPEN_SESSION | Kind.RESPONSE, 1, session, 1, OPEN_TYPES,
                           (None, Value(height, 0), nonce, Value(flags, 16))))


def challenge(*heights: int, nonce: bytes = b"c" * 16) -> bytes:
    return blk.Challenge(nonce, heights).encode()


def fields(diffs) -> list[str]:
    return [d.field for d in diffs]


def test_identical_answers_match():
    a = invoke(Cmd.PROOF, (None, b"s" * 65, b"d" * 32, None))
    assert compare(a, a) == []


def test_session_ids_are_not_compared():
    assert compare(opened(4, session=6), opened(4, session=41)) == []


def test_header_fields_differ_by_name():
    ok = invoke(Cmd.PROOF, (None, b"s" * 65, b"d" * 32, None))
    diffs = compare(ok, error(Cmd.PROOF, TeecResult.MAC_INVALID))
    assert [(d.field, d.captured, d.replayed) for d in diffs] == [
        ("result", "SUCCESS", "MAC_INVALID"), ("origin", "none", "TRUSTED_APP"), ("param_types", "0x0665", "0x0000")]
    assert fields(compare(error(Cmd.SIGN, TeecResult.BUSY), error(Cmd.PROOF, TeecResult.BUSY))) == ["command"]


def test_fresh_values_compare_by_length_only():
    a = invoke(Cmd.PROOF, (None, b"s" * 65, b"d" * 32, None))
    assert compare(a, invoke(Cmd.PROOF, (None, b"t" * 65, b"d" * 32, None))) == []  # another signature
    ack = invoke(Cmd.SYNC, (None, None, b"a" * 32, Value(4, 0)))
    redelivered = invoke(Cmd.SYNC, (None, None, b"a" * 77, Value(4, 0)))
    assert fields(compare(ack, redelivered)) == ["p2 length"]


def test_deterministic_outputs_compare_by_bytes():
    a = invoke(Cmd.PROOF, (None, b"s" * 65, b"d" * 32, None))
    b = invoke(Cmd.PROOF, (None, b"s" * 65, b"e" * 32, None))  # another signed digest
    assert fields(compare(a, b)) == ["p2 bytes"]


def test_heights_are_relative_by_default_and_absolute_when_strict():
    bases = Bases(captured=100, replayed=8)
    assert compare(opened(104), opened(12), bases=bases) == []
    assert fields(compare(opened(104), opened(14), bases=bases)) == ["p1 height (relative)"]
    assert fields(compare(opened(104), opened(12), bases=bases, strict=True)) == ["p1 height"]
    assert compare(opened(104), opened(104), bases=bases, strict=True) == []


def test_flags_are_exact_and_named():
    diffs = compare(opened(4, flags=7), opened(4, flags=3))
    assert [(d.field, d.captured, d.replayed) for d in diffs] == [
        ("p3 value", "flags KEY PAIRED LOCKED, b=16", "flags KEY PAIRED, b=16")]


def test_challenge_length_varies_unless_strict():
    a = invoke(Cmd.SIGN, (None, None, challenge(1, 2, 3, 4), None))
    b = invoke(Cmd.SIGN, (None, None, challenge(0, 2, 5), None))  # k = 3: a short chain, or chance
    assert compare(a, b) == []
    assert fields(compare(a, b, strict=True)) == ["body_len"]  # 17 + 8k bytes: the length fixes k
    bad = invoke(Cmd.SIGN, (None, None, b"c" * 16 + bytes([2]) + b"\0" * 8, None))
    assert fields(compare(a, bad)) == ["p2 challenge"]


def test_status_document_agrees_on_its_stable_keys():
    def status(**kw) -> bytes:
        st = {"ta_uuid": "u", "ta_version": "1.0", "key": True, "paired": True, "timelock": 16, "state_error": None,
              "counters": {"requests": 3}, "address": "0xabc"}
        st.update(kw)
        return invoke(Cmd.STATUS, (Value(3, 0), json.dumps(st).encode(), None, None))

    assert compare(status(), status(counters={"requests": 99}, address="0xdef")) == []
    assert fields(compare(status(), status(paired=False))) == ["p1 status.paired"]
    assert fields(compare(status(), status(state_error="rolled back"))) == ["p1 status.state_error"]
    assert compare(status(), status(extra=1)) == []
    assert fields(compare(status(), status(extra=1), strict=True)) == ["body_len"]


def test_malformed_answers():
    good = error(Cmd.SIGN, TeecResult.BUSY)
    assert compare(good[:30], good[:30]) == []
    diffs = compare(good[:30], good)
    assert fields(diffs) == ["frame"] and diffs[0].captured.startswith("not a frame")


@pytest.mark.parametrize("kind, cmd, slot, cls", [
    (Kind.OPEN_SESSION, 1, 1, HEIGHT), (Kind.OPEN_SESSION, 1, 2, FRESH), (Kind.OPEN_SESSION, 1, 3, EXACT),
    (Kind.INVOKE, Cmd.SYNC, 3, HEIGHT), (Kind.INVOKE, Cmd.SIGN, 2, VARIABLE), (Kind.INVOKE, Cmd.PROOF, 1, FRESH),
    (Kind.INVOKE, Cmd.PROOF, 2, EXACT), (Kind.INVOKE, Cmd.UNSEAL, 1, EXACT), (Kind.INVOKE, Cmd.PAIR, 3, EXACT)])
def test_slot_classes(kind, cmd, slot, cls):
    assert slot_class(Frame(kind | Kind.RESPONSE, 1, 1, int(cmd), 0, fr.NO_PARAMS), slot) == cls
