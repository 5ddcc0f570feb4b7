"""Bounded parsing of the frames an access point sends the cloud router (unknown or moved clients).

Same rules as :mod:`ryu_apps.packet.parse`: a fixed number of headers, every
offset checked, :class:`~ryu_apps.packet.parse.BadPacket` for anything
malformed.  The controller needs only the client's MAC and, to learn an
unknown client's address, the IPv4 source of an IPv4 packet or the sender
address of an ARP packet.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ryu_apps.packet.parse import ETH_ARP, ETH_IPV4, BadPacket, ethernet


@dataclass(frozen=True)
class ClientFrame:
    src: str                 # the client's MAC
    ipv4: str | None         # IPv4 source (IPv4) or sender address (ARP), when present and usable
    kind: str                # "ipv4" | "arp" | "other"


def client_frame(data: bytes) -> ClientFrame:
    eth = ethernet(data)
    if eth.vlans:
        raise BadPacket("clients send untagged frames")
    if int(eth.src[:2], 16) & 1 or eth.src == "00:00:00:00:00:00":
        raise BadPacket(f"source MAC {eth.src} is not a unicast address")
    off = eth.payload_offset
    if eth.ethertype == ETH_IPV4:
        if len(data) < off + 20:
            raise BadPacket("truncated IPv4 header")
        ver, ihl = data[off] >> 4, data[off] & 0x0F
        if ver != 4 or ihl < 5:
            raise BadPacket(f"IPv4 header with version {ver} and length {ihl * 4}")
        src = ipaddress.IPv4Address(data[off + 12:off + 16])
        return ClientFrame(eth.src, _usable(src), "ipv4")
    if eth.ethertype == ETH_ARP:
        if len(data) < off + 28:
            raise BadPacket("truncated ARP packet")
        htype, ptype, hlen, plen = struct.unpack_from("!HHBB", data, off)
        if (htype, ptype, hlen, plen) != (1, ETH_IPV4, 6, 4):
            raise BadPacket("ARP for something other than IPv4 over Ethernet")
        spa = ipaddress.IPv4Address(data[off + 14:off + 18])
        return ClientFrame(eth.src, _usable(spa), "arp")
    return ClientFrame(eth.src, None, "other")


def _usable(a: ipaddress.IPv4Address) -> str | None:
    if a.is_unspecified or a.is_multicast or a.is_loopback or a.is_link_local or a == ipaddress.IPv4Address(
            "255.255.255.255"):
        return None
    return str(a)
