"""The demand server's own validation data and the global model's score on it.

The demand server never sees a device's data: it scores each round's global model on telemetry of its
own (the simulator with seeds no device uses), through the same feature extraction and per-set
standardisation the devices apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..ingest.frames import Frame
from ..ingest.sim import SimConfig, TelemetrySim
from ..records.build import TableBuilder
from ..train.job import features
from ..train.runtime import Model

VALIDATION_SEED = 10_001


@dataclass(frozen=True)
class Score:
    samples: int
    loss: float
    accuracy: float | None   # the classifier's; None for the anomaly model


@lru_cache(maxsize=4)
def validation_set(model: str, records: int = 60_000, seed: int = VALIDATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    sim = TelemetrySim(SimConfig(seed=seed, rate_hz=200.0, clean=True))
    builder = TableBuilder("0x" + "00" * 20)
    for seq, (rtype, fields) in zip(range(records), sim.records()):
        builder.add(Frame(rtype, seq, fields, 0, 0), 1_790_000_000_000 + fields["t_ms"])
    x, y, _ = features([builder.build()], model)
    return x, y


def score(model: str, width: float, tensors: list[np.ndarray]) -> Score:
    x, y = validation_set(model)
    m = Model.load(model, width)
    m.set_weights([np.asarray(t, np.float32) for t in tensors])
    out = np.concatenate([m.infer(x[i:i + 4096]) for i in range(0, len(x), 4096)]).astype(np.float64)
    if model == "activity":
        loss = float(-np.log(np.maximum(out[np.arange(len(y)), y], 1e-12)).mean())
        return Score(len(x), loss, float((out.argmax(axis=1) == y).mean()))
    return Score(len(x), float(((out - y) ** 2).mean()), None)
