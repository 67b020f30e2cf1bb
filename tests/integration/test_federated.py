"""Three tiers on this machine: a demand server (Flower SuperLink + ServerApp), two nodes (each with its
Flower SuperNode), four devices (each a real secure world and `aitn device run`), two rounds.

Checks the two-level average is exact: the demand server's global model after a round equals the mean
of the two nodes' group aggregates weighted by their groups' sample totals (each group aggregate
being the node's sample-weighted FedAvg of its devices' updates, tested in test_node_service.py).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from agent.tee.pairing import pair
from agent.train import weights as weights_codec
from tests.conftest import ROOT
from tests.support.datasets import build_store
from tests.support.node_process import NodeProcess
from tests.support.tee_process import TeeProcess

pytest.importorskip("flwr")


def _tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_rounds_three_tiers(workdir):
    sl = _tcp_port()
    demand = subprocess.Popen([sys.executable, "-m", "agent", "demand", "serve", "--listen", f"127.0.0.1:{sl}",
                               "--state", str(workdir / "demand"), "--rounds", "2", "--min-nodes", "2",
                               "--min-updates", "2", "--round-seconds", "120", "--json"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    nodes, tees, devices = [], [], []
    try:
        for n in range(2):
            nodes.append(NodeProcess(workdir / f"node{n}", superlink=f"127.0.0.1:{sl}").start())
        for d in range(4):
            root = workdir / f"tee{d}"
            root.mkdir()
            tee = TeeProcess(root).start()
            tees.append(tee)
            home = workdir / f"home{d}"
            home.mkdir()
            pair(tee.url, home)
            build_store(home, records=60_000, batches=1, seed=20 + d)
            base = [sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url]
            subprocess.run(base + ["uplink", "enroll", "--node", nodes[d % 2].uri], cwd=ROOT, check=True,
                           capture_output=True, timeout=60)
            devices.append(subprocess.Popen(base + ["device", "run", "--rounds", "2", "--poll", "1"], cwd=ROOT,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        out, err = demand.communicate(timeout=480)
        assert demand.returncode == 0, err
        result = json.loads(out[out.index("{"):])
        for p in devices:
            p.wait(60)
            assert p.returncode == 0, p.stderr.read()
    finally:
        for p in devices + [demand]:
            if p.poll() is None:
                p.kill()
        for n in nodes:
            n.stop()
        for t in tees:
            t.stop()

    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"] and rounds[-1]["loss"] < rounds[0]["loss"]
    assert rounds[1]["train_nodes"] == 2 and rounds[1]["train_updates"] == 4 and rounds[1]["bytes_moved"] > 0
    # each node closed two group rounds of two updates; the global model is their sample-weighted mean
    groups = []
    for n in nodes:
        db = sqlite3.connect(n.folder / "node.db")
        rows = db.execute("SELECT id, updates, samples, result FROM rounds WHERE id > 0 ORDER BY id").fetchall()
        db.close()
        assert [(r[0], r[1]) for r in rows] == [(1, 2), (2, 2)]
        samples, result_hash = rows[-1][2], rows[-1][3]
        model = weights_codec.decode((n.folder / "models" / f"{result_hash.hex()}.aitw").read_bytes())
        groups.append((samples, model))
    final = weights_codec.decode((workdir / "demand" / "out" / "global.aitw").read_bytes())
    total = sum(s for s, _ in groups)
    for i, t in enumerate(final):
        want = sum(s * m[i].astype(np.float64) for s, m in groups) / total
        np.testing.assert_allclose(t, want, rtol=0, atol=1e-6)
    assert rounds[-1]["train_num-examples"] == total
