"""Identifiers both worlds agree on: the TA's UUID, command ids, parameter types, results, origins.

This is the Python form of an OP-TEE TA header (``ta/include/<name>_ta.h``). Result codes, origins,
parameter types and login methods carry the numeric values of the GlobalPlatform TEE Client API as
OP-TEE's libteec ships them, so a trace reads like one from a real board.
"""

from __future__ import annotations

import uuid
from enum import IntEnum

#: The signer trusted application.
TA_UUID = uuid.UUID("5f1c2b7a-3e0d-4a51-9c6e-a17e0a9e5b01")
#: TA version reported by STATUS; bump on any change of the command set or of a parameter layout.
TA_VERSION = (1, 0)


class ParamType(IntEnum):
    """TEEC parameter types (``TEEC_NONE`` ... ``TEEC_MEMREF_TEMP_INOUT``)."""

    NONE = 0x0
    VALUE_INPUT = 0x1
    VALUE_OUTPUT = 0x2
    VALUE_INOUT = 0x3
    MEMREF_TEMP_INPUT = 0x5
    MEMREF_TEMP_OUTPUT = 0x6
    MEMREF_TEMP_INOUT = 0x7


def param_types(p0: ParamType = ParamType.NONE, p1: ParamType = ParamType.NONE,
                p2: ParamType = ParamType.NONE, p3: ParamType = ParamType.NONE) -> int:
    """``TEEC_PARAM_TYPES(p0, p1, p2, p3)``: four 4-bit fields, p0 in the low nibble."""
    return int(p0) | int(p1) << 4 | int(p2) << 8 | int(p3) << 12


def split_param_types(packed: int) -> tuple[int, int, int, int]:
    return tuple((packed >> (4 * i)) & 0xF for i in range(4))  # type: ignore[return-value]


class TeecResult(IntEnum):
    SUCCESS = 0x00000000
    GENERIC = 0xFFFF0000
    ACCESS_DENIED = 0xFFFF0001
    CANCEL = 0xFFFF0002
    ACCESS_CONFLICT = 0xFFFF0003
    EXCESS_DATA = 0xFFFF0004
    BAD_FORMAT = 0xFFFF0005
    BAD_PARAMETERS = 0xFFFF0006
    BAD_STATE = 0xFFFF0007
    ITEM_NOT_FOUND = 0xFFFF0008
    NOT_IMPLEMENTED = 0xFFFF0009
    NOT_SUPPORTED = 0xFFFF000A
    NO_DATA = 0xFFFF000B
    OUT_OF_MEMORY = 0xFFFF000C
    BUSY = 0xFFFF000D
    COMMUNICATION = 0xFFFF000E
    SECURITY = 0xFFFF000F
    SHORT_BUFFER = 0xFFFF0010
    TARGET_DEAD = 0xFFFF3024
    STORAGE_NO_SPACE = 0xFFFF3041
    MAC_INVALID = 0xFFFF3071
    SIGNATURE_INVALID = 0xFFFF3072


class Origin(IntEnum):
    """Where a result was produced (``TEEC_ORIGIN_*``)."""

    API = 1
    COMMS = 2
    TEE = 3
    TRUSTED_APP = 4


class Login(IntEnum):
    PUBLIC = 0
    USER = 1
    GROUP = 2
    APPLICATION = 4


class Purpose(IntEnum):
    """How SIGN's payload becomes the 32-byte digest that is signed (see ``abi.digests``)."""

    RAW_DIGEST = 0  # payload is the 32-byte digest itself
    PERSONAL_MESSAGE = 1  # EIP-191 version 0x45: keccak256("\x19Ethereum Signed Message:\n" + len + msg)
    BATCH = 2  # payload is n x 32-byte digests; the signed digest is their Merkle root


_V = ParamType.VALUE_INPUT
_VO = ParamType.VALUE_OUTPUT
_MI = ParamType.MEMREF_TEMP_INPUT
_MO = ParamType.MEMREF_TEMP_OUTPUT


class Cmd(IntEnum):
    """Signer TA commands. Each command's four parameter slots are listed in ``CMD_PARAMS``.

    Chained commands (everything but STATUS, GET_PUBKEY, CREATE_KEY, PAIR and SYNC on an unsynced
    session) are only accepted on a session that passed SYNC, and each request and response
    becomes a block of the private chain.
    """

    STATUS = 0x00  # p0 VO: a=flags (FLAG_*), b=lockout seconds left; p1 MO: status JSON (utf-8)
    GET_PUBKEY = 0x01  # p0 MO: uncompressed public key (65 B); p1 MO: EVM address (20 B)
    CREATE_KEY = 0x02  # p0 MO: uncompressed public key (65 B). ACCESS_CONFLICT if a key exists.
    PAIR = 0x03  # p0 MI: NW X25519 public key (32 B); p1 V: a=time-lock iterations (0: default)
    #               p2 MO: TEE X25519 public key (32 B) || pairing id (16 B); p3 VO: a=iterations, b=k
    SYNC = 0x04  # p0 V: a=claimed height low 32 bits, b=high 32 bits; p1 MI: sync tag (32 B) || NW nonce (16 B)
    #               p2 MO: ack tag (32 B) || missing block (BLOCK_FIELDS_SIZE B, optional)
    #               p3 VO: a=committed height low, b=high
    SIGN = 0x10  # p0 MI: payload; p1 V: a=Purpose; p2 MO: challenge (abi.block.Challenge)
    PROOF = 0x11  # p0 MI: proof (32 B); p1 MO: signature r||s||v (65 B); p2 MO: signed digest (32 B)
    PSEUDONYM = 0x20  # p0 MI: value (<= MAX_PSEUDONYM_INPUT); p1 V: a=domain; p2 MO: HMAC-SHA256 (32 B)
    SEAL = 0x21  # p0 MI: plaintext (<= MAX_SEAL_INPUT); p1 MO: sealed blob
    UNSEAL = 0x22  # p0 MI: sealed blob; p1 MO: plaintext


_N = ParamType.NONE
CMD_PARAMS: dict[Cmd, int] = {
    Cmd.STATUS: param_types(_VO, _MO),
    Cmd.GET_PUBKEY: param_types(_MO, _MO),
    Cmd.CREATE_KEY: param_types(_MO),
    Cmd.PAIR: param_types(_MI, _V, _MO, _VO),
    Cmd.SYNC: param_types(_V, _MI, _MO, _VO),
    Cmd.SIGN: param_types(_MI, _V, _MO),
    Cmd.PROOF: param_types(_MI, _MO, _MO),
    Cmd.PSEUDONYM: param_types(_MI, _V, _MO),
    Cmd.SEAL: param_types(_MI, _MO),
    Cmd.UNSEAL: param_types(_MI, _MO),
}

#: Commands that work on a session that has not passed SYNC; none of them touches a secret.
UNCHAINED = frozenset({Cmd.STATUS, Cmd.GET_PUBKEY, Cmd.CREATE_KEY, Cmd.PAIR, Cmd.SYNC})

# STATUS flags (p0.a)
FLAG_KEY = 1 << 0
FLAG_PAIRED = 1 << 1
FLAG_LOCKED = 1 << 2
FLAG_STATE_ERROR = 1 << 3

# Size limits, checked before anything is allocated.
MAX_PSEUDONYM_INPUT = 1024
MAX_SEAL_INPUT = 4096
MAX_MESSAGE = 4096
MAX_BATCH = 2048  # digests per SIGN(BATCH)
