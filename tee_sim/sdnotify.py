"""systemd's service notification protocol (sd_notify(3)) over $NOTIFY_SOCKET, without libsystemd.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines to the Unix socket named by
NOTIFY_SOCKET (a leading ``@`` means the abstract namespace). With ``Type=notify`` the unit is
started once READY=1 arrives; with ``WatchdogSec=`` systemd exports WATCHDOG_USEC and restarts the
service if WATCHDOG=1 stops arriving. Keep-alives go at a third of that interval. Outside systemd
(no NOTIFY_SOCKET) every call does nothing.
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
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.interval = int(usec) / 1e6 / 3 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto("\n".join(fields).encode(), self.address)
            except OSError:
                return False   # systemd went away (shutdown): nothing to tell
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def keepalive(self, now: float | None = None) -> None:
        """WATCHDOG=1 if a third of the watchdog interval has passed since the last one (cheap to call often)."""
        if self.interval is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last >= self.interval:
            self._last = now
            self.send("WATCHDOG=1")
