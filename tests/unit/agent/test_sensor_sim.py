"""agent.ingest.sim: a deterministic, realistic robot, and wire faults the decoder counts exactly.

No I/O here: the simulator's records and chunks are checked against physics (ranges, speeds, the
record mix, battery and motor behaviour), against the privacy-relevant content the deployment
policy must handle (personal data in notes, poses in HOME_ZONE), and against FrameDecoder.
"""

from __future__ import annotations

import math
import re
import statistics
from itertools import islice

import pytest

from agent.errors import ConfigError
from agent.ingest.frames import Frame, FrameDecoder, Gap, RecordType
from agent.ingest.sim import (AREAS, FAULT_MOTOR_OVERCURRENT, HOME_ZONE, NAMES, OPERATORS, SITE_ORIGIN, TASK_ABORT, TASK_FINISH,
                              TASK_START, BadSimConfig, SimConfig, TelemetrySim, site_to_gps)

R = RecordType


def take(cfg: SimConfig, n: int) -> list[tuple[RecordType, dict]]:
    return list(islice(TelemetrySim(cfg).records(), n))


def of(records, rtype: RecordType) -> list[dict]:
    return [f for t, f in records if t is rtype]


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6_371_008.8 * math.asin(math.sqrt(a))


@pytest.fixture(scope="module")
def long_clean():
    """A clean shift: 60,000 records at 50 records/s, i.e. 20 simulated minutes (several tasks)."""
    return take(SimConfig(seed=7, rate_hz=50, clean=True), 60_000)


# -- determinism and the stream's shape ---------------------------------------------------------------

def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not():
    a = list(islice(TelemetrySim(SimConfig(seed=5, p_garbage=0.01)).chunks(), 5000))
    b = list(islice(TelemetrySim(SimConfig(seed=5, p_garbage=0.01)).chunks(), 5000))
    c = list(islice(TelemetrySim(SimConfig(seed=6, p_garbage=0.01)).chunks(), 5000))
    assert a == b
    assert a != c


def test_the_record_mix_follows_the_shares(long_clean):
    n = {t: len(of(long_clean, t)) for t in R}
    assert n[R.IMU] > n[R.MOTORS] > n[R.POSE] > n[R.GPS] > 0
    assert n[R.IMU] / n[R.MOTORS] == pytest.approx(2.0, rel=0.01)
    assert n[R.IMU] / n[R.POSE] == pytest.approx(10.0, rel=0.01)
    assert n[R.IMU] / n[R.GPS] == pytest.approx(100.0, rel=0.02)
    assert n[R.BATTERY] == pytest.approx(n[R.GPS], abs=1)
    rare = sum(n[t] for t in (R.TASK_EVENT, R.NOTE, R.FAULT, R.OPERATOR))
    assert 0 < rare < 0.005 * len(long_clean)


def test_t_ms_advances_with_the_rate_and_wraps_like_the_mcu():
    recs = take(SimConfig(seed=1, rate_hz=250, clean=True), 2000)
    assert [f["t_ms"] for _, f in recs] == [i * 4 for i in range(2000)]
    start = 2**32 - 1000
    recs = take(SimConfig(seed=1, rate_hz=1000, start_ms=start, clean=True), 2000)
    t = [f["t_ms"] for _, f in recs]
    assert t[0] == start and t[999] == 2**32 - 1 and t[1000] == 0 and t[1999] == 999


@pytest.mark.parametrize("bad", [dict(rate_hz=0), dict(rate_hz=-5), dict(p_garbage=1.5), dict(p_outlier=-0.1),
                                 dict(motors=5), dict(initial_soc_pct=120), dict(first_seq=2**32),
                                 dict(note_per_s=-1)])
def test_bad_settings_are_a_config_error(bad):
    with pytest.raises(BadSimConfig) as e:
        SimConfig(**bad)
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 3
    assert next(iter(bad)) in str(e.value)


# -- physics ------------------------------------------------------------------------------------------

def test_clean_values_stay_in_physical_ranges(long_clean):
    imu = of(long_clean, R.IMU)
    assert all(abs(f[k]) < 2 * 9807 for f in imu for k in ("ax", "ay"))         # a robot, not a car
    assert all(2000 < f["az"] < 18000 for f in imu)                              # gravity plus vibration
    assert all(abs(f[k]) < 120_000 for f in imu for k in ("gx", "gy", "gz"))     # < 120 deg/s
    motors = of(long_clean, R.MOTORS)
    assert len({len(f["currents_ma"]) for f in motors}) == 1
    assert 2 <= len(motors[0]["currents_ma"]) <= 4
    overcurrent = [f for f in motors if max(abs(i) for i in f["currents_ma"]) >= 6000]
    assert len(overcurrent) == sum(f["code"] == FAULT_MOTOR_OVERCURRENT for f in of(long_clean, R.FAULT))
    for f in of(long_clean, R.BATTERY):
        assert 6400 <= f["mv"] <= 8500 and 0 <= f["soc_pct"] <= 100 and 100 <= f["temp_dc"] <= 450


def test_the_robot_drives_between_waypoints_at_site_speeds(long_clean):
    poses = of(long_clean, R.POSE)
    speeds = [math.hypot(b["x_mm"] - a["x_mm"], b["y_mm"] - a["y_mm"]) / (b["t_ms"] - a["t_ms"])
              for a, b in zip(poses, poses[1:])]
    moving = [v for v in speeds if v > 0.05]
    assert max(speeds) <= 1.55
    assert len(moving) > 0.6 * len(speeds)
    assert 0.3 <= sorted(moving)[len(moving) // 2] <= 1.5
    assert max(moving) > 0.8                         # transits are faster than work
    assert all(-18000 <= p["heading_cdeg"] < 18000 for p in poses)
    assert max(math.hypot(p["x_mm"], p["y_mm"]) for p in poses) / 1000 < 60     # stays on the site


def test_gps_fixes_follow_the_pose_around_the_site_origin(long_clean):
    last_pose = None
    errors = []
    for t, f in long_clean:
        if t is R.POSE:
            last_pose = f
        elif t is R.GPS and last_pose is not None:
            lat, lon = site_to_gps(last_pose["x_mm"] / 1000, last_pose["y_mm"] / 1000)
            errors.append(haversine_m(f["lat_e7"] / 1e7, f["lon_e7"] / 1e7, lat, lon))
    assert len(errors) > 300
    assert max(errors) < 6.0                          # GNSS noise, not a different place
    assert 0.2 < sum(errors) / len(errors) < 3.0      # but noisy
    assert haversine_m(*site_to_gps(0, 0), *SITE_ORIGIN) < 1e-6


def test_motor_currents_follow_motion(long_clean):
    speed, prev, speeds, wheels = 0.0, None, [], []
    for t, f in long_clean:
        if t is R.POSE:
            if prev is not None:
                speed = math.hypot(f["x_mm"] - prev["x_mm"], f["y_mm"] - prev["y_mm"]) / (f["t_ms"] - prev["t_ms"])
            prev = f
        elif t is R.MOTORS:
            speeds.append(speed)
            wheels.append((f["currents_ma"][0] + f["currents_ma"][1]) / 2)
    assert statistics.correlation(speeds, wheels) > 0.4
    assert sum(w for v, w in zip(speeds, wheels) if v > 0.5) / sum(1 for v in speeds if v > 0.5) > 400


def test_imu_vibrates_more_when_driving(long_clean):
    az = [f["az"] for f in of(long_clean, R.IMU)]
    mean = sum(az) / len(az)
    assert mean == pytest.approx(9807, abs=50)
    assert 30 < (sum((a - mean) ** 2 for a in az) / len(az)) ** 0.5 < 1500


def test_the_battery_discharges_at_work_and_charges_at_the_dock():
    recs = take(SimConfig(seed=3, rate_hz=20, clean=True, battery_wh=3.0, initial_soc_pct=40), 40_000)
    soc = [f["soc_pct"] for f in of(recs, R.BATTERY)]
    low = soc.index(min(soc))
    assert min(soc) < 25 and soc[0] >= 39
    assert max(soc[low:]) >= 95                       # charged again
    # where it charged: at the dock, the site origin
    t_low = of(recs, R.BATTERY)[low]["t_ms"]
    pose = next(p for p in of(recs, R.POSE) if p["t_ms"] > t_low + 60_000)
    assert math.hypot(pose["x_mm"], pose["y_mm"]) < 500
    charging = [f["mv"] for f in of(recs, R.BATTERY)[low:] if f["soc_pct"] < 90]
    assert charging and max(charging) > 7000


# -- what happens on a shift --------------------------------------------------------------------------

def test_tasks_start_and_end_with_increasing_ids(long_clean):
    events = [(f["task_id"], f["event"]) for f in of(long_clean, R.TASK_EVENT)]
    assert len(events) >= 10
    starts = [tid for tid, ev in events if ev == TASK_START]
    assert starts == list(range(starts[0], starts[0] + len(starts)))
    for (tid, ev), (tid2, ev2) in zip(events, events[1:]):
        if ev == TASK_START:
            assert tid2 == tid and ev2 in (TASK_FINISH, TASK_ABORT)


def test_operators_badge_in_at_shift_start_and_on_changes(long_clean):
    assert long_clean[0][0] is R.OPERATOR
    badges = [f["badge"] for f in of(long_clean, R.OPERATOR)]
    assert set(badges) <= {b for _, b in OPERATORS}
    assert len(badges) >= 2 and all(a != b for a, b in zip(badges, badges[1:]))


EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
PHONES = {"CH": r"\+41 \d{2} \d{3} \d{2} \d{2}", "CH national": r"(?<![\d+] )\b0\d{2} \d{3} \d{2} \d{2}",
          "DE": r"\+49 30 \d{8}", "DE mobile": r"\b0151 \d{8}", "FR": r"\+33 6( \d{2}){4}",
          "FR national": r"(?<![\d+] )\b06( \d{2}){4}", "UK": r"\+44 20 7946 \d{4}",
          "US": r"\(\d{3}\) \d{3}-\d{4}", "US intl": r"\+1 \d{3}-\d{3}-\d{4}"}
PHONE = re.compile("|".join(PHONES.values()))
IPV4 = re.compile(r"\b\d{1,3}(\.\d{1,3}){3}\b")
IPV6 = re.compile(r"\b[0-9a-f]{1,4}:[0-9a-f:]*::?[0-9a-f:]*[0-9a-f]\b", re.I)
MAC = re.compile(r"\b[0-9a-f]{2}([:-][0-9a-f]{2}){5}\b", re.I)


def test_notes_carry_personal_data_of_every_kind():
    sim = TelemetrySim(SimConfig(seed=11, rate_hz=20, note_per_s=1.0))
    notes = [f["text"] for t, f in islice(sim.records(), 20_000) if t is R.NOTE]
    assert len(notes) > 300
    hits = {name: [n for n in notes if rx.search(n)] for name, rx in
            (("email", EMAIL), ("phone", PHONE), ("ipv4", IPV4), ("ipv6", IPV6), ("mac", MAC))}
    assert all(hits.values()), {k: len(v) for k, v in hits.items()}
    formats = {k for k, rx in PHONES.items() if any(re.search(rx, n) for n in notes)}
    assert formats == set(PHONES)
    assert any(":" in MAC.search(n).group(0) for n in hits["mac"])
    assert any("-" in MAC.search(n).group(0) for n in hits["mac"])
    named = [n for n in notes if any(name in n for name in NAMES)]
    assert {name for name in NAMES if any(name in n for n in notes)} >= set(NAMES[:5])
    personal = [n for n in notes if n in named or any(rx.search(n) for rx in (EMAIL, PHONE, IPV4, MAC))]
    assert len(personal) == sim.counts.notes_with_personal_data
    assert 0 < len(notes) - len(personal)              # and some notes carry none
    assert all(len(n.encode()) < 500 for n in notes)


def test_home_zone_is_near_the_site_and_some_work_happens_inside_it(long_clean):
    lat, lon, radius = HOME_ZONE
    assert radius == 15.0
    assert 35 < haversine_m(*SITE_ORIGIN, lat, lon) < 45
    assert dict(AREAS)["home garden"]
    poses = of(long_clean, R.POSE)
    inside = [p for p in poses if haversine_m(*site_to_gps(p["x_mm"] / 1000, p["y_mm"] / 1000), lat, lon) < radius]
    assert 0.02 * len(poses) < len(inside) < 0.6 * len(poses)
    fixes = of(long_clean, R.GPS)
    assert any(haversine_m(f["lat_e7"] / 1e7, f["lon_e7"] / 1e7, lat, lon) < radius for f in fixes)


# -- anomalies ----------------------------------------------------------------------------------------

def test_value_anomalies_appear_by_default_and_never_when_clean():
    sim = TelemetrySim(SimConfig(seed=2, rate_hz=100, fault_per_s=0.05))
    recs = list(islice(sim.records(), 40_000))
    c = sim.counts
    assert c.outliers > 20 and c.out_of_range > 5 and c.faults > 0
    impossible = ([f for f in of(recs, R.IMU) if max(abs(f["ax"]), abs(f["ay"]), abs(f["az"])) > 16 * 9807
                   or max(abs(f["gx"]), abs(f["gy"]), abs(f["gz"])) > 2_000_000]
                  + [f for f in of(recs, R.BATTERY) if f["mv"] == 0 or f["temp_dc"] < -200])
    assert len(impossible) == c.out_of_range
    spikes = [f for f in of(recs, R.MOTORS) if max(f["currents_ma"]) > 7000]
    assert spikes
    clean = TelemetrySim(SimConfig(seed=2, rate_hz=100, clean=True))
    list(islice(clean.records(), 40_000))
    assert clean.counts.outliers == clean.counts.out_of_range == 0


def test_clean_chunks_decode_to_exactly_the_records_with_wrapping_seq():
    cfg = SimConfig(seed=4, clean=True, first_seq=2**32 - 100)
    recs = take(cfg, 3000)
    dec = FrameDecoder()
    events = [e for c in islice(TelemetrySim(cfg).chunks(), 3000) for e in dec.feed(c)]
    assert all(isinstance(e, Frame) for e in events)
    assert [(e.record_type, e.fields) for e in events] == recs
    assert [e.seq for e in events] == [(2**32 - 100 + i) % 2**32 for i in range(3000)]
    assert not dec.counters.corrupt and dec.counters.gaps == 0


def test_injected_wire_faults_are_what_the_decoder_counts():
    cfg = SimConfig(seed=9, p_garbage=0.01, p_corrupt=0.01, p_truncate=0.005)
    sim = TelemetrySim(cfg)
    dec = FrameDecoder()
    frames, missing = [], []
    for i, chunk in enumerate(sim.chunks()):
        events = dec.feed(chunk)
        frames += [e for e in events if isinstance(e, Frame)]
        for g in (e for e in events if isinstance(e, Gap)):
            missing += [(g.expected + k) % 2**32 for k in range(g.missing_count)]
        if i >= 20_000 and frames[-1].seq == i:    # stop on a good frame: every loss is reported
            break
    c = sim.counts
    assert c.garbage > 50 and c.corrupted > 50 and c.truncated > 20
    assert sum(dec.counters.corrupt.values()) == c.garbage + c.corrupted + c.truncated
    assert missing == c.lost_seqs
    assert dec.counters.frames == c.records - len(c.lost_seqs)
    # the wire faults do not change the records: the ones that arrive are exactly the simulated ones
    recs = take(cfg, c.records)
    assert [(f.record_type, f.fields) for f in frames] == [r for i, r in enumerate(recs) if i not in set(missing)]
