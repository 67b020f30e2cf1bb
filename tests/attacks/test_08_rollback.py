"""Attack 8: a rolled-back sealed state file is detected and refused; the key is never regenerated."""

from __future__ import annotations

import json
import shutil

import pytest

from agent.errors import TeeBadState
from agent.tee.client import TeeClient
from agent.tee.pairing import pair
from conftest import tee_status
from tee_sim.abi.ids import FLAG_STATE_ERROR, Cmd


def test_restored_old_sealed_state_is_refused(make_tee, workdir, cli):
    tee = make_tee()
    tee.stop()
    shutil.copy(tee.state / "sealed.bin", workdir / "sealed.v1")  # before the device key existed
    tee.start()
    home = workdir / "home"
    first = pair(tee.url, home)  # creates the key: sealed state version 2
    tee.stop()
    good = (tee.state / "sealed.bin").read_bytes()
    shutil.copy(workdir / "sealed.v1", tee.state / "sealed.bin")
    tee.start()
    st = tee_status(tee.url)
    assert "older than the RPMB counter" in st["state_error"]
    res = cli("tee", "status", home=home, tee=tee, check=False)
    assert res.returncode == 2 and "STATE ERROR" in res.stdout
    client = TeeClient.connect(tee.url)
    try:
        opened = client.open_session()
        assert opened.flags & FLAG_STATE_ERROR
        for cmd, params in ((Cmd.GET_PUBKEY, (65, 20, None, None)), (Cmd.CREATE_KEY, (65, None, None, None))):
            with pytest.raises(TeeBadState):
                client.invoke(opened.id, cmd, params)
    finally:
        client.close()
    assert "older than the RPMB counter" in tee.log.read_text()
    # Putting the current file back restores the same identity: nothing was regenerated meanwhile.
    tee.stop()
    (tee.state / "sealed.bin").write_bytes(good)
    tee.start()
    assert json.loads(cli("identity", "show", "--json", home=home, tee=tee).stdout)["address"] == \
        tee_status(tee.url)["address"]
    assert tee_status(tee.url)["address"].lower() == "0x" + first.address.hex()


def test_state_from_another_board_is_refused(make_tee):
    tee = make_tee(board_serial="board-A")
    tee.stop()
    tee.board_serial = "board-B"
    tee.start()
    assert "hardware key" in tee_status(tee.url)["state_error"]
