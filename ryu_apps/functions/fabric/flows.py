"""Desired state of the base fabric (pure): admission, ARP/ND responders, host routes, ECMP.

See :mod:`ryu_apps.fabric` for what it installs.
"""

from __future__ import annotations

import functools
import zlib
from collections import defaultdict

import networkx as nx

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import ARP_ND, FORWARD, INGRESS
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.view import FabricView
from ryu_apps.functions.fabric.intent import FabricIntent
from ryu_apps.openflow.ofdata import (
    OFPP_IN_PORT,
    Bucket,
    DecTtl,
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    MeterBand,
    Output,
    RegMove,
    Resubmit,
    SetField,
)

APP = "fabric"
ETH_IP, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
UNTAGGED = 0x0000  # vlan_vid OFPVID_NONE: hosts are admitted untagged only (a tag would smuggle past the checks)

# cookie kinds
K_HOST_PORT = 1    # admission of one host on its port
K_FABRIC_PORT = 2  # a switch-to-switch port
K_ARP = 3          # ARP responder for one address
K_ND = 4           # ND punt for one address
K_ROUTE = 5        # routes to one host
K_ECMP = 6         # a next-hop group towards one switch (metadata only: groups have no cookie in OF1.3)

# the fabric's parts (FabricApp.parts): what depends on the topology file and the intent only,
# and what depends on the view (which links are up): a port event recomputes the latter alone
HOSTS = "hosts"
NEXT_HOPS = "next_hops"
PARTS = (HOSTS, NEXT_HOPS)

# priorities (fabric band 100..999 in every table)
P_FABRIC_PORT = 200
P_HOST = 500
P_HOST_ROUTED = 510
P_HOST_ND = 520
P_RESPONDER = 500
P_ND_DAD = 510
P_ROUTE = 500

ND_METER_BASE = 0x100  # meter id of host port p: ND_METER_BASE + p


def nd_meter_id(port: int) -> int:
    """The per-host-port meter that polices that host's neighbour solicitations."""
    return ND_METER_BASE + port


def next_hops(graph: nx.MultiGraph, switch: str, dest: str, dist_to_dest: dict[str, int]) -> list[int]:
    """Ports of ``switch`` on a shortest path to ``dest`` (all of them: ECMP)."""
    here = dist_to_dest.get(switch)
    if here is None or switch == dest:
        return []
    ports = []
    for _, nbr, data in graph.edges(switch, data=True):
        if dist_to_dest.get(nbr) == here - 1:
            ports.append(data["ports"][switch])
    return sorted(set(ports))


def ecmp_group_id(ports: tuple[int, ...], taken: dict[int, tuple]) -> int:
    """A group id that depends only on the port set, so it is stable across restarts (lab fault
    injection uses it for groups it adds; the fabric's own groups are :func:`next_hop_group_ids`)."""
    gid = (cookies.app_id(APP) << 24) | (zlib.crc32(",".join(map(str, ports)).encode()) & 0xFFFFFF)
    while gid in taken and taken[gid] != ports:  # collision: probe deterministically
        gid = (gid & 0xFF000000) | ((gid + 1) & 0xFFFFFF)
    return gid


@functools.lru_cache(maxsize=64)
def _group_ids(switches: tuple[str, ...]) -> dict[str, int]:
    base, ids, taken = cookies.app_id(APP) << 24, {}, set()
    for name in switches:  # sorted: a collision is resolved the same way on every run
        low = zlib.crc32(f"next-hop {name}".encode()) & 0xFFFFFF
        while base | low in taken:
            low = (low + 1) & 0xFFFFFF
        taken.add(base | low)
        ids[name] = base | low
    return ids


def next_hop_group_ids(topo) -> dict[str, int]:
    """The group id every switch uses for its next hops towards each switch.

    Depends on switch names only (a CRC, collisions probed in name order), so it is the same
    after a restart and on every switch, and a route never has to change when a path does.
    """
    return _group_ids(tuple(sorted(topo.switches)))


def arp_responder(ip: str, mac: str, cookie: int) -> Flow:
    """Answer 'who has ip' with ``mac``, in the switch (move/set, back out the in-port)."""
    return Flow(table=ARP_ND, priority=P_RESPONDER, cookie=cookie,
                match=Match(eth_type=ETH_ARP, arp_op=1, arp_tpa=ip),
                actions=(RegMove("eth_src", "eth_dst", 48), SetField("eth_src", mac),
                         SetField("arp_op", 2),
                         RegMove("arp_sha", "arp_tha", 48), SetField("arp_sha", mac),
                         RegMove("arp_spa", "arp_tpa", 32), SetField("arp_spa", ip),
                         Output(OFPP_IN_PORT)))


ND_FLAG_ROUTER, ND_FLAG_SOLICITED, ND_FLAG_OVERRIDE = 0x80000000, 0x40000000, 0x20000000
ND_OPT_TLL = 2


def nd_responder(ip: str, mac: str, cookie: int, router: bool = False) -> tuple[Flow, Flow]:
    """Two flows that answer a neighbour solicitation for ``ip`` with ``mac`` in the switch.

    The first turns the solicitation into a solicited advertisement (addresses swapped,
    type 136, flags) and looks it up again; the second, which can now match an
    advertisement, turns the source link-layer option into the target link-layer option
    carrying ``mac`` and sends it back.  (OVS accepts nd_tll only on a flow that matches
    type 136, hence the second lookup.)  OVS fixes the ICMPv6 checksum; the hop limit stays
    the solicitation's, 255 for every valid one.  Like ARP, this keeps working while the
    controller is unreachable.
    """
    flags = ND_FLAG_SOLICITED | ND_FLAG_OVERRIDE | (ND_FLAG_ROUTER if router else 0)
    ns = Flow(table=ARP_ND, priority=P_RESPONDER, cookie=cookie,
              match=Match(eth_type=ETH_IPV6, ip_proto=58, icmpv6_type=135, ipv6_nd_target=ip),
              actions=(RegMove("eth_src", "eth_dst", 48), SetField("eth_src", mac),
                       RegMove("ipv6_src", "ipv6_dst", 128), SetField("ipv6_src", ip),
                       SetField("icmpv6_type", 136), SetField("nd_reserved", flags),
                       Resubmit(ARP_ND)))
    na = Flow(table=ARP_ND, priority=P_RESPONDER, cookie=cookie,
              match=Match(eth_type=ETH_IPV6, ip_proto=58, icmpv6_type=136, ipv6_nd_target=ip),
              actions=(SetField("nd_options_type", ND_OPT_TLL), SetField("ipv6_nd_tll", mac),
                       Output(OFPP_IN_PORT)))
    return ns, na


def resolver_targets(topo, router_mac: str) -> tuple[dict[str, str], dict[str, str]]:
    """Addresses the edge switches answer for, IPv4 (ARP) and IPv6 (ND), mapped to the MAC to answer:
    every host address, and every gateway (the fabric's router MAC)."""
    arp: dict[str, str] = {}
    nd: dict[str, str] = {}
    for h in topo.hosts.values():
        if h.ipv4:
            arp[str(h.ipv4.ip)] = h.mac
        if h.ipv6:
            nd[str(h.ipv6.ip)] = h.mac
    for h in topo.hosts.values():
        if h.gateway4:
            arp.setdefault(str(h.gateway4), router_mac)
        if h.gateway6:
            nd.setdefault(str(h.gateway6), router_mac)
    return arp, nd


def compute_fabric(view: FabricView, intent: FabricIntent) -> dict[str, SwitchState]:
    """Desired fabric state of every switch, both parts merged (pure)."""
    states = compute_part(view, intent, HOSTS)
    for name, st in compute_part(view, intent, NEXT_HOPS).items():
        states[name].merge(st)
    return states


def compute_part(view: FabricView, intent: FabricIntent, part: str) -> dict[str, SwitchState]:
    """Desired state of one fabric part on every switch (pure).

    ``hosts``: admission, ARP/ND responders and a route per host address, from the topology
    file and the intent alone; a route to a host on another switch points at the next-hop
    group towards that switch.  ``next_hops``: those groups, one per (switch, destination
    switch), a bucket per port on a shortest path now; the only state a link going down or
    up changes (as ONOS' segment routing keeps one ECMP next objective per destination
    leaf), so a port event rewrites a few groups instead of every route.
    """
    if part == HOSTS:
        return _hosts_part(view.topology, intent)
    if part == NEXT_HOPS:
        return _next_hops_part(view, intent)
    raise ValueError(f"fabric has no part {part!r}")


def _destinations(topo) -> dict[str, list]:
    """Hosts per switch, for the switches that have any (the only destinations routes need)."""
    hosts_on: dict[str, list] = defaultdict(list)
    for h in topo.hosts.values():
        hosts_on[h.switch].append(h)
    return hosts_on


def _next_hops_part(view: FabricView, intent: FabricIntent) -> dict[str, SwitchState]:
    topo = view.topology
    graph = view.graph()
    gids = next_hop_group_ids(topo)
    with_hosts = _destinations(topo)
    dests = [d for d in topo.switches if d in with_hosts]
    dist = {d: nx.single_source_shortest_path_length(graph, d) for d in dests if d in graph}
    states = {}
    for name in topo.switches:
        st = states[name] = SwitchState()
        for d in dests:
            if d == name:
                continue
            ports = next_hops(graph, name, d, dist[d]) if d in dist and name in graph else []
            if not intent.ecmp:
                ports = ports[:1]
            # no path now: a group with no bucket drops, as a missing route would (the route stays)
            st.add_group(Group(group_id=gids[d], type="select", cookie=cookies.make(APP, K_ECMP, d),
                               buckets=tuple(Bucket(actions=(Output(p),), weight=1, watch_port=p) for p in ports)))
    return states


def _hosts_part(topo, intent: FabricIntent) -> dict[str, SwitchState]:
    states = {name: SwitchState() for name in topo.switches}
    router_mac = intent.router_mac
    hosts_on = _destinations(topo)
    gids = next_hop_group_ids(topo)
    arp_targets, nd_targets = resolver_targets(topo, router_mac)
    for name, st in states.items():
        # -- ingress: fabric ports
        for p in topo.switch_ports(name):
            if p.kind != "host":
                c = cookies.make(APP, K_FABRIC_PORT, f"{name}:{p.port}")
                st.add_flow(Flow(table=INGRESS, priority=P_FABRIC_PORT, match=Match(in_port=p.port),
                                 goto=FORWARD, cookie=c))
                st.label(c, f"fabric port {name}:{p.port} -> {p.peer}")
        # -- ingress: hosts on their own port, with their own addresses
        for h in hosts_on.get(name, []):
            c = cookies.make(APP, K_HOST_PORT, h.name)
            st.label(c, f"host {h.name} admission on {name}:{h.port}")
            port = h.port
            if h.ipv4:
                ip4 = str(h.ipv4.ip)
                st.add_flow(Flow(table=INGRESS, priority=P_HOST, cookie=c, goto=ARP_ND,
                                 match=Match(in_port=port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_type=ETH_ARP, arp_spa=ip4)))
                st.add_flow(Flow(table=INGRESS, priority=P_HOST, cookie=c, goto=FORWARD,
                                 match=Match(in_port=port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_type=ETH_IP, ipv4_src=ip4)))
                st.add_flow(Flow(table=INGRESS, priority=P_HOST_ROUTED, cookie=c, goto=FORWARD,
                                 match=Match(in_port=port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_dst=router_mac,
                                             eth_type=ETH_IP, ipv4_src=ip4),
                                 actions=(DecTtl(), SetField("eth_src", router_mac))))
            if h.ipv6:
                ip6 = str(h.ipv6.ip)
                st.add_flow(Flow(table=INGRESS, priority=P_HOST_ND, cookie=c, goto=ARP_ND,
                                 meter=nd_meter_id(port),
                                 match=Match(in_port=port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_type=ETH_IPV6, ip_proto=58,
                                             icmpv6_type=135)))
                rate = intent.nd_rate_per_host
                st.add_meter(Meter(meter_id=nd_meter_id(port), unit="pktps",
                                   bands=(MeterBand(rate=rate, burst_size=max(1, rate // 2)),)))
                st.add_flow(Flow(table=INGRESS, priority=P_HOST, cookie=c, goto=FORWARD,
                                 match=Match(in_port=port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_type=ETH_IPV6, ipv6_src=ip6)))
                st.add_flow(Flow(table=INGRESS, priority=P_HOST_ROUTED, cookie=c, goto=FORWARD,
                                 match=Match(in_port=port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_dst=router_mac,
                                             eth_type=ETH_IPV6, ipv6_src=ip6),
                                 actions=(DecTtl(), SetField("eth_src", router_mac))))
        # -- arp_nd: responders on edge switches
        if hosts_on.get(name):
            for ip, mac in arp_targets.items():
                c = cookies.make(APP, K_ARP, ip)
                st.add_flow(arp_responder(ip, mac, c))
                st.label(c, f"ARP responder {ip} is-at {mac}")
            if nd_targets:  # duplicate address detection: the fabric never claims a host's address
                c = cookies.make(APP, K_ND, "dad")
                st.add_flow(Flow(table=ARP_ND, priority=P_ND_DAD, cookie=c,
                                 match=Match(eth_type=ETH_IPV6, ipv6_src="::", ip_proto=58, icmpv6_type=135)))
                st.label(c, "ND: duplicate address detection is never answered")
            gateways = set(nd_targets) - {str(h.ipv6.ip) for h in topo.hosts.values() if h.ipv6}
            for ip, mac in nd_targets.items():
                c = cookies.make(APP, K_ND, ip)
                for flow in nd_responder(ip, mac, c, router=ip in gateways):
                    st.add_flow(flow)
                st.label(c, f"ND responder {ip} is-at {mac}")

        # -- forward: a route per host address (to another switch: through its next-hop group)
        for h in topo.hosts.values():
            c = cookies.make(APP, K_ROUTE, h.name)
            st.label(c, f"routes to host {h.name}")
            if h.switch == name:
                actions = (SetField("eth_dst", h.mac), Output(h.port))
            else:
                actions = (GroupAction(gids[h.switch]),)
            if h.ipv4:
                st.add_flow(Flow(table=FORWARD, priority=P_ROUTE, match=Match(eth_type=ETH_IP, ipv4_dst=str(h.ipv4.ip)),
                                 actions=actions, cookie=c))
            if h.ipv6:
                st.add_flow(Flow(table=FORWARD, priority=P_ROUTE,
                                 match=Match(eth_type=ETH_IPV6, ipv6_dst=str(h.ipv6.ip)), actions=actions, cookie=c))
    return states
