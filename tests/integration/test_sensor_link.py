"""The sensor link end to end: SerialReader on real ports (loop://, a pty, TCP) fed by real processes.

The simulator runs as `python -m agent sensor sim` and is killed with SIGKILL mid-stream; servers
close sockets mid-frame; a slow consumer meets a tiny queue. The reader must report each of these
as an event, count what it lost, and keep going.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from itertools import islice
from pathlib import Path

import pytest

from agent.ingest.frames import Frame, FrameDecoder, FrameError, Gap, RecordType, Restart, encode_record
from agent.ingest.reader import (BadLinkUrl, Dropped, LinkDown, LinkUp, Received, SerialReader, open_port)
from agent.ingest.sim import SimConfig, TelemetrySim
from support.sim_process import Sim

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sims():
    started: list[Sim] = []

    def start(*args: str) -> Sim:
        s = Sim(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture
def readers():
    started: list[SerialReader] = []

    def make(url: str, **kw) -> SerialReader:
        r = SerialReader(url, **kw)
        r.start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def collect(reader: SerialReader, until, timeout: float = 10.0, items: list[Received] | None = None) -> list[Received]:
    """Items from `reader` until `until(items)` holds; fails after `timeout` s."""
    items = [] if items is None else items
    deadline = time.monotonic() + timeout
    while not until(items):
        assert time.monotonic() < deadline, f"timed out; last items: {[type(i.event).__name__ for i in items[-5:]]}"
        items += reader.get(timeout=0.1)
    return items


def frames(items) -> list[Frame]:
    return [i.event for i in items if isinstance(i.event, Frame)]


def n_frames(n: int):
    return lambda items: len(frames(items)) >= n


def has(kind: type, after: int = 0):
    return lambda items: any(isinstance(i.event, kind) for i in items[after:])


def clean_chunks(n: int, seed: int = 0, first_seq: int = 0) -> list[bytes]:
    return list(islice(TelemetrySim(SimConfig(seed=seed, clean=True, first_seq=first_seq)).chunks(), n))


# -- loop:// and a pty ----------------------------------------------------------------------------------

def test_loop_url_delivers_every_frame_in_order_stamped_by_the_injected_clock(readers):
    port = open_port("loop://")
    reader = readers("loop://", opener=lambda url, baud: port, clock=lambda: 1_700_000_000.25)
    chunks = clean_chunks(300)
    for i in range(0, 300, 50):
        port.write(b"".join(chunks[i:i + 50]))
    items = collect(reader, n_frames(300))
    assert isinstance(items[0].event, LinkUp) and items[0].event.url == "loop://"
    assert [f.seq for f in frames(items)] == list(range(300))
    assert {i.recv_ms for i in items} == {1_700_000_000_250}
    s = reader.stats
    assert (s.frames, s.bytes, s.corrupt, s.gaps, s.link_downs) == (300, sum(map(len, chunks)), {}, 0, 0)


def test_pty_sim_process_to_reader(sims, readers):
    # A pty drops what does not fit its buffer while the reader lags (as a UART does): a modest rate
    # keeps a loaded CI host from turning this exact-delivery check into a test of the scheduler.
    sim = sims("--url", "pty", "--rate", "500", "--count", "1000", "--clean", "--seed", "3")
    assert sim.line.startswith("pty /dev/")
    path = sim.line.split(" ", 1)[1]
    reader = readers(path, reconnect_delay=0.1)
    items = collect(reader, has(LinkDown), timeout=15)   # the simulator closes the pty when done
    assert [f.seq for f in frames(items)] == list(range(1000))
    assert [(f.record_type, f.fields) for f in frames(items)] == list(
        islice(TelemetrySim(SimConfig(seed=3, rate_hz=500, clean=True)).records(), 1000))
    assert reader.stats.corrupt == {} and reader.stats.gaps == 0
    report = sim.finish()
    assert report["records"] == 1000 and report["lost_records"] == 0 and report["connections"] == 1


# -- TCP: a simulator killed and restarted, sockets closed mid-frame ------------------------------------

def test_sim_killed_mid_stream_and_restarted_on_the_same_port(sims, readers):
    first = sims("--url", "tcp-listen://127.0.0.1:0", "--rate", "3000", "--seed", "1")
    reader = readers(f"socket://127.0.0.1:{first.port}", reconnect_delay=0.1)
    items = collect(reader, n_frames(1500))
    os.kill(first.proc.pid, signal.SIGKILL)
    mark = len(items)
    collect(reader, has(LinkDown, mark), items=items, timeout=5)
    second = sims("--url", f"tcp-listen://127.0.0.1:{first.port}", "--rate", "3000", "--seed", "2")
    assert second.port == first.port
    mark = len(items)
    collect(reader, lambda it: len(frames(it[mark:])) >= 1500, items=items)
    kinds = [type(i.event) for i in items]
    down = kinds.index(LinkDown)
    assert LinkUp in kinds[down:]
    restarts = [i.event for i in items if isinstance(i.event, Restart)]
    assert len(restarts) == 1 and restarts[0].got == 0           # the new MCU counts from 0 again
    after = [f.seq for f in frames(items[down:])]
    assert after[:100] == list(range(100))
    s = reader.stats
    assert s.link_downs == 1 and s.reconnects == 1
    downs = [i.event for i in items if isinstance(i.event, LinkDown)]
    assert s.truncated_bytes == sum(d.truncated_bytes for d in downs)
    assert s.corrupt.get("truncated", 0) == sum(1 for d in downs if d.truncated_bytes)
    assert s.frames == len(frames(items)) and s.dropped_frames == 0


def serve(listener: socket.socket, *payloads: bytes) -> threading.Thread:
    """Accept one connection per payload, send it, close: in a thread. Sending starts 0.1 s after
    accept(), as the simulator does: pyserial's open() flushes whatever arrived before it returned."""

    def run() -> None:
        for p in payloads:
            conn, _ = listener.accept()
            with conn:
                time.sleep(0.1)
                conn.sendall(p)
                time.sleep(0.1)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_socket_closed_mid_frame_counts_truncated_bytes_and_resynchronises(readers):
    f = [encode_record(RecordType.FAULT, seq, {"t_ms": seq, "code": 7}) for seq in range(7)]
    half = f[3][:len(f[3]) // 2]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = serve(listener, b"".join(f[:3]) + half, b"\x00" + b"".join(f[4:]))
        reader = readers(f"socket://127.0.0.1:{listener.getsockname()[1]}", reconnect_delay=0.05)
        items = collect(reader, lambda it: [x.seq for x in frames(it)] == [0, 1, 2, 4, 5, 6])
        server.join(5)
    events = [i.event for i in items]
    assert [type(e) for e in events] == [LinkUp, Frame, Frame, Frame, LinkDown, LinkUp, Gap, Frame, Frame, Frame]
    assert events[4].truncated_bytes == len(half) and "socket" in events[4].reason
    assert (events[6].expected, events[6].got, events[6].missing_count) == (3, 4, 1)
    s = reader.stats
    assert s.truncated_bytes == len(half) and s.corrupt == {"truncated": 1} and s.reconnects == 1


def test_open_failure_is_retried_until_the_link_appears(readers):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reader = readers(f"socket://127.0.0.1:{port}", reconnect_delay=0.05)
    items = collect(reader, has(LinkDown), timeout=5)
    assert "open failed" in items[0].event.reason and items[0].event.truncated_bytes == 0
    time.sleep(0.3)
    with socket.create_server(("127.0.0.1", port)) as listener:
        serve(listener, b"\x00" + b"".join(clean_chunks(10)))
        collect(reader, n_frames(10), items=items)
    assert [type(i.event) for i in items][:2] == [LinkDown, LinkUp]
    s = reader.stats
    assert s.open_errors >= 3 and s.link_downs == 1 and s.reconnects == 1


def test_stop_returns_promptly_and_closes_the_port(readers):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader = readers(f"socket://127.0.0.1:{listener.getsockname()[1]}")
        conn, _ = listener.accept()
        collect(reader, has(LinkUp))
        t0 = time.monotonic()
        reader.stop()
        assert time.monotonic() - t0 < 0.5
        conn.settimeout(2)
        assert conn.recv(1) == b""          # the reader closed its end
        conn.close()
    assert reader.get(timeout=0) == []


def test_a_url_pyserial_cannot_open_is_a_config_error():
    with pytest.raises(BadLinkUrl) as e:
        SerialReader("nosuch://host:1").start()
    assert e.value.exit_code == 3


# -- back-pressure ---------------------------------------------------------------------------------------

def test_backpressure_drops_are_counted_and_frames_add_up(readers):
    chunks = clean_chunks(20_000)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        serve(listener, b"".join(chunks))
        reader = readers(f"socket://127.0.0.1:{listener.getsockname()[1]}", queue_size=16, reconnect_delay=60)
        items: list[Received] = []
        deadline = time.monotonic() + 20
        while not (reader.stats.link_downs and reader.stats.bytes == sum(map(len, chunks))):
            assert time.monotonic() < deadline
            items += reader.get(timeout=0.05)
            time.sleep(0.005)                                          # a slow consumer
        reader.stop()
        items += reader.get(timeout=0)
    drops = [i.event for i in items if isinstance(i.event, Dropped)]
    s = reader.stats
    assert drops and s.dropped_frames == sum(d.frames for d in drops) > 1000
    assert len(frames(items)) + s.dropped_frames == s.frames == 20_000
    assert s.queue_high_water == 16
    # each summary stands exactly where its frames would have been, and covers a contiguous run
    seqs: list[int] = []
    for e in (i.event for i in items):
        if isinstance(e, Frame):
            seqs.append(e.seq)
        elif isinstance(e, Dropped) and e.frames:
            assert e.last_seq - e.first_seq + 1 == e.frames
            seqs += range(e.first_seq, e.last_seq + 1)
    assert seqs == list(range(20_000))
    assert s.dropped_other == sum(d.other_events for d in drops)


# -- the simulator's stream, seen by the reader ----------------------------------------------------------

def test_line_noise_injected_by_the_sim_process_is_what_the_reader_counts(sims, readers):
    seed, n = 1, 8000
    local = TelemetrySim(SimConfig(seed=seed, rate_hz=8000))
    dec = FrameDecoder()
    for chunk in islice(local.chunks(), n):
        dec.feed(chunk)
    dec.discard_partial()
    c = local.counts
    assert c.garbage and c.corrupted and c.truncated, "pick a seed whose first records carry every wire fault"
    sim = sims("--url", "tcp-listen://127.0.0.1:0", "--rate", "8000", "--count", str(n), "--seed", str(seed))
    reader = readers(f"socket://127.0.0.1:{sim.port}", reconnect_delay=60)
    collect(reader, has(LinkDown))                     # the simulator closes the link when done
    s = reader.stats
    assert s.corrupt == dec.counters.corrupt
    assert sum(v for k, v in s.corrupt.items() if k != "truncated") == c.garbage + c.corrupted + c.truncated
    assert (s.frames, s.gaps, s.missing) == (dec.counters.frames, dec.counters.gaps, dec.counters.missing)
    assert sim.finish()["records"] == n


def test_a_reader_that_reconnects_sees_a_gap_for_what_it_missed(sims):
    sim = sims("--url", "tcp-listen://127.0.0.1:0", "--rate", "2000", "--clean")
    dec = FrameDecoder()

    def read_for(seconds: float) -> list:
        out = []
        with socket.create_connection(("127.0.0.1", sim.port)) as s:
            s.settimeout(0.1)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    out += dec.feed(s.recv(65536))
                except socket.timeout:
                    pass
        dec.discard_partial()
        return out

    first = read_for(0.3)
    time.sleep(0.3)                                     # records produced now reach nobody
    second = read_for(0.3)
    gaps = [e for e in second if isinstance(e, Gap)]
    assert frames_of(first) and frames_of(second)
    assert len(gaps) == 1 and gaps[0].missing_count >= 300
    assert not [e for e in first + second if isinstance(e, FrameError) and e.reason != "truncated"]


def frames_of(events) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def test_the_sim_holds_5000_records_per_second_without_drift(sims, readers):
    sim = sims("--url", "tcp-listen://127.0.0.1:0", "--rate", "5000", "--count", "10000", "--clean")
    reader = readers(f"socket://127.0.0.1:{sim.port}", reconnect_delay=60)
    items = collect(reader, has(LinkDown), timeout=15)
    got = [i for i in items if isinstance(i.event, Frame)]
    assert len(got) == 10_000 and reader.stats.gaps == 0
    span = (got[-1].recv_ms - got[0].recv_ms) / 1000
    assert span == pytest.approx(2.0, abs=0.1)          # 10,000 records at 5,000/s, paced by the clock
    report = sim.finish()
    assert report["max_lag_s"] < 0.1


# -- the CLI ---------------------------------------------------------------------------------------------

def test_sensor_read_prints_json_lines_then_stats(sims):
    sim = sims("--url", "tcp-listen://127.0.0.1:0", "--rate", "3000", "--count", "300", "--clean")
    res = subprocess.run([sys.executable, "-m", "agent", "sensor", "read", "--url", f"socket://127.0.0.1:{sim.port}",
                          "--count", "300", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert lines[0]["kind"] == "link_up"
    fr = [x for x in lines if x["kind"] == "frame"]
    assert [x["seq"] for x in fr] == list(range(300))
    assert fr[0]["type"] == "OPERATOR" and set(fr[0]["fields"]) == {"t_ms", "badge"}
    assert {x["type"] for x in fr} >= {"IMU", "MOTORS", "POSE"}
    assert lines[-1]["kind"] == "stats" and lines[-1]["frames"] >= 300 and lines[-1]["corrupt"] == {}


def test_sensor_read_without_a_url_or_board_is_a_config_error():
    env = {k: v for k, v in os.environ.items() if k != "AITN_BOARD"}
    res = subprocess.run([sys.executable, "-m", "agent", "sensor", "read", "--count", "1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and "--url" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_sim_stops_cleanly_on_a_signal(sims, sig):
    sim = sims("--url", "tcp-listen://127.0.0.1:0", "--rate", "1000")
    with socket.create_connection(("127.0.0.1", sim.port)) as s:
        assert s.recv(1) == b"\x00"
        time.sleep(0.2)
        sim.proc.send_signal(sig)
        report = sim.finish(timeout=5)
    assert 100 <= report["records"] <= 2000
