"""The switch simulator against ofproto/trace on the fenced clone lab (``topologies/fenced_clone.yaml``).

Fences: ``shop-a`` from the file (egress denied), ``shop-b`` (egress allowed to the lab subnet)
and ``wiki-c`` over REST, as ``test_fenced_clone.py`` creates them.  Each switch's desired state
comes from the running controller and is first proven identical to the switch
(``tracekit.desired_states``); then packets are walked hop by hop, the simulator's verdict
(ports, punts, drops, with the rewritten MACs and addresses) compared with ofproto/trace's at
every switch: clone to clone through the parent addresses in both directions (on one switch and
across switches, IPv4 and IPv6), a clone to its own parent address, clone to parent and clone to
an outsider without egress (fenced drops), allowed egress, a spoofed source, and ARP and ND
inside a fence (answered by the switch, punted, or dropped).
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.integration import conftest, tracekit
from tests.integration.labtools import get
from tests.integration.test_fenced_clone import SHOP_B, TOPO, WIKI_C, ensure_fence, wait_synced

pytestmark = pytest.mark.integration
#: clone host -> the parent component it clones (the three fences of the lab)
CLONE_OF = {"aweb": "web", "adb": "db", "bweb": "web", "bdb": "db", "cwfe": "wfe", "cwdb": "wdb"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "simtrace-fenced") as factory:
        lab = factory(TOPO)
        ensure_fence(lab, SHOP_B)
        ensure_fence(lab, WIKI_C)
        wait_synced(lab)
        yield lab


def arp(h, target: str) -> dict:
    return {"eth_src": h.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "vlan_vid": 0, "eth_type": 0x0806, "arp_op": 1,
            "arp_spa": str(h.ipv4.ip), "arp_tpa": target, "arp_sha": h.mac, "arp_tha": "00:00:00:00:00:00"}


def ns(h, target: str, src: str | None = None) -> dict:
    """A neighbour solicitation from ``h`` for ``target``, to its solicited-node group."""
    t = ipaddress.IPv6Address(target)
    group = ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | (int(t) & 0xFFFFFF))
    return {"eth_src": h.mac, "eth_dst": "33:33:" + ":".join(f"{b:02x}" for b in group.packed[-4:]),
            "vlan_vid": 0, "eth_type": 0x86DD, "ipv6_src": src or str(h.ipv6.ip), "ipv6_dst": str(group),
            "ip_proto": 58, "icmpv6_type": 135, "icmpv6_code": 0, "ipv6_nd_target": target,
            "ipv6_nd_sll": h.mac, "nw_ttl": 255}


def udp(h, dst: str, eth_dst: str, sport: int = 40000, dport: int = 7000, **changes) -> dict:
    pkt = {"eth_src": h.mac, "eth_dst": eth_dst, "vlan_vid": 0, "ip_proto": 17, "udp_src": sport, "udp_dst": dport,
           "nw_ttl": 64}
    if ":" in dst:
        pkt.update(eth_type=0x86DD, ipv6_src=str(h.ipv6.ip), ipv6_dst=dst)
    else:
        pkt.update(eth_type=0x0800, ipv4_src=str(h.ipv4.ip), ipv4_dst=dst)
    return {**pkt, **changes}


def test_fenced_clone_agrees_with_ofproto_trace(lab):
    H = lab.topology.hosts
    walk = tracekit.Walk(lab, tracekit.desired_states(lab, get), tracekit.Tracer(lab))

    def resolve(host: str, target: str) -> str:
        """The MAC the switch answers ``host``'s ARP for ``target`` with (compared on the way)."""
        (end,) = walk.send_from(f"{host} ARP who-has {target}", host, arp(H[host], target))
        assert end[0] == f"host:{host}" and end[1]["arp_op"] == 2 and end[1]["arp_spa"] == target, end
        return end[1]["arp_sha"]

    def one_end(what: str, host: str, pkt: dict) -> tuple[str, dict]:
        ends = walk.send_from(what, host, pkt)
        assert len({w for w, _ in ends}) == 1, (what, ends)
        return ends[0]

    # clone <-> clone through the parent addresses, both directions: the peer sees the sender's
    # parent address as the source, its own address as the destination
    for src, peer in [("aweb", "adb"), ("adb", "aweb"),      # shop-a: s1 <-> s3
                      ("bweb", "bdb"), ("bdb", "bweb"),      # shop-b: s2 <-> s1
                      ("cwfe", "cwdb"), ("cwdb", "cwfe")]:   # wiki-c: s3 <-> s1
        mac = resolve(src, str(H[CLONE_OF[peer]].ipv4.ip))
        for fam, (s_field, d_field) in ((4, ("ipv4_src", "ipv4_dst")), (6, ("ipv6_src", "ipv6_dst"))):
            def addr(h, fam=fam):
                return str((H[h].ipv4 if fam == 4 else H[h].ipv6).ip)

            where, got = one_end(f"{src} -> {CLONE_OF[peer]}'s address v{fam}", src,
                                 udp(H[src], addr(CLONE_OF[peer]), mac))
            assert where == f"host:{peer}", (src, peer, fam, where)
            assert (got[s_field], got[d_field]) == (addr(CLONE_OF[src]), addr(peer)), (src, peer, got)
    # a clone to its own parent address: back to itself, translated both ways
    where, got = one_end("aweb -> web's address", "aweb", udp(H["aweb"], "10.0.0.11", resolve("aweb", "10.0.0.11")))
    assert where == "host:aweb" and (got["ipv4_src"], got["ipv4_dst"]) == ("10.0.0.11", "10.0.1.11"), got

    # fenced: clone -> a parent component it has no clone of, clone -> outsider without egress,
    # a spoofed source; the parents themselves untouched
    drops = [("bweb -> app (a parent, no clone of it in shop-b)", "bweb", udp(H["bweb"], "10.0.0.12", H["app"].mac)),
             ("bweb -> app v6", "bweb", udp(H["bweb"], "fd00:fc::12", H["app"].mac)),
             ("bweb ARP who-has app", "bweb", arp(H["bweb"], "10.0.0.12")),
             ("aweb -> ext (shop-a: no egress)", "aweb", udp(H["aweb"], "10.0.9.9", H["ext"].mac)),
             ("aweb -> ext v6", "aweb", udp(H["aweb"], "fd00:fc::9:9", H["ext"].mac)),
             ("aweb spoofs web's address", "aweb", udp(H["aweb"], "10.0.0.13", H["adb"].mac, ipv4_src="10.0.0.11")),
             ("aweb spoofs bweb's MAC", "aweb", udp(H["aweb"], "10.0.0.13", H["adb"].mac, eth_src=H["bweb"].mac)),
             ("aweb NS for ext", "aweb", ns(H["aweb"], "fd00:fc::9:9")),
             ("aweb DAD for its own address", "aweb", ns(H["aweb"], "fd00:fc::1:11", src="::"))]
    for what, host, pkt in drops:
        assert walk.send_from(what, host, pkt) == [], what
    where, got = one_end("web -> db (the parent)", "web", udp(H["web"], "10.0.0.13", H["db"].mac))
    assert where == "host:db" and got["ipv4_src"] == "10.0.0.11", got

    # allowed egress (shop-b): out with the clone's own address; ND inside the fence
    for dst in ("10.0.9.9", "fd00:fc::9:9"):
        where, got = one_end(f"bweb -> ext {dst}", "bweb", udp(H["bweb"], dst, H["ext"].mac))
        assert where == "host:ext" and got.get("ipv4_src", got.get("ipv6_src")) in ("10.0.2.11", "fd00:fc::2:11"), got
    where, got = one_end("bweb NS for ext (allowed prefix: the fabric answers)", "bweb", ns(H["bweb"], "fd00:fc::9:9"))
    assert where == "host:bweb" and got["icmpv6_type"] == 136 and got["ipv6_nd_tll"] == H["ext"].mac, got
    where, _ = one_end("aweb NS for db's address (the controller answers)", "aweb", ns(H["aweb"], "fd00:fc::13"))
    assert where == "controller:s1", where

    assert not walk.skipped, walk.skipped
    print(f"\nfenced clone: simulator == ofproto/trace: {walk.figures()}")
