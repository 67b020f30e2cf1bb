"""agent.uplink.outbox: seq allocation that never reuses, the round trip, the quota, quarantine, stats, recovery."""

from __future__ import annotations

import hashlib
import json
import stat
import struct
from pathlib import Path

import pytest

from agent.uplink.errors import OutboxCorrupt, OutboxFull
from agent.uplink.outbox import (DROPPABLE, KINDS, OVERHEAD, Item, Outbox, decode_item, encode_item,
                                 item_name)

QUOTA = 1 << 20


def body_of(seq: int, size: int = 200) -> bytes:
    return (hashlib.sha256(b"body %d" % seq).digest() * (size // 32 + 1))[:size]


def sized(size: int):
    """A make() whose body has ``size`` bytes (so the item file has size + OVERHEAD)."""
    return lambda seq: body_of(seq, size)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


@pytest.fixture
def box(root: Path) -> Outbox:
    return Outbox(root, QUOTA, clock=lambda: 1_700_000_000.5)


def seqs(box: Outbox) -> list[int]:
    return [i.seq for i in box.pending()]


def item_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.item"))


# -- sequence numbers ----------------------------------------------------------------------------------


def test_seq_starts_at_one_and_increases(box):
    assert [box.put("update", body_of).seq for _ in range(5)] == [1, 2, 3, 4, 5]


def test_make_receives_the_seq_it_is_stored_under(box):
    seen = []

    def make(seq):
        seen.append(seq)
        return b"signed over %d" % seq

    items = [box.put("report", make) for _ in range(3)]
    assert seen == [1, 2, 3]
    assert [i.body for i in box.pending()] == [b"signed over 1", b"signed over 2", b"signed over 3"]
    assert [i.seq for i in items] == seen


def test_seq_never_reused_after_ack_and_reopen(root, box):
    for _ in range(3):
        box.put("update", body_of)
    assert box.ack(3) and box.ack(2) and box.ack(1)
    assert box.pending() == []
    again = Outbox(root, QUOTA)
    assert again.put("update", body_of).seq == 4
    assert again.stats()["next_seq"] == 5


@pytest.mark.parametrize("acked", [(), (3,), (1, 2, 3), (3, 2, 1)], ids=["none", "highest", "in-order", "reverse"])
def test_deleted_counter_file_does_not_reuse_a_seq(root, box, acked):
    for _ in range(3):
        box.put("update", body_of)
    for s in acked:
        assert box.ack(s)
    (root / "seq").unlink()
    assert Outbox(root, QUOTA).put("manifest", body_of).seq == 4


def test_corrupt_counter_file_is_quarantined_and_seq_still_not_reused(root, box):
    for _ in range(3):
        box.put("update", body_of)
    for s in (1, 2, 3):
        box.ack(s)
    doc = json.loads((root / "seq").read_text())
    doc["last"] = 1  # a lower mark with a stale crc: must not be believed
    (root / "seq").write_text(json.dumps(doc))
    again = Outbox(root, QUOTA)
    assert again.put("update", body_of).seq == 4
    assert again.stats()["quarantined"] == 1
    assert (root / "quarantine" / "seq").exists()


def test_a_put_that_raises_consumes_its_seq_and_stores_nothing(root, box):
    box.put("update", body_of)

    def broken(seq):
        raise RuntimeError("signing failed")

    with pytest.raises(RuntimeError, match="signing failed"):
        box.put("update", broken)
    assert seqs(box) == [1]
    (root / "seq").unlink()  # even with the counter gone, seq 2 was issued once and is not again
    assert Outbox(root, QUOTA).put("update", body_of).seq == 3


def test_make_must_not_reenter_the_outbox(box):
    with pytest.raises(RuntimeError, match="reentrant"):
        box.put("update", lambda seq: box.put("report", body_of).body)
    assert box.pending() == []
    assert box.put("update", body_of).seq == 2  # the lock was released; seq 1 stays consumed


# -- round trip ----------------------------------------------------------------------------------------


def test_put_pending_ack_round_trip(box):
    bodies = {}
    for i, kind in enumerate(["update", "manifest", "report", "update"]):
        item = box.put(kind, sized(100 + 1000 * i))
        bodies[item.seq] = (kind, body_of(item.seq, 100 + 1000 * i))
        assert item == Item(item.seq, kind, bodies[item.seq][1], 1_700_000_000.5)
    got = box.pending()
    assert [(i.seq, i.kind, i.body) for i in got] == [(s, k, b) for s, (k, b) in sorted(bodies.items())]
    assert all(i.created == 1_700_000_000.5 for i in got)
    assert box.peek() == got[0]
    assert box.ack(1) is True
    assert box.peek() == got[1]
    assert box.ack(1) is False  # acking twice is fine
    assert seqs(box) == [2, 3, 4]


def test_pending_survives_reopen(root, box):
    a = box.put("update", body_of)
    b = box.put("report", body_of)
    assert Outbox(root, QUOTA).pending() == [a, b]


def test_peek_on_empty_is_none(box):
    assert box.peek() is None
    assert box.pending() == []


def test_ack_of_unknown_seq_is_false(box):
    box.put("update", body_of)
    assert box.ack(99) is False
    assert box.ack(0) is False
    assert box.ack(-1) is False
    assert seqs(box) == [1]


def test_body_may_be_empty_or_bytes_like(box):
    assert box.put("report", lambda s: b"").body == b""
    assert box.put("report", lambda s: bytearray(b"xy")).body == b"xy"
    assert [i.body for i in box.pending()] == [b"", b"xy"]


def test_make_must_return_bytes(box):
    with pytest.raises(TypeError, match="int"):
        box.put("update", lambda s: 5)
    assert box.pending() == []


def test_unknown_kind_is_rejected_without_consuming_a_seq(box):
    called = []
    with pytest.raises(ValueError, match="unknown outbox kind"):
        box.put("telemetry", lambda s: called.append(s) or b"x")
    assert called == []
    assert box.put("update", body_of).seq == 1


def test_root_is_created_private(root, box):
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert (root / "lock").exists()


# -- file format ---------------------------------------------------------------------------------------


def test_item_file_layout_is_as_documented(root, box):
    box.put("manifest", lambda s: b"hello")
    data = (root / "000000000001.manifest.item").read_bytes()
    header = struct.pack(">4sBQBdI", b"AITO", 1, 1, 2, 1_700_000_000.5, 5)
    assert data == header + hashlib.sha256(header + b"hello").digest() + b"hello"
    assert OVERHEAD == len(header) + 32 == 58
    assert decode_item("000000000001.manifest.item", data) == Item(1, "manifest", b"hello", 1_700_000_000.5)


def test_names_sort_by_seq():
    names = [item_name(s, "update") for s in (1, 9, 10, 100, 999_999)]
    assert sorted(names) == names


@pytest.mark.parametrize("damage, reason", [
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "sha256"),
    (lambda d: d[:20] + bytes([d[20] ^ 0x40]) + d[21:], "sha256"),
    (lambda d: b"XXXX" + d[4:], "magic"),
    (lambda d: d[:4] + b"\x02" + d[5:], "version"),
    (lambda d: d[:-3], "bytes"),
    (lambda d: d + b"\0", "bytes"),
    (lambda d: d[:30], "bytes"),
], ids=["body-bit", "created-bit", "magic", "version", "truncated", "extended", "torn-header"])
def test_decode_rejects_damage(damage, reason):
    item = Item(7, "update", b"z" * 100, 1.0)
    good = encode_item(item)
    assert decode_item(item_name(7, "update"), good) == item
    with pytest.raises(OutboxCorrupt, match=reason):
        decode_item(item_name(7, "update"), damage(good))


def test_decode_rejects_a_good_file_under_another_name():
    data = encode_item(Item(7, "update", b"z", 1.0))
    with pytest.raises(OutboxCorrupt, match="not what its name says"):
        decode_item(item_name(8, "update"), data)
    with pytest.raises(OutboxCorrupt, match="not what its name says"):
        decode_item(item_name(7, "report"), data)
    with pytest.raises(OutboxCorrupt, match="name"):
        decode_item("7.update.item", data)


# -- quarantine ----------------------------------------------------------------------------------------


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_item_is_quarantined_and_the_others_still_served(root, box):
    items = [box.put("update", body_of) for _ in range(4)]
    bad = root / item_name(2, "update")
    flip(bad, OVERHEAD + 50)
    assert box.peek() == items[0]
    assert box.pending() == [items[0], items[2], items[3]]
    assert not bad.exists()
    assert (root / "quarantine" / bad.name).exists()  # moved aside, not deleted
    assert box.stats()["quarantined"] == 1
    assert box.stats()["items"] == 3
    assert box.ack(2) is False


def test_corrupt_oldest_item_does_not_block_peek(root, box):
    items = [box.put("report", body_of) for _ in range(3)]
    flip(root / item_name(1, "report"), 0)
    assert box.peek() == items[1]
    assert box.stats()["quarantined"] == 1


def test_quarantined_highest_item_still_bounds_the_seq(root, box):
    for _ in range(3):
        box.put("update", body_of)
    flip(root / item_name(3, "update"), OVERHEAD)
    assert seqs(box) == [1, 2]
    (root / "seq").unlink()
    assert Outbox(root, QUOTA).put("update", body_of).seq == 4


def test_foreign_item_names_are_quarantined(root, box):
    box.put("update", body_of)
    (root / "junk.item").write_bytes(b"?")
    (root / "000000000005.telemetry.item").write_bytes(b"?")
    assert seqs(box) == [1]
    assert sorted(p.name for p in (root / "quarantine").iterdir()) == ["000000000005.telemetry.item", "junk.item"]
    assert box.stats()["quarantined"] == 2


def test_quarantine_keeps_both_files_with_the_same_name(root, box):
    (root / "junk.item").write_bytes(b"1")
    box.pending()
    (root / "junk.item").write_bytes(b"2")
    box.pending()
    q = root / "quarantine"
    assert sorted(p.read_bytes() for p in q.iterdir()) == [b"1", b"2"]


# -- quota ---------------------------------------------------------------------------------------------


def test_updates_are_dropped_oldest_first_to_make_room(root):
    box = Outbox(root, 3 * (1000 + OVERHEAD))
    for _ in range(3):
        box.put("update", sized(1000))
    assert box.stats()["bytes"] == 3 * (1000 + OVERHEAD)
    box.put("update", sized(1000))
    assert seqs(box) == [2, 3, 4]
    box.put("update", sized(1500))  # needs two of them to go
    assert seqs(box) == [4, 5]
    assert box.stats()["dropped"] == {"update": 3, "manifest": 0, "report": 0}
    assert box.stats()["bytes"] <= box.quota


def test_manifests_and_reports_are_never_dropped(root):
    box = Outbox(root, 4 * (1000 + OVERHEAD))
    box.put("manifest", sized(1000))  # 1
    box.put("update", sized(1000))  # 2
    box.put("report", sized(1000))  # 3
    box.put("update", sized(1000))  # 4
    box.put("report", sized(1000))  # 5: drops update 2
    assert seqs(box) == [1, 3, 4, 5]
    box.put("manifest", sized(1000))  # 6: drops update 4
    assert [(i.seq, i.kind) for i in box.pending()] == [(1, "manifest"), (3, "report"), (5, "report"),
                                                          (6, "manifest")]
    before = sorted((p.name, p.read_bytes()) for p in root.glob("*.item"))
    with pytest.raises(OutboxFull) as e:
        box.put("update", sized(10))  # only never-drop items remain
    assert e.value.exit_code == 71
    assert sorted((p.name, p.read_bytes()) for p in root.glob("*.item")) == before  # nothing stored
    st = box.stats()
    assert st["dropped"] == {"update": 2, "manifest": 0, "report": 0}
    assert st["next_seq"] == 8  # seq 7 was consumed by the refused put


def test_a_refused_put_drops_nothing_when_dropping_cannot_help(root):
    box = Outbox(root, 3 * (1000 + OVERHEAD))
    box.put("report", sized(1000))
    box.put("update", sized(1000))
    box.put("report", sized(1000))
    with pytest.raises(OutboxFull):
        box.put("manifest", sized(2500))  # would need 2558 free; dropping the update frees only 1058
    assert seqs(box) == [1, 2, 3]
    assert box.stats()["dropped"]["update"] == 0


def test_an_update_larger_than_the_quota_is_refused(root):
    box = Outbox(root, 10_000)
    box.put("update", sized(100))
    with pytest.raises(OutboxFull, match="needs"):
        box.put("update", sized(10_000))
    assert seqs(box) == [1]  # the older update was not sacrificed for nothing
    assert item_files(root) == [item_name(1, "update")]
    assert box.stats()["dropped"]["update"] == 0
    assert box.put("update", sized(10_000 - OVERHEAD - 100 - OVERHEAD)).seq == 3  # exactly fills: allowed
    assert box.stats()["bytes"] == 10_000


def test_dropped_counters_persist_across_reopen(root):
    box = Outbox(root, 2 * (500 + OVERHEAD))
    for _ in range(5):
        box.put("update", sized(500))
    assert box.stats()["dropped"]["update"] == 3
    assert Outbox(root, 2 * (500 + OVERHEAD)).stats()["dropped"] == {"update": 3, "manifest": 0, "report": 0}


def test_droppable_kinds_are_the_documented_ones():
    assert KINDS == ("update", "manifest", "report")
    assert DROPPABLE == ("update",)


# -- stats and recovery --------------------------------------------------------------------------------


def test_stats_contents(root):
    box = Outbox(root, 5000)
    assert box.stats() == {"items": 0, "bytes": 0, "quota": 5000,
                           "by_kind": {k: {"items": 0, "bytes": 0} for k in KINDS},
                           "dropped": {k: 0 for k in KINDS}, "next_seq": 1, "quarantined": 0, "rejected": 0}
    box.put("update", sized(1000))
    box.put("manifest", sized(300))
    box.put("report", sized(42))
    box.put("update", sized(2000))
    box.put("update", sized(1500))  # drops update 1
    box.ack(2)
    st = box.stats()
    assert st == {
        "items": 3,
        "bytes": 42 + 2000 + 1500 + 3 * OVERHEAD,
        "quota": 5000,
        "by_kind": {"update": {"items": 2, "bytes": 3500 + 2 * OVERHEAD}, "manifest": {"items": 0, "bytes": 0},
                    "report": {"items": 1, "bytes": 42 + OVERHEAD}},
        "dropped": {"update": 1, "manifest": 0, "report": 0},
        "next_seq": 6,
        "quarantined": 0, "rejected": 0,
    }
    assert json.loads(json.dumps(st)) == st
    assert st["bytes"] == sum(p.stat().st_size for p in root.glob("*.item"))


def test_tmp_leftovers_are_removed_on_open(root, box):
    box.put("update", body_of)
    (root / (item_name(2, "update") + ".tmp")).write_bytes(b"half an item")
    (root / "seq.tmp").write_bytes(b"{")
    (root / "state.json.tmp").write_bytes(b"")
    again = Outbox(root, QUOTA)
    assert sorted(p.name for p in root.iterdir()) == ["000000000001.update.item", "lock", "seq"]
    assert seqs(again) == [1]
    assert again.stats()["quarantined"] == 0


def test_corrupt_state_file_is_quarantined_not_fatal(root, box):
    box.put("update", body_of)
    (root / "state.json").write_text("{not json")
    again = Outbox(root, QUOTA)
    st = again.stats()
    assert st["dropped"] == {k: 0 for k in KINDS}
    assert st["quarantined"] == 1
    assert again.put("update", body_of).seq == 2


def test_errors_carry_their_exit_codes():
    assert OutboxFull.exit_code == 71
    assert OutboxCorrupt.exit_code == 72


def test_quota_must_hold_at_least_one_item(root):
    with pytest.raises(ValueError):
        Outbox(root, OVERHEAD)
    with pytest.raises(ValueError):
        Outbox(root, -1)


def test_reject_moves_the_item_aside_with_the_reason(tmp_path):
    box = Outbox(tmp_path / "ob", 1 << 20)
    a = box.put("manifest", lambda seq: b"a%d" % seq)
    b = box.put("update", lambda seq: b"b%d" % seq)
    assert box.reject(b.seq, "4.00 update rejected (norm)") is True
    assert box.reject(b.seq, "again") is False
    assert [i.seq for i in box.pending()] == [a.seq]
    kept = tmp_path / "ob" / "rejected"
    assert (kept / f"{b.seq:012d}.update.item.reason").read_text() == "4.00 update rejected (norm)"
    assert box.stats()["rejected"] == 1
    # a rejected seq is still a witness: never handed out again, even after reopening
    box.ack(a.seq)
    assert Outbox(tmp_path / "ob", 1 << 20).put("report", lambda seq: b"r").seq == b.seq + 1
