"""The released batch's bytes: a Table in a deterministic, self-describing binary layout.

    batch   = MAGIC (8 bytes "AITNBAT1") | header_len u32 LE | header (UTF-8 JSON) | column data
    header  = {"schema": 1, "rows": n, "meta": {...}, "columns": [{"name", "dtype", "shape", "offset", "size"}]}

Numeric columns are their little-endian array bytes (C order), at `offset` from the start of the
column data; text columns are a UTF-8 JSON array of strings and nulls. The header is canonical
JSON (sorted keys, no spaces), so the same Table always gives the same bytes, hence the same CID
once stored. This is what leaves the device: the datasets store compresses it (zstd) and slices it
into a UnixFS DAG.

Decoding is strict: a wrong magic, header, dtype, shape or size raises BatchFormatError saying
which column and what was wrong.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from ..errors import IntegrityError
from .schema import COLUMNS, SCHEMA_VERSION, Table

MAGIC = b"AITNBAT1"
_LEN = struct.Struct("<I")
MAX_HEADER = 1 << 20


class BatchFormatError(IntegrityError):
    """Bytes that are not a well-formed batch of this schema."""


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode(table: Table) -> bytes:
    blobs: list[bytes] = []
    cols = []
    offset = 0
    for name, spec in COLUMNS.items():
        arr = table.columns[name]
        if spec.dtype == "object":
            blob = _canonical([None if v is None else str(v) for v in arr.tolist()])
        else:
            blob = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype).newbyteorder("<")).tobytes()
        cols.append({"name": name, "dtype": spec.dtype, "shape": list(arr.shape), "offset": offset, "size": len(blob)})
        blobs.append(blob)
        offset += len(blob)
    header = _canonical({"schema": SCHEMA_VERSION, "rows": len(table), "meta": table.meta, "columns": cols})
    return b"".join([MAGIC, _LEN.pack(len(header)), header, *blobs])


def decode(data: bytes) -> Table:
    if len(data) < len(MAGIC) + _LEN.size or data[:len(MAGIC)] != MAGIC:
        raise BatchFormatError("not a batch: bad magic (expected AITNBAT1)")
    (hlen,) = _LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if hlen > MAX_HEADER or start + hlen > len(data):
        raise BatchFormatError(f"header length {hlen} does not fit a {len(data)}-byte batch")
    try:
        header = json.loads(data[start:start + hlen])
        rows, meta, cols = header["rows"], header["meta"], header["columns"]
        schema = header["schema"]
    except (ValueError, KeyError, TypeError) as e:
        raise BatchFormatError(f"unreadable header: {e}") from None
    if schema != SCHEMA_VERSION:
        raise BatchFormatError(f"schema version {schema!r}; this agent reads {SCHEMA_VERSION}")
    if not isinstance(rows, int) or rows < 0 or not isinstance(meta, dict) or not isinstance(cols, list):
        raise BatchFormatError("header: rows, meta or columns of the wrong type")
    body = memoryview(data)[start + hlen:]
    names = [c.get("name") if isinstance(c, dict) else None for c in cols]
    if names != list(COLUMNS):
        raise BatchFormatError(f"columns {names} are not the schema's {list(COLUMNS)}")
    out: dict[str, np.ndarray] = {}
    end = 0
    for c in cols:
        name, spec = c["name"], COLUMNS[c["name"]]
        shape = [rows, spec.width] if spec.width else [rows]
        if c.get("dtype") != spec.dtype or c.get("shape") != shape:
            raise BatchFormatError(f"column {name}: dtype {c.get('dtype')} shape {c.get('shape')}, "
                                   f"expected {spec.dtype} {shape}")
        off, size = c.get("offset"), c.get("size")
        if off != end or not isinstance(size, int) or size < 0 or off + size > len(body):
            raise BatchFormatError(f"column {name}: offset {off} size {size} outside the {len(body)}-byte body")
        blob = bytes(body[off:off + size])
        end = off + size
        if spec.dtype == "object":
            try:
                values = json.loads(blob)
            except ValueError as e:
                raise BatchFormatError(f"column {name}: {e}") from None
            if (not isinstance(values, list) or len(values) != rows
                    or not all(v is None or isinstance(v, str) for v in values)):
                raise BatchFormatError(f"column {name}: expected {rows} strings or nulls")
            arr = np.empty(rows, dtype=object)
            arr[:] = values
        else:
            dt = np.dtype(spec.dtype).newbyteorder("<")
            if size != rows * (spec.width or 1) * dt.itemsize:
                raise BatchFormatError(f"column {name}: {size} bytes for {rows} rows of {spec.dtype}")
            arr = np.frombuffer(blob, dtype=dt).astype(spec.dtype).reshape(shape)
        out[name] = arr
    if end != len(body):
        raise BatchFormatError(f"{len(body) - end} bytes after the last column")
    return Table(out, meta)
