"""tee_sim.chainview: the bounded committed view of the chain, rebuilt from a real RPMB file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tee_sim.abi import block as blk
from tee_sim.chainview import ChainView
from tee_sim.rpmb import CHECKPOINT_EVERY, CHECKPOINT_SLOTS, RING_SLOTS, Rpmb, Slot

KEY = b"\x33" * 32
PAIRING = b"\x01" * 16
TIMELOCK = 1  # fast; the stamp itself is tested in test_block


def digest(tag: bytes, i: int) -> bytes:
    return hashlib.sha256(tag + i.to_bytes(8, "big")).digest()


@pytest.fixture
def rpmb(tmp_path: Path):
    r = Rpmb(tmp_path / "rpmb.bin", KEY)
    r.create()
    yield r
    r.close()


def new_view(rpmb: Rpmb) -> ChainView:
    v = ChainView(rpmb, PAIRING, TIMELOCK)
    v.start(blk.genesis(b"secret" * 4, PAIRING, TIMELOCK))
    return v


def loaded(rpmb: Rpmb) -> ChainView:
    v = ChainView(rpmb, PAIRING, TIMELOCK)
    v.load()
    return v


def grow(view: ChainView, n: int, per_commit: int, tag: bytes = b"x") -> dict[int, bytes]:
    """Append n blocks, committing every per_commit; returns height -> hash of the old head and every new block."""
    hashes = {view.head_height: view.head_hash}
    for i in range(n):
        b = view.append(i % 2, 2, digest(tag, view.head_height + 1))
        hashes[b.height] = b.hash
        if len(view.tail) >= per_commit:
            view.commit()
    view.commit()
    return hashes


def commit_slots(view: ChainView) -> list[Slot]:
    """The slots ChainView.commit would write for the current tail."""
    start, end = view.tail[0].height, view.tail[-1].height
    tag = view.tail[-1].hash[:8]
    return [Slot(b.height, start, end, b.hash, b.direction, b.command, b.body_digest, tag) for b in view.tail]


# -- start, append, commit, load ------------------------------------------------------------------


def test_start_commits_genesis(rpmb):
    v = new_view(rpmb)
    g = blk.genesis(b"secret" * 4, PAIRING, TIMELOCK)
    assert (v.committed_height, v.head_height, v.head_hash) == (0, 0, g.hash)
    assert v.committed_hash(0) == g.hash
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (0, g.hash)


def test_appended_blocks_link_and_stay_tentative_until_commit(rpmb):
    v = new_view(rpmb)
    g_hash = v.head_hash
    b1 = v.append(blk.REQUEST, 2, digest(b"a", 1))
    b2 = v.append(blk.RESPONSE, 2, digest(b"a", 2))
    assert b1 == blk.next_block(g_hash, 1, blk.REQUEST, 2, digest(b"a", 1), TIMELOCK)
    assert (b2.height, b2.prev_hash) == (2, b1.hash)
    assert (v.committed_height, v.head_height, v.head_hash) == (0, 2, b2.hash)
    assert v.committed_hash(1) is None
    assert loaded(rpmb).committed_height == 0  # nothing written yet
    v.commit()
    assert (v.committed_height, v.committed_hash(1), v.committed_hash(2)) == (2, b1.hash, b2.hash)
    assert v.tail == []


def test_must_commit_at_max_tentative(rpmb):
    v = new_view(rpmb)
    for i in range(blk.MAX_TENTATIVE - 1):
        v.append(0, 2, digest(b"m", i))
    assert v.must_commit() is False
    v.append(0, 2, digest(b"m", 99))
    assert v.must_commit() is True


def test_commit_with_empty_tail_writes_nothing(rpmb):
    v = new_view(rpmb)
    before = rpmb.read_slots(PAIRING)
    v.commit()
    assert rpmb.read_slots(PAIRING) == before


def test_load_gives_the_same_committed_height_and_head(rpmb):
    v = new_view(rpmb)
    hashes = grow(v, 500, per_commit=7)
    again = loaded(rpmb)
    assert (again.committed_height, again.head_height, again.head_hash) == (500, 500, hashes[500])
    assert again.committed == v.committed
    assert again._known == v._known
    assert again._checkpoints == v._checkpoints == [0, 256]


def test_load_without_any_commit_raises(rpmb):
    with pytest.raises(LookupError, match="no complete commit"):
        loaded(rpmb)


def test_load_ignores_another_pairings_slots(rpmb):
    new_view(rpmb)
    other = ChainView(rpmb, b"\x02" * 16, TIMELOCK)
    with pytest.raises(LookupError):
        other.load()


def test_load_drops_the_tail(rpmb):
    v = new_view(rpmb)
    grow(v, 10, per_commit=10)
    v.append(0, 2, digest(b"t", 11))
    v.load()
    assert (v.tail, v.head_height) == ([], 10)


def test_rollback_drops_the_tail_only(rpmb):
    v = new_view(rpmb)
    hashes = grow(v, 20, per_commit=5)
    committed, known = v.committed, dict(v._known)
    v.append(0, 2, digest(b"r", 1))
    v.append(1, 2, digest(b"r", 2))
    v.rollback()
    assert (v.tail, v.committed, v._known) == ([], committed, known)
    assert (v.head_height, v.head_hash) == (20, hashes[20])
    b = v.append(0, 2, digest(b"r", 3))
    assert (b.height, b.prev_hash) == (21, hashes[20])
    assert loaded(rpmb).committed_height == 20


# -- bounded memory: ring window and checkpoints ------------------------------------------------------------


def test_committed_hashes_are_kept_for_the_ring_window_and_checkpoints(rpmb):
    v = new_view(rpmb)
    hashes = grow(v, 3000, per_commit=4)
    window = set(range(3000 - RING_SLOTS + 1, 3001))
    older_checkpoints = {h for h in range(0, 3000 - RING_SLOTS + 1, CHECKPOINT_EVERY)}
    assert set(v._known) == window | older_checkpoints
    assert len(v._known) == RING_SLOTS + 8
    assert v._checkpoints == list(range(0, 3001, CHECKPOINT_EVERY))
    for h in (3000, 3000 - RING_SLOTS + 1, 1792, 256, 0):
        assert v.committed_hash(h) == hashes[h]
    for h in (3000 - RING_SLOTS, 1000, 257, 1):
        assert v.committed_hash(h) is None


def test_load_after_thousands_of_small_commits_across_the_ring_wrap(rpmb):
    v = new_view(rpmb)
    hashes = grow(v, 3000, per_commit=4)
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (3000, hashes[3000])
    assert again._known == v._known
    assert again._checkpoints == v._checkpoints
    assert all(again.committed_hash(h) == hashes[h] for h in again._known)


@pytest.mark.parametrize("per_commit", [1, 3, blk.MAX_TENTATIVE])
def test_load_after_the_ring_wraps_with_other_commit_sizes(rpmb, per_commit):
    v = new_view(rpmb)
    hashes = grow(v, RING_SLOTS + 300, per_commit=per_commit)
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (RING_SLOTS + 300, hashes[RING_SLOTS + 300])
    assert again._known == v._known


def test_checkpoints_wrap_after_checkpoint_slots(rpmb):
    v = new_view(rpmb)
    top = CHECKPOINT_EVERY * CHECKPOINT_SLOTS + 300
    hashes = grow(v, top, per_commit=blk.MAX_TENTATIVE)
    expected = list(range(2 * CHECKPOINT_EVERY, top + 1, CHECKPOINT_EVERY))
    assert len(expected) == CHECKPOINT_SLOTS
    assert v._checkpoints == expected
    assert v.committed_hash(0) is None and v.committed_hash(CHECKPOINT_EVERY) is None
    assert len(v._known) <= RING_SLOTS + CHECKPOINT_SLOTS
    again = loaded(rpmb)
    assert again._checkpoints == expected
    assert again._known == v._known
    assert again.committed_hash(2 * CHECKPOINT_EVERY) == hashes[2 * CHECKPOINT_EVERY]


# -- challenge ----------------------------------------------------------------------------------------------


def test_challenge_on_genesis_only_asks_for_genesis(rpmb):
    c = new_view(rpmb).challenge()
    assert c.heights == (0,)
    assert len(c.nonce) == blk.NONCE_SIZE


def test_challenge_on_a_short_chain(rpmb):
    v = new_view(rpmb)
    grow(v, 2, per_commit=2)
    for _ in range(30):
        c = v.challenge(k=4)
        assert set(c.heights) <= {0, 1, 2}
        assert list(c.heights) == sorted(set(c.heights))
        assert 1 <= len(c.heights) <= 3


def test_challenge_picks_distinct_committed_heights_and_fresh_nonces(rpmb):
    v = new_view(rpmb)
    grow(v, 300, per_commit=10)
    v.append(0, 2, digest(b"tentative", 1))  # never challenged
    nonces = set()
    for _ in range(50):
        c = v.challenge()
        assert len(c.nonce) == blk.NONCE_SIZE
        nonces.add(c.nonce)
        assert 1 <= len(c.heights) <= blk.CHALLENGE_K
        assert list(c.heights) == sorted(set(c.heights))
        assert all(v.committed_hash(h) is not None and h <= 300 for h in c.heights)
    assert len(nonces) == 50


def test_challenge_includes_one_older_checkpoint_once_the_chain_outgrows_the_ring(rpmb):
    v = new_view(rpmb)
    grow(v, 1500, per_commit=blk.MAX_TENTATIVE)
    low = 1500 - RING_SLOTS + 1
    for _ in range(50):
        c = v.challenge()
        older = [h for h in c.heights if h < low]
        assert len(older) == 1
        assert older[0] in (0, 256)
        assert all(low <= h <= 1500 for h in c.heights if h >= low)
        assert len(c.heights) == blk.CHALLENGE_K


def test_challenge_within_the_ring_has_no_older_checkpoint(rpmb):
    v = new_view(rpmb)
    grow(v, RING_SLOTS - 1, per_commit=blk.MAX_TENTATIVE)
    for _ in range(20):
        assert all(0 <= h <= RING_SLOTS - 1 for h in v.challenge().heights)


# -- torn commits ---------------------------------------------------------------------------------------------


def torn_commit(rpmb: Rpmb, view: ChainView, written: slice | list[int]) -> None:
    """Power loss during view.commit(): only some of its slots reach RPMB."""
    slots = commit_slots(view)
    part = slots[written] if isinstance(written, slice) else [slots[i] for i in written]
    rpmb.write_slots(part, PAIRING)


@pytest.mark.parametrize("written", [
    slice(0, 1), slice(0, 19),       # prefix
    slice(19, 20), slice(1, 20),     # suffix
    slice(5, 15), [0, 19], [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],  # middle, ends, every other
], ids=["first", "prefix", "last", "suffix", "middle", "ends", "alternate"])
def test_torn_commit_falls_back_to_the_previous_commit(rpmb, written):
    v = new_view(rpmb)
    hashes = grow(v, 100, per_commit=10)
    for i in range(20):
        v.append(0, 2, digest(b"torn", i))
    torn_commit(rpmb, v, written)
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (100, hashes[100])
    assert all(again.committed_hash(h) is None for h in range(101, 121))
    assert again.committed_hash(100) == hashes[100]


@pytest.mark.parametrize("written", [slice(0, 3), slice(3, 8), [1, 6]])
def test_torn_commit_across_the_ring_wrap_falls_back(rpmb, written):
    v = new_view(rpmb)
    hashes = grow(v, RING_SLOTS - 3, per_commit=blk.MAX_TENTATIVE)
    for i in range(8):  # heights RING_SLOTS-2 .. RING_SLOTS+5: slots at the end and start of the ring
        v.append(0, 2, digest(b"wrap", i))
    torn_commit(rpmb, v, written)
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (RING_SLOTS - 3, hashes[RING_SLOTS - 3])


def test_complete_commit_wins_over_a_torn_one_after_it_is_redone(rpmb):
    v = new_view(rpmb)
    grow(v, 50, per_commit=10)
    for i in range(10):
        v.append(0, 2, digest(b"first try", i))
    torn_commit(rpmb, v, slice(0, 4))
    v = loaded(rpmb)
    hashes = grow(v, 10, per_commit=10, tag=b"second try")
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (60, hashes[60])


def test_torn_commit_leaves_a_later_shorter_commit_loadable(rpmb):
    v = new_view(rpmb)
    grow(v, 10, per_commit=10)
    for i in range(20):
        v.append(0, 2, digest(b"A", i))
    torn_commit(rpmb, v, slice(10, 20))  # heights 21..30 of chain A survive
    v = loaded(rpmb)
    hashes = grow(v, 10, per_commit=10, tag=b"B")  # 11..20 of chain B
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (20, hashes[20])


def test_two_torn_commits_do_not_combine_into_a_complete_one(rpmb):
    v = new_view(rpmb)
    grow(v, 10, per_commit=10)
    for i in range(20):  # commit A: 11..30; power lost with only 21..30 written
        v.append(0, 2, digest(b"A", i))
    torn_commit(rpmb, v, slice(10, 20))
    v = loaded(rpmb)
    assert v.committed_height == 10
    hashes = grow(v, 10, per_commit=10, tag=b"B")  # 11..20 committed on the new chain
    for i in range(10):  # commit C: 21..30; power lost with only 21..25 written
        v.append(0, 2, digest(b"C", i))
    torn_commit(rpmb, v, slice(0, 5))
    again = loaded(rpmb)
    assert (again.committed_height, again.head_hash) == (20, hashes[20])
