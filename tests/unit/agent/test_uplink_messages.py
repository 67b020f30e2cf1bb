"""The uplink's CBOR messages: schema checks name the field, encoding is canonical, digests bind."""

from __future__ import annotations

import cbor2
import pytest

from agent.uplink import messages
from agent.uplink.errors import MessageError

DEV = bytes(range(20))


def _manifest() -> dict:
    return {"cids": ["bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"], "records": 10, "bytes": 2048,
            "policy": "default@sha256:00"}


def _item(**over) -> dict:
    env = {"v": 1, "kind": "manifest", "dev": DEV, "seq": 7, "t": 1700000000.5,
           "body": messages.encode("manifest", _manifest()), "sig": b"\x01" * 65}
    env.update(over)
    return env


def test_round_trip_and_canonical_bytes():
    m = _manifest()
    a = messages.encode("manifest", m)
    b = messages.encode("manifest", dict(reversed(list(m.items()))))  # key order does not matter
    assert a == b
    assert messages.decode("manifest", a) == m


@pytest.mark.parametrize("change, where, reason", [
    ({"seq": 0}, "item.seq", "must be in"),
    ({"seq": -1}, "item.seq", "must be in"),
    ({"seq": "7"}, "item.seq", "must be int"),
    ({"dev": b"\x00" * 19}, "item.dev", "must be 20 bytes"),
    ({"kind": "firmware"}, "item.kind", "must be one of"),
    ({"t": float("nan")}, "item.t", "finite"),
    ({"sig": None}, "item.sig", "must be bytes"),
    ({"extra": 1}, "item", "unknown key(s) extra"),
])
def test_schema_violations_name_the_field(change, where, reason):
    with pytest.raises(MessageError) as e:
        messages.decode("item", cbor2.dumps(_item(**change)))
    assert e.value.where == where and reason in e.value.reason


def test_missing_field_and_bool_is_not_int():
    env = _item()
    del env["seq"]
    with pytest.raises(MessageError, match="item.seq: missing"):
        messages.decode("item", cbor2.dumps(env))
    with pytest.raises(MessageError, match="item.seq: must be int, got bool"):
        messages.decode("item", cbor2.dumps(_item(seq=True)))


@pytest.mark.parametrize("data", [b"", b"\xff", b"\x9f\x01", b"\xa1\x61", cbor2.dumps([1, 2]), cbor2.dumps("x")])
def test_malformed_cbor_is_a_message_error(data):
    with pytest.raises(MessageError):
        messages.decode("item", data)


def test_parse_item_checks_the_body_against_its_kind():
    bad_body = messages.encode("manifest", _manifest())[:-3]
    with pytest.raises(MessageError, match="manifest"):
        messages.parse_item(cbor2.dumps(_item(body=bad_body)))
    with pytest.raises(MessageError, match="this resource takes 'update'"):
        messages.parse_item(cbor2.dumps(_item()), "update")
    env, payload = messages.parse_item(cbor2.dumps(_item()), "manifest")
    assert env["seq"] == 7 and payload == _manifest()


def test_item_digest_binds_every_field():
    body = messages.encode("manifest", _manifest())
    base = messages.item_digest("manifest", DEV, 7, 1.0, body)
    assert len(base) == 32
    others = {messages.item_digest("report", DEV, 7, 1.0, body), messages.item_digest("manifest", b"\x01" * 20, 7, 1.0, body),
              messages.item_digest("manifest", DEV, 8, 1.0, body), messages.item_digest("manifest", DEV, 7, 1.5, body),
              messages.item_digest("manifest", DEV, 7, 1.0, body + b"\x00")}
    assert base not in others and len(others) == 5


def test_update_payload_schema():
    upd = {"round": 1, "model": "activity", "base": b"\x00" * 32, "width": 1.0, "samples": 10, "format": "aitq",
           "zstd": True, "data": b"x"}
    assert messages.decode("update", messages.encode("update", upd)) == upd
    with pytest.raises(MessageError, match="update.format"):
        messages.encode("update", dict(upd, format="npz"))
    with pytest.raises(MessageError, match="update.samples"):
        messages.encode("update", dict(upd, samples=0))
    with pytest.raises(MessageError, match="update.zstd: must be bool"):
        messages.encode("update", dict(upd, zstd=1))
