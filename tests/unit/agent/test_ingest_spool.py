"""The ingest spool: every event kind survives a round trip; a torn tail is skipped and counted."""

from __future__ import annotations

import os

from agent.ingest.frames import CrcError, Duplicate, Frame, FrameError, Gap, RecordType, Restart
from agent.ingest.reader import Dropped, LinkDown, LinkUp
from agent.ingest.spool import Spool

EVENTS = [
    (Frame(RecordType.IMU, 7, {"t_ms": 1, "ax": 1, "ay": 2, "az": 3, "gx": 4, "gy": 5, "gz": 6}, 0, 30), 1000),
    (Frame(RecordType.NOTE, 8, {"t_ms": 2, "text": "Grüße \"x\"\n✓"}, 30, 20), 1001),
    (Gap(9, 12, 3, 50), 1002),
    (Restart(12, 0, 60), 1003),
    (Dropped(5, 1, 5, 2), 1004),
    (LinkDown("socket closed", 17), 1005),
    (LinkUp("socket://x:1"), 1006),
    (Duplicate(0, 70), 1007),
    (CrcError("checksum mismatch", offset=80), 1008),
]


def _key(e):
    if isinstance(e, Frame):
        return ("f", e.record_type, e.seq, e.fields)
    if isinstance(e, FrameError):  # only the reason is kept
        return ("err", e.reason)
    if isinstance(e, (Gap, Restart, Duplicate)):
        d = dict(vars(e)) if hasattr(e, "__dict__") else {}
        d.pop("offset", None)
        return (type(e).__name__, tuple(sorted(d.items())))
    return e


def test_every_event_kind_round_trips(tmp_path) -> None:
    s = Spool(tmp_path)
    s.open(3)
    assert s.append(EVENTS) == len(EVENTS)
    s.sync()
    got = list(s.read(3))
    assert [r for _, r in got] == [r for _, r in EVENTS]
    assert [_key(e) for e, _ in got] == [_key(e) for e, _ in EVENTS]
    assert s.generations() == [3]


def test_torn_tail_is_skipped_counted_and_not_glued_to_the_next_line(tmp_path) -> None:
    s = Spool(tmp_path)
    s.open(0)
    s.append(EVENTS[:2])
    s.close()
    with open(s.path(0), "ab") as f:   # killed mid-write
        f.write(b'{"k":"f","r":10')
    s2 = Spool(tmp_path)
    s2.open(0)                          # the restarted agent appends to the same generation
    s2.append(EVENTS[2:3])
    events = list(s2.read(0))
    assert len(events) == 3 and s2.skipped == 1
    assert isinstance(events[2][0], Gap)


def test_remove_and_files_are_private(tmp_path) -> None:
    s = Spool(tmp_path)
    s.open(1)
    s.append(EVENTS[:1])
    assert os.stat(s.path(1)).st_mode & 0o777 == 0o600
    s.remove(1)
    assert s.generations() == [] and list(s.read(1)) == []
