"""Build, or reuse, the Pi-like arm64 image: Debian bookworm with systemd as init, booted from a disk.

    python scripts/qemu/build_pi_image.py [--out build/pi] [--print-dir]

This is the image ``make pi-test`` installs the Debian package into (tests/pi, scripts/qemu/pi_guest.py).
Unlike the initramfs guest of build_guest.py it is a whole installed system, as on a Raspberry Pi
running Raspberry Pi OS: dpkg and apt, systemd as PID 1, udev, systemd-networkd, users made by
adduser. Made in three parts:

- The **root file system**: ``mmdebstrap --mode=root --arch=arm64 --variant=minbase`` with
  ``--include`` of what the package needs at install time (``INCLUDE``: python3.11, adduser,
  systemd, the libraries its wheels link against), so ``apt-get install ./aitn-agent_*.deb``
  works offline in the guest. The packages' maintainer scripts run under qemu-user through
  binfmt_misc (registered here when missing), about 100 s. The package itself is NOT installed:
  the tests install it.
- The **kernel** (``vmlinuz``) of Debian's linux-image-arm64 and the few modules the guest needs
  (``ROOTFS_MODULES``: virtio, ext4, binfmt_misc, autofs4, xHCI and the FTDI USB serial driver), copied into the root file system with
  their ``modules.dep``, so udev and systemd load them as on any Debian system. The kernel is not
  installed inside (under qemu-user that takes over 15 minutes).
- A small **initrd** built on the host (busybox-static and ``INITRD_MODULES``): its /init loads
  virtio and ext4, mounts /dev/vda and switches to systemd.

Then, on the host: a static ``eth0`` of 10.0.2.15/24 without a default route (systemd-networkd;
QEMU's user network shows the host's loopback as 10.0.2.2), the hostname, ``/etc/fstab``, a fixed
machine id, timers that would reach the network masked, and the test driver's console: instead
of a getty, ``aitn-console.service`` runs a root shell without echo or prompt on ttyAMA0 once
multi-user.target is reached and prints ``AITN-PI-READY uptime=... state=...`` first. Last,
``mkfs.ext4 -d`` turns the tree into ``rootfs.img`` (sparse, ``IMAGE_SIZE``).

Everything lands in ``build/pi/<key>/`` where the key hashes the inputs (the mmdebstrap command,
the packages, the kernel's version, this script): ``rootfs.img``, ``vmlinuz``, ``initrd.img``,
``manifest.json``. A second build with the same inputs reuses it; a new key replaces the old
image. The Debian packages mmdebstrap fetched are kept in ``build/pi/apt-cache`` and the kernel and
busybox packages in ``build/qemu/debs`` (shared with build_guest.py).

Host packages: mmdebstrap, arch-test, qemu-user-static, e2fsprogs, kmod, cpio (.ci/run installs them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build_guest import (ROOT, candidate_versions, ensure_arm64_apt, fetch_debs, kernel_package,  # noqa: E402
                         run, write_cpio)

SUITE = "bookworm"
MIRRORS = ["deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main"]
#: What the guest has before the package comes: systemd as init, what the package's Depends name
#: (scripts/deb/control.py: python3.11, adduser and the libraries its wheels link against) and the
#: tools the tests use (procps for ps, iproute2 for ip).
INCLUDE = ["systemd", "systemd-sysv", "udev", "kmod", "iproute2", "procps", "python3", "python3.11", "adduser",
           "libc6", "libgcc-s1", "libstdc++6", "zlib1g"]
VARIANT = "minbase"
#: Kernel modules in the root file system (their dependencies come along); udev and systemd load them.
ROOTFS_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "ext4", "binfmt_misc", "autofs4",
                  "xhci_pci", "ftdi_sio"]   # the sensor link: a USB serial adapter (pi_guest.SENSOR_PORT)
#: Loaded by the initrd's /init, in order, before it mounts the root file system.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "ext4"]
IMAGE_SIZE = "3G"  # sparse: about 400 MB are used before the package; three releases fit beside it
HOSTNAME = "aitn-pi"
#: Units that would reach the network (there is none but the host's loopback) or that only slow
#: the boot down; systemd-firstboot would prompt on the console.
MASK = ["serial-getty@ttyAMA0.service", "systemd-firstboot.service", "apt-daily.timer", "apt-daily-upgrade.timer",
        "apt-daily.service", "apt-daily-upgrade.service", "e2scrub_all.timer", "e2scrub_reap.service",
        "fstrim.timer", "dpkg-db-backup.timer", "systemd-networkd-wait-online.service",
        # no virtual terminals on the virt machine without a display: the serial console is the only one
        "getty-static.service", "getty@tty1.service",
        # kernel interfaces and modules nothing here uses; each costs seconds under emulation
        "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
        "modprobe@loop.service", "modprobe@efi_pstore.service", "modprobe@fuse.service", "modprobe@drm.service",
        "modprobe@dm_mod.service", "systemd-pstore.service"]
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "arch-test": "arch-test", "qemu-aarch64-static": "qemu-user-static", "mkfs.ext4": "e2fsprogs",
              "depmod": "kmod", "cpio": "cpio", "qemu-system-aarch64": "qemu-system-arm"}

INIT = r"""#!/bin/busybox sh
# The initrd of the aitn Pi image (scripts/qemu/build_pi_image.py): load virtio and ext4, mount
# /dev/vda read-write, hand over to systemd.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m" || echo "initrd: insmod $m failed"; done < /modules
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "initrd: cannot mount /dev/vda; a shell:"
    exec sh
fi
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
"""

CONSOLE_UNIT = """[Unit]
Description=Root shell on the serial console for the test driver (aitn test image only)
Documentation=file:/usr/local/sbin/aitn-console
After=multi-user.target
ConditionPathExists=/dev/ttyAMA0

[Service]
Type=idle
ExecStart=/usr/local/sbin/aitn-console
StandardInput=tty-force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyAMA0
TTYReset=yes
TTYVHangup=yes
Restart=always
RestartSec=1
KillMode=process
IgnoreSIGPIPE=no
SendSIGHUP=yes
Environment=HOME=/root LANG=C.UTF-8 TERM=dumb PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive
Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

[Install]
WantedBy=multi-user.target
"""

CONSOLE = """#!/bin/sh
# The test driver's console (scripts/qemu/pi_guest.py): no echo, no prompt, so that what comes back
# is exactly the output of the commands it sends; the ready line first.
stty -echo 2>/dev/null
echo "AITN-PI-READY uptime=$(cut -d' ' -f1 /proc/uptime) state=$(systemctl is-system-running 2>/dev/null)"
cd /root
exec bash --noprofile --rcfile /etc/aitn-console.bashrc --noediting -i
"""

CONSOLE_BASHRC = """set +H
PS1=''
PS2=''
unset HISTFILE
"""

NETWORK = """[Match]
Name=eth0

[Network]
# QEMU's user network: the host's loopback is 10.0.2.2. No default route: nothing else to reach.
Address=10.0.2.15/24
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


def check_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise SystemExit(f"build_pi_image: missing host tools; install them with: apt-get install {' '.join(missing)}")


def ensure_binfmt() -> None:
    """qemu-aarch64 registered with binfmt_misc, so that mmdebstrap can run the arm64 maintainer scripts."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)])
    if not (misc / "qemu-aarch64").exists():
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
        if not conf.exists():
            raise SystemExit("build_pi_image: no /usr/lib/binfmt.d/qemu-aarch64.conf: apt-get install qemu-user-static")
        (misc / "register").write_text(conf.read_text().strip() + "\n")
    if (misc / "qemu-aarch64").read_text().splitlines()[0] != "enabled":
        (misc / "qemu-aarch64").write_text("1")


def mmdebstrap_version() -> str:
    return subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True).stdout.strip()


def debootstrap_inputs() -> dict:
    """What the mmdebstrap stage depends on (its tarball is cached by these alone)."""
    return {"suite": SUITE, "mirrors": MIRRORS, "variant": VARIANT, "include": INCLUDE,
            "mmdebstrap": mmdebstrap_version(), "argv": hashlib.sha256(repr(mmdebstrap_argv(Path("ROOT"),
                                                                                         Path("CACHE"))).encode()).hexdigest()}


def inputs() -> dict:
    check_host_tools()
    ensure_arm64_apt()
    kernel = kernel_package()
    return {
        "debootstrap": debootstrap_inputs(),
        "kernel": candidate_versions([kernel]),
        "busybox": candidate_versions(["busybox-static"]),
        "rootfs_modules": ROOTFS_MODULES, "initrd_modules": INITRD_MODULES, "size": IMAGE_SIZE,
        "script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }


def key_of(inp: dict) -> str:
    return hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]


def mmdebstrap_argv(root: Path, cache: Path) -> list[str]:
    return ["mmdebstrap", "--mode=root", "--arch=arm64", f"--variant={VARIANT}", "--include=" + ",".join(INCLUDE),
            "--aptopt=Acquire::Languages \"none\"", "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--skip=essential/unlink",
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives && "
            f"find {cache} -maxdepth 1 -name '*.deb' -exec cp -t \"$1\"/var/cache/apt/archives/ {{}} +",
            "--customize-hook=rm -f " + str(cache) + "/*.deb && "
            f"find \"$1\"/var/cache/apt/archives -maxdepth 1 -name '*.deb' -exec mv -t {cache} {{}} +",
            SUITE, str(root), *MIRRORS]


def debootstrap(root: Path, out_base: Path, log=print) -> None:
    """mmdebstrap into ``root``; the result is kept as ``out_base/debootstrap-KEY.tar`` (KEY over
    ``debootstrap_inputs()``) so that a change to the rest of the image does not run it again, and the
    .debs it fetched in ``out_base/apt-cache`` for the next run."""
    key = hashlib.sha256(json.dumps(debootstrap_inputs(), sort_keys=True).encode()).hexdigest()[:16]
    tarball = out_base / f"debootstrap-{key}.tar"
    if tarball.exists():
        log(f"build_pi_image: reusing {tarball.name}")
        root.mkdir()
        run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-xf", str(tarball)])
        return
    cache = out_base / "apt-cache"
    cache.mkdir(parents=True, exist_ok=True)
    log(f"build_pi_image: mmdebstrap {SUITE} arm64 ({VARIANT}) into {root}")
    run(mmdebstrap_argv(root, cache), stdout=subprocess.DEVNULL)
    for leftover in (root / "var" / "cache" / "apt").glob("*.bin"):
        leftover.unlink()
    for old in out_base.glob("debootstrap-*.tar*"):
        old.unlink()
    run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-cf", f"{tarball}.part", "."])
    os.replace(f"{tarball}.part", tarball)


def module_closure(kroot: Path, version: str, names: list[str]) -> list[str]:
    """Module paths (relative to lib/modules/VERSION) for ``names`` and their dependencies, in load order."""
    moddir = kroot / "lib" / "modules" / version
    order: list[str] = []
    for mod in names:
        res = subprocess.run(["modprobe", "-d", str(kroot), "-S", version, "--show-depends", mod],
                             capture_output=True, text=True, check=True)
        for line in res.stdout.splitlines():
            if line.startswith("insmod "):
                rel = str(Path(line.split()[1]).relative_to(moddir))
                if rel not in order:
                    order.append(rel)
    return order


def unpack_module(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".xz":
        import lzma

        dst = dst.with_suffix("")
        dst.write_bytes(lzma.decompress(src.read_bytes()))
    else:
        shutil.copy(src, dst)
    return dst


def add_kernel(root: Path, kernel_deb: Path, busybox_deb: Path, out: Path, work: Path) -> str:
    """vmlinuz to ``out``, the modules into ``root``, and ``out/initrd.img``; returns the kernel version."""
    kroot = work / "kernel"
    run(["dpkg", "-x", str(kernel_deb), str(kroot)])
    vmlinuz = next((kroot / "boot").glob("vmlinuz-*"))
    shutil.copy(vmlinuz, out / "vmlinuz")
    version = vmlinuz.name[len("vmlinuz-"):]
    moddir = kroot / "lib" / "modules" / version
    run(["depmod", "-b", str(kroot), version])
    # The root file system: the modules and what depmod needs to index them, as an installed kernel has them.
    target = root / "usr" / "lib" / "modules" / version
    for rel in module_closure(kroot, version, ROOTFS_MODULES):
        unpack_module(moddir / rel, target / rel.removesuffix(".xz"))
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (moddir / name).exists():
            shutil.copy(moddir / name, target / name)
    run(["depmod", "-b", str(root), version])
    # The initrd: busybox and the modules that reach the root file system.
    iroot = work / "initrd"
    bb = work / "busybox"
    run(["dpkg", "-x", str(busybox_deb), str(bb)])
    (iroot / "bin").mkdir(parents=True)
    shutil.copy(next(p for p in (bb / "bin" / "busybox", bb / "usr" / "bin" / "busybox") if p.exists()),
                iroot / "bin" / "busybox")
    lines = []
    for rel in module_closure(kroot, version, INITRD_MODULES):
        dst = unpack_module(moddir / rel, iroot / "lib" / "modules" / rel)
        lines.append(str(dst.relative_to(iroot / "lib" / "modules")))
    (iroot / "modules").write_text("".join(f"{m}\n" for m in lines))
    (iroot / "init").write_text(INIT)
    (iroot / "init").chmod(0o755)
    write_cpio(iroot, out / "initrd.img")
    return version


def systemctl(root: Path, *args: str) -> None:
    run(["systemctl", "--root", str(root), "--quiet", *args])


def configure(root: Path) -> None:
    etc = root / "etc"
    (etc / "hostname").write_text(HOSTNAME + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n10.0.2.2\thost\n")
    (etc / "fstab").write_text("/dev/vda\t/\text4\trw,noatime,errors=remount-ro\t0\t0\n")
    # One fixed machine id: no first-boot logic (systemd-firstboot would prompt on the console).
    (etc / "machine-id").write_text(hashlib.sha256(b"aitn-pi-image").hexdigest()[:32] + "\n")
    net = etc / "systemd" / "network"
    net.mkdir(parents=True, exist_ok=True)
    (net / "10-eth0.network").write_text(NETWORK)
    (etc / "systemd" / "system" / "aitn-console.service").write_text(CONSOLE_UNIT)
    sbin = root / "usr" / "local" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    (sbin / "aitn-console").write_text(CONSOLE)
    (sbin / "aitn-console").chmod(0o755)
    (etc / "aitn-console.bashrc").write_text(CONSOLE_BASHRC)
    # The disk is a throwaway copy: dpkg need not fsync every file it unpacks (2600 for the package).
    (etc / "dpkg" / "dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (etc / "dpkg" / "dpkg.cfg.d" / "aitn-pi-unsafe-io").write_text("force-unsafe-io\n")
    # Journal in memory only: less writing to the emulated disk.
    (etc / "systemd" / "journald.conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "systemd" / "journald.conf.d" / "aitn-pi.conf").write_text("[Journal]\nStorage=volatile\n")
    systemctl(root, "enable", "systemd-networkd.service", "aitn-console.service")
    systemctl(root, "mask", *MASK)
    for d in ("var/cache/apt/archives/partial",):
        (root / d).mkdir(parents=True, exist_ok=True)


def make_image(root: Path, dest: Path) -> None:
    run(["mkfs.ext4", "-q", "-F", "-L", "aitn-root", "-m", "0", "-d", str(root), str(dest), IMAGE_SIZE])


def build(out_base: Path = ROOT / "build" / "pi", log=print) -> Path:
    inp = inputs()
    key = key_of(inp)
    out = out_base / key
    if (out / "manifest.json").exists():
        return out
    ensure_binfmt()
    debs_cache = ROOT / "build" / "qemu" / "debs"
    t0 = time.monotonic()
    out_base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aitn-pi-", dir=out_base) as tmp:
        work = Path(tmp)
        root = work / "root"
        debootstrap(root, out_base, log)
        t_strap = time.monotonic() - t0
        staging = work / "out"
        staging.mkdir()
        kernel_deb, busybox_deb = fetch_debs([next(iter(inp["kernel"])), "busybox-static"], debs_cache)
        version = add_kernel(root, kernel_deb, busybox_deb, staging, work)
        configure(root)
        make_image(root, staging / "rootfs.img")
        du = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True).stdout.split()[0]
        manifest = dict(inp, key=key, kernel_version=version, rootfs_bytes=int(du),
                        mmdebstrap_s=round(t_strap, 1), build_s=round(time.monotonic() - t0, 1))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        shutil.move(str(staging), str(out))
    for old in out_base.iterdir():  # images of earlier inputs
        if old != out and old.is_dir() and re.fullmatch(r"[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    log(f"build_pi_image: {out} in {time.monotonic() - t0:.0f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "pi"))
    ap.add_argument("--print-dir", action="store_true", help="print the output directory only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("build_pi_image: needs root (mmdebstrap --mode=root, binfmt_misc)")
    out = build(Path(args.out), log=(lambda *_: None) if args.print_dir else print)
    if args.print_dir:
        print(out)
    else:
        m = json.loads((out / "manifest.json").read_text())
        print(f"pi image {m['key']}: {out}\n  kernel {m['kernel_version']}, root file system "
              f"{m['rootfs_bytes'] / 2**20:.0f} MiB, built in {m['build_s']:.0f} s")


if __name__ == "__main__":
    main()
