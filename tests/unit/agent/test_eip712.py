"""agent/identity/eip712.py against eth-account (an independent EIP-712 implementation) and the EIP's own vector.

Each typed-data case is hashed by both; then signed with a throwaway eth-account key and recovered
with our verifier. Malformed typed data raises TypedDataError naming the path of the bad field.
"""

from __future__ import annotations

import copy

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from agent.identity import eip712, mint
from agent.identity.errors import IdentityError, TypedDataError
from agent.signature import recover_address
from tee_sim.abi.digests import checksum_address

DOMAIN4 = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
           {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}]

#: The example of EIP-712 itself (assets/eip-712/Example.js), with the values the EIP prints for it.
MAIL = {
    "types": {"EIP712Domain": DOMAIN4,
              "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
              "Mail": [{"name": "from", "type": "Person"}, {"name": "to", "type": "Person"},
                       {"name": "contents", "type": "string"}]},
    "primaryType": "Mail",
    "domain": {"name": "Ether Mail", "version": "1", "chainId": 1,
               "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"},
    "message": {"from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
                "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
                "contents": "Hello, Bob!"},
}
MAIL_ENCODE_TYPE = "Mail(Person from,Person to,string contents)Person(string name,address wallet)"
MAIL_TYPE_HASH = "a0cedeb2dc280ba39b857546d74f5549c3a1d7bdc2dd96bf881f76108e23dac2"
MAIL_DOMAIN_SEPARATOR = "f2cee375fa42b42143804025fc449deafd50cc031ca257e0b194a650a912090f"
MAIL_HASH_STRUCT = "c52c0ee5d84264471806290a3f2c4cecfc5490626bf912d01f240d7a274b371e"
MAIL_DIGEST = "be609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"

#: The arrays version of the Mail example (eth_signTypedData_v4): Person has address[], Mail a Person[].
MAIL_ARRAYS = {
    "types": {"EIP712Domain": DOMAIN4,
              "Person": [{"name": "name", "type": "string"}, {"name": "wallets", "type": "address[]"}],
              "Mail": [{"name": "from", "type": "Person"}, {"name": "to", "type": "Person[]"},
                       {"name": "contents", "type": "string"}]},
    "primaryType": "Mail",
    "domain": MAIL["domain"],
    "message": {"from": {"name": "Cow", "wallets": ["0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826",
                                                    "0xDeaDbeefdEAdbeefdEadbEEFdeadbeEFdEaDbeeF"]},
                "to": [{"name": "Bob", "wallets": ["0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB",
                                                   "0xB0BdaBea57B0BDABeA57b0bdABEA57b0BDabEa57",
                                                   "0xB0B0b0b0b0b0B000000000000000000000000000"]},
                       {"name": "Alice", "wallets": []}],
                "contents": "Hello, Bob!"},
}

#: Every atomic kind: bytes, bytesN, bool, signed ints (negative), small uints, fixed and nested arrays,
#: integers as strings, non-ASCII text, a domain with a salt and no verifyingContract.
KINDS = {
    "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"},
                               {"name": "salt", "type": "bytes32"}],
              "Reading": [{"name": "sensor", "type": "bytes1"}, {"name": "raw", "type": "bytes"},
                          {"name": "empty", "type": "bytes"}, {"name": "root", "type": "bytes32"},
                          {"name": "ok", "type": "bool"}, {"name": "stale", "type": "bool"},
                          {"name": "delta", "type": "int256"}, {"name": "trim", "type": "int8"},
                          {"name": "tiny", "type": "uint8"}, {"name": "big", "type": "uint256"},
                          {"name": "hexed", "type": "uint64"}, {"name": "label", "type": "string"},
                          {"name": "triple", "type": "uint256[3]"}, {"name": "grid", "type": "int16[2][]"},
                          {"name": "none", "type": "address[]"}, {"name": "tags", "type": "bytes4[]"}]},
    "primaryType": "Reading",
    "domain": {"name": "kinds", "chainId": 97, "salt": "0x" + "5a" * 32},
    "message": {"sensor": "0x07", "raw": "0xdeadbeef00", "empty": "0x", "root": "0x" + "ab" * 32,
                "ok": True, "stale": False, "delta": -(1 << 200), "trim": -128, "tiny": 255,
                "big": str((1 << 256) - 1), "hexed": "0xffffffffffffffff", "label": "Zürich dock 3 \u2603",
                "triple": [1, 2, 3], "grid": [[-1, 2], [32767, -32768]], "none": [],
                "tags": ["0x01020304", "0xa0b0c0d0"]},
}


def _ours(contract: bool) -> dict:
    req = mint.MintRequest(device=bytes.fromhex("86c897eb141f2ac3182d825042d8858493ea3d86"),
                           owner=bytes.fromhex("52908400098527886e0f7030069857d2e4169ee7"), board="rpi4b",
                           fixed_utility=648_000_000, nonce=0, deadline=1_796_409_971, chain_id=56,
                           contract=bytes.fromhex("8ba1f109551bd432803012645ac136ddd64dba72") if contract else None)
    return mint.typed_data(req)


CASES = {"device-mint": _ours(False), "device-mint-contract": _ours(True), "mail": MAIL, "mail-arrays": MAIL_ARRAYS,
         "kinds": KINDS}


@pytest.mark.parametrize("name", sorted(CASES))
def test_digest_equals_eth_account(name):
    td = CASES[name]
    theirs = _hash_eip191_message(encode_typed_data(full_message=copy.deepcopy(td)))
    assert eip712.digest(td) == bytes(theirs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_eth_account_signature_recovers_with_ours(name):
    td = CASES[name]
    acct = Account.create()
    signed = Account.sign_message(encode_typed_data(full_message=copy.deepcopy(td)), acct.key)
    assert checksum_address(recover_address(eip712.digest(td), bytes(signed.signature))) == acct.address


def test_the_eips_own_mail_vector():
    assert eip712.encode_type("Mail", MAIL["types"]) == MAIL_ENCODE_TYPE
    assert eip712.type_hash("Mail", MAIL["types"]).hex() == MAIL_TYPE_HASH
    assert eip712.domain_separator(MAIL).hex() == MAIL_DOMAIN_SEPARATOR
    assert eip712.hash_struct("Mail", MAIL["types"], MAIL["message"]).hex() == MAIL_HASH_STRUCT
    assert eip712.digest(MAIL).hex() == MAIL_DIGEST


def test_dependent_types_sorted_by_name_after_the_primary():
    types = {"Z": [{"name": "a", "type": "A[]"}, {"name": "m", "type": "M"}],
             "M": [{"name": "b", "type": "B"}], "B": [{"name": "x", "type": "uint8"}],
             "A": [{"name": "z", "type": "Z"}], "Unused": [{"name": "y", "type": "bool"}]}
    assert eip712.encode_type("Z", types) == "Z(A[] a,M m)A(Z z)B(uint8 x)M(B b)"
    assert eip712.encode_type("M", types) == "M(B b)B(uint8 x)"


def test_our_layout_without_contract_has_no_verifying_contract():
    td = _ours(False)
    assert "verifyingContract" not in td["domain"]
    assert [m["name"] for m in td["types"]["EIP712Domain"]] == ["name", "version", "chainId"]
    assert eip712.encode_type("DeviceMint", td["types"]) == (
        "DeviceMint(address device,address owner,string board,uint256 fixedUtility,uint256 nonce,uint256 deadline)")
    assert eip712.digest(td) != eip712.digest(_ours(True))


def _mail() -> dict:
    return copy.deepcopy(MAIL)


def _set(path: str, value):
    """A mutation of MAIL: set the value at a dotted path (a missing value deletes the key)."""
    def apply(td: dict) -> None:
        *parents, last = path.split(".")
        node = td
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[int(last) if isinstance(node, list) else last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return apply


_DELETE = object()


def _kinds(member: str, value):
    def apply(td: dict) -> None:
        td.clear()
        td.update(copy.deepcopy(KINDS))
        td["message"][member] = value
    return apply


MALFORMED = [
    ("unknown type", _set("types.Mail.0.type", "Persn"), "types.Mail[0].type", "unknown type"),
    ("size-less uint", _set("types.Person.1.type", "uint"), "types.Person[1].type", "unknown type"),
    ("uint7", _set("types.Person.1.type", "uint7"), "types.Person[1].type", "unknown type"),
    ("bytes33", _set("types.Person.1.type", "bytes33"), "types.Person[1].type", "unknown type"),
    ("zero-length array", _set("types.Person.1.type", "address[0]"), "types.Person[1].type", "array length"),
    ("missing field", _set("message.to.wallet", _DELETE), "message.to.wallet", "missing"),
    ("extra field", _set("message.to.age", 3), "message.to.age", "not a member of Person"),
    ("short address", _set("message.from.wallet", "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD8"),
     "message.from.wallet", "20-byte hex address"),
    ("bad checksum", _set("message.from.wallet", "0xcD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"),
     "message.from.wallet", "EIP-55 checksum"),
    ("address as number", _set("message.from.wallet", 12), "message.from.wallet", "20-byte hex address"),
    ("uint out of range", _set("domain.chainId", 1 << 256), "domain.chainId", "outside uint256"),
    ("negative uint", _set("domain.chainId", -1), "domain.chainId", "outside uint256"),
    ("uint as float", _set("domain.chainId", 1.0), "domain.chainId", "expected an integer"),
    ("uint as bool", _set("domain.chainId", True), "domain.chainId", "expected an integer"),
    ("uint as words", _set("domain.chainId", "one"), "domain.chainId", "expected an integer"),
    ("string as number", _set("message.contents", 5), "message.contents", "expected a string"),
    ("lone surrogate", _set("message.contents", "\ud800"), "message.contents", "not valid Unicode"),
    ("struct as string", _set("message.to", "Bob"), "message.to", "expected an object for Person"),
    ("missing domain type", _set("types.EIP712Domain", _DELETE), "types.EIP712Domain", "missing"),
    ("domain member missing", _set("domain.chainId", _DELETE), "domain.chainId", "missing"),
    ("domain member not typed", _set("domain.salt", "0x" + "00" * 32), "domain.salt", "not a member"),
    ("domain type non-standard", _set("types.EIP712Domain.2.type", "uint64"), "types.EIP712Domain[2].type",
     "must be uint256"),
    ("domain member unknown", _set("types.EIP712Domain.0.name", "title"), "types.EIP712Domain[0].name",
     "not a standard"),
    ("primaryType unknown", _set("primaryType", "Letter"), "primaryType", "no struct type"),
    ("primaryType missing", _set("primaryType", _DELETE), "primaryType", "missing"),
    ("primaryType domain", _set("primaryType", "EIP712Domain"), "primaryType", "not a message type"),
    ("message missing", _set("message", _DELETE), "message", "missing"),
    ("duplicate member", _set("types.Person.1.name", "name"), "types.Person[1].name", "duplicate"),
    ("member without type", _set("types.Person.1", {"name": "wallet"}), "types.Person[1]", '"name", "type"'),
    ("struct value for a uint", _set("types.Mail.0.type", "uint256"), "message.from", "expected an integer"),
    ("uint8 overflow", _kinds("tiny", 256), "message.tiny", "outside uint8"),
    ("int8 underflow", _kinds("trim", -129), "message.trim", "outside int8"),
    ("bytes32 short", _kinds("root", "0x" + "ab" * 31), "message.root", "exactly 32 bytes"),
    ("bytes odd hex", _kinds("raw", "0xabc"), "message.raw", "whole bytes"),
    ("bytes as text", _kinds("raw", "hello"), "message.raw", "whole bytes"),
    ("bool as int", _kinds("ok", 1), "message.ok", "true or false"),
    ("fixed array length", _kinds("triple", [1, 2]), "message.triple", "exactly 3 elements"),
    ("array element", _kinds("grid", [[1, 2], [3, 1 << 15]]), "message.grid[1][1]", "outside int16"),
    ("array as object", _kinds("none", {}), "message.none", "expected an array"),
]


@pytest.mark.parametrize("case, mutate, where, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_typed_data_names_the_field(case, mutate, where, reason):
    td = _mail()
    mutate(td)
    with pytest.raises(TypedDataError) as e:
        eip712.digest(td)
    assert e.value.where == where
    assert reason in e.value.reason
    assert str(e.value).startswith(where + ": ") and "\n" not in str(e.value)
    assert e.value.exit_code == 88 and isinstance(e.value, IdentityError)


def test_recursive_type_nested_too_deep():
    types = {"EIP712Domain": [{"name": "name", "type": "string"}],
             "Node": [{"name": "label", "type": "string"}, {"name": "kids", "type": "Node[]"}]}
    value: dict = {"label": "leaf", "kids": []}
    for i in range(eip712.MAX_DEPTH):
        value = {"label": str(i), "kids": [value]}
    td = {"types": types, "primaryType": "Node", "domain": {"name": "n"}, "message": value}
    with pytest.raises(TypedDataError, match="nested deeper"):
        eip712.digest(td)
    shallow = {"label": "a", "kids": [{"label": "b", "kids": []}]}
    assert eip712.digest(dict(td, message=shallow)) == bytes(
        _hash_eip191_message(encode_typed_data(full_message=dict(td, message=shallow))))


def test_not_an_object_at_all():
    for bad in (None, [], "typed data", {"types": {}, "primaryType": "X", "domain": {}, "message": {}}):
        with pytest.raises(TypedDataError):
            eip712.digest(bad)
    with pytest.raises(TypedDataError, match="^extra: not an EIP-712"):
        eip712.digest(dict(MAIL, extra=1))
