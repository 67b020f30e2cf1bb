"""`make run`'s last part: the network at small scale, everything on loopback.

Three more robots (each its own secure world and normal world, state under run/robot-N) stream their
simulated sensors into their stores while the first robot does (demo.py step 8). Then a demand
server (Flower SuperLink + ServerApp) and two nodes (each with its Flower SuperNode) run federated
rounds: every robot trains once per round on its own stored data and uplinks the signed update to its
node; each node aggregates its group, the demand server aggregates the nodes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (2, 3, 5)   # simulated robots that work away from their owners' home zones in the first minute
CYCLE_S = 30        # the demo's incentive cycle (demo.py sets AITN_CYCLE_S); nodes close one 5 s after it ends


@dataclass
class Robot:
    name: str
    home: Path
    url: str
    tee: subprocess.Popen | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agent", "--home", str(self.home), "--tee", self.url, *args]

    def run(self, *args: str) -> str:
        res = subprocess.run(self.argv(*args), cwd=ROOT, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise SystemExit(f"{self.name}: aitn {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    def background(self, log: Path, *args: str) -> subprocess.Popen:
        with open(log, "ab") as f:
            p = subprocess.Popen(self.argv(*args), cwd=ROOT, stdout=f, stderr=f, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p


def _accepts(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
        return True
    except OSError:
        return False


def start_robots(run_dir: Path, user: str | None) -> list[Robot]:
    """Start each extra robot's secure world and pair it (once: the pairing is kept in run/)."""
    robots = []
    for i, _seed in enumerate(SEEDS, start=2):
        base = run_dir / f"robot-{i}"
        base.mkdir(exist_ok=True)
        base.chmod(0o755)
        sock = base / "tee.sock"
        sock.unlink(missing_ok=True)
        r = Robot(f"robot-{i}", base / "home", f"unix://{sock}")
        r.home.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "agent", "--tee", r.url, "tee", "serve", "--state", str(base / "tee-state"),
                "--log", str(base / "secure-uart.log"), "--log-level", "3"] + (["--user", user] if user else [])
        r.tee = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not _accepts(sock):
            if r.tee.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{r.name}: secure world did not start")
            time.sleep(0.05)
        if not (r.home / "chain.log").exists():
            r.run("tee", "pair")
        robots.append(r)
    return robots


def start_streams(robots: list[Robot], policy: Path, rate: int, seconds: int) -> list[subprocess.Popen]:
    """Each robot's sensor simulator on its own TCP link, and its `aitn ingest` reading it."""
    out = []
    for r, seed in zip(robots, SEEDS):
        sim = subprocess.Popen([sys.executable, "-m", "agent", "sensor", "sim", "--url", "tcp-listen://127.0.0.1:0",
                                "--rate", str(rate), "--duration", str(seconds + 4), "--seed", str(seed)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = sim.stdout.readline().strip() if sim.stdout else ""
        if not line.startswith("listening "):
            raise SystemExit(f"{r.name}: sensor simulator did not start")
        r.procs.append(sim)
        out.append(r.background(r.home.parent / "ingest.log", "ingest", "--url",
                                f"socket://127.0.0.1:{line.rsplit(':', 1)[1]}", "--policy", str(policy),
                                "--duration", str(seconds), "--batch-records", "60000"))
    return out


def stop(robots: list[Robot]) -> None:
    for r in robots:
        for p in r.procs + ([r.tee] if r.tee else []):
            if p.poll() is None:
                p.terminate()
        for p in r.procs + ([r.tee] if r.tee else []):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def work_utility(robots: list[Robot], step) -> None:
    """Each robot reports its ended cycles; the first shows its node's signed allocation of the latest one."""
    step(f"21. work utility: signed cycle reports ({CYCLE_S} s cycles here, 24 h in the network); "
         "node-a's signed allocation statement, checked by robot-1")
    for r in robots:
        for p in r.procs:   # `device run` is done with its rounds; stop what still streams
            if p.poll() is None:
                p.terminate()
        r.run("utility", "report")
        r.run("uplink", "send")
    print(robots[0].run("utility").rstrip())
    deadline = time.monotonic() + CYCLE_S + 10
    while True:   # a cycle is allocated 5 s after it ends
        res = subprocess.run(robots[0].argv("utility", "allocation"), cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    print(res.stdout.rstrip() if res.returncode == 0 else f"no cycle allocated yet: {res.stderr.strip()}")


def network(run_dir: Path, robots: list[Robot], step, rounds: int = 3) -> list[dict]:
    """The demand server, two nodes, every robot in one of them; returns the rounds' figures."""
    started: list[subprocess.Popen] = []
    superlink = f"127.0.0.1:{_tcp_port()}"
    try:
        step(f"18. the network: a demand server (Flower SuperLink + ServerApp) at {superlink}, two nodes with "
             "their Flower SuperNodes")
        demand = subprocess.Popen(
            [sys.executable, "-m", "agent", "demand", "serve", "--listen", superlink, "--state",
             str(run_dir / "demand"), "--rounds", str(rounds), "--min-nodes", "2", "--min-updates", "2",
             "--round-seconds", "90"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(demand)
        nodes = []
        for name in ("node-a", "node-b"):
            port = _udp_port()
            with open(run_dir / f"{name}.log", "ab") as log:
                p = subprocess.Popen([sys.executable, "-m", "agent", "node", "serve", "--listen", f"127.0.0.1:{port}",
                                      "--state", str(run_dir / name), "--superlink", superlink,
                                      "--report-grace", "5"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=log, text=True)
            started.append(p)
            line = p.stdout.readline().strip() if p.stdout else ""
            if "listening" not in line:
                raise SystemExit(f"{name} did not start (see {run_dir / (name + '.log')})")
            print(f"{name}: {line}")
            nodes.append((f"coap://127.0.0.1:{port}", line.split()[1]))
        step(f"19. {len(robots)} robots enroll (two per node) and take part: train once per round, uplink")
        for i, r in enumerate(robots):
            uri, address = nodes[i % 2]
            r.run("uplink", "enroll", "--node", uri, "--node-address", address)
            r.background(r.home.parent / "device.log", "device", "run", "--rounds", str(rounds), "--poll", "1")
            print(f"{r.name} -> node-{'ab'[i % 2]}")
        step(f"20. {rounds} federated rounds (score on the demand server's own validation telemetry)")
        lines = []
        for line in demand.stdout:
            line = line.rstrip()
            if line.startswith("[") and "] round " in line:
                print(line, flush=True)
            lines.append(line)
        demand.wait(60)
        if demand.returncode != 0:
            raise SystemExit("demand server failed:\n" + "\n".join(lines[-20:]))
        work_utility(robots, step)
        return json.loads((run_dir / "demand" / "out" / "rounds.json").read_text())
    finally:
        for p in started:
            if p.poll() is None:
                p.terminate()
        for p in started:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
