"""Synchronous federated rounds at the node: the global model, accepting updates, closing rounds.

A round has a global model (an AITW weights file, named by its sha256), a minimum number of updates
and a deadline. Accepted updates are folded into a streaming weighted FedAvg (memory of one model,
whatever the number of devices) and their files kept until the round closes. The round closes when
it has ``min_updates`` updates, or at its deadline if it has at least one (an empty round's deadline
moves on). Closing writes the new global model (old + weighted mean of the updates), then closes the
round and opens the next in one transaction.

After a crash the open round's accumulator is rebuilt from its update files in arrival order, so
nothing accepted is lost and the result is the same.

Held updates (async mode under a demand server, ``hold_late``): while the node's round is closed and it waits for
the demand server to open the next one, an update that will still be within max_staleness in that
next round is checked as if it were aggregated, its file written, and its row recorded "held"
(acknowledged as "held": the device does not resend it). ``open_with`` folds the held updates, in
arrival order, into the new round's window with their staleness recomputed against it (one beyond
max_staleness is recorded "stale" and its file removed), in the transaction that opens the round. If
they fill the window the round closes at once and the rest stay held for the round after.
"""

from __future__ import annotations

import hashlib
import logging
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
from .fedbuff import StaleUpdate
from .round_agg import RoundAggregator
from .state import Held, NodeState, Round

log = logging.getLogger("aitn.node")
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
    #: async under a demand server: keep an update that arrives while the round is closed for the next
    #: round instead of acknowledging it stale. Off by default: measured, it wastes no device work but
    #: the held updates queue up and age the windows (BENCHMARKS.md, issue 6).
    hold_late: bool = False

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
    status: str        # "aggregated" | "stale" | "held" (kept for the next round: async, upstream, round closed)
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
        if not self.holds:
            self._drop_held("stale")      # held by an earlier run configured async under a demand server
        self._sweep()
        self.agg = self._rebuild()
        if self._full:    # a crash after the window's last update committed, before the round closed
            self.close()

    @property
    def holds(self) -> bool:
        """Updates arriving while the round is closed are held for the next one (async, demand server)."""
        return self.cfg.hold_late and self.cfg.upstream and self.cfg.mode == "async"

    def _sweep(self) -> None:
        """Remove update files no open round needs: a crash after a round closed (before its files went), or
        after a file was written but before its row committed (the device resends it). Held files stay."""
        r = self.current
        keep = {row[3] for row in self.state.round_updates(r.id)} if r.closed is None else set()
        keep |= {h.file for h in self.state.held()}
        for path in self.updates.glob("*.upd"):
            if path.name not in keep:
                path.unlink()

    def _drop_held(self, status: str) -> None:
        """Record every held update as ``status`` (not aggregated) and remove its file."""
        held = self.state.held()
        if held:
            self.state._tx(NodeState.fold_held(self.current.id, [], [(h, status) for h in held]))
            for h in held:
                (self.updates / h.file).unlink(missing_ok=True)

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
        self._full = False
        if self.current.closed is not None:   # upstream, between rounds: its updates are folded and gone
            return agg
        for _addr, _seq, samples, file, width, staleness in self.state.round_updates(self.current.id):
            width = 1.0 if width is None else width
            self._full = agg.add(self._tensors((self.updates / file).read_bytes(), width), samples, width,
                                 staleness or 0)
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

    def held_staleness(self, payload: dict) -> int | None:
        """Async under a demand server, the round closed: the staleness the update will have in the next
        round (the closed round's id + 1), None if it may not be held (not holding, or too old by then)."""
        r = self.current
        if not self.holds or r.closed is None:
            return None
        base = self.state.round(payload["round"])
        if base is None or base.hash != payload["base"] or base.id > r.id:
            return None
        tau = r.id + 1 - base.id
        return tau if tau <= self.cfg.max_staleness else None

    def accept(self, addr: bytes, seq: int, digest: bytes, payload: dict, size: int = 0) -> Outcome:
        """Check and fold one update (or hold it for the next round), record it durably.
        Raises UpdateRejected or MessageError."""
        r = self.current
        tau = self.staleness(payload)
        held_tau = self.held_staleness(payload) if tau is None else None
        if held_tau is not None:
            return self._hold(addr, seq, digest, payload, size, held_tau)
        if tau is None:
            # Trained on a model too old (or a closed round): acknowledged, so it is not resent, never aggregated.
            self.state.accept(addr, seq, "update", digest, "stale", round_id=payload["round"],
                              samples=payload["samples"])
            return Outcome("stale", r.id, False)
        raw, tensors = self._checked(payload, tau)
        width = payload["width"]
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

    def _checked(self, payload: dict, tau: int) -> tuple[bytes, list[np.ndarray]]:
        """The update's raw bytes and tensors, checked as aggregating it would. Raises UpdateRejected,
        MessageError."""
        width = payload["width"]
        if payload["model"] != self.current.model or width not in self.cfg.widths:
            raise UpdateRejected("shape", f"update for {payload['model']} width {width:g}; this node trains "
                                          f"{self.current.model} at widths "
                                          f"{', '.join(f'{w:g}' for w in self.cfg.widths)}")
        raw = self.decode_update(payload)
        try:
            tensors = self._tensors(raw, width)
        except WeightsError as e:
            raise UpdateRejected("shape", str(e)) from None
        self.agg.check(tensors, payload["samples"], width, tau)
        return raw, tensors

    def _hold(self, addr: bytes, seq: int, digest: bytes, payload: dict, size: int, tau: int) -> Outcome:
        """Keep an update that arrived while the round is closed for the next round (see the module doc)."""
        r = self.current
        raw, _ = self._checked(payload, tau)     # refused now (4.00), not silently at the fold
        name = f"held-{addr.hex()}-{seq}.upd"
        write_atomic(self.updates / name, raw)
        self.state.accept(addr, seq, "update", digest, "held", round_id=payload["round"], samples=payload["samples"],
                          file=name, width=payload["width"], size=size, extra=[NodeState.count("held.update")])
        return Outcome("held", r.id, False)

    def _fold_held(self, nxt: Round,
                   agg: RoundAggregator) -> tuple[list[tuple[Held, int]], list[tuple[Held, str]], bool]:
        """Fold the held updates, in arrival order, into ``agg`` for round ``nxt`` until its window is full:
        (folded with their staleness, dropped with their status, window full)."""
        folded: list[tuple[Held, int]] = []
        dropped: list[tuple[Held, str]] = []
        if not self.holds:
            return folded, dropped, False
        for h in self.state.held():
            tau = nxt.id - h.base
            if tau > self.cfg.max_staleness:
                dropped.append((h, "stale"))
                continue
            width = 1.0 if h.width is None else h.width
            try:
                tensors = self._tensors((self.updates / h.file).read_bytes(), width)
                agg.check(tensors, h.samples, width, tau)
            except StaleUpdate:
                dropped.append((h, "stale"))
                continue
            except (UpdateRejected, WeightsError, OSError) as e:   # another configuration since it was held
                log.warning("held update 0x%s/%d refused at the fold: %s", h.addr.hex(), h.seq, e)
                dropped.append((h, "refused"))
                continue
            folded.append((h, tau))
            if agg.add(tensors, h.samples, width, tau):
                return folded, dropped, True
        return folded, dropped, False

    def open_with(self, tensors: list[np.ndarray], min_updates: int, seconds: float) -> Round:
        """Open a round on a model from the demand server (a round still open is closed without a result),
        folding the updates held for it; if they fill its window it closes at once."""
        weights_codec.check_shapes(tensors, self.shapes)
        digest = self._save_model([np.asarray(t, np.float32) for t in tensors])
        r = self.current
        now = self.clock()
        nxt = Round(r.id + 1, self.cfg.model, self.cfg.width, digest, now, now + seconds, min_updates,
                    None, None, 0, 0)
        agg = self._new_agg()
        folded, dropped, full = self._fold_held(nxt, agg)
        extra = NodeState.fold_held(nxt.id, folded, dropped)
        if r.closed is None:
            self.state.close_round(r.id, None, nxt, extra)
        else:
            self.state.open_round(nxt, extra)
        for h, _status in dropped:
            (self.updates / h.file).unlink(missing_ok=True)
        self.current = self.state.current_round()
        self.agg = agg
        if folded or dropped:
            log.info("round %d: %d held update(s) folded, %d dropped", nxt.id, len(folded), len(dropped))
        if full:
            return self.close()
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
