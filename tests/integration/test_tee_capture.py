"""Capture and decode: `aitn tee handshake --capture`, the capturing relay `aitn tee capture`, `aitn tee decode`.

A real secure-world process on a Unix socket; the normal world as the `aitn` CLI, pointed either
straight at the secure world (--capture) or at the relay.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path


from agent.tee import pcapng
from agent.tee.capture import CaptureRelay, Recorder, split_keeping_bytes
from agent.tee.decode import decode_capture
from conftest import ROOT
from support.tee_process import open_session_frame
from tee_sim.abi import block as blk
from tee_sim.abi import frame
from tee_sim.abi.frame import Frame, Kind, Value
from tee_sim.abi.ids import CMD_PARAMS, Cmd, Origin, TeecResult

HANDSHAKE = [  # (command, response?) of one `aitn tee handshake` session
    ("OPEN_SESSION", False), ("OPEN_SESSION", True), ("SYNC", False), ("SYNC", True),
    ("SIGN", False), ("SIGN", True), ("PROOF", False), ("PROOF", True),
    ("CLOSE_SESSION", False), ("CLOSE_SESSION", True)]


def shape(decoded) -> list[tuple[str, bool]]:
    out = []
    for d in decoded:
        f = d.frame
        base = Kind(f.kind & ~Kind.RESPONSE)
        out.append((Cmd(f.command).name if base == Kind.INVOKE else base.name, f.is_response))
    return out


def test_handshake_capture_holds_the_exchange_in_order(tee, home, paired, cli, workdir):
    path = workdir / "hs.pcapng"
    out = json.loads(cli("tee", "handshake", "--capture", str(path), "--trace", "--json", home=home, tee=tee).stdout)
    cap = pcapng.parse(path.read_bytes())
    assert [i.name for i in cap.interfaces] == [tee.url]
    assert cap.application.startswith("aitn ")
    decoded = decode_capture(cap)
    assert not any(d.error for d in decoded)
    assert shape(decoded) == HANDSHAKE
    # Requests go out from the normal world, responses come in.
    assert [d.outbound for d in decoded] == [not resp for _, resp in HANDSHAKE]
    assert all(d.frame.result == TeecResult.SUCCESS for d in decoded if d.frame.is_response)
    times = [p.ts_us for p in cap.packets]
    assert times == sorted(times) and abs(times[0] / 1e6 - time.time()) < 60
    # The packets are the bytes the client traced (its --json frames), and the frames carry what the CLI printed.
    assert [p.data.hex() for p in cap.packets] == [f["hex"] for f in out["frames"]]
    sign_req, challenge, proof_req, signature = decoded[4:8]
    assert sign_req.meaning == {"purpose": "RAW_DIGEST", "digest": out["digest"][2:]}
    assert set(challenge.meaning["challenge"]) == {"nonce", "heights"}
    assert len(proof_req.meaning["proof"]) == 64
    sig = signature.meaning["signature"]
    assert "0x" + sig["r"] + sig["s"] + f"{sig['v']:02x}" == out["signature"]
    assert signature.meaning["signed_digest"] == out["digest"][2:]
    # Chain heights: synced at the committed height 0 (fresh pairing), then one block per message.
    assert decoded[3].meaning["committed_height"] == 0
    assert [d.height for d in decoded] == [None] * 4 + [1, 2, 3, 4] + [None] * 2
    assert sign_req.body_digest == blk.message_digest(cap.packets[4].data)

    text = cli("tee", "decode", str(path), home=home).stdout
    for needle in ("OPEN_SESSION", "cmd=SYNC", "cmd=SIGN", "cmd=PROOF", "CLOSE_SESSION", "result=SUCCESS",
                   "challenge: nonce=", "signature: r=", "block 4", "10 frames, 0 malformed"):
        assert needle in text, needle
    js = json.loads(cli("tee", "decode", str(path), "--json", home=home).stdout)
    assert js["packets"] == 10 and js["malformed"] == 0
    assert [(f["command"], f["response"], f["direction"]) for f in js["frames"]][4:8] == [
        ("SIGN", False, "NW -> SW"), ("SIGN", True, "SW -> NW"), ("PROOF", False, "NW -> SW"),
        ("PROOF", True, "SW -> NW")]
    assert js["frames"][7]["result"] == "SUCCESS" and js["frames"][7]["block"]["height"] == 4


def _start_capture(home: Path, tee, listen: str, out: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "agent", "--home", str(home), "--tee", tee.url, "tee", "capture",
                             "--listen", listen, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    ready = proc.stderr.readline()  # stdout is kept for the result (one JSON object with --json)
    assert ready.startswith("capturing to"), ready + proc.stderr.read()
    return proc


def test_relay_captures_another_process(tee, home, paired, cli, workdir):
    out = workdir / "relay.pcapng"
    listen = f"unix://{workdir}/relay.sock"
    # `aitn sign`: one chained session (10 frames) and one GET_PUBKEY session to check the signature (6).
    proc = _start_capture(home, tee, listen, out, "--count", "16", "--json")
    signed = json.loads(cli("sign", "--message", "dock 3 clear", "--json", home=home, url=listen).stdout)
    stdout, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["frames"] == 16 and summary["connections"] == 2
    assert not Path(listen[len("unix://"):]).exists()  # the relay removes its socket

    cap = pcapng.parse(out.read_bytes())
    assert [i.name for i in cap.interfaces] == [tee.url, tee.url]  # one interface per relayed connection
    assert "connection 1" in cap.interfaces[0].description and "connection 2" in cap.interfaces[1].description
    decoded = decode_capture(cap)
    assert [d.interface for d in decoded] == [0] * 10 + [1] * 6
    assert shape(decoded[:10]) == HANDSHAKE
    assert shape(decoded[10:]) == [("OPEN_SESSION", False), ("OPEN_SESSION", True), ("GET_PUBKEY", False),
                                   ("GET_PUBKEY", True), ("CLOSE_SESSION", False), ("CLOSE_SESSION", True)]
    assert [d.outbound for d in decoded] == [not d.frame.is_response for d in decoded]
    assert decoded[4].meaning["purpose"] == "PERSONAL_MESSAGE" and decoded[4].meaning["message"] == "dock 3 clear"
    sig = decoded[7].meaning["signature"]
    assert "0x" + sig["r"] + sig["s"] + f"{sig['v']:02x}" == signed["signature"]
    assert decoded[13].meaning["address"] == signed["address"].lower()
    assert [d.height for d in decoded[4:8]] == [1, 2, 3, 4]
    # The body digests are the ones the normal world's chain recorded for those blocks.
    chain = json.loads(cli("chain", "show", "--tail", "4", "--json", home=home, tee=tee).stdout)["blocks"]
    assert [(b["height"], b["body_digest"]) for b in chain] == [(d.height, d.body_digest.hex()) for d in decoded[4:8]]

    text = cli("tee", "decode", str(out), home=home).stdout
    assert "cmd=GET_PUBKEY" in text and "if1 " + tee.url in text and "16 frames, 0 malformed" in text


def test_relay_records_malformed_bytes_where_they_happened(tee, workdir):
    """A corrupt frame, then a good one in the same write: both reach the secure world, both are in the file."""
    out = workdir / "bad.pcapng"
    with open(out, "wb") as f:
        relay = CaptureRelay(f"unix://{workdir}/r.sock", tee.url, Recorder(f)).start()
        try:
            bad = bytearray(open_session_frame(1))
            bad[45] ^= 0xFF  # a body byte: CRC mismatch
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(workdir / "r.sock"))
                s.sendall(b"line noise" + bytes(bad) + open_session_frame(2))
                splitter, got = frame.StreamSplitter(), []
                while len(got) < 3:
                    got += [frame.decode(x) for x in splitter.feed(s.recv(65536)) if isinstance(x, bytes)]
                s.sendall(open_session_frame(3)[:30])  # then hang up inside a frame
            # The secure world answers the garbage and the corrupt frame each with BAD_FORMAT, then the session.
            assert [(r.result, r.origin) for r in got[:2]] == [(TeecResult.BAD_FORMAT, Origin.COMMS)] * 2
            assert got[2].request_id == 2 and got[2].result == TeecResult.SUCCESS
            deadline = time.monotonic() + 5
            while relay.recorder.packets < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            relay.close()
    decoded = decode_capture(pcapng.parse(out.read_bytes()))
    rows = [(d.outbound, d.error.split(":")[0], d.comment) for d in decoded]
    assert rows == [
        (True, "FrameCorrupt", "10 bytes of garbage skipped; crc32 mismatch"),  # the skipped bytes, as sent
        (True, "", ""),  # OPEN_SESSION 2
        (False, "", ""),  # BAD_FORMAT for the garbage
        (False, "", ""),  # BAD_FORMAT for the corrupt frame
        (False, "", ""),  # the session
        (True, "FrameTruncated", "connection ended inside a frame (30 bytes)"),
    ]
    assert decoded[0].raw == b"line noise" + bytes(bad)


def test_split_keeping_bytes_accounts_for_every_byte():
    rng = random.Random(7)
    good = [frame.encode(Frame(Kind.INVOKE, i, 1, int(Cmd.PSEUDONYM), CMD_PARAMS[Cmd.PSEUDONYM],
                               (bytes([i]) * i, Value(i, 0), 32, None))) for i in range(1, 30)]
    stream, expected = b"", []
    for i, g in enumerate(good):
        if i % 5 == 1:
            bad = bytearray(g)
            bad[-1] ^= 1
            stream += bytes(bad)
            expected.append((bytes(bad), "crc32 mismatch"))
        if i % 7 == 3:
            stream += b"\x00garbage"
            expected.append((b"\x00garbage", "8 bytes of garbage skipped"))
        stream += g
        expected.append((g, ""))
    splitter, pending, got = frame.StreamSplitter(), bytearray(), []
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 200)
        got += split_keeping_bytes(splitter, pending, stream[pos:pos + n])
        pos += n
    assert b"".join(c for c, _ in got) == stream and not pending
    assert [c for c, why in got if not why] == good

    def runs(chunks):  # skipped bytes between two good frames (a read boundary may split them)
        out, run = [], b""
        for c, why in chunks:
            if why:
                run += c
            elif run:
                out, run = out + [run], b""
        return out

    assert runs(got) == runs(expected)
    assert {why for _, why in got if why} <= {"crc32 mismatch", "bytes skipped"} | {
        f"{n} bytes of garbage skipped" for n in range(1, 9)} | {
        f"{n} bytes of garbage skipped; crc32 mismatch" for n in range(1, 9)}


def test_capture_duration_and_bad_arguments(tee, home, cli, workdir):
    out = workdir / "idle.pcapng"
    proc = _start_capture(home, tee, f"unix://{workdir}/idle.sock", out, "--duration", "0.3")
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "captured 0 frames on 0 connections" in stdout, stderr
    assert pcapng.parse(out.read_bytes()).packets == []

    res = cli("tee", "capture", "--listen", "/tmp/x.sock", "--out", str(workdir / "no.pcapng"), home=home, tee=tee,
              check=False)
    assert res.returncode == 3 and "--listen must be a unix:///path URL" in res.stderr
    assert not (workdir / "no.pcapng").exists()
    res = cli("tee", "capture", "--listen", f"unix://{workdir}/s.sock", "--out", str(workdir / "no.pcapng"),
              home=home, url="loop://", check=False)
    assert res.returncode == 3 and "serial link" in res.stderr

    data = pcapng.encode(pcapng.Capture([pcapng.Interface(tee.url)],
                                        [pcapng.Packet(0, 1, open_session_frame(), True)]))
    (workdir / "cut.pcapng").write_bytes(data[:-10])
    res = cli("tee", "decode", str(workdir / "cut.pcapng"), home=home, check=False)
    assert res.returncode == 31
    assert "block at offset" in res.stderr and "announces" in res.stderr and "Traceback" not in res.stderr
