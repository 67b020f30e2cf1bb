"""aarch64 wheels for the device: fetched once into a cache on the host, unpacked with ``pip --target``.

The platform tags are the arm64 guest's (``scripts/qemu/build_guest.py``: ``PLATFORMS``), imported
rather than copied so the package and the guest install the same wheels. Nothing here runs on
arm64: pip only selects and unpacks files.

Versions are pinned to the build environment's (``constraints``): the device gets the numpy,
cryptography, pycryptodome... that ``make test`` ran with in .venv, not whatever is newest on the
index that day. A pinned version without an aarch64 wheel fails the build, naming it.

The cache is used offline first (``--no-index``): a build whose requirements the cache already
satisfies asks no index anything, so a cached build needs no network and always picks the same
files. Only when that fails does ``pip download`` fill the cache. ``rm -rf build/deb/wheels``
makes the next build fetch the newest versions the requirements allow.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "qemu"))
from build_guest import PLATFORMS, for_aarch64  # noqa: E402  (one list of aarch64 tags and markers for both)

#: CPython the device runs (Debian bookworm / Raspberry Pi OS bookworm: python3.11).
PYTHON_VERSION = "3.11"
TARGET_ARGS = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
               "--abi", "cp311", *[a for p in PLATFORMS for a in ("--platform", p)]]


class WheelError(RuntimeError):
    """pip could not fetch or install a wheel (its output is in the message)."""


def runtime_requirements(pyproject: Path) -> list[str]:
    """The ``[project] dependencies`` of pyproject.toml that apply on arm64, markers resolved: what the
    device needs, no extras (test, fl, ldp). pip would evaluate the markers for this x86_64 host even
    with --platform (ai-edge-litert instead of tflite-runtime), so they are resolved here."""
    return for_aarch64(list(tomllib.loads(pyproject.read_text())["project"]["dependencies"]))


def platform_specific(pyproject: Path) -> set[str]:
    """Names whose requirement differs by machine (``platform_machine`` markers): the host's versions of
    these are no guide for the device (numpy 2 on the host, numpy < 2 with tflite-runtime on arm64)."""
    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    return {re.sub(r"[-_.]+", "-", r.name).lower() for r in reqs if r.marker and "platform_machine" in str(r.marker)}


def constraints(dest: Path, exclude: set[str] = frozenset({"aitn-agent"})) -> Path:
    """Write ``name==version`` for every distribution of the running environment to ``dest``."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name not in exclude:
            pins[name] = dist.version
    dest.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    return dest


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def install(project_wheel: Path, cache: Path, target: Path, requirements: list[str], pins: Path) -> None:
    """Unpack ``project_wheel`` and its runtime dependencies (aarch64, cp311) into ``target``.

    ``pins``: a constraints file (``constraints()``), applied to the download and the install.

    Tries the cache alone first; on a miss, downloads ``requirements`` into the cache and retries.
    Holds a lock on the cache while it works, so two builds never download into it at once.
    Raises WheelError with pip's output.
    """
    cache.mkdir(parents=True, exist_ok=True)
    # The project without its own dependency list (its markers would be read for this host), then the
    # requirements resolved for arm64.
    argv = ["install", "-q", "--no-index", "--find-links", str(cache), "--find-links", str(project_wheel.parent),
            *TARGET_ARGS, "-c", str(pins), "--no-compile", "--no-warn-script-location", "--target", str(target),
            "--no-deps", str(project_wheel)]
    deps = ["install", "-q", "--no-index", "--find-links", str(cache), *TARGET_ARGS, "-c", str(pins),
            "--no-compile", "--no-warn-script-location", "--target", str(target), *requirements]
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = _pip(argv)
        if res.returncode:
            raise WheelError(f"pip install --target of the project failed:\n{res.stdout}{res.stderr}")
        if _pip(deps).returncode == 0:
            return
        got = _pip(["download", "-q", *TARGET_ARGS, "-c", str(pins), "-d", str(cache), *requirements])
        if got.returncode:
            raise WheelError(f"pip download failed:\n{got.stdout}{got.stderr}")
        res = _pip(deps)
        if res.returncode:
            raise WheelError(f"pip install --target failed:\n{res.stdout}{res.stderr}")


def build_project_wheel(src: Path, out: Path, cache: Path) -> Path:
    """``pip wheel --no-deps`` of the project in ``src`` (a clean copy: setuptools' build/ never leaks in).

    The build backend (``[build-system] requires``) comes from ``cache`` too, fetched on a miss, so
    a cached build is offline. Raises WheelError with pip's output.
    """
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    backend = tomllib.loads((src / "pyproject.toml").read_text())["build-system"]["requires"]
    argv = ["wheel", "-q", "--no-deps", "--no-index", "--find-links", str(cache), "-w", str(out), str(src)]
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _pip(argv).returncode:
            got = _pip(["download", "-q", "--only-binary=:all:", "-d", str(cache), *backend])
            if got.returncode:
                raise WheelError(f"pip download of the build backend failed:\n{got.stdout}{got.stderr}")
            res = _pip(argv)
            if res.returncode:
                raise WheelError(f"pip wheel failed:\n{res.stdout}{res.stderr}")
    wheels = sorted(out.glob("aitn_agent-*.whl"))
    if len(wheels) != 1:
        raise WheelError(f"expected one project wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]
