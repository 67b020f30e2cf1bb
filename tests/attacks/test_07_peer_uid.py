"""Attack 7: a peer whose uid is not allowed gets TEEC_ERROR_ACCESS_DENIED with origin TEE."""

from __future__ import annotations

import json
import os
import socket

import pytest

from support.tee_process import IS_ROOT, open_session_frame
from tee_sim.abi import frame
from tee_sim.abi.ids import Origin, TeecResult


def _open_session_as(uid: int | None, sock_path) -> dict:
    """OPEN_SESSION from a forked child that first becomes ``uid`` (no exec: no interpreter path needed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            if uid is not None:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(sock_path))
                s.sendall(open_session_frame(request_id=3))
                f = frame.decode(s.recv(65536))
            os.write(w, json.dumps({"uid": os.getuid(), "result": f.result, "origin": f.origin}).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_uid_not_in_allowlist_is_denied(make_tee):
    t = make_tee(allow_uids=[4242])
    answer = _open_session_as(None, t.sock)
    assert (answer["result"], answer["origin"]) == (TeecResult.ACCESS_DENIED, Origin.TEE)
    assert "uid %d is not allowed" % os.getuid() in t.log.read_text()
    assert t.alive()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run a client as another user")
def test_other_user_denied_allowed_user_served(make_tee):
    t = make_tee(allow_uids=[0])
    other = _open_session_as(65534, t.sock)
    assert (other["uid"], other["result"], other["origin"]) == (65534, TeecResult.ACCESS_DENIED, Origin.TEE)
    mine = _open_session_as(None, t.sock)
    assert mine["result"] == TeecResult.SUCCESS
    assert t.alive()
