"""The Hampel filter's kernel: exact sliding-window medians and MADs from sorting networks over shifted views.

Why not np.median over a sliding_window_view: it sorts every window (measured several times slower
on 1M samples); a fixed comparator network of np.minimum/np.maximum over 2h+1 shifted arrays gives the
same values with a handful of vectorised passes. `clean` applies it per channel stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: An optimal 16-comparator sorting network for 7 inputs (Knuth, TAOCP 5.3.4); checked by the 0-1 principle.
_NET7 = ((0, 6), (2, 3), (4, 5), (0, 2), (1, 4), (3, 6), (0, 1), (2, 5), (3, 4), (1, 2), (4, 6), (2, 3),
         (4, 5), (1, 2), (3, 4), (5, 6))


def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i, j), i < j, that sort n inputs: the optimal one for 7, else Batcher's odd-even merge sort
    (padded to a power of two with +inf, whose comparators are then no-ops and are left out)."""
    if n == 7:
        return _NET7
    p = 1
    while p < n:
        p *= 2
    out: list[tuple[int, int]] = []

    def merge(lo: int, hi: int, r: int) -> None:
        step = r * 2
        if step < hi - lo:
            merge(lo, hi, step)
            merge(lo + r, hi, step)
            out.extend((i, i + r) for i in range(lo + r, hi - r, step))
        else:
            out.append((lo, lo + r))

    def sort(lo: int, hi: int) -> None:
        if hi - lo >= 1:
            mid = lo + (hi - lo) // 2
            sort(lo, mid)
            sort(mid + 1, hi)
            merge(lo, hi, 1)

    sort(0, p - 1)
    return tuple((i, j) for i, j in out if j < n)


def wrap180(x: np.ndarray | float) -> Any:
    """Degrees into [-180, 180)."""
    return (x + 180.0) % 360.0 - 180.0


_CHUNK = 8192


def hampel_windows(x: np.ndarray, h: int, scale: float, floor: float, circular: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """For each full window x[i-h : i+h+1] (i = h .. len(x)-h-1): its median and whether x[i] is an outlier,
    |x[i] - median| > max(scale * MAD, floor). `circular`: values are degrees and the window is taken as
    wrap180(x - x[i]), the replacement being wrap180(x[i] + median). Returns (replacement, outlier) arrays of
    length len(x) - 2h. Exactly np.median's values, without per-window Python or a sort per window."""
    k = 2 * h + 1
    m = len(x) - 2 * h
    if m <= 0:
        return np.empty(0), np.zeros(0, bool)
    net = sorting_network(k)
    repl, bad = np.empty(m), np.empty(m, bool)
    pool = [np.empty(_CHUNK) for _ in range(k + 2)]
    devs = [np.empty(_CHUNK) for _ in range(2 * h)]
    for s in range(0, m, _CHUNK):
        e = min(m, s + _CHUNK)
        n = e - s
        free = [b[:n] for b in pool]
        centre = x[s + h:e + h]
        if circular:
            slots = []
            for j in range(k):
                buf = free.pop()
                if j == h:
                    buf.fill(0.0)
                else:
                    np.subtract(x[s + j:e + j], centre, out=buf)
                    buf += 180.0
                    np.mod(buf, 360.0, out=buf)
                    buf -= 180.0
                slots.append(buf)
            owned = [True] * k
        else:
            slots = [x[s + j:e + j] for j in range(k)]
            owned = [False] * k
        for i, j in net:
            a, b = slots[i], slots[j]
            lo = free.pop()
            np.minimum(a, b, out=lo)
            if owned[j]:
                np.maximum(a, b, out=b)
                hi = b
            else:
                hi = free.pop()
                np.maximum(a, b, out=hi)
            if owned[i]:
                free.append(a)
            slots[i], slots[j] = lo, hi
            owned[i] = owned[j] = True
        med = slots[h]
        # MAD = (h+1)-th smallest of {0, med - s[h-q], s[h+q] - med : q = 1..h}, two sorted lists merged:
        # the h-th smallest of lists A, B is min over i of max(A_i, B_{h-i}).
        lo_dev = [np.subtract(med, slots[h - q], out=devs[q - 1][:n]) for q in range(1, h + 1)]
        hi_dev = [np.subtract(slots[h + q], med, out=devs[h + q - 1][:n]) for q in range(1, h + 1)]
        mad = np.minimum(lo_dev[h - 1], hi_dev[h - 1])
        for i in range(1, h):
            np.minimum(mad, np.maximum(lo_dev[i - 1], hi_dev[h - i - 1]), out=mad)
        dev = np.abs(med) if circular else np.abs(centre - med)
        np.greater(dev, np.maximum(mad * scale, floor), out=bad[s:e])
        repl[s:e] = wrap180(centre + med) if circular else med
    return repl, bad
