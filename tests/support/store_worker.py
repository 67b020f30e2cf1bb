"""Store batches in a loop and print each accepted root: the store crash test SIGKILLs it.

    python store_worker.py --home DIR --start N
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.store.datasets import DatasetStore  # noqa: E402


def batch(i: int) -> bytes:
    """Batch i, reproducible by the test: about 300 KB, partly compressible."""
    rng = random.Random(i)
    return rng.randbytes(150_000) + b"".join(b"%d,%d\n" % (i, rng.randrange(10**6)) for _ in range(15_000))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args()
    store = DatasetStore(Path(args.home), 1 << 30)
    i = args.start
    while True:
        m = store.add_batch(batch(i), records=15_000, time_range_ms=(i, i + 1), policy="crash-test")
        print(f"{i} {m.root}", flush=True)  # printed only once the batch is durable: accepted
        i += 1


if __name__ == "__main__":
    main()
