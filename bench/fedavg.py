"""Benchmark: streaming weighted FedAvg (agent/node/fedavg.py) against stack-then-np.average, same run.

    .venv/bin/python bench/fedavg.py [--updates 300] [--repeats 5] [--no-pin]

Model: an MLP 58-512-128-32, weights and biases, exactly 100,000 float32 parameters (the "model size"
below is 100,000 x 4 bytes). The updates are generated before anything is measured: they stand for
the buffers the node has already decoded from the network (float32 tensors, or Quantized int8 with
a scale per tensor), one weight (sample count, 20..2000) each.

What is counted, per input format:
  streaming  StreamingFedAvg(...) then add() / add_quantized() of every update (validation: shapes,
             finiteness, L2 norm under a bound; then the fold) -- "fold"; then result() -- "+ result".
  naive      all updates flattened and stacked into one (n, 100,000) float32 array (int8: dequantize()
             each first), np.average(axis=0, weights=...), split back into tensors. No validation.
Time: median over --repeats rounds, tracemalloc off. Memory: one more round of each under
tracemalloc (numpy reports its buffers to it): the peak of what was allocated during that round,
over the model size; the pre-generated updates are allocated before and are not counted.
Accuracy: both means against np.average over float64 copies of the updates, as a relative L2 error,
beside a float32 running sum (the accumulator the module did not choose) computed the same way.
Targets (issue): fold < 1 s and peak < 3x the model size (plus the incoming update, here not counted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.node.fedavg import StreamingFedAvg  # noqa: E402
from agent.train.quantize import Quantized, dequantize, quantize  # noqa: E402

LAYERS = (58, 512, 128, 32)
SHAPES = [s for a, b in zip(LAYERS, LAYERS[1:]) for s in ((a, b), (b,))]
PARAMS = sum(int(np.prod(s)) for s in SHAPES)
MODEL_BYTES = 4 * PARAMS
MAX_NORM = 10.0
assert PARAMS == 100_000


def make_updates(n: int, seed: int = 1) -> tuple[list[list[np.ndarray]], list[int]]:
    """n deltas, each one flat float32 buffer viewed as the model's tensors (what weights.decode gives)."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum([int(np.prod(s)) for s in SHAPES])[:-1]
    ups = []
    for _ in range(n):
        flat = rng.standard_normal(PARAMS, np.float32) * np.float32(rng.uniform(0.004, 0.02))
        ups.append([p.reshape(s) for p, s in zip(np.split(flat, cuts), SHAPES)])
    return ups, [int(w) for w in rng.integers(20, 2001, n)]


def streaming(ups, weights, quantized: bool):
    """(result, fold seconds, total seconds)."""
    t0 = time.perf_counter()
    agg = StreamingFedAvg(SHAPES, MAX_NORM)
    add = agg.add_quantized if quantized else agg.add
    for u, w in zip(ups, weights):
        add(u, w)
    t1 = time.perf_counter()
    out = agg.result()
    return out, t1 - t0, time.perf_counter() - t0


def naive(ups, weights, quantized: bool):
    t0 = time.perf_counter()
    rows = [np.concatenate([t.ravel() for t in (dequantize(u) if quantized else u)]) for u in ups]
    mean = np.average(np.stack(rows), axis=0, weights=weights)
    cuts = np.cumsum([int(np.prod(s)) for s in SHAPES])[:-1]
    out = [p.reshape(s).astype(np.float32) for p, s in zip(np.split(mean, cuts), SHAPES)]
    return out, time.perf_counter() - t0


def traced(fn, *args):
    """fn's answer and the peak bytes allocated while it ran (above what was live before)."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        r = fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return r, peak - base


def streaming_fold_peak(ups, weights, quantized: bool) -> tuple[int, int]:
    """Peak bytes during construction + folds, and during the whole including result()."""
    tracemalloc.start()
    try:
        agg = StreamingFedAvg(SHAPES, MAX_NORM)
        add = agg.add_quantized if quantized else agg.add
        for u, w in zip(ups, weights):
            add(u, w)
        _, fold = tracemalloc.get_traced_memory()
        out = agg.result()
        _, total = tracemalloc.get_traced_memory()
        del out
    finally:
        tracemalloc.stop()
    return fold, total


def rel_err(got, ref) -> float:
    g = np.concatenate([t.ravel().astype(np.float64) for t in got])
    r = np.concatenate([t.ravel() for t in ref])
    return float(np.linalg.norm(g - r) / np.linalg.norm(r))


def float32_running_sum(ups, weights) -> list[np.ndarray]:
    """The other accumulator, for the accuracy line only: acc(f32) += f32(w) * update."""
    acc = [np.zeros(s, np.float32) for s in SHAPES]
    for u, w in zip(ups, weights):
        for a, t in zip(acc, u):
            a += np.float32(w) * t
    return [a / np.float32(sum(weights)) for a in acc]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    args = ap.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    n = args.updates
    t = time.perf_counter()
    f32, weights = make_updates(n)
    i8: list[Quantized] = [quantize(u) for u in f32]
    gen_s = time.perf_counter() - t
    ref64 = [np.average(np.stack([u[i] for u in f32]).astype(np.float64), axis=0, weights=weights)
             for i in range(len(SHAPES))]
    ref64_q = [np.average(np.stack([(q.values[i].astype(np.float64) * q.scales[i]) for q in i8]),
                          axis=0, weights=weights) for i in range(len(SHAPES))]
    med = statistics.median
    kib = MODEL_BYTES / 1024
    print(f"{n} updates of {PARAMS:,} float32 parameters (MLP {'-'.join(map(str, LAYERS))}, model "
          f"{kib:.0f} KiB), generated in {gen_s:.1f} s before timing; {args.repeats} repeats (medians), "
          f"{'all cores' if args.no_pin else 'one core'}:")
    print(f"  {'input':8} {'method':32} {'time ms':>8} {'us/update':>10} {'peak KiB':>9} {'peak/model':>11}")
    summary = []
    for name, ups, quant, ref in (("float32", f32, False, ref64), ("int8", i8, True, ref64_q)):
        rows = []
        for _ in range(args.repeats):
            _, nv = naive(ups, weights, quant)
            res, fold, total = streaming(ups, weights, quant)
            rows.append((nv, fold, total))
        (naive_out, _), naive_peak = traced(naive, ups, weights, quant)
        fold_peak, total_peak = streaming_fold_peak(ups, weights, quant)
        nv, fold, total = (med(r[i] for r in rows) for i in range(3))

        def line(method: str, s: float, peak: int, note: str = "") -> None:
            print(f"  {name:8} {method:32} {s * 1e3:8.1f} {s / n * 1e6:10.1f} {peak / 1024:9.0f} "
                  f"{peak / MODEL_BYTES:10.2f}x{note}")
        line("naive: stack + np.average", nv, naive_peak)
        line(f"streaming: fold ({n} adds)", fold, fold_peak, "   (targets < 1000 ms, < 3.00x)")
        line("streaming: fold + result()", total, total_peak)
        t_ratio = med(r[2] / r[0] for r in rows)
        m_ratio = total_peak / naive_peak
        print(f"  {name:8} ratio streaming (fold + result) / naive: time {t_ratio:.2f}, memory {m_ratio:.4f};"
              f" relative L2 error vs float64 reference: streaming {rel_err(res, ref):.1e},"
              f" naive {rel_err(naive_out, ref):.1e}")
        summary.append((name, fold, fold_peak / MODEL_BYTES, t_ratio, m_ratio))
    err32 = rel_err(float32_running_sum(f32, weights), ref64)
    err64 = rel_err(streaming(f32, weights, False)[0], ref64)
    print(f"  accumulator: float64 (this module) relative L2 error {err64:.1e}; a float32 running sum "
          f"over the same updates {err32:.1e} ({err32 / err64:.0f}x worse)")
    ok = all(fold < 1.0 and peak < 3.0 for _, fold, peak, _, _ in summary)
    print("summary: " + "; ".join(f"{nm} fold {fold * 1e3:.0f} ms, peak {peak:.2f}x model, "
                                  f"{1 / tr:.1f}x faster and {1 / mr:.0f}x less memory than naive"
                                  for nm, fold, peak, tr, mr in summary)
          + f" -> targets {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
