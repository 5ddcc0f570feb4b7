"""Wire formats of the multicast_standby app: bounded parsing, and the frames it builds.

Everything that reaches the controller from the data plane is parsed here, in
the bounded style of :mod:`ryu_apps.packet.parse` (never os-ken's
``packet.Packet()``): a fixed set of headers, every offset checked against the
buffer, loops bounded by constants.  Malformed input raises
:class:`~ryu_apps.packet.parse.BadPacket`.

Standby-path establishment request (raw Ethernet, one per hop)::

    Ethernet  dst 03:00:4d:53:42:59 (locally administered group address)
              src 02 + low 40 bits of the transmitting switch's dpid
              type 0x88b5 (IEEE 802 local experimental ethertype 1)
    offset  size  field
      0      1    version          1
      1      1    type             1 = standby-path establishment request
      2      1    hops_left        32 at the destination device, -1 per hop; 0 is dropped
      3      1    flags            0 (reserved)
      4      4    request_id       one per attempt of one destination for one (S,G)
      8      8    dest_device      dpid of the destination device that asks for a standby path
     16      8    sender_device    dpid of the switch that transmitted this copy (checked
                                   against the topology: the switch wired to the in-port)
     24      4    source           IPv4 source S of the channel (the request is addressed to it)
     28      4    group            IPv4 group G
     32      2    vid              VLAN id the standby copies of (S,G) for this destination carry
     34      2    reserved         0
    (36 bytes; the frame is padded to 60)

IGMP: v1/v2 reports (0x12/0x16), v2 leave (0x17), v3 reports (0x22) with up to
``MAX_RECORDS`` group records of up to ``MAX_SOURCES`` sources, queries (0x11,
recognised so a foreign querier is noticed).  Checksums are verified when the
whole message is present; a v3 report cut short by the packet-in bound keeps
its complete records and is flagged ``truncated``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ryu_apps.packet.parse import ETH_IPV4, BadPacket, ethernet

ETH_STANDBY = 0x88B5
REQUEST_DST_MAC = "03:00:4d:53:42:59"
REQUEST_VERSION = 1
REQUEST_TYPE = 1
REQUEST_HOPS = 32
_REQ = struct.Struct("!BBBBIQQ4s4sHH")
REQUEST_LEN = _REQ.size  # 36

IGMP_PROTO = 2
IGMP_QUERY, IGMP_V1_REPORT, IGMP_V2_REPORT, IGMP_V2_LEAVE, IGMP_V3_REPORT = 0x11, 0x12, 0x16, 0x17, 0x22
# IGMPv3 group record types (RFC 3376 4.2.12)
MODE_IS_INCLUDE, MODE_IS_EXCLUDE, CHANGE_TO_INCLUDE, CHANGE_TO_EXCLUDE, ALLOW_NEW, BLOCK_OLD = 1, 2, 3, 4, 5, 6
RECORD_NAMES = {1: "IS_IN", 2: "IS_EX", 3: "TO_IN", 4: "TO_EX", 5: "ALLOW", 6: "BLOCK"}
MAX_RECORDS = 256
MAX_SOURCES = 64

LINK_LOCAL = ipaddress.IPv4Network("224.0.0.0/24")
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
ALL_HOSTS = "224.0.0.1"
ALL_HOSTS_MAC = "01:00:5e:00:00:01"


def _ip(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def dpid_mac(dpid: int) -> str:
    """A locally administered unicast MAC naming a switch (02 + low 40 bits of the dpid)."""
    low = dpid & ((1 << 40) - 1)
    return ":".join(f"{b:02x}" for b in bytes([0x02]) + low.to_bytes(5, "big"))


# ---------------------------------------------------------------------------
# IPv4 (the part these parsers need)


@dataclass(frozen=True)
class IPv4:
    src: str
    dst: str
    proto: int
    ttl: int
    header_len: int
    total_len: int
    offset: int          # of the IPv4 header in the frame
    payload: bytes       # what the frame holds of the payload (may be cut by the packet-in bound)
    truncated: bool      # the frame ended before total_len


def ipv4(data: bytes) -> IPv4:
    eth = ethernet(data)
    if eth.ethertype != ETH_IPV4:
        raise BadPacket(f"ethertype {eth.ethertype:#06x} is not IPv4")
    if eth.vlans:
        raise BadPacket("VLAN-tagged frame from a host port")
    off = eth.payload_offset
    if len(data) < off + 20:
        raise BadPacket("truncated IPv4 header")
    vihl = data[off]
    if vihl >> 4 != 4:
        raise BadPacket(f"IP version {vihl >> 4} in an IPv4 frame")
    hlen = (vihl & 0x0F) * 4
    if hlen < 20:
        raise BadPacket(f"IPv4 header length {hlen} < 20")
    if len(data) < off + hlen:
        raise BadPacket("truncated IPv4 options")
    (total,) = struct.unpack_from("!H", data, off + 2)
    if total < hlen:
        raise BadPacket(f"IPv4 total length {total} < header length {hlen}")
    (frag,) = struct.unpack_from("!H", data, off + 6)
    if frag & 0x3FFF:
        raise BadPacket("IPv4 fragment")
    end = min(len(data), off + total)
    return IPv4(_ip(data[off + 12:off + 16]), _ip(data[off + 16:off + 20]), data[off + 9], data[off + 8],
                hlen, total, off, bytes(data[off + hlen:end]), len(data) < off + total)


# ---------------------------------------------------------------------------
# IGMP


@dataclass(frozen=True)
class GroupRecord:
    rtype: int                   # MODE_IS_INCLUDE ... BLOCK_OLD; v1/v2 report = CHANGE_TO_EXCLUDE {}, leave = TO_IN {}
    group: str
    sources: tuple[str, ...] = ()

    def __str__(self) -> str:
        src = ",".join(self.sources)
        return f"{RECORD_NAMES.get(self.rtype, self.rtype)}({self.group}{{{src}}})"


@dataclass(frozen=True)
class Igmp:
    kind: str                    # query | report | leave
    version: int                 # 1, 2 or 3
    src: str                     # IPv4 source of the message
    records: tuple[GroupRecord, ...]
    truncated: bool = False      # records were cut off by the packet-in bound
    skipped: tuple[str, ...] = ()  # records ignored, and why

    def describe(self) -> str:
        return f"IGMPv{self.version} {self.kind} " + " ".join(str(r) for r in self.records)


def _group_ok(group: str) -> str | None:
    g = ipaddress.IPv4Address(group)
    if g not in MULTICAST:
        return f"{group} is not a multicast group"
    if g in LINK_LOCAL:
        return f"{group} is link-local (224.0.0.0/24 is never routed)"
    return None


def parse_igmp(data: bytes) -> Igmp:
    """Parse an IGMP message in an untagged IPv4 frame, or raise BadPacket."""
    ip = ipv4(data)
    if ip.proto != IGMP_PROTO:
        raise BadPacket(f"IP protocol {ip.proto} is not IGMP")
    msg = ip.payload
    full_len = ip.total_len - ip.header_len
    if len(msg) < 8:
        raise BadPacket(f"IGMP message of {len(msg)} bytes is shorter than 8")
    if not ip.truncated and inet_checksum(msg[:full_len]) != 0:
        raise BadPacket("IGMP checksum mismatch")
    mtype = msg[0]
    if mtype == IGMP_QUERY:
        version = 3 if full_len >= 12 else (2 if msg[1] else 1)
        group = _ip(msg[4:8])
        return Igmp("query", version, ip.src, (GroupRecord(0, group),) if group != "0.0.0.0" else ())
    if mtype in (IGMP_V1_REPORT, IGMP_V2_REPORT, IGMP_V2_LEAVE):
        group = _ip(msg[4:8])
        why = _group_ok(group)
        if why:
            raise BadPacket(why)
        version = 1 if mtype == IGMP_V1_REPORT else 2
        if mtype == IGMP_V2_LEAVE:
            return Igmp("leave", 2, ip.src, (GroupRecord(CHANGE_TO_INCLUDE, group),))
        return Igmp("report", version, ip.src, (GroupRecord(CHANGE_TO_EXCLUDE, group),))
    if mtype != IGMP_V3_REPORT:
        raise BadPacket(f"IGMP type {mtype:#04x} is not a query, report or leave")
    (nrec,) = struct.unpack_from("!H", msg, 6)
    if nrec > MAX_RECORDS:
        raise BadPacket(f"IGMPv3 report with {nrec} records (more than {MAX_RECORDS})")
    avail = min(len(msg), full_len)
    off, records, skipped, truncated = 8, [], [], False
    for _ in range(nrec):
        if off + 8 > avail:
            truncated = True
            break
        rtype, aux, nsrc = msg[off], msg[off + 1], struct.unpack_from("!H", msg, off + 2)[0]
        group = _ip(msg[off + 4:off + 8])
        size = 8 + 4 * nsrc + 4 * aux
        if off + size > avail:
            if avail < full_len:  # cut by the packet-in bound, not malformed
                truncated = True
                break
            raise BadPacket(f"IGMPv3 record for {group} claims {nsrc} sources past the end of the message")
        if nsrc > MAX_SOURCES:
            skipped.append(f"{group}: {nsrc} sources (more than {MAX_SOURCES})")
        elif rtype not in RECORD_NAMES:
            skipped.append(f"{group}: unknown record type {rtype}")
        elif _group_ok(group):
            skipped.append(_group_ok(group))
        else:
            srcs = tuple(sorted({_ip(msg[off + 8 + 4 * i:off + 12 + 4 * i]) for i in range(nsrc)}))
            records.append(GroupRecord(rtype, group, srcs))
        off += size
    return Igmp("report", 3, ip.src, tuple(records), truncated or len(msg) < full_len, tuple(skipped))


def igmp_query(src_mac: str, src_ip: str = "0.0.0.0", max_resp: float = 10.0, robustness: int = 2,
               interval: float = 125.0, group: str = "0.0.0.0") -> bytes:
    """An IGMPv3 query (general unless ``group``), TTL 1, Router Alert, to 224.0.0.1.

    IGMPv2 hosts (and hosts forced to v2) answer it as a v2 query (RFC 3376 7.2.1).
    """
    mrc = _float_code(max_resp * 10)
    qqic = _float_code(interval)
    igmp = bytearray(struct.pack("!BBH4sBBH", IGMP_QUERY, mrc, 0, ipaddress.IPv4Address(group).packed,
                                 min(robustness, 7), qqic, 0))
    struct.pack_into("!H", igmp, 2, inet_checksum(bytes(igmp)))
    ra = b"\x94\x04\x00\x00"  # Router Alert
    hlen = 24
    iph = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | hlen // 4, 0xC0, hlen + len(igmp), 0, 0, 1, IGMP_PROTO, 0,
                                ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(ALL_HOSTS).packed) + ra)
    struct.pack_into("!H", iph, 10, inet_checksum(bytes(iph)))
    frame = _mac_bytes(ALL_HOSTS_MAC) + _mac_bytes(src_mac) + struct.pack("!H", ETH_IPV4) + bytes(iph) + bytes(igmp)
    return frame.ljust(60, b"\0")


def _float_code(value: float) -> int:
    """RFC 3376 4.1.1 code for a Max Resp Code (tenths of a second) or QQIC (seconds)."""
    v = max(0, int(value))
    if v < 128:
        return v
    for exp in range(8):
        mant = (v >> (exp + 3)) - 16
        if 0 <= mant < 16:
            return 0x80 | (exp << 4) | mant
    return 0xFF


# ---------------------------------------------------------------------------
# multicast data (source discovery)


def mcast_data(data: bytes) -> tuple[str, str]:
    """``(source, group)`` of an untagged IPv4 multicast frame, or raise BadPacket."""
    ip = ipv4(data)
    why = _group_ok(ip.dst)
    if why:
        raise BadPacket(why)
    return ip.src, ip.dst


# ---------------------------------------------------------------------------
# standby-path establishment request


@dataclass(frozen=True)
class StandbyRequest:
    request_id: int
    dest_device: int      # dpid
    sender_device: int    # dpid
    source: str
    group: str
    vid: int
    hops_left: int = REQUEST_HOPS

    def encode(self) -> bytes:
        """The Ethernet frame as it goes on the wire (60 bytes)."""
        payload = _REQ.pack(REQUEST_VERSION, REQUEST_TYPE, self.hops_left, 0, self.request_id, self.dest_device,
                            self.sender_device, ipaddress.IPv4Address(self.source).packed,
                            ipaddress.IPv4Address(self.group).packed, self.vid, 0)
        frame = (_mac_bytes(REQUEST_DST_MAC) + _mac_bytes(dpid_mac(self.sender_device))
                 + struct.pack("!H", ETH_STANDBY) + payload)
        return frame.ljust(60, b"\0")

    def forwarded_by(self, dpid: int) -> "StandbyRequest":
        """The copy a switch sends on: its own dpid as sender, one hop less."""
        return StandbyRequest(self.request_id, self.dest_device, dpid, self.source, self.group, self.vid,
                              self.hops_left - 1)

    def to_dict(self) -> dict:
        return {"request_id": self.request_id, "dest_device": f"{self.dest_device:#x}",
                "sender_device": f"{self.sender_device:#x}", "source": self.source, "group": self.group,
                "vid": self.vid, "hops_left": self.hops_left}


def parse_request(data: bytes) -> StandbyRequest:
    """Parse a standby-path establishment request frame, or raise BadPacket."""
    eth = ethernet(data)
    if eth.ethertype != ETH_STANDBY or eth.vlans:
        raise BadPacket(f"ethertype {eth.ethertype:#06x} is not an untagged standby request")
    off = eth.payload_offset
    if len(data) < off + REQUEST_LEN:
        raise BadPacket(f"standby request of {len(data) - off} bytes is shorter than {REQUEST_LEN}")
    ver, typ, hops, _flags, rid, dest, sender, src, grp, vid, _ = _REQ.unpack_from(data, off)
    if ver != REQUEST_VERSION:
        raise BadPacket(f"standby request version {ver} (expected {REQUEST_VERSION})")
    if typ != REQUEST_TYPE:
        raise BadPacket(f"standby message type {typ} is not a request")
    if not 1 <= vid <= 4094:
        raise BadPacket(f"standby request vid {vid} is not a VLAN id 1..4094")
    source, group = _ip(src), _ip(grp)
    why = _group_ok(group)
    if why:
        raise BadPacket(why)
    if ipaddress.IPv4Address(source).is_multicast or source == "0.0.0.0":
        raise BadPacket(f"standby request source {source} is not a unicast address")
    return StandbyRequest(rid, dest, sender, source, group, vid, hops)
