"""`make run`'s job, twice in the same directory: the first run pairs, the second reuses the pairing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pathlib import Path

from support.tee_process import DROP_USER, IS_ROOT

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_runs_twice(workdir):
    argv = [sys.executable, str(DEMO), "--run-dir", str(workdir / "run")]
    if IS_ROOT:
        argv += ["--tee-user", DROP_USER]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3. pair the worlds" in first.stdout and ": OK" in first.stdout and "chain ok" in first.stdout
    # the update trained on the node's round-1 model is aggregated; the dataset's manifest accepted
    assert "round 1:" in first.stdout and "sent 2 item(s) {'aggregated': 1, 'accepted': 1}" in first.stdout
    # the network: three federated rounds over two nodes and four robots
    assert "round 3/3: " in first.stdout and "2 nodes, 4 device updates" in first.stdout
    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already paired" in second.stdout and ": OK" in second.stdout
    # the node kept its state: the second run trains on round 2's model and closes round 2
    assert "round 2:" in second.stdout and "sent 2 item(s) {'aggregated': 1, 'accepted': 1}" in second.stdout
    assert "round 3 (activity w1)" in second.stdout
    address = [line for line in first.stdout.splitlines() if line.startswith("done: device")][0].split()[2]
    assert f"done: device {address}" in second.stdout  # the same device key
