"""The simulator's link end: play TelemetrySim in real time on tcp-listen://HOST:PORT, a pty, or a pyserial URL.

Split from sim.py, which owns what the robot sends; this module owns how it reaches a reader.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import termios
import threading
import time
import tty
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

from .reader import open_port
from .sim import BadSimConfig, SimConfig, SimLinkError, TelemetrySim

_BURST = 0.004                  # s between writes: small bursts, as a UART's FIFO would drain
_WRITE_TIMEOUT = 1.0            # s a reader may stall a socket write before it is dropped
#: s between a reader arriving and the first byte sent: pyserial flushes its input when it opens a
#: port (reset_input_buffer), so bytes sent before its open() returns would vanish uncounted.
_SETTLE = 0.1


@dataclass
class RunReport:
    """What run() did: records produced, those nobody received, bytes written, and the worst
    lateness of the real-time schedule (s; a large value means the rate was not sustained)."""

    records: int = 0
    lost_records: int = 0
    bytes: int = 0
    connections: int = 0
    seconds: float = 0.0
    max_lag_s: float = 0.0


class _TcpSink:
    """tcp-listen://HOST:PORT: one reader at a time; a newer connection replaces the current one."""

    def __init__(self, host: str, port: int) -> None:
        try:
            self.listener = socket.create_server((host, port))   # SO_REUSEADDR: restart on the same port
        except OSError as e:
            raise SimLinkError(f"tcp-listen://{host}:{port}: {e}") from None
        self.listener.setblocking(False)
        self.address = f"{host}:{self.listener.getsockname()[1]}"
        self.client: socket.socket | None = None
        self.live_at = 0.0         # monotonic time from which the client gets the stream
        self.live = False
        self.connections = 0

    def poll(self, timeout: float) -> bool:
        """Accept a waiting reader, notice a departed one; True while a reader takes the stream."""
        watch = [self.listener] + ([self.client] if self.client else [])
        if self.client is not None:
            timeout = min(timeout, max(0.0, self.live_at - time.monotonic()))
        ready, _, _ = select.select(watch, [], [], timeout)
        if self.client in ready:   # a reader sends nothing: readable means it closed (or reset)
            try:
                gone = not self.client.recv(4096)
            except OSError:
                gone = True
            if gone:
                self._drop()
        if self.listener in ready:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return self.client is not None
            self._drop()
            conn.settimeout(_WRITE_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.client, self.connections = conn, self.connections + 1
            self.live_at, self.live = time.monotonic() + _SETTLE, False
        if self.client is not None and not self.live and time.monotonic() >= self.live_at:
            self.live = self.write(b"\x00")   # ends any half frame the reader holds, as the MCU does at boot
        return self.client is not None and self.live

    def write(self, data: bytes) -> bool:
        if self.client is None:
            return False
        try:
            self.client.sendall(data)
            return True
        except OSError:            # peer gone, or stalled past _WRITE_TIMEOUT
            self._drop()
            return False

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.shutdown(socket.SHUT_WR)   # the reader sees every byte, then EOF
            except OSError:
                pass
        self._drop()
        self.listener.close()


class _PtySink:
    """A pseudo-terminal in raw mode; a reader is "connected" while the slave side is open."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)          # no echo, no CR/LF mapping, no XON/XOFF: a clean byte pipe
        self.path = os.ttyname(slave)
        os.close(slave)            # so that POLLHUP on the master says nobody has the slave open
        os.set_blocking(self.master, False)
        self._poll = select.poll()
        self._poll.register(self.master, select.POLLOUT)
        self.connected = False     # the slave is open
        self.live_at = 0.0
        self.live = False          # ... and has been for _SETTLE s: it gets the stream
        self.connections = 0

    def poll(self, timeout: float) -> bool:
        events = dict(self._poll.poll(0)).get(self.master, 0)
        now = not events & select.POLLHUP
        if now and not self.connected:
            self.connections += 1
            self.live_at, self.live = time.monotonic() + _SETTLE, False
        self.connected = now
        if now and not self.live and time.monotonic() >= self.live_at:
            self.live = self.write(b"\x00")
        self.live = self.live and now
        if not self.live and timeout:
            time.sleep(timeout)
        return self.live

    def write(self, data: bytes) -> bool:
        """Bytes that do not fit the pty's buffer are lost, as on a UART whose reader lags."""
        try:
            return os.write(self.master, data) == len(data)
        except OSError:
            return False

    def close(self) -> None:
        """Close the master once the reader has taken what was written (closing drops the rest)."""
        if self.connected:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                fd = None
            if fd is not None:
                deadline = time.monotonic() + 2.0
                time.sleep(0.02)   # bytes pass the pty's flip buffer before the input queue counts them
                while _unread(fd) and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.close(fd)
        os.close(self.master)


def _unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


class _PortSink:
    """Any other pyserial URL: always connected; a failing port ends the run with SimLinkError."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = open_port(url, write_timeout=_WRITE_TIMEOUT)
        self.connections = 1
        self.write(b"\x00")

    def poll(self, timeout: float) -> bool:
        return True

    def write(self, data: bytes) -> bool:
        try:
            self.port.write(data)
            return True
        except OSError as e:       # serial.SerialException is an OSError
            raise SimLinkError(f"{self.url}: {e}") from None

    def close(self) -> None:
        self.port.close()


def _sink(url: str, out: TextIO) -> _TcpSink | _PtySink | _PortSink:
    if url.startswith("tcp-listen://"):
        parts = urlsplit(url)
        try:
            host, port = parts.hostname, parts.port
        except ValueError as e:
            raise BadSimConfig(f"{url}: {e}") from None
        if not host or port is None:
            raise BadSimConfig(f"{url}: expected tcp-listen://HOST:PORT")
        sink: _TcpSink | _PtySink | _PortSink = _TcpSink(host, port)
        out.write(f"listening {sink.address}\n")
    elif url == "pty":
        sink = _PtySink()
        out.write(f"pty {sink.path}\n")
    else:
        sink = _PortSink(url)
    out.flush()
    return sink


def run(url: str, rate_hz: float, *, count: int | None = None, duration: float | None = None, seed: int = 0,
        out: TextIO, clean: bool = False) -> RunReport:
    """Play TelemetrySim(seed, rate_hz) on `url` in real time until `count` records, `duration`
    seconds, or SIGTERM/SIGINT. On tcp-listen and pty the stream starts when the first reader
    connects; after that, records produced while no reader is connected are lost (the reader sees a
    Gap). Raises BadSimConfig, SimLinkError, or reader.LinkError/BadLinkUrl for a pyserial URL."""
    sim = TelemetrySim(SimConfig(seed=seed, rate_hz=rate_hz, clean=clean))
    if (count is not None and count < 0) or (duration is not None and duration < 0):
        raise BadSimConfig(f"count={count}, duration={duration}: must not be negative")
    report = RunReport()
    begin = time.monotonic()
    sink = _sink(url, out)
    stop = threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        chunks = sim.chunks()
        t0: float | None = None
        while not stop.is_set() and (count is None or report.records < count):
            now = time.monotonic()
            if duration is not None and now - begin >= duration:
                break
            connected = sink.poll(0.05 if t0 is None else 0.0)
            if t0 is None:
                if not connected:
                    continue
                t0 = now = time.monotonic()
            due = int((now - t0) * rate_hz) + 1
            if count is not None:
                due = min(due, count)
            n = min(due - report.records, max(1, int(rate_hz * 0.05)))   # catch up in slices
            if n > 0:
                burst = b"".join(next(chunks) for _ in range(n))
                report.records += n
                if connected and sink.write(burst):
                    report.bytes += len(burst)
                else:
                    report.lost_records += n
                report.max_lag_s = max(report.max_lag_s, time.monotonic() - t0 - report.records / rate_hz)
            if count is not None and report.records >= count:
                break
            if report.records >= due:
                time.sleep(_BURST)
    finally:
        report.seconds = time.monotonic() - begin
        report.connections = sink.connections
        sink.close()
        for sig, old in handlers.items():
            signal.signal(sig, old)
    return report
