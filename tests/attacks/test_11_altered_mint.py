"""Altered mint requests: a genuine request, signed by a real secure world, is changed after signing.

Each altered field (owner, board, fixedUtility, nonce, deadline, chainId, device, a verifyingContract
added) makes eth-account recover another address than ``message.device``, and `aitn identity
verify-mint` exit 88 with one line naming the problem. A signature by another key over the same
request, a truncated or malleated signature, inconsistent unsigned metadata and a file with a
duplicated key are refused the same way.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from conftest import ROOT, aitn
from support.tee_process import TeeProcess

OWNER = "0x52908400098527886E0F7030069857D2E4169EE7"
THIEF = "0xDeaDbeefdEAdbeefdEadbEEFdeadbeEFdEaDbeeF"
CONTRACT = "0x8ba1f109551bD432803012645Ac136ddd64DBA72"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture(scope="module")
def genuine():
    """One request signed by a real, paired secure world (chain 56); the secure world is then stopped:
    verify-mint needs nothing but the file."""
    d = Path(tempfile.mkdtemp(prefix="aitn-test-"))
    os.chmod(d, 0o755)  # the secure world may run as another user
    (d / "tee").mkdir()
    home = d / "home"
    home.mkdir()
    tee = TeeProcess(d / "tee").start()
    try:
        aitn("tee", "pair", home=home, tee=tee)
        obj = json.loads(aitn("identity", "mint-request", "--owner", OWNER, "--chain-id", "56", "--json",
                              home=home, tee=tee).stdout)
        address = json.loads(aitn("identity", "show", "--json", home=home, tee=tee).stdout)["address"]
    finally:
        tee.stop()
    yield obj, address
    shutil.rmtree(d, ignore_errors=True)


def verify_mint(obj_or_text, tmp_path: Path) -> subprocess.CompletedProcess:
    f = tmp_path / "req.json"
    f.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text))
    return subprocess.run([sys.executable, "-m", "agent", "identity", "verify-mint", str(f)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def refused(res: subprocess.CompletedProcess, where: str) -> None:
    assert res.returncode == 88, (res.returncode, res.stderr)
    assert res.stdout == "" and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"aitn: error: {where}: "), res.stderr


def recovered(td: dict, signature: str) -> str:
    return Account.recover_message(encode_typed_data(full_message=td), signature=signature)


def test_the_genuine_request_verifies(genuine, tmp_path):
    obj, address = genuine
    assert recovered(obj["typed_data"], obj["signature"]) == address
    res = verify_mint(obj, tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == address


def _add_contract(td: dict) -> None:
    td["types"]["EIP712Domain"].append({"name": "verifyingContract", "type": "address"})
    td["domain"]["verifyingContract"] = CONTRACT


ALTERED = {
    "owner": lambda td: td["message"].update(owner=THIEF),
    "board": lambda td: td["message"].update(board="rpi5"),
    "fixedUtility": lambda td: td["message"].update(fixedUtility=td["message"]["fixedUtility"] * 10),
    "nonce": lambda td: td["message"].update(nonce=1),
    "deadline": lambda td: td["message"].update(deadline=td["message"]["deadline"] + 365 * 86400),
    "chainId": lambda td: td["domain"].update(chainId=97),  # the testnet: a chain the schema allows
    "device": lambda td: td["message"].update(device=THIEF),
    "verifyingContract added": _add_contract,
}


@pytest.mark.parametrize("field", list(ALTERED))
def test_an_altered_field_recovers_another_address_and_is_refused(genuine, tmp_path, field):
    obj, address = genuine
    forged = copy.deepcopy(obj)
    ALTERED[field](forged["typed_data"])
    other = recovered(forged["typed_data"], forged["signature"])
    assert other != forged["typed_data"]["message"]["device"]
    assert other != address or field == "device"
    res = verify_mint(forged, tmp_path)
    refused(res, "signature")
    assert f"recovers {other}, not message.device" in res.stderr


@pytest.mark.parametrize("mutate, where", [
    (lambda td: td["domain"].update(chainId=1), "domain.chainId"),               # Ethereum mainnet: not ours
    (lambda td: td["domain"].update(verifyingContract=CONTRACT), "domain.verifyingContract"),  # not in the type
    (lambda td: td["domain"].update(name="IoTeX ioID"), "domain.name"),
    (lambda td: td["message"].update(owner="0x" + "00" * 20), "message.owner"),
    (lambda td: td["message"].update(owner=THIEF.lower()[:-2]), "message.owner"),
    (lambda td: td["message"].update(fixedUtility=-1), "message.fixedUtility"),
    (lambda td: td["message"].update(deadline="soon"), "message.deadline"),
    (lambda td: td["message"].pop("nonce"), "message.nonce"),
    (lambda td: td["message"].update(referrer=THIEF), "message.referrer"),
    (lambda td: td["types"]["DeviceMint"].reverse(), "types.DeviceMint"),
], ids=["chainId 1", "contract untyped", "domain name", "zero owner", "short owner", "negative utility",
        "deadline text", "nonce removed", "field added", "fields reordered"])
def test_a_schema_violation_names_the_field(genuine, tmp_path, mutate, where):
    forged = copy.deepcopy(genuine[0])
    mutate(forged["typed_data"])
    refused(verify_mint(forged, tmp_path), where)


def test_another_keys_signature_over_the_same_request_is_refused(genuine, tmp_path):
    obj, address = genuine
    impostor = Account.create()
    forged = dict(obj, signature="0x" + bytes(Account.sign_message(
        encode_typed_data(full_message=copy.deepcopy(obj["typed_data"])), impostor.key).signature).hex())
    assert recovered(obj["typed_data"], forged["signature"]) == impostor.address != address
    res = verify_mint(forged, tmp_path)
    refused(res, "signature")
    assert impostor.address in res.stderr


@pytest.mark.parametrize("mangle, reason", [
    (lambda s: s[:-2], "expected 65 bytes"),                 # v dropped
    (lambda s: s[:66], "expected 65 bytes"),                 # r only
    (lambda s: "", "expected 0x-prefixed"),
    (lambda s: s[:-2] + "01", "v is 1"),
    (lambda s: s[:-1] + "z", "not hex"),
], ids=["truncated", "r only", "empty", "v=1", "not hex"])
def test_a_truncated_or_mangled_signature_is_refused(genuine, tmp_path, mangle, reason):
    obj, _ = genuine
    res = verify_mint(dict(obj, signature=mangle(obj["signature"])), tmp_path)
    refused(res, "signature")
    assert reason in res.stderr


def test_a_malleated_signature_is_refused_though_it_recovers_the_device(genuine, tmp_path):
    """(r, n - s, v ^ 1) is the same signature to ecrecover; OpenZeppelin's ECDSA refuses it, so do we."""
    obj, address = genuine
    sig = bytes.fromhex(obj["signature"][2:])
    s = int.from_bytes(sig[32:64], "big")
    malleated = "0x" + (sig[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sig[64]])).hex()
    assert recovered(obj["typed_data"], malleated) == address
    refused(verify_mint(dict(obj, signature=malleated), tmp_path), "signature")


def test_unsigned_metadata_that_disagrees_is_refused(genuine, tmp_path):
    obj, _ = genuine
    forged = copy.deepcopy(obj)
    for a in forged["metadata"]["attributes"]:
        if a["trait_type"] == "fixed_utility":
            a["value"] *= 1000
    refused(verify_mint(forged, tmp_path), "metadata.attributes.fixed_utility")
    forged = copy.deepcopy(obj)
    forged["metadata"]["properties"]["device"] = THIEF
    refused(verify_mint(forged, tmp_path), "metadata.properties.device")


def test_a_duplicated_key_is_refused(genuine, tmp_path):
    """Parsers disagree on which of two equal keys wins: the file must not be read two ways."""
    obj, _ = genuine
    text = json.dumps(obj)
    forged = text[:-1] + ', "signature": "0x' + "11" * 65 + '"}'
    res = verify_mint(forged, tmp_path)
    assert res.returncode == 88 and "duplicate key 'signature'" in res.stderr
