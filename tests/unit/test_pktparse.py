"""Bounded packet-in parsing: real packets parse, crafted ones fail fast."""

import random
import time

import pytest
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from ryu_apps.packet import parse as pktparse


def ns_frame(**kw):
    return bytes(Ether(src="02:00:00:00:00:01", dst="33:33:ff:00:00:02") /
                 IPv6(src="fd00::1", dst="ff02::1:ff00:2", hlim=kw.get("hlim", 255)) /
                 ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01"))


def test_parses_scapy_ns():
    ns = pktparse.neighbor_solicitation(ns_frame())
    assert str(ns.target) == "fd00::2"
    assert str(ns.src) == "fd00::1"
    assert ns.source_lladdr == "02:00:00:00:00:01"
    assert ns.hop_limit == 255


def test_vlan_tags_bounded():
    frame = bytes(Ether() / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IPv6())
    with pytest.raises(pktparse.BadPacket, match="VLAN"):
        pktparse.ethernet(frame)


@pytest.mark.parametrize("cut", [0, 10, 14, 30, 54, 60, 70])
def test_truncations_raise(cut):
    with pytest.raises(pktparse.BadPacket):
        pktparse.neighbor_solicitation(ns_frame()[:cut])


def test_zero_length_option_is_rejected_not_looped():
    frame = bytearray(ns_frame())
    frame[-8 + 1] = 0  # option length 0 would loop a naive parser forever
    with pytest.raises(pktparse.BadPacket, match="option length"):
        pktparse.neighbor_solicitation(bytes(frame))


def test_random_bytes_never_hang():
    rng = random.Random(7)
    base = ns_frame()
    start = time.monotonic()
    for _ in range(20000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[: rng.randint(0, len(data))])
        try:
            pktparse.neighbor_solicitation(data)
        except pktparse.BadPacket:
            pass
    # not a speed target: a loose bound that only a runaway loop would break
    assert time.monotonic() - start < 30
