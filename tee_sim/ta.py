"""The signer trusted application: sessions, the command table, the chain and the challenge.

``SignerTA.handle(conn, raw)`` is the Python form of OP-TEE's TA entry points: it takes one
request frame from connection ``conn`` and returns the encoded response. It never raises: a
failure becomes a (TeecResult, Origin) response, and the TA keeps serving.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .abi import block as blk
from .abi import digests, frame, pairing
from .abi.frame import Frame, Kind, Value
from .abi.ids import (CMD_PARAMS, FLAG_KEY, FLAG_LOCKED, FLAG_PAIRED, FLAG_STATE_ERROR, MAX_PSEUDONYM_INPUT,
                      MAX_SEAL_INPUT, TA_UUID, TA_VERSION, UNCHAINED, Cmd, Origin, ParamType, Purpose, TeecResult,
                      param_types)
from .chainview import ChainView
from .keys import DeviceKey, new_private_key, pseudonym
from .lockout import Lockout, LockoutPolicy
from .log import SecureLog
from .storage import Storage, consume_repair, repair_allowed

MAX_SESSIONS_PER_CONNECTION = 4
MAX_SESSIONS = 64
_BLOB_VERSION = 1


class TaError(Exception):
    def __init__(self, result: TeecResult, origin: Origin = Origin.TRUSTED_APP, detail: str = "") -> None:
        super().__init__(f"{result.name} ({detail})" if detail else result.name)
        self.result, self.origin, self.detail = result, origin, detail


@dataclass
class Pending:
    digest: bytes
    purpose: int
    challenge: blk.Challenge
    hashes: list[bytes]
    tip_height: int


@dataclass
class Session:
    id: int
    conn: int
    nonce: bytes
    synced: bool = False
    pending: Pending | None = None
    opened: float = field(default_factory=time.monotonic)


class SignerTA:
    def __init__(self, storage: Storage | None, log: SecureLog, *, storage_error: str | None = None,
                 lockout: LockoutPolicy = LockoutPolicy(), now: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.log = log
        self.storage_error = storage_error
        self._now = now
        self.sessions: dict[int, Session] = {}
        self._next_session = 1
        self.counters = {"signatures": 0, "proof_failures": 0, "sync_failures": 0, "bad_frames": 0,
                         "denied": 0, "requests": 0}
        # The TA's own clock for the last call of each command (STATUS "timing_us"): what the normal
        # world cannot time from outside, so `aitn tee bench` can split a handshake between the worlds.
        self.timing: dict[str, dict[str, float]] = {}
        self._steps: dict[str, float] = {}
        self._current: str | None = None
        self.key: DeviceKey | None = None
        self.chain: ChainView | None = None
        self.lockout: Lockout | None = None
        if storage is not None:
            self.lockout = Lockout(storage.rpmb, lockout, now)
            if storage.state.device_key:
                self.key = DeviceKey(storage.state.device_key)
            hdr = storage.rpmb.header
            if hdr.paired:
                self.chain = ChainView(storage.rpmb, hdr.pairing_id, hdr.timelock)
                try:
                    self.chain.load()
                except LookupError as e:
                    self.chain = None
                    self.storage_error = f"paired, but RPMB holds no valid chain head ({e})"
        if self.storage_error:
            log.error("TA", f"sealed state unusable: {self.storage_error}")

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, conn: int, raw: bytes) -> bytes:
        """One request frame in, one encoded response out; never raises."""
        self.counters["requests"] += 1
        self._steps, self._current = {}, None
        t0 = time.perf_counter()
        out = self._handle(conn, raw)
        if self._current is not None:  # seconds; STATUS rounds them to microseconds
            self._steps["total"] = time.perf_counter() - t0
            self.timing[self._current] = self._steps
        return out

    def _step(self, name: str, since: float) -> None:
        self._steps[name] = self._steps.get(name, 0.0) + time.perf_counter() - since

    def _handle(self, conn: int, raw: bytes) -> bytes:
        try:
            req = frame.decode(raw)
        except frame.FrameError as e:
            self.counters["bad_frames"] += 1
            self.log.debug("TC", f"conn {conn}: bad frame: {e.reason}")
            return self.error_frame(0, 0, 0, 0, TeecResult.BAD_FORMAT, Origin.COMMS)
        self._current = _timing_name(req)
        if req.is_response:
            return self._error(req, TaError(TeecResult.BAD_FORMAT, Origin.COMMS, "a response sent as a request"))
        try:
            if req.kind == Kind.OPEN_SESSION:
                return self._open_session(conn, req)
            if req.kind == Kind.CLOSE_SESSION:
                return self._close_session(conn, req)
            return self._invoke(conn, req, raw)
        except TaError as e:
            return self._error(req, e)
        except Exception as e:  # a TA panic: report it, keep serving
            self.log.error("TA", f"conn {conn}: unexpected {type(e).__name__}: {e}")
            return self._error(req, TaError(TeecResult.TARGET_DEAD, Origin.TEE, "internal error"))

    def denied(self, raw: bytes) -> bytes:
        """Answer for a peer the authenticator refused."""
        self.counters["denied"] += 1
        try:
            req = frame.decode(raw)
            return self._error(req, TaError(TeecResult.ACCESS_DENIED, Origin.TEE))
        except frame.FrameError:
            return self.error_frame(0, 0, 0, 0, TeecResult.ACCESS_DENIED, Origin.TEE)

    def connection_closed(self, conn: int) -> None:
        for sid in [s.id for s in self.sessions.values() if s.conn == conn]:
            self._drop_session(sid)

    # -- framing helpers -------------------------------------------------------------------------

    @staticmethod
    def error_frame(kind: int, request_id: int, session: int, command: int, result: TeecResult,
                    origin: Origin) -> bytes:
        return frame.encode(Frame((kind or Kind.INVOKE) | Kind.RESPONSE, request_id, session, command, 0,
                                  frame.NO_PARAMS, int(result), int(origin)))

    def _error(self, req: Frame, e: TaError) -> bytes:
        what = _timing_name(req) or f"cmd 0x{req.command:x}"
        self.log.debug("TA", f"{what} req#{req.request_id} session {req.session}: 0x{int(e.result):08x} "
                             f"{e.result.name}" + (f" ({e.detail})" if e.detail else ""))
        return self.error_frame(req.kind, req.request_id, req.session, req.command, e.result, e.origin)

    def _reply(self, req: Frame, params: tuple) -> bytes:
        return frame.encode(Frame(req.kind | Kind.RESPONSE, req.request_id, req.session, req.command, req.types,
                                  params))

    # -- sessions --------------------------------------------------------------------------------

    def _open_session(self, conn: int, req: Frame) -> bytes:
        if req.types != param_types(ParamType.MEMREF_TEMP_INPUT, ParamType.VALUE_OUTPUT,
                                    ParamType.MEMREF_TEMP_OUTPUT, ParamType.VALUE_OUTPUT):
            raise TaError(TeecResult.BAD_PARAMETERS, Origin.TEE, "open session parameter types")
        if req.params[0] != TA_UUID.bytes:
            raise TaError(TeecResult.ITEM_NOT_FOUND, Origin.TEE, "no such trusted application")
        mine = sum(1 for s in self.sessions.values() if s.conn == conn)
        if mine >= MAX_SESSIONS_PER_CONNECTION or len(self.sessions) >= MAX_SESSIONS:
            raise TaError(TeecResult.BUSY, Origin.TEE, "too many sessions")
        nonce = _out(req.params[2], secrets.token_bytes(blk.NONCE_SIZE))
        while self._next_session in self.sessions:  # after a wrap-around of the 32-bit id
            self._next_session = (self._next_session % 0xFFFFFFFE) + 1
        sid = self._next_session
        self._next_session = (self._next_session % 0xFFFFFFFE) + 1
        self.sessions[sid] = Session(sid, conn, nonce)
        height = self.chain.committed_height if self.chain else 0
        flags, _ = self._flags()
        out = (Value(height & 0xFFFFFFFF, height >> 32), nonce, Value(flags, self.chain.timelock if self.chain else 0))
        resp = frame.encode(Frame(req.kind | Kind.RESPONSE, req.request_id, sid, req.command, req.types,
                                  (None,) + out))
        self.log.flow("TA", f"conn {conn}: session {sid} opened")
        return resp

    def _close_session(self, conn: int, req: Frame) -> bytes:
        s = self._session(conn, req.session)
        self._drop_session(s.id)
        return self._reply(req, frame.NO_PARAMS)

    def _drop_session(self, sid: int) -> None:
        s = self.sessions.pop(sid, None)
        if s is not None and s.synced and self.chain is not None:
            self.chain.rollback()  # tentative blocks of a session that went away

    def _session(self, conn: int, sid: int) -> Session:
        s = self.sessions.get(sid)
        if s is None or s.conn != conn:  # a session is bound to the connection that opened it
            raise TaError(TeecResult.ITEM_NOT_FOUND, Origin.TEE, f"no session {sid} on this connection")
        return s

    # -- invoke ----------------------------------------------------------------------------------

    def _invoke(self, conn: int, req: Frame, raw: bytes) -> bytes:
        s = self._session(conn, req.session)
        cmd = _COMMANDS.get(req.command)
        if cmd is None:
            raise TaError(TeecResult.NOT_SUPPORTED, detail=f"command 0x{req.command:x}")
        if req.types != CMD_PARAMS[cmd]:
            raise TaError(TeecResult.BAD_PARAMETERS, detail=f"{cmd.name}: param types 0x{req.types:04x}")
        if self.storage_error and cmd != Cmd.STATUS:
            raise TaError(TeecResult.BAD_STATE, detail="sealed state unusable")
        chained = s.synced and cmd != Cmd.SYNC
        if not chained:
            if cmd not in UNCHAINED:
                self.log.error("TA", f"{cmd.name} refused: ACCESS_DENIED, session {s.id} has not passed SYNC")
                raise TaError(TeecResult.ACCESS_DENIED, detail=f"{cmd.name} needs a synced session")
            return self._reply(req, self._run(s, cmd, req))
        assert self.chain is not None
        try:
            out = self._run(s, cmd, req)
            resp = self._reply(req, out)
            t = time.perf_counter()
            self.chain.append(blk.REQUEST, cmd, blk.message_digest(raw))
            self.chain.append(blk.RESPONSE, cmd, blk.message_digest(resp))
            self._step("chain", t)
            if cmd == Cmd.PROOF or self.chain.must_commit():
                t = time.perf_counter()
                self.chain.commit()  # durable before anything leaves, the signature included
                self._step("commit", t)
            return resp
        except TaError:
            self._unsync(s)
            raise
        except OSError as e:
            self._unsync(s)
            raise TaError(TeecResult.STORAGE_NO_SPACE, detail=f"commit failed: {e}") from None

    def _unsync(self, s: Session) -> None:
        """A failed exchange on a synced session: both worlds drop the tentative tail and re-sync."""
        s.synced = False
        s.pending = None
        if self.chain is not None:
            self.chain.rollback()

    def _run(self, s: Session, cmd: Cmd, req: Frame) -> tuple:
        if cmd != Cmd.PROOF:
            s.pending = None  # PROOF must directly follow its SIGN
        p = req.params
        if cmd == Cmd.STATUS:
            flags, left = self._flags()
            return (Value(flags, int(left + 0.999)), _out(p[1], self._status_json()), None, None)
        if cmd == Cmd.GET_PUBKEY:
            key = self._key()
            return (_out(p[0], key.public_key), _out(p[1], key.address), None, None)
        if cmd == Cmd.CREATE_KEY:
            return (_out(p[0], self._create_key()), None, None, None)
        if cmd == Cmd.PAIR:
            return self._pair(p)
        if cmd == Cmd.SYNC:
            return self._sync(s, p)
        if cmd == Cmd.SIGN:
            return self._sign(s, p)
        if cmd == Cmd.PROOF:
            return self._proof(s, p)
        if cmd == Cmd.PSEUDONYM:
            value = p[0]
            if len(value) > MAX_PSEUDONYM_INPUT:
                raise TaError(TeecResult.BAD_PARAMETERS, detail=f"pseudonym input of {len(value)} bytes")
            return (None, None, _out(p[2], pseudonym(self.storage.state.pseudonym_key, p[1].a, value)), None)
        if cmd == Cmd.SEAL:
            if len(p[0]) > MAX_SEAL_INPUT:
                raise TaError(TeecResult.BAD_PARAMETERS, detail=f"seal input of {len(p[0])} bytes")
            nonce = os.urandom(12)
            blob = bytes([_BLOB_VERSION]) + nonce + AESGCM(self.storage.blob_key).encrypt(nonce, p[0], b"aitn/blob/v1")
            return (None, _out(p[1], blob), None, None)
        if cmd == Cmd.UNSEAL:
            blob = p[0]
            if len(blob) < 29 or blob[0] != _BLOB_VERSION:
                raise TaError(TeecResult.BAD_FORMAT, detail="not a sealed blob")
            try:
                plain = AESGCM(self.storage.blob_key).decrypt(blob[1:13], blob[13:], b"aitn/blob/v1")
            except InvalidTag:
                raise TaError(TeecResult.MAC_INVALID, detail="sealed blob does not authenticate") from None
            return (None, _out(p[1], plain), None, None)
        raise TaError(TeecResult.NOT_IMPLEMENTED, detail=cmd.name)

    # -- commands ------------------------------------------------------------------------------

    def _key(self) -> DeviceKey:
        if self.key is None:
            raise TaError(TeecResult.ITEM_NOT_FOUND, detail="no device key yet (CREATE_KEY)")
        return self.key

    def _create_key(self) -> bytes:
        if self.key is not None:
            raise TaError(TeecResult.ACCESS_CONFLICT, detail="device key exists; it is never regenerated")
        state = replace(self.storage.state, device_key=new_private_key())
        self.storage.save(state)  # durable before the key is used or reported
        self.key = DeviceKey(state.device_key)
        self.log.info("TA", f"device key created: {digests.checksum_address(self.key.address)}")
        return self.key.public_key

    def _pair(self, p: tuple) -> tuple:
        key = self._key()
        hdr = self.storage.rpmb.header
        if hdr.paired and not repair_allowed(self.storage.root, self._now()):
            raise TaError(TeecResult.ACCESS_DENIED, detail="already paired; re-pairing needs allow-repair")
        nw_public, iterations = p[0], p[1].a or blk.DEFAULT_TIMELOCK
        if len(nw_public) != pairing.PUBLIC_SIZE or iterations > blk.MAX_TIMELOCK:
            raise TaError(TeecResult.BAD_PARAMETERS, detail="pairing key size or time-lock")
        private, tee_public = pairing.new_ephemeral()
        pairing_id = secrets.token_bytes(blk.PAIRING_ID_SIZE)
        try:
            secret = pairing.derive_secret(private, nw_public, pairing_id, key.public_key, nw_public, tee_public)
        except ValueError:
            raise TaError(TeecResult.BAD_PARAMETERS, detail="pairing public key rejected") from None
        chain = ChainView(self.storage.rpmb, pairing_id, iterations)
        chain.start(blk.genesis(secret, pairing_id, iterations))  # genesis slot first, then the header
        self.storage.rpmb.write_header(replace(hdr, paired=True, pairing_id=pairing_id, timelock=iterations,
                                               failures=0, lockout_until=0.0))
        consume_repair(self.storage.root)
        for s in self.sessions.values():
            s.synced, s.pending = False, None
        self.chain = chain
        self.log.info("TA", f"paired: id {pairing_id.hex()} time-lock {iterations}")
        return (None, None, _out(p[2], tee_public + pairing_id), Value(iterations, blk.CHALLENGE_K))

    def _check_lockout(self) -> None:
        left = self.lockout.remaining()
        if left > 0:
            self.log.error("TA", f"refused: BUSY, locked out for {left:.1f} s (failures {self.lockout.failures})")
            raise TaError(TeecResult.BUSY, detail=f"locked out for {left:.1f} s")

    def _sync(self, s: Session, p: tuple) -> tuple:
        if self.chain is None:
            raise TaError(TeecResult.BAD_STATE, detail="not paired")
        self._check_lockout()
        if len(p[1]) != 32 + blk.NONCE_SIZE:
            raise TaError(TeecResult.BAD_PARAMETERS, detail=f"sync tag and nonce of {len(p[1])} bytes")
        tag, nw_nonce = p[1][:32], p[1][32:]
        claimed = p[0].a | p[0].b << 32
        top = self.chain.committed_height
        if claimed + 1 < top:
            self.log.error("TA", f"sync refused: BAD_STATE, normal world at height {claimed}, committed {top}: "
                                 "behind (restored from an older copy?)")
            raise TaError(TeecResult.BAD_STATE, detail=f"normal world at {claimed}, committed {top}: behind")
        if claimed > top:
            raise TaError(TeecResult.BAD_PARAMETERS, detail=f"sync at {claimed} above committed {top}")
        known = self.chain.committed_hash(claimed)
        t = time.perf_counter()
        good = known is not None and hmac.compare_digest(tag, blk.sync_tag(known, s.nonce, claimed))
        self._step("check", t)
        if not good:
            self.counters["sync_failures"] += 1
            left = self.lockout.fail()
            self.log.error("TA", f"sync refused: MAC_INVALID at height {claimed} (failures {self.lockout.failures}, "
                                 f"lockout {left:.1f} s)")
            raise TaError(TeecResult.MAC_INVALID, detail="sync tag")
        # Only a caller that proved it holds the chain takes over: one synced session at a time,
        # and the tentative blocks of the previous one go.
        for other in self.sessions.values():
            other.synced, other.pending = False, None
        self.chain.rollback()
        s.synced = True  # failures are reset only by a correct proof, never by a sync
        head = self.chain.committed
        extra = b""
        if claimed + 1 == top:  # the normal world lost the last response block: re-deliver its fields
            extra = blk.Block(head.height, b"", b"", head.direction, head.command, head.body_digest, b"").fields()
        ack = blk.sync_ack(head.hash, s.nonce, nw_nonce, top)
        return (None, None, _out(p[2], ack + extra), Value(top & 0xFFFFFFFF, top >> 32))

    def _sign(self, s: Session, p: tuple) -> tuple:
        self._check_lockout()
        self._key()  # nothing is challenged for a key that does not exist
        try:
            digest = digests.signed_digest(p[1].a, p[0])
        except digests.PayloadError as e:
            raise TaError(TeecResult.BAD_PARAMETERS, detail=str(e)) from None
        challenge = self.chain.challenge()
        hashes = [self.chain.committed_hash(h) for h in challenge.heights]
        # The CHALLENGE block will be the head after this exchange: height + 2.
        s.pending = Pending(digest, p[1].a, challenge, hashes, self.chain.head_height + 2)
        return (None, None, _out(p[2], challenge.encode()), None)

    def _proof(self, s: Session, p: tuple) -> tuple:
        pending, s.pending = s.pending, None
        self._check_lockout()
        if pending is None or pending.tip_height != self.chain.head_height:
            raise TaError(TeecResult.BAD_STATE, detail="PROOF without a directly preceding SIGN")
        t = time.perf_counter()
        expected = blk.proof(pending.hashes, pending.challenge.nonce, pending.digest, pending.purpose,
                             self.chain.head_hash)
        good = len(p[0]) == 32 and hmac.compare_digest(p[0], expected)
        self._step("check", t)
        if not good:
            self.counters["proof_failures"] += 1
            left = self.lockout.fail()
            self.log.error("TA", f"proof refused: MAC_INVALID (failures {self.lockout.failures}, "
                                 f"lockout {left:.1f} s)")
            self.log.debug("TA", f"challenged heights {list(pending.challenge.heights)}")
            raise TaError(TeecResult.MAC_INVALID, detail="proof")
        self.lockout.succeed()
        t = time.perf_counter()
        signature = self._key().sign_digest(pending.digest)
        self._step("sign", t)
        self.counters["signatures"] += 1
        if self.log.level >= 4:  # the message costs more to build than the check
            self.log.flow("TA", f"signed {Purpose(pending.purpose).name} digest {pending.digest.hex()[:16]}")
        return (None, _out(p[1], signature), _out(p[2], pending.digest), None)

    # -- status ----------------------------------------------------------------------------------

    def _flags(self) -> tuple[int, float]:
        flags = 0
        left = self.lockout.remaining() if self.lockout else 0.0
        if self.key is not None:
            flags |= FLAG_KEY
        if self.chain is not None:
            flags |= FLAG_PAIRED
        if left > 0:
            flags |= FLAG_LOCKED
        if self.storage_error:
            flags |= FLAG_STATE_ERROR
        return flags, left

    def _status_json(self) -> bytes:
        flags, left = self._flags()
        st = {"ta_uuid": str(TA_UUID), "ta_version": "%d.%d" % TA_VERSION, "state_error": self.storage_error,
              "key": self.key is not None, "paired": self.chain is not None,
              "address": digests.checksum_address(self.key.address) if self.key else None,
              "lockout_seconds": round(left, 3), "counters": dict(self.counters),
              "timing_us": {k: {step: round(sec * 1e6, 1) for step, sec in v.items()}
                            for k, v in self.timing.items()}}
        if self.storage is not None:
            hdr = self.storage.rpmb.header
            st.update({"failures": hdr.failures, "rpmb_counter": hdr.state_counter,
                       "sealed_version": self.storage.sealed.version})
        if self.chain is not None:
            st.update({"pairing_id": self.chain.pairing_id.hex(), "timelock": self.chain.timelock,
                       "committed_height": self.chain.committed_height, "tentative": len(self.chain.tail)})
        return json.dumps(st, sort_keys=True).encode()


_COMMANDS = {int(c): c for c in Cmd}  # a dict lookup per request instead of the Enum constructor
_COMMAND_NAMES = {int(c): c.name for c in Cmd}
_KIND_NAMES = {int(k): k.name for k in Kind}


def _timing_name(req: Frame) -> str | None:
    """A known command's or kind's name; None for anything else, so a caller cannot grow the table."""
    base = req.kind & ~Kind.RESPONSE
    if base == Kind.INVOKE:
        return _COMMAND_NAMES.get(req.command)
    return _KIND_NAMES.get(base)


def _out(capacity, data: bytes) -> bytes:
    """An output memref: the caller's buffer must hold it (GP's SHORT_BUFFER otherwise)."""
    if not isinstance(capacity, int) or capacity < len(data):
        raise TaError(TeecResult.SHORT_BUFFER, detail=f"{len(data)} bytes needed, buffer {capacity}")
    return data
