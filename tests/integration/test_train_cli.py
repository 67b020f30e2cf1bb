"""`aitn train` end to end: real stored batches (simulator -> clean -> desensitize -> store), a real process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.train import job, quantize
from agent.train import weights as wcodec
from agent.train.client import initial_weights, l2_norm
from agent.train.manifest import spec_for
from support.datasets import build_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("train-home")
    manifests = build_store(home, records=60_000, batches=2, rate_hz=200.0)
    return home, [m.root for m in manifests]


def train(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "--home", str(home), "train", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_train_runs_a_round_and_saves_the_update(store_home):
    home, cids = store_home
    r = train(home, "--dataset", *cids, "--epochs", "2", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert {"model", "width", "datasets", "samples", "epochs", "loss_before", "loss_after", "seconds",
            "update_l2", "update_file", "quantized", "ldp"} <= set(m)
    assert m["model"] == "activity" and m["width"] == 1.0 and m["datasets"] == cids
    assert m["samples"] > 300 and m["epochs"] == 2 and m["steps"] == 2 * -(-m["samples"] // 32)
    assert m["loss_after"] < m["loss_before"]
    assert m["quantized"] is False and m["ldp"] is None
    from agent.utility.meters import Meters   # the run is on this cycle's work meters

    with Meters(home) as meters:
        trained = sum(meters.read(c)["trained_bytes"] for c in meters.cycles())
    assert m["feature_bytes"] > 0 and trained >= m["feature_bytes"] * 2
    assert len(m["scaler"]["mean"]) == len(m["scaler"]["std"]) == 16
    path = Path(m["update_file"])
    assert path.parent == home / "updates" and path.name.endswith("-activity-w1.update")
    spec = spec_for("activity", 1.0)
    update = wcodec.decode(path.read_bytes(), spec.tensor_shapes)
    assert l2_norm(update) == pytest.approx(m["update_l2"], rel=1e-9) and m["update_l2"] > 0
    assert json.loads(path.with_suffix(".json").read_text()) == dict(m, total_seconds=m["total_seconds"])
    # the update file is a usable delta: global + update gives finite local weights
    local = [g + u for g, u in zip(initial_weights("activity", 1.0), update)]
    assert all(np.isfinite(t).all() for t in local)


def test_quantized_round_from_a_global_file_at_half_width(store_home, tmp_path):
    home, cids = store_home
    glob = [w * np.float32(0.5) for w in initial_weights("anomaly", 0.5)]
    gfile = tmp_path / "global.weights"
    gfile.write_bytes(wcodec.encode(glob))
    r = train(home, "--dataset", cids[0], "--model", "anomaly", "--width", "0.5", "--global", str(gfile),
              "--quantize", "--seed", "1", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["quantized"] is True and m["model"] == "anomaly" and m["global"] == str(gfile)
    data = Path(m["update_file"]).read_bytes()
    assert data[:4] == quantize.MAGIC
    spec = spec_for("anomaly", 0.5)
    q = quantize.decode(data, spec.tensor_shapes)
    back = job.read_update(Path(m["update_file"]), spec.tensor_shapes)
    assert l2_norm(back) == pytest.approx(m["update_l2"], rel=0.05)
    assert all(np.abs(t).max() <= s * 127 * (1 + 1e-6) for t, s in zip(back, q.scales))


@pytest.mark.skipif(importlib.util.find_spec("dp_accounting") is None,
                    reason="dp-accounting (the `ldp` extra) not installed (left out of the arm64 guest)")
def test_ldp_rounds_accumulate_epsilon_in_the_ledger(store_home, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(store_home[0], home)
    cids = store_home[1]
    eps = []
    for _ in range(2):
        r = train(home, "--dataset", *cids, "--ldp-clip", "0.5", "--ldp-noise", "1.1", "--ldp-delta", "1e-5",
                  "--json")
        assert r.returncode == 0, r.stderr
        led = json.loads(r.stdout)["ldp"]
        assert led["clip"] == 0.5 and led["noise_multiplier"] == 1.1 and led["delta"] == 1e-5
        eps.append((led["rounds"], led["epsilon"]))
    from agent.train.ldp import epsilon
    assert eps == [(1, epsilon({1.1: 1}, 1e-5)), (2, epsilon({1.1: 2}, 1e-5))]
    assert (home / "train" / "ldp-ledger.json").exists()


def test_bad_requests_exit_with_typed_codes(store_home, tmp_path):
    home, cids = store_home
    r = train(home, "--dataset", cids[0], "--ldp-clip", "1")
    assert r.returncode == 1 and "--ldp-noise" in r.stderr
    bad = tmp_path / "bad.weights"
    bad.write_bytes(wcodec.encode(initial_weights("activity", 0.5)))
    r = train(home, "--dataset", cids[0], "--global", str(bad))           # width 0.5 weights for width 1
    assert r.returncode == 62, r.stderr
    r = train(home, "--dataset", "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    assert r.returncode != 0 and "no dataset" in r.stderr
