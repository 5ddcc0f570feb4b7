"""The switch simulator against the real switch: ``ovs-appctl ofproto/trace`` on a diamond lab
running the fabric.

The desired state is computed in-process from the lab's topology (``compute_fabric`` plus the
core's table-miss drops and punt meter) and first shown to be exactly what every switch holds
(``flowdump.diff``: nothing missing, unexpected or different).  Then packets (every host pair,
IPv4 and IPv6, bridged and routed, ARP and ND for the gateway and for a host, spoofed and tagged
sources, an unknown destination, a TTL that expires) are walked hop by hop: at every switch the
simulator's verdict (output ports and punts with the packet's MACs, VLAN, TTL, addresses, ARP and
ND fields at each; drop) must equal what ofproto/trace's datapath actions do.  A select group shows
up in the trace as ``hash(...),recirc(id)``; the test follows it with one trace per dp_hash value
of the group's hash table, so every bucket the datapath can pick is compared with the simulator's
forks.  The tracing and the walk are ``tests/integration/tracekit.py``'s, which the functions'
cross-checks (``test_simulator_trace_<function>.py``) share.
"""

from __future__ import annotations

import pytest

from ovs_scripts import flowdump
from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.framework import config, cookies, pipeline
from ryu_apps.framework.app import FabricView
from ryu_apps.framework.state import SwitchState
from ryu_apps.openflow.ofdata import Flow, Match, Meter, MeterBand
from tests.integration import conftest, tracekit
from tests.integration.labtools import get

pytestmark = pytest.mark.integration
RMAC = FabricIntent().router_mac


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "simtrace") as factory:
        yield factory("diamond.yaml")


def desired_states(topo) -> dict[str, SwitchState]:
    """What the controller should have put on every switch, computed here."""
    rate = config.get("packet-in-rate")
    miss = cookies.make("core", 1, 0)
    out = {}
    for name, st in compute_fabric(FabricView(topo), FabricIntent()).items():
        merged = SwitchState()
        for t in pipeline.PIPELINE:
            merged.add_flow(Flow(table=t.table_id, priority=0, match=Match(), cookie=miss), "core")
        merged.add_meter(Meter(meter_id=pipeline.PUNT_METER, unit="pktps",
                               bands=(MeterBand(rate=rate, burst_size=rate // 4 or 1),)))
        merged.merge(st, "fabric")
        out[name] = merged
    return out


def as_json(st: SwitchState) -> dict:
    return {"flows": [str(f) for f in st.flows.values()], "groups": [str(g) for g in st.groups.values()],
            "meters": [str(m) for m in st.meters.values()]}


# --- the test ------------------------------------------------------------------------------


def packets(topo):
    """(name, source host, packet) for the cross-check."""
    hosts = topo.hosts
    for s in hosts.values():
        base = {"eth_src": s.mac, "vlan_vid": 0}
        for d in hosts.values():
            if d is s:
                continue
            routed = s.ipv4.network != d.ipv4.network
            for fam in (4, 6):
                l3 = {"eth_type": 0x0800, "ipv4_src": str(s.ipv4.ip), "ipv4_dst": str(d.ipv4.ip)} if fam == 4 else \
                    {"eth_type": 0x86DD, "ipv6_src": str(s.ipv6.ip), "ipv6_dst": str(d.ipv6.ip)}
                pkt = {**base, "eth_dst": RMAC if routed else d.mac, **l3, "ip_proto": 6, "tcp_src": 40001,
                       "tcp_dst": 80, "nw_ttl": 64}
                yield f"{s.name}->{d.name} v{fam}", s.name, pkt, d.name
                if not routed:  # the same subnet, sent to the router MAC: routed all the same
                    yield f"{s.name}->{d.name} v{fam} via router MAC", s.name, {**pkt, "eth_dst": RMAC}, d.name
        for target in (str(s.gateway4), str(next(h for h in hosts.values() if h is not s).ipv4.ip)):
            yield f"{s.name} ARP who-has {target}", s.name, {
                **base, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1, "arp_spa": str(s.ipv4.ip),
                "arp_tpa": target, "arp_sha": s.mac, "arp_tha": "00:00:00:00:00:00"}, s.name
        yield f"{s.name} ND for its gateway", s.name, {
            **base, "eth_dst": "33:33:ff:00:00:fe", "eth_type": 0x86DD, "ipv6_src": str(s.ipv6.ip),
            "ipv6_dst": "ff02::1:ff00:fe", "ip_proto": 58, "icmpv6_type": 135, "icmpv6_code": 0,
            "ipv6_nd_target": str(s.gateway6), "nw_ttl": 255}, s.name
    h1, h2, h3 = hosts["h1"], hosts["h2"], hosts["h3"]
    routed = {"eth_src": h1.mac, "vlan_vid": 0, "eth_dst": RMAC, "eth_type": 0x0800, "ipv4_src": str(h1.ipv4.ip),
              "ipv4_dst": str(h2.ipv4.ip), "ip_proto": 17, "udp_src": 5000, "udp_dst": 53, "nw_ttl": 64}
    yield "spoofed IPv4 source", "h1", {**routed, "ipv4_src": str(h3.ipv4.ip)}, None
    yield "spoofed MAC source", "h1", {**routed, "eth_src": h3.mac}, None
    yield "tagged frame from a host", "h1", {**routed, "vlan_vid": 0x1007}, None
    yield "unknown destination", "h1", {**routed, "ipv4_dst": "10.2.2.99"}, None
    yield "TTL expires at the first hop", "h1", {**routed, "nw_ttl": 1}, None


def test_simulator_agrees_with_ofproto_trace(lab):
    topo = lab.topology
    desired = desired_states(topo)
    for name, st in desired.items():
        bridge, rundir = lab.switch_target(name)
        d = flowdump.diff(flowdump.dump(bridge, rundir), rundir, as_json(st))
        assert d.identical, (name, d.to_json())
        rest = get(lab, f"/v1/switches/{name}/desired")
        assert {k: sorted(v) for k, v in rest.items()} == {k: sorted(v) for k, v in as_json(st).items()}, name

    walk = tracekit.Walk(lab, desired, tracekit.Tracer(lab))
    for what, src, pkt, dst in packets(topo):
        ends = walk.send_from(what, src, pkt, max_hops=2000)
        assert not [w for w, _ in ends if w.startswith("port:")], (what, ends)
        reached = {w.removeprefix("host:") for w, _ in ends if w.startswith("host:")}
        assert reached == ({dst} if dst else set()), (what, reached)
    assert not walk.skipped, walk.skipped
    print(f"simulator == ofproto/trace: {walk.figures()}")
    assert walk.forks >= 4  # the ECMP groups were really compared bucket by bucket
