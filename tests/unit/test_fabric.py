"""Base fabric computation: where packets go, checked on a table simulator."""

from pathlib import Path

import pytest

from ryu_apps.fabric import NEXT_HOPS, Fabric as FabricApp, FabricIntent, compute_fabric, compute_part, \
    ecmp_group_id, next_hop_group_ids
from ryu_apps.framework import pipeline
from ryu_apps.framework.app import FabricView
from ryu_apps.framework.state import ActualState, SwitchState, diff
from ryu_apps.framework.topology import load
from tests.fakeswitch import Fabric, run

TOPO = Path(__file__).resolve().parents[2] / "topologies"
ROUTER_MAC = FabricIntent().router_mac


@pytest.fixture(scope="module")
def diamond():
    return load(TOPO / "diamond.yaml")


def fabric(topo, down=frozenset(), intent=None):
    view = FabricView(topo, frozenset(down))
    states = compute_fabric(view, intent or FabricIntent())
    return Fabric(topo, states, frozenset(down)), states


def ip_pkt(src_host, dst_ip, topo, eth_dst=None, **kw):
    h = topo.hosts[src_host]
    return {"eth_src": h.mac, "eth_dst": eth_dst or ROUTER_MAC, "eth_type": 0x0800,
            "ipv4_src": str(h.ipv4.ip), "ipv4_dst": dst_ip, "ip_proto": 6, "ttl": 64, **kw}


def test_every_flow_fits_the_pipeline(diamond):
    _, states = fabric(diamond)
    for st in states.values():
        for flow in st.flows.values():
            pipeline.check_flow("fabric", flow)


def test_routed_packet_reaches_h2_over_both_ecmp_paths(diamond):
    fab, _ = fabric(diamond)
    ends = fab.send("h1", ip_pkt("h1", "10.2.2.1", diamond))
    assert {e[0] for e in ends} == {"host:h2"}
    assert {tuple(e[2]) for e in ends} == {("s1", "s2", "s4"), ("s1", "s3", "s4")}
    for _, pkt, _ in ends:
        assert pkt["eth_dst"] == diamond.hosts["h2"].mac
        assert pkt["eth_src"] == ROUTER_MAC
        assert pkt["ttl"] == 63  # decremented once, at the first hop


def test_same_subnet_not_rewritten_as_routed(diamond):
    fab, _ = fabric(diamond)
    h3 = diamond.hosts["h3"]
    ends = fab.send("h1", ip_pkt("h1", str(h3.ipv4.ip), diamond, eth_dst=h3.mac))
    assert [e[0] for e in ends] == ["host:h3"]
    assert ends[0][1]["ttl"] == 64 and ends[0][1]["eth_src"] == diamond.hosts["h1"].mac


@pytest.mark.parametrize("field,value", [("ipv4_src", "10.2.1.3"), ("eth_src", "02:00:00:00:02:03")])
def test_spoofed_sources_are_dropped(diamond, field, value):
    fab, _ = fabric(diamond)
    ends = fab.send("h1", ip_pkt("h1", "10.2.2.1", diamond, **{field: value}))
    assert [e[0] for e in ends] == ["drop"]


def test_tagged_frames_from_hosts_are_dropped(diamond):
    fab, _ = fabric(diamond)
    assert [e[0] for e in fab.send("h1", ip_pkt("h1", "10.2.2.1", diamond))] == ["host:h2", "host:h2"]
    tagged = ip_pkt("h1", "10.2.2.1", diamond, vlan_vid=0x1000 | 7)
    assert [e[0] for e in fab.send("h1", tagged)] == ["drop"]


def test_link_down_leaves_one_path(diamond):
    fab, states = fabric(diamond, down={("s1", 11), ("s2", 11)})
    ends = fab.send("h1", ip_pkt("h1", "10.2.2.1", diamond))
    assert [tuple(e[2]) for e in ends] == [("s1", "s3", "s4")]
    towards_s4 = states["s1"].groups[next_hop_group_ids(diamond)["s4"]]
    assert [b.watch_port for b in towards_s4.buckets] == [12]


def test_a_link_change_rewrites_next_hop_groups_never_a_route(diamond):
    """A port event recomputes the next_hops part only, and the switch gets group mods only."""
    _, up = fabric(diamond)
    _, down = fabric(diamond, down={("s1", 11), ("s2", 11)})
    for name in up:
        ch = diff(down[name], ActualState.of(up[name]))
        assert not (ch.flow_adds or ch.flow_mods or ch.flow_deletes), name
    ch = diff(down["s1"], ActualState.of(up["s1"]))
    assert ch.group_mods and not ch.group_adds and not ch.group_deletes
    # and the next_hops part is exactly where the groups live
    part = compute_part(FabricView(diamond, frozenset({("s1", 11), ("s2", 11)})), FabricIntent(), NEXT_HOPS)
    assert {n: st.groups for n, st in part.items()} == {n: st.groups for n, st in down.items()}
    assert not any(st.flows for st in part.values())


def test_only_fabric_ports_dirty_the_next_hops():
    from ryu_apps.framework.view import PortChange, SwitchChange

    topo = load(TOPO / "diamond.yaml")
    app = FabricApp.__new__(FabricApp)  # parts_changed reads only its arguments
    view = FabricView(topo)
    host_port = PortChange("s1", 1, "modify", False, False, False, True)
    trunk = PortChange("s1", 11, "modify", False, False, False, True)
    assert app.parts_changed(view, FabricIntent(), host_port) == set()
    assert app.parts_changed(view, FabricIntent(), trunk) == {NEXT_HOPS}
    assert app.parts_changed(view, FabricIntent(), SwitchChange("s2", "dead")) == {NEXT_HOPS}


def test_an_unreachable_switch_is_an_empty_group_and_comes_back():
    topo = load(TOPO / "diamond.yaml")
    cut = {("s1", 11), ("s2", 11), ("s1", 12), ("s3", 11)}
    fab, states = fabric(topo, down=cut)
    assert states["s1"].groups[next_hop_group_ids(topo)["s4"]].buckets == ()
    assert [e[0] for e in fab.send("h1", ip_pkt("h1", "10.2.2.1", topo))] == ["drop"]
    fab, _ = fabric(topo)
    assert {e[0] for e in fab.send("h1", ip_pkt("h1", "10.2.2.1", topo))} == {"host:h2"}


def test_arp_for_gateway_answered_in_switch(diamond):
    _, states = fabric(diamond)
    h1 = diamond.hosts["h1"]
    arp = {"eth_src": h1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1,
           "arp_spa": "10.2.1.1", "arp_tpa": "10.2.1.254", "arp_sha": h1.mac, "arp_tha": "00:00:00:00:00:00"}
    (out,) = run(states["s1"], arp, h1.port)
    assert out.kind == "output" and out.port == h1.port
    p = out.packet
    assert (p["arp_op"], p["arp_sha"], p["arp_spa"]) == (2, ROUTER_MAC, "10.2.1.254")
    assert (p["arp_tha"], p["arp_tpa"], p["eth_dst"]) == (h1.mac, "10.2.1.1", h1.mac)


def test_arp_for_unknown_address_dropped(diamond):
    _, states = fabric(diamond)
    h1 = diamond.hosts["h1"]
    arp = {"eth_src": h1.mac, "eth_type": 0x0806, "arp_op": 1, "arp_spa": "10.2.1.1", "arp_tpa": "10.2.1.77"}
    assert [o.kind for o in run(states["s1"], arp, h1.port)] == ["drop"]


def test_neighbor_solicitation_is_answered_in_the_switch_metered(diamond):
    _, states = fabric(diamond)
    h1 = diamond.hosts["h1"]
    ns = {"eth_src": h1.mac, "eth_dst": "33:33:ff:00:00:fe", "eth_type": 0x86DD, "ip_proto": 58,
          "icmpv6_type": 135, "ipv6_src": "fd00:2:1::1", "ipv6_dst": "ff02::1:ff00:fe",
          "ipv6_nd_target": "fd00:2:1::fe", "ipv6_nd_sll": h1.mac, "nd_options_type": 1}
    (out,) = run(states["s1"], ns, h1.port)
    assert (out.kind, out.port) == ("output", h1.port)
    na = out.packet
    assert (na["eth_src"], na["eth_dst"]) == (ROUTER_MAC, h1.mac)
    assert (na["ipv6_src"], na["ipv6_dst"]) == ("fd00:2:1::fe", "fd00:2:1::1")
    assert na["icmpv6_type"] == 136 and na["nd_options_type"] == 2 and na["ipv6_nd_tll"] == ROUTER_MAC
    assert na["nd_reserved"] == 0xE0000000  # router, solicited, override: it is the gateway
    assert [f.meter for f in out.flows if f.meter] == [0x100 + h1.port]  # the host's own ND meter
    # another host's address: not a router
    (out,) = run(states["s1"], dict(ns, ipv6_nd_target="fd00:2:2::1"), h1.port)
    assert out.packet["ipv6_nd_tll"] == diamond.hosts["h2"].mac and out.packet["nd_reserved"] == 0x60000000
    # duplicate address detection is never answered; an unknown target neither
    assert [o.kind for o in run(states["s1"], dict(ns, ipv6_src="::"), h1.port)] == ["drop"]
    assert [o.kind for o in run(states["s1"], dict(ns, ipv6_nd_target="fd00:2:1::77"), h1.port)] == ["drop"]


def test_computation_is_deterministic_and_diff_converges(diamond):
    _, a = fabric(diamond)
    _, b = fabric(diamond)
    for name in a:
        assert a[name].flows == b[name].flows and a[name].groups == b[name].groups
        assert diff(b[name], ActualState.of(a[name])).empty


def test_intent_change_and_back_is_a_no_op(diamond):
    _, base = fabric(diamond)
    _, single = fabric(diamond, intent=FabricIntent(ecmp=False))
    ch = diff(single["s1"], ActualState.of(base["s1"]))
    assert ch.group_mods and not (ch.flow_adds or ch.flow_mods or ch.flow_deletes or ch.group_deletes)
    assert [len(g.buckets) for g in single["s1"].groups.values()] == [1]
    assert diff(base["s1"], ActualState.of(base["s1"])).empty


def test_next_hop_group_ids_depend_on_names_only_and_never_collide(diamond):
    ids = next_hop_group_ids(diamond)
    assert set(ids) == set(diamond.switches) and len(set(ids.values())) == len(ids)
    assert all(pipeline.GROUP_IDS["fabric"][0][0] <= g <= pipeline.GROUP_IDS["fabric"][0][1] for g in ids.values())
    from ryu_apps.functions.fabric.flows import _group_ids
    assert _group_ids(("s1", "s4"))["s4"] == ids["s4"]  # another switch set, same id


def test_ecmp_group_ids_stable_and_collision_free():
    taken = {}
    gid = ecmp_group_id((11, 12), taken)
    assert gid == ecmp_group_id((11, 12), {})
    taken[gid] = (11, 12)
    forced = {gid: (1, 2)}
    assert ecmp_group_id((11, 12), forced) != gid


def test_state_conflict_detected():
    from ryu_apps.framework.state import StateConflict
    from ryu_apps.openflow.ofdata import Flow, Match, Output

    st = SwitchState()
    st.add_flow(Flow(table=90, priority=500, match=Match(in_port=1), actions=(Output(2),)))
    with pytest.raises(StateConflict):
        st.add_flow(Flow(table=90, priority=500, match=Match(in_port=1), actions=(Output(3),)))
