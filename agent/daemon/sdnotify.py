"""systemd's service notification protocol (sd_notify(3)) for the normal world's service.

The secure world has its own copy (tee_sim/sdnotify.py): the two worlds share only the ABI, and
the protocol is a datagram of ``KEY=VALUE`` lines to $NOTIFY_SOCKET (``@`` = abstract namespace).
Keep-alives go at a third of WATCHDOG_USEC. Outside systemd every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.interval = int(usec) / 3e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last = 0.0

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto("\n".join(fields).encode(), self.address)
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def keepalive(self, now: float | None = None) -> None:
        if self.interval is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last >= self.interval:
            self._last = now
            self.send("WATCHDOG=1")
