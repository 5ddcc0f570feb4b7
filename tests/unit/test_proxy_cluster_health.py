"""Proxy-cluster health: the agent's heartbeat on the wire, the judge, the flows that punt it, and
the agent's pure helpers (pure: no OVS, no network; the agent's /proc/net checks open loopback
sockets only).

* :mod:`~ryu_apps.functions.proxy_cluster.wire`: round trips, and hostile payloads and frames
  (built with scapy, so the tests show the wire layout) that must raise ``BadHeartbeat`` and
  nothing else, within a time limit;
* :mod:`~ryu_apps.functions.proxy_cluster.health`: the judge's state machine walked with a fake
  clock, and the heartbeat flows walked through the switch simulator with the fabric, the core and
  the cluster's own flows, from a scapy frame to the judge;
* :mod:`~ryu_apps.functions.proxy_cluster.agent` (config version, /proc/net keys checked against
  what the kernel writes) and :mod:`~ryu_apps.functions.proxy_cluster.haproxy` (what reloads, what
  the rendered config balances on).
"""

from __future__ import annotations

import json
import shutil
import socket
import string
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Padding, Raw

from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.framework import cookies, pipeline
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.framework.topology import from_dict
from ryu_apps.framework.view import FabricView
from ryu_apps.functions.proxy_cluster import agent, haproxy
from ryu_apps.functions.proxy_cluster import flows as F
from ryu_apps.functions.proxy_cluster import health as H
from ryu_apps.functions.proxy_cluster import wire as W
from ryu_apps.functions.proxy_cluster.health import DEGRADED, DOWN, JOINING, UP, ProxyHealth
from ryu_apps.functions.proxy_cluster.intent import ClusterSpec
from ryu_apps.functions.proxy_cluster.model import resolve
from ryu_apps.functions.proxy_cluster.wire import BadHeartbeat, Heartbeat, parse_frame, parse_payload
from ryu_apps.openflow import simulator
from ryu_apps.openflow.ofdata import OFPP_CONTROLLER, Flow, Match, Meter, MeterBand, Output
from tests.timelimit import time_limit

RMAC = FabricIntent().router_mac
#: the characters a version or why may carry on the wire (encode() turns anything else into ``_``)
FIELD_CHARS = string.ascii_letters + string.digits + "._:/-"
LIMIT = 1.0  # seconds per fuzz input


# --- the heartbeat on the wire -------------------------------------------------------------------

P1_MAC, P1_IP, P1_GW = "02:00:00:00:02:01", "10.2.0.1", "10.2.0.254"


def _frame(payload: bytes, *, l3=None, l4=None, l2=None):
    """An agent's heartbeat as the proxy's edge switch sees it: Ethernet / IPv4 / UDP to the heartbeat port."""
    l2 = Ether(src=P1_MAC, dst=RMAC) if l2 is None else l2
    l3 = IP(src=P1_IP, dst=P1_GW, ttl=64) if l3 is None else l3
    l4 = UDP(sport=40000, dport=W.HEARTBEAT_PORT) if l4 is None else l4
    return l2 / l3 / l4 / Raw(payload)


def _clean(text: str) -> str:
    """What a version or why becomes on the wire, spelled independently of encode()."""
    return "".join(c if c in FIELD_CHARS else "_" for c in text)[:64]


@pytest.mark.parametrize("hb, line, back", [
    (Heartbeat(True, "3f2a9c", 1, "", 0, 2), b"PCHB1 1 1 0 2 3f2a9c -", None),
    (Heartbeat(False, "3f2a9c", 9, "monitor-uri-no-answer", 5, 0), b"PCHB1 0 9 5 0 3f2a9c monitor-uri-no-answer", None),
    (Heartbeat(False, "v", 3, W.WHY_EXITED), b"PCHB1 0 3 0 0 v haproxy-exited", None),
    # seq wraps at 32 bits; the largest one still fits its 10 digits
    (Heartbeat(True, "v", 2**32 + 5), b"PCHB1 1 5 0 0 v -", Heartbeat(True, "v", 5)),
    (Heartbeat(True, "v", 2**32 - 1), b"PCHB1 1 4294967295 0 0 v -", None),
    (Heartbeat(True, "v", 2**32), b"PCHB1 1 0 0 0 v -", Heartbeat(True, "v", 0)),
    # conns and servers are clamped to what the parser takes (9 and 6 digits)
    (Heartbeat(True, "v", 1, conns=10**12, servers=10**7), b"PCHB1 1 1 999999999 999999 v -",
     Heartbeat(True, "v", 1, conns=10**9 - 1, servers=10**6 - 1)),
    (Heartbeat(True, "v", 1, conns=10**9 - 1, servers=10**6 - 1), b"PCHB1 1 1 999999999 999999 v -", None),
    # empty version and why travel as "-"
    (Heartbeat(True), b"PCHB1 1 0 0 0 - -", None),
    # why is sanitised: what a failed `haproxy -c` says (spaces, brackets, quotes, a newline, non-ASCII)
    (Heartbeat(False, "v", 2, "[ALERT] 'frontend vip': cannot bind\n\u00e9\u2603"),
     b"PCHB1 0 2 0 0 v _ALERT___frontend_vip_:_cannot_bind___",
     Heartbeat(False, "v", 2, "_ALERT___frontend_vip_:_cannot_bind___")),
    (Heartbeat(False, "v", 2, "x" * 100), b"PCHB1 0 2 0 0 v " + b"x" * 64, Heartbeat(False, "v", 2, "x" * 64)),
    (Heartbeat(True, "1.2:a/b_c-d", 2, "10.0.0.1:80/x"), b"PCHB1 1 2 0 0 1.2:a/b_c-d 10.0.0.1:80/x", None),
    # the version is sanitised alike (the agent's are hex digits; nothing else may split the line)
    (Heartbeat(True, "release 2\u00e9", 2), b"PCHB1 1 2 0 0 release_2_ -", Heartbeat(True, "release_2_", 2)),
    (Heartbeat(True, "v" * 70, 2), b"PCHB1 1 2 0 0 " + b"v" * 64 + b" -", Heartbeat(True, "v" * 64, 2)),
])
def test_heartbeats_round_trip_through_payload_and_frame(hb, line, back):
    back = hb if back is None else back
    assert hb.encode() == line
    assert parse_payload(line) == back
    frame = bytes(_frame(line))
    assert frame[12:14] == b"\x08\x00" and frame[23] == W.UDP and frame[36:38] == W.HEARTBEAT_PORT.to_bytes(2, "big")
    assert parse_frame(frame) == back
    assert parse_frame(frame[:pipeline.PACKET_IN_BYTES]) == back  # a punt carries at most 256 bytes


@settings(max_examples=400, deadline=None)
@given(ok=st.booleans(), seq=st.integers(0, 2**40), conns=st.integers(0, 2**40), servers=st.integers(0, 2**30),
       version=st.one_of(st.text(alphabet=FIELD_CHARS, max_size=70), st.text(max_size=100)), why=st.text(max_size=100))
def test_any_heartbeat_round_trips(ok, seq, conns, servers, version, why):
    data = Heartbeat(ok, version, seq, why, conns, servers).encode()
    assert len(data) <= W.MAX_BYTES and data.isascii() and len(data.split(b" ")) == 7
    back = parse_payload(data)
    assert back == Heartbeat(ok, "" if _clean(version) == "-" else _clean(version), seq & 0xFFFFFFFF,
                             "" if _clean(why) == "-" else _clean(why), min(conns, 10**9 - 1),
                             min(servers, 10**6 - 1))
    assert parse_frame(bytes(_frame(data))) == back


def test_frames_with_ip_options_padding_or_a_long_tail_still_parse():
    line = Heartbeat(True, "v9", 4, servers=3).encode()
    want = parse_payload(line)
    # IP options: the UDP header is found by IHL, not at a fixed offset
    opts = bytes(_frame(line, l3=IP(src=P1_IP, dst=P1_GW, options=[IPOption_Router_Alert(), IPOption_NOP()])))
    assert opts[14] & 0x0F == 7 and parse_frame(opts) == want
    # the longest IPv4 header (IHL 15) still leaves room for the largest heartbeat in a punt
    longest = IP(src=P1_IP, dst=P1_GW, options=[IPOption_NOP()] * 40)
    big = Heartbeat(False, "f" * 64, 2**32 - 1, "w" * 64, 10**9, 10**6).encode()
    frame = bytes(_frame(big, l3=longest))
    assert len(big) == 165 <= W.MAX_BYTES
    assert frame[14] & 0x0F == 15 and len(frame) <= pipeline.PACKET_IN_BYTES
    assert parse_frame(frame[:pipeline.PACKET_IN_BYTES]) == parse_payload(big)
    # Ethernet padding after a short datagram: the UDP length says where the payload ends
    padded = bytes(_frame(line) / Padding(b"\0" * 40))
    assert parse_frame(padded) == want
    assert parse_frame(bytes(_frame(line)) + b"garbage after the datagram") == want


HOSTILE_PAYLOADS = {
    "empty": b"",
    "wrong magic": b"PCHB2 1 1 0 0 v -",
    "magic in lower case": b"pchb1 1 1 0 0 v -",
    "six fields": b"PCHB1 1 1 0 0 v",
    "eight fields": b"PCHB1 1 1 0 0 v - extra",
    "two spaces": b"PCHB1  1 1 0 0 v -",
    "tabs": b"PCHB1\t1\t1\t0\t0\tv\t-",
    "ok is 2": b"PCHB1 2 1 0 0 v -",
    "ok is a word": b"PCHB1 yes 1 0 0 v -",
    "ok is empty": b"PCHB1  1 0 0 v -",
    "negative seq": b"PCHB1 1 -1 0 0 v -",
    "signed seq": b"PCHB1 1 +1 0 0 v -",
    "hex seq": b"PCHB1 1 0x10 0 0 v -",
    "seq with a decimal point": b"PCHB1 1 1.5 0 0 v -",
    "empty seq": b"PCHB1 1  0 0 v -",
    "seq of 11 digits": b"PCHB1 1 12345678901 0 0 v -",
    "conns of 10 digits": b"PCHB1 1 1 1000000000 0 v -",
    "servers of 7 digits": b"PCHB1 1 1 0 1000000 v -",
    "superscript digit (str.isdigit says yes)": "PCHB1 1 \u00b2 0 0 v -".encode(),
    "Arabic-Indic digits": "PCHB1 1 \u0661\u0662 0 0 v -".encode(),
    "full-width digits": "PCHB1 1 1 \uff11 0 v -".encode(),
    "version of 65 characters": b"PCHB1 1 1 0 0 " + b"v" * 65 + b" -",
    "why of 65 characters": b"PCHB1 1 1 0 0 v " + b"w" * 65,
    "version with a semicolon": b"PCHB1 1 1 0 0 v;rm -",
    "version with a NUL": b"PCHB1 1 1 0 0 v\x00 -",
    "version with a high byte": b"PCHB1 1 1 0 0 v\xff -",
    "version not ASCII": "PCHB1 1 1 0 0 v\u00e9 -".encode(),
    "why with markup": b"PCHB1 0 1 0 0 v <script>",
    "why with a quote": b"PCHB1 0 1 0 0 v it's",
    "why with a carriage return": b"PCHB1 0 1 0 0 v a\rb",
    "why with an inner newline": b"PCHB1 0 1 0 0 v a\nb",
    "why with an escape": b"PCHB1 0 1 0 0 v \x1b[31m",
    "MAX_BYTES + 1": b"PCHB1 1 1 0 0 v " + b"w" * (W.MAX_BYTES + 1 - 16),
    "a large datagram": b"PCHB1 1 1 0 0 v -" + b" " * 60_000,
    "only spaces": b" " * 6,
}


@pytest.mark.parametrize("data", HOSTILE_PAYLOADS.values(), ids=HOSTILE_PAYLOADS.keys())
def test_hostile_payloads_raise_bad_heartbeat(data):
    with time_limit(LIMIT), pytest.raises(BadHeartbeat):
        parse_payload(data)
    # and inside a well-formed frame, cut to what a punt carries
    with time_limit(LIMIT), pytest.raises(BadHeartbeat):
        parse_frame(bytes(_frame(data))[:pipeline.PACKET_IN_BYTES])


GOOD_LINE = b"PCHB1 1 7 0 2 v1 -"
_GOOD = bytes(_frame(GOOD_LINE))
HOSTILE_FRAMES = {
    "IPv6": bytes(Ether(src=P1_MAC, dst=RMAC) / IPv6(src="fd00:2::1", dst="fd00:2::fe")
                  / UDP(sport=40000, dport=W.HEARTBEAT_PORT) / Raw(GOOD_LINE)),
    "ARP": bytes(Ether(src=P1_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=P1_IP, pdst=P1_GW) / Padding(b"\0" * 40)),
    "an IPv4 heartbeat under another EtherType": bytes(_frame(GOOD_LINE, l2=Ether(src=P1_MAC, dst=RMAC, type=0x88B5))),
    "VLAN-tagged": bytes(_frame(GOOD_LINE, l2=Ether(src=P1_MAC, dst=RMAC) / Dot1Q(vlan=5))),
    "QinQ": bytes(_frame(GOOD_LINE, l2=Ether(src=P1_MAC, dst=RMAC, type=0x88A8) / Dot1Q(vlan=5) / Dot1Q(vlan=6))),
    "IPv6 version nibble in an IPv4 frame": bytes(_frame(GOOD_LINE, l3=IP(src=P1_IP, dst=P1_GW, version=6))),
    "IHL 4": bytes(_frame(GOOD_LINE, l3=IP(src=P1_IP, dst=P1_GW, ihl=4))),
    "IHL 0": bytes(_frame(GOOD_LINE, l3=IP(src=P1_IP, dst=P1_GW, ihl=0))),
    # a 16-byte "IPv4 header" (IHL 4, protocol UDP) with the heartbeat's UDP header right after it
    "IHL 4 and the datagram right after it": _GOOD[:14] + bytes([0x44]) + _GOOD[15:14 + 16] + _GOOD[14 + 20:],
    "IHL 15 and a short frame": _GOOD[:14] + bytes([0x4F]) + _GOOD[15:],
    "TCP to the heartbeat port": bytes(_frame(GOOD_LINE, l4=TCP(sport=40000, dport=W.HEARTBEAT_PORT))),
    "UDP header, protocol says ICMP": bytes(_frame(GOOD_LINE, l3=IP(src=P1_IP, dst=P1_GW, proto=1))),
    "another UDP port": bytes(_frame(GOOD_LINE, l4=UDP(sport=40000, dport=W.HEARTBEAT_PORT + 1))),
    "from the heartbeat port, to another": bytes(_frame(GOOD_LINE, l4=UDP(sport=W.HEARTBEAT_PORT, dport=40000))),
    "UDP length past the frame": bytes(_frame(GOOD_LINE, l4=UDP(sport=40000, dport=W.HEARTBEAT_PORT, len=200))),
    "UDP length 65535": bytes(_frame(GOOD_LINE, l4=UDP(sport=40000, dport=W.HEARTBEAT_PORT, len=0xFFFF))),
    "UDP length 7": bytes(_frame(GOOD_LINE, l4=UDP(sport=40000, dport=W.HEARTBEAT_PORT, len=7))),
    "UDP length 0": bytes(_frame(GOOD_LINE, l4=UDP(sport=40000, dport=W.HEARTBEAT_PORT, len=0))),
    "a datagram truncated by the punt": bytes(_frame(b"PCHB1 1 1 0 0 v -" + b" " * 300))[:pipeline.PACKET_IN_BYTES],
    "the heartbeat cut by one byte": _GOOD[:-1],
    "the UDP header cut": _GOOD[:14 + 20 + 7],
    "the IPv4 header only": _GOOD[:14 + 20],
    "41 bytes": _GOOD[:41],
    "the Ethernet header only": _GOOD[:14],
    "13 bytes": _GOOD[:13],
    "nothing": b"",
    "an oversized payload": bytes(_frame(b"PCHB1 1 1 0 0 v " + b"w" * (W.MAX_BYTES + 1 - 16))),
    "zeros": b"\0" * 256,
    "ones": b"\xff" * 256,
}


@pytest.mark.parametrize("frame", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys())
def test_hostile_frames_raise_bad_heartbeat(frame):
    with time_limit(LIMIT), pytest.raises(BadHeartbeat):
        parse_frame(frame)


def test_the_hostile_frames_differ_from_a_good_one_only_where_they_say():
    """The table is not hostile by accident: the good frame parses, and e.g. the VLAN case is that frame tagged."""
    assert parse_frame(_GOOD) == Heartbeat(True, "v1", 7, servers=2)
    tagged = HOSTILE_FRAMES["VLAN-tagged"]
    assert tagged[12:14] == b"\x81\x00" and tagged[:12] + tagged[16:] == _GOOD
    assert parse_frame(_GOOD[:12] + b"\x08\x00" + tagged[18:]) == parse_frame(_GOOD)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_bad_heartbeat(data):
    with time_limit(LIMIT):
        with pytest.raises(BadHeartbeat):
            parse_frame(data)
        try:
            hb = parse_payload(data)
        except BadHeartbeat:
            return
    _valid(hb)  # a random PCHB1 line: fine, as long as it is one


def _valid(hb: Heartbeat) -> None:
    """What a parsed heartbeat may hold (the fuzzers found a trailing newline in why passing, now fixed)."""
    assert isinstance(hb.ok, bool) and 0 <= hb.seq < 10**10 and 0 <= hb.conns < 10**9 and 0 <= hb.servers < 10**6
    for f in (hb.version, hb.why):
        assert set(f) <= set(FIELD_CHARS) and len(f) <= 64


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(1, 255)), max_size=6),
       cut=st.integers(0, 300), tail=st.binary(max_size=64))
def test_mutated_heartbeat_frames_parse_or_raise_bad_heartbeat(flips, cut, tail):
    frame = bytearray(_GOOD)
    for at, xor in flips:
        frame[at] ^= xor
    frame = bytes(frame[:cut]) + tail
    with time_limit(LIMIT):
        try:
            hb = parse_frame(frame)
        except BadHeartbeat:
            return
    _valid(hb)


@settings(max_examples=600, deadline=None)
@given(fields=st.lists(st.binary(max_size=24), min_size=7, max_size=7), keep_magic=st.booleans())
def test_random_fields_in_a_heartbeat_line_parse_or_raise_bad_heartbeat(fields, keep_magic):
    if keep_magic:
        fields[0] = W.MAGIC
    with time_limit(LIMIT):
        try:
            hb = parse_payload(b" ".join(fields))
        except BadHeartbeat:
            return
    _valid(hb)


def test_encode_stays_within_max_bytes_for_every_field_it_accepts():
    """(Was a bug: MAX_BYTES was 160 and the largest fields made 165 bytes, refused by the parser.)"""
    data = Heartbeat(False, "v" * 64, 2**32 - 1, "w" * 64, 10**9, 10**6).encode()
    assert len(data) <= W.MAX_BYTES
    assert parse_payload(data) == Heartbeat(False, "v" * 64, 2**32 - 1, "w" * 64, 10**9 - 1, 10**6 - 1)


@pytest.mark.parametrize("version", ["release 2", "v\u00e9", "a\nb"])
def test_encode_keeps_a_version_with_odd_characters_on_one_field(version):
    """(Was a bug: the version was not sanitised, so a space split the line and the parser refused it.)"""
    data = Heartbeat(True, version, 1).encode()
    assert data.isascii() and len(data.split(b" ")) == 7
    assert parse_payload(data).version == _clean(version)


@pytest.mark.parametrize("data", [b"PCHB1 0 1 0 0 v why\n", b"PCHB1 1 1 0 0 v\n -"], ids=["why", "version"])
def test_a_trailing_newline_in_version_or_why_is_refused(data):
    """(Was a bug: the field pattern ended with ``$``, which matches before a trailing newline.)"""
    with pytest.raises(BadHeartbeat):
        parse_payload(data)


# --- the judge -----------------------------------------------------------------------------------

T0 = 100.0
GOOD = Heartbeat(True, "v1", servers=2)


def _bad(why: str = "monitor-uri-no-answer") -> Heartbeat:
    return Heartbeat(False, "v1", why=why)


EXITED = _bad(W.WHY_EXITED)


def _judge(interval_ms: int = 250, fall: int = 3, rise: int = 2, hold_down_s: float = 5.0) -> ProxyHealth:
    h = ProxyHealth()
    h.configure(interval_ms, fall, rise, hold_down_s)
    return h


def _states(h: ProxyHealth) -> dict[str, str]:
    return {n: j.state for n, j in h.proxies.items()}


def _down_after_serving(h: ProxyHealth, name: str, at: float) -> None:
    """``name`` (declared at start) heard, then its port goes down at ``at``."""
    h.declare([*h.proxies, name], at, initial=True)
    assert h.heartbeat(name, GOOD, at) is False
    assert h.link_down(name, at) is True and h.proxies[name].state == DOWN


def test_configure_sets_the_judges_numbers():
    h = _judge(100, 4, 3, 7.5)
    assert (h.interval_s, h.fall, h.rise, h.hold_down_s) == (0.1, 4, 3, 7.5)


def test_proxies_found_at_start_are_up_for_a_grace_of_fall_intervals():
    h = _judge()
    assert h.declare(["p1", "p2"], T0, initial=True) is True
    assert _states(h) == {"p1": UP, "p2": UP} and h.out() == frozenset()
    assert h.tick(T0 + 0.75) == []                    # fall x interval: still in grace
    assert h.heartbeat("p1", GOOD, T0 + 0.5) is False
    assert h.tick(T0 + 0.76) == ["p2"]                # never heard: down after the grace
    assert h.out() == {"p2"} and h.proxies["p2"].why == "no good heartbeat for 760 ms"
    assert h.tick(T0 + 1.25) == []                    # p1's last good beat was 0.75 s ago
    assert h.tick(T0 + 1.26) == ["p1"] and h.out() == {"p1", "p2"}
    assert h.tick(T0 + 10) == []                      # once down, tick says nothing more


def test_regular_good_heartbeats_keep_a_proxy_up():
    h = _judge()
    h.declare(["p1"], T0, initial=True)
    for k in range(1, 100):
        now = T0 + 0.25 * k
        assert h.heartbeat("p1", GOOD, now) is False
        assert h.tick(now + 0.74) == []
    assert h.proxies["p1"].state == UP and h.proxies["p1"].changes == 0 and h.proxies["p1"].heartbeats == 99


@pytest.mark.parametrize("rise", [1, 2, 3])
def test_a_proxy_declared_later_joins_after_rise_good_heartbeats_without_hold_down(rise):
    h = _judge(rise=rise)
    h.declare(["p1"], T0, initial=True)
    assert h.declare(["p1", "p3"], T0 + 1, initial=False) is True
    assert h.proxies["p3"].state == JOINING and h.out() == {"p3"}
    assert "p3" not in h.tick(T0 + 60)                # silence does not judge a joining proxy
    assert h.proxies["p3"].state == JOINING
    for k in range(rise - 1):
        assert h.heartbeat("p3", GOOD, T0 + 61 + 0.25 * k) is False
        assert h.proxies["p3"].state == JOINING
    assert h.heartbeat("p3", GOOD, T0 + 61 + 0.25 * rise) is True   # no hold-down before a first start
    assert h.proxies["p3"].state == UP and "p3" not in h.out() and h.proxies["p3"].changes == 1


def test_a_joining_proxy_starts_its_streak_again_after_a_failed_beat_or_its_port_going_down():
    h = _judge(rise=2)
    h.declare(["p3"], T0, initial=False)
    assert h.heartbeat("p3", GOOD, T0 + 0.25) is False
    assert h.heartbeat("p3", _bad("learning-peers-tables"), T0 + 0.5) is False
    assert h.proxies["p3"].why == "agent: learning-peers-tables"
    assert h.heartbeat("p3", GOOD, T0 + 0.75) is False and h.proxies["p3"].state == JOINING
    assert h.link_down("p3", T0 + 0.8) is False and h.proxies["p3"].state == JOINING
    assert h.heartbeat("p3", GOOD, T0 + 1.0) is False and h.proxies["p3"].state == JOINING
    assert h.heartbeat("p3", GOOD, T0 + 1.25) is True and h.proxies["p3"].state == UP


def test_haproxy_exited_takes_an_up_proxy_down_at_once():
    h = _judge()
    h.declare(["p1", "p2"], T0, initial=True)
    assert h.heartbeat("p1", GOOD, T0 + 0.1) is False
    assert h.heartbeat("p1", EXITED, T0 + 0.2) is True
    j = h.proxies["p1"]
    assert (j.state, j.why, j.since, j.hold_until) == (DOWN, "agent: haproxy-exited", T0 + 0.2, T0 + 5.2)
    assert h.out() == {"p1"} and h.heartbeat("p1", EXITED, T0 + 0.3) is False


def test_the_proxys_port_going_down_takes_it_down_at_once():
    h = _judge()
    h.declare(["p1"], T0, initial=True)
    h.heartbeat("p1", GOOD, T0 + 0.1)
    assert h.link_down("p1", T0 + 0.2) is True
    assert (h.proxies["p1"].state, h.proxies["p1"].why) == (DOWN, "its switch port is down") and h.out() == {"p1"}
    assert h.link_down("p1", T0 + 0.3) is False and h.proxies["p1"].changes == 1


@pytest.mark.parametrize("why, says", [("monitor-uri-answered-503", "agent: monitor-uri-answered-503"),
                                       ("monitor-uri-no-answer", "agent: monitor-uri-no-answer"),
                                       ("", "agent: HAProxy not answering")])
def test_a_failed_check_is_only_a_missed_beat(why, says):
    h = _judge()
    h.declare(["p1"], T0, initial=True)
    assert h.heartbeat("p1", GOOD, T0 + 0.25) is False
    assert h.heartbeat("p1", _bad(why), T0 + 0.5) is False          # one slow check (a reload, say)
    assert h.proxies["p1"].state == UP and h.tick(T0 + 0.6) == []
    assert h.heartbeat("p1", GOOD, T0 + 0.75) is False
    for k in range(1, 4):                                            # then only failed checks
        assert h.heartbeat("p1", _bad(why), T0 + 0.75 + 0.25 * k) is False
        assert h.proxies["p1"].state == UP
    assert h.tick(T0 + 1.5) == []                                    # 0.75 s since the last good one
    assert h.tick(T0 + 1.51) == ["p1"]
    assert h.proxies["p1"].why == f"no good heartbeat for 760 ms ({says})"
    # a good beat in between clears the failing check from the reason
    h2 = _judge()
    h2.declare(["p1"], T0, initial=True)
    h2.heartbeat("p1", _bad(why), T0 + 0.1)
    h2.heartbeat("p1", GOOD, T0 + 0.2)
    assert h2.tick(T0 + 1.0) == ["p1"] and h2.proxies["p1"].why == "no good heartbeat for 800 ms"


def test_coming_back_needs_rise_good_beats_in_a_row_and_the_hold_down():
    h = _judge(rise=2, hold_down_s=5.0)
    _down_after_serving(h, "p1", T0 + 1)
    assert h.proxies["p1"].hold_until == T0 + 6
    for k in range(16):                                    # good beats all through the hold-down
        assert h.heartbeat("p1", GOOD, T0 + 2 + 0.25 * k) is False, k
        assert h.proxies["p1"].state == DOWN and h.out() == {"p1"}
    assert h.heartbeat("p1", GOOD, T0 + 6.0) is True      # the hold-down is over, the streak is long
    assert h.proxies["p1"].state == UP and h.out() == frozenset() and h.proxies["p1"].changes == 2
    # after a long silence, the hold-down long gone: still ``rise`` good beats
    _down_after_serving(h, "p2", T0 + 10)
    assert h.heartbeat("p2", GOOD, T0 + 30) is False and h.proxies["p2"].state == DOWN
    assert h.heartbeat("p2", GOOD, T0 + 30.25) is True


@pytest.mark.parametrize("rise", [2, 3])
def test_a_failed_beat_starts_the_streak_again(rise):
    h = _judge(rise=rise)
    _down_after_serving(h, "p1", T0)
    t = T0 + 10                                             # past the hold-down
    for _ in range(rise - 1):
        assert h.heartbeat("p1", GOOD, t) is False
        t += 0.25
    assert h.heartbeat("p1", _bad(), t) is False
    assert h.proxies["p1"].why == "agent: monitor-uri-no-answer"   # a down proxy says why it stays down
    for _ in range(rise - 1):
        t += 0.25
        assert h.heartbeat("p1", GOOD, t) is False and h.proxies["p1"].state == DOWN
    assert h.heartbeat("p1", GOOD, t + 0.25) is True


def test_a_proxy_never_heard_from_has_no_hold_down():
    h = _judge(rise=2, hold_down_s=5.0)
    h.declare(["p1", "p2"], T0, initial=True)
    assert h.tick(T0 + 1) == ["p1", "p2"]                 # the grace ran out: it was never serving
    assert h.proxies["p1"].hold_until == T0 + 1
    assert h.heartbeat("p1", GOOD, T0 + 1.1) is False
    assert h.heartbeat("p1", GOOD, T0 + 1.35) is True     # long before T0 + 6
    # its port down before it was ever heard: no hold-down either
    h.declare(["p1", "p2", "p4"], T0 + 2, initial=True)
    assert h.link_down("p4", T0 + 2) is True
    h.heartbeat("p4", GOOD, T0 + 2.1)
    assert h.heartbeat("p4", GOOD, T0 + 2.35) is True
    # but one that came up (joined, or was heard) is held down when it goes down
    assert h.link_down("p1", T0 + 3) is True and h.proxies["p1"].hold_until == T0 + 8
    h.heartbeat("p1", GOOD, T0 + 3.1)
    assert h.heartbeat("p1", GOOD, T0 + 3.35) is False and h.proxies["p1"].state == DOWN


def test_the_port_going_down_restarts_a_down_proxys_streak_too():
    """(Was a bug: only a joining proxy's streak restarted, so one good beat before a flap and one
    after counted as ``rise`` in a row.)"""
    h = _judge(rise=2, hold_down_s=5.0)
    _down_after_serving(h, "p1", T0)
    assert h.heartbeat("p1", GOOD, T0 + 10) is False     # one good beat, the hold-down long over
    h.link_down("p1", T0 + 10.1)                         # the port flaps
    assert h.heartbeat("p1", GOOD, T0 + 12) is False     # the first good beat since it came back
    assert h.proxies["p1"].state == DOWN


def test_a_joined_proxy_that_goes_down_gets_the_hold_down():
    h = _judge(rise=2, hold_down_s=5.0)
    h.declare(["p3"], T0, initial=False)
    h.heartbeat("p3", GOOD, T0 + 0.25)
    assert h.heartbeat("p3", GOOD, T0 + 0.5) is True
    assert h.heartbeat("p3", EXITED, T0 + 1) is True and h.proxies["p3"].hold_until == T0 + 6
    assert not any(h.heartbeat("p3", GOOD, T0 + 1.25 + 0.25 * k) for k in range(18))
    assert h.heartbeat("p3", GOOD, T0 + 6) is True


def test_a_flapping_proxy_never_comes_back_before_the_hold_down():
    h = _judge(rise=2, hold_down_s=5.0)
    h.declare(["p1"], T0, initial=True)
    h.heartbeat("p1", GOOD, T0)
    went_down = T0 + 0.5
    assert h.heartbeat("p1", EXITED, went_down) is True
    # good, good, bad, good, good, exited, ...: streaks reach rise, the hold-down holds it out
    pattern = [GOOD, GOOD, _bad(), GOOD, GOOD, EXITED]
    k = 0
    while (now := went_down + 0.25 * (k + 1)) < went_down + 5.0:
        assert h.heartbeat("p1", pattern[k % len(pattern)], now) is False, now
        assert h.proxies["p1"].state == DOWN and "p1" in h.out()
        k += 1
    # the hold-down over, the next good beat makes two in a row (the pattern's last one was good): back
    now = went_down + 5.0
    assert pattern[(k - 1) % len(pattern)] is GOOD
    assert h.heartbeat("p1", GOOD, now) is True and h.proxies["p1"].state == UP
    # and a new fall starts a new hold-down from then
    again = now + 1
    assert h.heartbeat("p1", EXITED, again) is True
    for k in range(1, 20):
        assert h.heartbeat("p1", GOOD if k % 3 else _bad(), again + 0.25 * k) is False
    assert h.heartbeat("p1", GOOD, again + 5) is True


@settings(max_examples=300, deadline=None)
@given(beats=st.lists(st.tuples(st.floats(0.0, 1.0), st.sampled_from(["good", "bad", "exited", "few", "link"])),
                      max_size=60),
       rise=st.integers(1, 4), fall=st.integers(1, 4), hold=st.sampled_from([0.0, 0.5, 5.0]))
def test_no_beat_sequence_moves_a_proxy_but_by_the_rules(beats, rise, fall, hold):
    """Whatever comes, a proxy that was serving is up again only after the hold-down and ``rise``
    good beats in a row, each with as many servers up as the other proxy; it leaves only when its
    HAProxy exited, its port went down, or ``fall`` good beats in a row found fewer servers up."""
    h = _judge(rise=rise, fall=fall, hold_down_s=hold)
    h.declare(["p1", "p2"], T0, initial=True)
    h.heartbeat("p2", Heartbeat(True, "v1", servers=2), T0)
    h.heartbeat("p1", GOOD, T0)
    h.link_down("p1", T0)
    down_at, row, short, now = T0, 0, 0, T0
    for dt, what in beats:
        now += dt
        if what == "link":   # the port going down restarts the streak, down or not
            row = 0
            if h.link_down("p1", now):
                down_at, short = now, 0
            continue
        hb = {"good": GOOD, "bad": _bad(), "exited": EXITED, "few": Heartbeat(True, "v1", servers=1)}[what]
        was = h.proxies["p1"].state
        changed = h.heartbeat("p1", hb, now)
        row = row + 1 if what == "good" else 0
        if was == UP and what in ("good", "few"):   # a failed check neither counts nor breaks the short row
            short = short + 1 if what == "few" else 0
        assert changed == (h.proxies["p1"].state != was)
        if was == DOWN and changed:
            assert h.proxies["p1"].state == UP
            assert now >= down_at + hold and row >= rise
            short = 0
        if was == UP and changed:
            assert what == "exited" or (what == "few" and short >= fall), (what, short)
            down_at, row, short = now, 0, 0


def test_a_proxy_with_fewer_servers_up_than_the_best_serving_proxy_stays_out():
    h = _judge(rise=2)
    h.declare(["p1", "p2"], T0, initial=True)
    h.heartbeat("p1", Heartbeat(True, "v1", servers=3), T0)
    h.heartbeat("p2", Heartbeat(True, "v1", servers=3), T0)
    h.link_down("p2", T0 + 1)
    few = Heartbeat(True, "v1", servers=1)
    for k in range(8):                                   # back from a cut link: its checks still see 1 server
        assert h.heartbeat("p2", few, T0 + 7 + 0.25 * k) is False
    assert h.proxies["p2"].state == DOWN and h.proxies["p2"].why == "its HAProxy finds 1 servers up, the others 3"
    all3 = Heartbeat(True, "v1", servers=3)
    # a short count in between starts the streak again
    assert h.heartbeat("p2", all3, T0 + 9) is False
    assert h.heartbeat("p2", few, T0 + 9.25) is False
    assert h.heartbeat("p2", all3, T0 + 9.5) is False
    assert h.heartbeat("p2", all3, T0 + 9.75) is True and h.proxies["p2"].state == UP
    # a joining proxy is held to the same bar; more servers than the best is fine
    h.declare(["p1", "p2", "p3"], T0 + 10, initial=False)
    assert not h.heartbeat("p3", few, T0 + 10.25) and not h.heartbeat("p3", few, T0 + 10.5)
    assert h.proxies["p3"].state == JOINING
    h.heartbeat("p3", Heartbeat(True, "v1", servers=4), T0 + 10.75)
    assert h.heartbeat("p3", Heartbeat(True, "v1", servers=4), T0 + 11) is True


@pytest.mark.parametrize("fall", [1, 3])
def test_a_serving_proxy_finding_fewer_servers_up_than_another_for_fall_beats_leaves(fall):
    """Cut off from the servers (its site's underlay died), a proxy would answer 503: out of the
    hash after ``fall`` good beats in a row finding fewer servers up than another proxy in the hash,
    degraded (its pinned connections stay: it may only be the first to see a server die), and back
    as soon as it sees as many for ``rise`` beats, without a hold-down."""
    h = _judge(fall=fall, hold_down_s=5.0)
    h.declare(["p1", "p2"], T0, initial=True)
    all3, two = Heartbeat(True, "v1", servers=3), Heartbeat(True, "v1", servers=2)
    h.heartbeat("p2", all3, T0)
    t = T0
    for _ in range(fall - 1):
        t += 0.25
        assert h.heartbeat("p1", two, t) is False and h.proxies["p1"].state == UP
    assert h.heartbeat("p1", all3, t + 0.25) is False    # the row is broken
    t += 0.25
    for _ in range(fall - 1):
        t += 0.25
        assert h.heartbeat("p1", two, t) is False and h.proxies["p1"].state == UP
    assert h.heartbeat("p1", two, t + 0.25) is True
    j = h.proxies["p1"]
    assert (j.state, j.why) == (DEGRADED, "its HAProxy finds 2 servers up, another proxy 3")
    assert h.out() == {"p1"} and h.pinned() == {"p1", "p2"}
    t += 0.5
    for k in range(h.rise):
        assert h.heartbeat("p1", all3, t + 0.25 * k) is (k == h.rise - 1)
    assert h.proxies["p1"].state == UP and h.out() == frozenset()


def test_proxies_seeing_a_server_die_a_beat_or_two_apart_all_stay():
    h = _judge(fall=3)
    h.declare(["p1", "p2"], T0, initial=True)
    all3, two = Heartbeat(True, "v1", servers=3), Heartbeat(True, "v1", servers=2)
    h.heartbeat("p1", all3, T0)
    h.heartbeat("p2", all3, T0)
    # p1's checks see the death two beats before p2's do
    for k, (b1, b2) in enumerate([(two, all3), (two, two), (two, two), (two, two)]):
        assert h.heartbeat("p1", b1, T0 + 0.25 * (k + 1)) is False
        assert h.heartbeat("p2", b2, T0 + 0.25 * (k + 1) + 0.1) is False
    assert h.out() == frozenset()
    # a lone proxy has nobody to compare with
    lone = _judge(fall=1)
    lone.declare(["p1"], T0, initial=True)
    assert lone.heartbeat("p1", Heartbeat(True, "v1", servers=0), T0 + 0.25) is False


def test_only_proxies_that_are_up_set_the_bar():
    h = _judge(rise=2)
    h.declare(["p1", "p2"], T0, initial=True)
    h.heartbeat("p1", Heartbeat(True, "v1", servers=5), T0)
    h.heartbeat("p2", Heartbeat(True, "v1", servers=1), T0)
    h.link_down("p1", T0 + 1)                            # the best is down: it does not count
    h.link_down("p2", T0 + 1)
    h.heartbeat("p2", Heartbeat(True, "v1", servers=1), T0 + 7)
    assert h.heartbeat("p2", Heartbeat(True, "v1", servers=1), T0 + 7.25) is True
    # nobody else up: a proxy with no server up may come back (there is nobody better to wait for)
    h.link_down("p2", T0 + 8)
    h.heartbeat("p2", Heartbeat(True, "v1", servers=0), T0 + 14)
    assert h.heartbeat("p2", Heartbeat(True, "v1", servers=0), T0 + 14.25) is True


def test_declare_follows_exactly_the_declared_proxies():
    h = _judge()
    assert h.declare(["p1", "p2"], T0, initial=True) is True
    assert h.declare(["p1", "p2"], T0 + 1, initial=False) is False
    p2 = h.proxies["p2"]
    h.link_down("p2", T0 + 1)
    assert h.declare({"p2", "p3"}, T0 + 2, initial=False) is True
    assert _states(h) == {"p2": DOWN, "p3": JOINING} and h.proxies["p2"] is p2   # kept, not reset
    assert h.out() == {"p2", "p3"}
    # what is no longer declared is forgotten: its heartbeats and port events are ignored
    assert h.heartbeat("p1", EXITED, T0 + 3) is False and h.link_down("p1", T0 + 3) is False
    assert "p1" not in h.proxies and h.tick(T0 + 100) == []
    assert h.declare([], T0 + 4, initial=False) is True and h.proxies == {} and h.out() == frozenset()


def test_at_start_only_proxies_that_were_serving_are_taken_as_up():
    """After a controller restart, ``up`` names the proxies the saved runtime state had in the hash."""
    h = _judge()
    assert h.declare(["p1", "p2"], T0, initial=True, up={"p1"}) is True
    assert _states(h) == {"p1": UP, "p2": JOINING}
    h.declare(["p1", "p2", "p3"], T0 + 1, initial=False, up={"p3"})   # later: always joining
    assert h.proxies["p3"].state == JOINING and h.out() == {"p2", "p3"}
    h2 = _judge()
    h2.declare(["p1"], T0, initial=True, up=set())
    assert _states(h2) == {"p1": JOINING}


def test_as_dict_says_what_the_judge_knows_and_is_json():
    h = _judge()
    h.declare(["p1", "p2"], T0, initial=True)
    h.declare(["p1", "p2", "p3"], T0, initial=False)
    h.heartbeat("p1", Heartbeat(True, "abc123", 7, conns=12, servers=3), T0 + 0.5)
    h.link_down("p2", T0 + 1)
    d = h.as_dict(T0 + 1.5)
    assert json.loads(json.dumps(d)) == d and list(d) == ["p1", "p2", "p3"]
    assert d["p1"] == {"state": UP, "for_s": 1.5, "last_heartbeat_ms_ago": 1000, "heartbeats": 1,
                       "config_version": "abc123", "connections": 12, "servers_up": 3, "why": None, "changes": 0}
    assert d["p2"] == {"state": DOWN, "for_s": 0.5, "last_heartbeat_ms_ago": None, "heartbeats": 0,
                       "config_version": None, "connections": None, "servers_up": None,
                       "why": "its switch port is down", "changes": 1}
    assert d["p3"]["state"] == JOINING and d["p3"]["servers_up"] is None


# --- the flows that punt heartbeats, walked through the switch simulator ------------------------------

def _host(i: int, net: int, v4: bool = True, gw4: bool = True) -> dict:
    h = {"mac": f"02:00:00:00:{net:02x}:{i:02x}", "ipv6": f"fd00:{net}::{i}/64", "gateway6": f"fd00:{net}::fe"}
    if v4:
        h["ipv4"] = f"10.{net}.0.{i}/24"
        if gw4:
            h["gateway4"] = f"10.{net}.0.254"
    return h


@pytest.fixture(scope="module")
def topo():
    hosts = {"c1": _host(1, 1), "p1": _host(1, 2), "p2": _host(2, 2), "p3": _host(3, 2), "v6": _host(4, 2, v4=False),
             "nogw": _host(5, 2, gw4=False), "a1": _host(1, 3), "a2": _host(2, 3)}
    return from_dict({"lab": {"name": "pch", "prefix": "pch"},
                      "switches": {"s1": {"dpid": 1}, "s2": {"dpid": 2}, "s3": {"dpid": 3}},
                      "hosts": hosts,
                      "links": [["c1", "s1"], ["p1", "s2"], ["p2", "s2"], ["p3", "s2"], ["v6", "s2"], ["nogw", "s2"],
                                ["a1", "s3"], ["a2", "s3"], ["s1", "s2"], ["s2", "s3"]]})


def _spec(**over) -> dict:
    c = {"name": "api", "vip4": "10.9.0.100", "vip6": "fd00:9::100", "ports": [80],
         "proxies": [{"host": "p1"}, {"host": "p2"}],
         "pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 8000},
                                              {"name": "b", "host": "a2", "port": 8000}]}],
         "affinity": {"mode": "header", "name": "X-API-Key"}}
    c.update(over)
    return c


def _core() -> SwitchState:
    """The core's entries (table-miss drops, the punt meter), as ``core.core_state`` makes them."""
    st = SwitchState()
    miss = cookies.make("core", 1, 0)
    for t in pipeline.PIPELINE:
        st.add_flow(Flow(table=t.table_id, priority=0, match=Match(), cookie=miss), "core")
    st.add_meter(Meter(pipeline.PUNT_METER, unit="pktps", bands=(MeterBand(rate=200, burst_size=50),)))
    return st


@pytest.fixture(scope="module")
def fab(topo):
    """Every switch as the controller programs it: core, fabric, and the app's part for cluster api
    (its cluster flows and heartbeat punts merged, as ``ProxyClusterApp.compute`` does)."""
    c = ClusterSpec.model_validate(_spec())
    app: dict[str, SwitchState] = {}
    for states in (F.compute_cluster(topo, c, RMAC), H.heartbeat_flows(topo, c.name, ["p1", "p2"], RMAC)):
        for sw, st in states.items():
            app.setdefault(sw, SwitchState()).merge(st)
    fabric = compute_fabric(FabricView(topo), FabricIntent())
    states = {}
    for name in topo.switches:
        st = _core()
        st.merge(fabric.get(name, SwitchState()), "fabric")
        pipeline.check_ids(H.APP, app.get(name, SwitchState()))
        st.merge(app.get(name, SwitchState()), H.APP)   # every flow checked against the pipeline
        st.check_references()
        states[name] = st
    return simulator.Fabric(topo, states)


def _heartbeat_frame(topo, host: str, hb: Heartbeat, **over):
    """The agent's datagram: from ``host``'s MAC and address to its gateway (the router MAC), UDP to the
    heartbeat port; ``over`` changes fields (``eth_src``, ``ipv4_src``, ``ipv4_dst``, ``dport``, ...)."""
    h = topo.hosts[host]
    f = {"eth_src": h.mac, "eth_dst": RMAC, "ipv4_src": str(h.ipv4.ip), "ipv4_dst": str(h.gateway4),
         "proto": W.UDP, "sport": 40000, "dport": W.HEARTBEAT_PORT, **over}
    l4 = UDP(sport=f["sport"], dport=f["dport"]) if f["proto"] == W.UDP else TCP(sport=f["sport"], dport=f["dport"])
    pkt = Ether(src=f["eth_src"], dst=f["eth_dst"]) / IP(src=f["ipv4_src"], dst=f["ipv4_dst"], ttl=64) / l4 \
        / Raw(hb.encode())
    return Ether(bytes(pkt))  # as received: every length and type filled in


def _fields(frame) -> dict:
    """The simulator's view of a scapy frame (the header fields the flows may match)."""
    ip = frame[IP]
    l4, kind = (frame[UDP], "udp") if UDP in frame else (frame[TCP], "tcp")
    return {"eth_src": frame.src, "eth_dst": frame.dst, "vlan_vid": 0, "eth_type": frame.type, "ipv4_src": ip.src,
            "ipv4_dst": ip.dst, "nw_ttl": ip.ttl, "ip_proto": ip.proto, f"{kind}_src": l4.sport,
            f"{kind}_dst": l4.dport}


def _punts(fab, host, pkt) -> list:
    """The ends of ``pkt`` from ``host`` that reach the controller: (cookie of the punting flow, outcome)."""
    return [(out.flows[-1].cookie, out) for where, out, _ in fab.trace(host, pkt) if where == "controller"]


def test_heartbeat_flows_fit_the_pipeline_and_are_metered(topo):
    states = H.heartbeat_flows(topo, "api", ["p1", "p2"], RMAC)
    assert set(states) == {"s2"}
    st = states["s2"]
    pipeline.check_ids(H.APP, st)
    assert len(st.flows) == 2
    for f in st.flows.values():
        pipeline.check_flow(H.APP, f)
        assert (f.table, f.priority, f.goto, f.meter) == (pipeline.INGRESS, H.P_HEARTBEAT, None, pipeline.PUNT_METER)
        assert f.actions == (Output(OFPP_CONTROLLER, pipeline.PACKET_IN_BYTES),)
    for name in ("p1", "p2"):
        ck = H.heartbeat_cookie("api", name)
        decoded = cookies.decode(ck)
        assert (decoded.app, decoded.kind, decoded.obj) == (H.APP, H.K_HEARTBEAT, cookies.object_id(f"api/{name}"))
        assert name in st.owners[ck] and "api" in st.owners[ck]
    assert len({H.heartbeat_cookie(c, p) for c in ("api", "web") for p in ("p1", "p2")}) == 4
    # the punt meter is the core's: alone the state refers to a meter it does not define
    with pytest.raises(StateConflict, match="meter"):
        st.check_references()


def test_a_proxy_without_an_ipv4_address_or_gateway_gets_no_heartbeat_flow(topo):
    assert H.heartbeat_flows(topo, "api", ["v6", "nogw"], RMAC) == {}
    assert len(H.heartbeat_flows(topo, "api", ["v6", "p3", "nogw"], RMAC)["s2"].flows) == 1
    assert H.gateway_of(topo, "p1") == "10.2.0.254" and H.gateway_of(topo, "nogw") is None


@pytest.mark.parametrize("proxy", ["p1", "p2"])
def test_a_proxys_heartbeat_is_punted_with_its_cookie_and_brings_it_in(topo, fab, proxy):
    """From the agent's datagram to the judge: the edge switch punts it (metered, at most 256 bytes)
    with the proxy's cookie, parse_frame reads the punted bytes, the judge takes the proxy in."""
    h = _judge(rise=2)
    h.declare([proxy], T0, initial=False)
    for seq, now in ((1, T0 + 0.25), (2, T0 + 0.5)):
        frame = _heartbeat_frame(topo, proxy, Heartbeat(True, "3f2a9c", seq, conns=4, servers=2))
        ((cookie, out),) = _punts(fab, proxy, _fields(frame))
        assert cookie == H.heartbeat_cookie("api", proxy)
        assert out.reason == f"max_len={pipeline.PACKET_IN_BYTES}" and out.meters == (pipeline.PUNT_METER,)
        assert [w for w, _, _ in fab.trace(proxy, _fields(frame))] == ["controller"]   # punted, not also routed
        hb = parse_frame(bytes(frame)[:pipeline.PACKET_IN_BYTES])
        assert hb == Heartbeat(True, "3f2a9c", seq, conns=4, servers=2)
        changed = h.heartbeat(proxy, hb, now)
    assert changed and h.proxies[proxy].state == UP


SPOOFS = {
    "another proxy claiming its address": ("p2", {"eth_src": "p2", "ipv4_src": "p1"}),
    "another proxy claiming its MAC and address": ("p2", {"eth_src": "p1", "ipv4_src": "p1"}),
    "a host of another switch claiming its MAC and address": ("c1", {"eth_src": "p1", "ipv4_src": "p1"}),
    "a server claiming its address": ("a1", {"eth_src": "a1", "ipv4_src": "p1"}),
    "the proxy with another host's MAC": ("p1", {"eth_src": "p2"}),
    "the proxy to another UDP port": ("p1", {"dport": W.HEARTBEAT_PORT + 1}),
    "the proxy from the heartbeat port to another": ("p1", {"sport": W.HEARTBEAT_PORT, "dport": 40000}),
    "the proxy by TCP to the heartbeat port": ("p1", {"proto": 6}),
    "the proxy to a server's address": ("p1", {"ipv4_dst": "a1"}),
    "the proxy to another proxy's address": ("p1", {"ipv4_dst": "p2"}),
    "the proxy to another address of its subnet": ("p1", {"ipv4_dst": "10.2.0.253"}),
    "the proxy to another subnet's gateway": ("p1", {"ipv4_dst": "10.1.0.254"}),
    "the proxy to its gateway's address at another MAC": ("p1", {"eth_dst": "p2"}),
}


@pytest.mark.parametrize("sender, over", SPOOFS.values(), ids=SPOOFS.keys())
def test_other_datagrams_are_not_punted_as_the_proxys_heartbeat(topo, fab, sender, over):
    hosts = topo.hosts
    resolved = {k: (str(hosts[v].ipv4.ip) if k.startswith("ipv4") else hosts[v].mac) if v in hosts else v
                for k, v in over.items()}
    frame = _heartbeat_frame(topo, "p1", Heartbeat(True, "3f2a9c", 1, servers=2), **resolved)
    pkt = _fields(frame)
    ends = fab.trace(sender, pkt)
    assert ends
    assert H.heartbeat_cookie("api", "p1") not in [c for c, _ in _punts(fab, sender, pkt)]
    # no heartbeat flow of any proxy takes it (nobody's judge hears of it)
    assert not [c for c, _ in _punts(fab, sender, pkt) if cookies.decode(c).kind == H.K_HEARTBEAT]
    # the same packet from the proxy itself with its own headers is the control case: punted
    if sender != "p1":
        own = _fields(_heartbeat_frame(topo, "p1", Heartbeat(True, "3f2a9c", 1, servers=2)))
        assert [c for c, _ in _punts(fab, "p1", own)] == [H.heartbeat_cookie("api", "p1")]


def test_a_tagged_heartbeat_is_not_punted(topo, fab):
    """The controller would refuse it (parse_frame wants untagged frames), so the switch does not spend
    the punt meter on it: hosts are admitted untagged only.  (Was a bug: the punt matched any tag.)"""
    frame = _heartbeat_frame(topo, "p1", Heartbeat(True, "3f2a9c", 1, servers=2))
    with pytest.raises(BadHeartbeat):
        parse_frame(bytes(frame)[:12] + b"\x81\x00\x00\x05" + bytes(frame)[12:])
    pkt = {**_fields(frame), "vlan_vid": 0x1000 | 5}
    assert not _punts(fab, "p1", pkt) and [w for w, _, _ in fab.trace("p1", pkt)] == ["drop"]


# --- the agent's pure helpers -----------------------------------------------------------------------

VIEW = {"version": "", "cluster": {"name": "api", "ports": [80, 8080], "proxies": [{"host": "p1", "state": "active"}],
                                   "affinity": {"mode": "header", "name": "X-API-Key"}},
        "heartbeat": {"interval_ms": 250, "gateway": "10.2.0.254", "source": "10.2.0.1", "port": 7700}}


def _reordered(x):
    if isinstance(x, dict):
        return {k: _reordered(x[k]) for k in reversed(list(x))}
    if isinstance(x, list):
        return [_reordered(v) for v in x]
    return x


def test_config_version_is_stable_for_equal_views_whatever_the_key_order():
    v = agent.config_version(VIEW)
    assert len(v) == 16 and set(v) <= set("0123456789abcdef")
    assert agent.config_version(_reordered(VIEW)) == v and list(_reordered(VIEW)) != list(VIEW)
    assert agent.config_version(json.loads(json.dumps(VIEW))) == v


def _changed(path, value):
    view = json.loads(json.dumps(VIEW))
    *parents, last = path
    node = view
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return view


@pytest.mark.parametrize("view", [
    _changed(("cluster", "name"), "web"),
    _changed(("cluster", "ports"), [8080, 80]),                   # list order is meaning
    _changed(("cluster", "ports"), [80, 8080, 443]),
    _changed(("cluster", "proxies", 0, "state"), "drain"),
    _changed(("cluster", "affinity", "mode"), "source"),
    _changed(("heartbeat", "interval_ms"), 251),
    _changed(("heartbeat", "interval_ms"), "250"),                  # a string is not the number
    _changed(("heartbeat", "extra"), None),                        # a key added, even as null
    _changed(("heartbeat", "port"), KeyError),                     # a key removed
    _changed(("version",), "x"),
], ids=["name", "port order", "a port more", "proxy state", "affinity", "interval", "type", "key added",
        "key removed", "version"])
def test_config_version_changes_when_anything_changes(view):
    assert agent.config_version(view) != agent.config_version(VIEW)


def _kernel_table(path: str) -> dict[str, str]:
    """local address -> state of every socket in /proc/net/tcp{,6}, as the kernel writes it."""
    with open(path) as f:
        next(f)
        return {fields[1]: fields[3] for fields in (line.split() for line in f)}


def _listening(family: int, addr: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((addr, 0))
    except OSError as exc:
        s.close()
        pytest.skip(f"cannot bind {addr}: {exc}")
    s.listen(8)
    return s


LOOPBACKS = [(socket.AF_INET, "127.0.0.1", "/proc/net/tcp"), (socket.AF_INET6, "::1", "/proc/net/tcp6")]


@pytest.mark.parametrize("family, addr, table", LOOPBACKS, ids=["tcp", "tcp6"])
def test_proc_net_key_spells_a_local_address_as_the_kernel_does(family, addr, table):
    with _listening(family, addr) as s:
        port = s.getsockname()[1]
        key = agent._proc_net_key(addr, port)
        assert _kernel_table(table).get(key) == "0A", (key, port)   # 0A: LISTEN
        assert key.endswith(f":{port:04X}")


@pytest.mark.skipif(sys.byteorder != "little", reason="the words are in host order")
def test_proc_net_key_known_spellings():
    assert agent._proc_net_key("10.9.0.100", 80) == "6400090A:0050"
    assert agent._proc_net_key("fd00:9::100", 8080) == "090000FD" "00000000" "00000000" "00010000" ":1F90"


@pytest.mark.parametrize("family, addr, table", LOOPBACKS, ids=["tcp", "tcp6"])
def test_vip_connections_counts_established_client_connections(family, addr, table):
    with _listening(family, addr) as lst, _listening(family, addr) as other:
        port, other_port = lst.getsockname()[1], other.getsockname()[1]
        assert agent.vip_connections([addr], [port]) == 0
        clients = [socket.create_connection((addr, port), timeout=5) for _ in range(3)]
        accepted = [lst.accept()[0] for _ in clients]
        bystander = socket.create_connection((addr, other_port), timeout=5)   # another port: not counted
        bystander_srv = other.accept()[0]
        try:
            assert agent.vip_connections([addr], [port]) == 3
            assert agent.vip_connections([addr], [port, other_port]) == 4
            assert agent.vip_connections(["127.0.0.2", "::2"], [port]) == 0   # another address
        finally:
            for s in (*clients, *accepted, bystander, bystander_srv):
                s.close()
        # closed: the kernel keeps them a while (FIN_WAIT, CLOSE_WAIT, TIME_WAIT), none established
        assert agent.vip_connections([addr], [port]) == 0


def test_state_of_a_proxy_in_the_served_cluster():
    cluster = {"proxies": [{"host": "p1", "state": "drain"}, {"host": "p2", "state": "active"}, {"host": "p3"}]}
    assert agent._state_of(cluster, "p1") == "drain" and agent._state_of(cluster, "p2") == "active"
    assert agent._state_of(cluster, "p3") is None and agent._state_of(cluster, "nobody") is None
    assert agent._state_of({"proxies": []}, "p1") is None


# --- haproxy: what reloads, what balances ---------------------------------------------------------

def _resolved(topo, **over) -> dict:
    return resolve(topo, ClusterSpec.model_validate(_spec(**over)))


def test_a_proxys_state_alone_needs_no_reload_and_no_command(topo):
    old = _resolved(topo)
    new = _resolved(topo, proxies=[{"host": "p1"}, {"host": "p2", "state": "drain"}])
    assert old["proxies"] != new["proxies"]
    assert haproxy.runtime_commands(old, new) == [] and haproxy.runtime_commands(new, old) == []
    assert haproxy.render(old, "p1", "/run/x") == haproxy.render(new, "p1", "/run/x")


def _servers(*states_weights) -> list[dict]:
    return [{"name": n, "host": h, "port": 8000, "state": s, "weight": w}
            for (n, h), (s, w) in zip((("a", "a1"), ("b", "a2")), states_weights)]


@pytest.mark.parametrize("before, after, cmds", [
    ((("ready", 100), ("ready", 100)), (("drain", 100), ("ready", 100)), ["set server pool_v1/a weight 0"]),
    ((("drain", 100), ("ready", 100)), (("ready", 100), ("ready", 100)), ["set server pool_v1/a weight 100"]),
    ((("ready", 100), ("ready", 100)), (("maint", 100), ("ready", 100)), ["set server pool_v1/a state maint"]),
    ((("maint", 100), ("ready", 100)), (("ready", 100), ("ready", 100)),
     ["set server pool_v1/a state ready", "set server pool_v1/a weight 100"]),
    ((("maint", 100), ("ready", 100)), (("drain", 100), ("ready", 100)),
     ["set server pool_v1/a state ready", "set server pool_v1/a weight 0"]),
    ((("ready", 100), ("ready", 100)), (("ready", 100), ("ready", 7)), ["set server pool_v1/b weight 7"]),
    ((("ready", 100), ("ready", 100)), (("ready", 100), ("ready", 100)), []),
])
def test_server_state_and_weight_change_by_runtime_commands(topo, before, after, cmds):
    old = _resolved(topo, pools=[{"name": "v1", "servers": _servers(*before)}])
    new = _resolved(topo, pools=[{"name": "v1", "servers": _servers(*after)}])
    assert haproxy.runtime_commands(old, new) == cmds


@pytest.mark.parametrize("over", [
    {"proxies": [{"host": "p1"}, {"host": "p2"}, {"host": "p3"}]},                      # a new proxy
    {"proxies": [{"host": "p1"}]},                                                       # one fewer
    {"pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 8000}]}]},  # a server fewer
    {"pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 8000},
                                          {"name": "b", "host": "a2", "port": 8000},
                                          {"name": "c", "host": "a2", "port": 8001}]}]},  # a new server
    {"pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 8000},
                                          {"name": "b", "host": "a2", "port": 8001}]}]},  # a server's port
    {"affinity": {"mode": "source"}},
    {"health": {"interval_ms": 500}},
    {"ports": [80, 8080]},
], ids=["new proxy", "proxy removed", "server removed", "new server", "server port", "affinity", "health", "ports"])
def test_anything_else_needs_a_reload(topo, over):
    assert haproxy.runtime_commands(_resolved(topo), _resolved(topo, **over)) is None
    assert haproxy.runtime_commands(_resolved(topo, **over), _resolved(topo)) is None


def _sections(cfg: str) -> dict[str, list[str]]:
    """haproxy.cfg's sections by their first line, each its indented lines (stripped)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in cfg.splitlines():
        if line and not line.startswith((" ", "#")):
            current = line
            out[current] = []
        elif line.strip() and current is not None:
            out[current].append(line.strip())
    return out


TWO_POOLS = [{"name": "v1", "balance": "leastconn", "servers": [{"name": "a", "host": "a1", "port": 8000}]},
             {"name": "v2", "balance": "random", "servers": [{"name": "a", "host": "a2", "port": 8001}]}]
AFFINITIES = {
    "header": ({"mode": "header", "name": "X-API-Key"}, ["balance hdr(X-API-Key)", "hash-type consistent"]),
    "source": ({"mode": "source"}, ["balance source", "hash-type consistent"]),
    "cookie": ({"mode": "cookie", "name": "SID"}, None),
    "none": ({"mode": "none"}, None),
}


@pytest.mark.parametrize("affinity, balance", AFFINITIES.values(), ids=AFFINITIES.keys())
def test_rendered_backends_balance_by_the_affinity_key_or_the_pools_own_balance(topo, affinity, balance):
    cfg = haproxy.render(_resolved(topo, affinity=affinity, pools=TWO_POOLS, routes=[]), "p1", "/run/x")
    sections = _sections(cfg)
    for pool in TWO_POOLS:
        lines = sections[f"backend pool_{pool['name']}"]
        want = balance or [f"balance {pool['balance']}"]
        assert lines[:len(want)] == want
        assert sum(ln.startswith("balance ") for ln in lines) == 1
        assert ("hash-type consistent" in lines) == (balance is not None)


def test_rendered_config_has_the_health_frontend_and_closes_idle_connections_on_response(topo):
    r = _resolved(topo)
    sections = _sections(haproxy.render(r, "p2", "/run/x"))
    assert sections["frontend health"] == [f"bind 127.0.0.1:{r['health_port']}", f"monitor-uri {r['health_uri']}"]
    assert r["health_uri"] == "/healthz"
    assert "option idle-close-on-response" in sections["defaults"]   # every frontend, vip included
    assert "localpeer p2" in sections["global"] and "master-worker" in sections["global"]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy (Debian) not installed")
@pytest.mark.parametrize("affinity", [a for a, _ in AFFINITIES.values()], ids=AFFINITIES.keys())
def test_haproxy_accepts_the_rendered_config_with_each_pools_balance(topo, tmp_path, affinity):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy.render(_resolved(topo, affinity=affinity, pools=TWO_POOLS, routes=[]), "p1", str(tmp_path)))
    out = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
