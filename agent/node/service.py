"""The node's rules, apart from CoAP: enrollment, item acceptance and dedup, counters, status.

Every item is checked in this order, and nothing is stored unless all pass: the OSCORE context names
an enrolled device (else UnknownDevice), the envelope and payload follow their schemas
(MessageError), the envelope's device is that device and the secure world's signature recovers its
address (BadSignature), the (device, sequence number) pair is new, or was accepted with the same
digest (then it is acknowledged again: exactly once), else SequenceConflict. Each refusal is
counted durably under ``rejected.<kind>.<reason>``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path
from typing import MutableMapping

import cbor2

from tee_sim.abi.digests import address_of

from ..signature import InvalidSignature, verify
from ..uplink import messages
from ..uplink.errors import BadSignature, MessageError, SequenceConflict, UnknownDevice
from ..uplink.oscore_ctx import derive, load_context, write_context, x25519_keypair
from ..utility.errors import ReportRefused
from .fedavg import UpdateRejected
from .identity import NodeKey
from .incentives import IncentiveConfig, Incentives
from .rounds import RoundConfig, Rounds
from .state import Device, NodeState

log = logging.getLogger("aitn.node")
ENROLL_SKEW = 24 * 3600.0  # an enrollment request older or newer than this is refused (replayed request)


class NodeService:
    def __init__(self, folder: Path, cfg: RoundConfig, credentials: MutableMapping, board: str = "",
                 incentives: IncentiveConfig = IncentiveConfig()) -> None:
        """credentials: where enrolled devices' OSCORE contexts go (aiocoap's CredentialsMap, as server.py passes)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.folder / "oscore").mkdir(exist_ok=True, mode=0o700)
        self.board = board
        self.key = NodeKey.load_or_create(self.folder)
        self.state = NodeState(self.folder / "node.db")
        self.rounds = Rounds(self.state, self.folder, cfg)
        self.incentives = Incentives(self.state, self.key, incentives)
        self.credentials = credentials
        self.started = time.time()
        for d in self.state.devices():
            self._install(d)

    def close(self) -> None:
        for name in list(self.credentials):
            self._uninstall(name)
        self.state.close()

    def _uninstall(self, name: str) -> None:
        ctx = self.credentials.pop(name, None)
        if ctx is not None and getattr(ctx, "lockfile", None) is not None:
            ctx._destroy()   # persist its replay window and release its lock (aiocoap's own shutdown path)

    def _install(self, d: Device) -> None:
        self.credentials[f":{d.addr.hex()}"] = load_context(self.folder / "oscore" / d.ctx)

    # -- enrollment --------------------------------------------------------------------------------

    def enroll(self, data: bytes) -> bytes:
        req = messages.decode("enroll", data)
        digest = messages.enroll_digest(req)
        try:
            verify(digest, req["sig"], req["dev"])
        except InvalidSignature as e:
            raise BadSignature(f"enrollment signature: {e}") from None
        if address_of(req["pub"]) != req["dev"]:
            raise BadSignature("the public key is not the enrolled address's")
        if abs(time.time() - req["t"]) > ENROLL_SKEW:
            raise MessageError("more than a day away from the node's clock (replayed request?)", "enroll.t")
        own, share = x25519_keypair()
        try:
            secret, salt = derive(own, req["x25519"], digest)
        except ValueError as e:
            raise MessageError(f"unusable key share: {e}", "enroll.x25519") from None
        old = self.state.device(req["dev"])
        sid = self.state.next_sid()
        ctx = f"{req['dev'].hex()}.{sid.hex()}"
        # node side: sender id empty, recipient id = the device's sender id
        write_context(self.folder / "oscore" / ctx, b"", sid, secret, salt)
        device = Device(req["dev"], req["pub"], req["board"], float(req["capacity"]), sid, ctx, time.time())
        if old is not None:
            self._uninstall(f":{old.addr.hex()}")
        self.state.put_device(device)
        self._install(device)
        if old is not None:
            shutil.rmtree(self.folder / "oscore" / old.ctx, ignore_errors=True)
        self.state.bump("enrolled")
        answer = {"v": messages.VERSION, "node": self.key.address, "x25519": share, "sid": sid, "rid": b""}
        answer["sig"] = self.key.sign(messages.enrolled_digest(digest, answer))
        log.info("enrolled 0x%s (board %s, capacity %g)", req["dev"].hex(), req["board"], req["capacity"])
        return messages.encode("enrolled", answer)

    # -- items -------------------------------------------------------------------------------------

    def receive(self, kind: str, sid: bytes, data: bytes) -> bytes:
        device = self.state.device_by_sid(sid)
        if device is None:
            raise UnknownDevice("no device is enrolled with this security context")
        env, payload = messages.parse_item(data, kind)
        if env["dev"] != device.addr:
            raise BadSignature(f"item names device 0x{env['dev'].hex()}, the context is 0x{device.addr.hex()}'s")
        digest = messages.item_digest(env["kind"], env["dev"], env["seq"], env["t"], env["body"])
        try:
            verify(digest, env["sig"], device.addr)
        except InvalidSignature as e:
            raise BadSignature(str(e)) from None
        seen = self.state.accepted(device.addr, env["seq"])
        if seen is not None:
            if seen.digest != digest:
                raise SequenceConflict(f"sequence number {env['seq']} was accepted with other content")
            self.state.bump(f"duplicate.{kind}")
            return cbor2.dumps({"seq": env["seq"], "status": "duplicate"})
        if kind == "update":
            outcome = self.rounds.accept(device.addr, env["seq"], digest, payload, size=len(data))
            status = outcome.status
        elif kind == "report":
            status, extra = self.incentives.admit(device, payload, env["body"])
            self.state.accept(device.addr, env["seq"], kind, digest, status, payload=env["body"], extra=extra)
        else:
            status = "accepted"
            self.state.accept(device.addr, env["seq"], kind, digest, status, payload=env["body"])
        self.state.bump(f"accepted.{kind}")
        return cbor2.dumps({"seq": env["seq"], "status": status})

    def refused(self, e: Exception, kind: str) -> None:
        """Count a refusal durably under rejected.<kind>.<reason>."""
        reason = {UnknownDevice: "unknown_device", BadSignature: "bad_signature", MessageError: "schema",
                  SequenceConflict: "seq_conflict", ReportRefused: "report"}.get(type(e), "")
        if isinstance(e, UpdateRejected):
            reason = f"update_{e.reason}"
        self.state.bump(f"rejected.{kind}.{reason or type(e).__name__}")
        log.warning("refused %s: %s", kind, e)

    # -- the demand server's bridge -----------------------------------------------------------------

    def demand_open(self, data: bytes) -> bytes:
        """Open a group round on the demand server's model; answers {"round": id}."""
        from ..train import weights as weights_codec
        from ..train.errors import WeightsError

        req = messages.decode("demand", data)
        try:
            tensors = weights_codec.decode(req["model"], self.rounds.shapes)
        except WeightsError as e:
            raise MessageError(str(e), "demand.model") from None
        r = self.rounds.open_with(tensors, req["min"], req["seconds"])
        log.info("demand server opened round %d (%d updates or %.0f s)", r.id, req["min"], req["seconds"])
        return cbor2.dumps({"round": r.id})

    def demand_status(self) -> bytes:
        r = self.rounds.current
        msg = {"round": r.id, "open": r.closed is None, "updates": r.updates, "samples": r.samples, "bytes": r.bytes}
        if r.closed is not None and r.result is not None:
            msg["model"] = self.rounds.model_bytes(r.result)
        return messages.encode("demand_status", msg)

    # -- reads -------------------------------------------------------------------------------------

    def width_of(self, sid: bytes | None) -> float:
        """The sub-model width of the device behind an OSCORE context (1.0 for anyone else)."""
        device = self.state.device_by_sid(sid) if sid is not None else None
        return 1.0 if device is None else self.rounds.width_for(device.capacity)

    def model_for(self, sid: bytes | None) -> bytes:
        width = self.width_of(sid)
        return self.rounds.model_bytes() if width == 1.0 else self.rounds.sub_model(width)

    def round_message(self, sid: bytes | None) -> bytes:
        r = self.rounds.current
        width = self.width_of(sid)
        msg = {"round": r.id, "model": r.model, "hash": r.hash, "width": width, "deadline": r.deadline,
               "min": r.min_updates, "accepted": r.updates, "open": r.closed is None}
        if width != 1.0:
            msg["sub"] = hashlib.sha256(self.rounds.sub_model(width)).digest()
        msg["sig"] = self.key.sign(messages.round_digest(msg))
        return messages.encode("round", msg)

    def status(self) -> dict:
        r = self.rounds.current
        return {"node": "0x" + self.key.address.hex(), "board": self.board,
                "uptime_s": round(time.time() - self.started, 1),
                "devices": len(self.state.devices()),
                "round": {"id": r.id, "open": r.closed is None, "model": r.model, "width": r.width,
                          "hash": r.hash.hex(),
                          "updates": r.updates, "samples": r.samples, "min_updates": r.min_updates,
                          "deadline": r.deadline},
                "incentives": self.incentives.summary(),
                "counters": self.state.counters()}
