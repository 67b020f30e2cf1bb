"""EIP-712 typed structured data: the digest ``eth_signTypedData_v4`` signs, from the JSON a wallet takes.

Input: ``{"types", "primaryType", "domain", "message"}`` with ``types["EIP712Domain"]`` included.
Encoding (https://eips.ethereum.org/EIPS/eip-712):

    digest           = keccak256(0x19 0x01 || domainSeparator || hashStruct(primaryType, message))
    domainSeparator  = hashStruct("EIP712Domain", domain)
    hashStruct(T, s) = keccak256(keccak256(encodeType(T)) || encodeData(T, s))
    encodeType(T)    = "T(type1 name1,...)" then every struct T references, transitively, sorted by name
    encodeData       = each member as one 32-byte word, in declared order: address, bool, uintN, intN
                       (two's complement) as uint256; bytesN right-padded; bytes and string as keccak256
                       of their contents; a struct as its hashStruct; T[] and T[n] as keccak256 of the
                       elements' words concatenated

Values take the JSON forms wallets use: addresses and bytes as 0x-hex strings, integers as JSON
numbers or decimal / 0x-hex strings (for values past 2^53), bool as true/false.

Stricter than eth-account on purpose: a device must not sign, nor a verifier accept, data that
two tools read differently. So: every member present and no others; bytesN exactly N bytes (no
padding); bool only true/false; T[n] exactly n elements; a mixed-case address must carry a valid
EIP-55 checksum (as eth-abi requires); no size-less ``uint``/``int`` (the typeHash depends on
the spelling); EIP712Domain members only from the standard five, in the standard order, with
their standard types (eth-account rebuilds the domain type from the keys in that order, so any
other order would hash differently there). Every failure is a TypedDataError naming the path of
the bad field (``message.to.wallet``, ``types.Mail[1].type``).
"""

from __future__ import annotations

import re
from typing import Any

from tee_sim.abi.digests import checksum_address, keccak256

from .errors import TypedDataError

Types = dict[str, list[dict[str, str]]]

#: The standard domain members, in the order EIP-712 lists them, with their types.
DOMAIN_MEMBERS = (("name", "string"), ("version", "string"), ("chainId", "uint256"),
                  ("verifyingContract", "address"), ("salt", "bytes32"))
#: Deepest nesting of structs and arrays in a value (recursive types would otherwise recurse without end).
MAX_DEPTH = 32
#: Longest decimal or hex string accepted for an integer (a uint256 is 78 decimal digits).
MAX_INT_TEXT = 80

_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_ARRAY = re.compile(r"(.+)\[([0-9]*)\]")
_INT = re.compile(r"(u?)int([1-9][0-9]{0,2})")
_BYTES_N = re.compile(r"bytes([1-9][0-9]?)")
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_DEC = re.compile(r"-?[0-9]+")
_HEX_INT = re.compile(r"0x[0-9a-fA-F]+")


def _int_type(t: str) -> tuple[bool, int] | None:
    """(signed, bits) for intN / uintN with N a multiple of 8 in 8..256, else None."""
    m = _INT.fullmatch(t)
    if not m or int(m[2]) % 8 or int(m[2]) > 256:
        return None
    return m[1] != "u", int(m[2])


def _bytes_n(t: str) -> int | None:
    m = _BYTES_N.fullmatch(t)
    return int(m[1]) if m and int(m[1]) <= 32 else None


def is_atomic(t: str) -> bool:
    """A type EIP-712 encodes without a struct definition (arrays excluded)."""
    return t in ("address", "bool", "string", "bytes") or _int_type(t) is not None or _bytes_n(t) is not None


def _base(t: str, where: str) -> str:
    """The element type under any number of [] / [n] suffixes; a [0] or [07] suffix is refused."""
    while (m := _ARRAY.fullmatch(t)) is not None:
        if m[2] and (m[2][0] == "0"):
            raise TypedDataError(where, f"array length in {t!r} must be a positive number without leading zeros")
        t = m[1]
    return t


def check_types(types: Any) -> None:
    """Check the ``types`` object's shape: struct names, member names and that every member type resolves."""
    if not isinstance(types, dict) or not types:
        raise TypedDataError("types", "expected a non-empty object of struct types")
    for name, members in types.items():
        where = f"types.{name}"
        if not isinstance(name, str) or not _IDENT.fullmatch(name) or is_atomic(name):
            raise TypedDataError(where, f"{name!r} is not a valid struct name")
        if not isinstance(members, list):
            raise TypedDataError(where, "expected a list of {name, type} members")
        seen: set[str] = set()
        for i, m in enumerate(members):
            w = f"{where}[{i}]"
            if not isinstance(m, dict) or set(m) != {"name", "type"}:
                raise TypedDataError(w, 'expected exactly {"name", "type"}')
            if not isinstance(m["name"], str) or not _IDENT.fullmatch(m["name"]):
                raise TypedDataError(f"{w}.name", f"{m['name']!r} is not a valid member name")
            if m["name"] in seen:
                raise TypedDataError(f"{w}.name", f"duplicate member {m['name']!r}")
            seen.add(m["name"])
            if not isinstance(m["type"], str):
                raise TypedDataError(f"{w}.type", "expected a string")
            base = _base(m["type"], f"{w}.type")
            if base == "EIP712Domain":
                raise TypedDataError(f"{w}.type", "EIP712Domain cannot be a member type")
            if not is_atomic(base) and base not in types:
                raise TypedDataError(f"{w}.type", f"unknown type {m['type']!r}")


def _check_domain_type(members: list[dict[str, str]]) -> None:
    standard = dict(DOMAIN_MEMBERS)
    order = [n for n, _ in DOMAIN_MEMBERS]
    last = -1
    for i, m in enumerate(members):
        w = f"types.EIP712Domain[{i}]"
        if m["name"] not in standard:
            raise TypedDataError(f"{w}.name", f"{m['name']!r} is not a standard EIP-712 domain member")
        if m["type"] != standard[m["name"]]:
            raise TypedDataError(f"{w}.type", f"{m['name']} must be {standard[m['name']]}, not {m['type']}")
        if order.index(m["name"]) < last:
            raise TypedDataError(f"{w}.name", "domain members must be in the order " + ", ".join(order))
        last = order.index(m["name"])


def encode_type(primary: str, types: Types) -> str:
    """``primary``'s signature followed by those of the structs it references, sorted by name."""
    found, stack = {primary}, [primary]
    while stack:
        for m in types[stack.pop()]:
            base = _base(m["type"], "types")
            if base in types and base not in found:
                found.add(base)
                stack.append(base)
    return "".join(f"{t}(" + ",".join(f"{m['type']} {m['name']}" for m in types[t]) + ")"
                   for t in [primary] + sorted(found - {primary}))


def type_hash(primary: str, types: Types) -> bytes:
    return keccak256(encode_type(primary, types).encode())


def parse_address(value: Any, where: str) -> bytes:
    """20 bytes from a 0x-hex address; a mixed-case one must carry a valid EIP-55 checksum."""
    if not isinstance(value, str) or not _HEX_ADDRESS.fullmatch(value):
        raise TypedDataError(where, f"expected a 0x-prefixed 20-byte hex address, got {value!r}")
    raw = bytes.fromhex(value[2:])
    body = value[2:]
    if body != body.lower() and body != body.upper() and checksum_address(raw) != value:
        raise TypedDataError(where, f"{value} has a bad EIP-55 checksum (mixed case must be "
                                    f"{checksum_address(raw)})")
    return raw


def _bytes(value: Any, where: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise TypedDataError(where, f"expected 0x-prefixed hex of whole bytes, got {value!r}")
    return bytes.fromhex(value[2:])


def parse_int(value: Any, where: str) -> int:
    """An integer from a JSON number or a decimal / 0x-hex string (bool is not an integer here)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= MAX_INT_TEXT:
        if _DEC.fullmatch(value):
            return int(value, 10)
        if _HEX_INT.fullmatch(value):
            return int(value, 16)
    raise TypedDataError(where, f"expected an integer or a decimal / 0x-hex string, got {value!r}")


def _word(t: str, value: Any, where: str) -> bytes:
    """The 32-byte encoding of one atomic value."""
    if t == "string":
        if not isinstance(value, str):
            raise TypedDataError(where, f"expected a string, got {type(value).__name__}")
        try:
            return keccak256(value.encode())
        except UnicodeEncodeError:  # a lone surrogate from JSON "\ud800": no UTF-8 form to hash
            raise TypedDataError(where, "string is not valid Unicode") from None
    if t == "bytes":
        return keccak256(_bytes(value, where))
    if t == "bool":
        if not isinstance(value, bool):
            raise TypedDataError(where, f"expected true or false, got {value!r}")
        return int(value).to_bytes(32, "big")
    if t == "address":
        return parse_address(value, where).rjust(32, b"\0")
    n = _bytes_n(t)
    if n is not None:
        b = _bytes(value, where)
        if len(b) != n:
            raise TypedDataError(where, f"{t} needs exactly {n} bytes, got {len(b)}")
        return b.ljust(32, b"\0")
    signed, bits = _int_type(t)  # type: ignore[misc]  # check_types let only atomic types through
    v = parse_int(value, where)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= v <= hi:
        raise TypedDataError(where, f"{v} is outside {t} ({lo}..{hi})")
    return (v % (1 << 256)).to_bytes(32, "big")


def _encode(t: str, value: Any, types: Types, where: str, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise TypedDataError(where, f"nested deeper than {MAX_DEPTH} levels")
    arr = _ARRAY.fullmatch(t)
    if arr:
        if not isinstance(value, list):
            raise TypedDataError(where, f"expected an array for {t}, got {type(value).__name__}")
        if arr[2] and len(value) != int(arr[2]):
            raise TypedDataError(where, f"{t} needs exactly {arr[2]} elements, got {len(value)}")
        return keccak256(b"".join(_encode(arr[1], v, types, f"{where}[{i}]", depth + 1)
                                  for i, v in enumerate(value)))
    if t in types:
        return _hash_struct(t, types, value, where, depth + 1)
    return _word(t, value, where)


def _hash_struct(t: str, types: Types, value: Any, where: str, depth: int) -> bytes:
    if not isinstance(value, dict):
        raise TypedDataError(where, f"expected an object for {t}, got {type(value).__name__}")
    words = [type_hash(t, types)]
    for m in types[t]:
        w = f"{where}.{m['name']}"
        if m["name"] not in value:
            raise TypedDataError(w, f"missing ({m['type']})")
        words.append(_encode(m["type"], value[m["name"]], types, w, depth))
    names = {m["name"] for m in types[t]}
    extra = [k for k in value if k not in names]
    if extra:  # a value no signature covers must not travel with one that does
        raise TypedDataError(f"{where}.{extra[0]}", f"not a member of {t}")
    return keccak256(b"".join(words))


def hash_struct(primary: str, types: Types, value: Any, where: str = "message") -> bytes:
    """keccak256(typeHash || encodeData) of ``value`` as a ``primary``; raises TypedDataError naming the field."""
    check_types(types)
    if primary not in types:
        raise TypedDataError("primaryType", f"no struct type {primary!r} in types")
    return _hash_struct(primary, types, value, where, 0)


def _checked(typed_data: Any) -> tuple[Types, str]:
    if not isinstance(typed_data, dict):
        raise TypedDataError("typed_data", "expected an object {types, primaryType, domain, message}")
    for key in ("types", "primaryType", "domain", "message"):
        if key not in typed_data:
            raise TypedDataError(key, "missing")
    extra = [k for k in typed_data if k not in ("types", "primaryType", "domain", "message")]
    if extra:
        raise TypedDataError(str(extra[0]), "not an EIP-712 typed-data key")
    types = typed_data["types"]
    check_types(types)
    if "EIP712Domain" not in types:
        raise TypedDataError("types.EIP712Domain", "missing (eth_signTypedData_v4 needs the domain's type)")
    _check_domain_type(types["EIP712Domain"])
    primary = typed_data["primaryType"]
    if not isinstance(primary, str) or primary not in types:
        raise TypedDataError("primaryType", f"no struct type {primary!r} in types")
    if primary == "EIP712Domain":  # wallets disagree on what that signs
        raise TypedDataError("primaryType", "EIP712Domain is not a message type")
    return types, primary


def domain_separator(typed_data: Any) -> bytes:
    """hashStruct of the domain; raises TypedDataError naming the bad field."""
    types, _ = _checked(typed_data)
    return _hash_struct("EIP712Domain", types, typed_data["domain"], "domain", 0)


def digest(typed_data: Any) -> bytes:
    """The 32 bytes ``eth_signTypedData_v4`` signs; raises TypedDataError naming the bad field."""
    types, primary = _checked(typed_data)
    return keccak256(b"\x19\x01" + _hash_struct("EIP712Domain", types, typed_data["domain"], "domain", 0)
                     + _hash_struct(primary, types, typed_data["message"], "message", 0))
