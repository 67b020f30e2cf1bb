"""The federated client step: restore the global weights, run local SGD epochs, return local minus global.

One round on one device: `local_round` restores `global_weights` into a fresh interpreter, runs
`epochs` passes of mini-batch SGD over (x, y) in a seeded shuffled order (the last batch of an epoch
is the partial remainder, trained as is), and returns the update with the sample count and the loss on
the whole local data under the global and under the local weights, both measured with `infer` (not the
running training loss, which mixes weights from different steps).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import weights as weights_codec
from .errors import TrainDataError
from .manifest import MODELS_DIR, ModelSpec
from .runtime import Model

EVAL_CHUNK = 4096       # rows per infer call when measuring the loss: bounds the interpreter's tensors


@dataclass(frozen=True)
class RoundResult:
    """What one local round produced. `update[i]` = local[i] - global[i] (float32, manifest order)."""

    update: list[np.ndarray]
    n_samples: int
    loss_before: float          # on all of (x, y) with the global weights
    loss_after: float           # the same with the local weights
    seconds: float              # restore + training + both loss measurements
    steps: int
    epochs: int
    batch_size: int


def check_data(spec: ModelSpec, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as the model takes them. Raises TrainDataError if empty, mis-shaped, out of range or non-finite."""
    x = np.asarray(x)
    y = np.asarray(y)
    n_in, n_out = spec.layers[0], spec.layers[-1]
    if x.ndim != 2 or x.shape[1] != n_in:
        raise TrainDataError(f"x has shape {x.shape}, {spec.key} takes (n, {n_in})")
    if len(x) == 0:
        raise TrainDataError("no training samples")
    if len(y) != len(x):
        raise TrainDataError(f"y has {len(y)} rows, x has {len(x)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise TrainDataError("x has non-finite values")
    if spec.loss == "cross_entropy":
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TrainDataError(f"y must be integer class indices, got {y.dtype} shape {y.shape}")
        if y.min() < 0 or y.max() >= n_out:
            raise TrainDataError(f"class index outside [0, {n_out})")
        return x, np.ascontiguousarray(y, dtype=np.int32)
    if y.shape != (len(x), n_out):
        raise TrainDataError(f"y has shape {y.shape}, {spec.key} outputs (n, {n_out})")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.isfinite(y).all():
        raise TrainDataError("y has non-finite values")
    return x, y


def loss_on(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    """Mean loss of the model's current weights over all of (x, y), as the train signature defines it."""
    total = 0.0
    for i in range(0, len(x), EVAL_CHUNK):
        out = model.infer(x[i:i + EVAL_CHUNK]).astype(np.float64)
        yy = y[i:i + EVAL_CHUNK]
        if model.spec.loss == "cross_entropy":
            # the model outputs softmax probabilities; the floor keeps log finite on a confident miss
            total -= np.log(np.maximum(out[np.arange(len(yy)), yy], 1e-12)).sum()
        else:
            total += ((out - yy) ** 2).mean(axis=1).sum()
    return total / len(x)


def steps_for(n: int, epochs: int, batch_size: int) -> int:
    return epochs * math.ceil(n / batch_size)


def local_round(model_name: str, width: float, global_weights: Sequence[np.ndarray], x: np.ndarray,
                y: np.ndarray, *, epochs: int, batch_size: int = 32, lr: float, seed: int | None,
                models_dir: Path = MODELS_DIR) -> RoundResult:
    """One local round from `global_weights` on (x, y); see the module docstring.

    y: class indices (classifier) or targets shaped like the output (autoencoder: x itself).
    seed: the shuffling order's seed (None: fresh entropy).
    Raises TrainDataError (empty or mis-shaped data, bad epochs/batch/lr), WeightsError (global weights
    that do not fit the model), ModelRejected, RuntimeMissing.
    """
    if epochs < 1 or batch_size < 1 or not (math.isfinite(lr) and lr > 0):
        raise TrainDataError(f"need epochs >= 1, batch >= 1, lr > 0 (got {epochs}, {batch_size}, {lr})")
    t0 = time.perf_counter()
    model = Model.load(model_name, width, models_dir=models_dir)
    x, y = check_data(model.spec, x, y)
    start = [np.array(w, dtype=np.float32) for w in global_weights]
    model.set_weights(start)        # checks count and shapes: WeightsError
    loss_before = loss_on(model, x, y)
    rng = np.random.default_rng(seed)
    n, steps = len(x), 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            model.train_step(x[idx], y[idx], lr)
            steps += 1
    local = model.get_weights()
    loss_after = loss_on(model, x, y)
    update = [loc - glob for loc, glob in zip(local, start)]
    return RoundResult(update, n, float(loss_before), float(loss_after), time.perf_counter() - t0, steps,
                       epochs, batch_size)


def initial_weights(model_name: str, width: float, models_dir: Path = MODELS_DIR) -> list[np.ndarray]:
    """The shipped initial weights of the model (sha256-checked against the manifest)."""
    from .manifest import spec_for, verified_bytes

    spec = spec_for(model_name, width, models_dir)
    return weights_codec.decode(verified_bytes(spec, "weights", models_dir), spec.tensor_shapes)


def l2_norm(tensors: Sequence[np.ndarray]) -> float:
    """The L2 norm of all tensors taken as one vector (float64 sum)."""
    return math.sqrt(sum(float(np.square(t, dtype=np.float64).sum()) for t in tensors))
