"""A chained session: the normal world's end of the pairing (client + session + chain file).

Every invoke on a synced session appends two blocks (request, response) to the chain, exactly as
the secure world does. The durability rule both worlds follow (docs/handshake.md):

- Blocks after the last commit are tentative. The secure world commits (RPMB write) before it
  answers PROOF, and when an exchange leaves MAX_TENTATIVE blocks after the last commit.
- The normal world fdatasyncs the request block before sending any request that makes the secure
  world commit, so when a signature leaves the secure world the exchange is durable on both sides.
- Any failed exchange drops the secure world's tentative blocks; the next call re-syncs, and SYNC
  drops the normal world's.
- SYNC reconciles after a crash: the normal world proves it holds block min(own head, committed)
  and drops anything above it; if it lacks only the last committed block (it crashed before
  writing the signature's response) the secure world re-delivers that block's fields.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Callable

from tee_sim.abi import block as blk
from tee_sim.abi.frame import Frame, Value, encode
from tee_sim.abi.ids import FLAG_PAIRED, Cmd

from ..errors import ChainBehind, ChainMismatch, NotPaired, ProofRejected, TeeBadState, TeeProtocolError
from .chainlog import ChainLog
from .client import OpenedSession, TeeClient, TraceEvent, raise_for_result

CHAIN_FILE = "chain.log"


class ChainedSession:
    def __init__(self, client: TeeClient, opened: OpenedSession, chain: ChainLog) -> None:
        self.client = client
        self.opened = opened
        self.chain = chain
        self.synced = False
        self.commit_height = -1
        self.steps: list[tuple[str, float]] = []  # (label, seconds) of the last operation, for --trace

    @classmethod
    def open(cls, url: str, home: Path, *, timeout: float = 10.0,
             trace: Callable[[TraceEvent], None] | None = None, lock_wait_s: float = 0.0) -> "ChainedSession":
        """Connect, open a session and lock the chain file, waiting up to ``lock_wait_s`` for another
        normal-world process to let go of it (raises NotPaired if there is none, ChainBusy)."""
        client = TeeClient.connect(url, timeout, trace)
        try:
            opened = client.open_session()
            return cls(client, opened, ChainLog.open(home / CHAIN_FILE, lock_wait_s))
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        try:
            self.client.close_session(self.opened.id)
        except Exception:  # closing is best effort: the secure world drops sessions of closed connections
            pass
        self.client.close()
        self.chain.close()

    def __enter__(self) -> "ChainedSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sync --------------------------------------------------------------------------------------

    def sync(self) -> None:
        """Agree with the secure world on the head; raises ChainBehind / ChainMismatch / NotPaired."""
        if not self.opened.flags & FLAG_PAIRED:
            raise NotPaired("the secure world is not paired: run `aitn tee pair`")
        committed = self.opened.committed_height
        claim = min(self.chain.head.height, committed)
        tag = blk.sync_tag(self.chain.hash_at(claim), self.opened.nonce, claim)
        nw_nonce = secrets.token_bytes(blk.NONCE_SIZE)
        _, _, resp = self.client.exchange(self.client.request(self.opened.id, Cmd.SYNC, (
            Value(claim & 0xFFFFFFFF, claim >> 32), tag + nw_nonce, 32 + blk.BLOCK_FIELDS_SIZE, None)))
        try:
            raise_for_result("SYNC", resp)
        except TeeBadState as e:
            raise ChainBehind(
                f"normal-world chain ends at height {self.chain.head.height} but the secure world committed "
                f"{committed}: it was restored from an older copy. Only re-pairing recovers "
                "(`python -m tee_sim allow-repair` on the secure side, then `aitn tee pair`)") from e
        except ProofRejected as e:
            raise ChainMismatch(
                f"normal-world chain does not match the secure world's at height {claim} (a forked or foreign "
                "chain). Only re-pairing recovers") from e
        out, top = resp.params[2], resp.params[3]
        if not isinstance(out, bytes) or not isinstance(top, Value) or (top.a | top.b << 32) != committed:
            raise TeeProtocolError("SYNC answer does not match the committed height announced at open")
        # Check the answer before touching the chain: only the genuine secure world, answering this
        # very request, can make the normal world drop tentative blocks.
        missing = None
        head_hash = self.chain.hash_at(claim)
        if claim + 1 == committed:
            if len(out) != 32 + blk.BLOCK_FIELDS_SIZE:
                raise TeeProtocolError("SYNC did not re-deliver the missing block")
            missing = blk.block_from_fields(head_hash, out[32:], self.chain.timelock)
            if missing.height != committed:
                raise TeeProtocolError(f"re-delivered block has height {missing.height}, expected {committed}")
            head_hash = missing.hash
        if not hmac.compare_digest(out[:32], blk.sync_ack(head_hash, self.opened.nonce, nw_nonce, committed)):
            raise ChainMismatch("the secure world's sync answer does not match this chain (not our secure world?)")
        self.chain.truncate(claim)
        if missing is not None:
            self.chain.append([(missing.direction, missing.command, missing.body_digest)])
        self.chain.sync()
        self.synced = True
        self.commit_height = committed

    # -- chained invoke ------------------------------------------------------------------------------

    def invoke(self, cmd: Cmd, params: tuple) -> Frame:
        """One chained exchange; syncs first if needed. Raises the TEE's error after dropping the tail."""
        if not self.synced:
            self.sync()
        req = self.client.request(self.opened.id, cmd, params)
        raw = encode(req)
        req_digest = blk.message_digest(raw)
        commits = cmd == Cmd.PROOF or (self.chain.head.height + 2 - self.commit_height) >= blk.MAX_TENTATIVE
        if commits:  # the secure world will commit on this request: make ours durable first
            self.chain.append([(blk.REQUEST, int(cmd), req_digest)])
            self.chain.sync()
        try:
            resp_raw, resp = self.client.exchange_raw(raw, req.request_id)
            raise_for_result(cmd.name, resp)
        except Exception:
            # The secure world dropped its tentative blocks (an error result) or may have committed
            # (a transport failure after PROOF): either way the next SYNC decides what to keep.
            self.synced = False
            raise
        resp_digest = blk.message_digest(resp_raw)
        if commits:
            self.chain.append([(blk.RESPONSE, int(cmd), resp_digest)])
            self.commit_height = self.chain.head.height
        else:
            self.chain.append([(blk.REQUEST, int(cmd), req_digest), (blk.RESPONSE, int(cmd), resp_digest)])
        return resp
