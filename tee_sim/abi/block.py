"""The private chain: block layout, the time-lock stamp, challenges, proofs and sync tags.

Both worlds compute every value here with this code; see docs/handshake.md for the rationale.

A block records one message exchanged on a synced session::

    height       u64   0 for genesis, +1 per message
    prev_hash    32 B  hash of block height-1
    stamp        32 B  time-lock: D sequential SHA-256 iterations seeded by prev_hash and this block's fields
    direction    u8    0 = normal world -> secure world (request), 1 = secure world -> normal world (response)
    command      u32   Cmd of the exchange
    body_digest  32 B  SHA-256 of the message (kind, command, param types, result, origin, body)

    x_0   = SHA-256("aitn/timelock/v1" || prev_hash || height || direction || command || body_digest)
    x_i   = SHA-256(x_{i-1}), i = 1..D;  stamp = x_D
    hash  = SHA-256("aitn/block/v1" || height || prev_hash || stamp || direction || command || body_digest)

The genesis hash is an HMAC under the pairing secret, so every later hash depends on a secret
that never crosses the channel: someone who watches every frame still cannot compute one.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from .frame import HEADER_SIZE
from .ids import TA_UUID

HASH_SIZE = 32
NONCE_SIZE = 16
PAIRING_ID_SIZE = 16
REQUEST, RESPONSE = 0, 1
#: Time-lock iterations per block unless PAIR asks for another value.
DEFAULT_TIMELOCK = 16
MAX_TIMELOCK = 1 << 16
#: Heights asked per challenge.
CHALLENGE_K = 4
#: Both worlds commit (secure world: RPMB write; normal world: fsync before sending) when an
#: exchange would leave this many blocks after the last commit, and at every PROOF.
MAX_TENTATIVE = 64
ZERO_HASH = bytes(HASH_SIZE)

_FIELDS = struct.Struct(">QBI32s")  # height, direction, command, body_digest
#: height, direction, command, body_digest: what SYNC sends for a block the normal world lost.
BLOCK_FIELDS_SIZE = _FIELDS.size
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


@dataclass(slots=True)  # treated as immutable; slots make the hot path cheap
class Block:
    height: int
    prev_hash: bytes
    stamp: bytes
    direction: int
    command: int
    body_digest: bytes
    hash: bytes

    def fields(self) -> bytes:
        return _FIELDS.pack(self.height, self.direction, self.command, self.body_digest)


def message_digest(frame_bytes: bytes) -> bytes:
    """Body digest of an encoded frame: kind, command, param types, result, origin and body.

    Leaves out what a relay may legitimately differ in (request id, session id, CRC).
    """
    return hashlib.sha256(frame_bytes[5:6] + frame_bytes[16:32] + frame_bytes[HEADER_SIZE:]).digest()


def timelock(prev_hash: bytes, fields: bytes, iterations: int) -> bytes:
    x = hashlib.sha256(b"aitn/timelock/v1" + prev_hash + fields).digest()
    sha = hashlib.sha256
    for _ in range(iterations):
        x = sha(x).digest()
    return x


def next_block(prev_hash: bytes, height: int, direction: int, command: int,
               body_digest: bytes, iterations: int) -> Block:
    """The block at ``height`` following ``prev_hash``."""
    fields = _FIELDS.pack(height, direction, command, body_digest)
    stamp = timelock(prev_hash, fields, iterations)
    h = hashlib.sha256(b"aitn/block/v1" + fields[:8] + prev_hash + stamp + fields[8:]).digest()
    return Block(height, prev_hash, stamp, direction, command, body_digest, h)


def block_from_fields(prev_hash: bytes, fields: bytes, iterations: int) -> Block:
    height, direction, command, body_digest = _FIELDS.unpack(fields)
    return next_block(prev_hash, height, direction, command, body_digest, iterations)


def genesis(pairing_secret: bytes, pairing_id: bytes, iterations: int) -> Block:
    msg = b"aitn/genesis/v1" + pairing_id + _U32.pack(iterations) + TA_UUID.bytes
    h = hmac.digest(pairing_secret, msg, "sha256")
    return Block(0, ZERO_HASH, ZERO_HASH, REQUEST, 0, ZERO_HASH, h)


@dataclass(slots=True)
class Challenge:
    nonce: bytes
    heights: tuple[int, ...]

    def encode(self) -> bytes:
        return self.nonce + bytes([len(self.heights)]) + b"".join(_U64.pack(h) for h in self.heights)

    @classmethod
    def decode(cls, data: bytes) -> "Challenge":
        if len(data) < NONCE_SIZE + 1:
            raise ValueError(f"challenge of {len(data)} bytes is too short")
        k = data[NONCE_SIZE]
        if k == 0 or len(data) != NONCE_SIZE + 1 + 8 * k:
            raise ValueError(f"challenge of {len(data)} bytes does not hold {k} heights")
        heights = tuple(_U64.unpack_from(data, NONCE_SIZE + 1 + 8 * i)[0] for i in range(k))
        return cls(data[:NONCE_SIZE], heights)


def proof(challenged_hashes: list[bytes], nonce: bytes, signed_digest: bytes, purpose: int,
          tip_hash: bytes) -> bytes:
    """PROOF's value: keyed by the challenged blocks' hashes; binds nonce, digest, purpose and tip.

    ``tip_hash`` is the hash of the CHALLENGE response block, so the proof also confirms that
    both sides recorded the same SIGN request and the same challenge.
    """
    key = hashlib.sha256(b"aitn/proof-key/v1" + b"".join(challenged_hashes)).digest()
    return hmac.digest(key, b"aitn/proof/v1" + nonce + signed_digest + _U32.pack(purpose) + tip_hash, "sha256")


def sync_tag(block_hash: bytes, session_nonce: bytes, height: int) -> bytes:
    """What the normal world sends in SYNC to show it holds block ``height``."""
    return hmac.digest(block_hash, b"aitn/sync/v1" + session_nonce + _U64.pack(height), "sha256")


def sync_ack(block_hash: bytes, session_nonce: bytes, nw_nonce: bytes, height: int) -> bytes:
    """What the secure world answers to show it holds the same block (mutual authentication).

    ``nw_nonce`` is the normal world's fresh nonce from SYNC, so a recorded answer cannot be replayed
    by someone posing as the secure world.
    """
    return hmac.digest(block_hash, b"aitn/sync-ack/v1" + session_nonce + nw_nonce + _U64.pack(height), "sha256")
