"""The Wireshark dissector (scripts/wireshark/aitn_tee.lua) run by tshark on captures this project writes.

Its decoding is compared field by field with `agent.tee.decode` (an independent implementation of
the same layout, built on tee_sim.abi): names, session, challenge, chain heights and the body
digests (SHA-256, computed in Lua). Malformed frames must show as malformed expert info, never as
a Lua error, and the frames around them must still decode.

tshark runs with HOME and XDG_CONFIG_HOME in a scratch directory, so a personal copy of the
plugin or personal preferences cannot interfere. As root it still loads the script: Debian's
/usr/share/wireshark/init.lua sets ``run_user_scripts_when_superuser = true`` (tshark only warns).
Skipped only when tshark is not on PATH (Debian package ``tshark``; .ci/run installs it).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from agent.tee import pcapng
from agent.tee.decode import decode_capture
from conftest import ROOT
from tee_sim.abi import frame as fr
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, Cmd

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None,
                                reason="tshark is needed (apt-get install tshark)")

LUA = ROOT / "scripts" / "wireshark" / "aitn_tee.lua"
FIELDS = ["frame.number", "aitn_tee.direction", "aitn_tee.cmd", "aitn_tee.response", "aitn_tee.result_name",
          "aitn_tee.origin_name", "aitn_tee.session", "aitn_tee.request_id", "aitn_tee.transport",
          "aitn_tee.committed_height", "aitn_tee.challenge.nonce", "aitn_tee.challenge.height",
          "aitn_tee.block.height", "aitn_tee.block.body_digest", "aitn_tee.signature.r", "aitn_tee.signature.v",
          "aitn_tee.signed_digest", "aitn_tee.request_in", "aitn_tee.crc32.good", "aitn_tee.malformed",
          "_ws.expert.group"]


def tshark(path: Path, scratch: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(scratch), "XDG_CONFIG_HOME": str(scratch / ".config")}
    res = subprocess.run(["tshark", "-n", "-X", f"lua_script:{LUA}", "-r", str(path), *args],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert "Lua" not in res.stderr and "lua_script" not in res.stderr, res.stderr
    return res


def fields(path: Path, scratch: Path) -> list[dict[str, str]]:
    argv = ["-T", "fields", "-E", "header=y", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in FIELDS:
        argv += ["-e", f]
    lines = tshark(path, scratch, *argv).stdout.splitlines()
    names = lines[0].split("\t")
    rows = [dict(zip(names, line.split("\t"))) for line in lines[1:]]
    assert any(r["aitn_tee.cmd"] for r in rows), "the dissector decoded nothing: was the Lua script loaded?"
    return rows


@pytest.fixture
def scratch(workdir: Path) -> Path:
    d = workdir / "tshark-home"
    d.mkdir()
    return d


@pytest.fixture
def handshake_capture(tee, home, paired, cli, workdir) -> Path:
    path = workdir / "hs.pcapng"
    cli("tee", "handshake", "--capture", str(path), home=home, tee=tee)
    return path


def expected_row(d) -> dict[str, str]:
    """What the dissector must show for one packet, from agent.tee.decode."""
    f, m = d.frame, d.meaning
    base = Kind(f.kind & ~Kind.RESPONSE)
    row = {"aitn_tee.direction": "0" if d.outbound else "1",
           "aitn_tee.cmd": Cmd(f.command).name if base == Kind.INVOKE else base.name,
           "aitn_tee.response": "1" if f.is_response else "0",
           "aitn_tee.result_name": d.header.get("result", ""), "aitn_tee.origin_name": "",
           "aitn_tee.session": str(f.session), "aitn_tee.request_id": str(f.request_id),
           "aitn_tee.committed_height": str(m.get("committed_height", "")),
           "aitn_tee.challenge.nonce": m.get("challenge", {}).get("nonce", ""),
           "aitn_tee.challenge.height": ",".join(map(str, m.get("challenge", {}).get("heights", []))),
           "aitn_tee.block.height": "" if d.height is None else str(d.height),
           "aitn_tee.block.body_digest": d.body_digest.hex() if d.body_digest else "",
           "aitn_tee.signature.r": m.get("signature", {}).get("r", ""),
           "aitn_tee.signature.v": str(m.get("signature", {}).get("v", "")),
           "aitn_tee.signed_digest": m.get("signed_digest", ""),
           "aitn_tee.crc32.good": "1", "aitn_tee.malformed": ""}
    if f.is_response:
        row["aitn_tee.origin_name"] = {"0x0": "none"}.get(d.header["origin"], d.header["origin"])
    return row


def test_dissector_decodes_a_handshake_like_agent_decode(handshake_capture, scratch, tee):
    decoded = decode_capture(pcapng.parse(handshake_capture.read_bytes()))
    rows = fields(handshake_capture, scratch)
    assert len(rows) == len(decoded) == 10
    for row, d in zip(rows, decoded):
        want = expected_row(d)
        assert {k: row[k] for k in want} == want, f"frame {d.number}"
        assert row["aitn_tee.transport"] == tee.url and row["_ws.expert.group"] == ""
    assert [r["aitn_tee.cmd"] for r in rows] == ["OPEN_SESSION"] * 2 + ["SYNC"] * 2 + ["SIGN"] * 2 + ["PROOF"] * 2 + [
        "CLOSE_SESSION"] * 2
    assert {r["aitn_tee.result_name"] for r in rows[1::2]} == {"SUCCESS"}
    session = rows[1]["aitn_tee.session"]
    assert session != "0" and all(r["aitn_tee.session"] == session for r in rows[1:])
    assert rows[5]["aitn_tee.challenge.height"] != "" and rows[5]["aitn_tee.block.height"] == "2"
    assert [r["aitn_tee.request_in"] for r in rows[1::2]] == ["1", "3", "5", "7", "9"]

    verbose = tshark(handshake_capture, scratch, "-V", "-Y", "aitn_tee.cmd == \"SIGN\" && aitn_tee.response").stdout
    for needle in ("Command: SIGN (0x00000010)", "Result: SUCCESS (0x00000000)", "Challenge: heights",
                   "p2 MEMREF_TEMP_OUTPUT: 25 bytes", "[Chain block height: 2]", "[CRC-32 good: True]"):
        assert needle in verbose, needle


def _recrc(b: bytes) -> bytes:
    b = bytearray(b)
    b[36:40] = bytes(4)
    b[36:40] = struct.pack("<I", zlib.crc32(bytes(b)))
    return bytes(b)


def test_malformed_frames_are_marked_and_the_rest_still_decodes(handshake_capture, scratch):
    data = handshake_capture.read_bytes()
    good = pcapng.parse(data).packets[4].data  # the SIGN request
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 1
    past_end = bytearray(good)
    past_end[32:36] = struct.pack("<I", 4000)
    tampered = {
        11: (good[:25], "short: 25 of 40 header bytes"),
        12: (b"\xde\xad" + good[2:], "bad magic 0xA177ADDE"),
        13: (bytes(bad_crc), "crc32 mismatch"),
        14: (_recrc(past_end), "body_len 4000 runs past the end (48 body bytes)"),
        15: (good + b"\0\0", "2 bytes after the body"),
        16: (fr.encode(Frame(Kind.INVOKE | Kind.RESPONSE, 3, 1, int(Cmd.SIGN), CMD_PARAMS[Cmd.SIGN],
                             (None, None, bytes(16) + b"\x03" + bytes(16), None))),
             "challenge of 33 bytes does not hold 3 heights"),  # a valid frame, a bad challenge
        17: (good, ""),  # and a good frame after them
    }
    for i, (raw, _) in enumerate(tampered.values()):
        data += pcapng.packet_block(pcapng.Packet(0, 10**15 + i, raw, True))
    path = handshake_capture.with_name("bad.pcapng")
    path.write_bytes(data)

    rows = fields(path, scratch)
    assert len(rows) == 17
    for n, (_, reason) in tampered.items():
        row = rows[n - 1]
        assert row["aitn_tee.malformed"] == reason, n
        if reason:
            assert "117440512" in row["_ws.expert.group"].split(","), n  # PI_MALFORMED
        else:
            assert row["aitn_tee.cmd"] == "SIGN" and row["_ws.expert.group"] == ""
    assert rows[12]["aitn_tee.crc32.good"] == "0"
    assert all(r["aitn_tee.malformed"] == "" and r["aitn_tee.cmd"] for r in rows[:10])
    expert = tshark(path, scratch, "-q", "-z", "expert").stdout
    assert "Malformed" in expert and "CRC-32 mismatch" in expert and "dissector error" not in expert
    # agent.tee.decode agrees on which are malformed.
    assert [d.number for d in decode_capture(pcapng.parse(data)) if d.error] == [11, 12, 13, 14, 15, 16]


def test_dissector_and_agent_decode_agree_on_mutated_frames(scratch, workdir):
    """Mutated frames (CRC fixed up in most, so the parameter parsing is reached): same verdict, no Lua error."""
    rng = random.Random(20240611)
    base = [fr.encode(Frame(Kind.INVOKE, 7, 3, int(Cmd.SIGN), CMD_PARAMS[Cmd.SIGN],
                            (bytes(32), Value(0, 0), 64, None))),
            fr.encode(Frame(Kind.INVOKE | Kind.RESPONSE, 7, 3, int(Cmd.SYNC), CMD_PARAMS[Cmd.SYNC],
                            (None, None, bytes(77), Value(5, 0)))),
            fr.encode(Frame(Kind.INVOKE | Kind.RESPONSE, 9, 3, int(Cmd.SIGN), CMD_PARAMS[Cmd.SIGN],
                            (None, None, bytes(16) + b"\x02" + bytes(16), None)))]
    packets = []
    for i in range(400):
        b = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.5 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif op < 0.7:
                del b[rng.randrange(len(b) + 1):]
            elif op < 0.8:
                b += bytes(rng.randrange(1, 9))
            elif len(b) >= 36:
                off = rng.choice([20, 32])
                b[off:off + 4] = struct.pack("<I", rng.choice([0, 1, 0x15, 0x0615, 0x7777, rng.randrange(1 << 16)]))
        raw = _recrc(bytes(b)) if len(b) >= 40 and rng.random() < 0.7 else bytes(b)
        packets.append(pcapng.Packet(0, i, raw, True))
    cap = pcapng.Capture([pcapng.Interface("unix:///fuzz")], packets)
    path = workdir / "fuzz.pcapng"
    path.write_bytes(pcapng.encode(cap))
    rows = fields(path, scratch)
    python = [bool(d.error) for d in decode_capture(cap)]
    assert 50 < sum(python) < 400  # both kinds of verdict are exercised
    for row, malformed, pkt in zip(rows, python, packets):
        assert "dissector error" not in row["aitn_tee.malformed"], pkt.data.hex()
        assert bool(row["aitn_tee.malformed"]) == malformed, (row["aitn_tee.malformed"], pkt.data.hex())
