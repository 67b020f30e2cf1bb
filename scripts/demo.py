"""`make run`: the split agent on this machine, no hardware needed.

Starts the secure world as its own process (dropping to its own user when run as root), pairs the
normal world with it, runs a traced challenge handshake, signs an EIP-191 message and verifies the
signature with an independent Ethereum library, then checks the normal world's chain. Then the edge
data path: a simulated robot streams its sensor MCU's frames over a TCP link, `aitn ingest` cleans
and desensitizes them (pseudonyms from the secure world) and stores them as content-addressed
batches, which are listed, inspected, verified and exported as a CAR. State is kept under ./run, so
a second `make run` reuses the same device key and pairing and adds batches.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import demo_network  # noqa: E402

RUN = ROOT / "run"
TEE_USER = "aitn-tee"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def aitn(*args: str, home: Path, url: str, show: bool = True) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "agent", "--home", str(home), "--tee", url, *args]
    print("$ aitn " + shlex.join(args), flush=True)
    res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if show and res.stdout:
        print(res.stdout.rstrip())
    if res.returncode != 0:
        print(res.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"aitn {' '.join(args)} failed with exit code {res.returncode}")
    return res


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def ensure_tee_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(TEE_USER)
    except KeyError:
        print(f"creating system user {TEE_USER} (the secure world's own user, as the Debian package does)")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEE_USER],
                       check=True)
    return TEE_USER


def data_path(home: Path, url: str, run_dir: Path, robots: list) -> None:
    step("8. a simulated robot streams its sensor MCU over a link (aitn sensor sim); "
         f"{len(robots)} more robots of the network do the same in the background")
    # 40 s: training windows need 30 s of battery history (agent/train/features.py); seed 1: a robot that
    # works away from the owner's home zone in that time, so its records are released, not suppressed
    rate, seconds, seed = 1000, 40, 1
    print(f"$ aitn sensor sim --url tcp-listen://127.0.0.1:0 --rate {rate} --duration {seconds + 4} --seed {seed}")
    sim = subprocess.Popen([sys.executable, "-m", "agent", "sensor", "sim", "--url", "tcp-listen://127.0.0.1:0",
                            "--rate", str(rate), "--duration", str(seconds + 4), "--seed", str(seed)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = sim.stdout.readline().strip() if sim.stdout else ""
        if not line.startswith("listening "):
            raise SystemExit(f"sensor simulator did not start: {line} {sim.stderr.read() if sim.stderr else ''}")
        port = line.rsplit(":", 1)[1]
        print(line)

        policy = ROOT / "policies" / "default.toml"
        streams = demo_network.start_streams(robots, policy, rate, seconds)
        step("9. ingest: link -> spool -> clean -> desensitize (policies/default.toml) -> stored batches")
        aitn("ingest", "--url", f"socket://127.0.0.1:{port}", "--policy", str(policy), "--duration", str(seconds),
             "--batch-records", "60000", home=home, url=url)
        for p in streams:
            p.wait(seconds + 60)
    finally:
        sim.terminate()
        sim.wait(10)

    step("10. what was stored, and every value cleaning or the policy dropped or changed")
    listing = json.loads(aitn("data", "ls", "--json", home=home, url=url, show=False).stdout)["datasets"]
    aitn("data", "ls", home=home, url=url)
    aitn("data", "report", home=home, url=url)
    last = listing[-1]["root"]
    step("11. one batch as it would leave the device: pseudonyms, generalized positions, no raw identifier")
    aitn("data", "show", last, "--rows", "4", home=home, url=url)
    step("12. its aggregates with calibrated noise, paid from the persisted privacy budget")
    aitn("data", "aggregates", last, "--policy", str(policy), home=home, url=url)
    step("13. re-hash every block; export the batch as a CAR that `ipfs dag import` accepts")
    aitn("data", "verify", home=home, url=url)
    car = run_dir / f"{last}.car"
    res = subprocess.run([sys.executable, "-m", "agent", "--home", str(home), "data", "export", last],
                         capture_output=True, cwd=ROOT, check=True)
    car.write_bytes(res.stdout)
    print(f"$ aitn data export {last} > {car}\nwrote {len(res.stdout)} bytes")


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uplink(home: Path, url: str, run_dir: Path) -> None:
    step("14. this device's group node: an aiocoap server with rounds and streaming FedAvg (aitn node serve)")
    port = free_udp_port()
    node_uri = f"coap://127.0.0.1:{port}"
    argv = ["node", "serve", "--listen", f"127.0.0.1:{port}", "--state", str(run_dir / "node"), "--min-updates", "1"]
    print("$ aitn " + shlex.join(argv))
    with open(run_dir / "node.log", "ab") as log:
        node = subprocess.Popen([sys.executable, "-m", "agent"] + argv, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=log, text=True)
    try:
        line = node.stdout.readline().strip() if node.stdout else ""
        if "listening" not in line:
            raise SystemExit(f"node did not start: {line} (see {run_dir / 'node.log'})")
        print(line)
        step("15. enroll: a key exchange signed by the secure world and by the node -> an OSCORE context")
        # the node's address is named, not trusted on first use: this device moves between nodes below
        aitn("uplink", "enroll", "--node", node_uri, "--node-address", line.split()[1], home=home, url=url)
        step("16. train one local round on the stored batches (LiteRT), sign it, queue it with the manifests")
        cids = [d["root"] for d in json.loads(aitn("data", "ls", "--json", home=home, url=url, show=False).stdout)[
            "datasets"] if not d.get("evicted")]
        model = run_dir / "global.aitw"
        rnd = json.loads(aitn("uplink", "round", "--model-out", str(model), "--json", home=home, url=url,
                              show=False).stdout)
        print(f"round {rnd['round']}: {rnd['model']} width {rnd['width']:g}, global model {rnd['hash'][:16]}.. "
              f"in {model}")
        m = json.loads(aitn("train", "--dataset", *cids, "--model", rnd["model"], "--width", f"{rnd['width']:g}",
                            "--global", str(model), "--quantize", "--seed", "1", "--json",
                            home=home, url=url, show=False).stdout)
        print(f"{m['samples']} samples, loss {m['loss_before']:.4f} -> {m['loss_after']:.4f}, "
              f"update {m['update_bytes']} bytes (int8) in {m['update_file']}")
        aitn("uplink", "queue-update", m["update_file"], "--round", str(rnd["round"]), home=home, url=url)
        aitn("uplink", "queue-manifests", home=home, url=url)
        aitn("status", home=home, url=url)
        step("17. send: OSCORE-protected, block-wise, removed from the outbox only when the node acknowledges")
        aitn("uplink", "send", home=home, url=url)
        aitn("node", "status", "--node", node_uri, home=home, url=url)
    finally:
        node.terminate()
        node.wait(10)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="the split agent on this machine")
    ap.add_argument("--run-dir", default=str(RUN), help="where state and logs are kept (default ./run)")
    ap.add_argument("--tee-user", help=f"user the secure world drops to when run as root (default {TEE_USER}, "
                                       "created if missing)")
    args = ap.parse_args()
    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o755)
    home, state, sock, log = (run_dir / "home", run_dir / "tee-state", run_dir / "tee.sock",
                              run_dir / "secure-uart.log")
    url = f"unix://{sock}"
    user = args.tee_user if (args.tee_user and os.geteuid() == 0) else ensure_tee_user()
    # Incentive cycles of 30 s instead of the network's 24 h, so the demo's minutes span a few: every
    # process started below (robots, nodes) inherits it; the network step shows a cycle's allocation.
    os.environ.setdefault("AITN_CYCLE_S", str(demo_network.CYCLE_S))

    step("1. secure world: its own process" + (f", dropping to user {user}" if user else ""))
    argv = [sys.executable, "-m", "agent", "--tee", url, "tee", "serve", "--state", str(state), "--log", str(log),
            "--log-level", "3"]
    if user:
        argv += ["--user", user]
    print(f"$ aitn --tee {url} tee serve --state {state} --log {log} --log-level 3" + (f" --user {user}" if user else ""))
    sock.unlink(missing_ok=True)  # a socket file left by an earlier run
    tee = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    robots: list = []
    try:
        deadline = time.monotonic() + 15
        while not _accepts(sock):
            if tee.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"secure world did not start: {tee.stderr.read() if tee.stderr else ''}")
            time.sleep(0.05)
        print(f"secure world pid {tee.pid}; state in {state} (mode "
              f"{oct(state.stat().st_mode & 0o777) if state.exists() else '0700'}), log on {log}")

        step("2. normal world: status of both worlds")
        status = json.loads(aitn("tee", "status", "--json", home=home, url=url, show=False).stdout)
        aitn("tee", "status", home=home, url=url)

        if not (home / "chain.log").exists() or not status["paired"]:
            step("3. pair the worlds (creates the device key on first use)")
            aitn("tee", "pair", home=home, url=url)
        else:
            step("3. already paired (state kept in ./run; `make clean` starts over)")

        step("4. device identity")
        ident = json.loads(aitn("identity", "show", "--json", home=home, url=url).stdout)

        step("5. one challenge handshake, traced frame by frame")
        aitn("tee", "handshake", "--trace", home=home, url=url)

        step("6. sign an EIP-191 message through the handshake, verify with eth-account")
        message = f"aitn demo {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        signed = json.loads(aitn("sign", "--message", message, "--json", home=home, url=url).stdout)
        try:
            from eth_account import Account
            from eth_account.messages import encode_defunct

            recovered = Account.recover_message(encode_defunct(text=message), signature=signed["signature"])
            verdict = "OK" if recovered == ident["address"] else "MISMATCH"
            print(f"eth-account recovers {recovered}: {verdict}")
            if verdict != "OK":
                raise SystemExit("signature does not verify")
        except ImportError:
            print("eth-account not installed; verify with any Ethereum tool: personal_ecRecover(message, signature)")

        step("7. the normal world's copy of the private chain")
        aitn("chain", "verify", home=home, url=url)
        aitn("chain", "show", "--tail", "4", home=home, url=url)

        robots = demo_network.start_robots(run_dir, user)
        data_path(home, url, run_dir, robots)
        uplink(home, url, run_dir)
        rounds = demo_network.network(run_dir, [demo_network.Robot("robot-1", home, url)] + robots, step)
    finally:
        demo_network.stop(robots)
        tee.terminate()
        try:
            tee.wait(10)
        except subprocess.TimeoutExpired:
            tee.kill()
    step(f"secure UART (last lines of {log})")
    lines = log.read_text().splitlines() if log.exists() else []
    print("\n".join(lines[-8:]))
    print(f"\ndone: device {ident['address']} signed through the challenge handshake and stored "
          f"desensitized sensor batches, trained on them and uplinked the signed update to its node; then "
          f"{len(robots) + 1} robots in 2 nodes trained the demand server's model over {len(rounds) - 1} rounds "
          f"(accuracy {rounds[0]['accuracy']:.3f} -> {rounds[-1]['accuracy']:.3f} on its validation telemetry); "
          f"run `make test` for the full suite")
    if shutil.which("cast"):
        print(f"(foundry: cast wallet verify --address {ident['address']} '{message}' {signed['signature']})")


if __name__ == "__main__":
    main()
