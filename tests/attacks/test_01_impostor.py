"""Attack 1: an impostor with access to the socket but not to the normal world's chain gets nothing signed."""

from __future__ import annotations

import os
import shutil

import pytest

from agent.errors import ChainMismatch, ProofRejected, TeeAccessDenied, TeeLockedOut
from agent.tee import handshake
from agent.tee.client import TeeClient, raise_for_result
from agent.tee.pairing import pair
from agent.tee.session import ChainedSession
from conftest import tee_status
from tee_sim.abi import block as blk
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd, Origin, TeecResult


def test_unsynced_impostor_cannot_sign(tee, home, paired):
    client = TeeClient.connect(tee.url)
    try:
        sid = client.open_session().id
        with pytest.raises(TeeAccessDenied) as e:
            client.invoke(sid, Cmd.SIGN, (os.urandom(32), Value(0, 0), 64, None))
        assert e.value.origin == Origin.TRUSTED_APP
        with pytest.raises(TeeAccessDenied):
            client.invoke(sid, Cmd.PROOF, (os.urandom(32), 65, 32, None))
    finally:
        client.close()
    assert tee_status(tee.url)["counters"]["signatures"] == 0


def test_guessed_sync_tags_are_refused_and_never_reach_the_key(make_tee, workdir):
    tee = make_tee(lockout_base=0.2)
    home = workdir / "home"
    pair(tee.url, home)
    with ChainedSession.open(tee.url, home) as s:
        handshake.sign_digest(s, os.urandom(32))
        top = s.chain.head.height
    client = TeeClient.connect(tee.url)
    try:
        for claim, expected in ((0, TeecResult.BAD_STATE), (top - 1, TeecResult.MAC_INVALID),
                                (top, TeecResult.MAC_INVALID)):
            opened = client.open_session()
            req = client.request(opened.id, Cmd.SYNC, (Value(claim, 0), os.urandom(48), 64, None))
            _, _, resp = client.exchange(req)
            assert (resp.result, resp.origin) == (expected, Origin.TRUSTED_APP)
            client.close_session(opened.id)
    finally:
        client.close()
    st = tee_status(tee.url)
    assert st["counters"]["signatures"] == 1  # only the genuine one
    assert st["counters"]["sync_failures"] >= 1


def test_a_chain_from_another_device_is_refused(make_tee, workdir):
    genuine, other = make_tee("a", lockout_base=0.2), make_tee("b", lockout_base=0.2)
    home_a, home_b = workdir / "home-a", workdir / "home-b"
    pair(genuine.url, home_a)
    pair(other.url, home_b)
    with ChainedSession.open(other.url, home_b) as s:  # the impostor's chain is as long as it likes
        for _ in range(3):
            handshake.sign_digest(s, os.urandom(32))
    stolen = workdir / "impostor"
    stolen.mkdir()
    shutil.copy(home_b / "chain.log", stolen / "chain.log")
    with ChainedSession.open(genuine.url, stolen) as s:
        with pytest.raises((ChainMismatch, ProofRejected, TeeLockedOut)):
            handshake.sign_digest(s, os.urandom(32))
    assert tee_status(genuine.url)["counters"]["signatures"] == 0
    assert "signed" not in genuine.log.read_text()


def test_impostor_cannot_take_over_the_genuine_session(tee, home, paired):
    with ChainedSession.open(tee.url, home) as genuine:
        handshake.sign_digest(genuine, os.urandom(32))
        impostor = TeeClient.connect(tee.url)
        try:  # reuse the genuine session id from another connection
            req = impostor.request(genuine.opened.id, Cmd.SIGN, (os.urandom(32), Value(0, 0), 64, None))
            _, _, resp = impostor.exchange(req)
            assert (resp.result, resp.origin) == (TeecResult.ITEM_NOT_FOUND, Origin.TEE)
            with pytest.raises(Exception) as e:
                raise_for_result("SIGN", resp)
            assert "ITEM_NOT_FOUND" in str(e.value)
        finally:
            impostor.close()
        handshake.sign_digest(genuine, os.urandom(32))  # the genuine session is untouched
    assert tee_status(tee.url)["counters"]["signatures"] == 2


def test_sync_tag_of_one_session_is_useless_in_another(tee, home, paired):
    """A recorded SYNC tag is bound to the session nonce the secure world chose."""
    with ChainedSession.open(tee.url, home) as s:
        claim = s.chain.head.height
        old_tag = blk.sync_tag(s.chain.hash_at(claim), s.opened.nonce, claim)
    client = TeeClient.connect(tee.url)
    try:
        opened = client.open_session()
        _, _, resp = client.exchange(client.request(opened.id, Cmd.SYNC, (Value(claim, 0), old_tag + bytes(16), 64,
                                                                          None)))
        assert resp.result == TeecResult.MAC_INVALID
    finally:
        client.close()
