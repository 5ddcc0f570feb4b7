"""The multicast_standby app's desired state: flows, groups and meters from the model, pure.

The state is made of parts (``FabricApp.parts``): one per channel (S, G), named
``"S>G"``, holding its active tree, its tagged paths and the join state of its
requests in flight, and :data:`INGRESS` (``"ingress"``), the table-0 steering,
punts and meters of every switch, which depend on the topology and the intent
only.  A channel's part reads the channel, the receivers of its group and, for
its paths' health, the view; :func:`parts_touching` says which channels a port
or switch change can affect.  Group ids are the channel's slot and the path's
vid (:func:`group_id`), so no two parts ever compute the same group id.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import replace
from typing import Any, Hashable, Iterable

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import INGRESS as T_INGRESS
from ryu_apps.framework.pipeline import MCAST
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.topology import Topology
from ryu_apps.framework.view import FabricView
from ryu_apps.functions.multicast_standby import wire
from ryu_apps.functions.multicast_standby.model import (
    APP,
    Channel,
    Graphs,
    McastState,
    Path,
    Pending,
    channel_name,
    path_name,
    restore_tree,
)
from ryu_apps.openflow.ofdata import (
    OFPP_CONTROLLER,
    Bucket,
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    MeterBand,
    Output,
    PopVlan,
    PushVlan,
    SetField,
)

ETH_IP = 0x0800

# cookie kinds
K_IGMP = 1          # IGMP from one host to the controller (table 0)
K_HOST_DATA = 2     # one host's multicast data into the mcast table (table 0)
K_LINK_LOCAL = 3    # one host's 224.0.0.0/24 traffic dropped (table 0)
K_REQ_PUNT = 4      # standby requests arriving on one fabric port to the controller (table 0)
K_FABRIC_DATA = 5   # multicast data arriving on one fabric port into the mcast table (table 0)
K_DISCOVER = 6      # first packets of an unknown (S,G) from one host to the controller (table 20)
K_TREE = 7          # the active tree of one channel, on every switch of it (table 20)
K_PATH = 8          # one tagged path of one channel (standby, promoted active, or a request's join state)
KIND_NAMES = {K_IGMP: "igmp", K_HOST_DATA: "host-data", K_LINK_LOCAL: "link-local", K_REQ_PUNT: "request-punt",
              K_FABRIC_DATA: "fabric-data", K_DISCOVER: "discover", K_TREE: "tree", K_PATH: "path"}

# priorities: table 0 band 2000..2999, table 20 band 100..9999
P_PUNT = 2900
P_LINK_LOCAL = 2800
P_DATA = 2700
P_DISCOVER = 100
P_TREE = 1000
P_PATH = 1100

# meters (per switch)
METER_IGMP = (cookies.app_id(APP) << 24) | 1
METER_REQUEST = (cookies.app_id(APP) << 24) | 2
METER_DISCOVER = (cookies.app_id(APP) << 24) | 3
METERS = (METER_IGMP, METER_REQUEST, METER_DISCOVER)
IGMP_PUNT_BYTES = 1500     # a whole IGMPv3 report (the app raises the core's packet-in bound to this)
REQUEST_PUNT_BYTES = 128
DISCOVER_PUNT_BYTES = 64

#: the part of the state that is not a channel's: steering, punts and meters in table 0
INGRESS = "ingress"


# ---------------------------------------------------------------------------
# parts


def part_of(key: tuple[str, str]) -> str:
    """The part of channel ``key`` (its name, ``S>G``)."""
    return channel_name(*key)


def key_of(part: Hashable) -> tuple[str, str] | None:
    """The channel key of a part (None for :data:`INGRESS` or anything else)."""
    if not isinstance(part, str) or ">" not in part:
        return None
    source, group = part.split(">", 1)
    return (source, group)


def parts(st: McastState) -> list[str]:
    return [INGRESS] + [part_of(k) for k in sorted(st.channels)]


def parts_touching(st: McastState, view: FabricView, intent, switch: str, port: int | None = None) -> set[str] | None:
    """The channel parts whose state can differ now that ``(switch, port)`` (a port) or
    ``switch`` (``port`` None: dead or alive) changed in ``view``; None: every part.

    A channel's flows read the view only through the health of its destinations' active
    and standby paths (standby mode): only channels with a path whose health flipped. The
    restoration baseline recomputes its trees from the whole live graph: every part.
    """
    if intent.protection != "standby":
        return None
    if port is None:
        before = replace(view, dead_switches=view.dead_switches ^ {switch})
    else:
        if (switch, port) not in view.topology.ports:
            return set()  # not declared: never in the view
        before = replace(view, down_ports=view.down_ports ^ {(switch, port)})
    out = set()
    for key, ch in st.channels.items():
        for d, ds in ch.dests.items():
            if any(p is not None and switch in p.devices and p.intact(view) != p.intact(before)
                   for p in (ch.active_path(d), ds.standby)):
                out.add(part_of(key))
                break
    return out


# ---------------------------------------------------------------------------
# compute: state + view -> flows


def group_id(ch: Channel, vid: int = 0) -> int:
    """The group of channel ``ch``: its tree's (``vid`` 0, at most one per switch) or the end of
    its tagged path ``vid``: app id, slot, vid -- unique across channels, and kept by a restart."""
    return (cookies.app_id(APP) << 24) | (ch.slot << 12) | vid


@functools.lru_cache(maxsize=1 << 16)
def _data_match(in_port: int, vid: int, source: str, group: str) -> Match:
    return Match(in_port=in_port, vlan_vid=(0x1000 | vid) if vid else 0, eth_type=ETH_IP,
                 ipv4_src=source, ipv4_dst=group)


@functools.lru_cache(maxsize=1 << 16)
def _mflow(priority: int, match: Match, actions: tuple, cookie: int) -> Flow:
    """A flow of the mcast table (memoized: recomputes build the same objects again and again)."""
    return Flow(table=MCAST, priority=priority, match=match, actions=actions, cookie=cookie)


def _outputs(ports: Iterable[int]) -> tuple:
    return tuple(Output(p) for p in ports)


def compute_part(view: FabricView, intent, st: McastState, part: Hashable) -> dict[str, SwitchState]:
    """Desired state of one part, per switch it touches (pure: reads ``st``, changes nothing)."""
    if part == INGRESS:
        st.static_members(intent)  # validates the intent's hosts, even with no channel yet
        states = {name: SwitchState() for name in st.topo.switches}
        _ingress(states, st.topo, intent)
        return states
    key = key_of(part)
    ch = st.channels.get(key) if key is not None else None
    if ch is None:
        return {}
    return channel_state(view, intent, st, ch)


def compute(view: FabricView, intent, st: McastState) -> dict[str, SwitchState]:
    """Desired multicast state of every switch: every part, merged (pure)."""
    states = {name: SwitchState() for name in st.topo.switches}
    for part in parts(st):
        for switch, s in compute_part(view, intent, st, part).items():
            states[switch].merge(s)
    return states


def channel_state(view: FabricView, intent, st: McastState, ch: Channel,
                  index: dict | None = None) -> dict[str, SwitchState]:
    """One channel's tree, tagged paths and request join state, per switch it touches."""
    protected = intent.protection == "standby"
    rx = st.receivers(ch.source, ch.group, intent, exclude=(ch.switch, ch.port), index=index)
    tagged: list[tuple[Path, str]] = []   # (path, endpoint behaviour)
    pending: list[Pending] = []
    if not protected:
        tree, deliver = restore_tree(view, ch.switch, rx, Graphs())
    else:
        tree, deliver = ch.tree, set()
        for d in rx:
            ds = ch.dests.get(d)
            if d == ch.switch:
                deliver.add(d)
                continue
            if ds is None:
                continue
            if ds.pending is not None:
                pending.append(ds.pending)
            active = ch.active_path(d)
            a_ok = active is not None and active.intact(view)
            sb = ds.standby
            s_ok = sb is not None and sb.intact(view)
            # The tree keeps delivering to d until the app promotes d's standby path (ms later):
            # a broken tree path carries nothing, and so the flip itself is one group change.
            if ds.active is None:
                if d in ch.tree_dests and ds.muted is None:
                    deliver.add(d)
            else:
                tagged.append((ds.active, "drop" if ds.muted else "deliver"))
            if sb is not None:
                if not a_ok and s_ok:
                    tagged.append((sb, "deliver"))
                elif a_ok:
                    tagged.append((sb, f"protect:{active.hops[-1].in_port}"))
                else:
                    tagged.append((sb, "drop"))
    states: dict[str, SwitchState] = _States()
    _channel_flows(states, ch, rx, tree, deliver, tagged, pending)
    return dict(states)


class _States(dict):
    """Switch -> SwitchState, made on first use (a channel touches only the switches of its paths)."""

    def __missing__(self, switch: str) -> SwitchState:
        st = self[switch] = SwitchState()
        return st


def _channel_flows(states: dict[str, SwitchState], ch: Channel, rx: dict, tree: dict, deliver: set,
                   tagged: list[tuple[Path, str]], pending: list[Pending]) -> None:
    S, G = ch.source, ch.group
    tcookie = cookies.make(APP, K_TREE, ch.name)
    kids: dict[str, list[int]] = defaultdict(list)
    for node, (parent, pport, _) in tree.items():
        kids[parent].append(pport)
    # the root: replicate to tree children, local receivers and the first hop of every tagged path
    buckets = [Bucket(actions=(Output(p),)) for p in sorted(kids.get(ch.switch, []))]
    if ch.switch in deliver:
        buckets += [Bucket(actions=(Output(p),)) for p in rx.get(ch.switch, ())]
    for path, _ in sorted(tagged, key=lambda t: t[0].vid):
        first = path.hops[0]
        buckets.append(Bucket(actions=(PushVlan(), SetField("vlan_vid", 0x1000 | path.vid), Output(first.out_port))))
    root_st = states[ch.switch]
    root_st.label(tcookie, f"multicast tree {ch.name} (root {ch.switch}, source {ch.host})")
    m = _data_match(ch.port, 0, S, G)
    if not buckets:
        actions = ()
    elif len(buckets) == 1 and len(buckets[0].actions) == 1:
        actions = buckets[0].actions
    else:
        gid = group_id(ch)
        root_st.add_group(Group(gid, "all", tuple(buckets), cookie=tcookie))
        actions = (GroupAction(gid),)
    root_st.add_flow(_mflow(P_TREE, m, actions, tcookie))
    # the tree's other switches
    for node, (parent, pport, in_port) in sorted(tree.items()):
        outs = sorted(kids.get(node, []))
        if node in deliver:
            outs += list(rx.get(node, ()))
        if not outs:
            continue
        st = states[node]
        st.label(tcookie, f"multicast tree {ch.name} (root {ch.switch}, source {ch.host})")
        if len(outs) == 1:
            actions = (Output(outs[0]),)
        else:
            gid = group_id(ch)
            st.add_group(Group(gid, "all", tuple(Bucket(actions=(Output(p),)) for p in outs), cookie=tcookie))
            actions = (GroupAction(gid),)
        st.add_flow(_mflow(P_TREE, _data_match(in_port, 0, S, G), actions, tcookie))
    # tagged paths: transit hops and the destination's end
    for path, how in tagged:
        pc = cookies.make(APP, K_PATH, path_name(S, G, path.vid))
        label = f"tagged path {ch.name} vid {path.vid} to {path.dest}: {path.text()}"
        for hop in path.hops[1:-1]:
            st = states[hop.switch]
            st.label(pc, label)
            st.add_flow(_mflow(P_PATH, _data_match(hop.in_port, path.vid, S, G), (Output(hop.out_port),), pc))
        end = path.hops[-1]
        st = states[end.switch]
        st.label(pc, label)
        local = rx.get(end.switch, ())
        # the end of a tagged path is a fast-failover group, so accepting or discarding the copy
        # (and the flip between the two) is one group change: deliver = one bucket watching the
        # path's own in-port; protect = discard while the active in-port is live, else deliver;
        # drop = no bucket
        if how == "deliver":
            buckets = (Bucket(actions=_outputs(local), watch_port=end.in_port),)
        elif how.startswith("protect:"):
            watch = int(how.split(":", 1)[1])
            buckets = (Bucket(actions=(), watch_port=watch), Bucket(actions=_outputs(local), watch_port=end.in_port))
        else:
            buckets = ()
        gid = group_id(ch, path.vid)
        st.add_group(Group(gid, "ff", buckets, cookie=pc))
        st.add_flow(_mflow(P_PATH, _data_match(end.in_port, path.vid, S, G), (PopVlan(), GroupAction(gid)), pc))
    # requests in flight: the state each joined switch installed
    for p in pending:
        pc = cookies.make(APP, K_PATH, path_name(S, G, p.vid))
        for sw, rec in sorted(p.joined.items()):
            st = states[sw]
            st.label(pc, f"standby request {p.request_id} of {ch.name} vid {p.vid}: joined, path not complete yet")
            for up in rec.up_ports:
                st.add_flow(_mflow(P_PATH, _data_match(up, p.vid, S, G), (Output(rec.in_port),), pc))


def _ingress(states: dict[str, SwitchState], topo: Topology, intent) -> None:
    """Steering in table 0 (above the fabric's host admission) and the punts, on every switch."""
    ctl = OFPP_CONTROLLER
    for name, st in states.items():
        host_ports = fabric_ports = False
        for p in topo.switch_ports(name):
            if p.kind == "host":
                h = topo.hosts[p.peer]
                if h.ipv4 is None:
                    continue
                host_ports = True
                ip = str(h.ipv4.ip)
                c = cookies.make(APP, K_IGMP, h.name)
                st.label(c, f"IGMP from {h.name} on {name}:{p.port} to the controller")
                st.add_flow(Flow(table=T_INGRESS, priority=P_PUNT, cookie=c, meter=METER_IGMP,
                                 match=Match(in_port=p.port, eth_src=h.mac, eth_type=ETH_IP, ip_proto=wire.IGMP_PROTO),
                                 actions=(Output(ctl, IGMP_PUNT_BYTES),)), APP)
                c = cookies.make(APP, K_LINK_LOCAL, h.name)
                st.label(c, f"{h.name}'s 224.0.0.0/24 traffic stays on its link")
                st.add_flow(Flow(table=T_INGRESS, priority=P_LINK_LOCAL, cookie=c,
                                 match=Match(in_port=p.port, eth_type=ETH_IP, ipv4_dst=str(wire.LINK_LOCAL))), APP)
                c = cookies.make(APP, K_HOST_DATA, h.name)
                st.label(c, f"multicast from {h.name} ({ip}) into the mcast table")
                for rng in intent.groups:
                    st.add_flow(Flow(table=T_INGRESS, priority=P_DATA, cookie=c, goto=MCAST,
                                     match=Match(in_port=p.port, eth_src=h.mac, vlan_vid=0, eth_type=ETH_IP,
                                                 ipv4_src=ip, ipv4_dst=rng)), APP)
                c = cookies.make(APP, K_DISCOVER, h.name)
                st.label(c, f"first packets of a new (S,G) from {h.name} to the controller")
                st.add_flow(Flow(table=MCAST, priority=P_DISCOVER, cookie=c, meter=METER_DISCOVER,
                                 match=Match(in_port=p.port, vlan_vid=0, eth_type=ETH_IP),
                                 actions=(Output(ctl, DISCOVER_PUNT_BYTES),)), APP)
            else:
                fabric_ports = True
                c = cookies.make(APP, K_REQ_PUNT, f"{name}:{p.port}")
                st.label(c, f"standby requests from {p.peer} on {name}:{p.port} to the controller")
                st.add_flow(Flow(table=T_INGRESS, priority=P_PUNT, cookie=c, meter=METER_REQUEST,
                                 match=Match(in_port=p.port, eth_type=wire.ETH_STANDBY),
                                 actions=(Output(ctl, REQUEST_PUNT_BYTES),)), APP)
                c = cookies.make(APP, K_FABRIC_DATA, f"{name}:{p.port}")
                st.label(c, f"multicast from {p.peer} on {name}:{p.port} into the mcast table")
                for rng in intent.groups:
                    st.add_flow(Flow(table=T_INGRESS, priority=P_DATA, cookie=c, goto=MCAST,
                                     match=Match(in_port=p.port, eth_type=ETH_IP, ipv4_dst=rng)), APP)
        if host_ports:
            st.add_meter(Meter(METER_IGMP, "pktps", (MeterBand(intent.igmp_rate, max(1, intent.igmp_rate)),)))
            st.add_meter(Meter(METER_DISCOVER, "pktps",
                               (MeterBand(intent.discover_rate, max(1, intent.discover_rate // 2)),)))
        if fabric_ports:
            st.add_meter(Meter(METER_REQUEST, "pktps",
                               (MeterBand(intent.request_rate, max(1, intent.request_rate // 2)),)))


def describe_cookie(cookie: int) -> dict[str, Any]:
    c = cookies.decode(cookie)
    return {"app": c.app, "kind": KIND_NAMES.get(c.kind, c.kind), "object": f"{c.obj:#014x}"}