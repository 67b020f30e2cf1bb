"""Block1 (RFC 7959) request bodies assembled linearly, with a size limit checked before a byte is kept.

aiocoap reassembles a block-wise body by repeated bytes concatenation: quadratic in its size, and
with no limit, for any peer, before the resource is asked (BENCHMARKS.md: 1.9x the time at 4 MiB,
35x for the assembly alone). A resource built on ``Block1Receiver`` takes the blocks itself:

  * one assembly per blockwise key (aiocoap's own: the remote's blockwise_key, the code, the cache key
    without Block1/Block2/Observe; under OSCORE the remote carries the security context), a
    ``bytearray`` extended in place;
  * block 0 starts (or restarts) an assembly, after ``admit(request)`` accepted it (the node refuses
    an unprotected request there, before keeping anything); Size1 above ``max_body`` -> 4.13 with
    Size1 = max_body; a block that does not start where the assembly ends -> 4.08 (RFC 7959 2.9.2)
    and the assembly is dropped; a non-last block of the wrong size -> 4.00; BERT blocks (szx 7, RFC
    8323) in multiples of 1024;
  * a non-last block is answered 2.31 Continue echoing its Block1; the last one calls
    ``handle(request, body)`` and its answer carries the final Block1;
  * assemblies idle longer than MAX_TRANSMIT_WAIT (93 s) are dropped on a later request, so a device
    that gives up mid-body holds at most ``max_body`` for that long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiocoap
from aiocoap import resource
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.optionnumbers import OptionNumber

MAX_BODY = 16 << 20


class BlockError(Exception):
    def __init__(self, code, reason: str, size1: int | None = None) -> None:
        super().__init__(reason)
        self.code, self.size1 = code, size1


@dataclass
class _Assembly:
    buf: bytearray = field(default_factory=bytearray)
    blocks: int = 0
    touched: float = 0.0


class Block1Assembler:
    """Block1 bodies by key, each a bytearray extended in place. feed() -> None (more to come) or the body."""

    def __init__(self, max_body: int = MAX_BODY, idle_s: float | None = None) -> None:
        self.max_body = max_body
        self.idle_s = TransportTuning().MAX_TRANSMIT_WAIT if idle_s is None else idle_s
        self._open: dict = {}
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.idle_s / 4
        for k in [k for k, a in self._open.items() if now - a.touched > self.idle_s]:
            del self._open[k]

    def feed(self, key, block1, payload: bytes, size1: int | None = None) -> tuple[bytearray, int] | None:
        now = time.monotonic()
        self._sweep(now)
        if block1.block_number == 0:
            if size1 is not None and size1 > self.max_body:
                self._open.pop(key, None)
                raise BlockError(aiocoap.REQUEST_ENTITY_TOO_LARGE, "body too large", self.max_body)
            asm = self._open[key] = _Assembly()
        else:
            asm = self._open.get(key)
            if asm is None:
                raise BlockError(aiocoap.REQUEST_ENTITY_INCOMPLETE, "no assembly for this block")
        if block1.more and not ((len(payload) > 0 and len(payload) % 1024 == 0) if block1.is_bert
                                else len(payload) == block1.size):
            del self._open[key]
            raise BlockError(aiocoap.BAD_REQUEST, "payload size does not match Block1")
        if block1.start != len(asm.buf):
            del self._open[key]
            raise BlockError(aiocoap.REQUEST_ENTITY_INCOMPLETE, f"block at {block1.start}, have {len(asm.buf)}")
        if len(asm.buf) + len(payload) > self.max_body:
            del self._open[key]
            raise BlockError(aiocoap.REQUEST_ENTITY_TOO_LARGE, "body too large", self.max_body)
        asm.buf += payload
        asm.blocks += 1
        asm.touched = now
        if block1.more:
            return None
        del self._open[key]
        return asm.buf, asm.blocks


def block_key(request):
    """aiocoap's blockwise key (aiocoap.blockwise._extract_block_key)."""
    return (request.remote.blockwise_key, request.code,
            request.get_cache_key([OptionNumber.BLOCK1, OptionNumber.BLOCK2, OptionNumber.OBSERVE]))


class Block1Receiver(resource.Resource):
    """POST with a Block1 body assembled here, linearly; subclasses implement handle(request, body, blocks)
    and may refuse a request before its first block is kept with admit(request) -> Message | None."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        super().__init__()
        self.assembler = Block1Assembler(max_body)

    async def needs_blockwise_assembly(self, request):
        return False

    def admit(self, request) -> aiocoap.Message | None:
        return None

    async def render_post(self, request):
        b1 = request.opt.block1
        if b1 is None or b1.block_number == 0:
            refusal = self.admit(request)
            if refusal is not None:
                return refusal
        if b1 is None:
            if len(request.payload) > self.assembler.max_body:
                m = aiocoap.Message(code=aiocoap.REQUEST_ENTITY_TOO_LARGE, payload=b"body too large")
                m.opt.size1 = self.assembler.max_body
                return m
            return await self.handle(request, request.payload, 1)
        try:
            done = self.assembler.feed(block_key(request), b1, request.payload, request.opt.size1)
        except BlockError as e:
            m = aiocoap.Message(code=e.code, payload=str(e).encode())
            if e.size1 is not None:
                m.opt.size1 = e.size1
            return m
        if done is None:
            m = aiocoap.Message(code=aiocoap.CONTINUE)
            m.opt.block1 = (b1.block_number, True, b1.size_exponent)
            return m
        resp = await self.handle(request, *done)
        resp.opt.block1 = (b1.block_number, False, b1.size_exponent)
        return resp

    async def handle(self, request, body, blocks: int) -> aiocoap.Message:
        raise NotImplementedError
