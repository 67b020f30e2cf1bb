"""Power loss at every step of a handshake: SIGKILL either world, restart it, reconcile without re-pairing.

A relay between the worlds kills the chosen process at the chosen frame (and drops that frame, as
a power cut would). After every kill the test checks the two promises of the durability design:

1. the pairing survives: a fresh normal-world process syncs and signs, with the same pairing id;
2. no signature ever leaves the secure world for an exchange that is not durably recorded on both
   sides: every successful PROOF answer the relay saw is, after reconciliation, a block of the
   normal world's chain at or below the secure world's committed height.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.tee.chainlog import ChainLog
from conftest import tee_status
from support.relay import Relay
from tee_sim.abi import block as blk
from tee_sim.abi import frame
from tee_sim.abi.ids import Cmd, TeecResult

WORKER = Path(__file__).resolve().parents[1] / "support" / "nw_worker.py"

# (victim, outbound frame?, command): kill the victim when this frame passes, and drop the frame.
KILL_POINTS = [
    ("nw", True, Cmd.SYNC),  # sync request in flight
    ("nw", False, Cmd.SYNC),  # secure world synced, answer lost
    ("nw", True, Cmd.SIGN),  # SIGN in flight
    ("nw", False, Cmd.SIGN),  # challenge issued (tentative), answer lost
    ("nw", True, Cmd.PROOF),  # proof durable in the normal world, not yet received
    ("nw", False, Cmd.PROOF),  # committed and signed, the signature never reaches the normal world
    ("tee", True, Cmd.SYNC),
    ("tee", True, Cmd.SIGN),
    ("tee", False, Cmd.SIGN),  # secure world dies with a tentative challenge
    ("tee", True, Cmd.PROOF),  # secure world dies before checking the proof
    ("tee", False, Cmd.PROOF),  # secure world committed, signed, and died before the answer left
]


class Harness:
    def __init__(self, tee, home: Path, workdir: Path) -> None:
        self.tee, self.home = tee, home
        self.armed: tuple | None = None
        self.countdown = 0
        self.worker: subprocess.Popen | None = None
        self.kills = 0
        self.relay = Relay(workdir / "relay.sock", tee.sock, self._hook)

    def _hook(self, outbound: bool, raw: bytes) -> bytes | None:
        if self.armed is None:
            return raw
        victim, direction, cmd = self.armed
        f = frame.decode(raw)
        if outbound != direction or f.command != cmd or f.kind & ~frame.Kind.RESPONSE != frame.Kind.INVOKE:
            return raw
        if self.countdown > 0:
            self.countdown -= 1
            return raw
        self.armed = None
        if victim == "tee":
            self.tee.kill()
        else:
            self.worker.kill()
        self.kills += 1
        return None  # the frame dies with the power

    def run_worker(self, count: int, capture: bool = True) -> subprocess.Popen:
        out = subprocess.PIPE if capture else subprocess.DEVNULL  # a long run would fill a pipe
        self.worker = subprocess.Popen([sys.executable, str(WORKER), "--tee", self.relay.url, "--home",
                                        str(self.home), "--count", str(count)],
                                       stdout=out, stderr=out, text=True)
        return self.worker

    def cycle(self, point: tuple, countdown: int) -> None:
        self.armed, self.countdown = point, countdown
        w = self.run_worker(count=countdown + 3)
        w.wait(60)
        assert self.armed is None, f"kill point {point} was never reached: {w.stderr.read()}"
        if not self.tee.alive():
            self.tee.start()
        self.check_recovers()

    def check_recovers(self) -> None:
        w = self.run_worker(count=1)
        out, err = w.communicate(timeout=60)
        assert w.returncode == 0, f"no recovery after a kill: {err}"
        lines = [json.loads(x) for x in out.splitlines()]
        assert "synced" in lines[0] and "signature" in lines[-1]

    def released(self) -> list[bytes]:
        return [raw for outbound, raw in list(self.relay.seen)
                if not outbound and frame.decode(raw).command == Cmd.PROOF
                and frame.decode(raw).result == TeecResult.SUCCESS]

    def check_invariant(self, pairing_id: bytes) -> None:
        committed = tee_status(self.tee.url)["committed_height"]
        with ChainLog.open(self.home / "chain.log") as chain:
            assert chain.pairing_id == pairing_id, "the pairing was replaced"
            chain.verify()
            recorded = {(r.body_digest, r.height) for r in chain.records() if r.direction == blk.RESPONSE
                        and r.command == Cmd.PROOF}
            assert chain.head.height == committed
        digests = {d: h for d, h in recorded}
        released = self.released()
        assert released
        for raw in released:
            d = blk.message_digest(raw)
            assert d in digests, "a released signature is not recorded in the normal world's chain"
            assert digests[d] <= committed


@pytest.fixture
def harness(tee, home, paired, workdir):
    h = Harness(tee, home, workdir)
    yield h
    if h.worker and h.worker.poll() is None:
        h.worker.kill()
    h.relay.close()


@pytest.mark.parametrize("point", KILL_POINTS, ids=lambda p: f"{p[0]}-{'out' if p[1] else 'in'}-{p[2].name}")
def test_kill_at_every_step(harness, paired, point):
    for countdown in (0, 1, 2):  # the first, second and third handshake of a process
        if point[2] == Cmd.SYNC and countdown:
            continue  # one SYNC per process
        harness.cycle(point, countdown)
    harness.check_invariant(paired.pairing_id)


@pytest.mark.slow
def test_random_kills(harness, paired, tee):
    """SIGKILL at random moments (inside writes and fsyncs too), many times."""
    rng = random.Random(1234)
    for _ in range(40):
        w = harness.run_worker(count=10_000, capture=False)
        time.sleep(rng.uniform(0.35, 0.9))  # the worker spends about 0.3 s importing
        if rng.random() < 0.5:
            tee.kill()
            w.wait(30)
            tee.start()
        else:
            w.kill()
            w.wait(30)
        harness.check_recovers()
    harness.check_invariant(paired.pairing_id)
