"""Put items into an outbox in a loop and print each one once put() has returned: the outbox crash test SIGKILLs it.

    python outbox_worker.py --root DIR [--count N] [--ack-every K] [--go FILE]

Prints ``put SEQ KIND`` after each put and ``ack SEQ`` after each ack (every K-th item is acked right
after it is put, so the counter must survive items leaving). ``--go`` waits for FILE to exist first
(a start line for two workers racing each other), after printing ``ready``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.uplink.outbox import Outbox  # noqa: E402

KIND_CYCLE = ("update", "update", "manifest", "update", "report")


def body(seq: int) -> bytes:
    """The body of item ``seq``, reproducible by the test: sha256-chained bytes, 100 B .. 50 KB."""
    h = hashlib.sha256(b"aitn outbox crash test %d" % seq).digest()
    size = 100 + int.from_bytes(h[:4], "big") % (50_000 - 100 + 1)
    out = bytearray()
    while len(out) < size:
        out += h
        h = hashlib.sha256(h).digest()
    return bytes(out[:size])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--quota", type=int, default=1 << 30)
    ap.add_argument("--count", type=int, default=0, help="stop after this many puts (0: never)")
    ap.add_argument("--ack-every", type=int, default=0)
    ap.add_argument("--go", default="")
    args = ap.parse_args()
    outbox = Outbox(Path(args.root), args.quota)
    if args.go:
        print("ready", flush=True)
        while not Path(args.go).exists():
            time.sleep(0.001)
    i = 0
    while not args.count or i < args.count:
        kind = KIND_CYCLE[i % len(KIND_CYCLE)]
        item = outbox.put(kind, body)
        print(f"put {item.seq} {kind}", flush=True)  # printed only once the item is durable: accepted
        if args.ack_every and item.seq % args.ack_every == 0:
            assert outbox.ack(item.seq)
            print(f"ack {item.seq}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
