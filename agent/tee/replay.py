"""`aitn tee replay`: a capture's normal-world side sent again to a fresh secure world, answers compared.

Each capture interface (one connection) becomes one connection to a ``ScratchWorld``, brought to
the capture's starting point (key, pairing, time-lock, committed height, from the first
OPEN_SESSION answer). Requests go in capture order, each waiting for as many answers as the
capture holds for it; every answer is compared with ``answers.compare``; the first difference
stops the replay.

A request is sent as captured except where it depends on what the secure world chose, which
the fresh one chooses anew ("translation"):

- session ids are mapped to the fresh world's;
- SYNC claims the same distance below the committed height as in the capture (usually 0), with a
  tag computed for the fresh chain and session nonce, or a wrong one where the captured tag was
  wrong (``keyed.HomeChains`` decides);
- PROOF is computed for the fresh challenge, or sent as captured where the captured proof was wrong;
- PAIR carries a key pair of the replay's own (its private half is needed to follow the chain);
- UNSEAL of a blob sealed earlier in the capture carries the fresh world's blob.

The replay keeps the fresh pairing's chain in the scratch HOME exactly as a normal world would
(``ChainLog``: blocks appended for every chained exchange, truncated at SYNC), so the proofs it
computes are the ones the genuine normal world would send.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tee_sim.abi import block as blk
from tee_sim.abi import digests
from tee_sim.abi import frame as fr
from tee_sim.abi import pairing as abi_pairing
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, FLAG_KEY, FLAG_PAIRED, Cmd, TeecResult

from ..errors import TeeUnavailable
from . import answers, pcapng
from . import client as teeclient
from .chainlog import ChainLog, ChainReader
from .decode import Decoded, decode_capture
from .keyed import CORRECT, HomeChains, Tip, Verdict, from_answer
from .scratch import ScratchWorld
from .session import CHAIN_FILE


@dataclass
class Exchange:
    iface: int
    request: Decoded
    answers: list[Decoded] = field(default_factory=list)


@dataclass
class _Sess:
    """One captured session and its counterpart in the fresh world."""

    new_id: int
    cap_nonce: bytes
    new_nonce: bytes
    cap_committed: int
    new_committed: int
    anchor: ChainReader | None = None
    cap_tip: Tip | None = None  # the capture's chain head while its session is synced
    cap_pending: tuple | None = None  # (challenge, digest, purpose) after the captured SIGN
    new_pending: tuple | None = None  # the same in the fresh world
    claim: int | None = None  # the fresh world's claimed height of the SYNC in flight
    new_synced: bool = False  # the fresh world's session passed SYNC (its exchanges are chain blocks)


@dataclass
class Outcome:
    """What the replay found; ``difference`` is None when every compared answer matched."""

    requests: int = 0
    compared: int = 0
    connections: int = 0
    notes: list[str] = field(default_factory=list)
    difference: dict | None = None
    replayed: pcapng.Capture | None = None


def _outbound(d: Decoded) -> bool:
    if d.outbound is not None:
        return d.outbound
    return not (d.frame is not None and d.frame.is_response)


def exchanges(decoded: list[Decoded]) -> list[Exchange]:
    """Requests with the answers that follow them on their own connection, in capture order."""
    out: list[Exchange] = []
    last: dict[int, Exchange] = {}
    for d in decoded:
        if _outbound(d):
            last[d.interface] = Exchange(d.interface, d)
            out.append(last[d.interface])
        elif d.interface in last:
            last[d.interface].answers.append(d)
    return out


def starting_point(decoded: list[Decoded]) -> tuple[bool, bool, int, int, str]:
    """(key, paired, committed height, time-lock, note) from the capture's first OPEN_SESSION answer."""
    for d in decoded:
        f = d.frame
        if (f is not None and f.is_response and f.kind & ~Kind.RESPONSE == Kind.OPEN_SESSION
                and f.result == TeecResult.SUCCESS and isinstance(f.params[1], Value)
                and isinstance(f.params[3], Value)):
            flags, height = f.params[3].a, f.params[1].a | f.params[1].b << 32
            return bool(flags & FLAG_KEY), bool(flags & FLAG_PAIRED), height, f.params[3].b, ""
    return True, True, 0, blk.DEFAULT_TIMELOCK, ("no successful OPEN_SESSION answer in the capture: the fresh "
                                                 "world is keyed and freshly paired")


def _u64(v) -> int:
    return v.a | v.b << 32 if isinstance(v, Value) else -1


def _ok(d: Decoded | None) -> Frame | None:
    """The answer's frame if it decoded and succeeded."""
    if d is None or d.frame is None or d.frame.result != TeecResult.SUCCESS:
        return None
    return d.frame


def _pending(answer: Frame, digest: bytes, purpose: int) -> tuple | None:
    """(challenge, digest, purpose) from a SIGN answer; None if its challenge does not decode."""
    try:
        return blk.Challenge.decode(answer.params[2]), digest, purpose
    except (ValueError, TypeError):
        return None


class Replayer:
    def __init__(self, world: ScratchWorld, decoded: list[Decoded], home_chains: HomeChains, *,
                 strict: bool = False, timeout: float = 10.0) -> None:
        self.world = world
        self.decoded = decoded
        self.home = home_chains
        self.strict = strict
        self.timeout = timeout
        self.sessions: dict[tuple[int, int], _Sess] = {}
        self.bases: answers.Bases | None = None
        self.chain: ChainLog | None = None
        self.sealed: dict[bytes, bytes] = {}
        self.pair_keys = None  # (private, public) of the replay's PAIR
        self.out = Outcome()
        self._ifaces: dict[int, int] = {}
        self._packets: list[pcapng.Packet] = []
        self._interfaces: list[pcapng.Interface] = []

    # -- running -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        exs = exchanges(self.decoded)
        last = {ex.iface: i for i, ex in enumerate(exs)}
        conns: dict[int, teeclient.Transport] = {}
        if (self.world.home / CHAIN_FILE).exists():
            self.chain = ChainLog.open(self.world.home / CHAIN_FILE)
        try:
            for i, ex in enumerate(exs):
                if ex.iface not in conns:
                    conns[ex.iface] = teeclient.connect(self.world.url, self.timeout)
                    self.out.connections += 1
                if not self._exchange(conns[ex.iface], ex):
                    break
                if last[ex.iface] == i:
                    conns.pop(ex.iface).close()
        finally:
            for t in conns.values():
                t.close()
            if self.chain is not None:
                self.chain.close()
        self.out.replayed = pcapng.Capture(self._interfaces, self._packets, "aitn tee replay")
        return self.out

    def _record(self, iface: int, data: bytes, outbound: bool) -> None:
        if iface not in self._ifaces:
            self._ifaces[iface] = len(self._interfaces)
            self._interfaces.append(pcapng.Interface(self.world.url, f"aitn tee replay of capture interface {iface}"))
        self._packets.append(pcapng.Packet(self._ifaces[iface], time.time_ns() // 1000, data, outbound))

    def _exchange(self, conn: teeclient.Transport, ex: Exchange) -> bool:
        """Send one request, compare its answers; False at the first difference."""
        raw = self._translate(ex)
        self.out.requests += 1
        self._record(ex.iface, raw, True)
        sent_index = len(self._packets) - 1
        if not ex.answers:
            self.out.notes.append(f"#{ex.request.number} has no answer in the capture: sent, not compared")
            conn.send(raw)
            return True
        new_answers: list[bytes] = []
        try:
            conn.send(raw)
            for cap in ex.answers:
                resp = conn.recv_frame()
                new_answers.append(resp)
                self._record(ex.iface, resp, False)
                self._set_bases(cap, resp)
                diffs = answers.compare(cap.raw, resp, strict=self.strict, bases=self.bases or answers.Bases())
                self.out.compared += 1
                if diffs:
                    self._differ(ex, cap, diffs, sent_index, len(self._packets) - 1)
                    return False
        except TeeUnavailable as e:
            cap = ex.answers[len(new_answers)]
            self._differ(ex, cap, [answers.Difference("answer", "present", f"none: {e}")], sent_index, None)
            return False
        self._follow(ex, raw, ex.answers[0], new_answers[0])
        return True

    def _set_bases(self, cap: Decoded, resp: bytes) -> None:
        if self.bases is not None:
            return
        c = _ok(cap)
        try:
            r = fr.decode(resp)
        except fr.FrameError:
            return
        if (c is not None and c.kind & ~Kind.RESPONSE == Kind.OPEN_SESSION and r.result == TeecResult.SUCCESS
                and r.kind & ~Kind.RESPONSE == Kind.OPEN_SESSION):
            self.bases = answers.Bases(_u64(c.params[1]), _u64(r.params[1]))

    def _differ(self, ex: Exchange, cap: Decoded, diffs: list[answers.Difference], sent_index: int,
                got_index: int | None) -> None:
        replayed = decode_capture(pcapng.Capture(self._interfaces, self._packets))
        sent = replayed[sent_index]
        got = replayed[got_index] if got_index is not None else None
        self.out.difference = {"frame": cap.number, "request_frame": ex.request.number, "differences": diffs,
                               "captured": cap, "replayed": replace(got, number=cap.number) if got else None,
                               "captured_request": ex.request, "sent_request": replace(sent, number=ex.request.number)}

    # -- translating requests ------------------------------------------------------------------

    def _translate(self, ex: Exchange) -> bytes:
        f = ex.request.frame
        if f is None or f.is_response:
            return ex.request.raw  # malformed bytes, or a response sent as a request: as captured
        sess = self.sessions.get((ex.iface, f.session))
        params = list(f.params)
        base = f.kind & ~Kind.RESPONSE
        cmd = Cmd(f.command) if base == Kind.INVOKE and f.command in Cmd._value2member_map_ else None
        if cmd is not None and f.types == CMD_PARAMS[cmd]:
            if cmd == Cmd.SYNC and sess is not None:
                params[0], params[1] = self._sync(ex, sess, f)
            elif cmd == Cmd.PROOF and sess is not None:
                params[0] = self._proof(ex, sess, f)
            elif cmd == Cmd.PAIR:
                self.pair_keys = abi_pairing.new_ephemeral()
                params[0] = self.pair_keys[1]
            elif cmd == Cmd.UNSEAL and isinstance(params[0], bytes):
                if params[0] in self.sealed:
                    params[0] = self.sealed[params[0]]
                else:
                    self.out.notes.append(f"#{ex.request.number} UNSEAL: the blob was not sealed in this capture, "
                                          "so the fresh secure world cannot unseal it")
        session = sess.new_id if sess is not None else f.session
        return fr.encode(Frame(f.kind, f.request_id, session, f.command, f.types, tuple(params), f.result, f.origin))

    def _sync(self, ex: Exchange, sess: _Sess, f: Frame) -> tuple[Value, bytes]:
        claimed, tag_nonce = _u64(f.params[0]), f.params[1]
        if not isinstance(tag_nonce, bytes) or len(tag_nonce) != 32 + blk.NONCE_SIZE:
            return f.params[0], tag_nonce
        tag, nw_nonce = tag_nonce[:32], tag_nonce[32:]
        ans = _ok(ex.answers[0] if ex.answers else None)
        answer = (_u64(ans.params[3]), ans.params[2]) if ans is not None and isinstance(ans.params[2], bytes) else None
        verdict, sess.anchor, sess.cap_tip = self.home.sync_tag(claimed, sess.cap_nonce, tag, nw_nonce, answer)
        if verdict is None:
            verdict = from_answer("SYNC tag", ex.answers[0].frame.result if ex.answers and ex.answers[0].frame else None)
        self.out.notes.append(f"#{ex.request.number} {verdict.note}")
        fresh = max(0, sess.new_committed - (sess.cap_committed - claimed))
        sess.claim = fresh
        new_tag = tag
        if verdict.value == CORRECT and self.chain is not None and fresh <= self.chain.head.height:
            new_tag = blk.sync_tag(self.chain.hash_at(fresh), sess.new_nonce, fresh)
        return Value(fresh & 0xFFFFFFFF, fresh >> 32), new_tag + nw_nonce

    def _proof(self, ex: Exchange, sess: _Sess, f: Frame) -> bytes:
        proof = f.params[0]
        verdict: Verdict | None = None
        if sess.anchor is not None and sess.cap_tip is not None and sess.cap_pending is not None \
                and isinstance(proof, bytes):
            challenge, digest, purpose = sess.cap_pending
            verdict = self.home.proof(sess.anchor, sess.cap_tip, challenge, digest, purpose, proof)
        if verdict is None:
            verdict = from_answer("proof", ex.answers[0].frame.result if ex.answers and ex.answers[0].frame else None)
        self.out.notes.append(f"#{ex.request.number} {verdict.note}")
        if verdict.value != CORRECT or sess.new_pending is None or self.chain is None:
            return proof
        challenge, digest, purpose = sess.new_pending
        hashes = [self.chain.hash_at(h) for h in challenge.heights if h <= self.chain.head.height]
        if len(hashes) != len(challenge.heights):
            return proof
        return blk.proof(hashes, challenge.nonce, digest, purpose, self.chain.head.hash)

    # -- following both chains ----------------------------------------------------------------

    def _follow(self, ex: Exchange, raw: bytes, cap: Decoded, resp_raw: bytes) -> None:
        """Bookkeeping after a matched exchange: sessions, SYNC, chained blocks, pending challenges."""
        f = ex.request.frame
        if f is None:
            return
        try:
            resp = fr.decode(resp_raw)
        except fr.FrameError:
            return
        c, base = _ok(cap), f.kind & ~Kind.RESPONSE
        key = (ex.iface, f.session)
        if base == Kind.OPEN_SESSION:
            if c is not None and resp.result == TeecResult.SUCCESS:
                self.sessions[(ex.iface, c.session)] = _Sess(resp.session, c.params[2], resp.params[2],
                                                             _u64(c.params[1]), _u64(resp.params[1]))
            return
        sess = self.sessions.get(key)
        if base == Kind.CLOSE_SESSION:
            self.sessions.pop(key, None)
            return
        if sess is None or f.command not in Cmd._value2member_map_:
            return
        cmd = Cmd(f.command)
        if cmd == Cmd.SYNC:
            self._follow_sync(sess, c, resp)
        elif cmd == Cmd.PAIR and resp.result == TeecResult.SUCCESS:
            self._paired(resp)
        elif sess.new_synced or sess.cap_tip is not None:
            self._follow_chained(ex, sess, cmd, raw, cap, c, resp_raw, resp)
        if cmd == Cmd.SEAL and c is not None and resp.result == TeecResult.SUCCESS:
            self.sealed[c.params[1]] = resp.params[1]

    def _follow_sync(self, sess: _Sess, c: Frame | None, resp: Frame) -> None:
        ok = resp.result == TeecResult.SUCCESS
        for other in self.sessions.values():  # one synced session at a time, in each world
            if other is not sess:
                other.cap_tip = None if c is not None else other.cap_tip
                other.new_synced = False if ok else other.new_synced
        if c is None:
            sess.cap_tip = None
        fresh, sess.claim = sess.claim, None
        sess.new_synced = ok and fresh is not None and self.chain is not None
        if not sess.new_synced:
            return
        committed, out = _u64(resp.params[3]), resp.params[2]
        self.chain.truncate(fresh)
        if fresh + 1 == committed and isinstance(out, bytes) and len(out) == 32 + blk.BLOCK_FIELDS_SIZE:
            b = blk.block_from_fields(self.chain.head.hash, out[32:], self.chain.timelock)
            self.chain.append([(b.direction, b.command, b.body_digest)])

    def _follow_chained(self, ex: Exchange, sess: _Sess, cmd: Cmd, raw: bytes, cap: Decoded, c: Frame | None,
                        resp_raw: bytes, resp: Frame) -> None:
        f = ex.request.frame
        shaped = f.types == CMD_PARAMS[cmd]
        if sess.cap_tip is not None:
            if c is not None:
                sess.cap_tip.extend(blk.REQUEST, cmd, blk.message_digest(ex.request.raw))
                sess.cap_tip.extend(blk.RESPONSE, cmd, blk.message_digest(cap.raw))
            elif shaped:
                sess.cap_tip = None
        if sess.new_synced and self.chain is not None:
            if resp.result == TeecResult.SUCCESS:
                self.chain.append([(blk.REQUEST, cmd, blk.message_digest(raw)),
                                   (blk.RESPONSE, cmd, blk.message_digest(resp_raw))])
            elif shaped:
                sess.new_synced = False
        sess.cap_pending = sess.new_pending = None
        if cmd == Cmd.SIGN and isinstance(f.params[0], bytes) and isinstance(f.params[1], Value):
            try:
                digest = digests.signed_digest(f.params[1].a, f.params[0])
            except digests.PayloadError:
                return
            if c is not None:
                sess.cap_pending = _pending(c, digest, f.params[1].a)
            if resp.result == TeecResult.SUCCESS:
                sess.new_pending = _pending(resp, digest, f.params[1].a)

    def _paired(self, resp: Frame) -> None:
        """The capture paired: follow with the replay's own key pair and start a new scratch chain."""
        out = resp.params[2]
        client = teeclient.TeeClient.connect(self.world.url, self.timeout)
        try:
            sid = client.open_session().id
            public_key = client.invoke(sid, Cmd.GET_PUBKEY, (65, 20, None, None)).params[0]
            client.close_session(sid)
        finally:
            client.close()
        tee_public, pairing_id, timelock = out[:32], out[32:], resp.params[3].a
        private, nw_public = self.pair_keys
        secret = abi_pairing.derive_secret(private, tee_public, pairing_id, public_key, nw_public,
                                           tee_public)
        path = self.world.home / CHAIN_FILE
        if self.chain is not None:
            self.chain.close()
            path.rename(path.with_name(f"chain.replaced-{os.getpid()}-{time.monotonic_ns()}.log"))
        ChainLog.create(path, pairing_id, timelock, blk.genesis(secret, pairing_id, timelock))
        self.chain = ChainLog.open(path)
        for s in self.sessions.values():
            s.new_synced, s.cap_tip = False, None


def replay(decoded: list[Decoded], home: Path | None, *, strict: bool = False, timeout: float = 10.0,
           keep: bool = False) -> tuple[Outcome, dict]:
    """Start a fresh secure world, prepare it, replay; returns the outcome and what was prepared."""
    key, paired, committed, timelock, note = starting_point(decoded)
    prepared = {"key": key, "paired": paired, "committed_height": committed, "timelock": timelock}
    chains = HomeChains(home)
    with ScratchWorld(keep=keep) as world:
        notes = ([note] if note else []) + world.start().prepare(key, paired, committed, timelock, timeout)
        seen = len(world.log_lines())  # the report quotes what the secure world said during the replay only
        prepared.update(url=world.url, scratch=str(world.root) if keep else None)
        try:
            out = Replayer(world, decoded, chains, strict=strict, timeout=timeout).run()
        finally:
            chains.close()
        out.notes[:0] = chains.notes + notes
        prepared["secure_log"] = world.log_lines()[seen:]
    return out, prepared
