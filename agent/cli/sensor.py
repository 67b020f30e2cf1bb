"""`aitn sensor ...`: the sensor MCU's link (simulator and reader)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .. import config
from ..config import Globals


def cmd_sensor_sim(g: Globals, args: argparse.Namespace) -> int:
    """Play the simulated sensor MCU on a link in real time; a summary goes to stderr at the end."""
    from dataclasses import asdict

    from ..ingest import sim_link as sim

    report = sim.run(args.url, args.rate, count=args.count, duration=args.duration, seed=args.seed,
                     out=sys.stdout, clean=args.clean)
    print(json.dumps({"kind": "sim_report", **asdict(report)}), file=sys.stderr)
    return 0


def _event_json(item) -> dict:
    """One reader item as a JSON-able dict with a "kind" key."""
    from dataclasses import asdict

    from ..ingest.frames import Frame, FrameError

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

    from ..ingest.frames import Frame
    from ..ingest.reader import SerialReader

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


def add_parsers(sub, json_flag) -> None:
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
