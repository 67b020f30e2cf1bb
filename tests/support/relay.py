"""A frame-aware Unix-socket relay between the worlds: the man in the middle of the attack tests.

The normal world connects to ``listen``; the relay connects to the secure world at ``upstream``
and forwards every frame through ``hook(outbound, raw) -> bytes | None``: return the bytes to
forward (the same, altered, or replaced) or None to drop the frame. Everything seen is recorded.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Callable

from tee_sim.abi import frame

Hook = Callable[[bool, bytes], "bytes | None"]


def _forward_all(outbound: bool, raw: bytes) -> bytes:
    return raw


class Relay:
    def __init__(self, listen: Path, upstream: Path, hook: Hook = _forward_all) -> None:
        self.listen = listen
        self.upstream = upstream
        self.hook = hook
        self.seen: list[tuple[bool, bytes]] = []  # (outbound, raw) as received, before the hook
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(listen))
        self._server.listen(8)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def url(self) -> str:
        return f"unix://{self.listen}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                nw, _ = self._server.accept()
            except OSError:
                return
            tee = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                tee.connect(str(self.upstream))
            except OSError:
                nw.close()
                continue
            self._conns += [nw, tee]
            for src, dst, outbound in ((nw, tee, True), (tee, nw, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, outbound), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        splitter = frame.StreamSplitter()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                for item in splitter.feed(data):
                    if not isinstance(item, bytes):
                        continue
                    with self._lock:
                        self.seen.append((outbound, item))
                        out = self.hook(outbound, item)
                    if out is not None:
                        dst.sendall(out)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass


def retarget(raw: bytes, **changes) -> bytes:
    """Re-encode a frame with some fields or parameters changed (a MITM that fixes up the CRC)."""
    from dataclasses import replace

    f = frame.decode(raw)
    if "params" in changes:
        params = list(f.params)
        for slot, value in changes.pop("params").items():
            params[slot] = value
        changes["params"] = tuple(params)
    return frame.encode(replace(f, **changes))
