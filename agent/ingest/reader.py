"""SerialReader: the sensor link's normal-world end, from a pyserial URL to a bounded queue of events.

A background thread reads the port (a UART, a pty, socket://, loop://), feeds the bytes to a
FrameDecoder and queues what it yields, stamped with the wall-clock time the bytes were read.

Why a thread that never waits for the consumer: a UART keeps sending, and bytes the reader does not
fetch are lost in the kernel where nobody counts them. So when the queue is full, new items are
discarded here, where they are counted: one coalesced `Dropped` summary is delivered as the very
next item once there is room, and frames delivered + frames in Dropped == frames decoded, always.

A link that fails (cable pulled, device gone, socket closed) is an event, not an exception: the
reader queues `LinkDown`, discards the decoder's partial frame (counted as "truncated"), retries
every `reconnect_delay` seconds until stopped, and queues `LinkUp` once the port opens again.

This module is the one door to pyserial for the sensor link: `open_port` is also what the
simulator (agent.ingest.sim) writes through.
"""

from __future__ import annotations

import fcntl
import select
import struct
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import serial
from serial.urlhandler import protocol_socket

from ..errors import AgentError, ConfigError
from .frames import Frame, FrameDecoder

#: Seconds a read waits for the first byte: bounds stop()'s latency and the idle loop's cost.
READ_TIMEOUT = 0.05
#: Largest single read, bytes (a few frames' worth keeps the decoder's work per call small).
READ_MAX = 65536


class LinkError(AgentError):
    """The sensor link could not be used (reported by open_port; the reader turns it into LinkDown)."""

    exit_code = 50


class BadLinkUrl(ConfigError):
    """A URL pyserial cannot handle at all (unknown scheme, malformed): retrying would not help."""


@dataclass(frozen=True)
class Dropped:
    """What back-pressure discarded since the last delivered item: `frames` Frames (seqs first_seq ..
    last_seq, contiguous on the wire) and `other_events` other items (gaps, errors, link events)."""

    frames: int
    first_seq: int | None
    last_seq: int | None
    other_events: int


@dataclass(frozen=True)
class LinkDown:
    """The port failed to read or open. `truncated_bytes`: the partial frame discarded with it."""

    reason: str
    truncated_bytes: int


@dataclass(frozen=True)
class LinkUp:
    url: str


@dataclass(frozen=True)
class Received:
    """One queue item: a frames.Event or Dropped / LinkDown / LinkUp, and when its bytes were read
    (wall-clock Unix ms from the reader's clock)."""

    event: object
    recv_ms: int


@dataclass(frozen=True)
class ReaderStats:
    """A snapshot: the decoder's Counters, then what the reader itself counted."""

    frames: int = 0
    bytes: int = 0
    corrupt: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    missing: int = 0
    duplicates: int = 0
    restarts: int = 0
    dropped_frames: int = 0         # Frames discarded by back-pressure (all Dropped.frames)
    dropped_other: int = 0          # other items discarded by back-pressure
    link_downs: int = 0             # LinkDown events (a failed first open counts too)
    reconnects: int = 0             # successful opens after a LinkDown
    truncated_bytes: int = 0        # partial-frame bytes discarded at LinkDown
    open_errors: int = 0            # failed open attempts, retries included
    queue_high_water: int = 0       # most items ever waiting in the queue


def open_port(url: str, *, baudrate: int = 115200, timeout: float | None = READ_TIMEOUT,
              write_timeout: float | None = None) -> serial.SerialBase:
    """An open pyserial port for `url`. Raises BadLinkUrl (unusable URL) or LinkError (cannot open)."""
    check_url(url)
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=write_timeout)
    except (serial.SerialException, OSError) as e:  # SerialException is an OSError; both for clarity
        raise LinkError(f"{url}: {e}") from None
    except ValueError as e:
        raise BadLinkUrl(f"{url}: {e}") from None


def check_url(url: str, baudrate: int = 115200) -> None:
    """Raise BadLinkUrl unless pyserial knows how to open `url` at `baudrate` (nothing is opened)."""
    try:
        serial.serial_for_url(url, do_not_open=True, baudrate=baudrate)
    except (ValueError, serial.SerialException) as e:
        raise BadLinkUrl(f"{url}: {e}") from None


def _default_opener(url: str, baudrate: int) -> serial.SerialBase:
    return open_port(url, baudrate=baudrate)


def _is_socket(port: serial.SerialBase) -> bool:
    return isinstance(port, protocol_socket.Serial)


def _waiting(port: serial.SerialBase) -> int:
    """Bytes readable now. pyserial's socket transport only says 0 or 1: ask the kernel instead."""
    if _is_socket(port):
        return struct.unpack("i", fcntl.ioctl(port.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    return port.in_waiting


def _socket_at_eof(port: serial.SerialBase) -> bool:
    """Readable with nothing to read: the peer closed (some pyserial versions return b"" forever)."""
    ready, _, _ = select.select([port.fileno()], [], [], 0)
    return bool(ready) and _waiting(port) == 0


def read_available(port: serial.SerialBase) -> bytes:
    """What the port holds, waiting up to its timeout for the first byte; b"" on an idle link.

    Raises OSError (pyserial's SerialException is one) when the link is gone.
    """
    n = _waiting(port)
    if n:
        return port.read(min(n, READ_MAX))
    data = port.read(1)
    if not data:
        if _is_socket(port) and _socket_at_eof(port):
            raise serial.SerialException("socket closed by peer")
        return b""
    n = _waiting(port)
    return data + port.read(min(n, READ_MAX)) if n else data


class SerialReader:
    """Reads `url` in a background thread; `get()` hands over what it decoded, in stream order.

    `opener(url, baudrate)` returns an open pyserial port (default: open_port); inject one to
    share a port with the test writing into it, e.g. a loop:// port.
    """

    def __init__(self, url: str, *, baudrate: int = 115200, queue_size: int = 4096,
                 reconnect_delay: float = 0.5, clock: Callable[[], float] = time.time,
                 opener: Callable[[str, int], serial.SerialBase] | None = None) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.url, self.baudrate = url, baudrate
        self.queue_size, self.reconnect_delay = queue_size, reconnect_delay
        self._clock = clock
        self._opener = opener or _default_opener
        self._decoder = FrameDecoder()
        self._cond = threading.Condition()
        self._queue: deque[Received] = deque()
        self._pending: list | None = None   # [frames, first_seq, last_seq, other, recv_ms] while dropping
        self._n = dict(dropped_frames=0, dropped_other=0, link_downs=0, reconnects=0, truncated_bytes=0,
                       open_errors=0, queue_high_water=0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- consumer side -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread. Raises BadLinkUrl for a URL that no retry could open."""
        if self._thread is not None:
            raise RuntimeError("SerialReader already started")
        if self._opener is _default_opener:
            check_url(self.url, self.baudrate)
        self._thread = threading.Thread(target=self._run, name=f"serial-reader {self.url}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the port (the thread closes it on its way out), waiting up to
        `timeout` s. Items still queued remain available to get()."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> list[Received]:
        """Everything queued, in order (may be []), after waiting up to `timeout` s for the first item
        (None: until one arrives or the reader stops). A pending Dropped summary comes last."""
        with self._cond:
            if not self._queue and self._pending is None:
                self._cond.wait_for(lambda: self._queue or self._pending is not None or self._stop.is_set(),
                                    timeout)
            out = list(self._queue)
            self._queue.clear()
            if self._pending is not None:  # the queue is empty now: there is room for the summary
                out.append(self._summary())
            return out

    @property
    def stats(self) -> ReaderStats:
        with self._cond:
            c = self._decoder.counters
            return ReaderStats(c.frames, c.bytes, dict(c.corrupt), c.gaps, c.missing, c.duplicates, c.restarts,
                               **self._n)

    # -- reader thread -------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _summary(self) -> Received:
        frames, first, last, other, recv_ms = self._pending
        self._pending = None
        return Received(Dropped(frames, first, last, other), recv_ms)

    def _put(self, event: object, recv_ms: int) -> None:
        """Queue one item (the lock is held). Never waits: on a full queue the item is counted into
        the pending Dropped summary, which takes the next free slot before anything else."""
        q = self._queue
        if self._pending is not None and len(q) < self.queue_size:
            q.append(self._summary())
        if self._pending is None and len(q) < self.queue_size:
            q.append(Received(event, recv_ms))
        else:
            if self._pending is None:
                self._pending = [0, None, None, 0, recv_ms]
            p = self._pending
            if isinstance(event, Frame):
                p[0] += 1
                p[1] = event.seq if p[1] is None else p[1]
                p[2] = event.seq
                self._n["dropped_frames"] += 1
            else:
                p[3] += 1
                self._n["dropped_other"] += 1
            p[4] = recv_ms
        if len(q) > self._n["queue_high_water"]:
            self._n["queue_high_water"] = len(q)

    def _emit(self, *events: object) -> None:
        now = self._now_ms()
        with self._cond:
            for e in events:
                self._put(e, now)
            self._cond.notify_all()

    def _open(self, was_down: bool) -> serial.SerialBase | None:
        """Open the port; on failure count it, queue LinkDown on the first failure of a run of them,
        and return None."""
        try:
            port = self._opener(self.url, self.baudrate)
        except Exception as e:  # noqa: BLE001 - LinkError mostly; whatever an opener raises, retry later
            with self._cond:
                self._n["open_errors"] += 1
                if not was_down:
                    self._n["link_downs"] += 1
            if not was_down:
                self._emit(LinkDown(f"open failed: {e}", 0))
            return None
        with self._cond:
            if was_down:
                self._n["reconnects"] += 1
        self._emit(LinkUp(self.url))
        return port

    def _link_down(self, port: serial.SerialBase, reason: str) -> None:
        now = self._now_ms()
        with self._cond:
            truncated = self._decoder.discard_partial()
            self._n["link_downs"] += 1
            self._n["truncated_bytes"] += truncated
            self._put(LinkDown(reason, truncated), now)
            self._cond.notify_all()
        _close(port)

    def _run(self) -> None:
        port: serial.SerialBase | None = None
        down = False    # True after a LinkDown, until the port opens again
        try:
            while not self._stop.is_set():
                if port is None:
                    port = self._open(down)
                    if port is None:
                        down = True
                        self._stop.wait(self.reconnect_delay)
                        continue
                    down = False
                try:
                    data = read_available(port)
                except OSError as e:   # serial.SerialException included: cable pulled, socket closed
                    self._link_down(port, str(e) or type(e).__name__)
                    port, down = None, True
                    self._stop.wait(self.reconnect_delay)
                    continue
                except Exception as e:  # noqa: BLE001 - the thread's boundary: report, reopen, keep serving
                    self._link_down(port, f"unexpected {type(e).__name__}: {e}")
                    port, down = None, True
                    self._stop.wait(self.reconnect_delay)
                    continue
                if data:
                    now = self._now_ms()
                    with self._cond:
                        for e in self._decoder.feed(data):
                            self._put(e, now)
                        self._cond.notify_all()
        finally:
            if port is not None:
                _close(port)
            with self._cond:
                self._cond.notify_all()


def _close(port: serial.SerialBase) -> None:
    try:
        port.close()
    except OSError:
        pass
