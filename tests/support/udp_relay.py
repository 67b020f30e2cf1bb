"""A lossy, recording UDP relay between CoAP clients and the node: the bad network of fault and attack tests.

Clients send to ``address``; for each client source address the relay opens (on its first datagram)
one UDP socket connected to ``upstream``, so the server sees one distinct source per client and its
replies find their way back (a NAT in miniature). Each datagram is recorded as received, then dropped
with probability ``loss_up`` (client -> server) or ``loss_down`` (server -> client), or always while
``blackhole`` is set, and otherwise forwarded, after ``delay`` seconds if one is set.

Loss is reproducible: each direction draws from its own ``random.Random`` derived from ``seed``, one
draw per datagram whatever the loss is at the time, so with a fixed seed the k-th datagram of a
direction meets the same draw in every run, however the two directions interleave.

``inject()`` sends raw bytes upstream outside the relay (no loss, no records, no counters): from a
recorded client's own upstream socket, as a replay would arrive, or from a fresh one.

As its own process (the first line on stdout is the bound port; SIGTERM or SIGINT stops it and a
JSON summary of the counters goes to stderr)::

    python -m tests.support.udp_relay --listen 127.0.0.1:0 --upstream 127.0.0.1:5683 --loss 0.3 --seed 7
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import queue
import random
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import NamedTuple

Address = tuple[str, int]

MAX_DATAGRAM = 65535
#: Datagrams read from one ready socket before the loop looks at the others (fairness under a flood).
_BURST = 64


class Datagram(NamedTuple):
    """One datagram as the relay received it, before any drop."""

    t: float  # time.monotonic() at receipt
    direction: str  # "up" (client -> server) or "down" (server -> client)
    client: Address  # the client it came from or was going to
    data: bytes


@dataclass
class Counts:
    """One direction's counters. ``received == forwarded + dropped + errors`` once delayed sends are out."""

    received: int = 0
    forwarded: int = 0
    dropped: int = 0  # by loss or blackhole
    errors: int = 0  # the send failed
    refused: int = 0  # "up" only: ICMP port unreachable came back (nothing listens upstream)


def _probability(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")
    return value


class UdpRelay:
    """A UDP relay on loopback, run by one thread; started on construction, stopped by ``stop()``.

    Args:
        upstream: the server's (host, port).
        listen: where clients send; port 0 picks a free one (see ``port`` / ``address``).
        loss: drop probability for both directions; ``loss_up`` / ``loss_down`` override it per direction.
        seed: seeds the loss draws; None draws from the OS.
        delay: seconds added to every forwarded datagram, each direction.
        max_records: how many of the latest datagrams ``records`` keeps.

    Raises:
        ValueError: a probability outside [0, 1] or a negative delay.
        OSError: ``listen`` cannot be bound.
    """

    def __init__(self, upstream: Address, listen: Address = ("127.0.0.1", 0), *, loss: float = 0.0,
                 loss_up: float | None = None, loss_down: float | None = None, seed: int | None = None,
                 delay: float = 0.0, max_records: int = 10000) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.upstream = upstream
        self.loss_up = loss if loss_up is None else loss_up
        self.loss_down = loss if loss_down is None else loss_down
        self.blackhole = False
        self.delay = delay
        self.up = Counts()
        self.down = Counts()
        master = random.Random(seed)
        self._rng = {"up": random.Random(master.getrandbits(64)), "down": random.Random(master.getrandbits(64))}
        self._records: deque[Datagram] = deque(maxlen=max_records)
        self._lock = threading.Lock()  # records, the client map, captures
        self._inject_lock = threading.Lock()
        self._by_client: dict[Address, socket.socket] = {}
        self._sources: dict[Address, Address] = {}  # client -> the source address the server sees
        self._captures: dict[Address, queue.SimpleQueue[bytes]] = {}
        self._pending: list[tuple[float, int, socket.socket, bytes, Address | None, Counts]] = []
        self._seq = itertools.count()

        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._listen.bind(listen)
        except OSError:
            self._listen.close()
            raise
        self._listen.setblocking(False)
        self._address: Address = self._listen.getsockname()  # kept: still readable after stop()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = threading.Event()
        self._stopped = False
        self.failure: BaseException | None = None  # what killed the loop, if anything did
        self._thread = threading.Thread(target=self._run, name=f"udp-relay:{self.port}", daemon=True)
        self._thread.start()

    # -- public surface -------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def loss(self) -> tuple[float, float]:
        return self.loss_up, self.loss_down

    @loss.setter
    def loss(self, value: float) -> None:
        self.loss_up = self.loss_down = value

    @property
    def loss_up(self) -> float:
        return self._loss_up

    @loss_up.setter
    def loss_up(self, value: float) -> None:
        self._loss_up = _probability(value, "loss_up")

    @property
    def loss_down(self) -> float:
        return self._loss_down

    @loss_down.setter
    def loss_down(self, value: float) -> None:
        self._loss_down = _probability(value, "loss_down")

    @property
    def records(self) -> list[Datagram]:
        """A snapshot of the latest ``max_records`` datagrams received, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def clients(self) -> dict[Address, Address]:
        """Each client seen -> the source address the server sees for it."""
        with self._lock:
            return dict(self._sources)

    def stats(self) -> dict[str, dict[str, int]]:
        """A snapshot of both directions' counters: {"up": {...}, "down": {...}}, as in ``Counts``."""
        return {"up": asdict(self.up), "down": asdict(self.down)}

    def inject(self, data: bytes, client: Address | None = None, timeout: float = 1.0) -> bytes | None:
        """Send ``data`` to the server and return the first datagram it answers within ``timeout``, or None.

        With ``client`` the datagram leaves from that client's upstream socket, so the server sees it
        from the same source as the recorded traffic; the answer is taken out of the stream and not
        forwarded to the client. (Any datagram the server sends that client meanwhile counts as the
        answer; one arriving after the timeout is forwarded as usual.) Without ``client`` it leaves
        from a fresh socket. Neither way goes through loss, blackhole, delay, records or counters.

        Raises:
            KeyError: ``client`` has sent nothing through the relay.
            RuntimeError: the relay is stopped.
        """
        if self._stopping.is_set():
            raise RuntimeError("the relay is stopped")
        if client is None:
            return self._inject_fresh(data, timeout)
        client = (client[0], client[1])
        with self._inject_lock:
            with self._lock:
                sock = self._by_client[client]
                answer: queue.SimpleQueue[bytes] = queue.SimpleQueue()
                self._captures[client] = answer  # armed before sending: a fast answer cannot slip past
            try:
                try:
                    sock.send(data)
                except ConnectionRefusedError:  # a pending ICMP error from earlier traffic; send again
                    sock.send(data)
                return answer.get(timeout=timeout)
            except (OSError, queue.Empty):
                with self._lock:
                    if self._captures.get(client) is answer:
                        del self._captures[client]
                        return None
                return answer.get_nowait()  # the loop took the answer between our timeout and the lock

    def stop(self) -> None:
        """Stop the loop, join it, close every socket. Delayed datagrams not yet sent are discarded.

        Raises:
            RuntimeError: the loop had died of an unexpected exception (its cause is chained).
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._sel.close()
        with self._lock:
            socks = [self._listen, self._wake_r, self._wake_w, *self._by_client.values()]
        for s in socks:
            s.close()
        if self.failure is not None:
            raise RuntimeError("the relay's loop died") from self.failure

    def __enter__(self) -> UdpRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # the thread's boundary: keep it for stop() to raise
            self.failure = e
            raise

    def _loop(self) -> None:
        while not self._stopping.is_set():
            timeout = max(0.0, self._pending[0][0] - time.monotonic()) if self._pending else None
            for key, _ in self._sel.select(timeout):
                if key.data == "wake":
                    self._drain_wake()
                elif key.data is None:
                    self._from_clients()
                else:
                    self._from_server(key.data)
            self._send_due()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _from_clients(self) -> None:
        for _ in range(_BURST):
            try:
                data, client = self._listen.recvfrom(MAX_DATAGRAM)
            except OSError:  # BlockingIOError: drained
                return
            self._record("up", client, data)
            sock = self._upstream_for(client)
            if sock is None:
                self.up.errors += 1
            elif self._fate("up", self.loss_up):
                self.up.dropped += 1
            else:
                self._forward(sock, data, None, self.up)

    def _from_server(self, client: Address) -> None:
        sock = self._by_client[client]
        for _ in range(_BURST):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # ConnectionRefusedError: an earlier datagram met a closed port
                self.up.refused += 1
                continue
            with self._lock:
                answer = self._captures.pop(client, None)
                if answer is not None:
                    answer.put(data)
                    continue
            self._record("down", client, data)
            if self._fate("down", self.loss_down):
                self.down.dropped += 1
            else:
                self._forward(self._listen, data, client, self.down)

    def _upstream_for(self, client: Address) -> socket.socket | None:
        sock = self._by_client.get(client)
        if sock is not None:
            return sock
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.address[0], 0))
            sock.connect(self.upstream)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        with self._lock:
            self._by_client[client] = sock
            self._sources[client] = sock.getsockname()
        self._sel.register(sock, selectors.EVENT_READ, client)
        return sock

    def _record(self, direction: str, client: Address, data: bytes) -> None:
        getattr(self, direction).received += 1
        with self._lock:
            self._records.append(Datagram(time.monotonic(), direction, client, data))

    def _fate(self, direction: str, loss: float) -> bool:
        """True to drop. Always one draw, so the sequence does not depend on loss or blackhole."""
        draw = self._rng[direction].random()
        return self.blackhole or draw < loss

    def _forward(self, sock: socket.socket, data: bytes, to: Address | None, counts: Counts) -> None:
        if self.delay > 0:
            heapq.heappush(self._pending, (time.monotonic() + self.delay, next(self._seq), sock, data, to, counts))
        else:
            self._send(sock, data, to, counts)

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            _, _, sock, data, to, counts = heapq.heappop(self._pending)
            self._send(sock, data, to, counts)

    @staticmethod
    def _send(sock: socket.socket, data: bytes, to: Address | None, counts: Counts) -> None:
        # Counted before sending, so whoever receives the datagram already sees it counted.
        counts.forwarded += 1
        try:
            if to is None:
                sock.send(data)
            else:
                sock.sendto(data, to)
        except OSError:
            counts.forwarded -= 1
            counts.errors += 1

    def _inject_fresh(self, data: bytes, timeout: float) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(self.upstream)
                sock.send(data)
                return sock.recv(MAX_DATAGRAM)
            except OSError:  # TimeoutError, or ConnectionRefusedError from a closed port
                return None


# -- as its own process ---------------------------------------------------------------------------

def _host_port(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.udp_relay", description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), help="HOST:PORT (default 127.0.0.1:0)")
    p.add_argument("--upstream", type=_host_port, required=True, help="the server's HOST:PORT")
    p.add_argument("--loss", type=float, default=0.0, help="drop probability, both directions (default 0)")
    p.add_argument("--loss-up", type=float, default=None, help="client -> server drop probability")
    p.add_argument("--loss-down", type=float, default=None, help="server -> client drop probability")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--delay", type=float, default=0.0, help="seconds added per datagram (default 0)")
    args = p.parse_args(argv)
    try:
        relay = UdpRelay(args.upstream, args.listen, loss=args.loss, loss_up=args.loss_up,
                         loss_down=args.loss_down, seed=args.seed, delay=args.delay)
    except (ValueError, OSError) as e:
        print(f"udp_relay: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(relay.port, flush=True)
    while not done.wait(0.2):
        pass
    relay.stop()
    print(json.dumps(relay.stats()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
