"""`aitn tee replay`: a real capture re-sent to a fresh secure world (its own process), answers compared.

Captures come from the existing tools (`aitn tee handshake --capture`, the capturing relay, the
client's trace); tampered copies are re-encoded with a valid CRC, so the replay sees well-formed
frames that mean something else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agent.tee import handshake, pcapng
from agent.tee.capture import write_trace
from agent.tee.debug_errors import NotReplayable, ReplayMismatch
from agent.tee.session import ChainedSession
from conftest import ROOT
from tee_sim.abi import frame as fr
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd


def _capture_handshake(cli, home, tee, path: Path) -> None:
    cli("tee", "handshake", "--capture", str(path), home=home, tee=tee)


def _tamper(src: Path, dst: Path, index: int, change) -> None:
    """Rewrite packet ``index`` (0-based) as ``change(frame)``, re-encoded with a good CRC."""
    cap = pcapng.parse(src.read_bytes())
    packets = list(cap.packets)
    packets[index] = replace(packets[index], data=fr.encode(change(fr.decode(packets[index].data))))
    dst.write_bytes(pcapng.encode(replace(cap, packets=packets)))


def _flip_proof_byte(f):
    proof = bytearray(f.params[0])
    proof[7] ^= 0x01
    return replace(f, params=(bytes(proof),) + f.params[1:])


def _replay(cli, home, path: Path, *extra: str):
    res = cli("tee", "replay", str(path), "--json", *extra, home=home, check=False)
    return res, json.loads(res.stdout)


def test_replay_of_a_real_handshake_matches(tee, home, paired, cli, workdir):
    with ChainedSession.open(tee.url, home) as s:  # a chain with some history: committed height 8
        handshake.sign_digest(s, os.urandom(32))
        handshake.sign_digest(s, os.urandom(32))
    path = workdir / "hs.pcapng"
    _capture_handshake(cli, home, tee, path)
    res, out = _replay(cli, home, path)
    assert res.returncode == 0, res.stderr
    assert out["matched"] and out["difference"] is None
    assert out["requests"] == 5 and out["answers_compared"] == 5 and out["connections"] == 1
    assert out["prepared"] == {"key": True, "paired": True, "committed_height": 8, "timelock": 16,
                               "url": out["prepared"]["url"], "scratch": None}
    assert not Path(out["prepared"]["url"][len("unix://"):]).parent.exists()  # the scratch directory is gone
    # The keyed fields were checked against the normal world's own chain, not assumed.
    assert any("#3 SYNC tag at 8 verifies against" in n for n in out["notes"])
    assert any("#7 proof verifies against" in n for n in out["notes"])
    # The same capture in strict mode: the fresh chain was brought to the capture's height.
    res, strict = _replay(cli, home, path, "--strict")
    assert res.returncode == 0 and strict["matched"] and strict["mode"] == "strict"
    text = cli("tee", "replay", str(path), home=home).stdout
    assert "all 5 answers match" in text and "committed height 8" in text


def test_replay_of_a_relay_capture_with_two_connections(tee, home, paired, cli, workdir):
    out = workdir / "relay.pcapng"
    listen = f"unix://{workdir}/relay.sock"
    proc = subprocess.Popen([sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "tee", "capture",
                             "--listen", listen, "--out", str(out), "--count", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr.readline().startswith("capturing to")
    cli("sign", "--message", "dock 3 clear", home=home, url=listen)
    proc.communicate(timeout=15)
    res, rep = _replay(cli, home, out)
    assert res.returncode == 0, res.stdout
    assert rep["connections"] == 2 and rep["requests"] == 8 and rep["answers_compared"] == 8


def test_a_changed_command_id_is_reported_with_both_decodings(tee, home, paired, cli, workdir):
    path, bad = workdir / "hs.pcapng", workdir / "cmd.pcapng"
    _capture_handshake(cli, home, tee, path)
    _tamper(path, bad, 4, lambda f: replace(f, command=0x15))  # frame #5: SIGN -> an unknown command
    res, out = _replay(cli, home, bad)
    assert res.returncode == ReplayMismatch.exit_code
    assert "differs at frame #6" in res.stderr
    diff = out["difference"]
    assert diff["frame"] == 6 and diff["request_frame"] == 5
    fields = {d["field"]: (d["captured"], d["replayed"]) for d in diff["differences"]}
    assert fields["command"] == ("SIGN", "0x15") and fields["result"] == ("SUCCESS", "NOT_SUPPORTED")
    assert diff["captured"]["result"] == "SUCCESS" and "challenge" in diff["captured"]["meaning"]
    assert diff["replayed"]["result"] == "NOT_SUPPORTED" and diff["replayed"]["origin"] == "TRUSTED_APP"
    assert diff["captured_request"]["command"] == "0x15"
    assert out["answers_compared"] == 3  # OPEN_SESSION, SYNC, then the one that differs
    text = cli("tee", "replay", str(bad), home=home, check=False).stdout
    assert "first difference at frame #6, the answer to #5" in text
    row = next(line for line in text.splitlines() if "INVOKE RESPONSE cmd=SIGN" in line)
    assert "|" in row and "result=NOT_SUPP" in row.split("|", 1)[1]  # side by side: captured | replayed


def test_an_altered_proof_byte_is_caught_by_the_normal_worlds_chain(tee, home, paired, cli, workdir):
    path, bad = workdir / "hs.pcapng", workdir / "proof.pcapng"
    _capture_handshake(cli, home, tee, path)
    _tamper(path, bad, 6, _flip_proof_byte)  # frame #7: PROOF
    res, out = _replay(cli, home, bad)
    assert res.returncode == ReplayMismatch.exit_code, res.stderr
    diff = out["difference"]
    assert diff["frame"] == 8 and diff["request_frame"] == 7
    assert {"field": "result", "captured": "SUCCESS", "replayed": "MAC_INVALID"} in diff["differences"]
    assert diff["sent_request"]["meaning"]["proof"] == diff["captured_request"]["meaning"]["proof"]
    assert any("#7 proof does not verify against" in n for n in out["notes"])
    assert any(line.startswith("E/TA:  _proof:") and "proof refused: MAC_INVALID" in line
               for line in out["secure_log"])
    # Without the chain that made the capture, an altered proof cannot be told from a good one: the
    # captured answer (SUCCESS) decides, and the report says the proof was not checked.
    other = workdir / "other-home"
    other.mkdir()
    res, out = _replay(cli, other, bad)
    assert res.returncode == 0 and out["matched"]
    assert any("proof not checkable" in n for n in out["notes"])


def test_a_refused_handshake_replays_as_refused(tee, home, paired, cli, workdir):
    """A capture of a real failure: the fresh world refuses the same request the same way."""
    events = []
    with ChainedSession.open(tee.url, home, trace=events.append) as s:
        s.invoke(Cmd.SIGN, (os.urandom(32), Value(0, 0), 2048, None))
        with pytest.raises(Exception):
            s.invoke(Cmd.PROOF, (os.urandom(32), 65, 32, None))
    path = workdir / "refused.pcapng"
    with open(path, "wb") as f:
        write_trace(f, events, tee.url, "test")
    res, out = _replay(cli, home, path)
    assert res.returncode == 0, out["difference"]
    assert any("proof does not verify against" in n for n in out["notes"])


def test_a_normal_world_behind_replays_as_behind(tee, home, paired, cli, workdir):
    """A restored older chain (SYNC refused as behind) replays as the same refusal, heights relative."""
    shutil.copy(home / "chain.log", workdir / "backup.log")
    with ChainedSession.open(tee.url, home) as s:
        handshake.sign_digest(s, os.urandom(32))
        handshake.sign_digest(s, os.urandom(32))
    shutil.copy(workdir / "backup.log", home / "chain.log")
    path = workdir / "behind.pcapng"
    res = cli("tee", "handshake", "--capture", str(path), home=home, tee=tee, check=False)
    assert res.returncode == 24  # ChainBehind
    res, out = _replay(cli, home, path)
    assert res.returncode == 0, out["difference"]
    assert out["prepared"]["committed_height"] == 8


def test_a_file_without_requests_is_not_replayable(cli, home, workdir):
    path = workdir / "empty.pcapng"
    path.write_bytes(pcapng.encode(pcapng.Capture([pcapng.Interface("unix:///x")], [])))
    res = cli("tee", "replay", str(path), home=home, check=False)
    assert res.returncode == NotReplayable.exit_code and "nothing" not in res.stdout
