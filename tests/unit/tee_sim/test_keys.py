"""tee_sim.keys: Ethereum-style recoverable signatures and keyed pseudonyms, checked against eth-account."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from eth_account import Account

from tee_sim.abi.digests import address_of, checksum_address
from tee_sim.keys import DeviceKey, new_private_key, pseudonym

SECRET = hashlib.sha256(b"aitn test device key").digest()
DIGESTS = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(32)]


@pytest.fixture(scope="module")
def key() -> DeviceKey:
    return DeviceKey(SECRET)


def test_private_key_one_has_the_well_known_address():
    k = DeviceKey((1).to_bytes(32, "big"))
    assert checksum_address(k.address) == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


def test_public_key_and_address(key):
    assert len(key.public_key) == 65 and key.public_key[0] == 4
    assert key.address == address_of(key.public_key)
    assert checksum_address(key.address) == Account.from_key(SECRET).address


def test_new_private_keys_are_distinct_and_usable():
    a, b = new_private_key(), new_private_key()
    assert len(a) == len(b) == 32 and a != b
    assert DeviceKey(a).address != DeviceKey(b).address


def test_signature_is_65_bytes_and_recovers_to_the_device_address(key):
    expected = checksum_address(key.address)
    vs = set()
    for d in DIGESTS:
        sig = key.sign_digest(d)
        assert len(sig) == 65
        assert sig[64] in (27, 28)
        vs.add(sig[64])
        assert Account._recover_hash(d, signature=sig) == expected
    assert vs == {27, 28}  # both recovery ids occur over these 32 digests


def test_signature_matches_eth_account_byte_for_byte(key):
    # Both use RFC 6979 deterministic nonces and low-s, so the bytes agree.
    for d in DIGESTS[:4]:
        assert key.sign_digest(d) == bytes(Account._sign_hash(d, SECRET).signature)


def test_signature_is_deterministic(key):
    assert key.sign_digest(DIGESTS[0]) == key.sign_digest(DIGESTS[0])
    assert key.sign_digest(DIGESTS[0]) != key.sign_digest(DIGESTS[1])


def test_signature_does_not_recover_for_another_digest(key):
    sig = key.sign_digest(DIGESTS[0])
    assert Account._recover_hash(DIGESTS[1], signature=sig) != checksum_address(key.address)


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_digest_must_be_32_bytes(key, n):
    with pytest.raises(ValueError, match="32 bytes"):
        key.sign_digest(b"\x01" * n)


# -- pseudonyms ----------------------------------------------------------------------------------------

PK1, PK2 = b"\x01" * 32, b"\x02" * 32


def test_pseudonym_is_the_documented_hmac():
    expected = hmac.new(PK1, b"aitn/pseudonym/v1" + (5).to_bytes(4, "big") + b"robot-7", hashlib.sha256).digest()
    assert pseudonym(PK1, 5, b"robot-7") == expected


def test_pseudonym_is_stable():
    assert pseudonym(PK1, 1, b"alice") == pseudonym(PK1, 1, b"alice")
    assert len(pseudonym(PK1, 1, b"alice")) == 32


def test_pseudonym_differs_across_keys_domains_and_values():
    base = pseudonym(PK1, 1, b"alice")
    others = [pseudonym(PK2, 1, b"alice"), pseudonym(PK1, 2, b"alice"), pseudonym(PK1, 1, b"bob"),
              pseudonym(PK1, 1, b""), pseudonym(PK1, 0, b"\x00\x00\x00\x01alice")]
    assert len({base, *others}) == len(others) + 1
