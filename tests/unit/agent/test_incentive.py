"""The node's allocation (multiplier, exact shares, signed statement) and the reward schedule."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.incentive import allocation as alloc
from agent.incentive import schedule, statement
from agent.utility.errors import AllocationError
from tests.support.soft_device import SoftDevice


def test_multiplier_anchor_points_and_cap():
    assert alloc.multiplier(0) == 1.0
    assert alloc.multiplier(30) == pytest.approx(1.20, abs=0.001)     # "an obvious +20 % at about 30 devices"
    assert alloc.multiplier(300) == pytest.approx(1.497, abs=0.001)   # "about +50 %, the limit, near 300"
    assert all(alloc.multiplier(n) < alloc.multiplier(n + 1) for n in range(0, 400))
    assert alloc.multiplier(10**6) == 1.5 and alloc.multiplier_ppm(10**6) == 1_500_000
    # even a larger addition parameter cannot pass its own cap
    assert alloc.multiplier(10**6, addition=0.7) == 1.7
    assert alloc.pool(10**18, 30) == 10**18 * alloc.multiplier_ppm(30) // 10**6
    with pytest.raises(AllocationError):
        alloc.multiplier(-1)


def test_split_sums_exactly_with_awkward_weights():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 300)
        weights = {i.to_bytes(20, "big"): rng.choice([0.0, rng.random(), rng.random() * 1e-12, 1 / 3])
                   for i in range(n)}
        total = rng.choice([0, 1, 7, 10**18, 3 * 10**24 + 1])
        shares = alloc.split(total, weights)
        if any(weights.values()):
            assert sum(shares.values()) == total
        else:
            assert set(shares.values()) == {0}
        assert all(s >= 0 for s in shares.values())
        assert all(shares[k] == 0 for k, w in weights.items() if w == 0)


def test_split_is_proportional_within_one_unit_and_breaks_ties_by_address():
    shares = alloc.split(10, {b"\x02" * 20: 1.0, b"\x01" * 20: 1.0, b"\x03" * 20: 1.0})
    assert shares == {b"\x01" * 20: 4, b"\x02" * 20: 3, b"\x03" * 20: 3}
    shares = alloc.split(1000, {b"a" * 20: 3.0, b"b" * 20: 1.0})
    assert shares == {b"a" * 20: 750, b"b" * 20: 250}
    with pytest.raises(AllocationError):
        alloc.split(10, {b"a" * 20: float("nan")})


def test_variable_rule_ignores_the_fixed_part():
    w = alloc.Work(fixed=0.6, variable=0.0)
    assert alloc.weight(w, "utility") == 0.6 and alloc.weight(w, "variable") == 0.0
    with pytest.raises(AllocationError):
        alloc.weight(w, "seniority")


def _statement(key, n=3):
    work = {SoftDevice().addr: alloc.Work(0.648, 1e-6 * i) for i in range(n)}
    msg = statement.build(node=key.addr, cycle=5, cycle_s=60.0, rule="utility", base=10**21, work=work, t=1.0)
    msg["sig"] = key.sign(statement.digest(msg))
    return msg


def test_statement_verifies_and_refuses_alterations():
    key = SoftDevice()   # signs as the node key does
    msg = _statement(key)
    data = statement.encode(msg)
    got = statement.verify(data, key.addr)
    assert sum(r[3] for r in got["shares"]) == got["total"] == got["pool"]
    with pytest.raises(AllocationError, match="names node"):
        statement.verify(data, SoftDevice().addr)         # not the node we expect
    forged = dict(msg, sig=SoftDevice().sign(statement.digest(msg)))
    with pytest.raises(AllocationError, match="signature"):
        statement.verify(statement.encode(forged), key.addr)   # signed by someone else
    bumped = dict(msg, shares=[list(r) for r in msg["shares"]])
    bumped["shares"][0][3] += 1
    bumped["shares"][1][3] -= 1
    with pytest.raises(AllocationError, match="signature"):
        statement.verify(statement.encode(bumped), key.addr)
    bumped["sig"] = key.sign(statement.digest(bumped))    # even signed by the node, the arithmetic must hold
    with pytest.raises(AllocationError, match="shares"):
        statement.verify(statement.encode(bumped), key.addr)
    unsigned = {k: v for k, v in msg.items() if k != "sig"}
    with pytest.raises(AllocationError, match="not signed"):
        statement.verify(statement.encode(unsigned), key.addr)


# -- the reward schedule -----------------------------------------------------------------------------

def test_schedule_table_has_the_seed_parameters():
    p = schedule.load()
    assert p.total_supply == 2_000_000_000 and p.training_reserve == 1_000_000_000
    assert p.cycle_hours == 24 and p.milestone_wu == 1_000_000 and p.halving_cycles == 3 * 365


def test_jump_up_before_the_milestone_then_halving_every_three_years():
    p = schedule.load()
    peak = p.peak_per_cycle * p.unit
    path = [50.0] * 10 + [5e4] * 10 + [1e6] + [1.0] * (2 * p.halving_cycles + 5)   # network drops after: no matter
    out = list(schedule.emissions(p, path))
    assert out[0] == peak // 32 and out[10] == peak // 4
    m = 20                                                 # the milestone's cycle
    assert out[m] == peak and out[m + p.halving_cycles - 1] == peak
    assert out[m + p.halving_cycles] == peak // 2 and out[m + 2 * p.halving_cycles] == peak // 4


@pytest.mark.parametrize("seed", range(5))
def test_emission_never_exceeds_the_reserve(seed):
    p = schedule.load()
    rng = random.Random(seed)
    e = schedule.Emission(p)
    # a long, slow climb to the milestone spends the jump-up's share; then decades of halvings
    for _ in range(rng.randint(500, 3000)):
        e.next(rng.choice([5e4, 2e5, 9e5]))
    for _ in range(40 * 365):
        e.next(2e6)
        assert e.emitted <= p.reserve_units
    assert e.emitted <= p.reserve_units
    assert e.next(2e6) <= p.reserve_units - e.emitted + 1


def test_schedule_table_errors_name_the_key(tmp_path):
    text = schedule.TABLE.read_text()
    bad = tmp_path / "s.toml"
    bad.write_text(text.replace("peak_per_cycle = 400_000", "peak_per_cycle = 900_000"))
    with pytest.raises(AllocationError, match="peak_per_cycle"):
        schedule.load(bad)
    bad.write_text(text.replace("halving_years = 3", "halving_years = 0"))
    with pytest.raises(AllocationError, match="halving_years"):
        schedule.load(bad)
    bad.write_text(text + "\nextra = 1\n")
    with pytest.raises(AllocationError, match="extra"):
        schedule.load(bad)
    assert schedule.load(Path(schedule.TABLE)) == schedule.load()
