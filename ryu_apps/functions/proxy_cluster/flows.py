"""Proxy clusters: the flows that spread a VIP's connections over its proxies, pin them, keep
the cluster's roles apart and copy VIP traffic to a collector (pure).

On every switch, per cluster and address family (``lb`` is table 50):

* **client edge** (ingress, 5100): a declared client on its own port, MAC and
  address, sending to the VIP's service ports through its gateway, is routed
  (TTL, router MAC) into ``lb``;
* ``lb`` **tracks** it in the switch's own conntrack zone (5100), then a
  connection already **pinned** (its ``ct_mark`` names a proxy that is still
  in the cluster, draining or not: 5300) goes to that proxy, anything else is
  **picked** by the cluster's select group (5200), whose 128 buckets (hash
  slots) each write their slot's owner's mark to ``reg6`` and look ``lb`` up
  again, where the connection is committed with that mark and sent to its
  proxy (5400).  The owners: the cluster's slot table (``model.slot_table``)
  balanced over the active proxies this switch can reach at its own site (the
  node it runs on), or over every active proxy it can reach when none is
  there.  A change of membership never moves an established connection, and
  gives slots new owners only as far as it must (a third proxy joining takes a
  third of the slots, nothing more); one pinned to a proxy that has left is
  picked again (and reset by its new proxy);
* **carry** (5500): a VIP packet already addressed to a proxy's MAC goes to
  that proxy's port, or to the fabric's next-hop group towards its switch, on
  every switch on the way (transit switches route VIP traffic by proxy MAC:
  the VIP itself names no host);
* **replies** (ingress, 5100 at a proxy's port; 5050 at fabric ports): a proxy
  may send from the VIP's service ports (it holds the VIP); at the client's
  own switch replies pass its conntrack zone too (5150 in ``lb``), so it sees
  both directions of every connection it pinned; then the fabric routes them
  (5100 in ``lb``);
* **isolation** (ingress, 5010, drops: OpenFlow counts what each one drops).
  Roles: the proxies, the servers of its pools, the capture collector, and
  *outsiders*, every other declared host (the clients).  At each sender's own
  port, IP packets to the own addresses of hosts it may not reach die:
  outsiders and the collector may not reach servers, proxies (they use the VIP,
  which names no host) or the collector; proxies may not reach outsiders (only
  their replies from the VIP's service ports, 5100, pass) or the collector;
  servers may not reach the collector.  Proxies still reach servers, each other
  (HAProxy peers) and their gateway.  ARP is not IP, and neighbour discovery
  goes to solicited-node multicast or the gateway, neither a host address (only
  a unicast reachability probe of an on-link barred host dies, and that host
  was out of reach anyway).  This is O(senders x barred hosts x families) flows
  per cluster, on the senders' switches only;
* **capture** (only with ``capture``): every VIP packet is copied once, at its
  proxy's edge switch (requests as they are output to the proxy's port, replies
  as they enter from it), by the cluster's capture group, whose bucket sets
  ``eth_dst`` to the collector's MAC (IP headers untouched: each copy is the
  packet as its proxy receives or sends it) and sends it to the collector;
  copies crossing the fabric enter ``lb`` like any VIP packet and are carried
  there by that MAC (5600 in ``lb``, above carry and reply tracking).

Marks, zones and group ids are derived from names, so they are the same after
a restart and on every controller instance.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import FORWARD, INGRESS, LB
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.topology import Host, Topology
from ryu_apps.functions.fabric.flows import UNTAGGED, next_hop_group_ids
from ryu_apps.functions.proxy_cluster.intent import ClusterSpec, ProxyClusterIntent
from ryu_apps.functions.proxy_cluster.model import slot_table, switch_site
from ryu_apps.openflow.ofdata import Bucket, Ct, DecTtl, Flow, Group, GroupAction, Match, Output, Resubmit, SetField

APP = "proxy_cluster"
ETH_IP, ETH_IPV6, TCP = 0x0800, 0x86DD, 6

K_CLIENT = 1   # a client's VIP traffic into lb
K_REPLY = 2    # a proxy's replies from the VIP; tracking and routing of replies
K_TRACK = 3    # conntrack of new VIP traffic
K_PIN = 4      # pinned connections of one proxy
K_PICK = 5     # unpinned connections into the cluster's select group
K_CARRY = 6    # VIP packets addressed to one proxy's MAC, towards it
K_ISOLATE = 7  # drops between roles: outsiders to servers and proxies, proxies to outsiders, anyone to the collector
K_CAPTURE = 8  # copies of VIP packets towards the collector
KIND_NAMES = {K_CLIENT: "client", K_REPLY: "reply", K_TRACK: "track", K_PIN: "pin", K_PICK: "pick",
              K_CARRY: "carry", K_ISOLATE: "isolate", K_CAPTURE: "capture"}

P_FABRIC_REPLY, P_EDGE, P_REPLY_TRACK, P_PICK, P_PIN, P_COMMIT, P_CARRY = 5050, 5100, 5150, 5200, 5300, 5400, 5500
#: isolation drops (ingress, host ports): above the fabric's admission (100-999), which would route
#: them, and below P_EDGE, so that where they overlap (a proxy's reply from the VIP to a client) the
#: VIP's own flows win; P_FABRIC_REPLY matches fabric ports only, so the two never meet
P_ISOLATE = 5010
#: copies addressed to the collector (lb): above every other lb flow, P_EDGE's reply tracking included,
#: which would route a reply's copy to the client a second time
P_CAPTURE = 5600
#: the register a select bucket writes its slot owner's mark to
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


def capture_group_id(cluster: str) -> int:
    """The group that copies ``cluster``'s VIP packets to its collector (never its select group's id)."""
    low = _crc24(f"{cluster}/capture")
    if low == _crc24(cluster):
        low = (low + 1) & 0xFFFFFF
    return (cookies.app_id(APP) << 24) | low


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


def _dsts(h: Host) -> Iterable[tuple[int, dict]]:
    """(eth_type, destination match) per own address of ``h``."""
    for eth_type, field in ((ETH_IP, "ipv4_dst"), (ETH_IPV6, "ipv6_dst")):
        addr = _own_addr(h, eth_type)
        if addr is not None:
            yield eth_type, {field: addr}


def compute_cluster(topology: Topology, c: ClusterSpec, router_mac: str,
                    dead: frozenset[str] = frozenset(), retiring: frozenset[str] = frozenset(),
                    reach: Callable[[str, str], bool] | None = None,
                    unpicked: frozenset[str] = frozenset(), slots: tuple = ()) -> dict[str, SwitchState]:
    """Every switch's flows and group for cluster ``c``; ``dead``: proxies out of the hash whose
    pinned connections are released (health); ``unpicked``: out of the hash, pins kept (degraded);
    ``slots``: the cluster's slot table (:func:`model.slot_table`, kept by the app), each switch's
    own table derived from it for the proxies it spreads over;
    ``retiring``: hosts just removed from the pools that keep the server role for isolation until
    the proxies' old workers have finished their sessions with them; ``reach(a, b)``: switch ``b``
    is reachable from switch ``a`` over live links (default: always).

    Each switch spreads new connections over the proxies it can reach at its own site (the node
    its switch runs on), or over every proxy it can reach when none of its site's can; a
    connection pinned to a proxy it can no longer reach is picked again (its new proxy resets it
    at once, where a pin to an unreachable proxy would hang it)."""
    reach = reach or (lambda a, b: True)
    hosts = topology.hosts
    gids = next_hop_group_ids(topology)
    proxies = [hosts[p.host] for p in c.proxies]
    active = [hosts[p.host] for p in c.proxies if p.state == "active" and p.host not in dead | unpicked]
    pinned = [h for h in proxies if h.name not in dead]
    proxy_hosts = {p.host for p in c.proxies}
    servers = [hosts[n] for n in dict.fromkeys([*(s.host for pool in c.pools for s in pool.servers),
                                                *sorted(retiring - proxy_hosts)])]
    collector = hosts[c.capture.host] if c.capture is not None else None
    sink = [collector] if collector is not None else []
    roles = {h.name for h in (*proxies, *servers, *sink)}
    clients = [h for h in hosts.values() if h.name not in roles]  # the outsiders
    # whose own addresses each role may not send to (the collector is barred like an outsider: it only receives)
    barred = {h.name: servers + proxies + sink for h in clients}
    barred.update({h.name: clients + sink for h in proxies})
    barred.update({h.name: sink for h in servers})
    if collector is not None:
        barred[collector.name] = servers + proxies
    cap = capture_group_id(c.name)
    out: dict[str, SwitchState] = {}
    for sw in topology.switches:
        st = SwitchState()
        zone = zone_of(topology, sw)

        def toward(h: Host) -> tuple:
            return (Output(h.port),) if h.switch == sw else (GroupAction(gids[h.switch]),)

        def copy(h: Host) -> tuple:
            """The capture group, on proxy ``h``'s own switch: requests go out to its port, replies come in there."""
            return (GroupAction(cap),) if collector is not None and h.switch == sw else ()

        ck = {k: cookies.make(APP, k, c.name) for k in KIND_NAMES}
        for k, name in KIND_NAMES.items():
            st.label(ck[k], f"proxy cluster {c.name}: {name}")
        here = switch_site(topology, sw)
        live = [h for h in active if reach(sw, h.switch)]
        chosen = [h for h in live if switch_site(topology, h.switch) == here] or live
        pins = [h for h in pinned if reach(sw, h.switch)]
        # a bucket only names its proxy (reg6) and looks lb up again, where the commit happens:
        # a ct(commit) inside a select bucket did not keep its mark in OVS 3.1's userspace datapath
        # always 128 buckets while any proxy is there to pick, bucket i naming slot i's owner: OVS maps
        # its dp_hash values to buckets anew whenever the bucket list changes shape (two thirds of new
        # connections moved when a third proxy joined with a bucket per proxy), so only what a bucket
        # names changes - the cluster's slot table, balanced over the proxies this switch spreads
        # over, changed only as far as it must
        owners = slot_table([h.name for h in chosen], slots) if chosen else []
        buckets = tuple(Bucket(actions=(SetField(PICKED, proxy_mark(c.name, owner)), Resubmit(LB)))
                        for owner in owners)
        st.add_group(Group(group_id(c.name), "select", buckets))
        if collector is not None and any(h.switch == sw for h in proxies):
            # a copy may have to leave by the port its original came in on (a request from the collector's
            # side of the fabric): OVS never outputs to the in_port, so the copy forgets it (in_port 0);
            # the bucket works on a copy, so the original keeps its own
            to_collector = (SetField("in_port", 0), SetField("eth_dst", collector.mac), *toward(collector))
            st.add_group(Group(cap, "indirect", (Bucket(actions=to_collector),), cookie=ck[K_CAPTURE]))
        # -- ingress: isolation, at each sender's own port (any source: spoofed ones die here too)
        for h in hosts.values():
            if h.switch != sw or h.name not in barred:
                continue
            for dst_host in barred[h.name]:
                for eth_type, dst_match in _dsts(dst_host):
                    st.add_flow(Flow(table=INGRESS, priority=P_ISOLATE, cookie=ck[K_ISOLATE],
                                     match=Match(in_port=h.port, eth_type=eth_type, **dst_match)))
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
                                     actions=(*copy(h), DecTtl(), SetField("eth_src", router_mac))))
                for fp in fabric_ports:
                    st.add_flow(Flow(table=INGRESS, priority=P_FABRIC_REPLY, cookie=ck[K_REPLY], goto=LB,
                                     match=Match(in_port=fp, eth_type=eth_type, **{src: vip}, ip_proto=TCP,
                                                 tcp_src=port)))
                    st.add_flow(Flow(table=INGRESS, priority=P_FABRIC_REPLY, cookie=ck[K_CARRY], goto=LB,
                                     match=Match(in_port=fp, eth_type=eth_type, **{dst: vip}, ip_proto=TCP,
                                                 tcp_dst=port)))
            # -- lb: replies routed by the fabric; tracked only at their client's own switch, whose
            # zone saw the request (elsewhere a lookup would cost a pass and find nothing)
            for h in clients:
                addr = _own_addr(h, eth_type)
                if h.switch == sw and addr is not None:
                    st.add_flow(Flow(table=LB, priority=P_REPLY_TRACK, cookie=ck[K_REPLY],
                                     match=Match(eth_type=eth_type, **{src: vip, dst: addr}, ip_proto=TCP,
                                                 ct_state=(0, TRK)),
                                     actions=(Ct(zone=zone, table=LB),)))
            st.add_flow(Flow(table=LB, priority=P_EDGE, cookie=ck[K_REPLY], goto=FORWARD,
                             match=Match(eth_type=eth_type, **{src: vip}, ip_proto=TCP)))
            # -- lb: a client's packet, not yet addressed to a proxy
            new = dict(eth_type=eth_type, eth_dst=router_mac, ip_proto=TCP, **{dst: vip})
            st.add_flow(Flow(table=LB, priority=P_EDGE, cookie=ck[K_TRACK],
                             match=Match(**new, ct_state=(0, TRK)), actions=(Ct(zone=zone, table=LB),)))
            st.add_flow(Flow(table=LB, priority=P_PICK, cookie=ck[K_PICK],
                             match=Match(**new, ct_state=(TRK, TRK)), actions=(GroupAction(group_id(c.name)),)))
            for h in chosen:
                mark = proxy_mark(c.name, h.name)
                st.add_flow(Flow(table=LB, priority=P_COMMIT, cookie=ck[K_PICK],
                                 match=Match(**new, ct_state=(TRK, TRK), **{PICKED: mark}),
                                 actions=(Ct(commit=True, zone=zone, mark=mark), *copy(h), SetField("eth_dst", h.mac),
                                          *toward(h))))
            for h in pins:
                st.add_flow(Flow(table=LB, priority=P_PIN, cookie=ck[K_PIN],
                                 match=Match(**new, ct_state=(TRK, TRK), ct_mark=proxy_mark(c.name, h.name)),
                                 actions=(*copy(h), SetField("eth_dst", h.mac), *toward(h))))
            # -- lb: addressed to a proxy: carry it there
            for h in proxies:
                st.add_flow(Flow(table=LB, priority=P_CARRY, cookie=ck[K_CARRY],
                                 match=Match(eth_type=eth_type, eth_dst=h.mac, ip_proto=TCP, **{dst: vip}),
                                 actions=(*copy(h), *toward(h))))
            # -- lb: copies on their way to the collector (they came in as VIP packets from a fabric port)
            if collector is not None:
                for field in (dst, src):
                    st.add_flow(Flow(table=LB, priority=P_CAPTURE, cookie=ck[K_CAPTURE],
                                     match=Match(eth_type=eth_type, eth_dst=collector.mac, ip_proto=TCP,
                                                 **{field: vip}),
                                     actions=toward(collector)))
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
