"""Our pytest plugin for the arm64 guest (there is no maintained pytest-qemu on PyPI).

The session-scoped ``guest`` fixture builds or reuses the guest image (scripts/qemu/build_guest.py,
cached under build/qemu by its inputs), boots it under QEMU, waits for its ready line and yields a
``Guest`` whose ``run(command, timeout)`` drives the serial console. When a test fails, the whole
console log is attached to its report. Figures (boot time, in-guest test times, peak memory) are
collected in ``guest_figures`` and written to build/qemu/figures.json at the end of the session.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "qemu"))

from build_guest import build  # noqa: E402
from guest import Guest  # noqa: E402

FIGURES: dict = {}


@pytest.fixture(scope="session")
def guest_figures() -> dict:
    return FIGURES


@pytest.fixture(scope="session")
def guest():
    t0 = time.monotonic()
    image = build(ROOT / "build" / "qemu")
    FIGURES["image_build_or_reuse_s"] = round(time.monotonic() - t0, 1)
    work = Path(tempfile.mkdtemp(prefix="aitn-guest-"))
    g = Guest(image, work)
    try:
        g.boot()
        FIGURES["boot_to_ready_s"] = round(g.boot_seconds, 2)
        FIGURES["guest_uptime_at_ready_s"] = round(g.guest_uptime_at_ready, 2)
        FIGURES["image"] = image.name
        yield g
    finally:
        g.shutdown()
        out = ROOT / "build" / "qemu" / "figures.json"
        out.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    g = item.funcargs.get("guest") if hasattr(item, "funcargs") else None
    if rep.failed and g is not None:
        rep.sections.append(("qemu console (whole log)", bytes(g.console_log).decode(errors="replace")))
