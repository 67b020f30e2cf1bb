"""A real node process (`aitn node serve`) on a loopback UDP port, in a scratch folder."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProcess:
    def __init__(self, folder: Path, *, port: int | None = None, min_updates: int = 1000,
                 round_seconds: float = 3600.0, max_norm: float = 100.0, superlink: str | None = None,
                 max_item_bytes: int | None = None, cycle_s: float | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.port = port or free_udp_port()
        self._may_move = port is None   # until the first start: another process may take a picked port first
        self.args = ["--min-updates", str(min_updates), "--round-seconds", str(round_seconds),
                     "--max-norm", str(max_norm)] + (["--superlink", superlink] if superlink else []) + (
                         ["--max-item-bytes", str(max_item_bytes)] if max_item_bytes else []) + list(extra)
        self.global_args = ["--cycle-seconds", str(cycle_s)] if cycle_s else []
        self.log = folder.parent / f"{folder.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        for attempt in range(3):
            argv = [sys.executable, "-m", "agent", *self.global_args, "node", "serve", "--listen", f"127.0.0.1:{self.port}",
                    "--state", str(self.folder)] + self.args
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL,
                                             cwd=ROOT)
            deadline = time.monotonic() + timeout
            line = self.proc.stdout.readline().decode()
            if "listening" in line and time.monotonic() <= deadline:
                self.address = bytes.fromhex(line.split()[1].removeprefix("0x"))
                self._may_move = False
                return self
            self.proc.kill()
            self.proc.wait(10)
            if not self._may_move or attempt == 2:
                raise RuntimeError(f"node did not start: {line!r} {self.log.read_text()}")
            self.port = free_udp_port()   # the picked port was taken in between (parallel tests)
        raise AssertionError("unreachable")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None
