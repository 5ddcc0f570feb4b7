"""Proxy clusters: the flows that spread a VIP's connections over its proxies and pin them (pure).

On every switch, per cluster and address family (``lb`` is table 50):

* **client edge** (ingress, 5100): a declared client on its own port, MAC and
  address, sending to the VIP's service ports through its gateway, is routed
  (TTL, router MAC) into ``lb``;
* ``lb`` **tracks** it in the switch's own conntrack zone (5100), then a
  connection already **pinned** (its ``ct_mark`` names a proxy that is still
  in the cluster, draining or not: 5300) goes to that proxy, anything else is
  **picked** by the cluster's select group (5200), whose buckets (one per
  active proxy) name the proxy in ``reg6`` and look ``lb`` up again, where the
  connection is committed with that proxy's mark and sent to it (5400).  A change of
  membership therefore never moves an established connection; one pinned to a
  proxy that has left is picked again (and reset by its new proxy, quickly);
* **carry** (5500): a VIP packet already addressed to a proxy's MAC goes to
  that proxy's port, or to the fabric's next-hop group towards its switch, on
  every switch on the way (transit switches route VIP traffic by proxy MAC:
  the VIP itself names no host);
* **replies** (ingress, 5100 at a proxy's port; 5050 at fabric ports): a proxy
  may send from the VIP's service ports (it holds the VIP); replies pass the
  switch's conntrack zone too, so the client's edge sees both directions of
  every connection it pinned, then the fabric routes them (5100 in ``lb``).

Marks, zones and group ids are derived from names, so they are the same after
a restart and on every controller instance.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import FORWARD, INGRESS, LB
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.topology import Host, Topology
from ryu_apps.functions.fabric.flows import UNTAGGED, next_hop_group_ids
from ryu_apps.functions.proxy_cluster.intent import ClusterSpec, ProxyClusterIntent
from ryu_apps.openflow.ofdata import Bucket, Ct, DecTtl, Flow, Group, GroupAction, Match, Output, Resubmit, SetField

APP = "proxy_cluster"
ETH_IP, ETH_IPV6, TCP = 0x0800, 0x86DD, 6

K_CLIENT = 1   # a client's VIP traffic into lb
K_REPLY = 2    # a proxy's replies from the VIP; tracking and routing of replies
K_TRACK = 3    # conntrack of new VIP traffic
K_PIN = 4      # pinned connections of one proxy
K_PICK = 5     # unpinned connections into the cluster's select group
K_CARRY = 6    # VIP packets addressed to one proxy's MAC, towards it
KIND_NAMES = {K_CLIENT: "client", K_REPLY: "reply", K_TRACK: "track", K_PIN: "pin", K_PICK: "pick",
              K_CARRY: "carry"}

P_FABRIC_REPLY, P_EDGE, P_PICK, P_PIN, P_COMMIT, P_CARRY = 5050, 5100, 5200, 5300, 5400, 5500
#: the register a select bucket writes its proxy's mark to
PICKED = "reg6"
ZONE_BASE = 0x5000
#: ct_state bits: trk = 0x20
TRK = 0x20


def _crc24(name: str) -> int:
    return zlib.crc32(name.encode()) & 0xFFFFFF


def proxy_mark(cluster: str, host: str) -> int:
    """The ct_mark of connections pinned to ``host``: app id in the top byte, never 0."""
    return (cookies.app_id(APP) << 24) | (_crc24(f"{cluster}/{host}") or 1)


def group_id(cluster: str) -> int:
    """The select group of ``cluster`` (the same id on every switch)."""
    return (cookies.app_id(APP) << 24) | _crc24(cluster)


def zone_of(topology: Topology, switch: str) -> int:
    """The switch's own conntrack zone: bridges of one userspace datapath share one connection table."""
    return ZONE_BASE + sorted(topology.switches).index(switch)


def _families(c: ClusterSpec) -> Iterable[tuple[int, str, str, str]]:
    """(eth_type, VIP, dst field, src field) per address family the cluster serves."""
    if c.vip4:
        yield ETH_IP, c.vip4, "ipv4_dst", "ipv4_src"
    if c.vip6:
        yield ETH_IPV6, c.vip6, "ipv6_dst", "ipv6_src"


def _own_addr(h: Host, eth_type: int) -> str | None:
    iface = h.ipv4 if eth_type == ETH_IP else h.ipv6
    return None if iface is None else str(iface.ip)


def compute_cluster(topology: Topology, c: ClusterSpec, router_mac: str,
                    dead: frozenset[str] = frozenset()) -> dict[str, SwitchState]:
    """Every switch's flows and group for cluster ``c``; ``dead``: proxies out of the hash (health)."""
    hosts = topology.hosts
    gids = next_hop_group_ids(topology)
    proxies = [hosts[p.host] for p in c.proxies]
    active = [hosts[p.host] for p in c.proxies if p.state == "active" and p.host not in dead]
    pinned = [h for h in proxies if h.name not in dead]
    others = {s.host for pool in c.pools for s in pool.servers} | {p.host for p in c.proxies}
    if c.capture is not None:
        others.add(c.capture.host)
    clients = [h for h in hosts.values() if h.name not in others]
    out: dict[str, SwitchState] = {}
    for sw in topology.switches:
        st = SwitchState()
        zone = zone_of(topology, sw)

        def toward(h: Host) -> tuple:
            return (Output(h.port),) if h.switch == sw else (GroupAction(gids[h.switch]),)

        ck = {k: cookies.make(APP, k, c.name) for k in KIND_NAMES}
        for k, name in KIND_NAMES.items():
            st.label(ck[k], f"proxy cluster {c.name}: {name}")
        # a bucket only names its proxy (reg6) and looks lb up again, where the commit happens:
        # a ct(commit) inside a select bucket did not keep its mark in OVS 3.1's userspace datapath
        buckets = tuple(Bucket(actions=(SetField(PICKED, proxy_mark(c.name, h.name)), Resubmit(LB)))
                        for h in active)
        st.add_group(Group(group_id(c.name), "select", buckets))
        fabric_ports = [p.port for p in topology.switch_ports(sw) if p.kind != "host"]
        for eth_type, vip, dst, src in _families(c):
            for port in c.ports:
                # -- ingress: clients into lb, proxies' replies from the VIP
                for h in clients:
                    addr = _own_addr(h, eth_type)
                    if h.switch != sw or addr is None:
                        continue
                    st.add_flow(Flow(table=INGRESS, priority=P_EDGE, cookie=ck[K_CLIENT], goto=LB,
                                     match=Match(in_port=h.port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_dst=router_mac,
                                                 eth_type=eth_type, **{src: addr, dst: vip},
                                                 ip_proto=TCP, tcp_dst=port),
                                     actions=(DecTtl(), SetField("eth_src", router_mac))))
                for h in proxies:
                    if h.switch != sw:
                        continue
                    st.add_flow(Flow(table=INGRESS, priority=P_EDGE, cookie=ck[K_REPLY], goto=LB,
                                     match=Match(in_port=h.port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_dst=router_mac,
                                                 eth_type=eth_type, **{src: vip}, ip_proto=TCP, tcp_src=port),
                                     actions=(DecTtl(), SetField("eth_src", router_mac))))
                for fp in fabric_ports:
                    st.add_flow(Flow(table=INGRESS, priority=P_FABRIC_REPLY, cookie=ck[K_REPLY], goto=LB,
                                     match=Match(in_port=fp, eth_type=eth_type, **{src: vip}, ip_proto=TCP,
                                                 tcp_src=port)))
                    st.add_flow(Flow(table=INGRESS, priority=P_FABRIC_REPLY, cookie=ck[K_CARRY], goto=LB,
                                     match=Match(in_port=fp, eth_type=eth_type, **{dst: vip}, ip_proto=TCP,
                                                 tcp_dst=port)))
            # -- lb: replies tracked, then routed by the fabric
            st.add_flow(Flow(table=LB, priority=P_EDGE, cookie=ck[K_REPLY],
                             match=Match(eth_type=eth_type, **{src: vip}, ip_proto=TCP, ct_state=(0, TRK)),
                             actions=(Ct(zone=zone, table=LB),)))
            st.add_flow(Flow(table=LB, priority=P_EDGE, cookie=ck[K_REPLY], goto=FORWARD,
                             match=Match(eth_type=eth_type, **{src: vip}, ip_proto=TCP, ct_state=(TRK, TRK))))
            # -- lb: a client's packet, not yet addressed to a proxy
            new = dict(eth_type=eth_type, eth_dst=router_mac, ip_proto=TCP, **{dst: vip})
            st.add_flow(Flow(table=LB, priority=P_EDGE, cookie=ck[K_TRACK],
                             match=Match(**new, ct_state=(0, TRK)), actions=(Ct(zone=zone, table=LB),)))
            st.add_flow(Flow(table=LB, priority=P_PICK, cookie=ck[K_PICK],
                             match=Match(**new, ct_state=(TRK, TRK)), actions=(GroupAction(group_id(c.name)),)))
            for h in active:
                mark = proxy_mark(c.name, h.name)
                st.add_flow(Flow(table=LB, priority=P_COMMIT, cookie=ck[K_PICK],
                                 match=Match(**new, ct_state=(TRK, TRK), **{PICKED: mark}),
                                 actions=(Ct(commit=True, zone=zone, mark=mark), SetField("eth_dst", h.mac),
                                          *toward(h))))
            for h in pinned:
                st.add_flow(Flow(table=LB, priority=P_PIN, cookie=ck[K_PIN],
                                 match=Match(**new, ct_state=(TRK, TRK), ct_mark=proxy_mark(c.name, h.name)),
                                 actions=(SetField("eth_dst", h.mac), *toward(h))))
            # -- lb: addressed to a proxy: carry it there
            for h in proxies:
                st.add_flow(Flow(table=LB, priority=P_CARRY, cookie=ck[K_CARRY],
                                 match=Match(eth_type=eth_type, eth_dst=h.mac, ip_proto=TCP, **{dst: vip}),
                                 actions=toward(h)))
        out[sw] = st
    return out


def compute_intent(topology: Topology, intent: ProxyClusterIntent, router_mac: str,
                   dead: dict[str, frozenset[str]] | None = None) -> dict[str, SwitchState]:
    """All clusters' state per switch (each cluster is one part of the app; this merges them)."""
    merged = {sw: SwitchState() for sw in topology.switches}
    for c in intent.clusters:
        for sw, st in compute_cluster(topology, c, router_mac, (dead or {}).get(c.name, frozenset())).items():
            for f in st.flows.values():
                merged[sw].add_flow(f)
            for g in st.groups.values():
                merged[sw].add_group(g)
    return merged
