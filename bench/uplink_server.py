"""The server side of bench/uplink.py, run as its own process; and the linear Block1 receiver prototype.

    .venv/bin/python bench/uplink_server.py [--oscore DIR]

Prints one JSON line {"pid", "coap", "rawudp", "rawtcp"} once listening on 127.0.0.1, and serves until
its stdin closes. One aiocoap server context (transports udp6 and tcpserver: coap:// and coap+tcp://
on the same port number), its site wrapped in OscoreSiteWrapper when --oscore names a context folder
(credentials ":dev"), so plain and OSCORE requests reach the same resources:

    /sink, /update  POST: aiocoap assembles Block1 (resource.Resource's default); answers 2.04 "LEN CRC32"
    /stream         POST: the prototype below assembles Block1 itself into a bytearray;
                    answers 2.04 "LEN CRC32 BLOCKS"
    /stats          GET: JSON of the UDP message layer's state (entries kept for deduplication)

and two floors without CoAP, on the same asyncio loop:

    raw UDP  stop-and-wait: each datagram is 4 bytes (u32 big-endian: block number, top bit = last
             block) + data; the server answers every datagram with its 4-byte header, the last one
             with header + "LEN CRC32". A datagram that is not the next expected one is re-acked.
    raw TCP  8-byte length + body on one connection; the server answers "LEN CRC32" once it has it all.

``Block1Receiver`` (agent/node/block1.py, what the node's /update uses) over ``Block1Assembler``:

  * ``needs_blockwise_assembly`` returns False, so aiocoap hands every block to ``render_post``;
  * one assembly per blockwise key (aiocoap's own: the remote's blockwise_key, the code, the cache key
    without Block1/Block2/Observe), a ``bytearray`` extended in place: linear in the body size;
  * block 0 starts (or restarts) an assembly; Size1 above ``max_body`` -> 4.13 with Size1 = max_body
    before a byte is kept; a block that does not start where the assembly ends -> 4.08 (RFC 7959
    2.9.2) and the assembly is dropped; a non-last block of the wrong size -> 4.00; BERT (szx 7,
    RFC 8323) takes multiples of 1024;
  * a non-last block is answered 2.31 Continue echoing its Block1 (block number, more, szx); the
    last one calls ``handle(request, body)`` with the bytearray (zero copies; bytes(body) is one) and
    its answer carries the final Block1;
  * assemblies idle longer than ``idle_s`` (aiocoap's MAX_TRANSMIT_WAIT, 93 s) are dropped on the next
    request, so a device that gives up mid-body costs at most ``max_body`` for that long.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import zlib
from pathlib import Path

import aiocoap
from aiocoap import resource

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_BODY = 64 << 20
RAW_LAST = 0x8000_0000


def summary(body) -> bytes:
    return b"%d %08x" % (len(body), zlib.crc32(body))


from agent.node.block1 import Block1Assembler, Block1Receiver, BlockError, block_key  # noqa: E402,F401

# -- the bench's resources ----------------------------------------------------------------------------

class Sink(resource.Resource):
    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED, payload=summary(request.payload))


class StreamSink(Block1Receiver):
    async def handle(self, request, body, blocks):
        return aiocoap.Message(code=aiocoap.CHANGED, payload=summary(body) + b" %d" % blocks)


class Stats(resource.Resource):
    def __init__(self, ctx_ref: list) -> None:
        super().__init__()
        self.ctx_ref = ctx_ref

    async def render_get(self, request):
        recent = 0
        for ri in self.ctx_ref[0].request_interfaces:
            mm = getattr(ri, "token_interface", None)
            if mm is not None and hasattr(mm, "_recent_messages"):
                recent += len(mm._recent_messages)
        return aiocoap.Message(payload=json.dumps({"recent_messages": recent}).encode())


# -- floors -------------------------------------------------------------------------------------------

class RawUdp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.next = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        head = int.from_bytes(data[:4], "big")
        num, last = head & ~RAW_LAST, head & RAW_LAST
        if num == 0:                 # block 0 starts a transfer
            self.buf, self.next = bytearray(), 0
        if num == self.next:
            self.buf += data[4:]
            self.next = num + 1
            self.transport.sendto(data[:4] + (b" " + summary(self.buf) if last else b""), addr)
        else:                        # a retransmission of an earlier block: ack it again
            self.transport.sendto(data[:4], addr)


async def raw_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            n = int.from_bytes(await reader.readexactly(8), "big")
            body = await reader.readexactly(n)
            writer.write(summary(body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def free_port() -> int:
    """A port number free for both UDP and TCP on 127.0.0.1 (aiocoap serves both on it)."""
    import socket
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise OSError("no port free for both UDP and TCP")


def build_root(secctx=None):
    """The bench's site (see the module docstring), OSCORE-wrapped when given the server's context."""
    from aiocoap.credentials import CredentialsMap
    from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

    ctx_ref: list = []
    site = resource.Site()
    for path in ("sink", "update"):
        site.add_resource([path], Sink())
    site.add_resource(["stream"], StreamSink())
    site.add_resource(["stats"], Stats(ctx_ref))
    if secctx is None:
        return site, ctx_ref
    creds = CredentialsMap()
    creds[":dev"] = secctx
    return OscoreSiteWrapper(site, creds), ctx_ref


async def coap_server(secctx=None) -> tuple[aiocoap.Context, int]:
    """An aiocoap server context on 127.0.0.1 (UDP and TCP, same port number) and that port."""
    root, ctx_ref = build_root(secctx)
    port = free_port()
    ctx = await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", port),
                                                      transports=["udp6", "tcpserver"])
    ctx_ref.append(ctx)
    return ctx, port


async def serve(oscore_dir: str | None) -> None:
    secctx = None
    if oscore_dir:
        from agent.uplink.oscore_ctx import load_context
        secctx = load_context(Path(oscore_dir))
    ctx, port = await coap_server(secctx)
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(RawUdp, local_addr=("127.0.0.1", 0))
    tcp = await asyncio.start_server(raw_tcp, "127.0.0.1", 0)
    print(json.dumps({"pid": os.getpid(), "coap": port, "rawudp": udp.get_extra_info("sockname")[1],
                      "rawtcp": tcp.sockets[0].getsockname()[1]}), flush=True)
    eof = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: eof.set() if not os.read(sys.stdin.fileno(), 4096) else None)
    await eof.wait()
    udp.close()
    tcp.close()
    await ctx.shutdown()
    if secctx is not None:
        secctx._destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--oscore", help="the server's OSCORE context folder")
    args = ap.parse_args()
    asyncio.run(serve(args.oscore))


if __name__ == "__main__":
    main()
