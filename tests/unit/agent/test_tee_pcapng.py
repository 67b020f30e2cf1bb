"""agent.tee.pcapng: the capture file format, written and read back, checked against the specification's layout."""

from __future__ import annotations

import io
import struct

import pytest

from agent.errors import IntegrityError
from agent.tee import pcapng
from agent.tee.pcapng import Capture, Interface, Packet, PcapngError, PcapngTruncated

# A real Unix-epoch timestamp (2024-01-01T00:00:00.123456Z) needs both 32-bit halves of the EPB timestamp.
T = 1_704_067_200_123_456


def sample() -> Capture:
    ifaces = [Interface("unix:///run/aitn/tee.sock", "aitn relay connection 1"), Interface("unix:///x")]
    packets = [Packet(0, T, b"", True),  # every padding length: 0, 1, 2, 3, 4 bytes of data
               Packet(0, T + 1, b"\x01", False),
               Packet(1, T + 2, b"\x01\x02", None),
               Packet(0, T + 3_000_000, b"\x01\x02\x03", True, "crc32 mismatch"),
               Packet(1, 2**40 + 7, bytes(range(256)) * 3, False)]
    return Capture(ifaces, packets, "aitn test")


def blocks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, total length, body) for each block, checking that the length is repeated at the block's end."""
    out, pos = [], 0
    while pos < len(data):
        btype, total = struct.unpack_from("<II", data, pos)
        assert total % 4 == 0
        assert struct.unpack_from("<I", data, pos + total - 4)[0] == total
        out.append((btype, total, data[pos + 8:pos + total - 4]))
        pos += total
    assert pos == len(data)
    return out


def test_round_trip_keeps_interfaces_timestamps_directions_comments_and_bytes():
    c = sample()
    back = pcapng.parse(pcapng.encode(c))
    assert back == c
    assert [p.outbound for p in back.packets] == [True, False, None, True, False]
    assert back.packets[3].time == pytest.approx(1_704_067_203.123459)


def test_writer_streams_the_same_bytes_as_encode():
    c = sample()
    buf = io.BytesIO()
    w = pcapng.Writer(buf, c.application)
    for iface in c.interfaces:
        w.add_interface(iface)
    for p in c.packets:
        w.write(p)
    assert buf.getvalue() == pcapng.encode(c)
    assert w.packets == 5
    with pytest.raises(ValueError):
        w.write(Packet(2, T, b"x", True))  # no such interface


def test_block_structure():
    data = pcapng.encode(sample())
    got = blocks(data)
    assert [t for t, _, _ in got] == [0x0A0D0D0A, 1, 1, 6, 6, 6, 6, 6]
    shb = got[0][2]
    assert shb[:4] == b"\x4d\x3c\x2b\x1a"  # byte-order magic 0x1A2B3C4D, little-endian
    assert struct.unpack_from("<HHq", shb, 4) == (1, 0, -1)
    linktype, reserved, snaplen = struct.unpack_from("<HHI", got[1][2])
    assert (linktype, reserved, snaplen) == (152, 0, 0)  # LINKTYPE_USER5, no snap limit
    assert b"\x09\x00\x01\x00\x06\x00\x00\x00" in got[1][2]  # if_tsresol = 6: microseconds
    # EPB: interface, timestamp high and low halves, captured and original length.
    assert struct.unpack_from("<IIIII", got[3][2]) == (0, T >> 32, T & 0xFFFFFFFF, 0, 0)
    assert b"\x02\x00\x04\x00\x02\x00\x00\x00" in got[3][2]  # epb_flags: outbound
    assert b"\x02\x00\x04\x00\x01\x00\x00\x00" in got[4][2]  # epb_flags: inbound
    assert b"\x02\x00\x04\x00" not in got[5][2][20:]  # no direction: no flags option


# The smallest useful capture, byte for byte as the pcapng specification lays it out.
KNOWN = bytes.fromhex(
    "0a0d0d0a" "1c000000"  # SHB, 28 bytes
    "4d3c2b1a" "0100" "0000" "ffffffffffffffff"  # byte-order magic, version 1.0, section length -1
    "1c000000"
    "01000000" "28000000"  # IDB, 40 bytes
    "9800" "0000" "00000000"  # link type 152, reserved, snaplen 0
    "0200" "0100" "7500" "0000"  # if_name "u", padded to 4
    "0900" "0100" "06000000"  # if_tsresol 6, padded
    "0000" "0000"  # opt_endofopt
    "28000000"
    "06000000" "30000000"  # EPB, 48 bytes
    "00000000" "01000000" "02000000"  # interface 0, timestamp 0x00000001_00000002
    "03000000" "03000000"  # captured 3, original 3
    "e00e77" "00"  # data, padded
    "0200" "0400" "02000000"  # epb_flags outbound
    "0000" "0000"
    "30000000")


def test_known_file_byte_for_byte():
    c = Capture([Interface("u")], [Packet(0, 0x1_00000002, b"\xe0\x0e\x77", True)])
    assert pcapng.encode(c) == KNOWN
    assert pcapng.parse(KNOWN) == c


def test_every_cut_inside_a_block_is_a_clear_truncation_error():
    data = pcapng.encode(sample())
    ends = set()
    pos = 0
    for _, total, _ in blocks(data):
        pos += total
        ends.add(pos)
    for cut in range(len(data)):
        if cut in ends:
            # A cut between blocks is a shorter, valid capture (pcapng has no trailer).
            assert len(pcapng.parse(data[:cut]).packets) < 5
            continue
        with pytest.raises(PcapngTruncated) as e:
            pcapng.parse(data[:cut])
        assert "offset" in str(e.value) or "empty" in str(e.value)
    with pytest.raises(PcapngTruncated, match=r"block at offset 48 \(type 0x00000001\) announces 92 bytes, 28 left"):
        pcapng.parse(data[:76])


def test_truncation_error_is_an_integrity_error_with_its_exit_code():
    with pytest.raises(IntegrityError) as e:
        pcapng.parse(b"")
    assert isinstance(e.value, PcapngTruncated) and e.value.exit_code == 31


@pytest.mark.parametrize("data, message", [
    (b"\xd4\xc3\xb2\xa1" + bytes(20), "classic pcap"),
    (b"GIF89a" + bytes(30), "not a pcapng file"),
    (KNOWN[:8] + b"\x00\x00\x00\x00" + KNOWN[12:], "byte-order magic"),
    (KNOWN[:24] + b"\x20\x00\x00\x00" + KNOWN[28:], "length 28 at its start, 32 at its end"),
    (KNOWN[:4] + b"\x1e\x00\x00\x00" + KNOWN[8:], "not a valid block length"),
    (KNOWN[:76] + b"\x01" + KNOWN[77:], "interface 1 was not described"),
    (KNOWN[:88] + b"\x40" + KNOWN[89:], "captured bytes run past the block"),
])
def test_damaged_files(data, message):
    with pytest.raises(PcapngError, match=message):
        pcapng.parse(data)


def _be_block(btype: int, body: bytes) -> bytes:
    return struct.pack(">II", btype, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))


def _be_opt(code: int, value: bytes) -> bytes:
    return struct.pack(">HH", code, len(value)) + value + bytes(-len(value) % 4)


def test_reads_big_endian_other_resolutions_and_skips_unknown_blocks():
    """Files from elsewhere: big-endian sections, nanosecond and 2^-n clocks, blocks this writer never makes."""
    shb = _be_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_ns = _be_block(1, struct.pack(">HHI", 152, 0, 0) + _be_opt(2, b"ns") + _be_opt(9, b"\x09") + _be_opt(0, b""))
    idb_pow2 = _be_block(1, struct.pack(">HHI", 152, 0, 0) + _be_opt(9, b"\x94") + _be_opt(0, b""))  # 2^-20 s
    ts_ns = 1_704_067_200_123_456_789
    epb_ns = _be_block(6, struct.pack(">IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, 1, 1) + b"A\0\0\0"
                       + _be_opt(2, struct.pack(">I", 1)) + _be_opt(0, b""))
    epb_pow2 = _be_block(6, struct.pack(">IIIII", 1, 0, 3 << 20, 1, 1) + b"B\0\0\0")
    isb = _be_block(5, bytes(12))  # an Interface Statistics Block: skipped
    custom = _be_block(0x40000BAD, b"vendor data!")
    c = pcapng.parse(shb + idb_ns + isb + idb_pow2 + epb_ns + custom + epb_pow2 + KNOWN)
    assert [i.name for i in c.interfaces] == ["ns", "", "u"]
    assert [(p.interface, p.ts_us, p.data, p.outbound) for p in c.packets] == [
        (0, 1_704_067_200_123_456, b"A", False), (1, 3_000_000, b"B", None), (2, 0x1_00000002, b"\xe0\x0e\x77", True)]
