"""The secure world's process: transports chosen by URL, peer authentication, the TA behind them.

- ``unix:///path.sock``: asyncio Unix stream server; each connection's peer credentials
  (SO_PEERCRED) are checked against the allowed uids before any request reaches the TA.
- any other URL is opened with pyserial (``/dev/ttyAMA1``, ``socket://HOST:PORT``, ``loop://``):
  one link, served by a thread, for a secure world on another core, VM or MCU. A serial line has
  no peer credentials: whoever holds the other end of the wire is the normal world.

Per connection: bytes -> StreamSplitter -> TA.handle -> response bytes. Bad bytes get an error
frame, a stalled partial frame is dropped after ``stall_seconds``, and nothing a peer sends stops
the server from serving the others.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field

import serial  # imported before privileges are dropped, like everything the process will need

from .abi import frame
from .abi.ids import Origin, TeecResult
from .log import SecureLog
from .ta import SignerTA

READ_SIZE = 65536
MAX_CONNECTIONS = 32


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
    def __init__(self, ta: SignerTA, config: ServerConfig, log: SecureLog) -> None:
        self.ta = ta
        self.config = config
        self.log = log
        self._lock = threading.Lock()  # the TA is single-threaded, like a TA instance
        self._next_conn = 1
        self._active = 0
        self.ready = asyncio.Event()

    def _handle(self, conn: int, raw_or_error, allowed: bool) -> bytes:
        with self._lock:
            if isinstance(raw_or_error, frame.FrameError):
                self.ta.counters["bad_frames"] += 1
                self.log.debug("TC", f"conn {conn}: {raw_or_error.reason}")
                return self.ta.error_frame(0, 0, 0, 0, TeecResult.BAD_FORMAT, Origin.COMMS)
            if not allowed:
                return self.ta.denied(raw_or_error)
            return self.ta.handle(conn, raw_or_error)

    def _new_conn(self) -> int:
        conn = self._next_conn
        self._next_conn += 1
        return conn

    # -- unix ------------------------------------------------------------------------------------

    async def _serve_unix_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self._new_conn()
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock)
        allowed = uid in self.config.allowed_uids
        if self._active >= MAX_CONNECTIONS:
            self.log.error("TC", f"conn {conn}: refused, {MAX_CONNECTIONS} connections open")
            writer.close()
            return
        self._active += 1
        if not allowed:
            self.log.error("TC", f"conn {conn}: uid {uid} is not allowed")
        else:
            self.log.flow("TC", f"conn {conn}: uid {uid}")
        splitter = frame.StreamSplitter()
        try:
            while True:
                try:
                    timeout = self.config.stall_seconds if splitter.pending else None
                    data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
                except asyncio.TimeoutError:
                    self.log.debug("TC", f"conn {conn}: partial frame of {splitter.pending} bytes stalled")
                    splitter.reset()
                    writer.write(self._handle(conn, frame.FrameTruncated("stalled mid-frame"), allowed))
                    continue
                if not data:
                    break
                out = b"".join(self._handle(conn, item, allowed) for item in splitter.feed(data))
                if out:
                    writer.write(out)
                    await writer.drain()
                if not allowed:
                    break  # one refusal, then the connection goes
        except (ConnectionError, OSError) as e:
            self.log.debug("TC", f"conn {conn}: {e}")
        finally:
            self._active -= 1
            with self._lock:
                self.ta.connection_closed(conn)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def serve_unix(self, sock: socket.socket) -> None:
        """Serve a bound, listening Unix socket (bound before privileges were dropped)."""
        server = await asyncio.start_unix_server(self._serve_unix_conn, sock=sock)
        self.log.info("TC", f"listening on {self.config.url}")
        self.ready.set()
        async with server:
            await server.serve_forever()

    # -- serial ----------------------------------------------------------------------------------

    def serve_serial(self, url: str, stop: threading.Event) -> None:
        port = serial.serial_for_url(url, timeout=0.05)
        conn = self._new_conn()
        self.log.info("TC", f"serving serial link {url}")
        splitter = frame.StreamSplitter()
        idle = 0.0
        try:
            while not stop.is_set():
                data = port.read(READ_SIZE)
                if not data:
                    idle += 0.05
                    if splitter.pending and idle >= self.config.stall_seconds:
                        splitter.reset()
                        port.write(self._handle(conn, frame.FrameTruncated("stalled mid-frame"), True))
                    continue
                idle = 0.0
                out = b"".join(self._handle(conn, item, True) for item in splitter.feed(data))
                if out:
                    port.write(out)
        finally:
            with self._lock:
                self.ta.connection_closed(conn)
            port.close()

    async def run(self, unix_sock: socket.socket | None = None) -> None:
        if unix_sock is not None:
            await self.serve_unix(unix_sock)
            return
        stop = threading.Event()
        self.ready.set()
        try:
            await asyncio.to_thread(self.serve_serial, self.config.url, stop)
        finally:
            stop.set()
