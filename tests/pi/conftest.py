"""The Pi-like arm64 guest (systemd from a disk) for tests/pi: `make pi-test`, i.e. pytest tests/pi --pi.

Without ``--pi`` (that is, in ``make test``) the tests here are deselected: they need root, QEMU,
mmdebstrap and about ten minutes.

Fixtures:

- ``pi_image``: build_pi_image.py's image, built or reused (build/pi/<key>/).
- ``pi_debs``: the packages the tests install, by role: ``base`` (the working tree's version),
  ``next`` (the same tree as the next patch version) and ``broken`` (``next`` + 1, repacked from
  ``next`` with a secure world that exits 1 at once). ``make pi-test`` builds the first two into
  build/pi/debs (gzip: the same contents as xz, built in seconds); the fixture builds whatever is
  missing and makes ``broken`` itself.
- ``pi``: one ``PiGuest`` for the module, the packages written into its disk before the first boot
  (debugfs: seconds, where the emulated network takes half a minute for 35 MB).
- ``pi_figures``: timings, written to build/pi/figures.json at the end.

When a test fails, the whole console log (every boot) is attached to its report.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts" / "qemu"))

DEBS = ROOT / "build" / "pi" / "debs"
FIGURES: dict = {}
#: What replaces the broken release's tee_sim/__main__.py: the secure world exits 1 before READY=1.
BROKEN_MAIN = 'import sys\nsys.exit("aitn-agent: deliberately broken build for tests/pi (exits 1 at once)")\n'


def pytest_addoption(parser):
    parser.addoption("--pi", action="store_true", default=False,
                     help="run tests/pi: install, boot, provision, reboot, upgrade and roll back the Debian "
                          "package in a systemd arm64 guest (make pi-test)")


def pytest_collection_modifyitems(config, items):
    ours = [i for i in items if HERE in Path(str(i.fspath)).parents]
    if not ours:
        return
    if not config.getoption("--pi", default=False):
        config.hook.pytest_deselected(items=ours)
        items[:] = [i for i in items if i not in ours]
        return
    for item in ours:  # booting and installing take longer than the suite's default timeout
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(900))


def base_version() -> str:
    init = (ROOT / "agent" / "__init__.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', init).group(1)


def bump(version: str, by: int) -> str:
    major, minor, patch = (re.match(r"(\d+)\.(\d+)\.(\d+)", version).groups())
    return f"{major}.{minor}.{int(patch) + by}"


def deb_path(version: str) -> Path:
    return DEBS / f"aitn-agent_{version}_arm64.deb"


def build_deb(version: str) -> Path:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "deb" / "build_deb.py"), "--version", version,
                    "--out", str(DEBS), "--compression", "gzip"], check=True, stdout=subprocess.DEVNULL)
    return deb_path(version)


def make_broken(good: Path, version: str) -> Path:
    """``good`` unpacked with dpkg-deb -R, its secure world replaced by one that exits 1, repacked as ``version``."""
    dest = deb_path(version)
    with tempfile.TemporaryDirectory(prefix="aitn-broken-", dir=DEBS) as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-R", str(good), str(tree)], check=True)
        old = re.search(r"^Version: (\S+)$", (tree / "DEBIAN" / "control").read_text(), re.M).group(1)
        release = tree / "opt" / "aitn-agent" / "releases" / old
        site = next((release / "lib").glob("python3*/site-packages"))
        main = site / "tee_sim" / "__main__.py"
        main.write_text(BROKEN_MAIN)
        for pyc in (site / "tee_sim" / "__pycache__").glob("__main__.*.pyc"):
            pyc.unlink()
        release.rename(release.parent / version)
        # Every path and script that names the version follows it (as build_deb.py would write them).
        for rel in ("control", "md5sums", "preinst", "postinst", "prerm", "postrm"):
            f = tree / "DEBIAN" / rel
            if f.exists():
                f.write_text(f.read_text().replace(f"releases/{old}/", f"releases/{version}/")
                             .replace(f"Version: {old}\n", f"Version: {version}\n")
                             .replace(f"VERSION={old}\n", f"VERSION={version}\n"))
        for f in site.glob("aitn_agent-*.dist-info/RECORD"):
            f.unlink()  # names the old hashes; pip is never run on the device
        md5 = tree / "DEBIAN" / "md5sums"
        if md5.exists():
            rel = str(main.relative_to(tree))
            lines = [ln for ln in md5.read_text().splitlines()
                     if not ln.endswith(("/tee_sim/__pycache__/__main__.cpython-311.pyc", "/RECORD"))]
            lines = [f"{hashlib.md5(main.read_bytes()).hexdigest()}  {rel}" if ln.endswith(rel) else ln
                     for ln in lines]
            md5.write_text("\n".join(lines) + "\n")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(dest)],
                       check=True, stdout=subprocess.DEVNULL)
    return dest


@pytest.fixture(scope="session")
def pi_figures() -> dict:
    return FIGURES


@pytest.fixture(scope="session")
def pi_image() -> Path:
    from build_pi_image import build

    t0 = time.monotonic()
    image = build()
    FIGURES["image_build_or_reuse_s"] = round(time.monotonic() - t0, 1)
    FIGURES["image"] = image.name
    FIGURES["image_build_s_when_built"] = json.loads((image / "manifest.json").read_text()).get("build_s")
    yield image
    out = ROOT / "build" / "pi" / "figures.json"
    out.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def pi_debs() -> dict[str, tuple[str, Path]]:
    t0 = time.monotonic()
    DEBS.mkdir(parents=True, exist_ok=True)
    base = base_version()
    nxt, broken = bump(base, 1), bump(base, 2)
    debs = {}
    for role, version in (("base", base), ("next", nxt)):
        path = deb_path(version)
        debs[role] = (version, path if path.exists() else build_deb(version))
    debs["broken"] = (broken, make_broken(debs["next"][1], broken))
    FIGURES["debs_s"] = round(time.monotonic() - t0, 1)
    FIGURES["debs"] = {role: {"version": v, "bytes": p.stat().st_size} for role, (v, p) in debs.items()}
    return debs


@pytest.fixture(scope="module")
def pi(pi_image, pi_debs):
    from pi_guest import PiGuest

    work = Path(tempfile.mkdtemp(prefix="aitn-pi-"))
    g = PiGuest(pi_image, work)
    try:
        for _role, (version, path) in pi_debs.items():
            g.inject(path, f"/root/{path.name}")
        g.boot()
        FIGURES["first_boot"] = g.boots[0]
        yield g
    finally:
        g.shutdown()
        FIGURES["boots"] = g.boots
        (ROOT / "build" / "pi" / "console.log").write_bytes(bytes(g.console_log))
        shutil.rmtree(work, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    g = getattr(item, "funcargs", {}).get("pi")
    if rep.failed and g is not None:
        rep.sections.append(("qemu console of the Pi guest (every boot)", bytes(g.console_log).decode(errors="replace")))
