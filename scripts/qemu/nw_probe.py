"""Run N handshakes as the normal world and print this process's peak RSS (used inside the guest).

    python3 nw_probe.py --tee URL --home DIR [--count N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.tee import handshake  # noqa: E402
from agent.tee.session import ChainedSession  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tee", required=True)
    ap.add_argument("--home", required=True)
    ap.add_argument("--count", type=int, default=20)
    args = ap.parse_args()
    times = []
    with ChainedSession.open(args.tee, Path(args.home)) as s:
        s.sync()
        for _ in range(args.count):
            t = time.perf_counter()
            handshake.sign_digest(s, os.urandom(32))
            times.append(time.perf_counter() - t)
    times.sort()
    print(f"NW_MAXRSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
    print(f"HANDSHAKE_P50_MS {times[len(times) // 2] * 1e3:.2f}")


if __name__ == "__main__":
    main()
