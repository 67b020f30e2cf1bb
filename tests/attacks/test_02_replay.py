"""Attack 2: a recorded proof replayed against a new challenge is refused."""

from __future__ import annotations

import os

import pytest

from agent.errors import ProofRejected
from agent.tee import handshake
from agent.tee.session import ChainedSession
from conftest import tee_status
from support.relay import Relay, retarget
from tee_sim.abi import frame
from tee_sim.abi.ids import Cmd, TeecResult


def _successful_proofs(relay: Relay) -> list[bytes]:
    out = []
    for outbound, raw in relay.seen:
        f = frame.decode(raw)
        if not outbound and f.command == Cmd.PROOF and f.result == TeecResult.SUCCESS and f.params[1]:
            out.append(f.params[1])
    return out


def test_recorded_proof_replayed_is_refused(tee, home, paired, workdir):
    recorded: list[bytes] = []
    replay = {"on": False}

    def hook(outbound: bool, raw: bytes) -> bytes:
        f = frame.decode(raw)
        if outbound and f.command == Cmd.PROOF and f.kind == frame.Kind.INVOKE:
            if replay["on"]:  # swap in the proof recorded from the previous handshake
                return retarget(raw, params={0: recorded[0]})
            recorded.append(f.params[0])
        return raw

    relay = Relay(workdir / "mitm.sock", tee.sock, hook)
    try:
        with ChainedSession.open(relay.url, home) as s:
            first = handshake.sign_digest(s, os.urandom(32))
            replay["on"] = True
            with pytest.raises(ProofRejected):
                handshake.sign_digest(s, first.digest)  # even for the very same digest
    finally:
        relay.close()
    assert _successful_proofs(relay) == [first.signature]
    st = tee_status(tee.url)
    assert st["counters"]["signatures"] == 1 and st["counters"]["proof_failures"] == 1


def test_whole_recorded_handshake_replayed_on_a_new_connection_is_refused(tee, home, paired, workdir):
    relay = Relay(workdir / "rec.sock", tee.sock)
    try:
        with ChainedSession.open(relay.url, home) as s:
            handshake.sign_digest(s, os.urandom(32))
    finally:
        relay.close()
    import socket

    answers = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(tee.sock))
        splitter = frame.StreamSplitter()
        sid = 0
        for outbound, raw in relay.seen:
            if not outbound:
                continue
            sock.sendall(retarget(raw, session=sid) if sid else raw)  # into the new session
            while True:
                got = [x for x in splitter.feed(sock.recv(65536)) if isinstance(x, bytes)]
                if got:
                    answers += [frame.decode(x) for x in got]
                    if answers[-1].kind == frame.Kind.OPEN_SESSION | frame.Kind.RESPONSE:
                        sid = answers[-1].session
                    break
    # OPEN_SESSION works (it is public), but the replayed SYNC, SIGN and PROOF all fail.
    invokes = [a for a in answers if a.kind & ~frame.Kind.RESPONSE == frame.Kind.INVOKE]
    assert invokes and all(a.result != TeecResult.SUCCESS for a in invokes)
    assert tee_status(tee.url)["counters"]["signatures"] == 1
