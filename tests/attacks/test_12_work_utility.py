"""Attacks on work-utility reports, against a real node process and a real secure world: a device
that inflates what it did is refused (4.00, counted) and nothing of it is recorded.

- a fixed part above the one its enrolled capacity gives (claiming better hardware)
- a variable part that does not follow from its own meters
- meters claiming more bytes per second than the device's theoretical rate
- a report for a cycle that has not ended
- a signed report whose bytes were changed afterwards (4.03: the signature no longer matches)
- a second, different report for a cycle already reported (4.00: conflict)
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest

from agent.tee.handshake import sign_digest
from agent.tee.session import ChainedSession
from agent.uplink import items, messages
from agent.uplink.errors import NodeRejected
from agent.uplink.link import NodeLink
from agent.utility import report
from agent.utility.meters import NAMES
from tests.support.node_process import NodeProcess

CYCLE = 30.0


@pytest.fixture
def node(workdir):
    n = NodeProcess(workdir / "node", cycle_s=CYCLE).start()
    yield n
    n.stop()


def _rows(node) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{node.folder / 'node.db'}?mode=ro", uri=True)
    try:
        return (db.execute("SELECT count(*) FROM reports").fetchone()[0],
                db.execute("SELECT count(*) FROM items WHERE kind = 'report'").fetchone()[0])
    finally:
        db.close()


def test_inflated_reports_are_refused(cli, tee, home, paired, node):
    cli("--cycle-seconds", str(CYCLE), "uplink", "enroll", "--node", node.uri, home=home, tee=tee)
    cap = json.loads((home / "uplink" / "node.json").read_text())["capacity"]
    dev = bytes.fromhex(json.loads(cli("identity", "show", "--json", home=home, tee=tee).stdout)["address"][2:])
    ended = int(time.time() // CYCLE) - 1
    honest_meters = dict.fromkeys(NAMES, 0.0) | {"produced_bytes": 1e6, "work_s": 2.0, "comm_s": 0.5}

    def honest(cycle=ended, **changes):
        p = report.build(cycle, CYCLE, cap, honest_meters)
        p.update(changes)
        return p

    async def run():
        link = await NodeLink.open(home)
        out = {}
        try:
            with ChainedSession.open(tee.url, home) as s:
                sign = lambda d: sign_digest(s, d).signature   # noqa: E731

                async def send(name, payload, seq, tamper=None):
                    body = items.envelope("report", payload, dev=dev, seq=seq, sign=sign)
                    if tamper:
                        body = tamper(body)
                    try:
                        out[name] = await link.send_item("report", body)
                    except NodeRejected as e:
                        out[name] = e

                await send("fixed", honest(fixed=report.build(ended, CYCLE, cap * 4, honest_meters)["fixed"]), 1)
                await send("variable", honest(variable=honest()["variable"] * 10), 2)
                fast = honest_meters | {"produced_bytes": 1e14, "work_s": 2.0}
                await send("rate", report.build(ended, CYCLE, cap, fast), 3)
                await send("future", honest(cycle=ended + 2), 4)

                def swap(body):   # the meters re-encoded with more bytes, the signature left as it was
                    env = messages.decode("item", body)
                    p = messages.decode("report", env["body"])
                    p["meters"]["produced_bytes"] *= 2
                    p["variable"] = report.variable_wu(p["meters"])
                    env["body"] = messages.encode("report", p)
                    return messages.encode("item", env)
                await send("tampered", honest(), 5, tamper=swap)
                await send("honest", honest(), 6)
                await send("conflict", report.build(ended, CYCLE, cap, honest_meters | {"produced_bytes": 2e6}), 7)
        finally:
            await link.close()
        return out

    out = asyncio.run(run())
    for name in ("fixed", "variable", "rate", "future", "conflict"):
        assert isinstance(out[name], NodeRejected) and out[name].code == "4.00", (name, out[name])
    assert "enrolled capacity" in str(out["fixed"]) and "meters give" in str(out["variable"])
    assert "theoretical" in str(out["rate"]) and "ends at" in str(out["future"])
    assert "different report" in str(out["conflict"])
    assert isinstance(out["tampered"], NodeRejected) and out["tampered"].code == "4.03"
    assert out["honest"]["status"] == "recorded"
    assert _rows(node) == (1, 1)
