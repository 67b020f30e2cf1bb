"""Inside the arm64 guest: both worlds as two users, a handshake whose signature the host verifies, the unit tests."""

from __future__ import annotations

import json
import time

from eth_account import Account
from eth_account.messages import encode_defunct

TEE_URL = "unix:///run/aitn/tee.sock"
NW = "su aitn -s /bin/sh -c"  # the normal world's user


def _json_of(out: str) -> dict:
    return json.loads(out[out.index("{"): out.rindex("}") + 1])


def test_guest_is_arm64(guest):
    out = guest.check("uname -m; python3 -c 'import platform; print(platform.python_version())'")
    assert out.split()[0] == "aarch64" and out.split()[1].startswith("3.11.")


def test_both_worlds_pair_and_sign(guest, guest_figures):
    guest.check(f"aitn --tee {TEE_URL} tee serve --state /var/lib/aitn-tee --user aitn-tee "
                "--log /var/log/aitn-tee.log --log-level 3 >/var/log/tee.out 2>&1 &")
    guest.check("for i in $(seq 100); do [ -S /run/aitn/tee.sock ] && break; sleep 0.2; done; [ -S /run/aitn/tee.sock ]",
                timeout=60)
    # The secure world runs as aitn-tee, its state is private to it; the normal world is another user.
    ps = guest.check("ps -o user,args | grep '[t]ee_sim serve'")
    assert ps.split()[0] == "aitn-tee"
    assert guest.check("stat -c '%a %U' /var/lib/aitn-tee").split() == ["700", "aitn-tee"]
    assert guest.run(f"{NW} 'ls /var/lib/aitn-tee'")[0] != 0  # the normal world cannot read it

    t0 = time.monotonic()
    paired = _json_of(guest.check(f"{NW} 'aitn --home /var/lib/aitn --tee {TEE_URL} tee pair --json'", 300))
    guest_figures["pair_s"] = round(time.monotonic() - t0, 2)
    ident = _json_of(guest.check(f"{NW} 'aitn --home /var/lib/aitn --tee {TEE_URL} identity show --json'", 300))
    assert ident["address"] == paired["address"]
    message = "signed inside the arm64 guest"
    t0 = time.monotonic()
    signed = _json_of(guest.check(
        f"{NW} 'aitn --home /var/lib/aitn --tee {TEE_URL} sign --message \"{message}\" --json'", 300))
    guest_figures["sign_cli_s"] = round(time.monotonic() - t0, 2)
    # Verified on the host, by an independent Ethereum implementation.
    assert Account.recover_message(encode_defunct(text=message), signature=signed["signature"]) == ident["address"]
    verify = _json_of(guest.check(f"{NW} 'aitn --home /var/lib/aitn --tee {TEE_URL} chain verify --json'", 300))
    assert verify["blocks"] >= 5

    # Peak memory of both worlds: the secure world's VmHWM, and a normal-world process that runs
    # 20 handshakes and reports its own peak.
    out = guest.check(f"{NW} 'python3 /opt/aitn/scripts/qemu/nw_probe.py --tee {TEE_URL} --home /var/lib/aitn "
                      "--count 20'", 300)
    nw_kb = int(out.split("NW_MAXRSS_KB")[1].split()[0])
    guest_figures["handshake_p50_ms_in_guest"] = float(out.split("HANDSHAKE_P50_MS")[1].split()[0])
    tee_pid = guest.check("ps -o pid,args | grep '[t]ee_sim serve' | awk '{print $1}'").split()[0]
    tee_kb = int(guest.check(f"grep VmHWM /proc/{tee_pid}/status").split()[1])
    guest_figures["peak_rss_mb"] = {"secure_world": round(tee_kb / 1024, 1), "normal_world": round(nw_kb / 1024, 1),
                                    "both": round((tee_kb + nw_kb) / 1024, 1)}
    assert (tee_kb + nw_kb) / 1024 < 150, guest_figures["peak_rss_mb"]


def test_unit_tests_pass_in_the_guest(guest, guest_figures):
    t0 = time.monotonic()
    rc, out = guest.run("cd /opt/aitn && python3 -m pytest tests/unit tests/fuzz -q -m 'not slow' "
                        "-p no:cacheprovider >/tmp/unit.log 2>&1; rc=$?; tail -15 /tmp/unit.log; [ $rc -eq 0 ]",
                        timeout=1800)
    guest_figures["unit_tests_s"] = round(time.monotonic() - t0, 1)
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    guest_figures["unit_tests_result"] = tail
    assert rc == 0 and " passed" in tail and "failed" not in tail and "error" not in tail, out
