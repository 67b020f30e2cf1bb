"""Build, or reuse, the arm64 guest: a Debian bookworm kernel and an initramfs made of arm64 packages and wheels.

    python scripts/qemu/build_guest.py [--out build/qemu] [--print-dir]

Nothing is emulated while building: Debian arm64 packages are fetched with ``apt-get download``
(after ``dpkg --add-architecture arm64``) and unpacked with ``dpkg -x``; aarch64 wheels are fetched
with ``pip download --platform`` and unpacked with ``pip install --target``; Python's bytecode is
compiled on the host (same 3.11 magic). The result goes to ``build/qemu/<key>/`` where the key
hashes every input (package versions, kernel version, requirements, this script and the guest's
/init), so a second run with the same inputs reuses it:

    vmlinuz           the kernel of linux-image-arm64
    raspi3b.dtb       its Raspberry Pi 3 B device tree, for QEMU's raspi3b machine
    base.cpio         busybox, python3.11, libraries, wheels, kernel modules, users, /init
    base-small.cpio   the same without the ML wheels, for raspi3b's fixed 1 GiB (SMALL_BOARD_OMITS)
    manifest.json     the inputs and sizes

The project itself is not in the base: ``project_overlay()`` packs the working tree into a small
second cpio archive at every boot (the kernel unpacks concatenated archives in order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: Debian bookworm arm64 packages unpacked into the guest (python3.11 and what it links against).
PACKAGES = [
    "busybox-static", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
    "libexpat1", "zlib1g", "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1", "libdb5.3",
    "libncursesw6", "libtinfo6", "libnsl2", "libtirpc3", "libtirpc-common", "libreadline8", "libsqlite3-0",
    "libuuid1", "libgcc-s1", "libstdc++6", "libzstd1", "libgssapi-krb5-2", "libk5crypto3", "libkeyutils1",
    "libkrb5-3", "libkrb5support0", "libcom-err2", "media-types",
]
KERNEL_META = "linux-image-arm64"
#: Kernel modules loaded by /init (virtio network for the uplink to the host, entropy for the keys).
MODULES = ["virtio_pci", "virtio_net", "virtio_rng", "af_packet"]
PLATFORMS = ["manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_24_aarch64",
             "manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64",  # lakers (OSCORE)
             "linux_aarch64"]
#: Guest users: the secure world and the normal world run as two users, as on a board.
USERS = [("root", 0, "/root"), ("aitn-tee", 900, "/var/lib/aitn-tee"), ("aitn", 901, "/var/lib/aitn"),
         ("nobody", 65534, "/nonexistent")]

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=0755 run /run
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /etc/aitn-modules
hostname aitn-guest
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0   # QEMU user networking: the host's loopback is 10.0.2.2
fi
mkdir -p /run/aitn /var/lib/aitn /var/lib/aitn-tee /var/log
chown aitn:aitn /var/lib/aitn && chmod 0700 /var/lib/aitn
chown aitn-tee:aitn-tee /var/lib/aitn-tee && chmod 0700 /var/lib/aitn-tee
chmod 0755 /run/aitn
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 PYTHONPATH=/opt/aitn
echo "AITN-GUEST-READY uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) arch=$(uname -m)"
while true; do
    setsid cttyhack sh -c 'stty -echo 2>/dev/null; exec sh'
done
"""

AITN_WRAPPER = """#!/bin/sh
export PYTHONPATH=/opt/aitn
exec /usr/bin/python3.11 -m agent "$@"
"""


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def run_quiet(argv: list[str]) -> None:
    """Run; on failure show its output (pip repeats a warning per package for this machine's find-links)."""
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"build_guest: {' '.join(argv[:4])} ... failed with {res.returncode}")


HOST_TOOLS = {"qemu-system-aarch64": "qemu-system-arm", "cpio": "cpio", "depmod": "kmod", "fdtput":
              "device-tree-compiler", "dpkg": "dpkg", "apt-get": "apt"}


def check_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise SystemExit(f"build_guest: missing host tools; install them with: apt-get install {' '.join(missing)}")


def ensure_arm64_apt() -> None:
    if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                                     text=True).stdout.split():
        run(["dpkg", "--add-architecture", "arm64"])
    policy = subprocess.run(["apt-cache", "policy", "python3.11-minimal:arm64"], capture_output=True, text=True)
    if "Candidate: (none)" in policy.stdout or not policy.stdout.strip():
        run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)


#: Packages of architecture "all" (no :arm64 qualifier).
ARCH_ALL = {"libtirpc-common", "media-types"}


def qualified(package: str) -> str:
    return package if package in ARCH_ALL else f"{package}:arm64"


def candidate_versions(packages: list[str]) -> dict[str, str]:
    """Candidate versions in one apt-cache call (one call per package takes most of a minute)."""
    out = subprocess.run(["apt-cache", "policy", *[qualified(p) for p in packages]], capture_output=True,
                         text=True).stdout
    found = dict(re.findall(r"^(\S+?)(?::arm64)?:\n\s+Installed: .*\n\s+Candidate: (\S+)", out, re.M))
    missing = [p for p in packages if found.get(p, "(none)") == "(none)"]
    if missing:
        raise SystemExit(f"build_guest: no candidate for {missing}: is arm64 enabled in apt?")
    return {p: found[p] for p in packages}


def kernel_package() -> str:
    out = subprocess.run(["apt-cache", "depends", f"{KERNEL_META}:arm64"], capture_output=True, text=True).stdout
    m = re.search(r"Depends: (linux-image-[0-9][^\s:]*-arm64)", out)
    if not m:
        raise SystemExit(f"build_guest: cannot resolve {KERNEL_META}:arm64")
    return m.group(1)


#: Test extras the guest does without: river is there only for the Shuttle data file it ships, and
#: would bring scipy (over 100 MB of RAM in an initramfs); the tests that read it skip, saying so.
NOT_IN_GUEST = ("river", "dp-accounting", "flwr", "matplotlib")  # too big for the initramfs (scipy; grpcio, uv, fastapi...)


#: The environment markers of an arm64 board (pip evaluates markers against the machine it runs on,
#: even with --platform, so requirements for the guest are resolved here).
AARCH64_MARKERS = {"platform_machine": "aarch64", "platform_system": "Linux", "sys_platform": "linux",
                   "os_name": "posix", "python_version": "3.11", "python_full_version": "3.11.2",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def for_aarch64(reqs: list[str]) -> list[str]:
    """The requirements that apply on an arm64 board, without their markers (``tflite-runtime==2.14.0;
    platform_machine == 'aarch64'`` -> ``tflite-runtime==2.14.0``; x86_64-only ones dropped)."""
    from packaging.requirements import Requirement

    out = []
    for text in reqs:
        r = Requirement(text)
        if r.marker is None or r.marker.evaluate(AARCH64_MARKERS):
            r.marker = None
            out.append(str(r))
    return out


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = for_aarch64(project["dependencies"] + project["optional-dependencies"]["test"])
    return sorted(r for r in reqs if not r.startswith(NOT_IN_GUEST))


def inputs() -> dict:
    check_host_tools()
    ensure_arm64_apt()
    kernel = kernel_package()
    return {
        "packages": candidate_versions(PACKAGES),
        "kernel": candidate_versions([kernel]),
        "modules": MODULES,
        "requirements": requirements(),
        "platforms": PLATFORMS,
        "users": USERS,
        "script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }


def key_of(inp: dict) -> str:
    return hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]


def fetch_debs(names: list[str], cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    missing = [qualified(n) for n in names
               if not list(cache.glob(f"{n}_*_arm64.deb")) and not list(cache.glob(f"{n}_*_all.deb"))]
    if missing:
        run(["apt-get", "download", "-q", *missing], cwd=cache, stdout=subprocess.DEVNULL)
    debs = []
    for n in names:
        found = sorted(cache.glob(f"{n}_*_arm64.deb")) or sorted(cache.glob(f"{n}_*_all.deb"))
        debs.append(found[-1])
    return debs


def fetch_wheels(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311", "-d", str(cache)]
    for p in PLATFORMS:
        argv += ["--platform", p]
    run_quiet(argv + requirements())


def install_wheels(cache: Path, target: Path) -> None:
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(cache),
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "--no-compile", "--target", str(target)]
    for p in PLATFORMS:
        argv += ["--platform", p]
    run_quiet(argv + requirements())


def merge_usr(root: Path) -> None:
    """bookworm's libc6 ships /lib/aarch64-linux-gnu; merge /lib into /usr/lib as an installed system has it."""
    for top in ("lib", "bin", "sbin"):
        src = root / top
        if src.is_dir() and not src.is_symlink():
            dst = root / "usr" / top
            dst.mkdir(parents=True, exist_ok=True)
            run(["cp", "-a", f"{src}/.", str(dst)])
            shutil.rmtree(src)
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        if not (root / top).exists():
            (root / top).symlink_to(f"usr/{top}")


def add_kernel(root: Path, kernel_deb: Path, out: Path, work: Path) -> None:
    kroot = work / "kernel"
    run(["dpkg", "-x", str(kernel_deb), str(kroot)])
    vmlinuz = next((kroot / "boot").glob("vmlinuz-*"))
    shutil.copy(vmlinuz, out / "vmlinuz")
    version = vmlinuz.name[len("vmlinuz-"):]
    moddir = kroot / "lib" / "modules" / version
    run(["depmod", "-b", str(kroot), version])
    order: list[str] = []
    for mod in MODULES:
        res = subprocess.run(["modprobe", "-d", str(kroot), "-S", version, "--show-depends", mod],
                             capture_output=True, text=True)
        for line in res.stdout.splitlines():
            if line.startswith("insmod "):
                path = Path(line.split()[1])
                rel = path.relative_to(moddir)
                if str(rel) not in order:
                    order.append(str(rel))
    for rel in order:
        dst = root / "lib" / "modules" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = moddir / rel
        if src.suffix == ".xz":
            import lzma

            dst = dst.with_suffix("")
            dst.write_bytes(lzma.decompress(src.read_bytes()))
        else:
            shutil.copy(src, dst)
    (root / "etc" / "aitn-modules").write_text("".join(r.removesuffix(".xz") + "\n" for r in order))
    # QEMU's raspi3b machine: the board's device tree from the same kernel package, without the
    # Bluetooth node under the PL011 (with it, the console takes no input).
    dtb = next((kroot / "usr" / "lib").glob("linux-image-*/broadcom/bcm2837-rpi-3-b.dtb"))
    shutil.copy(dtb, out / "raspi3b.dtb")
    run(["fdtput", "-r", str(out / "raspi3b.dtb"), "/soc/serial@7e201000/bluetooth"])


def add_system(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("".join(f"{n}:x:{u}:{u if n != 'nobody' else 65534}::{h}:/bin/sh\n"
                                        for n, u, h in USERS))
    (etc / "group").write_text("".join(f"{n if n != 'nobody' else 'nogroup'}:x:{u}:\n" for n, u, _ in USERS))
    (etc / "shadow").write_text("".join(f"{n}:*:19000:0:99999:7:::\n" for n, _, _ in USERS))
    (etc / "hosts").write_text("127.0.0.1 localhost aitn-guest\n10.0.2.2 host\n")
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "var/lib", "var/log", "opt/aitn"):
        (root / d).mkdir(parents=True, exist_ok=True)
    init = root / "init"
    init.write_text(INIT)
    init.chmod(0o755)
    bindir = root / "usr" / "local" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "aitn").write_text(AITN_WRAPPER)
    (bindir / "aitn").chmod(0o755)
    py3 = root / "usr" / "bin" / "python3"
    if not py3.exists():
        py3.symlink_to("python3.11")


def compile_bytecode(root: Path) -> None:
    """Guest Python would otherwise compile every module at every start, under emulation."""
    for d in (root / "usr" / "lib" / "python3.11", root / "usr" / "lib" / "python3" / "dist-packages"):
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                        "unchecked-hash", "-x", r"(test/|tests/|lib2to3/tests|idlelib|tkinter|turtledemo)",
                        str(d)], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: Files of the wheels that nothing run in the guest needs (dist-packages paths, glob patterns). The
#: initramfs is unpacked into RAM: every MiB here is one the 1 GiB guest does not have for its work.
PRUNE = ("zstandard/_cffi.*.so",                            # the CFFI backend; the C backend is the default
         "Crypto/SelfTest", "numpy/distutils", "numpy/*/tests", "numpy/_core/include", "numpy/core/include",
         "*/*.c", "*/*.pyx", "*/*.pxd")


def prune(site: Path) -> int:
    """Remove PRUNE from an unpacked dist-packages; returns the bytes removed."""
    removed = 0
    for pattern in PRUNE:
        for path in site.glob(pattern):
            if path.is_dir():
                removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            else:
                removed += path.stat().st_size
                path.unlink()
    return removed


#: Left out of base-small.cpio, the initramfs of QEMU's raspi3b: its RAM is fixed at 1 GiB, and the
#: kernel fails to unpack the full archive there ("Initramfs unpacking failed: write error"). The
#: raspi3b tests (board shape, both worlds, pairing and signing) need none of these.
SMALL_BOARD_OMITS = ("tflite_runtime", "numpy", "numpy.libs", "zstandard", "hypothesis")


def write_cpio(root: Path, dest: Path, omit: tuple[str, ...] = ()) -> None:
    """An uncompressed newc archive: the guest boots about twice as fast without gunzip under emulation.

    ``omit``: dist-packages entries (packages and their .dist-info) left out."""
    files = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True).stdout
    if omit:
        prefixes = tuple(f"./usr/lib/python3/dist-packages/{name}".encode() for name in omit)
        files = b"\n".join(f for f in files.split(b"\n") if f and not f.startswith(prefixes)) + b"\n"
    with open(dest, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "+0:+0"], cwd=root, input=files, stdout=f,
                       check=True)


def build(out_base: Path) -> Path:
    inp = inputs()
    key = key_of(inp)
    out = out_base / key
    if (out / "manifest.json").exists():
        return out
    debs_cache, wheels_cache = out_base / "debs", out_base / "wheels"
    with tempfile.TemporaryDirectory(prefix="aitn-guest-") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        for deb in fetch_debs(PACKAGES, debs_cache):
            run(["dpkg", "-x", str(deb), str(root)])
        merge_usr(root)
        shutil.rmtree(root / "usr" / "share" / "doc", ignore_errors=True)
        shutil.rmtree(root / "usr" / "share" / "man", ignore_errors=True)
        fetch_wheels(wheels_cache)
        install_wheels(wheels_cache, root / "usr" / "lib" / "python3" / "dist-packages")
        pruned = prune(root / "usr" / "lib" / "python3" / "dist-packages")
        add_system(root)
        staging = work / "out"
        staging.mkdir()
        add_kernel(root, fetch_debs([next(iter(inp["kernel"]))], debs_cache)[0], staging, work)
        compile_bytecode(root)
        write_cpio(root, staging / "base.cpio")
        write_cpio(root, staging / "base-small.cpio", omit=SMALL_BOARD_OMITS)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
        manifest = dict(inp, key=key, rootfs_bytes=size, pruned_bytes=pruned,
                        base_cpio_bytes=(staging / "base.cpio").stat().st_size)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out))
    for old in out_base.iterdir():  # images of earlier inputs
        if old != out and old.is_dir() and re.fullmatch(r"[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    return out


def project_overlay(dest: Path, src: Path = ROOT) -> Path:
    """The working tree's agent, tee_sim, tests, board configs, policies and pyproject under /opt/aitn, as a cpio."""
    names = []
    for top in ("agent", "tee_sim", "tests", "board_configs", "policies", "scripts"):
        base = src / top
        if not base.exists():
            continue
        for p in sorted(base.rglob("*")):
            if "__pycache__" in p.parts or p.suffix == ".pyc":
                continue
            names.append(p)
    names.append(src / "pyproject.toml")
    with tempfile.TemporaryDirectory(prefix="aitn-overlay-") as tmp:
        opt = Path(tmp) / "opt" / "aitn"
        opt.mkdir(parents=True)
        for p in names:
            rel = p.relative_to(src)
            if p.is_dir():
                (opt / rel).mkdir(parents=True, exist_ok=True)
            elif p.is_file():
                (opt / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, opt / rel)
        write_cpio(Path(tmp), dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "qemu"))
    ap.add_argument("--print-dir", action="store_true", help="print the output directory only")
    args = ap.parse_args()
    out = build(Path(args.out))
    if args.print_dir:
        print(out)
    else:
        m = json.loads((out / "manifest.json").read_text())
        print(f"guest {m['key']}: {out}\n  kernel {next(iter(m['kernel'].values()))}, rootfs "
              f"{m['rootfs_bytes'] / 2**20:.0f} MiB, base.cpio {m['base_cpio_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
