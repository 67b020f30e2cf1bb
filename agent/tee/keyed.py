"""Were a capture's keyed fields right? SYNC tags and proofs checked against the chains in HOME.

A replay must send a SYNC tag and a PROOF that are right for the *fresh* secure world, or wrong
where the captured ones were wrong; otherwise a capture with an altered proof would replay as a
clean handshake. Whether a captured tag or proof was right can only be told with the block hashes
it was computed from, which only the normal world that made the capture holds: HOME/chain.log, or
an older pairing's chain kept as HOME/chain.<pairing id>.log. So:

- a SYNC tag is checked against every such chain holding the claimed block. If none matches but
  the captured answer's ack verifies against one (the secure world proved it holds that chain),
  the tag was altered: wrong. The chain that matched is the session's **anchor**;
- from the anchor and the captured frames, the capture's chain is rebuilt block by block after the
  SYNC (``Tip``), so a proof is checked against the challenged blocks' hashes and the CHALLENGE
  block's own hash, exactly as the secure world checked it;
- without an anchor (a capture from another device, or HOME's chain in use) the captured answer
  decides: MAC_INVALID means the field was wrong, anything else that it was right.

Chains are opened read-only (``ChainReader``): nothing in HOME is repaired or written.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from tee_sim.abi import block as blk
from tee_sim.abi.ids import TeecResult

from ..errors import AgentError
from .chaindiff import archived_chains
from .chainlog import ChainReader
from .session import CHAIN_FILE

CORRECT, WRONG = "correct", "wrong"


@dataclass
class Tip:
    """The capture's chain head as rebuilt from its anchor and its frames."""

    height: int
    hash: bytes
    timelock: int

    def extend(self, direction: int, command: int, digest: bytes) -> None:
        b = blk.next_block(self.hash, self.height + 1, direction, command, digest, self.timelock)
        self.height, self.hash = b.height, b.hash


@dataclass(frozen=True)
class Verdict:
    value: str  # CORRECT | WRONG
    checked: bool  # against a chain in HOME (else inferred from the captured answer)
    note: str


def from_answer(what: str, answer_result: int | None) -> Verdict:
    """No chain to check against: the captured answer tells (MAC_INVALID: the field was wrong)."""
    wrong = answer_result == TeecResult.MAC_INVALID
    return Verdict(WRONG if wrong else CORRECT, False,
                   f"{what} not checkable (no chain in HOME holds its blocks); the captured answer was "
                   f"{'MAC_INVALID' if wrong else 'not MAC_INVALID'}: replayed as a {'wrong' if wrong else 'right'} "
                   "one")


class HomeChains:
    def __init__(self, home: Path | None) -> None:
        self.readers: list[ChainReader] = []
        self.notes: list[str] = []
        if home is None:
            return
        paths = [home / CHAIN_FILE] + [Path(p) for p in archived_chains(home).values()]
        for path in paths:
            if not path.exists():
                continue
            try:
                self.readers.append(ChainReader.open(path))
            except AgentError as e:
                self.notes.append(f"{path} not used to check keyed fields: {e}")

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def sync_tag(self, claimed: int, session_nonce: bytes, tag: bytes, nw_nonce: bytes,
                 answer: tuple[int, bytes] | None) -> tuple[Verdict | None, ChainReader | None, Tip | None]:
        """Check a captured SYNC tag; ``answer`` is (committed height, ack bytes) of a successful answer.

        Returns (verdict or None when unchecked, the anchor, the capture's tip after the SYNC if it succeeded).
        """
        for r in self.readers:
            rec = r.record(claimed)
            if rec is not None and hmac.compare_digest(blk.sync_tag(rec.hash, session_nonce, claimed), tag):
                return (Verdict(CORRECT, True, f"SYNC tag at {claimed} verifies against {r.path}"), r,
                        self._tip(r, rec.hash, claimed, answer))
        if answer is not None:
            committed, out = answer
            for r in self.readers:
                rec = r.record(claimed)
                if rec is None:
                    continue
                tip = self._tip(r, rec.hash, claimed, answer)
                if tip is not None and hmac.compare_digest(
                        out[:32], blk.sync_ack(tip.hash, session_nonce, nw_nonce, committed)):
                    return (Verdict(WRONG, True, f"SYNC tag at {claimed} does not verify against {r.path}, the "
                                                 "chain the captured answer proves: altered; replayed as a wrong "
                                                 "one"), r, tip)
        return None, None, None

    @staticmethod
    def _tip(r: ChainReader, hash_claimed: bytes, claimed: int, answer: tuple[int, bytes] | None) -> Tip | None:
        if answer is None:
            return None
        committed, out = answer
        if claimed + 1 == committed and len(out) == 32 + blk.BLOCK_FIELDS_SIZE:
            b = blk.block_from_fields(hash_claimed, out[32:], r.timelock)
            return Tip(b.height, b.hash, r.timelock)
        return Tip(claimed, hash_claimed, r.timelock)

    @staticmethod
    def proof(anchor: ChainReader, tip: Tip, challenge: blk.Challenge, digest: bytes, purpose: int,
              proof: bytes) -> Verdict | None:
        """Check a captured proof against the anchor's challenged blocks and the rebuilt CHALLENGE block."""
        hashes = []
        for h in challenge.heights:
            rec = anchor.record(h)
            if rec is None:
                return None
            hashes.append(rec.hash)
        expected = blk.proof(hashes, challenge.nonce, digest, purpose, tip.hash)
        if hmac.compare_digest(expected, proof):
            return Verdict(CORRECT, True, f"proof verifies against {anchor.path} (challenged heights "
                                          f"{list(challenge.heights)}, CHALLENGE block {tip.height})")
        return Verdict(WRONG, True, f"proof does not verify against {anchor.path} (challenged heights "
                                    f"{list(challenge.heights)}, CHALLENGE block {tip.height}): replayed as a wrong "
                                    "one")
