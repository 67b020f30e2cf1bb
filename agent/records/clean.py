"""Cleaning record Tables, batch after batch of one link, with every dropped or changed value counted by reason.

Steps, in this order (a row dropped by one step is counted there only):
  1 type         rtype not a RecordType -> dropped `type:rtype`; seq not a u32 -> `type:seq`. A column whose
                 dtype or shape is not the schema's raises SchemaError (the caller's bug, not the data's).
  2 duplicate    the same seq within the last `dedup_window` rows of the same MCU boot -> `duplicate`.
                 A boot ("epoch") ends at a row with FLAG_GAP_BEFORE whose seq is behind the previous row's
                 (signed difference mod 2**32 < 0): the decoder reports a Restart exactly then, and on a UART
                 (no reordering, no retransmission) only a reboot sends a seq backwards. An unflagged row that
                 goes back to a recent seq is a duplicate. Limit: a re-sent old frame that reaches us flagged
                 (the decoder calls it a Restart) opens an epoch and is kept; dropping a reboot's first
                 records would be the worse mistake.
  3 range:t_ms   t_ms outside [t_min_ms, t_max_ms], or more than `future_ms` after `now_ms` when given.
  4 late         in arrival order, a row whose t_ms is below the largest t_ms at least reorder_window + 1
                 rows earlier would have to move back more than reorder_window places -> `late`. Others are
                 stably sorted into place (ties keep arrival order).
  5 range:<ch>   a value outside its physical range (board limits; lat [-90, 90], lon [-180, 180], soc
                 [0, 100]; x/y/heading finite) or non-finite in a channel its record carries is set to NaN,
                 counted in `changed`; a row left with no valid sensor value is dropped, counted under its
                 first bad channel. Headings outside [-180, 180) are wrapped: changed `unit:heading_deg`.
  6 hampel:<ch>  per channel, over that channel's own series (its record type's rows with a finite value),
                 within a segment: |x - median| > max(k * 1.4826 * MAD, min_dev) over the 2h+1 window ->
                 replaced by the median, FLAG_REPLACED. Windows never span a segment edge, so the first and
                 last h samples of a segment are not tested. min_dev (default 1.5 wire steps) keeps one step
                 of quantisation jitter from being an "outlier" where MAD is 0. heading_deg is circular: its
                 window is taken relative to the centre, wrapped into [-180, 180). motor_a[j] is one channel
                 per motor. Defaults h = 5, k = 5: on Gaussian noise alone h = 3, k = 3 replaces about
                 4.8 % of samples (a 7-sample MAD is itself noisy) and h = 5, k = 5 about 0.5 %, while a
                 one-sample spike of many sigma is still replaced.
  7 gap          never interpolated. A sensor stream's (record type's) segment ends where its time step
                 exceeds its gap_ms, or where a row flagged FLAG_GAP_BEFORE by the builder (a link gap)
                 lies before its next row; that next row gets FLAG_GAP_BEFORE, counted changed `gap`. The
                 flag of a dropped row moves to the next kept row (not counted: it is the same gap).

Units are converted once, by TableBuilder; cleaning only wraps stray headings (step 5).

Batches. The pipeline calls clean() on successive batches of one link and keeps only the CleanState. Output
is exactly the same however the stream is cut into batches: clean() emits the longest time-sorted prefix
that later rows can no longer change, and holds the rest in `state.pending`: rows a later row could still
pass (t_ms above the largest t_ms but for the last reorder_window + 1 rows: at most that many rows), and
rows from the earliest sample still waiting for its right half-window (h more samples of its stream, unless
the stream has been silent for its gap_ms, which ends the segment). So the emitted rows of successive
batches are in time order, and no later row can be older than what was emitted (the "watermark").
`final=True` flushes at the end of the link. Per batch rows_in == rows_out + sum(dropped) + held, held
being the change in rows waiting in the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..ingest.frames import SEQ_MOD, RecordType
from .clean_state import _I64_MIN, STREAMS, CleanReport, CleanState
from .hampel import hampel_windows, wrap180
from .schema import (CARRIES, FLAG_GAP_BEFORE, FLAG_REPLACED, MAX_MOTORS, RESOLUTION, Table,
                     check_types)

if TYPE_CHECKING:   # only the type: the cleaning core does not load the config module
    from ..config import Limits

MAD_SCALE = 1.4826
_HALF = SEQ_MOD // 2
_EPOCH = 1 << 40          # dedup key = epoch * _EPOCH + seq unwrapped within the epoch + _EPOCH // 2
_RTYPE_MIN, _RTYPE_MAX = min(RecordType), max(RecordType)
_FLOAT_MAX = float(np.finfo(np.float64).max)


def _default_min_dev() -> dict[str, float]:
    return {ch: 1.5 * step for ch, step in RESOLUTION.items()}


def _default_gap_by_type() -> dict[int, int]:
    # 1 Hz streams (the firmware sends BATTERY once a second) need more than the default 1 s.
    return {int(RecordType.GPS): 5000, int(RecordType.BATTERY): 5000}


@dataclass(frozen=True)
class CleanConfig:
    """Cleaning parameters; `limits` come from the board file's [limits]."""

    limits: Limits
    reorder_window: int = 32            # rows a row may move back when sorted by time
    dedup_window: int = 1024            # rows within which a repeated seq is a duplicate
    hampel_half_window: int = 5         # h: windows of 2h + 1 samples (step 6 above says why 5)
    hampel_k: float = 5.0               # threshold in scaled MADs (k * 1.4826 * MAD)
    hampel_min_dev: Mapping[str, float] = field(default_factory=_default_min_dev)  # per channel, its unit
    gap_ms: int = 1000                  # a stream's time step above this is a gap
    gap_ms_by_type: Mapping[int, int] = field(default_factory=_default_gap_by_type)
    t_min_ms: int = 1_577_836_800_000   # 2020-01-01: earlier is a Pi clock that never got NTP
    t_max_ms: int = 4_102_444_800_000   # 2100-01-01
    future_ms: int = 60_000             # with clean(now_ms=...): later than now + this is implausible

    def __post_init__(self) -> None:
        for name in ("reorder_window", "dedup_window", "gap_ms"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"clean.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.hampel_half_window, int) or self.hampel_half_window < 1:
            raise ConfigError(f"clean.hampel_half_window must be an int >= 1, got {self.hampel_half_window!r}")
        if not self.hampel_k > 0:
            raise ConfigError(f"clean.hampel_k must be > 0, got {self.hampel_k!r}")
        if not self.t_min_ms < self.t_max_ms:
            raise ConfigError(f"clean.t_min_ms {self.t_min_ms} is not below t_max_ms {self.t_max_ms}")

    def gap_for(self, rtype: int) -> int:
        return int(self.gap_ms_by_type.get(rtype, self.gap_ms))

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Inclusive valid range per sensor channel (NaN and +-inf fall outside every one)."""
        lim = self.limits
        r = {"x_m": (-_FLOAT_MAX, _FLOAT_MAX), "y_m": (-_FLOAT_MAX, _FLOAT_MAX),
             "heading_deg": (-_FLOAT_MAX, _FLOAT_MAX), "lat": (-90.0, 90.0), "lon": (-180.0, 180.0),
             "battery_v": (lim.battery_v.min, lim.battery_v.max), "soc_pct": (0.0, 100.0),
             "temp_c": (lim.temperature_c.min, lim.temperature_c.max),
             "motor_a": (lim.motor_current_a.min, lim.motor_current_a.max)}
        r.update({a: (lim.accel_ms2.min, lim.accel_ms2.max) for a in ("ax", "ay", "az")})
        r.update({g: (lim.gyro_dps.min, lim.gyro_dps.max) for g in ("gx", "gy", "gz")})
        return r


# -- clean --------------------------------------------------------------------------------------------------

def clean(table: Table, cfg: CleanConfig, state: CleanState, *, now_ms: int | None = None,
          final: bool = False) -> tuple[Table, CleanReport]:
    """Clean the next batch of one link (see the module docstring). Updates `state` in place.

    Returns the emitted rows (sorted by t_ms) and this call's counts. `now_ms`: Unix ms now, to reject
    timestamps in the future. `final`: the link ended; emit everything held. Raises SchemaError.
    """
    check_types(table)
    rep = CleanReport(rows_in=len(table))
    keep = _arrival_filters(table, cfg, state, rep, now_ms)
    nan_edits, heading = _value_ranges(table, keep, cfg, rep)
    gap_in = _move_gap_flags(table, keep, state)

    # The working set: held rows (sorted, input flags) then this batch's kept rows (arrival order).
    w = Table.concat([state.pending, table.take(keep) if not keep.all() else table])
    w.meta = dict(table.meta)
    if nan_edits or heading is not None:
        new_at = np.cumsum(keep) - 1 + len(state.pending)      # batch row -> working row
        for name, col, rows in nan_edits:
            (w.columns[name][:, col] if col is not None else w.columns[name])[new_at[rows]] = np.nan
        if heading is not None:
            w.columns["heading_deg"][new_at[heading[0]]] = heading[1]
    if gap_in is not None:
        w.columns["flags"][len(state.pending):] |= gap_in
    t = w.columns["t_ms"]
    if len(t) > 1 and not (t[1:] >= t[:-1]).all():
        w = w.take(np.argsort(t, kind="stable"))
        t = w.columns["t_ms"]

    safe = _settled_time(state, cfg.reorder_window)
    k_r = len(w) if final else int(np.searchsorted(t, safe, side="right"))
    cg = np.cumsum((w.columns["flags"] & FLAG_GAP_BEFORE) != 0)    # link-gap rows up to each row
    k_e, plans = _plan_streams(w, cg, k_r, safe, final, cfg, state)
    out_flags = w.columns["flags"][:k_e].copy()
    _apply(w, cg, plans, k_e, out_flags, cfg, state, rep)

    out = Table({k: v[:k_e] for k, v in w.columns.items()}, w.meta)
    out.columns["flags"] = out_flags
    held = len(w) - k_e
    rep.rows_out, rep.held = k_e, held - len(state.pending)
    state.pending = Table({k: v[k_e:].copy() for k, v in w.columns.items()})
    return out, rep


def _drop(keep: np.ndarray, bad: np.ndarray, reason: str, rep: CleanReport) -> None:
    bad &= keep
    rep.drop(reason, np.count_nonzero(bad))
    keep &= ~bad


def _arrival_filters(table: Table, cfg: CleanConfig, st: CleanState, rep: CleanReport,
                     now_ms: int | None) -> np.ndarray:
    """Steps 1-4, decided row by row in arrival order; returns the rows kept."""
    rtype, seq, t = table["rtype"], table["seq"], table["t_ms"]
    keep = np.ones(len(table), bool)
    _drop(keep, (rtype < _RTYPE_MIN) | (rtype > _RTYPE_MAX), "type:rtype", rep)
    _drop(keep, (seq < 0) | (seq >= SEQ_MOD), "type:seq", rep)
    idx = np.flatnonzero(keep)
    gap = (table["flags"][idx] & FLAG_GAP_BEFORE) != 0
    dup = np.zeros(len(table), bool)
    dup[idx[_duplicates(seq[idx], gap, st, cfg.dedup_window)]] = True
    _drop(keep, dup, "duplicate", rep)
    t_max = cfg.t_max_ms if now_ms is None else min(cfg.t_max_ms, now_ms + cfg.future_ms)
    _drop(keep, (t < cfg.t_min_ms) | (t > t_max), "range:t_ms", rep)
    idx = np.flatnonzero(keep)
    late = np.zeros(len(table), bool)
    late[idx[_late(t[idx], st, cfg.reorder_window)]] = True
    _drop(keep, late, "late", rep)
    return keep


def _duplicates(seq: np.ndarray, gap: np.ndarray, st: CleanState, window: int) -> np.ndarray:
    """Positions (into seq) of duplicates; updates the dedup part of `st`."""
    n = len(seq)
    if n == 0:
        return np.empty(0, np.int64)
    prev = np.empty(n, np.int64)
    prev[1:] = seq[:-1]
    prev[0] = seq[0] if st.last_seq is None else st.last_seq
    d = (seq - prev).astype(np.int32).astype(np.int64)   # signed step mod 2**32 (the cast wraps)
    if window and (d[st.last_seq is None:] > 0).all() and _dedup_in_order(d, seq, st, window):
        return np.empty(0, np.int64)
    boundary = gap & (d < 0)                              # a reboot: flagged, and the seq went back
    c = st.u_last + np.cumsum(d)
    if boundary.any():
        epoch = st.epoch + np.cumsum(boundary)
        at = np.maximum.accumulate(np.where(boundary, np.arange(n), -1))
        start = np.where(at >= 0, c[np.maximum(at, 0)], st.u_start)
    else:
        epoch, start = np.full(n, st.epoch), np.full(n, st.u_start)
    key = epoch * _EPOCH + (c - start) + _EPOCH // 2
    st.last_seq, st.u_last, st.epoch, st.u_start = int(seq[-1]), int(c[-1]), int(epoch[-1]), int(start[-1])

    r = len(st.recent_keys)
    keys = np.concatenate([st.recent_keys, key])
    run_max = np.maximum.accumulate(np.concatenate([[st.key_prefix_max], keys]))
    # A key above every key before it is new; only the others can repeat a recent one. New keys are strictly
    # increasing, so a repeat of one is found by binary search; repeats among the others by sorting them.
    cand = keys <= run_max[:-1]
    if window == 0:
        st.recent_keys, st.key_prefix_max = np.empty(0, np.int64), int(run_max[-1])
        return np.empty(0, np.int64)
    st.recent_keys = keys[-window:].copy()
    st.key_prefix_max = int(run_max[len(keys) - len(st.recent_keys)])
    mine = np.flatnonzero(cand[r:]) + r
    if len(mine) == 0:
        return np.empty(0, np.int64)
    fresh = np.flatnonzero(~cand)
    prev_fresh = np.full(len(mine), -1, np.int64)
    if len(fresh):
        at = np.minimum(np.searchsorted(keys[fresh], keys[mine]), len(fresh) - 1)
        prev_fresh = np.where(keys[fresh[at]] == keys[mine], fresh[at], -1)
    allc = np.flatnonzero(cand)
    order = np.lexsort((allc, keys[allc]))
    sk, sp = keys[allc][order], allc[order]
    same = np.concatenate([[False], sk[1:] == sk[:-1]])
    prev_sorted = np.where(same, np.concatenate([[-1], sp[:-1]]), -1)
    prev_cand = np.empty(len(allc), np.int64)
    prev_cand[order] = prev_sorted
    prev_c = prev_cand[np.searchsorted(allc, mine)]
    last = np.maximum(prev_fresh, prev_c)
    is_dup = (last >= 0) & (mine - last <= window)
    return mine[is_dup] - r


def _dedup_in_order(d: np.ndarray, seq: np.ndarray, st: CleanState, window: int) -> bool:
    """The usual batch, seqs only going up: if its first key is above every earlier key, none can repeat.
    Then update the state from the batch's tail alone and return True; else change nothing, return False."""
    n = len(d)
    base = st.epoch * _EPOCH - st.u_start + _EPOCH // 2        # key = base + c within the epoch
    old_max = max(st.key_prefix_max, int(st.recent_keys.max()) if len(st.recent_keys) else _I64_MIN)
    if base + st.u_last + int(d[0]) <= old_max:
        return False
    tail = min(n, window)
    c_last = st.u_last + int(d.sum())
    c_before = c_last - int(d[n - tail:].sum())                # c of the last row before the tail
    merged = np.concatenate([st.recent_keys, base + c_before + np.cumsum(d[n - tail:])])
    drop = len(merged) - window
    prefix = st.key_prefix_max
    if n > tail:
        prefix = max(prefix, base + c_before)
    if drop > 0:
        prefix = max(prefix, int(merged[:drop].max()))
    st.recent_keys, st.key_prefix_max = merged[max(drop, 0):].copy(), prefix
    st.last_seq, st.u_last = int(seq[-1]), c_last
    return True


def _late(t: np.ndarray, st: CleanState, window: int) -> np.ndarray:
    """Positions (into t) of late rows; updates the late part of `st`."""
    r, n = len(st.recent_t), len(t)
    if n and (t[1:] >= t[:-1]).all() and t[0] >= max(st.t_prefix_max, st.recent_t.max() if r else _I64_MIN):
        # in order and after everything before: nothing is late; keep the last window + 1
        tail = np.concatenate([st.recent_t, t[max(0, n - window - 1):]])
        drop = len(tail) - (window + 1)
        prefix = st.t_prefix_max if n <= window + 1 else int(t[n - window - 2])
        if drop > 0:
            prefix = max(prefix, int(tail[:drop].max()))
        st.recent_t, st.t_prefix_max = tail[max(drop, 0):].copy(), prefix
        return np.empty(0, np.int64)
    tt = np.concatenate([st.recent_t, t])
    run_max = np.maximum.accumulate(np.concatenate([[st.t_prefix_max], tt]))   # [m]: max before tt[m]
    ref = np.arange(r, len(tt)) - window                                       # max over tt[: i - window]
    late = t < np.where(ref >= 0, run_max[np.maximum(ref, 0)], st.t_prefix_max)
    keep = min(len(tt), window + 1)
    st.recent_t = tt[len(tt) - keep:].copy()
    st.t_prefix_max = int(run_max[len(tt) - keep])
    return np.flatnonzero(late)


def _settled_time(st: CleanState, window: int) -> int:
    """Every later row that is not late has t_ms >= this: rows at or below it are in their final place."""
    if len(st.recent_t) < window + 1:
        return _I64_MIN
    return max(st.t_prefix_max, int(st.recent_t[0]))


def _channels(rtype: int) -> list[tuple[str, str, int | None]]:
    """(report name, column, motor index) of each channel a stream carries."""
    if rtype == RecordType.MOTORS:
        return [(f"motor_a[{j}]", "motor_a", j) for j in range(MAX_MOTORS)]
    return [(c, c, None) for c in CARRIES[rtype]]


def _value_ranges(table: Table, keep: np.ndarray, cfg: CleanConfig, rep: CleanReport
                  ) -> tuple[list[tuple[str, int | None, np.ndarray]], tuple[np.ndarray, np.ndarray] | None]:
    """Step 5 on the kept rows: drops rows left with nothing valid (clears them in `keep`); returns the values
    to set to NaN as (column, motor index, batch rows), and the wrapped headings (batch rows, values)."""
    ranges = cfg.ranges()
    rtype = table["rtype"]
    edits: list[tuple[str, int | None, np.ndarray]] = []
    heading = None
    for r in STREAMS:
        rows = np.flatnonzero(keep & (rtype == r))
        if not len(rows):
            continue
        values = [(name, col, j, table[col][:, j][rows] if j is not None else table[col][rows])
                  for name, col, j in _channels(r)]
        # Fast path: min and max in range (NaN would fail the comparisons) -> nothing to check per value.
        suspect = False
        for name, col, j, x in values:
            lo, hi = ranges[col]
            mn, mx = (np.fmin.reduce(x), np.fmax.reduce(x)) if j is not None else (x.min(), x.max())
            if j is not None and np.isnan(mn):
                continue                                     # an absent motor: all padding
            if not (lo <= mn and mx <= hi):
                suspect = True
            if col == "heading_deg" and (mn < -180.0 or mx >= 180.0):
                suspect = True
        if not suspect:
            continue
        bad_cols: list[tuple[str, str, int | None, np.ndarray]] = []
        n_valid = np.zeros(len(rows), np.int64)
        for name, col, j, x in values:
            lo, hi = ranges[col]
            ok = (x >= lo) & (x <= hi)
            bad = ~ok & ~np.isnan(x) if j is not None else ~ok     # NaN motor columns are padding
            n_valid += ok
            if bad.any():
                bad_cols.append((name, col, j, bad))
            if col == "heading_deg":
                off = ok & ((x < -180.0) | (x >= 180.0))
                if off.any():
                    heading = (rows[off], wrap180(x[off]))
        any_bad = np.zeros(len(rows), bool)
        gone = np.zeros(len(rows), bool)
        for name, col, j, bad in bad_cols:
            first = bad & ~any_bad & (n_valid == 0)
            rep.drop(f"range:{name}", np.count_nonzero(first))
            gone |= first
            any_bad |= bad
        for name, col, j, bad in bad_cols:
            rep.change(f"range:{name}", np.count_nonzero(bad & ~gone))
            edits.append((col, j, rows[bad & ~gone]))
        keep[rows[gone]] = False
        if heading is not None and r == RecordType.POSE:
            still = keep[heading[0]]
            heading = (heading[0][still], heading[1][still])
            rep.change("unit:heading_deg", len(heading[0]))
    return edits, heading


def _move_gap_flags(table: Table, keep: np.ndarray, st: CleanState) -> np.ndarray | None:
    """FLAG_GAP_BEFORE bits to add to the kept rows (None: none): each dropped flagged row's flag goes to the
    next kept row in arrival order, in this batch or the next."""
    lost = ~keep & ((table["flags"] & FLAG_GAP_BEFORE) != 0)
    if not lost.any() and not st.carry_gap:
        return None
    kept = np.flatnonzero(keep)
    out = np.zeros(len(kept), np.int16)
    cs = np.cumsum(lost)
    upto = cs[kept]
    before = np.concatenate([[0], upto[:-1]])
    moved = upto > before
    if len(kept):
        moved[0] |= st.carry_gap
        st.carry_gap = bool(cs[-1] > upto[-1])
    else:
        st.carry_gap = st.carry_gap or bool(len(cs) and cs[-1] > 0)
    out[moved] = FLAG_GAP_BEFORE
    return out


@dataclass
class _Channel:
    name: str                 # report name: the column, or motor_a[j]
    col: str
    j: int | None
    series: np.ndarray        # left context, then the settled finite values, in time order
    segs: np.ndarray          # segment id of each (0: the context's segment)
    rows: np.ndarray          # working row of each value after the context
    nctx: int


@dataclass
class _Stream:
    rtype: int
    rows: np.ndarray          # settled working rows of this stream
    mark: np.ndarray          # which of them get FLAG_GAP_BEFORE
    seg: np.ndarray
    channels: list[_Channel]


def _plan_streams(w: Table, cg_all: np.ndarray, k_r: int, safe: int, final: bool, cfg: CleanConfig,
                  st: CleanState) -> tuple[int, list[_Stream]]:
    """Segments and Hampel series of each stream over the settled rows [0, k_r); and how many rows can be
    emitted: up to the first sample whose right half-window is not known yet."""
    h = cfg.hampel_half_window
    rtype, t = w["rtype"], w["t_ms"]
    k_e = k_r
    plans = []
    for r in STREAMS:
        ss = st.streams[r]
        p = np.flatnonzero(rtype == r)
        p = p[:np.searchsorted(p, k_r)]
        m = len(p)
        if not m:
            continue
        ts, gap_ms = t[p], cfg.gap_for(r)
        has_prev = np.ones(m, bool)
        has_prev[0] = ss.last_t is not None
        dt = np.diff(ts, prepend=ts[0] if ss.last_t is None else ss.last_t)
        cg = cg_all[p]
        link = np.empty(m, bool)
        link[0] = ss.gap_since or cg[0] > 0
        link[1:] = cg[1:] > cg[:-1]
        mark = has_prev & ((dt > gap_ms) | link)
        seg = np.cumsum(~has_prev | mark)
        ended = final or safe - int(ts[-1]) > gap_ms or bool(cg_all[k_r - 1] > cg[-1])
        chans = []
        seg_pad = np.concatenate([np.zeros(h, np.int64), seg])    # the context's segment (0) before seg
        for name, col, j in _channels(r):
            ctx = ss.context.get(name, [])[-h:]     # [-h:]: h may have shrunk since the state was saved
            nctx = len(ctx)
            series, segs, rows = np.empty(nctx + m), seg_pad[h - nctx:], p
            series[:nctx] = ctx
            np.take(w[col][:, j] if j is not None else w[col], p, out=series[nctx:])
            if not np.isfinite(series.sum()):      # one pass in the common case: a finite sum, all finite
                fin = np.isfinite(series)
                fin[:nctx] = True
                series, segs, rows = series[fin], segs[fin], p[fin[nctx:]]
                if len(series) == nctx:
                    continue
            if not ended:
                u0 = max(len(series) - h, int(np.searchsorted(segs, segs[-1])), nctx)
                if u0 < len(series):
                    k_e = min(k_e, int(rows[u0 - nctx]))
            chans.append(_Channel(name, col, j, series, segs, rows, nctx))
        plans.append(_Stream(r, p, mark, seg, chans))
    return k_e, plans


def _apply(w: Table, cg_all: np.ndarray, plans: list[_Stream], k_e: int, out_flags: np.ndarray,
           cfg: CleanConfig, st: CleanState, rep: CleanReport) -> None:
    """Gap marks and Hampel replacements on the emitted rows [0, k_e); then each stream's state."""
    h = cfg.hampel_half_window
    scale = cfg.hampel_k * MAD_SCALE
    t = w["t_ms"]
    for plan in plans:
        ss = st.streams[plan.rtype]
        e = int(np.searchsorted(plan.rows, k_e))
        marked = plan.rows[:e][plan.mark[:e]]
        rep.change("gap", np.count_nonzero((out_flags[marked] & FLAG_GAP_BEFORE) == 0))
        out_flags[marked] |= FLAG_GAP_BEFORE
        for ch in plan.channels:
            ne = int(np.searchsorted(ch.rows, k_e))
            lo, hi = max(h, ch.nctx), min(len(ch.series) - h, ch.nctx + ne)
            if hi > lo:
                stop = hi + h
                repl, bad = hampel_windows(ch.series[lo - h:stop], h, scale,
                                           float(cfg.hampel_min_dev.get(ch.col, 0.0)), ch.col == "heading_deg")
                segs = ch.segs
                if segs[lo - h] != segs[stop - 1]:
                    bad &= segs[lo - h:hi - h] == segs[lo + h:hi + h]
                hit = np.flatnonzero(bad)
                if len(hit):
                    rows = ch.rows[hit + lo - ch.nctx]
                    if ch.j is None:
                        w.columns[ch.col][rows] = repl[hit]
                    else:
                        w.columns[ch.col][rows, ch.j] = repl[hit]
                    out_flags[rows] |= FLAG_REPLACED
                    rep.change(f"hampel:{ch.name}", len(hit))
        if e:
            last = int(plan.rows[e - 1])
            ss.last_t, ss.gap_since = int(t[last]), bool(cg_all[k_e - 1] > cg_all[last])
            last_seg = plan.seg[e - 1]
            seen = set()
            for ch in plan.channels:
                upto = ch.nctx + int(np.searchsorted(ch.rows, k_e))
                first = max(int(np.searchsorted(ch.segs[:upto], last_seg)), upto - h)
                ss.context[ch.name] = ch.series[first:upto].tolist()
                seen.add(ch.name)
            if last_seg != 0:
                for name, _, _ in _channels(plan.rtype):
                    if name not in seen:
                        ss.context.pop(name, None)
        elif k_e:
            ss.gap_since = ss.gap_since or bool(cg_all[k_e - 1] > 0)
    for r in STREAMS:   # streams with no settled row at all still see the emitted link gaps
        if k_e and not any(p.rtype == r for p in plans):
            st.streams[r].gap_since = st.streams[r].gap_since or bool(cg_all[k_e - 1] > 0)
