"""Both worlds as systemd services, with real processes and systemd's notify protocol on a real socket:
READY=1 when each can serve, WATCHDOG=1 keep-alives, STOPPING=1; `aitn provision` idempotent;
`aitn agent run` supervising what the provisioning asks for and restarting what dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from tests.conftest import ROOT
from tests.support.node_process import NodeProcess
from tests.support.notify_socket import NotifySocket
from tests.support.tee_process import TeeProcess

OWNER = "0x52908400098527886E0F7030069857D2E4169EE7"


@pytest.fixture
def notify(workdir):
    n = NotifySocket(workdir / "notify.sock")
    yield n
    n.close()


def test_secure_world_notifies_ready_keeps_alive_and_stopping(workdir, notify):
    (workdir / "tee").mkdir()
    t0 = time.monotonic()
    tee = TeeProcess(workdir / "tee", env=notify.env(watchdog_s=0.6)).start()
    try:
        ready = notify.wait_for("READY", "1")
        assert "serving unix://" in ready["STATUS"] and time.monotonic() - t0 < 15
        notify.drain(1.5)
        assert notify.count("WATCHDOG") >= 4          # every 0.2 s (a third of 0.6 s), from the serving loop
        tee.proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert tee.proc.wait(10) == 0
    finally:
        tee.stop()


def _provision(home, tee, *args, check=True):
    res = subprocess.run([sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "--board", "qemu-virt",
                          "provision", *args, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_provision_is_idempotent_and_prints_a_verifiable_mint_request(tee, home, workdir):
    node = NodeProcess(workdir / "node").start()
    try:
        first = json.loads(_provision(home, tee, "--node", node.uri, "--owner", OWNER).stdout)
        second = json.loads(_provision(home, tee, "--node", node.uri).stdout)
    finally:
        node.stop()
    assert first["changed"][0] == "created the device key and paired the worlds"
    assert any(c.startswith("enrolled with") for c in first["changed"]) and len(first["changed"]) == 3
    assert second["changed"] == [] and second["address"] == first["address"]
    assert first["node"]["node"] == node.address.hex()
    mint = first["mint_request"]
    signer = Account.recover_message(encode_typed_data(full_message=mint["typed_data"]), signature=mint["signature"])
    assert signer.lower() == first["address"] and mint["typed_data"]["message"]["board"] == "qemu-virt"
    prov = json.loads((home / "provision.json").read_text())
    assert prov == {"board": "qemu-virt", "node": node.uri, "role": "device", "listen": "0.0.0.0:5683",
                    "policy": None}
    # the CLI now knows the board without being told
    shown = subprocess.run([sys.executable, "-m", "agent", "--home", str(home), "board", "show", "--json"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert json.loads(shown.stdout)["name"] == "qemu-virt"
    # another node answering with another key is refused (the first node's key was pinned on first use),
    # and nothing changes; named explicitly, the device moves to it with the same key
    node2 = NodeProcess(workdir / "node2").start()
    try:
        moved = _provision(home, tee, "--node", node2.uri, check=False)
        assert moved.returncode == 79 and "expected 0x" + node.address.hex() in moved.stderr
        assert json.loads((home / "provision.json").read_text())["node"] == node.uri
        third = json.loads(_provision(home, tee, "--node", node2.uri, "--node-address",
                                      "0x" + node2.address.hex()).stdout)
    finally:
        node2.stop()
    assert third["address"] == first["address"] and len(third["changed"]) == 2


def test_provision_refuses_bad_input_and_changes_nothing(tee, home):
    res = _provision(home, tee, "--node", "http://nope", check=False)
    assert res.returncode == 3 and "coap://" in res.stderr
    assert not (home / "provision.json").exists()


def _children(pid: int) -> dict[int, str]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                cmd = open(f"/proc/{entry}/cmdline").read().replace("\0", " ")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out[int(entry)] = cmd
    return out


def _wait_child(pid: int, word: str, timeout: float = 60.0, exclude: set[int] = frozenset()) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for cpid, cmd in _children(pid).items():
            if word in cmd and cpid not in exclude:
                return cpid
        time.sleep(0.3)
    raise AssertionError(f"no child running {word!r}: {_children(pid)}")


@pytest.mark.timeout(240)
def test_agent_run_waits_supervises_and_stops(workdir, home, notify):
    """Started before the secure world: waits, then READY; idle until provisioned; then the node role and
    the device rounds run as children; a killed child comes back; SIGTERM stops everything."""
    env = notify.env(watchdog_s=3.0)
    (workdir / "tee").mkdir()
    tee = TeeProcess(workdir / "tee")
    agent = subprocess.Popen([sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "agent", "run"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "agent.log", "wb"))
    try:
        notify.wait_for("STATUS", "waiting for the secure world")
        assert notify.count("READY") == 0
        tee.start()
        notify.wait_for("READY", "1")
        notify.wait_for("STATUS", "not provisioned")
        assert notify.count("WATCHDOG") >= 1
        # provision as a node of its own group: the supervisor starts the node, provisioning enrolls with it
        port = NodeProcess(workdir / "unused").port
        res = _provision(home, tee, "--node", f"coap://127.0.0.1:{port}", "--role", "node", "--listen",
                         f"127.0.0.1:{port}", "--wait", "90")
        assert any("enrolled" in c for c in json.loads(res.stdout)["changed"])
        node_pid = _wait_child(agent.pid, "node serve")
        device_pid = _wait_child(agent.pid, "device run")
        notify.wait_for("STATUS", "device running")
        os.kill(device_pid, signal.SIGKILL)
        again = _wait_child(agent.pid, "device run", exclude={device_pid})
        assert again != device_pid
        notify.wait_for("STATUS", "1 restarts")
        agent.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert agent.wait(40) == 0
        for pid in (node_pid, again):
            assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    finally:
        if agent.poll() is None:
            agent.kill()
        tee.stop()
