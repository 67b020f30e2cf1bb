"""The secure world behind a serial line: two pseudo-terminals bridged like a null-modem cable."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from eth_account import Account

from agent.tee import handshake
from agent.tee.pairing import pair
from agent.tee.session import ChainedSession
from support.tee_process import DROP_USER, IS_ROOT
from tee_sim.abi import digests


class NullModem:
    """Two ptys whose masters are cross-connected; ``noise`` bytes go to the secure world's side first."""

    def __init__(self, noise: bytes = b"") -> None:
        self.a_master, a_slave = os.openpty()
        self.b_master, b_slave = os.openpty()
        self.a_path, self.b_path = os.ttyname(a_slave), os.ttyname(b_slave)
        self._slaves = (a_slave, b_slave)
        if IS_ROOT:  # the secure world opens its end after dropping to its own user
            import pwd

            os.chown(self.a_path, pwd.getpwnam(DROP_USER).pw_uid, -1)
        self._stop = threading.Event()
        self.noise = noise
        for src, dst in ((self.a_master, self.b_master), (self.b_master, self.a_master)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: int, dst: int) -> None:
        import select

        first = dst == self.a_master
        while not self._stop.is_set():
            r, _, _ = select.select([src], [], [], 0.1)
            if not r:
                continue
            try:
                data = os.read(src, 65536)
            except OSError:
                return
            if first and self.noise:
                data, first = self.noise + data, False
            os.write(dst, data)

    def close(self) -> None:
        self._stop.set()
        for fd in (self.a_master, self.b_master, *self._slaves):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.mark.parametrize("noise", [b"", b"\x00\xffboot junk\xe0\x0e"], ids=["clean", "noise-at-boot"])
def test_handshake_over_a_serial_line(workdir, noise):
    line = NullModem(noise)
    state, log = workdir / "state", workdir / "secure.log"
    argv = [sys.executable, "-m", "tee_sim", "serve", "--state", str(state), "--tee", line.a_path,
            "--log", str(log), "--log-level", "3", "--board-serial", "serial-test"]
    if IS_ROOT:
        argv += ["--user", DROP_USER]
    tee = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while "serving serial link" not in (log.read_text() if log.exists() else ""):
            assert tee.poll() is None, tee.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        home = workdir / "home"
        paired = pair(line.b_path, home)
        with ChainedSession.open(line.b_path, home) as s:
            d = os.urandom(32)
            signed = handshake.sign_digest(s, d)
        assert Account._recover_hash(d, signature=signed.signature) == digests.checksum_address(paired.address)
    finally:
        tee.terminate()
        tee.wait(10)
        line.close()
