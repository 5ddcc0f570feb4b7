"""The switch simulator against ofproto/trace on the OAM ECMP leaf-spine lab (``topologies/oam_ecmp_leafspine.yaml``).

OAM's model reads the switches with the simulator; this checks that reading against the real
switch.  One verification (``POST /v1/oam/ecmp/verify``, healthy) makes the app install its probe
twins and mirror groups from the tables it read; each switch's desired state then comes from the
running controller, proven identical to the switch, and probes of every ordered leaf pair (IPv4
and IPv6, the hosts' own addresses, the report's hop budget) are walked hop by hop: at every
switch the simulator's verdict must equal ofproto/trace's -- each copy the mirror group forwards
to a spine and each report to the controller with its marker MAC and hop limit.  A probe whose
hop limit is spent, and a data packet of the same pair (the select group, bucket by dp_hash),
are compared too.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ryu_apps.functions.oam_ecmp import model as m
from tests.integration import conftest, tracekit
from tests.integration.labtools import get, wait_synced
from tests.integration.test_oam_ecmp import LEAVES, ROUTER_MAC, TOPO, host_of, verify

pytestmark = pytest.mark.integration
SPINES = ("s1", "s2", "s3")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "simtrace-oam") as factory:
        yield factory(TOPO / "oam_ecmp_leafspine.yaml")


def probe(lab, src: str, dst: str, fam: int, ttl: int, port: int = m.OAM_UDP_PORT) -> dict:
    s, d = host_of(lab, src), host_of(lab, dst)
    pkt = {"eth_src": s.mac, "eth_dst": ROUTER_MAC, "vlan_vid": 0, "ip_proto": 17, "udp_src": port, "udp_dst": port,
           "nw_ttl": ttl}
    if fam == 4:
        return {**pkt, "eth_type": m.ETH_IP, "ipv4_src": str(s.ipv4.ip), "ipv4_dst": str(d.ipv4.ip)}
    return {**pkt, "eth_type": m.ETH_IPV6, "ipv6_src": str(s.ipv6.ip), "ipv6_dst": str(d.ipv6.ip)}


def reports(ends) -> Counter:
    """(switch, report kind, port) of every copy that went to the controller."""
    out = Counter()
    for where, pkt in ends:
        assert where.startswith("controller:"), f"a probe copy ended at {where}"
        mac = bytes.fromhex(pkt["eth_dst"].replace(":", ""))
        assert mac[:2] == bytes(m.MARKER_OUI), pkt["eth_dst"]
        out[(where.removeprefix("controller:"), mac[2], int.from_bytes(mac[3:], "big"))] += 1
    return out


def test_probe_replication_agrees_with_ofproto_trace(lab):
    report = verify(lab, pairs=[["l1", "l2"]])
    assert report["totals"]["ok"] == report["totals"]["pairs"] == 4, m.render_table(report)
    budget = report["hop_budget"]
    assert wait_synced(lab)
    walk = tracekit.Walk(lab, tracekit.desired_states(lab, get), tracekit.Tracer(lab))
    for src in LEAVES:
        for dst in LEAVES:
            if src == dst:
                continue
            for fam in (4, 6):
                got = reports(walk.send_from(f"probe {src}->{dst} v{fam}", host_of(lab, src).name,
                                             probe(lab, src, dst, fam, budget)))
                # the source leaf forwards a copy to every spine (and says so), every spine one to dst,
                # which reports each arrival; nothing reaches a host
                up = {(src, m.FWD, lab.topology.ports[(sw, 1 + LEAVES.index(src))].peer_port): 1 for sw in SPINES}
                assert {k: v for k, v in got.items() if k[0] == src} == up, (src, dst, fam, got)
                assert got[(dst, m.ARRIVE, 0)] == len(SPINES), (src, dst, fam, got)
                assert sum(got.values()) == 3 * len(SPINES), (src, dst, fam, got)
    replication = walk.hops
    # a spent hop limit is reported where it is spent; the pair's own data packets still hash
    got = reports(walk.send_from("probe l1->l2, hop limit 1", host_of(lab, "l1").name, probe(lab, "l1", "l2", 4, 1)))
    assert got == {("l1", m.EXPIRE, 0): 1}, got
    ends = walk.send_from("data l1->l2 (not a probe)", host_of(lab, "l1").name, probe(lab, "l1", "l2", 4, 64, 5002))
    assert tracekit.reached(ends) == {f"host:{host_of(lab, 'l2').name}"}, ends
    assert walk.forks >= 1
    assert not walk.skipped, walk.skipped
    print(f"\noam ecmp: simulator == ofproto/trace: {walk.figures()} ({replication} hops for the "
          f"{len(LEAVES) * (len(LEAVES) - 1) * 2} probes)")
