"""The robot work record, schema version 1: one row per sensor record, in SI-style units, as columns.

A `Table` holds equal-length numpy columns, so cleaning and desensitization run vectorised. Every
row is one record from the sensor link (its `rtype` says which kind); the channels a kind does
not carry are NaN (floats) or the column's `fill` (integers, -1) or None (text). Context that
holds until it changes is carried forward onto every row: `task_id` from TASK_EVENT and
`operator` from OPERATOR records. Batch-wide facts (the device, the schema version, the policy)
live in `Table.meta`, not in columns.

Units (converted from the wire format's integers by `TableBuilder.build`):

    t_ms       int64   Unix time, ms (the MCU's uptime anchored to the agent's clock)
    seq        int64   the link's sequence number (u32)
    rtype      int8    agent.ingest.frames.RecordType
    task_id    int64   current task (-1: none yet)
    event      int16   TASK_EVENT code (-1)
    fault      int32   FAULT code (-1)
    x_m y_m    float64 position in the site frame, m
    heading_deg float64 degrees, [-180, 180)
    lat lon    float64 WGS84 degrees
    battery_v  float64 V;   soc_pct float64 %;   temp_c float64 degrees C
    motor_a    float64 (n, MAX_MOTORS) A, NaN-padded
    ax ay az   float64 m/s^2;   gx gy gz float64 degrees/s
    text       object  NOTE free text (str) or None
    operator   object  operator badge id (str) or None, carried forward
    flags      int16   FLAG_* bits set by cleaning (0 on a fresh row)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import AgentError

SCHEMA_VERSION = 1
MAX_MOTORS = 8


@dataclass(frozen=True)
class Column:
    dtype: str              # numpy dtype name, or "object" for text
    unit: str
    fill: Any               # the value of a row that does not carry this channel
    width: int = 0          # 0: one value per row; else a (n, width) matrix


COLUMNS: dict[str, Column] = {
    "t_ms": Column("int64", "ms since 1970-01-01 UTC", -1),
    "seq": Column("int64", "", -1),
    "rtype": Column("int8", "", -1),
    "task_id": Column("int64", "", -1),
    "event": Column("int16", "", -1),
    "fault": Column("int32", "", -1),
    "x_m": Column("float64", "m", np.nan),
    "y_m": Column("float64", "m", np.nan),
    "heading_deg": Column("float64", "deg", np.nan),
    "lat": Column("float64", "deg", np.nan),
    "lon": Column("float64", "deg", np.nan),
    "battery_v": Column("float64", "V", np.nan),
    "soc_pct": Column("float64", "%", np.nan),
    "temp_c": Column("float64", "degC", np.nan),
    "motor_a": Column("float64", "A", np.nan, MAX_MOTORS),
    "ax": Column("float64", "m/s^2", np.nan),
    "ay": Column("float64", "m/s^2", np.nan),
    "az": Column("float64", "m/s^2", np.nan),
    "gx": Column("float64", "deg/s", np.nan),
    "gy": Column("float64", "deg/s", np.nan),
    "gz": Column("float64", "deg/s", np.nan),
    "text": Column("object", "", None),
    "operator": Column("object", "", None),
    "flags": Column("int16", "", 0),
}

#: flags bits. GAP_BEFORE: records are missing just before this row (a sequence gap on the link, a
#: reboot of the MCU, or a time gap); nothing is interpolated, and windows must not span it.
FLAG_GAP_BEFORE = 1
#: A numeric channel of this row was replaced by its window median (Hampel outlier).
FLAG_REPLACED = 2

#: Numeric channels measured by sensors (cleaning validates and filters these).
SENSOR_CHANNELS = ("x_m", "y_m", "heading_deg", "lat", "lon", "battery_v", "soc_pct", "temp_c",
                   "motor_a", "ax", "ay", "az", "gx", "gy", "gz")
TEXT_COLUMNS = ("text", "operator")


def empty_column(name: str, n: int) -> np.ndarray:
    c = COLUMNS[name]
    shape = (n, c.width) if c.width else (n,)
    return np.full(shape, c.fill, dtype=c.dtype)


@dataclass
class Table:
    """Equal-length columns (every name in COLUMNS) and batch metadata."""

    columns: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(COLUMNS) - set(self.columns)
        extra = set(self.columns) - set(COLUMNS)
        if missing or extra:
            raise ValueError(f"table columns: missing {sorted(missing)}, unknown {sorted(extra)}")
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"table columns of different lengths {sorted(lengths)}")

    @classmethod
    def empty(cls, n: int = 0, meta: dict[str, Any] | None = None) -> "Table":
        return cls({name: empty_column(name, n) for name in COLUMNS}, dict(meta or {}))

    def __len__(self) -> int:
        return len(self.columns["t_ms"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, index: np.ndarray) -> "Table":
        """The rows selected by a boolean mask or an index array, in that order."""
        return Table({k: v[index] for k, v in self.columns.items()}, dict(self.meta))

    def copy(self) -> "Table":
        return Table({k: v.copy() for k, v in self.columns.items()}, dict(self.meta))

    @staticmethod
    def concat(tables: Iterable["Table"]) -> "Table":
        tables = list(tables)
        if not tables:
            return Table.empty()
        return Table({k: np.concatenate([t.columns[k] for t in tables]) for k in COLUMNS}, dict(tables[0].meta))

    def row(self, i: int) -> dict[str, Any]:
        """One row as plain Python values (for display and tests)."""
        out: dict[str, Any] = {}
        for k, v in self.columns.items():
            x = v[i]
            out[k] = x.tolist() if isinstance(x, np.ndarray) else (x.item() if hasattr(x, "item") else x)
        return out


# -- helpers shared by the builder, cleaning and the pipeline (additions; the contract above is unchanged) --

class SchemaError(AgentError):
    """A table whose columns do not have the schema's dtypes or shapes (`column` names the first)."""

    exit_code = 32

    def __init__(self, column: str, detail: str) -> None:
        super().__init__(f"column {column}: {detail}")
        self.column = column


#: The sensor channels each record type carries (rtype values are agent.ingest.frames.RecordType's).
#: MOTORS carries the first n columns of motor_a, n from the frame; the rest stay NaN.
CARRIES: dict[int, tuple[str, ...]] = {
    1: ("x_m", "y_m", "heading_deg"),                     # POSE
    2: ("lat", "lon"),                                    # GPS
    3: ("ax", "ay", "az", "gx", "gy", "gz"),              # IMU
    4: ("motor_a",),                                      # MOTORS
    5: ("battery_v", "soc_pct", "temp_c"),                # BATTERY
}

#: One step of the wire's integer encoding, in the column's unit (mm -> m, cdeg, 1e-7 deg, mV, %, 0.1 degC, mA,
#: mm/s^2, mdeg/s).
RESOLUTION: dict[str, float] = {
    "x_m": 1e-3, "y_m": 1e-3, "heading_deg": 1e-2, "lat": 1e-7, "lon": 1e-7, "battery_v": 1e-3, "soc_pct": 1.0,
    "temp_c": 0.1, "motor_a": 1e-3, "ax": 1e-3, "ay": 1e-3, "az": 1e-3, "gx": 1e-3, "gy": 1e-3, "gz": 1e-3,
}


def check_types(table: Table) -> None:
    """Raise SchemaError unless every column has its schema dtype and shape."""
    for name, c in COLUMNS.items():
        v = table.columns[name]
        if not isinstance(v, np.ndarray) or v.dtype != np.dtype(c.dtype):
            raise SchemaError(name, f"dtype {getattr(v, 'dtype', type(v).__name__)}, expected {c.dtype}")
        if v.ndim != (2 if c.width else 1) or (c.width and v.shape[1] != c.width):
            raise SchemaError(name, f"shape {v.shape}, expected (n{f', {c.width}' if c.width else ''})")


def table_to_jsonable(table: Table) -> dict[str, Any]:
    """A JSON-ready form of a (small) table: per column only the values that differ from its fill.

    Floats are written with repr precision (json round-trips them exactly); meta is not included.
    """
    out: dict[str, Any] = {"n": len(table), "columns": {}}
    for name, c in COLUMNS.items():
        v = table.columns[name]
        if c.dtype == "object":
            idx = [i for i, x in enumerate(v) if x is not None]
            vals = [v[i] for i in idx]
        elif c.width:
            present = ~np.isnan(v)
            idx = np.flatnonzero(present.any(axis=1)).tolist()
            vals = [[None if np.isnan(x) else float(x) for x in v[i]] for i in idx]
        elif c.dtype == "float64":
            idx = np.flatnonzero(~np.isnan(v)).tolist()
            vals = v[idx].tolist()
        else:
            idx = np.flatnonzero(v != c.fill).tolist()
            vals = v[idx].tolist()
        if idx:
            out["columns"][name] = [idx, vals]
    return out


def table_from_jsonable(data: dict[str, Any]) -> Table:
    """The inverse of table_to_jsonable. Raises SchemaError on a malformed document."""
    try:
        n = int(data["n"])
        t = Table.empty(n)
        for name, (idx, vals) in data["columns"].items():
            col = t.columns[name]  # KeyError for an unknown column
            if COLUMNS[name].width:
                col[idx] = np.array([[np.nan if x is None else x for x in row] for row in vals], dtype=float)
            elif COLUMNS[name].dtype == "object":
                for i, x in zip(idx, vals):
                    col[i] = x
            else:
                col[idx] = vals
        return t
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SchemaError("*", f"bad table document: {e!r}") from None
