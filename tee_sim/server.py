"""The secure world's process: transports chosen by URL, peer authentication, the TA behind them.

- ``unix:///path.sock``: a Unix stream socket; each connection's peer credentials (SO_PEERCRED)
  are checked against the allowed uids before any request reaches the TA.
- any other URL is opened with pyserial (``/dev/ttyAMA1``, ``socket://HOST:PORT``, ``loop://``):
  one link, for a secure world on another core, VM or MCU. A serial line has no peer
  credentials: whoever holds the other end of the wire is the normal world.

One thread per connection with blocking I/O, and one lock in front of the TA (a TA instance is
single-threaded). Per connection: bytes -> StreamSplitter -> TA.handle -> response bytes. Bad
bytes get an error frame, a stalled partial frame is dropped after ``stall_seconds``, and nothing
a peer sends stops the server from serving the others.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

import serial  # imported before privileges are dropped, like everything the process will need

from .abi import frame
from .abi.ids import Origin, TeecResult
from .log import SecureLog
from .ta import SignerTA

READ_SIZE = 65536
MAX_CONNECTIONS = 32
SERIAL_POLL = 0.05


@dataclass(frozen=True)
class ServerConfig:
    url: str
    allowed_uids: frozenset[int] = field(default_factory=frozenset)
    stall_seconds: float = 10.0


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


class Server:
    def __init__(self, ta: SignerTA, config: ServerConfig, log: SecureLog,
                 heartbeat: Callable[[], None] = lambda: None) -> None:
        self.ta = ta
        self.config = config
        self.log = log
        self.heartbeat = heartbeat   # called from the serving loop at least every 0.2 s (systemd's watchdog)
        self._lock = threading.Lock()  # the TA is single-threaded, like a TA instance
        self._next_conn = 1
        self._active = 0
        self.stop = threading.Event()

    def _handle(self, conn: int, raw_or_error, allowed: bool) -> bytes:
        with self._lock:
            if isinstance(raw_or_error, frame.FrameError):
                self.ta.counters["bad_frames"] += 1
                self.log.debug("TC", f"conn {conn}: {raw_or_error.reason}")
                return self.ta.error_frame(0, 0, 0, 0, TeecResult.BAD_FORMAT, Origin.COMMS)
            if not allowed:
                return self.ta.denied(raw_or_error)
            return self.ta.handle(conn, raw_or_error)

    def _closed(self, conn: int) -> None:
        with self._lock:
            self._active -= 1
            self.ta.connection_closed(conn)

    # -- unix ------------------------------------------------------------------------------------

    def _serve_unix_conn(self, sock: socket.socket, conn: int) -> None:
        try:
            uid = peer_uid(sock)
            allowed = uid in self.config.allowed_uids
            if not allowed:
                self.log.error("TC", f"conn {conn}: uid {uid} is not allowed")
            else:
                self.log.flow("TC", f"conn {conn}: uid {uid}")
            splitter = frame.StreamSplitter()
            while not self.stop.is_set():
                sock.settimeout(self.config.stall_seconds if splitter.pending else None)
                try:
                    data = sock.recv(READ_SIZE)
                except socket.timeout:
                    self.log.debug("TC", f"conn {conn}: partial frame of {splitter.pending} bytes stalled")
                    splitter.reset()
                    sock.sendall(self._handle(conn, frame.FrameTruncated("stalled mid-frame"), allowed))
                    continue
                if not data:
                    break
                out = b"".join(self._handle(conn, item, allowed) for item in splitter.feed(data))
                if out:
                    sock.sendall(out)
                if not allowed:
                    break  # one refusal, then the connection goes
        except OSError as e:
            self.log.debug("TC", f"conn {conn}: {e}")
        finally:
            self._closed(conn)
            sock.close()

    def serve_unix(self, listener: socket.socket) -> None:
        """Accept on a bound, listening Unix socket (bound before privileges were dropped)."""
        self.log.info("TC", f"listening on {self.config.url}")
        listener.settimeout(0.2)
        while not self.stop.is_set():
            self.heartbeat()
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            with self._lock:
                conn, self._next_conn = self._next_conn, self._next_conn + 1
                full = self._active >= MAX_CONNECTIONS
                if not full:
                    self._active += 1
            if full:
                self.log.error("TC", f"conn {conn}: refused, {MAX_CONNECTIONS} connections open")
                sock.close()
                continue
            threading.Thread(target=self._serve_unix_conn, args=(sock, conn), daemon=True,
                             name=f"conn-{conn}").start()

    # -- serial ----------------------------------------------------------------------------------

    def serve_serial(self, url: str) -> None:
        port = serial.serial_for_url(url, timeout=SERIAL_POLL)
        with self._lock:
            conn, self._next_conn = self._next_conn, self._next_conn + 1
            self._active += 1
        self.log.info("TC", f"serving serial link {url}")
        splitter = frame.StreamSplitter()
        idle = 0.0
        try:
            while not self.stop.is_set():
                self.heartbeat()
                data = port.read(1)  # waits up to SERIAL_POLL, then take whatever else has arrived
                if data and port.in_waiting:
                    data += port.read(port.in_waiting)
                if not data:
                    idle += SERIAL_POLL
                    if splitter.pending and idle >= self.config.stall_seconds:
                        splitter.reset()
                        port.write(self._handle(conn, frame.FrameTruncated("stalled mid-frame"), True))
                    continue
                idle = 0.0
                out = b"".join(self._handle(conn, item, True) for item in splitter.feed(data))
                if out:
                    port.write(out)
        finally:
            self._closed(conn)
            port.close()

    def run(self, unix_listener: socket.socket | None = None) -> None:
        """Serve until ``stop`` is set; raises if the transport cannot be opened."""
        if unix_listener is not None:
            self.serve_unix(unix_listener)
        else:
            self.serve_serial(self.config.url)
