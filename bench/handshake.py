"""Benchmark: handshake + sign round trip beside its unavoidable parts, measured in the same run.

    .venv/bin/python bench/handshake.py [--n 2000] [--batch 1024] [--json FILE]

Both worlds are real processes pinned to one CPU core (the "one core" of the targets). Parts
measured in the same run, each the median of many repetitions:

- one in-process coincurve sign of a 32-byte digest;
- the fdatasyncs the durability design needs per handshake: the normal world's chain record
  (128 B) and the secure world's RPMB commit (512 B), on the same file system as the state;
- the socket round trips: two per handshake, through a Python echo process on a Unix socket,
  with frames of the sizes the handshake sends.

Beside them, in the same rounds, what sets a floor under the ratio (bench/handshake_floor.py): the
skeleton (the same messages, writes, fdatasyncs and sign between two processes on the same core,
no protocol work) and the lean handshake (the skeleton plus the protocol's computations in the
leanest CPython form).

Prints p50/p99 of the full round trip, handshakes per second, the ratio p50 / sum of parts, the
floors, and the batch mode's digests per second (one challenge for a Merkle root of --batch digests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import coincurve  # noqa: E402

from agent.tee import handshake  # noqa: E402
from agent.tee.pairing import pair  # noqa: E402
from agent.tee.session import ChainedSession  # noqa: E402
from tee_sim.abi.block import DEFAULT_TIMELOCK  # noqa: E402

import handshake_floor as floor  # noqa: E402  (bench/ is on sys.path as the script's directory)

CORE = 0


ECHO = r"""
import os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[2])})
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(sys.argv[1]); srv.listen(1)
print("ready", flush=True)
c, _ = srv.accept()
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def median_time(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure_fsync(directory: Path, size: int, n: int) -> float:
    path = directory / f"fsync-{size}.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    data = os.urandom(size)
    try:
        off = [0]

        def once():
            os.pwrite(fd, data, off[0])
            off[0] += size
            os.fdatasync(fd)

        return median_time(once, n)
    finally:
        os.close(fd)
        path.unlink()


def measure_rtt(directory: Path, n: int) -> float:
    """One request/response pair of handshake-sized frames through an echo process."""
    path = directory / "echo.sock"
    path.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", ECHO, str(path), str(CORE)], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            req, size = os.urandom(88), 88

            def once():
                s.sendall(req)
                got = 0
                while got < size:
                    got += len(s.recv(65536))

            return median_time(once, n)
    finally:
        proc.kill()
        proc.wait()


def in_process_cost(n: int) -> tuple[float, float]:
    """Both worlds in this process, no sockets, fdatasync stubbed: the Python cost of framing, chain and proof.

    Returns (median seconds per handshake with the configured time-lock, the same with a time-lock of 1).
    """
    from agent.tee import session as session_mod
    from agent.tee.client import TeeClient, Transport
    from tee_sim.abi import block as blk
    from tee_sim.log import SecureLog
    from tee_sim.storage import open_storage
    from tee_sim.ta import SignerTA

    results = []
    real_fdatasync = os.fdatasync
    real_connect = TeeClient.connect
    for timelock in (blk.DEFAULT_TIMELOCK, 1):
        work = Path(tempfile.mkdtemp(prefix="aitn-bench-inproc-"))
        ta = SignerTA(open_storage(work / "state", "bench"), SecureLog(0))

        class Direct(Transport):
            def __init__(self) -> None:
                self.q: list[bytes] = []

            def send(self, data: bytes) -> None:
                self.q.append(ta.handle(1, data))

            def recv_frame(self) -> bytes:
                return self.q.pop(0)

            def close(self) -> None:
                pass

        TeeClient.connect = classmethod(lambda cls, url, timeout=10, trace=None: cls(Direct(), trace))
        os.fdatasync = lambda fd: None
        try:
            pair("direct", work / "home", timelock)
            with session_mod.ChainedSession.open("direct", work / "home") as s:
                for _ in range(100):
                    handshake.sign_digest(s, os.urandom(32))
                results.append(median_time(lambda: handshake.sign_digest(s, os.urandom(32)), n))
        finally:
            os.fdatasync = real_fdatasync
            TeeClient.connect = real_connect
            shutil.rmtree(work, ignore_errors=True)
    return results[0], results[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="handshakes to time")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (handshakes, then parts, each round)")
    ap.add_argument("--batch", type=int, default=1024, help="digests per batch signature")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--no-pin", action="store_true", help="let both worlds use every core (default: one core)")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if args.no_pin else [CORE]
    os.sched_setaffinity(0, set(cores))
    work = Path(tempfile.mkdtemp(prefix="aitn-bench-", dir=ROOT / "build" if (ROOT / "build").is_dir() else None))
    os.chmod(work, 0o755)
    sock = work / "tee.sock"
    url = f"unix://{sock}"
    tee_argv = ["taskset", "-c", ",".join(map(str, cores)), sys.executable, "-m", "tee_sim", "serve", "--state",
                str(work / "state"), "--tee", url, "--log", str(work / "secure.log"), "--log-level", "1"]
    if os.geteuid() == 0:
        tee_argv += ["--user", "nobody"]
    tee = subprocess.Popen(tee_argv, cwd=ROOT)
    try:
        while not sock.exists():
            time.sleep(0.02)
        time.sleep(0.2)
        home = work / "home"
        pair(url, home)
        digest = os.urandom(32)
        key = coincurve.PrivateKey()
        rounds = []  # each round: handshakes, then the parts, so every ratio compares like with like
        with ChainedSession.open(url, home) as s:
            for _ in range(200):  # warm-up
                handshake.sign_digest(s, digest)
            for _ in range(args.rounds):
                lat = []
                t_all = time.perf_counter()
                for _ in range(args.n // args.rounds):
                    t = time.perf_counter()
                    handshake.sign_digest(s, digest)
                    lat.append(time.perf_counter() - t)
                elapsed = time.perf_counter() - t_all
                parts = {"coincurve_sign": median_time(lambda: key.sign_recoverable(digest, hasher=None), 2000),
                         "fdatasync_nw_128B": measure_fsync(work, 128, 100),
                         "fdatasync_tee_512B": measure_fsync(work, 512, 100),
                         "socket_rtt_x2": 2 * measure_rtt(work, 1000)}
                floors = {"skeleton": pct(floor.measure(work, cores, 400, DEFAULT_TIMELOCK, False), 50),
                          "lean": pct(floor.measure(work, cores, 400, DEFAULT_TIMELOCK, True), 50),
                          "lean_timelock1": pct(floor.measure(work, cores, 400, 1, True), 50)}
                rounds.append({"p50": pct(lat, 50), "p99": pct(lat, 99), "rate": len(lat) / elapsed,
                               "parts": parts, "sum": sum(parts.values()), "floors": floors})
            items = [os.urandom(32) for _ in range(args.batch)]
            batch_times = []
            for _ in range(20):
                t = time.perf_counter()
                handshake.sign_batch(s, items)
                batch_times.append(time.perf_counter() - t)
    finally:
        tee.terminate()
        tee.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    inproc, inproc_tl1 = in_process_cost(2000)
    lean_inproc, lean_inproc_tl1 = floor.in_process(2000, DEFAULT_TIMELOCK), floor.in_process(2000, 1)
    med = statistics.median
    p50, p99 = med(r["p50"] for r in rounds), med(r["p99"] for r in rounds)
    parts = {k: med(r["parts"][k] for r in rounds) for k in rounds[0]["parts"]}
    ratio = med(r["p50"] / r["sum"] for r in rounds)
    batch_med = med(batch_times)
    fig = {
        "handshake_p50_us": round(p50 * 1e6, 1), "handshake_p99_us": round(p99 * 1e6, 1),
        "handshakes_per_s": round(med(r["rate"] for r in rounds), 1),
        "parts_us": {k: round(v * 1e6, 1) for k, v in parts.items()},
        "sum_of_parts_us": round(sum(parts.values()) * 1e6, 1), "ratio_p50_to_parts": round(ratio, 2),
        "ratio_per_round": [round(r["p50"] / r["sum"], 2) for r in rounds],
        "floors_p50_us": {k: round(med(r["floors"][k] for r in rounds) * 1e6, 1) for k in rounds[0]["floors"]},
        "floors_ratio_to_parts": {k: round(med(r["floors"][k] / r["sum"] for r in rounds), 2)
                                  for k in rounds[0]["floors"]},
        "lean_in_process_us": round(lean_inproc * 1e6, 1),
        "lean_in_process_timelock1_us": round(lean_inproc_tl1 * 1e6, 1),
        "in_process_python_us": round(inproc * 1e6, 1), "in_process_python_timelock1_us": round(inproc_tl1 * 1e6, 1),
        "batch_size": args.batch, "batch_p50_ms": round(batch_med * 1e3, 2),
        "batch_digests_per_s": round(args.batch / batch_med, 0), "n": args.n, "rounds": args.rounds,
        "cores": cores,
    }
    print(f"handshake + sign, {args.n} round trips in {args.rounds} rounds, both worlds on cores {cores} "
          "(medians over rounds):")
    print(f"  p50 {fig['handshake_p50_us']} us   p99 {fig['handshake_p99_us']} us   "
          f"{fig['handshakes_per_s']} handshakes/s (target >= 1000)")
    print("  unavoidable parts, same run (medians):")
    for k, v in fig["parts_us"].items():
        print(f"    {k:<20} {v:8.1f} us")
    print(f"    {'sum':<20} {fig['sum_of_parts_us']:8.1f} us")
    print(f"  ratio p50 / sum of parts: {fig['ratio_p50_to_parts']} (target <= 1.5); per round "
          f"{fig['ratio_per_round']}")
    print(f"  breakdown: both worlds in one process, no sockets, no fdatasync: {fig['in_process_python_us']} us "
          f"per handshake ({fig['in_process_python_timelock1_us']} us with a time-lock of 1 instead of "
          f"{DEFAULT_TIMELOCK})")
    fl, fr = fig["floors_p50_us"], fig["floors_ratio_to_parts"]
    print("  floors, same run (bench/handshake_floor.py; p50 and ratio to the sum of parts):")
    print(f"    skeleton: the messages, writes, fdatasyncs and sign only   {fl['skeleton']:8.1f} us  {fr['skeleton']}")
    print(f"    lean: plus the protocol's computations in CPython, D={DEFAULT_TIMELOCK:<3}  {fl['lean']:8.1f} us  "
          f"{fr['lean']}")
    print(f"    lean, time-lock of 1                                       {fl['lean_timelock1']:8.1f} us  "
          f"{fr['lean_timelock1']}")
    print(f"    the lean work of both worlds in one process, warm: {fig['lean_in_process_us']} us "
          f"({fig['lean_in_process_timelock1_us']} us with a time-lock of 1)")
    print(f"batch: {args.batch} digests under one challenge, p50 {fig['batch_p50_ms']} ms = "
          f"{fig['batch_digests_per_s']:.0f} digests/s (target >= 10000)")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2) + "\n")


if __name__ == "__main__":
    main()
