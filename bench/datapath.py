"""Benchmark: records per second through clean + desensitize, on one core, for the numeric path.

    .venv/bin/python bench/datapath.py [--records 1000000] [--rounds 5] [--policy policies/default.toml]

The table is real simulator output (agent.ingest.sim, with its outliers, glitches and notes) built
by the TableBuilder, so the mix is the one the agent sees. Each round times, on the same table:
clean() (default CleanConfig, the qemu-virt board's limits), desensitize() under the policy, and a
baseline in the same run: copying every column once (numpy's memory bandwidth on this machine), so
the ratio says how many "table copies" the data path costs and survives a noisy machine.

Pseudonyms come from the secure world's own HMAC function called in-process: the data path asks
the secure world once per distinct identifier (a handful per batch, cached), so its round trips
(about 0.3 ms each, see bench/handshake.py) are not part of the per-record cost measured here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import load_board  # noqa: E402
from agent.ingest.frames import Frame  # noqa: E402
from agent.ingest.sim import SimConfig, TelemetrySim  # noqa: E402
from agent.privacy import policy as policy_mod  # noqa: E402
from agent.privacy.apply import desensitize  # noqa: E402
from agent.records.build import TableBuilder  # noqa: E402
from agent.records.clean import CleanConfig, clean  # noqa: E402
from agent.records.clean_state import CleanState  # noqa: E402
from tee_sim.keys import pseudonym  # noqa: E402

START_MS = 1_790_000_000_000


def simulated_table(n: int, rate_hz: float = 500.0):
    sim = TelemetrySim(SimConfig(seed=7, rate_hz=rate_hz))
    b = TableBuilder("0x" + "ab" * 20)
    for seq, (rtype, fields) in enumerate(sim.records()):
        if seq == n:
            break
        b.add(Frame(rtype, seq, fields, 0, 0), START_MS + fields["t_ms"] + 3)
    return b.build()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--policy", default=str(ROOT / "policies" / "default.toml"))
    ap.add_argument("--hampel-h", type=int, help="override CleanConfig.hampel_half_window")
    ap.add_argument("--hampel-k", type=float, help="override CleanConfig.hampel_k")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    args = ap.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    t = time.perf_counter()
    table = simulated_table(args.records)
    build_s = time.perf_counter() - t
    policy = policy_mod.load(Path(args.policy))
    key = os.urandom(32)

    def ps(domain: int, values: list[bytes]) -> list[bytes]:
        return [pseudonym(key, domain, v) for v in values]

    cfg = CleanConfig(limits=load_board("qemu-virt").limits)
    if args.hampel_h is not None or args.hampel_k is not None:
        cfg = dataclasses.replace(cfg, hampel_half_window=args.hampel_h or cfg.hampel_half_window,
                                  hampel_k=args.hampel_k or cfg.hampel_k)
    rows = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for v in table.columns.values():
            v.copy()
        t1 = time.perf_counter()
        cleaned, rep = clean(table, cfg, CleanState(), final=True)
        t2 = time.perf_counter()
        released, prep = desensitize(cleaned, policy, ps)
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2))
    med = statistics.median
    n = len(table)
    base, cl, de = (med(r[i] for r in rows) for i in range(3))
    total = med(r[1] + r[2] for r in rows)
    ratio = med((r[1] + r[2]) / r[0] for r in rows)
    print(f"{n:,} simulated records (built in {build_s:.1f} s), {args.rounds} rounds, one core (medians); "
          f"Hampel h={cfg.hampel_half_window} k={cfg.hampel_k}:")
    print(f"  baseline: copy every column once   {base * 1e3:8.1f} ms")
    print(f"  clean                              {cl * 1e3:8.1f} ms   {n / cl / 1e6:6.2f} M records/s")
    print(f"  desensitize                        {de * 1e3:8.1f} ms   {n / de / 1e6:6.2f} M records/s")
    print(f"  clean + desensitize                {total * 1e3:8.1f} ms   {n / total / 1e6:6.2f} M records/s"
          f"   (target >= 1.00)")
    print(f"  ratio (clean + desensitize) / baseline: {ratio:.1f}")
    print(f"  rows out {len(released):,} of {n:,}; cleaning changed {sum(rep.changed.values()):,} values, "
          f"dropped {sum(rep.dropped.values()):,} rows; privacy suppressed "
          f"{prep.to_json().get('suppressed_zone', 0):,} in zones")


if __name__ == "__main__":
    main()
