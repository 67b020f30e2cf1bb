"""Int8 per-tensor symmetric quantisation of an update, and its bytes for the uplink.

Per tensor: scale = max|x| / 127, q = round(x / scale) in [-127, 127], x ~ q * scale; each entry is off
by at most scale / 2. An all-zero tensor has scale 0 and comes back as exact zeros.

File layout, little-endian (the weights file's style, agent/train/weights.py):

    magic   b"AITQ"           4 bytes
    version u8 = 1
    count   u16               number of tensors
    per tensor: ndim u8, ndim x u32 dims, scale f32
    data: each tensor's int8 values, C order, in the same order
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import WeightsError
from .weights import MAX_TENSORS, MAX_VALUES, check_shapes

MAGIC = b"AITQ"
VERSION = 1
QMAX = 127


@dataclass(frozen=True)
class Quantized:
    values: list[np.ndarray]    # int8, one per tensor
    scales: list[float]         # float32-representable, one per tensor


def quantize(tensors: Sequence[np.ndarray]) -> Quantized:
    """Per-tensor symmetric int8. Raises WeightsError on non-finite values."""
    values, scales = [], []
    for t in tensors:
        t = np.asarray(t, dtype=np.float32)
        if not np.isfinite(t).all():
            raise WeightsError("cannot quantize non-finite values")
        peak = float(np.abs(t).max()) if t.size else 0.0
        scale = float(np.float32(peak / QMAX))      # stored as f32: quantize with exactly that value
        if scale == 0.0:
            q = np.zeros(t.shape, np.int8)
        else:
            q = np.clip(np.rint(t.astype(np.float64) / scale), -QMAX, QMAX).astype(np.int8)
        values.append(q)
        scales.append(scale)
    return Quantized(values, scales)


def dequantize(q: Quantized) -> list[np.ndarray]:
    return [(v.astype(np.float64) * s).astype(np.float32) for v, s in zip(q.values, q.scales)]


def encode(q: Quantized) -> bytes:
    if len(q.values) > MAX_TENSORS:
        raise WeightsError(f"{len(q.values)} tensors, at most {MAX_TENSORS}")
    head = [MAGIC, struct.pack("<BH", VERSION, len(q.values))]
    for v, s in zip(q.values, q.scales):
        head.append(struct.pack(f"<B{v.ndim}If", v.ndim, *v.shape, s))
    return b"".join(head + [np.ascontiguousarray(v, dtype=np.int8).tobytes() for v in q.values])


def decode(data: bytes, shapes: Sequence[Sequence[int]] | None = None) -> Quantized:
    """The quantized tensors in `data`. Raises WeightsError if malformed or if shapes differ from `shapes`."""
    try:
        if data[:4] != MAGIC:
            raise WeightsError("not a quantized update (bad magic)")
        version, count = struct.unpack_from("<BH", data, 4)
        if version != VERSION:
            raise WeightsError(f"quantized update version {version}, expected {VERSION}")
        if count > MAX_TENSORS:
            raise WeightsError(f"{count} tensors, at most {MAX_TENSORS}")
        off, dims, scales = 7, [], []
        for _ in range(count):
            (ndim,) = struct.unpack_from("<B", data, off)
            *d, s = struct.unpack_from(f"<{ndim}If", data, off + 1)
            dims.append(tuple(d))
            scales.append(s)
            off += 1 + 4 * ndim + 4
    except struct.error:
        raise WeightsError("truncated quantized update header") from None
    sizes = [int(np.prod(d)) for d in dims]
    if sum(sizes) > MAX_VALUES or len(data) != off + sum(sizes):
        raise WeightsError(f"quantized body is {len(data) - off} bytes, header says {sum(sizes)}")
    if not all(np.isfinite(s) and s >= 0 for s in scales):
        raise WeightsError("quantized update has a negative or non-finite scale")
    values = []
    for d, n in zip(dims, sizes):
        values.append(np.frombuffer(data, dtype=np.int8, count=n, offset=off).reshape(d).copy())
        off += n
    if shapes is not None:
        check_shapes(values, shapes)
    return Quantized(values, [float(s) for s in scales])
