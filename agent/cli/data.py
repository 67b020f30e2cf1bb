"""`aitn data ...` and `aitn ingest`: the edge data path and the content-addressed store."""

from __future__ import annotations

import argparse
import json
import sys

from tee_sim.abi import digests

from .. import config
from ..config import Globals
from ..errors import AgentError
from .common import _datasets, _identity, _print, chain_access


def cmd_data_cid(g: Globals, args: argparse.Namespace) -> int:
    """The CID `ipfs add --only-hash --cid-version=1` (kubo's defaults) prints for the same file."""
    from ..store.cid import cid_text, file_root, read_chunks

    try:
        with open(args.file, "rb") as f:
            root = cid_text(file_root(read_chunks(f)))
    except OSError as e:
        raise AgentError(f"{args.file}: {e.strerror or e}") from None
    _print(args, {"cid": root, "file": args.file}, root)
    return 0


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


def cmd_ingest(g: Globals, args: argparse.Namespace) -> int:
    """Run the edge data path: sensor link -> spool -> clean -> desensitize -> stored batches."""
    from ..ingest import service
    from ..ingest.pipeline import IngestConfig
    from ..privacy import policy as policy_mod
    from ..tee.pseudonym import TeePseudonymizer

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

    from ..utility.meters import Meters

    with Meters(g.home, g.cycle_s) as meters:
        summary = service.run(g.home, url=url, baudrate=baudrate, device=digests.checksum_address(address),
                              limits=limits, policy=policy, pseudonymize=TeePseudonymizer(chain_access(g).session),
                              store=_datasets(g), cfg=cfg, duration=args.duration, count=args.count,
                              on_batch=on_batch, meter=meters.add)
    from dataclasses import asdict

    obj = {"frames": summary.frames, "replayed": summary.replayed, "seconds": round(summary.seconds, 3),
           "batches": [m.root for m in summary.batches], "policy": policy.ref, "reader": asdict(summary.reader)}
    _print(args, obj, f"{summary.frames} frames in {summary.seconds:.1f} s"
           + (f" (+{summary.replayed} replayed from the spool)" if summary.replayed else "")
           + f", {len(summary.batches)} batches stored under policy {policy.ref}")
    return 0


def cmd_data_report(g: Globals, args: argparse.Namespace) -> int:
    """Every dropped or changed value by reason, summed over all batches (link, cleaning, privacy)."""
    from ..ingest.pipeline import report
    from ..records.clean_state import CleanReport, format_report

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
    from ..records import batch

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
    from ..ingest import service
    from ..privacy import policy as policy_mod
    from ..privacy.budget import PrivacyBudget
    from ..privacy.dp import release_aggregates
    from ..records import batch

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


def add_parsers(sub, json_flag) -> None:
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
