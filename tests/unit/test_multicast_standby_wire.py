"""multicast_standby wire formats: real IGMP parses, crafted bytes fail fast, requests round-trip."""

import random
import time

import pytest
from scapy.layers.igmp import IGMP, IGMPv3_MQ, IGMPv3_MR, IGMPv3_MR_Group
from scapy.layers.inet import IP
from scapy.layers.l2 import Dot1Q, Ether

from ryu_apps.functions.multicast_standby import wire as w
from ryu_apps.packet.parse import BadPacket

MAC = "02:00:00:00:05:02"


def v2(type_=0x16, group="239.1.1.1"):
    return bytes(Ether(src=MAC) / IP(src="10.5.0.2", dst=group, ttl=1) / IGMP(type=type_, gaddr=group))


def igmp_raw(type_: int, group: str = "239.1.1.1", **ip) -> bytes:
    """An IGMP message scapy would not build (unknown type), with a correct checksum."""
    import ipaddress
    msg = bytearray([type_, 0, 0, 0]) + ipaddress.IPv4Address(group).packed
    msg[2:4] = w.inet_checksum(bytes(msg)).to_bytes(2, "big")
    return bytes(Ether(src=MAC) / IP(dst=group, proto=2, **ip) / bytes(msg))


def fix_igmp_checksum(frame: bytearray, ip_len: int = 20) -> bytes:
    off = 14 + ip_len
    frame[off + 2:off + 4] = b"\0\0"
    frame[off + 2:off + 4] = w.inet_checksum(bytes(frame[off:])).to_bytes(2, "big")
    return bytes(frame)


def v3(*records, src="10.5.0.2"):
    recs = [IGMPv3_MR_Group(rtype=t, maddr=g, srcaddrs=list(s)) for t, g, s in records]
    return bytes(Ether(src=MAC) / IP(src=src, dst="224.0.0.22", ttl=1) / IGMPv3_MR(records=recs))


def test_v2_report_and_leave():
    m = w.parse_igmp(v2())
    assert (m.kind, m.version) == ("report", 2)
    assert m.records == (w.GroupRecord(w.CHANGE_TO_EXCLUDE, "239.1.1.1"),)
    m = w.parse_igmp(v2(0x17))
    assert m.kind == "leave" and m.records[0].rtype == w.CHANGE_TO_INCLUDE
    assert w.parse_igmp(v2(0x12)).version == 1


def test_v3_report_records_and_sources():
    m = w.parse_igmp(v3((1, "239.1.1.1", ["10.5.0.1", "10.5.0.9"]), (4, "239.2.2.2", []),
                        (6, "232.1.1.1", ["10.1.1.1"])))
    assert (m.kind, m.version, m.truncated) == ("report", 3, False)
    assert [str(r) for r in m.records] == ["IS_IN(239.1.1.1{10.5.0.1,10.5.0.9})", "TO_EX(239.2.2.2{})",
                                            "BLOCK(232.1.1.1{10.1.1.1})"]


def test_v3_link_local_and_unknown_records_are_skipped_not_fatal():
    m = w.parse_igmp(v3((4, "224.0.0.251", []), (9, "239.1.1.1", []), (4, "239.3.3.3", [])))
    assert [r.group for r in m.records] == ["239.3.3.3"]
    assert len(m.skipped) == 2 and "link-local" in m.skipped[0]


def test_query_is_recognised():
    frame = bytes(Ether() / IP(src="10.5.0.9", dst="224.0.0.1", ttl=1) / IGMPv3_MQ(mrcode=100))
    m = w.parse_igmp(frame)
    assert (m.kind, m.version, m.src) == ("query", 3, "10.5.0.9")


def test_our_query_is_valid_igmpv3():
    frame = w.igmp_query("0e:fa:b0:00:04:01", "0.0.0.0", max_resp=10, robustness=2, interval=60)
    pkt = Ether(frame)
    assert pkt[IP].ttl == 1 and pkt[IP].dst == "224.0.0.1"
    q = pkt[IGMPv3_MQ]
    assert q.mrcode == 100 and q.qrv == 2 and q.qqic == 60 and q.gaddr == "0.0.0.0"
    rebuilt = Ether(bytes(Ether(frame)))
    del rebuilt[IP].chksum, rebuilt[IGMPv3_MQ].chksum
    assert bytes(rebuilt)[:len(frame.rstrip(b"\0"))] == frame.rstrip(b"\0")  # checksums scapy agrees with
    assert w.parse_igmp(frame).kind == "query"


@pytest.mark.parametrize("value,code", [(10, 10), (127, 127), (128, 0x80), (1000, 0xAF), (31744, 0xFF)])
def test_float_code(value, code):
    assert w._float_code(value) == code


def test_checksum_is_verified():
    frame = bytearray(v2())
    frame[-3] ^= 0xFF  # inside the IGMP message
    with pytest.raises(BadPacket, match="checksum"):
        w.parse_igmp(bytes(frame))


def test_truncated_v3_keeps_whole_records():
    frame = v3(*[(2, f"239.9.0.{i}", []) for i in range(40)])
    m = w.parse_igmp(frame[:14 + 24 + 8 + 8 * 10 + 3])  # cut inside record 11
    assert m.truncated and len(m.records) == 10


@pytest.mark.parametrize("frame,match", [
    (v2(group="10.0.0.1"), "not a multicast"),
    (v2(group="224.0.0.5"), "link-local"),
    (bytes(Ether(src=MAC) / Dot1Q(vlan=5) / IP(dst="239.1.1.1") / IGMP(type=0x16, gaddr="239.1.1.1")), "VLAN"),
    (bytes(Ether(src=MAC) / IP(src="10.5.0.2", dst="239.1.1.1", proto=17) / (b"x" * 20)), "not IGMP"),
    (igmp_raw(0x16, flags="MF"), "fragment"),
    (igmp_raw(0x30), "not a query"),
])
def test_bad_igmp(frame, match):
    with pytest.raises(BadPacket, match=match):
        w.parse_igmp(frame)


def test_v3_record_count_beyond_bound():
    frame = bytearray(v3((4, "239.1.1.1", [])))
    off = 14 + 24 + 6
    frame[off:off + 2] = (w.MAX_RECORDS + 1).to_bytes(2, "big")
    with pytest.raises(BadPacket, match="records"):
        w.parse_igmp(fix_igmp_checksum(frame, 24))


def test_random_bytes_never_hang():
    rng = random.Random(5)
    bases = [v2(), v3((1, "239.1.1.1", ["10.0.0.1"] * 3), (4, "239.1.1.2", [])),
             w.StandbyRequest(7, 0x53, 0x56, "10.5.0.1", "239.1.1.1", 3).encode()]
    start = time.monotonic()
    for i in range(20000):
        data = bytearray(bases[i % len(bases)])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randint(0, len(data))])
        for parse in (w.parse_igmp, w.parse_request, w.mcast_data):
            try:
                parse(data)
            except (BadPacket, ValueError):
                pass
    assert time.monotonic() - start < 60  # a loose bound only a runaway loop breaks


def test_request_round_trip_and_format():
    req = w.StandbyRequest(0x01020304, 0x53, 0x56, "10.5.0.1", "239.1.1.1", 7, hops_left=31)
    frame = req.encode()
    assert len(frame) == 60
    assert frame[:6] == bytes.fromhex("03004d534259")
    assert frame[6:12] == bytes.fromhex("020000000056")  # 02 + the sender's dpid
    assert frame[12:14] == b"\x88\xb5"
    assert frame[14:18] == bytes([1, 1, 31, 0])
    assert w.parse_request(frame) == req
    fwd = req.forwarded_by(0x55)
    assert (fwd.sender_device, fwd.hops_left) == (0x55, 30)


@pytest.mark.parametrize("offset,value,match", [(14, 2, "version"), (15, 2, "not a request"),
                                                 (14 + 33, 0, "vid"), (14 + 28, 10, "not a multicast")])
def test_bad_requests(offset, value, match):
    frame = bytearray(w.StandbyRequest(1, 1, 2, "10.5.0.1", "239.1.1.1", 5).encode())
    frame[offset] = value
    with pytest.raises(BadPacket, match=match):
        w.parse_request(bytes(frame))


def test_short_request():
    with pytest.raises(BadPacket, match="shorter"):
        w.parse_request(w.StandbyRequest(1, 1, 2, "10.5.0.1", "239.1.1.1", 5).encode()[:40])


def test_mcast_data():
    frame = bytes(Ether(src=MAC) / IP(src="10.5.0.1", dst="239.1.1.1") / (b"\0" * 16))
    assert w.mcast_data(frame) == ("10.5.0.1", "239.1.1.1")
    with pytest.raises(BadPacket):
        w.mcast_data(bytes(Ether(src=MAC) / IP(src="10.5.0.1", dst="10.5.0.2") / (b"\0" * 16)))
