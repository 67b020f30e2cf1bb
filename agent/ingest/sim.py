"""TelemetrySim: a deterministic stand-in for a site robot's sensor MCU.

The robot (a mower-style site robot with 2-4 motors and a 2S Li-ion pack, like firmware/sensor_mcu)
starts at its dock at the site origin, takes tasks in work areas (one of them the owner's home
garden, HOME_ZONE), drives there at 0.3-1.5 m/s, works a stripe pattern, returns to the dock to
charge when its battery runs low. Operators badge in at shift start and on shift changes and type
notes that carry personal data. Everything follows from `SimConfig.seed`; no clock is read.

Records come out at `rate_hz` per simulated second in a fixed mix (IMU, then MOTORS, POSE at a
tenth of IMU's share, GPS and BATTERY at a hundredth; task, note, operator and fault records when
they happen), and `t_ms` advances with them like the MCU's uptime (mod 2**32). Unless
`clean`, values carry single-sample outliers and out-of-range glitches, and the byte stream carries
line noise, corrupted and truncated frames, all counted in `SimCounts` so tests can compare.

`sim_link.run()` plays the stream in real time on a link (tcp-listen://HOST:PORT, pty, or a pyserial URL).
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import AgentError, ConfigError
from .frames import SEQ_MOD, RecordType, encode_record

SITE_ORIGIN = (47.3769, 8.5417)                     # lat, lon of the site frame's (0, 0): the dock
_M_PER_DEG = 6_371_008.8 * math.pi / 180            # mean Earth radius: metres per degree of latitude
_HOME_XY = (28.0, 28.5)                             # site frame, m: 40 m north-east of the dock
HOME_ZONE = (round(SITE_ORIGIN[0] + _HOME_XY[1] / _M_PER_DEG, 7),
             round(SITE_ORIGIN[1] + _HOME_XY[0] / (_M_PER_DEG * math.cos(math.radians(SITE_ORIGIN[0]))), 7),
             15.0)                                  # lat, lon, radius m: the owner's home area

TASK_START, TASK_FINISH, TASK_ABORT = 1, 2, 3       # TASK_EVENT.event
FAULT_IMU_BUS, FAULT_MOTOR_OVERCURRENT, FAULT_BUMPER, FAULT_BATTERY_LOW = 0x0001, 0x0201, 0x0301, 0x0501
#: Periodic records' shares of the stream (smooth weighted round robin): IMU 100 : MOTORS 50 : POSE 10 : 1 : 1.
SHARES = {RecordType.IMU: 100, RecordType.MOTORS: 50, RecordType.POSE: 10, RecordType.GPS: 1,
          RecordType.BATTERY: 1}
AREAS = (("north lawn", (-10.0, 32.0)), ("east yard", (35.0, -8.0)), ("south strip", (-5.0, -30.0)),
         ("west hedge", (-32.0, 12.0)), ("home garden", _HOME_XY))
NAMES = ("Anna Müller", "Luca Rossi", "Sophie Martin", "Jonas Keller", "María García", "Tom O'Brien",
         "Ayşe Yılmaz", "Chen Wei", "Priya Nair", "Lars Nilsson")
#: Operators (a name from NAMES, the 7-byte NFC UID of their badge).
OPERATORS = (("Anna Müller", "04:A2:19:7C:3B:5D:80"), ("Jonas Keller", "04:5E:C1:2A:90:6B:81"),
             ("Priya Nair", "04:11:8F:D2:47:3A:80"), ("Tom O'Brien", "04:C9:03:6E:B5:12:81"))
_DT = 0.02                      # physics step, simulated s
_A_MAX = 0.4                    # m/s^2
_G = 9.80665


class BadSimConfig(ConfigError):
    """A SimConfig value outside its range, or a link URL run() cannot serve."""


class SimLinkError(AgentError):
    """The link the simulator writes to failed (the device went away, the peer closed)."""

    exit_code = 51


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Probabilities are per record of the kind named, rates per simulated second."""

    seed: int = 0
    rate_hz: float = 200.0          # records per simulated second, all kinds together
    p_outlier: float = 0.002        # per IMU / MOTORS record: one channel spikes (within physical range)
    p_out_of_range: float = 0.002   # per IMU / BATTERY record: an impossible value (0 V, -273 degC, 20 g)
    p_garbage: float = 0.0005       # per frame: a burst of line noise (ended by a 0x00) before it
    p_corrupt: float = 0.0005       # per frame: one byte damaged on the wire
    p_truncate: float = 0.0002      # per frame: its tail is lost, so it merges with the next frame
    note_per_s: float = 1 / 60      # operator notes
    fault_per_s: float = 1 / 600    # random faults (bumper, motor overcurrent, IMU bus)
    motors: int | None = None       # 2-4; None: chosen from the seed
    initial_soc_pct: float = 85.0
    battery_wh: float = 37.0        # 2S 5 Ah
    start_ms: int = 0               # t_ms of the first record (the MCU's uptime)
    first_seq: int = 0
    clean: bool = False             # no anomaly of any kind (notes and faults still happen)

    def __post_init__(self) -> None:
        probs = ("p_outlier", "p_out_of_range", "p_garbage", "p_corrupt", "p_truncate")
        bad = [f"{n}={getattr(self, n)}" for n in probs if not 0.0 <= getattr(self, n) <= 1.0]
        bad += [f"{n}={getattr(self, n)}" for n in ("note_per_s", "fault_per_s") if getattr(self, n) < 0]
        if not 0 < self.rate_hz <= 1e6:
            bad.append(f"rate_hz={self.rate_hz}")
        if self.motors not in (None, 2, 3, 4):
            bad.append(f"motors={self.motors}")
        if not (0 <= self.initial_soc_pct <= 100 and self.battery_wh > 0):
            bad.append(f"initial_soc_pct={self.initial_soc_pct}, battery_wh={self.battery_wh}")
        if not (0 <= self.start_ms < SEQ_MOD and 0 <= self.first_seq < SEQ_MOD):
            bad.append(f"start_ms={self.start_ms}, first_seq={self.first_seq}")
        if bad:
            raise BadSimConfig("bad simulator settings: " + ", ".join(bad))


@dataclass
class SimCounts:
    """What the simulator injected so far. The decoder should count `garbage + corrupted + truncated`
    corrupt frames and report exactly `lost_seqs` as missing (those before the last good frame)."""

    records: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    outliers: int = 0
    out_of_range: int = 0
    faults: int = 0
    notes: int = 0
    notes_with_personal_data: int = 0
    garbage: int = 0
    garbage_bytes: int = 0
    corrupted: int = 0
    truncated: int = 0
    lost_seqs: list[int] = field(default_factory=list)


def site_to_gps(x_m: float, y_m: float) -> tuple[float, float]:
    """lat, lon of a site-frame point (x east, y north, m; equirectangular around SITE_ORIGIN)."""
    lat0, lon0 = SITE_ORIGIN
    return lat0 + y_m / _M_PER_DEG, lon0 + x_m / (_M_PER_DEG * math.cos(math.radians(lat0)))


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


# -- operators' notes -------------------------------------------------------------------------------

_NOTES = ("Spoke with {name} at the gate, call back on {phone}",
          "{name} ({email}) asked us to skip the rose bed today",
          "Wi-Fi drops near the shed: AP {mac} at {ipv4}",
          "Remote debug from {ipv6}, handed over to {name}",
          "Customer {name}: {phone} or {email}",
          "Gate code changed, ask {name} on {phone}",
          "Dock unreachable from {ipv4}, router {mac}, ticket by {email}",
          "Grass wet in zone B, cutting height raised",
          "Left blade replaced, torque checked",
          "Mole hills along the west hedge, drove around")
_PHONES = ("+41 79 {d3} {d2} {d2}", "079 {d3} {d2} {d2}", "+49 30 {d4}{d4}", "0151 {d4}{d4}",
           "+33 6 {d2} {d2} {d2} {d2}", "06 {d2} {d2} {d2} {d2}", "+44 20 7946 {d4}", "(415) 555-01{d2}",
           "+1 415-555-01{d2}")
_DOMAINS = ("example.com", "example.org", "mail.example.net")


def _note(rng: random.Random) -> tuple[str, bool]:
    """An operator's note and whether it carries personal data."""
    template = rng.choice(_NOTES)
    name = rng.choice(NAMES)
    local = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    phone = rng.choice(_PHONES)
    while "{d" in phone:
        phone = phone.replace("{d4}", digits(4), 1).replace("{d3}", digits(3), 1).replace("{d2}", digits(2), 1)
    mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
    text = template.format(
        name=name, phone=phone, email=f"{local.replace(' ', '.').replace(chr(39), '')}@{rng.choice(_DOMAINS)}",
        mac=mac if rng.random() < 0.5 else mac.upper().replace(":", "-"),
        ipv4=f"{rng.choice(('192.168', '10.0', '172.16'))}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        ipv6=rng.choice((f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}",
                         f"fe80::{rng.randrange(65536):x}:{rng.randrange(256):x}ff:fe{rng.randrange(256):02x}:"
                         f"{rng.randrange(65536):x}")))
    return text, "{" in template


# -- the robot --------------------------------------------------------------------------------------

class _Robot:
    """Physical state, task logic and the rare records they cause (queued in `events`)."""

    def __init__(self, cfg: SimConfig, rng: random.Random) -> None:
        self.cfg, self.rng = cfg, rng
        self.t = 0.0
        self.x = self.y = self.v = self.w = self.a = 0.0
        self.h = rng.uniform(-math.pi, math.pi)
        self.soc, self.temp = cfg.initial_soc_pct, 17.0 + rng.uniform(-3, 3)
        self.n_motors = cfg.motors or rng.randint(2, 4)
        self.route: deque[tuple[float, float, float, bool]] = deque()
        self.mode = "idle"                    # idle | task | to_dock | charge
        self.working = False
        self.task_id = rng.randrange(1000, 5000)
        self.areas: list[str] = []
        self.operator = rng.randrange(len(OPERATORS))
        self.stopped_until = 0.0
        self.spike_ma = 0                     # overcurrent: added to the first motor's next reading
        self.gps_bias = [0.0, 0.0]
        self.events: deque[tuple[RecordType, dict[str, Any]]] = deque()
        self.events.append((RecordType.OPERATOR, {"badge": OPERATORS[self.operator][1]}))

    def advance_to(self, t: float) -> None:
        while self.t + _DT <= t:
            self._step(_DT)

    def motor_currents(self) -> list[float]:
        """Amperes: left and right wheels (drive, acceleration, turning), then blade and brush."""
        base = 0.15 + 0.9 * self.v + 1.6 * self.a if self.v > 0.01 or abs(self.a) > 0.01 else 0.0
        turn = 0.5 * self.w
        out = [base - turn + 0.2 * abs(self.w), base + turn + 0.2 * abs(self.w),
               2.1 if self.working else 0.0, 0.7 if self.working else 0.0]
        return out[:self.n_motors]

    def battery_current(self) -> float:
        """Amperes out of the pack (negative while charging)."""
        if self.mode == "charge":
            return -2.0 if self.soc < 99.5 else 0.0
        return 0.35 + sum(abs(i) for i in self.motor_currents())

    def _step(self, dt: float) -> None:
        self.t += dt
        if self.t < self.stopped_until:
            self._drive(dt, None)
        elif self.route:
            self._drive(dt, self.route[0])
        else:
            self._drive(dt, None)
            self._arrived()
        current = self.battery_current()
        self.soc = _clamp(self.soc - current * 7.4 * dt / 36 / self.cfg.battery_wh, 0.0, 100.0)
        self.temp += dt * (17.0 + 2.5 * abs(current) - self.temp) / 300.0
        rng = self.rng
        if rng.random() < self.cfg.note_per_s * dt:
            self._note()
        if rng.random() < self.cfg.fault_per_s * dt:
            self._fault(rng.choice((FAULT_BUMPER, FAULT_MOTOR_OVERCURRENT, FAULT_IMU_BUS)))
        if self.mode == "task" and self.soc < 12.0:
            self._fault(FAULT_BATTERY_LOW)

    def _drive(self, dt: float, target: tuple[float, float, float, bool] | None) -> None:
        v_target, w_target = 0.0, 0.0
        if target is not None:
            tx, ty, cruise, self.working = target
            dx, dy = tx - self.x, ty - self.y
            dist = math.hypot(dx, dy)
            if dist < 0.25:
                self.route.popleft()
            err = _wrap(math.atan2(dy, dx) - self.h)
            w_target = _clamp(2.0 * err, -0.9, 0.9)
            v_target = min(cruise * max(0.0, math.cos(err)) ** 2, math.sqrt(2 * _A_MAX * dist) + 0.05)
        else:
            self.working = False
        self.a = _clamp((v_target - self.v) / dt, -_A_MAX, _A_MAX)
        self.v = max(0.0, self.v + self.a * dt)
        self.w += _clamp(w_target - self.w, -3.0 * dt, 3.0 * dt)
        self.h = _wrap(self.h + self.w * dt)
        self.x += self.v * math.cos(self.h) * dt
        self.y += self.v * math.sin(self.h) * dt

    def _arrived(self) -> None:
        """The route is done: finish the task, dock, or start the next task."""
        if self.mode == "task":
            self.events.append((RecordType.TASK_EVENT, {"task_id": self.task_id, "event": TASK_FINISH}))
            if self.rng.random() < 0.25:   # shift change
                self.operator = (self.operator + self.rng.randrange(1, len(OPERATORS))) % len(OPERATORS)
                self.events.append((RecordType.OPERATOR, {"badge": OPERATORS[self.operator][1]}))
            self.mode = "idle"
        elif self.mode == "to_dock":
            self.mode = "charge"
        elif self.mode == "charge":
            if self.soc >= 95.0:
                self.mode = "idle"
        elif self.soc < 25.0:
            self.mode = "to_dock"
            self.route.append((0.0, 0.0, 1.0, False))
        else:
            self._start_task()

    def _start_task(self) -> None:
        rng = self.rng
        if not self.areas:               # every area once per round, home garden included
            self.areas = [name for name, _ in AREAS]
            rng.shuffle(self.areas)
        cx, cy = dict(AREAS)[self.areas.pop()]
        self.task_id = (self.task_id + 1) % SEQ_MOD
        self.mode = "task"
        self.route.append((cx - 4.0, cy - 2.0, rng.uniform(0.8, 1.5), False))
        speed = rng.uniform(0.3, 0.8)
        for i, lane in enumerate((-2.0, 0.0, 2.0)):   # stripes, 8 m long, 2 m apart
            ends = (cx - 4.0, cx + 4.0) if i % 2 == 0 else (cx + 4.0, cx - 4.0)
            self.route.extend((ex, cy + lane, speed, True) for ex in ends)
        self.events.append((RecordType.TASK_EVENT, {"task_id": self.task_id, "event": TASK_START}))

    def _note(self) -> None:
        text, personal = _note(self.rng)
        self.events.append((RecordType.NOTE, {"text": text, "personal": personal}))

    def _fault(self, code: int) -> None:
        self.events.append((RecordType.FAULT, {"code": code}))
        if code == FAULT_BUMPER:
            self.stopped_until = self.t + 2.0
        elif code == FAULT_MOTOR_OVERCURRENT:
            self.spike_ma = 9000
        if code in (FAULT_MOTOR_OVERCURRENT, FAULT_BATTERY_LOW) and self.mode == "task":
            self.events.append((RecordType.TASK_EVENT, {"task_id": self.task_id, "event": TASK_ABORT}))
            self.route.clear()
            self.mode = "idle"


# -- records and frames -----------------------------------------------------------------------------

class TelemetrySim:
    """The simulated MCU: `records()` as encode_record takes them, `chunks()` as bytes on the wire.

    Each call starts the same simulation afresh from the seed; `counts` describes the last run.
    """

    def __init__(self, cfg: SimConfig | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.counts = SimCounts()

    def records(self) -> Iterator[tuple[RecordType, dict[str, Any]]]:
        """An endless stream of (record type, fields) in the SHARES mix, rare records as they happen."""
        cfg = self.cfg
        rng = random.Random(cfg.seed)
        robot = _Robot(cfg, rng)
        counts = self.counts = SimCounts()
        total = sum(SHARES.values())
        credit = {t: 0 for t in SHARES}
        anomalies = not cfg.clean
        i = 0
        while True:
            t = i / cfg.rate_hz
            robot.advance_to(t)
            t_ms = (cfg.start_ms + int(i * 1000 / cfg.rate_hz)) % SEQ_MOD
            if robot.events:
                rtype, extra = robot.events.popleft()
                fields = {"t_ms": t_ms, **extra}
                if rtype is RecordType.NOTE:
                    counts.notes += 1
                    counts.notes_with_personal_data += fields.pop("personal")
                counts.faults += rtype is RecordType.FAULT
            else:
                for k in credit:
                    credit[k] += SHARES[k]
                rtype = max(credit, key=credit.__getitem__)
                credit[rtype] -= total
                fields = {"t_ms": t_ms, **self._sample(rtype, robot, rng, t - robot.t, anomalies)}
            counts.records += 1
            counts.by_type[rtype.name] = counts.by_type.get(rtype.name, 0) + 1
            i += 1
            yield rtype, fields

    def _sample(self, rtype: RecordType, r: _Robot, rng: random.Random, ahead: float,
                anomalies: bool) -> dict[str, Any]:
        """A periodic record's fields (without t_ms) from the robot's state `ahead` s after r.t."""
        gauss, cfg, counts = rng.gauss, self.cfg, self.counts
        if rtype is RecordType.IMU:
            vib = 0.05 + 0.25 * r.v + (0.6 if r.working else 0.0)
            acc = [r.a + gauss(0, 0.03) + vib * gauss(0, 1), r.v * r.w + gauss(0, 0.03) + vib * gauss(0, 1),
                   _G + 1.5 * vib * gauss(0, 1)]
            gyro = [gauss(0, 0.3 + 2 * vib), gauss(0, 0.3 + 2 * vib), math.degrees(r.w) + gauss(0, 0.2)]
            vals = [round(a * 1000) for a in acc] + [round(g * 1000) for g in gyro]
            if anomalies and rng.random() < cfg.p_outlier:
                k = rng.randrange(6)
                vals[k] += rng.choice((-1, 1)) * (rng.randint(40_000, 120_000) if k < 3 else
                                                  rng.randint(300_000, 900_000))
                counts.outliers += 1
            elif anomalies and rng.random() < cfg.p_out_of_range:
                k = rng.randrange(6)
                vals[k] = rng.choice((-1, 1)) * (196_133 if k < 3 else 2_500_000)   # 20 g, 2500 dps
                counts.out_of_range += 1
            return dict(zip(("ax", "ay", "az", "gx", "gy", "gz"), vals))
        if rtype is RecordType.MOTORS:
            vib = 0.03 + (0.15 if r.working else 0.0)
            ma = [round((i + gauss(0, vib)) * 1000) for i in r.motor_currents()]
            ma[0] += r.spike_ma
            r.spike_ma = 0
            if anomalies and rng.random() < cfg.p_outlier:
                ma[rng.randrange(len(ma))] += rng.randint(8_000, 20_000)
                counts.outliers += 1
            return {"currents_ma": [int(_clamp(m, -32768, 32767)) for m in ma]}
        if rtype is RecordType.POSE:
            x, y = r.x + r.v * math.cos(r.h) * ahead, r.y + r.v * math.sin(r.h) * ahead
            cdeg = round(math.degrees(r.h) * 100)
            return {"x_mm": round(x * 1000), "y_mm": round(y * 1000),
                    "heading_cdeg": cdeg - 36000 if cdeg >= 18000 else cdeg}
        if rtype is RecordType.GPS:
            b = r.gps_bias
            b[0], b[1] = 0.98 * b[0] + gauss(0, 0.15), 0.98 * b[1] + gauss(0, 0.15)
            lat, lon = site_to_gps(r.x + b[0] + gauss(0, 0.3), r.y + b[1] + gauss(0, 0.3))
            return {"lat_e7": round(lat * 1e7), "lon_e7": round(lon * 1e7)}
        # BATTERY: open-circuit voltage of two cells, sagging under load
        s = r.soc / 100
        cell = 3.3 + 0.55 * s + 0.33 * s ** 4 + (0.08 * (1 - s) * s)
        fields = {"mv": round(2000 * cell - 80 * r.battery_current() + gauss(0, 4)),
                  "soc_pct": round(r.soc), "temp_dc": round(r.temp * 10 + gauss(0, 1))}
        if anomalies and rng.random() < cfg.p_out_of_range:
            if rng.random() < 0.5:
                fields["mv"] = 0            # brown-out glitch of the ADC
            else:
                fields["temp_dc"] = -2731   # open thermistor
            counts.out_of_range += 1
        return fields

    def chunks(self) -> Iterator[bytes]:
        """One chunk per record: its frame (seq from cfg.first_seq, mod 2**32), with line noise,
        damage or truncation injected unless clean. Never two wire anomalies in a row."""
        cfg = self.cfg
        wire = random.Random(f"{cfg.seed}-wire")
        seq = cfg.first_seq
        merging = False                 # the previous chunk was a truncated frame: this one is lost with it
        for rtype, fields in self.records():
            frame = encode_record(rtype, seq, fields)
            counts = self.counts
            if merging:
                counts.lost_seqs += [(seq - 1) % SEQ_MOD, seq]
                counts.truncated += 1
                merging = False
            elif not cfg.clean:
                r = wire.random()
                if r < cfg.p_garbage:
                    noise = bytes(wire.randrange(1, 256) for _ in range(wire.randint(3, 40)))
                    counts.garbage += 1
                    counts.garbage_bytes += len(noise) + 1
                    frame = noise + b"\x00" + frame
                elif r < cfg.p_garbage + cfg.p_corrupt:
                    k = wire.randrange(len(frame) - 1)      # any byte but the delimiter
                    damaged = 0
                    while damaged in (0, frame[k]):         # a 0x00 would split it in two frames
                        damaged = frame[k] ^ wire.randrange(1, 256)
                    frame = frame[:k] + bytes([damaged]) + frame[k + 1:]
                    counts.corrupted += 1
                    counts.lost_seqs.append(seq)
                elif r < cfg.p_garbage + cfg.p_corrupt + cfg.p_truncate:
                    frame = frame[:wire.randint(1, len(frame) - 2)]
                    merging = True
            seq = (seq + 1) % SEQ_MOD
            yield frame


# -- the link end ---------------------------------------------------------------------------------
