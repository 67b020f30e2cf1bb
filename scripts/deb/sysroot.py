"""A minimal Debian bookworm arm64 root with the package unpacked in it, to run it under qemu-user.

    python scripts/deb/sysroot.py DEB DIR      # then: chroot DIR /opt/aitn-agent/current/bin/aitn --version

The arm64 guest's package list (``scripts/qemu/build_guest.py``: python3.11, its libraries,
busybox) is fetched with ``apt-get download`` into a cache and unpacked with ``dpkg -x``, as the
guest build does; the package goes in with ``dpkg -x`` too (file mtimes kept, as dpkg keeps them),
and ``/opt/aitn-agent/current`` is pointed at its release as postinst would. No maintainer script
runs and nothing is configured: this checks that the release runs on arm64 with bookworm's Python
and C library, not the installation (the arm64 guest with systemd does that). Needs root (chroot)
and qemu-user-static registered with binfmt_misc (``ensure_binfmt``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "qemu"))
import build_guest  # noqa: E402  (the guest's arm64 package list and its fetch/unpack helpers)

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
#: busybox applets the launcher (/bin/sh, readlink, dirname) and the checks need.
APPLETS = ("sh", "readlink", "dirname", "ls", "cat")


class SysrootError(RuntimeError):
    """The arm64 root cannot be made or run here (message says what is missing)."""


def ensure_binfmt() -> None:
    """Register qemu-aarch64 (flag F: works inside a chroot) if it is not: mount binfmt_misc, write the conf."""
    if (BINFMT_DIR / "qemu-aarch64").exists():
        return
    if not BINFMT_CONF.exists():
        raise SysrootError("qemu-user-static is not installed (apt-get install qemu-user-static)")
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True)
    BINFMT_DIR.joinpath("register").write_text(BINFMT_CONF.read_text().strip() + "\n")


def make(deb: Path, dest: Path, cache: Path) -> Path:
    """Unpack bookworm's python3.11 (arm64) and ``deb`` into ``dest``; returns the release directory."""
    build_guest.ensure_arm64_apt()
    for pkg in [*build_guest.fetch_debs(build_guest.PACKAGES, cache), deb]:
        subprocess.run(["dpkg", "-x", str(pkg), str(dest)], check=True)
    build_guest.merge_usr(dest)  # after the package too: its lib/systemd goes to usr/lib as on bookworm
    for applet in APPLETS:
        link = dest / "usr" / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    releases = sorted((dest / "opt" / "aitn-agent" / "releases").iterdir())
    if len(releases) != 1:
        raise SysrootError(f"expected one release in {deb}, found {[r.name for r in releases]}")
    (dest / "opt" / "aitn-agent" / "current").symlink_to(f"releases/{releases[0].name}")
    return releases[0]


def run(dest: Path, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``argv`` inside the root (chroot), under qemu-user; output captured as text."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"   # /usr/sbin may not be on a user's PATH
    return subprocess.run([chroot, str(dest), *argv], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root"})


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.splitlines()[2].strip())
    ensure_binfmt()
    release = make(Path(sys.argv[1]), Path(sys.argv[2]), HERE.parents[1] / "build" / "deb" / "debs")
    print(release)


if __name__ == "__main__":
    main()
