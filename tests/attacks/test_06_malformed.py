"""Attack 6: malformed, truncated, oversized frames and random bytes get a clean error result.

The secure world never crashes, hangs or leaks, and keeps serving a genuine normal world while it
is being fed garbage. The slow test sends at least 100,000 hypothesis-generated inputs (10 per
example, each on a fresh connection).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.tee import handshake
from agent.tee.session import ChainedSession
from support.tee_process import open_session_frame
from tee_sim.abi import frame
from tee_sim.abi.frame import Frame, Kind
from tee_sim.abi.ids import CMD_PARAMS, Cmd, Origin, TeecResult


def _exchange(path, data: bytes, timeout: float = 5.0) -> list[Frame]:
    """Send bytes on a fresh connection, half-close, collect every answer until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    splitter = frame.StreamSplitter()
    items = splitter.feed(buf)
    assert all(isinstance(x, bytes) for x in items), "the secure world sent bytes that are not frames"
    assert splitter.pending == 0
    return [frame.decode(x) for x in items]


def _recrc(raw: bytearray) -> bytes:
    raw[36:40] = b"\0\0\0\0"
    raw[36:40] = struct.pack("<I", zlib.crc32(bytes(raw[40:]), zlib.crc32(bytes(raw[:40]))))
    return bytes(raw)


def _valid_sign(session: int = 1) -> bytes:
    return frame.encode(Frame(Kind.INVOKE, 5, session, int(Cmd.SIGN), CMD_PARAMS[Cmd.SIGN],
                              (os.urandom(32), frame.Value(0, 0), 64, None)))


def test_handcrafted_bad_frames(tee, paired):
    good = bytearray(_valid_sign())
    cases = {
        "random": os.urandom(300),
        "bad magic": b"\0\0\0\0" + bytes(good[4:]),
        "bad crc": bytes(good[:-1]) + bytes([good[-1] ^ 1]),
        "bad version": _recrc(bytearray(good[:4]) + b"\x07" + good[5:]),
        "reserved set": _recrc(bytearray(good[:6]) + b"\x01\x00" + good[8:]),
        "unknown kind": _recrc(bytearray(good[:5]) + b"\x09" + good[6:]),
        "bad type nibble": _recrc(bytearray(good[:20]) + struct.pack("<I", 0x9) + good[24:]),
        "oversized body_len": _recrc(bytearray(good[:32]) + struct.pack("<I", 0x7FFFFFFF) + good[36:]),
        "memref longer than body": _recrc(bytearray(good[:40]) + struct.pack("<I", 1000) + good[44:]),
        "response as request": _recrc(bytearray(good[:5]) + b"\x82" + good[6:]),
    }
    for name, data in cases.items():
        answers = _exchange(tee.sock, data + open_session_frame(request_id=77))
        assert answers, name
        errors = [a for a in answers if a.request_id != 77]
        assert errors, f"{name}: no error answer"
        for a in errors:
            assert a.result != TeecResult.SUCCESS, name
            assert (a.result, a.origin) in ((TeecResult.BAD_FORMAT, Origin.COMMS),
                                            (TeecResult.ITEM_NOT_FOUND, Origin.TEE)), (name, a)
    assert tee.alive()


def test_truncated_frame_is_dropped_after_a_stall(make_tee, workdir):
    t = make_tee(stall_seconds=0.5)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(t.sock))
        s.sendall(_valid_sign()[:30])  # the cable is pulled mid-frame
        answer = frame.decode(s.recv(65536))
        assert (answer.result, answer.origin) == (TeecResult.BAD_FORMAT, Origin.COMMS)
        s.sendall(open_session_frame(request_id=9))  # the same connection works again
        ok = frame.decode(s.recv(65536))
        assert ok.request_id == 9 and ok.result == TeecResult.SUCCESS


def _genuine_load(tee, home, stop: threading.Event, done: list) -> None:
    with ChainedSession.open(tee.url, home) as s:
        while not stop.is_set():
            handshake.sign_digest(s, os.urandom(32))
            done.append(1)


PER_EXAMPLE = 10  # inputs per hypothesis example, each on its own connection


def _fuzz(tee, home, inputs: int) -> None:
    stop, done = threading.Event(), []
    worker = threading.Thread(target=_genuine_load, args=(tee, home, stop, done), daemon=True)
    worker.start()
    for _ in range(200):  # warm up before measuring memory
        _exchange(tee.sock, os.urandom(64))
    rss0, fds0 = tee.rss_kib(), tee.open_fds()
    valid_header = bytes(bytearray(_valid_sign())[:40])

    one_input = st.one_of(st.binary(max_size=512),
                          st.binary(max_size=200).map(lambda b: valid_header[:36] + b),
                          st.tuples(st.binary(max_size=64), st.binary(max_size=64)).map(
                              lambda t: t[0] + _valid_sign() + t[1]))
    sent = []

    @settings(max_examples=inputs // PER_EXAMPLE, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(one_input, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def one(batch: list[bytes]) -> None:
        for data in batch:
            for a in _exchange(tee.sock, data):
                assert a.is_response
                assert a.result in {int(r) for r in TeecResult}
            sent.append(1)

    one()
    assert len(sent) >= inputs
    stop.set()
    worker.join(30)
    assert tee.alive()
    assert done, "the genuine normal world was not served during the fuzzing"
    time.sleep(0.2)
    assert tee.open_fds() <= fds0 + 2
    assert tee.rss_kib() - rss0 < 20_000, "the secure world grew by more than 20 MB"


def test_random_inputs_against_the_real_process(tee, home, paired):
    _fuzz(tee, home, 2_000)


@pytest.mark.slow
def test_random_inputs_100k(tee, home, paired):
    _fuzz(tee, home, 100_000)
