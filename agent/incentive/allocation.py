"""How a node turns a cycle's incentive into integer shares for its devices.

The node's allocation addition (whitepaper 3.2.3): grouping devices under one node saves
communication, a visible +20% at about 30 devices and about +50%, the limit, near 300. We use

    m(n) = 1 + A (1 - exp(-n / tau)),  A = 0.5, tau = 58.7,  capped at 1 + A = 1.5

which gives m(30) = 1.2002 and m(300) = 1.4970. ``n`` is the number of devices with an accepted
work-utility report in the cycle (the seed calibrates in devices). The pool is
floor(base x m_ppm / 10^6) token units, m_ppm = floor(m x 10^6), so rounding never takes the
node over its cap.

Shares are split by weight (a device's work utility, fixed + variable, or its variable part only,
the rule after the network's milestone) with the largest-remainder method in exact rational
arithmetic: every device gets floor(pool x w / W) and the units left over go one each to the
largest remainders (ties: lower address first). The shares always sum to the pool exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

from ..utility.errors import AllocationError

ADDITION = 0.5
TAU = 58.7
PPM = 1_000_000
RULES = ("utility", "variable")


def multiplier(n: int, addition: float = ADDITION, tau: float = TAU) -> float:
    if n < 0:
        raise AllocationError(f"device count {n} < 0")
    return min(1.0 + addition, 1.0 + addition * (1.0 - math.exp(-n / tau)))


def multiplier_ppm(n: int, addition: float = ADDITION, tau: float = TAU) -> int:
    return math.floor(multiplier(n, addition, tau) * PPM)


def pool(base: int, n: int, addition: float = ADDITION, tau: float = TAU) -> int:
    if base < 0:
        raise AllocationError(f"base {base} < 0")
    return base * multiplier_ppm(n, addition, tau) // PPM


@dataclass(frozen=True)
class Work:
    fixed: float
    variable: float


def weight(w: Work, rule: str) -> float:
    if rule == "utility":
        return w.fixed + w.variable
    if rule == "variable":
        return w.variable
    raise AllocationError(f"rule {rule!r}: one of {', '.join(RULES)}")


def split(total: int, weights: Mapping[bytes, float]) -> dict[bytes, int]:
    """Integer shares of ``total`` proportional to ``weights``, summing to ``total`` exactly.

    All weights zero (nobody did work that counts under the rule): every share is 0 and nothing is
    allocated; the caller records that.
    """
    if total < 0:
        raise AllocationError(f"total {total} < 0")
    for k, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise AllocationError(f"weight of 0x{k.hex()}: {w!r} is not a finite number >= 0")
    exact = {k: Fraction(w) for k, w in weights.items()}   # floats are exact binary fractions
    wsum = sum(exact.values(), Fraction(0))
    if wsum == 0:
        return dict.fromkeys(weights, 0)
    quotas = {k: total * w / wsum for k, w in exact.items()}
    shares = {k: math.floor(q) for k, q in quotas.items()}
    left = total - sum(shares.values())
    by_remainder = sorted(quotas, key=lambda k: (-(quotas[k] - shares[k]), k))
    for k in by_remainder[:left]:
        shares[k] += 1
    return shares
