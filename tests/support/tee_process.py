"""A real secure-world process (``python -m tee_sim serve``) on a Unix socket in a scratch directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tee_sim.abi import frame
from tee_sim.abi.frame import Frame, Kind
from tee_sim.abi.ids import TA_UUID, Login, ParamType, param_types

IS_ROOT = os.geteuid() == 0
#: When the tests run as root the secure world drops to this user, as it would on a board.
DROP_USER = "nobody"


def open_session_frame(request_id: int = 1, uuid: bytes = TA_UUID.bytes) -> bytes:
    types = param_types(ParamType.MEMREF_TEMP_INPUT, ParamType.VALUE_OUTPUT, ParamType.MEMREF_TEMP_OUTPUT,
                        ParamType.VALUE_OUTPUT)
    return frame.encode(Frame(Kind.OPEN_SESSION, request_id, 0, int(Login.USER), types, (uuid, None, 16, None)))


class TeeProcess:
    def __init__(self, root: Path, *, lockout_base: float = 1.0, allow_uids: list[int] | None = None,
                 log_level: int = 3, board_serial: str = "test-board-0001", stall_seconds: float = 10.0,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.state = root / "state"
        self.sock = root / "tee.sock"
        self.url = f"unix://{self.sock}"
        self.log = root / "secure.log"
        self.stderr = root / "tee.stderr"
        self.lockout_base = lockout_base
        self.allow_uids = allow_uids
        self.log_level = log_level
        self.board_serial = board_serial
        self.stall_seconds = stall_seconds
        self.env = env
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tee_sim", "serve", "--state", str(self.state), "--tee", self.url,
                "--log", str(self.log), "--log-level", str(self.log_level), "--board-serial", self.board_serial,
                "--lockout-base", str(self.lockout_base), "--stall-seconds", str(self.stall_seconds)]
        if IS_ROOT:
            argv += ["--user", DROP_USER]
        for uid in self.allow_uids or []:
            argv += ["--allow-uid", str(uid)]
        return argv

    def start(self, timeout: float = 15.0) -> "TeeProcess":
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(self.argv(), stdout=err, stderr=err, stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secure world exited with {self.proc.returncode}: {self.stderr.read_text()}")
            if self.ping():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"secure world not ready after {timeout} s: {self.stderr.read_text()}")

    def ping(self) -> bool:
        """True when an OPEN_SESSION gets an answer (any answer) on the socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(self.sock))
                s.sendall(open_session_frame())
                return len(s.recv(65536)) >= frame.HEADER_SIZE
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def restart(self) -> "TeeProcess":
        self.kill()
        return self.start()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))
