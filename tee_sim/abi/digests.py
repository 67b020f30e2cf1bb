"""How a SIGN payload becomes the 32-byte digest the device key signs, and Ethereum address helpers.

- RAW_DIGEST: the payload is the digest.
- PERSONAL_MESSAGE: EIP-191 version 0x45, keccak256("\\x19Ethereum Signed Message:\\n" || len || message),
  what ``personal_sign`` / eth-account's ``encode_defunct`` produce.
- BATCH: the root of a Merkle tree over n digests, leaves in the given order, an odd node promoted
  to the next level. Leaf and node hashing are OpenZeppelin's (leaf = keccak256(keccak256(digest)),
  node = keccak256(sorted(a, b))), so an item's inclusion proof verifies with ``MerkleProof.verify``
  on chain and the root signature with ``ecrecover``. The tree layout is ours: for n >= 5 the root
  differs from what ``StandardMerkleTree.of`` (which sorts leaves) builds from the same digests.
"""

from __future__ import annotations

from Crypto.Hash import keccak as _keccak

from .ids import MAX_BATCH, MAX_MESSAGE, Purpose


class PayloadError(ValueError):
    """A SIGN payload that does not fit its purpose."""


def keccak256(data: bytes) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


def eip191_digest(message: bytes) -> bytes:
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def merkle_leaf(digest: bytes) -> bytes:
    return keccak256(keccak256(digest))


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak256(a + b if a <= b else b + a)


def merkle_levels(digests: list[bytes]) -> list[list[bytes]]:
    """All levels of the tree, leaves first; an odd node is promoted unchanged to the next level."""
    if not digests:
        raise PayloadError("a batch needs at least one digest")
    level = [merkle_leaf(d) for d in digests]
    levels = [level]
    while len(level) > 1:
        nxt = [_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        levels.append(level)
    return levels


def merkle_root(digests: list[bytes]) -> bytes:
    return merkle_levels(digests)[-1][0]


def merkle_proof(levels: list[list[bytes]], index: int) -> list[bytes]:
    """Sibling hashes from leaf ``index`` up to the root (promoted levels contribute none)."""
    proof = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def merkle_verify(digest: bytes, proof: list[bytes], root: bytes) -> bool:
    node = merkle_leaf(digest)
    for sibling in proof:
        node = _pair(node, sibling)
    return node == root


def split_batch(payload: bytes) -> list[bytes]:
    if not payload or len(payload) % 32:
        raise PayloadError(f"batch payload of {len(payload)} bytes is not a non-empty multiple of 32")
    n = len(payload) // 32
    if n > MAX_BATCH:
        raise PayloadError(f"batch of {n} digests exceeds {MAX_BATCH}")
    return [payload[i:i + 32] for i in range(0, len(payload), 32)]


def signed_digest(purpose: int, payload: bytes) -> bytes:
    """The 32-byte digest SIGN(payload, purpose) signs; raises PayloadError on a payload that does not fit."""
    if purpose == Purpose.RAW_DIGEST:
        if len(payload) != 32:
            raise PayloadError(f"raw digest must be 32 bytes, got {len(payload)}")
        return payload
    if purpose == Purpose.PERSONAL_MESSAGE:
        if len(payload) > MAX_MESSAGE:
            raise PayloadError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
        return eip191_digest(payload)
    if purpose == Purpose.BATCH:
        return merkle_root(split_batch(payload))
    raise PayloadError(f"unknown purpose {purpose}")


def address_of(public_key: bytes) -> bytes:
    """20-byte EVM address of an uncompressed secp256k1 public key (65 bytes, 0x04 prefix)."""
    if len(public_key) != 65 or public_key[0] != 4:
        raise ValueError("uncompressed 65-byte public key expected")
    return keccak256(public_key[1:])[-20:]


def checksum_address(address: bytes) -> str:
    """EIP-55 mixed-case hex of a 20-byte address."""
    hexaddr = address.hex()
    h = keccak256(hexaddr.encode()).hex()
    return "0x" + "".join(c.upper() if int(h[i], 16) >= 8 else c for i, c in enumerate(hexaddr))
