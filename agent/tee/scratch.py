"""A fresh secure world in a scratch directory, for `aitn tee replay`: its own process, state and log.

It is started exactly as `aitn tee serve` starts one (``python -m tee_sim serve``, a separate
program: the normal world imports only the ABI), on a Unix socket in a temporary directory, with
a fresh state directory, a fixed board serial and its secure log at debug level in a file, so a
report can quote what the fresh secure world said about a refused request. Then ``prepare`` brings
it to the capture's starting point: a device key, a pairing with the capture's time-lock, and the
chain advanced to the capture's committed height.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd

from . import handshake
from .client import TeeClient
from ..errors import TeeUnavailable
from .debug_errors import ScratchWorldError
from .pairing import pair
from .session import ChainedSession

BOARD_SERIAL = "aitn-replay-scratch"
#: Advancing costs about a millisecond per two blocks; beyond this heights are compared relatively.
MAX_ADVANCE = 20000
#: Users a secure world started as root may drop to, in order of preference.
DROP_USERS = ("aitn-tee", "nobody")


def reachable_height(committed: int) -> int:
    """The committed height a fresh pairing can reach that is nearest at or above ``committed``.

    A pairing starts committed at 0; the secure world commits at every PROOF, so after p exchanges
    of two blocks and one handshake of four it is at 2p + 4: every even height from 4 on.
    """
    if committed <= 0:
        return 0
    return max(4, committed + committed % 2)


class ScratchWorld:
    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aitn-replay-"))
        os.chmod(self.root, 0o755)  # a secure world started as root runs as another user
        self.keep = keep
        self.state = self.root / "state"
        self.home = self.root / "home"
        self.log = self.root / "secure.log"
        self.url = f"unix://{self.root / 'tee.sock'}"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tee_sim", "serve", "--state", str(self.state), "--tee", self.url,
                "--log", str(self.log), "--log-level", "3", "--board-serial", BOARD_SERIAL]
        if os.geteuid() == 0:
            for name in DROP_USERS:
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    continue
                argv += ["--user", name]
                break
        return argv

    def start(self, timeout: float = 15.0) -> "ScratchWorld":
        err = open(self.root / "stderr", "wb")
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ScratchWorldError(f"the scratch secure world exited with {self.proc.returncode}: "
                                        f"{(self.root / 'stderr').read_text().strip()}")
            try:
                client = TeeClient.connect(self.url, 2.0)
                try:
                    client.close_session(client.open_session().id)
                    return self
                finally:
                    client.close()
            except TeeUnavailable:  # not listening yet
                time.sleep(0.02)
        raise ScratchWorldError(f"the scratch secure world did not answer within {timeout:g} s")

    def prepare(self, key: bool, paired: bool, committed: int, timelock: int, timeout: float = 10.0) -> list[str]:
        """Key, pairing and chain height as the capture's first OPEN_SESSION answer showed; returns notes."""
        notes = []
        if paired:
            pair(self.url, self.home, timelock, timeout)
            target = min(reachable_height(committed), MAX_ADVANCE)
            if target != committed:
                notes.append(f"the capture's committed height {committed} cannot be reached by a fresh pairing "
                             f"(or is too far): the chain was advanced to {target}; heights compare relatively")
            if target:
                with ChainedSession.open(self.url, self.home, timeout=timeout) as s:
                    for _ in range((target - 4) // 2):
                        s.invoke(Cmd.PSEUDONYM, (b"aitn replay", Value(0, 0), 32, None))
                    handshake.sign_digest(s, os.urandom(32))
        elif key:
            client = TeeClient.connect(self.url, timeout)
            try:
                sid = client.open_session().id
                client.invoke(sid, Cmd.CREATE_KEY, (65, None, None, None))
                client.close_session(sid)
            finally:
                client.close()
        return notes

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "ScratchWorld":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
