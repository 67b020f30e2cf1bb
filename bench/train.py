"""Benchmark: the LiteRT training step beside a numpy step, and one federated local round's time and RSS.

    .venv/bin/python bench/train.py [--rounds 5] [--steps 2000] [--samples 10000] [--epochs 1]

(a) Per-step time at batch 32 of the activity classifier at each width: LiteRT's `train` signature
    through Model.train_step, and in the same run a float32 numpy implementation of the same step
    (forward, softmax cross-entropy, backward, SGD: the reference of tests/unit/agent/test_train_runtime.py
    in float32). Medians over rounds; the ratio LiteRT / numpy has a target of <= 0.5.
(b) One local round (client.local_round: restore, 1 epoch of SGD at batch 32, loss before and after,
    update) on `--samples` Shuttle rows (river's shuttle.csv.gz, as the tests read it; without river,
    simulator feature windows repeated to that count), in a FRESH process that imports the whole agent
    CLI first (`python bench/train.py --child ...`), timed inside it; its peak RSS comes from os.wait4's
    rusage of that child alone. Targets: < 2 s and < 150 MB. Run once without and once with LDP + int8
    (which imports dp-accounting, hence scipy).
Pinned to one core (the last one allowed), as bench/datapath.py is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def numpy_step(ws: list[np.ndarray], x: np.ndarray, y: np.ndarray, lr: np.float32) -> float:
    """One SGD step of the ReLU dense chain with softmax cross-entropy, float32, weights updated in place."""
    n_layers = len(ws) // 2
    acts, h = [x], x
    for i in range(n_layers):
        z = h @ ws[2 * i] + ws[2 * i + 1]
        h = np.maximum(z, 0) if i < n_layers - 1 else z
        acts.append(h)
    z, b = acts[-1], x.shape[0]
    zs = z - z.max(axis=1, keepdims=True)
    e = np.exp(zs)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(b)
    loss = float(np.log(s[:, 0]).mean() - zs[rows, y].mean())
    dz = e / s
    dz[rows, y] -= 1
    dz /= b
    for i in reversed(range(n_layers)):
        gw, gb = acts[i].T @ dz, dz.sum(axis=0)
        if i:
            dz = (dz @ ws[2 * i].T) * (acts[i] > 0)
        ws[2 * i] -= lr * gw
        ws[2 * i + 1] -= lr * gb
    return loss


def bench_steps(width: float, steps: int, rounds: int) -> tuple[float, float, list[float]]:
    from agent.train.client import initial_weights
    from agent.train.runtime import Model

    m = Model.load("activity", width)
    ws = [w.copy() for w in initial_weights("activity", width)]
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(steps, 32, 16)).astype(np.float32)
    ys = rng.integers(0, 4, (steps, 32)).astype(np.int32)
    lr = np.float32(0.01)
    lite, ref, ratio = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(steps):
            m.train_step(xs[i], ys[i], 0.01)
        t1 = time.perf_counter()
        for i in range(steps):
            numpy_step(ws, xs[i], ys[i], lr)
        t2 = time.perf_counter()
        lite.append((t1 - t0) / steps)
        ref.append((t2 - t1) / steps)
        ratio.append((t1 - t0) / (t2 - t1))
    return statistics.median(lite), statistics.median(ref), ratio


def round_data(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    from support.datasets import shuttle16

    data = shuttle16(n)
    if data is not None:
        return data[0], data[1], "Shuttle (river)"
    from agent.train.features import Scaler, activity_labels, windows
    from support.datasets import simulated_tables

    raw = np.concatenate([windows(t).x for t in simulated_tables(60_000, 2)])
    raw = raw[np.arange(n) % len(raw)]
    return Scaler.fit(raw).apply(raw), activity_labels(raw), f"simulator windows ({len(set(map(bytes, raw)))} distinct)"


def child(args: argparse.Namespace) -> None:
    """The measured process: the whole agent imported, then one local round and its update saved."""
    import agent.cli  # noqa: F401  (the footprint of the agent process)
    from agent.fsio import write_atomic
    from agent.train import client, job, ldp, quantize  # noqa: F401
    from agent.train import weights as wcodec

    x, y = np.load(args.child / "x.npy"), np.load(args.child / "y.npy")
    t0 = time.perf_counter()
    r = client.local_round("activity", 1.0, client.initial_weights("activity", 1.0), x, y, epochs=args.epochs,
                           lr=0.05, seed=0)
    update, eps = r.update, None
    if args.ldp:
        cfg = ldp.LdpConfig(1.0, 1.0, 1e-5)
        update = ldp.privatize(update, cfg)
        eps = ldp.epsilon({1.0: 1}, 1e-5)
        payload = quantize.encode(quantize.quantize(update))
    else:
        payload = wcodec.encode(update)
    write_atomic(args.child / "out.update", payload)
    total = time.perf_counter() - t0
    print(json.dumps({"round_s": r.seconds, "total_s": total, "steps": r.steps, "loss_before": r.loss_before,
                      "loss_after": r.loss_after, "epsilon": eps}))


def run_child(d: Path, epochs: int, with_ldp: bool) -> tuple[dict, float, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(d), "--epochs", str(epochs)]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv + (["--ldp"] if with_ldp else []), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"child exited {p.returncode}")
    return json.loads(out), usage.ru_maxrss / 1024, wall          # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ldp", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})   # children inherit it

    print(f"(a) activity classifier, batch 32, {args.steps} steps x {args.rounds} rounds, one core (medians)")
    print(f"  {'width':>5} {'params':>7} {'LiteRT us/step':>15} {'numpy us/step':>14} {'LiteRT samples/s':>17} "
          f"{'numpy samples/s':>16} {'ratio':>6}  (target <= 0.5)")
    from agent.train.manifest import spec_for
    for w in (1.0, 0.5, 0.25):
        lite, ref, ratios = bench_steps(w, args.steps, args.rounds)
        ok = "ok" if statistics.median(ratios) <= 0.5 else "MISSED"
        print(f"  {w:>5g} {spec_for('activity', w).parameter_count:>7} {lite * 1e6:>15.1f} {ref * 1e6:>14.1f} "
              f"{32 / lite:>17,.0f} {32 / ref:>16,.0f} {statistics.median(ratios):>6.2f}  {ok} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")

    x, y, source = round_data(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.save(d / "x.npy", x)
        np.save(d / "y.npy", y)
        print(f"(b) one local round, activity w1, {len(x):,} samples of {source}, {args.epochs} epoch(s), batch 32, "
              "fresh process (targets: < 2 s, < 150 MB)")
        for with_ldp in (False, True):
            try:
                res, rss, wall = run_child(d, args.epochs, with_ldp)
            except SystemExit as e:
                print(f"  {'+ LDP + int8' if with_ldp else 'plain':<13} failed: {e}")
                continue
            print(f"  {'+ LDP + int8' if with_ldp else 'plain':<13} round {res['round_s']:.3f} s "
                  f"({res['steps']} steps; round + privatise + save {res['total_s']:.3f} s) "
                  f"{'ok' if res['total_s'] < 2 else 'MISSED'}; peak RSS {rss:.1f} MB {'ok' if rss < 150 else 'MISSED'}; "
                  f"process wall {wall:.2f} s; loss {res['loss_before']:.3f} -> {res['loss_after']:.3f}"
                  + (f"; epsilon {res['epsilon']:.2f} at delta 1e-5" if res["epsilon"] is not None else ""))


if __name__ == "__main__":
    main()
