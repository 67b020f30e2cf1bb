"""The secure world's log channel (our "secure UART"), in OP-TEE's line format.

OP-TEE prints ``<level letter>/<component>:`` and, for the levels in its
``CFG_MSG_LONG_PREFIX_MASK`` (error, debug and flow by default; not info), a long prefix: the core
and thread for the TEE core, ``function:line`` for both. So a line reads like one from a board::

    I/TC: listening on unix:///run/aitn/tee.sock
    E/TC:? 1 _serve_unix_conn:82 conn 1: uid 0 is not allowed
    I/TA: paired: id 76015926eee028ce14c8331365c6fc07 time-lock 16
    E/TA:  _proof:405 proof refused: MAC_INVALID (failures 1, lockout 0.0 s)
    D/TA:  _error:158 PROOF req#4 session 5: 0xffff3071 MAC_INVALID (proof)

The core is ``?`` (OP-TEE's mark for "not in an atomic context": a Python thread has no fixed
core); the thread is the connection being served (0 for the main thread). There is no wall-clock
stamp, as on the real UART: whoever watches the channel timestamps it (``ts``, a terminal logger).

Levels as OP-TEE's CFG_TEE_CORE_LOG_LEVEL: 0 none, 1 error, 2 info, 3 debug, 4 flow. The channel
is a file path, ``-`` for standard error, a pyserial URL (``socket://host:port``, ``spy://...``)
or a serial port (``/dev/ttyAMA2``: a second UART, opened at 115200 8N1). It never receives key
material; proof-failure details are written only at level 3 and above.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import threading
from typing import TextIO

import serial

LETTERS = {1: "E", 2: "I", 3: "D", 4: "F"}
#: OP-TEE's default CFG_MSG_LONG_PREFIX_MASK (0x1a): levels that carry function:line.
LONG_PREFIX = frozenset({1, 3, 4})
_UART = re.compile(r"^/dev/tty[A-Za-z]+[0-9]+$")
SERIAL_BAUD = 115200


def _is_uart(path: str) -> bool:
    """A serial port such as /dev/ttyAMA2 or /dev/ttyUSB0: its line is set with pyserial.

    Not /dev/tty, /dev/pts/N or /dev/stderr: pyserial puts a port in raw mode, which would wreck
    an interactive terminal; those are written as files (use ``-`` for standard error).
    """
    return _UART.match(path) is not None and os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode)


def _thread_id() -> int:
    """The connection a server thread serves (threads are named ``conn-N``); 0 elsewhere."""
    name = threading.current_thread().name
    if name.startswith("conn-") and name[5:].isdigit():
        return int(name[5:])
    return 0


def format_line(lvl: int, comp: str, msg: str, function: str = "", line: int = 0, thread: int = 0) -> str:
    """One log line without its newline, as OP-TEE's trace_printf lays it out."""
    head = f"{LETTERS[lvl]}/{comp}:"
    if lvl not in LONG_PREFIX:
        return f"{head} {msg}"
    where = f"{function}:{line} " if function else ""
    if comp == "TC":
        return f"{head}? {thread} {where}{msg}"
    return f"{head}  {where}{msg}"


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
            return cls(level, raw=serial.serial_for_url(target, baudrate=SERIAL_BAUD))
        if _is_uart(target):  # a real second UART: set its line, not just append to it
            return cls(level, raw=serial.serial_for_url(target, baudrate=SERIAL_BAUD))
        return cls(level, open(target, "a", buffering=1, encoding="utf-8"))

    def _emit(self, lvl: int, comp: str, msg: str) -> None:
        if lvl > self.level:
            return
        caller = sys._getframe(2)  # the function that called error()/info()/...: OP-TEE's __func__:__LINE__
        line = format_line(lvl, comp, msg, caller.f_code.co_name, caller.f_lineno, _thread_id()) + "\n"
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
