"""Attack 4: a normal world restored from an old chain backup (truncated or forked) is refused; re-pairing recovers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from agent.errors import ChainBehind, ChainMismatch
from agent.tee import handshake
from agent.tee.chainlog import ChainLog
from agent.tee.pairing import pair
from agent.tee.session import ChainedSession
from conftest import tee_status
from tee_sim.abi import block as blk


def _sign_n(tee, home, n: int) -> None:
    with ChainedSession.open(tee.url, home) as s:
        for _ in range(n):
            handshake.sign_digest(s, os.urandom(32))


def test_truncated_backup_is_refused_with_a_clear_error(tee, home, paired, cli):
    _sign_n(tee, home, 2)
    shutil.copy(home / "chain.log", home / "backup.log")
    _sign_n(tee, home, 2)
    shutil.copy(home / "backup.log", home / "chain.log")
    with ChainedSession.open(tee.url, home) as s:
        with pytest.raises(ChainBehind) as e:
            handshake.sign_digest(s, os.urandom(32))
    assert "restored from an older copy" in str(e.value) and "re-pairing" in str(e.value)
    res = cli("sign", "--message", "hi", home=home, tee=tee, check=False)
    assert res.returncode == ChainBehind.exit_code and "older copy" in res.stderr
    assert tee_status(tee.url)["counters"]["signatures"] == 4


def test_forked_backup_is_refused(tee, home, paired):
    _sign_n(tee, home, 1)
    shutil.copy(home / "chain.log", home / "backup.log")
    _sign_n(tee, home, 2)
    shutil.copy(home / "backup.log", home / "chain.log")
    with ChainLog.open(home / "chain.log") as c:  # the restored copy grows its own history
        for _ in range(12):
            c.append([(blk.REQUEST, 0x10, os.urandom(32))])
        c.sync()
    with ChainedSession.open(tee.url, home) as s:
        with pytest.raises(ChainMismatch) as e:
            handshake.sign_digest(s, os.urandom(32))
    assert "forked" in str(e.value)


def test_only_repairing_recovers(tee, home, paired):
    _sign_n(tee, home, 1)
    shutil.copy(home / "chain.log", home / "backup.log")
    _sign_n(tee, home, 1)
    shutil.copy(home / "backup.log", home / "chain.log")
    with ChainedSession.open(tee.url, home) as s, pytest.raises(ChainBehind):
        s.sync()
    subprocess.run([sys.executable, "-m", "tee_sim", "allow-repair", "--state", str(tee.state)], check=True,
                   capture_output=True)
    again = pair(tee.url, home)
    assert again.address == paired.address  # the device identity survives re-pairing
    _sign_n(tee, home, 1)
