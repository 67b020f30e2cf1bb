"""Boot the Pi-like arm64 image (systemd, from a disk) under QEMU and drive it over its serial console.

    python scripts/qemu/pi_guest.py run 'systemctl is-system-running'   # boot a scratch copy, run, power off
    python scripts/qemu/pi_guest.py console                              # the console on this terminal

``PiGuest`` is what tests/pi uses. Like guest.py's ``Guest`` (whose console protocol it inherits:
``run()`` sends a command line between two unique markers and reads until the end marker carrying
the exit status) but:

- it boots build_pi_image.py's image from a disk, ``/dev/vda``: a per-guest sparse copy of
  ``rootfs.img`` (``cp --sparse=always``), so what the tests install persists across reboots and the
  cached image is never written;
- the shell on the console is ``aitn-console.service``, started by systemd after multi-user.target,
  which prints ``AITN-PI-READY`` first;
- ``reboot()``: QEMU runs with ``-no-reboot``, so the guest's ``systemctl reboot`` makes it exit;
  the driver starts it again on the same disk and waits for the ready line;
- the network namespace (when root) outlives every QEMU: one holder process (``unshare -n``,
  loopback up, then ``sleep``) owns it and each QEMU joins it with ``nsenter``, so host-side
  services started with ``host_command()`` (a node, the file server) stay reachable at 10.0.2.2
  across reboots, and nothing else is;
- ``put(local, guest_path)`` copies a file in: the host serves a directory over HTTP on 127.0.0.1
  inside the namespace and the guest fetches it from 10.0.2.2 with python3, then checks its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serial

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from guest import PTY, Guest, GuestError  # noqa: E402

READY = re.compile(rb"AITN-PI-READY uptime=([0-9.]+) state=(\S*)")
#: quiet: the kernel's and systemd's boot messages stay off the console the driver reads (errors
#: still show); net.ifnames=0 keeps the virtio NIC eth0, as a Pi's is; mitigations=off: the
#: kernel's Spectre workarounds (a Cortex-A72's branch loop on every kernel entry) cost a lot under TCG
#: (measured with cortex-a72: the boot 24 -> 17 s, unpacking the package 23 -> 11 s) and guard
#: against nothing in an emulator.
CMDLINE = ("console=ttyAMA0 root=/dev/vda rw quiet loglevel=3 systemd.show_status=error net.ifnames=0 "
           "mitigations=off")
HTTP_PORT = 8008
#: The robot's sensor link as a Pi sees a USB serial adapter: QEMU's usb-serial (an FTDI FT232,
#: ftdi_sio in the guest, /dev/ttyUSB0, group dialout) on an xHCI controller, its other end a TCP
#: server on the host side (inside the namespace) that the sensor simulator connects to.
#: always-plugged: the adapter is there from boot, with or without a robot behind it.
SENSOR_PORT = 7001
#: QEMU's "max" CPU without pointer authentication (its emulation is slow), SVE and SME (no Pi has
#: them): ARMv8.x with LSE atomics, which TCG maps to host atomics where a Cortex-A72 (a Pi 4's) needs
#: exclusive load/store pairs. Measured on the same loaded host: dpkg unpacking the package 40-52 s
#: against 72-81 s with cortex-a72, Python 25 % faster, the boot 30-35 s against 40-47 s.
CPU = "max,pauth=off,sve=off,sme=off"


class PiGuest(Guest):
    """One Pi-like guest on its own disk; ``boot()`` / ``reboot()`` / ``poweroff()`` any number of times."""

    def __init__(self, image: Path, workdir: Path, *, memory_mb: int = 1024, smp: int = 2, cpu: str = CPU,
                 netns: bool | None = None, extra_args: tuple[str, ...] = (), cmdline: str = CMDLINE) -> None:
        super().__init__(image, workdir, machine="virt", memory_mb=memory_mb, smp=smp, netns=netns,
                         extra_args=extra_args)
        self.cpu = cpu
        self.cmdline = cmdline
        self.disk = workdir / "disk.img"
        self.holder: subprocess.Popen | None = None
        self.http: subprocess.Popen | None = None
        self.http_port = HTTP_PORT
        self.boots: list[dict] = []  # per boot: QEMU start to ready line, guest uptime, systemd state
        self.system_state = ""

    # -- lifecycle -----------------------------------------------------------------------------

    def _namespace(self) -> None:
        if not self.netns or self.holder is not None:
            return
        self.holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep infinity"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        if self.holder.stdout.readline().strip() != b"up":
            raise GuestError("could not create the network namespace (unshare -n)")

    def _in_namespace(self, argv: list[str]) -> list[str]:
        if self.netns:
            assert self.holder is not None
            return ["nsenter", "-t", str(self.holder.pid), "-n", *argv]
        return argv

    def qemu_argv(self, initrd: Path | None = None) -> list[str]:
        argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", self.cpu, "-smp", str(self.smp),
                "-m", str(self.memory_mb), "-display", "none", "-monitor", "none", "-serial", "pty", "-no-reboot",
                "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
                "-append", self.cmdline,
                "-drive", f"file={self.disk},if=none,id=hd0,format=raw,cache=unsafe",
                "-device", "virtio-blk-pci,drive=hd0",
                "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
                "-device", "virtio-rng-pci",
                "-device", "qemu-xhci,id=xhci",
                "-chardev", f"socket,id=sensor,host=127.0.0.1,port={SENSOR_PORT},server=on,wait=off",
                "-device", "usb-serial,bus=xhci.0,chardev=sensor,always-plugged=on", *self.extra_args]
        return self._in_namespace(argv)

    def boot(self, timeout: float = 240.0) -> "PiGuest":
        if self.proc is not None and self.proc.poll() is None:
            raise GuestError("already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.disk.exists():  # the first boot: a private copy of the image (sparse: about 1 s)
            subprocess.run(["cp", "--sparse=always", str(self.image / "rootfs.img"), str(self.disk)], check=True)
        self._namespace()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.qemu_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        banner = b""
        while not (m := PTY.search(banner)):
            line = self.proc.stdout.readline()
            if not line:
                raise GuestError(f"QEMU exited before opening its console: {banner.decode(errors='replace')}")
            banner += line
        self.port = serial.Serial(m.group(1).decode(), baudrate=115200, timeout=0.2)
        self.console_log += f"\n==== boot {len(self.boots) + 1} ====\n".encode()
        out = self._read_until(READY, timeout, "the guest's ready line")
        self.boot_seconds = time.monotonic() - t0
        m = READY.search(out)
        self.guest_uptime_at_ready = float(m.group(1))
        self.system_state = m.group(2).decode()
        self.run("true", timeout=30)  # the shell is up
        self.boots.append({"boot_to_ready_s": round(self.boot_seconds, 2),
                           "guest_uptime_at_ready_s": round(self.guest_uptime_at_ready, 2),
                           "system_state": self.system_state})
        return self

    def _stopped(self, command: str, timeout: float) -> None:
        """Send a command that ends with QEMU exiting (the guest halts or reboots under -no-reboot)."""
        assert self.proc is not None
        if self.proc.poll() is None and self.port is not None:
            try:
                self.port.write(f"{command}\n".encode())
            except (serial.SerialException, OSError):
                pass
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    self.console_log += self.port.read(4096)
                except (serial.SerialException, OSError):
                    time.sleep(0.2)
            if self.proc.poll() is None:
                self.console_log += f"\n==== QEMU did not exit {timeout:g} s after `{command}`: killed ====\n".encode()
                self.proc.kill()
                self.proc.wait(10)
        if self.port is not None:
            try:
                self.console_log += self.port.read(65536)
            except (serial.SerialException, OSError):
                pass
            self.port.close()
            self.port = None
        self.proc = None
        (self.workdir / "console.log").write_bytes(bytes(self.console_log))

    def reboot(self, timeout: float = 240.0) -> float:
        """``systemctl reboot`` in the guest, then boot again on the same disk; returns the seconds it all took."""
        t0 = time.monotonic()
        self._stopped("systemctl reboot", 120)
        self.boot(timeout)
        return time.monotonic() - t0

    def poweroff(self, timeout: float = 120.0) -> None:
        if self.proc is not None:
            self._stopped("systemctl poweroff", timeout)

    def shutdown(self, timeout: float = 120.0) -> None:
        """Power off if running, then end the file server and the namespace."""
        self.poweroff(timeout)
        for p in (self.http, self.holder):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        self.http = self.holder = None

    def host_command(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start a host process that the guest reaches at 10.0.2.2 (inside the namespace, across reboots)."""
        self._namespace()
        return subprocess.Popen(self._in_namespace(argv), **kw)

    def run(self, command: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run a shell command line in the guest with stdin from /dev/null; returns (exit status, output).

        guest.py's protocol writes the command and the end-marker line at once; on this system
        commands read stdin (dpkg, debconf, systemctl's password agent) and would swallow the end
        marker still waiting in the tty's buffer. Braces keep the shell's state (cd, variables)."""
        return super().run("{ " + command + "\n} </dev/null", timeout)

    # -- files ---------------------------------------------------------------------------------

    def inject(self, local: Path | str, guest_path: str) -> None:
        """Write a host file into the guest's disk while it is stopped (e2fsprogs' debugfs; root:root,
        the file's mode). Faster than ``put()`` for big files: no emulated network or Python."""
        if self.proc is not None:
            raise GuestError("inject() needs the guest stopped: put() copies into a running one")
        if not self.disk.exists():
            subprocess.run(["cp", "--sparse=always", str(self.image / "rootfs.img"), str(self.disk)], check=True)
        local = Path(local).resolve()
        parent, name = guest_path.rsplit("/", 1)
        parent = parent or "/"
        cmds = f"cd {parent}\nrm {name}\nwrite {local} {name}\n"
        res = subprocess.run(["debugfs", "-w", "-f", "-", str(self.disk)], input=cmds, capture_output=True, text=True)
        stat = subprocess.run(["debugfs", "-R", f"stat {guest_path}", str(self.disk)], capture_output=True, text=True)
        m = re.search(r"Size: (\d+)", stat.stdout)
        if res.returncode or not m or int(m.group(1)) != local.stat().st_size:
            raise GuestError(f"debugfs could not write {guest_path}: {res.stdout}{res.stderr}{stat.stderr}")

    def _serve(self) -> Path:
        served = self.workdir / "served"
        if self.http is None or self.http.poll() is not None:
            served.mkdir(parents=True, exist_ok=True)
            if not self.netns:  # the host's own loopback: any free port
                import socket

                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    self.http_port = s.getsockname()[1]
            self.http = self.host_command([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                           "--directory", str(served), str(self.http_port)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        return served

    def put(self, local: Path | str, guest_path: str, mode: str = "0644", timeout: float = 300.0) -> float:
        """Copy a host file into the running guest (HTTP from 10.0.2.2, sha256 checked); returns the seconds."""
        local = Path(local)
        t0 = time.monotonic()
        served = self._serve()
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        name = f"{digest[:16]}-{local.name}"
        if not (served / name).exists():
            try:
                os.link(local, served / name)
            except OSError:
                shutil.copy(local, served / name)
        url = f"http://10.0.2.2:{self.http_port}/{name}"
        fetch = ("import sys, time, urllib.request\n"
                 "for i in range(20):\n"
                 "    try: urllib.request.urlretrieve(sys.argv[1], sys.argv[2]); break\n"
                 "    except OSError as e: err = e; time.sleep(0.5)\n"
                 "else: sys.exit(\"fetch failed: %s\" % err)\n")
        self.check(f"python3 -c '{fetch}' {url} '{guest_path}' && chmod {mode} '{guest_path}' && "
                   f"echo '{digest}  {guest_path}' | sha256sum -c --quiet", timeout)
        return time.monotonic() - t0


def main() -> None:
    from build_pi_image import build

    ap = argparse.ArgumentParser(description="boot the Pi-like arm64 image (systemd) on a scratch copy of its disk")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="boot, run one command line, print its output, power off")
    r.add_argument("command")
    r.add_argument("--timeout", type=float, default=600)
    sub.add_parser("console", help="boot with the console on this terminal (Ctrl-A X quits)")
    args = ap.parse_args()
    image = build()
    work = Path(tempfile.mkdtemp(prefix="aitn-pi-"))
    g = PiGuest(image, work)
    try:
        if args.cmd == "console":
            subprocess.run(["cp", "--sparse=always", str(image / "rootfs.img"), str(g.disk)], check=True)
            g._namespace()
            argv = g.qemu_argv()
            argv[argv.index("-serial") + 1] = "mon:stdio"
            subprocess.run(argv)
            return
        g.boot()
        print(f"booted in {g.boot_seconds:.1f} s (guest uptime {g.guest_uptime_at_ready:.1f} s, "
              f"{g.system_state})", file=sys.stderr)
        rc, out = g.run(args.command, args.timeout)
        print(out, end="")
    finally:
        g.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
