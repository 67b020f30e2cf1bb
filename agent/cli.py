"""`aitn`: the command-line tree. One function per command; AgentError -> exit code + one-line reason."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tee_sim.abi import digests
from tee_sim.abi.ids import Cmd

from . import __version__
from . import config
from .config import Globals
from .errors import AgentError
from .signature import verify
from .tee import handshake
from .tee.chainlog import ChainLog
from .tee.client import TeeClient, TraceEvent
from .tee.pairing import pair
from .tee.session import CHAIN_FILE, ChainedSession
from .tee.trace import format_event


def _print(args: argparse.Namespace, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


# -- tee -----------------------------------------------------------------------------------------


def cmd_tee_serve(g: Globals, args: argparse.Namespace) -> int:
    """Become the secure world's process (a separate program: the normal world imports only its ABI)."""
    argv = [sys.executable, "-m", "tee_sim", "serve", "--state", args.state, "--tee", g.tee,
            "--log", args.log, "--log-level", str(args.log_level), "--lockout-base", str(args.lockout_base)]
    if args.user:
        argv += ["--user", args.user]
    for uid in args.allow_uid or []:
        argv += ["--allow-uid", str(uid)]
    if args.board_serial:
        argv += ["--board-serial", args.board_serial]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached


def cmd_tee_pair(g: Globals, args: argparse.Namespace) -> int:
    p = pair(g.tee, g.home, args.time_lock, g.timeout)
    addr = digests.checksum_address(p.address)
    obj = {"pairing_id": p.pairing_id.hex(), "timelock": p.timelock, "address": addr,
           "created_key": p.created_key, "archived_chain": str(p.archived) if p.archived else None}
    text = f"paired with the secure world: pairing {p.pairing_id.hex()}, time-lock {p.timelock}, device {addr}"
    if p.created_key:
        text += "\ncreated the device key"
    if p.archived:
        text += f"\nprevious chain kept as {p.archived}"
    _print(args, obj, text)
    return 0


def _unchained(g: Globals, cmd: Cmd, params: tuple):
    """One command on a fresh, unsynced session (STATUS, GET_PUBKEY): outside the chain."""
    client = TeeClient.connect(g.tee, g.timeout)
    try:
        s = client.open_session()
        resp = client.invoke(s.id, cmd, params)
        client.close_session(s.id)
    finally:
        client.close()
    return resp


def cmd_tee_status(g: Globals, args: argparse.Namespace) -> int:
    st = json.loads(_unchained(g, Cmd.STATUS, (None, 4096, None, None)).params[1])
    chain_path = g.home / CHAIN_FILE
    st["normal_world"] = {"home": str(g.home), "chain": chain_path.exists()}
    if chain_path.exists():
        try:
            with ChainLog.open(chain_path) as c:
                st["normal_world"].update({"height": c.head.height, "pairing_id": c.pairing_id.hex(),
                                           "dropped_torn_records": c.dropped})
        except AgentError as e:
            st["normal_world"]["error"] = str(e)
    lines = [f"secure world {g.tee}: TA {st['ta_uuid']} v{st['ta_version']}",
             f"  device key: {st['address'] or 'none'}",
             f"  paired: {st['paired']}" + (f" (pairing {st['pairing_id']}, committed height "
                                            f"{st['committed_height']}, time-lock {st['timelock']})"
                                            if st['paired'] else ""),
             f"  failed proofs in a row: {st.get('failures', 0)}; lockout: {st['lockout_seconds']} s",
             f"  counters: {st['counters']}"]
    if st["state_error"]:
        lines.append(f"  STATE ERROR: {st['state_error']}")
    nw = st["normal_world"]
    lines.append(f"normal world {nw['home']}: " + (f"chain height {nw['height']}" if "height" in nw else
                                                   nw.get("error", "no chain (not paired)")))
    _print(args, st, "\n".join(lines))
    return 2 if st["state_error"] else 0


def cmd_tee_handshake(g: Globals, args: argparse.Namespace) -> int:
    events: list[TraceEvent] = []
    digest = bytes.fromhex(args.digest.removeprefix("0x")) if args.digest else os.urandom(32)
    t0 = time.perf_counter()
    with ChainedSession.open(g.tee, g.home, timeout=g.timeout, trace=events.append) as s:
        signed = handshake.sign_digest(s, digest)
        total = time.perf_counter() - t0
        steps = list(s.steps)
    address = verify_and_address(g, signed.digest, signed.signature)
    obj = {"digest": _hex(signed.digest), "signature": _hex(signed.signature), "address": address,
           "height": signed.height, "total_ms": round(total * 1e3, 3),
           "steps": [{"step": k, "ms": round(v * 1e3, 3)} for k, v in steps]}
    lines = []
    if args.trace:
        base = events[0].t if events else t0
        for ev in events:
            lines += format_event(ev, base)
        obj["frames"] = [{"t_ms": round((e.t - base) * 1e3, 3), "outbound": e.outbound, "hex": e.raw.hex()}
                         for e in events]
    lines += [f"  {k:<18} {v * 1e3:8.3f} ms" for k, v in steps]
    lines += [f"handshake ok in {total * 1e3:.3f} ms: digest {_hex(signed.digest)}",
              f"signature {_hex(signed.signature)}", f"signer {address} (chain height {signed.height})"]
    _print(args, obj, "\n".join(lines))
    return 0


def verify_and_address(g: Globals, digest: bytes, signature: bytes) -> str:
    """Check a fresh signature against the device's public key before showing it to anyone."""
    address = _identity(g)[1]
    verify(digest, signature, address)
    return digests.checksum_address(address)


# -- identity, sign, chain --------------------------------------------------------------------------


def _identity(g: Globals) -> tuple[bytes, bytes]:
    resp = _unchained(g, Cmd.GET_PUBKEY, (65, 20, None, None))
    return resp.params[0], resp.params[1]


def cmd_identity_show(g: Globals, args: argparse.Namespace) -> int:
    public_key, address = _identity(g)
    checksum = digests.checksum_address(address)
    _print(args, {"address": checksum, "public_key": _hex(public_key)},
           f"address    {checksum}\npublic key {_hex(public_key)}")
    return 0


def cmd_sign(g: Globals, args: argparse.Namespace) -> int:
    with ChainedSession.open(g.tee, g.home, timeout=g.timeout) as s:
        if args.message is not None:
            signed = handshake.sign_message(s, args.message.encode())
        else:
            signed = handshake.sign_digest(s, bytes.fromhex(args.digest.removeprefix("0x")))
    address = verify_and_address(g, signed.digest, signed.signature)
    obj = {"address": address, "signature": _hex(signed.signature), "digest": _hex(signed.digest)}
    if args.message is not None:
        obj["message"] = args.message
    _print(args, obj, f"{_hex(signed.signature)}\nsigned by {address}")
    return 0


def cmd_chain_verify(g: Globals, args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    with ChainLog.open(g.home / CHAIN_FILE) as c:
        n = c.verify()
        obj = {"blocks": n, "head_height": c.head.height, "pairing_id": c.pairing_id.hex(), "timelock": c.timelock,
               "dropped_torn_records": c.dropped, "seconds": round(time.perf_counter() - t0, 3)}
    _print(args, obj, f"chain ok: {n} blocks verified (head {obj['head_height']}, time-lock {obj['timelock']})"
           + (f"; dropped {obj['dropped_torn_records']} torn records at open" if obj["dropped_torn_records"] else ""))
    return 0


def cmd_chain_show(g: Globals, args: argparse.Namespace) -> int:
    # Block hashes are the pairing's secret: only an 8-hex-digit prefix is ever shown.
    with ChainLog.open(g.home / CHAIN_FILE) as c:
        start = max(0, c.head.height - args.tail + 1)
        rows = [{"height": r.height, "direction": "NW->SW" if r.direction == 0 else "SW->NW",
                 "command": Cmd(r.command).name if r.command in Cmd._value2member_map_ else r.command,
                 "body_digest": r.body_digest.hex(), "hash_prefix": r.hash.hex()[:8]}
                for r in c.records(start)]
    text = "\n".join(f"{r['height']:>8}  {r['direction']}  {str(r['command']):<10} body {r['body_digest'][:16]}.."
                     f"  hash {r['hash_prefix']}.." for r in rows)
    _print(args, {"blocks": rows}, text)
    return 0


def cmd_data_cid(g: Globals, args: argparse.Namespace) -> int:
    """The CID `ipfs add --only-hash --cid-version=1` (kubo's defaults) prints for the same file."""
    from .store.cid import cid_text, file_root, read_chunks

    try:
        with open(args.file, "rb") as f:
            root = cid_text(file_root(read_chunks(f)))
    except OSError as e:
        raise AgentError(f"{args.file}: {e.strerror or e}") from None
    _print(args, {"cid": root, "file": args.file}, root)
    return 0


def _datasets(g: Globals):
    from .store.datasets import DatasetStore

    return DatasetStore(g.home / "store", config.DEFAULT_STORE_QUOTA)


def cmd_data_ls(g: Globals, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    ms = _datasets(g).manifests()
    rows = [asdict(m) for m in ms]
    text = "\n".join(f"{m.root}  {m.records:>8} records  {m.compressed_bytes:>10} B  "
                     f"{m.time_range_ms[0]}..{m.time_range_ms[1]}  {m.uplink}{' evicted' if m.evicted else ''}  "
                     f"{m.policy}" for m in ms) or "no datasets"
    _print(args, {"datasets": rows}, text)
    return 0


def cmd_data_verify(g: Globals, args: argparse.Namespace) -> int:
    report = _datasets(g).verify()
    text = f"{report['datasets']} datasets, {report['blocks_checked']} blocks re-hashed: " + (
        "ok" if not report["problems"] else "\n".join(["PROBLEMS:"] + report["problems"]))
    _print(args, report, text)
    return 0 if not report["problems"] else 31


def cmd_data_export(g: Globals, args: argparse.Namespace) -> int:
    data = _datasets(g).export_car(args.cid)
    out = sys.stdout.buffer
    out.write(data)
    out.flush()
    return 0


def cmd_board_list(g: Globals, args: argparse.Namespace) -> int:
    names = config.board_names()
    _print(args, {"boards": names}, "\n".join(names))
    return 0


def cmd_board_show(g: Globals, args: argparse.Namespace) -> int:
    if g.board is None:
        raise config.ConfigError("no board selected: pass --board NAME or set AITN_BOARD")
    d = config.as_dict(g.board)
    lines = [f"{g.board.name}: {g.board.description} ({g.board.path})"]
    for section in ("hardware", "sensor", "tee", "limits"):
        lines.append(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in d[section].items()))
    lines.append(f"  effective: --home {g.home} --tee {g.tee}")
    _print(args, dict(d, effective={"home": str(g.home), "tee": g.tee}), "\n".join(lines))
    return 0


# -- sensor ----------------------------------------------------------------------------------------


def cmd_sensor_sim(g: Globals, args: argparse.Namespace) -> int:
    """Play the simulated sensor MCU on a link in real time; a summary goes to stderr at the end."""
    from dataclasses import asdict

    from .ingest import sim_link as sim

    report = sim.run(args.url, args.rate, count=args.count, duration=args.duration, seed=args.seed,
                     out=sys.stdout, clean=args.clean)
    print(json.dumps({"kind": "sim_report", **asdict(report)}), file=sys.stderr)
    return 0


def _event_json(item) -> dict:
    """One reader item as a JSON-able dict with a "kind" key."""
    from dataclasses import asdict

    from .ingest.frames import Frame, FrameError

    e = item.event
    if isinstance(e, Frame):
        return {"kind": "frame", "type": e.record_type.name, "seq": e.seq, "recv_ms": item.recv_ms,
                "fields": e.fields}
    if isinstance(e, FrameError):
        return {"kind": "frame_error", "reason": e.reason, "detail": e.detail, "offset": e.offset,
                "seq": e.seq, "recv_ms": item.recv_ms}
    kind = "".join("_" + c.lower() if c.isupper() else c for c in type(e).__name__).lstrip("_")
    return {"kind": kind, **asdict(e), "recv_ms": item.recv_ms}


def _event_text(obj: dict) -> str:
    if obj["kind"] == "frame":
        return f"{obj['seq']:>10} {obj['type']:<10} " + " ".join(f"{k}={v}" for k, v in obj["fields"].items())
    return f"{'':>10} {obj['kind'].upper():<10} " + " ".join(f"{k}={v}" for k, v in obj.items()
                                                             if k not in ("kind", "recv_ms"))


def cmd_sensor_read(g: Globals, args: argparse.Namespace) -> int:
    """Print what the sensor link carries, one line per event, then the reader's counters."""
    import signal
    from dataclasses import asdict

    from .ingest.frames import Frame
    from .ingest.reader import SerialReader

    url = args.url or (g.board.sensor.url if g.board else None)
    if not url:
        raise config.ConfigError("no sensor link: pass --url, or --board NAME for its [sensor] url")
    baudrate = args.baudrate or (g.board.sensor.baudrate if g.board else 115200)
    reader = SerialReader(url, baudrate=baudrate)
    stopping = []
    old = signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    frames, deadline = 0, None if args.duration is None else time.monotonic() + args.duration
    reader.start()
    try:
        while not stopping and (args.count is None or frames < args.count):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            lines = []
            for item in reader.get(timeout=0.2 if left is None else min(0.2, left)):
                if args.count is not None and frames >= args.count:
                    break
                frames += isinstance(item.event, Frame)
                obj = _event_json(item)
                lines.append(json.dumps(obj, ensure_ascii=False) if args.json else _event_text(obj))
            if lines:
                print("\n".join(lines), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        reader.stop()
        signal.signal(signal.SIGTERM, old)
    stats = asdict(reader.stats)
    if args.json:
        print(json.dumps({"kind": "stats", **stats}), flush=True)
    else:
        print("stats: " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
    return 0


# -- ingest and what it stored ----------------------------------------------------------------------


def cmd_ingest(g: Globals, args: argparse.Namespace) -> int:
    """Run the edge data path: sensor link -> spool -> clean -> desensitize -> stored batches."""
    from .ingest import service
    from .ingest.pipeline import IngestConfig
    from .privacy import policy as policy_mod
    from .tee.pseudonym import TeePseudonymizer

    url = args.url or (g.board.sensor.url if g.board else None)
    if not url:
        raise config.ConfigError("no sensor link: pass --url or select a board with [sensor] url")
    baudrate = args.baudrate or (g.board.sensor.baudrate if g.board else 115200)
    limits = g.board.limits if g.board else config.load_board("qemu-virt").limits
    policy = policy_mod.load(service.policy_path(args.policy))
    _, address = _identity(g)
    cfg = IngestConfig(batch_records=args.batch_records, batch_seconds=args.batch_seconds)

    def on_batch(m) -> None:
        if not args.json:
            print(f"stored {m.root}  {m.records} records  {m.compressed_bytes} B", flush=True)

    with ChainedSession.open(g.tee, g.home, timeout=g.timeout) as session:
        summary = service.run(g.home, url=url, baudrate=baudrate, device=digests.checksum_address(address),
                              limits=limits, policy=policy, pseudonymize=TeePseudonymizer(session),
                              store=_datasets(g), cfg=cfg, duration=args.duration, count=args.count,
                              on_batch=on_batch)
    from dataclasses import asdict

    obj = {"frames": summary.frames, "replayed": summary.replayed, "seconds": round(summary.seconds, 3),
           "batches": [m.root for m in summary.batches], "policy": policy.ref, "reader": asdict(summary.reader)}
    _print(args, obj, f"{summary.frames} frames in {summary.seconds:.1f} s"
           + (f" (+{summary.replayed} replayed from the spool)" if summary.replayed else "")
           + f", {len(summary.batches)} batches stored under policy {policy.ref}")
    return 0


def cmd_data_report(g: Globals, args: argparse.Namespace) -> int:
    """Every dropped or changed value by reason, summed over all batches (link, cleaning, privacy)."""
    from .ingest.pipeline import report
    from .records.clean import CleanReport, format_report

    rep = report(g.home, _datasets(g))
    lines = [f"{rep['batches']} batches", "link:"]
    lines += [f"  {k:<28} {v}" for k, v in sorted(rep["link"].items()) if not isinstance(v, dict)]
    lines += [f"  corrupt:{k:<20} {v}" for k, v in sorted(rep["link"].get("corrupt", {}).items())]
    lines += ["cleaning:", "  " + format_report(CleanReport.from_json(rep["clean"])).replace("\n", "\n  ")]
    lines += ["privacy:"] + [f"  {k:<28} {v}" for k, v in _flat(rep["privacy"])]
    obj = dict(rep, clean=json.loads(rep["clean"]))
    _print(args, obj, "\n".join(lines))
    return 0


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in sorted(d.items()):
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
    return out


def cmd_data_show(g: Globals, args: argparse.Namespace) -> int:
    """Decode a stored batch and print its first rows: exactly what leaves the device."""
    from .records import batch

    table = batch.decode(_datasets(g).read_batch(args.cid))
    n = min(args.rows, len(table))
    rows = [table.row(i) for i in range(n)]
    text = [f"{len(table)} rows, meta {json.dumps(table.meta, sort_keys=True)}"]
    for r in rows:
        text.append(" ".join(f"{k}={v}" for k, v in r.items()
                             if v is not None and v == v and v != -1 and not (isinstance(v, list) and all(x != x for x in v))))
    _print(args, {"rows": len(table), "meta": table.meta, "first": rows}, "\n".join(text))
    return 0


def cmd_data_aggregates(g: Globals, args: argparse.Namespace) -> int:
    """Release a batch's aggregates with calibrated noise, paid from the persisted privacy budget."""
    from .ingest import service
    from .privacy import policy as policy_mod
    from .privacy.budget import PrivacyBudget
    from .privacy.dp import release_aggregates
    from .records import batch

    policy = policy_mod.load(service.policy_path(args.policy))
    table = batch.decode(_datasets(g).read_batch(args.cid))
    b = policy.budget
    budget = PrivacyBudget(b.ledger_path(g.home), b.epsilon_total, b.delta_total)
    rel = release_aggregates(table, policy.release, budget, label=f"aggregates {args.cid}")
    eps_left, delta_left = budget.remaining
    obj = dict(rel.to_json(), cid=args.cid, budget_remaining={"epsilon": eps_left, "delta": delta_left})
    text = [f"{k:<22} {v.value + 0.0:>14.3f} {v.unit}" for k, v in rel.values.items()]  # + 0.0: no "-0.000"
    text.append(f"spent epsilon {rel.epsilon} ({rel.mechanism}); budget left: epsilon {eps_left:.3f}, "
                f"delta {delta_left:.2e}")
    _print(args, obj, "\n".join(text))
    return 0


# -- train -----------------------------------------------------------------------------------------


def cmd_train(g: Globals, args: argparse.Namespace) -> int:
    """One federated local round on stored batches; the update is saved under HOME/updates for the uplink."""
    from pathlib import Path

    from .train import job, ldp

    ldp_flags = (args.ldp_clip, args.ldp_noise, args.ldp_delta)
    if any(f is not None for f in ldp_flags) and None in ldp_flags:
        raise AgentError("local DP needs all of --ldp-clip, --ldp-noise and --ldp-delta")
    req = job.TrainRequest(
        datasets=tuple(args.dataset), model=args.model, width=args.width, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch, global_file=Path(args.global_file) if args.global_file else None,
        ldp=ldp.LdpConfig(*ldp_flags) if args.ldp_clip is not None else None, quantize=args.quantize,
        seed=args.seed)
    m = job.run(g.home, _datasets(g), req)
    text = (f"{m['model']} w{m['width']:g}: {m['samples']} samples, {m['epochs']} epochs ({m['steps']} steps) "
            f"in {m['seconds']:.2f} s; loss {m['loss_before']:.4f} -> {m['loss_after']:.4f}; "
            f"update L2 {m['update_l2']:.4f}" + (" (int8)" if m["quantized"] else ""))
    if m["ldp"]:
        text += f"\nLDP: epsilon {m['ldp']['epsilon']:.3f} at delta {m['ldp']['delta']:g} after {m['ldp']['rounds']} rounds"
    _print(args, m, text + f"\nsaved {m['update_file']}")
    return 0


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aitn", description="aitn-agent: a robot's atom of the AI Technology Network")
    ap.add_argument("--version", action="version", version=f"aitn {__version__}")
    ap.add_argument("--board", help="board file from board_configs/ (or $AITN_BOARD): sets the defaults below")
    ap.add_argument("--home", help=f"normal-world state directory ($AITN_HOME, the board's, or {config.DEFAULT_HOME})")
    ap.add_argument("--tee", help="secure world URL: unix:///path or a pyserial URL "
                                  f"($AITN_TEE, the board's, or {config.DEFAULT_TEE})")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the secure world")
    sub = ap.add_subparsers(dest="group", required=True)

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object")

    tee_p = sub.add_parser("tee", help="the secure world").add_subparsers(dest="cmd", required=True)
    p = tee_p.add_parser("serve", help="run the secure world (same as python -m tee_sim serve)")
    p.add_argument("--state", required=True)
    p.add_argument("--user")
    p.add_argument("--allow-uid", type=int, action="append")
    p.add_argument("--log", default="-")
    p.add_argument("--log-level", type=int, default=2, choices=range(5))
    p.add_argument("--board-serial")
    p.add_argument("--lockout-base", type=float, default=1.0)
    p.set_defaults(func=cmd_tee_serve)
    p = tee_p.add_parser("pair", help="pair the worlds (creates the device key on first use)")
    p.add_argument("--time-lock", type=int, default=0, help="time-lock iterations per block (0: default)")
    json_flag(p)
    p.set_defaults(func=cmd_tee_pair)
    p = tee_p.add_parser("status", help="secure-world status and counters, and the normal world's chain")
    json_flag(p)
    p.set_defaults(func=cmd_tee_status)
    p = tee_p.add_parser("handshake", help="run one SIGN/CHALLENGE/PROOF handshake")
    p.add_argument("--trace", action="store_true", help="print every frame as hex and decoded fields")
    p.add_argument("--digest", help="32-byte hex digest to sign (default: random)")
    json_flag(p)
    p.set_defaults(func=cmd_tee_handshake)

    id_p = sub.add_parser("identity", help="the device identity").add_subparsers(dest="cmd", required=True)
    p = id_p.add_parser("show", help="EVM address and public key of the device key")
    json_flag(p)
    p.set_defaults(func=cmd_identity_show)

    p = sub.add_parser("sign", help="sign through the handshake (EIP-191 message or raw digest)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--message", help="text to sign as an EIP-191 personal message")
    what.add_argument("--digest", help="32-byte hex digest to sign as is")
    json_flag(p)
    p.set_defaults(func=cmd_sign)

    d_p = sub.add_parser("data", help="the content-addressed store").add_subparsers(dest="cmd", required=True)
    p = d_p.add_parser("cid", help="CIDv1 of a file as `ipfs add --only-hash --cid-version=1` computes it")
    p.add_argument("file")
    json_flag(p)
    p.set_defaults(func=cmd_data_cid)
    p = d_p.add_parser("ls", help="stored datasets: CIDs, record counts, time range, policy, uplink state")
    json_flag(p)
    p.set_defaults(func=cmd_data_ls)
    p = d_p.add_parser("verify", help="re-hash every stored block")
    json_flag(p)
    p.set_defaults(func=cmd_data_verify)
    p = d_p.add_parser("export", help="write a dataset as a CARv1 (ipfs dag import) to standard output")
    p.add_argument("cid")
    p.set_defaults(func=cmd_data_export)
    p = d_p.add_parser("report", help="dropped and changed values by reason, over all batches")
    json_flag(p)
    p.set_defaults(func=cmd_data_report)
    p = d_p.add_parser("show", help="decode a stored batch: what leaves the device")
    p.add_argument("cid")
    p.add_argument("--rows", type=int, default=5)
    json_flag(p)
    p.set_defaults(func=cmd_data_show)
    p = d_p.add_parser("aggregates", help="release a batch's noisy aggregates (spends privacy budget)")
    p.add_argument("cid")
    p.add_argument("--policy", help="deployment policy TOML ($AITN_POLICY or /etc/aitn/policy.toml)")
    json_flag(p)
    p.set_defaults(func=cmd_data_aggregates)

    p = sub.add_parser("ingest", help="run the edge data path: sensor link to stored, desensitized batches")
    p.add_argument("--url", help="sensor link, any pyserial URL (default: the board's [sensor] url)")
    p.add_argument("--baudrate", type=int)
    p.add_argument("--policy", help="deployment policy TOML ($AITN_POLICY or /etc/aitn/policy.toml)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: SIGTERM)")
    p.add_argument("--count", type=int, help="stop after this many records")
    p.add_argument("--batch-records", type=int, default=20_000, help="cut a batch every N records")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="... or every S seconds")
    json_flag(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("train", help="one federated local round on stored datasets; saves the update")
    p.add_argument("--dataset", nargs="+", required=True, metavar="CID", help="stored batches to train on")
    p.add_argument("--model", choices=("activity", "anomaly"), default="activity")
    p.add_argument("--width", type=float, choices=(1.0, 0.5, 0.25), default=1.0, help="HeteroFL width")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, help="SGD learning rate (default: 0.05 activity, 0.02 anomaly)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--global", dest="global_file", metavar="FILE",
                   help="global weights file (AITW) to start from (default: the shipped initial weights)")
    p.add_argument("--ldp-clip", type=float, metavar="C", help="local DP: clip the update's L2 norm to C")
    p.add_argument("--ldp-noise", type=float, metavar="Z", help="local DP: Gaussian noise std Z*C per coordinate")
    p.add_argument("--ldp-delta", type=float, metavar="D", help="local DP: report epsilon at this delta")
    p.add_argument("--quantize", action="store_true", help="save the update as int8 (per-tensor scale)")
    p.add_argument("--seed", type=int, help="shuffling seed (LDP noise is never seeded)")
    json_flag(p)
    p.set_defaults(func=cmd_train)

    b_p = sub.add_parser("board", help="board files").add_subparsers(dest="cmd", required=True)
    p = b_p.add_parser("list", help="known boards")
    json_flag(p)
    p.set_defaults(func=cmd_board_list)
    p = b_p.add_parser("show", help="the selected board's settings (--board or $AITN_BOARD)")
    json_flag(p)
    p.set_defaults(func=cmd_board_show)

    se_p = sub.add_parser("sensor", help="the sensor MCU's link").add_subparsers(dest="cmd", required=True)
    p = se_p.add_parser("sim", help="play a simulated robot's sensor MCU on a link, in real time")
    p.add_argument("--url", required=True, help="tcp-listen://HOST:PORT, pty, or a pyserial URL to write to")
    p.add_argument("--rate", type=float, required=True, help="records per second, all kinds together")
    p.add_argument("--count", type=int, help="stop after this many records")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="no outliers, glitches, line noise or damaged frames")
    p.set_defaults(func=cmd_sensor_sim)
    p = se_p.add_parser("read", help="print the frames and events the sensor link carries, then the counters")
    p.add_argument("--url", help="pyserial URL (default: the board's [sensor] url)")
    p.add_argument("--baudrate", type=int, help="bit/s (default: the board's, or 115200)")
    p.add_argument("--count", type=int, help="stop after this many frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_sensor_read)

    ch_p = sub.add_parser("chain", help="the normal world's copy of the private chain").add_subparsers(
        dest="cmd", required=True)
    p = ch_p.add_parser("verify", help="recompute every block from genesis")
    json_flag(p)
    p.set_defaults(func=cmd_chain_verify)
    p = ch_p.add_parser("show", help="the last blocks")
    p.add_argument("--tail", type=int, default=10)
    json_flag(p)
    p.set_defaults(func=cmd_chain_show)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        g = config.resolve_globals(args.home, args.tee, args.board, args.timeout)
        return args.func(g, args)
    except AgentError as e:
        print(f"aitn: error: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:  # bad hex and similar argument errors
        print(f"aitn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
