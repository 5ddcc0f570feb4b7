"""Unit tests for ryu_apps.openflow.ofwire (fast OpenFlow 1.3 encoder / bounded decoder).

Oracles:

* os-ken: for every supported match field, action, instruction and message,
  the bytes ofwire produces are compared with the bytes os-ken's
  ``ofproto_v1_3_parser`` produces for the equivalent objects (serialized with
  a fake datapath).  Our match TLV order is canonical (OpenFlow-basic first,
  then NXM_0, NXM_1, so that prerequisites come first as OVS requires), while
  os-ken sorts NXM classes first and does not apply ``value &= mask``; where
  that matters the test compares *after canonicalising both* with
  ``ofwire.canonical_match`` and says so.
* Open vSwitch itself (skipped when ``ovs-ofctl`` is missing): a fake switch on
  a unix socket records what ``ovs-ofctl add-flows/add-groups/add-meter
  --bundle`` sends for ``str(flow)``; OVS encodes instructions, buckets and
  bands exactly as it echoes them in stats replies, so our bytes must equal
  them.  ``ovs-ofctl ofp-print`` must decode every message we build.
* Round trip: decode(encode(x)) gives back the same canonical keys and objects.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
from os_ken.ofproto import nicira_ext, ofproto_parser, ofproto_v1_3, ofproto_v1_3_parser

from ryu_apps.openflow import ofwire as W
from ryu_apps.openflow.ofdata import (
    FIELDS,
    NX_NAT_F_DST,
    NX_NAT_F_PERSISTENT,
    NX_NAT_F_PROTO_RANDOM,
    NX_NAT_F_SRC,
    OFPFF_CHECK_OVERLAP,
    OFPFF_NO_BYT_COUNTS,
    OFPFF_RESET_COUNTS,
    OFPFF_SEND_FLOW_REM,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    OFPXMC_ERICOXM_OF,
    Bucket,
    Ct,
    DecTtl,
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    MeterBand,
    Output,
    PopVlan,
    PushVlan,
    RawAction,
    RegMove,
    Resubmit,
    SetField,
)

from .test_ofdata import OFCTL_SAMPLE

ofp = ofproto_v1_3
P = ofproto_v1_3_parser


class DP:
    """Minimal fake datapath for os-ken serialization."""

    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser
    id = 1


def osk_msg(msg, xid: int) -> bytes:
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def osk_match(**kw) -> bytes:
    buf = bytearray()
    P.OFPMatch(**kw).serialize(buf, 0)
    return bytes(buf)


def osk_action(a) -> bytes:
    if isinstance(a, P.NXActionCT) and a.actions:
        # os-ken leaves out the trailing padding of an NXAST_NAT nested inside
        # NXAST_CT although its length fields count it; OVS sends the zeros
        # (and a set_field after the nat starts 8-aligned).  Canonicalise by
        # serializing the header and each nested action on its own.
        nested = b"".join(osk_action(n) for n in a.actions)
        head = osk_action(P.NXActionCT(flags=a.flags, zone_src=a.zone_src, zone_ofs_nbits=a.zone_ofs_nbits,
                                       recirc_table=a.recirc_table, alg=a.alg, actions=[]))
        return head[:2] + struct.pack("!H", len(head) + len(nested)) + head[4:] + nested
    buf = bytearray()
    a.serialize(buf, 0)
    # the same padding canonicalisation for a lone NXAST_NAT: zero-fill up to the declared length
    declared = struct.unpack_from("!H", buf, 2)[0]
    return bytes(buf) + b"\0" * max(0, declared - len(buf))


def split_flow_mod(b: bytes) -> tuple[bytes, bytes, bytes]:
    """(fixed 48-byte part, ofp_match incl. padding, instructions)."""
    mlen = struct.unpack_from("!H", b, 50)[0]
    pad = (mlen + 7) // 8 * 8
    return b[:48], b[48:48 + pad], b[48 + pad:]


# ---------------------------------------------------------------------------
# Match: every field vs os-ken
# ---------------------------------------------------------------------------

IP = dict(eth_type=0x0800)
IP6 = dict(eth_type=0x86DD)
ARP = dict(eth_type=0x0806)
TCP = dict(IP, ip_proto=6)
UDP = dict(IP, ip_proto=17)
ICMP = dict(IP, ip_proto=1)
ICMP6 = dict(IP6, ip_proto=58)

# (id, our Match kwargs, os-ken OFPMatch kwargs or None for "the same")
MATCH_CASES = [
    ("empty", {}, None),
    ("in_port", dict(in_port=1), None),
    ("in_port-local", dict(in_port=OFPP_LOCAL), None),
    ("metadata", dict(metadata=0x0123456789ABCDEF), None),
    ("metadata-masked", dict(metadata=(0x10, 0xF0)), None),
    ("eth_dst", dict(eth_dst="aa:bb:cc:dd:ee:ff"), None),
    ("eth_dst-upper", dict(eth_dst="AA:BB:CC:DD:EE:FF"), dict(eth_dst="aa:bb:cc:dd:ee:ff")),
    ("eth_dst-masked", dict(eth_dst=("01:00:00:00:00:00", "01:00:00:00:00:00")), None),
    ("eth_src", dict(eth_src="02:00:00:00:00:01"), None),
    ("eth_src-masked", dict(eth_src=("02:00:00:00:00:00", "ff:ff:ff:00:00:00")), None),
    ("eth_type", dict(eth_type=0x88CC), None),
    ("vlan_vid", dict(vlan_vid=0x1064), None),
    ("vlan_vid-none", dict(vlan_vid=0), None),
    ("vlan_vid-present", dict(vlan_vid=(0x1000, 0x1000)), None),
    ("vlan_pcp", dict(vlan_vid=(0x1000, 0x1000), vlan_pcp=5), None),
    ("ip_dscp", dict(IP, ip_dscp=46), None),
    ("ip_ecn", dict(IP, ip_ecn=3), None),
    ("ip_proto", dict(IP, ip_proto=6), None),
    ("ipv4_src", dict(IP, ipv4_src="10.0.0.1"), None),
    ("ipv4_src-prefix", dict(IP, ipv4_src="10.0.0.0/8"), dict(IP, ipv4_src=("10.0.0.0", "255.0.0.0"))),
    ("ipv4_dst", dict(IP, ipv4_dst="192.168.1.1"), None),
    ("ipv4_dst-masked", dict(IP, ipv4_dst=("10.1.2.3", "255.0.255.0")), None),
    ("tcp_src", dict(TCP, tcp_src=80), None),
    ("tcp_dst", dict(TCP, tcp_dst=443), None),
    ("tcp_dst-masked", dict(TCP, tcp_dst=(0x1234, 0xFF00)), None),
    ("tcp_flags-fin", dict(TCP, tcp_flags=(0x001, 0x001)), None),
    ("tcp_flags-syn-not-ack", dict(TCP, tcp_flags=(0x002, 0x012)), None),
    ("tcp_flags", dict(TCP, tcp_flags=0x010), None),
    ("tcp6", dict(IP6, ip_proto=6, tcp_dst=22), None),
    ("udp_src", dict(UDP, udp_src=53), None),
    ("udp_dst", dict(UDP, udp_dst=4789), None),
    ("icmpv4_type", dict(ICMP, icmpv4_type=8), None),
    ("icmpv4_code", dict(ICMP, icmpv4_type=3, icmpv4_code=1), None),
    ("arp_op", dict(ARP, arp_op=1), None),
    ("arp_spa", dict(ARP, arp_spa="10.0.0.1"), None),
    ("arp_spa-masked", dict(ARP, arp_spa="10.0.0.0/24"), dict(ARP, arp_spa=("10.0.0.0", "255.255.255.0"))),
    ("arp_tpa", dict(ARP, arp_tpa="10.0.0.2"), None),
    ("arp_sha", dict(ARP, arp_sha="aa:bb:cc:dd:ee:01"), None),
    ("arp_tha", dict(ARP, arp_tha="aa:bb:cc:dd:ee:02"), None),
    ("arp_tha-masked", dict(ARP, arp_tha=("aa:bb:cc:00:00:00", "ff:ff:ff:00:00:00")), None),
    ("ipv6_src", dict(IP6, ipv6_src="fd00::1"), None),
    ("ipv6_src-prefix", dict(IP6, ipv6_src="fd00:1::/32"), dict(IP6, ipv6_src=("fd00:1::", "ffff:ffff::"))),
    ("ipv6_dst", dict(IP6, ipv6_dst="2001:db8::dead:beef"), None),
    ("ipv6_flabel", dict(IP6, ipv6_flabel=0x12345), None),
    ("ipv6_flabel-masked", dict(IP6, ipv6_flabel=(0x10, 0xFFFF0)), None),
    ("icmpv6_type", dict(ICMP6, icmpv6_type=128), None),
    ("icmpv6_code", dict(ICMP6, icmpv6_type=1, icmpv6_code=4), None),
    ("nd_target", dict(ICMP6, icmpv6_type=135, ipv6_nd_target="fd00::1"), None),
    ("nd_sll", dict(ICMP6, icmpv6_type=135, ipv6_nd_sll="aa:bb:cc:dd:ee:ff"), None),
    ("nd_tll", dict(ICMP6, icmpv6_type=136, ipv6_nd_target="fd00::1", ipv6_nd_tll="aa:bb:cc:dd:ee:ff"), None),
    ("tunnel_id", dict(tunnel_id=0x1234), None),
    ("tunnel_id-masked", dict(tunnel_id=(0x1200, 0xFF00)), None),
    *[(f"reg{i}", {f"reg{i}": 0x1000 + i}, None) for i in range(8)],
    ("reg0-masked", dict(reg0=(0x5, 0xF)), None),
    ("nw_ttl", dict(IP, nw_ttl=64), None),
    ("tun_ipv4_src", dict(tun_ipv4_src="1.2.3.4"), None),
    ("tun_ipv4_dst", dict(tun_ipv4_dst="1.2.3.0/24"), dict(tun_ipv4_dst=("1.2.3.0", "255.255.255.0"))),
    ("ct_state", dict(ct_state=(0x21, 0x21)), None),
    ("ct_state-exact", dict(ct_state=0x22), None),
    ("ct_zone", dict(ct_zone=7), None),
    ("ct_mark", dict(ct_mark=(1, 3)), None),
    ("mixed", dict(TCP, in_port=3, eth_src="02:00:00:00:00:01", ipv4_dst="10.0.0.0/24", tcp_dst=80,
                   reg1=5, ct_state=(0x21, 0x21), nw_ttl=5, metadata=(1, 1)),
     dict(TCP, in_port=3, eth_src="02:00:00:00:00:01", ipv4_dst=("10.0.0.0", "255.255.255.0"), tcp_dst=80,
          reg1=5, ct_state=(0x21, 0x21), nw_ttl=5, metadata=(1, 1))),
    # os-ken sends value bits outside the mask; canonical form masks them off
    ("value-outside-mask", dict(reg2=(0xFFFF, 0xFF)), None),
]
MATCH_IDS = [c[0] for c in MATCH_CASES]


def test_match_cases_cover_every_field():
    assert {n for _i, kw, _o in MATCH_CASES for n in kw} == set(_OSK_FIELDS)


@pytest.mark.parametrize("ours,theirs", [c[1:] for c in MATCH_CASES], ids=MATCH_IDS)
def test_encode_match_equals_os_ken(ours, theirs):
    mine = W.encode_match(Match(**ours))
    osk = osk_match(**(ours if theirs is None else theirs))
    # Canonicalised comparison: os-ken orders NXM classes before OpenFlow-basic
    # and keeps value bits outside a mask; canonical_match undoes both.
    assert W.canonical_match(osk) == mine
    assert W.canonical_match(mine) == mine
    assert len(mine) % 8 == 0
    only_basic = all(FIELDS[n].oxm_class == 0x8000 for n in ours) or len(ours) <= 1
    if only_basic and not ours.get("reg2") and ours.get("ct_state") != 0x22:
        # Same order either way: byte-for-byte identical without canonicalising.
        # (Not for ct_state=0x22: OVS keeps 8 ct_state bits and reports an exact
        # match as 0x22/0xff, which is our canonical form; os-ken sends 0x22.)
        assert osk == mine


@pytest.mark.parametrize("ours", [c[1] for c in MATCH_CASES], ids=MATCH_IDS)
def test_decode_match_round_trip(ours):
    m = Match(**ours)
    assert W.decode_match(W.encode_match(m)) == m


def test_encode_match_is_cached_and_canonical_for_equal_matches():
    a = Match(in_port=1, eth_type=0x0800, ipv4_dst="10.0.0.0/24", reg0=1, nw_ttl=3)
    b = Match(nw_ttl=3, reg0=1, ipv4_dst=("10.0.0.9", "255.255.255.0"), eth_type=0x800, in_port=1)
    assert W.encode_match(a) == W.encode_match(b)
    assert W.encode_match(a) is W.encode_match(a)


def test_canonical_order_puts_prerequisites_first():
    # nw_ttl is NXM_1 (class 1) and needs eth_type (OpenFlow basic).  os-ken's
    # order puts nw_ttl first, which OVS rejects with OFPBMC_BAD_PREREQ.
    mine = W.encode_match(Match(eth_type=0x0800, nw_ttl=3))
    hdrs = [struct.unpack_from("!I", mine, 4)[0] >> 16, struct.unpack_from("!I", mine, 4 + 6)[0] >> 16]
    assert hdrs == [0x8000, 0x0001]


# ---------------------------------------------------------------------------
# Actions vs os-ken
# ---------------------------------------------------------------------------

def _osk_field_name_by_header() -> dict[tuple[int, int], str]:
    """(oxm class, field) -> os-ken field name, for NXAST_REG_MOVE headers."""
    out = {}
    for f in ofproto_v1_3.oxm_types:
        if isinstance(f.num, tuple):
            continue
        out.setdefault((f.num >> 7, f.num & 0x7F), f.name)
    return out


_OSK_HDR_NAME = _osk_field_name_by_header()


def osk_move_name(field: str) -> str:
    s = FIELDS[field]
    return _OSK_HDR_NAME[(s.move_class, s.move_field)]


def osk_nat(flags, **kw):
    return P.NXActionNAT(flags=flags, **kw)


# (id, our action, os-ken action)
ACTION_CASES = [
    ("output", Output(3), P.OFPActionOutput(3, 0)),
    ("output-in_port", Output(OFPP_IN_PORT), P.OFPActionOutput(ofp.OFPP_IN_PORT, 0)),
    ("output-local", Output(OFPP_LOCAL), P.OFPActionOutput(ofp.OFPP_LOCAL, 0)),
    ("output-controller", Output.controller(), P.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)),
    ("output-controller-128", Output(OFPP_CONTROLLER, 128), P.OFPActionOutput(ofp.OFPP_CONTROLLER, 128)),
    ("group", GroupAction(7), P.OFPActionGroup(7)),
    ("dec_ttl", DecTtl(), P.OFPActionDecNwTtl()),
    ("push_vlan", PushVlan(), P.OFPActionPushVlan(0x8100)),
    ("push_vlan-qinq", PushVlan(0x88A8), P.OFPActionPushVlan(0x88A8)),
    ("pop_vlan", PopVlan(), P.OFPActionPopVlan()),
    ("resubmit", Resubmit(5), P.NXActionResubmitTable(in_port=0xFFF8, table_id=5)),
    ("resubmit-port", Resubmit(7, in_port=3), P.NXActionResubmitTable(in_port=3, table_id=7)),
    ("resubmit-local", Resubmit(7, in_port=OFPP_LOCAL), P.NXActionResubmitTable(in_port=0xFFFE, table_id=7)),
    ("ct", Ct(), P.NXActionCT(flags=0, zone_src="", zone_ofs_nbits=0, recirc_table=255, alg=0, actions=[])),
    ("ct-commit-zone-table", Ct(commit=True, zone=5, table=3),
     P.NXActionCT(flags=nicira_ext.NX_CT_F_COMMIT, zone_src="", zone_ofs_nbits=5, recirc_table=3, alg=0,
                  actions=[])),
    ("ct-nat", Ct(nat=""),
     P.NXActionCT(flags=0, zone_src="", zone_ofs_nbits=0, recirc_table=255, alg=0, actions=[osk_nat(0)])),
    ("ct-snat-range", Ct(commit=True, nat="src=10.0.0.1-10.0.0.9:1000-2000,random"),
     P.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=0, recirc_table=255, alg=0, actions=[
         osk_nat(NX_NAT_F_SRC | NX_NAT_F_PROTO_RANDOM, range_ipv4_min="10.0.0.1",
                 range_ipv4_max="10.0.0.9", range_proto_min=1000, range_proto_max=2000)])),
    ("ct-dnat-one", Ct(commit=True, table=4, nat="dst=10.9.9.9"),
     P.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=0, recirc_table=4, alg=0, actions=[
         osk_nat(NX_NAT_F_DST, range_ipv4_min="10.9.9.9")])),
    ("ct-snat-v6", Ct(commit=True, nat="src=[fd00::1]-[fd00::9]:5,persistent"),
     P.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=0, recirc_table=255, alg=0, actions=[
         osk_nat(NX_NAT_F_SRC | NX_NAT_F_PERSISTENT, range_ipv6_min="fd00::1",
                 range_ipv6_max="fd00::9", range_proto_min=5)])),
    # exec(set_field:V->ct_mark): a nested OFPAT_SET_FIELD (NXM_1 ct_mark), after the nat
    ("ct-mark", Ct(commit=True, zone=5, mark=3),
     P.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=5, recirc_table=255, alg=0, actions=[
         P.OFPActionSetField(ct_mark=3)])),
    ("ct-mark-zero", Ct(commit=True, mark=0),
     P.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=0, recirc_table=255, alg=0, actions=[
         P.OFPActionSetField(ct_mark=0)])),
    ("ct-nat-mark-table", Ct(commit=True, zone=5, table=4, nat="src=10.0.0.1", mark=0xFFFFFFFF),
     P.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=5, recirc_table=4, alg=0, actions=[
         osk_nat(NX_NAT_F_SRC, range_ipv4_min="10.0.0.1"), P.OFPActionSetField(ct_mark=0xFFFFFFFF)])),
    ("ct-plain-nat-mark", Ct(commit=True, nat="", mark=7),
     P.NXActionCT(flags=1, zone_src="", zone_ofs_nbits=0, recirc_table=255, alg=0, actions=[
         osk_nat(0), P.OFPActionSetField(ct_mark=7)])),
    ("move-reg", RegMove("reg0", "reg1", 16, 0, 16),
     P.NXActionRegMove(src_field="reg0", dst_field="reg1", n_bits=16, src_ofs=0, dst_ofs=16)),
    ("move-metadata", RegMove("metadata", "reg1", 32, 32, 0),
     P.NXActionRegMove(src_field="metadata", dst_field="reg1", n_bits=32, src_ofs=32, dst_ofs=0)),
]
# set_field for every writable field
_SET_VALUES = {"mac": "02:00:00:00:00:09", "ipv4": "10.9.8.7", "ipv6": "fd00::99"}
# os-ken does not know OVS's Ericsson ND fields (class 0x1000): golden bytes below instead
_OSK_FIELDS = {n: s for n, s in FIELDS.items() if s.oxm_class != OFPXMC_ERICOXM_OF}
for _name, _spec in _OSK_FIELDS.items():
    if not _spec.writable:
        continue
    _v = _SET_VALUES.get(_spec.kind, 0x1005 if _name == "vlan_vid" else min(5, _spec.max_value))
    # set_field:in_port goes out as 16-bit NXM_OF_IN_PORT (os-ken: in_port_nxm), the only form OVS accepts
    _osk_name = "in_port_nxm" if _name == "in_port" else _name
    ACTION_CASES.append((f"set_field-{_name}", SetField(_name, _v), P.OFPActionSetField(**{_osk_name: _v})))
# NXAST_REG_MOVE for every field (as source, into a same-width writable field)
for _name, _spec in _OSK_FIELDS.items():
    # a writable destination at least as wide (same width preferred)
    _dst = min((n for n, s in _OSK_FIELDS.items() if s.writable and s.move_bits >= _spec.move_bits and n != _name),
               key=lambda n: (FIELDS[n].move_bits - _spec.move_bits, n))
    ACTION_CASES.append((f"move-{_name}", RegMove.whole(_name, _dst),
                         P.NXActionRegMove(src_field=osk_move_name(_name), dst_field=osk_move_name(_dst),
                                           n_bits=_spec.move_bits, src_ofs=0, dst_ofs=0)))
ACTION_IDS = [c[0] for c in ACTION_CASES]


@pytest.mark.parametrize("ours,theirs", [c[1:] for c in ACTION_CASES], ids=ACTION_IDS)
def test_encode_action_equals_os_ken(ours, theirs):
    assert W.encode_actions((ours,)) == osk_action(theirs)


@pytest.mark.parametrize("ours", [c[1] for c in ACTION_CASES], ids=ACTION_IDS)
def test_decode_action_round_trip(ours):
    assert W.decode_actions(W.encode_actions((ours,))) == (ours,)


def test_ct_mark_wire_layout_and_what_it_does_not_decode():
    # the bytes OVS 3.1 itself sends for ct(commit,zone=5,exec(set_field:0x3->ct_mark))
    ovs = bytes.fromhex("ffff00280000232000230001000000000005ff0000000000"
                        "001900100001d6040000000300000000")
    assert W.encode_actions((Ct(commit=True, zone=5, mark=3),)) == ovs
    assert W.decode_actions(ovs) == (Ct(commit=True, zone=5, mark=3),)
    nat = W.encode_actions((Ct(commit=True, nat="src=10.0.0.1"),))[24:]
    mark = ovs[24:]

    def ct(nested: bytes, flags: int = 1) -> bytes:
        return struct.pack("!HHIHHIHB3xH", 0xFFFF, 24 + len(nested), 0x2320, 35, flags, 0, 0, 255, 0) + nested

    assert W.decode_actions(ct(nat + mark)) == (Ct(commit=True, nat="src=10.0.0.1", mark=3),)
    for nested, flags in [
        (mark + nat, 1),                                   # set_field before nat: not what Ct encodes
        (mark + mark, 1),                                  # two set_fields
        (mark, 0),                                         # mark without commit (OVS rejects it)
        (mark[:4] + struct.pack("!I", 0x00010004) + mark[8:], 1),  # a nested set_field of another field (reg0)
        (mark[:12] + b"\0\0\0\1", 1),                     # junk in the padding
        (struct.pack("!HHIII", 25, 16, 0x0001D708, 3, 0xFF), 1),  # masked ct_mark (value/mask)
    ]:
        (got,) = W.decode_actions(ct(nested, flags))
        assert isinstance(got, RawAction), nested.hex()


@pytest.mark.parametrize("action,wire", [
    (SetField("nd_options_type", 2), "00190010" "10000401" "02" "00000000000000"),
    (SetField("nd_reserved", 0x60000000), "00190010" "10000204" "60000000" "00000000"),
])
def test_ericsson_nd_fields_encode_like_ovs(action, wire):
    # OVS's ERICOXM_OF_ICMPV6_ND_RESERVED (1) / _ND_OPTIONS_TYPE (2), class 0x1000 (OVS >= 2.11);
    # the fabric's ND responder sends these and reads them back (tests/integration/test_fabric.py)
    assert W.encode_actions((action,)).hex() == wire
    assert W.decode_actions(bytes.fromhex(wire)) == (action,)


def test_reg_move_uses_nxm_header_like_ovs():
    # OVS echoes NXAST_REG_MOVE with NXM_OF_ETH_SRC / NXM_OF_ETH_DST (class 0).
    b = W.encode_actions((RegMove.whole("eth_src", "eth_dst"),))
    assert b.hex() == "ffff00180000232000060030000000000000040600000206"


def test_encode_actions_list_and_raw():
    acts = (Output(1), DecTtl(), RawAction(bytes.fromhex("ffff0010000023200009000000000000")))
    b = W.encode_actions(acts)
    assert b == b"".join(W.encode_actions((a,)) for a in acts)
    assert W.decode_actions(b) == acts   # unknown NX subtype stays raw


# ---------------------------------------------------------------------------
# Instructions and flow-mods vs os-ken
# ---------------------------------------------------------------------------

def to_osk(a):
    """The os-ken action equivalent to one of ours (built field by field)."""
    if isinstance(a, Output):
        return P.OFPActionOutput(a.port, a.max_len)
    if isinstance(a, GroupAction):
        return P.OFPActionGroup(a.group_id)
    if isinstance(a, SetField):
        if a.field == "in_port":
            return P.OFPActionSetField(in_port_nxm=a.value - 0xFFFF0000 if a.value >= 0xFFFFFF00 else a.value)
        return P.OFPActionSetField(**{a.field: a.value})
    if isinstance(a, DecTtl):
        return P.OFPActionDecNwTtl()
    if isinstance(a, PushVlan):
        return P.OFPActionPushVlan(a.ethertype)
    if isinstance(a, PopVlan):
        return P.OFPActionPopVlan()
    if isinstance(a, RegMove):
        return P.NXActionRegMove(src_field=osk_move_name(a.src), dst_field=osk_move_name(a.dst), n_bits=a.n_bits,
                                 src_ofs=a.src_ofs, dst_ofs=a.dst_ofs)
    if isinstance(a, Resubmit):
        port = a.in_port - 0xFFFF0000 if a.in_port >= 0xFFFFFF00 else a.in_port
        return P.NXActionResubmitTable(in_port=port, table_id=a.table)
    if isinstance(a, Ct):
        nested = []
        if a.nat is not None:
            n = a.nat_spec
            kw = {}
            if n.ip_min is not None:
                fam = "ipv6" if n.ipv6 else "ipv4"
                kw[f"range_{fam}_min"] = n.ip_min
                if n.ip_max is not None:
                    kw[f"range_{fam}_max"] = n.ip_max
            if n.port_min is not None:
                kw["range_proto_min"] = n.port_min
            if n.port_max is not None:
                kw["range_proto_max"] = n.port_max
            nested.append(P.NXActionNAT(flags=n.flags, **kw))
        if a.mark is not None:
            nested.append(P.OFPActionSetField(ct_mark=a.mark))
        return P.NXActionCT(flags=int(a.commit), zone_src="", zone_ofs_nbits=a.zone,
                            recirc_table=255 if a.table is None else a.table, alg=0, actions=nested)
    raise AssertionError(a)


def test_to_osk_agrees_with_hand_written_cases():
    for _id, ours, theirs in ACTION_CASES:
        assert osk_action(to_osk(ours)) == osk_action(theirs), _id


def osk_instructions(flow: Flow):
    inst = []
    if flow.meter is not None:
        inst.append(P.OFPInstructionMeter(flow.meter))
    if flow.actions:
        inst.append(P.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [to_osk(a) for a in flow.actions]))
    if flow.write_metadata is not None:
        inst.append(P.OFPInstructionWriteMetadata(*flow.write_metadata))
    if flow.goto is not None:
        inst.append(P.OFPInstructionGotoTable(flow.goto))
    return inst


M_IP = Match(in_port=1, eth_type=0x0800, ipv4_dst="10.0.0.1")
FLOW_CASES = [
    ("output", Flow(0, 100, M_IP, (Output(3),), cookie=0x7F00000000000001)),
    ("drop", Flow(0, 0, Match())),
    ("goto-only", Flow(0, 10, Match(in_port=2), goto=80)),
    ("all-instructions", Flow(1, 200, M_IP, (SetField("eth_dst", "02:00:00:00:00:09"), DecTtl(), Output(3),
                                             GroupAction(7)),
                              goto=80, meter=1, write_metadata=(0x10, 0xF0), cookie=5, idle_timeout=10,
                              hard_timeout=20, flags=OFPFF_SEND_FLOW_REM | OFPFF_CHECK_OVERLAP)),
    ("ct", Flow(2, 5, Match(eth_type=0x0800, ct_state=(0, 0x20)), (Ct(zone=5, table=3),))),
    ("nicira-match", Flow(3, 7, Match(eth_type=0x0800, nw_ttl=1, reg0=1), (Output.controller(),))),
]
FLOW_IDS = [c[0] for c in FLOW_CASES]


@pytest.mark.parametrize("flow", [c[1] for c in FLOW_CASES], ids=FLOW_IDS)
def test_encode_instructions_equals_os_ken(flow):
    mod = P.OFPFlowMod(DP, instructions=osk_instructions(flow), match=P.OFPMatch())
    _fixed, _m, osk_inst = split_flow_mod(osk_msg(mod, 1))
    assert W.encode_instructions(flow) == osk_inst


@pytest.mark.parametrize("command", [W.ADD, W.MODIFY, W.MODIFY_STRICT, W.DELETE, W.DELETE_STRICT])
@pytest.mark.parametrize("flow", [c[1] for c in FLOW_CASES], ids=FLOW_IDS)
def test_flow_mod_equals_os_ken(flow, command):
    kw = dict(out_port=5, out_group=9, cookie_mask=0xFF) if command in (W.DELETE, W.DELETE_STRICT) else {}
    mine = W.flow_mod(flow, command, 0x1234, **kw)
    mod = P.OFPFlowMod(
        DP, cookie=flow.cookie, cookie_mask=kw.get("cookie_mask", 0), table_id=flow.table, command=command,
        idle_timeout=flow.idle_timeout, hard_timeout=flow.hard_timeout, priority=flow.priority,
        buffer_id=ofp.OFP_NO_BUFFER, out_port=kw.get("out_port", ofp.OFPP_ANY),
        out_group=kw.get("out_group", ofp.OFPG_ANY), flags=flow.flags,
        match=P.OFPMatch(**dict(flow.match.items())),
        instructions=[] if command >= W.DELETE else osk_instructions(flow))
    osk = osk_msg(mod, 0x1234)
    assert len(mine) == len(osk)
    a, b = split_flow_mod(mine), split_flow_mod(osk)
    assert a[0] == b[0]                          # header + fixed part identical
    assert a[1] == W.canonical_match(b[1])       # match: compared after canonicalising os-ken's
    assert a[2] == b[2]                          # instructions identical


def test_flow_mod_overrides_and_errors():
    f = FLOW_CASES[0][1]
    b = W.flow_mod(f, W.MODIFY, 1, flags=OFPFF_RESET_COUNTS, cookie=9, cookie_mask=0xF, table=0xFF)
    assert struct.unpack_from("!QQBB", b, 8) == (9, 0xF, 0xFF, W.MODIFY)
    assert struct.unpack_from("!H", b, 44)[0] == OFPFF_RESET_COUNTS
    with pytest.raises(ValueError):
        W.flow_mod(f, 7, 1)
    assert W.flow_mods([f, f], W.ADD, 10) == [W.flow_mod(f, W.ADD, 10), W.flow_mod(f, W.ADD, 11)]


def test_flow_encoding_cached_and_replace_invalidates():
    f = FLOW_CASES[3][1]
    assert W.encode_instructions(f) is W.encode_instructions(f)
    g = f.replace(goto=90)
    assert W.encode_instructions(g) != W.encode_instructions(f)
    assert W.flow_identity(g) == W.flow_identity(f)


def test_delete_by_cookie_equals_os_ken():
    mine = W.delete_by_cookie(0x0102000000000000, 0xFFFF000000000000, 77)
    # priority 0 (os-ken's default is 0x8000; a non-strict delete ignores it)
    osk = osk_msg(P.OFPFlowMod(DP, cookie=0x0102000000000000, cookie_mask=0xFFFF000000000000, table_id=0xFF,
                               command=ofp.OFPFC_DELETE, priority=0, buffer_id=ofp.OFP_NO_BUFFER,
                               out_port=ofp.OFPP_ANY,
                               out_group=ofp.OFPG_ANY, match=P.OFPMatch()), 77)
    assert mine == osk
    assert W.delete_by_cookie(1, 1, 77, table=3)[25] == 3


@pytest.mark.parametrize("flow", [c[1] for c in FLOW_CASES], ids=FLOW_IDS)
def test_delete_strict_by_identity(flow):
    # From identity bytes alone (no decode): same bytes as a DELETE_STRICT of the flow
    # with cookie 0 / no flags, which os-ken agrees with (test_flow_mod_equals_os_ken).
    want = W.flow_mod(flow.replace(cookie=0, flags=0, idle_timeout=0, hard_timeout=0), W.DELETE_STRICT, 8)
    assert W.delete_strict(W.flow_identity(flow), 8) == want
    st = W.parse_flow_stats(flow_stats_entry(flow))[0]
    assert W.delete_strict(st.identity, 8) == want


def test_delete_flows_equals_os_ken():
    m = Match(in_port=1)
    osk = osk_msg(P.OFPFlowMod(DP, table_id=0xFF, command=ofp.OFPFC_DELETE, priority=0, buffer_id=ofp.OFP_NO_BUFFER,
                               out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=P.OFPMatch(in_port=1)), 3)
    assert W.delete_flows(3, m) == osk


# ---------------------------------------------------------------------------
# Groups, meters, barrier, bundles, multipart requests vs os-ken
# ---------------------------------------------------------------------------

GROUP_CASES = [
    Group(7, "select", (Bucket((Output(1),)), Bucket((Output(2),), weight=5))),
    Group(8, "all", (Bucket((Output(1),)), Bucket((SetField("eth_dst", "02:00:00:00:00:09"), Output(2))))),
    Group(9, "indirect", (Bucket((DecTtl(), Output(3))),)),
    Group(10, "ff", (Bucket((Output(1),), watch_port=1), Bucket((Output(2),), watch_group=9))),
    Group(11, "all", ()),
]


def osk_group(group: Group, command: int):
    buckets = [] if command == ofp.OFPGC_DELETE else [
        P.OFPBucket(weight=b.weight, watch_port=b.watch_port, watch_group=b.watch_group,
                    actions=[to_osk(a) for a in b.actions]) for b in group.buckets]
    return P.OFPGroupMod(DP, command=command, type_=group.type_id, group_id=group.group_id, buckets=buckets)


@pytest.mark.parametrize("command", [W.OFPGC_ADD, W.OFPGC_MODIFY, W.OFPGC_DELETE])
@pytest.mark.parametrize("group", GROUP_CASES, ids=lambda g: f"{g.type}-{g.group_id}")
def test_group_mod_equals_os_ken(group, command):
    assert W.group_mod(group, command, 42) == osk_msg(osk_group(group, command), 42)


def test_group_mod_rejects_flow_delete_constant():
    with pytest.raises(ValueError, match="OFPGC"):
        W.group_mod(GROUP_CASES[0], W.DELETE, 1)
    assert W.delete_all_groups(5) == osk_msg(P.OFPGroupMod(DP, command=ofp.OFPGC_DELETE, type_=0,
                                                          group_id=ofp.OFPG_ALL), 5)


METER_CASES = [
    Meter(1, "pktps", (MeterBand(100),)),
    Meter(2, "kbps", (MeterBand(1000, 100), MeterBand(5000, 10))),
    Meter(3, "kbps", (MeterBand(1000),), stats=False),
]


@pytest.mark.parametrize("command", [W.OFPMC_ADD, W.OFPMC_MODIFY, W.OFPMC_DELETE])
@pytest.mark.parametrize("meter", METER_CASES, ids=lambda m: f"m{m.meter_id}")
def test_meter_mod_equals_os_ken(meter, command):
    if command == W.OFPMC_DELETE:
        osk = P.OFPMeterMod(DP, command=command, flags=0, meter_id=meter.meter_id, bands=[])
    else:
        osk = P.OFPMeterMod(DP, command=command, flags=meter.flags, meter_id=meter.meter_id,
                            bands=[P.OFPMeterBandDrop(rate=b.rate, burst_size=b.burst_size) for b in meter.bands])
    assert W.meter_mod(meter, command, 43) == osk_msg(osk, 43)


def test_meter_delete_all():
    assert W.delete_all_meters(5) == osk_msg(P.OFPMeterMod(DP, command=ofp.OFPMC_DELETE, flags=0,
                                                          meter_id=ofp.OFPM_ALL, bands=[]), 5)
    with pytest.raises(ValueError):
        W.meter_mod(METER_CASES[0], W.DELETE, 1)


def test_barrier_equals_os_ken():
    assert W.barrier_request(99) == osk_msg(P.OFPBarrierRequest(DP), 99)


@pytest.mark.parametrize("ctrl", [W.ONF_BCT_OPEN_REQUEST, W.ONF_BCT_CLOSE_REQUEST, W.ONF_BCT_COMMIT_REQUEST,
                                  W.ONF_BCT_DISCARD_REQUEST])
@pytest.mark.parametrize("flags", [0, W.ONF_BF_ATOMIC, W.ONF_BF_ATOMIC | W.ONF_BF_ORDERED])
def test_bundle_ctrl_equals_os_ken(ctrl, flags):
    assert W.bundle_ctrl(7, ctrl, flags, 11) == osk_msg(P.ONFBundleCtrlMsg(DP, 7, ctrl, flags, []), 11)


@pytest.mark.parametrize("flow", [c[1] for c in FLOW_CASES], ids=FLOW_IDS)
def test_bundle_add_equals_os_ken(flow):
    inner = W.flow_mod(flow, W.ADD, 0)      # inner xid 0: bundle_add rewrites it to the outer xid
    mine = W.bundle_add(7, W.ONF_BF_ATOMIC, inner, 0xABCD)
    osk_inner = P.OFPFlowMod(DP, cookie=flow.cookie, table_id=flow.table, command=ofp.OFPFC_ADD,
                             idle_timeout=flow.idle_timeout, hard_timeout=flow.hard_timeout,
                             priority=flow.priority, buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
                             out_group=ofp.OFPG_ANY, flags=flow.flags,
                             match=P.OFPMatch(**dict(flow.match.items())), instructions=osk_instructions(flow))
    osk = osk_msg(P.ONFBundleAddMsg(DP, 7, ofp.ONF_BF_ATOMIC, osk_inner, []), 0xABCD)
    assert struct.unpack_from("!I", mine, 24 + 4)[0] == 0xABCD          # inner xid == outer xid
    assert mine[:24] == osk[:24]
    a, b = split_flow_mod(mine[24:]), split_flow_mod(osk[24:])
    assert a[0] == b[0] and a[2] == b[2]
    assert a[1] == W.canonical_match(b[1])  # match compared after canonicalising os-ken's order


def test_multipart_requests_equal_os_ken():
    assert W.flow_stats_request(5) == osk_msg(
        P.OFPFlowStatsRequest(DP, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0, P.OFPMatch()), 5)
    assert W.flow_stats_request(5, table=3, cookie=0x100, cookie_mask=0xF00, match=Match(in_port=1)) == osk_msg(
        P.OFPFlowStatsRequest(DP, 0, 3, ofp.OFPP_ANY, ofp.OFPG_ANY, 0x100, 0xF00, P.OFPMatch(in_port=1)), 5)
    assert W.group_desc_request(6) == osk_msg(P.OFPGroupDescStatsRequest(DP, 0), 6)
    assert W.meter_config_request(7) == osk_msg(P.OFPMeterConfigStatsRequest(DP, 0, ofp.OFPM_ALL), 7)
    assert W.meter_config_request(7, 3) == osk_msg(P.OFPMeterConfigStatsRequest(DP, 0, 3), 7)


# ---------------------------------------------------------------------------
# Decoding: replies built here, checked against os-ken's parser, then decoded
# ---------------------------------------------------------------------------

def mp_reply(mp_type: int, body: bytes, xid: int = 1, flags: int = 0) -> bytes:
    return struct.pack("!BBHIHH4x", 4, W.OFPT_MULTIPART_REPLY, 16 + len(body), xid, mp_type, flags) + body


def flow_stats_entry(flow: Flow, match_bytes: bytes | None = None, *, pkts=1, nbytes=64, dsec=3, dnsec=4,
                     flags=None) -> bytes:
    mb = W.encode_match(flow.match) if match_bytes is None else match_bytes
    inst = W.encode_instructions(flow)
    return struct.pack("!HBxIIHHHH4xQQQ", 48 + len(mb) + len(inst), flow.table, dsec, dnsec, flow.priority,
                       flow.idle_timeout, flow.hard_timeout, flow.flags if flags is None else flags, flow.cookie,
                       pkts, nbytes) + mb + inst


def osk_parse(msg: bytes):
    version, typ, length, xid = struct.unpack_from("!BBHI", msg)
    return ofproto_parser.msg(DP, version, typ, length, xid, msg)


ALL_FLOWS = [c[1] for c in FLOW_CASES] + list(OFCTL_SAMPLE)


def test_flow_stats_reply_parses_like_os_ken_and_round_trips():
    flows = ALL_FLOWS
    body = b"".join(flow_stats_entry(f, pkts=i, nbytes=10 * i) for i, f in enumerate(flows))
    msg = mp_reply(W.OFPMP_FLOW, body, flags=W.OFPMPF_REPLY_MORE)
    mp_type, mp_flags, mp_body = W.parse_multipart_reply(msg)
    assert (mp_type, mp_flags) == (W.OFPMP_FLOW, W.OFPMPF_REPLY_MORE)
    stats = W.parse_flow_stats(mp_body)
    osk = osk_parse(msg).body
    assert len(stats) == len(osk) == len(flows)
    for st, o, f in zip(stats, osk, flows):
        assert (st.table, st.priority, st.cookie, st.idle_timeout, st.hard_timeout, st.flags, st.packet_count,
                st.byte_count, st.duration_sec, st.duration_nsec) == \
            (o.table_id, o.priority, o.cookie, o.idle_timeout, o.hard_timeout, o.flags, o.packet_count,
             o.byte_count, o.duration_sec, o.duration_nsec)
        assert st.identity == W.flow_identity(f)
        assert st.body == W.flow_body(f)
        assert st.to_flow() == f
        assert st.match == f.match
        assert W.decode_instructions(st.instructions)["actions"] == f.actions


def test_flow_stats_match_key_canonicalises_switch_order_and_masks():
    f = Flow(0, 9, Match(in_port=3, eth_type=0x0800, ipv4_dst="10.0.0.0/24", tcp_dst=80, ip_proto=6, reg1=5,
                         ct_state=(0x21, 0x21), nw_ttl=5), (Output(1),))
    # os-ken's order (NXM first) stands in for "whatever order the switch uses".
    theirs = osk_match(in_port=3, eth_type=0x0800, ipv4_dst=("10.0.0.0", "255.255.255.0"), tcp_dst=80,
                       ip_proto=6, reg1=5, ct_state=(0x21, 0x21), nw_ttl=5)
    assert theirs != W.encode_match(f.match)
    # a redundant all-ones mask, a zero mask and value bits outside the mask
    extra = (struct.pack("!I", (1 << 16) | (2 << 9) | 0x100 | 8) + b"\x00\x00\x00\x07" + b"\xff" * 4   # reg2 7/ff..
             + struct.pack("!I", (1 << 16) | (3 << 9) | 0x100 | 8) + b"\x00\x00\x00\x07" + b"\x00" * 4)  # reg3 */0
    tl = theirs[4:struct.unpack_from("!H", theirs, 2)[0]] + extra
    n = 4 + len(tl)
    theirs2 = struct.pack("!HH", 1, n) + tl + b"\0" * (-n % 8)
    g = Flow(0, 9, f.match.replace(reg2=7), (Output(1),))
    st = W.parse_flow_stats(flow_stats_entry(f, theirs2))[0]
    assert st.identity == W.flow_identity(g)
    assert st.match == g.match


def test_flow_body_ignores_flags_ovs_does_not_keep():
    f = Flow(0, 1, Match(), flags=OFPFF_SEND_FLOW_REM | OFPFF_CHECK_OVERLAP | OFPFF_RESET_COUNTS)
    st = W.parse_flow_stats(flow_stats_entry(f, flags=OFPFF_SEND_FLOW_REM))[0]
    assert st.body == W.flow_body(f)
    g = f.replace(flags=OFPFF_NO_BYT_COUNTS)
    assert st.body != W.flow_body(g)


def test_group_desc_reply_round_trip():
    body = b"".join(struct.pack("!HBxI", 8 + len(W.encode_buckets(g)), g.type_id, g.group_id) + W.encode_buckets(g)
                    for g in GROUP_CASES)
    msg = mp_reply(W.OFPMP_GROUP_DESC, body)
    stats = W.parse_group_desc(W.parse_multipart_reply(msg)[2])
    osk = osk_parse(msg).body
    for st, o, g in zip(stats, osk, GROUP_CASES, strict=True):
        assert (st.group_id, st.type, len(o.buckets)) == (o.group_id, o.type, len(g.buckets))
        assert st.key == W.group_key(g)
        assert st.to_group() == g


def test_meter_config_reply_round_trip():
    body = b"".join(struct.pack("!HHI", 8 + len(W.encode_bands(m)), m.flags, m.meter_id) + W.encode_bands(m)
                    for m in METER_CASES)
    msg = mp_reply(W.OFPMP_METER_CONFIG, body)
    stats = W.parse_meter_config(W.parse_multipart_reply(msg)[2])
    osk = osk_parse(msg).body
    for st, o, m in zip(stats, osk, METER_CASES, strict=True):
        assert (st.meter_id, st.flags) == (o.meter_id, o.flags)
        assert [(b.rate, b.burst_size) for b in o.bands] == [(b.rate, b.burst_size) for b in m.bands]
        assert st.key == W.meter_key(m)
        assert st.to_meter() == m


def test_meter_key_tolerates_ovs_burst_echo():
    # OVS's userspace datapath echoes burst_size=rate for bands sent with 0.
    m = Meter(1, "pktps", (MeterBand(100),))
    echoed = W.MeterStat(1, m.flags, struct.pack("!HHII4x", 1, 16, 100, 100))
    assert echoed.key == W.meter_key(m)
    assert echoed.to_meter() == m
    assert W.MeterStat(1, m.flags, struct.pack("!HHII4x", 1, 16, 200, 100)).key != W.meter_key(m)


def test_header_split_and_error():
    a, b = W.barrier_request(1), W.flow_mod(FLOW_CASES[0][1], W.ADD, 2)
    msgs, rest = W.split_messages(a + b + b[:10])
    assert msgs == [a, b] and rest == b[:10]
    assert W.parse_header(b) == (4, W.OFPT_FLOW_MOD, len(b), 2)
    err = struct.pack("!BBHIHH", 4, W.OFPT_ERROR, 12 + 8, 9, 4, 6) + a
    assert W.parse_error(err) == (4, 6, a)
    with pytest.raises(W.DecodeError):
        W.parse_header(b"\x04\x00")
    with pytest.raises(W.DecodeError):
        W.split_messages(b"\x04\x00\x00\x04\x00\x00\x00\x00")
    with pytest.raises(W.DecodeError):
        W.parse_multipart_reply(a)


def test_decode_instructions_all_kinds():
    f = FLOW_CASES[3][1]
    d = W.decode_instructions(W.encode_instructions(f))
    assert d == {"meter": 1, "actions": f.actions, "clear_actions": False, "write_actions": None,
                 "write_metadata": (0x10, 0xF0), "goto": 80, "unknown": []}
    wa = struct.pack("!HH4x", W.OFPIT_WRITE_ACTIONS, 24) + W.encode_actions((Output(1),))
    ca = struct.pack("!HH4x", W.OFPIT_CLEAR_ACTIONS, 8)
    d = W.decode_instructions(ca + wa)
    assert d["clear_actions"] and d["write_actions"] == (Output(1),)
    st = W.FlowStat(0, 1, 0, 0, 0, 0, 0, 0, 0, 0, W.encode_match(Match()), ca)
    with pytest.raises(W.DecodeError):
        st.to_flow()


def test_ct_state_exact_from_other_switch_canonicalised():
    # OVS reports ct_state=0x22 as 0x22/0xff; a switch sending it unmasked
    # must give the same key.
    unmasked = osk_match(ct_state=0x22)
    assert W.canonical_match(unmasked) == W.encode_match(Match(ct_state=0x22))
    assert W.decode_match(unmasked) == Match(ct_state=(0x22, 0xFF))


def test_set_field_in_port_is_nxm_16bit():
    b = W.encode_actions((SetField("in_port", OFPP_LOCAL),))
    assert b.hex() == "0019001000000002fffe000000000000"
    assert W.decode_actions(b) == (SetField("in_port", OFPP_LOCAL),)


def test_decode_match_rejects_unsupported_fields():
    m = osk_match(pkt_mark=5)     # NXM_NX_PKT_MARK is not in the model
    with pytest.raises(W.DecodeError, match="unsupported"):
        W.decode_match(m)
    assert W.canonical_match(m) == m   # but it still has a canonical key


# ---------------------------------------------------------------------------
# Fuzzing: malformed input raises DecodeError, never anything else, never hangs
# ---------------------------------------------------------------------------

def _valid_bodies() -> dict[str, bytes]:
    flows = ALL_FLOWS
    return {
        "flow": b"".join(flow_stats_entry(f) for f in flows),
        "group": b"".join(struct.pack("!HBxI", 8 + len(W.encode_buckets(g)), g.type_id, g.group_id)
                          + W.encode_buckets(g) for g in GROUP_CASES),
        "meter": b"".join(struct.pack("!HHI", 8 + len(W.encode_bands(m)), m.flags, m.meter_id)
                          + W.encode_bands(m) for m in METER_CASES),
        "match": W.encode_match(OFCTL_SAMPLE[12].match),
        "inst": W.encode_instructions(OFCTL_SAMPLE[14]) + W.encode_instructions(OFCTL_SAMPLE[8]),
    }


def _exercise(kind: str, data: bytes) -> None:
    """Run every decoder that applies to ``data``; only DecodeError may escape."""
    try:
        if kind == "flow":
            for st in W.parse_flow_stats(data):
                st.identity, st.body
                try:
                    st.to_flow()
                except W.DecodeError:
                    pass
        elif kind == "group":
            for st in W.parse_group_desc(data):
                st.key
                try:
                    st.to_group()
                except W.DecodeError:
                    pass
        elif kind == "meter":
            for st in W.parse_meter_config(data):
                st.key
                try:
                    st.to_meter()
                except W.DecodeError:
                    pass
        elif kind == "match":
            W.canonical_match(data)
            W.decode_match(data)
        elif kind == "inst":
            W.decode_instructions(data)
            W.decode_actions(data)
            W.decode_buckets(data)
        elif kind == "msg":
            W.split_messages(data)
            W.parse_header(data)
            mp_type, _f, body = W.parse_multipart_reply(data)
            _exercise({W.OFPMP_FLOW: "flow", W.OFPMP_GROUP_DESC: "group",
                       W.OFPMP_METER_CONFIG: "meter"}.get(mp_type, "flow"), bytes(body))
    except W.DecodeError:
        pass


def test_fuzz_decoders_only_raise_decode_error():
    rng = random.Random(1234)
    bodies = _valid_bodies()
    bodies["msg"] = mp_reply(W.OFPMP_FLOW, bodies["flow"])
    start = time.process_time()
    n = 0
    for kind, good in bodies.items():
        _exercise(kind, good)
        # every truncation
        for cut in range(len(good)):
            _exercise(kind, good[:cut])
            n += 1
        # random byte flips, inserted/removed bytes and random garbage
        for _ in range(1500):
            b = bytearray(good)
            for _k in range(rng.randint(1, 4)):
                op = rng.random()
                pos = rng.randrange(len(b)) if b else 0
                if op < 0.4 and b:
                    b[pos] = rng.randrange(256)
                elif op < 0.6 and b:   # zero or saturate a run (lengths, rates, masks)
                    ln = rng.randint(1, 8)
                    b[pos:pos + ln] = (b"\0" if rng.random() < 0.5 else b"\xff") * ln
                elif op < 0.8:
                    b[pos:pos] = bytes([rng.randrange(256)])
                elif b:
                    del b[pos]
            _exercise(kind, bytes(b))
            _exercise(kind, bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
            n += 2
    for _ in range(500):   # lengths pointing past the end / zero lengths
        for kind in ("flow", "group", "meter", "msg"):
            _exercise(kind, struct.pack("!H", rng.choice([0, 1, 7, 8, 16, 56, 0xFFFF])) + bytes(rng.randrange(80)))
            n += 1
    assert time.process_time() - start < 60, "decoders too slow on garbage"
    assert n > 10000


def test_decode_error_is_value_error():
    assert issubclass(W.DecodeError, ValueError)


# ---------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------

def test_encode_100k_distinct_flow_mods_under_one_second(capsys):
    import ipaddress

    n = 100_000
    out = Output(2)
    flows = [Flow(table=0, priority=100,
                  match=Match(eth_type=0x0800, ipv4_dst=str(ipaddress.IPv4Address(0x0A000000 + i)), in_port=1),
                  actions=(out,), cookie=0x7F00000000000000 | i) for i in range(n)]
    t0 = time.process_time()
    msgs = [W.flow_mod(f, W.ADD, i) for i, f in enumerate(flows)]
    cpu = time.process_time() - t0
    t0 = time.process_time()
    again = [W.flow_mod(f, W.ADD, i) for i, f in enumerate(flows)]
    cpu_cached = time.process_time() - t0
    t0 = time.process_time()
    desired = {W.flow_identity(f): W.flow_body(f) for f in flows}
    cpu_keys = time.process_time() - t0
    body = b"".join(flow_stats_entry(f) for f in flows)
    t0 = time.process_time()
    stats = W.parse_flow_stats(body)
    cpu_parse = time.process_time() - t0
    assert all(desired[s.identity] == s.body for s in stats)
    assert msgs == again and len(set(msgs)) == n
    with capsys.disabled():
        print(f"\n[ofwire] encode {n} distinct flow-mods: {cpu:.3f}s CPU ({cpu / n * 1e6:.2f} us/flow); "
              f"cached re-encode {cpu_cached:.3f}s; identity/body keys {cpu_keys:.3f}s; "
              f"parse {n} flow stats {cpu_parse:.3f}s")
    assert cpu < 1.0


# ---------------------------------------------------------------------------
# Open vSwitch as oracle (skipped without ovs-ofctl)
# ---------------------------------------------------------------------------

needs_ofctl = pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="ovs-ofctl not installed")


def ofctl_capture(tmp_path, args: list[str], timeout: float = 30.0) -> list[bytes]:
    """Run ``ovs-ofctl -O OpenFlow13 --no-names <args>`` against a fake switch
    (``SW`` in args is replaced by its unix socket) and return every message
    ovs-ofctl sent.  The fake switch answers hello, echo, barrier and bundle
    control requests."""
    path = str(tmp_path / f"sw{time.monotonic_ns()}.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(timeout)
    got: list[bytes] = []

    def serve():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        conn.settimeout(timeout)
        buf = b""
        conn.sendall(struct.pack("!BBHI", 4, W.OFPT_HELLO, 8, 0))
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                msgs, buf = W.split_messages(buf)
                for m in msgs:
                    _v, typ, length, xid = W.parse_header(m)
                    got.append(m)
                    if typ == W.OFPT_BARRIER_REQUEST:
                        conn.sendall(struct.pack("!BBHI", 4, W.OFPT_BARRIER_REPLY, 8, xid))
                    elif typ == W.OFPT_ECHO_REQUEST:
                        conn.sendall(struct.pack("!BBHI", 4, W.OFPT_ECHO_REPLY, length, xid) + m[8:])
                    elif typ == W.OFPT_EXPERIMENTER and struct.unpack_from("!II", m, 8) == (
                            W.ONF_EXPERIMENTER_ID, W.ONF_ET_BUNDLE_CONTROL):
                        bid, ctype, flags = struct.unpack_from("!IHH", m, 16)
                        conn.sendall(W.bundle_ctrl(bid, ctype + 1, flags, xid))
        except OSError:
            pass
        finally:
            conn.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        cmd = ["ovs-ofctl", "-O", "OpenFlow13", "--no-names"] + [a.replace("SW", "unix:" + path) for a in args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
    finally:
        th.join(timeout)
        srv.close()
        if os.path.exists(path):
            os.unlink(path)
    return got[1:]   # drop ovs-ofctl's hello


@needs_ofctl
def test_flow_bytes_equal_what_ovs_sends_for_str_flow(tmp_path):
    flows = ALL_FLOWS
    fn = tmp_path / "flows.txt"
    fn.write_text("".join(f"{f}\n" for f in flows))
    sent = [m for m in ofctl_capture(tmp_path, ["add-flows", "SW", str(fn)]) if m[1] == W.OFPT_FLOW_MOD]
    assert len(sent) == len(flows)
    for f, theirs in zip(flows, sent):
        mine = W.flow_mod(f, W.ADD, W.parse_header(theirs)[3])
        a, b = split_flow_mod(mine), split_flow_mod(theirs)
        assert a[0] == b[0], str(f)                       # same header/fixed part (incl. cookie, flags)
        # OVS's own match order differs; its canonical form must equal ours.
        assert W.canonical_match(b[1]) == a[1], str(f)
        # Instructions are byte-identical to what OVS sends (and echoes).
        assert a[2] == b[2], str(f)


@needs_ofctl
def test_group_bytes_equal_what_ovs_sends(tmp_path):
    fn = tmp_path / "groups.txt"
    fn.write_text("".join(f"{g}\n" for g in GROUP_CASES))
    sent = [m for m in ofctl_capture(tmp_path, ["add-groups", "SW", str(fn)]) if m[1] == W.OFPT_GROUP_MOD]
    assert len(sent) == len(GROUP_CASES)
    for g, theirs in zip(GROUP_CASES, sent):
        assert W.group_mod(g, W.OFPGC_ADD, W.parse_header(theirs)[3]) == theirs, str(g)


@needs_ofctl
@pytest.mark.parametrize("meter", METER_CASES, ids=lambda m: f"m{m.meter_id}")
def test_meter_bytes_equal_what_ovs_sends(tmp_path, meter):
    sent = [m for m in ofctl_capture(tmp_path, ["add-meter", "SW", str(meter)]) if m[1] == W.OFPT_METER_MOD]
    assert len(sent) == 1
    assert W.meter_mod(meter, W.OFPMC_ADD, W.parse_header(sent[0])[3]) == sent[0]


@needs_ofctl
def test_bundle_bytes_equal_what_ovs_sends(tmp_path):
    f = FLOW_CASES[0][1]
    sent = ofctl_capture(tmp_path, ["--bundle", "add-flow", "SW", str(f)])
    ctrl = [m for m in sent if m[1] == W.OFPT_EXPERIMENTER and struct.unpack_from("!I", m, 12)[0] == 2300]
    adds = [m for m in sent if m[1] == W.OFPT_EXPERIMENTER and struct.unpack_from("!I", m, 12)[0] == 2301]
    assert len(ctrl) == 2 and len(adds) == 1
    for m in ctrl:
        bid, ctype, flags = struct.unpack_from("!IHH", m, 16)
        assert W.bundle_ctrl(bid, ctype, flags, W.parse_header(m)[3]) == m
    bid, flags = struct.unpack_from("!I2xH", adds[0], 16)
    mine = W.bundle_add(bid, flags, W.flow_mod(f, W.ADD, 0), W.parse_header(adds[0])[3])
    assert mine[:24] == adds[0][:24]
    a, b = split_flow_mod(mine[24:]), split_flow_mod(adds[0][24:])
    assert a[0] == b[0] and a[2] == b[2] and a[1] == W.canonical_match(b[1])


@needs_ofctl
def test_ovs_ofctl_decodes_every_message_we_build():
    msgs = [W.flow_mod(f, cmd, 1) for f in ALL_FLOWS for cmd in (W.ADD, W.DELETE_STRICT)]
    msgs += [W.group_mod(g, W.OFPGC_ADD, 1) for g in GROUP_CASES]
    msgs += [W.meter_mod(m, W.OFPMC_ADD, 1) for m in METER_CASES]
    msgs += [W.delete_by_cookie(1, 1, 1), W.barrier_request(1), W.flow_stats_request(1), W.group_desc_request(1),
             W.meter_config_request(1), W.bundle_ctrl(1, W.ONF_BCT_OPEN_REQUEST, W.ONF_BF_ATOMIC, 1),
             W.bundle_add(1, W.ONF_BF_ATOMIC, W.flow_mod(ALL_FLOWS[0], W.ADD, 0), 1)]
    for m in msgs:
        r = subprocess.run(["ovs-ofctl", "ofp-print", m.hex()], capture_output=True, text=True, timeout=30)
        bad = "***" in r.stdout or "error" in r.stdout.lower() or "WARN" in r.stderr or r.returncode
        assert not bad, f"{m.hex()}\n{r.stdout}\n{r.stderr}"
