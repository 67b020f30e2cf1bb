"""A normal-world process that signs digests in a loop and prints one JSON line per signature.

    python nw_worker.py --tee URL --home DIR [--count N]

Used by the crash tests: they SIGKILL it at chosen points and start it again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.tee.handshake import sign_digest  # noqa: E402
from agent.tee.session import ChainedSession  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tee", required=True)
    ap.add_argument("--home", required=True)
    ap.add_argument("--count", type=int, default=1_000_000)
    args = ap.parse_args()
    with ChainedSession.open(args.tee, Path(args.home), timeout=5) as s:
        s.sync()
        print(json.dumps({"synced": s.chain.head.height}), flush=True)
        for _ in range(args.count):
            signed = sign_digest(s, os.urandom(32))
            print(json.dumps({"digest": signed.digest.hex(), "signature": signed.signature.hex(),
                              "height": signed.height}), flush=True)


if __name__ == "__main__":
    main()
