"""The floor under the handshake benchmark's ratio: the handshake with less and less of it left in.

Two processes play the handshake's four messages (the sizes of SIGN, CHALLENGE, PROOF and
SIGNATURE) on a Unix socket, with the writes, fdatasyncs and coincurve sign at the points the
durability design puts them: the normal world appends its blocks to a growing file and
fdatasyncs before it sends PROOF; the secure world signs, writes 512 B of RPMB slots in place and
fdatasyncs before it answers. Two variants:

- ``skeleton``: nothing else. What it costs above the sum of the isolated parts is what two
  processes taking turns cost;
- ``lean``: plus the computations the protocol itself asks for, in the leanest CPython form and
  in the world that does them: every message encoded by its sender (header pack, CRC-32) and
  decoded by its receiver (header unpack, CRC-32); both worlds digest it and compute its block
  (time-lock of D iterations, block hash); the challenge's random draws; the proof computed by
  the normal world and checked by the secure world; the secure world's 4 RPMB slot MACs. No
  checks, sessions, objects or logging around them: no CPython implementation of the protocol
  does less.

``in_process`` runs the lean work of both worlds in this process without sockets, files or the
sign, which gives how much slower the same Python runs when two processes share the core.

The secure-world half runs as ``python bench/handshake_floor.py serve SOCK RPMB CORES D WORK``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tee_sim.abi import block as blk  # noqa: E402
from tee_sim.abi.frame import HEADER, HEADER_SIZE  # noqa: E402

SIZES = {"sign": 88, "challenge": 93, "proof": 84, "signature": 145}


class Lean:
    """One world's protocol computations, minimal; ``work=False`` skips them all (the skeleton)."""

    def __init__(self, iterations: int, work: bool) -> None:
        self.d, self.work = iterations, work
        self.tip, self.height = os.urandom(32), 0
        self.key = os.urandom(32)
        self.msgs = {k: os.urandom(n) for k, n in SIZES.items()}

    def encode(self, kind: str) -> bytes:
        m = self.msgs[kind]
        if self.work:
            head = HEADER.pack(0xA1770EE0, 1, 2, 0, self.height, 1, 7, 0x65, 0, 0, len(m) - HEADER_SIZE, 0)
            zlib.crc32(m[HEADER_SIZE:], zlib.crc32(head))
        return m

    def decode(self, m: bytes) -> None:
        if self.work:
            HEADER.unpack_from(m)
            zlib.crc32(m)

    def block(self, direction: int, m: bytes) -> None:
        if self.work:
            digest = hashlib.sha256(m[5:6] + m[16:32] + m[HEADER_SIZE:]).digest()
            self.height += 1
            self.tip = blk.next_block(self.tip, self.height, direction, 7, digest, self.d).hash

    def proof(self) -> None:
        if self.work:
            blk.proof([self.key] * blk.CHALLENGE_K, self.key[:16], self.key, 1, self.tip)

    # -- the normal world ----------------------------------------------------------------------

    def nw_sign(self) -> bytes:
        return self.encode("sign")

    def nw_proof(self, challenge: bytes) -> bytes:
        self.decode(challenge)
        self.block(blk.REQUEST, self.msgs["sign"])
        self.block(blk.RESPONSE, challenge)
        self.proof()
        out = self.encode("proof")
        self.block(blk.REQUEST, out)
        return out

    def nw_signature(self, signature: bytes) -> None:
        self.decode(signature)
        self.block(blk.RESPONSE, signature)

    # -- the secure world ----------------------------------------------------------------------

    def sw_challenge(self, sign: bytes) -> bytes:
        self.decode(sign)
        if self.work:
            secrets.token_bytes(8 * (4 * blk.CHALLENGE_K + 1))
            secrets.token_bytes(blk.NONCE_SIZE)
        out = self.encode("challenge")
        self.block(blk.REQUEST, sign)
        self.block(blk.RESPONSE, out)
        return out

    def sw_signature(self, proof: bytes) -> bytes:
        """Before the sign; ``sw_commit`` after it."""
        self.decode(proof)
        self.proof()
        return self.encode("signature")

    def sw_commit(self, proof: bytes, signature: bytes) -> None:
        self.block(blk.REQUEST, proof)
        self.block(blk.RESPONSE, signature)
        if self.work:
            for _slot in range(4):
                hmac.digest(self.key, signature[:96], "sha256")


def _take(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data
    return buf


def serve(sock_path: str, rpmb_path: str, cores: str, iterations: int, work: bool) -> None:
    import coincurve

    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    key = coincurve.PrivateKey()
    lean = Lean(iterations, work)
    fd = os.open(rpmb_path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 1 << 20)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    slots, i = os.urandom(512), 0
    try:
        while True:
            conn.sendall(lean.sw_challenge(_take(conn, SIZES["sign"])))
            proof = _take(conn, SIZES["proof"])
            out = lean.sw_signature(proof)
            sig = key.sign_recoverable(proof[-32:], hasher=None)
            lean.sw_commit(proof, out)
            os.pwrite(fd, slots, 1024 + (i % 256) * 512)
            os.fdatasync(fd)
            i += 1
            conn.sendall(sig + out[65:])
    except EOFError:
        pass


def measure(directory: Path, cores: list[int], n: int, iterations: int, work: bool) -> list[float]:
    """Latencies of n skeleton (work=False) or lean (work=True) handshakes."""
    path, rpmb, log = directory / "floor.sock", directory / "floor.rpmb", directory / "floor.log"
    path.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "serve", str(path), str(rpmb), ",".join(map(str, cores)),
                             str(iterations), "1" if work else "0"], stdout=subprocess.PIPE, text=True)
    fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    lean = Lean(iterations, work)
    try:
        proc.stdout.readline()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            off, lat = 0, []
            for _ in range(n):
                t = time.perf_counter()
                s.sendall(lean.nw_sign())
                proof = lean.nw_proof(_take(s, SIZES["challenge"]))
                os.pwrite(fd, bytes(384), off)  # SIGN, CHALLENGE and PROOF blocks, durable before PROOF
                os.fdatasync(fd)
                s.sendall(proof)
                lean.nw_signature(_take(s, SIZES["signature"]))
                os.pwrite(fd, bytes(128), off + 384)  # the signature's block
                off += 512
                lat.append(time.perf_counter() - t)
            return lat
    finally:
        os.close(fd)
        proc.kill()
        proc.wait()


def in_process(n: int, iterations: int) -> float:
    """Median seconds of both worlds' lean work for one handshake, in this process, warm."""
    nw, sw = Lean(iterations, True), Lean(iterations, True)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        proof = nw.nw_proof(sw.sw_challenge(nw.nw_sign()))
        out = sw.sw_signature(proof)
        sw.sw_commit(proof, out)
        nw.nw_signature(out)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "1")
