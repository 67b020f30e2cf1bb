"""The secure world's bounded view of the private chain: committed hashes plus a tentative tail.

Memory is bounded: the last RING_SLOTS committed hashes, CHECKPOINT_SLOTS checkpoint hashes and at
most abi.block.MAX_TENTATIVE tentative blocks. Blocks after the last commit are tentative: a power loss or a
new session's SYNC drops them on both sides. A commit (one RPMB write, one fdatasync) happens
before a signature leaves the secure world and whenever the tail reaches MAX_TENTATIVE.
"""

from __future__ import annotations

import bisect
import secrets

from .abi import block as blk
from .rpmb import CHECKPOINT_EVERY, CHECKPOINT_SLOTS, RING_SLOTS, Rpmb, Slot


class ChainView:
    def __init__(self, rpmb: Rpmb, pairing_id: bytes, timelock: int) -> None:
        self._rpmb = rpmb
        self.pairing_id = pairing_id
        self.timelock = timelock
        self._known: dict[int, bytes] = {}  # committed height -> hash (bounded: ring + checkpoints)
        self.committed: Slot | None = None
        self.tail: list[blk.Block] = []
        self._checkpoints: list[int] = []  # committed checkpoint heights, oldest first

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild from RPMB: the head is the end of the newest commit whose slots are all valid."""
        ring, cps = self._rpmb.read_slots(self.pairing_id)
        by_height = {s.height: s for s in ring}
        head: Slot | None = None
        for s in sorted(ring, key=lambda s: s.commit_end, reverse=True):
            if head is not None and s.commit_end <= head.height:
                break
            if all(by_height.get(h) is not None and by_height[h].commit_end == s.commit_end
                   and by_height[h].commit_tag == s.commit_tag and by_height[h].commit_start == s.commit_start
                   for h in range(s.commit_start, s.commit_end + 1)):
                head = by_height[s.commit_end]
                break
        if head is None:
            raise LookupError("no complete commit in RPMB for this pairing")
        self.committed = head
        self._known = {s.height: s.hash for s in cps if s.height <= head.height}
        self._checkpoints = sorted(h for h in self._known if h % CHECKPOINT_EVERY == 0)
        self._known.update({s.height: s.hash for s in ring if s.height <= head.height})
        self.tail = []

    def start(self, genesis: blk.Block) -> None:
        """A new pairing: genesis is the first commit."""
        self.tail = [genesis]
        self.committed = None
        self._known = {}
        self._checkpoints = []
        self.commit()

    # -- queries ---------------------------------------------------------------------------------

    @property
    def committed_height(self) -> int:
        assert self.committed is not None
        return self.committed.height

    @property
    def head_height(self) -> int:
        return self.tail[-1].height if self.tail else self.committed_height

    @property
    def head_hash(self) -> bytes:
        assert self.committed is not None
        return self.tail[-1].hash if self.tail else self.committed.hash

    def committed_hash(self, height: int) -> bytes | None:
        return self._known.get(height)

    def challenge(self, k: int = blk.CHALLENGE_K) -> blk.Challenge:
        """A fresh nonce and up to k distinct committed heights: recent ones, and one older checkpoint."""
        top = self.committed_height
        low = max(0, top - RING_SLOTS + 1)
        span = top - low + 1
        draws = secrets.token_bytes(8 * (4 * k + 1))  # one system-random read; 64-bit draws, bias < 2**-50
        picked: set[int] = set()
        want = min(k, span)
        for i in range(0, 8 * 4 * k, 8):
            if len(picked) >= want:
                break
            h = low + int.from_bytes(draws[i:i + 8], "big") % span
            if h in self._known:
                picked.add(h)
        older = bisect.bisect_left(self._checkpoints, low)  # checkpoints below the ring (the list is sorted)
        if older and picked:
            picked.pop()
            picked.add(self._checkpoints[int.from_bytes(draws[-8:], "big") % older])
        if not picked:
            picked.add(top)
        return blk.Challenge(secrets.token_bytes(blk.NONCE_SIZE), tuple(sorted(picked)))

    # -- updates ---------------------------------------------------------------------------------

    def append(self, direction: int, command: int, body_digest: bytes) -> blk.Block:
        b = blk.next_block(self.head_hash, self.head_height + 1, direction, command, body_digest, self.timelock)
        self.tail.append(b)
        return b

    def must_commit(self) -> bool:
        return len(self.tail) >= blk.MAX_TENTATIVE

    def commit(self) -> None:
        if not self.tail:
            return
        start, end = self.tail[0].height, self.tail[-1].height
        tag = self.tail[-1].hash[:8]
        slots = [Slot(b.height, start, end, b.hash, b.direction, b.command, b.body_digest, tag) for b in self.tail]
        self._rpmb.write_slots(slots, self.pairing_id)
        for s in slots:
            self._known[s.height] = s.hash
        self.committed = slots[-1]
        self.tail = []
        self._prune(start, end)

    def rollback(self) -> None:
        self.tail = []

    def _prune(self, start: int, end: int) -> None:
        """Forget what RPMB no longer holds: ring heights that were overwritten, old checkpoints."""
        for h in range(max(0, start - RING_SLOTS), max(0, end - RING_SLOTS + 1)):
            if h % CHECKPOINT_EVERY:
                self._known.pop(h, None)
        for h in range(start, end + 1):
            if h % CHECKPOINT_EVERY == 0:
                self._checkpoints.append(h)
                old = h - CHECKPOINT_EVERY * CHECKPOINT_SLOTS
                if old >= 0:
                    self._known.pop(old, None)
                    if old in self._checkpoints:
                        self._checkpoints.remove(old)
