"""pcapng, the capture file format of Wireshark and tcpdump: the few blocks a frame capture needs.

Written from the pcapng specification (IETF draft-ietf-opsawg-pcapng). A file is a sequence of
blocks; every block is ``type:u32 total_length:u32 body total_length:u32`` with the length
repeated at its end and the body padded to 4 bytes. What this module writes (little-endian):

- Section Header Block (0x0A0D0D0A): byte-order magic 0x1A2B3C4D, version 1.0, section length -1
  (not computed), option ``shb_userappl``.
- Interface Description Block (1): one per transport (a connection between the worlds), link type
  ``LINKTYPE`` (DLT_USER5), snaplen 0 (no limit), options ``if_name`` (the transport URL),
  ``if_description`` and ``if_tsresol`` = 6 (microseconds).
- Enhanced Packet Block (6): one per frame, the frame's bytes exactly as on the wire, a 64-bit
  microsecond timestamp, options ``epb_flags`` (direction: outbound = normal world -> secure
  world, inbound = secure world -> normal world) and ``opt_comment`` (only on bytes that were not
  a whole frame, saying why).

The reader accepts either byte order, several sections, any ``if_tsresol``, and skips block types
it does not know (a file saved again by Wireshark may carry more). Encoding and decoding are pure;
``Writer`` appends blocks to a binary stream the caller opened.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import IntegrityError

#: LINKTYPE_USER5 (DLT_USER5, 147 + 5); scripts/wireshark/aitn_tee.lua registers for wtap USER5.
LINKTYPE = 152
SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
#: if_tsresol 6: timestamps count microseconds.
TSRESOL_US = 6

OPT_END = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
EPB_FLAGS = 2
FLAG_INBOUND = 0b01
FLAG_OUTBOUND = 0b10
_DIRECTION_MASK = 0b11
_MAX_BLOCK = 16 << 20  # refuse absurd lengths before slicing


class PcapngError(IntegrityError):
    """A file that is not a pcapng capture this reader can follow; says where (byte offset) and why."""


class PcapngTruncated(PcapngError):
    """The file ends inside a block (a capture cut short, or a partial copy)."""


@dataclass(frozen=True)
class Interface:
    """One Interface Description Block: here, one transport between the worlds."""

    name: str  # if_name: the transport URL
    description: str = ""
    linktype: int = LINKTYPE
    snaplen: int = 0
    tsresol: int = TSRESOL_US  # if_tsresol as stored: 10^-n seconds, or 2^-n with bit 7 set


@dataclass(frozen=True)
class Packet:
    """One Enhanced Packet Block."""

    interface: int  # index into the file's interfaces (across sections, in file order)
    ts_us: int  # microseconds since the Unix epoch
    data: bytes
    outbound: bool | None  # normal world -> secure world; None when the flags say nothing
    comment: str = ""
    original_length: int | None = None  # when it differs from len(data) (a snapped packet)

    @property
    def time(self) -> float:
        return self.ts_us / 1e6


@dataclass(frozen=True)
class Capture:
    interfaces: list[Interface]
    packets: list[Packet]
    application: str = ""


# -- encoding ------------------------------------------------------------------------------------


def _pad(n: int) -> int:
    return -n % 4


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(_pad(len(value)))


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(_option(c, v) for c, v in opts) + _option(OPT_END, b"")


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header(application: str = "") -> bytes:
    opts = [(SHB_USERAPPL, application.encode())] if application else []
    return _block(SHB_TYPE, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts))


def interface_block(iface: Interface) -> bytes:
    opts = [(IF_NAME, iface.name.encode())]
    if iface.description:
        opts.append((IF_DESCRIPTION, iface.description.encode()))
    opts.append((IF_TSRESOL, bytes([iface.tsresol])))
    return _block(IDB_TYPE, struct.pack("<HHI", iface.linktype, 0, iface.snaplen) + _options(opts))


def packet_block(pkt: Packet) -> bytes:
    """An EPB for ``pkt``; its timestamp is written in microseconds (the interfaces' if_tsresol)."""
    if pkt.ts_us < 0 or pkt.ts_us >> 64:
        raise ValueError(f"timestamp {pkt.ts_us} us does not fit 64 bits")
    opts: list[tuple[int, bytes]] = []
    if pkt.outbound is not None:
        opts.append((EPB_FLAGS, struct.pack("<I", FLAG_OUTBOUND if pkt.outbound else FLAG_INBOUND)))
    if pkt.comment:
        opts.append((OPT_COMMENT, pkt.comment.encode()))
    n = len(pkt.data)
    orig = n if pkt.original_length is None else pkt.original_length
    head = struct.pack("<IIIII", pkt.interface, pkt.ts_us >> 32, pkt.ts_us & 0xFFFFFFFF, n, orig)
    return _block(EPB_TYPE, head + pkt.data + bytes(_pad(n)) + _options(opts))


def encode(capture: Capture) -> bytes:
    """A whole one-section file."""
    return (section_header(capture.application) + b"".join(interface_block(i) for i in capture.interfaces)
            + b"".join(packet_block(p) for p in capture.packets))


class Writer:
    """Appends blocks to ``stream`` (opened "wb" by the caller), flushing after each block.

    Each block goes out in one write, so a reader never sees half a block unless the process was
    killed inside that write. Not thread-safe: callers that write from several threads lock.
    """

    def __init__(self, stream: BinaryIO, application: str = "") -> None:
        self.stream = stream
        self.interfaces: list[Interface] = []
        self.packets = 0
        self._write(section_header(application))

    def _write(self, block: bytes) -> None:
        self.stream.write(block)
        self.stream.flush()

    def add_interface(self, iface: Interface) -> int:
        """Write an IDB; returns its interface id for ``write``."""
        self._write(interface_block(iface))
        self.interfaces.append(iface)
        return len(self.interfaces) - 1

    def write(self, pkt: Packet) -> None:
        if not 0 <= pkt.interface < len(self.interfaces):
            raise ValueError(f"interface {pkt.interface} was not added")
        self._write(packet_block(pkt))
        self.packets += 1


# -- decoding ------------------------------------------------------------------------------------


def _parse_options(data: bytes, start: int, end: int, order: str, where: int) -> list[tuple[int, bytes]]:
    out = []
    pos = start
    while pos + 4 <= end:
        code, length = struct.unpack_from(order + "HH", data, pos)
        pos += 4
        if code == OPT_END:
            break
        if pos + length > end:
            raise PcapngError(f"block at offset {where}: option {code} of {length} bytes runs past the block")
        out.append((code, bytes(data[pos:pos + length])))
        pos += length + _pad(length)
    return out


def _ts_to_us(ts: int, tsresol: int) -> int:
    if tsresol & 0x80:
        return (ts * 1_000_000) >> (tsresol & 0x7F)
    if tsresol >= 6:
        return ts // 10 ** (tsresol - 6)
    return ts * 10 ** (6 - tsresol)


def parse(data: bytes) -> Capture:
    """Decode a pcapng file; raises PcapngTruncated or PcapngError, saying at which offset."""
    if len(data) >= 4 and data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                                       b"\xa1\xb2\x3c\x4d"):
        raise PcapngError("a classic pcap file, not pcapng (convert it with editcap -F pcapng)")
    if not data:
        raise PcapngTruncated("empty file: no Section Header Block")
    if data[:4] != SHB_TYPE.to_bytes(4, "little")[:len(data)]:
        raise PcapngError("not a pcapng file: it does not start with a Section Header Block")
    interfaces: list[Interface] = []
    packets: list[Packet] = []
    section: list[int] = []  # this section's interface ids -> global index
    application = ""
    order = "<"
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise PcapngTruncated(f"block at offset {pos}: {len(data) - pos} bytes left, a block needs at least 12")
        if struct.unpack_from("<I", data, pos)[0] == SHB_TYPE:
            if len(data) - pos < 28:
                raise PcapngTruncated(f"section header at offset {pos}: {len(data) - pos} of 28 bytes")
            magic = data[pos + 8:pos + 12]
            if magic == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise PcapngError(f"section header at offset {pos}: bad byte-order magic {magic.hex()}")
            major = struct.unpack_from(order + "H", data, pos + 12)[0]
            if major != 1:
                raise PcapngError(f"section header at offset {pos}: version {major}, this reader knows 1")
            section = []
        btype, total = struct.unpack_from(order + "II", data, pos)
        if total < 12 or total % 4 or total > _MAX_BLOCK:
            raise PcapngError(f"block at offset {pos}: total length {total} is not a valid block length")
        if pos + total > len(data):
            raise PcapngTruncated(f"block at offset {pos} (type 0x{btype:08X}) announces {total} bytes, "
                                  f"{len(data) - pos} left")
        (trailer,) = struct.unpack_from(order + "I", data, pos + total - 4)
        if trailer != total:
            raise PcapngError(f"block at offset {pos}: length {total} at its start, {trailer} at its end")
        body, end = pos + 8, pos + total - 4
        if btype == SHB_TYPE:
            for code, value in _parse_options(data, body + 16, end, order, pos):
                if code == SHB_USERAPPL and not application:
                    application = value.decode(errors="replace")
        elif btype == IDB_TYPE:
            if end - body < 8:
                raise PcapngError(f"interface block at offset {pos}: body of {end - body} bytes")
            linktype, _res, snaplen = struct.unpack_from(order + "HHI", data, body)
            opts = dict(_parse_options(data, body + 8, end, order, pos))
            tsresol = opts[IF_TSRESOL][0] if IF_TSRESOL in opts and opts[IF_TSRESOL] else TSRESOL_US
            section.append(len(interfaces))
            interfaces.append(Interface(opts.get(IF_NAME, b"").decode(errors="replace"),
                                        opts.get(IF_DESCRIPTION, b"").decode(errors="replace"),
                                        linktype, snaplen, tsresol))
        elif btype == EPB_TYPE:
            if end - body < 20:
                raise PcapngError(f"packet block at offset {pos}: body of {end - body} bytes")
            if_id, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(order + "IIIII", data, body)
            if body + 20 + caplen > end:
                raise PcapngError(f"packet block at offset {pos}: {caplen} captured bytes run past the block")
            if if_id >= len(section):
                raise PcapngError(f"packet block at offset {pos}: interface {if_id} was not described")
            iface = section[if_id]
            pdata = bytes(data[body + 20:body + 20 + caplen])
            outbound = None
            comment = ""
            for code, value in _parse_options(data, body + 20 + caplen + _pad(caplen), end, order, pos):
                if code == EPB_FLAGS and len(value) == 4:
                    direction = struct.unpack(order + "I", value)[0] & _DIRECTION_MASK
                    outbound = {FLAG_OUTBOUND: True, FLAG_INBOUND: False}.get(direction)
                elif code == OPT_COMMENT and not comment:
                    comment = value.decode(errors="replace")
            ts_us = _ts_to_us(ts_hi << 32 | ts_lo, interfaces[iface].tsresol)
            packets.append(Packet(iface, ts_us, pdata, outbound, comment, origlen if origlen != caplen else None))
        pos += total
    return Capture(interfaces, packets, application)
