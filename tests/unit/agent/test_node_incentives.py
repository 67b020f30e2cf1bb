"""The node's incentives without the network: reports checked and recorded, cycles allocated and signed."""

from __future__ import annotations

import time

import pytest
from aiocoap.credentials import CredentialsMap

from agent.incentive import allocation as alloc
from agent.incentive import statement
from agent.node.incentives import IncentiveConfig
from agent.node.rounds import RoundConfig
from agent.node.service import NodeService
from agent.uplink import enroll
from agent.utility import report
from agent.utility.errors import ReportRefused
from agent.utility.meters import NAMES
from tests.support.soft_device import SoftDevice

CYCLE = 60.0
INC = IncentiveConfig(cycle_s=CYCLE, grace_s=10.0, rule="utility", base=10**21)


def _node(folder, inc=INC):
    return NodeService(folder, RoundConfig(model="activity"), CredentialsMap(), incentives=inc)


@pytest.fixture
def node(tmp_path):
    s = _node(tmp_path / "node")
    yield s
    s.close()


def _enroll(node, dev, home, capacity):
    pending = enroll.request(dev=dev.addr, pub=dev.pub, board="pi", capacity=capacity, sign=dev.sign)
    record = enroll.complete(home, "coap://node", pending, node.enroll(pending.data))
    assert record["capacity"] == capacity
    return bytes.fromhex(record["sid"])


def _payload(capacity, cycle, produced=1e6, work=10.0, comm=1.0):
    meters = dict.fromkeys(NAMES, 0.0) | {"produced_bytes": produced, "work_s": work, "comm_s": comm}
    return report.build(cycle, CYCLE, capacity, meters)


def _ended_cycle() -> int:
    return int(time.time() // CYCLE) - 1


def test_reports_are_recorded_once_and_a_different_one_is_a_conflict(node, tmp_path):
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "d", 0.4)
    c = _ended_cycle()
    p = _payload(0.4, c)
    ack = node.receive("report", sid, dev.item("report", p, 1))
    assert b"recorded" in ack
    assert b"duplicate" in node.receive("report", sid, dev.item("report", p, 2))   # a resend under a new seq
    with pytest.raises(ReportRefused, match="different report"):
        node.receive("report", sid, dev.item("report", _payload(0.4, c, produced=2e6), 3))
    rows = node.state.db.execute("SELECT addr, cycle FROM reports").fetchall()
    assert rows == [(dev.addr, c)]


def test_a_report_inflating_its_capacity_is_refused_and_nothing_is_kept(node, tmp_path):
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "d", 0.4)
    with pytest.raises(ReportRefused, match="enrolled capacity"):
        node.receive("report", sid, dev.item("report", _payload(1.6, _ended_cycle()), 1))
    assert node.state.db.execute("SELECT count(*) FROM reports").fetchone()[0] == 0
    assert node.state.accepted(dev.addr, 1) is None


def test_cycle_is_allocated_after_its_grace_signed_and_exact(node, tmp_path):
    devs = [SoftDevice() for _ in range(3)]
    caps = [1.0, 0.4, 0.1667]
    c = _ended_cycle()
    for i, (d, cap) in enumerate(zip(devs, caps)):
        sid = _enroll(node, d, tmp_path / f"d{i}", cap)
        node.receive("report", sid, d.item("report", _payload(cap, c, produced=1e6 * (i + 1)), 1))
    end = (c + 1) * CYCLE
    assert node.incentives.tick(now=end + 5.0) == []            # still in its grace period
    assert node.incentives.tick(now=end + 10.5) == [c]
    assert node.incentives.tick(now=end + 100) == []            # once
    msg = statement.verify(node.incentives.statement(c), node.key.address)
    assert msg["n"] == 3 and msg["m_ppm"] == alloc.multiplier_ppm(3)
    assert msg["pool"] == 10**21 * alloc.multiplier_ppm(3) // 10**6
    assert sum(r[3] for r in msg["shares"]) == msg["total"] == msg["pool"]
    units = {r[0]: r[3] for r in msg["shares"]}
    assert units[devs[0].addr] > units[devs[1].addr] > units[devs[2].addr]   # by work utility
    # a report arriving after the allocation is refused as late
    late = SoftDevice()
    sid = _enroll(node, late, tmp_path / "late", 0.4)
    with pytest.raises(ReportRefused, match="allocated already"):
        node.receive("report", sid, late.item("report", _payload(0.4, c), 1))


def test_variable_rule_shares_by_actual_work_only(tmp_path):
    node = _node(tmp_path / "node", IncentiveConfig(cycle_s=CYCLE, grace_s=0.0, rule="variable", base=1000))
    try:
        c = _ended_cycle()
        idle, busy = SoftDevice(), SoftDevice()
        node.receive("report", _enroll(node, idle, tmp_path / "i", 1.6),
                     idle.item("report", _payload(1.6, c, produced=0.0, work=1.0, comm=1.0), 1))
        node.receive("report", _enroll(node, busy, tmp_path / "b", 0.1667),
                     busy.item("report", _payload(0.1667, c), 1))
        node.incentives.tick(now=(c + 1) * CYCLE + 1)
        msg = statement.verify(node.incentives.statement(c), node.key.address)
        units = {r[0]: r[3] for r in msg["shares"]}
        assert units[idle.addr] == 0 and units[busy.addr] == msg["pool"] == 1000 * alloc.multiplier_ppm(2) // 10**6
    finally:
        node.close()


def test_reports_and_statements_survive_a_restart(tmp_path):
    folder = tmp_path / "node"
    node = _node(folder)
    dev = SoftDevice()
    sid = _enroll(node, dev, tmp_path / "d", 0.4)
    c = _ended_cycle()
    node.receive("report", sid, dev.item("report", _payload(0.4, c), 1))
    node.close()
    node = _node(folder)
    try:
        assert node.incentives.tick(now=(c + 1) * CYCLE + 11) == [c]
        first = node.incentives.statement(c)
    finally:
        node.close()
    node = _node(folder)
    try:
        assert node.incentives.statement() == first and node.incentives.tick(now=(c + 5) * CYCLE) == []
    finally:
        node.close()
