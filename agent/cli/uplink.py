"""`aitn uplink ...` and `aitn status`: enrollment, the outbox, sending to the node."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path

from ..config import Globals
from .common import _datasets, _identity, _print, chain_access

DEFAULT_OUTBOX_QUOTA = 64 << 20


def _outbox(g: Globals, quota: int = DEFAULT_OUTBOX_QUOTA):
    from ..uplink.outbox import Outbox

    return Outbox(g.home / "uplink" / "outbox", quota)


def _link_cfg(args: argparse.Namespace):
    from ..uplink.link import LinkConfig

    return LinkConfig(ack_timeout=args.ack_timeout, max_retransmit=args.max_retransmit)


def fixed_capacity(g: Globals) -> float:
    """The hardware's capacity relative to a Pi 4B (agent/utility/capacity.py): /proc and /sys, then the board."""
    from ..utility import capacity

    return capacity.capacity(capacity.probe(g.board.hardware if g.board else None))


def _meters(g: Globals):
    from ..utility.meters import Meters

    return Meters(g.home, g.cycle_s)


def cmd_enroll(g: Globals, args: argparse.Namespace) -> int:
    from ..uplink.enroll import enroll

    pub, dev = _identity(g)
    capacity = args.capacity if args.capacity is not None else fixed_capacity(g)
    pin = bytes.fromhex(args.node_address.removeprefix("0x")) if args.node_address else None
    rec = asyncio.run(enroll(g.home, args.node, dev=dev, pub=pub, board=g.board.name if g.board else "",
                             capacity=capacity, sign=chain_access(g).sign_digest, node_address=pin,
                             cfg=_link_cfg(args)))
    _print(args, rec, f"enrolled with node 0x{rec['node']} at {rec['uri']} (OSCORE sender id {rec['sid']})")
    return 0


def _enqueue(g: Globals, kind: str, payload: dict) -> int:
    from ..uplink import items

    _, dev = _identity(g)
    sign = chain_access(g).sign_digest
    item = _outbox(g).put(kind, lambda seq: items.envelope(kind, payload, dev=dev, seq=seq, sign=sign))
    return item.seq


def cmd_queue_update(g: Globals, args: argparse.Namespace) -> int:
    """Queue an update file written by `aitn train` (its JSON sidecar says model, width, samples, base)."""
    from ..train import weights as weights_codec
    from ..train.client import initial_weights
    from ..uplink import items

    path = Path(args.file)
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta["global"] == "initial":
        base = hashlib.sha256(weights_codec.encode(initial_weights(meta["model"], meta["width"]))).digest()
    else:
        base = hashlib.sha256(Path(meta["global"]).read_bytes()).digest()
    round_id = args.round if args.round is not None else _current_round(g)["round"]
    payload = items.update_payload(path.read_bytes(), round_id=round_id, model=meta["model"], base=base,
                                   width=meta["width"], samples=meta["samples"])
    seq = _enqueue(g, "update", payload)
    _print(args, {"seq": seq, "bytes": len(payload["data"]), "round": round_id},
           f"queued the update for round {round_id} as item {seq} ({len(payload['data'])} bytes)")
    return 0


def _current_round(g: Globals) -> dict:
    from ..uplink.link import NodeLink

    async def fetch() -> dict:
        link = await NodeLink.open(g.home)
        try:
            return await link.round()
        finally:
            await link.close()
    return asyncio.run(fetch())


def cmd_round(g: Globals, args: argparse.Namespace) -> int:
    """The node's current round; with --model-out, its global model too (hash-checked), for `aitn train --global`."""
    from ..fsio import write_atomic
    from ..uplink.link import NodeLink

    async def fetch() -> tuple[dict, bytes | None]:
        link = await NodeLink.open(g.home)
        try:
            rnd = await link.round()
            return rnd, (await link.model(rnd["hash"]) if args.model_out else None)
        finally:
            await link.close()

    rnd, model = asyncio.run(fetch())
    obj = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in rnd.items()}   # hash, sub, sig as hex
    text = (f"round {rnd['round']}: {rnd['model']} width {rnd['width']:g}, model {rnd['hash'].hex()[:16]}.., "
            f"{rnd['accepted']}/{rnd['min']} updates, deadline {time.strftime('%H:%M:%S', time.localtime(rnd['deadline']))}")
    if model is not None:
        write_atomic(Path(args.model_out), model)
        obj["model_file"] = args.model_out
        text += f"\nglobal model ({len(model)} bytes) in {args.model_out}"
    _print(args, obj, text)
    return 0


def cmd_queue_manifests(g: Globals, args: argparse.Namespace) -> int:
    """Queue one manifest item per stored dataset not yet sent, then mark them sent."""
    store = _datasets(g)
    queued = []
    for m in store.manifests():
        if m.uplink != "pending":
            continue
        seq = _enqueue(g, "manifest", {"cids": [m.root], "records": m.records, "bytes": m.compressed_bytes,
                                       "policy": m.policy})
        store.mark(m.root, "sent")
        queued.append({"root": m.root, "seq": seq})
    _print(args, {"queued": queued}, f"queued {len(queued)} manifest(s)")
    return 0


def cmd_send(g: Globals, args: argparse.Namespace) -> int:
    from ..store.datasets import DatasetError
    from ..uplink import messages
    from ..uplink.link import NodeLink
    from ..uplink.sender import Backoff, drain

    outbox = _outbox(g)
    store = _datasets(g)

    def on_ack(item, ack) -> None:
        if item.kind == "manifest":   # the node has the manifest: the dataset may be evicted when space runs out
            _env, payload = messages.parse_item(item.body)
            for root in payload["cids"]:
                try:
                    store.mark(root, "acked")
                except DatasetError:
                    pass  # removed here since it was queued: nothing left to mark

    links: list = []

    async def run():
        link = await NodeLink.open(g.home, cfg=_link_cfg(args))
        links.append(link)
        try:
            return await drain(outbox, link, backoff=Backoff(args.backoff, args.backoff_cap),
                               until_empty=not args.forever, max_failures=args.max_failures, on_ack=on_ack)
        finally:
            await link.close()

    t0 = time.perf_counter()
    try:
        stats = asyncio.run(run())
    finally:
        if links:
            with _meters(g) as m:
                m.add(links[0].take_meters())
    obj = {"sent": stats.sent, "acks": stats.acks, "rejected": stats.rejected, "retries": stats.retries,
           "seconds": round(time.perf_counter() - t0, 3), "outbox": outbox.stats()}
    _print(args, obj, f"sent {stats.sent} item(s) {stats.acks}, {stats.rejected} rejected, {stats.retries} retries")
    return 0


def cmd_status(g: Globals, args: argparse.Namespace) -> int:
    from ..uplink.link import read_node

    node = read_node(g.home)
    ob = _outbox(g).stats()
    obj = {"home": str(g.home), "node": node, "outbox": ob}
    kinds = ", ".join(f"{k} {v['items']}" for k, v in ob["by_kind"].items()) or "empty"
    text = [f"node: {'0x' + node['node'] + ' at ' + node['uri'] if node else 'not enrolled'}",
            f"outbox: {ob['items']} item(s), {ob['bytes']} of {ob['quota']} bytes ({kinds}); "
            f"dropped {ob['dropped']}; rejected {ob.get('rejected', 0)}; quarantined {ob['quarantined']}"]
    _print(args, obj, "\n".join(text))
    return 0


def _link_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ack-timeout", type=float, default=2.0, help="CoAP ACK_TIMEOUT seconds (RFC 7252: 2)")
    p.add_argument("--max-retransmit", type=int, default=4, help="CoAP MAX_RETRANSMIT (RFC 7252: 4)")


def add_parsers(sub, json_flag) -> None:
    u = sub.add_parser("uplink", help="enrollment with the node and the outbox")
    u = u.add_subparsers(dest="cmd", required=True)
    p = u.add_parser("enroll", help="enroll with a node: signed key exchange, OSCORE context")
    p.add_argument("--node", required=True, metavar="URI", help="coap://HOST:PORT")
    p.add_argument("--node-address", metavar="0x..", help="the node's address to pin (default: trust on first use)")
    p.add_argument("--capacity", type=float, help="fixed capacity (default: from the board's CPU)")
    _link_flags(p)
    json_flag(p)
    p.set_defaults(func=cmd_enroll)
    p = u.add_parser("round", help="the node's current round (OSCORE-protected)")
    p.add_argument("--model-out", metavar="FILE", help="also fetch the global model (block-wise) into FILE")
    json_flag(p)
    p.set_defaults(func=cmd_round)
    p = u.add_parser("queue-update", help="sign an update from `aitn train` and put it in the outbox")
    p.add_argument("file")
    p.add_argument("--round", type=int, help="the node's round the update answers (default: ask the node)")
    json_flag(p)
    p.set_defaults(func=cmd_queue_update)
    p = u.add_parser("queue-manifests", help="sign the manifests of datasets not yet sent; put them in the outbox")
    json_flag(p)
    p.set_defaults(func=cmd_queue_manifests)
    p = u.add_parser("send", help="send the outbox to the node (until empty, or --forever)")
    p.add_argument("--forever", action="store_true")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    p.add_argument("--backoff-cap", type=float, default=300.0, help="longest retry delay, seconds")
    p.add_argument("--max-failures", type=int, help="give up after this many failures in a row")
    _link_flags(p)
    json_flag(p)
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("status", help="enrollment and outbox state")
    json_flag(p)
    p.set_defaults(func=cmd_status)
    add_device_parsers(sub, json_flag)



def cmd_device_run(g: Globals, args: argparse.Namespace) -> int:
    """Take part in the node's rounds: train once per open round, send; until --rounds are done or SIGTERM."""
    import signal

    from ..uplink.link import NodeLink, read_node
    from ..uplink.participate import step
    from ..utility.emit import emit_due, training_work

    _, dev = _identity(g)
    store = _datasets(g)
    outbox = _outbox(g)
    stop = asyncio.Event()
    capacity = (read_node(g.home) or {}).get("capacity")

    def datasets() -> list[str]:
        return [m.root for m in store.manifests() if not m.evicted]

    async def run() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        link = await NodeLink.open(g.home, cfg=_link_cfg(args))
        done = 0
        meters = _meters(g)
        try:
            while not stop.is_set() and (args.rounds is None or done < args.rounds):
                # The chain is held only while a signature is made, never while the node is talked to.
                sign = chain_access(g).sign_digest
                st = await step(g.home, link, outbox, store, dev=dev, sign=sign, datasets=datasets)
                meters.add(link.take_meters())
                if st.trained:
                    meters.add(training_work(st.metrics))
                reports = emit_due(meters, outbox, dev=dev, sign=sign, capacity=capacity) if capacity is not None else []
                for cycle, seq in reports:
                    print(json.dumps({"report": cycle, "seq": seq}), flush=True)
                if st.trained:
                    done += 1
                    m = st.metrics
                    print(json.dumps({"round": st.round, "samples": m["samples"], "loss_before": m["loss_before"],
                                      "loss_after": m["loss_after"], "update_bytes": m["update_bytes"],
                                      "sent": st.sent}), flush=True)
                try:
                    await asyncio.wait_for(stop.wait(), args.poll)
                except asyncio.TimeoutError:
                    pass
        finally:
            meters.close()
            await link.close()
        return done

    asyncio.run(run())
    return 0


def add_device_parsers(sub, json_flag) -> None:
    d = sub.add_parser("device", help="this device's part in federated rounds")
    d = d.add_subparsers(dest="cmd", required=True)
    p = d.add_parser("run", help="train once per open round of the node and send the update, until stopped")
    p.add_argument("--rounds", type=int, help="stop after training this many rounds")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between looks at the node's round")
    _link_flags(p)
    p.set_defaults(func=cmd_device_run)
