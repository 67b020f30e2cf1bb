"""Work utility end to end with real processes: meters -> signed report in the outbox -> the node
records it -> the node allocates the cycle -> the device fetches and checks the signed statement."""

from __future__ import annotations

import json
import time

import pytest

from agent.incentive import allocation as alloc
from agent.utility import capacity
from agent.utility.meters import Meters
from tests.support.node_process import NodeProcess

CYCLE = 4.0
BASE = 10**21
FAST = ["--ack-timeout", "0.2", "--max-retransmit", "6"]


@pytest.fixture
def node(workdir):
    n = NodeProcess(workdir / "node", cycle_s=CYCLE,
                    extra=("--report-grace", "1", "--cycle-reward", str(BASE))).start()
    yield n
    n.stop()


def _aitn(cli, *args, home, tee, check=True):
    return cli("--cycle-seconds", str(CYCLE), *args, home=home, tee=tee, check=check)


def test_a_cycle_is_reported_recorded_allocated_and_checked(cli, tee, home, paired, node):
    _aitn(cli, "uplink", "enroll", "--node", node.uri, *FAST, home=home, tee=tee)
    enrolled = json.loads((home / "uplink" / "node.json").read_text())["capacity"]
    assert enrolled == capacity.capacity(capacity.probe(None))
    # work done in the cycle that just ended (as ingest and training add it), and some in this one
    t = time.time()
    with Meters(home, CYCLE) as m:
        m.add({"produced_bytes": 2e6, "cleaned_bytes": 1e6, "work_s": 3.0, "comm_s": 0.5}, t=t - CYCLE)
        m.add({"trained_bytes": 5e5, "work_s": 0.2}, t=t)
        added = m.cycle(t)
    show = json.loads(_aitn(cli, "utility", "--json", home=home, tee=tee).stdout)
    if show["cycle"] == added:
        assert show["meters"]["trained_bytes"] == 5e5 and show["unreported_cycles"] == [added - 1]
    else:   # a 4-s cycle ended before the command read the meters (a loaded host): the next one is empty
        assert show["cycle"] > added and show["meters"]["trained_bytes"] == 0, show
        assert show["unreported_cycles"][:2] == [added - 1, added], show
    assert show["fixed"] == pytest.approx(capacity.fixed_wu(enrolled, CYCLE))

    # (a 4-s cycle may end between two commands: then its meters are reported too)
    queued = json.loads(_aitn(cli, "utility", "report", "--json", home=home, tee=tee).stdout)["queued"]
    assert queued[0]["cycle"] == show["unreported_cycles"][0]
    again = json.loads(_aitn(cli, "utility", "report", "--json", home=home, tee=tee).stdout)["queued"]
    assert not {q["cycle"] for q in again} & {q["cycle"] for q in queued}   # a cycle is reported once
    sent = json.loads(_aitn(cli, "uplink", "send", "--json", *FAST, home=home, tee=tee).stdout)
    assert sent["sent"] == len(queued) + len(again) and sent["rejected"] == 0

    # the node allocates the cycle once its end + grace has passed; the device checks the statement
    deadline = time.monotonic() + 20
    while True:
        res = _aitn(cli, "utility", "allocation", "--cycle", str(queued[0]["cycle"]), "--require-share", "--json",
                    home=home, tee=tee, check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert st["n"] == 1 and st["m_ppm"] == alloc.multiplier_ppm(1)
    assert int(st["units"]) == int(st["pool"]) == int(st["total"]) == BASE * alloc.multiplier_ppm(1) // 10**6
    (row,) = st["shares"]
    assert row["device"] == st["device"] and row["fixed"] == pytest.approx(capacity.fixed_wu(enrolled, CYCLE))
    # (B / W) x (W - C) / 1e15 from the meters above
    assert row["variable"] == pytest.approx(3e6 / 3.0 * 2.5 / 1e15)
    # the operator's view from the node's own state says the same, signature checked
    op = json.loads(_aitn(cli, "node", "allocation", "--state", str(node.folder), "--cycle", str(st["cycle"]), "--json",
                          home=home, tee=tee).stdout)
    assert op == {k: v for k, v in st.items() if k not in ("device", "units")}
    status = json.loads(_aitn(cli, "node", "status", "--node", node.uri, "--json", home=home, tee=tee).stdout)
    assert status["incentives"]["reports"] == status["counters"]["accepted.report"] == sent["sent"]
    # the device's send metered its communication
    with Meters(home, CYCLE) as m:
        comm = sum(m.read(c)["comm_s"] for c in m.cycles()) - 0.5
    assert comm > 0


def test_a_report_the_node_refuses_is_set_aside_with_its_reason(cli, tee, home, paired, node):
    """A device whose meters claim more throughput than its hardware has: the node refuses the report
    (4.00, counted), the outbox keeps it under rejected/ with the reason, and later reports still go."""
    _aitn(cli, "uplink", "enroll", "--node", node.uri, *FAST, home=home, tee=tee)
    with Meters(home, CYCLE) as m:
        m.add({"produced_bytes": 1e15, "work_s": 1.0}, t=time.time() - 2 * CYCLE)   # 1 PB/s: impossible
        m.add({"produced_bytes": 1e6, "work_s": 1.0}, t=time.time() - CYCLE)
    queued = json.loads(_aitn(cli, "utility", "report", "--json", home=home, tee=tee).stdout)["queued"]
    assert len(queued) == 2
    sent = json.loads(_aitn(cli, "uplink", "send", "--json", *FAST, home=home, tee=tee).stdout)
    assert sent["sent"] >= 1 and sent["rejected"] == 1
    reasons = [p.read_text() for p in (home / "uplink" / "outbox" / "rejected").glob("*.reason")]
    assert len(reasons) == 1 and "theoretical" in reasons[0]
    status = json.loads(_aitn(cli, "node", "status", "--node", node.uri, "--json", home=home, tee=tee).stdout)
    assert status["counters"]["rejected.report.report"] == 1
    assert status["incentives"]["reports"] == sent["sent"]
