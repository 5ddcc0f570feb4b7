"""TCP segments as the zoning app sees them in packet-ins, and the segments it sends (pure).

:func:`parse` reads one Ethernet frame (untagged, IPv4 without options
beyond its IHL, or IPv6 without extension headers) into a :class:`Segment`;
anything else raises :class:`~ryu_apps.packet.parse.BadPacket`.  The app never
builds a frame from nothing: :func:`reply` turns a frame one end sent into a
segment *from* that end (same Ethernet and IP header, so the fabric forwards it
the way it forwarded that end's own packets) with new flags, sequence numbers
and no payload: the resets of a refused connection and the out-of-window ACKs
that make each end tell its own sequence numbers on revocation.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ryu_apps.packet.checksum import inet_checksum
from ryu_apps.packet.parse import ETH_IPV4, ETH_IPV6, BadPacket, ethernet

TCP = 6
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True)
class Segment:
    """One TCP segment and where its headers are in the frame."""

    eth_src: str
    eth_dst: str
    version: int
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    ip_offset: int      # where the IP header starts in the frame
    tcp_offset: int     # where the TCP header starts
    header_len: int = 20  # the TCP header's length, options included

    @property
    def key(self) -> tuple[str, int, str, int]:
        """(source address, port, destination address, port)."""
        return (self.src, self.sport, self.dst, self.dport)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


def parse(frame: bytes) -> Segment:
    """The TCP segment in ``frame``; BadPacket when it is not one (or is truncated)."""
    eth = ethernet(frame)
    if eth.vlans:
        raise BadPacket("a VLAN-tagged frame (hosts are admitted untagged)")
    ip = eth.payload_offset
    if eth.ethertype == ETH_IPV4:
        if len(frame) < ip + 20:
            raise BadPacket("truncated IPv4 header")
        vihl, _tos, total, _id, frag, _ttl, proto = struct.unpack_from("!BBHHHBB", frame, ip)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or total < ihl or len(frame) < ip + total:
            raise BadPacket(f"bad IPv4 header (ihl {ihl}, total length {total}, frame {len(frame)} bytes)")
        if frag & 0x3FFF:
            raise BadPacket("an IPv4 fragment")
        if proto != TCP:
            raise BadPacket(f"IP protocol {proto} is not TCP")
        src, dst = (str(ipaddress.IPv4Address(frame[ip + 12:ip + 16])),
                    str(ipaddress.IPv4Address(frame[ip + 16:ip + 20])))
        tcp, end, version = ip + ihl, ip + total, 4
    elif eth.ethertype == ETH_IPV6:
        if len(frame) < ip + 40:
            raise BadPacket("truncated IPv6 header")
        plen, nxt = struct.unpack_from("!HB", frame, ip + 4)
        if nxt != TCP:
            raise BadPacket(f"IPv6 next header {nxt} is not TCP (extension headers are not followed)")
        if len(frame) < ip + 40 + plen:
            raise BadPacket(f"IPv6 payload length {plen} is longer than the frame")
        src, dst = (str(ipaddress.IPv6Address(frame[ip + 8:ip + 24])),
                    str(ipaddress.IPv6Address(frame[ip + 24:ip + 40])))
        tcp, end, version = ip + 40, ip + 40 + plen, 6
    else:
        raise BadPacket(f"ethertype {eth.ethertype:#06x} is not IP")
    if end < tcp + 20:
        raise BadPacket("truncated TCP header")
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", frame, tcp)
    doff = (off >> 4) * 4
    if doff < 20 or tcp + doff > end:
        raise BadPacket(f"TCP data offset {doff} is outside the segment")
    return Segment(eth.src, eth.dst, version, src, dst, sport, dport, seq, ack, flags, window,
                   bytes(frame[tcp + doff:end]), ip, tcp, doff)


def reply(template: bytes, seg: Segment, *, seq: int, ack: int, flags: int, reverse: bool = False,
          payload: bytes = b"") -> bytes:
    """A segment with ``template``'s Ethernet, IP addresses and ports (``seg``, its parse), the
    given sequence numbers, flags and payload, checksums computed.  A forward segment keeps the
    template's TCP options (its timestamps: a peer that negotiated them expects them); a reverse
    one has none.  ``reverse``: addressed back to the sender (MACs, addresses and ports swapped),
    to be sent straight out of the port the template came in on."""
    ip = seg.ip_offset
    sport, dport = (seg.dport, seg.sport) if reverse else (seg.sport, seg.dport)
    options = b"" if reverse else bytes(template[seg.tcp_offset + 20:seg.tcp_offset + seg.header_len])
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      (20 + len(options)) // 4 << 4, flags, 0 if flags & RST else max(seg.window, 1), 0, 0)
    tcp += options + payload
    eth = bytes(template[:ip])
    if reverse:
        eth = eth[6:12] + eth[0:6] + eth[12:]
    if seg.version == 4:
        hdr = bytearray(template[ip:ip + 20])
        if reverse:
            hdr[12:16], hdr[16:20] = hdr[16:20], hdr[12:16]
            hdr[8] = 64                                # a fresh TTL
        hdr[0] = 0x45                                  # (options dropped)
        struct.pack_into("!H", hdr, 2, 20 + len(tcp))
        struct.pack_into("!H", hdr, 6, 0x4000)         # DF, no fragment
        struct.pack_into("!H", hdr, 10, 0)
        struct.pack_into("!H", hdr, 10, inet_checksum(bytes(hdr)))
        pseudo = bytes(hdr[12:20]) + struct.pack("!BBH", 0, TCP, len(tcp))
    else:
        hdr = bytearray(template[ip:ip + 40])
        if reverse:
            hdr[8:24], hdr[24:40] = hdr[24:40], hdr[8:24]
            hdr[7] = 64
        struct.pack_into("!H", hdr, 4, len(tcp))
        pseudo = bytes(hdr[8:40]) + struct.pack("!IxxxB", len(tcp), TCP)
    csum = inet_checksum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    return eth + bytes(hdr) + tcp


def seq_after(a: int, b: int) -> bool:
    """Is sequence number ``a`` after ``b`` (mod 2**32, RFC 1982 style)?"""
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000
