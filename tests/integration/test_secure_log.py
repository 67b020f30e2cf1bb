"""The secure world's log channel reads like OP-TEE's secure UART: `E/TA:  func:line msg`, `I/TC: msg`.

A real secure world, a handshake with a wrong proof, then its channel read back: a file, and a
"second UART" behind a pyserial URL (a TCP socket the test listens on, as a terminal would).
"""

from __future__ import annotations

import os
import re
import socket
import time

import pytest

from agent.errors import ProofRejected, TeeLockedOut
from agent.tee.pairing import pair
from agent.tee.session import ChainedSession
from support.tee_process import TeeProcess
from tee_sim.abi.frame import Value
from tee_sim.abi.ids import Cmd

LINE = re.compile(r"^(?:[EDF]/TA:  \w+:\d+ |[EDF]/TC:\? \d+ \w+:\d+ |I/T[AC]: )\S")


def _wrong_proofs(url: str, home, n: int) -> None:
    with ChainedSession.open(url, home) as s:
        for _ in range(n):
            s.invoke(Cmd.SIGN, (os.urandom(32), Value(0, 0), 2048, None))
            with pytest.raises((ProofRejected, TeeLockedOut)):
                s.invoke(Cmd.PROOF, (os.urandom(32), 65, 32, None))


def _check_refusal_lines(lines: list[str]) -> None:
    assert lines and all(LINE.match(x) for x in lines), [x for x in lines if not LINE.match(x)]
    assert not any(re.search(r"\d{10}\.\d{6}", x) for x in lines)  # no wall-clock stamps, as on the UART
    assert "I/TC: listening on" in "\n".join(lines)
    refused = [x for x in lines if x.startswith("E/TA:  _proof:")]
    assert refused and "proof refused: MAC_INVALID (failures 1, lockout 0.0 s)" in refused[0]
    assert any(re.match(r"D/TA:  _error:\d+ PROOF req#\d+ session \d+: 0xffff3071 MAC_INVALID \(proof\)$", x)
               for x in lines)


def test_log_file_has_optee_lines_naming_the_refusal(tee, home, paired):
    _wrong_proofs(tee.url, home, 1)
    _check_refusal_lines(tee.log.read_text().splitlines())


def test_lockout_and_behind_refusals_are_error_lines(workdir, home):
    (workdir / "t").mkdir()
    tee = TeeProcess(workdir / "t", lockout_base=30).start()
    try:
        pair(tee.url, home)
        _wrong_proofs(tee.url, home, 4)  # the third failure locks; the fourth SIGN is refused
    except TeeLockedOut:
        pass
    finally:
        tee.stop()
    text = tee.log.read_text()
    assert re.search(r"^E/TA:  _proof:\d+ proof refused: MAC_INVALID \(failures 3, lockout 30\.0 s\)$", text, re.M)
    assert re.search(r"^E/TA:  _check_lockout:\d+ refused: BUSY, locked out for \d+\.\d s \(failures 3\)$",
                     text, re.M)


def test_secure_uart_behind_a_pyserial_url(workdir, home):
    """`--log socket://HOST:PORT`: the channel is a second serial line; here a TCP listener plays the terminal."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    (workdir / "u").mkdir()
    tee = TeeProcess(workdir / "u")
    tee.log = f"socket://127.0.0.1:{port}"  # type: ignore[assignment]
    tee.start()
    try:
        listener.settimeout(10)
        conn, _ = listener.accept()
        pair(tee.url, home)
        _wrong_proofs(tee.url, home, 1)
        data, deadline = b"", time.monotonic() + 10
        conn.settimeout(0.5)
        while b"MAC_INVALID (proof)" not in data and time.monotonic() < deadline:
            try:
                data += conn.recv(65536)
            except socket.timeout:
                pass
    finally:
        tee.stop()
        listener.close()
    assert b"\r\n" in data  # a serial line: CRLF, as a terminal expects
    _check_refusal_lines(data.decode().replace("\r\n", "\n").splitlines())
