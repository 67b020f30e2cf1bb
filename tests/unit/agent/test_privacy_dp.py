"""Noise mechanisms, their calibration, the stated sensitivities, and spend-before-release."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ingest.frames import RecordType
from agent.privacy import dp
from agent.privacy.budget import PrivacyBudget
from agent.privacy.errors import BudgetExhausted
from agent.records.schema import Table

SPEC = dp.AggregateSpec(epsilon=0.5, delta=0.0, mechanism="laplace", battery_v=(0.0, 60.0), motor_a=(-20.0, 20.0),
                        max_step_m=2.0)


def test_calibration_formulas():
    assert dp.laplace_scale(2.0, 0.5) == 4.0
    assert dp.gaussian_sigma(1.0, 0.5, 1e-5) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) / 0.5)
    with pytest.raises(ValueError, match="epsilon <= 1"):
        dp.gaussian_sigma(1.0, 1.5, 1e-5)
    for bad in ((1.0, 0.5, 0.0), (1.0, 0.5, 1.0), (0.0, 0.5, 1e-5)):
        with pytest.raises(ValueError):
            dp.gaussian_sigma(*bad)
    with pytest.raises(ValueError):
        dp.laplace_scale(1.0, 0.0)


def test_laplace_noise_has_the_calibrated_scale_and_is_snapped():
    rng = np.random.default_rng(7)
    b = dp.laplace_scale(1.0, 0.25)  # 4
    out = dp.laplace(np.zeros(200_000), 1.0, 0.25, rng)
    assert abs(out.mean()) < 0.1
    # Var(Laplace(b)) = 2 b^2; rounding to a grain of 4 adds about 4^2 / 12.
    assert out.var() == pytest.approx(2 * b * b + 16 / 12, rel=0.03)
    assert np.all(out % 4.0 == 0)  # multiples of the power of two >= b


def test_gaussian_noise_has_the_calibrated_sigma():
    rng = np.random.default_rng(8)
    sigma = dp.gaussian_sigma(1.0, 0.5, 1e-5)
    out = dp.gaussian(np.full(200_000, 10.0), 1.0, 0.5, 1e-5, rng)
    grain = 2.0 ** math.ceil(math.log2(sigma))
    assert out.mean() == pytest.approx(10.0, abs=0.2)
    assert out.std() == pytest.approx(math.sqrt(sigma ** 2 + grain ** 2 / 12), rel=0.03)


def test_secure_rng_is_seeded_from_the_os():
    a, b = dp.secure_rng(), dp.secure_rng()
    assert isinstance(a, np.random.Generator) and a.integers(1 << 62) != b.integers(1 << 62)


@pytest.mark.parametrize("kwargs,match", [
    ({"mechanism": "exponential"}, "mechanism"),
    ({"delta": 1e-6}, "Laplace mechanism has delta = 0"),
    ({"mechanism": "gaussian", "delta": 0.0}, "0 < delta < 1"),
    ({"mechanism": "gaussian", "delta": 1e-6, "epsilon": 6.0}, "epsilon <= 1 per query"),
    ({"epsilon": 0.0}, "epsilon must be > 0"),
    ({"battery_v": (5.0, 5.0)}, "battery_v bounds"),
    ({"max_step_m": 0.0}, "max_step_m"),
])
def test_spec_validation(kwargs, match):
    base = dict(epsilon=0.5, delta=0.0, mechanism="laplace", battery_v=(0.0, 60.0), motor_a=(-20.0, 20.0),
                max_step_m=2.0)
    with pytest.raises(ValueError, match=match):
        dp.AggregateSpec(**{**base, **kwargs})


# -- tables and the stated sensitivities --------------------------------------------------------------

@st.composite
def tables(draw, min_rows=1):
    n = draw(st.integers(min_rows, 25))
    t = Table.empty(n)
    c = t.columns
    rtypes = draw(st.lists(st.sampled_from([int(r) for r in RecordType]), min_size=n, max_size=n))
    c["rtype"][:] = rtypes
    big = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1.0, 3.0]))  # repeats: A -> B -> A paths
    for i, r in enumerate(rtypes):
        c["task_id"][i] = draw(st.integers(-1, 4))
        if r == RecordType.POSE:
            c["x_m"][i], c["y_m"][i] = draw(big), draw(big)
        elif r == RecordType.BATTERY:
            c["battery_v"][i] = draw(st.one_of(big, st.just(np.nan)))
        elif r == RecordType.MOTORS:
            k = draw(st.integers(0, 8))
            c["motor_a"][i, :k] = draw(st.lists(big, min_size=k, max_size=k))
        elif r == RecordType.FAULT:
            c["fault"][i] = draw(st.integers(0, 100))
    return t


@settings(max_examples=300, deadline=None)
@given(tables(min_rows=2), st.data())
def test_removing_one_row_moves_each_answer_by_at_most_its_stated_sensitivity(t, data):
    i = data.draw(st.integers(0, len(t) - 1))
    neighbour = t.take(np.arange(len(t)) != i)
    a, b = dp.true_answers(t, SPEC), dp.true_answers(neighbour, SPEC)
    sens = dp.sensitivities(SPEC)
    for q in dp.QUERIES:
        moved = float(np.abs(a[q] - b[q]).sum())  # L1 (= L2 for these: one coordinate moves)
        assert moved <= sens[q] * (1 + 1e-9) + 1e-6, (q, moved, sens[q])


def test_the_sensitivity_bound_is_tight_for_the_distance():
    t = Table.empty(3)
    t.columns["rtype"][:] = RecordType.POSE
    t.columns["x_m"][:] = [0.0, 10.0, 0.0]
    t.columns["y_m"][:] = 0.0
    assert float(dp.true_answers(t, SPEC)["distance_m"]) == 4.0  # two steps clipped to 2 m
    assert float(dp.true_answers(t.take(np.array([0, 2])), SPEC)["distance_m"]) == 0.0


# -- release ------------------------------------------------------------------------------------------

def _budget(tmp_path, total=1.0, delta=0.0):
    return PrivacyBudget(tmp_path / "budget.json", total, delta)


def test_release_spends_first_and_reports_each_value(tmp_path):
    t = Table.empty(4)
    t.columns["rtype"][:] = [RecordType.BATTERY, RecordType.BATTERY, RecordType.FAULT, RecordType.MOTORS]
    t.columns["battery_v"][:2] = [24.0, 26.0]
    t.columns["motor_a"][3, :2] = [1.0, 3.0]
    budget = _budget(tmp_path, total=1e6)
    spec = dp.AggregateSpec(1e5, 0.0, "laplace", (0.0, 60.0), (-20.0, 20.0), 2.0)  # huge epsilon: near-exact
    rel = dp.release_aggregates(t, spec, budget, np.random.default_rng(1), label="batch-1")
    v = rel.values
    assert v["count.BATTERY"].value == pytest.approx(2, abs=0.01) and v["faults"].value == pytest.approx(1, abs=0.01)
    assert v["battery_v_mean"].value == pytest.approx(25.0, abs=0.01)
    assert v["motor_a_mean"].value == pytest.approx(2.0, abs=0.01)
    assert v["count.BATTERY"].epsilon == pytest.approx(1e5 / 5) and v["faults"].epsilon == 0.0
    assert v["battery_v_mean"].sensitivity == 30.0 and v["distance_m"].sensitivity == 4.0
    assert budget.state().spent_epsilon == 1e5 and budget.state().tail[-1]["label"] == "batch-1"
    assert rel.to_json()["values"]["tasks"]["mechanism"] == "laplace"


def test_values_are_noisy_at_a_real_epsilon(tmp_path):
    t = Table.empty(1000)
    t.columns["rtype"][:] = RecordType.IMU
    spec = dp.AggregateSpec(0.05, 0.0, "laplace", (0.0, 60.0), (-20.0, 20.0), 2.0)  # b = 100 per count
    outs = [dp.release_aggregates(t, spec, _budget(tmp_path, 100.0)).values["count.IMU"].value for _ in range(20)]
    # P(20 equal draws) < 1e-6; P(|noise| > 2000) = e^-20.
    assert len(set(outs)) > 1 and all(abs(o - 1000) < 2000 for o in outs)


def test_an_exhausted_budget_refuses_before_anything_is_computed(tmp_path, monkeypatch):
    budget = _budget(tmp_path, total=1.0)
    t = Table.empty(3)
    dp.release_aggregates(t, SPEC, budget)
    dp.release_aggregates(t, SPEC, budget)

    def boom(*a, **k):
        raise AssertionError("computed before spending")

    monkeypatch.setattr(dp, "true_answers", boom)
    with pytest.raises(BudgetExhausted) as e:
        dp.release_aggregates(t, SPEC, budget, label="third")
    msg = str(e.value)
    assert "spent epsilon 1 of 1" in msg and "asks epsilon 0.5" in msg and "'third'" in msg
    assert "raise [budget].epsilon_total" in msg and e.value.exit_code == 42
    assert budget.state().spent_epsilon == 1.0 and budget.state().releases == 2


def test_gaussian_release_spends_delta(tmp_path):
    spec = dp.AggregateSpec(1.0, 1e-6, "gaussian", (0.0, 60.0), (-20.0, 20.0), 2.0)
    budget = _budget(tmp_path, total=1.0, delta=1e-6)
    rel = dp.release_aggregates(Table.empty(2), spec, budget)
    assert rel.values["tasks"].delta == pytest.approx(2e-7) and budget.remaining == (0.0, 0.0)
    with pytest.raises(BudgetExhausted):
        dp.release_aggregates(Table.empty(2), spec, budget)
