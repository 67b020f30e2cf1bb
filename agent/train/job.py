"""One local training job (`aitn train`): stored batches -> features -> local round -> saved update.

Steps: decode each stored batch, cut its feature windows (features.windows; per batch, so no window
spans two batches), label them (activity: activity_labels on the raw features; anomaly: the
standardised input is its own target), standardise with a Scaler fitted on these windows, start from
the `--global` weights file or the shipped initial weights, run client.local_round, then optionally
privatise (ldp) and quantise (quantize) the update, and save it for the uplink:

    HOME/updates/<UTC timestamp>-<model>-w<width>.update    weights format (AITW) or int8 (AITQ)
    HOME/updates/<same>.json                                 the metrics below, written after the update

so a sidecar exists only beside a complete update file. Under LDP the round is counted in the ledger
before anything is written. The metrics' losses and scaler statistics come from raw local data and are
NOT covered by LDP: they are for the device's operator, not for the uplink to send as is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..fsio import write_atomic
from ..records import batch as batchfmt
from . import client, ldp, quantize
from . import weights as weights_codec
from .errors import TrainDataError, WeightsError
from .features import Scaler, activity_labels, windows
from .manifest import spec_for

UPDATES_DIR = "updates"
DEFAULT_LR = {"activity": 0.05, "anomaly": 0.02}     # the rates the Shuttle tests train well with


@dataclass(frozen=True)
class TrainRequest:
    datasets: tuple[str, ...]
    model: str = "activity"
    width: float = 1.0
    epochs: int = 1
    lr: float | None = None             # None: DEFAULT_LR[model]
    batch_size: int = 32
    global_file: Path | None = None     # None: the shipped initial weights
    ldp: ldp.LdpConfig | None = None
    quantize: bool = False
    seed: int | None = None             # shuffling only; LDP noise is always fresh entropy here


def features(tables: Sequence[Any], model: str) -> tuple[np.ndarray, np.ndarray, Scaler]:
    """Standardised inputs, targets and the scaler fitted on them, from decoded batch tables."""
    xs = [windows(t).x for t in tables]
    raw = np.concatenate(xs) if xs else np.zeros((0, 16), np.float32)
    if len(raw) == 0:
        raise TrainDataError("no complete feature windows in the given datasets")
    scaler = Scaler.fit(raw)
    x = scaler.apply(raw)
    y = activity_labels(raw) if model == "activity" else x
    return x, y, scaler


def load_global(path: Path, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise WeightsError(f"global weights {path}: {e.strerror or e}") from None
    return weights_codec.decode(data, shapes)


def _stamp(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def run(home: Path, store: Any, req: TrainRequest, *, now: datetime | None = None,
        noise_seed: int | None = None) -> dict:
    """Run the job; returns the metrics (also saved as the update's JSON sidecar).

    store: a DatasetStore (read_batch(cid) -> bytes). now: the update's timestamp (default: the clock).
    noise_seed: tests only. Raises TrainDataError, WeightsError, ModelRejected, LdpUnavailable,
    LdpLedgerError, DatasetError/IntegrityError from the store.
    """
    t0 = time.perf_counter()
    if req.model not in DEFAULT_LR:
        raise TrainDataError(f"unknown model {req.model!r}: one of {sorted(DEFAULT_LR)}")
    spec = spec_for(req.model, req.width)
    if req.ldp is not None:
        ldp.require_accountant()        # fail before training, not after
        ledger = ldp.Ledger(home)       # and refuse a broken ledger before training too
    tables = [batchfmt.decode(store.read_batch(cid)) for cid in req.datasets]
    x, y, scaler = features(tables, req.model)
    start = (load_global(req.global_file, spec.tensor_shapes) if req.global_file is not None
             else client.initial_weights(req.model, req.width))
    lr = req.lr if req.lr is not None else DEFAULT_LR[req.model]
    r = client.local_round(req.model, req.width, start, x, y, epochs=req.epochs, batch_size=req.batch_size,
                           lr=lr, seed=req.seed)
    update, ldp_out = r.update, None
    if req.ldp is not None:
        update = ldp.privatize(update, req.ldp, seed=noise_seed)
        ledger.record(req.ldp.noise_multiplier)
        ldp_out = {"clip": req.ldp.clip, "noise_multiplier": req.ldp.noise_multiplier, "delta": req.ldp.delta,
                   "epsilon": ledger.epsilon(req.ldp.delta), "rounds": ledger.rounds}
    payload = quantize.encode(quantize.quantize(update)) if req.quantize else weights_codec.encode(update)

    out_dir = Path(home) / UPDATES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_stamp(now or datetime.now(timezone.utc))}-{req.model}-w{req.width:g}.update"
    if path.exists():
        raise TrainDataError(f"update {path.name} already exists")
    metrics = {"model": req.model, "width": req.width, "datasets": list(req.datasets), "samples": r.n_samples,
               "epochs": r.epochs, "steps": r.steps, "batch_size": r.batch_size, "lr": lr,
               "loss_before": r.loss_before, "loss_after": r.loss_after, "seconds": round(r.seconds, 4),
               "update_l2": client.l2_norm(update), "update_file": str(path), "update_bytes": len(payload),
               "feature_bytes": int(x.nbytes) + int(y.nbytes),
               "quantized": req.quantize, "ldp": ldp_out, "seed": req.seed,
               "scaler": {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()},
               "global": str(req.global_file) if req.global_file is not None else "initial"}
    write_atomic(path, payload)
    metrics["total_seconds"] = round(time.perf_counter() - t0, 4)
    write_atomic(path.with_suffix(".json"), json.dumps(metrics, indent=1, sort_keys=True).encode())
    return metrics


def read_update(path: Path, shapes: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """The float32 update saved at `path`, whichever format (AITW or AITQ) it was saved in."""
    data = Path(path).read_bytes()
    if data[:4] == quantize.MAGIC:
        return quantize.dequantize(quantize.decode(data, shapes))
    return weights_codec.decode(data, shapes)
