"""Taking turns on the chain, as real processes: one normal-world process holds the chain file's lock
at a time; a command run while a service holds it waits for it (``--lock-wait``, $AITN_LOCK_WAIT_S)
instead of failing, and fails with exit 22 and the reason once the wait is over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_defunct

from agent.errors import ChainBusy, ConfigError
from agent.tee.chainlog import ChainLog

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time\nfrom pathlib import Path\nfrom agent.tee.chainlog import ChainLog\n"
        "with ChainLog.open(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n")


def _hold(home: Path, seconds: float) -> subprocess.Popen:
    """Another normal-world process holding the chain for ``seconds``."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(home / "chain.log"), str(seconds)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_signature_waits_for_the_process_holding_the_chain(tee, home, paired, cli):
    holder = _hold(home, 1.5)
    try:
        t0 = time.monotonic()
        res = cli("--lock-wait", "30", "sign", "--message", "after you", "--json", home=home, tee=tee)
        waited = time.monotonic() - t0
        assert holder.poll() is not None      # it signed only after the holder let go
    finally:
        holder.wait(timeout=60)
    signed = json.loads(res.stdout)
    assert Account.recover_message(encode_defunct(text="after you"),
                                   signature=signed["signature"]).lower() == "0x" + paired.address.hex()
    assert waited >= 1.0


def test_without_a_wait_a_held_chain_is_exit_22_at_once(tee, home, paired, cli):
    holder = _hold(home, 30)
    try:
        t0 = time.monotonic()
        res = cli("--lock-wait", "0", "sign", "--message", "now", home=home, tee=tee, check=False)
        assert time.monotonic() - t0 < 15
        assert res.returncode == ChainBusy.exit_code and "in use by another normal-world process" in res.stderr
        env = dict(os.environ, AITN_LOCK_WAIT_S="0.5")
        res = subprocess.run([sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "sign",
                              "--message", "soon"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == ChainBusy.exit_code and "(waited 0.5 s)" in res.stderr
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with ChainLog.open(home / "chain.log") as c:   # nothing was written by the refused commands
        assert c.verify() == c.head.height + 1


def test_a_bad_wait_is_a_configuration_error(tee, home, paired, cli):
    for env_value in ("soon", "-1"):
        env = dict(os.environ, AITN_LOCK_WAIT_S=env_value)
        res = subprocess.run([sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "sign",
                              "--message", "x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == ConfigError.exit_code and "lock" in res.stderr.lower(), res.stderr
