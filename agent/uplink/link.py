"""The device's CoAP link to its node (aiocoap client): enrollment, round, model, items.

After enrollment every request to the node is OSCORE-protected with the device's context
(HOME/uplink/oscore). Answers map to types: 2.xx returns, 4.01 raises UnknownDevice (enroll again),
other 4.xx NodeRejected (the same bytes will never be accepted), 5.xx and no answer NodeUnreachable
(retry later).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import cbor2
from aiocoap.numbers.constants import TransportTuning
from aiocoap.oscore import NotAProtectedMessage

from ..fsio import write_atomic
from ..signature import InvalidSignature, verify
from . import messages
from .errors import (
    EnrollmentError,
    NodeRejected,
    NodeUnreachable,
    UnknownDevice,
    UntrustedRound,
)
from .oscore_ctx import load_context

UPLINK_DIR = "uplink"
NODE_FILE = "node.json"


@dataclass(frozen=True)
class LinkConfig:
    """CoAP transmission parameters. RFC 7252's defaults suit a lossy radio; a wired LAN can go faster."""

    ack_timeout: float = 2.0
    max_retransmit: int = 4
    block_exp: int = 6          # block size 2 ** (4 + exp): 6 = 1024 bytes, the largest over UDP
    deadline_s: float = 60.0    # per request, plus 4 ACK timeouts per block: aiocoap itself never gives up

#: New CON messages one client context may send before it is replaced: message ids are 16 bits and the
#: node remembers each (peer, id) for EXCHANGE_LIFETIME (247 s); a reused id is answered from the node's
#: cache and the request waits forever (BENCHMARKS.md). A new context has a new source port, so a new
#: (peer, id) space; the OSCORE context (and its sequence numbers) carries over.
MESSAGES_PER_CONTEXT = 30_000


def tuning(cfg: LinkConfig) -> TransportTuning:
    t = TransportTuning()
    t.ACK_TIMEOUT = cfg.ack_timeout
    t.MAX_RETRANSMIT = cfg.max_retransmit
    t.DEFAULT_BLOCK_SIZE_EXP = cfg.block_exp
    return t


def uplink_dir(home: Path) -> Path:
    return Path(home) / UPLINK_DIR


def read_node(home: Path) -> dict | None:
    """What enrollment recorded: {"uri", "node" (address hex), "sid", "enrolled"}; None before enrollment."""
    try:
        return json.loads((uplink_dir(home) / NODE_FILE).read_text())
    except FileNotFoundError:
        return None


def write_node(home: Path, record: dict) -> None:
    write_atomic(uplink_dir(home) / NODE_FILE, json.dumps(record, sort_keys=True).encode())


def _raise_for(resp: aiocoap.Message, what: str) -> None:
    if resp.code.is_successful():
        return
    text = resp.payload.decode("utf-8", "replace")
    if resp.code == aiocoap.UNAUTHORIZED:
        raise UnknownDevice(f"{what}: node answered 4.01: {text}")
    if int(resp.code) >> 5 == 4:  # class 4: the request itself is wrong
        raise NodeRejected(f"{resp.code.dotted}", text)
    raise NodeUnreachable(f"{what}: node answered {resp.code.dotted}: {text}")


def check_round(rnd: dict, node_address: bytes) -> None:
    """Raise UntrustedRound unless ``rnd`` carries ``node_address``'s signature over its fields."""
    if "sig" not in rnd:
        raise UntrustedRound(f"round {rnd['round']} is not signed (expected node 0x{node_address.hex()})")
    try:
        verify(messages.round_digest(rnd), rnd["sig"], node_address)
    except InvalidSignature as e:
        raise UntrustedRound(f"round {rnd['round']}: {e}") from None


class NodeLink:
    def __init__(self, ctx: aiocoap.Context, uri: str, cfg: LinkConfig, secctx=None,
                 node_address: bytes | None = None) -> None:
        self.ctx, self.uri, self.cfg, self.secctx = ctx, uri.rstrip("/"), cfg, secctx
        self.node_address = node_address   # set when enrolled: round announcements must carry its signature
        self.messages = 0           # CON messages sent through self.ctx (one per block, and one more)
        self.renewals = 0           # client contexts replaced (MESSAGES_PER_CONTEXT)
        self.comm_s = 0.0           # seconds spent in exchanges with the node (the work-utility meters' comm_s)
        self.comm_bytes = 0         # payload bytes sent and received

    async def _fresh_context(self) -> None:
        old = self.ctx
        self.ctx = await aiocoap.Context.create_client_context()
        if self.secctx is not None:
            self.ctx.client_credentials[self.uri + "/*"] = self.secctx
        self.messages = 0
        self.renewals += 1
        await old.shutdown()

    @classmethod
    async def open(cls, home: Path | None, uri: str | None = None, cfg: LinkConfig = LinkConfig(),
                   protected: bool = True) -> "NodeLink":
        """A link to the enrolled node (or to ``uri`` unprotected, for enrollment)."""
        ctx = await aiocoap.Context.create_client_context()
        secctx, node_address = None, None
        if protected:
            record = read_node(home)
            if record is None:
                await ctx.shutdown()
                raise UnknownDevice("not enrolled: run `aitn uplink enroll --node coap://HOST:PORT`")
            uri = uri or record["uri"]
            secctx = load_context(uplink_dir(home) / "oscore")
            ctx.client_credentials[uri.rstrip("/") + "/*"] = secctx
            node_address = bytes.fromhex(record["node"])
        if uri is None:
            await ctx.shutdown()
            raise EnrollmentError("no node URI")
        return cls(ctx, uri, cfg, secctx, node_address)

    async def close(self) -> None:
        await self.ctx.shutdown()
        if self.secctx is not None:
            self.secctx._destroy()   # persist the sequence number now and release the context's lock
            self.secctx = None

    async def request(self, code, path: str, payload: bytes = b"", what: str = "") -> aiocoap.Message:
        size = 2 ** (4 + self.cfg.block_exp)
        blocks = len(payload) // size + 1
        if self.messages + blocks + 64 > MESSAGES_PER_CONTEXT:   # 64: room for a block-wise answer
            await self._fresh_context()
        self.messages += blocks
        msg = aiocoap.Message(code=code, uri=f"{self.uri}/{path}", payload=payload, transport_tuning=tuning(self.cfg))
        if self.cfg.block_exp != 6 and len(payload) > size:
            with warnings.catch_warnings():   # aiocoap takes a request's Block1 as the size to send in
                warnings.simplefilter("ignore", DeprecationWarning)
                msg.opt.block1 = (0, False, self.cfg.block_exp)
        deadline = self.cfg.deadline_s + 4 * self.cfg.ack_timeout * blocks
        try:
            resp = await self._exchange(msg, deadline)
        except asyncio.TimeoutError:
            raise NodeUnreachable(f"{what or path}: no answer within {deadline:.0f} s") from None
        except NotAProtectedMessage as e:
            # The node answered in the clear: it could not find or use our context (4.01), or failed before
            # OSCORE. Either way the answer is the node's word on the request, so it is raised as such.
            _raise_for(e.plain_message, what or path)
            raise NodeUnreachable(f"{what or path}: unprotected {e.plain_message.code.dotted} answer") from None
        except aiocoap.error.Error as e:
            raise NodeUnreachable(f"{what or path}: {type(e).__name__}: {e}") from None
        except OSError as e:
            raise NodeUnreachable(f"{what or path}: {e.strerror or e}") from None
        _raise_for(resp, what or path)
        return resp

    async def _exchange(self, msg: aiocoap.Message, deadline: float) -> aiocoap.Message:
        """One exchange, timed and counted whether it succeeds or not (a failed exchange is communication too)."""
        t0 = time.perf_counter()
        try:
            resp = await asyncio.wait_for(self.ctx.request(msg).response, deadline)
            self.comm_bytes += len(resp.payload)
            return resp
        finally:
            self.comm_s += time.perf_counter() - t0
            self.comm_bytes += len(msg.payload)

    def take_meters(self) -> dict[str, float]:
        """The communication since the last call, for the work-utility meters (work_s includes comm_s)."""
        out = {"comm_s": self.comm_s, "work_s": self.comm_s, "uplink_bytes": float(self.comm_bytes)}
        self.comm_s, self.comm_bytes = 0.0, 0
        return out

    async def post(self, path: str, payload: bytes) -> bytes:
        return (await self.request(aiocoap.POST, path, payload)).payload

    async def get(self, path: str) -> bytes:
        return (await self.request(aiocoap.GET, path)).payload

    async def round(self) -> dict:
        """The node's round; on an enrolled link, only if the node we enrolled with signed it."""
        rnd = messages.decode("round", (await self.request(aiocoap.GET, "round")).payload)
        if self.node_address is not None:
            check_round(rnd, self.node_address)
        return rnd

    async def model(self, expected_hash: bytes) -> bytes:
        data = (await self.request(aiocoap.GET, "model")).payload
        if hashlib.sha256(data).digest() != expected_hash:
            raise NodeUnreachable("the global model changed while it was fetched; fetch the round again")
        return data

    async def status(self) -> dict:
        return json.loads((await self.request(aiocoap.GET, "status")).payload)

    async def send_item(self, kind: str, body: bytes) -> dict:
        resp = await self.request(aiocoap.POST, kind, body, what=f"{kind} item")
        try:
            return cbor2.loads(resp.payload)
        except Exception:
            raise NodeUnreachable(f"{kind} item: unreadable acknowledgement {resp.payload[:40]!r}") from None
