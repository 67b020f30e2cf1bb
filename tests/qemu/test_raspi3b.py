"""QEMU's raspi3b machine (BCM2837, the Raspberry Pi 3 B device tree): as far as it goes, the same handshake."""

from __future__ import annotations

from test_guest import both_worlds_pair_and_sign


def test_raspi3b_board_shape(raspi_guest):
    out = raspi_guest.check("uname -m; grep -c ^processor /proc/cpuinfo; "
                            "cat /proc/device-tree/model; echo; ls /dev/ttyAMA0 /dev/ttyS1")
    lines = out.split("\n")
    assert lines[0] == "aarch64" and lines[1] == "4"
    assert "Raspberry Pi 3 Model B" in lines[2]
    assert "/dev/ttyAMA0" in out and "/dev/ttyS1" in out  # console PL011 and the mini UART (sensor link)


def test_raspi3b_both_worlds_pair_and_sign(raspi_guest, guest_figures):
    both_worlds_pair_and_sign(raspi_guest, guest_figures.setdefault("raspi3b", {}), "qemu-raspi3b")
