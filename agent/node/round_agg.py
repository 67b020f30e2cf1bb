"""One round's aggregate under the node's configuration: which rule, which norm policy, sync or async.

    sync  + fedavg        HeteroFedAvg: streaming, sample-weighted, every width (a group of full-width
                          devices gives exactly StreamingFedAvg's result)
    sync  + median|trimmed_mean   every update in memory, full width only, unweighted (aggregators.py)
    async + fedavg        FedBuff: staleness-weighted, closes the round at k updates, full width only
    async + median|trimmed_mean   the same rule over each window of k

Norm policy "clip" scales an update over the bound down to it before anything else; "reject" refuses
it (UpdateRejected "norm"). Everything that refuses an update does so before it touches the sum.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .aggregators import (
    AggregationConfig,
    HeteroFedAvg,
    check_update,
    check_weight,
    clip,
    coordinate_median,
    trimmed_mean,
)
from .fedavg import UpdateRejected
from .fedbuff import FedBuff, StaleUpdate


class RoundAggregator:
    def __init__(self, cfg: AggregationConfig, full_shapes: Sequence[Sequence[int]],
                 shapes_for: Callable[[float], Sequence[Sequence[int]]]) -> None:
        self.cfg = cfg
        self.full_shapes = [tuple(s) for s in full_shapes]
        self.streaming = cfg.rule == "fedavg"
        self._hetero = HeteroFedAvg(full_shapes, shapes_for, cfg.max_norm) if self.streaming else None
        self._buff = (FedBuff(full_shapes, cfg.k, cfg.max_staleness, cfg.max_norm)
                      if self.streaming and cfg.mode == "async" else None)
        self._kept: list[list[np.ndarray]] = []    # robust rules: every update (unweighted by design)
        self._scratch = np.empty(1 << 13, np.float64)
        self.count = 0

    def _prepare(self, tensors: Sequence[np.ndarray], width: float) -> list[np.ndarray]:
        tensors = [np.asarray(t, np.float32) for t in tensors]
        if self.cfg.norm_policy == "clip":
            tensors, _ = clip(tensors, self.cfg.max_norm)
        if width != 1.0 and (not self.streaming or self.cfg.mode == "async"):
            raise UpdateRejected("shape", f"width {width:g}: only sync fedavg aggregates sub-models")
        return tensors

    def check(self, tensors: Sequence[np.ndarray], weight: int, width: float, staleness: int) -> None:
        """Raise UpdateRejected or StaleUpdate if ``add`` would refuse this update; change nothing."""
        tensors = self._prepare(tensors, width)
        check_weight(weight)
        if self.cfg.mode == "async" and staleness > self.cfg.max_staleness:
            raise StaleUpdate(staleness, self.cfg.max_staleness)
        if self._hetero is not None and self._buff is None:
            self._hetero.check(tensors, weight, width)
        else:
            check_update(tensors, self.full_shapes, self.cfg.max_norm, self._scratch)

    def add(self, tensors: Sequence[np.ndarray], weight: int, width: float, staleness: int = 0) -> bool:
        """Fold one update; True when the round should close (async: its window of k is full)."""
        tensors = self._prepare(tensors, width)
        if self._buff is not None:
            full = self._buff.add(tensors, weight, staleness)
        elif self._hetero is not None:
            self._hetero.add(tensors, weight, width)
            full = False
        else:
            check_weight(weight)
            check_update(tensors, self.full_shapes, self.cfg.max_norm, self._scratch)
            self._kept.append(tensors)
            full = self.cfg.mode == "async" and len(self._kept) >= self.cfg.k
        self.count += 1
        return full

    def result(self) -> list[np.ndarray]:
        """The round's mean update, full shapes, float32. ValueError if nothing was added."""
        if self.count == 0:
            raise ValueError("no update in this round")
        if self._buff is not None:
            return self._buff.flush()
        if self._hetero is not None:
            return self._hetero.result()
        if self.cfg.rule == "median":
            return coordinate_median(self._kept)
        return trimmed_mean(self._kept, self.cfg.trim)
