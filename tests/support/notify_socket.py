"""The receiving end of systemd's notify protocol, for tests: a datagram socket a service writes to."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o777)   # the secure world drops to another user when tests run as root
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = dict(os.environ, NOTIFY_SOCKET=str(self.path))
        if watchdog_s:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        return env

    def _read(self) -> None:
        try:
            data = self.sock.recv(4096)
        except (socket.timeout, BlockingIOError):
            return
        self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0, after: int = 0) -> dict:
        """The first message (from index ``after``) with KEY (=value); reads until it comes."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages[after:]:
                if key in m and (value is None or m[key] == value or value in m[key]):
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages}")
            self._read()

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
