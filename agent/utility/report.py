"""The cycle report: fixed part, variable part and the raw meters, and the node's check of it.

Variable part (whitepaper 3.2.2): the bytes of data produced or processed per second, times the
difference of the actual work time and the channel communication time:

    B = produced + cleaned + desensitized + trained bytes,  W = work_s,  C = comm_s (part of W)
    variable (WU) = (B / W) x (W - C) / 1e15            (0 when W = 0)

i.e. the cycle's bytes scaled by the share of working time not spent talking to the node.

The node recomputes everything it can: the fixed part from the capacity the device enrolled
with, the variable part from the meters, and it refuses a cycle that has not ended, a
communication time above the work time, and a throughput above the device's own theoretical rate.
"""

from __future__ import annotations

import math

from . import capacity as cap_mod
from .errors import ReportRefused
from .meters import NAMES, WORK_BYTES, check_values

#: Relative tolerance when the node recomputes a float the device computed (the same formula, the
#: same IEEE doubles: only the order of a few operations may differ).
REL_TOL = 1e-9
#: How far ahead of the node's clock a device's cycle end may be (clock skew): 5 minutes, or a tenth
#: of a short cycle.
CLOCK_SKEW_S = 300.0


def variable_wu(meters: dict[str, float]) -> float:
    work = meters.get("work_s", 0.0)
    if work <= 0:
        return 0.0
    b = sum(meters.get(k, 0.0) for k in WORK_BYTES)
    comm = min(meters.get("comm_s", 0.0), work)
    return (b / work) * (work - comm) / cap_mod.WU_BYTES


def build(cycle: int, cycle_s: float, capacity: float, meters: dict[str, float]) -> dict:
    """The report payload (agent/uplink/messages.py 'report' schema)."""
    check_values(meters)
    return {"cycle": cycle, "cycle_s": float(cycle_s), "fixed": cap_mod.fixed_wu(capacity, cycle_s),
            "variable": variable_wu(meters), "meters": {k: float(meters.get(k, 0.0)) for k in NAMES}}


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-30)


def check(report: dict, *, capacity: float, cycle_s: float, now: float) -> None:
    """The node's check of a schema-valid report from a device enrolled with ``capacity``. Raises ReportRefused."""
    if report["cycle_s"] != cycle_s:
        raise ReportRefused(f"{report['cycle_s']:g} s cycles; this node's are {cycle_s:g} s", "report.cycle_s")
    end = (report["cycle"] + 1) * cycle_s
    if end > now + min(CLOCK_SKEW_S, cycle_s / 10):
        raise ReportRefused(f"cycle {report['cycle']} ends at {end:.0f}, after the node's clock {now:.0f}",
                            "report.cycle")
    meters = report["meters"]
    if set(meters) != set(NAMES):
        missing, extra = sorted(set(NAMES) - set(meters)), sorted(set(meters) - set(NAMES))
        raise ReportRefused(f"meters must be exactly {', '.join(NAMES)} (missing {missing}, unknown {extra})",
                            "report.meters")
    try:
        check_values(meters)
    except Exception as e:
        raise ReportRefused(str(e), "report.meters") from None
    if meters["comm_s"] > meters["work_s"]:
        raise ReportRefused(f"communication time {meters['comm_s']:g} s above work time {meters['work_s']:g} s",
                            "report.meters.comm_s")
    expected = cap_mod.fixed_wu(capacity, cycle_s)
    if not _close(report["fixed"], expected):
        raise ReportRefused(f"fixed part {report['fixed']!r} WU; the enrolled capacity {capacity:g} gives "
                            f"{expected!r}", "report.fixed")
    if meters["work_s"] > 0:
        rate = sum(meters[k] for k in WORK_BYTES) / meters["work_s"]
        limit = capacity * cap_mod.REFERENCE_RATE
        if rate > limit:
            raise ReportRefused(f"{rate:.4g} B/s of work is above the device's theoretical {limit:.4g} B/s",
                                "report.meters")
    elif any(meters[k] for k in WORK_BYTES):
        raise ReportRefused("bytes of work with no work time", "report.meters.work_s")
    if not _close(report["variable"], variable_wu(meters)):
        raise ReportRefused(f"variable part {report['variable']!r} WU; the meters give {variable_wu(meters)!r}",
                            "report.variable")
