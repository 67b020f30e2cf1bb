"""tee_sim.abi.block: block hashing, the time-lock stamp, genesis, challenges, proofs, sync tags, digests."""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import replace

import pytest

from tee_sim.abi import block, frame
from tee_sim.abi.block import Challenge
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, TA_UUID, Cmd, Origin, Purpose, TeecResult

PREV = bytes(range(32))
DIGEST = hashlib.sha256(b"a message").digest()
BASE = dict(prev_hash=PREV, height=7, direction=block.REQUEST, command=Cmd.SIGN, body_digest=DIGEST,
            iterations=5)


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def reference_block(prev_hash, height, direction, command, body_digest, iterations) -> tuple[bytes, bytes]:
    """(stamp, hash) straight from the module docstring's formulas, byte encodings written out."""
    h8, d1, c4 = struct.pack(">Q", height), bytes([direction]), struct.pack(">I", command)
    x = sha(b"aitn/timelock/v1" + prev_hash + h8 + d1 + c4 + body_digest)
    for _ in range(iterations):
        x = sha(x)
    return x, sha(b"aitn/block/v1" + h8 + prev_hash + x + d1 + c4 + body_digest)


# -- blocks ----------------------------------------------------------------------------------------

def test_next_block_is_deterministic():
    assert block.next_block(**BASE) == block.next_block(**BASE)


def test_next_block_carries_its_fields():
    b = block.next_block(**BASE)
    assert (b.height, b.prev_hash, b.direction, b.command, b.body_digest) == (7, PREV, 0, Cmd.SIGN, DIGEST)
    assert len(b.stamp) == len(b.hash) == block.HASH_SIZE


@pytest.mark.parametrize("iterations", [0, 1, 2, 16, 1000])
def test_stamp_and_hash_follow_the_docstring_formula(iterations):
    args = {**BASE, "iterations": iterations}
    stamp, h = reference_block(**args)
    b = block.next_block(**args)
    assert b.stamp == stamp
    assert b.hash == h


def test_stamp_is_exactly_d_iterations_not_one_more_or_less():
    b = block.next_block(**{**BASE, "iterations": 16})
    assert b.stamp == reference_block(**{**BASE, "iterations": 16})[0]
    assert b.stamp != reference_block(**{**BASE, "iterations": 15})[0]
    assert b.stamp != reference_block(**{**BASE, "iterations": 17})[0]


def test_timelock_function_matches_reference():
    fields = struct.pack(">QBI32s", 3, 1, 0x11, DIGEST)
    x = sha(b"aitn/timelock/v1" + PREV + fields)
    for _ in range(10):
        x = sha(x)
    assert block.timelock(PREV, fields, 10) == x


@pytest.mark.parametrize("field,other", [
    ("height", 8), ("height", 7 + (1 << 32)), ("prev_hash", bytes(31) + b"\1"),
    ("direction", block.RESPONSE), ("command", Cmd.PROOF), ("body_digest", sha(b"another message")),
    ("iterations", 6),
])
def test_changing_any_field_changes_the_hash(field, other):
    base = block.next_block(**BASE)
    changed = block.next_block(**{**BASE, field: other})
    assert changed.hash != base.hash
    assert changed.stamp != base.stamp  # every field also feeds the time-lock


def test_fields_round_trip_through_block_from_fields():
    b = block.next_block(**BASE)
    assert len(b.fields()) == block.BLOCK_FIELDS_SIZE == 45
    assert b.fields() == struct.pack(">QBI", 7, 0, Cmd.SIGN) + DIGEST
    assert block.block_from_fields(PREV, b.fields(), BASE["iterations"]) == b


def test_chain_links_by_prev_hash():
    b1 = block.next_block(**BASE)
    b2 = block.next_block(b1.hash, 8, block.RESPONSE, Cmd.SIGN, DIGEST, 5)
    assert b2.prev_hash == b1.hash
    assert b2.hash == reference_block(b1.hash, 8, block.RESPONSE, Cmd.SIGN, DIGEST, 5)[1]


# -- genesis ---------------------------------------------------------------------------------------

SECRET, PAIRING_ID = b"s" * 32, b"p" * 16


def test_genesis_is_the_documented_hmac():
    g = block.genesis(SECRET, PAIRING_ID, 16)
    expected = hmac.new(SECRET, b"aitn/genesis/v1" + PAIRING_ID + struct.pack(">I", 16) + TA_UUID.bytes,
                        hashlib.sha256).digest()
    assert g.hash == expected
    assert (g.height, g.prev_hash, g.stamp, g.direction, g.command, g.body_digest) == (
        0, block.ZERO_HASH, block.ZERO_HASH, block.REQUEST, 0, block.ZERO_HASH)


@pytest.mark.parametrize("args", [(b"t" * 32, PAIRING_ID, 16), (SECRET, b"q" * 16, 16), (SECRET, PAIRING_ID, 17)],
                         ids=["secret", "pairing-id", "iterations"])
def test_genesis_depends_on_secret_pairing_id_and_iterations(args):
    assert block.genesis(*args).hash != block.genesis(SECRET, PAIRING_ID, 16).hash


def test_genesis_is_deterministic():
    assert block.genesis(SECRET, PAIRING_ID, 16) == block.genesis(SECRET, PAIRING_ID, 16)


# -- challenges ------------------------------------------------------------------------------------

NONCE = bytes(range(16))


@pytest.mark.parametrize("heights", [(0,), (1, 2, 3, 4), ((1 << 64) - 1, 0, 1 << 32), tuple(range(255))])
def test_challenge_round_trip(heights):
    c = Challenge(NONCE, heights)
    data = c.encode()
    assert len(data) == block.NONCE_SIZE + 1 + 8 * len(heights)
    assert Challenge.decode(data) == c


def test_challenge_layout():
    assert Challenge(NONCE, (1, 258)).encode() == NONCE + b"\x02" + bytes(7) + b"\x01" + bytes(6) + b"\x01\x02"


@pytest.mark.parametrize("data", [
    b"", NONCE, NONCE[:15] + b"\x01",                                # shorter than nonce + k
    NONCE + b"\x00",                                                 # k = 0
    NONCE + b"\x00" + bytes(8),                                      # k = 0 with a height after it
    NONCE + b"\x01",                                                 # k = 1, no height
    NONCE + b"\x01" + bytes(7),                                      # k = 1, height short by one byte
    NONCE + b"\x01" + bytes(9),                                      # k = 1, one byte too many
    NONCE + b"\x02" + bytes(8),                                      # k = 2, one height
    NONCE + b"\xff" + bytes(8 * 254),                                # k = 255, 254 heights
], ids=["empty", "nonce-only", "short", "k0", "k0-extra", "k1-none", "k1-short", "k1-long", "k2-one",
        "k255-short"])
def test_challenge_decode_rejects_short_or_inconsistent_data(data):
    with pytest.raises(ValueError):
        Challenge.decode(data)


# -- proofs ----------------------------------------------------------------------------------------

HASHES = [sha(bytes([i])) for i in range(block.CHALLENGE_K)]
PROOF_ARGS = dict(challenged_hashes=HASHES, nonce=NONCE, signed_digest=DIGEST, purpose=Purpose.RAW_DIGEST,
                  tip_hash=sha(b"tip"))


def test_proof_is_the_documented_hmac():
    key = sha(b"aitn/proof-key/v1" + b"".join(HASHES))
    msg = b"aitn/proof/v1" + NONCE + DIGEST + struct.pack(">I", 0) + sha(b"tip")
    assert block.proof(**PROOF_ARGS) == hmac.new(key, msg, hashlib.sha256).digest()


@pytest.mark.parametrize("field,other", [
    ("challenged_hashes", HASHES[:-1] + [sha(b"other")]),
    ("challenged_hashes", list(reversed(HASHES))),
    ("challenged_hashes", HASHES[:-1]),
    ("nonce", bytes(16)),
    ("signed_digest", sha(b"other digest")),
    ("purpose", Purpose.PERSONAL_MESSAGE),
    ("purpose", Purpose.BATCH),
    ("tip_hash", sha(b"other tip")),
], ids=["one-hash", "hash-order", "hash-missing", "nonce", "digest", "purpose-1", "purpose-2", "tip"])
def test_proof_changes_if_any_input_changes(field, other):
    assert block.proof(**{**PROOF_ARGS, field: other}) != block.proof(**PROOF_ARGS)


def test_proof_is_deterministic():
    assert block.proof(**PROOF_ARGS) == block.proof(**dict(PROOF_ARGS, challenged_hashes=list(HASHES)))


# -- sync tags -------------------------------------------------------------------------------------

NW_NONCE = bytes(range(100, 116))


def test_sync_tag_and_ack_differ_for_the_same_inputs():
    assert block.sync_tag(sha(b"block"), NONCE, 42) != block.sync_ack(sha(b"block"), NONCE, bytes(16), 42)


def test_sync_tag_and_ack_are_the_documented_hmacs():
    h = sha(b"block")
    assert block.sync_tag(h, NONCE, 42) == hmac.new(h, b"aitn/sync/v1" + NONCE + struct.pack(">Q", 42),
                                                    hashlib.sha256).digest()
    assert block.sync_ack(h, NONCE, NW_NONCE, 42) == hmac.new(
        h, b"aitn/sync-ack/v1" + NONCE + NW_NONCE + struct.pack(">Q", 42), hashlib.sha256).digest()


def test_sync_tag_depends_on_block_nonce_and_height():
    base = block.sync_tag(sha(b"block"), NONCE, 42)
    assert block.sync_tag(sha(b"other block"), NONCE, 42) != base
    assert block.sync_tag(sha(b"block"), bytes(16), 42) != base
    assert block.sync_tag(sha(b"block"), NONCE, 43) != base
    assert block.sync_tag(sha(b"block"), NONCE, 42 + (1 << 32)) != base


def test_sync_ack_depends_on_block_both_nonces_and_height():
    base = block.sync_ack(sha(b"block"), NONCE, NW_NONCE, 42)
    assert block.sync_ack(sha(b"other block"), NONCE, NW_NONCE, 42) != base
    assert block.sync_ack(sha(b"block"), bytes(16), NW_NONCE, 42) != base
    assert block.sync_ack(sha(b"block"), NONCE, bytes(16), 42) != base  # a replayed answer fails
    assert block.sync_ack(sha(b"block"), NONCE, NW_NONCE, 43) != base


# -- message digests -------------------------------------------------------------------------------

def _sign_request(**kw) -> Frame:
    f = Frame(Kind.INVOKE, 1, 2, Cmd.SIGN, CMD_PARAMS[Cmd.SIGN], (b"payload", Value(1, 0), 57, None))
    return replace(f, **kw)


def test_message_digest_covers_kind_command_types_result_origin_and_body():
    raw = frame.encode(_sign_request())
    expected = sha(raw[5:6] + raw[16:32] + raw[frame.HEADER_SIZE:])
    assert block.message_digest(raw) == expected


@pytest.mark.parametrize("change", [dict(request_id=999), dict(session=0xFFFFFFFF),
                                    dict(request_id=0, session=0)], ids=["request-id", "session", "both"])
def test_message_digest_ignores_request_id_and_session(change):
    assert block.message_digest(frame.encode(_sign_request(**change))) == \
        block.message_digest(frame.encode(_sign_request()))


def test_message_digest_ignores_the_crc_field():
    raw = bytearray(frame.encode(_sign_request()))
    before = block.message_digest(bytes(raw))
    raw[36:40] = b"\xde\xad\xbe\xef"
    assert block.message_digest(bytes(raw)) == before


RESPONSE = Frame(Kind.INVOKE | Kind.RESPONSE, 1, 2, Cmd.PROOF, CMD_PARAMS[Cmd.PROOF],
                 (None, b"r" * 65, b"d" * 32, None))


@pytest.mark.parametrize("base,change", [
    (_sign_request(), dict(command=Cmd.PSEUDONYM)),
    (_sign_request(), dict(kind=Kind.INVOKE | Kind.RESPONSE, params=(None, None, b"c" * 57, None))),
    (_sign_request(), dict(params=(b"payloaD", Value(1, 0), 57, None))),
    (_sign_request(), dict(params=(b"payload", Value(2, 0), 57, None))),
    (_sign_request(), dict(params=(b"payload", Value(1, 0), 58, None))),
    (_sign_request(), dict(params=(b"payload!", Value(1, 0), 57, None))),
    (RESPONSE, dict(result=TeecResult.SIGNATURE_INVALID, origin=Origin.TRUSTED_APP)),
    (RESPONSE, dict(origin=Origin.TEE)),
    (RESPONSE, dict(result=TeecResult.SHORT_BUFFER)),
    # p0 MEMREF_TEMP_INPUT -> NONE: a response carries nothing for either, so only param_types differs
    (RESPONSE, dict(types=CMD_PARAMS[Cmd.PROOF] & ~0xF)),
], ids=["command", "kind", "memref-byte", "value", "capacity", "memref-length", "result-and-origin", "origin",
        "result", "types"])
def test_message_digest_covers_command_result_origin_and_body(base, change):
    if change.keys() == {"types"}:
        assert frame.body_of(frame.encode(replace(base, **change))) == frame.body_of(frame.encode(base))
    assert block.message_digest(frame.encode(replace(base, **change))) != block.message_digest(frame.encode(base))
