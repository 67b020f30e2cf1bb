"""Streaming weighted FedAvg: fold each device's update into one running sum as it arrives.

An update is a delta (local minus global) as float32 tensors in the global model's order and shapes
(agent/train/weights.py), or the same int8-quantized (agent/train/quantize.py, value ~ q * scale).
Each is validated before it touches the sum -- tensor count and shapes, finiteness, L2 norm under a
bound, an integer weight >= 1 -- so a refused update leaves the aggregate exactly as it was.

Memory is the accumulator plus one fixed scratch chunk, whatever the number of updates: inputs are
read a chunk at a time into the scratch (float64) for both the norm and the fold, so neither an
incoming float32 update nor an int8 one is ever widened whole.

Accumulator: float64, 8 bytes per parameter (2x the float32 model) plus <= 64 KiB of scratch.
Measured by bench/fedavg.py, 300 updates of 100,000 parameters: peak 2.34x the model during the fold
(the sum 2x, the scratch and numpy's cast buffer 0.16x each; target < 3x), 0.1-0.2 s for all 300
(target < 1 s). Products of a weight (sample count) and a float32 value are exact in float64 and
each addition rounds at 2^-53, so the mean is off only by its final cast to float32 (relative L2
error 2.5e-8) whatever the arrival order; a float32 running sum would save 1x the model but rounds
each of the 300 additions at 2^-24 (3.2e-7 on the same updates, 13x worse).
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

import numpy as np

from ..errors import IntegrityError
from ..train.quantize import Quantized
from ..uplink.errors import UplinkError

REASONS = ("shape", "non_finite", "norm", "weight")

_CHUNK = 1 << 13            # elements per scratch chunk: 64 KiB of float64 (numpy's own cast buffer size);
                            # 4K-32K measured within noise of each other, 8K the fastest
_ACC = np.float64
MAX_WEIGHT = 1 << 32        # a sample count; above it is nonsense, and beyond ~1e308 float(w) would raise


class UpdateRejected(UplinkError):
    """An update that may not enter the aggregate; ``reason`` is one of REASONS (CoAP 4.00)."""

    exit_code = 80

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"update rejected ({reason}): {message}")
        self.reason = reason


class StreamingFedAvg:
    """Weighted mean of updates, folded in one at a time. Not thread-safe: one round, one caller."""

    def __init__(self, shapes: Sequence[Sequence[int]], max_norm: float) -> None:
        if not max_norm > 0:                                   # also refuses NaN; inf means no bound
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.max_norm = float(max_norm)
        self._sizes = [math.prod(s) for s in self.shapes]
        self._acc = np.zeros(sum(self._sizes), _ACC)
        offsets = np.cumsum([0] + self._sizes)
        # one flat accumulator, one flat view per tensor: result() reshapes, the fold never does
        self._views = [self._acc[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        self._buf = np.empty(min(_CHUNK, max(self._sizes, default=0)), _ACC)
        self.count = 0
        self.total_weight = 0
        self.rejected = {r: 0 for r in REASONS}

    # -- validation --------------------------------------------------------------------------

    def check(self, tensors: Sequence[np.ndarray]) -> float:
        """Validate a float update; return its L2 norm (float64, all tensors as one vector).

        Raises UpdateRejected (and counts it) on a wrong tensor count, shape or non-float dtype,
        on NaN or Inf, or on a norm above max_norm.
        """
        try:
            return self._check(tensors)
        except UpdateRejected as e:
            self.rejected[e.reason] += 1
            raise

    def check_quantized(self, q: Quantized) -> float:
        """Validate an int8 update; its norm is sqrt(sum_i scale_i^2 * sum(q_i^2)), never dequantized."""
        try:
            return self._check_quantized(q)
        except UpdateRejected as e:
            self.rejected[e.reason] += 1
            raise

    def _check(self, tensors: Sequence[np.ndarray]) -> float:
        flats = self._layout([np.asarray(t) for t in tensors], "f", "float")
        with np.errstate(over="ignore", invalid="ignore"):   # inf/NaN are reported below, not warned
            ssq = [self._sumsq(f) for f in flats]
        if not all(math.isfinite(s) for s in ssq):
            for i, f in enumerate(flats):
                bad = ~np.isfinite(f)
                if bad.any():
                    first = int(np.argmax(bad))
                    raise UpdateRejected("non_finite", f"tensor {i} {self.shapes[i]} has {int(bad.sum())} "
                                         f"non-finite values, the first {f[first]} at flat index {first}")
            # all finite but the squares overflowed float64 (float64 input above ~1e154): unbounded
        return self._bound(math.fsum(ssq))

    def _check_quantized(self, q: Quantized) -> float:
        if len(q.scales) != len(q.values):
            raise UpdateRejected("shape", f"{len(q.values)} value tensors but {len(q.scales)} scales")
        flats = self._layout([np.asarray(v) for v in q.values], "i", "int8")
        for i, s in enumerate(q.scales):
            if not math.isfinite(s):
                raise UpdateRejected("non_finite", f"tensor {i} {self.shapes[i]} has scale {s}")
        # integer sums of squares are exact in float64 (< 127^2 * 2^24 < 2^53); s * s, not s ** 2,
        # which raises OverflowError for a huge scale instead of giving inf
        return self._bound(math.fsum(s * s * self._sumsq(f) for s, f in zip(q.scales, flats)))

    def _layout(self, arrays: list[np.ndarray], kind: str, what: str) -> list[np.ndarray]:
        if len(arrays) != len(self.shapes):
            raise UpdateRejected("shape", f"update has {len(arrays)} tensors, expected {len(self.shapes)}")
        for i, (a, want) in enumerate(zip(arrays, self.shapes)):
            if a.shape != want:
                raise UpdateRejected("shape", f"tensor {i} has shape {a.shape}, expected {want}")
            if a.dtype.kind != kind or (kind == "i" and a.dtype != np.int8):
                raise UpdateRejected("shape", f"tensor {i} has dtype {a.dtype}, expected {what}")
        return [a.reshape(-1) for a in arrays]                 # views unless a caller passes strided arrays

    def _bound(self, ssq: float) -> float:
        norm = math.sqrt(ssq)
        if not (math.isfinite(norm) and norm <= self.max_norm):     # inf fails even with no bound
            raise UpdateRejected("norm", f"L2 norm {norm:.6g} exceeds the bound {self.max_norm:.6g}")
        return norm

    def check_weight(self, weight: int) -> int:
        """The weight as an int; raises UpdateRejected("weight") (and counts it) unless 1 <= int <= MAX_WEIGHT.

        add() calls it first; a caller that persists an update before folding it calls it before too.
        """
        # bool is an int, and a float 3.0 is a sample count nobody sent: both refused
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or not 1 <= weight <= MAX_WEIGHT:
            self.rejected["weight"] += 1
            raise UpdateRejected("weight", f"weight must be an int in [1, {MAX_WEIGHT}], got {weight!r} "
                                 f"({type(weight).__name__})")
        return int(weight)

    def _sumsq(self, flat: np.ndarray) -> float:
        total = 0.0
        for i in range(0, flat.size, _CHUNK):
            c = self._buf[: min(_CHUNK, flat.size - i)]
            np.copyto(c, flat[i:i + _CHUNK])
            # einsum, not dot/vdot: those go to OpenBLAS, whose threads (2 cores, a busy node) stalled
            # them up to 100x at times -- a 300-update check took 0.06-1.3 s; einsum never threads
            total += float(np.einsum("i,i->", c, c))
        return total

    # -- folding -----------------------------------------------------------------------------

    def add(self, tensors: Sequence[np.ndarray], weight: int) -> float:
        """Check, then fold weight * tensors into the sum; returns the norm."""
        w = self.check_weight(weight)
        norm = self.check(tensors)
        for f, acc in zip((np.asarray(t).reshape(-1) for t in tensors), self._views):
            self._fold(f, float(w), acc)
        self._added(w)
        return norm

    def add_quantized(self, q: Quantized, weight: int) -> float:
        """Check, then fold weight * q * scale into the sum, one chunk of one tensor at a time."""
        w = self.check_weight(weight)
        norm = self.check_quantized(q)
        for v, s, acc in zip(q.values, q.scales, self._views):
            self._fold(np.asarray(v).reshape(-1), s * w, acc)  # s (an f32 value) * w: exact in float64
        self._added(w)
        return norm

    def _fold(self, flat: np.ndarray, factor: float, acc: np.ndarray) -> None:
        for i in range(0, flat.size, _CHUNK):
            n = min(_CHUNK, flat.size - i)
            c = self._buf[:n]
            # dtype=float64: multiply in float64, not in the input's float32 and then widen
            np.multiply(flat[i:i + n], factor, out=c, dtype=_ACC)
            np.add(acc[i:i + n], c, out=acc[i:i + n])

    def _added(self, w: int) -> None:
        self.count += 1
        self.total_weight += w

    def result(self) -> list[np.ndarray]:
        """The weighted mean (sum / total_weight) as float32 tensors of the given shapes."""
        if not self.count:
            raise ValueError("no update was added")
        out = []
        for acc, shape in zip(self._views, self.shapes):
            t = np.empty(shape, np.float32)
            np.divide(acc.reshape(shape), self.total_weight, out=t)   # float64 divide, one rounding to f32
            out.append(t)
        return out

    # -- durability --------------------------------------------------------------------------

    _MAGIC, _VERSION = b"AITF", 1

    def state(self) -> bytes:
        """The running sum and counters as bytes, to survive a node restart mid-round.

        Layout, little-endian: magic b"AITF", version u8, tensors u16, per tensor ndim u8 + ndim x u32;
        then count u32, total_weight u64, rejected u32 per REASONS in order; then the float64 sum.
        """
        head = [self._MAGIC, struct.pack("<BH", self._VERSION, len(self.shapes))]
        head += [struct.pack(f"<B{len(s)}I", len(s), *s) for s in self.shapes]
        head.append(struct.pack(f"<IQ{len(REASONS)}I", self.count, self.total_weight,
                                *(self.rejected[r] for r in REASONS)))
        return b"".join(head) + self._acc.astype("<f8").tobytes()

    @classmethod
    def from_state(cls, data: bytes, shapes: Sequence[Sequence[int]], max_norm: float) -> StreamingFedAvg:
        """An aggregator resumed from state(). Raises IntegrityError if malformed or for other shapes."""
        agg = cls(shapes, max_norm)
        mine = agg.state()
        body = agg._acc.nbytes
        head = len(mine) - body
        fixed = head - struct.calcsize(f"<IQ{len(REASONS)}I")
        # the header up to the counters is a function of the shapes alone: compare it byte for byte
        if len(data) != len(mine) or data[:fixed] != mine[:fixed]:
            raise IntegrityError("fedavg state is malformed or for another model's shapes")
        agg.count, agg.total_weight, *rej = struct.unpack_from(f"<IQ{len(REASONS)}I", data, fixed)
        agg.rejected = dict(zip(REASONS, rej))
        agg._acc[:] = np.frombuffer(data, "<f8", offset=head)
        if (agg.count == 0) != (agg.total_weight == 0) or not np.isfinite(agg._acc).all():
            raise IntegrityError("fedavg state has inconsistent counters or a non-finite sum")
        return agg
