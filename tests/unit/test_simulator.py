"""The switch simulator (ryu_apps/openflow/simulator.py): each feature on small hand-made states,
the fabric's real computed state walked host to host, and the same answers as the OAM model's
own lookup engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.framework import cookies, pipeline
from ryu_apps.framework.app import FabricView
from ryu_apps.framework.state import LayeredState, SwitchState
from ryu_apps.framework.topology import load
from ryu_apps.functions.fabric.flows import nd_meter_id
from ryu_apps.functions.oam_ecmp import model as oam
from ryu_apps.openflow import simulator as sim
from ryu_apps.openflow.ofdata import (
    FIELDS,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    OFPP_TABLE,
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
    RegMove,
    Resubmit,
    SetField,
)
from tests import fakeswitch

TOPO = Path(__file__).resolve().parents[2] / "topologies"
RMAC = FabricIntent().router_mac
IP4 = {"eth_src": "02:00:00:00:00:01", "eth_dst": "02:00:00:00:00:02", "eth_type": 0x0800,
       "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "ip_proto": 17, "udp_src": 1000, "udp_dst": 2000,
       "nw_ttl": 64}


def st(*flows, groups=(), meters=()) -> sim._State:
    return sim.state_of(flows, groups, meters)


def F(table=0, priority=100, match=None, actions=(), **kw) -> Flow:
    return Flow(table=table, priority=priority, match=Match(**(match or {})), actions=tuple(actions), **kw)


def kinds(outs):
    return [o.kind for o in outs]


# --- lookups, drops and the basics -------------------------------------------------------------


def test_highest_priority_wins_and_a_miss_drops_with_its_table():
    s = st(F(0, 100, {"eth_type": 0x0800}, [Output(1)]), F(0, 200, {"eth_type": 0x0800, "ip_proto": 17, "udp_dst": 2000}, [Output(2)]),
           F(0, 300, {"eth_type": 0x0800, "ip_proto": 17, "udp_dst": 9}, [Output(3)]))
    (out,) = sim.run(s, IP4, 5)
    assert (out.kind, out.port, out.table, out.packet["in_port"]) == ("output", 2, 0, 5)
    assert out.flows == [s.flows[(0, 200, Match(eth_type=0x0800, ip_proto=17, udp_dst=2000))]]
    (drop,) = sim.run(s, {"eth_type": 0x86DD}, 5)
    assert (drop.kind, drop.table, drop.reason) == ("drop", 0, "miss")
    (drop,) = sim.run(st(F(0, 1, {}, goto=7), F(7, 1, {"eth_type": 0x0806})), IP4, 5)
    assert (drop.kind, drop.table, drop.reason) == ("drop", 7, "miss")
    (drop,) = sim.run(st(F(0, 1, {}, goto=7), F(7, 1, {})), IP4, 5)
    assert (drop.table, drop.reason) == (7, "actions=drop")


def test_a_field_the_packet_lacks_matches_nothing_but_pipeline_fields_start_at_zero():
    s = st(F(0, 300, {"eth_type": 0x0800, "ip_dscp": 0}, [Output(3)]),
           F(0, 200, {"metadata": 0, "reg3": 0, "tunnel_id": 0, "vlan_vid": 0}, [Output(2)]))
    assert sim.run(s, IP4, 1)[0].port == 2       # no ip_dscp in the packet; metadata, regs, tun_id, no tag are 0
    assert sim.run(s, dict(IP4, ip_dscp=0), 1)[0].port == 3
    assert kinds(sim.run(s, dict(IP4, vlan_vid=0x1005), 1)) == ["drop"]
    assert sim.field_matches(IP4, "reg3", 0, None) and not sim.field_matches(IP4, "ip_dscp", 0, None)
    assert sim.field_matches({"vlan_vid": 0x1005}, "vlan_vid", 0x1000, 0x1000)


def test_values_compare_as_numbers_whatever_their_spelling():
    s = st(F(0, 1, {"eth_type": 0x86DD, "ipv6_dst": "fd00::1:0:0:5", "eth_dst": "0A:00:00:00:00:0B"}, [Output(2)]))
    pkt = {"eth_type": 0x86DD, "ipv6_dst": "fd00:0:0:0:1::5", "eth_dst": "0a:00:00:00:00:0b"}
    assert sim.ports(sim.run(s, pkt, 1)) == [2]
    assert sim.ports(sim.run(s, dict(pkt, ipv6_dst="fd00::1:0:0:6"), 1)) == []


def test_the_state_and_the_packet_are_not_changed():
    s = st(F(0, 1, {}, [SetField("eth_dst", "02:00:00:00:00:09"), Output(2)], write_metadata=(1, 1), goto=1),
           F(1, 1, {"eth_type": 0x0800}, [DecTtl(), Output(3)]))
    before = (dict(s.flows), dict(IP4))
    pkt = dict(IP4)
    outs = sim.run(s, pkt, 1)
    assert [o.port for o in outs] == [2, 3] and outs[1].packet["nw_ttl"] == 63 and outs[1].packet["metadata"] == 1
    assert (dict(s.flows), pkt) == before


# --- metadata, goto, resubmit ------------------------------------------------------------------


def test_write_metadata_with_a_mask_then_goto_matches_it():
    s = st(F(0, 1, {}, write_metadata=(0x50, 0xF0), goto=1),
           F(1, 1, {}, write_metadata=(0x3, 0xF), goto=2),
           F(2, 2, {"metadata": (0x53, 0xFF)}, [Output(7)]),
           F(2, 1, {}, [Output(8)]))
    (out,) = sim.run(s, dict(IP4, metadata=0xA00), 1)
    assert out.port == 7 and out.packet["metadata"] == 0xA53  # bits outside the masks kept
    (out,) = sim.run(st(F(0, 1, {}, [Output(9)], write_metadata=(5, 0xFF))), IP4, 1)
    assert "metadata" not in out.packet  # apply-actions run before write-metadata


def test_goto_carries_the_rewritten_packet_and_the_metadata():
    s = st(F(0, 1, {}, [SetField("reg1", 0x77)], goto=10, write_metadata=(9, 0xFF)),
           F(10, 1, {"reg1": 0x77, "metadata": 9}, [Output(4)]))
    (out,) = sim.run(s, IP4, 1)
    assert out.port == 4 and [f.table for f in out.flows] == [0, 10]


def test_resubmit_changes_persist_and_its_in_port_is_restored():
    s = st(F(0, 1, {"in_port": 1}, [Resubmit(5, in_port=9), SetField("reg2", 2), Output(OFPP_IN_PORT)]),
           F(5, 1, {"in_port": 9}, [SetField("eth_dst", "02:00:00:00:00:55"), SetField("reg0", 1)]))
    (out,) = sim.run(s, IP4, 1)
    assert out.port == 1 and out.packet["in_port"] == 1
    assert out.packet["eth_dst"] == "02:00:00:00:00:55" and out.packet["reg0"] == 1 and out.packet["reg2"] == 2


def test_a_resubmit_loop_ends_with_a_loop_verdict():
    outs = sim.run(st(F(0, 1, {}, [Resubmit(0)])), IP4, 1)
    assert kinds(outs) == ["loop"] and outs[0].table == 0
    outs = sim.run(st(F(0, 1, {}, [Output(2), Resubmit(3)]), F(3, 1, {}, [Resubmit(3)])), IP4, 1)
    assert kinds(outs) == ["output", "loop"]


# --- groups and liveness -----------------------------------------------------------------------


def _groups():
    return [Group(1, "all", (Bucket((SetField("eth_dst", "02:00:00:00:00:0a"), Output(2))), Bucket((Output(3),)))),
            Group(2, "select", (Bucket((Output(11),), watch_port=11), Bucket((Output(12),), watch_port=12),
                                Bucket((Output(13),), weight=0, watch_port=13))),
            Group(3, "ff", (Bucket((Output(21),), watch_port=21), Bucket((Output(22),), watch_port=22))),
            Group(4, "indirect", (Bucket((GroupAction(3),)),)),
            Group(5, "ff", (Bucket((Output(31),), watch_group=3), Bucket((Output(32),), watch_port=32)))]


@pytest.mark.parametrize("gid,down,expect", [
    (1, (), [2, 3]), (1, (2, 3), [2, 3]),          # all: every bucket, liveness ignored (OVS)
    (2, (), [11, 12]), (2, (11,), [12]),           # select: live buckets of non-zero weight
    (3, (), [21]), (3, (21,), [22]), (3, (21, 22), []),
    (4, (21,), [22]),                              # indirect -> ff
    (5, (), [31]), (5, (21, 22), [32]),            # watch_group: live while the watched group has a live bucket
])
def test_group_types_and_port_liveness(gid, down, expect):
    s = st(F(0, 1, {}, [GroupAction(gid)]), groups=_groups())
    outs = sim.run(s, IP4, 1, down=down)
    assert sim.ports(outs) == expect
    assert sim.ports(sim.run(s, IP4, 1, live=lambda p: p not in down)) == expect
    if not expect:
        assert kinds(outs) == ["drop"] and "no live bucket" in outs[0].reason


def test_bucket_changes_stay_in_their_bucket():
    s = st(F(0, 1, {}, [GroupAction(1), Output(4)]), groups=_groups())
    a, b, after = sim.run(s, IP4, 1)
    assert a.packet["eth_dst"] == "02:00:00:00:00:0a" and b.packet["eth_dst"] == IP4["eth_dst"]
    assert after.port == 4 and after.packet["eth_dst"] == IP4["eth_dst"]


def test_select_forks_and_each_outcome_names_its_bucket():
    g = Group(7, "select", (Bucket((Output(2),)), Bucket(()), Bucket((Output(3),))))
    outs = sim.run(st(F(0, 1, {}, [GroupAction(7)]), groups=[g]), IP4, 1)
    assert [(o.kind, o.port, o.choices) for o in outs] == [
        ("output", 2, ((7, 0),)), ("drop", None, ((7, 1),)), ("output", 3, ((7, 2),))]
    assert "bucket 1" in outs[1].reason
    (drop,) = sim.run(st(F(0, 1, {}, [GroupAction(8)])), IP4, 1)
    assert drop.reason == "group 0x8 missing"


def test_forwarding_reads_next_hops_like_the_oam_model():
    s = st(F(90, 1, {}, [GroupAction(2)]), groups=_groups())
    f = sim.forwarding(s, 90, IP4, down={12})
    assert (f.kind, f.group_type) == ("group", "select")
    assert f.hops == (sim.Hop(11, 0, True, 1), sim.Hop(12, 1, False, 1), sim.Hop(13, 2, False, 0))
    assert f.live_ports == (11,)
    assert sim.forwarding(st(F(90, 1, {}, [Output(5)])), 90, IP4).hops == (sim.Hop(5),)
    assert sim.forwarding(s, 91, IP4).kind == "none"
    assert sim.forwarding(st(F(90, 1, {}, [GroupAction(9)])), 90, IP4).kind == "missing_group"


# --- VLANs, tunnels, rewrites --------------------------------------------------------------------


def test_push_and_pop_vlan():
    s = st(F(0, 1, {"vlan_vid": 0}, [PushVlan(), SetField("vlan_vid", 0x1000 | 42)], goto=1),
           F(1, 1, {"vlan_vid": 0x1000 | 42}, [Output(2), PopVlan(), Output(3)]))
    tagged, untagged = sim.run(s, IP4, 1)
    assert tagged.packet["vlan_vid"] == 0x102A and tagged.packet["vlan_pcp"] == 0
    assert untagged.packet["vlan_vid"] == 0 and "vlan_pcp" not in untagged.packet
    # a second tag: OVS pushes VID 0 outside, the old tag is the inner one; pop brings it back
    qinq = st(F(0, 1, {"vlan_vid": 0x1007}, [PushVlan(0x88A8), Output(2), PopVlan(), Output(3)]))
    outer, inner = sim.run(qinq, dict(IP4, vlan_vid=0x1007, vlan_pcp=5), 1)
    assert (outer.packet["vlan_vid"], outer.packet["vlan_inner"]) == (0x1000, ((0x1007, 5),))
    assert (inner.packet["vlan_vid"], inner.packet["vlan_pcp"]) == (0x1007, 5) and "vlan_inner" not in inner.packet


def test_tunnel_fields_set_and_matched_and_spelled_as_given():
    s = st(F(0, 1, {}, [SetField("tunnel_id", 0x99), SetField("tun_ipv4_dst", "192.0.2.9"),
                        SetField("tun_ipv4_src", "192.0.2.1")], goto=1),
           F(1, 1, {"tunnel_id": 0x99, "tun_ipv4_dst": "192.0.2.9", "tun_ipv4_src": "192.0.2.1"}, [Output(5)]))
    (out,) = sim.run(s, dict(IP4, tun_id=0), 1)
    assert out.port == 5 and out.packet["tun_id"] == 0x99 and "tunnel_id" not in out.packet
    assert out.packet["tun_ipv4_dst"] == "192.0.2.9"
    assert sim.ports(sim.run(st(F(0, 1, {"tunnel_id": 7}, [Output(1)])), {"tun_id": 7}, 2)) == [1]
    assert sim.ports(sim.run(st(F(0, 1, {"tun_ipv4_src": "10.9.9.9"}, [Output(1)])), {"tun_src": "10.9.9.9"}, 2)) == [1]
    with pytest.raises(ValueError, match="twice"):
        sim.run(s, {"tun_id": 1, "tunnel_id": 1}, 1)


_PREREQ_MATCHES = [{}, {"eth_type": 0x0800}, {"eth_type": 0x86DD}, {"eth_type": 0x0806},
                   {"eth_type": 0x0800, "ip_proto": 6}, {"eth_type": 0x0800, "ip_proto": 17},
                   {"eth_type": 0x0800, "ip_proto": 1}, {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135},
                   {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 136}, {"vlan_vid": 0x1001}]
_VALUES = {"mac": "0a:0b:0c:0d:0e:0f", "ipv4": "192.0.2.7", "ipv6": "2001:db8::7"}


def _written(name):
    spec = FIELDS[name]
    value = _VALUES.get(spec.kind, min(spec.max_value, 5))
    if name == "vlan_vid":
        value = 0x1000 | 5
    for m in _PREREQ_MATCHES:
        try:
            Flow(table=0, priority=1, match=Match(**m), actions=(SetField(name, value),))
            Match(**{**m, name: value})
        except ValueError:
            continue
        return m, value
    raise AssertionError(f"no prerequisites found for {name}")


@pytest.mark.parametrize("name", [n for n, s in FIELDS.items() if s.writable])
def test_set_field_of_every_writable_field_is_seen_by_the_next_table(name):
    m, value = _written(name)
    s = st(F(0, 1, m, [SetField(name, value)], goto=1), F(1, 2, {**m, name: value}, [Output(OFPP_LOCAL)]),
           F(1, 1, {}, [Output(OFPP_CONTROLLER)]))
    (out,) = sim.run(s, {**m, "nw_ttl": 9}, 3)
    assert (out.kind, out.port) == ("output", OFPP_LOCAL), name
    assert out.packet[name] == value
    (out,) = sim.run(st(F(1, 2, {**m, name: value}, [Output(OFPP_LOCAL)]), F(1, 1, {}, [Output(OFPP_CONTROLLER)])),
                     {**m, "nw_ttl": 9}, 3, table=1)
    assert out.kind == "controller", name  # without the set_field the packet does not match


def test_dec_ttl_and_an_invalid_ttl():
    s = st(F(0, 1, {"eth_type": 0x0800}, [Output(2), DecTtl(), Output(3)]))
    a, b = sim.run(s, IP4, 1)
    assert (a.packet["nw_ttl"], b.packet["nw_ttl"]) == (64, 63)
    out = sim.run(s, dict(IP4, nw_ttl=1), 1)
    # the list stops at dec_ttl (output 2 happened), the datapath punts the packet (reason invalid_ttl)
    assert [(o.kind, o.port, o.reason) for o in out] == [("output", 2, ""), ("controller", None, "invalid_ttl")]
    (punt,) = sim.run(st(F(0, 1, {"eth_type": 0x86DD}, [DecTtl(), Output(3)], goto=1), F(1, 1, {}, [Output(4)])),
                      {"eth_type": 0x86DD, "nw_ttl": 0}, 1)
    assert (punt.kind, punt.reason, punt.packet["nw_ttl"]) == ("controller", "invalid_ttl", 0)  # no goto either
    old = {k: v for k, v in IP4.items() if k != "nw_ttl"} | {"ttl": 7}
    _, out = sim.run(s, old, 1)
    assert out.packet["ttl"] == 6 and "nw_ttl" not in out.packet  # the old spelling comes back


def test_reg_moves_copy_bit_ranges():
    s = st(F(0, 1, {"eth_type": 0x0800}, [RegMove("eth_src", "reg0", 16, src_ofs=8, dst_ofs=4),
                                          RegMove.whole("ipv4_src", "reg1"), RegMove("reg1", "ipv4_dst", 8),
                                          RegMove("eth_src", "eth_dst", 48), Output(2)]))
    (out,) = sim.run(s, dict(IP4, eth_src="02:00:00:00:12:34", reg0=0xF000000F), 1)
    assert out.packet["reg0"] == 0xF000000F & ~(0xFFFF << 4) | (0x0012 << 4)
    assert out.packet["reg1"] == 0x0A000001 and out.packet["ipv4_dst"] == "10.0.0.1"
    assert out.packet["eth_dst"] == "02:00:00:00:12:34"


def test_outputs_to_in_port_controller_table_and_the_in_port_itself():
    s = st(F(0, 1, {"in_port": 1}, [Output(1), Output(OFPP_IN_PORT), Output.controller(128), Output(2)]))
    assert [(o.kind, o.port, o.reason) for o in sim.run(s, IP4, 1)] == [
        ("output", 1, ""), ("controller", None, "max_len=128"), ("output", 2, "")]
    (out,) = sim.run(st(F(0, 1, {"in_port": 1}, [Output(1)])), IP4, 1)
    assert (out.kind, out.reason) == ("drop", "no output")  # OVS skips an output to the input port
    table = st(F(0, 1, {"reg0": 1}, [Output(6)]), F(5, 1, {}, [SetField("reg0", 1), Output(OFPP_TABLE)]))
    assert sim.ports(sim.run(table, IP4, 1, table=5)) == [6]


def test_meters_pass_and_are_recorded():
    s = st(F(0, 1, {}, meter=3, goto=1), F(1, 1, {}, [Output(2)], meter=1), meters=[Meter(1, bands=(MeterBand(1),))])
    (out,) = sim.run(s, IP4, 1)
    assert out.meters == (3, 1) and out.port == 2


def test_ct_sets_conntrack_fields_and_recirculates_a_copy():
    s = st(F(0, 1, {"eth_type": 0x0800}, [Ct(zone=4, table=2), Output(9)]),
           F(2, 1, {"ct_state": (0x21, 0x21), "ct_zone": 4}, [Output(5)]))
    recirc, direct = sim.run(s, IP4, 1)
    assert (recirc.port, recirc.table, direct.port) == (5, 2, 9)
    assert sim.ports(sim.run(s, IP4, 1, ct_state=0x22)) == [9]


def test_ct_commit_with_mark_sets_ct_mark():
    # ct(commit,table=2,zone=4,exec(set_field:0x3->ct_mark)): the recirculated copy sees the mark
    s = st(F(0, 1, {"eth_type": 0x0800}, [Ct(commit=True, zone=4, table=2, mark=3)]),
           F(2, 2, {"ct_mark": 3, "ct_zone": 4}, [Output(5)]),
           F(2, 1, {}, [Output(6)]))
    (out,) = sim.run(s, IP4, 1)
    assert (out.port, out.table, out.packet["ct_mark"]) == (5, 2, 3)
    # a mark of 0 overwrites what the connection had; no mark leaves it alone
    assert sim.ports(sim.run(s, dict(IP4, ct_mark=3), 1)) == [5]
    zero = st(F(0, 1, {"eth_type": 0x0800}, [Ct(commit=True, table=2, mark=0)]),
              F(2, 2, {"ct_mark": 3}, [Output(5)]), F(2, 1, {}, [Output(6)]))
    assert sim.ports(sim.run(zero, dict(IP4, ct_mark=3), 1)) == [6]
    keep = st(F(0, 1, {"eth_type": 0x0800}, [Ct(commit=True, table=2)]),
              F(2, 2, {"ct_mark": 3}, [Output(5)]), F(2, 1, {}, [Output(6)]))
    assert sim.ports(sim.run(keep, IP4, 1)) == [6]
    assert sim.ports(sim.run(keep, dict(IP4, ct_mark=3), 1)) == [5]


def test_states_are_duck_typed():
    flows = [F(0, 1, {}, [Output(2)])]
    plain = SwitchState()
    layered = LayeredState()
    for f in flows:
        plain.add_flow(f)
    layered.replace({("x", "whole"): plain})
    for s in (plain, layered, sim.state_of(flows)):
        assert sim.ports(sim.run(s, IP4, 1)) == [2]


def test_old_fakeswitch_api_is_the_simulator():
    assert fakeswitch.Fabric is sim.Fabric and fakeswitch.lookup is sim.lookup and fakeswitch.Outcome is sim.Outcome
    s = st(F(0, 1, {"eth_type": 0x0800}, [DecTtl(), Output(2)]))
    (out,) = fakeswitch.run(s, {"eth_type": 0x0800, "ttl": 64}, 1)
    assert (out.port, out.packet["ttl"]) == (2, 63)


# --- the fabric's real state -----------------------------------------------------------------


def core(states):
    """The core's own entries on every switch (table-miss drops, the punt meter), as core_state makes them."""
    miss = cookies.make("core", 1, 0)
    out = {}
    for name, s in states.items():
        merged = SwitchState()
        for t in pipeline.PIPELINE:
            merged.add_flow(Flow(table=t.table_id, priority=0, match=Match(), cookie=miss), "core")
        merged.add_meter(Meter(pipeline.PUNT_METER, bands=(MeterBand(200, 50),)))
        merged.merge(s, "fabric")
        out[name] = merged
    return out


def fabric_of(name, down=frozenset()):
    topo = load(TOPO / name)
    states = core(compute_fabric(FabricView(topo, frozenset(down)), FabricIntent()))
    return topo, sim.Fabric(topo, states, down)


def ip_packet(topo, src, dst, v6, routed):
    s, d = topo.hosts[src], topo.hosts[dst]
    l3 = {"eth_type": 0x86DD, "ipv6_src": str(s.ipv6.ip), "ipv6_dst": str(d.ipv6.ip)} if v6 else \
        {"eth_type": 0x0800, "ipv4_src": str(s.ipv4.ip), "ipv4_dst": str(d.ipv4.ip)}
    return {"eth_src": s.mac, "eth_dst": RMAC if routed else d.mac, "vlan_vid": 0, **l3, "ip_proto": 6,
            "tcp_src": 40000, "tcp_dst": 80, "nw_ttl": 64}


@pytest.mark.parametrize("name", ["diamond.yaml", "chain3.yaml"])
@pytest.mark.parametrize("v6", [False, True])
def test_fabric_every_host_pair_host_to_host(name, v6):
    topo, fab = fabric_of(name)
    paths = {}
    for src in topo.hosts:
        for dst in topo.hosts:
            if src == dst:
                continue
            s, d = topo.hosts[src], topo.hosts[dst]
            routed = s.ipv4.network != d.ipv4.network
            ends = fab.trace(src, ip_packet(topo, src, dst, v6, routed))
            assert ends and {e[0] for e in ends} == {f"host:{dst}"}, (src, dst, [str(e[1]) for e in ends])
            for _, out, path in ends:
                assert out.packet["eth_dst"] == d.mac
                assert out.packet["eth_src"] == (RMAC if routed else s.mac)
                assert out.packet["nw_ttl"] == (63 if routed else 64)  # decremented once, at the first hop
                assert out.packet["vlan_vid"] == 0
            paths[(src, dst)] = sorted(tuple(p) for _, _, p in ends)
    if name == "diamond.yaml":
        assert paths[("h1", "h2")] == [("s1", "s2", "s4"), ("s1", "s3", "s4")]  # ECMP: one end per bucket
        assert paths[("h1", "h3")] == [("s1",)]
    else:
        assert paths[("h1", "h3")] == [("s1", "s2", "s3")]


def test_fabric_arp_and_nd_are_answered_at_the_edge():
    topo, fab = fabric_of("diamond.yaml")
    h1 = topo.hosts["h1"]
    arp = {"eth_src": h1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1,
           "arp_spa": str(h1.ipv4.ip), "arp_tpa": str(h1.gateway4), "arp_sha": h1.mac, "arp_tha": "00:00:00:00:00:00"}
    ((where, out, path),) = fab.trace("h1", arp)
    assert (where, path, out.port) == ("host:h1", ["s1"], h1.port)
    assert out.packet == {**arp, "in_port": h1.port, "eth_dst": h1.mac, "eth_src": RMAC, "arp_op": 2,
                               "arp_sha": RMAC, "arp_tha": h1.mac, "arp_spa": str(h1.gateway4),
                               "arp_tpa": str(h1.ipv4.ip)}
    ns = {"eth_src": h1.mac, "eth_dst": "33:33:ff:00:00:fe", "eth_type": 0x86DD, "ipv6_src": str(h1.ipv6.ip),
          "ipv6_dst": "ff02::1:ff00:fe", "ip_proto": 58, "icmpv6_type": 135, "icmpv6_code": 0,
          "ipv6_nd_target": str(h1.gateway6), "ipv6_nd_sll": h1.mac, "nw_ttl": 255}
    ((where, out, _),) = fab.trace("h1", ns)
    assert where == "host:h1" and out.meters == (nd_meter_id(h1.port),)
    assert (out.packet["icmpv6_type"], out.packet["ipv6_src"], out.packet["ipv6_dst"]) == \
        (136, str(h1.gateway6), str(h1.ipv6.ip))
    assert out.packet["nd_options_type"] == 2 and out.packet["ipv6_nd_tll"] == RMAC
    assert [f.table for f in out.flows] == [0, 80, 80]  # the NS flow resubmits to the NA flow


@pytest.mark.parametrize("bad", [{"ipv4_src": "10.2.1.3"}, {"eth_src": "02:00:00:00:02:03"}, {"vlan_vid": 0x1007}])
def test_fabric_spoofed_or_tagged_packets_drop_at_ingress(bad):
    topo, fab = fabric_of("diamond.yaml")
    ((where, out, path),) = fab.trace("h1", {**ip_packet(topo, "h1", "h2", False, True), **bad})
    assert (where, out.table, out.reason, path) == ("drop", 0, "actions=drop", ["s1"])  # the core's table miss


def test_fabric_link_down_liveness_and_wire():
    topo, fab = fabric_of("diamond.yaml")
    states = {n: s.state for n, s in fab.switches.items()}
    cut = sim.Fabric(topo, states, {("s1", 11), ("s2", 11)})  # the datapath sees the port down, before a recompute
    ends = cut.send("h1", ip_packet(topo, "h1", "h2", False, True))
    assert [(e[0], e[2]) for e in ends] == [("host:h2", ["s1", "s3", "s4"])]


def test_tunnels_carry_their_key_and_the_underlay_addresses_nothing_else():
    topo = load(TOPO / "tunnel.yaml")  # s1:100 <-> s2:100, VXLAN key 5001, nodes 192.168.77.1 / .2
    fab = sim.Fabric(topo, {n: st() for n in topo.switches})
    pkt = {**IP4, "metadata": 7, "reg0": 1, "tunnel_id": 99, "vlan_vid": 0x1005}
    assert fab.cross("s1", 100, pkt) == ("s2", 100, {
        **IP4, "vlan_vid": 0x1005, "tunnel_id": 5001, "tun_ipv4_src": "192.168.77.1", "tun_ipv4_dst": "192.168.77.2"})
    assert fab.cross("s1", 1, pkt) is None  # the host port: no link
    assert sim.Fabric(topo, fab.states, {("s1", 100)}).cross("s1", 100, pkt) is None
    # flow-keyed tunnels (cloud_router.yaml): the 24-bit VNI of the tun_id the packet was sent with
    cr = load(TOPO / "cloud_router.yaml")
    crf = sim.Fabric(cr, {n: st() for n in cr.switches})
    assert crf.cross("td1", 101, {**IP4, "tunnel_id": 0x12345678})[:2] == ("fc1", 1)
    assert crf.cross("td1", 101, {**IP4, "tunnel_id": 0x12345678})[2]["tunnel_id"] == 0x345678
    assert crf.cross("ap1", 100, {**IP4, "tunnel_id": 5})[2] == IP4  # a veth between two nodes: no tunnel fields


def test_a_packet_crosses_a_tunnel_matched_by_its_key():
    topo = load(TOPO / "tunnel.yaml")
    h1, h2 = topo.hosts["h1"], topo.hosts["h2"]
    states = {"s1": st(F(0, 1, {"in_port": h1.port}, [SetField("tunnel_id", 77), Output(100)])),
              "s2": st(F(0, 2, {"in_port": 100, "tunnel_id": 5001, "tun_ipv4_src": "192.168.77.1"}, [Output(h2.port)]),
                       F(0, 1, {"in_port": 100}))}
    ((where, out, path),) = sim.Fabric(topo, states).trace("h1", dict(IP4))
    assert (where, path, out.packet["tunnel_id"]) == ("host:h2", ["s1", "s2"], 5001)  # the link's key, not 77


def test_a_loop_across_switches_ends_with_a_verdict():
    topo = load(TOPO / "chain3.yaml")
    bounce = st(F(0, 1, {}, [Output(OFPP_IN_PORT)]))
    first = st(F(0, 2, {"in_port": topo.hosts["h1"].port}, [Output(2)]), F(0, 1, {}, [Output(OFPP_IN_PORT)]))
    states = {n: (bounce if n != "s1" else first) for n in topo.switches}
    ends = sim.Fabric(topo, states).send("h1", dict(IP4))
    assert [e[0] for e in ends] == ["loop"] and len(ends[0][2]) > sim.MAX_HOPS


# --- the OAM model's engine: the same answers ---------------------------------------------------


def _oam_states(topo):
    from ryu_apps.oam_ecmp import TWIN_TABLES, OamIntent, ReadTables, compute_oam

    view = FabricView(topo)
    fab = core(compute_fabric(view, FabricIntent()))
    plan = oam.make_plan({n: s.dpid for n, s in topo.switches.items()}, "fcbb:bb00::/32", {})
    read = {n: ReadTables(tuple(f for f in s.flows.values() if f.table in TWIN_TABLES), dict(s.groups))
            for n, s in fab.items()}
    for n, s in compute_oam(view, plan, oam.leaves_of(topo), read, OamIntent()).items():
        fab[n].merge(s, "oam_ecmp")
    return fab


@pytest.mark.parametrize("name", ["oam_ecmp_leafspine.yaml", "oam_ecmp_fattree.yaml"])
def test_same_routes_and_lookups_as_the_oam_model(name):
    topo = load(TOPO / name)
    states = _oam_states(topo)
    compared = 0
    for sw, s in states.items():
        flows = list(s.flows.values())
        uplinks = [(sw, p.port) for p in topo.switch_ports(sw) if p.kind != "host"]
        zero = {gid: Group(gid, g.type, (Bucket(g.buckets[0].actions, 0, g.buckets[0].watch_port),) + g.buckets[1:])
                for gid, g in s.groups.items() if g.type == "select"}
        for groups in (s.groups, {**s.groups, **zero}):
            for down in (frozenset(), frozenset(uplinks[:1]), frozenset(uplinks[1:3])):
                one = sim.Switch(sim.state_of(flows, groups), down={p for _, p in down})
                for d in oam.leaves_of(topo):
                    for fam, ep in oam.endpoints(topo, d).items():
                        pkt = oam.lookup_packet(ep)
                        want = oam.resolve_route(sw, d, ep.address, pkt, flows, groups, pipeline.FORWARD, down)
                        f = one.forwarding(pipeline.FORWARD, pkt)
                        got = oam.Route(sw, d, ep.address, f.kind, f.flow and f.flow.cookie, f.group_id, f.group_type,
                                        tuple(oam.NextHop(h.port, h.bucket, h.live, h.weight) for h in f.hops))
                        assert got == want, (sw, d, fam, down)
                        compared += 1
        one = sim.Switch(s)
        for table in (0, pipeline.OAM, pipeline.ARP_ND, pipeline.FORWARD):
            compiled = oam.Table(flows, table)
            for h in topo.hosts.values():
                for pkt in ({"eth_type": 0x86DD, "ipv6_dst": str(h.ipv6.ip)},
                            {"eth_type": 0x0800, "ipv4_dst": str(h.ipv4.ip), "in_port": h.port},
                            {"eth_type": 0x86DD, "ipv6_dst": str(h.ipv6.ip), "ip_proto": 17, "udp_src": 3594,
                             "udp_dst": 3594, "nw_ttl": 1, "in_port": 11}):
                    want = oam.lookup(flows, table, pkt)
                    assert one.lookup(table, pkt) is want is compiled.lookup(pkt), (sw, table, pkt)
                    assert sim.lookup(s, table, pkt) is want
                    compared += 1
    assert compared > 500
