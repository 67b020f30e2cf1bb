"""Benchmark: CID computation (kubo's UnixFS DAG, CIDv1) against plain hashlib.sha256 over the same bytes.

    .venv/bin/python bench/cid.py [--mb 64] [--rounds 5]

Both run in this process over the same in-memory bytes; each round measures both, the table
gives medians and the median of the per-round ratios (the issue's target: CID at least 0.8x).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.store.cid import build_dag, file_cid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = random.Random(1).randbytes(args.mb << 20)
    rows = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        hashlib.sha256(data).digest()
        base = time.perf_counter() - t
        t = time.perf_counter()
        file_cid(data)
        cid = time.perf_counter() - t
        t = time.perf_counter()
        build_dag(data)
        dag = time.perf_counter() - t
        rows.append((base, cid, dag))
    med = statistics.median
    mbs = lambda s: args.mb / s  # noqa: E731
    base, cid, dag = (med(r[i] for r in rows) for i in range(3))
    print(f"{args.mb} MiB in memory, {args.rounds} rounds (medians):")
    print(f"  hashlib.sha256         {mbs(base):8.0f} MiB/s")
    print(f"  file_cid (root only)   {mbs(cid):8.0f} MiB/s   ratio {med(r[0] / r[1] for r in rows):.2f} (target >= 0.8)")
    print(f"  build_dag (all blocks) {mbs(dag):8.0f} MiB/s   ratio {med(r[0] / r[2] for r in rows):.2f}")


if __name__ == "__main__":
    main()
