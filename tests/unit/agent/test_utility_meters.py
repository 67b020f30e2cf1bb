"""Work utility on the device: the hardware probe, the fixed part, the meters, the report's variable part."""

from __future__ import annotations

import math
import multiprocessing as mp

import pytest

from agent import config
from agent.utility import capacity as cap
from agent.utility import report
from agent.utility.errors import MeterError, ReportRefused
from agent.utility.meters import NAMES, Meters


def _fake_root(tmp_path, *, online="0-3", khz=(1500000,) * 4, mem_kb=3884000, render=False, npu=False):
    r = tmp_path / "root"
    (r / "sys/devices/system/cpu").mkdir(parents=True)
    if online is not None:
        (r / "sys/devices/system/cpu/online").write_text(online + "\n")
    for i, f in enumerate(khz):
        d = r / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True)
        (d / "cpuinfo_max_freq").write_text(f"{f}\n")
    (r / "proc").mkdir()
    if mem_kb is not None:
        (r / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:  1000 kB\n")
    if render:
        (r / "dev/dri").mkdir(parents=True)
        (r / "dev/dri/renderD128").write_text("")
    if npu:
        (r / "dev").mkdir(exist_ok=True)
        (r / "dev/hailo0").write_text("")
    return r


def test_probe_reads_the_kernel_first(tmp_path):
    root = _fake_root(tmp_path, online="0-1,3", khz=(1800000, 2400000, 1800000), mem_kb=8 * 1024 * 1024,
                      render=True, npu=True)
    p = cap.probe(config.load_board("rpi3b").hardware, root)
    assert (p.cores, p.max_mhz, p.ram_mb, p.gpu, p.npu) == (3, 2400, 8192, True, True)
    assert p.source["cores"] == p.source["max_mhz"] == p.source["ram_mb"] == "kernel"


def test_probe_falls_back_to_the_board_file(tmp_path):
    root = _fake_root(tmp_path, online=None, khz=(), mem_kb=None)
    hw = config.load_board("rpi-zero2w").hardware
    p = cap.probe(hw, root)
    assert (p.cores, p.max_mhz, p.ram_mb, p.gpu, p.npu) == (4, 1000, 512, True, False)
    assert set(p.source[k] for k in ("cores", "max_mhz", "ram_mb")) == {"board"}


def test_fixed_part_is_the_documented_function():
    pi4 = config.load_board("rpi4b").hardware
    p = cap.Probe(pi4.cpu_cores, pi4.cpu_max_mhz, pi4.ram_mb, pi4.gpu, pi4.npu)
    assert cap.capacity(p) == 1.0
    assert cap.fixed_wu(1.0, 86400) == pytest.approx(4 * 1500e6 * 1.25 * 86400 / 1e15)   # 0.648 WU
    assert cap.fixed_nano_wu(p) == 648_000_000
    # RAM below 512 MiB per core scales the rate down; a GPU adds 25 %, an NPU 50 %
    zero2 = cap.Probe(4, 1000, 512, True, False)
    assert cap.rate(zero2) == pytest.approx(4 * 1000e6 * 0.25 * 1.25)
    assert cap.rate(cap.Probe(4, 1000, 2048, False, True)) == pytest.approx(4 * 1000e6 * 1.5)
    # a faster board is worth more, a cycle twice as long twice as much
    assert cap.capacity(cap.Probe(4, 2400, 4096, True, False)) == 1.6
    assert cap.fixed_wu(1.6, 172800) == pytest.approx(4 * cap.fixed_wu(0.8, 86400))


def test_meters_add_per_cycle_and_list_due_cycles(tmp_path):
    m = Meters(tmp_path, cycle_s=10)
    m.add({"produced_bytes": 100, "work_s": 1.5}, t=1005.0)      # cycle 100
    m.add({"produced_bytes": 50, "comm_s": 0.5, "work_s": 0.5}, t=1009.9)
    m.add({"trained_bytes": 7}, t=1010.0)                        # cycle 101
    assert m.read(100)["produced_bytes"] == 150 and m.read(100)["work_s"] == 2.0
    assert m.read(101)["trained_bytes"] == 7 and set(m.read(101)) == set(NAMES)
    assert m.due(now=1015.0) == [100]
    m.mark_reported(100, seq=4)
    assert m.due(now=1025.0) == [101] and m.reported(100) == 4
    # another cycle length keeps its own books
    assert Meters(tmp_path, cycle_s=20).read(50) == dict.fromkeys(NAMES, 0.0)


@pytest.mark.parametrize("values", [{"bogus": 1}, {"work_s": -1}, {"work_s": math.nan}, {"comm_s": True}])
def test_meters_refuse_bad_values_and_keep_the_rest(tmp_path, values):
    m = Meters(tmp_path, cycle_s=10)
    m.add({"work_s": 1.0}, t=5.0)
    with pytest.raises(MeterError):
        m.add({"produced_bytes": 10, **values}, t=5.0)
    assert m.read(0)["work_s"] == 1.0 and m.read(0)["produced_bytes"] == 0


def _adder(path, n):
    m = Meters(path, cycle_s=1000)
    for _ in range(n):
        m.add({"produced_bytes": 1, "work_s": 0.001}, t=500.0)
    m.close()


def test_meters_from_several_processes_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_adder, args=(tmp_path, 200)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    assert Meters(tmp_path, cycle_s=1000).read(0)["produced_bytes"] == 600


def test_variable_part_is_bytes_per_second_times_work_minus_communication():
    meters = dict.fromkeys(NAMES, 0.0) | {"produced_bytes": 4e9, "cleaned_bytes": 3e9, "desensitized_bytes": 2e9,
                                          "trained_bytes": 1e9, "uplink_bytes": 9e9, "work_s": 100.0, "comm_s": 25.0}
    # B = 1e10 bytes over 100 s of work, 25 of them talking: 1e8 B/s x 75 s = 7.5e9 B = 7.5e-6 WU
    assert report.variable_wu(meters) == pytest.approx(7.5e-6)
    assert report.variable_wu(meters | {"comm_s": 0.0}) == pytest.approx(1e-5)
    assert report.variable_wu(meters | {"work_s": 0.0, "comm_s": 0.0}) == 0.0
    # the uplink's own bytes are communication, not work
    assert report.variable_wu(meters | {"uplink_bytes": 0.0}) == report.variable_wu(meters)


def _report(capacity=0.4, cycle=10, cycle_s=60.0, **meters):
    m = dict.fromkeys(NAMES, 0.0) | {"produced_bytes": 1e6, "work_s": 10.0, "comm_s": 2.0} | meters
    return report.build(cycle, cycle_s, capacity, m)


def test_the_nodes_check_accepts_an_honest_report():
    report.check(_report(), capacity=0.4, cycle_s=60.0, now=11 * 60.0)


@pytest.mark.parametrize("change, where", [
    (lambda r: r.update(fixed=r["fixed"] * 2), "report.fixed"),                     # inflated capacity
    (lambda r: r.update(variable=r["variable"] * 1.01), "report.variable"),        # does not follow from meters
    (lambda r: r["meters"].update(comm_s=11.0), "report.meters.comm_s"),
    (lambda r: r["meters"].update(produced_bytes=1e12), "report.meters"),          # faster than the hardware
    (lambda r: r["meters"].pop("work_s"), "report.meters"),
    (lambda r: r.update(cycle=11), "report.cycle"),                                 # not ended yet
    (lambda r: r.update(cycle_s=30.0), "report.cycle_s"),
])
def test_the_nodes_check_refuses_what_does_not_add_up(change, where):
    r = _report()
    change(r)
    with pytest.raises(ReportRefused) as e:
        report.check(r, capacity=0.4, cycle_s=60.0, now=11 * 60.0)
    assert e.value.where == where
