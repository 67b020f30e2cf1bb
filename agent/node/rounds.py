"""Synchronous federated rounds at the node: the global model, accepting updates, closing rounds.

A round has a global model (an AITW weights file, named by its sha256), a minimum number of updates
and a deadline. Accepted updates are folded into a streaming weighted FedAvg (memory of one model,
whatever the number of devices) and their files kept until the round closes. The round closes when
it has ``min_updates`` updates, or at its deadline if it has at least one (an empty round's deadline
moves on). Closing writes the new global model (old + weighted mean of the updates), then closes the
round and opens the next in one transaction.

After a crash the open round's accumulator is rebuilt from its update files in arrival order, so
nothing accepted is lost and the result is the same.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import zstandard

from ..fsio import write_atomic
from ..train import quantize
from ..train import weights as weights_codec
from ..train.client import initial_weights
from ..train.errors import WeightsError
from ..train.manifest import spec_for
from ..uplink.errors import MessageError
from .fedavg import StreamingFedAvg, UpdateRejected
from .state import NodeState, Round

MAX_UPDATE_BYTES = 64 << 20  # decompressed; far above any model here, checked before inflating


@dataclass(frozen=True)
class RoundConfig:
    model: str = "activity"
    width: float = 1.0
    min_updates: int = 3
    round_seconds: float = 300.0
    max_norm: float = 100.0
    upstream: bool = False   # rounds are opened by the demand server (agent/node/demand.py), not one after another


@dataclass(frozen=True)
class Outcome:
    status: str        # "aggregated" | "stale"
    round: int
    closed: bool       # this update closed the round


class Rounds:
    def __init__(self, state: NodeState, folder: Path, cfg: RoundConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.cfg, self.clock = state, cfg, clock
        self.models = Path(folder) / "models"
        self.updates = Path(folder) / "updates"
        self.models.mkdir(parents=True, exist_ok=True)
        self.updates.mkdir(parents=True, exist_ok=True)
        self.shapes = spec_for(cfg.model, cfg.width).tensor_shapes
        self.listeners: list[Callable[[Round], None]] = []
        if state.current_round() is None:
            digest = self._save_model(initial_weights(cfg.model, cfg.width))
            first = self._new_round(1, digest)
            if cfg.upstream:   # nothing to train until the demand server opens a round
                first = replace(first, id=0, closed=self.clock())
            state.open_round(first)
        self.current = state.current_round()
        self._sweep()
        self.fedavg = self._rebuild()

    def _sweep(self) -> None:
        """Remove update files no open round needs: a crash after a round closed (before its files went), or
        after a file was written but before its row committed (the device resends it)."""
        keep = {file for _a, _s, _n, file in self.state.round_updates(self.current.id)}
        for path in self.updates.glob("*.upd"):
            if path.name not in keep:
                path.unlink()

    # -- models ------------------------------------------------------------------------------------

    def _save_model(self, tensors: list[np.ndarray]) -> bytes:
        data = weights_codec.encode(tensors)
        digest = hashlib.sha256(data).digest()
        path = self.models / f"{digest.hex()}.aitw"
        if not path.exists():
            write_atomic(path, data)
        return digest

    def model_bytes(self, digest: bytes | None = None) -> bytes:
        return (self.models / f"{(digest or self.current.hash).hex()}.aitw").read_bytes()

    def global_weights(self) -> list[np.ndarray]:
        return weights_codec.decode(self.model_bytes(), self.shapes)

    def _new_round(self, rid: int, digest: bytes) -> Round:
        now = self.clock()
        return Round(rid, self.cfg.model, self.cfg.width, digest, now, now + self.cfg.round_seconds,
                     self.cfg.min_updates, None, None, 0, 0)

    # -- updates -----------------------------------------------------------------------------------

    def _rebuild(self) -> StreamingFedAvg:
        agg = StreamingFedAvg(self.shapes, self.cfg.max_norm)
        for _addr, _seq, samples, file in self.state.round_updates(self.current.id):
            self._fold(agg, (self.updates / file).read_bytes(), samples)
        return agg

    def _fold(self, agg: StreamingFedAvg, raw: bytes, samples: int) -> None:
        if raw[:4] == quantize.MAGIC:
            agg.add_quantized(quantize.decode(raw, self.shapes), samples)
        else:
            agg.add(weights_codec.decode(raw, self.shapes), samples)

    def decode_update(self, payload: dict) -> bytes:
        """The update's weights bytes (AITW or AITQ), inflated and format-checked. Raises MessageError."""
        data = payload["data"]
        if payload["zstd"]:
            try:
                data = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_UPDATE_BYTES)
            except zstandard.ZstdError as e:
                raise MessageError(f"does not inflate: {e}", "update.data") from None
        want = quantize.MAGIC if payload["format"] == "aitq" else weights_codec.MAGIC
        if data[:4] != want:
            raise MessageError(f"is not an {payload['format'].upper()} file", "update.data")
        return data

    def accept(self, addr: bytes, seq: int, digest: bytes, payload: dict) -> Outcome:
        """Check and fold one update, record it durably. Raises UpdateRejected or MessageError."""
        r = self.current
        if r.closed is not None or payload["round"] != r.id or payload["base"] != r.hash:
            # Trained on an older global model: acknowledged (so it is not resent) but not aggregated.
            self.state.accept(addr, seq, "update", digest, "stale", round_id=payload["round"],
                              samples=payload["samples"])
            return Outcome("stale", r.id, False)
        if payload["model"] != r.model or payload["width"] != r.width:
            raise UpdateRejected("shape", f"update for {payload['model']} width {payload['width']:g}; "
                                          f"round {r.id} trains {r.model} width {r.width:g}")
        raw = self.decode_update(payload)
        try:
            self.fedavg.check_weight(payload["samples"])
            if raw[:4] == quantize.MAGIC:
                q = quantize.decode(raw, self.shapes)
                self.fedavg.check_quantized(q)
            else:
                tensors = weights_codec.decode(raw, self.shapes)
                self.fedavg.check(tensors)
        except WeightsError as e:
            self.fedavg.rejected["shape"] = self.fedavg.rejected.get("shape", 0) + 1
            raise UpdateRejected("shape", str(e)) from None
        name = f"{r.id}-{addr.hex()}-{seq}.upd"
        write_atomic(self.updates / name, raw)
        self.state.accept(addr, seq, "update", digest, "aggregated", round_id=r.id, samples=payload["samples"],
                          file=name)
        self._fold(self.fedavg, raw, payload["samples"])
        self.current = self.state.current_round()
        closed = self.current.updates >= self.current.min_updates
        if closed:
            self.close()
        else:
            self._notify()      # `accepted` changed: observers of /round hear of it (RFC 7641)
        return Outcome("aggregated", r.id, closed)

    def open_with(self, tensors: list[np.ndarray], min_updates: int, seconds: float) -> Round:
        """Open a round on a model from the demand server (a round still open is closed without a result)."""
        weights_codec.check_shapes(tensors, self.shapes)
        digest = self._save_model([np.asarray(t, np.float32) for t in tensors])
        r = self.current
        now = self.clock()
        nxt = Round(r.id + 1, self.cfg.model, self.cfg.width, digest, now, now + seconds, min_updates,
                    None, None, 0, 0)
        if r.closed is None:
            self.state.close_round(r.id, None, nxt)
        else:
            self.state.open_round(nxt)
        self.current = self.state.current_round()
        self.fedavg = StreamingFedAvg(self.shapes, self.cfg.max_norm)
        self._notify()
        return self.current

    def _notify(self) -> None:
        for listener in self.listeners:
            listener(self.current)

    # -- closing -----------------------------------------------------------------------------------

    def close(self) -> Round:
        """Close the current round into a new global model and open the next (standalone), or leave it
        closed with its result for the demand server (upstream); returns the current round after."""
        r = self.current
        digest = None
        if self.fedavg.count:
            mean = self.fedavg.result()
            new = [(g.astype(np.float64) + m).astype(np.float32) for g, m in zip(self.global_weights(), mean)]
            digest = self._save_model(new)
        nxt = None if self.cfg.upstream else self._new_round(r.id + 1, digest or r.hash)
        self.state.close_round(r.id, digest, nxt)
        for _addr, _seq, _n, file in self.state.round_updates(r.id):
            (self.updates / file).unlink(missing_ok=True)
        self.current = self.state.current_round()
        self.fedavg = StreamingFedAvg(self.shapes, self.cfg.max_norm)
        self._notify()
        return self.current

    def tick(self) -> None:
        """At the deadline: close a round that has updates, give an empty one another period."""
        r = self.current
        if r.closed is not None or self.clock() < r.deadline:
            return
        if r.updates > 0 or self.cfg.upstream:   # upstream: the demand server is waiting, even for nothing
            self.close()
        else:
            self.state.extend_round(r.id, self.clock() + self.cfg.round_seconds)
            self.current = self.state.current_round()
            self._notify()
