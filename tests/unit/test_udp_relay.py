"""The lossy UDP relay of the fault tests, tested against a plain UDP echo server on loopback."""

from __future__ import annotations

import json
import math
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from support.udp_relay import Datagram, UdpRelay

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


class EchoServer:
    """Answers every datagram with itself (unless ``silent``); notes who sent what."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, port))
        self.sock.settimeout(0.05)
        self.silent = False
        self.seen: list[tuple[tuple[str, int], bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.seen.append((peer, data))
            if not self.silent:
                self.sock.sendto(data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(1.0)
    return sock


def _wait(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.002)


def _nothing_arrives(sock: socket.socket, within: float = 0.2) -> bool:
    ready, _, _ = select.select([sock], [], [], within)
    return not ready


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while select.select([sock], [], [], 0)[0]:
        out.append(sock.recv(65535))
    return out


def _pump(relay: UdpRelay, echo: EchoServer, sock: socket.socket, payloads: list[bytes],
          batch: int = 100) -> list[bytes]:
    """Send in batches, letting each settle so no socket buffer overflows; return the replies."""
    replies: list[bytes] = []
    for i in range(0, len(payloads), batch):
        for p in payloads[i:i + batch]:
            sock.sendto(p, relay.address)
        sent = min(i + batch, len(payloads))
        _wait(lambda: relay.up.received == sent and len(echo.seen) == relay.up.forwarded
              and relay.down.received == len(echo.seen))
        _wait(lambda: relay.down.forwarded + relay.down.dropped == relay.down.received)
        replies += _drain(sock)
    time.sleep(0.01)
    return replies + _drain(sock)


def test_lossless_every_datagram_round_trips_and_counters_match(echo):
    with UdpRelay(echo.address) as relay, _client() as sock:
        for i in range(200):
            sock.sendto(b"ping %d" % i, relay.address)
            assert sock.recvfrom(65535) == (b"ping %d" % i, relay.address)
        assert relay.stats() == {d: {"received": 200, "forwarded": 200, "dropped": 0, "errors": 0, "refused": 0}
                                 for d in ("up", "down")}
        assert relay.clients == {sock.getsockname(): echo.seen[0][0]}
        assert {peer for peer, _ in echo.seen} == {echo.seen[0][0]}


def test_loss_rate_per_direction_is_within_a_binomial_bound(echo):
    p = 0.3
    with UdpRelay(echo.address, loss=p, seed=1234) as relay, _client() as sock:
        replies = _pump(relay, echo, sock, [b"%d" % i for i in range(2000)])
        assert relay.up.received == 2000  # nothing lost in the kernel: the measured rate is the relay's
        for counts in (relay.up, relay.down):
            n = counts.received
            assert counts.forwarded + counts.dropped == n and counts.errors == 0
            assert abs(counts.dropped / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n), counts
        assert relay.down.received == relay.up.forwarded == len(echo.seen)
        assert len(replies) == relay.down.forwarded


def test_the_same_seed_drops_the_same_datagrams(echo):
    def run(seed: int) -> tuple[list[bytes], list[bytes]]:
        echo.seen.clear()
        with UdpRelay(echo.address, loss=0.5, seed=seed) as relay, _client() as sock:
            replies = _pump(relay, echo, sock, [b"%d" % i for i in range(300)])
        return [data for _, data in echo.seen], replies

    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_blackhole_drops_both_directions(echo):
    with UdpRelay(echo.address) as relay, _client() as sock:
        sock.sendto(b"hello", relay.address)
        assert sock.recv(65535) == b"hello"
        relay.blackhole = True
        for _ in range(20):
            sock.sendto(b"lost", relay.address)
        _wait(lambda: relay.up.dropped == 20)
        echo.sock.sendto(b"unsolicited", echo.seen[0][0])  # the server speaks to the client's mapping
        _wait(lambda: relay.down.dropped == 1)
        assert len(echo.seen) == 1 and _nothing_arrives(sock)
        relay.blackhole = False
        sock.sendto(b"back", relay.address)
        assert sock.recv(65535) == b"back"


def test_loss_changes_at_runtime(echo):
    with UdpRelay(echo.address, loss=1.0) as relay, _client() as sock:
        sock.sendto(b"x", relay.address)
        _wait(lambda: relay.up.dropped == 1)
        relay.loss_up = 0.0
        sock.sendto(b"y", relay.address)
        _wait(lambda: relay.down.dropped == 1)
        assert _nothing_arrives(sock)
        relay.loss_down = 0.0
        sock.sendto(b"z", relay.address)
        assert sock.recv(65535) == b"z"
        assert relay.loss == (0.0, 0.0)


def test_two_clients_get_their_own_replies(echo):
    with UdpRelay(echo.address) as relay, _client() as a, _client() as b:
        for i in range(50):
            a.sendto(b"a%d" % i, relay.address)
            b.sendto(b"b%d" % i, relay.address)
            assert a.recv(65535) == b"a%d" % i
            assert b.recv(65535) == b"b%d" % i
        mapping = relay.clients
        assert set(mapping) == {a.getsockname(), b.getsockname()}
        assert len(set(mapping.values())) == 2
        assert {peer for peer, _ in echo.seen} == set(mapping.values())


def test_records_hold_every_datagram_as_received(echo):
    with UdpRelay(echo.address, loss_down=1.0) as relay, _client() as sock:
        for n, data in enumerate((b"one", b"two"), 1):
            sock.sendto(data, relay.address)
            _wait(lambda: relay.down.dropped == n)
        records = relay.records
        me = sock.getsockname()
        assert [(d, c, b) for _, d, c, b in records] == [
            ("up", me, b"one"), ("down", me, b"one"), ("up", me, b"two"), ("down", me, b"two")]
        assert all(isinstance(r, Datagram) for r in records)
        assert [r.t for r in records] == sorted(r.t for r in records)


def test_records_keep_only_the_latest(echo):
    with UdpRelay(echo.address, max_records=5) as relay, _client() as sock:
        for i in range(10):
            sock.sendto(b"%d" % i, relay.address)
            sock.recv(65535)
        assert [(r.direction, r.data) for r in relay.records] == [
            ("down", b"7"), ("up", b"8"), ("down", b"8"), ("up", b"9"), ("down", b"9")]


def test_inject_from_a_fresh_socket_returns_the_reply(echo):
    with UdpRelay(echo.address) as relay:
        assert relay.inject(b"fresh") == b"fresh"
        assert relay.records == [] and relay.up.received == 0
        assert relay.clients == {}


def test_inject_as_a_recorded_client_takes_the_reply_away_from_it(echo):
    with UdpRelay(echo.address) as relay, _client() as sock:
        sock.sendto(b"request", relay.address)
        assert sock.recv(65535) == b"request"
        client, recorded = next((r.client, r.data) for r in relay.records if r.direction == "up")
        relay.loss = 1.0  # injection goes around the loss
        assert relay.inject(recorded, client) == b"request"
        assert echo.seen[1] == echo.seen[0]  # the same source as the original, as a replay would be
        assert _nothing_arrives(sock)
        assert relay.stats()["down"]["received"] == 1


def test_inject_without_an_answer_returns_none(echo):
    echo.silent = True
    with UdpRelay(echo.address) as relay, _client() as sock:
        sock.sendto(b"hi", relay.address)
        _wait(lambda: len(echo.seen) == 1)
        started = time.monotonic()
        assert relay.inject(b"again", sock.getsockname(), timeout=0.2) is None
        assert relay.inject(b"again", timeout=0.2) is None
        assert time.monotonic() - started < 1.0
        with pytest.raises(KeyError):
            relay.inject(b"x", (LOOPBACK, 1))


def test_stop_releases_the_port_and_the_upstream_sockets(echo):
    relay = UdpRelay(echo.address)
    with _client() as sock:
        sock.sendto(b"hi", relay.address)
        assert sock.recv(65535) == b"hi"
    relay.stop()
    relay.stop()  # idempotent
    with pytest.raises(RuntimeError):
        relay.inject(b"x")
    for address in (relay.address, *relay.clients.values()):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(address)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's own report
def test_a_dead_loop_is_reported_by_stop(echo):
    relay = UdpRelay(echo.address)

    def broken(direction: str, loss: float) -> bool:
        raise ZeroDivisionError

    relay._fate = broken  # a bug inside the loop
    with _client() as sock:
        sock.sendto(b"boom", relay.address)
        _wait(lambda: relay.failure is not None)
    with pytest.raises(RuntimeError) as info:
        relay.stop()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_server_that_comes_back_is_reached_again():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        free = probe.getsockname()
    with UdpRelay(free) as relay, _client() as sock:
        sock.sendto(b"anyone?", relay.address)
        _wait(lambda: relay.up.refused == 1)  # ICMP port unreachable, and the relay lives on
        server = EchoServer(free[1])
        try:
            sock.sendto(b"back", relay.address)
            assert sock.recv(65535) == b"back"
        finally:
            server.close()


def test_delay_is_added_each_way(echo):
    with UdpRelay(echo.address, delay=0.1) as relay, _client() as sock:
        started = time.monotonic()
        sock.sendto(b"slow", relay.address)
        assert sock.recv(65535) == b"slow"
        assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("kwargs", [{"loss": 1.5}, {"loss_up": -0.1}, {"loss_down": 2}, {"delay": -1}])
def test_bad_settings_are_refused(echo, kwargs):
    with pytest.raises(ValueError):
        UdpRelay(echo.address, **kwargs)


def test_loss_set_at_runtime_is_checked(echo):
    with UdpRelay(echo.address) as relay:
        with pytest.raises(ValueError):
            relay.loss_down = 1.01


def test_runs_as_its_own_process(echo):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.udp_relay", "--listen", f"{LOOPBACK}:0",
         "--upstream", f"{LOOPBACK}:{echo.address[1]}", "--loss", "0", "--seed", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the relay printed nothing"
        port = int(proc.stdout.readline())
        with _client() as sock:
            sock.sendto(b"through a process", (LOOPBACK, port))
            assert sock.recv(65535) == b"through a process"
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert json.loads(err.strip().splitlines()[-1])["down"]["forwarded"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
