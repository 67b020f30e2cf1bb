"""The secure world as an OS process: its own user, a private state directory, its own log channel."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.tee import handshake
from agent.tee.session import ChainedSession
from support.tee_process import DROP_USER, IS_ROOT, TeeProcess

ROOT = Path(__file__).resolve().parents[2]


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def test_state_directory_is_private(tee, paired):
    mode = stat.S_IMODE(tee.state.stat().st_mode)
    assert mode == 0o700
    for f in tee.state.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    if IS_ROOT:
        import pwd

        owner = pwd.getpwnam(DROP_USER).pw_uid
        assert tee.state.stat().st_uid == owner
        assert all(f.stat().st_uid == owner for f in tee.state.iterdir())


@pytest.mark.skipif(not IS_ROOT, reason="privilege drop needs root")
def test_started_as_root_runs_as_its_own_user(tee):
    import pwd

    assert set(_uids(tee.pid)) == {pwd.getpwnam(DROP_USER).pw_uid}
    assert f"dropped to user {DROP_USER}" in tee.log.read_text()


@pytest.mark.skipif(not IS_ROOT, reason="privilege drop needs root")
def test_refuses_to_run_as_root_without_a_user_that_exists(workdir):
    res = subprocess.run([sys.executable, "-m", "tee_sim", "serve", "--state", str(workdir / "s"), "--tee",
                          f"unix://{workdir}/t.sock", "--user", "no-such-user-aitn"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "does not exist" in res.stderr
    assert not (workdir / "s" / "sealed.bin").exists()


@pytest.mark.parametrize("level,present,absent", [
    (0, [], ["I/TC", "E/TA"]),
    (1, ["E/TA: "], ["I/TC", "D/TA"]),
    (3, ["I/TC: ", "E/TA: ", "D/TA: "], ["F/TA"]),
])
def test_secure_log_levels(workdir, level, present, absent):
    (workdir / "t").mkdir()
    tee = TeeProcess(workdir / "t", log_level=level).start()
    try:
        from agent.tee.pairing import pair

        home = workdir / "home"
        pair(tee.url, home)
        with ChainedSession.open(tee.url, home) as s:  # one refused proof: an error line
            from tee_sim.abi.frame import Value
            from tee_sim.abi.ids import Cmd

            s.invoke(Cmd.SIGN, (os.urandom(32), Value(0, 0), 2048, None))
            with pytest.raises(Exception):
                s.invoke(Cmd.PROOF, (os.urandom(32), 65, 32, None))
    finally:
        tee.stop()
    text = tee.log.read_text() if tee.log.exists() else ""
    for needle in present:
        assert needle in text, (level, needle)
    for needle in absent:
        assert needle not in text, (level, needle)


def test_aitn_tee_serve_is_the_secure_world_process(workdir):
    """`aitn tee serve` execs the secure world: the normal world's CLI never hosts it in-process."""
    sock = workdir / "tee.sock"
    argv = [sys.executable, "-m", "agent", "--tee", f"unix://{sock}", "tee", "serve", "--state",
            str(workdir / "state"), "--log", str(workdir / "log")]
    if IS_ROOT:
        argv += ["--user", DROP_USER]
    proc = subprocess.Popen(argv, cwd=ROOT)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"tee_sim" in cmdline and b"agent" not in cmdline
        home = workdir / "home"
        from agent.tee.pairing import pair

        pair(f"unix://{sock}", home)
        with ChainedSession.open(f"unix://{sock}", home) as s:
            handshake.sign_digest(s, os.urandom(32))
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is a clean stop
