"""The switch simulator against ofproto/trace on the multicast standby lab (``topologies/multicast_standby.yaml``).

h2, h3 and h4 join a group with real IGMP (the kernel's, ``traffic mcast-join`` as in
``test_multicast_standby.py``), h1 sends to it until every destination has its standby path.
Each switch's desired state then comes from the running controller, proven identical to the
switch, and h1's multicast packet is walked hop by hop: at every switch the simulator's verdict
(ports, with the VLAN tag of the tagged paths) must equal ofproto/trace's.  The packet meets the
active tree's ``all`` groups, the tagged standby paths (push_vlan at the root, pop_vlan at the
end) and the fast-failover groups at their ends, which discard the standby copy while the active
in-port is live.  Then the active tree's link s2-s3 is cut for real, and once the controller has
promoted the standby paths the comparison is made again with that link down (not live for the
switches' groups, carrying nothing).  IGMP, link-local multicast, an unknown group and a standby
request are compared too (punts and drops).
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration import conftest, tracekit
from tests.integration.labtools import get, wait_for
from tests.integration.test_multicast_standby import PY, TOPO, all_protected, sender, standby_of, wait_synced

pytestmark = pytest.mark.integration
GROUP = "239.1.1.1"
RECEIVERS = ("h2", "h3", "h4")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "simtrace-mcast") as factory:
        yield factory(TOPO)


def data(h, group: str = GROUP) -> dict:
    return {"eth_src": h.mac, "eth_dst": "01:00:5e:01:01:01", "vlan_vid": 0, "eth_type": 0x0800,
            "ipv4_src": str(h.ipv4.ip), "ipv4_dst": group, "ip_proto": 17, "udp_src": 40000, "udp_dst": 5000,
            "nw_ttl": 1}


def deliveries(ends) -> Counter:
    assert not [w for w, _ in ends if not w.startswith("host:")], ends
    for where, pkt in ends:
        assert not pkt["vlan_vid"], f"a tagged copy reached {where}"
    return Counter(w.removeprefix("host:") for w, _ in ends)


def test_multicast_standby_agrees_with_ofproto_trace(lab):
    H = lab.topology.hosts
    holders = []
    for h in RECEIVERS:
        p = lab.popen(h, [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-join", GROUP, "--seconds", "60"])
        assert "joined" in p.stdout.readline(), h
        holders.append(p)
    tx = sender(lab, GROUP, 40, rate=100)
    try:
        s = wait_for(lambda: all_protected(lab, GROUP, ("s3", "s5", "s6")), 15)
        assert s, f"standby paths not complete: {standby_of(lab, GROUP)}"
        assert wait_synced(lab)
        walk = tracekit.Walk(lab, tracekit.desired_states(lab, get), tracekit.Tracer(lab))
        got = deliveries(walk.send_from("h1's packet, active tree", "h1", data(H["h1"])))
        assert got == Counter({h: 1 for h in RECEIVERS}), got
        assert walk.groups["all"] and walk.groups["ff"], walk.groups  # replication, and the standby ends
        # punts and drops at the edge and on a fabric port
        h1 = H["h1"]
        igmp = {k: v for k, v in data(h1, "224.0.0.22").items() if not k.startswith("udp_")} | {"ip_proto": 2}
        for what, pkt, want in [("IGMP from h1", igmp, {"controller:s1"}),
                                ("link-local multicast", data(h1, "224.0.0.5"), set()),
                                ("an unknown group (source discovery)", data(h1, "239.9.9.9"), {"controller:s1"})]:
            assert tracekit.reached(walk.send_from(what, "h1", pkt)) == want, what
        request = {"eth_src": "02:00:00:00:00:99", "eth_dst": "03:00:4d:53:42:59", "vlan_vid": 0, "eth_type": 0x88B5}
        assert tracekit.reached(walk.send("a standby request on s2:11", "s2", 11, request)) == {"controller:s2"}
        print(f"\nmulticast standby, active tree: simulator == ofproto/trace: {walk.figures()}")

        # the active tree's link into s3 cut: once the controller has promoted the standby paths,
        # the same packet through the switches as they are now, with the link down
        lab.link("s2", "s3", "down")
        s = wait_for(lambda: (lambda x: x["s3"]["active_kind"] != "tree" and x["s6"]["active_kind"] != "tree" and x)(
            standby_of(lab, GROUP)), 10)
        assert s and s["s3"]["active"]["devices"] == ["s1", "s4", "s5", "s6", "s3"], standby_of(lab, GROUP)
        assert wait_synced(lab)
        cut = frozenset(end for ln in lab.topology.links if {ln.a, ln.b} == {"s2", "s3"}
                        for end in ((ln.a, ln.a_port), (ln.b, ln.b_port)))
        after = tracekit.Walk(lab, tracekit.desired_states(lab, get), walk.tracer, down=cut)
        got = deliveries(after.send_from("h1's packet, s2-s3 cut", "h1", data(H["h1"])))
        assert got == Counter({h: 1 for h in RECEIVERS}), got
        assert not walk.skipped and not after.skipped, (walk.skipped, after.skipped)
        print(f"multicast standby, after the failover: simulator == ofproto/trace: {after.figures()}")
    finally:
        for p in holders + [tx]:
            p.terminate()
            p.wait(timeout=10)
