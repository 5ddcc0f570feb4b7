"""The cloud router's desired flows, groups and meters per switch (pure).

Tables used (see :mod:`ryu_apps.framework.pipeline`): the cloud router band of
``ingress`` (table 0, priorities 4000-4999) and its own table ``nac`` (40).
On every tier switch table 0 sends *every* packet into table 40, tagged with
its direction in the metadata (``UP`` = from clients towards services,
``DOWN`` = back), or drops it: the fabric's own flows on those switches are
never reached, so nothing can take a path around a NAC.

Packet walk, client -> service (``K`` = the client's tunnel key)::

    AP  t0: access port -> meta UP          t40: in_port, eth_src=MAC -> group(uplinks to TDs)
    TD  t0: AP port -> UP                   t40: in_port, eth_src=MAC -> tun_id:=K, group(select FCs)  [VXLAN]
    FC  t0: TD tunnel -> UP                 t40: tun_id=K -> group(ff: the client's NACs in rank order) [Geneve]
    NAC t0: FC tunnel -> UP                 t40: reg0=0, tun_id=K, eth_src=MAC, ipv4_src=IP
                                                 -> meter(K), reg0:=policy, resubmit(,40)
                                            t40: reg0=policy, allowed dst/proto/port
                                                 -> dec_ttl, eth_src:=router, output(uplink)
                                            t40: reg0=policy (anything else) -> drop
    uplink (fabric): route to the service host

and back::

    uplink t0: service host -> client subnet -> t40: ipv4_dst=IP -> dec_ttl, group(ff: the client's NACs)
    NAC t0: uplink port -> DOWN             t40: reg0=0, ipv4_dst=IP -> reg0:=policy, eth_dst:=MAC,
                                                 tun_id:=K, resubmit(,40)
                                            t40: reg0=policy, return traffic of an allowed rule
                                                 -> eth_src:=router, group(select FCs)
    FC  t0: NAC tunnel -> DOWN              t40: tun_id=K -> output(tunnel to the client's TD)
    TD  t0: FC tunnel -> DOWN               t40: tun_id=K -> output(port to the client's AP)
    AP  t0: uplink -> DOWN                  t40: eth_dst=MAC -> output(client's port)

Every NAC holds every client's policy all the time, so whichever NAC a
forwarder picks, the packet meets the client's policy; a forwarder has no flow
that outputs client traffic anywhere but to a NAC.  An unknown key or a
packet no policy allows meets a drop.  A NAC failure changes only the rank
groups at the forwarders and the uplink (their buckets skip failed NACs, and
with BFD on the tunnels the fast-failover buckets skip a dead tunnel in the
data plane before the controller hears of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import INGRESS, NAC
from ryu_apps.framework.state import SwitchState
from ryu_apps.functions.cloud_router.intent import APP, QUARANTINE, CloudRouterIntent, Policy, expand_rule
from ryu_apps.functions.cloud_router.model import (
    Roles,
    nac_order,
    nac_orders,
    order_index,
    policy_ids,
    reverse_match,
)
from ryu_apps.openflow.ofdata import (
    OFPP_CONTROLLER,
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

ETH_IP, ETH_ARP = 0x0800, 0x0806
UP, DOWN, DIR_MASK = 1, 2, 3

# cookie kinds
K_TIER = 1     # a tier switch's static flows (direction tagging, catch-all drop)
K_LOC = 2      # a client's location flows (AP, TD, forwarder downstream): follow the client
K_BIND = 3     # a client's binding to its key and policy (NACs, forwarder upstream, uplink return)
K_POLICY = 4   # one policy's rules at the NACs
K_PUNT = 5     # an access point's "unknown client" punt
K_ARP = 6      # an access point's gateway ARP responder
K_STEER = 7    # a service host's return traffic into the NAC table (uplink switch)
K_GROUP = 8    # groups (metadata only)
K_METER = 9    # meters (metadata only)
KIND_NAMES = {K_TIER: "tier", K_LOC: "location", K_BIND: "binding", K_POLICY: "policy", K_PUNT: "punt",
              K_ARP: "arp", K_STEER: "steer", K_GROUP: "group", K_METER: "meter"}

# priorities: table 0 (band 4000-4999)
P0_DIR = 4900      # per port: direction tag
P0_STEER = 4500    # uplink: service host -> client subnet
P0_ACCESS = 4100   # access point: any other port is an access port
P0_DROP = 4000     # tier switch: anything else is dropped
# table 40 (band 100-9999)
P_ARP = 6000
P_RULE = 5500
P_CLIENT = 5000
P_RULE_DENY = 4000
P_PUNT = 3000

GROUP_BASE = cookies.app_id(APP) << 24
G_AP_UPLINK, G_TD_FCS, G_NAC_RANK, G_NAC_FCS = 1, 2, 3, 4
METER_UP, METER_DOWN = 0x01000000, 0x02000000
PUNT_METER = 1          # the core's packet-in meter
PACKET_IN_BYTES = 256   # the core's max_len for punts


def group_id(kind: int, index: int) -> int:
    return GROUP_BASE | (kind << 16) | index


def cookie(kind: int, obj: int | str = 0) -> int:
    return cookies.make(APP, kind, obj)


@dataclass(frozen=True)
class ClientInfo:
    """One client as the flows need it."""

    mac: str
    key: int
    ipv4: str | None
    policy: str
    name: str | None = None
    location: tuple[str, int] | None = None


@dataclass
class Inputs:
    intent: CloudRouterIntent
    roles: Roles
    router_mac: str
    clients: list[ClientInfo]
    failed_nacs: frozenset = frozenset()
    dead: frozenset = frozenset()            # switches that were connected and went away
    down_ports: frozenset = frozenset()      # (switch, port) down or not LIVE
    service_hosts: tuple = ()                # topology Host objects on the uplink


def arp_reply_actions(ip: str, mac: str) -> tuple:
    return (RegMove("eth_src", "eth_dst", 48), SetField("eth_src", mac), SetField("arp_op", 2),
            RegMove("arp_sha", "arp_tha", 48), SetField("arp_sha", mac),
            RegMove("arp_spa", "arp_tpa", 32), SetField("arp_spa", ip), Output(OFPP_IN_PORT))


def client_rank(mac: str, roles: Roles) -> tuple[str, ...]:
    return nac_order(mac, roles.nacs)


def active_nac(order: tuple[str, ...], failed: frozenset) -> str | None:
    return next((n for n in order if n not in failed), None)


def client_td(loc: tuple[str, int], roles: Roles, down: frozenset) -> tuple[str, int] | None:
    """``(td, td's port to the AP)`` carrying a client at ``loc``: the AP's first live uplink."""
    ap = loc[0]
    ups = roles.ap_uplinks.get(ap)
    if not ups:
        return None
    for ap_port, td, td_port in ups:
        if (ap, ap_port) not in down and (td, td_port) not in down:
            return td, td_port
    return ups[0][1], ups[0][2]


def failed_nacs(roles: Roles, dead: frozenset, down: frozenset) -> frozenset:
    """A NAC has failed when its switch went away, its uplink is down, or no forwarder's tunnel to it is live."""
    out = set()
    for n in roles.nacs:
        if n in dead:
            out.add(n)
        elif (n, roles.nac_up[n]) in down or (roles.uplink, roles.up_nac[n]) in down:
            out.add(n)
        elif all(fc in dead or (fc, roles.fc_nac[fc][n]) in down for fc in roles.fcs if n in roles.fc_nac[fc]):
            out.add(n)
    return frozenset(out)


# ---------------------------------------------------------------------------


def _tier_state(inp: Inputs, states: dict[str, SwitchState]) -> None:
    """Static flows and groups of every tier switch."""
    r, intent = inp.roles, inp.intent

    def direction(sw: str, port: int, d: int) -> Flow:
        return Flow(table=INGRESS, priority=P0_DIR, match=Match(in_port=port), write_metadata=(d, DIR_MASK),
                    goto=NAC, cookie=cookie(K_TIER, sw))

    for sw in r.aps + r.tds + r.fcs + r.nacs:
        st = states[sw]
        c = cookie(K_TIER, sw)
        st.label(c, f"{r.tier_of(sw).replace('_', ' ')} {sw}: direction tags, everything else dropped")
        if sw not in r.aps:
            st.add_flow(Flow(table=INGRESS, priority=P0_DROP, match=Match(), cookie=c))
    for i, ap in enumerate(r.aps):
        st = states[ap]
        c = cookie(K_TIER, ap)
        for ap_port, _, _ in r.ap_uplinks[ap]:
            st.add_flow(direction(ap, ap_port, DOWN))
        st.add_flow(Flow(table=INGRESS, priority=P0_ACCESS, match=Match(), write_metadata=(UP, DIR_MASK),
                         goto=NAC, cookie=c))
        st.add_group(Group(group_id=group_id(G_AP_UPLINK, i), type="ff", cookie=cookie(K_GROUP, f"{ap}:uplinks"),
                           buckets=tuple(Bucket(actions=(Output(p),), watch_port=p)
                                         for p, _, _ in r.ap_uplinks[ap])))
        pc = cookie(K_PUNT, ap)
        st.add_flow(Flow(table=NAC, priority=P_PUNT, match=Match(metadata=(UP, DIR_MASK)), meter=PUNT_METER,
                         actions=(Output(OFPP_CONTROLLER, PACKET_IN_BYTES),), cookie=pc))
        st.label(pc, f"access point {ap}: unknown client or client at a new port -> controller (metered)")
        if intent.client_gateway:
            ac = cookie(K_ARP, ap)
            st.add_flow(Flow(table=NAC, priority=P_ARP, cookie=ac,
                             match=Match(metadata=(UP, DIR_MASK), eth_type=ETH_ARP, arp_op=1,
                                         arp_tpa=intent.client_gateway),
                             actions=arp_reply_actions(intent.client_gateway, inp.router_mac)))
            st.label(ac, f"access point {ap}: ARP {intent.client_gateway} is-at {inp.router_mac}")
    for i, td in enumerate(r.tds):
        st = states[td]
        for pi_port in _ports_to(r, td, r.aps):
            st.add_flow(direction(td, pi_port, UP))
        for fc, port in r.td_fc[td].items():
            st.add_flow(direction(td, port, DOWN))
        live = [(fc, p) for fc, p in sorted(r.td_fc[td].items()) if fc not in inp.dead]
        st.add_group(Group(group_id=group_id(G_TD_FCS, i), type="select", cookie=cookie(K_GROUP, f"{td}:fcs"),
                           buckets=tuple(Bucket(actions=(Output(p),), weight=1, watch_port=p) for _, p in live)))
    for fc in r.fcs:
        st = states[fc]
        for td, port in r.fc_td[fc].items():
            st.add_flow(direction(fc, port, UP))
        for nac, port in r.fc_nac[fc].items():
            st.add_flow(direction(fc, port, DOWN))
        _rank_groups(st, {n: p for n, p in r.fc_nac[fc].items()}, r, inp.failed_nacs, fc)
    for i, nac in enumerate(r.nacs):
        st = states[nac]
        for fc, port in r.nac_fc[nac].items():
            st.add_flow(direction(nac, port, UP))
        st.add_flow(direction(nac, r.nac_up[nac], DOWN))
        live = [(fc, p) for fc, p in sorted(r.nac_fc[nac].items()) if fc not in inp.dead]
        st.add_group(Group(group_id=group_id(G_NAC_FCS, i), type="select", cookie=cookie(K_GROUP, f"{nac}:fcs"),
                           buckets=tuple(Bucket(actions=(Output(p),), weight=1, watch_port=p) for _, p in live)))
    # the uplink: service hosts' traffic to clients goes to the client's NAC
    st = states[r.uplink]
    for h in inp.service_hosts:
        if h.ipv4 is None:
            continue
        c = cookie(K_STEER, h.name)
        st.label(c, f"service {h.name}: traffic to clients -> the client's NAC")
        for net in intent.client_subnets:
            st.add_flow(Flow(table=INGRESS, priority=P0_STEER, cookie=c, goto=NAC,
                             match=Match(in_port=h.port, eth_src=h.mac, eth_type=ETH_IP,
                                         ipv4_src=str(h.ipv4.ip), ipv4_dst=net)))
    _rank_groups(st, dict(r.up_nac), r, inp.failed_nacs, r.uplink)


def _ports_to(r: Roles, td: str, aps: tuple[str, ...]) -> list[int]:
    out = []
    for ap in aps:
        for _, t, tp in r.ap_uplinks[ap]:
            if t == td:
                out.append(tp)
    return sorted(set(out))


def _rank_groups(st: SwitchState, port_of: dict[str, int], r: Roles, failed: frozenset, sw: str) -> None:
    """One fast-failover group per NAC ranking: buckets = the ranking's NACs that have not failed."""
    for idx, order in enumerate(nac_orders(r.nacs)):
        buckets = tuple(Bucket(actions=(Output(port_of[n]),), watch_port=port_of[n])
                        for n in order if n not in failed and n in port_of)
        st.add_group(Group(group_id=group_id(G_NAC_RANK, idx), type="ff", buckets=buckets,
                           cookie=cookie(K_GROUP, f"{sw}:rank:{'>'.join(order)}")))


def _policy_flows(inp: Inputs, nac: str, name: str, pol: Policy, pid: int, nac_index: int) -> tuple:
    r = inp.roles
    c = cookie(K_POLICY, name)
    out = []
    up_port = r.nac_up[nac]
    fcs = GroupAction(group_id(G_NAC_FCS, nac_index))
    for rule in pol.allow:
        for fields in expand_rule(rule):
            out.append(Flow(table=NAC, priority=P_RULE, cookie=c,
                            match=Match(reg0=pid, metadata=(UP, DIR_MASK), **fields),
                            actions=(DecTtl(), SetField("eth_src", inp.router_mac), Output(up_port))))
            out.append(Flow(table=NAC, priority=P_RULE, cookie=c,
                            match=Match(reg0=pid, metadata=(DOWN, DIR_MASK), **reverse_match(fields)),
                            actions=(SetField("eth_src", inp.router_mac), fcs)))
    out.append(Flow(table=NAC, priority=P_RULE_DENY, cookie=c, match=Match(reg0=pid)))
    return tuple(out)


def _meters(key: int, pol: Policy) -> tuple:
    out = []
    if pol.rate_kbps:
        out.append(Meter(meter_id=METER_UP | key, unit="kbps", cookie=cookie(K_METER, f"up:{key}"),
                         bands=(MeterBand(rate=pol.rate_kbps, burst_size=pol.burst(pol.rate_kbps)),)))
    if pol.down_rate_kbps:
        out.append(Meter(meter_id=METER_DOWN | key, unit="kbps", cookie=cookie(K_METER, f"down:{key}"),
                         bands=(MeterBand(rate=pol.down_rate_kbps, burst_size=pol.burst(pol.down_rate_kbps)),)))
    return tuple(out)


def _binding(inp: Inputs, cl: ClientInfo, pid: int, pol: Policy, rank_gid: int) -> tuple:
    """(switch, flow) of a client's binding: NAC stage 1 on every NAC, forwarder upstream, uplink return."""
    r = inp.roles
    c = cookie(K_BIND, cl.mac)
    # the same flow on every forwarder, the same two on every NAC: built once (flows are immutable)
    up = Flow(table=NAC, priority=P_CLIENT, cookie=c, match=Match(metadata=(UP, DIR_MASK), tunnel_id=cl.key),
              actions=(GroupAction(rank_gid),))
    out = [(fc, up) for fc in r.fcs]
    if cl.ipv4 is None:
        return tuple(out)
    up_meter = METER_UP | cl.key if pol.rate_kbps else None
    down_meter = METER_DOWN | cl.key if pol.down_rate_kbps else None
    stage1 = (Flow(table=NAC, priority=P_CLIENT, cookie=c, meter=up_meter,
                   match=Match(reg0=0, metadata=(UP, DIR_MASK), tunnel_id=cl.key, eth_src=cl.mac,
                               eth_type=ETH_IP, ipv4_src=cl.ipv4),
                   actions=(SetField("reg0", pid), Resubmit(NAC))),
              Flow(table=NAC, priority=P_CLIENT, cookie=c, meter=down_meter,
                   match=Match(reg0=0, metadata=(DOWN, DIR_MASK), eth_type=ETH_IP, ipv4_dst=cl.ipv4),
                   actions=(SetField("reg0", pid), SetField("eth_dst", cl.mac),
                            SetField("tunnel_id", cl.key), Resubmit(NAC))))
    out += [(nac, f) for nac in r.nacs for f in stage1]
    out.append((r.uplink, Flow(table=NAC, priority=P_CLIENT, cookie=c,
                               match=Match(eth_type=ETH_IP, ipv4_dst=cl.ipv4),
                               actions=(DecTtl(), SetField("eth_src", inp.router_mac), GroupAction(rank_gid)))))
    return tuple(out)


def _location(inp: Inputs, cl: ClientInfo, td: str, td_port: int) -> tuple:
    """(switch, flow) of a client's location: its AP and port, its TD, every forwarder's way back."""
    r = inp.roles
    ap, port = cl.location
    c = cookie(K_LOC, cl.mac)
    ap_gid = group_id(G_AP_UPLINK, r.aps.index(ap))
    td_gid = group_id(G_TD_FCS, r.tds.index(td))
    back = Match(metadata=(DOWN, DIR_MASK), tunnel_id=cl.key)  # the client's traffic back, by its key
    out = [
        (ap, Flow(table=NAC, priority=P_CLIENT, cookie=c,
                  match=Match(metadata=(UP, DIR_MASK), in_port=port, eth_src=cl.mac),
                  actions=(GroupAction(ap_gid),))),
        (ap, Flow(table=NAC, priority=P_CLIENT, cookie=c,
                  match=Match(metadata=(DOWN, DIR_MASK), eth_dst=cl.mac), actions=(Output(port),))),
        (td, Flow(table=NAC, priority=P_CLIENT, cookie=c,
                  match=Match(metadata=(UP, DIR_MASK), in_port=td_port, eth_src=cl.mac),
                  actions=(SetField("tunnel_id", cl.key), GroupAction(td_gid)))),
        (td, Flow(table=NAC, priority=P_CLIENT, cookie=c, match=back, actions=(Output(td_port),))),
    ]
    way_back: dict[int, Flow] = {}  # forwarder port -> flow (the same on forwarders with the same port)
    for fc in r.fcs:
        p = r.fc_td[fc].get(td)
        if p is not None:
            f = way_back.get(p)
            if f is None:
                f = way_back[p] = Flow(table=NAC, priority=P_CLIENT, cookie=c, match=back, actions=(Output(p),))
            out.append((fc, f))
    return tuple(out)


def shared_state(inp: Inputs) -> dict[str, SwitchState]:
    """The part of the cloud router's state that is not per client: every tier switch's static
    flows and groups, the rank groups (they follow NAC failures), every policy at every NAC."""
    r, intent = inp.roles, inp.intent
    states = {sw: SwitchState() for sw in r.aps + r.tds + r.fcs + r.nacs + (r.uplink,)}
    _tier_state(inp, states)
    # policies: every NAC holds every policy (a failover never meets a NAC without it)
    names = intent.policy_names()
    pids = policy_ids(names)
    for i, nac in enumerate(r.nacs):
        st = states[nac]
        for n in names:
            for f in _policy_flows(inp, nac, n, intent.policy_obj(n), pids[n], i):
                st.add_flow(f)
            st.label(cookie(K_POLICY, n), f"policy {n} (reg0={pids[n]:#x})")
    return states


#: what the per-client state reads of the built-in quarantine policy: no meters
_NO_METERS = Policy()


def client_state(inp: Inputs, cl: ClientInfo) -> dict[str, SwitchState]:
    """One client's part of the state: its binding (NACs, forwarders upstream, uplink return),
    its location (AP, TD, forwarders' way back) and its meters.  Uses the shared part's groups."""
    r, intent = inp.roles, inp.intent
    names = intent.policy_names()
    pname = cl.policy if cl.policy in names else QUARANTINE
    pol = _NO_METERS if pname == QUARANTINE else intent.policies[pname]
    rank_gid = group_id(G_NAC_RANK, order_index(client_rank(cl.mac, r)))
    via = None
    if cl.location is not None and cl.location[0] in r.ap_uplinks:
        via = client_td(cl.location, r, inp.down_ports)
    states: dict[str, SwitchState] = {}

    def on(sw: str) -> SwitchState:
        st = states.get(sw)
        if st is None:
            st = states[sw] = SwitchState()
        return st

    for sw, f in _binding(inp, cl, policy_ids(names)[pname], pol, rank_gid):
        on(sw).add_flow(f)
    who = f"{cl.name} ({cl.mac})" if cl.name else cl.mac
    bc = cookie(K_BIND, cl.mac)
    text = f"client {who} key {cl.key} policy {pname}"
    for sw in r.fcs + r.nacs + ((r.uplink,) if cl.ipv4 else ()):
        on(sw).label(bc, text)
    if cl.ipv4:
        for nac in r.nacs:
            for m in _meters(cl.key, pol):
                on(nac).add_meter(m)
    if via is not None:
        for sw, f in _location(inp, cl, *via):
            on(sw).add_flow(f)
        lc = cookie(K_LOC, cl.mac)
        text = f"client {who} at {cl.location[0]}:{cl.location[1]} via {via[0]}"
        for sw in (cl.location[0], via[0]) + r.fcs:
            on(sw).label(lc, text)
    return states


def compute_cloud(inp: Inputs) -> dict[str, SwitchState]:
    """The whole desired cloud router state of every tier switch and the uplink (pure): the
    shared part merged with every client's (the app hands the core these parts one by one)."""
    states = shared_state(inp)
    for cl in inp.clients:
        for sw, st in client_state(inp, cl).items():
            states[sw].merge(st)
    return states


__all__ = ["ClientInfo", "Inputs", "compute_cloud", "shared_state", "client_state", "failed_nacs", "client_rank",
           "active_nac", "client_td", "KIND_NAMES", "UP", "DOWN", "group_id", "cookie"]
