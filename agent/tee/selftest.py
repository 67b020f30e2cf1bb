"""`aitn tee selftest`: a factory self-test of both worlds, through the secure world's ABI only.

In the spirit of a gateway manufacturing test: one line per check, pass or fail, and a typed exit.
Every check uses what the secure world exposes to any client (STATUS, GET_PUBKEY, a chained
session); where the ABI cannot show something the detail says so instead of pretending:

- transport   the URL answers OPEN_SESSION;
- ta_version  the TA's UUID and version are the ones this normal world speaks (tee_sim/abi/ids.py);
- lockout     no lockout in force (the failures count is reported);
- key         a device key exists; GET_PUBKEY's address is the public key's (usable: see sign_verify);
- sealed_state  STATUS reports no state error: the TA read and authenticated sealed.bin and its
              RPMB counter when it started (the ABI cannot make it read the file again);
- chain       `aitn chain diff`: the normal world's copy verifies and one SYNC probe agrees;
- seal_unseal the storage key seals and unseals 32 random bytes (a chained session);
- sign_verify one handshake signs a random digest and the signature recovers the device address;
- counter     the sealed-state counter did not move backwards and equals the sealed file's
              version; the chain's committed height (its monotonic counter) grew by the test's blocks.

The test signs one digest and seals one blob: the chain grows by 8 blocks. When the chain check
fails, no handshake is attempted (a mismatched chain would count failures toward the lockout).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tee_sim.abi import digests
from tee_sim.abi.ids import TA_UUID, TA_VERSION, Cmd

from ..errors import AgentError
from ..signature import verify
from . import chaindiff, handshake
from .client import TeeClient
from .session import ChainedSession

CHECKS = ("transport", "ta_version", "lockout", "key", "sealed_state", "chain", "seal_unseal", "sign_verify",
          "counter")


NOT_RUN = "not run: "


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    ms: float


class _Failed(Exception):
    """A check's own failure, with its detail."""


def _status(client: TeeClient, sid: int) -> dict:
    return json.loads(client.invoke(sid, Cmd.STATUS, (None, 4096, None, None)).params[1])


def run(url: str, home: Path, timeout: float = 10.0) -> list[Check]:
    checks: list[Check] = []
    state: dict = {}

    def check(name: str, fn: Callable[[], str], needs: tuple[str, ...] = ()) -> bool:
        causes: list[str] = []
        for c in checks:  # the checks that failed and block this one (the root cause of a check not run)
            if c.name in needs and not c.passed:
                causes += c.detail[len(NOT_RUN):-len(" failed")].split(", ") if not_run(c) else [c.name]
        if causes:
            causes = list(dict.fromkeys(causes))
            checks.append(Check(name, False, f"{NOT_RUN}{', '.join(causes)} failed", 0.0))
            return False
        t0 = time.perf_counter()
        try:
            detail, passed = fn(), True
        except (_Failed, AgentError) as e:
            detail, passed = str(e) or type(e).__name__, False
        checks.append(Check(name, passed, detail, round((time.perf_counter() - t0) * 1e3, 3)))
        return passed

    def transport() -> str:
        client = TeeClient.connect(url, timeout)
        state["client"] = client
        opened = client.open_session()
        state["sid"] = opened.id
        return f"{url}: session {opened.id} opened, committed height {opened.committed_height}"

    def ta_version() -> str:
        st = state["status"] = _status(state["client"], state["sid"])
        want = "%d.%d" % TA_VERSION
        if st.get("ta_uuid") != str(TA_UUID) or st.get("ta_version") != want:
            raise _Failed(f"TA {st.get('ta_uuid')} v{st.get('ta_version')}; this normal world speaks {TA_UUID} "
                          f"v{want}")
        return f"TA {TA_UUID} v{want}"

    def lockout() -> str:
        st = state["status"]
        if st.get("lockout_seconds", 0) > 0:
            raise _Failed(f"locked out for {st['lockout_seconds']:g} s after {st.get('failures')} failed proofs or "
                          "sync tags in a row" + chaindiff.clock_hint(st.get("failures", 0), st["lockout_seconds"]))
        return f"no lockout ({st.get('failures', 0)} failures in a row)"

    def key() -> str:
        if not state["status"].get("key"):
            raise _Failed("no device key: run `aitn tee pair`")
        resp = state["client"].invoke(state["sid"], Cmd.GET_PUBKEY, (65, 20, None, None))
        public_key, address = resp.params[0], resp.params[1]
        if len(public_key) != 65 or public_key[0] != 4 or digests.address_of(public_key) != address:
            raise _Failed("GET_PUBKEY's address is not its public key's")
        state["address"] = address
        return f"{digests.checksum_address(address)} (usable: see sign_verify)"

    def sealed_state() -> str:
        st = state["status"]
        if st.get("state_error"):
            raise _Failed(f"sealed state unusable: {st['state_error']}")
        if "sealed_version" not in st:
            raise _Failed("STATUS reports no sealed state")
        return (f"sealed.bin version {st['sealed_version']} and RPMB counter {st['rpmb_counter']} read at start "
                "(the ABI has no command to read it again)")

    def chain() -> str:
        dg = chaindiff.compare(url, home, timeout).diagnosis
        if not dg.ok:
            raise _Failed(f"{dg.state} ({dg.error}): {dg.summary}; recovery: {dg.recovery}")
        return f"{dg.state}: {dg.summary}"

    def session() -> ChainedSession:
        # One chained session for both: SEAL and UNSEAL stay tentative until the PROOF commits them.
        if "session" not in state:
            state["session"] = ChainedSession.open(url, home, timeout=timeout)
        return state["session"]

    def seal_unseal() -> str:
        s, secret = session(), os.urandom(32)
        blob = s.invoke(Cmd.SEAL, (secret, 4096, None, None)).params[1]
        back = s.invoke(Cmd.UNSEAL, (blob, 4096, None, None)).params[1]
        if back != secret:
            raise _Failed("UNSEAL returned other bytes than were sealed")
        return f"32 bytes sealed into {len(blob)} and back"

    def sign_verify() -> str:
        digest = os.urandom(32)
        signed = handshake.sign_digest(session(), digest)
        state.pop("session").close()
        verify(digest, signed.signature, state["address"])  # raises InvalidSignature
        return f"signed 0x{digest.hex()[:16]}.. at height {signed.height}; recovers the device address"

    def counter() -> str:
        before, after = state["status"], _status(state["client"], state["sid"])
        if after["rpmb_counter"] < before["rpmb_counter"]:
            raise _Failed(f"RPMB counter went back: {before['rpmb_counter']} -> {after['rpmb_counter']}")
        if after["sealed_version"] != after["rpmb_counter"]:
            raise _Failed(f"sealed version {after['sealed_version']} != RPMB counter {after['rpmb_counter']}")
        grew = after.get("committed_height", 0) - before.get("committed_height", 0)
        if grew <= 0:
            raise _Failed(f"committed height did not grow: {before.get('committed_height')} -> "
                          f"{after.get('committed_height')}")
        return (f"RPMB counter {after['rpmb_counter']} = sealed version; committed height "
                f"{before.get('committed_height')} -> {after.get('committed_height')}")

    try:
        check("transport", transport)
        check("ta_version", ta_version, ("transport",))
        check("lockout", lockout, ("ta_version",))
        check("key", key, ("ta_version",))
        check("sealed_state", sealed_state, ("ta_version",))
        check("chain", chain, ("sealed_state", "lockout"))
        check("seal_unseal", seal_unseal, ("chain",))
        check("sign_verify", sign_verify, ("chain", "key"))
        check("counter", counter, ("sign_verify",))
    finally:
        if "session" in state:
            state["session"].close()
        client = state.get("client")
        if client is not None:
            try:
                if "sid" in state:
                    client.close_session(state["sid"])
            except AgentError:
                pass
            client.close()
    return checks


def not_run(c: Check) -> bool:
    return not c.passed and c.detail.startswith(NOT_RUN)


def failed_checks(checks: list[Check]) -> list[str]:
    """The checks that ran and failed (not those that could not run because of them)."""
    return [c.name for c in checks if not c.passed and not not_run(c)]


def to_json(checks: list[Check]) -> dict:
    return {"passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks]}


def format_table(checks: list[Check]) -> list[str]:
    lines = [f"{'check':<13} {'result':<6} {'ms':>8}  detail"]
    lines += [f"{c.name:<13} {'PASS' if c.passed else 'FAIL':<6} {c.ms:8.3f}  {c.detail}" for c in checks]
    failed, skipped = failed_checks(checks), sum(1 for c in checks if not_run(c))
    passed = sum(1 for c in checks if c.passed)
    lines.append(f"self-test {'passed' if not failed else 'FAILED'}: {passed} of {len(checks)} checks passed"
                 + (f"; failed: {', '.join(failed)}" if failed else "") + (f"; {skipped} not run" if skipped else ""))
    return lines
