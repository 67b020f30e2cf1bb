"""HeteroFL width slicing: a sub-model keeps the first ceil(r*C) units of every hidden layer.

For the dense chains here every tensor's sub-model shape is a leading block of the full shape (a
kernel (in, out) keeps its first rows when its input is hidden and its first columns when its output
is hidden; a bias keeps its first entries), so slicing and mapping back are leading-block operations
driven only by the two shape lists, which the manifest records for every width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import WeightsError

WIDTHS = (1.0, 0.5, 0.25)


def units(full: int, ratio: float) -> int:
    """Hidden units kept at width `ratio`: ceil(ratio * full), at least 1."""
    if not 0 < ratio <= 1:
        raise ValueError(f"width ratio {ratio} outside (0, 1]")
    return max(1, math.ceil(ratio * full - 1e-9))    # 1e-9: 0.5 * 32 stays 16 whatever the float error


def _block(full_shape: Sequence[int], sub_shape: Sequence[int]) -> tuple[slice, ...]:
    if len(full_shape) != len(sub_shape) or any(s > f for s, f in zip(sub_shape, full_shape)):
        raise WeightsError(f"shape {tuple(sub_shape)} is not a leading block of {tuple(full_shape)}")
    return tuple(slice(0, s) for s in sub_shape)


def slice_weights(full: Sequence[np.ndarray], sub_shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The sub-model's tensors: the leading block of each full tensor (copies)."""
    if len(full) != len(sub_shapes):
        raise WeightsError(f"{len(full)} full tensors for {len(sub_shapes)} sub-model shapes")
    return [np.array(f[_block(f.shape, s)]) for f, s in zip(full, sub_shapes)]


@dataclass(frozen=True)
class Embedded:
    """A sub-model's tensors placed in the full shapes: `values` zero outside `mask` (True where covered)."""

    values: list[np.ndarray]
    mask: list[np.ndarray]


def embed(sub: Sequence[np.ndarray], full_shapes: Sequence[Sequence[int]]) -> Embedded:
    """Map sub-model tensors (e.g. an update after minus before) back onto the full tensors' leading blocks.

    HeteroFL aggregation then averages each entry over the devices whose mask covers it.
    """
    if len(sub) != len(full_shapes):
        raise WeightsError(f"{len(sub)} sub-model tensors for {len(full_shapes)} full shapes")
    values, mask = [], []
    for s, shape in zip(sub, full_shapes):
        idx = _block(shape, s.shape)
        v = np.zeros(tuple(shape), dtype=s.dtype)
        m = np.zeros(tuple(shape), dtype=bool)
        v[idx] = s
        m[idx] = True
        values.append(v)
        mask.append(m)
    return Embedded(values, mask)
