"""Desensitize a Table under a Policy: what leaves this function is what may leave the robot.

Order: (1) rows inside a privacy zone, or with no known position, are suppressed, judged on the
exact positions; (2) every field gets its rule (no rule: dropped to its fill value); (3) the batch
meta keeps only the policy ref, the pseudonymized device and the schema version.

Position of a row: rows that carry no position (IMU, motors, notes...) take the last fix of an
earlier row (forward fill), separately for lat/lon and x_m/y_m, so what the robot recorded at the
owner's home is suppressed with the fixes that put it there. A row flagged GAP_BEFORE restarts the
fill (the robot may have moved while records were lost), and a fix older than max_fix_age_s is no
fix. A row with no known position in a frame that has zones is suppressed unless the policy says
``unknown_position = "keep"``. Tables are taken to be in record order.

Pseudonyms are keyed HMACs computed by the injected ``pseudonymize(domain, values)`` (in
production the secure world's PSEUDONYM command; the key never exists here), one call per domain
and batch for the columns, per distinct value for text. The domain separates fields (DOMAINS), so
the same string as an operator badge and as an email gives unrelated pseudonyms.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from tee_sim.abi.ids import MAX_PSEUDONYM_INPUT

from ..records.schema import COLUMNS, FLAG_GAP_BEFORE, SCHEMA_VERSION, Table, empty_column
from . import geo
from .errors import PseudonymError
from .policy import TERM_ENTITIES, Policy, ZonePolicy
from .redact import Operator, Redactor, render_pseudonym

Pseudonymize = Callable[[int, list[bytes]], list[bytes]]

#: The pseudonym domain of each field and text entity: the one table of these numbers. Never
#: renumber one: its pseudonyms would change, and released data would stop linking.
DOMAINS: dict[str, int] = {
    "device": 1, "operator": 2, "task_id": 3,
    "EMAIL_ADDRESS": 16, "PHONE_NUMBER": 17, "IP_ADDRESS": 18, "MAC_ADDRESS": 19, "PERSON": 20,
    "GEO_COORDINATE": 21,
}
#: Batch meta that passes through (everything else is dropped and reported).
META_PASS = ("schema", "schema_version")
#: Marks a value too long for the secure world's input limit, sent as its SHA-256 instead.
_LONG = b"\xffaitn/sha256:"


@dataclass
class DesensitizeReport:
    """What one call did. ``to_json`` holds numbers only, so reports of many batches can be summed."""

    policy: str
    rows_in: int = 0
    rows_out: int = 0
    suppressed_zone: int = 0
    suppressed_unknown_position: int = 0
    rows_in_zone: dict[str, int] = field(default_factory=dict)        # per zone name (a row may be in two)
    dropped_values: dict[str, int] = field(default_factory=dict)      # per field: values removed from kept rows
    unruled: dict[str, int] = field(default_factory=dict)             # fields dropped for lack of a rule
    entities: dict[str, int] = field(default_factory=dict)            # redacted in text, per entity type
    pseudonyms: int = 0                                               # distinct values sent to pseudonymize
    redaction_fallbacks: int = 0
    meta_dropped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["policy"]
        return d


class _Pseudonyms:
    """The call's cache of pseudonyms, in front of the injected function."""

    def __init__(self, fn: Pseudonymize) -> None:
        self.fn = fn
        self.cache: dict[tuple[int, bytes], bytes] = {}

    @staticmethod
    def encode(value: Any) -> bytes:
        if isinstance(value, bytes):
            b = value
        elif isinstance(value, (int, np.integer)):
            b = struct.pack(">q", int(value))
        else:
            b = str(value).encode("utf-8")
        return b if len(b) <= MAX_PSEUDONYM_INPUT else _LONG + hashlib.sha256(b).digest()

    def macs(self, domain: int, values: list[Any]) -> list[bytes]:
        keys = [self.encode(v) for v in values]
        todo = sorted({k for k in keys if (domain, k) not in self.cache})
        if todo:
            got = self.fn(domain, todo)
            if (not isinstance(got, list) or len(got) != len(todo)
                    or not all(isinstance(m, bytes) and len(m) == 32 for m in got)):
                raise PseudonymError(f"pseudonymize(domain {domain}) did not return one 32-byte HMAC per value")
            self.cache.update({(domain, k): m for k, m in zip(todo, got)})
        return [self.cache[(domain, k)] for k in keys]

    @property
    def computed(self) -> int:
        return len(self.cache)


def _runs(arr: np.ndarray) -> np.ndarray:
    """Index of the first row of each run of equal values (carried-forward columns are long runs)."""
    change = np.ones(len(arr), dtype=bool)
    change[1:] = arr[1:] != arr[:-1]
    return np.flatnonzero(change)


def _distinct(arr: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """(distinct values, index of each row's value); per run, not per row, and no Python loop per run."""
    n = len(arr)
    if n == 0:
        return [], np.zeros(0, dtype=np.intp)
    starts = _runs(arr)
    if arr.dtype != object:
        values, run_codes = np.unique(arr[starts], return_inverse=True)
        values = values.tolist()
    else:
        run_values = arr[starts].tolist()
        values = list(dict.fromkeys(run_values))
        index = {v: i for i, v in enumerate(values)}
        run_codes = np.fromiter(map(index.__getitem__, run_values), dtype=np.intp, count=len(run_values))
    return values, np.repeat(run_codes, np.diff(np.append(starts, n)))


# -- positions and zones ---------------------------------------------------------------------------

def _last_fix(valid: np.ndarray, gap: np.ndarray, t_ms: np.ndarray, max_age_ms: int) -> np.ndarray:
    """Index of each row's last fix (its own included), or -1 when none is usable."""
    i = np.arange(len(valid))
    last = np.maximum.accumulate(np.where(valid, i, -1)) if len(valid) else i
    last_gap = np.maximum.accumulate(np.where(gap, i, -1)) if len(valid) else i
    last = np.where(last < last_gap, -1, last)
    if max_age_ms > 0:
        t_fix = t_ms[np.maximum(last, 0)]
        stale = (t_ms < 0) | (t_fix < 0) | (t_ms - t_fix > max_age_ms)
        last = np.where(stale, -1, last)
    return last


def suppression(table: Table, zp: ZonePolicy) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(rows in a zone, rows with no known position where a zone needs one, rows per zone)."""
    n = len(table)
    in_zone = np.zeros(n, dtype=bool)
    known = np.ones(n, dtype=bool)
    per_zone: dict[str, int] = {}
    gap = (table["flags"] & FLAG_GAP_BEFORE) != 0
    max_age = int(round(zp.max_fix_age_s * 1000))
    for site, cols in ((False, ("lat", "lon")), (True, ("x_m", "y_m"))):
        zones = [z for z in zp.zones if geo.is_site_zone(z) == site]
        if not zones:
            continue
        a, b = table[cols[0]], table[cols[1]]
        valid = np.isfinite(a) & np.isfinite(b)
        last = _last_fix(valid, gap, table["t_ms"], max_age)
        has = last >= 0
        known &= has
        fa, fb = a[valid], b[valid]
        nan = np.full(len(fa), np.nan)
        for z in zones:
            at_fix = np.zeros(n, dtype=bool)  # only fixes are tested; other rows look theirs up
            at_fix[valid] = geo.zone_mask(z, nan, nan, fa, fb) if site else geo.zone_mask(z, fa, fb, nan, nan)
            rows = has & at_fix[np.maximum(last, 0)]
            per_zone[z.name] = int(rows.sum())
            in_zone |= rows
    return in_zone, ~known & ~in_zone, per_zone


# -- fields ----------------------------------------------------------------------------------------

def _dropped_count(name: str, col: np.ndarray) -> int:
    spec = COLUMNS[name]
    if spec.dtype == "object":
        return int(np.count_nonzero(np.not_equal(col, None)))
    if spec.dtype == "float64":
        return int(np.count_nonzero(~np.isnan(col)))
    return int(np.count_nonzero(col != spec.fill))


def _redactor(table: Table, policy: Policy, ps: _Pseudonyms) -> Redactor:
    ops = dict(policy.redaction.operators)
    terms: dict[str, list[str]] = {}
    for entity, fld in TERM_ENTITIES.items():
        if fld == "device":
            dev = table.meta.get("device")
            terms[entity] = [dev] if isinstance(dev, str) else []
        else:
            ops_col = table["operator"]
            terms[entity] = [v for v in dict.fromkeys(ops_col[_runs(ops_col)].tolist()) if isinstance(v, str)]
        # An identifier in text gets the same pseudonym as in its column, if that is pseudonymized.
        ops.setdefault(entity, Operator("hash" if policy.rule(fld).op == "pseudonymize" else "replace"))

    def hasher(entity: str, key: str) -> str:
        return render_pseudonym(ps.macs(DOMAINS[TERM_ENTITIES.get(entity, entity)], [key])[0])

    return Redactor(policy.redaction.names, name_parts=policy.redaction.name_parts, terms=terms,
                    operators=ops, hasher=hasher)


def desensitize(table: Table, policy: Policy, pseudonymize: Pseudonymize) -> tuple[Table, DesensitizeReport]:
    """The released form of ``table`` under ``policy``, and what was done. The input is not modified.

    Raises PseudonymError if ``pseudonymize`` answers malformed HMACs."""
    rep = DesensitizeReport(policy.ref, rows_in=len(table))
    ps = _Pseudonyms(pseudonymize)
    in_zone, unknown, rep.rows_in_zone = suppression(table, policy.zones)
    suppress = in_zone | (unknown if policy.zones.unknown_position == "suppress" else False)
    rep.suppressed_zone = int(in_zone.sum())
    rep.suppressed_unknown_position = int((suppress & ~in_zone).sum())
    keep = ~suppress
    everything = bool(keep.all())
    n_out = int(keep.sum())
    rep.rows_out = n_out

    def kept(name: str) -> np.ndarray:
        return table[name].copy() if everything else table[name][keep]

    out: dict[str, np.ndarray] = {}

    def drop(name: str) -> None:
        out[name] = empty_column(name, n_out)
        if (v := _dropped_count(name, kept(name))):
            rep.dropped_values[name] = v
        if name in policy.unruled:
            rep.unruled[name] = 1

    for a, b, cell in (("lat", "lon", geo.geohash_centre), ("x_m", "y_m", None)):
        rule = policy.rule(a)  # policy.py gives both columns of a pair the same rule
        if rule.op == "drop":
            drop(a)
            drop(b)
        elif cell is not None:
            out[a], out[b] = cell(kept(a), kept(b), rule.geohash)
        else:
            out[a], out[b] = geo.snap_grid(kept(a), rule.grid_m), geo.snap_grid(kept(b), rule.grid_m)

    for name, spec in COLUMNS.items():
        rule = policy.rule(name)
        if name in out:
            continue
        if rule.op == "drop":
            drop(name)
        elif rule.op == "keep":
            out[name] = kept(name)
        elif rule.op == "coarsen":  # t_ms
            step = max(1, int(round(rule.seconds * 1000)))
            t = kept(name)
            out[name] = np.where(t >= 0, t // step * step, t)
        elif rule.op == "generalize" and spec.dtype == "float64":
            out[name] = geo.snap_step(kept(name), rule.step)
        elif rule.op == "pseudonymize" and name == "task_id":
            values, idx = _distinct(kept(name))
            real = [v for v in values if v >= 0]
            macs = dict(zip(real, ps.macs(DOMAINS["task_id"], real)))
            # First 8 bytes, top bit cleared: a non-negative int64, so -1 still means "no task".
            mapped = np.array([int.from_bytes(macs[v][:8], "big") & (2 ** 63 - 1) if v >= 0 else v
                               for v in values], dtype=np.int64)
            out[name] = mapped[idx]
        elif rule.op == "pseudonymize":  # operator
            values, idx = _distinct(kept(name))
            real = [v for v in values if v is not None]
            macs = dict(zip(real, ps.macs(DOMAINS[name], real)))
            mapped = np.empty(len(values), dtype=object)
            mapped[:] = [render_pseudonym(macs[v]) if v is not None else None for v in values]
            out[name] = mapped[idx]
        elif rule.op == "redact":  # text
            values, idx = _distinct(kept(name))
            red = _redactor(table, policy, ps)
            mapped = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):
                if v is not None:
                    r = red.redact(v if isinstance(v, str) else str(v))
                    mapped[i] = r.text
                    rep.redaction_fallbacks += r.fallback
                    for e, c in r.counts.items():
                        rep.entities[e] = rep.entities.get(e, 0) + c
            out[name] = mapped[idx]
        else:  # policy.py refuses every other combination
            raise AssertionError(f"rule {rule} for {name} passed policy validation")

    if policy.rule("flags").op == "keep" and not everything:
        # Suppressed rows are records missing from the released stream: say so, as for a link gap.
        prev_suppressed = np.concatenate(([False], suppress[:-1]))
        out["flags"] |= np.where(prev_suppressed[keep], FLAG_GAP_BEFORE, 0).astype(out["flags"].dtype)

    meta: dict[str, Any] = {"policy": policy.ref, "schema_version": SCHEMA_VERSION}
    for k, v in table.meta.items():
        if k in META_PASS:
            meta[k] = v
        elif k == "device" and policy.rule("device").op == "pseudonymize":
            meta["device"] = render_pseudonym(ps.macs(DOMAINS["device"], [v])[0])
        elif k == "device":
            rep.dropped_values["device"] = 1
            if "device" in policy.unruled:
                rep.unruled["device"] = 1
        elif k != "policy":
            rep.meta_dropped[k] = 1
    rep.pseudonyms = ps.computed
    return Table({k: out[k] for k in COLUMNS}, meta), rep
