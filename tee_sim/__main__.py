"""``python -m tee_sim`` (also ``aitn tee serve``): the secure world as its own process.

    python -m tee_sim serve --state DIR [--tee URL] [--user NAME] [--allow-uid UID ...]
                            [--log FILE|URL] [--log-level 0-4] [--board-serial S] [--lockout-base S]
    python -m tee_sim allow-repair --state DIR [--minutes M]

Started as root, ``serve`` prepares what needs root (state directory ownership, the socket, the
log) and then drops to its own user before it opens any secret.
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import socket
import sys
from pathlib import Path

import serial

from .lockout import LockoutPolicy
from .log import SecureLog
from .sdnotify import Notifier
from .server import Server, ServerConfig
from .storage import StorageError, allow_repair, open_storage
from .ta import SignerTA

DEFAULT_URL = "unix:///run/aitn/tee.sock"
DEFAULT_USER = "aitn-tee"
NORMAL_WORLD_USER = "aitn"


def read_board_serial() -> str:
    """The board's serial: device tree, then /proc/cpuinfo (Raspberry Pi), then the machine id."""
    for path in ("/sys/firmware/devicetree/base/serial-number", "/proc/device-tree/serial-number"):
        try:
            value = Path(path).read_bytes().strip(b"\0\n ").decode()
            if value:
                return value
        except OSError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("Serial") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        return Path("/etc/machine-id").read_text().strip() or "unknown-board"
    except OSError:
        return "unknown-board"


def _fail(msg: str) -> None:
    print(f"tee_sim: error: {msg}", file=sys.stderr)
    raise SystemExit(1)


def _default_allowed(invoker_uid: int) -> set[int]:
    allowed = {invoker_uid}
    try:
        allowed.add(pwd.getpwnam(NORMAL_WORLD_USER).pw_uid)
    except KeyError:
        pass
    return allowed


def _bind_unix(path: str) -> socket.socket:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        p.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)  # who is served is decided by the uid allowlist, not by file modes
    sock.listen(64)
    return sock


def serve(args: argparse.Namespace) -> None:
    state = Path(args.state).resolve()
    invoker = os.geteuid()
    allowed = set(args.allow_uid) if args.allow_uid else _default_allowed(invoker)
    target = None
    if invoker == 0:
        name = args.user or DEFAULT_USER
        try:
            target = pwd.getpwnam(name)
        except KeyError:
            _fail(f"user {name!r} does not exist: create it (useradd --system {name}) or pass --user")
    elif args.user:
        _fail("--user needs the secure world to be started as root")
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    if target is not None:
        os.chown(state, target.pw_uid, target.pw_gid)
        for child in state.iterdir():
            os.chown(child, target.pw_uid, target.pw_gid)
    try:
        log = SecureLog.open(args.log, args.log_level)
    except (OSError, ValueError) as e:
        _fail(f"log channel {args.log}: {e}")
    sock = _bind_unix(args.tee[len("unix://"):]) if args.tee.startswith("unix://") else None
    if target is not None:
        os.setgroups([])
        os.setgid(target.pw_gid)
        os.setuid(target.pw_uid)
        log.info("TC", f"dropped to user {target.pw_name} (uid {target.pw_uid})")
    elif invoker != 0:
        log.info("TC", f"not started as root: running as uid {invoker}")
    storage, error = None, None
    try:
        storage = open_storage(state, args.board_serial or read_board_serial())
    except StorageError as e:
        error = str(e)
    ta = SignerTA(storage, log, storage_error=error, lockout=LockoutPolicy(base_seconds=args.lockout_base))
    notify = Notifier()
    server = Server(ta, ServerConfig(args.tee, frozenset(allowed), args.stall_seconds), log,
                    heartbeat=notify.keepalive)
    log.info("TC", f"signer TA ready; allowed uids {sorted(allowed)}")

    def stop(signum, _frame) -> None:
        log.info("TC", f"stopping on signal {signum}")
        notify.stopping()
        server.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Under systemd (Type=notify) the unit is up once this arrives: the socket is bound and listening
    # (or the serial link is about to open), so the normal world may connect.
    notify.ready(f"serving {args.tee}" + ("" if error is None else f"; sealed state unusable: {error}"))
    try:
        server.run(sock)
    except (OSError, serial.SerialException, ValueError) as e:
        log.error("TC", f"transport {args.tee} failed: {e}")
        _fail(f"transport {args.tee}: {e}")
    if sock is not None:
        try:  # a clean stop leaves no socket file behind (best effort: the directory may not be ours)
            Path(args.tee[len("unix://"):]).unlink()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tee_sim", description="aitn secure world (emulated OP-TEE TA)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the secure world")
    s.add_argument("--state", required=True, help="state directory (created 0700)")
    s.add_argument("--tee", default=DEFAULT_URL, help=f"listen URL (default {DEFAULT_URL})")
    s.add_argument("--user", help=f"user to drop to when started as root (default {DEFAULT_USER})")
    s.add_argument("--allow-uid", type=int, action="append", help="uid allowed on unix://; repeatable")
    s.add_argument("--log", default="-", help="secure log channel: file, '-' (stderr), pyserial URL or serial port")
    s.add_argument("--log-level", type=int, default=2, choices=range(5), help="0 none .. 4 flow (default 2)")
    s.add_argument("--board-serial", help="board serial for the hardware-unique key (default: read it)")
    s.add_argument("--lockout-base", type=float, default=1.0, help="first lockout, seconds (default 1)")
    s.add_argument("--stall-seconds", type=float, default=10.0,
                   help="drop a partial frame after this long without bytes (default 10)")
    r = sub.add_parser("allow-repair", help="let the next PAIR replace the current pairing")
    r.add_argument("--state", required=True)
    r.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args)
    else:
        path = allow_repair(Path(args.state), args.minutes)
        print(f"re-pairing allowed for {args.minutes:g} minutes ({path})")


if __name__ == "__main__":
    main()
