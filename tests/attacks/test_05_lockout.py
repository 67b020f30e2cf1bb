"""Attack 5: repeated wrong proofs lock the signer out, and the lockout survives a secure-world restart."""

from __future__ import annotations

import os
import time

import pytest

from agent.errors import ProofRejected, TeeLockedOut
from agent.tee import handshake
from agent.tee.pairing import pair
from agent.tee.session import ChainedSession
from conftest import tee_status
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd
from tee_sim.lockout import FREE_FAILURES


def _wrong_proof(s: ChainedSession) -> None:
    s.invoke(Cmd.SIGN, (os.urandom(32), Value(0, 0), 2048, None))
    s.invoke(Cmd.PROOF, (os.urandom(32), 65, 32, None))


def test_wrong_proofs_lock_out_across_restart(make_tee, workdir):
    base = 3.0
    tee = make_tee(lockout_base=base)
    home = workdir / "home"
    pair(tee.url, home)
    with ChainedSession.open(tee.url, home) as s:
        for _ in range(FREE_FAILURES):
            with pytest.raises(ProofRejected):
                _wrong_proof(s)
        with pytest.raises(TeeLockedOut):  # even a correct handshake is refused now
            handshake.sign_digest(s, os.urandom(32))
    locked_at = time.monotonic()
    tee.restart()
    st = tee_status(tee.url)
    assert st["failures"] == FREE_FAILURES and 0 < st["lockout_seconds"] <= base
    with ChainedSession.open(tee.url, home) as s, pytest.raises(TeeLockedOut):
        handshake.sign_digest(s, os.urandom(32))
    time.sleep(max(0.0, base - (time.monotonic() - locked_at)) + 0.3)
    with ChainedSession.open(tee.url, home) as s:
        handshake.sign_digest(s, os.urandom(32))
    st = tee_status(tee.url)
    assert st["failures"] == 0 and st["counters"]["signatures"] == 1


def test_backoff_doubles(make_tee, workdir):
    tee = make_tee(lockout_base=0.4)
    home = workdir / "home"
    pair(tee.url, home)
    waits = []
    with ChainedSession.open(tee.url, home) as s:
        for n in range(FREE_FAILURES + 2):
            deadline = time.monotonic() + 5
            while True:
                try:
                    _wrong_proof(s)
                except ProofRejected:
                    break
                except TeeLockedOut:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if n >= FREE_FAILURES - 1:
                waits.append(tee_status(tee.url)["lockout_seconds"])
    assert waits[0] <= 0.4 + 1e-6 and waits[1] > 0.4 and waits[2] > waits[1]
