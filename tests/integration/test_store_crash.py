"""Power loss while storing: SIGKILL the writer at random moments, many times; nothing accepted is lost or torn."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from agent.store.datasets import DatasetStore
from support.store_worker import batch

WORKER = Path(__file__).resolve().parents[1] / "support" / "store_worker.py"


def test_killed_writer_loses_no_accepted_batch(workdir):
    home = workdir / "store"
    rng = random.Random(99)
    accepted: dict[int, str] = {}
    start = 0
    for _ in range(15):
        out = open(workdir / "worker.out", "w+")
        proc = subprocess.Popen([sys.executable, str(WORKER), "--home", str(home), "--start", str(start)],
                                stdout=out, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.4, 1.2))  # about 0.3 s of imports, then a few batches
        proc.kill()
        proc.wait(10)
        out.seek(0)
        for line in out.read().splitlines():
            i, root = line.split()
            accepted[int(i)] = root
        out.close()
        start = max(accepted, default=-1) + 1
        store = DatasetStore(home, 1 << 30)  # reopen as after a power cut: orphans and tmp files go
        assert store.verify()["problems"] == []
    assert len(accepted) >= 10, "the worker never got going"
    store = DatasetStore(home, 1 << 30)
    for i, root in accepted.items():
        assert store.read_batch(root) == batch(i)
    assert {m.root for m in store.manifests()} >= set(accepted.values())
    leftovers = [p for p in (home / "blocks").rglob("*.tmp")] + [p for p in (home / "datasets").glob("*.tmp")]
    assert leftovers == []
