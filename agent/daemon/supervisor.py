"""`aitn agent run`: the normal world as one service that runs what the provisioning asks for.

It tells systemd it is ready (READY=1) once the secure world answers, then keeps the children the
configuration (HOME/provision.json, re-read every few seconds) calls for:

    ingest   `aitn ingest`: when the board has a sensor link and a desensitization policy exists
    device   `aitn device run`: once the device is enrolled with its node (HOME/uplink/node.json)
    node     `aitn node serve`: when the role is "node"

A child that exits is started again after a back-off (1 s doubling to 60 s, back to 1 s after a
minute of running). STATUS= says what runs; WATCHDOG=1 keep-alives come from this loop, so a hung
supervisor is restarted by systemd. SIGTERM stops the children (SIGTERM, then SIGKILL after 20 s).
Before provisioning the service is ready and idle, saying so, so that a fresh board comes up clean.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ..config import Globals, load_board
from ..errors import AgentError
from . import provision
from .sdnotify import Notifier

log = logging.getLogger("aitn.agent")
TICK_S = 1.0
RELOAD_S = 5.0
BACKOFF_MAX_S = 60.0
STOP_GRACE_S = 20.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = 1.0
    not_before: float = 0.0
    restarts: int = 0
    last_exit: int | None = field(default=None)


def policy_file(prov: provision.Provisioning, environ: dict) -> str | None:
    from ..ingest.service import SYSTEM_POLICY

    if prov.policy:
        return prov.policy
    if environ.get("AITN_POLICY"):
        return environ["AITN_POLICY"]
    return str(SYSTEM_POLICY) if SYSTEM_POLICY.exists() else None


def plan(g: Globals, prov: provision.Provisioning | None, environ: dict) -> tuple[dict[str, list[str]], list[str]]:
    """(name -> argv of the children to run, notes on what is off and why)."""
    if prov is None:
        return {}, ["not provisioned: run `aitn provision --board NAME --node coap://HOST:PORT`"]
    base = [sys.executable, "-m", "agent", "--home", str(g.home), "--tee", g.tee, "--board", prov.board,
            "--cycle-seconds", f"{g.cycle_s:g}"]
    want, notes = {}, []
    if prov.role == "node":
        want["node"] = base + ["node", "serve", "--listen", prov.listen, "--state", str(g.home / "node")]
    if (g.home / "uplink" / "node.json").exists():
        want["device"] = base + ["device", "run", "--poll", "5"]
    else:
        notes.append("device: not enrolled yet")
    board = load_board(prov.board)
    policy = policy_file(prov, environ)
    if not board.sensor.url:
        notes.append("ingest: the board has no sensor link")
    elif policy is None:
        notes.append("ingest: no desensitization policy (provision --policy, $AITN_POLICY or /etc/aitn/policy.toml)")
    else:
        want["ingest"] = base + ["ingest", "--policy", policy]
    return want, notes


class Supervisor:
    def __init__(self, g: Globals, notify: Notifier, environ: dict) -> None:
        self.g, self.notify, self.environ = g, notify, environ
        self.children: dict[str, Child] = {}
        self.notes: list[str] = []
        self.stop = False
        self._status = ""

    def wait_for_secure_world(self) -> None:
        while not self.stop:
            try:
                provision.secure_world_status(self.g)
                return
            except AgentError as e:
                self.set_status(f"waiting for the secure world at {self.g.tee}: {e}")
            self.notify.keepalive()
            time.sleep(TICK_S)

    def set_status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.notify.status(text)
            log.info("%s", text)

    def reconcile(self, now: float) -> None:
        try:
            want, self.notes = plan(self.g, provision.read(self.g.home), self.environ)
        except AgentError as e:
            want, self.notes = {}, [f"configuration: {e}"]
        for name in list(self.children):
            c = self.children[name]
            if want.get(name) != c.argv:
                self._terminate(c)
                del self.children[name]
        for name, argv in want.items():
            self.children.setdefault(name, Child(name, argv))

    def poll(self, now: float) -> None:
        for c in self.children.values():
            if c.proc is not None and c.proc.poll() is not None:
                c.last_exit, c.proc = c.proc.returncode, None
                c.backoff = 1.0 if now - c.started > BACKOFF_MAX_S else min(c.backoff * 2, BACKOFF_MAX_S)
                c.not_before = now + c.backoff
                c.restarts += 1
                log.warning("%s exited with %s; restarting in %.0f s", c.name, c.last_exit, c.backoff)
            if c.proc is None and now >= c.not_before:
                c.proc = subprocess.Popen(c.argv, stdin=subprocess.DEVNULL)
                c.started = now
                log.info("started %s (pid %d)", c.name, c.proc.pid)

    def status_line(self, now: float) -> str:
        parts = []
        for c in self.children.values():
            if c.proc is not None:
                parts.append(f"{c.name} running (pid {c.proc.pid}, {c.restarts} restarts)")
            else:
                parts.append(f"{c.name} exited {c.last_exit}, restarting in {max(0.0, c.not_before - now):.0f} s")
        return "; ".join(parts + self.notes) or "idle"

    def _terminate(self, c: Child) -> None:
        if c.proc is not None and c.proc.poll() is None:
            c.proc.terminate()
            try:
                c.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)

    def shutdown(self) -> None:
        self.notify.stopping()
        live = [c for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for c in live:
            c.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for c in live:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)

    def run(self) -> int:
        def on_signal(signum, _frame) -> None:
            self.stop = True

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, on_signal)
        self.wait_for_secure_world()
        if self.stop:
            return 0
        self.notify.ready("secure world answers")
        last_reload = 0.0
        try:
            while not self.stop:
                now = time.monotonic()
                if now - last_reload >= RELOAD_S:
                    self.reconcile(now)
                    last_reload = now
                self.poll(now)
                self.set_status(self.status_line(now))
                self.notify.keepalive()
                time.sleep(TICK_S)
        finally:
            self.shutdown()
        return 0


def run(g: Globals, environ: dict) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s", stream=sys.stderr)
    return Supervisor(g, Notifier(environ), environ).run()
