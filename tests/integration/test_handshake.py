"""Two real processes: the secure world on a Unix socket, the normal world as library and as `aitn` CLI."""

from __future__ import annotations

import json
import os

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys import keys as eth_keys

from agent.errors import KeyExists, TeeAccessDenied, TeeBadParameters, TeeNotFound
from agent.tee import handshake
from agent.tee.client import TeeClient
from agent.tee.pairing import pair
from agent.tee.session import ChainedSession
from tee_sim.abi import digests
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, Cmd, Origin, TeecResult


def test_cli_pair_identity_sign_verify_with_eth_account(tee, home, cli):
    paired = json.loads(cli("tee", "pair", "--json", home=home, tee=tee).stdout)
    assert paired["created_key"] is True and len(paired["pairing_id"]) == 32
    ident = json.loads(cli("identity", "show", "--json", home=home, tee=tee).stdout)
    assert set(ident) == {"address", "public_key"}
    assert ident["address"].startswith("0x") and ident["address"] == paired["address"]
    # The public key and the address agree, by an independent implementation.
    pub = bytes.fromhex(ident["public_key"][2:])
    assert eth_keys.PublicKey(pub[1:]).to_checksum_address() == ident["address"]

    out = json.loads(cli("sign", "--message", "battery swap done at dock 3", "--json", home=home, tee=tee).stdout)
    assert {"address", "message", "signature"} <= set(out)
    assert out["message"] == "battery swap done at dock 3"
    sig = bytes.fromhex(out["signature"][2:])
    assert len(sig) == 65 and sig[64] in (27, 28)
    recovered = Account.recover_message(encode_defunct(text=out["message"]), signature=out["signature"])
    assert recovered == ident["address"] == out["address"]


def test_sign_digest_and_batch_verify(tee, home, paired):
    address = digests.checksum_address(paired.address)
    with ChainedSession.open(tee.url, home) as s:
        for _ in range(5):
            d = os.urandom(32)
            signed = handshake.sign_digest(s, d)
            assert signed.digest == d
            assert Account._recover_hash(d, signature=signed.signature) == address
        items = [os.urandom(32) for _ in range(100)]
        batch = handshake.sign_batch(s, items)
    root = batch.root.digest
    assert Account._recover_hash(root, signature=batch.root.signature) == address
    for item, proof in zip(items, batch.proofs):
        assert digests.merkle_verify(item, proof, root)
    assert not digests.merkle_verify(os.urandom(32), batch.proofs[0], root)


def test_chains_agree_and_verify_after_many_handshakes(tee, home, paired, cli):
    with ChainedSession.open(tee.url, home) as s:
        for _ in range(40):
            handshake.sign_digest(s, os.urandom(32))
        head = s.chain.head.height
    assert head == 40 * 4  # genesis is 0; each handshake is SIGN, CHALLENGE, PROOF, SIGNATURE
    status = json.loads(cli("tee", "status", "--json", home=home, tee=tee).stdout)
    assert status["committed_height"] == head
    assert status["normal_world"]["height"] == head
    assert status["counters"]["signatures"] == 40
    verified = json.loads(cli("chain", "verify", "--json", home=home, tee=tee).stdout)
    assert verified["blocks"] == head + 1
    shown = json.loads(cli("chain", "show", "--tail", "4", "--json", home=home, tee=tee).stdout)
    assert [b["command"] for b in shown["blocks"]] == ["SIGN", "SIGN", "PROOF", "PROOF"]
    assert all(len(b["hash_prefix"]) == 8 for b in shown["blocks"])  # never the whole secret hash


def test_long_chain_crosses_the_ring_and_auto_commits(tee, home, paired):
    """More blocks than the secure world's ring; non-signing exchanges force commits at MAX_TENTATIVE."""
    with ChainedSession.open(tee.url, home) as s:
        for i in range(300):
            s.invoke(Cmd.PSEUDONYM, (b"operator-%d" % (i % 7), Value(1, 0), 32, None))
        for _ in range(260):
            handshake.sign_digest(s, os.urandom(32))
        head = s.chain.head.height
    assert head == 300 * 2 + 260 * 4 > 1024
    tee.restart()  # the secure world rebuilds its view from RPMB and still challenges correctly
    with ChainedSession.open(tee.url, home) as s:
        handshake.sign_digest(s, os.urandom(32))
        assert s.chain.head.height == head + 4


def test_pseudonym_seal_unseal(tee, home, paired):
    with ChainedSession.open(tee.url, home) as s:
        a = s.invoke(Cmd.PSEUDONYM, (b"alice@example.com", Value(7, 0), 32, None)).params[2]
        b = s.invoke(Cmd.PSEUDONYM, (b"alice@example.com", Value(8, 0), 32, None)).params[2]
        blob = s.invoke(Cmd.SEAL, (b"owner wifi psk", 4096, None, None)).params[1]
        plain = s.invoke(Cmd.UNSEAL, (blob, 4096, None, None)).params[1]
    assert len(a) == 32 and a != b
    assert plain == b"owner wifi psk" and b"owner wifi psk" not in blob
    tee.restart()
    with ChainedSession.open(tee.url, home) as s:
        again = s.invoke(Cmd.PSEUDONYM, (b"alice@example.com", Value(7, 0), 32, None)).params[2]
        assert again == a  # stable across restarts: the key lives in the sealed state
        tampered = blob[:-1] + bytes([blob[-1] ^ 1])
        with pytest.raises(Exception) as e:
            s.invoke(Cmd.UNSEAL, (tampered, 4096, None, None))
        assert getattr(e.value, "result", None) == TeecResult.MAC_INVALID


def test_secret_commands_need_a_synced_session(tee, home, paired):
    client = TeeClient.connect(tee.url)
    try:
        sid = client.open_session().id
        for cmd, params in ((Cmd.PSEUDONYM, (b"x", Value(0, 0), 32, None)), (Cmd.SEAL, (b"x", 64, None, None)),
                            (Cmd.SIGN, (bytes(32), Value(0, 0), 64, None)), (Cmd.PROOF, (bytes(32), 65, 32, None))):
            with pytest.raises(TeeAccessDenied) as e:
                client.invoke(sid, cmd, params)
            assert e.value.origin == Origin.TRUSTED_APP
    finally:
        client.close()


def test_ta_checks_types_commands_uuid_and_session_binding(tee, home, paired):
    a, b = TeeClient.connect(tee.url), TeeClient.connect(tee.url)
    try:
        sid = a.open_session().id
        wrong = Frame(Kind.INVOKE, 99, sid, int(Cmd.GET_PUBKEY), CMD_PARAMS[Cmd.SIGN], (bytes(32), Value(), 8, None))
        with pytest.raises(TeeBadParameters):
            _raise(a, wrong)
        with pytest.raises(Exception) as e:
            _raise(a, Frame(Kind.INVOKE, 100, sid, 0x7777, 0, (None,) * 4))
        assert e.value.result == TeecResult.NOT_SUPPORTED
        # A session belongs to the connection that opened it.
        with pytest.raises(TeeNotFound) as e:
            b.invoke(sid, Cmd.STATUS, (None, 4096, None, None))
        assert e.value.origin == Origin.TEE
        # CREATE_KEY never replaces the key.
        with pytest.raises(KeyExists):
            a.invoke(sid, Cmd.CREATE_KEY, (65, None, None, None))
    finally:
        a.close()
        b.close()


def _raise(client, req):
    from agent.tee.client import raise_for_result

    _, _, resp = client.exchange(req)
    raise_for_result("test", resp)


def test_repairing_needs_the_secure_side_to_allow_it(tee, home, paired, cli):
    with pytest.raises(TeeAccessDenied):
        pair(tee.url, home)
    cli_out = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "tee_sim", "allow-repair", "--state", str(tee.state), "--minutes", "1"],
        capture_output=True, text=True, check=True)
    assert "allowed" in cli_out.stdout
    again = pair(tee.url, home)
    assert again.pairing_id != paired.pairing_id and again.address == paired.address
    assert again.archived is not None and again.archived.exists()
    with pytest.raises(TeeAccessDenied):  # the window is used up
        pair(tee.url, home)


def test_trace_prints_frames_and_timing(tee, home, paired, cli):
    out = cli("tee", "handshake", "--trace", home=home, tee=tee).stdout
    for needle in ("NW -> SW", "SW -> NW", "cmd=SIGN", "cmd=PROOF", "challenge nonce=", "hex e00e77a1",
                   "result=SUCCESS", "proof->signature", "handshake ok"):
        assert needle in out
    data = json.loads(cli("tee", "handshake", "--json", home=home, tee=tee).stdout)
    assert [s["step"] for s in data["steps"]] == ["sync", "sign->challenge", "proof", "proof->signature"]
    assert Account._recover_hash(bytes.fromhex(data["digest"][2:]), signature=data["signature"]) == data["address"]


def test_cli_errors_are_one_line_with_typed_exit_codes(workdir, home, cli):
    res = cli("identity", "show", home=home, url=f"unix://{workdir}/nothing.sock", check=False)
    assert res.returncode == 11
    assert res.stderr.startswith("aitn: error: ") and res.stderr.count("\n") == 1
    res = cli("chain", "verify", home=home, url=f"unix://{workdir}/nothing.sock", check=False)
    assert res.returncode == 23 and "aitn tee pair" in res.stderr
