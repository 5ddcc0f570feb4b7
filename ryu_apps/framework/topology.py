"""Lab topology: the YAML file, its validation, and the graph the apps compute on.

One file describes a lab and the controller's view of it::

    lab: {name: diamond, prefix: dm}
    switches:
      s1: {dpid: 1}
      s2: {dpid: 2}
    hosts:
      h1: {mac: "02:00:00:00:00:01", ipv4: 10.0.0.1/24, ipv6: "fd00::1/64"}
    links:
      - [h1, s1]                 # host link; ports are numbered in file order
      - [s1, s2]
      - {a: s2, b: s3, a_port: 7, b_port: 7}
    apps:
      fabric: {}

Every switch port gets a fixed OpenFlow port number (``ofport_request``), so
the controller knows the wiring from the file alone and a flow dump reads the
same in every run.  Names that end up as Linux interface names are checked
against the kernel's 15-character limit here, not when ``ip link`` fails.

``TopologyError`` messages always read ``FILE: KEY: what is wrong``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import networkx as nx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

IFNAMSIZ = 15
NAME_RE = r"^[a-z][a-z0-9_]*$"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class TopologyError(ValueError):
    """The topology file is invalid; the message names the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabSpec(_Strict):
    name: str = Field(pattern=NAME_RE, max_length=32)
    prefix: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9]{0,3}$")
    datapath: Literal["auto", "netdev", "system"] = "auto"


class ControllerSpec(_Strict):
    of_port: int = Field(default=6653, ge=1, le=65535)
    rest_port: int = Field(default=8080, ge=1, le=65535)
    # OVS controller_rate_limit / burst: packet-ins per second the switch lets through.
    rate_limit: int = Field(default=1000, ge=100)
    burst_limit: int = Field(default=100, ge=25)
    # packet-ins per second the controller handles per switch (--fabric-packet-in-rate; the lab
    # passes it): None leaves the controller's default
    packet_in_rate: int | None = Field(default=None, ge=10, le=1000000)
    # seconds a switch may be without a control channel before its data plane is taken for
    # dead too (unless BFD on one of its links says it still forwards); see README, "Liveness"
    switch_hold_down: float = Field(default=3.0, ge=0.5, le=3600)
    # every switch is re-read this often (spread over the interval) and drift repaired; 0: never
    audit_interval: float = Field(default=30.0, ge=0, le=86400)
    # a controller cluster (README, "Controller cluster"): this many instances, intent and
    # learned state in etcd, one master per switch; 1 and local: one controller, the state dir
    replicas: int = Field(default=1, ge=1, le=7)
    store: Literal["local", "etcd"] = "local"
    # seconds a dead instance keeps its switches before another takes them over
    lease_ttl: int = Field(default=2, ge=1, le=60)
    # the lab's etcd members (store: etcd) listen on 127.0.0.1:etcd_port + 2i (peers: + 2i + 1);
    # instance i of the cluster on of_port + i and rest_port + i
    etcd_port: int = Field(default=23790, ge=1, le=65000)
    etcd_members: int = Field(default=3, ge=1, le=7)

    @model_validator(mode="after")
    def _cluster(self):
        if self.replicas > 1 and self.store != "etcd":
            raise ValueError(f"replicas: {self.replicas} needs store: etcd (the instances share their state there)")
        return self


class SwitchSpec(_Strict):
    dpid: int = Field(ge=1, lt=1 << 48)
    node: str | None = None


#: what the lab can run in a host's namespace beside the host's own traffic
HOST_SERVICES = ("proxy-agent",)


class HostSpec(_Strict):
    mac: str
    ipv4: str | None = None
    ipv6: str | None = None
    gateway4: str | None = None
    gateway6: str | None = None
    #: services the lab starts in the host's namespace (``proxy-agent``: a node that may be
    #: declared a proxy later; the lab starts it by itself on every proxy the file declares)
    services: list[Literal[HOST_SERVICES]] = []  # type: ignore[valid-type]

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        v = v.lower()
        if not MAC_RE.match(v):
            raise ValueError(f"{v!r} is not a MAC address like 02:00:00:00:00:01")
        if int(v[:2], 16) & 1:
            raise ValueError(f"{v} is a multicast MAC; hosts need a unicast MAC")
        return v

    @field_validator("ipv4")
    @classmethod
    def _ipv4(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            iface = ipaddress.IPv4Interface(v)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IPv4 address with prefix (10.0.0.1/24): {exc}") from None
        if "/" not in v:
            raise ValueError(f"{v!r} needs a prefix length, e.g. {v}/24")
        return str(iface)

    @field_validator("ipv6")
    @classmethod
    def _ipv6(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            iface = ipaddress.IPv6Interface(v)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IPv6 address with prefix (fd00::1/64): {exc}") from None
        if "/" not in v:
            raise ValueError(f"{v!r} needs a prefix length, e.g. {v}/64")
        return str(iface)

    @field_validator("gateway4")
    @classmethod
    def _gw4(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.IPv4Address(v))

    @field_validator("gateway6")
    @classmethod
    def _gw6(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.IPv6Address(v))


class NodeSpec(_Strict):
    """A namespace running its own OVS instance (for real tunnels)."""

    underlay_ip: str

    @field_validator("underlay_ip")
    @classmethod
    def _uip(cls, v: str) -> str:
        if "/" not in v:
            raise ValueError(f"{v!r} needs a prefix length, e.g. {v}/24")
        return str(ipaddress.IPv4Interface(v))


class LinkSpec(_Strict):
    a: str
    b: str
    a_port: int | None = Field(default=None, ge=1, le=0xFEFF)
    b_port: int | None = Field(default=None, ge=1, le=0xFEFF)
    # BFD on both ends of a switch-to-switch link (ms): the link is up only while the far
    # switch's data plane answers, whatever its control channel does (see README, "Liveness")
    bfd_ms: int | None = Field(default=None, ge=10, le=10000)


class TunnelSpec(_Strict):
    a: str
    b: str
    type: Literal["vxlan", "geneve"] = "vxlan"
    # a fixed VNI, or "flow": the tunnel id is set per packet by flows (set_field:..->tun_id)
    # and matched as tun_id on receipt (OVS options:key=flow)
    key: int | Literal["flow"] = 0
    a_port: int | None = Field(default=None, ge=1, le=0xFEFF)
    b_port: int | None = Field(default=None, ge=1, le=0xFEFF)
    # BFD on both tunnel ports (min_tx = min_rx = this many ms): a port stops being LIVE
    # (OpenFlow port state, fast-failover watch_port) when its peer stops answering
    bfd_ms: int | None = Field(default=None, ge=10, le=10000)

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, v: Any) -> Any:
        if v == "flow":
            return v
        if isinstance(v, str) and v.strip().isdigit():  # as pydantic's lax int parsing did before
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 24:
            raise ValueError(f"{v!r} is not a tunnel key: use a VNI 0..{(1 << 24) - 1} or \"flow\"")
        return v


class TopologySpec(_Strict):
    lab: LabSpec
    controller: ControllerSpec = ControllerSpec()
    switches: dict[str, SwitchSpec]
    hosts: dict[str, HostSpec] = {}
    nodes: dict[str, NodeSpec] = {}
    links: list[LinkSpec] = []
    tunnels: list[TunnelSpec] = []
    apps: dict[str, dict[str, Any] | None] = {"fabric": {}}

    @field_validator("links", mode="before")
    @classmethod
    def _link_shorthand(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for item in v:
            if isinstance(item, (list, tuple)):
                if len(item) != 2:
                    raise ValueError(f"a link is a pair [a, b], got {item!r}")
                out.append({"a": item[0], "b": item[1]})
            else:
                out.append(item)
        return out

    @field_validator("switches", "hosts", "nodes")
    @classmethod
    def _names(cls, v: dict) -> dict:
        for name in v:
            if not re.match(NAME_RE, name):
                raise ValueError(f"name {name!r} must match {NAME_RE}")
        return v


# ---------------------------------------------------------------------------
# The finalized, read-only topology the lab builder and the apps use.


@dataclass(frozen=True)
class Switch:
    name: str
    dpid: int
    bridge: str
    node: str | None  # None: the lab's root OVS sandbox


@dataclass(frozen=True)
class Host:
    name: str
    mac: str
    ipv4: ipaddress.IPv4Interface | None
    ipv6: ipaddress.IPv6Interface | None
    gateway4: ipaddress.IPv4Address | None
    gateway6: ipaddress.IPv6Address | None
    switch: str
    port: int
    netns: str
    services: tuple[str, ...] = ()

    @property
    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [i.ip for i in (self.ipv4, self.ipv6) if i is not None]


@dataclass(frozen=True)
class Node:
    name: str
    netns: str
    underlay_ip: ipaddress.IPv4Interface


@dataclass(frozen=True)
class Link:
    """A switch-to-switch link: a veth pair, or a tunnel between two nodes."""

    a: str
    a_port: int
    b: str
    b_port: int
    kind: str = "veth"  # veth | vxlan | geneve
    key: int | str = 0  # a fixed VNI, or "flow" (set and matched per packet as tun_id)
    bfd_ms: int | None = None  # BFD interval on both ports (ms), None: no BFD

    @property
    def name(self) -> str:
        return f"{self.a}:{self.a_port}-{self.b}:{self.b_port}"


@dataclass(frozen=True)
class PortInfo:
    """One switch port and what is on its far side."""

    switch: str
    port: int
    ifname: str
    peer: str  # a host or switch name
    peer_port: int | None  # far-side switch port; None for a host
    kind: str  # host | veth | vxlan | geneve


@dataclass
class Topology:
    """A validated lab topology.  Build with :func:`load` or :func:`from_dict`."""

    spec: TopologySpec
    source: str
    prefix: str
    switches: dict[str, Switch]
    hosts: dict[str, Host]
    nodes: dict[str, Node]
    links: list[Link]
    ports: dict[tuple[str, int], PortInfo]
    host_links: list[tuple[str, str, int]] = field(default_factory=list)  # (host, switch, port)

    @property
    def name(self) -> str:
        return self.spec.lab.name

    @property
    def apps(self) -> dict[str, dict[str, Any]]:
        return {k: (v or {}) for k, v in self.spec.apps.items()}

    def switch_by_dpid(self, dpid: int) -> Switch | None:
        for sw in self.switches.values():
            if sw.dpid == dpid:
                return sw
        return None

    def switch_ports(self, switch: str) -> list[PortInfo]:
        return sorted((p for (s, _), p in self.ports.items() if s == switch), key=lambda p: p.port)

    @functools.cached_property
    def bfd_links(self) -> tuple[Link, ...]:
        """Switch-to-switch links (veth or tunnel) that run BFD: up only while LIVE (README,
        "Liveness").  A tunnel's carrier never drops when its underlay dies; BFD is what tells."""
        return tuple(ln for ln in self.links if ln.bfd_ms)

    @functools.cached_property
    def bfd_ports(self) -> frozenset[tuple[str, int]]:
        """Both ends of every link in :attr:`bfd_links`."""
        return frozenset(end for ln in self.bfd_links for end in ((ln.a, ln.a_port), (ln.b, ln.b_port)))

    def link_at(self, switch: str, port: int) -> Link | None:
        """The switch-to-switch link (veth or tunnel) on ``switch``:``port``, if any."""
        for link in self.links:
            if (link.a, link.a_port) == (switch, port) or (link.b, link.b_port) == (switch, port):
                return link
        return None

    def graph(self, down: frozenset[tuple[str, int]] = frozenset()) -> nx.MultiGraph:
        """Switch graph; links with an end in ``down`` ((switch, port) pairs) are left out."""
        g = nx.MultiGraph()
        g.add_nodes_from(self.switches)
        for link in self.links:
            if (link.a, link.a_port) in down or (link.b, link.b_port) in down:
                continue
            g.add_edge(link.a, link.b, key=link.name, ports={link.a: link.a_port, link.b: link.b_port})
        return g


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _error(source: str, key: str, what: str) -> TopologyError:
    return TopologyError(f"{source}: {key}: {what}")


def from_dict(data: Any, source: str = "<topology>") -> Topology:
    """Validate a parsed topology document and finalize it."""
    if not isinstance(data, dict):
        raise _error(source, "(top level)", f"expected a mapping, got {type(data).__name__}")
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise _error(source, _fmt_loc(first["loc"]), msg + more) from None
    return _finalize(spec, source)


def load(path: str | Path) -> Topology:
    """Read, validate and finalize a topology YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        raise TopologyError(f"{path}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return from_dict(data, str(path))


def _finalize(spec: TopologySpec, source: str) -> Topology:
    prefix = spec.lab.prefix or re.sub(r"[^a-z0-9]", "", spec.lab.name)[:4]
    if not prefix or not prefix[0].isalpha():
        prefix = "l" + prefix[:3]

    switches: dict[str, Switch] = {}
    seen_dpid: dict[int, str] = {}
    for name, sw in spec.switches.items():
        if sw.dpid in seen_dpid:
            raise _error(source, f"switches.{name}.dpid", f"dpid {sw.dpid} is already used by {seen_dpid[sw.dpid]}")
        seen_dpid[sw.dpid] = name
        if sw.node is not None and sw.node not in spec.nodes:
            raise _error(source, f"switches.{name}.node", f"unknown node {sw.node!r}")
        bridge = f"{prefix}-{name}"
        if len(bridge) > IFNAMSIZ:
            raise _error(source, f"switches.{name}", f"bridge name {bridge!r} is longer than {IFNAMSIZ} characters")
        switches[name] = Switch(name, sw.dpid, bridge, sw.node)
        if name in spec.hosts or name in spec.nodes:
            raise _error(source, f"switches.{name}", "name is also used by a host or node")
    for name in spec.hosts:
        if name in spec.nodes:
            raise _error(source, f"hosts.{name}", "name is also used by a node")

    nodes = {n: Node(n, f"{prefix}-{n}", ipaddress.IPv4Interface(s.underlay_ip)) for n, s in spec.nodes.items()}
    seen_uip: dict[str, str] = {}
    for n, node in nodes.items():
        ip = str(node.underlay_ip.ip)
        if ip in seen_uip:
            raise _error(source, f"nodes.{n}.underlay_ip", f"{ip} is already used by node {seen_uip[ip]}")
        seen_uip[ip] = n

    used: dict[str, set[int]] = {s: set() for s in switches}
    next_port: dict[str, int] = {s: 1 for s in switches}
    ports: dict[tuple[str, int], PortInfo] = {}

    def take_port(sw: str, wanted: int | None, key: str) -> int:
        if wanted is None:
            while next_port[sw] in used[sw]:
                next_port[sw] += 1
            wanted = next_port[sw]
        elif wanted in used[sw]:
            raise _error(source, key, f"port {wanted} of {sw} is already used")
        used[sw].add(wanted)
        return wanted

    def ifname(sw: str, port: int, key: str) -> str:
        name = f"{prefix}-{sw}-{port}"
        if len(name) > IFNAMSIZ:
            raise _error(source, key, f"interface name {name!r} is longer than {IFNAMSIZ} characters; "
                         "shorten the switch name or the lab prefix")
        return name

    hosts_partial: dict[str, tuple[str, int]] = {}
    links: list[Link] = []
    host_links: list[tuple[str, str, int]] = []
    for i, ln in enumerate(spec.links):
        key = f"links[{i}]"
        a, b = ln.a, ln.b
        for end in (a, b):
            if end not in switches and end not in spec.hosts:
                raise _error(source, key, f"unknown switch or host {end!r}")
        if a in spec.hosts and b in spec.hosts:
            raise _error(source, key, "a link joins a host to a switch or two switches, not two hosts")
        if a == b:
            raise _error(source, key, "a link cannot loop back to the same switch")
        if a in spec.hosts or b in spec.hosts:
            host, sw = (a, b) if a in spec.hosts else (b, a)
            wanted = ln.b_port if b == sw else ln.a_port
            if (ln.a_port if a == host else ln.b_port) is not None:
                raise _error(source, key, f"{host} is a host; only the switch end has a port number")
            if ln.bfd_ms is not None:
                raise _error(source, key, "bfd_ms: BFD runs between switches; a host link has none")
            if host in hosts_partial:
                raise _error(source, key, f"host {host} already has a link; hosts have exactly one")
            port = take_port(sw, wanted, key)
            ports[(sw, port)] = PortInfo(sw, port, ifname(sw, port, key), host, None, "host")
            hosts_partial[host] = (sw, port)
            host_links.append((host, sw, port))
        else:
            pa = take_port(a, ln.a_port, key)
            pb = take_port(b, ln.b_port, key)
            ports[(a, pa)] = PortInfo(a, pa, ifname(a, pa, key), b, pb, "veth")
            ports[(b, pb)] = PortInfo(b, pb, ifname(b, pb, key), a, pa, "veth")
            links.append(Link(a, pa, b, pb, bfd_ms=ln.bfd_ms))

    for i, tn in enumerate(spec.tunnels):
        key = f"tunnels[{i}]"
        for end in (tn.a, tn.b):
            if end not in switches:
                raise _error(source, key, f"unknown switch {end!r}")
        na, nb = switches[tn.a].node, switches[tn.b].node
        if na is None or nb is None:
            raise _error(source, key, "both tunnel ends must be switches on nodes (their own OVS instance)")
        if na == nb:
            raise _error(source, key, f"both ends are on node {na}; a tunnel needs two nodes")
        pa = take_port(tn.a, tn.a_port, key)
        pb = take_port(tn.b, tn.b_port, key)
        ports[(tn.a, pa)] = PortInfo(tn.a, pa, ifname(tn.a, pa, key), tn.b, pb, tn.type)
        ports[(tn.b, pb)] = PortInfo(tn.b, pb, ifname(tn.b, pb, key), tn.a, pa, tn.type)
        links.append(Link(tn.a, pa, tn.b, pb, tn.type, tn.key, tn.bfd_ms))

    hosts: dict[str, Host] = {}
    seen_mac: dict[str, str] = {}
    seen_ip: dict[str, str] = {}
    for name, hs in spec.hosts.items():
        if name not in hosts_partial:
            raise _error(source, f"hosts.{name}", "host has no link; add [host, switch] to links")
        if hs.mac in seen_mac:
            raise _error(source, f"hosts.{name}.mac", f"{hs.mac} is already used by {seen_mac[hs.mac]}")
        seen_mac[hs.mac] = name
        if hs.ipv4 is None and hs.ipv6 is None:
            raise _error(source, f"hosts.{name}", "a host needs ipv4, ipv6 or both")
        v4 = ipaddress.IPv4Interface(hs.ipv4) if hs.ipv4 else None
        v6 = ipaddress.IPv6Interface(hs.ipv6) if hs.ipv6 else None
        for fam, iface in (("ipv4", v4), ("ipv6", v6)):
            if iface is None:
                continue
            ip = str(iface.ip)
            if ip in seen_ip:
                raise _error(source, f"hosts.{name}.{fam}", f"{ip} is already used by {seen_ip[ip]}")
            seen_ip[ip] = name
        gw4 = ipaddress.IPv4Address(hs.gateway4) if hs.gateway4 else None
        gw6 = ipaddress.IPv6Address(hs.gateway6) if hs.gateway6 else None
        if gw4 is not None and (v4 is None or gw4 not in v4.network or gw4 == v4.ip):
            raise _error(source, f"hosts.{name}.gateway4", f"{gw4} must be another address in the host's IPv4 subnet")
        if gw6 is not None and (v6 is None or gw6 not in v6.network or gw6 == v6.ip):
            raise _error(source, f"hosts.{name}.gateway6", f"{gw6} must be another address in the host's IPv6 subnet")
        sw, port = hosts_partial[name]
        hosts[name] = Host(name, hs.mac, v4, v6, gw4, gw6, sw, port, f"{prefix}-{name}", tuple(hs.services))

    for gw_name, gw in (("gateway4", "gateway4"), ("gateway6", "gateway6")):
        for name, h in hosts.items():
            addr = getattr(h, gw)
            if addr is not None and str(addr) in seen_ip:
                raise _error(source, f"hosts.{name}.{gw_name}", f"{addr} is the address of host {seen_ip[str(addr)]}")

    for app in spec.apps:
        if not re.match(NAME_RE, app):
            raise _error(source, f"apps.{app}", f"app name must match {NAME_RE}")

    topo = Topology(spec, source, prefix, switches, hosts, nodes, links, ports, host_links)
    g = topo.graph()
    if len(switches) > 1 and not nx.is_connected(g):
        parts = [sorted(c) for c in nx.connected_components(g)]
        raise _error(source, "links", f"switches are not all connected: islands {parts}")
    return topo
