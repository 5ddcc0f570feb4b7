"""OAM ECMP desired state (pure): probe twins of the flows read from the switches, mirror groups,
the report meter, hop-limit expiry; and the routes the fabric intends."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import INGRESS, PIPELINE
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.view import FabricView
from ryu_apps.functions.fabric.flows import next_hop_group_ids, next_hops
from ryu_apps.functions.fabric.intent import FabricIntent
from ryu_apps.functions.oam_ecmp import model
from ryu_apps.functions.oam_ecmp.intent import OamIntent
from ryu_apps.openflow.ofdata import (
    Bucket,
    DecTtl,
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    MeterBand,
    Output,
    SetField,
)

APP = "oam_ecmp"

# cookie kinds (1-4 were the SID-steered replicate flows of the first design; not reused)
K_EXPIRE = 5   # ingress: a probe's hop limit is spent
K_METER = 6    # the OAM meter (metadata)
K_TWIN = 7     # forward: a probe twin of a flow read from the switch
K_MIRROR = 8   # a mirror group of a group read from the switch (metadata)

# priorities
P_EXPIRE = 3800    # ingress band 3000-3999: before any other app's or the fabric's ingress flow

OAM_METER = 0x6E0A  # meter id (below OVS's meter limit, above the fabric's 0x100 + port)
REPORT_BYTES = 128  # max_len of every copy to the controller
HISTORY = 20        # verification reports kept


def intended_routes(view: FabricView, leaves: list[str], fabric: FabricIntent | None
                    ) -> tuple[dict[str, dict[str, model.Route]], dict[str, dict[str, tuple[int, ...]]]]:
    """What the fabric intends on every switch for every leaf (the routes compute_fabric makes).

    Routes are keyed ``model.route_key(leaf, family)`` (one per address family the leaf has);
    the intended ports are keyed by leaf."""
    graph = view.graph()
    topo = view.topology
    dist = model.distances(graph, leaves)
    ecmp = fabric.ecmp if fabric is not None else True
    routes: dict[str, dict[str, model.Route]] = {}
    ports: dict[str, dict[str, tuple[int, ...]]] = {}
    eps = {d: model.endpoints(topo, d) for d in leaves}
    gids = next_hop_group_ids(topo)
    for sw in topo.switches:
        routes[sw], ports[sw] = {}, {}
        for d in leaves:
            if d == sw:
                continue
            hops = next_hops(graph, sw, d, dist[d]) if d in dist and sw in graph else []
            if hops and not ecmp:
                hops = hops[:1]
            ports[sw][d] = tuple(hops)
            for fam, ep in eps[d].items():
                key, addr = model.route_key(d, fam), ep.address
                # the fabric routes through its next-hop group towards d (no bucket: no path now)
                routes[sw][key] = model.Route(sw, d, addr, "group", group_id=gids[d], group_type="select",
                                              source="intended",
                                              next_hops=tuple(model.NextHop(p, i, True, 1) for i, p in enumerate(hops)))
    return routes, ports


def all_pairs(leaves: list[str]) -> list[tuple[str, str]]:
    """Every ordered leaf pair, interleaved: each round every leaf sends one probe and receives one,
    so a paced launch spreads the reports over the switches instead of bursting at one leaf."""
    n = len(leaves)
    return [(leaves[i], leaves[(i + k) % n]) for k in range(1, n) for i in range(n)]


@dataclass(frozen=True)
class ReadTables:
    """What one switch held when a verification read it: its flows (every table, other apps' only)
    and its groups (other apps'), exactly as decoded."""

    flows: tuple[Flow, ...]
    groups: dict[int, Group]


#: tables whose flows get probe twins (where the pipeline allows them): forward, and the function apps'
#: own tables, so a probe that another app's table outputs directly is copied and reported, never delivered
TWIN_TABLES = frozenset(t.table_id for t in PIPELINE if APP in t.twins)
PROBE_FIELDS = {"ip_proto": model.IPPROTO_UDP, "udp_src": model.OAM_UDP_PORT, "udp_dst": model.OAM_UDP_PORT}
_PASS_ACTIONS = (SetField, DecTtl)  # kept in a twin as they are (they change the copy like the data packet)


def _report(kind: int, port: int = 0) -> tuple:
    return (SetField("eth_dst", model.marker_mac(kind, port)), Output.controller(REPORT_BYTES))


def _twin_match(match: Match, family: int) -> Match | None:
    """``match`` narrowed to probes of ``family``; None if no probe of that family can match it."""
    eth = model.ETH_IP if family == 4 else model.ETH_IPV6
    fields = {n: (v, mk) for n, v, mk in match.fields}
    want = {"eth_type": eth, **PROBE_FIELDS}
    for n, v in want.items():
        if n in fields:
            have, mk = fields[n]
            if (have if mk is None else have & mk) != (v if mk is None else v & mk):
                return None
        fields[n] = (v, None)
    try:
        return Match(**{n: v if mk is None else (v, mk) for n, (v, mk) in fields.items()})
    except ValueError:  # e.g. an IPv4 field in an IPv6 twin
        return None


def _host_kind(match: Match, sw: str, port: int, host_addrs) -> int:
    """A probe output to a host port has arrived if the flow matched that host's address, else it is an edge."""
    addrs = host_addrs.get((sw, port), ())
    for n, v, mk in match.fields:
        if n in ("ipv4_dst", "ipv6_dst"):
            version, bits = (4, 32) if n == "ipv4_dst" else (6, 128)
            value = int(ipaddress.ip_address(v)) if isinstance(v, str) else v
            mask = (1 << bits) - 1 if mk is None else int(ipaddress.ip_address(mk)) if isinstance(mk, str) else mk
            hit = any(a.version == version and int(a) & mask == value & mask for a in addrs)
            return model.ARRIVE if hit else model.EDGE
    return model.EDGE


def twin_actions(sw: str, match: Match, actions: tuple, wiring: model.Wiring, host_addrs,
                 mirror: Callable[[int], int | None]) -> tuple | None:
    """What a probe does where the data packet would apply ``actions``: the same outputs on fabric
    links, every other output reported instead of taken, groups replaced by their mirror;
    None if the actions cannot be followed (the probe then reports an edge and stops)."""
    out: list = [DecTtl()]
    reports: list[tuple[int, int]] = []
    for a in actions:
        if isinstance(a, Output):
            if (sw, a.port) in wiring.peer:
                out.append(Output(a.port))
                reports.append((model.FWD, a.port))
            elif (sw, a.port) in wiring.hosts:
                kind = _host_kind(match, sw, a.port, host_addrs)
                reports.append((kind, 0 if kind == model.ARRIVE else a.port))
            else:
                reports.append((model.EDGE, a.port))
        elif isinstance(a, GroupAction):
            gid = mirror(a.group_id)
            if gid is None:
                return None
            out.append(GroupAction(gid))
        elif isinstance(a, _PASS_ACTIONS):
            out.append(a)
        else:
            return None
    for kind, port in reports:
        out.extend(_report(kind, port))
    return tuple(out)


def mirror_group(sw: str, group: Group, groups: dict[int, Group], wiring: model.Wiring, host_addrs,
                 down: frozenset, gid: int, cookie: int) -> Group:
    """An ``all`` group with, per bucket the switch can pick now (weight > 0 for select, watch_port
    live, the first live one for fast failover), one copy per fabric output and a report per copy."""
    if group.type == "select":
        usable = [b for b in group.buckets if b.weight and (sw, b.watch_port) not in down]
    elif group.type == "ff":
        usable = [b for b in group.buckets if (sw, b.watch_port) not in down][:1]
    else:
        usable = list(group.buckets)
    buckets: list[Bucket] = []
    for b in usable:
        keep = tuple(a for a in b.actions if isinstance(a, _PASS_ACTIONS))
        for a in b.actions:
            if isinstance(a, Output) and (sw, a.port) in wiring.peer:
                buckets.append(Bucket(actions=keep + (Output(a.port),)))
                buckets.append(Bucket(actions=_report(model.FWD, a.port)))
            elif isinstance(a, Output):
                kind = model.EDGE  # a select bucket towards a host or nowhere is never a delivery
                buckets.append(Bucket(actions=_report(kind, a.port)))
            elif not isinstance(a, _PASS_ACTIONS):  # nested groups and the like: not followed, said so
                buckets.append(Bucket(actions=_report(model.EDGE, 0xFFFFFF)))
    return Group(group_id=gid, type="all", buckets=tuple(buckets), cookie=cookie)


def compute_oam(view: FabricView, plan: model.SidPlan, leaves: list[str], tables: dict[str, ReadTables] | None,
                intent: OamIntent) -> dict[str, SwitchState]:
    """Desired OAM state of every switch (pure): hop-limit reports at ingress; in the forward table a
    probe twin one priority above every flow read from the switch, and mirror groups of its groups."""
    topo = view.topology
    wiring = model.Wiring.of(topo)
    host_addrs = {(h.switch, h.port): tuple(h.addresses) for h in topo.hosts.values()}
    states = {}
    meter = Meter(meter_id=OAM_METER, unit="pktps",
                  bands=(MeterBand(rate=intent.switch_rate, burst_size=intent.switch_rate),),
                  cookie=cookies.make(APP, K_METER, 0))
    for sw in topo.switches:
        st = SwitchState()
        states[sw] = st
        st.add_meter(meter)
        # -- ingress: a probe whose hop limit is spent is reported and dropped (before any dec_ttl)
        expire = cookies.make(APP, K_EXPIRE, sw)
        st.label(expire, f"OAM: probe hop limit spent on {sw} (report, drop)")
        for eth in (model.ETH_IP, model.ETH_IPV6):
            for ttl in (0, 1):
                st.add_flow(Flow(table=INGRESS, priority=P_EXPIRE, cookie=expire, meter=OAM_METER,
                                 match=Match(eth_type=eth, nw_ttl=ttl, **PROBE_FIELDS),
                                 actions=_report(model.EXPIRE)))
        read = (tables or {}).get(sw)
        if read is None:
            continue
        # -- forward: twins of what the switch holds
        mirrors: dict[int, int] = {}
        taken: set[int] = set()
        gcookie = cookies.make(APP, K_MIRROR, sw)

        def mirror(gid: int, sw=sw, read=read, mirrors=mirrors, taken=taken, st=st, gcookie=gcookie) -> int | None:
            if gid in mirrors:
                return mirrors[gid]
            group = read.groups.get(gid)
            if group is None:
                return None
            mid = cookies.app_id(APP) << 24 | (gid & 0xFFFFFF)
            while mid in taken:
                mid = cookies.app_id(APP) << 24 | ((mid + 1) & 0xFFFFFF)
            taken.add(mid)
            mirrors[gid] = mid
            st.add_group(mirror_group(sw, group, read.groups, wiring, host_addrs, view.down_ports, mid, gcookie))
            return mid

        keys = {(f.table, f.priority, f.match) for f in read.flows}
        for flow in sorted(read.flows, key=lambda f: (f.table, -f.priority, str(f.match))):
            if flow.table not in TWIN_TABLES or flow.priority >= 0xFFFF or flow.priority == 0:
                continue
            if not any(isinstance(a, (Output, GroupAction)) for a in flow.actions):
                continue  # a drop or a goto: the probe meets it like the data packet
            c = cookies.make(APP, K_TWIN, f"{sw}:{flow.table}:{flow.priority}:{flow.match}")
            for fam in (4, 6):
                match = _twin_match(flow.match, fam)
                if match is None or (flow.table, flow.priority + 1, match) in keys:
                    continue
                acts = twin_actions(sw, flow.match, flow.actions, wiring, host_addrs, mirror) \
                    if flow.goto is None else None
                if acts is None:
                    acts = (DecTtl(),) + _report(model.EDGE, 0xFFFFFF)
                st.add_flow(Flow(table=flow.table, priority=flow.priority + 1, cookie=c, meter=OAM_METER,
                                 match=match, actions=acts))
                st.label(c, f"OAM: probe twin of {sw} table {flow.table} priority {flow.priority} {flow.match}")
    return states


# --- the app ------------------------------------------------------------------------------
