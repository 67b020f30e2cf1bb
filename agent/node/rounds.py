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
from ..train import quantize, submodel
from ..train import weights as weights_codec
from ..train.client import initial_weights
from ..train.errors import WeightsError
from ..train.manifest import spec_for
from ..uplink.errors import MessageError
from .aggregators import AggregationConfig
from .fedavg import UpdateRejected
from .round_agg import RoundAggregator
from .state import NodeState, Round

MAX_UPDATE_BYTES = 64 << 20  # decompressed; far above any model here, checked before inflating


@dataclass(frozen=True)
class RoundConfig:
    model: str = "activity"
    width: float = 1.0
    min_updates: int = 3
    round_seconds: float = 300.0
    max_norm: float = 100.0
    upstream: bool = False   # rounds are opened by the demand server (agent/node/bridge.py), not one after another
    widths: tuple[float, ...] = (1.0,)   # HeteroFL sub-model widths the node hands out by device capacity
    # the rest is agent/node/aggregators.py's AggregationConfig, with its defaults
    rule: str = AggregationConfig.rule
    trim: float = AggregationConfig.trim
    norm_policy: str = AggregationConfig.norm_policy
    mode: str = AggregationConfig.mode
    k: int = AggregationConfig.k
    max_staleness: int = AggregationConfig.max_staleness

    def __post_init__(self) -> None:
        self.aggregation()   # ValueError naming the field
        if not self.widths or any(w not in submodel.WIDTHS for w in self.widths) or 1.0 not in self.widths:
            raise ValueError(f"RoundConfig.widths: a subset of {submodel.WIDTHS} holding 1.0, got {self.widths}")
        if self.width != 1.0:
            raise ValueError("RoundConfig.width: the global model is the full model (1.0); use widths for sub-models")

    def aggregation(self) -> AggregationConfig:
        return AggregationConfig(self.max_norm, self.rule, self.trim, self.norm_policy, self.mode, self.k,
                                 self.max_staleness)


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
        self._shapes: dict[float, list[tuple[int, ...]]] = {}
        self._subs: dict[tuple[bytes, float], bytes] = {}
        self.shapes = self.shapes_for(1.0)
        self.listeners: list[Callable[[Round], None]] = []
        if state.current_round() is None:
            digest = self._save_model(initial_weights(cfg.model, cfg.width))
            first = self._new_round(1, digest)
            if cfg.upstream:   # nothing to train until the demand server opens a round
                first = replace(first, id=0, closed=self.clock())
            state.open_round(first)
        self.current = state.current_round()
        self._sweep()
        self.agg = self._rebuild()

    def _sweep(self) -> None:
        """Remove update files no open round needs: a crash after a round closed (before its files went), or
        after a file was written but before its row committed (the device resends it)."""
        r = self.current
        keep = {row[3] for row in self.state.round_updates(r.id)} if r.closed is None else set()
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

    def shapes_for(self, width: float) -> list[tuple[int, ...]]:
        if width not in self._shapes:
            self._shapes[width] = [tuple(s) for s in spec_for(self.cfg.model, width).tensor_shapes]
        return self._shapes[width]

    def width_for(self, capacity: float) -> float:
        """HeteroFL: the widest configured sub-model the device's fixed capacity reaches (1.0 = a Pi 4)."""
        fits = [w for w in self.cfg.widths if w <= capacity + 1e-9]
        return max(fits) if fits else min(self.cfg.widths)

    def sub_model(self, width: float, digest: bytes | None = None) -> bytes:
        """The global model's bytes for a device of ``width`` (its HeteroFL slice), cached per model."""
        digest = digest or self.current.hash
        key = (digest, width)
        if key not in self._subs:
            full = weights_codec.decode(self.model_bytes(digest), self.shapes)
            self._subs = {key: weights_codec.encode(submodel.slice_weights(full, self.shapes_for(width)))}
        return self._subs[key]

    def _new_agg(self) -> RoundAggregator:
        return RoundAggregator(self.cfg.aggregation(), self.shapes, self.shapes_for)

    def _rebuild(self) -> RoundAggregator:
        agg = self._new_agg()
        if self.current.closed is not None:   # upstream, between rounds: its updates are folded and gone
            return agg
        for _addr, _seq, samples, file, width, staleness in self.state.round_updates(self.current.id):
            width = 1.0 if width is None else width
            agg.add(self._tensors((self.updates / file).read_bytes(), width), samples, width, staleness or 0)
        return agg

    def _tensors(self, raw: bytes, width: float) -> list[np.ndarray]:
        shapes = self.shapes_for(width)
        if raw[:4] == quantize.MAGIC:
            return quantize.dequantize(quantize.decode(raw, shapes))
        return weights_codec.decode(raw, shapes)

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

    def staleness(self, payload: dict) -> int | None:
        """Model versions between the update's base and now; None if it may not be aggregated any more."""
        r = self.current
        if r.closed is not None:
            return None
        if self.cfg.mode == "sync":
            return 0 if payload["round"] == r.id and payload["base"] == r.hash else None
        base = self.state.round(payload["round"])
        if base is None or base.hash != payload["base"] or base.id > r.id:
            return None
        tau = r.id - base.id
        return tau if tau <= self.cfg.max_staleness else None

    def accept(self, addr: bytes, seq: int, digest: bytes, payload: dict, size: int = 0) -> Outcome:
        """Check and fold one update, record it durably. Raises UpdateRejected or MessageError."""
        r = self.current
        tau = self.staleness(payload)
        if tau is None:
            # Trained on a model too old (or a closed round): acknowledged, so it is not resent, never aggregated.
            self.state.accept(addr, seq, "update", digest, "stale", round_id=payload["round"],
                              samples=payload["samples"])
            return Outcome("stale", r.id, False)
        width = payload["width"]
        if payload["model"] != r.model or width not in self.cfg.widths:
            raise UpdateRejected("shape", f"update for {payload['model']} width {width:g}; this node trains "
                                          f"{r.model} at widths {', '.join(f'{w:g}' for w in self.cfg.widths)}")
        raw = self.decode_update(payload)
        try:
            tensors = self._tensors(raw, width)
        except WeightsError as e:
            raise UpdateRejected("shape", str(e)) from None
        self.agg.check(tensors, payload["samples"], width, tau)
        name = f"{r.id}-{addr.hex()}-{seq}.upd"
        write_atomic(self.updates / name, raw)
        self.state.accept(addr, seq, "update", digest, "aggregated", round_id=r.id, samples=payload["samples"],
                          file=name, width=width, staleness=tau, size=size)
        window_full = self.agg.add(tensors, payload["samples"], width, tau)
        self.current = self.state.current_round()
        closed = window_full or (self.cfg.mode == "sync" and self.current.updates >= self.current.min_updates)
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
        self.agg = self._new_agg()
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
        if self.agg.count:
            mean = self.agg.result()
            new = [(g.astype(np.float64) + m).astype(np.float32) for g, m in zip(self.global_weights(), mean)]
            digest = self._save_model(new)
        nxt = None if self.cfg.upstream else self._new_round(r.id + 1, digest or r.hash)
        self.state.close_round(r.id, digest, nxt)
        for row in self.state.round_updates(r.id):
            (self.updates / row[3]).unlink(missing_ok=True)
        self.current = self.state.current_round()
        self.agg = self._new_agg()
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
