"""tee_sim.abi.pairing: the X25519 + HKDF pairing secret both worlds derive."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tee_sim.abi import pairing

PAIRING_ID = bytes(range(16))
DEVICE_KEY = b"\x04" + bytes(range(1, 65))
P = 2**255 - 19


def _key(seed: int) -> tuple[X25519PrivateKey, bytes]:
    """A fixed X25519 key pair, so a failure reproduces."""
    private = X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return private, private.public_key().public_bytes_raw()


NW, NW_PUB = _key(1)
TEE, TEE_PUB = _key(2)


def nw_side(**kw) -> bytes:
    args = dict(private=NW, peer_public=TEE_PUB, pairing_id=PAIRING_ID, device_public_key=DEVICE_KEY,
                nw_public=NW_PUB, tee_public=TEE_PUB)
    return pairing.derive_secret(**{**args, **kw})


def tee_side(**kw) -> bytes:
    args = dict(private=TEE, peer_public=NW_PUB, pairing_id=PAIRING_ID, device_public_key=DEVICE_KEY,
                nw_public=NW_PUB, tee_public=TEE_PUB)
    return pairing.derive_secret(**{**args, **kw})


def test_both_sides_derive_the_same_32_byte_secret():
    secret = nw_side()
    assert len(secret) == 32
    assert secret == tee_side()


def test_secret_is_the_documented_hkdf():
    shared = NW.exchange(X25519PublicKey.from_public_bytes(TEE_PUB))
    expected = HKDF(hashes.SHA256(), 32, salt=PAIRING_ID,
                    info=b"aitn/pair/v1" + DEVICE_KEY + NW_PUB + TEE_PUB).derive(shared)
    assert nw_side() == expected
    assert expected != shared  # the raw X25519 output is never the secret


def test_fresh_ephemeral_keys_agree_and_differ_per_pairing():
    a_priv, a_pub = pairing.new_ephemeral()
    b_priv, b_pub = pairing.new_ephemeral()
    assert len(a_pub) == len(b_pub) == pairing.PUBLIC_SIZE and a_pub != b_pub
    s1 = pairing.derive_secret(a_priv, b_pub, PAIRING_ID, DEVICE_KEY, a_pub, b_pub)
    assert s1 == pairing.derive_secret(b_priv, a_pub, PAIRING_ID, DEVICE_KEY, a_pub, b_pub)
    c_priv, c_pub = pairing.new_ephemeral()
    assert pairing.derive_secret(a_priv, c_pub, PAIRING_ID, DEVICE_KEY, a_pub, c_pub) != s1


@pytest.mark.parametrize("change", [
    dict(pairing_id=bytes(16)),
    dict(device_public_key=b"\x04" + bytes(64)),
    dict(nw_public=TEE_PUB, tee_public=NW_PUB),  # the transcript's order matters
    dict(peer_public=_key(3)[1]),
], ids=["pairing-id", "device-key", "swapped-transcript", "other-peer"])
def test_secret_differs_when_an_input_differs(change):
    assert nw_side(**change) != nw_side()


@pytest.mark.parametrize("peer", [
    bytes(32),                                         # u = 0
    (1).to_bytes(32, "little"),                        # u = 1, order 4
    (P - 1).to_bytes(32, "little"),                    # u = -1, order 2
    P.to_bytes(32, "little"),                          # non-canonical 0
    (P + 1).to_bytes(32, "little"),                    # non-canonical 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
], ids=["zero", "one", "minus-one", "p", "p-plus-1", "order8-a", "order8-b"])
def test_low_order_peer_key_raises_value_error(peer):
    with pytest.raises(ValueError):
        nw_side(peer_public=peer)


@pytest.mark.parametrize("peer", [b"", bytes(31), TEE_PUB[:31], TEE_PUB + b"\0", TEE_PUB * 2],
                         ids=["empty", "31-zero", "31", "33", "64"])
def test_malformed_peer_key_raises_value_error(peer):
    with pytest.raises(ValueError):
        nw_side(peer_public=peer)
