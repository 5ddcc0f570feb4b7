"""The switch simulator against ofproto/trace on the cloud router lab (``topologies/cloud_router.yaml``).

Ten switches, nine of them on nodes with their own Open vSwitch, joined by flow-keyed VXLAN and
Geneve tunnels.  Each switch's desired state comes from the running controller (``CloudLab`` of
``test_cloud_router.py`` waits for live tunnels and a synced lab), proven identical to the
switch; then every client's packet to every probe target of the scenario is walked hop by hop
(AP, tunnel device, forwarder, NAC, the service switch) and the simulator's verdict compared with
ofproto/trace's at every switch; which targets a client reaches must be its policy's
(``EXPECTED``).  Also a service's reply back to a client, a packet that is no reply, the access
point's gateway ARP answer, an unknown client's punt and a copied MAC.

Tunnels: the lab's datapath is userspace (netdev), whose traces end a tunnel output in
``tnl_push(tnl_port(..),header(..ipv4(dst=<remote>)..,vxlan|geneve(vni=..)),out_port(..))``
followed by the underlay bridge's output.  The verdict maps it to the OpenFlow tunnel port by its
remote address and compares the VNI with the simulator's ``tunnel_id`` (what ``set_field:..->tun_id``
wrote); the underlay part is not compared (the simulator models the overlay only).  The next
switch's trace starts from the tunnel port with ``tun_id``, ``tun_src``, ``tun_dst`` set as the
simulator's ``Fabric.cross`` delivers them.
"""

from __future__ import annotations

import pytest

from ovs_scripts.scenarios.cloud_router import EXPECTED, TARGETS, CloudLab
from tests.integration import conftest, tracekit
from tests.integration.labtools import get
from tests.integration.test_cloud_router import APP, TOPO, policy_of

pytestmark = pytest.mark.integration
RMAC = "0e:fa:b0:00:00:01"
CLIENTS = ("c1", "c2", "c3", "c4")


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "simtrace-cloud") as factory:
        c = CloudLab(factory(TOPO))
        assert c.wait_ready(), c.rest(f"/v1/{APP}")
        yield c


def probe_packet(h, target: str) -> dict:
    """What ``traffic probe`` sends for ``proto:dst[:port]``, as a simulator packet from ``h``."""
    proto, dst, *port = target.split(":")
    pkt = {"eth_src": h.mac, "eth_dst": RMAC, "vlan_vid": 0, "eth_type": 0x0800, "ipv4_src": str(h.ipv4.ip),
           "ipv4_dst": dst, "nw_ttl": 64}
    if proto == "tcp":
        return {**pkt, "ip_proto": 6, "tcp_src": 40000, "tcp_dst": int(port[0])}
    if proto == "udp":
        return {**pkt, "ip_proto": 17, "udp_src": 40000, "udp_dst": int(port[0])}
    return {**pkt, "ip_proto": 1, "icmpv4_type": 8, "icmpv4_code": 0}


def test_cloud_router_agrees_with_ofproto_trace(cl):
    lab = cl.lab
    H = lab.topology.hosts
    walk = tracekit.Walk(lab, tracekit.desired_states(lab, get), tracekit.Tracer(lab))
    services = {str(h.ipv4.ip): name for name, h in H.items() if h.switch == "svc"}
    for c in CLIENTS:
        reached = set()
        for t in TARGETS:
            ends = tracekit.reached(walk.send_from(f"{c} {t}", c, probe_packet(H[c], t)))
            assert ends <= {f"host:{services[t.split(':')[1]]}"}, (c, t, ends)  # there, or dropped
            reached |= {t} if ends else set()
        assert reached == EXPECTED[policy_of(cl, c)], (c, reached)
    tunnel_hops = walk.hops

    web, c1 = H["web"], H["c1"]
    reply = {"eth_src": web.mac, "eth_dst": RMAC, "vlan_vid": 0, "eth_type": 0x0800, "ipv4_src": str(web.ipv4.ip),
             "ipv4_dst": str(c1.ipv4.ip), "nw_ttl": 64, "ip_proto": 6, "tcp_src": 5001, "tcp_dst": 40000}
    ends = walk.send_from("web's reply to c1 (staff, tcp 5001)", "web", reply)
    assert tracekit.reached(ends) == {"host:c1"}, ends
    assert all(p["eth_dst"] == c1.mac and p["nw_ttl"] == 63 for _, p in ends), ends
    assert walk.send_from("web -> c1, no reply of an allowed rule", "web", {**reply, "tcp_src": 5002}) == []
    arp = {"eth_src": c1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "vlan_vid": 0, "eth_type": 0x0806, "arp_op": 1,
           "arp_spa": str(c1.ipv4.ip), "arp_tpa": "10.60.255.254", "arp_sha": c1.mac, "arp_tha": "00:00:00:00:00:00"}
    ((where, ans),) = walk.send_from("c1 ARP who-has its gateway", "c1", arp)
    assert where == "host:c1" and ans["arp_op"] == 2 and ans["arp_sha"] == RMAC, ans
    unknown = {**probe_packet(H["c4"], TARGETS[0]), "eth_src": "02:00:00:60:00:99", "ipv4_src": "10.60.0.99"}
    assert tracekit.reached(walk.send_from("an unknown client on c4's port", "c4", unknown)) == {"controller:ap3"}
    copied = {**probe_packet(c1, TARGETS[0]), "eth_src": H["c2"].mac, "ipv4_src": str(H["c2"].ipv4.ip)}
    assert tracekit.reached(walk.send_from("c2's MAC on c1's port", "c1", copied)) == {"controller:ap1"}

    assert not walk.skipped, walk.skipped
    print(f"\ncloud router: simulator == ofproto/trace: {walk.figures()} ({tunnel_hops} hops for the "
          f"{len(CLIENTS) * len(TARGETS)} client probes)")
