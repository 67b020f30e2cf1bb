"""bench/handshake_floor.py: the skeleton and lean handshakes the benchmark compares against."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("handshake_floor", ROOT / "bench" / "handshake_floor.py")
floor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floor)


def _one_handshake(nw, sw) -> None:
    proof = nw.nw_proof(sw.sw_challenge(nw.nw_sign()))
    out = sw.sw_signature(proof)
    sw.sw_commit(proof, out)
    nw.nw_signature(out)


def test_the_lean_worlds_compute_a_block_per_message_and_the_skeleton_none():
    nw, sw = floor.Lean(2, True), floor.Lean(2, True)
    tips = (nw.tip, sw.tip)
    _one_handshake(nw, sw)
    assert (nw.height, sw.height) == (4, 4)  # both worlds hold a block for each of the 4 messages
    assert nw.tip != tips[0] and sw.tip != tips[1]
    nw, sw = floor.Lean(2, False), floor.Lean(2, False)
    tips = (nw.tip, sw.tip)
    _one_handshake(nw, sw)
    assert (nw.height, sw.height, nw.tip, sw.tip) == (0, 0, *tips)


def test_the_messages_have_the_sizes_of_the_real_frames():
    from tee_sim.abi import block as blk
    from tee_sim.abi import frame
    from tee_sim.abi.frame import Frame, Kind, Value
    from tee_sim.abi.ids import CMD_PARAMS, Cmd

    d = os.urandom(32)
    challenge = blk.Challenge(os.urandom(blk.NONCE_SIZE), (1, 2, 3, 4)).encode()
    real = {"sign": Frame(Kind.INVOKE, 1, 1, int(Cmd.SIGN), CMD_PARAMS[Cmd.SIGN], (d, Value(1, 0), 2057, None)),
            "challenge": Frame(Kind.INVOKE | Kind.RESPONSE, 1, 1, int(Cmd.SIGN), CMD_PARAMS[Cmd.SIGN],
                               (None, None, challenge, None)),
            "proof": Frame(Kind.INVOKE, 2, 1, int(Cmd.PROOF), CMD_PARAMS[Cmd.PROOF], (d, 65, 32, None)),
            "signature": Frame(Kind.INVOKE | Kind.RESPONSE, 2, 1, int(Cmd.PROOF), CMD_PARAMS[Cmd.PROOF],
                               (None, os.urandom(65), d, None))}
    assert {k: len(frame.encode(f)) for k, f in real.items()} == floor.SIZES


def test_skeleton_and_lean_handshakes_run_between_two_processes(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    for work in (False, True):
        lat = floor.measure(tmp_path, cores, 20, 2, work)
        assert len(lat) == 20 and all(0 < t < 5 for t in lat)
