"""Aggregation rules beside plain FedAvg: HeteroFL sub-models, robust per-coordinate rules, norm clipping.

- HeteroFedAvg streams updates of HeteroFL sub-models (agent/train/submodel.py) into a float64 sum and
  a float64 weight sum (coverage) per entry of the full model; each entry's result is its weighted
  mean over the devices whose sub-model holds it. Memory is O(model), whatever the number of devices.
- coordinate_median and trimmed_mean need every update in memory at once (O(devices x model)): they
  are for small groups or for a buffered window (FedBuff's K), never for a 300-device round. They are
  unweighted on purpose: the sample count is self-reported, and a weight would let one device buy
  the majority these rules depend on.
- clip() scales an update down to a norm bound, the alternative to refusing it (config.norm_policy).
- AggregationConfig is the node's choice among these; FedBuff is in agent/node/fedbuff.py.

Validation is fedavg.py's: the same UpdateRejected with the same REASONS, checked before anything
is folded, so a refused update leaves the aggregate exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Callable, Sequence

import numpy as np

from .fedavg import MAX_WEIGHT, REASONS, UpdateRejected

Shape = tuple[int, ...]

_CHUNK = 1 << 13            # elements per float64 scratch chunk (64 KiB), as in fedavg.py
_ACC = np.float64


# -- validation shared with fedbuff.py ---------------------------------------------------------------


def check_weight(weight: int) -> int:
    """The weight as an int; raises UpdateRejected("weight") unless an int (not bool) in [1, MAX_WEIGHT].

    The same rule as StreamingFedAvg.check_weight.
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or not 1 <= weight <= MAX_WEIGHT:
        raise UpdateRejected("weight", f"weight must be an int in [1, {MAX_WEIGHT}], got {weight!r} "
                             f"({type(weight).__name__})")
    return int(weight)


def check_update(tensors: Sequence[np.ndarray], shapes: Sequence[Shape], max_norm: float,
                 scratch: np.ndarray) -> float:
    """Validate a float update against `shapes`; return its L2 norm (float64, all tensors as one vector).

    Raises UpdateRejected: "shape" (tensor count, shape, non-float dtype), "non_finite", "norm" (> max_norm).
    `scratch` is a float64 buffer the squares are taken in, a chunk at a time (no float64 copy of the update).
    """
    if len(tensors) != len(shapes):
        raise UpdateRejected("shape", f"update has {len(tensors)} tensors, expected {len(shapes)}")
    arrays = [np.asarray(t) for t in tensors]
    for i, (a, want) in enumerate(zip(arrays, shapes)):
        if a.shape != want:
            raise UpdateRejected("shape", f"tensor {i} has shape {a.shape}, expected {want}")
        if a.dtype.kind != "f":
            raise UpdateRejected("shape", f"tensor {i} has dtype {a.dtype}, expected float")
    ssq = []
    with np.errstate(over="ignore", invalid="ignore"):         # inf/NaN are reported below, not warned
        for a in arrays:
            flat, total = a.reshape(-1), 0.0
            for j in range(0, flat.size, scratch.size):
                c = scratch[: min(scratch.size, flat.size - j)]
                np.copyto(c, flat[j:j + c.size])
                total += float(np.einsum("i,i->", c, c))        # einsum: never threads (see fedavg.py)
            ssq.append(total)
    if not all(math.isfinite(s) for s in ssq):
        for i, a in enumerate(arrays):
            bad = ~np.isfinite(a.reshape(-1))
            if bad.any():
                raise UpdateRejected("non_finite", f"tensor {i} {shapes[i]} has {int(bad.sum())} non-finite "
                                     f"values, the first at flat index {int(np.argmax(bad))}")
        # all finite but the squares overflowed float64 (float64 input above ~1e154): unbounded
    total = math.fsum(ssq)
    norm = math.sqrt(total)
    if not (math.isfinite(norm) and norm <= max_norm):         # inf fails even with no bound
        raise UpdateRejected("norm", f"L2 norm {norm:.6g} exceeds the bound {max_norm:.6g}")
    return norm


def check_max_norm(max_norm: float) -> float:
    if not max_norm > 0:                                       # also refuses NaN; inf means no bound
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    return float(max_norm)


# -- HeteroFL ------------------------------------------------------------------------------------------


class HeteroFedAvg:
    """Per-entry weighted mean of sub-model updates (HeteroFL). Not thread-safe: one round, one caller.

    A device of width r sends an update whose tensors have shapes_for(r): leading blocks of the full
    shapes. add() folds weight * update into the leading block of the float64 sum and adds weight to
    the same block of the float64 coverage; result() is sum / coverage where coverage > 0, else 0
    (an update of 0: entries no device trained keep their global value).

    Memory: sum + coverage, 16 bytes per full-model parameter (4x the float32 model), plus one scratch
    chunk; nothing grows with the number of devices. (For leading blocks the coverage is determined by
    which widths were seen, so it could be kept per width; it is per entry so that any block layout works.)
    """

    def __init__(self, full_shapes: Sequence[Sequence[int]], shapes_for: Callable[[float], Sequence[Sequence[int]]],
                 max_norm: float) -> None:
        """`shapes_for(width)` gives the sub-model's tensor shapes at a width, e.g.
        ``lambda w: spec_for("activity", w).tensor_shapes``. An exception it raises for a width it does
        not know propagates unchanged from add() (which widths a node serves is its policy, not ours)."""
        self.max_norm = check_max_norm(max_norm)
        self.shapes = [tuple(int(d) for d in s) for s in full_shapes]
        self._shapes_for = shapes_for
        self._sub: dict[float, list[Shape]] = {}               # width -> shapes, checked once per width
        self._sum = [np.zeros(s, _ACC) for s in self.shapes]
        self._cov = [np.zeros(s, _ACC) for s in self.shapes]
        # the fold goes a few leading-axis rows at a time, so the scratch must hold one full row
        rows = [math.prod(s[1:]) for s in self.shapes if len(s) > 1]
        self._buf = np.empty(max([_CHUNK, *rows]), _ACC)
        self.count = 0
        self.total_weight = 0
        self.rejected = {r: 0 for r in REASONS}

    def sub_shapes(self, width: float) -> list[Shape]:
        """The sub-model shapes at `width` (cached). Raises UpdateRejected("shape") for a width outside (0, 1];
        ValueError if shapes_for gives shapes that are not leading blocks of the full shapes."""
        if isinstance(width, bool) or not isinstance(width, Real) or not 0 < width <= 1:
            raise UpdateRejected("shape", f"width must be a number in (0, 1], got {width!r}")
        width = float(width)
        if width not in self._sub:
            sub = [tuple(int(d) for d in s) for s in self._shapes_for(width)]
            if len(sub) != len(self.shapes) or any(
                    len(s) != len(f) or any(a > b for a, b in zip(s, f)) for s, f in zip(sub, self.shapes)):
                raise ValueError(f"shapes_for({width:g}) = {sub} is not a list of leading blocks of {self.shapes}")
            self._sub[width] = sub
        return self._sub[width]

    def check(self, tensors: Sequence[np.ndarray], weight: int, width: float) -> float:
        """Validate without folding; return the norm. Raises UpdateRejected (and counts it)."""
        try:
            check_weight(weight)
            return check_update(tensors, self.sub_shapes(width), self.max_norm, self._buf)
        except UpdateRejected as e:
            self.rejected[e.reason] += 1
            raise

    def add(self, tensors: Sequence[np.ndarray], weight: int, width: float) -> float:
        """Check, then fold weight * tensors into the leading blocks in place; returns the norm."""
        norm = self.check(tensors, weight, width)
        w = float(weight)                                       # exact; w * f32 is exact in f64 while w < 2^29
        for t, acc, cov in zip(tensors, self._sum, self._cov):
            t = np.asarray(t)
            block = tuple(slice(0, d) for d in t.shape) + (Ellipsis,)   # Ellipsis: a view even for 0-d
            cov[block] += w                                     # scalar add in place: no temporary
            self._fold(t, w, acc[block])
        self.count += 1
        self.total_weight += int(weight)
        return norm

    def _fold(self, t: np.ndarray, w: float, dst: np.ndarray) -> None:
        # dst is a strided view of the sum: go along the leading axis, a chunk of whole rows at a time
        if t.ndim == 0:
            t, dst = t.reshape(1), dst.reshape(1)
        row = math.prod(t.shape[1:])
        step = max(1, self._buf.size // max(row, 1))
        for i in range(0, t.shape[0], step):
            src, out = t[i:i + step], dst[i:i + step]
            c = self._buf[: src.size].reshape(src.shape)
            np.multiply(src, w, out=c, dtype=_ACC)              # in float64, not f32 then widened
            np.add(out, c, out=out)

    def result(self) -> list[np.ndarray]:
        """Per-entry weighted mean as float32 tensors of the full shapes; 0 where no update covered an entry.

        Raises ValueError if no update was added. Does not consume the sums.
        """
        if not self.count:
            raise ValueError("no update was added")
        out = []
        for acc, cov in zip(self._sum, self._cov):
            t = np.zeros(acc.shape, np.float32)
            np.divide(acc, cov, out=t, where=cov > 0)          # float64 divide, one rounding to f32
            out.append(t)
        return out


# -- robust rules (all updates in memory) -------------------------------------------------------------


def _stacks(updates: Sequence[Sequence[np.ndarray]]):
    """Yield, per tensor, the float64 stack (devices, *shape): one tensor's stack alive at a time."""
    if not updates:
        raise ValueError("no updates")
    first = [np.asarray(t).shape for t in updates[0]]
    for k, u in enumerate(updates):
        if [np.asarray(t).shape for t in u] != first:
            raise ValueError(f"update {k} has shapes {[np.asarray(t).shape for t in u]}, update 0 has {first}")
    for i in range(len(first)):
        s = np.stack([np.asarray(u[i], dtype=_ACC) for u in updates])
        if not np.isfinite(s).all():
            raise ValueError(f"tensor {i} has non-finite values (validate updates before aggregating)")
        yield s


def coordinate_median(updates: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per-coordinate median of the updates (unweighted), as float32 tensors.

    Fewer than half the devices cannot move any coordinate outside the range of the others' values.
    Needs every update in memory (the caller's list) plus one tensor's float64 stack. Raises ValueError
    on no updates, mismatched shapes or non-finite values.
    """
    return [np.median(s, axis=0).astype(np.float32) for s in _stacks(updates)]


def trimmed_count(n: int, trim: float) -> int:
    """How many values trimmed_mean drops from each end of n: floor(trim * n)."""
    return int(math.floor(trim * n + 1e-9))     # 1e-9: 0.29 * 100 is 28.999999999999996, meant as 29


def trimmed_mean(updates: Sequence[Sequence[np.ndarray]], trim: float) -> list[np.ndarray]:
    """Per-coordinate mean after dropping the floor(trim * n) lowest and highest values (unweighted).

    With floor(trim * n) >= f, f devices cannot move a coordinate outside the others' range.
    0 <= trim < 0.5 (ValueError otherwise); trim = 0 is the plain mean. Memory as coordinate_median.
    """
    if isinstance(trim, bool) or not isinstance(trim, Real) or not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim!r}")
    out = []
    for s in _stacks(updates):
        n = s.shape[0]
        k = trimmed_count(n, trim)
        if k:
            s.sort(axis=0)                      # in place: the stack is ours
            s = s[k:n - k]
        out.append(s.mean(axis=0).astype(np.float32))
    return out


# -- clipping ----------------------------------------------------------------------------------------


def clip(tensors: Sequence[np.ndarray], bound: float) -> tuple[list[np.ndarray], float]:
    """(update scaled down to L2 norm <= bound, its original norm). An update already within the bound
    comes back as the same arrays, not copied.

    The clipped update's norm is <= bound after rounding to its dtype (it is at most a few ulps below),
    so it passes a max_norm = bound check. Raises UpdateRejected("non_finite") for NaN or Inf (there is
    nothing to scale), ValueError for a bound that is not > 0.
    """
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound}")
    arrays = [np.asarray(t) for t in tensors]
    for i, a in enumerate(arrays):
        if a.dtype.kind != "f":
            raise UpdateRejected("shape", f"tensor {i} has dtype {a.dtype}, expected float")
        if not np.isfinite(a).all():
            raise UpdateRejected("non_finite", f"tensor {i} has non-finite values")
    norm = _norm(arrays)
    if norm <= bound:
        return list(arrays), norm
    factor = bound / norm
    while True:
        out = [(a.astype(_ACC) * factor).astype(a.dtype) for a in arrays]
        if _norm(out) <= bound:
            return out, norm
        # rounding to the dtype lifted the norm past the bound: shrink by a few ulps of that dtype
        factor *= 1 - 4 * float(max(np.finfo(a.dtype).eps for a in arrays))


def _norm(arrays: Sequence[np.ndarray]) -> float:
    # scaled by the largest magnitude so float64 inputs near 1e308 do not overflow the squares
    top = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    if top == 0:
        return 0.0
    return top * math.sqrt(math.fsum(float(np.sum(np.square(a.astype(_ACC) / top))) for a in arrays))


# -- configuration -----------------------------------------------------------------------------------

RULES = ("fedavg", "median", "trimmed_mean")
NORM_POLICIES = ("reject", "clip")
MODES = ("sync", "async")


@dataclass(frozen=True)
class AggregationConfig:
    """How a node aggregates. ValueError naming the field on a bad value.

    max_norm     L2 bound of an update (no default: it depends on the model and learning rate)
    rule         "fedavg" (streaming weighted mean), "median" or "trimmed_mean" (unweighted, all
                 updates in memory: a sync group or each async window of k)
    trim         fraction dropped from each end per coordinate, 0 <= trim < 0.5 (trimmed_mean only)
    norm_policy  "reject" an update above max_norm, or "clip" it to max_norm
    mode         "sync" rounds, or "async" (FedBuff: aggregate every k updates)
    k            FedBuff buffer size, >= 1 (async only); default 10 as in the FedBuff paper
    max_staleness  async: refuse updates trained on a model more than this many versions old, >= 0
    """

    max_norm: float
    rule: str = "fedavg"
    trim: float = 0.1
    norm_policy: str = "reject"
    mode: str = "sync"
    k: int = 10
    max_staleness: int = 4

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"AggregationConfig.{name}: {why}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if isinstance(self.max_norm, bool) or not isinstance(self.max_norm, Real) or not self.max_norm > 0:
            raise bad("max_norm", "must be a number > 0 (inf: no bound)")
        if self.rule not in RULES:
            raise bad("rule", f"must be one of {RULES}")
        if isinstance(self.trim, bool) or not isinstance(self.trim, Real) or not 0 <= self.trim < 0.5:
            raise bad("trim", "must be in [0, 0.5)")
        if self.norm_policy not in NORM_POLICIES:
            raise bad("norm_policy", f"must be one of {NORM_POLICIES}")
        if self.norm_policy == "clip" and not math.isfinite(self.max_norm):
            raise bad("max_norm", "must be finite to clip to it")
        if self.mode not in MODES:
            raise bad("mode", f"must be one of {MODES}")
        if not is_int(self.k) or self.k < 1:
            raise bad("k", "must be an int >= 1")
        if not is_int(self.max_staleness) or self.max_staleness < 0:
            raise bad("max_staleness", "must be an int >= 0")
        if (self.mode == "async" and self.rule == "trimmed_mean" and self.trim > 0
                and trimmed_count(self.k, self.trim) == 0):
            # a window of k where the trim drops nothing is a plain mean: say so rather than look robust
            raise bad("trim", f"trims no update from a window of k={self.k}")
