"""The released batch layout: exact round trip, deterministic bytes, strict decoding."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from agent.records import batch
from agent.records.schema import COLUMNS, Table


def _table(n: int, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    t = Table.empty(n, {"device": "p1_00ff", "policy": "default@sha256:ab"})
    t.columns["t_ms"][:] = 1_790_000_000_000 + np.arange(n) * 20
    t.columns["seq"][:] = np.arange(n)
    t.columns["rtype"][:] = rng.integers(1, 10, n)
    t.columns["ax"][:] = rng.normal(size=n)
    t.columns["ax"][::3] = np.nan
    t.columns["motor_a"][:, :2] = rng.normal(size=(n, 2))
    t.columns["text"][::4] = ["note ✓ \"quoted\"\n"] * len(range(0, n, 4))
    t.columns["operator"][1::2] = "p1_abcd"
    return t


def _same(a: Table, b: Table) -> None:
    assert a.meta == b.meta
    for name in COLUMNS:
        x, y = a.columns[name], b.columns[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype == object:
            assert x.tolist() == y.tolist(), name
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_round_trip(n: int) -> None:
    t = _table(n)
    _same(batch.decode(batch.encode(t)), t)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=20)), max_size=30), st.integers(0, 2**31))
def test_round_trip_any_text(texts, seed) -> None:
    t = _table(len(texts), seed)
    t.columns["text"][:] = np.array(texts + [None], dtype=object)[:-1] if texts else t.columns["text"]
    _same(batch.decode(batch.encode(t)), t)


def test_same_table_same_bytes() -> None:
    assert batch.encode(_table(50, 1)) == batch.encode(_table(50, 1))
    assert batch.encode(_table(50, 1)) != batch.encode(_table(50, 2))


def _split(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack_from("<I", data, 8)
    return json.loads(data[12:12 + hlen]), data[12 + hlen:]


def _join(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return b"AITNBAT1" + struct.pack("<I", len(h)) + h + body


@pytest.mark.parametrize("damage, message", [
    (lambda h, b: (h, b + b"x"), "bytes after the last column"),
    (lambda h, b: (h, b[:-1]), "outside"),
    (lambda h, b: (dict(h, schema=2), b), "schema version 2"),
    (lambda h, b: (dict(h, rows=h["rows"] + 1), b), "column t_ms"),
    (lambda h, b: (dict(h, columns=h["columns"][1:]), b), "are not the schema's"),
    (lambda h, b: (dict(h, columns=[dict(c, dtype="float32") if c["name"] == "ax" else c
                                    for c in h["columns"]]), b), "column ax"),
])
def test_damaged_batches_are_refused_with_the_place(damage, message) -> None:
    header, body = _split(batch.encode(_table(10)))
    with pytest.raises(batch.BatchFormatError, match=message):
        batch.decode(_join(*damage(header, body)))


def test_not_a_batch() -> None:
    with pytest.raises(batch.BatchFormatError, match="bad magic"):
        batch.decode(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(batch.BatchFormatError, match="header length"):
        batch.decode(b"AITNBAT1" + struct.pack("<I", 1000) + b"{}")
