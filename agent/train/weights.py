"""The weights file: a model's tensors as one deterministic byte string (no timestamps, no zip).

Layout, little-endian:

    magic  b"AITW"           4 bytes
    version u8 = 1
    count   u16              number of tensors
    per tensor: ndim u8, then ndim x u32 dims
    data: each tensor's float32 values, C order, in the same order

Tensor names and their order live in the model's manifest entry, not here; `decode` checks only
that the bytes are well formed and, when given `shapes`, that they match.
"""

from __future__ import annotations

import struct
from typing import Sequence

import numpy as np

from .errors import WeightsError

MAGIC = b"AITW"
VERSION = 1
MAX_TENSORS = 256
MAX_VALUES = 16 * 1024 * 1024      # 64 MiB of float32: far above any model here, checked before allocating


def encode(tensors: Sequence[np.ndarray]) -> bytes:
    """The bytes of `tensors` (cast to float32)."""
    if len(tensors) > MAX_TENSORS:
        raise WeightsError(f"{len(tensors)} tensors, at most {MAX_TENSORS}")
    head = [MAGIC, struct.pack("<BH", VERSION, len(tensors))]
    for t in tensors:
        head.append(struct.pack(f"<B{t.ndim}I", t.ndim, *t.shape))
    body = [np.ascontiguousarray(t, dtype="<f4").tobytes() for t in tensors]
    return b"".join(head + body)


def decode(data: bytes, shapes: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """The tensors in `data` (float32). Raises WeightsError if malformed or if shapes differ from `shapes`."""
    try:
        if data[:4] != MAGIC:
            raise WeightsError("not a weights file (bad magic)")
        version, count = struct.unpack_from("<BH", data, 4)
        if version != VERSION:
            raise WeightsError(f"weights version {version}, expected {VERSION}")
        if count > MAX_TENSORS:
            raise WeightsError(f"{count} tensors, at most {MAX_TENSORS}")
        off, dims = 7, []
        for _ in range(count):
            (ndim,) = struct.unpack_from("<B", data, off)
            dims.append(struct.unpack_from(f"<{ndim}I", data, off + 1))
            off += 1 + 4 * ndim
    except struct.error:
        raise WeightsError("truncated weights header") from None
    sizes = [int(np.prod(d)) for d in dims]
    if sum(sizes) > MAX_VALUES or len(data) != off + 4 * sum(sizes):
        raise WeightsError(f"weights body is {len(data) - off} bytes, header says {4 * sum(sizes)}")
    out = []
    for d, n in zip(dims, sizes):
        out.append(np.frombuffer(data, dtype="<f4", count=n, offset=off).reshape(d).astype(np.float32))
        off += 4 * n
    if shapes is not None:
        check_shapes(out, shapes)
    return out


def check_shapes(tensors: Sequence[np.ndarray], shapes: Sequence[Sequence[int]]) -> None:
    """Raise WeightsError unless `tensors` has exactly `shapes`, in order."""
    got = [tuple(t.shape) for t in tensors]
    want = [tuple(s) for s in shapes]
    if got != want:
        raise WeightsError(f"weight shapes {got}, expected {want}")
