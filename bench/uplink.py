"""Benchmark: uploading an update to the node over CoAP block-wise (RFC 7959 Block1), against raw UDP/TCP.

    .venv/bin/python bench/uplink.py [--repeats 3] [--big-repeats 2] [--full] [--no-pin] [--mid-wrap-real]

Everything on loopback (127.0.0.1), aiocoap on both sides. The server (bench/uplink_server.py) is its
own process, pinned to another core than this client (unless --no-pin); its resources only take the
body (2.04 with its length and CRC-32, checked after every upload): transport, not node logic. Every
upload runs in a fresh client context (a fresh UDP socket and message-ID counter) after one empty
warm-up POST (so a TCP connection and its CSM exchange are up); the time is the request's, from
ctx.request() to the final response. CPU per block: this process's process_time, the server's
utime + stime from /proc (10 ms ticks), and the server's minor page faults per upload.

1. Upload time of 1 MiB of random bytes per path, medians of --repeats rounds (rows with 256/512-byte
   blocks and 4 MiB bodies: --big-repeats; every round's times are listed); each round measures every
   row, and "x raw UDP" is the median over rounds of row / raw UDP stop-and-wait, 1024-byte blocks, of
   the same round. Paths:
     raw TCP        connected before timing: an 8-byte length, sendall of the body, one answer at the end;
     raw UDP        stop-and-wait: 4-byte block number + data per datagram, a 4-byte ack for each, the
                    next one sent on the ack (what Block1 does, minus CoAP), same asyncio loops;
     CoAP/UDP       1024, 512, 256-byte blocks (set by a Block1 option on the request, aiocoap's only
                    per-request knob: LinkConfig.block_exp is not one, see 2.);
     OSCORE/UDP     the product's path: a context pair from agent.uplink.oscore_ctx.write_context,
                    the server's site in OscoreSiteWrapper with credentials ":dev";
     OSCORE/TCP     the same over coap+tcp:// (aiocoap's OSCORE layer cuts 1024-byte inner blocks);
     CoAP/TCP       RFC 8323: both ends advertise a 1 MiB max message size, so aiocoap sends BERT
                    blocks of up to ~1 MiB; and 1024-byte blocks forced, for the per-message cost.
   Each CoAP path POSTs to /sink, where aiocoap reassembles Block1 (bytes concatenated per block), and
   to /stream, a prototype (bench/uplink_server.py, Block1Receiver) that assembles into a bytearray
   (/sink with 256/512-byte blocks: --full).
1b. The same at 256 KiB, 1 MiB and 4 MiB (OSCORE at 4 MiB: --full): does the time per block grow with
   the body? And the reassembly alone in this process (no network): aiocoap's Block1Spool against the
   prototype's Block1Assembler, fed the same block messages.
1c. Where the time goes per block: one 256 KiB upload with client and server in this process under
   cProfile, the profiled time grouped by code (shares; profiler overhead included).
2. Bytes on the wire for a realistic update: an MLP 64-768-256-16 (250,896 float32 parameters), a
   delta ~ N(0, 0.01); sizes of AITW, AITW + zstd 9, AITQ int8, AITQ + zstd 9, the signed item
   envelope (items.envelope, coincurve signature r||s||v+27, checked by agent.signature.verify);
   then the envelope POSTed over OSCORE to /update through tests/support/udp_relay.py, every UDP
   payload counted both ways (and with 28 bytes of IPv4 + UDP header per datagram). And whether
   whether aiocoap's TransportTuning alone changes a client's block size (it does not: NodeLink sets Block1).
3. Message IDs: CON requests per second reached in 1., against the 65536 IDs a peer may use per
   EXCHANGE_LIFETIME (247 s); and what aiocoap does when an ID comes round within that time: a forced
   wrap (the client's counter set back to an ID used a moment before) and, with --mid-wrap-real, a
   real one (1 MiB uploads through one client context until its counter has come round).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import logging
import math
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import aiocoap  # noqa: E402
import coincurve  # noqa: E402
from aiocoap.blockwise import Block1Spool, ContinueException  # noqa: E402

import uplink_server as srv  # noqa: E402
from agent.signature import verify  # noqa: E402
from agent.train import quantize, weights  # noqa: E402
from agent.uplink import items, messages  # noqa: E402
from agent.uplink.link import LinkConfig, tuning  # noqa: E402
from agent.uplink.oscore_ctx import load_context, write_context  # noqa: E402
from tee_sim.abi.digests import address_of  # noqa: E402
from tests.support.udp_relay import UdpRelay  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)   # Block1 option set on a request (see above)

KIB, MIB = 1 << 10, 1 << 20
DEADLINE = 120.0            # seconds for one upload before it counts as stalled
WRAP_DEADLINE = 4.0         # forced message-ID wrap: past the first retransmission (ACK_TIMEOUT 2 s x up to 1.5)
EXCHANGE_LIFETIME = 247.0
MID_SPACE = 1 << 16
LAYERS = (64, 768, 256, 16)
SHAPES = [s for a, b in zip(LAYERS, LAYERS[1:]) for s in ((a, b), (b,))]
SZX = {1024: 6, 512: 5, 256: 4}


def body_of(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def proc_stat(pid: int) -> tuple[float, int]:
    """(utime + stime seconds, minor page faults) of a process; CPU in 10 ms ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK"), int(rest[7])


class Server:
    def __init__(self, oscore_dir: Path, core: int | None) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "uplink_server.py"), "--oscore", str(oscore_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench server did not start")
        info = json.loads(line)
        self.pid, self.port, self.rawudp, self.rawtcp = info["pid"], info["coap"], info["rawudp"], info["rawtcp"]
        if core is not None:
            os.sched_setaffinity(self.pid, {core})

    def cpu(self) -> tuple[float, int]:
        return proc_stat(self.pid)

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- one upload per path ------------------------------------------------------------------------------

@dataclass
class Up:
    seconds: float
    blocks: int
    client_cpu: float
    server_cpu: float
    server_faults: int


def up_of(dt: float, blocks: int, c0: float, c1: float, s0, s1) -> Up:
    return Up(dt, blocks, c1 - c0, s1[0] - s0[0], s1[1] - s0[1])


def check(answer: bytes, body: bytes) -> int | None:
    """The block count the /stream resource reports (None from /sink); raises if the body arrived wrong."""
    parts = answer.split()
    if b" ".join(parts[:2]) != srv.summary(body):
        raise RuntimeError(f"server got {answer!r}, sent {srv.summary(body)!r}")
    return int(parts[2]) if len(parts) > 2 else None


async def coap_upload(transports: list[str], uri: str, body: bytes, szx: int | None, server: Server,
                      secctx=None, tuning_=None, before=None, block: int | None = 1024) -> Up:
    """One timed POST of body in a fresh client context; block: the size sent (None: unknown, BERT)."""
    ctx = await aiocoap.Context.create_client_context(transports=transports)
    try:
        if secctx is not None:
            ctx.client_credentials[uri.rsplit("/", 1)[0] + "/*"] = secctx
        warm = await asyncio.wait_for(ctx.request(aiocoap.Message(code=aiocoap.POST, uri=uri)).response, 10)
        check(warm.payload, b"")
        msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=body)
        if tuning_ is not None:
            msg.transport_tuning = tuning_
        if szx is not None:
            msg.opt.block1 = (0, False, szx)
        if before is not None:
            before()
        c0, s0, t0 = time.process_time(), server.cpu(), time.perf_counter()
        resp = await asyncio.wait_for(ctx.request(msg).response, DEADLINE)
        dt, c1, s1 = time.perf_counter() - t0, time.process_time(), server.cpu()
        if resp.code != aiocoap.CHANGED:
            raise RuntimeError(f"{uri}: {resp.code} {resp.payload[:80]!r}")
        blocks = check(resp.payload, body)
        if blocks is None:
            blocks = math.ceil(len(body) / block) if block else 0
        return up_of(dt, blocks, c0, c1, s0, s1)
    finally:
        await ctx.shutdown()


class _UdpClient(asyncio.DatagramProtocol):
    waiter: asyncio.Future | None = None

    def datagram_received(self, data, addr) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def raw_udp_upload(server: Server, body: bytes, block: int) -> Up:
    loop = asyncio.get_running_loop()
    tr, pr = await loop.create_datagram_endpoint(_UdpClient, remote_addr=("127.0.0.1", server.rawudp))
    try:
        n = max(1, math.ceil(len(body) / block))
        view = memoryview(body)
        c0, s0, t0 = time.process_time(), server.cpu(), time.perf_counter()
        for i in range(n):
            head = (i | (srv.RAW_LAST if i == n - 1 else 0)).to_bytes(4, "big")
            dgram = head + view[i * block:(i + 1) * block]
            while True:
                pr.waiter = fut = loop.create_future()
                tr.sendto(dgram)
                timer = loop.call_later(0.5, fut.cancel)
                try:
                    ack = await fut
                except asyncio.CancelledError:
                    continue                      # lost: send again
                finally:
                    timer.cancel()
                if ack[:4] == head:
                    break
        dt, c1, s1 = time.perf_counter() - t0, time.process_time(), server.cpu()
        check(ack[5:], body)
        return up_of(dt, n, c0, c1, s0, s1)
    finally:
        tr.close()


async def raw_tcp_upload(server: Server, body: bytes) -> Up:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.rawtcp)
    try:
        want = len(srv.summary(body))
        c0, s0, t0 = time.process_time(), server.cpu(), time.perf_counter()
        writer.write(len(body).to_bytes(8, "big"))
        writer.write(body)
        await writer.drain()
        answer = await reader.readexactly(want)
        dt, c1, s1 = time.perf_counter() - t0, time.process_time(), server.cpu()
        check(answer, body)
        return up_of(dt, 1, c0, c1, s0, s1)
    finally:
        writer.close()


# -- section 1: the rows ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    label: str
    kind: str               # rawtcp, rawudp, udp, oscore, tcp
    path: str = ""          # sink | stream
    block: int = 1024       # 0: BERT (TCP, as negotiated)
    size: int = MIB
    big: bool = False       # measured --big-repeats times only


def rows_1mib(full: bool) -> list[Row]:
    r = [Row("raw TCP: sendall + one answer", "rawtcp", block=0),
         Row("raw UDP: stop-and-wait", "rawudp", block=1024),
         Row("raw UDP: stop-and-wait", "rawudp", block=256)]
    for block in (1024, 512, 256):
        for path in ("sink", "stream"):
            if block == 1024 or path == "stream" or full:
                r.append(Row(f"CoAP/UDP   -> /{path}", "udp", path, block, big=block != 1024))
    for path in ("sink", "stream"):
        r.append(Row(f"OSCORE/UDP -> /{path}", "oscore", path))
    r.append(Row("OSCORE/TCP -> /sink", "oscore-tcp", "sink"))
    for path in ("sink", "stream"):
        r.append(Row(f"CoAP/TCP   -> /{path} (BERT)", "tcp", path, block=0))
    r.append(Row("CoAP/TCP   -> /stream", "tcp", "stream", block=1024))
    return r


def rows_scaling(full: bool) -> list[Row]:
    r = []
    for size in (256 * KIB, 4 * MIB):
        big = size > MIB
        r.append(Row("raw UDP: stop-and-wait", "rawudp", block=1024, size=size, big=big))
        for kind in ("udp", "oscore"):
            if kind == "oscore" and big and not full:
                continue
            for path in ("sink", "stream"):
                name = "CoAP/UDP  " if kind == "udp" else "OSCORE/UDP"
                r.append(Row(f"{name} -> /{path}", kind, path, 1024, size, big))
    return r


async def measure(row: Row, server: Server, secctx, bodies: dict[int, bytes]) -> Up:
    body = bodies[row.size]
    if row.kind == "rawtcp":
        return await raw_tcp_upload(server, body)
    if row.kind == "rawudp":
        return await raw_udp_upload(server, body, row.block)
    if row.kind == "udp":
        return await coap_upload(["udp6"], f"coap://127.0.0.1:{server.port}/{row.path}", body,
                                 SZX[row.block], server)
    if row.kind == "oscore":
        return await coap_upload(["oscore", "udp6"], f"coap://127.0.0.1:{server.port}/{row.path}", body,
                                 SZX[row.block], server, secctx)
    if row.kind == "oscore-tcp":   # aiocoap's OSCORE transport caps inner blocks at 1024 bytes, TCP or not
        return await coap_upload(["oscore", "tcpclient"], f"coap+tcp://127.0.0.1:{server.port}/{row.path}", body,
                                 None, server, secctx)
    if row.kind == "tcp":
        return await coap_upload(["tcpclient"], f"coap+tcp://127.0.0.1:{server.port}/{row.path}", body,
                                 SZX.get(row.block), server, block=row.block or None)
    raise ValueError(row.kind)


def base_of(row: Row) -> Row:
    return Row("raw UDP: stop-and-wait", "rawudp", block=1024, size=row.size, big=row.size > MIB)


async def run_rows(rows: list[Row], server, secctx, bodies, repeats: int, big_repeats: int) -> dict[Row, list]:
    got: dict[Row, list[Up]] = {r: [] for r in rows}
    for rnd in range(max(repeats, big_repeats)):
        for row in rows:
            if rnd < (big_repeats if row.big else repeats):
                got[row].append(await measure(row, server, secctx, bodies))
    return got


def blocks_of(row: Row, got: dict[Row, list[Up]]) -> int:
    """Blocks per upload; for /sink over TCP (BERT: not known to the client) those /stream counted."""
    n = max(u.blocks for u in got[row])
    if n == 0:
        twin = [v for r, v in got.items() if r.kind == row.kind and r.block == row.block and r.size == row.size
                and r.path == "stream"]
        n = max(u.blocks for u in twin[0]) if twin else 0
    return n


def print_rows(rows: list[Row], got: dict[Row, list[Up]], title: str) -> None:
    med = statistics.median
    print(title)
    print(f"  {'body':>7}  {'path':30} {'block':>5} {'blocks':>6} {'time ms':>8} {'us/block':>8} {'MiB/s':>6}"
          f" {'client':>7} {'server':>7} {'srv faults':>10} {'x raw':>6}  rounds (ms)")
    print(f"  {'':>7}  {'':30} {'':>5} {'':>6} {'':>8} {'':>8} {'':>6} {'us/blk':>7} {'us/blk':>7}"
          f" {'/upload':>10} {'UDP':>6}")
    for row in rows:
        ups = got[row]
        base = got.get(base_of(row))
        t = med(u.seconds for u in ups)
        blocks = blocks_of(row, got)
        cpu_ok = blocks > 1 and t >= 0.05     # CPU comes in 10 ms ticks (the server's)
        per = lambda v: f"{v / blocks * 1e6:7.0f}" if cpu_ok else f"{'-':>7}"  # noqa: E731
        ratio = f"{med(u.seconds / b.seconds for u, b in zip(ups, base)):6.2f}" if base else f"{'-':>6}"
        block = ("BERT" if row.kind == "tcp" else "-") if row.block == 0 else row.block
        faults = med(u.server_faults for u in ups)
        print(f"  {size_text(row.size):>7}  {row.label:30} {block:>5} {blocks or '?':>6} {t * 1e3:8.1f} "
              f"{t / blocks * 1e6 if blocks else float('nan'):8.0f} {row.size / MIB / t:6.1f}"
              f" {per(med(u.client_cpu for u in ups))} {per(med(u.server_cpu for u in ups))} {faults:10,.0f} {ratio}"
              f"  {', '.join(f'{u.seconds * 1e3:.0f}' for u in ups)}")


def size_text(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


# -- section 1b: reassembly alone, in this process ----------------------------------------------------

class _Remote:
    blockwise_key = ("bench", 1)


def block_messages(size: int) -> list[aiocoap.Message]:
    whole = aiocoap.Message(code=aiocoap.POST, uri="coap://127.0.0.1/sink", payload=body_of(size, 3))
    whole.remote = _Remote()
    n = math.ceil(size / 1024)
    return [whole._extract_block(i, 6, 1024) for i in range(n)]


def assembly_only(size: int, reps: int) -> tuple[float, float]:
    blocks = block_messages(size)
    t_spool, t_arr = [], []
    for _ in range(reps):
        msgs = [blocks[0].copy()] + blocks[1:]       # aiocoap appends into the first block's message
        spool = Block1Spool()
        t = time.perf_counter()
        for m in msgs:
            try:
                out = spool.feed_and_take(m)
            except ContinueException:
                pass
        t_spool.append(time.perf_counter() - t)
        assert len(out.payload) == size
        asm = srv.Block1Assembler()
        t = time.perf_counter()
        for m in blocks:
            done = asm.feed(srv.block_key(m), m.opt.block1, m.payload, m.opt.size1)
        t_arr.append(time.perf_counter() - t)
        assert len(done[0]) == size
    return statistics.median(t_spool), statistics.median(t_arr)


# -- section 1c: where the time goes ------------------------------------------------------------------

CATEGORIES = (
    ("Block1 reassembly: aiocoap (bytes +=)", lambda f, n: n == "_append_request_block"),
    ("Message.copy: deepcopy of the options", lambda f, n: f.endswith("/copy.py")
        or (f.endswith("aiocoap/message.py") and n == "copy")),
    ("addresses: ipaddress, udp6 hostinfo", lambda f, n: f.endswith("/ipaddress.py")
        or f.endswith("transports/udp6.py") or "if_indextoname" in n),
    ("OSCORE: COSE, AES-CCM, CBOR, replay window", lambda f, n: "oscore" in f or "cryptography" in f
        or "cbor" in f or "cbor" in n or "AESCCM" in n),
    ("socket send/recv syscalls", lambda f, n: any(s in n for s in ("sendmsg", "recvmsg", "sendto", "recvfrom"))),
    ("asyncio event loop, selectors", lambda f, n: "/asyncio/" in f or f.endswith("/selectors.py")),
    ("logging calls (disabled debug logs)", lambda f, n: "/logging/" in f),
    ("CoAP message + option encode/decode", lambda f, n: any(f.endswith("aiocoap/" + m) for m in
                                                            ("message.py", "options.py", "optiontypes.py"))),
    ("other aiocoap: token/message managers, pipes", lambda f, n: "/aiocoap/" in f),
    ("the rest: builtins, bench resources", lambda f, n: True),
)


async def profile_upload(kind: str, folders: dict[str, Path], path: str, size: int) -> tuple[dict, float, int]:
    """Client and server in this process, one upload under cProfile: tottime by category."""
    secs = {}
    if kind == "oscore":
        secs = {"s": load_context(folders["prof_server"]), "c": load_context(folders["prof_client"])}
    sctx, port = await srv.coap_server(secs.get("s"))
    ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"] if secs else ["udp6"])
    uri = f"coap://127.0.0.1:{port}/{path}"
    if secs:
        ctx.client_credentials[f"coap://127.0.0.1:{port}/*"] = secs["c"]
    body = body_of(size)
    try:
        await ctx.request(aiocoap.Message(code=aiocoap.POST, uri=uri)).response
        prof = cProfile.Profile()
        msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=body)
        msg.opt.block1 = (0, False, 6)
        prof.enable()
        resp = await asyncio.wait_for(ctx.request(msg).response, DEADLINE)
        prof.disable()
        blocks = check(resp.payload, body) or math.ceil(size / 1024)
    finally:
        await ctx.shutdown()
        await sctx.shutdown()
        for s in secs.values():
            s._destroy()
    st = pstats.Stats(prof).stats
    total = sum(v[2] for v in st.values())
    shares: dict[str, float] = {}
    for (file, _line, name), v in st.items():
        for cat, match in CATEGORIES:
            if match(file, name):
                shares[cat] = shares.get(cat, 0.0) + v[2]
                break
    return shares, total, blocks


# -- section 2: bytes ---------------------------------------------------------------------------------

def realistic_update(seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s, np.float32) * np.float32(0.01)) for s in SHAPES]


def signer(key: coincurve.PrivateKey):
    def sign(digest: bytes) -> bytes:
        sig = key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([sig[64] + 27])
    return sign


def build_envelope(data: bytes, key: coincurve.PrivateKey, dev: bytes, seq: int) -> bytes:
    payload = items.update_payload(data, round_id=1, model="mlp-64-768-256-16",
                                   base=hashlib.sha256(b"global model").digest(), width=1.0, samples=512)
    env = items.envelope("update", payload, dev=dev, seq=seq, sign=signer(key))
    e, _ = messages.parse_item(env, "update")
    verify(messages.item_digest(e["kind"], e["dev"], e["seq"], e["t"], e["body"]), e["sig"], dev)
    return env


async def wire_bytes(server: Server, secctx, body: bytes, oscore: bool = True, tuning_=None,
                     path: str = "update") -> dict:
    relay = UdpRelay(("127.0.0.1", server.port), max_records=100_000)
    try:
        uri = f"coap://127.0.0.1:{relay.port}/{path}"
        mark = []
        await coap_upload(["oscore", "udp6"] if oscore else ["udp6"], uri, body, None, server,
                          secctx if oscore else None, tuning_, before=lambda: mark.append(len(relay.records)))
        recs = relay.records[mark[0]:]      # after the warm-up request and its answer
    finally:
        relay.stop()
    up = [len(d.data) for d in recs if d.direction == "up"]
    down = [len(d.data) for d in recs if d.direction == "down"]
    return {"up": sum(up), "down": sum(down), "n_up": len(up), "n_down": len(down),
            "max_up": max(up), "ip": 28 * (len(up) + len(down))}


# -- section 3: message IDs ---------------------------------------------------------------------------

class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for key in ("could not be matched", "could not match it", "Duplicate CON", "Retransmission",
                    "exceeded", "Response not recognized"):
            if key in msg:
                self.seen[key] = self.seen.get(key, 0) + 1


def message_manager(ctx: aiocoap.Context):
    for ri in ctx.request_interfaces:
        mm = getattr(ri, "token_interface", None)
        if mm is not None and hasattr(mm, "message_id"):
            return mm
    raise RuntimeError("no UDP message manager in this context")


async def forced_wrap(server: Server, size: int = 64 * KIB) -> dict:
    """Upload, set the client's message-ID counter back to where that upload began, upload again."""
    cap = _Capture()
    log = logging.getLogger("coap")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(cap)
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    uri = f"coap://127.0.0.1:{server.port}/stream"
    out: dict = {}
    try:
        mm = message_manager(ctx)
        start = mm.message_id
        first = body_of(size, 11)
        msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=first)
        resp = await asyncio.wait_for(ctx.request(msg).response, 30)
        check(resp.payload, first)
        out["used"] = (mm.message_id - start) % MID_SPACE
        mm.message_id = start
        second = body_of(size, 12)
        t = time.perf_counter()
        req = ctx.request(aiocoap.Message(code=aiocoap.POST, uri=uri, payload=second))
        try:
            resp = await asyncio.wait_for(req.response, WRAP_DEADLINE)
            out["outcome"] = f"answered {resp.code} {resp.payload[:40]!r}"
        except asyncio.TimeoutError:
            out["outcome"] = f"STALLED: no answer and no error within {WRAP_DEADLINE:.0f} s"
        except Exception as e:
            out["outcome"] = f"error {type(e).__name__}: {e}"
        out["seconds"] = time.perf_counter() - t
        out["advanced"] = (mm.message_id - start) % MID_SPACE
    finally:
        await ctx.shutdown()
        log.removeHandler(cap)
        log.setLevel(old_level)
    out["log"] = cap.seen
    return out


async def real_wrap(server: Server) -> dict:
    """Uploads of 1 MiB to /stream through one client context until its IDs wrap or an upload stalls."""
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    uri = f"coap://127.0.0.1:{server.port}/stream"
    body = body_of(MIB, 21)
    mm = message_manager(ctx)
    sent, uploads, t0, out = 0, 0, time.perf_counter(), {}
    try:
        while sent < MID_SPACE + 4096:
            before = mm.message_id
            try:
                resp = await asyncio.wait_for(ctx.request(aiocoap.Message(code=aiocoap.POST, uri=uri,
                                                                          payload=body)).response, 15)
                check(resp.payload, body)
            except asyncio.TimeoutError:
                out["outcome"] = (f"STALLED on upload {uploads + 1} after {sent} message IDs "
                                  f"({time.perf_counter() - t0:.0f} s since the first)")
                break
            sent += (mm.message_id - before) % MID_SPACE
            uploads += 1
        else:
            out["outcome"] = f"no stall: {uploads} uploads, {sent} message IDs"
    finally:
        await ctx.shutdown()
    out["seconds"] = time.perf_counter() - t0
    return out


async def server_stats(server: Server) -> dict:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        r = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{server.port}/stats")).response
        return json.loads(r.payload)
    finally:
        await ctx.shutdown()


# -- main ---------------------------------------------------------------------------------------------

def make_contexts(base: Path) -> dict[str, Path]:
    folders = {}
    for tag in ("", "prof_"):
        secret, salt = os.urandom(16), os.urandom(8)
        folders[tag + "server"] = base / f"{tag}server"
        folders[tag + "client"] = base / f"{tag}client"
        write_context(folders[tag + "server"], b"", b"\x01", secret, salt)
        write_context(folders[tag + "client"], b"\x01", b"", secret, salt)
    return folders


async def amain(args) -> None:
    med = statistics.median
    cores = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cores) >= 2
    if pin:
        os.sched_setaffinity(0, {cores[-1]})
    tmp = Path(tempfile.mkdtemp(prefix="aitn-bench-uplink-"))
    folders = make_contexts(tmp)
    server = Server(folders["server"], cores[0] if pin else None)
    secctx = load_context(folders["client"])
    try:
        await _amain(args, server, secctx, folders, pin, cores, med)
    finally:
        secctx._destroy()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _amain(args, server, secctx, folders, pin, cores, med) -> None:
    print(f"Uplink over loopback 127.0.0.1: aiocoap {aiocoap.meta.version}, Python {platform.python_version()}, "
          f"{os.cpu_count()} cores; client and server in two processes"
          f"{f' pinned to cores {cores[-1]} and {cores[0]}' if pin else ''}; medians of {args.repeats} rounds "
          f"({args.big_repeats} for 256/512-byte blocks and 4 MiB); us/block = time / blocks (1 block = 1 CON "
          f"request + its ACK); client/server us/blk = CPU per block; srv faults = the server's minor page faults.")
    bodies = {n: body_of(n) for n in (256 * KIB, MIB, 4 * MIB)}
    t_all = time.perf_counter()

    # 1. upload time
    r1 = rows_1mib(args.full)
    got = await run_rows(r1, server, secctx, bodies, args.repeats, args.big_repeats)
    print_rows(r1, got, "\n1. Upload time, 1 MiB body (POST; the resource only takes the body):")
    stream_rows = {b: got[Row("CoAP/UDP   -> /stream", "udp", "stream", b, big=b != 1024)] for b in (1024, 512, 256)}
    per_blk = {b: med(u.seconds / u.blocks for u in ups) for b, ups in stream_rows.items()}
    whole = {b: med(u.seconds for u in ups) for b, ups in stream_rows.items()}
    raw = {b: med(u.seconds / u.blocks for u in got[Row("raw UDP: stop-and-wait", "rawudp", block=b)])
           for b in (1024, 256)}
    print(f"  CoAP/UDP -> /stream per block: {per_blk[1024] * 1e6:.0f} us (1024 B), {per_blk[512] * 1e6:.0f} us "
          f"(512 B), {per_blk[256] * 1e6:.0f} us (256 B): the cost is per message, not per byte (256-byte blocks: "
          f"{whole[256] / whole[1024]:.1f}x the time of 1024-byte ones); raw UDP stop-and-wait per datagram "
          f"{raw[1024] * 1e6:.0f} us (1024 B), {raw[256] * 1e6:.0f} us (256 B)")
    print("  the node's real /update end to end: not measured here (it needs an enrolled device, a secure-world "
          "signer and a round whose model matches; its transport is the OSCORE/UDP -> /sink row)")

    rs = rows_scaling(args.full)
    got_s = await run_rows(rs, server, secctx, bodies, args.repeats, args.big_repeats)
    both = {**got_s, **{r: v for r, v in got.items() if r.block == 1024 and r.kind in ("udp", "oscore", "rawudp")}}
    order = sorted(both, key=lambda r: ({"rawudp": 0, "udp": 1, "oscore": 2}[r.kind], r.path, r.size))
    print_rows(order, both, "\n1b. Does the time per block grow with the body? 1024-byte blocks, 256 KiB, 1 MiB, "
               "4 MiB" + ("" if args.full else " (OSCORE at 4 MiB: --full)") + ":")
    growth = {}
    for kind in ("rawudp", "udp", "oscore"):
        for path in (("",) if kind == "rawudp" else ("sink", "stream")):
            per = {r.size: med(u.seconds / u.blocks for u in v) for r, v in both.items()
                   if r.kind == kind and r.path == path}
            srv_per = {r.size: med(u.server_cpu / u.blocks for u in v) for r, v in both.items()
                       if r.kind == kind and r.path == path}
            growth[(kind, path)] = (per, srv_per)
            name = {"rawudp": "raw UDP", "udp": "CoAP/UDP", "oscore": "OSCORE/UDP"}[kind]
            big = f"; 4 MiB / 256 KiB = {per[4 * MIB] / per[256 * KIB]:.2f}" if 4 * MIB in per else ""
            print(f"  {name:10} {('-> /' + path) if path else '':10} us/block: "
                  + ", ".join(f"{size_text(s)} {per[s] * 1e6:.0f}" for s in sorted(per))
                  + f"{big}   server CPU us/block: " + ", ".join(f"{srv_per[s] * 1e6:.0f}" for s in sorted(srv_per)))
    print("  reassembly alone, in this process (no network; the same 1024-byte block messages fed to both):")
    asm = {}
    for size in (256 * KIB, MIB, 4 * MIB):
        sp, ar = assembly_only(size, args.big_repeats if size > MIB else args.repeats)
        asm[size] = (sp, ar)
        n = math.ceil(size / 1024)
        print(f"    {size_text(size):>7}: aiocoap Block1Spool {sp * 1e3:7.1f} ms ({sp / n * 1e6:5.1f} us/block), "
              f"bytearray Block1Assembler {ar * 1e3:5.1f} ms ({ar / n * 1e6:4.1f} us/block): {sp / ar:5.1f}x")

    psize = 256 * KIB
    print(f"\n1c. Where the time goes per block: one {size_text(psize)} upload in 1024-byte blocks, client and server "
          "in this process under cProfile (shares of the profiled time; profiler overhead included):")
    prof = {}
    head = [("udp", "stream"), ("oscore", "stream"), ("oscore", "sink")]
    for kind, path in head:
        prof[(kind, path)] = await profile_upload(kind, folders, path, psize)
    print(f"  {'':46}" + "".join(f"{('CoAP' if k == 'udp' else 'OSCORE') + ' /' + p:>15}" for k, p in head))
    for c, _ in CATEGORIES:
        print(f"  {c:46}" + "".join(f"{100 * prof[h][0].get(c, 0) / prof[h][1]:14.1f}%" for h in head))
    print(f"  {'profiled us per block, both sides':46}"
          + "".join(f"{prof[h][1] / prof[h][2] * 1e6:15.0f}" for h in head))

    # 2. bytes
    print("\n2. Bytes per update: MLP " + "-".join(map(str, LAYERS)) + ", a delta ~ N(0, 0.01):")
    tensors = realistic_update()
    params = sum(t.size for t in tensors)
    aitw = weights.encode(tensors)
    aitq = quantize.encode(quantize.quantize(tensors))
    key = coincurve.PrivateKey(hashlib.sha256(b"bench device").digest())
    dev = address_of(key.public_key.format(compressed=False))
    env_q = build_envelope(aitq, key, dev, 1)
    env_w = build_envelope(aitw, key, dev, 2)
    raw_f32 = len(aitw)
    zst = lambda b: len(items.update_payload(b, round_id=1, model="m", base=bytes(32), width=1.0,  # noqa: E731
                                             samples=1)["data"])
    sizes = [("raw float32 (AITW)", raw_f32), ("AITW + zstd 9", zst(aitw)), ("AITQ int8", len(aitq)),
             ("AITQ int8 + zstd 9", zst(aitq)), ("signed envelope, AITW + zstd", len(env_w)),
             ("signed envelope, AITQ + zstd", len(env_q))]
    print(f"  {params:,} parameters; payloads (the envelopes' signatures verified with agent.signature.verify):")
    for name, n in sizes:
        print(f"    {name:36} {n:>10,} B   {n / raw_f32:6.3f} x raw float32")
    wq = await wire_bytes(server, secctx, env_q)
    ww = await wire_bytes(server, secctx, env_w)
    wp = await wire_bytes(server, secctx, env_q, oscore=False)
    print("  on the wire: the envelope POSTed block-wise to /update through a counting UDP relay (UDP payloads):")
    for name, w, env in (("OSCORE, envelope AITQ + zstd", wq, env_q), ("OSCORE, envelope AITW + zstd", ww, env_w),
                         ("plain CoAP, envelope AITQ + zstd", wp, env_q)):
        tot = w["up"] + w["down"]
        print(f"    {name:33} up {w['up']:>9,} B in {w['n_up']:>3} datagrams (max {w['max_up']} B), down "
              f"{w['down']:>6,} B in {w['n_down']:>3}: {tot:>9,} B = {tot / raw_f32:.3f} x raw float32 "
              f"({(tot + w['ip']) / raw_f32:.3f} with IPv4 + UDP headers), {100 * (tot / len(env) - 1):.1f}% over "
              f"the envelope")
    lc = await wire_bytes(server, secctx, body_of(64 * KIB), oscore=False, tuning_=tuning(LinkConfig(block_exp=4)),
                          path="stream")
    print(f"  TransportTuning(DEFAULT_BLOCK_SIZE_EXP=4) alone, a 64 KiB POST: {lc['n_up']} request datagrams "
          f"(largest {lc['max_up']} B) -> {'ignored by the client' if lc['n_up'] <= 64 else 'honoured'}; "
          f"NodeLink.request sets the request's Block1 instead (tests/integration/test_uplink_link.py)")

    # 3. message IDs
    print("\n3. Message IDs: 16 bits per client context; the server keeps (peer, ID) for EXCHANGE_LIFETIME 247 s:")
    print("  aiocoap 0.4.17: MessageManager._next_message_id is a counter + 1 mod 65536 from a random start, one per "
          "context, never checked against IDs still remembered; the server's _deduplicate_message answers a (peer, ID) "
          "seen in the last 247 s with its cached response (or nothing) instead of processing it; the client drops "
          "that response (token mismatch) and, its CON acknowledged, waits: requests have no overall timeout "
          "(protocol.py: 'FIXME: Implement timing out with REQUEST_TIMEOUT').")
    budget = MID_SPACE / EXCHANGE_LIFETIME
    rates = {}
    for row in r1:
        if row.kind in ("udp", "oscore") and row.block == 1024:
            rate = med(u.blocks / u.seconds for u in got[row])
            rates[row.kind, row.path] = rate
            print(f"  {row.label:22} 1 MiB: {rate:4.0f} CON requests (new IDs) per second = {rate / budget:3.1f} x "
                  f"the {budget:.0f}/s that 65536 IDs per 247 s allow; at that rate one context's IDs come round "
                  f"after {MID_SPACE / rate:4.0f} s ({MID_SPACE * 1024 // MIB} MiB sent)")
    st = await server_stats(server)
    print(f"  the server now holds {st['recent_messages']:,} (peer, ID) entries for deduplication, each with "
          f"its cached response and a timer, for 247 s after it came in")
    fw = await forced_wrap(server)
    print(f"  forced wrap: a 64 KiB upload used {fw['used']} IDs; the client's counter set back to the first of "
          f"them, a second 64 KiB upload: {fw['outcome']} (it used {fw['advanced']} ID); aiocoap client log: "
          + (", ".join(f"{k!r} x{v}" for k, v in fw["log"].items()) or "nothing"))
    if args.mid_wrap_real:
        rw = await real_wrap(server)
        print(f"  real wrap, 1 MiB uploads to /stream through one client context: {rw['outcome']}, "
              f"{rw['seconds']:.0f} s")
    else:
        print("  real wrap (1 MiB uploads through one client context until its IDs come round): --mid-wrap-real")

    # summary
    base = got[Row("raw UDP: stop-and-wait", "rawudp", block=1024)]
    osc = got[Row("OSCORE/UDP -> /sink", "oscore", "sink")]
    osc_x = med(u.seconds / b.seconds for u, b in zip(osc, base))
    tcp = got[Row("CoAP/TCP   -> /sink (BERT)", "tcp", "sink", block=0)]
    sink4 = got_s[Row("CoAP/UDP   -> /sink", "udp", "sink", 1024, 4 * MIB, True)]
    stream4 = got_s[Row("CoAP/UDP   -> /stream", "udp", "stream", 1024, 4 * MIB, True)]
    wire_ratio = (wq["up"] + wq["down"]) / raw_f32
    osc_rate = rates["oscore", "sink"]
    wraps = (f"< 247 s, and a reused ID {fw['outcome'].split(':')[0]}" if MID_SPACE / osc_rate < EXCHANGE_LIFETIME
             else "(>= 247 s)")
    print(f"\nsummary: 1 MiB over OSCORE/UDP (the node's path) {med(u.seconds for u in osc) * 1e3:.0f} ms = "
          f"{osc_x:.0f}x raw UDP stop-and-wait, {med(u.seconds for u in tcp) * 1e3:.0f} ms over CoAP/TCP (BERT); "
          f"aiocoap's reassembly at 4 MiB {med(a.seconds / b.seconds for a, b in zip(sink4, stream4)):.2f}x the "
          f"bytearray one (alone: {asm[4 * MIB][0] / asm[4 * MIB][1]:.0f}x, {asm[4 * MIB][0] * 1e3:.0f} ms), "
          f"at 1 MiB +{(asm[MIB][0] - asm[MIB][1]) * 1e3:.0f} ms; int8 + zstd update on the wire "
          f"{wire_ratio:.3f}x raw float32 -> target <= 0.3 {'met' if wire_ratio <= 0.3 else 'NOT met'}; "
          f"OSCORE {osc_rate:.0f} new message IDs/s: one context's IDs come round after {MID_SPACE / osc_rate:.0f} s "
          f"{wraps}"
          f"; run {time.perf_counter() - t_all:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="rounds for 1024-byte blocks and bodies up to 1 MiB")
    ap.add_argument("--big-repeats", type=int, default=2, help="rounds for 256/512-byte blocks and 4 MiB bodies")
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and server to separate cores")
    ap.add_argument("--full", action="store_true",
                    help="also /sink with 256/512-byte blocks and OSCORE at 4 MiB (about 1.5 min more)")
    ap.add_argument("--mid-wrap-real", action="store_true",
                    help="also upload 1 MiB bodies through one client context until its message IDs wrap (~1-2 min)")
    args = ap.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
