"""SIGN -> CHALLENGE -> PROOF -> signature, over a chained session.

The normal world sends SIGN(payload, purpose); the secure world answers with a fresh nonce and k
heights of committed blocks; the normal world answers PROOF = HMAC keyed by those blocks' hashes
over the nonce, the digest to sign, the purpose and the hash of the CHALLENGE block itself. Only a
correct proof gets a signature. Batch mode signs the Merkle root of many digests under one
challenge and returns each digest's inclusion proof.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tee_sim.abi import block as blk
from tee_sim.abi import digests
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd, Purpose

from ..errors import ChainMismatch, TeeProtocolError
from .session import ChainedSession

_CHALLENGE_CAP = blk.NONCE_SIZE + 1 + 8 * 255


@dataclass(frozen=True)
class Signed:
    digest: bytes  # what was signed
    signature: bytes  # r || s || v, v in {27, 28}
    purpose: Purpose
    height: int  # chain height of the signature's response block


@dataclass(frozen=True)
class BatchSigned:
    root: Signed
    proofs: list[list[bytes]]  # per input digest, its Merkle inclusion proof


def sign(session: ChainedSession, payload: bytes, purpose: Purpose, digest: bytes | None = None) -> Signed:
    """One handshake. ``digest``: the payload's signed digest if the caller computed it already.

    Raises ProofRejected, TeeLockedOut, ChainMismatch, TeeUnavailable, ...
    """
    steps = session.steps
    steps.clear()
    t0 = time.perf_counter()
    if not session.synced:
        session.sync()
        steps.append(("sync", time.perf_counter() - t0))
        t0 = time.perf_counter()
    if digest is None:
        digest = digests.signed_digest(purpose, payload)  # what we expect the secure world to sign
    resp = session.invoke(Cmd.SIGN, (payload, Value(int(purpose), 0), _CHALLENGE_CAP, None))
    t1 = time.perf_counter()
    steps.append(("sign->challenge", t1 - t0))
    try:
        challenge = blk.Challenge.decode(resp.params[2])
    except (ValueError, TypeError) as e:
        raise TeeProtocolError(f"CHALLENGE: {e}") from None
    chain = session.chain
    if max(challenge.heights) > chain.head.height:
        raise ChainMismatch(f"challenged height {max(challenge.heights)} is above our head {chain.head.height}")
    hashes = [chain.hash_at(h) for h in challenge.heights]
    proof = blk.proof(hashes, challenge.nonce, digest, int(purpose), chain.head.hash)
    t2 = time.perf_counter()
    steps.append(("proof", t2 - t1))
    resp = session.invoke(Cmd.PROOF, (proof, 65, 32, None))
    steps.append(("proof->signature", time.perf_counter() - t2))
    signature, signed = resp.params[1], resp.params[2]
    if signed != digest or not isinstance(signature, bytes) or len(signature) != 65:
        raise TeeProtocolError("the secure world signed something other than what was asked")
    return Signed(digest, signature, purpose, chain.head.height)


def sign_digest(session: ChainedSession, digest: bytes) -> Signed:
    return sign(session, digest, Purpose.RAW_DIGEST)


def sign_message(session: ChainedSession, message: bytes) -> Signed:
    """EIP-191 personal message: what `personal_sign` produces for the device address."""
    return sign(session, message, Purpose.PERSONAL_MESSAGE)


def sign_batch(session: ChainedSession, items: list[bytes]) -> BatchSigned:
    """Sign up to MAX_BATCH digests under one challenge: a signature over their Merkle root."""
    levels = digests.merkle_levels(items)
    root = sign(session, b"".join(items), Purpose.BATCH, levels[-1][0])
    return BatchSigned(root, [digests.merkle_proof(levels, i) for i in range(len(items))])
