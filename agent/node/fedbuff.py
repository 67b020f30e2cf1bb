"""FedBuff: asynchronous aggregation of updates that arrive whenever devices finish, K at a time.

A device trains on global model version v and its update arrives when the node is at version
v + tau (tau = staleness). The node folds it into a buffer; after K updates it applies the buffer's
mean and bumps the version (Nguyen et al., "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS 2022).

Weighting, exactly: update i with sample count n_i and staleness tau_i enters with
    a_i = n_i * s(tau_i),   s(tau) = 1 / sqrt(1 + tau)
and flush() returns
    server_lr * sum_i a_i * delta_i / sum_i a_i.
So sample counts weight as in FedAvg, and staleness lowers an update's share *relative to the
others in the same buffer*. This differs from the paper, which averages s(tau_i) * delta_i with
1/K, so a buffer of only stale updates takes a shorter step there and a full-length one here; a
node that wants the paper's damping lowers server_lr. Updates staler than max_staleness are
refused with StaleUpdate before they are looked at.

Memory: one float64 sum of the model (2x the float32 model) plus a scratch chunk, whatever K.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..uplink.errors import UplinkError
from .aggregators import check_max_norm, check_update, check_weight
from .fedavg import REASONS, UpdateRejected

_CHUNK = 1 << 13            # elements per float64 scratch chunk, as in fedavg.py
_ACC = np.float64


class StaleUpdate(UplinkError):
    """An update trained on a global model more than max_staleness versions old (not aggregated)."""

    exit_code = 81

    def __init__(self, staleness: int, max_staleness: int) -> None:
        super().__init__(f"update is {staleness} model versions old, at most {max_staleness} accepted")
        self.staleness, self.max_staleness = staleness, max_staleness


def staleness_weight(tau: int) -> float:
    """s(tau) = 1 / sqrt(1 + tau), FedBuff's polynomial staleness discount."""
    return 1.0 / math.sqrt(1.0 + tau)


class FedBuff:
    """A buffer of up to k staleness-weighted updates. Not thread-safe: one caller.

    add() returns True when the k-th update is in; the caller then takes flush(). While the buffer
    is full, add() raises RuntimeError: an update is never silently folded into a later window.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], k: int, max_staleness: int, max_norm: float,
                 server_lr: float = 1.0) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if isinstance(max_staleness, bool) or not isinstance(max_staleness, (int, np.integer)) or max_staleness < 0:
            raise ValueError(f"max_staleness must be an int >= 0, got {max_staleness!r}")
        if not (math.isfinite(server_lr) and server_lr > 0):
            raise ValueError(f"server_lr must be finite and > 0, got {server_lr}")
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.k, self.max_staleness = int(k), int(max_staleness)
        self.max_norm = check_max_norm(max_norm)
        self.server_lr = float(server_lr)
        sizes = [math.prod(s) for s in self.shapes]
        self._acc = np.zeros(sum(sizes), _ACC)
        offsets = np.cumsum([0] + sizes)
        self._views = [self._acc[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        self._buf = np.empty(min(_CHUNK, max(sizes, default=1)) or 1, _ACC)
        self._norm = 0.0            # sum of a_i over the buffer
        self.count = 0              # updates in the buffer
        self.flushes = 0            # windows aggregated so far (the node's model version advances with it)
        self.stale = 0              # updates refused as too stale
        self.rejected = {r: 0 for r in REASONS}

    @property
    def full(self) -> bool:
        return self.count >= self.k

    def add(self, tensors: Sequence[np.ndarray], weight: int, staleness: int) -> bool:
        """Check, then fold weight * s(staleness) * tensors into the buffer; True when it holds k updates.

        Raises StaleUpdate if staleness > max_staleness, UpdateRejected (counted) for a bad update or
        weight, ValueError for a staleness that is not an int >= 0 (the node computes it: a bug),
        RuntimeError if the buffer is full. Any of them leaves the buffer as it was.
        """
        if isinstance(staleness, bool) or not isinstance(staleness, (int, np.integer)) or staleness < 0:
            raise ValueError(f"staleness must be an int >= 0, got {staleness!r}")
        if self.full:
            raise RuntimeError(f"buffer holds k={self.k} updates: flush() before adding")
        if staleness > self.max_staleness:
            self.stale += 1
            raise StaleUpdate(int(staleness), self.max_staleness)
        try:
            w = check_weight(weight)
            check_update(tensors, self.shapes, self.max_norm, self._buf)
        except UpdateRejected as e:
            self.rejected[e.reason] += 1
            raise
        a = w * staleness_weight(int(staleness))
        for t, acc in zip(tensors, self._views):
            flat = np.asarray(t).reshape(-1)
            for i in range(0, flat.size, self._buf.size):
                n = min(self._buf.size, flat.size - i)
                c = self._buf[:n]
                np.multiply(flat[i:i + n], a, out=c, dtype=_ACC)
                np.add(acc[i:i + n], c, out=acc[i:i + n])
        self._norm += a
        self.count += 1
        return self.full

    def flush(self) -> list[np.ndarray]:
        """server_lr * (sum a_i delta_i) / (sum a_i) as float32 tensors; empties the buffer.

        Usually called when add() returned True; earlier (fewer than k updates, e.g. at a deadline)
        is allowed. Raises ValueError if the buffer is empty.
        """
        if not self.count:
            raise ValueError("the buffer is empty")
        factor = self.server_lr / self._norm
        out = []
        for acc, shape in zip(self._views, self.shapes):
            t = np.empty(shape, np.float32)
            np.multiply(acc.reshape(shape), factor, out=t)
            out.append(t)
        self._acc.fill(0.0)
        self._norm = 0.0
        self.count = 0
        self.flushes += 1
        return out
