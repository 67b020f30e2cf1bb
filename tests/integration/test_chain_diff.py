"""`aitn chain diff`: the normal world's chain against a real secure world's, and the recovery it names.

Each case makes the state for real (handshakes, a restored copy, an edited record, a fork, a lost
secure state) and then checks three things: the state and recovery diff reports, its exit code,
and that a real handshake then fails (or succeeds) the way the diagnosis predicts.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

from agent.errors import ChainBehind, ChainCorrupt, ChainMismatch, NotPaired
from agent.tee import handshake
from agent.tee.chainlog import HEADER_SIZE, RECORD_SIZE, ChainLog
from agent.tee.debug_errors import ChainsDiverge
from agent.tee.pairing import pair
from agent.tee.session import ChainedSession
from conftest import tee_status
from tee_sim.abi import block as blk
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd


def _sign_n(tee, home, n: int) -> None:
    with ChainedSession.open(tee.url, home) as s:
        for _ in range(n):
            handshake.sign_digest(s, os.urandom(32))


def _diff(cli, home, tee) -> tuple[int, dict]:
    res = cli("chain", "diff", "--json", home=home, tee=tee, check=False)
    return res.returncode, json.loads(res.stdout)


def _sign_exit(cli, home, tee) -> int:
    return cli("sign", "--message", "after diff", home=home, tee=tee, check=False).returncode


def test_in_sync(tee, home, paired, cli):
    _sign_n(tee, home, 2)
    rc, out = _diff(cli, home, tee)
    assert rc == 0 and out["ok"]
    assert (out["state"], out["recovery"], out["error"]) == ("in_sync", "none", None)
    assert out["probe"] == {"outcome": "match", "height": 8, "detail": out["probe"]["detail"]}
    assert out["normal_world"]["head"] == 8 and out["secure_world"]["committed"] == 8
    text = cli("chain", "diff", home=home, tee=tee).stdout
    assert "state         in_sync" in text and "probe         SYNC at 8: match" in text
    assert tee_status(tee.url)["failures"] == 0


def test_restored_older_chain_is_behind_and_needs_repairing(tee, home, paired, cli, workdir):
    _sign_n(tee, home, 1)
    shutil.copy(home / "chain.log", workdir / "backup.log")
    _sign_n(tee, home, 2)
    shutil.copy(workdir / "backup.log", home / "chain.log")
    before = (home / "chain.log").read_bytes()
    rc, out = _diff(cli, home, tee)
    assert rc == ChainsDiverge.exit_code and not out["ok"]
    assert (out["state"], out["error"], out["recovery"]) == ("nw_behind", "ChainBehind", "re-pair")
    assert out["first_divergent"] == 5 and out["divergent_range"] == [5, 12]
    assert out["probe"] is None  # the secure world would refuse it as behind before any tag check
    assert (home / "chain.log").read_bytes() == before  # diff repairs nothing
    text = cli("chain", "diff", home=home, tee=tee, check=False)
    assert "first divergent block  5" in text.stdout and "allow-repair" in text.stdout
    assert "chains differ: nw_behind (ChainBehind); recovery: re-pair" in text.stderr
    assert _sign_exit(cli, home, tee) == ChainBehind.exit_code  # as predicted
    # The recovery it names works.
    subprocess.run([sys.executable, "-m", "tee_sim", "allow-repair", "--state", str(tee.state)], check=True,
                   capture_output=True)
    cli("tee", "pair", home=home, tee=tee)
    assert _diff(cli, home, tee)[1]["state"] == "in_sync"


def test_truncated_by_one_exchange_is_resynced_by_itself(tee, home, paired, cli):
    _sign_n(tee, home, 1)
    with open(home / "chain.log", "r+b") as f:  # the normal world lost its last block (height 4)
        f.truncate(HEADER_SIZE + 4 * RECORD_SIZE)
    rc, out = _diff(cli, home, tee)
    assert rc == 0 and (out["state"], out["recovery"]) == ("nw_one_behind", "resync")
    assert out["probe"]["outcome"] == "match" and out["probe"]["height"] == 3
    assert _sign_exit(cli, home, tee) == 0


def test_tentative_blocks_above_the_committed_height_are_resynced(tee, home, paired, cli):
    _sign_n(tee, home, 1)
    with ChainedSession.open(tee.url, home) as s:  # two tentative blocks; the session then goes away
        s.invoke(Cmd.PSEUDONYM, (b"badge 7", Value(1, 0), 32, None))
    rc, out = _diff(cli, home, tee)
    assert rc == 0 and (out["state"], out["recovery"]) == ("nw_ahead", "resync")
    assert out["normal_world"]["head"] == 6 and out["secure_world"]["committed"] == 4
    assert _sign_exit(cli, home, tee) == 0


def test_an_edited_record_is_the_first_divergent_block(tee, home, paired, cli):
    _sign_n(tee, home, 20)  # 80 blocks: block 5 is deeper than a torn tail can be
    path = home / "chain.log"
    raw = bytearray(path.read_bytes())
    at = HEADER_SIZE + 5 * RECORD_SIZE
    body = bytearray(raw[at:at + 109])  # height 8, direction 1, command 4, body digest 32, stamp 32, hash 32
    body[13 + 3] ^= 0xFF  # a byte of the body digest, with the record's CRC made good again
    raw[at:at + 109] = body
    raw[at + 109:at + 113] = struct.pack(">I", zlib.crc32(bytes(body)))
    path.write_bytes(bytes(raw))
    rc, out = _diff(cli, home, tee)
    assert rc == ChainsDiverge.exit_code
    assert (out["state"], out["error"], out["first_divergent"]) == ("nw_corrupt", "ChainCorrupt", 5)
    assert out["normal_world"]["bad_reason"] == "time-lock stamp does not verify"
    assert cli("chain", "verify", home=home, check=False).returncode == ChainCorrupt.exit_code


def test_a_forked_chain_is_a_mismatch_at_or_below_the_probe(tee, home, paired, cli, workdir):
    _sign_n(tee, home, 1)
    shutil.copy(home / "chain.log", workdir / "backup.log")
    _sign_n(tee, home, 2)
    shutil.copy(workdir / "backup.log", home / "chain.log")
    with ChainLog.open(home / "chain.log") as c:  # the restored copy grows its own history past block 4
        for _ in range(10):
            c.append([(blk.REQUEST, int(Cmd.SIGN), os.urandom(32))])
        c.sync()
    rc, out = _diff(cli, home, tee)
    assert rc == ChainsDiverge.exit_code
    assert (out["state"], out["error"], out["recovery"]) == ("mismatch", "ChainMismatch", "re-pair")
    assert out["probe"]["outcome"] == "mismatch" and out["divergent_range"] == [1, 12]
    assert out["first_divergent"] is None  # the ABI cannot narrow it down (docs/debugging.md)
    assert tee_status(tee.url)["failures"] == 1  # the probe counted, as the handshake would
    assert _sign_exit(cli, home, tee) == ChainMismatch.exit_code


def test_a_chain_of_another_pairing_points_at_the_archived_one(tee, home, paired, cli):
    _sign_n(tee, home, 1)
    subprocess.run([sys.executable, "-m", "tee_sim", "allow-repair", "--state", str(tee.state)], check=True,
                   capture_output=True)
    again = pair(tee.url, home)  # the old chain is kept as chain.<old id>.log
    old = home / f"chain.{paired.pairing_id.hex()}.log"
    assert old.exists()
    # Someone restores the old file over the current one; the current one is kept under its name.
    os.rename(home / "chain.log", home / f"chain.{again.pairing_id.hex()}.log")
    shutil.copy(old, home / "chain.log")
    rc, out = _diff(cli, home, tee)
    assert rc == ChainsDiverge.exit_code
    assert (out["state"], out["error"], out["recovery"]) == ("foreign_pairing", "ChainMismatch", "restore-chain")
    assert out["probe"] is None and tee_status(tee.url)["failures"] == 0
    assert f"mv {home}/chain.{again.pairing_id.hex()}.log {home}/chain.log" in out["steps"]


def test_lost_secure_state_needs_pairing_again(tee, home, paired, cli):
    _sign_n(tee, home, 1)
    tee.stop()
    shutil.rmtree(tee.state)
    tee.start()
    rc, out = _diff(cli, home, tee)
    assert rc == ChainsDiverge.exit_code
    assert (out["state"], out["error"], out["recovery"]) == ("secure_state_lost", "NotPaired", "re-pair")
    assert "new address" in out["summary"]
    assert _sign_exit(cli, home, tee) == NotPaired.exit_code


def test_an_unreachable_secure_world_is_a_transport_error(home, paired, tee, cli):
    tee.stop()
    res = cli("chain", "diff", home=home, tee=tee, check=False)
    assert res.returncode == 11 and "is the secure world running?" in res.stderr


def test_a_chain_in_use_is_not_diffed(tee, home, paired, cli):
    with ChainLog.open(home / "chain.log"):
        res = cli("--lock-wait", "0.2", "chain", "diff", home=home, tee=tee, check=False)
    assert res.returncode == 22 and "in use" in res.stderr and "(waited 0.2 s)" in res.stderr
