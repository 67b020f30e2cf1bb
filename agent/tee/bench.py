"""`aitn tee bench`: handshake and signature latency on the device itself, with where the time goes.

Two kinds of sample, N of each, against the configured secure world and the normal world's own
chain (every sample is a real signature: the chain grows by 4 blocks per sample):

- ``handshake``: what `aitn sign` costs cold: connect, OPEN_SESSION, open the chain file (its
  torn-tail check), SYNC, SIGN -> CHALLENGE, the proof, PROOF -> signature, CLOSE_SESSION;
- ``sign``: one more signature on a session that is already open and synced (SIGN, PROOF).

Two views of each sample:

- ``steps``: the phases in order, each timed on its own with the normal world's clock; they
  cover the sample's timeline, so their sum is the total up to the few calls between them;
- ``breakdown``: where the time went, across phases. The normal world times its chain appends
  (the time-lock stamps and the write), its fdatasyncs, the proof and the time it waits on the
  link. The secure world's part comes from its own clock: STATUS reports, for the last call of
  each command, the TA's total and its chain, commit (RPMB fdatasync), check (proof or sync tag)
  and sign (ECDSA) times (``timing_us``). ``link`` is the wait minus the TA's time: socket round
  trips, the server thread's framing and scheduling between the two processes. ``nw_other`` is
  what remains of the total: frame encoding and decoding, digests and Python on the normal side.
  STATUS is read after each sample on a separate session, outside the timed region.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tee_sim.abi.ids import Cmd

from . import client as teeclient
from . import handshake
from .chainlog import ChainLog
from .client import TeeClient, Transport
from .session import CHAIN_FILE, ChainedSession

STATISTICS = ("median", "p90", "p99", "min", "max")


class _TimedTransport(Transport):
    """Counts the time spent sending and waiting for answers."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.wait = 0.0

    def send(self, data: bytes) -> None:
        t = time.perf_counter()
        try:
            self.inner.send(data)
        finally:
            self.wait += time.perf_counter() - t

    def recv_frame(self) -> bytes:
        t = time.perf_counter()
        try:
            return self.inner.recv_frame()
        finally:
            self.wait += time.perf_counter() - t

    def close(self) -> None:
        self.inner.close()


def _instrument(chain: ChainLog, spent: dict[str, float]) -> None:
    """Time this chain's appends and fdatasyncs (instance attributes shadow the methods)."""
    append, sync = chain.append, chain.sync

    def timed_append(entries):
        t = time.perf_counter()
        try:
            return append(entries)
        finally:
            spent["nw_chain_append"] = spent.get("nw_chain_append", 0.0) + time.perf_counter() - t

    def timed_sync():
        t = time.perf_counter()
        try:
            return sync()
        finally:
            spent["nw_fsync"] = spent.get("nw_fsync", 0.0) + time.perf_counter() - t

    chain.append, chain.sync = timed_append, timed_sync  # type: ignore[method-assign]


@dataclass
class Sample:
    total: float
    steps: dict[str, float] = field(default_factory=dict)
    breakdown: dict[str, float] = field(default_factory=dict)


class _StatusReader:
    """STATUS on one long-lived unsynced session, so reading it disturbs no command's timing but its own."""

    def __init__(self, url: str, timeout: float) -> None:
        self.client = TeeClient.connect(url, timeout)
        self.sid = self.client.open_session().id

    def timing(self) -> dict[str, dict[str, float]]:
        st = json.loads(self.client.invoke(self.sid, Cmd.STATUS, (None, 4096, None, None)).params[1])
        return st.get("timing_us", {})

    def close(self) -> None:
        try:
            self.client.close_session(self.sid)
        finally:
            self.client.close()


def _secure_part(timing: dict[str, dict[str, float]], commands: tuple[str, ...]) -> dict[str, float] | None:
    """The TA's own seconds for the sample's commands, by kind of work; None if it does not report them."""
    if not all(c in timing for c in commands):
        return None
    out = {"sw_chain": 0.0, "sw_commit": 0.0, "sw_check": 0.0, "sw_sign": 0.0, "sw_total": 0.0}
    for c in commands:
        t = timing[c]
        out["sw_total"] += t.get("total", 0.0) / 1e6
        for k in ("chain", "commit", "check", "sign"):
            out["sw_" + k] += t.get(k, 0.0) / 1e6
    return out


def _breakdown(total: float, wait: float, spent: dict[str, float], nw_proof: float,
               sw: dict[str, float] | None) -> dict[str, float]:
    b = {"nw_chain_append": spent.get("nw_chain_append", 0.0), "nw_fsync": spent.get("nw_fsync", 0.0),
         "nw_proof": nw_proof}
    if "nw_open_chain" in spent:
        b["nw_open_chain"] = spent["nw_open_chain"]
    if sw is None:  # a secure world without timing_us: its work stays inside the wait
        b["link_and_secure_world"] = wait
    else:
        b["link"] = wait - sw["sw_total"]
        for k in ("sw_chain", "sw_commit", "sw_check", "sw_sign"):
            b[k] = sw[k]
        b["sw_other"] = sw["sw_total"] - sum(sw[k] for k in ("sw_chain", "sw_commit", "sw_check", "sw_sign"))
    b["nw_other"] = total - sum(b.values())
    return b


def _cold(url: str, home: Path, timeout: float, status: _StatusReader) -> Sample:
    spent: dict[str, float] = {}
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    transport = _TimedTransport(teeclient.connect(url, timeout))
    t1 = time.perf_counter()
    steps["connect"] = t1 - t0
    client = TeeClient(transport)
    try:
        opened = client.open_session()
        t2 = time.perf_counter()
        steps["open_session"] = t2 - t1
        chain = ChainLog.open(home / CHAIN_FILE)
        t3 = time.perf_counter()
        steps["open_chain"] = spent["nw_open_chain"] = t3 - t2
        _instrument(chain, spent)
        session = ChainedSession(client, opened, chain)
        try:
            handshake.sign_digest(session, os.urandom(32))
            steps.update(dict(session.steps))
            t4 = time.perf_counter()
            client.close_session(opened.id)
            steps["close_session"] = time.perf_counter() - t4
        finally:
            chain.close()
    finally:
        client.close()
    total = time.perf_counter() - t0
    sw = _secure_part(status.timing(), ("OPEN_SESSION", "SYNC", "SIGN", "PROOF", "CLOSE_SESSION"))
    return Sample(total, steps, _breakdown(total, transport.wait, spent, steps.get("proof", 0.0), sw))


def _warm(session: ChainedSession, transport: _TimedTransport, spent: dict[str, float],
          status: _StatusReader) -> Sample:
    spent.clear()
    transport.wait = 0.0
    t0 = time.perf_counter()
    handshake.sign_digest(session, os.urandom(32))
    total = time.perf_counter() - t0
    steps = dict(session.steps)
    sw = _secure_part(status.timing(), ("SIGN", "PROOF"))
    return Sample(total, steps, _breakdown(total, transport.wait, spent, steps.get("proof", 0.0), sw))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the samples at or below it."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def distribution(values: list[float]) -> dict[str, float]:
    """median, p90, p99, min, max in milliseconds."""
    v = sorted(values)
    mid = len(v) // 2
    median = v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
    return {k: round(x * 1e3, 4) for k, x in (("median", median), ("p90", percentile(v, 0.90)),
                                               ("p99", percentile(v, 0.99)), ("min", v[0]), ("max", v[-1]))}


def _summarise(samples: list[Sample]) -> dict:
    names = lambda attr: list(dict.fromkeys(k for s in samples for k in getattr(s, attr)))  # noqa: E731
    return {"total": distribution([s.total for s in samples]),
            "steps": {k: distribution([s.steps.get(k, 0.0) for s in samples]) for k in names("steps")},
            "breakdown": {k: distribution([s.breakdown.get(k, 0.0) for s in samples]) for k in names("breakdown")},
            # how much of each sample its steps leave out (the calls between them): near 0 by design
            "between_steps": distribution([s.total - sum(s.steps.values()) for s in samples]),
            "samples": len(samples)}


def run(url: str, home: Path, n: int, timeout: float = 10.0) -> dict:
    """N cold handshakes, then N signatures on one synced session; distributions in ms."""
    if n < 1:
        raise ValueError("--n must be at least 1")
    status = _StatusReader(url, timeout)
    try:
        cold = [_cold(url, home, timeout, status) for _ in range(n)]
        spent: dict[str, float] = {}
        transport = _TimedTransport(teeclient.connect(url, timeout))
        client = TeeClient(transport)
        session = ChainedSession(client, client.open_session(), ChainLog.open(home / CHAIN_FILE))
        _instrument(session.chain, spent)
        with session:
            session.sync()
            warm = [_warm(session, transport, spent, status) for _ in range(n)]
        secure_timing = bool(status.timing().get("PROOF"))
    finally:
        status.close()
    return {"url": url, "n": n, "units": "ms", "blocks_added": 8 * n, "secure_world_timing": secure_timing,
            "handshake": _summarise(cold), "sign": _summarise(warm)}


def format_report(r: dict) -> list[str]:
    head = f"{'':<24}" + "".join(f"{s:>10}" for s in STATISTICS)

    def row(label: str, d: dict) -> str:
        return f"{label:<24}" + "".join(f"{d[s]:>10.3f}" for s in STATISTICS)

    lines = [f"{r['n']} handshakes and {r['n']} signatures against {r['url']} (ms; the chain grew by "
             f"{r['blocks_added']} blocks)"]
    for kind, title in (("handshake", "handshake (cold)"), ("sign", "sign (warm session)")):
        s = r[kind]
        lines += ["", head, row(title, s["total"]), "steps"]
        lines += [row("  " + k, d) for k, d in s["steps"].items()]
        lines.append("breakdown")
        lines += [row("  " + k, d) for k, d in s["breakdown"].items()]
        lines.append(row("between steps", s["between_steps"]))
    if not r["secure_world_timing"]:
        lines.append("the secure world does not report timing_us: its work is inside link_and_secure_world")
    return lines
