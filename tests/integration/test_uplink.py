"""The uplink with real processes: a node, a secure world, the device's CLI, a lossy relay between them.

Every test checks the same promise from the node's durable state: each queued item arrived exactly
once ((device, seq) is the table's key, the round's update count matches) and the bytes the node
kept are the bytes the device queued.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.support.node_process import NodeProcess
from tests.support.udp_relay import UdpRelay

FAST = ["--ack-timeout", "0.1", "--max-retransmit", "8", "--backoff", "0.2", "--backoff-cap", "1"]


def _queue(home, tee, uri: str, updates: int = 0, manifests: int = 0, seed: int = 0) -> list[dict]:
    res = subprocess.run([sys.executable, "-m", "tests.support.uplink_worker", "--home", str(home), "--tee", tee.url,
                          "--node", uri, "--updates", str(updates), "--manifests", str(manifests), "--seed", str(seed)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def _node_items(node: NodeProcess) -> dict[int, tuple[str, str, bytes | None, str | None]]:
    """seq -> (kind, status, payload, update file) as the node recorded them."""
    db = sqlite3.connect(f"file:{node.folder / 'node.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, kind, status, payload, file FROM items").fetchall()
    finally:
        db.close()
    seqs = [r[0] for r in rows]
    assert len(seqs) == len(set(seqs))
    return {r[0]: r[1:] for r in rows}


def _node_counters(node: NodeProcess) -> dict[str, int]:
    db = sqlite3.connect(f"file:{node.folder / 'node.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT name, value FROM counters"))
    finally:
        db.close()


def _check_exactly_once(node: NodeProcess, queued: list[dict]) -> None:
    got = _node_items(node)
    assert sorted(got) == sorted(q["seq"] for q in queued)
    for q in queued:
        kind, status, payload, file = got[q["seq"]]
        assert kind == q["kind"]
        if kind == "manifest":
            assert hashlib.sha256(payload).hexdigest() == q["sha256"]
        else:
            assert status == "aggregated"
            assert hashlib.sha256((node.folder / "updates" / file).read_bytes()).hexdigest() == q["sha256"]
    updates = sum(q["kind"] == "update" for q in queued)
    db = sqlite3.connect(f"file:{node.folder / 'node.db'}?mode=ro", uri=True)
    try:
        n, samples = db.execute("SELECT updates, samples FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        db.close()
    assert n == updates
    assert samples == sum(q["samples"] for q in queued if q["kind"] == "update")


@pytest.fixture
def node(workdir):
    n = NodeProcess(workdir / "node").start()
    yield n
    n.stop()


def _send(cli, home, tee, *extra, check=True):
    return cli("uplink", "send", "--json", *FAST, *extra, home=home, tee=tee, check=check)


def test_enroll_queue_send_exactly_once(cli, tee, home, paired, node):
    res = cli("uplink", "enroll", "--node", node.uri, "--json", home=home, tee=tee)
    rec = json.loads(res.stdout)
    assert rec["node"] == node.address.hex()
    queued = _queue(home, tee, node.uri, updates=3, manifests=2)
    out = json.loads(_send(cli, home, tee).stdout)
    assert out["sent"] == 5 and out["acks"] == {"aggregated": 3, "accepted": 2} and out["outbox"]["items"] == 0
    _check_exactly_once(node, queued)
    # sending again is a no-op; status shows the enrollment and an empty outbox
    assert json.loads(_send(cli, home, tee).stdout)["sent"] == 0
    st = json.loads(cli("status", "--json", home=home, tee=tee).stdout)
    assert st["node"]["node"] == node.address.hex() and st["outbox"]["items"] == 0
    assert not any(k.startswith("rejected") for k in _node_counters(node))


def test_enrollment_pins_the_node(cli, tee, home, paired, node):
    res = cli("uplink", "enroll", "--node", node.uri, "--node-address", "0x" + "11" * 20, home=home, tee=tee,
              check=False)
    assert res.returncode == 79 and "expected 0x1111" in res.stderr
    assert not (home / "uplink" / "oscore").exists()


def test_thirty_percent_loss_both_ways(cli, tee, home, paired, node):
    with UdpRelay(("127.0.0.1", node.port), loss=0.3, seed=11) as relay:
        uri = f"coap://127.0.0.1:{relay.port}"
        cli("uplink", "enroll", "--node", uri, *FAST[:4], home=home, tee=tee)
        queued = _queue(home, tee, node.uri, updates=4, manifests=4, seed=1)
        out = json.loads(_send(cli, home, tee).stdout)
        stats = relay.stats()
    assert out["sent"] == 8 and out["outbox"]["items"] == 0
    assert stats["up"]["dropped"] > 0 and stats["down"]["dropped"] > 0
    _check_exactly_once(node, queued)


def test_node_down_and_restarted_mid_round(cli, tee, home, paired, node):
    cli("uplink", "enroll", "--node", node.uri, home=home, tee=tee)
    first = _queue(home, tee, node.uri, updates=2, manifests=1, seed=2)
    _send(cli, home, tee)
    rest = _queue(home, tee, node.uri, updates=3, manifests=2, seed=3)
    node.kill()                                     # mid-round: two updates accepted, the round still open
    sender = subprocess.Popen([sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "uplink",
                               "send", "--json", *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    time.sleep(2.0)                                 # the sender retries into the void
    assert sender.poll() is None
    node.start()
    out, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    result = json.loads(out)
    assert result["sent"] == 5 and result["retries"] > 0
    _check_exactly_once(node, first + rest)


@pytest.mark.slow
def test_device_killed_during_blockwise_upload(cli, tee, home, paired, node):
    """SIGKILL the sender at random moments while it uploads through a slow, lossy link; resume each time."""
    rng = random.Random(5)
    with UdpRelay(("127.0.0.1", node.port), loss=0.3, seed=5) as relay:
        uri = f"coap://127.0.0.1:{relay.port}"
        cli("uplink", "enroll", "--node", uri, *FAST[:4], home=home, tee=tee)
        queued = _queue(home, tee, node.uri, updates=6, manifests=2, seed=4)
        argv = [sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "uplink", "send", *FAST]
        killed_mid_block = 0
        for _ in range(6):
            before = len(relay.records)
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            time.sleep(rng.uniform(0.8, 2.0))
            p.send_signal(signal.SIGKILL)
            p.wait()
            ups = [d for d in relay.records[before:] if d.direction == "up"]
            killed_mid_block += bool(ups)
        out = json.loads(_send(cli, home, tee).stdout)
    assert killed_mid_block >= 3                    # the kills did land while it was uploading
    assert out["outbox"]["items"] == 0
    _check_exactly_once(node, queued)
    # no OSCORE sequence number was reused across the kills: the node refused nothing as a replay
    assert not any(k.startswith("rejected") for k in _node_counters(node))
