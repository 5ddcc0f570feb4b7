"""OAM ECMP verification, the pure part: probes, reports, expected paths, analysis.

Nothing here talks to a switch; :mod:`ryu_apps.oam_ecmp` (the os-ken app)
feeds it the topology, the routes read from the switches and the reports, and
serves what it returns.

Probes and reports
------------------
A probe is a data packet of the pair (:func:`build_probe`): Ethernet from the
source host's MAC to the router MAC, IPv4 or IPv6 between the two hosts' own
addresses, TTL/hop limit = the hop budget, UDP 3594 -> 3594 and the payload
``OAM-ECMP`` + probe id (32 bits), source and destination node ids (16 bits
each, from the :class:`SidPlan`), hop budget and family (8 bits each).  The
hop count is the TTL, decremented by every probe twin.  Where each copy was
seen travels back in the controller copy's Ethernet destination::

    0e:0a:<kind>:<port, 24 bits>      kind 1 forwarded, 2 edge (not forwarded),
                                      3 arrived, 4 hop limit spent, 5 no route (first design)

Path analysis
-------------
Reports of one probe form a DAG whose nodes are ``(switch, in_port, hop)``;
a forwarded copy ``(X, out p, hop k)`` must show up at ``(peer(X,p),
peer_port, k+1)``.  Walking the DAG gives every path the probe took and how it
ended (delivered, hop limit spent, lost on a link, dropped).  Those are
compared with the expected ECMP set (every shortest path of the declared
topology) and each difference is classified: a missing ECMP member, a
suboptimal (longer) path, a black hole, a loop, and unequal path sets between
the two directions of a pair.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import product
from typing import Iterable

import networkx as nx

from ryu_apps.openflow import simulator
from ryu_apps.openflow.ofdata import OFPP_CONTROLLER, Flow, Group
from ryu_apps.packet.checksum import inet_checksum

# --- encoding constants ----------------------------------------------------------------

FUNC_REPLICATE = 0x0E0A
ETH_IPV6 = 0x86DD
ETH_IP = 0x0800
FAMILIES = (4, 6)
IPPROTO_UDP = 17
OAM_UDP_PORT = 0x0E0A  # source and destination port of a probe's UDP header
PROBE_PAYLOAD = b"OAM-ECMP"
#: Ethernet source/destination of a probe on the wire (locally administered, unicast)
PROBE_ETH_SRC = "0e:0b:00:00:00:01"
PROBE_ETH_DST = "0e:0b:00:00:00:02"
MARKER_OUI = (0x0E, 0x0A)

# report kinds (byte 2 of the marker MAC)
FWD, EDGE, ARRIVE, EXPIRE, NOROUTE = 1, 2, 3, 4, 5
KIND_NAMES = {FWD: "forwarded", EDGE: "edge", ARRIVE: "arrived", EXPIRE: "expired", NOROUTE: "no_route"}
#: kinds reported after the switch decremented the hop limit (by a probe twin in the forward table)
AFTER_DEC = frozenset({FWD, EDGE, ARRIVE})

# finding classes
MISSING = "missing_member"
SUBOPTIMAL = "suboptimal_path"
UNEXPECTED = "unexpected_path"
BLACK_HOLE = "black_hole"
LOOP = "loop"
ASYMMETRIC = "asymmetric"
FINDING_ORDER = (BLACK_HOLE, LOOP, MISSING, SUBOPTIMAL, UNEXPECTED, ASYMMETRIC)

MAX_PATHS = 5000  # path outcomes enumerated per probe (a looping probe is cut here)
MAX_EXPECTED_PATHS = 4096


class BadReport(ValueError):
    """A packet-in that is not a well-formed report of this app."""


def marker_mac(kind: int, port: int = 0) -> str:
    """The Ethernet destination a bucket writes into a controller copy."""
    if not 0 <= port < 1 << 24:
        port = 0xFFFFFF
    b = bytes((*MARKER_OUI, kind)) + port.to_bytes(3, "big")
    return ":".join(f"{x:02x}" for x in b)


MARKER_MATCH = ("0e:0a:00:00:00:00", "ff:ff:00:00:00:00")


# --- the SID plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class SidPlan:
    """Locators of every switch and the replicate SIDs built from them."""

    block: ipaddress.IPv6Network
    nodes: dict[str, int]  # switch -> 16-bit node id

    @property
    def block_int(self) -> int:
        return int(self.block.network_address)

    def switch_of(self, node: int) -> str | None:
        for sw, n in self.nodes.items():
            if n == node:
                return sw
        return None

    def locator(self, switch: str) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((self.block_int | self.nodes[switch] << 80, 48))

    def function_prefix(self, switch: str) -> str:
        """``block:node:e0a::/64``: what switches match for "replicate towards ``switch``"."""
        return str(ipaddress.IPv6Network((self.block_int | self.nodes[switch] << 80 | FUNC_REPLICATE << 64, 64)))

    def sid(self, dest: str, probe_id: int, src: str, hop_budget: int) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(self.block_int | self.nodes[dest] << 80 | FUNC_REPLICATE << 64
                                     | (probe_id & 0xFFFFFFFF) << 32 | self.nodes[src] << 16 | hop_budget & 0xFFFF)

    def end_sid(self, switch: str) -> ipaddress.IPv6Address:
        """``block:node::`` (the switch's own address; the source of its probes)."""
        return ipaddress.IPv6Address(self.block_int | self.nodes[switch] << 80)

    def to_json(self) -> dict:
        return {"block": str(self.block), "function": f"{FUNC_REPLICATE:#06x}",
                "layout": "block(32) node(16) function(16) | probe_id(32) src_node(16) hop_budget(16)",
                "locators": {sw: {"node": f"{n:#06x}", "locator": str(self.locator(sw)),
                                  "replicate_sid_prefix": self.function_prefix(sw)}
                             for sw, n in sorted(self.nodes.items())}}


def make_plan(switches: dict[str, int], block: str, overrides: dict[str, int]) -> SidPlan:
    """Node ids: ``overrides`` first, else the low 16 bits of the dpid; raise ValueError naming the key."""
    net = ipaddress.IPv6Network(block)
    nodes: dict[str, int] = {}
    seen: dict[int, str] = {}
    for sw in sorted(switches):
        node = overrides.get(sw, switches[sw] & 0xFFFF)
        if not 1 <= node <= 0xFFFF:
            raise ValueError(f"locators.{sw}: node id {node} of switch {sw} is not in 1..65535 "
                             f"(the low 16 bits of its dpid are 0; set locators.{sw})")
        if node in seen:
            key = seen[node] if seen[node] in overrides else sw
            raise ValueError(f"locators.{key}: node id {node:#x} is used by both {seen[node]} and {sw}; "
                             f"set distinct ids under locators")
        seen[node] = sw
        nodes[sw] = node
    return SidPlan(net, nodes)


# --- probes and reports ----------------------------------------------------------------


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


_checksum = inet_checksum


@dataclass(frozen=True)
class Endpoint:
    """The host whose addresses a probe of one family carries, on one leaf."""

    host: str
    mac: str
    port: int
    address: str
    family: int  # 4 | 6


def endpoints(topology, leaf: str) -> dict[int, Endpoint]:
    """Per address family, the first host (by name) on ``leaf`` with an address of that family."""
    out: dict[int, Endpoint] = {}
    for h in sorted((h for h in topology.hosts.values() if h.switch == leaf), key=lambda h: h.name):
        if h.ipv4 and 4 not in out:
            out[4] = Endpoint(h.name, h.mac, h.port, str(h.ipv4.ip), 4)
        if h.ipv6 and 6 not in out:
            out[6] = Endpoint(h.name, h.mac, h.port, str(h.ipv6.ip), 6)
    return out


def route_key(dest: str, family: int) -> str:
    """Key of a destination leaf's route of one family in the route tables: ``l2/ipv4``."""
    return f"{dest}/ipv{family}"


def lookup_packet(ep: Endpoint) -> dict:
    """The header fields a probe to ``ep`` carries that a forward-table flow may match."""
    dst = "ipv4_dst" if ep.family == 4 else "ipv6_dst"
    return {"eth_type": ETH_IP if ep.family == 4 else ETH_IPV6, dst: ep.address, "ip_proto": IPPROTO_UDP,
            "udp_src": OAM_UDP_PORT, "udp_dst": OAM_UDP_PORT}


PROBE_TAIL = struct.Struct("!IHHBB")  # probe id, src node, dest node, hop budget, family
PROBE_DATA_LEN = len(PROBE_PAYLOAD) + PROBE_TAIL.size


def build_probe(plan: SidPlan, src: str, dest: str, probe_id: int, hop_budget: int,
                src_ep: Endpoint, dst_ep: Endpoint, router_mac: str) -> bytes:
    """A data packet of the pair: ``src_ep``'s host to ``dst_ep``'s host, routed (to the router MAC),
    UDP 3594 -> 3594 with the probe's identity in the payload.

    The switches classify it like that host's own UDP traffic to the other host; only the
    forward table's probe twins (matching the UDP ports) tell it apart, at the ECMP decision.
    """
    if src_ep.family != dst_ep.family:
        raise ValueError(f"probe {src}->{dest}: address families differ ({src_ep.family}, {dst_ep.family})")
    payload = PROBE_PAYLOAD + PROBE_TAIL.pack(probe_id & 0xFFFFFFFF, plan.nodes[src], plan.nodes[dest],
                                              hop_budget & 0xFF, src_ep.family)
    ulen = 8 + len(payload)
    if src_ep.family == 6:
        s_ip = ipaddress.IPv6Address(src_ep.address).packed
        d_ip = ipaddress.IPv6Address(dst_ep.address).packed
        pseudo = s_ip + d_ip + struct.pack("!IxxxB", ulen, IPPROTO_UDP)
    else:
        s_ip = ipaddress.IPv4Address(src_ep.address).packed
        d_ip = ipaddress.IPv4Address(dst_ep.address).packed
        pseudo = s_ip + d_ip + struct.pack("!xBH", IPPROTO_UDP, ulen)
    udp = struct.pack("!HHHH", OAM_UDP_PORT, OAM_UDP_PORT, ulen, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    if src_ep.family == 6:
        ip = struct.pack("!IHBB", 6 << 28, ulen, IPPROTO_UDP, hop_budget) + s_ip + d_ip
        ethertype = ETH_IPV6
    else:
        hdr = struct.pack("!BBHHHBBH", 0x45, 0, 20 + ulen, probe_id & 0xFFFF, 0x4000, hop_budget, IPPROTO_UDP,
                          0) + s_ip + d_ip
        ip = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        ethertype = ETH_IP
    eth = _mac_bytes(router_mac) + _mac_bytes(src_ep.mac) + struct.pack("!H", ethertype)
    return eth + ip + udp


@dataclass(frozen=True)
class Report:
    """What one controller copy says (the switch and in-port come from the packet-in)."""

    kind: int
    port: int          # out port for FWD/EDGE, else 0
    hop_limit: int     # the copy's IPv4 TTL / IPv6 hop limit
    dest_node: int
    probe_id: int
    src_node: int
    hop_budget: int
    family: int = 6

    @property
    def hop(self) -> int:
        """Where on its path the copy was (grows by one per switch; the source's value depends on
        whether its ingress decremented the TTL, so paths are walked from the lowest one)."""
        return self.hop_budget - self.hop_limit + (0 if self.kind in AFTER_DEC else 1)


def parse_report(data: bytes, block: int | None = None) -> Report:
    """Read a report from packet-in data: fixed offsets, no loops, every length checked."""
    if len(data) < 14:
        raise BadReport(f"report of {len(data)} bytes is shorter than an Ethernet header")
    if data[0] != MARKER_OUI[0] or data[1] != MARKER_OUI[1]:
        raise BadReport(f"Ethernet destination {data[0:6].hex(':')} is not a report marker")
    kind = data[2]
    if kind not in KIND_NAMES:
        raise BadReport(f"unknown report kind {kind}")
    port = int.from_bytes(data[3:6], "big")
    (ethertype,) = struct.unpack_from("!H", data, 12)
    if ethertype == ETH_IPV6:
        l4, family = 14 + 40, 6
        if len(data) < l4 + 8 + PROBE_DATA_LEN:
            raise BadReport(f"IPv6 report of {len(data)} bytes is too short for a probe")
        if data[14] >> 4 != 6:
            raise BadReport(f"IP version {data[14] >> 4} in an IPv6 frame")
        proto, hop_limit = data[20], data[21]
    elif ethertype == ETH_IP:
        l4, family = 14 + 20, 4
        if len(data) < l4 + 8 + PROBE_DATA_LEN:
            raise BadReport(f"IPv4 report of {len(data)} bytes is too short for a probe")
        if data[14] != 0x45:
            raise BadReport(f"IPv4 version/header length {data[14]:#04x} is not 0x45 (probes carry no options)")
        proto, hop_limit = data[23], data[22]
    else:
        raise BadReport(f"ethertype {ethertype:#06x} is neither IPv4 nor IPv6 (tagged reports are not expected)")
    if proto != IPPROTO_UDP:
        raise BadReport(f"IP protocol {proto} is not UDP")
    sport, dport = struct.unpack_from("!HH", data, l4)
    if sport != OAM_UDP_PORT or dport != OAM_UDP_PORT:
        raise BadReport(f"UDP ports {sport}->{dport} are not the probe's {OAM_UDP_PORT}")
    off = l4 + 8
    if data[off:off + len(PROBE_PAYLOAD)] != PROBE_PAYLOAD:
        raise BadReport("payload is not a probe's")
    probe_id, src_node, dest_node, budget, fam = PROBE_TAIL.unpack_from(data, off + len(PROBE_PAYLOAD))
    if fam != family:
        raise BadReport(f"payload says IPv{fam} in an IPv{family} frame")
    return Report(kind, port, hop_limit, dest_node, probe_id, src_node, budget, family)


# --- the topology as the analysis sees it ------------------------------------------


@dataclass(frozen=True)
class Wiring:
    """Who is behind each switch port (from the declared topology)."""

    peer: dict[tuple[str, int], tuple[str, int]]  # fabric ports only
    hosts: dict[tuple[str, int], str]            # host ports

    @classmethod
    def of(cls, topology) -> "Wiring":
        peer, hosts = {}, {}
        for (sw, port), pi in topology.ports.items():
            if pi.kind == "host":
                hosts[(sw, port)] = pi.peer
            else:
                peer[(sw, port)] = (pi.peer, pi.peer_port)
        return cls(peer, hosts)

    def describe_port(self, switch: str, port: int) -> str:
        if (switch, port) in self.peer:
            return f"port {port} (to {self.peer[(switch, port)][0]})"
        if (switch, port) in self.hosts:
            return f"port {port} (host {self.hosts[(switch, port)]})"
        return f"port {port} (no link)"


def leaves_of(topology, explicit: Iterable[str] | None = None) -> list[str]:
    """The switches probes go between: ``explicit``, or every switch with a host."""
    if explicit:
        return sorted(explicit)
    return sorted({h.switch for h in topology.hosts.values()})


def representative(topology, leaf: str) -> tuple[str, dict]:
    """(address, lookup packet) of the host whose route stands for ``leaf``'s routes."""
    hosts = sorted((h for h in topology.hosts.values() if h.switch == leaf), key=lambda h: h.name)
    for h in hosts:
        if h.ipv6:
            return str(h.ipv6.ip), {"eth_type": ETH_IPV6, "ipv6_dst": str(h.ipv6.ip)}
    for h in hosts:
        if h.ipv4:
            return str(h.ipv4.ip), {"eth_type": 0x0800, "ipv4_dst": str(h.ipv4.ip)}
    raise ValueError(f"leaf {leaf} has no host with an address")


# --- expected paths --------------------------------------------------------------------------

Hop = tuple[str, int]  # (switch, out port)


@dataclass(frozen=True)
class Path:
    hops: tuple[Hop, ...]
    end: str

    @property
    def switches(self) -> tuple[str, ...]:
        return tuple(h[0] for h in self.hops) + (self.end,)

    @property
    def length(self) -> int:
        """Links crossed."""
        return len(self.hops)

    def __str__(self) -> str:
        return ">".join(f"{s}:{p}" for s, p in self.hops) + (">" if self.hops else "") + self.end


def expected_paths(graph: nx.MultiGraph, src: str, dst: str, limit: int = MAX_EXPECTED_PATHS) -> list[Path]:
    """Every shortest path from ``src`` to ``dst`` (parallel links are distinct paths)."""
    if src not in graph or dst not in graph or not nx.has_path(graph, src, dst):
        return []
    out: list[Path] = []
    for nodes in nx.all_shortest_paths(graph, src, dst):
        choices = []
        for u, v in zip(nodes, nodes[1:]):
            choices.append(sorted({d["ports"][u] for d in graph.get_edge_data(u, v).values()}))
        for ports in product(*choices):
            out.append(Path(tuple(zip(nodes[:-1], ports)), dst))
            if len(out) >= limit:
                return sorted(out, key=str)
    return sorted(out, key=str)


def distances(graph: nx.MultiGraph, dests: Iterable[str]) -> dict[str, dict[str, int]]:
    return {d: nx.single_source_shortest_path_length(graph, d) for d in dests if d in graph}


# --- routes installed on the switches --------------------------------------------------------


@dataclass(frozen=True)
class NextHop:
    port: int
    bucket: int | None = None  # index in the group; None for a flow's own output
    live: bool = True          # the switch can pick it: watch_port up (select/ff) and weight > 0 (select)
    weight: int | None = None  # a select bucket's weight as read from the switch

    def to_json(self) -> dict:
        return {"port": self.port, "bucket": self.bucket, "live": self.live, "weight": self.weight}


@dataclass(frozen=True)
class Route:
    """What a switch does with traffic to a leaf, as read from its tables."""

    switch: str
    dest: str
    address: str
    kind: str                    # output | group | none | missing_group
    cookie: int | None = None
    group_id: int | None = None
    group_type: str | None = None
    next_hops: tuple[NextHop, ...] = ()
    source: str = "switch"       # switch (read from it) | intended (computed, before any read)

    @property
    def live_ports(self) -> tuple[int, ...]:
        seen: list[int] = []
        for nh in self.next_hops:
            if nh.live and nh.port not in seen:
                seen.append(nh.port)
        return tuple(seen)

    def hop_of(self, port: int) -> NextHop | None:
        for nh in self.next_hops:
            if nh.port == port:
                return nh
        return None

    def where(self, port: int | None = None) -> str:
        """``group 0x0203a1b2 (select) bucket 2`` / ``route output:13``."""
        if self.kind in ("group", "missing_group"):
            text = f"group {self.group_id:#010x}" + (f" ({self.group_type})" if self.group_type else "")
            nh = self.hop_of(port) if port is not None else None
            if nh is not None and nh.bucket is not None:
                text += f" bucket {nh.bucket}"
            return text
        if self.kind == "output":
            return f"route output:{self.next_hops[0].port}" if self.next_hops else "route"
        return "no route"

    def to_json(self) -> dict:
        return {"address": self.address, "kind": self.kind,
                "cookie": None if self.cookie is None else f"{self.cookie:#x}",
                "group_id": None if self.group_id is None else f"{self.group_id:#010x}",
                "group_type": self.group_type, "source": self.source,
                "next_hops": [nh.to_json() for nh in self.next_hops]}


def lookup(flows: Iterable[Flow], table: int, pkt: dict) -> Flow | None:
    """The highest-priority flow of ``table`` matching ``pkt`` (fields not in ``pkt`` never match)."""
    return simulator.lookup(list(flows), table, pkt)


class Table:
    """One table's flows compiled for many lookups (the switch simulator's index)."""

    def __init__(self, flows: Iterable[Flow], table: int):
        self.table = table
        self.flows = [f for f in flows if f.table == table]
        self._switches: dict = {}

    def switch(self, groups: dict[int, Group], down: frozenset) -> simulator.Switch:
        key = (id(groups), down)
        sw = self._switches.get(key)
        if sw is None:
            if len(self._switches) > 8:
                self._switches.clear()
            sw = self._switches[key] = simulator.Switch(simulator.state_of(self.flows, groups), down=down)
        return sw

    def lookup(self, pkt: dict) -> Flow | None:
        return self.switch({}, frozenset()).lookup(self.table, pkt)


def resolve_route(switch: str, dest: str, address: str, pkt: dict, flows: "list[Flow] | Table",
                  groups: dict[int, Group], table: int, down_ports: frozenset = frozenset()) -> Route:
    """Where ``switch``'s table ``table`` sends ``pkt``: every bucket of its group, liveness included
    (the switch simulator's reading of the flow and its group)."""
    down = frozenset(p for s, p in down_ports if s == switch)
    if not isinstance(flows, Table):
        flows = Table(flows, table)
    fwd = flows.switch(groups, down).forwarding(table, pkt)
    cookie = fwd.flow.cookie if fwd.flow is not None else None
    if fwd.kind == "none" and fwd.flow is None:
        return Route(switch, dest, address, "none")
    if fwd.kind == "missing_group":
        return Route(switch, dest, address, "missing_group", cookie, fwd.group_id, None)
    hops = tuple(NextHop(h.port, h.bucket, h.live, h.weight) for h in fwd.hops)
    return Route(switch, dest, address, fwd.kind, cookie, fwd.group_id, fwd.group_type, hops)


# --- the analysis -------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """One launched probe and the reports it produced (deduplicated)."""

    probe_id: int
    src: str
    dst: str
    hop_budget: int
    launched: bool = True
    family: int = 6
    root_port: int = OFPP_CONTROLLER  # the in port the probe was launched with (the source host's port)
    reports: dict[tuple, int] = field(default_factory=dict)  # (switch, in_port, kind, port, hop) -> copies
    received: int = 0
    duplicates: int = 0
    capped: bool = False

    def add(self, switch: str, in_port: int, rep: Report, cap: int) -> bool:
        """Record a report; False if the per-probe cap was reached (the report is counted, not kept)."""
        self.received += 1
        key = (switch, in_port, rep.kind, rep.port if rep.kind in AFTER_DEC else 0, rep.hop)
        if key in self.reports:
            self.reports[key] += 1
            self.duplicates += 1
            return True
        if len(self.reports) >= cap:
            self.capped = True
            return False
        self.reports[key] = 1
        return True

    def merge(self, other: "ProbeResult") -> None:
        """Fold in the reports of another probe of the same pair (a confirmation re-probe)."""
        for key, n in other.reports.items():  # each try was capped on its own
            self.reports[key] = max(self.reports.get(key, 0), n)
        self.received += other.received
        self.duplicates += other.duplicates
        self.capped |= other.capped
        self.launched |= other.launched

    @property
    def forwarded(self) -> int:
        return sum(n for (_, _, kind, _, _), n in self.reports.items() if kind == FWD)


@dataclass(frozen=True)
class Outcome:
    """One path a probe took and how it ended."""

    end: str                 # delivered | expired | lost | hairpin | edge | no_route | silent
    hops: tuple[tuple[str, int, int], ...]  # (switch, in_port, out_port)
    at: str                  # switch where it ended
    port: int | None = None  # the port of a lost/edge copy

    @property
    def switches(self) -> tuple[str, ...]:
        return tuple(h[0] for h in self.hops) + (self.at,)

    def path(self) -> Path:
        return Path(tuple((s, o) for s, _, o in self.hops), self.at)


def outcomes(probe: ProbeResult, wiring: Wiring, limit: int = MAX_PATHS) -> tuple[list[Outcome], bool]:
    """Every path in the probe's report DAG; (outcomes, truncated)."""
    nodes: dict[tuple[str, int, int], list[tuple[int, int]]] = defaultdict(list)
    for (sw, in_port, kind, port, hop) in probe.reports:
        nodes[(sw, in_port, hop)].append((kind, port))
    for recs in nodes.values():
        recs.sort()
    out: list[Outcome] = []
    root = root_of(probe, nodes)
    if root is None:
        return [Outcome("silent", (), probe.src)], False
    stack = [(root, ())]
    truncated = False
    while stack:
        (sw, in_port, hop), hops = stack.pop()
        for kind, port in nodes[(sw, in_port, hop)]:
            if len(out) >= limit:
                return out, True
            if kind == FWD and port == in_port:
                out.append(Outcome("hairpin", hops, sw, port))
            elif kind == FWD:
                nxt = wiring.peer.get((sw, port))
                here = hops + ((sw, in_port, port),)
                child = (nxt[0], nxt[1], hop + 1) if nxt else None
                if child is not None and child in nodes and hop < probe.hop_budget + 1:
                    stack.append((child, here))
                else:
                    out.append(Outcome("lost", hops, sw, port))
            elif kind == EDGE:
                out.append(Outcome("edge", hops, sw, port))
            elif kind == ARRIVE:
                out.append(Outcome("delivered", hops, sw))
            elif kind == EXPIRE:
                out.append(Outcome("expired", hops, sw))
            elif kind == NOROUTE:
                out.append(Outcome("no_route", hops, sw))
    return out, truncated


def root_of(probe: ProbeResult, nodes) -> tuple[str, int, int] | None:
    """The source's first report node: (src, launch port, lowest hop)."""
    ours = [k for k in nodes if k[0] == probe.src and k[1] == probe.root_port]
    return min(ours, key=lambda k: k[2]) if ours else None


def reached(probe: ProbeResult) -> dict[tuple[str, int, int], set[tuple[int, int]]]:
    nodes: dict[tuple[str, int, int], set[tuple[int, int]]] = defaultdict(set)
    for (sw, in_port, kind, port, hop) in probe.reports:
        nodes[(sw, in_port, hop)].add((kind, port))
    return nodes


def mda_probes(k: int, alpha: float = 0.05) -> int:
    """Probes MDA sends at a hop with ``k`` next hops to rule out a (k+1)-th at confidence 1-alpha.

    n_k = ceil(ln(alpha / (k+1)) / ln(k / (k+1))): 6, 11, 16, 21, 27 for k = 1..5 at 95 %
    (Augustin et al., "Multipath tracing with Paris traceroute").
    """
    if k < 1:
        return 0
    return math.ceil(math.log(alpha / (k + 1)) / math.log(k / (k + 1)))


def mda_cost(paths: list[Path]) -> dict:
    """MDA probes to discover ``paths`` (one DAG, nodes = switch at hop), all hops and branching only."""
    succ: dict[tuple[str, int], set[tuple[str, int]]] = defaultdict(set)
    for p in paths:
        for i, (sw, port) in enumerate(p.hops):
            succ[(sw, i)].add((sw, port))
    degrees = [len(v) for v in succ.values()]
    return {"all_hops": sum(mda_probes(k) for k in degrees),
            "branching_hops": sum(mda_probes(k) for k in degrees if k >= 2),
            "hops": len(degrees), "branching": sum(1 for k in degrees if k >= 2)}


@dataclass
class Context:
    """Everything the analysis compares against."""

    wiring: Wiring
    design: nx.MultiGraph                  # the declared topology
    dist: dict[str, dict[str, int]]        # design distances to each leaf
    routes: dict[str, dict[str, Route]]    # installed routes (switch -> dest -> route)
    intended: dict[str, dict[str, tuple[int, ...]]]  # live next-hop ports the fabric intends
    down_ports: frozenset = frozenset()


def _route(ctx: Context, sw: str, dst: str) -> Route | None:
    return ctx.routes.get(sw, {}).get(dst)


def _deviation(ctx: Context, hops: Iterable[tuple[str, int, int]], dst: str) -> tuple[str, int] | None:
    """First hop (switch, out port) that does not bring the path one step closer to ``dst``."""
    d = ctx.dist.get(dst, {})
    for sw, _, out in hops:
        nxt = ctx.wiring.peer.get((sw, out))
        if nxt is None or d.get(nxt[0], 1 << 30) != d.get(sw, 1 << 30) - 1:
            return sw, out
    return None


def _link_down(ctx: Context, sw: str, port: int) -> str | None:
    peer = ctx.wiring.peer.get((sw, port))
    if (sw, port) in ctx.down_ports or (peer and peer in ctx.down_ports):
        return f"link {sw}:{port}-{peer[0]}:{peer[1]}" if peer else f"port {sw}:{port}"
    return None


class Findings:
    """Findings aggregated by (class, pair, switch, port)."""

    def __init__(self):
        self.items: dict[tuple, dict] = {}

    def add(self, cls: str, pair: tuple[str, str], switch: str | None, port: int | None, detail: str,
            path: str | None = None, family: str | None = None, **extra) -> None:
        key = (cls, pair, switch, port, family)
        f = self.items.get(key)
        if f is None:
            f = self.items[key] = {"class": cls, "pair": list(pair), "family": family, "switch": switch,
                                   "port": port, "detail": detail, "paths": [], **extra}
        if path is not None and path not in f["paths"] and len(f["paths"]) < 20:
            f["paths"].append(path)

    def list(self) -> list[dict]:
        order = {c: i for i, c in enumerate(FINDING_ORDER)}
        return sorted(self.items.values(), key=lambda f: (order[f["class"]], f["pair"], f["family"] or "",
                                                          f["switch"] or "", f["port"] or 0))


def analyze_pair(probe: ProbeResult, ctx: Context, findings: Findings) -> dict:
    """Classify one probe's paths against the expected set; returns the pair's summary."""
    src, dst = probe.src, probe.dst
    pair = (src, dst)
    rk = route_key(dst, probe.family)
    fam = f"ipv{probe.family}"

    def add(*args, **kw) -> None:
        findings.add(*args, family=fam, **kw)
    expected = expected_paths(ctx.design, src, dst)
    shortest = expected[0].length if expected else None
    outs, truncated = outcomes(probe, ctx.wiring) if probe.launched else ([], False)
    delivered = {o.path() for o in outs if o.end == "delivered"}
    exp_set = set(expected)
    nodes = reached(probe)

    # black holes: copies that left a switch and never showed up, or were dropped
    for o in outs:
        where = (_route(ctx, o.at, rk) or Route(o.at, dst, "", "none"))
        if o.end == "lost":
            peer = ctx.wiring.peer.get((o.at, o.port))
            down = _link_down(ctx, o.at, o.port)
            nxt = _route(ctx, peer[0], rk) if peer else None
            why = ""
            if down:
                why = f" ({down} is down)"
            elif peer and nxt is not None and nxt.kind == "none":
                why = (f": {peer[0]}'s forward table has no route for {nxt.address or dst} that a packet from "
                       f"any port would hit")
            elif peer:
                why = (f": dropped on the link or by a flow at {peer[0]} before its forward-table decision "
                       f"(ingress, another app's table, or a route scoped by in_port {peer[1]})")
            text = (f"{o.at} sent a copy out of {ctx.wiring.describe_port(o.at, o.port)} "
                    f"({where.where(o.port)}); {peer[0] + ' never forwarded it' if peer else 'it never arrived'}"
                    + why)
            add(BLACK_HOLE, pair, o.at, o.port, text, _partial(o), group=_gid(where),
                         bucket=_bucket(where, o.port))
        elif o.end == "hairpin":
            text = (f"{o.at} {where.where(o.port)} sends traffic to {dst} back out of port {o.port}, the port it "
                    f"came in on; a switch never outputs to the in port, so traffic sent that way is dropped")
            add(BLACK_HOLE, pair, o.at, o.port, text, _partial(o), group=_gid(where),
                         bucket=_bucket(where, o.port))
        elif o.end == "edge":
            text = (f"{o.at} {where.where(o.port)} outputs to {ctx.wiring.describe_port(o.at, o.port)}, "
                    f"not a fabric link: traffic to {dst} taking it is dropped or leaks (the probe was not sent there)")
            add(BLACK_HOLE, pair, o.at, o.port, text, _partial(o), group=_gid(where),
                         bucket=_bucket(where, o.port))
        elif o.end == "no_route":
            route = _route(ctx, o.at, rk)
            why = "group %#010x does not exist" % route.group_id if route and route.kind == "missing_group" \
                else "no live next hop" if route and route.next_hops else "no route"
            add(BLACK_HOLE, pair, o.at, None, f"{o.at} drops traffic to {dst}: {why}", _partial(o),
                         group=_gid(route))
        elif o.end == "silent":
            add(BLACK_HOLE, pair, src, None, f"no report from the source {src}: the probe was not "
                         f"launched or its reports were lost (switch disconnected or rate-limited)")
    # loops: copies whose hop limit ran out
    for o in outs:
        if o.end != "expired":
            continue
        sws = o.switches
        cycle = _cycle(sws)
        dev = _deviation(ctx, o.hops, dst)
        sw, port = dev if dev else (o.at, None)
        where = _route(ctx, sw, rk) if dev else None
        if cycle:
            text = (f"hop limit {probe.hop_budget} spent: cycle {'>'.join(cycle)}"
                    + (f", entered by {sw} {where.where(port) if where else ''} out of "
                       f"{ctx.wiring.describe_port(sw, port)}" if dev else ""))
        else:
            text = f"hop limit {probe.hop_budget} spent after {len(sws)} switches without reaching {dst}"
        add(LOOP, pair, sw, port, text, ">".join(sws), group=_gid(where), bucket=_bucket(where, port))
    # extra delivered paths: longer than the shortest (suboptimal) or not in the design
    for p in sorted(delivered - exp_set, key=str):
        hops3 = tuple((s, 0, o) for s, o in p.hops)
        dev = _deviation(ctx, hops3, dst)
        sw, port = dev if dev else (p.hops[0][0], p.hops[0][1])
        where = _route(ctx, sw, rk)
        revisit = len(set(p.switches)) != len(p.switches)
        if shortest is not None and p.length > shortest:
            text = (f"{p.length} hops instead of {shortest}: {sw} {where.where(port) if where else ''} sends "
                    f"traffic to {dst} out of {ctx.wiring.describe_port(sw, port)}, away from the shortest paths"
                    + (" (the path visits a switch twice)" if revisit else ""))
            add(SUBOPTIMAL, pair, sw, port, text, str(p), group=_gid(where), bucket=_bucket(where, port))
        else:
            add(UNEXPECTED, pair, sw, port, f"equal-length path not in the design via {sw} "
                         f"{ctx.wiring.describe_port(sw, port)}", str(p), group=_gid(where),
                         bucket=_bucket(where, port))
    # expected members that were not delivered: find where the expected path broke off
    for p in sorted(exp_set - delivered, key=str):
        node = root_of(probe, nodes)
        for i, (sw, port) in enumerate(p.hops):
            recs = nodes.get(node)
            if not recs:
                break  # an earlier problem (reported above) starved this switch
            if (FWD, port) in recs:
                nxt = ctx.wiring.peer[(sw, port)]
                child = (nxt[0], nxt[1], node[2] + 1)
                if child not in nodes:
                    break  # black hole, reported above
                node = child
                continue
            if any(k in (NOROUTE, EXPIRE) for k, _ in recs):
                break
            route = _route(ctx, sw, rk)
            intended = ctx.intended.get(sw, {}).get(dst, ())
            down = next((d for d in (_link_down(ctx, s2, p2) for s2, p2 in p.hops[i:]) if d), None)
            nh = route.hop_of(port) if route else None
            if down:
                how = f"its {route.where(port)} is not live" if nh is not None and not nh.live else \
                    "the fabric routes around it"
                cause, text = "link_down", (f"{sw} does not use {ctx.wiring.describe_port(sw, port)} towards "
                                            f"{dst}: {down} on this path is down; {how}")
            elif nh is not None and not nh.live:
                cause, text = "bucket_inactive", (f"{sw} {route.where(port)} for port {port} is never used: "
                                                  f"{'its weight is 0' if nh.weight == 0 else 'watch_port down'}")
            elif port in intended:
                holds = "has no bucket for" if route and route.kind == "group" else "does not send to"
                cause, text = "bucket_removed", (
                    f"{sw} {route.where() if route else 'route'} {holds} "
                    f"{ctx.wiring.describe_port(sw, port)}; the fabric intends ports "
                    f"{','.join(map(str, intended))}, the switch holds "
                    f"{','.join(map(str, route.live_ports)) if route else 'nothing'}")
            else:
                cause, text = "not_intended", (f"{sw} does not use {ctx.wiring.describe_port(sw, port)} "
                                               f"(not in the fabric's intended ECMP set either)")
            add(MISSING, pair, sw, port, text, str(p), group=_gid(route), cause=cause)
            break
        else:
            if node is not None and node in nodes and (ARRIVE, 0) not in nodes[node]:
                add(BLACK_HOLE, pair, dst, None, f"copies reached {dst} but it did not report "
                             f"their arrival", str(p))
    mda = mda_cost(expected)
    return {"src": src, "dst": dst, "family": fam, "probe_id": probe.probe_id, "hop_budget": probe.hop_budget,
            "launched": probe.launched,
            "expected": [str(p) for p in expected], "observed": sorted(str(p) for p in delivered),
            "shortest_hops": shortest,
            "outcomes": {e: sum(1 for o in outs if o.end == e)
                         for e in ("delivered", "expired", "lost", "hairpin", "edge", "no_route", "silent")},
            "truncated": truncated or probe.capped,
            "copies": probe.forwarded, "reports": probe.received, "duplicates": probe.duplicates,
            "mda_probes": mda["all_hops"], "mda_branching_probes": mda["branching_hops"]}


def _partial(o: Outcome) -> str:
    hops = ">".join(f"{s}:{out}" for s, _, out in o.hops)
    tail = f"{o.at}:{o.port}" if o.port is not None else o.at
    return (hops + ">" if hops else "") + tail + ("!" if o.end in ("lost", "hairpin", "edge", "no_route") else "")


def _cycle(sws: tuple[str, ...]) -> list[str] | None:
    seen: dict[str, int] = {}
    for i, s in enumerate(sws):
        if s in seen:
            return list(sws[seen[s]:i + 1])
        seen[s] = i
    return None


def _gid(route: Route | None) -> str | None:
    return None if route is None or route.group_id is None else f"{route.group_id:#010x}"


def _bucket(route: Route | None, port: int | None) -> int | None:
    if route is None or port is None:
        return None
    nh = route.hop_of(port)
    return None if nh is None else nh.bucket


def symmetry(pairs: dict[tuple[str, str], dict], findings: Findings) -> None:
    """Flag pairs whose two directions took different switch sequences."""
    for (a, b, fam), fwd in pairs.items():
        if a > b or (b, a, fam) not in pairs:
            continue
        rev = pairs[(b, a, fam)]
        if not (fwd["launched"] and rev["launched"]):
            continue
        f_set = {_seq(p) for p in fwd["observed"]}
        r_set = {tuple(reversed(_seq(p))) for p in rev["observed"]}
        e_f = {_seq(p) for p in fwd["expected"]}
        e_r = {tuple(reversed(_seq(p))) for p in rev["expected"]}
        if f_set != r_set and e_f == e_r:
            only_f = sorted(">".join(s) for s in f_set - r_set)
            only_r = sorted(">".join(reversed(s)) for s in r_set - f_set)
            text = (f"{a}->{b} and {b}->{a} use different paths: "
                    + (f"only {a}->{b}: {', '.join(only_f)}" if only_f else "")
                    + ("; " if only_f and only_r else "")
                    + (f"only {b}->{a}: {', '.join(only_r)}" if only_r else ""))
            findings.add(ASYMMETRIC, (a, b), None, None, text, family=fam, only_forward=only_f,
                         only_reverse=only_r)


def _seq(path_text: str) -> tuple[str, ...]:
    return tuple(part.split(":")[0] for part in path_text.split(">"))


def analyze(probes: list[ProbeResult], ctx: Context) -> dict:
    """Classify every probe; returns ``{"pairs": [...], "findings": [...], "totals": {...}}``."""
    findings = Findings()
    pairs: dict[tuple[str, str, str], dict] = {}
    for probe in probes:
        pairs[(probe.src, probe.dst, f"ipv{probe.family}")] = analyze_pair(probe, ctx, findings)
    symmetry(pairs, findings)
    flist = findings.list()
    by_pair: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for f in flist:
        a, b = f["pair"]
        by_pair[(a, b, f["family"])].append(f["class"])
        if f["class"] == ASYMMETRIC:
            by_pair[(b, a, f["family"])].append(f["class"])
    for key, summary in pairs.items():
        classes = sorted(set(by_pair.get(key, [])))
        summary["findings"] = classes
        summary["verdict"] = "not_launched" if not summary["launched"] else "ok" if not classes else "fault"
    totals = {"pairs": len(pairs), "ok": sum(1 for p in pairs.values() if p["verdict"] == "ok"),
              "faulty": sum(1 for p in pairs.values() if p["verdict"] == "fault"),
              "not_launched": sum(1 for p in pairs.values() if p["verdict"] == "not_launched"),
              "probes": sum(1 for p in probes if p.launched),
              "copies": sum(p.forwarded for p in probes),
              "reports": sum(p.received for p in probes),
              "duplicates": sum(p.duplicates for p in probes),
              "expected_paths": sum(len(p["expected"]) for p in pairs.values()),
              "observed_paths": sum(len(p["observed"]) for p in pairs.values()),
              "mda_probes": sum(p["mda_probes"] for p in pairs.values()),
              "mda_branching_probes": sum(p["mda_branching_probes"] for p in pairs.values()),
              "findings": {c: sum(1 for f in flist if f["class"] == c) for c in FINDING_ORDER}}
    launched = totals["probes"] or 1
    totals["mda_ratio"] = round(totals["mda_probes"] / launched, 1)
    return {"pairs": sorted(pairs.values(), key=lambda p: (p["src"], p["dst"], p["family"])), "findings": flist,
            "totals": totals}


# --- the readable table ------------------------------------------------------------------


def render_table(report: dict) -> str:
    """The human form of a verification report."""
    t = report.get("totals", {})
    tm = report.get("timing", {})
    lines = [f"ECMP verification #{report.get('id', '?')} of {report.get('topology', '?')}: "
             f"{t.get('pairs', 0)} leaf pairs x families, {t.get('ok', 0)} ok, {t.get('faulty', 0)} with findings  "
             f"(hop budget {report.get('hop_budget', '?')}; {t.get('probes', 0)} probes, "
             f"{t.get('copies', 0)} copies, {t.get('reports', 0)} reports in {tm.get('total_s', 0):.2f} s; "
             f"MDA would need {t.get('mda_probes', 0)} probes)"]
    rows = [("pair", "verdict", "expected", "observed", "copies", "findings")]
    for p in report.get("pairs", []):
        rows.append((f"{p['src']}->{p['dst']} {p.get('family', '')}".rstrip(), p["verdict"], str(len(p["expected"])), str(len(p["observed"])),
                     str(p["copies"]), ",".join(p["findings"]) or "-"))
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    findings = report.get("findings", [])
    if findings:
        lines.append("findings:")
        for f in findings:
            where = f" {f['switch']}" + (f" port {f['port']}" if f.get("port") is not None else "") \
                if f.get("switch") else ""
            grp = f" group {f['group']}" if f.get("group") else ""
            bkt = f" bucket {f['bucket']}" if f.get("bucket") is not None else ""
            arrow = "<->" if f["class"] == ASYMMETRIC else "->"
            head = f"{arrow.join(f['pair'])}{' ' + f['family'] if f.get('family') else ''}{where}{grp}{bkt}"
            lines.append(f"  {f['class'].upper():<16} {head}: {f['detail']}")
            for path in f.get("paths", [])[:3]:
                lines.append(f"  {'':<16}   path {path}")
            if len(f.get("paths", [])) > 3:
                lines.append(f"  {'':<16}   ... {len(f['paths']) - 3} more paths")
    else:
        lines.append("findings: none; every leaf pair took exactly the expected ECMP paths")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
