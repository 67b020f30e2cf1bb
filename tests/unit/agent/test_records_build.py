"""agent.records.build: wire integers -> schema units, MCU uptime -> Unix ms, carried context, gap marks.

Reader events (Dropped, LinkDown, LinkUp, Received) are local stand-ins matched by class name, as the
builder does; frames' own events come from agent.ingest.frames, some through the real encoder and decoder.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ingest.frames import (CrcError, Duplicate, Frame, FrameDecoder, Gap, PayloadError, RecordType,
                                 Restart, encode_record)
from agent.ingest.reader import Dropped, LinkDown, LinkUp, Received
from agent.records.build import Clock, TableBuilder
from agent.records.schema import FLAG_GAP_BEFORE, MAX_MOTORS, SCHEMA_VERSION, Table, check_types

T0 = 1_700_000_000_000  # a wall-clock Unix ms


def frame(rtype: RecordType, seq: int, **fields) -> Frame:
    return Frame(rtype, seq, fields, 0, 0)


def imu(seq: int, t: int, ax: int = 0) -> Frame:
    return frame(RecordType.IMU, seq, t_ms=t, ax=ax, ay=0, az=0, gx=0, gy=0, gz=0)


def fault(seq: int, t: int, code: int = 1) -> Frame:
    return frame(RecordType.FAULT, seq, t_ms=t, code=code)


def feed(b: TableBuilder, items: list[tuple[object, int]]) -> Table:
    for ev, recv in items:
        b.add(ev, recv)
    return b.build()


# -- units ------------------------------------------------------------------------------------------------

def test_every_record_type_in_schema_units():
    b = TableBuilder("robot-1")
    items = [
        frame(RecordType.POSE, 0, t_ms=1000, x_mm=-2_000_000, y_mm=1500, heading_cdeg=-17999),
        frame(RecordType.GPS, 1, t_ms=1000, lat_e7=483_584_370, lon_e7=-1_234_567_890),
        frame(RecordType.IMU, 2, t_ms=1000, ax=-19613, ay=12, az=9806, gx=250_000, gy=-1, gz=0),
        frame(RecordType.MOTORS, 3, t_ms=1000, currents_ma=[1200, -350, 32767]),
        frame(RecordType.BATTERY, 4, t_ms=1000, mv=7400, soc_pct=55, temp_dc=-105),
        frame(RecordType.TASK_EVENT, 5, t_ms=1000, task_id=0xDEADBEEF, event=3),
        frame(RecordType.NOTE, 6, t_ms=1000, text="zone B ✓"),
        frame(RecordType.FAULT, 7, t_ms=1000, code=0x0101),
        frame(RecordType.OPERATOR, 8, t_ms=1000, badge="04:A2:19"),
    ]
    t = feed(b, [(f, T0) for f in items])
    check_types(t)
    assert t.meta == {"device": "robot-1", "schema_version": SCHEMA_VERSION, "build": t.meta["build"]}
    assert t["seq"].tolist() == list(range(9))
    assert t["rtype"].tolist() == [int(r) for r in RecordType]
    assert t["t_ms"].tolist() == [T0] * 9
    r = [t.row(i) for i in range(9)]
    assert (r[0]["x_m"], r[0]["y_m"], r[0]["heading_deg"]) == (-2000.0, 1.5, -179.99)
    assert (r[1]["lat"], r[1]["lon"]) == (48.358437, -123.456789)
    assert [r[2][k] for k in ("ax", "ay", "az", "gx", "gy", "gz")] == [-19.613, 0.012, 9.806, 250.0, -0.001, 0.0]
    assert r[3]["motor_a"][:3] == [1.2, -0.35, 32.767] and all(math.isnan(x) for x in r[3]["motor_a"][3:])
    assert (r[4]["battery_v"], r[4]["soc_pct"], r[4]["temp_c"]) == (7.4, 55.0, -10.5)
    assert (r[5]["task_id"], r[5]["event"]) == (0xDEADBEEF, 3)
    assert r[6]["text"] == "zone B ✓" and r[7]["fault"] == 0x0101
    assert r[8]["operator"] == "04:A2:19"
    # channels a record does not carry stay at their fill
    assert math.isnan(r[0]["lat"]) and r[0]["event"] == -1 and r[0]["fault"] == -1 and r[0]["text"] is None
    assert r[7]["task_id"] == 0xDEADBEEF          # carried forward from the TASK_EVENT
    assert r[7]["operator"] is None and r[8]["operator"] == "04:A2:19"
    assert t["flags"].tolist() == [0] * 9


@pytest.mark.parametrize("cdeg, deg", [(0, 0.0), (18000, -180.0), (-18000, -180.0), (17999, 179.99),
                                       (-18001, 179.99), (32767, -32.33), (-32768, 32.32), (9000, 90.0)])
def test_heading_is_normalised_to_minus_180_plus_180(cdeg, deg):
    t = feed(TableBuilder("d"), [(frame(RecordType.POSE, 0, t_ms=0, x_mm=0, y_mm=0, heading_cdeg=cdeg), T0)])
    assert t["heading_deg"][0] == deg


def test_motors_beyond_max_are_truncated_and_counted():
    b = TableBuilder("d")
    t = feed(b, [(frame(RecordType.MOTORS, 0, t_ms=0, currents_ma=list(range(1, 11))), T0),
                 (frame(RecordType.MOTORS, 1, t_ms=0, currents_ma=[]), T0)])
    assert t["motor_a"][0].tolist() == [i / 1000 for i in range(1, MAX_MOTORS + 1)]
    assert np.isnan(t["motor_a"][1]).all()
    assert t.meta["build"]["motors_truncated"] == 1


def test_decoded_stream_builds_the_same_as_frames():
    fields = [(RecordType.IMU, {"t_ms": 10, "ax": 1, "ay": 2, "az": 3, "gx": 4, "gy": 5, "gz": 6}),
              (RecordType.MOTORS, {"t_ms": 10, "currents_ma": [5, -5]}),
              (RecordType.BATTERY, {"t_ms": 30, "mv": 12000, "soc_pct": 99, "temp_dc": 250})]
    data = b"".join(encode_record(r, i, f) for i, (r, f) in enumerate(fields))
    recv = [T0, T0, T0 + 25]
    via_decoder = feed(TableBuilder("d"), list(zip(FrameDecoder().feed(data), recv)))
    direct = feed(TableBuilder("d"), [(Frame(r, i, f, 0, 0), t) for (i, (r, f)), t in zip(enumerate(fields), recv)])
    for name in via_decoder.columns:
        np.testing.assert_array_equal(via_decoder[name], direct[name])
    assert via_decoder["t_ms"].tolist() == [T0, T0, T0 + 20]


# -- time -------------------------------------------------------------------------------------------------

def test_anchor_then_uptime():
    t = feed(TableBuilder("d"), [(imu(0, 5000), T0), (imu(1, 5020), T0 + 20), (imu(2, 6000), T0 + 1000)])
    assert t["t_ms"].tolist() == [T0, T0 + 20, T0 + 1000]


def test_uptime_wrap_at_2_pow_32():
    top = (1 << 32) - 10
    t = feed(TableBuilder("d"), [(imu(0, top), T0), (imu(1, (1 << 32) - 1), T0 + 9), (imu(2, 5), T0 + 15),
                                 (imu(3, 1000), T0 + 1010)])
    assert t["t_ms"].tolist() == [T0, T0 + 9, T0 + 15, T0 + 1010]


def test_uptime_a_little_out_of_order_is_a_small_step_back():
    # records of one sampling tick may leave the MCU slightly out of uptime order
    t = feed(TableBuilder("d"), [(imu(0, 1000), T0), (imu(1, 990), T0 + 1), (imu(2, 1010), T0 + 12)])
    assert t["t_ms"].tolist() == [T0, T0 - 10, T0 + 10] and t.meta["build"]["clock_jumps"] == 0


def test_restart_re_anchors_and_resets_context():
    b = TableBuilder("d")
    t = feed(b, [(frame(RecordType.TASK_EVENT, 0, t_ms=900_000, task_id=7, event=1), T0),
                 (frame(RecordType.OPERATOR, 1, t_ms=900_000, badge="alice"), T0),
                 (imu(2, 900_100), T0 + 100),
                 (Restart(2, 0, 0), T0 + 5000),
                 (imu(0, 300), T0 + 5000),                       # uptime went back: the MCU rebooted
                 (imu(1, 320), T0 + 5020)])
    assert t["t_ms"].tolist() == [T0, T0, T0 + 100, T0 + 5000, T0 + 5020]
    assert t["task_id"].tolist() == [7, 7, 7, -1, -1]
    assert t["operator"].tolist() == [None, "alice", "alice", None, None]
    assert t["flags"].tolist() == [0, 0, 0, FLAG_GAP_BEFORE, 0]
    m = t.meta["build"]
    assert (m["restarts"], m["anchors"], m["clock_jumps"], m["gap_marks"]) == (1, 2, 0, 1)


def test_link_up_re_anchors_and_resets_context_but_gap_keeps_it():
    b = TableBuilder("d")
    t = feed(b, [(LinkDown("open failed", 0), T0 - 9),          # the port did not open at first
                 (LinkUp("loop://"), T0 - 5),                   # the first: nothing was missed
                 (frame(RecordType.TASK_EVENT, 0, t_ms=100, task_id=3, event=1), T0),
                 (Gap(1, 5, 4, 0), T0 + 10),
                 (imu(5, 110), T0 + 10),
                 (LinkDown("unplugged", 7), T0 + 20),
                 (LinkUp("loop://"), T0 + 60_000),
                 (imu(6, 50_000), T0 + 60_000)])             # anchored afresh: not 100 + 49_900
    assert t["task_id"].tolist() == [3, 3, -1]
    assert t["flags"].tolist() == [0, FLAG_GAP_BEFORE, FLAG_GAP_BEFORE]
    assert t["t_ms"].tolist() == [T0, T0 + 10, T0 + 60_000]
    m = t.meta["build"]
    assert (m["gaps"], m["missing"], m["link_down"], m["link_up"], m["truncated_bytes"]) == (1, 4, 2, 2, 7)
    assert (m["anchors"], m["gap_marks"]) == (2, 2)


def test_clock_jump_re_anchors_counts_and_flags():
    b = TableBuilder("d", max_skew_ms=2000)
    t = feed(b, [(imu(0, 1000), T0), (imu(1, 1020), T0 + 20),
                 (imu(2, 1040), T0 + 3600_000),          # the Pi's clock stepped forward by an hour
                 (imu(3, 1060), T0 + 3600_020)])
    assert t["t_ms"].tolist() == [T0, T0 + 20, T0 + 3600_000, T0 + 3600_020]
    assert t["flags"].tolist() == [0, 0, FLAG_GAP_BEFORE, 0]
    assert t.meta["build"]["clock_jumps"] == 1 and b.stats.clock_jumps == 1


def test_latency_of_the_anchor_frame_is_taken_back():
    # The first frame sat 300 ms in a buffer; the next ones arrive at once: the offset follows them down.
    t = feed(TableBuilder("d"), [(imu(0, 1000), T0 + 300), (imu(1, 1020), T0 + 20), (imu(2, 1040), T0 + 41)])
    assert t["t_ms"].tolist() == [T0 + 300, T0 + 20, T0 + 40]


def test_slow_mcu_clock_drift_is_followed():
    # The MCU's uptime runs 0.1 % slow: every 1000 ms of uptime is 1001 ms of wall clock.
    c = Clock(max_skew_ms=2000, drift_window_ms=10_000)
    stamps = [c.stamp(up, T0 + up + up // 1000)[0] for up in range(0, 60_001, 100)]
    errors = [s - (T0 + up + up // 1000) for s, up in zip(stamps, range(0, 60_001, 100))]
    assert max(abs(e) for e in errors) <= 21      # at most two windows' worth of drift, never accumulated
    no_follow = Clock(max_skew_ms=2000, drift_window_ms=10**9)
    last = [no_follow.stamp(up, T0 + up + up // 1000)[0] for up in range(0, 60_001, 100)][-1]
    assert T0 + 60_060 - last == 60             # without the window the error grows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), min_size=1, max_size=60),
       st.integers(0, (1 << 32) - 1))
def test_stamps_never_go_back_and_never_pass_recv(steps, start):
    """With uptime and recv both non-decreasing, stamps are non-decreasing and never later than recv."""
    c = Clock(max_skew_ms=2000, drift_window_ms=5000)
    up, recv, last = start, T0, None
    for d_up, d_recv in steps:
        up, recv = (up + d_up) % (1 << 32), recv + d_recv
        s, _ = c.stamp(up, recv)
        assert s <= recv
        assert last is None or s >= last
        last = s


# -- gap marks and events ---------------------------------------------------------------------------------

def test_gap_marks_after_each_kind_of_loss():
    b = TableBuilder("d")
    t = feed(b, [(fault(0, 0), T0),
                 (Gap(1, 3, 2, 0), T0), (fault(3, 0), T0),
                 (Duplicate(3, 0), T0), (fault(4, 0), T0),                            # no mark
                 (Dropped(5, 5, 9, 0), T0), (fault(10, 0), T0),
                 (CrcError("x"), T0), (fault(11, 0), T0),                               # no seq: noise
                 (PayloadError("x", seq=12), T0), (fault(13, 0), T0),                   # a real record lost
                 (LinkDown("eof", 0), T0), (fault(14, 0), T0),
                 (Restart(14, 0, 0), T0), (fault(0, 0), T0)])
    assert t["flags"].tolist() == [0, 1, 0, 1, 0, 1, 1, 1]
    m = t.meta["build"]
    assert (m["gaps"], m["missing"], m["duplicates"], m["dropped"], m["dropped_frames"]) == (1, 2, 1, 1, 5)
    assert m["frame_errors"] == {"crc": 1, "payload": 1}
    assert (m["link_down"], m["restarts"], m["gap_marks"], m["rows"]) == (1, 1, 5, 8)


def test_pending_mark_and_link_state_cross_build():
    b = TableBuilder("d")
    first = feed(b, [(imu(0, 100), T0), (Gap(1, 2, 1, 0), T0 + 20)])
    second = feed(b, [(imu(2, 140), T0 + 40)])
    assert first["flags"].tolist() == [0] and second["flags"].tolist() == [FLAG_GAP_BEFORE]
    assert second["t_ms"].tolist() == [T0 + 40]
    assert first.meta["build"]["gaps"] == 1 and second.meta["build"]["gaps"] == 0
    assert b.stats.gaps == 1 and b.stats.rows == 2 and len(b) == 0
    assert len(b.build()) == 0


def test_dropped_frames_still_carry_context_and_reboots():
    b = TableBuilder("d")
    lost = [frame(RecordType.TASK_EVENT, 1, t_ms=100, task_id=9, event=1),
            frame(RecordType.OPERATOR, 2, t_ms=100, badge="bob")]
    t = feed(b, [(imu(0, 100), T0), (Dropped(lost, 1, 2, [Restart(2, 0, 0)]), T0 + 10),
                 (imu(0, 5), T0 + 20)])
    # the Restart inside the drop resets the context the dropped frames set, and re-anchors the clock
    assert t["task_id"].tolist() == [-1, -1] and t["operator"].tolist() == [None, None]
    assert t["t_ms"].tolist() == [T0, T0 + 20] and t["flags"].tolist() == [0, FLAG_GAP_BEFORE]
    t = feed(b, [(Dropped(lost, 1, 2, ()), T0 + 30), (imu(3, 40), T0 + 55)])
    assert t["task_id"].tolist() == [9] and t["operator"].tolist() == ["bob"]
    assert t.meta["build"]["dropped_frames"] == 2


def test_received_items_are_unwrapped_and_bad_input_rejected():
    b = TableBuilder("d")
    b.add(Received(imu(0, 10), T0))
    assert b.build()["t_ms"].tolist() == [T0]
    with pytest.raises(TypeError):
        b.add(object(), T0)
    with pytest.raises(TypeError):
        b.add(imu(1, 10), None)
    with pytest.raises(TypeError):
        b.add(imu(1, 10), float(T0))


def test_snapshot_restore_gives_the_same_rows_as_one_builder() -> None:
    def frames(start: int):
        for i in range(start, start + 5):
            yield Frame(RecordType.TASK_EVENT if i == 0 else RecordType.BATTERY, i,
                        {"t_ms": 1000 * i, "task_id": 42, "event": 1} if i == 0 else
                        {"t_ms": 1000 * i, "mv": 7400, "soc_pct": 50, "temp_dc": 250}, 0, 0)

    one = TableBuilder("dev")
    for f in frames(0):
        one.add(f, 1_790_000_000_000 + f.seq * 1000 + 3)
    one.build()
    snap = one.snapshot()
    two = TableBuilder("dev")
    two.restore(json.loads(json.dumps(snap)))
    for b in (one, two):
        for f in frames(5):
            b.add(f, 1_790_000_000_000 + f.seq * 1000 + (9 if f.seq == 7 else 3))
    a, b = one.build(), two.build()
    assert a["task_id"].tolist() == b["task_id"].tolist() == [42] * 5
    assert a["t_ms"].tolist() == b["t_ms"].tolist()
    with pytest.raises(ValueError):
        one.add(next(frames(10)), 1_790_000_010_000)
        one.snapshot()
