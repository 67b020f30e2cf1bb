"""tee_sim.abi.digests: keccak-256, EIP-191, the batch Merkle tree, SIGN payload rules, EVM addresses.

Checked against independent implementations: eth-account / eth-keys / eth-utils, coincurve, eth-abi, and
a reimplementation here of OpenZeppelin's MerkleProof.processProof.
"""

from __future__ import annotations

import hashlib

import coincurve
import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_defunct
from eth_keys import keys as eth_keys
from eth_utils import keccak as eth_keccak
from eth_utils import to_checksum_address

from tee_sim.abi import digests
from tee_sim.abi.digests import PayloadError
from tee_sim.abi.ids import MAX_BATCH, MAX_MESSAGE, Purpose


def d(i: int) -> bytes:
    """A distinct 32-byte digest per index."""
    return hashlib.sha256(i.to_bytes(4, "big")).digest()


# -- keccak-256 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,hexdigest", [
    (b"", "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"),
    (b"abc", "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
    (b"The quick brown fox jumps over the lazy dog",
     "4d741b6f1eb29cb2a9b9911c82f56fa8d73b04959d3d9d222895df6c0b28aa15"),
])
def test_keccak256_known_vectors(data, hexdigest):
    assert digests.keccak256(data).hex() == hexdigest


def test_keccak256_is_not_sha3_256():
    # Ethereum's keccak-256 predates the FIPS-202 padding; mixing them up is a classic bug.
    assert digests.keccak256(b"") != hashlib.sha3_256(b"").digest()


# -- EIP-191 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    b"", b"hello", b"0", b"x" * 9, b"x" * 10, b"x" * 100, "héllo wörld ✓ 日本語".encode(), bytes(range(256)),
    b"\x19Ethereum Signed Message:\n5hello", b"x" * MAX_MESSAGE,
], ids=["empty", "hello", "zero", "len9", "len10", "len100", "non-ascii", "all-bytes", "nested-prefix", "max"])
def test_eip191_digest_matches_eth_account(message):
    assert digests.eip191_digest(message) == _hash_eip191_message(encode_defunct(primitive=message))


def test_eip191_digest_prefix_uses_decimal_length():
    assert digests.eip191_digest(b"hello") == eth_keccak(b"\x19Ethereum Signed Message:\n5hello")


# -- Merkle tree -----------------------------------------------------------------------------------

def oz_hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin MerkleProof._hashPair: keccak256 of the pair, smaller uint256 first."""
    return eth_keccak(a + b) if int.from_bytes(a, "big") < int.from_bytes(b, "big") else eth_keccak(b + a)


def oz_process_proof(proof: list[bytes], leaf: bytes) -> bytes:
    """OpenZeppelin MerkleProof.processProof, reimplemented independently of the module."""
    computed = leaf
    for sibling in proof:
        computed = oz_hash_pair(computed, sibling)
    return computed


def oz_standard_leaf(digest: bytes) -> bytes:
    """StandardMerkleTree leaf for a bytes32 value: keccak256(bytes.concat(keccak256(abi.encode(v))))."""
    return eth_keccak(eth_keccak(abi_encode(["bytes32"], [digest])))


def test_merkle_leaf_is_openzeppelin_standard_leaf():
    for i in range(5):
        assert digests.merkle_leaf(d(i)) == oz_standard_leaf(d(i))


def test_root_of_one_digest_is_its_leaf():
    assert digests.merkle_root([d(0)]) == digests.merkle_leaf(d(0))
    assert digests.merkle_proof(digests.merkle_levels([d(0)]), 0) == []
    assert digests.merkle_verify(d(0), [], digests.merkle_leaf(d(0)))


def test_small_roots_by_hand():
    l0, l1, l2 = (oz_standard_leaf(d(i)) for i in range(3))
    assert digests.merkle_root([d(0), d(1)]) == oz_hash_pair(l0, l1)
    assert digests.merkle_root([d(1), d(0)]) == oz_hash_pair(l0, l1)  # sorted pairs: order-free at one level
    assert digests.merkle_root([d(0), d(1), d(2)]) == oz_hash_pair(oz_hash_pair(l0, l1), l2)


SIZES = list(range(1, 41)) + [63, 64, 65, 100, 257, 1000, MAX_BATCH]


@pytest.mark.parametrize("n", SIZES)
def test_every_leaf_proof_verifies(n):
    items = [d(i) for i in range(n)]
    levels = digests.merkle_levels(items)
    root = digests.merkle_root(items)
    assert levels[-1] == [root] and levels[0] == [digests.merkle_leaf(x) for x in items]
    depth = (n - 1).bit_length()  # ceil(log2 n)
    for i, item in enumerate(items):
        proof = digests.merkle_proof(levels, i)
        assert len(proof) <= depth
        assert digests.merkle_verify(item, proof, root)
        assert oz_process_proof(proof, oz_standard_leaf(item)) == root


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 40, 257])
def test_wrong_leaf_or_tampered_proof_fails(n):
    items = [d(i) for i in range(n)]
    levels = digests.merkle_levels(items)
    root = digests.merkle_root(items)
    outsider = d(10_000)
    for i, item in enumerate(items):
        proof = digests.merkle_proof(levels, i)
        assert proof, "n >= 2: every leaf has at least one sibling"
        assert not digests.merkle_verify(outsider, proof, root)
        assert not digests.merkle_verify(items[(i + 1) % n], proof, root)
        assert not digests.merkle_verify(item, proof[:-1], root)
        assert not digests.merkle_verify(item, proof + [outsider], root)
        for j in range(len(proof)):
            tampered = list(proof)
            tampered[j] = bytes([tampered[j][0] ^ 1]) + tampered[j][1:]
            assert not digests.merkle_verify(item, tampered, root)
            assert oz_process_proof(tampered, oz_standard_leaf(item)) != root
        assert not digests.merkle_verify(item, proof, eth_keccak(root))


def test_root_depends_on_every_digest():
    items = [d(i) for i in range(9)]
    root = digests.merkle_root(items)
    for i in range(len(items)):
        changed = list(items)
        changed[i] = d(100 + i)
        assert digests.merkle_root(changed) != root
    assert digests.merkle_root(items[:-1]) != root
    assert digests.merkle_root(items + [items[-1]]) != root


def test_merkle_levels_rejects_an_empty_batch():
    with pytest.raises(PayloadError):
        digests.merkle_levels([])


# -- signed_digest ---------------------------------------------------------------------------------

def test_raw_digest_is_signed_as_is():
    assert digests.signed_digest(Purpose.RAW_DIGEST, d(1)) == d(1)
    assert digests.signed_digest(0, d(1)) == d(1)  # a plain int from the wire works too


def test_personal_message_is_eip191():
    for msg in (b"", b"hi", "ünïcode".encode(), b"m" * MAX_MESSAGE):
        assert digests.signed_digest(Purpose.PERSONAL_MESSAGE, msg) == \
            _hash_eip191_message(encode_defunct(primitive=msg))


@pytest.mark.parametrize("n", [1, 2, 3, 33, MAX_BATCH])
def test_batch_is_the_merkle_root(n):
    items = [d(i) for i in range(n)]
    assert digests.signed_digest(Purpose.BATCH, b"".join(items)) == digests.merkle_root(items)
    assert digests.split_batch(b"".join(items)) == items


@pytest.mark.parametrize("purpose,payload", [
    (Purpose.RAW_DIGEST, b""),
    (Purpose.RAW_DIGEST, bytes(31)),
    (Purpose.RAW_DIGEST, bytes(33)),
    (Purpose.RAW_DIGEST, bytes(64)),
    (Purpose.PERSONAL_MESSAGE, bytes(MAX_MESSAGE + 1)),
    (Purpose.BATCH, b""),
    (Purpose.BATCH, bytes(31)),
    (Purpose.BATCH, bytes(33)),
    (Purpose.BATCH, bytes(32 * 3 + 1)),
    (Purpose.BATCH, bytes(32 * (MAX_BATCH + 1))),
    (3, bytes(32)),
    (-1, bytes(32)),
    (0xFFFFFFFF, bytes(32)),
], ids=["raw-empty", "raw-31", "raw-33", "raw-64", "message-over-max", "batch-empty", "batch-31", "batch-33",
        "batch-97", "batch-over-max", "purpose-3", "purpose-negative", "purpose-u32-max"])
def test_payload_that_does_not_fit_raises_payload_error(purpose, payload):
    with pytest.raises(PayloadError):
        digests.signed_digest(purpose, payload)


def test_payload_error_is_a_value_error():
    assert issubclass(PayloadError, ValueError)


# -- addresses -------------------------------------------------------------------------------------

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
PRIVATE_KEYS = [
    (1).to_bytes(32, "big"),
    (2).to_bytes(32, "big"),
    bytes([0x11] * 32),
    bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"),
    (SECP256K1_N - 1).to_bytes(32, "big"),
]


@pytest.mark.parametrize("key", PRIVATE_KEYS, ids=lambda k: k.hex()[-6:])
def test_address_matches_eth_account_and_eth_keys(key):
    public = coincurve.PrivateKey(key).public_key.format(compressed=False)
    address = digests.address_of(public)
    assert len(address) == 20
    assert digests.checksum_address(address) == Account.from_key(key).address
    assert address == eth_keys.PrivateKey(key).public_key.to_canonical_address()


def test_address_of_known_key():
    # Private key 1: the generator point's well-known address.
    public = coincurve.PrivateKey((1).to_bytes(32, "big")).public_key.format(compressed=False)
    assert digests.checksum_address(digests.address_of(public)) == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


@pytest.mark.parametrize("public", [
    coincurve.PrivateKey(bytes([0x11] * 32)).public_key.format(compressed=True),
    coincurve.PrivateKey(bytes([0x11] * 32)).public_key.format(compressed=False)[1:],
    b"\x03" + coincurve.PrivateKey(bytes([0x11] * 32)).public_key.format(compressed=False)[1:],
    coincurve.PrivateKey(bytes([0x11] * 32)).public_key.format(compressed=False) + b"\0",
    b"",
], ids=["compressed", "no-prefix-64", "wrong-prefix", "66-bytes", "empty"])
def test_address_of_rejects_anything_but_uncompressed_keys(public):
    with pytest.raises(ValueError):
        digests.address_of(public)


EIP55_VECTORS = [
    # From EIP-55 itself: all caps, all lower, normal.
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize("expected", EIP55_VECTORS)
def test_checksum_address_eip55_vectors(expected):
    assert digests.checksum_address(bytes.fromhex(expected[2:])) == expected


def test_checksum_address_matches_eth_utils():
    for i in range(50):
        address = d(i)[:20]
        assert digests.checksum_address(address) == to_checksum_address(address)
