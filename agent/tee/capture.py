"""Capturing the frames between the worlds into pcapng: a recorder, the capturing relay, traced sessions.

How a capture sees other processes' traffic: ``aitn tee capture`` is a relay. It listens on a
Unix socket of its own, and for each connection there it opens one to the secure world and
forwards the bytes both ways unchanged, while a ``StreamSplitter`` per direction cuts a copy of
the stream into frames for the file. The normal world is pointed at the relay (``--tee
unix:///relay.sock``, ``AITN_TEE`` or the board file); nothing needs privileges or a kernel
capture. Bytes that are not a whole frame (garbage, a bad CRC, a stream cut inside a frame) are
recorded too, with a comment saying why, so a malformed frame shows up where it happened.

Each relayed connection is one pcapng interface whose ``if_name`` is the secure world's URL (the
transport) and whose description names the connection; each frame is one Enhanced Packet Block
with its direction in ``epb_flags`` (outbound = normal world -> secure world).

The secure world sees the relay's uid, not the client's: the relay's socket is created mode 0600,
so only the relay's own user can use it.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from tee_sim.abi import frame

from .. import __version__
from ..errors import ConfigError, TeeUnavailable
from . import pcapng
from .client import TraceEvent

APPLICATION = f"aitn {__version__}"
READ_SIZE = 65536
MAX_CONNECTIONS = 32


def _now_us() -> int:
    return time.time_ns() // 1000


def unix_path(url: str, what: str) -> Path:
    if not url.startswith("unix://") or len(url) <= len("unix://"):
        raise ConfigError(f"{what} must be a unix:///path URL, got {url!r} (a serial link can be captured with "
                          "`aitn tee handshake --capture`, not through the relay)")
    return Path(url[len("unix://"):])


class Recorder:
    """A pcapng file being written from several threads; stops recording after ``count`` packets."""

    def __init__(self, stream: BinaryIO, count: int | None = None) -> None:
        self._writer = pcapng.Writer(stream, APPLICATION)
        self._lock = threading.Lock()
        self.count = count
        self.full = threading.Event()

    @property
    def packets(self) -> int:
        return self._writer.packets

    @property
    def interfaces(self) -> int:
        return len(self._writer.interfaces)

    def add_transport(self, url: str, description: str) -> int:
        with self._lock:
            return self._writer.add_interface(pcapng.Interface(url, description))

    def record(self, iface: int, outbound: bool, data: bytes, ts_us: int, comment: str = "") -> None:
        with self._lock:
            if self.full.is_set():
                return
            self._writer.write(pcapng.Packet(iface, ts_us, data, outbound, comment))
            if self.count is not None and self._writer.packets >= self.count:
                self.full.set()


def split_keeping_bytes(splitter: frame.StreamSplitter, pending: bytearray, data: bytes) -> list[tuple[bytes, str]]:
    """Feed ``data``; return (bytes, comment) chunks: whole frames (comment "") and skipped bytes (why).

    ``pending`` mirrors the splitter's buffer (the caller keeps it between calls). The splitter only
    reports that it skipped bytes; this recovers which, so a malformed frame is captured as it was.
    """
    pending += data
    items = splitter.feed(data)
    consumed = len(pending) - splitter.pending
    out: list[tuple[bytes, str]] = []
    reasons: list[str] = []
    pos = 0
    for item in items:
        if isinstance(item, frame.FrameError):
            reasons.append(item.reason)
            continue
        idx = pending.find(item, pos)
        if idx > pos:
            out.append((bytes(pending[pos:idx]), "; ".join(reasons) or "bytes skipped"))
        reasons = []
        out.append((item, ""))
        pos = idx + len(item)
    if pos < consumed:
        out.append((bytes(pending[pos:consumed]), "; ".join(reasons) or "bytes skipped"))
    del pending[:consumed]
    return out


class CaptureRelay:
    """Listens at ``listen`` (unix://), forwards each connection to ``upstream`` (unix://), records frames."""

    def __init__(self, listen: str, upstream: str, recorder: Recorder,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.listen_url, self.upstream_url = listen, upstream
        self.listen_path = unix_path(listen, "--listen")
        self.upstream_path = unix_path(upstream, "the secure world's URL (--tee)")
        self.recorder = recorder
        self.log = log
        self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._server: socket.socket | None = None

    def start(self) -> "CaptureRelay":
        self._clear_stale_socket()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.listen_path))
            os.chmod(self.listen_path, 0o600)  # whoever connects acts with the relay's uid
            server.listen(8)
        except OSError as e:
            server.close()
            raise TeeUnavailable(f"{self.listen_url}: cannot listen: {e.strerror or e}") from None
        server.settimeout(0.2)
        self._server = server
        t = threading.Thread(target=self._accept, name="capture-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _clear_stale_socket(self) -> None:
        p = self.listen_path
        if not p.exists():
            return
        if not stat.S_ISSOCK(p.stat().st_mode):
            raise ConfigError(f"{self.listen_url}: exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(p))
            except OSError:
                p.unlink()  # left behind by a process that died
                return
        raise TeeUnavailable(f"{self.listen_url}: another process is listening there")

    def wait(self, duration: float | None = None) -> None:
        """Until the recorder is full (and its last frame forwarded), ``duration`` s pass, or ``stop()``."""
        deadline = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set():
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return
            self._stop.wait(left)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop accepting, cut every relayed connection, wait for the threads (briefly)."""
        self._stop.set()
        if self._server is not None:
            self._server.close()
            try:
                self.listen_path.unlink()
            except OSError:
                pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _shutdown(s)
        for t in self._threads:
            t.join(2.0)

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                nw, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                if len(self._socks) >= 2 * MAX_CONNECTIONS:
                    nw.close()
                    self.log(f"refused a connection: {MAX_CONNECTIONS} open")
                    continue
                self.connections += 1
                conn = self.connections
            sw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sw.connect(str(self.upstream_path))
            except OSError as e:
                self.log(f"connection {conn}: cannot reach the secure world at {self.upstream_url}: "
                         f"{e.strerror or e}")
                sw.close()
                nw.close()
                continue
            iface = self.recorder.add_transport(self.upstream_url,
                                                f"aitn relay connection {conn}: {self.listen_url} -> "
                                                f"{self.upstream_url}")
            with self._lock:
                self._socks.update((nw, sw))
            for src, dst, outbound in ((nw, sw, True), (sw, nw, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, outbound, iface),
                                     name=f"capture-{conn}-{'out' if outbound else 'in'}", daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool, iface: int) -> None:
        splitter = frame.StreamSplitter()
        pending = bytearray()
        try:
            while True:
                data = src.recv(READ_SIZE)
                if not data:
                    break
                now = _now_us()
                # Record before forwarding, so a request is always in the file before its answer.
                for chunk, comment in split_keeping_bytes(splitter, pending, data):
                    self.recorder.record(iface, outbound, chunk, now, comment)
                dst.sendall(data)
                if self.recorder.full.is_set():  # the last frame counted has been delivered: done
                    self._stop.set()
        except OSError:
            pass
        finally:
            if pending:
                self.recorder.record(iface, outbound, bytes(pending), _now_us(),
                                     f"connection ended inside a frame ({len(pending)} bytes)")
            for s in (src, dst):
                _shutdown(s)
            with self._lock:
                self._socks.discard(src)
            src.close()


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def write_trace(stream: BinaryIO, events: Iterable[TraceEvent], transport: str, description: str) -> int:
    """Write traced frames (TeeClient's ``trace`` events, one connection) as a pcapng file; returns the count.

    Events carry ``perf_counter`` times; they are placed on the wall clock by the offset between the
    two clocks now (a handshake is far too short for the clocks to drift apart).
    """
    offset_us = _now_us() - int(time.perf_counter() * 1e6)
    w = pcapng.Writer(stream, APPLICATION)
    iface = w.add_interface(pcapng.Interface(transport, description))
    n = 0
    for ev in events:
        w.write(pcapng.Packet(iface, offset_us + int(ev.t * 1e6), ev.raw, ev.outbound))
        n += 1
    return n
