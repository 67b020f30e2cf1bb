"""Build the device package on this x86_64 host: build/deb/aitn-agent_<version>_arm64.deb.

    python scripts/deb/build_deb.py [--version V] [--out DIR] [--src DIR] [--cache DIR] [--compression xz|gzip]
                                    [--keep-staging]

Nothing is emulated. The tree that ``dpkg-deb --build --root-owner-group`` packs:

    opt/aitn-agent/releases/<V>/        a Python 3.11 venv: pyvenv.cfg (home = /usr/bin),
        bin/python3 -> /usr/bin/python3.11, bin/aitn (launcher), lib/python3.11/site-packages/ with
        the project's wheel (agent, tee_sim, the models) and the aarch64 wheels of its runtime
        dependencies, byte-compiled on this host (same 3.11 bytecode as on the board)
    etc/aitn/boards/*.toml, etc/aitn/policy.toml     conffiles
    lib/systemd/system/aitn-tee.service, aitn-agent.service
    usr/bin/aitn -> /opt/aitn-agent/current/bin/aitn
    usr/share/doc/aitn-agent/, usr/share/man/man1/aitn.1.gz, usr/share/lintian/overrides/aitn-agent

``/opt/aitn-agent/current`` is not in it: the maintainer scripts (packaging/debian/) own that link.
``--src`` packages another source tree (tests build deliberately broken versions that way);
``--version`` (default: agent.__version__ of the source) is written into the packaged
agent/__init__.py and pyproject.toml, so ``aitn --version`` on the board names the package's version.
Wheels are cached in build/deb/wheels (scripts/deb/wheels.py). Files are root:root, 0644 or 0755,
with the mtime of the last commit (or $SOURCE_DATE_EPOCH): the same inputs give the same package.
Compression: xz (the default: the smallest download, about 70 s here) or gzip (about 6 s, 60% larger;
the tests use it): the contents are the same. Not zstd: bookworm's dpkg reads it, but its lintian calls
such a package malformed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import control  # noqa: E402
import elf  # noqa: E402
import wheels  # noqa: E402

PACKAGING = ROOT / "packaging"
OPT = "opt/aitn-agent"
SITE = "lib/python3.11/site-packages"
#: Maintainer scripts; ``@VERSION@`` in them becomes the package's version.
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
#: Python sources copied into the project's wheel build (no tests, no scripts, no caches).
SOURCE_ENTRIES = ("agent", "tee_sim", "pyproject.toml", "README.md")
#: Parts of the wheels the device never runs (paths under site-packages, glob patterns): test
#: suites and numpy's two test-only extension modules (numpy/core in numpy 1.x, numpy/_core in 2.x).
DEVICE_PRUNE = ("numpy/*/tests", "numpy/tests", "numpy/*core/_operand_flag_tests.*.so",
                "numpy/*core/_struct_ufunc_tests.*.so", "Crypto/SelfTest")
#: As dh_strip strips shared objects: symbols and debug information out, sections the loader uses kept.
STRIP = ["aarch64-linux-gnu-strip", "--remove-section=.comment", "--remove-section=.note", "--strip-unneeded"]
#: Documentation shipped in /usr/share/doc/aitn-agent (compressed past 4 KiB, as Debian policy says).
DOCS = ("README.md", "docs/*.md")
#: dpkg-deb's compressor and level for each --compression.
COMPRESSION = {"xz": ["-Zxz", "-z6"], "gzip": ["-Zgzip", "-z6"]}
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*(\+[a-z0-9.]+)?$")
HOST_TOOLS = {"dpkg-deb": "dpkg", "readelf": "binutils", "aarch64-linux-gnu-strip": "binutils-aarch64-linux-gnu"}

LAUNCHER = """#!/bin/sh
# aitn: the agent's command, run by the Python of the release this file belongs to (its bin/ holds
# the venv's python3). Resolving our own path first makes a release work wherever it sits:
# /opt/aitn-agent/releases/<version>/ or, after a rollback, /opt/aitn-agent/previous/<version>/.
here=$(dirname "$(readlink -f "$0")")
# Never put the working directory on sys.path (the secure world is started with python -m too).
PYTHONSAFEPATH=1
export PYTHONSAFEPATH
exec "$here/python3" -m agent "$@"
"""


class BuildError(RuntimeError):
    """The package cannot be built as asked (message says why and what to do)."""


def source_version(src: Path) -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (src / "agent" / "__init__.py").read_text(), re.M)
    if not m:
        raise BuildError(f"{src}/agent/__init__.py: no __version__")
    return m.group(1)


def source_date(src: Path) -> int:
    """$SOURCE_DATE_EPOCH, else the last commit's time, else now (every file gets this mtime)."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    res = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%ct"], capture_output=True, text=True)
    return int(res.stdout.strip()) if res.returncode == 0 and res.stdout.strip().isdigit() else int(time.time())


def copy_source(src: Path, dest: Path, version: str) -> None:
    """The project's sources into ``dest``, with ``version`` in agent/__init__.py and pyproject.toml."""
    dest.mkdir(parents=True)
    for name in SOURCE_ENTRIES:
        path = src / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy(path, dest / name)
    init = dest / "agent" / "__init__.py"
    init.write_text(re.sub(r'^__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text(), flags=re.M))
    pyproject = dest / "pyproject.toml"
    pyproject.write_text(re.sub(r'^version = "[^"]+"', f'version = "{version}"', pyproject.read_text(), count=1,
                                flags=re.M))


def make_venv(release: Path) -> None:
    """pyvenv.cfg, bin/python3 -> /usr/bin/python3.11 and the launcher: a venv without copies of Python."""
    (release / "bin").mkdir(parents=True)
    (release / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n")
    (release / "bin" / "python3").symlink_to("/usr/bin/python3.11")
    (release / "bin" / "python").symlink_to("python3")
    (release / "bin" / "python3.11").symlink_to("python3")
    (release / "bin" / "aitn").write_text(LAUNCHER)


def prune(site: Path) -> None:
    """Remove DEVICE_PRUNE, and bin/ (pip's console scripts there carry this host's interpreter path)."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for pattern in DEVICE_PRUNE:
        for path in site.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def drop_shebangs(site: Path) -> int:
    """Replace the ``#!`` line of the wheels' non-executable files by ``#``; returns how many.

    They are modules and snippets that are imported or sourced, never run as programs (several name
    a ``python`` Debian does not have); the line count, hence every traceback's line numbers, stays."""
    count = 0
    for p in site.rglob("*"):
        if p.is_file() and not p.is_symlink() and not p.suffix == ".so" and ".so." not in p.name:
            with open(p, "rb") as f:
                head = f.read(2)
            if head == b"#!":
                data = p.read_bytes()
                end = data.find(b"\n")
                p.write_bytes(b"#" + (data[end:] if end >= 0 else b""))
                count += 1
    return count


def forget_build_paths(site: Path) -> None:
    """pip records where it installed the project's wheel from (a temporary path): drop that record."""
    for direct in site.glob("*.dist-info/direct_url.json"):
        record = direct.parent / "RECORD"
        lines = [line for line in record.read_text().splitlines(keepends=True)
                 if not line.startswith(f"{direct.parent.name}/direct_url.json,")]
        record.write_text("".join(lines))
        direct.unlink()


def patched_by_auditwheel(info: elf.ElfInfo, vendored: set[str]) -> bool:
    """A library auditwheel vendored (``<dist>.libs/``), or a module whose NEEDED it rewrote to one.

    auditwheel edits these with patchelf, and strip corrupts what patchelf moved: numpy's OpenBLAS
    then fails to load ("ELF load command address/offset not page-aligned", seen in the arm64 test)."""
    return info.path.parent.name.endswith(".libs") or bool(vendored & set(info.needed))


def strip_binaries(infos: list[elf.ElfInfo]) -> list[Path]:
    """Strip every ELF file but auditwheel's patched ones; returns those left as they are."""
    vendored = {i.path.name for i in infos if i.path.parent.name.endswith(".libs")}
    kept = []
    for info in infos:
        if patched_by_auditwheel(info, vendored):
            kept.append(info.path)
            continue
        res = subprocess.run([*STRIP, str(info.path)], capture_output=True, text=True)
        if res.returncode:
            raise BuildError(f"{info.path}: strip failed: {res.stderr.strip()}")
    return kept


def check_elves(root: Path) -> list[elf.ElfInfo]:
    """Every ELF file must be aarch64 and must not ask for an executable stack (MemoryDenyWriteExecute)."""
    infos = [elf.inspect(p) for p in elf.elf_files(root)]
    wrong = [str(i.path.relative_to(root)) for i in infos if i.machine != elf.EM_AARCH64]
    if wrong:
        raise BuildError(f"not aarch64 ELF files: {wrong[:5]} (an x86_64 wheel in the cache?)")
    stack = [str(i.path.relative_to(root)) for i in infos if i.exec_stack]
    if stack:
        raise BuildError(f"ELF files that need an executable stack (MemoryDenyWriteExecute=yes breaks them): {stack}")
    return infos


def set_mtimes(root: Path, when: int) -> None:
    for p in [root, *root.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def compile_bytecode(site: Path, installed_as: str) -> None:
    """Bytecode for every module, timestamp-checked against the (fixed) source mtimes that dpkg restores.

    The board's Python then never compiles at start (minutes on a Pi Zero 2 W, more under QEMU) and
    never needs to write (the release is read-only to the services); an edited source is noticed."""
    if sys.version_info[:2] != (3, 11):
        raise BuildError(f"byte-compiling needs Python 3.11 (the board's); this is {sys.version.split()[0]}")
    res = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "timestamp",
                          "-d", installed_as, str(site)], capture_output=True, text=True)
    if res.returncode:
        # A module that does not compile under 3.11 would fail at import on the board too.
        raise BuildError(f"compileall failed:\n{res.stdout}{res.stderr}")


def normalize_modes(root: Path, executables: set[Path]) -> None:
    """Directories and ``executables`` 0755, other files 0644 (shared objects included, as dh_fixperms does)."""
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir() or p in executables:
            p.chmod(0o755)
        else:
            p.chmod(0o644)


def add_system_files(root: Path, src: Path, version: str, site: Path, when: int, maintainer: str) -> None:
    etc = root / "etc" / "aitn"
    (etc / "boards").mkdir(parents=True)
    for board in sorted((src / "board_configs").glob("*.toml")):
        shutil.copy(board, etc / "boards" / board.name)
    shutil.copy(src / "policies" / "default.toml", etc / "policy.toml")
    units = root / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    for unit in sorted((PACKAGING / "systemd").glob("*.service")):
        shutil.copy(unit, units / unit.name)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "aitn").symlink_to(f"/{OPT}/current/bin/aitn")
    doc = root / "usr" / "share" / "doc" / control.PACKAGE
    doc.mkdir(parents=True)
    for pattern in DOCS:
        for path in sorted(src.glob(pattern)):
            data = path.read_bytes()
            if len(data) > 4096:
                (doc / (path.name + ".gz")).write_bytes(control.gzip_bytes(data))
            else:
                (doc / path.name).write_bytes(data)
    (doc / "copyright").write_text(control.copyright_text(site, f"/{site.relative_to(root)}"))
    note = f"aitn-agent {version} for arm64 (scripts/deb/build_deb.py)."
    (doc / "changelog.gz").write_bytes(control.changelog_gz(version, when, maintainer, note))
    man = root / "usr" / "share" / "man" / "man1"
    man.mkdir(parents=True)
    (man / "aitn.1.gz").write_bytes(control.gzip_bytes((PACKAGING / "aitn.1").read_bytes()))
    overrides = root / "usr" / "share" / "lintian" / "overrides"
    overrides.mkdir(parents=True)
    shutil.copy(PACKAGING / "lintian" / "aitn-agent", overrides / control.PACKAGE)


def write_control(root: Path, version: str, elves: list[elf.ElfInfo], maintainer: str) -> None:
    ctrl = root / "DEBIAN"
    depends = control.BASE_DEPENDS + control.library_depends(elves)
    installed = control.installed_size_kib(root)
    ctrl.mkdir()
    (ctrl / "md5sums").write_text(control.md5sums(root))
    (ctrl / "conffiles").write_text(control.conffiles(root))
    (ctrl / "control").write_text(control.control(version, depends, installed, maintainer))
    for name in SCRIPTS:
        text = (PACKAGING / "debian" / name).read_text().replace("@VERSION@", version)
        (ctrl / name).write_text(text)


def check_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise BuildError(f"missing host tools; install them with: apt-get install {' '.join(missing)}")


def build(src: Path, out: Path, version: str | None, cache: Path, keep: bool = False,
          compression: str = "xz") -> Path:
    """Build the package; returns the .deb's path. Raises BuildError, wheels.WheelError."""
    version = version or source_version(src)
    if not VERSION_RE.match(version):
        raise BuildError(f"version {version!r}: digits and dots, optionally +local (valid for Debian and PEP 440)")
    check_host_tools()
    when = source_date(src)
    maintainer = control.DEFAULT_MAINTAINER
    if os.environ.get("DEBFULLNAME") and os.environ.get("DEBEMAIL"):  # Debian's usual variables
        maintainer = f"{os.environ['DEBFULLNAME']} <{os.environ['DEBEMAIL']}>"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aitn-deb-", dir=out))
    try:
        copy_source(src, work / "src", version)
        wheel = wheels.build_project_wheel(work / "src", work / "wheel", cache)
        root = work / "root"
        release = root / OPT / "releases" / version
        make_venv(release)
        site = release / SITE
        pyproject = work / "src" / "pyproject.toml"
        pins = wheels.constraints(work / "constraints.txt", {"aitn-agent"} | wheels.platform_specific(pyproject))
        wheels.install(wheel, cache, site, wheels.runtime_requirements(pyproject), pins)
        prune(site)
        drop_shebangs(site)
        strip_binaries(check_elves(root))
        elves = check_elves(root)
        forget_build_paths(site)
        set_mtimes(site, when)
        compile_bytecode(site, f"/{site.relative_to(root)}")
        add_system_files(root, src, version, site, when, maintainer)
        executables = {release / "bin" / "aitn"} | {e.path for e in elves if ".so" not in e.path.name}
        normalize_modes(root, executables)
        write_control(root, version, elves, maintainer)
        for name in SCRIPTS:
            (root / "DEBIAN" / name).chmod(0o755)
        set_mtimes(root, when)
        deb = out / f"{control.PACKAGE}_{version}_{control.ARCH}.deb"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(when))
        argv = ["dpkg-deb", "--root-owner-group", *COMPRESSION[compression], "--build", str(root), str(deb)]
        res = subprocess.run(argv, capture_output=True, text=True, env=env)
        if res.returncode:
            raise BuildError(f"dpkg-deb failed:\n{res.stdout}{res.stderr}")
        return deb
    finally:
        if keep:
            print(f"staging kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", help="package version (default: agent.__version__ of the source)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "deb", help="output directory (default build/deb)")
    ap.add_argument("--src", type=Path, default=ROOT, help="source tree to package (default: this one)")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "deb" / "wheels", help="wheel cache")
    ap.add_argument("--compression", choices=sorted(COMPRESSION), default="xz",
                    help="xz (default, smallest) or gzip (faster to build)")
    ap.add_argument("--keep-staging", action="store_true", help="keep the staging tree (printed) for inspection")
    args = ap.parse_args()
    start = time.monotonic()
    try:
        deb = build(args.src.resolve(), args.out.resolve(), args.version, args.cache.resolve(), args.keep_staging,
                    args.compression)
    except (BuildError, wheels.WheelError, elf.ElfError, control.ControlError) as e:
        raise SystemExit(f"build_deb: {e}")
    print(f"{deb} ({deb.stat().st_size / 2**20:.1f} MiB, {time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
