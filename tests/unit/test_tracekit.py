"""tests/integration/tracekit.py's pure parts: the controller's desired text read back into ofdata
(exactly: every app's computed output survives ``parse(str(x)) == x``), and ofproto/trace
datapath actions read as the simulator's verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.framework.app import FabricView
from ryu_apps.framework.topology import load
from ryu_apps.openflow import simulator
from ryu_apps.functions.cloud_router.flows import compute_cloud
from ryu_apps.functions.cloud_router.intent import CloudRouterIntent
from ryu_apps.functions.cloud_router.model import derive_roles
from ryu_apps.openflow.ofdata import (
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
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
from tests.integration import tracekit as tk

TOPO = Path(__file__).resolve().parents[2] / "topologies"


# --- text -> ofdata ---------------------------------------------------------------------------


def _fabric(name):
    return lambda: compute_fabric(FabricView(load(TOPO / name)), FabricIntent())


def _fences():
    from tests.unit.test_fenced_clone import A, B, C, network

    return network(load(TOPO / "fenced_clone.yaml"), A, B, C)[1]


def _multicast():
    from tests.unit.test_multicast_standby import Net

    n = Net()
    for h in ("h2", "h3", "h4"):
        n.join(h)
    n.source()
    n.reconcile()
    before = n.states()
    n.cut("s2", "s3")
    n.reconcile()  # promoted paths, standby ends
    return {**{f"{k}/before": v for k, v in before.items()}, **n.states()}


def _cloud():
    from tests.unit.test_cloud_router import inputs

    topo = load(TOPO / "cloud_router.yaml")
    intent = CloudRouterIntent.model_validate(topo.apps["cloud_router"])
    return compute_cloud(inputs(topo, intent, derive_roles(topo, intent.tiers), n_extra=5))


def _oam():
    from tests.unit.test_oam_ecmp import states_for

    return states_for(load(TOPO / "oam_ecmp_leafspine.yaml"))[0]


@pytest.mark.parametrize("source", [_fabric("diamond.yaml"), _fabric("oam_ecmp_leafspine.yaml"), _fences, _multicast,
                                    _cloud, _oam], ids=["fabric", "fabric-leafspine", "fenced_clone",
                                                        "multicast_standby", "cloud_router", "oam_ecmp"])
def test_every_apps_computed_state_reads_back_exactly(source):
    n = 0
    for sw, st in source().items():
        back = tk.parse_state(tk.as_doc(st))
        assert back.flows == st.flows, sw
        assert [f.key for f in back.flows.values()] == [f.key for f in sorted(
            st.flows.values(), key=lambda f: (f.table, -f.priority))], sw  # the document's order
        # groups and meters: their cookies are the controller's metadata, never on the switch or in the text
        assert back.groups == {g: Group(x.group_id, x.type, x.buckets) for g, x in st.groups.items()}, sw
        assert back.meters == {i: Meter(x.meter_id, x.unit, x.bands, x.burst, x.stats) for i, x in st.meters.items()}
        n += len(st.flows)
    assert n


@pytest.mark.parametrize("flow", [
    Flow(table=0, priority=5, match=Match(), actions=()),
    Flow(table=0, priority=7, match=Match(in_port=OFPP_LOCAL, eth_type=0x0800, ipv4_dst="10.0.0.0/8",
                                          ip_proto=6, tcp_dst=(0x1770, 0xFFFC)),
         actions=(Output(OFPP_IN_PORT), Output(OFPP_CONTROLLER, 128), Output(3)), cookie=0x10203,
         idle_timeout=5, hard_timeout=9, flags=1 | 4),
    Flow(table=10, priority=9, match=Match(metadata=(0x1, 0x3), vlan_vid=0x1005, eth_type=0x86DD,
                                           ipv6_src="fd00::/64"),
         actions=(PopVlan(), PushVlan(0x88A8), SetField("vlan_vid", 0x1007), SetField("ipv6_dst", "fd00::2"),
                  DecTtl(), GroupAction(7)), meter=3, write_metadata=(0x10, 0xF0), goto=20),
    Flow(table=0, priority=9, match=Match(eth_type=0x0800, ct_state=(0x21, 0x3F), reg3=(0x4, 0xF)),
         actions=(Ct(commit=True, zone=5, table=30, nat="src=10.0.0.1-10.0.0.9:1000-2000,random"),
                  Ct(), Ct(nat=""), Resubmit(40), Resubmit(90, in_port=2), RegMove("reg0", "reg1", 4, 2, 8),
                  RegMove.whole("in_port", "reg2"), SetField("tunnel_id", 0x8C30D), RawAction(b"\x00\x01"))),
    Flow(table=0, priority=9, match=Match(eth_type=0x0800),
         actions=(Ct(commit=True, zone=5, mark=3), Ct(commit=True, table=4, zone=5, nat="src=10.0.0.1", mark=0),
                  Ct(commit=True, nat="", mark=0xFFFFFFFF))),
])
def test_hand_made_flows_read_back_exactly(flow):
    assert tk.parse_flow(str(flow)) == flow


def test_groups_and_meters_read_back_exactly():
    for g in (Group(5, "select", (Bucket((Output(1),), 3, 1), Bucket((Output(2),), 0, 2))),
              Group(6, "ff", (Bucket((), watch_port=4), Bucket((PopVlan(), Output(2)), watch_group=5))),
              Group(7, "all", ()), Group(8, "indirect", (Bucket((SetField("eth_dst", "02:00:00:00:00:01"),
                                                                 Output(OFPP_IN_PORT))),))):
        assert tk.parse_group(str(g)) == g
    for m in (Meter(1, "pktps", (MeterBand(200, 50),)), Meter(2, "kbps", (MeterBand(4000),), stats=False),
              Meter(3, "kbps", (MeterBand(100, 10), MeterBand(200, 20)))):
        assert tk.parse_meter(str(m)) == m
    with pytest.raises(ValueError, match="unknown instruction"):
        tk.parse_flow("table=0,priority=1 actions=learn(table=1)")
    with pytest.raises(ValueError, match="unknown field"):
        tk.parse_match("nosuch=1")


# --- datapath actions -> verdicts -------------------------------------------------------------

PORTS = tk.Ports(odp={2: ("s1", 1), 3: ("s1", 12), 4: ("s1", 14), 7: ("s2", 1)},
                 tunnels={(9, "192.168.60.31"): ("s1", 101), (9, "192.168.60.32"): ("s1", 102)}, others={1, 5})
PKT = {"in_port": 1, "eth_src": "02:00:00:00:05:01", "eth_dst": "01:00:5e:01:01:01", "vlan_vid": 0,
       "eth_type": 0x0800, "ipv4_src": "10.5.0.1", "ipv4_dst": "239.1.1.1", "nw_ttl": 64}


def V(kind, port, tunnel=False, **changes):
    return tk.key(kind, port, {**PKT, **changes}, tunnel)


@pytest.mark.parametrize("actions,want", [
    ("drop", set()),
    ("3,4", {V("output", 12), V("output", 14)}),
    ("set(eth(src=0e:fa:b0:00:00:01,dst=02:00:00:00:05:02)),set(ipv4(ttl=63)),4",
     {V("output", 14, eth_src="0e:fa:b0:00:00:01", eth_dst="02:00:00:00:05:02", nw_ttl=63)}),
    ("masked_set(ipv4(src=10.0.0.11/255.255.255.255)),3", {V("output", 12, ipv4_src="10.0.0.11")}),
    # a multicast root: a tree child, then tagged paths (push, out, pop, push ...)
    ("3,push_vlan(vid=1,pcp=0),4,pop_vlan,push_vlan(vid=2,pcp=0),4",
     {V("output", 12), V("output", 14, vlan_vid=0x1001), V("output", 14, vlan_vid=0x1002)}),
    ("clone(set(eth(dst=02:00:00:00:00:09)),3),4", {V("output", 12, eth_dst="02:00:00:00:00:09"), V("output", 14)}),
    ("meter(5),set(eth(dst=0e:0a:01:00:00:0b)),userspace(pid=0,controller(reason=4,dont_send=1,"
     "continuation=0,recirc_id=19,rule_cookie=0x1,controller_id=0,max_len=128)),set(eth(dst=0e:fa:b0:00:00:01)),3",
     {V("controller", None, eth_dst="0e:0a:01:00:00:0b"), V("output", 12, eth_dst="0e:fa:b0:00:00:01")}),
    # a userspace datapath's tunnel output: the OpenFlow port by remote address, the VNI as tunnel_id;
    # what follows it is the underlay bridge's
    ("tnl_push(tnl_port(9),header(size=50,type=4,eth(dst=8e:26:de:0d:a8:46,src=c6:29:e4:1a:07:4c,dl_type=0x0800),"
     "ipv4(src=192.168.60.21,dst=192.168.60.32,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,dst=4789,csum=0x0),"
     "vxlan(flags=0x8000000,vni=0x8c30d)),out_port(1)),5",
     {V("output", 102, True, tunnel_id=0x8C30D, tun_ipv4_src="192.168.60.21", tun_ipv4_dst="192.168.60.32")}),
    ("clone(tnl_push(tnl_port(9),header(size=58,type=5,eth(dst=9e:d0:11:76:42:47,src=06:3b:c3:b6:f6:4e,"
     "dl_type=0x0800),ipv4(src=192.168.60.21,dst=192.168.60.31,proto=17,tos=0,ttl=64,frag=0x4000),"
     "udp(src=0,dst=6081,csum=0x0),geneve(vni=0x5)),out_port(1)),5),3",
     {V("output", 101, True, tunnel_id=5, tun_ipv4_src="192.168.60.21", tun_ipv4_dst="192.168.60.31"),
      V("output", 12)}),
    # a kernel datapath's: set(tunnel(..)) then the tunnel vport, the OpenFlow port by the tunnel's dst
    ("set(tunnel(tun_id=0x7,dst=192.168.60.31,ttl=64,tp_dst=4789,flags(df|key))),9,set(eth(src=02:00:00:00:00:01)),3",
     {V("output", 101, True, tunnel_id=7, tun_ipv4_dst="192.168.60.31"),
      V("output", 12, eth_src="02:00:00:00:00:01", tunnel_id=7)}),
])
def test_datapath_actions_read_as_verdicts(actions, want):
    assert tk.read_datapath("s1", actions, PKT, PORTS) == want


def test_select_groups_are_followed_and_conntrack_is_not():
    seen = []

    def recirc(rid, state):
        seen.append((rid, state["eth_src"]))
        return {V("output", 12, eth_src=state["eth_src"])}

    got = tk.read_datapath("s1", "set(eth(src=0e:fa:b0:00:00:01)),hash(sym_l4(0)),recirc(0x6)", PKT, PORTS,
                           recirc=recirc)
    assert seen == [("0x6", "0e:fa:b0:00:00:01")] and got == {V("output", 12, eth_src="0e:fa:b0:00:00:01")}
    with pytest.raises(tk.Untraceable, match="conntrack"):
        tk.read_datapath("s1", "ct(zone=5),recirc(0x7)", PKT, PORTS)
    with pytest.raises(tk.Untraceable, match="select group"):
        tk.read_datapath("s1", "recirc(0x7)", PKT, PORTS, recirc=recirc)
    with pytest.raises(AssertionError, match="not understood"):
        tk.read_datapath("s1", "trunc(100),3", PKT, PORTS)
    with pytest.raises(AssertionError, match="on no lab switch"):
        tk.read_datapath("s1", "5", PKT, PORTS)
    with pytest.raises(AssertionError):
        tk.read_datapath("s1", "7", PKT, PORTS)  # another switch's port


def test_verdict_keys_and_trace_flows():
    # the same value spelled two ways is one verdict; VLAN: the VID with the present bit, else 0
    assert tk.key("output", 1, {"eth_src": "02:00:00:00:00:0A", "vlan_vid": 0x1005}) == \
        tk.key("output", 1, {"eth_src": 0x02000000000A, "vlan_vid": 0x1005})
    assert tk.key("output", 1, {"tunnel_id": 5}) == ("output", 1)  # a key is compared at tunnel ports only
    assert tk.key("output", 1, {"tunnel_id": 5}, True) == ("output", 1, ("tunnel_id", 5))
    # the simulator's side of a tunnel output: what the far end receives (Fabric.cross)
    one = simulator.Switch(simulator.state_of([Flow(table=0, priority=1, match=Match(),
                                                    actions=(SetField("tunnel_id", 0x1000005), Output(101)))]))
    far = {"tunnel_id": 5, "tun_ipv4_src": "192.168.60.21", "tun_ipv4_dst": "192.168.60.31"}
    got, _ = tk.simulated(one, {"in_port": 1}, {101}, lambda port, pkt: ("fc1", 1, far))
    assert got == {("output", 101, *far.items())}
    text = tk.flow_text({"in_port": 100, "tunnel_id": 0x8C30D, "tun_ipv4_src": "192.168.60.21", "vlan_vid": 0x1003,
                         "vlan_pcp": 2, "eth_type": 0x0800, "ipv4_dst": "10.0.0.1", "metadata": 3})
    assert text == ("in_port=100,metadata=0x3,dl_type=0x0800,vlan_tci=0x5003,nw_dst=10.0.0.1,tun_id=0x8c30d,"
                    "tun_src=192.168.60.21")
    with pytest.raises(tk.Untraceable):
        tk.flow_text({"in_port": 1, "vlan_vid": 0x1003, "vlan_inner": ((0x1004, 0),)})
    assert tk._reparsable("udp,in_port=1,nw_frag=no,tp_src=1,tp_dst=2") == "udp,in_port=1,nw_frag=no,udp_src=1,udp_dst=2"
    assert tk._reparsable("tcp6,in_port=1,tp_src=1") == "tcp6,in_port=1,tp_src=1"


def test_dpif_show_is_read_per_bridge_with_tunnels_by_remote():
    text = """netdev@ovs-netdev: hit:101 missed:32
  z2z0-ntd1-p:
    underlay 1/2: (system)
    z2z0-ntd1-p 65534/1: (tap)
  z2z0-td1:
    z2z0-td1 65534/6: (tap)
    z2z0-td1-1 1/5: (system)
    z2z0-td1-101 101/4: (vxlan: key=flow, remote_ip=192.168.60.31)
    z2z0-td1-102 102/4: (vxlan: key=flow, remote_ip=192.168.60.32)
"""
    p = tk.Ports.parse(text, {"z2z0-td1": "td1"})
    assert p.odp == {6: ("td1", 65534), 5: ("td1", 1)}
    assert p.tunnels == {(4, "192.168.60.31"): ("td1", 101), (4, "192.168.60.32"): ("td1", 102)}
    assert p.others == {1, 2}
