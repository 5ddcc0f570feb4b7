"""Bounded parsing of packet-in data.

os-ken's ``packet.Packet()`` walks every header it recognises and can loop
forever on crafted bytes (Ryu issue #130).  Packet-ins are parsed here
instead: a fixed, small number of headers, every offset checked against the
buffer, no loops driven by packet contents beyond a constant bound.  Apps ask
only for what they need; anything malformed raises :class:`BadPacket`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ = 0x0806, 0x0800, 0x86DD, 0x8100, 0x88A8
MAX_VLAN_TAGS = 2
MAX_ND_OPTIONS = 8


class BadPacket(ValueError):
    """The packet is truncated or malformed where the app needed to read."""


@dataclass(frozen=True)
class Ethernet:
    dst: str
    src: str
    ethertype: int
    vlans: tuple[int, ...]
    payload_offset: int


@dataclass(frozen=True)
class NeighborSolicitation:
    eth: Ethernet
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    hop_limit: int
    target: ipaddress.IPv6Address
    source_lladdr: str | None


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def ethernet(data: bytes) -> Ethernet:
    if len(data) < 14:
        raise BadPacket(f"frame of {len(data)} bytes is shorter than an Ethernet header")
    dst, src = _mac(data[0:6]), _mac(data[6:12])
    (ethertype,) = struct.unpack_from("!H", data, 12)
    off, vlans = 14, []
    while ethertype in (ETH_VLAN, ETH_QINQ):
        if len(vlans) == MAX_VLAN_TAGS:
            raise BadPacket(f"more than {MAX_VLAN_TAGS} VLAN tags")
        if len(data) < off + 4:
            raise BadPacket("truncated VLAN tag")
        tci, ethertype = struct.unpack_from("!HH", data, off)
        vlans.append(tci & 0x0FFF)
        off += 4
    return Ethernet(dst, src, ethertype, tuple(vlans), off)


def neighbor_solicitation(data: bytes) -> NeighborSolicitation:
    """Parse an untagged IPv6 NS (no extension headers), or raise BadPacket."""
    eth = ethernet(data)
    if eth.ethertype != ETH_IPV6 or eth.vlans:
        raise BadPacket("not an untagged IPv6 frame")
    off = eth.payload_offset
    if len(data) < off + 40:
        raise BadPacket("truncated IPv6 header")
    ver = data[off] >> 4
    (plen,) = struct.unpack_from("!H", data, off + 4)
    nxt, hlim = data[off + 6], data[off + 7]
    if ver != 6:
        raise BadPacket(f"IP version {ver} in an IPv6 frame")
    if nxt != 58:
        raise BadPacket(f"next header {nxt} is not ICMPv6")
    src = ipaddress.IPv6Address(data[off + 8:off + 24])
    dst = ipaddress.IPv6Address(data[off + 24:off + 40])
    icmp = off + 40
    end = min(len(data), icmp + plen)
    if end < icmp + 24:
        raise BadPacket("truncated neighbor solicitation")
    if data[icmp] != 135 or data[icmp + 1] != 0:
        raise BadPacket(f"ICMPv6 type {data[icmp]} code {data[icmp + 1]} is not a neighbor solicitation")
    target = ipaddress.IPv6Address(data[icmp + 8:icmp + 24])
    sll = None
    opt = icmp + 24
    for _ in range(MAX_ND_OPTIONS):
        if opt + 2 > end:
            break
        otype, olen = data[opt], data[opt + 1] * 8
        if olen == 0 or opt + olen > end:
            raise BadPacket("malformed ND option length")
        if otype == 1 and olen >= 8:
            sll = _mac(data[opt + 2:opt + 8])
        opt += olen
    return NeighborSolicitation(eth, src, dst, hlim, target, sll)
