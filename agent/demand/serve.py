"""`aitn demand serve`: the demand server as Flower runs it, a SuperLink and our ServerApp (flwr run).

The SuperLink is Flower's own server process (one HTTP port for nodes, runs and the CLI); the run is
the Flower App in flower_app/, submitted with `flwr run` against a Flower configuration written in
the state folder. Nodes join with `aitn node serve --superlink HOST:PORT` (which starts their
SuperNode). Each round's score arrives as an `AITN-ROUND {json}` line of the run's log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import AgentError

APP_DIR = Path(__file__).resolve().parents[2] / "flower_app"


class DemandError(AgentError):
    exit_code = 83


def flower_bin(name: str) -> str:
    """A Flower command next to this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def flower_env(**extra: str) -> dict[str, str]:
    """The environment for Flower's processes: they start their helpers (flower-superexec, flwr-serverapp,
    flwr-clientapp) by name, so this interpreter's bin folder goes first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, PATH=path, **extra)


def wait_tcp(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DemandError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), 0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DemandError(f"nothing listening on {host}:{port} after {timeout:g} s")


def _toml_value(v) -> str:
    return json.dumps(v) if isinstance(v, str) else (str(v).lower() if isinstance(v, bool) else repr(v))


def run(state: Path, listen: tuple[str, int], run_config: dict, *, on_line: Callable[[str], None] = print,
        app_dir: Path = APP_DIR, timeout: float = 3600.0) -> list[dict]:
    """Start the SuperLink, run the app to its end, stop the SuperLink; returns the rounds' scores."""
    state = Path(state)
    flwr_home = state / "flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    host, port = listen
    address = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "aitn"\n\n[superlink.aitn]\naddress = "{address}"\ninsecure = true\n')
    env = flower_env(FLWR_HOME=str(flwr_home))
    with open(state / "superlink.log", "ab") as log:
        link = subprocess.Popen([flower_bin("flower-superlink"), "--insecure", "--database", str(state / "superlink.db"),
                                 "--host", host, "--port", str(port)], stdout=log, stderr=log, env=env)
    rounds: list[dict] = []
    try:
        wait_tcp(address.rsplit(":", 1)[0], port, 60.0, link)
        overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        argv = [flower_bin("flwr"), "run", str(app_dir), "aitn", "--stream", "--run-config", overrides]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            line = line.rstrip()
            if "AITN-ROUND " in line:
                rounds.append(json.loads(line.split("AITN-ROUND ", 1)[1]))
            on_line(line)
            if "AITN-DONE " in line or time.monotonic() > deadline:
                break
        proc.terminate()
        proc.wait(30)
    finally:
        link.terminate()
        try:
            link.wait(30)
        except subprocess.TimeoutExpired:
            link.kill()
    if not rounds:
        raise DemandError(f"the run reported no round (see {state / 'superlink.log'})")
    out = run_config.get("out-dir")
    log = Path(out) / "rounds.json" if out else None
    if log is not None and log.exists():   # the same rows, with the nodes' training metrics merged in
        rounds = json.loads(log.read_text())
    return rounds
