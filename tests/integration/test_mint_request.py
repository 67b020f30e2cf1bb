"""`aitn identity mint-request` / `verify-mint` end to end: a real secure world signs the EIP-712 digest
after its challenge; eth-account (independent) recovers the device address from what the CLI printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from agent.identity import eip712, mint
from agent.tee import handshake
from agent.tee.session import ChainedSession
from agent.utility.capacity import fixed_nano_wu, probe
from conftest import ROOT, tee_status

OWNER = "0x52908400098527886E0F7030069857D2E4169EE7"
CONTRACT = "0x8ba1f109551bD432803012645Ac136ddd64DBA72"


def verify_stdin(data: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "identity", "verify-mint", "-", *args], input=data,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_mint_request_recovers_with_eth_account_and_verifies(tee, home, paired, cli, workdir):
    address = json.loads(cli("identity", "show", "--json", home=home, tee=tee).stdout)["address"]
    t0 = int(time.time())
    out = cli("identity", "mint-request", "--owner", OWNER.lower(), "--chain-id", "56", "--json", home=home, tee=tee)
    obj = json.loads(out.stdout)
    assert set(obj) == {"typed_data", "signature", "metadata"}
    td = obj["typed_data"]
    assert set(td) == {"types", "primaryType", "domain", "message"} and td["primaryType"] == "DeviceMint"
    assert td["types"]["DeviceMint"] == [
        {"name": "device", "type": "address"}, {"name": "owner", "type": "address"},
        {"name": "board", "type": "string"}, {"name": "fixedUtility", "type": "uint256"},
        {"name": "nonce", "type": "uint256"}, {"name": "deadline", "type": "uint256"}]
    # No --contract: no verifyingContract in the domain, nor in its type.
    assert td["domain"] == {"name": "AITN Device", "version": "1", "chainId": 56}
    assert [m["name"] for m in td["types"]["EIP712Domain"]] == ["name", "version", "chainId"]
    msg = td["message"]
    assert msg["device"] == address and msg["owner"] == OWNER  # checksummed whatever case was given
    assert msg["board"] == "unknown" and msg["nonce"] == 0
    assert msg["fixedUtility"] == fixed_nano_wu(probe(None)) > 0
    assert t0 + 7 * 86400 <= msg["deadline"] <= int(time.time()) + 7 * 86400
    sig = bytes.fromhex(obj["signature"].removeprefix("0x"))
    assert obj["signature"].startswith("0x") and len(sig) == 65 and sig[64] in (27, 28)

    signable = encode_typed_data(full_message=td)
    assert Account.recover_message(signable, signature=obj["signature"]) == address
    assert bytes(_hash_eip191_message(signable)) == eip712.digest(td)
    # Signed by the secure world through its challenge (one handshake), not elsewhere.
    assert tee_status(tee.url)["counters"]["signatures"] == 1

    md = obj["metadata"]
    assert md["name"] == f"AITN device {address[:10]}" and md["description"]
    assert md["properties"] == {"device": address, "chain_id": 56}
    traits = {a["trait_type"]: a["value"] for a in md["attributes"]}
    assert list(traits) == ["board", "soc", "cpu", "cpu_cores", "cpu_max_mhz", "ram_mb", "gpu", "npu",
                            "fixed_utility"]
    assert traits["fixed_utility"] == msg["fixedUtility"] and traits["board"] == "unknown"

    f = workdir / "req.json"
    f.write_text(out.stdout)
    res = cli("identity", "verify-mint", str(f))
    assert res.stdout.strip() == address
    res = json.loads(cli("identity", "verify-mint", str(f), "--json").stdout)
    assert res["address"] == address and res["chain_id"] == 56 and res["expired"] is False
    assert res["digest"] == "0x" + eip712.digest(td).hex()
    piped = verify_stdin(out.stdout)
    assert piped.returncode == 0 and piped.stdout.strip() == address


def test_board_contract_nonce_deadline_and_out_file(tee, home, paired, cli, workdir):
    deadline = int(time.time()) + 3600
    out_file = workdir / "mint" / "req.json"
    out_file.parent.mkdir()
    res = subprocess.run([sys.executable, "-m", "agent", "--board", "rpi4b", "--home", str(home), "--tee", tee.url,
                          "identity", "mint-request", "--owner", OWNER, "--contract", CONTRACT, "--nonce", "3",
                          "--deadline", str(deadline), "--out", str(out_file)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "chain 97 (BNB Smart Chain testnet)" in res.stdout and f"contract: {CONTRACT}" in res.stdout
    assert f"written to {out_file}" in res.stdout and "board rpi4b" in res.stdout
    obj = json.loads(out_file.read_text())
    assert not list(out_file.parent.glob("*.tmp"))
    td = obj["typed_data"]
    assert td["domain"] == {"name": "AITN Device", "version": "1", "chainId": 97, "verifyingContract": CONTRACT}
    assert td["types"]["EIP712Domain"][-1] == {"name": "verifyingContract", "type": "address"}
    assert td["message"]["nonce"] == 3 and td["message"]["deadline"] == deadline
    assert td["message"]["board"] == "rpi4b"
    traits = {a["trait_type"]: a["value"] for a in obj["metadata"]["attributes"]}
    assert traits["soc"] == "BCM2711" and traits["cpu"] == "Cortex-A72" and traits["board"] == "rpi4b"
    address = Account.recover_message(encode_typed_data(full_message=td), signature=obj["signature"])
    assert address == td["message"]["device"] == obj["metadata"]["properties"]["device"]
    assert cli("identity", "verify-mint", str(out_file)).stdout.strip() == address


def test_an_expired_request_is_refused_unless_allowed(tee, home, paired, cli, workdir):
    # Signed by the real secure world with a deadline already past (the CLI itself refuses to make one).
    now = int(time.time())
    req = mint.MintRequest(device=paired.address, owner=bytes.fromhex(OWNER[2:]), board="rpi5",
                           fixed_utility=1, nonce=0, deadline=now - 60, chain_id=97)
    with ChainedSession.open(tee.url, home) as s:
        td, _, sig = mint.sign_request(req, lambda d: handshake.sign_digest(s, d).signature)
    f = workdir / "old.json"
    f.write_text(json.dumps({"typed_data": td, "signature": "0x" + sig.hex()}))
    res = cli("identity", "verify-mint", str(f), check=False)
    assert res.returncode == 88 and res.stderr.startswith("aitn: error: message.deadline: ")
    assert "has passed" in res.stderr and res.stderr.count("\n") == 1
    res = cli("identity", "verify-mint", str(f), "--allow-expired", "--json")
    assert json.loads(res.stdout)["expired"] is True

    res = cli("identity", "mint-request", "--owner", OWNER, "--deadline", str(now - 60), home=home, tee=tee,
              check=False)
    assert res.returncode == 88 and "message.deadline" in res.stderr
    assert tee_status(tee.url)["counters"]["signatures"] == 1  # refused before asking the secure world


@pytest.mark.parametrize("args, message", [
    (("--owner", "0x1234"), "argument --owner"),
    (("--owner", OWNER.lower()[:-1] + "A"), "EIP-55 checksum"),
    (("--owner", OWNER, "--chain-id", "1"), "invalid choice"),
    (("--owner", OWNER, "--nonce", "-1"), "outside uint256"),
])
def test_bad_arguments_exit_2(cli, args, message):
    res = cli("identity", "mint-request", *args, check=False)
    assert res.returncode == 2 and message in res.stderr


def test_zero_owner_is_refused_before_signing(tee, home, paired, cli):
    res = cli("identity", "mint-request", "--owner", "0x" + "00" * 20, home=home, tee=tee, check=False)
    assert res.returncode == 88 and "message.owner: the zero address" in res.stderr
    assert tee_status(tee.url)["counters"]["signatures"] == 0


def test_verify_mint_on_a_missing_or_garbage_file(cli, workdir):
    res = cli("identity", "verify-mint", str(workdir / "nope.json"), check=False)
    assert res.returncode == 1 and "No such file" in res.stderr
    res = verify_stdin("{not json")
    assert res.returncode == 88 and res.stderr.startswith("aitn: error: -: not JSON")
    res = verify_stdin(" " * (mint.MAX_REQUEST_BYTES + 1))
    assert res.returncode == 88 and "larger than" in res.stderr
