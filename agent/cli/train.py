"""`aitn train`: one federated local round on stored datasets."""

from __future__ import annotations

import argparse

from ..config import Globals
from ..errors import AgentError
from .common import _datasets, _print


def cmd_train(g: Globals, args: argparse.Namespace) -> int:
    """One federated local round on stored batches; the update is saved under HOME/updates for the uplink."""
    from pathlib import Path

    from ..train import job, ldp

    ldp_flags = (args.ldp_clip, args.ldp_noise, args.ldp_delta)
    if any(f is not None for f in ldp_flags) and None in ldp_flags:
        raise AgentError("local DP needs all of --ldp-clip, --ldp-noise and --ldp-delta")
    req = job.TrainRequest(
        datasets=tuple(args.dataset), model=args.model, width=args.width, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch, global_file=Path(args.global_file) if args.global_file else None,
        ldp=ldp.LdpConfig(*ldp_flags) if args.ldp_clip is not None else None, quantize=args.quantize,
        seed=args.seed)
    m = job.run(g.home, _datasets(g), req)
    from ..utility.emit import training_work
    from ..utility.meters import Meters

    with Meters(g.home, g.cycle_s) as meters:
        meters.add(training_work(m))
    text = (f"{m['model']} w{m['width']:g}: {m['samples']} samples, {m['epochs']} epochs ({m['steps']} steps) "
            f"in {m['seconds']:.2f} s; loss {m['loss_before']:.4f} -> {m['loss_after']:.4f}; "
            f"update L2 {m['update_l2']:.4f}" + (" (int8)" if m["quantized"] else ""))
    if m["ldp"]:
        text += f"\nLDP: epsilon {m['ldp']['epsilon']:.3f} at delta {m['ldp']['delta']:g} after {m['ldp']['rounds']} rounds"
    _print(args, m, text + f"\nsaved {m['update_file']}")
    return 0


def add_parsers(sub, json_flag) -> None:
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
