"""TEE client: the normal world's libteec. Connect by URL, open/invoke/close, results become exceptions.

This module is the one place where a (TeecResult, Origin) pair becomes a Python exception.
Transports: ``unix:///path`` (a stream socket) or any pyserial URL. Blocking I/O with a timeout:
each call is one round trip, and the agent's async code runs it in a worker thread.
"""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass
from typing import Callable

from tee_sim.abi import frame
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, TA_UUID, Cmd, Login, Origin, ParamType, TeecResult, param_types

from ..errors import (KeyExists, ProofRejected, TeeAccessDenied, TeeBadParameters, TeeBadState, TeeCommsError,
                      TeeLockedOut, TeeNotFound, TeeProtocolError, TeeResultError, TeeUnavailable)

DEFAULT_TIMEOUT = 10.0
_OPEN_TYPES = param_types(ParamType.MEMREF_TEMP_INPUT, ParamType.VALUE_OUTPUT, ParamType.MEMREF_TEMP_OUTPUT,
                          ParamType.VALUE_OUTPUT)

_ERRORS: dict[int, type[TeeResultError]] = {
    TeecResult.ACCESS_DENIED: TeeAccessDenied,
    TeecResult.BAD_PARAMETERS: TeeBadParameters,
    TeecResult.BAD_STATE: TeeBadState,
    TeecResult.BUSY: TeeLockedOut,
    TeecResult.MAC_INVALID: ProofRejected,
    TeecResult.ACCESS_CONFLICT: KeyExists,
    TeecResult.ITEM_NOT_FOUND: TeeNotFound,
    TeecResult.BAD_FORMAT: TeeCommsError,
}


def raise_for_result(what: str, resp: Frame, hint: str = "") -> None:
    if resp.result != TeecResult.SUCCESS:
        cls = _ERRORS.get(resp.result, TeeResultError)
        if resp.origin == Origin.COMMS:
            cls = TeeCommsError
        raise cls(what, resp.result, resp.origin, hint)


@dataclass(frozen=True)
class TraceEvent:
    """One frame on the wire, for `aitn tee handshake --trace` and captures."""

    t: float  # perf_counter seconds
    outbound: bool  # normal world -> secure world
    raw: bytes
    frame: Frame


class Transport:
    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv_frame(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _StreamTransport(Transport):
    """Shared receive path: bytes -> StreamSplitter -> first whole frame (skipping line noise)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._splitter = frame.StreamSplitter()
        self._ready: list[bytes] = []

    def _read(self) -> bytes:
        raise NotImplementedError

    def recv_frame(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        received = 0  # bytes that arrived without making a frame: on a serial line, a sign of the wrong device
        while not self._ready:
            if time.monotonic() > deadline:
                raise TeeUnavailable(f"{self.url}: no answer within {self.timeout:g} s" + (
                    f" ({received} bytes arrived, none of them a frame: is this the secure world's line?)"
                    if received else ""))
            data = self._read()
            received += len(data)
            self._ready.extend(x for x in self._splitter.feed(data) if isinstance(x, bytes))
        return self._ready.pop(0)


class UnixTransport(_StreamTransport):
    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(url, timeout)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(url[len("unix://"):])
        except OSError as e:
            self._sock.close()
            raise TeeUnavailable(f"{url}: {e.strerror or e} (is the secure world running?)") from None

    def send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise TeeUnavailable(f"{self.url}: send failed: {e.strerror or e}") from None

    def _read(self) -> bytes:
        try:
            data = self._sock.recv(65536)
        except socket.timeout:
            raise TeeUnavailable(f"{self.url}: no answer within {self.timeout:g} s") from None
        except OSError as e:
            raise TeeUnavailable(f"{self.url}: receive failed: {e.strerror or e}") from None
        if not data:
            raise TeeUnavailable(f"{self.url}: the secure world closed the connection")
        return data

    def close(self) -> None:
        self._sock.close()


class SerialTransport(_StreamTransport):
    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(url, timeout)
        import serial

        try:
            self._port = serial.serial_for_url(url, timeout=0.05, baudrate=115200)
        except (serial.SerialException, ValueError) as e:
            raise TeeUnavailable(f"{url}: {e}") from None

    def send(self, data: bytes) -> None:
        self._port.write(data)
        self._port.flush()

    def _read(self) -> bytes:
        data = self._port.read(1)  # waits up to the poll interval, then take whatever else arrived
        if data and self._port.in_waiting:
            data += self._port.read(self._port.in_waiting)
        return data

    def close(self) -> None:
        self._port.close()


def connect(url: str, timeout: float = DEFAULT_TIMEOUT) -> Transport:
    if url.startswith("unix://"):
        return UnixTransport(url, timeout)
    return SerialTransport(url, timeout)


@dataclass(frozen=True)
class OpenedSession:
    id: int
    committed_height: int
    nonce: bytes
    flags: int
    timelock: int


class TeeClient:
    def __init__(self, transport: Transport, trace: Callable[[TraceEvent], None] | None = None) -> None:
        self.transport = transport
        self.trace = trace
        self._ids = itertools.count(1)

    @classmethod
    def connect(cls, url: str, timeout: float = DEFAULT_TIMEOUT,
                trace: Callable[[TraceEvent], None] | None = None) -> "TeeClient":
        return cls(connect(url, timeout), trace)

    def close(self) -> None:
        self.transport.close()

    def exchange(self, req: Frame) -> tuple[bytes, bytes, Frame]:
        """Send one request, return (request bytes, response bytes, response frame); results unchecked."""
        raw = frame.encode(req)
        return raw, *self.exchange_raw(raw, req.request_id)

    def exchange_raw(self, raw: bytes, request_id: int) -> tuple[bytes, Frame]:
        if self.trace:
            self.trace(TraceEvent(time.perf_counter(), True, raw, frame.decode(raw)))
        self.transport.send(raw)
        while True:
            resp_raw = self.transport.recv_frame()
            try:
                resp = frame.decode(resp_raw)
            except frame.FrameError as e:
                raise TeeProtocolError(f"undecodable response: {e.reason}") from None
            if self.trace:
                self.trace(TraceEvent(time.perf_counter(), False, resp_raw, resp))
            if resp.request_id == 0 and resp.origin == Origin.COMMS and request_id != 0:
                continue  # the secure world's answer to line noise it could not attribute: not ours
            if not resp.is_response or resp.request_id != request_id:
                raise TeeProtocolError(f"response for request {resp.request_id}, expected {request_id}")
            return resp_raw, resp

    def request(self, session: int, cmd: Cmd, params: tuple) -> Frame:
        return Frame(Kind.INVOKE, next(self._ids), session, int(cmd), CMD_PARAMS[cmd], params)

    def invoke(self, session: int, cmd: Cmd, params: tuple) -> Frame:
        _, _, resp = self.exchange(self.request(session, cmd, params))
        raise_for_result(cmd.name, resp)
        return resp

    def open_session(self) -> OpenedSession:
        req = Frame(Kind.OPEN_SESSION, next(self._ids), 0, int(Login.USER), _OPEN_TYPES,
                    (TA_UUID.bytes, None, 16, None))
        _, _, resp = self.exchange(req)
        raise_for_result("OPEN_SESSION", resp)
        height, nonce, info = resp.params[1], resp.params[2], resp.params[3]
        if not isinstance(height, Value) or not isinstance(nonce, bytes) or not isinstance(info, Value):
            raise TeeProtocolError("OPEN_SESSION answer lacks its parameters")
        return OpenedSession(resp.session, height.a | height.b << 32, nonce, info.a, info.b)

    def close_session(self, session: int) -> None:
        _, _, resp = self.exchange(Frame(Kind.CLOSE_SESSION, next(self._ids), session, 0, 0))
        raise_for_result("CLOSE_SESSION", resp)
