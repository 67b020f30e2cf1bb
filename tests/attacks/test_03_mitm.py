"""Attack 3: a man in the middle that alters what is to be signed gets no signature for anything."""

from __future__ import annotations

import os

import pytest

from agent.errors import ProofRejected
from agent.tee import handshake
from agent.tee.session import ChainedSession
from conftest import tee_status
from support.relay import Relay, retarget
from tee_sim.abi import frame
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd, Purpose, TeecResult


def _run_with(tee, home, workdir, mutate) -> Relay:
    def hook(outbound: bool, raw: bytes) -> bytes:
        f = frame.decode(raw)
        return mutate(outbound, f, raw) or raw

    relay = Relay(workdir / "mitm.sock", tee.sock, hook)
    try:
        with ChainedSession.open(relay.url, home) as s:
            with pytest.raises(ProofRejected):
                handshake.sign_digest(s, os.urandom(32))
    finally:
        relay.close()
    return relay


def _released_signatures(relay: Relay) -> int:
    return sum(1 for outbound, raw in relay.seen if not outbound and frame.decode(raw).command == Cmd.PROOF
               and frame.decode(raw).result == TeecResult.SUCCESS)


@pytest.mark.parametrize("what", ["digest", "purpose", "challenge"])
def test_altered_exchange_is_refused(tee, home, paired, workdir, what):
    evil = os.urandom(32)

    def mutate(outbound, f, raw):
        if what == "digest" and outbound and f.command == Cmd.SIGN and f.kind == frame.Kind.INVOKE:
            return retarget(raw, params={0: evil})
        if what == "purpose" and outbound and f.command == Cmd.SIGN and f.kind == frame.Kind.INVOKE:
            # same 32 bytes, signed as an EIP-191 message instead of a raw digest
            return retarget(raw, params={1: Value(int(Purpose.PERSONAL_MESSAGE), 0)})
        if what == "challenge" and not outbound and f.command == Cmd.SIGN and f.result == 0:
            c = bytearray(f.params[2])
            c[0] ^= 0xFF  # the normal world answers a different nonce
            return retarget(raw, params={2: bytes(c)})
        return None

    relay = _run_with(tee, home, workdir, mutate)
    assert _released_signatures(relay) == 0
    st = tee_status(tee.url)
    assert st["counters"]["signatures"] == 0 and st["counters"]["proof_failures"] == 1
    # The genuine normal world recovers by itself once the middle is gone.
    with ChainedSession.open(tee.url, home) as s:
        d = os.urandom(32)
        assert handshake.sign_digest(s, d).digest == d


def test_replayed_sync_answer_cannot_make_the_normal_world_drop_blocks(tee, home, paired, workdir):
    """A middle posing as the secure world replays an old OPEN_SESSION and SYNC answer."""
    from agent.errors import ChainMismatch
    from agent.tee.chainlog import ChainLog

    recorded: dict[str, bytes] = {}
    mode = {"replay": False}

    def hook(outbound: bool, raw: bytes) -> bytes:
        f = frame.decode(raw)
        if outbound:
            mode["last_request_id"] = f.request_id
            return raw
        kind = f.kind & ~frame.Kind.RESPONSE
        name = "open" if kind == frame.Kind.OPEN_SESSION else ("sync" if f.command == Cmd.SYNC else None)
        if name is None:
            return raw
        if not mode["replay"]:
            recorded.setdefault(name, raw)
            return raw
        return retarget(recorded[name], request_id=mode["last_request_id"])

    relay = Relay(workdir / "mitm.sock", tee.sock, hook)
    try:
        with ChainedSession.open(relay.url, home) as s:
            handshake.sign_digest(s, os.urandom(32))  # records the answers at the old head
        with ChainedSession.open(tee.url, home) as s:
            for _ in range(3):
                handshake.sign_digest(s, os.urandom(32))
            head = s.chain.head.height
        mode["replay"] = True
        with ChainedSession.open(relay.url, home) as s:
            assert s.opened.committed_height < head  # the replayed "secure world" claims an older head
            with pytest.raises(ChainMismatch):
                s.sync()
    finally:
        relay.close()
    with ChainLog.open(home / "chain.log") as chain:
        assert chain.head.height == head  # nothing was dropped
    with ChainedSession.open(tee.url, home) as s:  # and the genuine pairing still works
        handshake.sign_digest(s, os.urandom(32))
