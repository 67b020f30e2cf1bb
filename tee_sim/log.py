"""The secure world's log channel (our "secure UART"), in OP-TEE's style: ``E/TA: message``.

Levels as OP-TEE's CFG_TEE_CORE_LOG_LEVEL: 0 none, 1 error, 2 info, 3 debug, 4 flow. The channel
is a file path, ``-`` for standard error, or a pyserial URL (a real second UART). It never receives
key material; proof-failure details are written only at level 3 and above.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

import serial

LETTERS = {1: "E", 2: "I", 3: "D", 4: "F"}


class SecureLog:
    def __init__(self, level: int, out: TextIO | None = None, raw=None) -> None:
        if not 0 <= level <= 4:
            raise ValueError(f"log level {level} is not in 0..4")
        self.level = level
        self._out = out
        self._raw = raw  # a pyserial port: bytes
        self._lock = threading.Lock()

    @classmethod
    def open(cls, target: str, level: int) -> "SecureLog":
        if target in ("", "-"):
            return cls(level, sys.stderr)
        if "://" in target:  # a secure UART behind a pyserial URL
            return cls(level, raw=serial.serial_for_url(target))
        return cls(level, open(target, "a", buffering=1, encoding="utf-8"))

    def _emit(self, lvl: int, comp: str, msg: str) -> None:
        if lvl > self.level:
            return
        line = f"{LETTERS[lvl]}/{comp}: {time.time():.6f} {msg}\n"
        with self._lock:
            if self._raw is not None:
                self._raw.write(line.replace("\n", "\r\n").encode())
            elif self._out is not None:
                self._out.write(line)
                self._out.flush()

    def error(self, comp: str, msg: str) -> None:
        self._emit(1, comp, msg)

    def info(self, comp: str, msg: str) -> None:
        self._emit(2, comp, msg)

    def debug(self, comp: str, msg: str) -> None:
        self._emit(3, comp, msg)

    def flow(self, comp: str, msg: str) -> None:
        self._emit(4, comp, msg)
