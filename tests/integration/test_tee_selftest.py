"""`aitn tee selftest` and `aitn tee bench` against real secure-world processes."""

from __future__ import annotations

import json
import struct
import zlib

from agent.tee.chainlog import HEADER_SIZE, RECORD_SIZE
from agent.tee.debug_errors import SelftestFailed
from agent.tee.selftest import CHECKS
from conftest import tee_status


def _selftest(cli, home, tee=None, url=None) -> tuple[int, dict, str]:
    res = cli("tee", "selftest", "--json", home=home, tee=tee, url=url, check=False)
    return res.returncode, json.loads(res.stdout), res.stderr


def test_selftest_passes_on_a_healthy_paired_device(tee, home, paired, cli):
    rc, out, _ = _selftest(cli, home, tee)
    assert rc == 0 and out["passed"], out
    assert [c["name"] for c in out["checks"]] == list(CHECKS)
    for c in out["checks"]:
        assert set(c) == {"name", "passed", "detail", "ms"} and c["passed"] and c["ms"] >= 0 and c["detail"]
    by_name = {c["name"]: c["detail"] for c in out["checks"]}
    assert paired.address.hex().lower() in by_name["key"].lower()
    assert "committed height 0 -> 8" in by_name["counter"]  # SEAL, UNSEAL, SIGN, PROOF: 8 blocks
    assert "the ABI has no command to read it again" in by_name["sealed_state"]
    text = cli("tee", "selftest", home=home, tee=tee).stdout
    assert "self-test passed: 9 of 9 checks passed" in text
    assert all(f"{name:<13} PASS" in text for name in CHECKS)


def test_selftest_fails_when_the_secure_world_is_not_running(tee, home, paired, cli):
    tee.stop()
    rc, out, err = _selftest(cli, home, tee)
    assert rc == SelftestFailed.exit_code and not out["passed"]
    first = out["checks"][0]
    assert first["name"] == "transport" and not first["passed"] and "is the secure world running?" in first["detail"]
    assert all(not c["passed"] and c["detail"] == "not run: transport failed" for c in out["checks"][1:])
    assert err.strip() == "aitn: error: self-test failed: transport"  # the root cause, not the checks it blocked


def test_selftest_fails_on_an_altered_normal_world_chain(tee, home, paired, cli):
    cli("tee", "handshake", home=home, tee=tee)
    path = home / "chain.log"
    raw = bytearray(path.read_bytes())
    at = HEADER_SIZE + 2 * RECORD_SIZE
    body = bytearray(raw[at:at + 109])
    body[20] ^= 1  # block 2's body digest, CRC recomputed: an edit, not line noise
    raw[at:at + 109] = body
    raw[at + 109:at + 113] = struct.pack(">I", zlib.crc32(bytes(body)))
    path.write_bytes(bytes(raw))
    rc, out, err = _selftest(cli, home, tee)
    assert rc == SelftestFailed.exit_code
    checks = {c["name"]: c for c in out["checks"]}
    assert [n for n, c in checks.items() if not c["passed"]] == ["chain", "seal_unseal", "sign_verify", "counter"]
    assert "nw_behind (ChainBehind)" in checks["chain"]["detail"] and "re-pair" in checks["chain"]["detail"]
    assert checks["sign_verify"]["detail"] == "not run: chain failed"
    assert checks["counter"]["detail"] == "not run: chain failed"  # through sign_verify, to the root cause
    assert err.strip() == "aitn: error: self-test failed: chain"
    assert checks["transport"]["passed"] and checks["key"]["passed"] and checks["lockout"]["passed"]
    assert tee_status(tee.url)["failures"] == 0  # no handshake was attempted on a broken chain


def test_bench_reports_sane_distributions(tee, home, paired, cli):
    out = json.loads(cli("tee", "bench", "--n", "6", "--json", home=home, tee=tee).stdout)
    assert out["n"] == 6 and out["units"] == "ms" and out["secure_world_timing"]
    assert tee_status(tee.url)["committed_height"] == 4 * 12  # every sample was a real signature
    stats = ("median", "p90", "p99", "min", "max")
    for kind, steps in (("handshake", ["connect", "open_session", "open_chain", "sync", "sign->challenge", "proof",
                                       "proof->signature", "close_session"]),
                        ("sign", ["sign->challenge", "proof", "proof->signature"])):
        s = out[kind]
        assert s["samples"] == 6 and set(s["steps"]) == set(steps)  # (--json sorts keys; the text keeps the order)
        dists = [s["total"], *s["steps"].values(), *s["breakdown"].values()]
        for d in dists:
            assert set(d) == set(stats)
            assert d["min"] <= d["median"] <= d["p90"] <= d["p99"] <= d["max"]
        for d in [s["total"], *s["steps"].values()]:
            assert d["min"] > 0
        for name in ("nw_chain_append", "nw_fsync", "nw_proof", "link", "sw_chain", "sw_commit", "sw_check",
                     "sw_sign", "sw_other"):
            assert s["breakdown"][name]["min"] > 0, (kind, name)
        # The phases were timed one by one: together they cover the sample, up to the calls between them.
        between = s["between_steps"]  # (its median: a loaded machine may preempt a sample between two steps)
        assert -0.001 <= between["min"] and between["median"] <= max(0.25, 0.05 * s["total"]["median"]), between
        # The parts measured independently never add up to more than the whole: the rest is Python.
        assert s["breakdown"]["nw_other"]["min"] >= -0.05
    text = cli("tee", "bench", "--n", "2", home=home, tee=tee).stdout
    assert "handshake (cold)" in text and "sw_commit" in text and "median" in text
