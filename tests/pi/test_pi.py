"""The Debian package on a Pi-like arm64 system with systemd as init, under QEMU (`make pi-test`).

One guest for the whole module, the steps in order, each building on the one before:

a. install the package offline with apt: both units (Type=notify) active, their users, the secure
   world's state directory 0700 aitn-tee;
b. a node on the host side (10.0.2.2): `aitn provision` enrolls the device and prints its address
   and a device-NFT mint request whose signature the host recovers; a second run changes nothing;
c. a signature through the challenge handshake, as the service's user, verified on the host;
d. reboot: both services come back without any command, same address, the node still knows the
   device, provision.json is still there; (d2) provisioning again changes nothing;
e. upgrade to the next version and downgrade back: active each time, same key, the upgrade record;
f. a deliberately broken upgrade (its secure world exits 1 at once): apt fails, postinst rolls back
   to the release that ran before, both services active, same address, the record says so; (f2) the
   rolled-back release signs through the handshake.

Timings of every step go to build/pi/figures.json (``pi_figures``).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

ROOT = Path(__file__).resolve().parents[2]
OWNER = "0x52908400098527886E0F7030069857D2E4169EE7"
NODE_PORT = 5683
NODE_URI = f"coap://10.0.2.2:{NODE_PORT}"
UNITS = ("aitn-tee.service", "aitn-agent.service")
AS_AITN = "runuser -u aitn -- aitn --home /var/lib/aitn --tee unix:///run/aitn/tee.sock"
UPGRADE_RECORD = "/var/lib/aitn-agent/upgrade.json"

#: What the steps found, for the steps after them (the address, the node's state directory...).
S: dict = {}


def _json_of(out: str) -> dict:
    return json.loads(out[out.index("{"): out.rindex("}") + 1])


def step(figures: dict, name: str, seconds: float) -> None:
    figures.setdefault("steps", {})[name] = round(seconds, 1)


def need(*keys: str) -> None:
    missing = [k for k in keys if k not in S]
    if missing:
        pytest.skip(f"an earlier step did not get {', '.join(missing)}")


def json_cmd(g, command: str, timeout: float = 300) -> dict:
    """A command that prints one JSON object on stdout; its stderr is shown only if it fails.

    The commands run while the services work (``aitn device run`` signs its reports and updates):
    they take turns on the chain without any retry here (the services hold it per signature, a
    command waits up to ``--lock-wait``)."""
    rc, out = g.run(f"{command} 2>/tmp/stderr.txt; rc=$?; [ $rc -eq 0 ] || cat /tmp/stderr.txt; (exit $rc)",
                    timeout)
    assert rc == 0, f"`{command}` exited {rc}:\n{out}"
    return _json_of(out)


def apt_install(g, deb: Path, options: str = "", timeout: float = 600) -> tuple[int, str, float]:
    """apt-get install of a package already in the guest's /root, offline; (status, last lines, seconds)."""
    t0 = time.monotonic()
    rc, out = g.run(f"apt-get install -y -q -o Dpkg::Use-Pty=0 {options} /root/{deb.name} >/tmp/apt.log 2>&1; "
                    "rc=$?; tail -n 40 /tmp/apt.log; (exit $rc)", timeout)
    return rc, out, time.monotonic() - t0


def wait_active(g, timeout: int = 300) -> dict[str, dict]:
    """Poll in the guest until both units are active (or the time is up); their systemctl show properties."""
    g.run(f"for i in $(seq {timeout}); do systemctl is-active -q {' '.join(UNITS)} && break; sleep 1; done",
          timeout + 30)
    return units(g)


def units(g) -> dict[str, dict]:
    out = g.check(f"systemctl show -p Id,MainPID,ActiveState,SubState,Result,NRestarts,StatusText {' '.join(UNITS)}")
    shown: dict[str, dict] = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.strip().splitlines() if "=" in line)
        shown[props["Id"]] = props
    return shown


def assert_running(shown: dict[str, dict], g=None) -> None:
    for unit in UNITS:
        p = shown[unit]
        detail = g.run(f"systemctl status --no-pager -n 30 {unit}")[1] if g is not None else ""
        assert (p["ActiveState"], p["SubState"]) == ("active", "running"), f"{unit}: {p}\n{detail}"
        assert int(p["MainPID"]) > 0, p


def current_release(g) -> str:
    return g.check("readlink /opt/aitn-agent/current").strip()


def upgrade_record(g) -> dict:
    return _json_of(g.check(f"cat {UPGRADE_RECORD}"))


def device_address(g) -> str:
    return json_cmd(g, f"{AS_AITN} identity show --json")["address"].lower()


@pytest.fixture(scope="module")
def node(pi, tmp_path_factory):
    """`aitn node serve` on the host side of the guest's network namespace: the guest reaches it at 10.0.2.2,
    across reboots (the namespace outlives each QEMU)."""
    state = tmp_path_factory.mktemp("node")
    proc = pi.host_command([sys.executable, "-m", "agent", "node", "serve", "--listen", f"127.0.0.1:{NODE_PORT}",
                            "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert "listening" in proc.stdout.readline().decode()
        yield state
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def node_devices(state: Path) -> list[str]:
    db = sqlite3.connect(state / "node.db")
    try:
        return ["0x" + bytes(row[0]).hex() for row in db.execute("SELECT addr FROM devices")]
    finally:
        db.close()


@pytest.mark.timeout(900)
def test_a_install_both_services_ready(pi, pi_debs, pi_figures):
    version, deb = pi_debs["base"]
    out = pi.check("uname -m; python3 --version; systemctl is-system-running; dpkg -s aitn-agent 2>&1 | head -2")
    assert out.split()[0] == "aarch64" and "Python 3.11." in out, out
    assert "is not installed" in out  # the image does not have the package: this test installs it
    rc, log, seconds = apt_install(pi, deb)
    step(pi_figures, "a_apt_install_s", seconds)
    assert rc == 0, log
    t0 = time.monotonic()
    shown = wait_active(pi)
    step(pi_figures, "a_wait_active_after_install_s", time.monotonic() - t0)
    assert_running(shown, pi)
    pi_figures["units_after_install"] = {u: {k: shown[u][k] for k in ("MainPID", "ActiveState", "SubState")}
                                         for u in UNITS}
    users = pi.check("getent passwd aitn-tee aitn | cut -d: -f1,6,7")
    assert [line.split(":")[0] for line in users.split()] == ["aitn-tee", "aitn"], users
    assert pi.check("stat -c '%a %U %G' /var/lib/aitn-tee").split() == ["700", "aitn-tee", "aitn-tee"]
    assert pi.run("runuser -u aitn -- ls /var/lib/aitn-tee")[0] != 0  # the normal world cannot read it
    assert current_release(pi) == f"releases/{version}"
    rec = upgrade_record(pi)
    assert (rec["result"], rec["to"], rec["from"]) == ("installed", version, None), rec
    assert pi.check("aitn --version").split()[-1] == version
    S["installed"] = version


@pytest.mark.timeout(900)
def test_b_provision_against_a_node_on_the_host(pi, node, pi_figures):
    need("installed")
    t0 = time.monotonic()
    first = json_cmd(pi, f"aitn --board qemu-virt provision --node {NODE_URI} --owner {OWNER} --json", 600)
    step(pi_figures, "b_provision_s", time.monotonic() - t0)
    address = first["address"].lower()  # provision prints it in lower case, eth-account checksums it
    assert first["changed"], first
    assert first.get("user") == "aitn", first  # started as root, it became the service's user
    # The mint request, signed by the device key in the secure world, checked by an independent implementation.
    req = first["mint_request"]
    msg = req["typed_data"]["message"]
    assert msg["owner"].lower() == OWNER.lower() and msg["board"] == "qemu-virt"
    recovered = Account.recover_message(encode_typed_data(full_message=req["typed_data"]), signature=req["signature"])
    assert recovered.lower() == address == msg["device"].lower()
    assert address in node_devices(node)
    S["address"] = address

    t0 = time.monotonic()
    again = json_cmd(pi, f"aitn --board qemu-virt provision --node {NODE_URI} --json", 600)
    step(pi_figures, "b_provision_again_s", time.monotonic() - t0)
    assert again["changed"] == [] and again["address"].lower() == address, again
    prov = _json_of(pi.check("cat /var/lib/aitn/provision.json"))
    assert prov["board"] == "qemu-virt" and prov["node"] == NODE_URI, prov
    assert pi.check("stat -c %U /var/lib/aitn/provision.json").strip() == "aitn"


@pytest.mark.timeout(600)
def test_c_handshake_and_signature(pi, pi_figures):
    need("address")
    t0 = time.monotonic()
    signed = json_cmd(pi, f"{AS_AITN} sign --message hello --json")
    step(pi_figures, "c_sign_s", time.monotonic() - t0)
    assert signed["address"].lower() == S["address"]
    assert Account.recover_message(encode_defunct(text="hello"), signature=signed["signature"]).lower() == S["address"]


@pytest.mark.timeout(900)
def test_d_reboot_everything_comes_back(pi, node, pi_figures):
    need("address")
    seconds = pi.reboot()
    step(pi_figures, "d_reboot_to_console_s", seconds)
    # No command started anything: multi-user.target is ordered after both units, the console after it.
    first_look = units(pi)
    pi_figures["units_at_console_after_reboot"] = {u: first_look[u]["ActiveState"] for u in UNITS}
    t0 = time.monotonic()
    shown = wait_active(pi, 180)
    step(pi_figures, "d_wait_active_after_reboot_s", time.monotonic() - t0)
    assert_running(shown, pi)
    pi_figures["agent_status_after_reboot"] = shown["aitn-agent.service"]["StatusText"]
    assert device_address(pi) == S["address"]
    prov = _json_of(pi.check("cat /var/lib/aitn/provision.json"))
    assert prov["node"] == NODE_URI, prov
    assert S["address"] in node_devices(node)  # the node still has the device's enrollment
    S["rebooted"] = True


@pytest.mark.timeout(600)
def test_d2_provision_after_the_reboot_changes_nothing(pi, pi_figures):
    need("rebooted")
    t0 = time.monotonic()
    again = json_cmd(pi, f"aitn --board qemu-virt provision --node {NODE_URI} --json", 600)
    step(pi_figures, "d2_provision_after_reboot_s", time.monotonic() - t0)
    assert again["changed"] == [] and again["address"].lower() == S["address"], again


@pytest.mark.timeout(1200)
def test_e_upgrade_and_back(pi, pi_debs, pi_figures):
    need("address", "installed")
    base, base_deb = pi_debs["base"]
    nxt, next_deb = pi_debs["next"]

    rc, log, seconds = apt_install(pi, next_deb)
    step(pi_figures, "e_upgrade_s", seconds)
    assert rc == 0, log
    assert_running(wait_active(pi), pi)
    assert current_release(pi) == f"releases/{nxt}"
    assert pi.check("aitn --version").split()[-1] == nxt
    rec = upgrade_record(pi)
    assert (rec["result"], rec["from"], rec["to"]) == ("upgraded", base, nxt), rec
    assert device_address(pi) == S["address"]

    rc, log, seconds = apt_install(pi, base_deb, "--allow-downgrades")
    step(pi_figures, "e_downgrade_s", seconds)
    assert rc == 0, log
    assert_running(wait_active(pi), pi)
    assert current_release(pi) == f"releases/{base}"
    assert pi.check("aitn --version").split()[-1] == base
    rec = upgrade_record(pi)
    assert (rec["result"], rec["from"], rec["to"]) == ("upgraded", nxt, base), rec
    assert device_address(pi) == S["address"]
    S["running"] = base


@pytest.mark.timeout(1200)
def test_f_broken_upgrade_rolls_back(pi, pi_debs, pi_figures):
    need("address", "running")
    broken, broken_deb = pi_debs["broken"]
    running = S["running"]
    rc, log, seconds = apt_install(pi, broken_deb)
    step(pi_figures, "f_broken_upgrade_and_rollback_s", seconds)
    assert rc != 0, f"apt-get accepted the broken {broken}:\n{log}"
    assert "rolling back" in log, log
    rec = upgrade_record(pi)
    assert (rec["result"], rec["from"], rec["to"]) == ("rolled back", running, broken), rec
    pi_figures["broken_upgrade_reason"] = rec["reason"]
    # current is the kept copy of the release that ran before the upgrade
    assert pi.check("readlink -f /opt/aitn-agent/current").strip().endswith(f"/{running}")
    assert pi.check("aitn --version").split()[-1] == running
    assert_running(wait_active(pi), pi)
    assert device_address(pi) == S["address"]
    pi_figures["dpkg_status_after_broken_upgrade"] = pi.check(
        "dpkg-query -W -f '${Status} ${Version}' aitn-agent").strip()
    S["rolled_back"] = True


@pytest.mark.timeout(600)
def test_f2_signature_after_the_rollback(pi, pi_figures):
    need("rolled_back")
    t0 = time.monotonic()
    signed = json_cmd(pi, f"{AS_AITN} sign --message 'after the rollback' --json")
    step(pi_figures, "f_sign_after_rollback_s", time.monotonic() - t0)
    assert Account.recover_message(encode_defunct(text="after the rollback"),
                                   signature=signed["signature"]).lower() == S["address"]


@pytest.mark.timeout(900)
def test_g_sensor_stream_through_a_usb_serial_adapter_reaches_the_store(pi, pi_figures):
    """The robot's sensor MCU behind a USB serial adapter (/dev/ttyUSB0, group dialout): the agent
    service's ingest, as user aitn with PrivateUsers=, the device allowlist and dialout as a
    supplementary group, reads it and stores desensitized batches."""
    from pi_guest import SENSOR_PORT

    need("address")
    out = pi.check("udevadm settle; stat -c '%U %G %a' /dev/ttyUSB0; readlink -f /sys/class/tty/ttyUSB0/device/driver")
    assert out.split()[:3] == ["root", "dialout", "660"] and out.strip().endswith("/ftdi_sio"), out
    # The maker's board file names its sensor port (a conffile: edited as an image build would).
    pi.check("sed -i 's|^url = \"socket://10.0.2.2:7000\"|url = \"/dev/ttyUSB0\"|' /etc/aitn/boards/qemu-virt.toml"
             " && grep -q '^url = \"/dev/ttyUSB0\"' /etc/aitn/boards/qemu-virt.toml")
    sim = pi.host_command([sys.executable, "-m", "agent", "sensor", "sim", "--url", f"socket://127.0.0.1:{SENSOR_PORT}",
                           "--rate", "300", "--duration", "150", "--seed", "11"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        pi.check("systemctl restart aitn-agent")
        # a batch is stored after 60 s of stream (IngestConfig.batch_seconds) or 20,000 records
        rc, listing = pi.run(f"for i in $(seq 240); do out=$({AS_AITN} data ls --json 2>/dev/null) && "
                             "echo \"$out\" | grep -q '\"records\"' && break; sleep 1; done; echo \"$out\"", 300)
        step(pi_figures, "g_first_batch_from_usb_serial_s", time.monotonic() - t0)
        datasets = _json_of(listing)["datasets"]
        assert datasets and datasets[0]["records"] > 0, listing + pi.run("journalctl -u aitn-agent -n 40 --no-pager")[1]
        # the process that read it: the agent unit's ingest child, uid aitn, dialout among its groups
        pids = pi.check("for p in $(cat /sys/fs/cgroup/system.slice/aitn-agent.service/cgroup.procs); do "
                        "tr '\\0' ' ' </proc/$p/cmdline | grep -q ' ingest --policy ' && echo $p; done").split()
        assert len(pids) == 1, pids
        pid = pids[0]
        status = pi.check(f"grep -E '^(Uid|Groups):' /proc/{pid}/status; ls -l /proc/{pid}/fd | grep -c ttyUSB0")
        pi_figures["usb_serial_ingest_process"] = status.strip().splitlines()
        assert status.strip().splitlines()[-1] == "1", status   # it holds the port open
        assert pi.check(f"readlink /proc/{pid}/ns/user") != pi.check("readlink /proc/1/ns/user"), \
            "PrivateUsers= gives the unit its own user namespace"
        pi_figures["usb_serial_datasets"] = [{k: d[k] for k in ("records", "compressed_bytes", "policy")}
                                             for d in datasets]
    finally:
        sim.terminate()
        sim.wait(timeout=30)
