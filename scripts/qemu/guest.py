"""Boot the arm64 guest under QEMU and drive it over its serial console, as an engineer drives a Pi's UART.

    python scripts/qemu/guest.py run 'aitn --help'     # boot, run one command, print its output, power off
    python scripts/qemu/guest.py console                # boot with the console on this terminal

``Guest`` is what the pytest plugin in tests/qemu uses: the console is a host pty (``-serial pty``)
opened with pyserial; ``run()`` sends a command line and reads until a unique end marker carrying
the exit status. Everything the console printed is kept in ``console_log``.

Networking: QEMU user networking, in which the host's loopback appears as 10.0.2.2. With
``netns=True`` (the default when root) QEMU runs inside a new network namespace whose only
interface is loopback (``unshare -n``), so the guest can reach nothing but what runs in that
namespace; ``Guest.host_command()`` starts a host-side process in it.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serial

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build_guest import ROOT, build, project_overlay  # noqa: E402

READY = re.compile(rb"AITN-GUEST-READY uptime=([0-9.]+)")
PTY = re.compile(rb"char device redirected to (/dev/pts/\d+)")


class GuestError(Exception):
    """The guest did not boot, a command timed out, or QEMU died; the console log says more."""


class Guest:
    def __init__(self, image: Path, workdir: Path, *, machine: str = "virt", memory_mb: int = 1024, smp: int = 2,
                 netns: bool | None = None, extra_args: tuple[str, ...] = ()) -> None:
        if machine not in ("virt", "raspi3b"):
            raise ValueError(f"machine {machine!r}: virt or raspi3b")
        self.machine = machine
        self.image = image
        self.workdir = workdir
        self.memory_mb = memory_mb
        self.smp = smp
        self.netns = (os.geteuid() == 0 and shutil.which("unshare") is not None) if netns is None else netns
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.port: serial.Serial | None = None
        self.console_log = bytearray()
        self.boot_seconds = 0.0  # QEMU start to the ready line
        self.guest_uptime_at_ready = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    def qemu_argv(self, initrd: Path) -> list[str]:
        common = ["-display", "none", "-monitor", "none", "-serial", "pty", "-no-reboot",
                  "-kernel", str(self.image / "vmlinuz"), "-initrd", str(initrd),
                  "-append", "console=ttyAMA0 rdinit=/init quiet"]
        if self.machine == "raspi3b":  # fixed 4 x Cortex-A53 and 1 GiB; no virtio, so no network
            argv = ["qemu-system-aarch64", "-M", "raspi3b", "-dtb", str(self.image / "raspi3b.dtb"), *common]
        else:
            argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", str(self.smp),
                    "-m", str(self.memory_mb), *common, "-netdev", "user,id=n0",
                    "-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci"]
        argv += list(self.extra_args)
        if self.netns:
            # A namespace whose only interface is loopback, brought up before QEMU starts.
            argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "qemu", *argv]
        return argv

    def boot(self, timeout: float = 180.0) -> "Guest":
        self.workdir.mkdir(parents=True, exist_ok=True)
        overlay = project_overlay(self.workdir / "project.cpio")
        initrd = self.workdir / "initrd.cpio"
        with open(initrd, "wb") as out:
            base = "base-small.cpio" if self.machine == "raspi3b" else "base.cpio"   # see SMALL_BOARD_OMITS
            for part in (self.image / base, overlay):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.qemu_argv(initrd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        banner = b""
        while not (m := PTY.search(banner)):
            line = self.proc.stdout.readline()
            if not line:
                raise GuestError(f"QEMU exited before opening its console: {banner.decode(errors='replace')}")
            banner += line
        self.port = serial.Serial(m.group(1).decode(), baudrate=115200, timeout=0.2)
        out = self._read_until(READY, timeout, "the guest's ready line")
        self.boot_seconds = time.monotonic() - t0
        self.guest_uptime_at_ready = float(READY.search(out).group(1))
        self.port.write(b"PS1=''\n")  # no prompts between the lines of a command's output
        self.run("true", timeout=30)  # the shell is up
        return self

    def _read_until(self, pattern: re.Pattern, timeout: float, what: str) -> bytes:
        assert self.port is not None
        deadline = time.monotonic() + timeout
        buf = bytearray()
        while time.monotonic() < deadline:
            chunk = self.port.read(4096)
            if chunk:
                buf += chunk
                self.console_log += chunk
                if pattern.search(buf):
                    return bytes(buf)
            elif self.proc is not None and self.proc.poll() is not None:
                raise GuestError(f"QEMU exited ({self.proc.returncode}) while waiting for {what}")
        raise GuestError(f"no {what} within {timeout:g} s")

    def run(self, command: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run a shell command line in the guest; returns (exit status, output)."""
        assert self.port is not None
        tag = secrets.token_hex(4)
        end = re.compile(rb"<<END-" + tag.encode() + rb":(\d+)>>")
        start = f"<<BEGIN-{tag}>>"
        # Three lines, so that a command ending in '&' stays valid shell.
        self.port.write(f"echo '{start}'\n{command}\necho \"<<END-{tag}:$?>>\"\n".encode())
        out = self._read_until(end, timeout, f"the end of `{command}`")
        text = out.decode(errors="replace").replace("\r\n", "\n")
        body = text.split(start + "\n", 1)[-1]
        m = end.search(out)
        body = body[: body.rfind(f"<<END-{tag}:")]
        return int(m.group(1)), body

    def check(self, command: str, timeout: float = 120.0) -> str:
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise GuestError(f"`{command}` exited {rc}:\n{out}")
        return out

    def shutdown(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.port is not None:
            try:
                self.port.write(b"sync; poweroff -f\n")
            except (serial.SerialException, OSError):
                pass
            try:  # raspi3b halts on poweroff without QEMU exiting: do not wait long for it
                self.proc.wait(timeout if self.machine == "virt" else 3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.port is not None:
            try:
                self.console_log += self.port.read(65536)
            except (serial.SerialException, OSError):
                pass
            self.port.close()
        (self.workdir / "console.log").write_bytes(bytes(self.console_log))

    def host_command(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start a host process that the guest can reach at 10.0.2.2 (inside QEMU's namespace if any)."""
        if self.netns:
            assert self.proc is not None
            argv = ["nsenter", "-t", str(self.proc.pid), "-n", *argv]
        return subprocess.Popen(argv, **kw)

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description="boot the arm64 guest")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="boot, run one command line, print its output, power off")
    r.add_argument("command")
    r.add_argument("--timeout", type=float, default=600)
    sub.add_parser("console", help="boot with the console on this terminal (Ctrl-A X quits)")
    args = ap.parse_args()
    image = build(ROOT / "build" / "qemu")
    work = Path(tempfile.mkdtemp(prefix="aitn-guest-"))
    if args.cmd == "console":
        overlay = project_overlay(work / "project.cpio")
        initrd = work / "initrd.cpio"
        initrd.write_bytes((image / "base.cpio").read_bytes() + overlay.read_bytes())
        argv = Guest(image, work, netns=False).qemu_argv(initrd)
        argv[argv.index("-serial") + 1] = "mon:stdio"
        os.execvp(argv[0], argv)
    with Guest(image, work) as g:
        g.boot()
        print(f"booted in {g.boot_seconds:.1f} s (guest uptime {g.guest_uptime_at_ready:.1f} s)", file=sys.stderr)
        rc, out = g.run(args.command, args.timeout)
        print(out, end="")
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
