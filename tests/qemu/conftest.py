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
def guest_image() -> Path:
    t0 = time.monotonic()
    image = build(ROOT / "build" / "qemu")
    FIGURES["image_build_or_reuse_s"] = round(time.monotonic() - t0, 1)
    FIGURES["image"] = image.name
    yield image
    (ROOT / "build" / "qemu" / "figures.json").write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def _booted(image: Path, machine: str):
    g = Guest(image, Path(tempfile.mkdtemp(prefix=f"aitn-guest-{machine}-")), machine=machine)
    try:
        g.boot()
        FIGURES.setdefault(machine, {}).update(boot_to_ready_s=round(g.boot_seconds, 2),
                                               guest_uptime_at_ready_s=round(g.guest_uptime_at_ready, 2))
        yield g
    finally:
        g.shutdown()


def pytest_collection_modifyitems(items):
    for item in items:  # booting and building take longer than the suite's default timeout
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(900))


@pytest.fixture(scope="session")
def guest(guest_image):
    """The CI board: QEMU's virt machine (board_configs/qemu-virt.toml)."""
    yield from _booted(guest_image, "virt")


@pytest.fixture(scope="module")
def raspi_guest(guest_image):
    """QEMU's raspi3b machine with the Raspberry Pi 3 B device tree (board_configs/qemu-raspi3b.toml)."""
    yield from _booted(guest_image, "raspi3b")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    for name in ("guest", "raspi_guest"):
        g = funcargs.get(name)
        if rep.failed and g is not None:
            rep.sections.append((f"qemu console of {name} (whole log)", bytes(g.console_log).decode(errors="replace")))
