"""A datasets store holding real batches: simulator records through the agent's own data path.

TelemetrySim records -> TableBuilder -> clean (qemu-virt limits) -> desensitize (policies/default.toml,
pseudonyms from the secure world's HMAC function under a random key, in-process) -> batch.encode ->
DatasetStore.add_batch. Each batch is a separate stretch of the same simulated robot, so later tests
(training, uplink) read exactly what ingest would have stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent import config
from agent.ingest.frames import Frame
from agent.ingest.sim import SimConfig, TelemetrySim
from agent.privacy import policy as policy_mod
from agent.privacy.apply import desensitize
from agent.records import batch as batchfmt
from agent.records.build import TableBuilder
from agent.records.clean import CleanConfig, clean
from agent.records.clean_state import CleanState
from agent.records.schema import Table
from agent.store.datasets import DatasetStore, Manifest
from tee_sim.keys import pseudonym

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "policies" / "default.toml"
START_MS = 1_790_000_000_000
DEVICE = "0x" + "ab" * 20


def simulated_tables(records: int, batches: int, *, rate_hz: float = 200.0, seed: int = 7) -> list[Table]:
    """`batches` consecutive raw tables of `records` simulated records each (one robot, one stream)."""
    sim = TelemetrySim(SimConfig(seed=seed, rate_hz=rate_hz))
    stream = sim.records()
    out = []
    seq = 0
    for _ in range(batches):
        b = TableBuilder(DEVICE)
        for _ in range(records):
            rtype, fields = next(stream)
            b.add(Frame(rtype, seq, fields, 0, 0), START_MS + fields["t_ms"] + 3)
            seq += 1
        out.append(b.build())
    return out


def build_store(home: Path, *, records: int = 60_000, batches: int = 2, rate_hz: float = 200.0,
                seed: int = 7, policy: Path = DEFAULT_POLICY) -> list[Manifest]:
    """Store `batches` released batches under HOME/store (the CLI's layout); returns their manifests."""
    pol = policy_mod.load(policy)
    key = os.urandom(32)

    def ps(domain: int, values: list[bytes]) -> list[bytes]:
        return [pseudonym(key, domain, v) for v in values]

    store = DatasetStore(Path(home) / "store", config.DEFAULT_STORE_QUOTA)
    cfg = CleanConfig(limits=config.load_board("qemu-virt").limits)
    state = CleanState()
    out = []
    tables = simulated_tables(records, batches, rate_hz=rate_hz, seed=seed)
    for i, table in enumerate(tables):
        cleaned, _ = clean(table, cfg, state, final=i == len(tables) - 1)
        released, _ = desensitize(cleaned, pol, ps)
        t = released.columns["t_ms"]
        out.append(store.add_batch(batchfmt.encode(released), records=len(released),
                                   time_range_ms=(int(t.min()), int(t.max())), policy=pol.ref))
    return out


def shuttle_path() -> Path | None:
    """river's Statlog Shuttle file (49,097 rows, 9 readings + anomaly flag), or None without river."""
    import importlib.util

    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "shuttle.csv.gz"


def shuttle16(n: int, seed: int = 0):
    """`n` random Shuttle rows as model input (standardised on the normal rows, clipped to +-20, the 9
    readings in the first 9 of 16 columns) and their 0/1 anomaly labels; None without river."""
    import csv
    import gzip

    import numpy as np

    path = shuttle_path()
    if path is None:
        return None
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    data = np.array(rows[1:], dtype=np.float64)
    idx = np.random.default_rng(seed).permutation(len(data))[:n]
    x, y = data[idx, :9], data[idx, 9].astype(np.int32)
    mu, sd = x[y == 0].mean(axis=0), x[y == 0].std(axis=0) + 1e-6
    x16 = np.zeros((len(x), 16), np.float32)
    x16[:, :9] = np.clip((x - mu) / sd, -20, 20)     # a few readings sit hundreds of SDs out
    return x16, y


if __name__ == "__main__":   # python -m tests.support.datasets HOME RECORDS: store one batch, print its root
    import sys

    for m in build_store(Path(sys.argv[1]), records=int(sys.argv[2]), batches=1):
        print(m.root)
