"""The multicast_standby app's pure state machine: memberships, channels, paths, requests, audit.

No os-ken here, and no flows (those are :mod:`.flows`; the intent is :mod:`.intent`).
:class:`McastState` holds what the controller has learned (memberships from IGMP,
sources from their first packets, the active tree of every channel, the standby
path of every destination device, requests in flight); its methods change that
state in answer to an input (a report, a request arriving at a switch, a
failure) and return what has to go on the wire and which channels changed
(:class:`Effects`).

Vocabulary
----------
* channel ``(S, G)``: one source host ``S`` sending to group ``G``; its *root*
  is the source's switch.
* destination device ``D``: a switch with at least one port whose membership
  of ``G`` accepts ``S``.
* active tree: untagged copies, from the root to every destination along
  shortest paths (stored, so a failure elsewhere never moves a working
  branch), replicated at branch points by a group of type ALL.
* tagged path: copies carrying VLAN id ``vid`` (unique per channel), for one
  destination: its standby path, or its active path after a failover.
* standby path: built by a standby-path establishment request the destination
  sends out of its non-active upstream ports; every switch it reaches either
  suppresses it (the switch is on the destination's active path) or joins and
  forwards it toward the source; the root completes it.  The destination
  discards the standby copy (a fast-failover group that delivers it at once
  when the destination's own active in-port goes down) until the active path
  fails, then accepts it; the standby path becomes the active one and a new
  standby is requested.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx

from ryu_apps.framework.topology import Topology
from ryu_apps.framework.view import FabricView, IntentError
from ryu_apps.functions.multicast_standby import wire
from ryu_apps.functions.multicast_standby.intent import group_allowed

APP = "multicast_standby"
MAX_HOPS = 64
MUTE_HOLD = 0.2  # s between muting a silent active stream and accepting the standby copy
#: channels at once: each has a slot, which numbers its OpenFlow groups (``flows.group_id``)
SLOTS = 1 << 12

PAUSE_CHANNELS = 10  # channels a paced reconcile handles between two pauses


def channel_name(source: str, group: str) -> str:
    return f"{source}>{group}"


def path_name(source: str, group: str, vid: int) -> str:
    return f"{source}>{group}#{vid}"


# ---------------------------------------------------------------------------
# graph helpers (deterministic: neighbours by name, parallel links by port)


def natural(name: str) -> tuple:
    """Sort key: s2 before s10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def neighbours(graph: nx.MultiGraph, node: str) -> list[tuple[str, int, int]]:
    """``(neighbour, my_port, its_port)`` of every live link of ``node``, in natural order."""
    if node not in graph:
        return []
    out = [(nbr, d["ports"][node], d["ports"][nbr]) for _, nbr, d in graph.edges(node, data=True)]
    return sorted(out, key=lambda t: (natural(t[0]), t[1], t[2]))


def bfs(graph: nx.MultiGraph, root: str) -> tuple[dict[str, int], dict[str, tuple[str, int, int]]]:
    """Hop distances from ``root`` and a predecessor ``node -> (parent, parent_port, in_port)``."""
    dist = {root: 0}
    pred: dict[str, tuple[str, int, int]] = {}
    if root not in graph:
        return {}, {}
    queue = deque([root])
    while queue:
        n = queue.popleft()
        for nbr, mine, theirs in neighbours(graph, n):
            if nbr not in dist:
                dist[nbr] = dist[n] + 1
                pred[nbr] = (n, mine, theirs)
                queue.append(nbr)
    return dist, pred


class Graphs:
    """The live switch graph of a view, and searches on it, computed once per view."""

    def __init__(self):
        self._key = None
        self._graph: nx.MultiGraph | None = None
        self._memo: dict = {}

    def graph(self, view: FabricView) -> nx.MultiGraph:
        key = (view.down_ports, view.dead_switches)
        if key != self._key:
            self._key, self._graph, self._memo = key, view.graph(), {}
        return self._graph

    def bfs(self, view: FabricView, root: str, without: frozenset = frozenset()):
        g = self.graph(view)
        k = ("bfs", root, without)
        if k not in self._memo:
            if without:
                g = g.copy()
                g.remove_nodes_from([n for n in without if n in g])
            self._memo[k] = bfs(g, root)
        return self._memo[k]

    def reach(self, view: FabricView, root: str, without: frozenset) -> frozenset:
        """Switches connected to ``root`` once ``without`` is gone."""
        return frozenset(self.bfs(view, root, without)[0])

    def neighbours(self, view: FabricView, node: str):
        g = self.graph(view)
        k = ("nbr", node)
        if k not in self._memo:
            self._memo[k] = neighbours(g, node)
        return self._memo[k]


# ---------------------------------------------------------------------------
# paths


@dataclass(frozen=True)
class Hop:
    switch: str
    in_port: int | None    # None at the root (the stream enters from the source host)
    out_port: int | None   # None at the destination device

    def to_dict(self) -> dict:
        return {"switch": self.switch, "in_port": self.in_port, "out_port": self.out_port}


@dataclass(frozen=True)
class Path:
    """A chain of switches from the root to one destination device."""

    vid: int               # 0: the untagged active tree; else the VLAN id its copies carry
    hops: tuple[Hop, ...]
    request_id: int = 0    # the request that built it (0 for a tree path)
    since: float = 0.0

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(h.switch for h in self.hops)

    @property
    def transit(self) -> tuple[str, ...]:
        return self.devices[1:-1]

    @property
    def dest(self) -> str:
        return self.hops[-1].switch

    def links(self) -> list[tuple[str, int, str, int]]:
        return [(a.switch, a.out_port, b.switch, b.in_port) for a, b in zip(self.hops, self.hops[1:])]

    def broken_at(self, view: FabricView) -> str | None:
        """Why the path cannot carry packets in ``view`` (None: it can)."""
        for sw in self.devices:
            if sw in view.dead_switches:
                return f"switch {sw} is down"
        for a, pa, b, pb in self.links():
            if not (view.port_live(a, pa) and view.port_live(b, pb)):
                return f"link {a}:{pa}-{b}:{pb} is down"
        return None

    def intact(self, view: FabricView) -> bool:
        return self.broken_at(view) is None

    def text(self) -> str:
        return "-".join(self.devices)

    def to_dict(self) -> dict:
        return {"vid": self.vid, "devices": list(self.devices), "hops": [h.to_dict() for h in self.hops],
                "request_id": self.request_id}


# ---------------------------------------------------------------------------
# membership


@dataclass
class Membership:
    """What one receiver port wants of one group (the host's own filter state, mirrored)."""

    mode: str                     # include | exclude
    sources: frozenset[str]
    version: int                  # IGMP version of the last report; 0 = static (intent)
    expires: float | None         # monotonic time; None: never (static, or no querier)
    host: str
    since: float

    def accepts(self, source: str) -> bool:
        return (source in self.sources) if self.mode == "include" else (source not in self.sources)

    def to_dict(self, now: float) -> dict:
        return {"mode": self.mode, "sources": sorted(self.sources), "version": self.version,
                "host": self.host, "age_s": round(now - self.since, 1),
                "expires_in_s": None if self.expires is None else round(self.expires - now, 1)}


def apply_record(cur: Membership | None, rec: wire.GroupRecord, version: int, host: str, now: float,
                 expires: float | None) -> Membership | None:
    """The membership after one IGMP group record (RFC 3376 host state, one host per port)."""
    srcs = frozenset(rec.sources)

    def make(mode: str, sources: frozenset) -> Membership:
        since = cur.since if cur is not None else now
        return Membership(mode, sources, version, expires, host, since)

    t = rec.rtype
    if t in (wire.MODE_IS_INCLUDE, wire.CHANGE_TO_INCLUDE):
        return make("include", srcs) if srcs else None
    if t in (wire.MODE_IS_EXCLUDE, wire.CHANGE_TO_EXCLUDE):
        return make("exclude", srcs)
    if t == wire.ALLOW_NEW:
        if cur is None:
            return make("include", srcs)
        return make("include", cur.sources | srcs) if cur.mode == "include" else make("exclude", cur.sources - srcs)
    if t == wire.BLOCK_OLD:
        if cur is None:
            return None
        if cur.mode == "include":
            left = cur.sources - srcs
            return make("include", left) if left else None
        return make("exclude", cur.sources | srcs)
    return cur


# ---------------------------------------------------------------------------
# channels and destinations


@dataclass
class JoinRecord:
    """A switch that joined a request: standby copies will arrive on ``up_ports`` and leave on ``in_port``."""

    in_port: int
    from_switch: str
    up_ports: tuple[int, ...]
    at: float


@dataclass
class Pending:
    request_id: int
    vid: int
    started: float
    sent_ports: tuple[int, ...]
    joined: dict[str, JoinRecord] = field(default_factory=dict)


@dataclass
class Dest:
    switch: str
    active: Path | None = None     # tagged active path (after a failover); None: the tree
    standby: Path | None = None
    pending: Pending | None = None
    retry_at: float = 0.0
    backoff: float = 0.0
    note: str = ""                 # why there is no standby path right now
    failovers: int = 0
    muted: str | None = None       # the active stream went silent (why); not delivered until promotion
    muted_at: float = 0.0


@dataclass
class Channel:
    source: str
    group: str
    switch: str       # root: the source's switch
    port: int         # the source host's port
    host: str
    since: float
    tree: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # node -> (parent, parent_port, in_port)
    tree_dests: set[str] = field(default_factory=set)
    dests: dict[str, Dest] = field(default_factory=dict)
    slot: int = 0     # unique among the channels (0..SLOTS-1): numbers the channel's groups

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.group)

    @property
    def name(self) -> str:
        return channel_name(self.source, self.group)

    def tree_path(self, dest: str) -> Path | None:
        """The tree's path root..dest, or None if dest is not on the tree."""
        if dest == self.switch:
            return Path(0, (Hop(dest, None, None),))
        if dest not in self.tree:
            return None
        chain = [dest]
        node = dest
        for _ in range(MAX_HOPS):
            parent = self.tree[node][0]
            chain.append(parent)
            if parent == self.switch:
                break
            if parent not in self.tree:
                return None
            node = parent
        else:
            return None
        chain.reverse()
        hops = []
        for i, sw in enumerate(chain):
            in_port = self.tree[sw][2] if i > 0 else None
            out_port = self.tree[chain[i + 1]][1] if i + 1 < len(chain) else None
            hops.append(Hop(sw, in_port, out_port))
        return Path(0, tuple(hops))

    def active_path(self, dest: str) -> Path | None:
        ds = self.dests.get(dest)
        if ds is not None and ds.active is not None:
            return ds.active
        if dest == self.switch or dest in self.tree_dests:
            return self.tree_path(dest)
        return None

    def used_vids(self) -> set[int]:
        out = set()
        for ds in self.dests.values():
            for p in (ds.active, ds.standby):
                if p is not None:
                    out.add(p.vid)
            if ds.pending is not None:
                out.add(ds.pending.vid)
        return out

    def children(self) -> dict[str, list[tuple[str, int]]]:
        kids: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for node, (parent, pport, _) in self.tree.items():
            kids[parent].append((node, pport))
        return kids

    def prune(self) -> None:
        """Drop tree branches that lead to no tree destination."""
        for _ in range(len(self.tree) + 1):
            kids = self.children()
            dead = [n for n in self.tree if n not in self.tree_dests and not kids.get(n)]
            if not dead:
                return
            for n in dead:
                del self.tree[n]

    def graft(self, dest: str, view: FabricView, graphs: "Graphs | None" = None) -> bool:
        """Attach ``dest`` to the tree along a shortest path of the live view.

        Among the equal-cost shortest paths, the first (in natural order) after which ``dest``
        still reaches the root around the path's transit switches: a standby path can exist.
        """
        if dest == self.switch:
            self.tree_dests.add(dest)
            return True
        if dest in self.tree and self.tree_path(dest) is not None:
            self.tree_dests.add(dest)
            return True
        graphs = graphs or Graphs()
        graph = graphs.graph(view)
        dist, pred = graphs.bfs(view, self.switch)
        if dest not in dist:
            return False
        best = None
        for chain in itertools.islice(_shortest_paths(graph, self.switch, dest, dist), 32):
            last = max(i for i, n in enumerate(chain) if n == self.switch or n in self.tree)
            head = self.tree_path(chain[last])
            full = list(head.devices) + chain[last + 1:]
            if best is None:
                best = (chain, last)
            if dest in graphs.reach(view, self.switch, frozenset(full[1:-1])) or len(full) <= 2:
                best = (chain, last)
                break
        chain, last = best
        for i in range(last + 1, len(chain)):
            node, parent = chain[i], chain[i - 1]
            _, mine, theirs = next(t for t in graphs.neighbours(view, parent) if t[0] == node)
            self.tree[node] = (parent, mine, theirs)
        self.tree_dests.add(dest)
        return True


def _shortest_paths(graph: nx.MultiGraph, root: str, dest: str, dist: dict[str, int]):
    """Every shortest path root..dest, in natural order of the switches (a generator)."""
    def rec(chain):
        node = chain[-1]
        if node == dest:
            yield list(chain)
            return
        for nbr, _, _ in neighbours(graph, node):
            if dist.get(nbr) == dist[node] + 1 and nbr not in chain and (nbr == dest or _closer(nbr)):
                chain.append(nbr)
                yield from rec(chain)
                chain.pop()

    back = {dest}
    frontier = [dest]
    while frontier:  # the switches on some shortest path to dest
        nxt = []
        for n in frontier:
            for nbr, _, _ in neighbours(graph, n):
                if dist.get(nbr) == dist[n] - 1 and nbr not in back:
                    back.add(nbr)
                    nxt.append(nbr)
        frontier = nxt

    def _closer(n):
        return n in back

    yield from rec([root])


# ---------------------------------------------------------------------------
# audit


class Audit:
    """Every standby request, hop by hop: who joined, who suppressed it, and why."""

    def __init__(self, limit: int = 2000, events: int = 1000):
        self.requests: OrderedDict[int, dict] = OrderedDict()
        self.limit = limit
        self.events: deque = deque(maxlen=events)

    def start(self, rid: int, ch: Channel, dest: str, vid: int, now: float, **info) -> dict:
        rec = {"request_id": rid, "channel": ch.name, "source": ch.source, "group": ch.group, "destination": dest,
               "vid": vid, "status": "pending", "reason": "", "started": time.time(), "_t0": now,
               "duration_ms": None, "hops": [], **info}
        self.requests[rid] = rec
        while len(self.requests) > self.limit:
            self.requests.popitem(last=False)
        return rec

    def hop(self, rid: int, now: float, device: str, action: str, reason: str, **info) -> None:
        rec = self.requests.get(rid)
        if rec is None:
            return
        rec["hops"].append({"at_ms": round((now - rec["_t0"]) * 1000, 2), "device": device, "action": action,
                            "reason": reason, **info})

    def finish(self, rid: int, now: float, status: str, reason: str) -> None:
        rec = self.requests.get(rid)
        if rec is None or rec["status"] != "pending":
            return
        rec["status"], rec["reason"] = status, reason
        rec["duration_ms"] = round((now - rec["_t0"]) * 1000, 2)

    def event(self, kind: str, ch: Channel, dest: str, reason: str, **info) -> None:
        self.events.append({"at": round(time.time(), 3), "kind": kind, "channel": ch.name, "destination": dest,
                            "reason": reason, **info})

    def public(self, rec: dict) -> dict:
        out = {k: v for k, v in rec.items() if not k.startswith("_")}
        out["joined"] = [h["device"] for h in rec["hops"] if h["action"] == "joined"]
        out["suppressed"] = [h["device"] for h in rec["hops"] if h["action"] == "suppressed"]
        return out


@dataclass
class Effects:
    """What an input changed, and the frames to send: ``(switch, port, frame)``.

    ``channels``: the channels (keys) whose desired flows may have changed with it (their
    parts of the app's state are stale); ``changed`` may be set with none (a membership of a
    group no source sends to: saved, but no flow changes).
    """

    changed: bool = False
    sends: list[tuple[str, int, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    channels: set[tuple[str, str]] = field(default_factory=set)

    def touch(self, key: tuple[str, str]) -> None:
        """The flows of channel ``key`` change."""
        self.changed = True
        self.channels.add(key)

    def __iadd__(self, other: "Effects") -> "Effects":
        self.changed |= other.changed
        self.sends += other.sends
        self.notes += other.notes
        self.channels |= other.channels
        return self


# ---------------------------------------------------------------------------
# the state


class McastState:
    """Everything the app has learned; changed only through its methods."""

    def __init__(self, topology: Topology, request_id_base: int | None = None):
        self.topo = topology
        self.members: dict[tuple[str, int], dict[str, Membership]] = {}
        self.channels: dict[tuple[str, str], Channel] = {}
        self.audit = Audit()
        self.silent: dict[tuple[str, str, str], str] = {}  # (S, G, D) -> why (set by the silence detector)
        base = request_id_base if request_id_base is not None else (int(time.time()) & 0xFFFF) << 16
        self._rids = itertools.count(base or 1)
        self.counters = defaultdict(int)
        self.graphs = Graphs()
        self.foreign_queriers: dict[str, float] = {}
        self._dpid = {name: sw.dpid for name, sw in topology.switches.items()}
        self._by_dpid = {sw.dpid: name for name, sw in topology.switches.items()}
        self._host_at = {(h.switch, h.port): h for h in topology.hosts.values()}
        self._next_slot = 0

    # -- membership -------------------------------------------------------------
    def igmp(self, switch: str, port: int, msg: wire.Igmp, now: float, timeout: float | None,
             intent=None) -> Effects:
        """Apply an IGMP message that arrived on a host port."""
        host = self._host_at.get((switch, port))
        if host is None:
            raise wire.BadPacket(f"IGMP on {switch}:{port}, which is not a host port")
        if msg.kind == "query":
            self.foreign_queriers[msg.src] = now
            self.counters["igmp_queries_seen"] += 1
            return Effects()
        self.counters[f"igmp_v{msg.version}_{msg.kind}s"] += 1
        if msg.truncated:
            self.counters["igmp_truncated"] += 1
        eff = Effects(notes=list(msg.skipped))
        groups = self.members.setdefault((switch, port), {})
        expires = None if timeout is None else now + timeout
        moved = set()  # groups whose receivers changed
        for rec in msg.records:
            if intent is not None and not group_allowed(rec.group, intent):
                eff.notes.append(f"{rec.group}: outside the configured groups {intent.groups}")
                self.counters["igmp_records_outside_ranges"] += 1
                continue
            cur = groups.get(rec.group)
            new = apply_record(cur, rec, msg.version, host.name, now, expires)
            if new is None:
                if cur is not None:
                    del groups[rec.group]
                    moved.add(rec.group)
                continue
            if cur is None or (cur.mode, cur.sources) != (new.mode, new.sources):
                moved.add(rec.group)
            groups[rec.group] = new
        if not groups:
            del self.members[(switch, port)]
        self._touch_groups(eff, moved)
        return eff

    def _touch_groups(self, eff: Effects, groups: set[str]) -> None:
        """Receivers of ``groups`` changed: so may every channel of them (their flows read the receivers)."""
        if not groups:
            return
        eff.changed = True
        eff.channels.update(k for k in self.channels if k[1] in groups)

    def expire_members(self, now: float) -> set[str]:
        """Drop memberships past their expiry; the groups that lost one."""
        gone = set()
        for key in list(self.members):
            groups = self.members[key]
            for g in [g for g, m in groups.items() if m.expires is not None and m.expires <= now]:
                del groups[g]
                gone.add(g)
                self.counters["members_expired"] += 1
            if not groups:
                del self.members[key]
        return gone

    def static_members(self, intent) -> dict[tuple[str, int], dict[str, Membership]]:
        out: dict[tuple[str, int], dict[str, Membership]] = {}
        for i, sm in enumerate(intent.static_members):
            h = self.topo.hosts.get(sm.host)
            if h is None:
                raise IntentError(f"apps.{APP}.static_members[{i}].host: unknown host {sm.host!r}; "
                                  f"known: {sorted(self.topo.hosts)}", f"static_members[{i}].host")
            mode = "include" if sm.sources else "exclude"
            out.setdefault((h.switch, h.port), {})[sm.group] = Membership(
                mode, frozenset(sm.sources), 0, None, h.name, 0.0)
        return out

    def member_index(self, intent) -> dict[str, list[tuple[str, int, Membership]]]:
        """Group -> every (switch, port, membership): dynamic and the intent's static ones."""
        index: dict[str, list] = defaultdict(list)
        for table in (self.members, self.static_members(intent)):
            for (sw, port), groups in table.items():
                for g, m in groups.items():
                    index[g].append((sw, port, m))
        return index

    def group_members(self, group: str, intent) -> list[tuple[str, int, Membership]]:
        """Every (switch, port, membership) of one group (without building the whole index)."""
        out = []
        for table in (self.members, self.static_members(intent)):
            for (sw, port), groups in table.items():
                m = groups.get(group)
                if m is not None:
                    out.append((sw, port, m))
        return out

    def receivers(self, source: str, group: str, intent, exclude: tuple[str, int] | None = None,
                  index: dict | None = None) -> dict[str, tuple[int, ...]]:
        """Switch -> receiver ports of (S, G)."""
        found = self.group_members(group, intent) if index is None else index.get(group, ())
        out: dict[str, set[int]] = defaultdict(set)
        for sw, port, m in found:
            if m.accepts(source) and (sw, port) != exclude:
                out[sw].add(port)
        return {sw: tuple(sorted(out[sw])) for sw in sorted(out, key=natural)}

    # -- sources ----------------------------------------------------------------
    def source_seen(self, switch: str, port: int, source: str, group: str, now: float, intent) -> Effects:
        host = self._host_at.get((switch, port))
        if host is None or host.ipv4 is None or str(host.ipv4.ip) != source:
            raise wire.BadPacket(f"multicast from {source} on {switch}:{port}, which is not that host's port")
        if not group_allowed(group, intent):
            raise wire.BadPacket(f"group {group} is outside the configured ranges {intent.groups}")
        key = (source, group)
        ch = self.channels.get(key)
        if ch is not None and (ch.switch, ch.port) == (switch, port):
            return Effects()
        if ch is not None:
            self.audit.event("source-moved", ch, ch.switch, f"source {source} now on {switch}:{port}")
            slot = ch.slot
        else:
            slot = self._alloc_slot()
            if slot is None:
                self.counters["sources_refused_too_many_channels"] += 1
                return Effects(notes=[f"{channel_name(source, group)}: {SLOTS} channels already, refused"])
        self.channels[key] = Channel(source, group, switch, port, host.name, now, slot=slot)
        self.counters["sources_learned"] += 1
        eff = Effects()
        eff.touch(key)
        return eff

    def forget_source(self, key: tuple[str, str]) -> bool:
        return self.channels.pop(key, None) is not None

    def _alloc_slot(self) -> int | None:
        """The next free slot after the last one given out (a freed slot is reused last, so the
        groups of a forgotten channel are long gone from the switches when the number returns)."""
        used = {ch.slot for ch in self.channels.values()}
        for i in range(SLOTS):
            slot = (self._next_slot + i) % SLOTS
            if slot not in used:
                self._next_slot = (slot + 1) % SLOTS
                return slot
        return None

    # -- helpers ----------------------------------------------------------------
    def dpid(self, switch: str) -> int:
        return self._dpid[switch]

    def switch_of(self, dpid: int) -> str | None:
        return self._by_dpid.get(dpid)

    def fabric_ports(self, switch: str) -> list:
        return [p for p in self.topo.switch_ports(switch) if p.kind != "host"]

    def _alloc_vid(self, ch: Channel) -> int | None:
        used = ch.used_vids()
        for vid in range(1, 4095):
            if vid not in used:
                return vid
        return None

    # -- reconcile: destinations, trees, failures, requests -----------------------
    def reconcile(self, now: float, view: FabricView, intent, request_budget: int = 1 << 30,
                  only: Iterable[tuple[str, str]] | None = None, pause=None) -> Effects:
        """Bring every channel in line with membership and the live view; start due requests.

        ``only``: just these channels (those whose receivers or source just changed), in the
        size of them, not of the state; member expiry and everything else that is due by time
        waits for the next full pass.  ``pause()``: called every PAUSE_CHANNELS channels (the
        controller's hub gives others their turn); what changes meanwhile is seen by the
        channels after it, and a change that names a channel already done reconciles it again.
        """
        eff = Effects()
        if only is None and intent.query_interval > 0:
            self._touch_groups(eff, self.expire_members(now))
        protected = intent.protection == "standby"
        budget = [request_budget]
        if only is None:
            keys = sorted(self.channels)
            index = self.member_index(intent)
        else:
            keys = sorted(k for k in set(only) if k in self.channels)
            index = None  # each channel's group alone (group_members), not the whole index
        for n, key in enumerate(keys):
            if pause is not None and n and n % PAUSE_CHANNELS == 0:
                pause()  # (a membership change meanwhile names its channels: a partial pass follows)
            ch = self.channels.get(key)
            if ch is None:  # forgotten meanwhile
                continue
            rx = self.receivers(ch.source, ch.group, intent, exclude=(ch.switch, ch.port), index=index)
            if not protected:
                if ch.tree or ch.tree_dests or ch.dests:
                    for d, ds in ch.dests.items():
                        if ds.pending is not None:
                            self.audit.finish(ds.pending.request_id, now, "cancelled", "protection is off (restore)")
                    ch.tree.clear()
                    ch.tree_dests.clear()
                    ch.dests.clear()
                    eff.touch(key)
                continue
            eff += self._reconcile_channel(ch, rx, now, view, intent, budget)
        if only is None:
            for k in [k for k in self.silent if (k[0], k[1]) not in self.channels]:
                del self.silent[k]
        return eff

    def _drop_dest(self, ch: Channel, d: str, now: float, why: str) -> None:
        ds = ch.dests.pop(d, None)
        if ds is not None and ds.pending is not None:
            self.audit.finish(ds.pending.request_id, now, "cancelled", why)
        ch.tree_dests.discard(d)
        self.silent.pop((ch.source, ch.group, d), None)

    def _reconcile_channel(self, ch: Channel, rx: dict, now: float, view: FabricView, intent,
                           budget: list[int]) -> Effects:
        eff = Effects()
        wanted = set(rx)
        # 1. destinations that left
        for d in [d for d in ch.dests if d not in wanted]:
            self._drop_dest(ch, d, now, f"{d} has no receivers any more")
            eff.changed = True
        for d in [d for d in ch.tree_dests if d not in wanted]:
            ch.tree_dests.discard(d)
            eff.changed = True
        # 2. failures of active paths: promote the standby, else re-graft (restoration)
        regraft = []
        for d in sorted(wanted & set(ch.dests)):
            ds = ch.dests[d]
            active = ch.active_path(d)
            if active is None:
                continue
            why = active.broken_at(view)
            silent = self.silent.pop((ch.source, ch.group, d), None)
            if why is None and silent is not None and ds.standby is not None and ds.standby.intact(view) \
                    and ds.muted is None:
                # a silent active path may not be dead: stop delivering it first, and switch to the
                # standby copy only once the switch has surely stopped (no moment with both)
                ds.muted, ds.muted_at = silent, now
                self.audit.event("mute", ch, d, silent, path=active.text(),
                                 detail=f"active stream no longer delivered; standby in {MUTE_HOLD} s")
                eff.changed = True
                continue
            if why is None and ds.muted is not None:
                if now - ds.muted_at < MUTE_HOLD:
                    continue
                why, silent = ds.muted, ds.muted
            if why is None:
                continue
            ds.muted = None
            sb = ds.standby
            old = active.text()
            if ds.pending is not None:
                self.audit.finish(ds.pending.request_id, now, "cancelled", f"active path failed: {why}")
                ds.pending = None
            if sb is not None and sb.intact(view):
                ds.active, ds.standby = sb, None
                ch.tree_dests.discard(d)
                ds.failovers += 1
                ds.retry_at, ds.backoff = now, 0.0
                self.counters["failovers"] += 1
                self.audit.event("failover", ch, d, why, from_path=old, to_path=sb.text(), vid=sb.vid,
                                 detection="silence" if silent else "topology")
            else:
                if sb is not None:
                    ds.standby = None
                ds.active = None
                ch.tree_dests.discard(d)
                regraft.append(d)
                self.counters["restorations"] += 1
                self.audit.event("restore", ch, d, why, from_path=old,
                                 detail="no working standby path: re-grafting onto the tree")
            eff.changed = True
        # 3. standby paths that broke
        for d in sorted(ch.dests):
            ds = ch.dests[d]
            if ds.standby is not None:
                why = ds.standby.broken_at(view)
                if why is not None:
                    ds.muted = None  # nothing to switch to: the active path delivers again
                    self.audit.event("standby-lost", ch, d, why, path=ds.standby.text(), vid=ds.standby.vid)
                    ds.standby = None
                    ds.retry_at, ds.backoff = now, 0.0
                    eff.changed = True
        ch.prune()
        # 4. new destinations and re-grafts join the tree
        for d in sorted(wanted):
            ds = ch.dests.get(d)
            if ds is None:
                ds = ch.dests[d] = Dest(d, retry_at=now)
                eff.changed = True
            if ds.active is None and d not in ch.tree_dests:
                if ch.graft(d, view, self.graphs):
                    eff.changed = True
                    ds.note = ""
                else:
                    ds.note = "unreachable from the source's switch"
        ch.prune()
        # 5. standby requests: time out, retry, start
        for d in sorted(wanted):
            ds = ch.dests[d]
            if d == ch.switch:
                ds.note = "receivers on the source's own switch: no path to protect"
                continue
            if ds.pending is not None:
                if now - ds.pending.started > intent.request_timeout:
                    p = ds.pending
                    reached = sorted(p.joined)
                    self.audit.finish(p.request_id, now, "failed",
                                      f"no branch reached the source within {intent.request_timeout} s "
                                      f"(joined: {', '.join(reached) or 'none'})")
                    ds.pending = None
                    self._backoff(ds, now, intent)
                    ds.note = "last request did not reach the source"
                    eff.changed = True
                continue
            if ds.standby is None and now >= ds.retry_at and budget[0] > 0:
                budget[0] -= 1
                eff += self.originate(ch, d, now, view, intent)
        if eff.changed:  # (every change above is to this channel's tree, paths or requests)
            eff.channels.add(ch.key)
        return eff

    def _backoff(self, ds: Dest, now: float, intent) -> None:
        ds.backoff = min(max(ds.backoff * 2, intent.request_retry), intent.request_retry_max)
        ds.retry_at = now + ds.backoff

    def topology_improved(self, now: float) -> None:
        """A link or switch came back: destinations without a standby path may try again now."""
        for ch in self.channels.values():
            for ds in ch.dests.values():
                if ds.standby is None and ds.pending is None:
                    ds.retry_at, ds.backoff = now, 0.0

    # -- requests -----------------------------------------------------------------
    def originate(self, ch: Channel, d: str, now: float, view: FabricView, intent) -> Effects:
        """The destination device ``d`` asks for a standby path: out of its non-active upstream ports."""
        ds = ch.dests[d]
        active = ch.active_path(d)
        if active is None or active.broken_at(view) is not None:
            return Effects()
        act_in = active.hops[-1].in_port
        reach = self.graphs.reach(view, ch.switch, frozenset({d}))
        ports, skipped = [], []
        for p in self.fabric_ports(d):
            if p.port == act_in:
                continue
            if not view.port_live(d, p.port) or p.peer in view.dead_switches:
                skipped.append(f"{p.port} (down)")
            elif p.peer not in reach:
                skipped.append(f"{p.port} (no way to the source but through {d})")
            else:
                ports.append(p.port)
        vid = self._alloc_vid(ch)
        rid = next(self._rids) & 0xFFFFFFFF
        rec = self.audit.start(rid, ch, d, vid or 0, now, active_path=active.text(), sent_ports=ports,
                               excluded_ports=[f"{act_in} (active upstream)"] + skipped)
        if not ports or vid is None:
            why = "no VLAN id left for this channel" if vid is None else \
                "no upstream direction besides the active one"
            self.audit.hop(rid, now, d, "not-sent", why)
            self.audit.finish(rid, now, "failed", why)
            ds.note = why
            self._backoff(ds, now, intent)
            return Effects(changed=False)
        ds.pending = Pending(rid, vid, now, tuple(ports))
        req = wire.StandbyRequest(rid, self.dpid(d), self.dpid(d), ch.source, ch.group, vid)
        frame = req.encode()
        self.audit.hop(rid, now, d, "sent", f"destination device asks for a standby path out of ports {ports} "
                       f"(active upstream port {act_in} excluded)",
                       forwarded=[{"port": p, "to": self.topo.ports[(d, p)].peer} for p in ports])
        self.counters["requests_sent"] += 1
        rec["frame"] = frame[:14 + wire.REQUEST_LEN].hex()
        return Effects(changed=False, sends=[(d, p, frame) for p in ports])

    def handle_request(self, switch: str, in_port: int, req: wire.StandbyRequest, now: float,
                       view: FabricView) -> Effects:
        """A request arrived at ``switch`` on ``in_port`` (a packet-in): join, suppress or complete."""
        self.counters["request_hops"] += 1
        pi = self.topo.ports.get((switch, in_port))
        if pi is None or pi.kind == "host":
            raise wire.BadPacket(f"standby request on {switch}:{in_port}, which is not a fabric port")
        neighbour = pi.peer
        rid = req.request_id
        base = {"in_port": in_port, "from": neighbour}
        if req.sender_device != self.dpid(neighbour):
            self.audit.hop(rid, now, switch, "rejected",
                           f"sender device {req.sender_device:#x} is not {neighbour} "
                           f"({self.dpid(neighbour):#x}), the switch wired to port {in_port}", **base)
            self.counters["requests_rejected"] += 1
            raise wire.BadPacket(f"standby request on {switch}:{in_port} claims sender {req.sender_device:#x}, "
                                 f"but {neighbour} is wired there")
        dest = self.switch_of(req.dest_device)
        ch = self.channels.get((req.source, req.group))
        ds = ch.dests.get(dest) if ch is not None and dest is not None else None
        pend = ds.pending if ds is not None else None
        if pend is None or pend.request_id != rid or pend.vid != req.vid:
            self.audit.hop(rid, now, switch, "stale", "no such request in flight (finished, superseded or "
                           "unknown): dropped", **base)
            self.counters["requests_stale"] += 1
            return Effects()
        if req.hops_left <= 1:
            self.audit.hop(rid, now, switch, "hop-limit", "hop limit reached: dropped", **base)
            return Effects()
        if switch == dest:
            self.audit.hop(rid, now, switch, "loop", "back at the destination device: dropped", **base)
            return Effects()
        active = ch.active_path(dest)
        if switch == ch.switch:
            return self._complete(ch, ds, pend, in_port, now, view, active, base)
        if switch in pend.joined:
            first = pend.joined[switch]
            self.audit.hop(rid, now, switch, "duplicate", f"already joined this request from {first.from_switch} "
                           f"(port {first.in_port}): not forwarded again", **base)
            return Effects()
        if active is not None and switch in active.devices:
            self.audit.hop(rid, now, switch, "suppressed",
                           f"{switch} is on {dest}'s active path {active.text()}: does not join the standby "
                           f"path, does not forward the request", **base)
            self.counters["requests_suppressed"] += 1
            return Effects()
        ports, how = self._toward_source(ch, dest, switch, in_port, view, active)
        if not ports:
            self.audit.hop(rid, now, switch, "dead-end", f"no live port toward the source's switch {ch.switch} "
                           f"except back where it came from: dropped", **base)
            return Effects()
        pend.joined[switch] = JoinRecord(in_port, neighbour, tuple(ports), now)
        out = req.forwarded_by(self.dpid(switch)).encode()
        self.audit.hop(rid, now, switch, "joined",
                       f"not on {dest}'s active path: installs standby state (vid {req.vid}: in on "
                       f"{'/'.join(map(str, ports))}, out on {in_port}) and forwards toward {ch.switch} {how}",
                       **base, forwarded=[{"port": p, "to": self.topo.ports[(switch, p)].peer} for p in ports])
        eff = Effects(sends=[(switch, p, out) for p in ports])
        eff.touch(ch.key)
        return eff

    def _toward_source(self, ch: Channel, dest: str, switch: str, in_port: int, view: FabricView,
                       active: Path | None) -> tuple[list[int], str]:
        """Ports of ``switch`` on shortest paths toward the root (RPF, every equal-cost direction);
        a detour around ``dest``'s active path when every such direction leads into it."""
        dist, _ = self.graphs.bfs(view, ch.switch)
        here = dist.get(switch)
        cands = []
        for nbr, mine, _ in self.graphs.neighbours(view, switch):
            if mine == in_port or nbr == dest or here is None:
                continue
            if dist.get(nbr) == here - 1:
                cands.append((mine, nbr))
        blocked = set(active.devices[1:]) if active is not None else set()
        if cands and not all(n in blocked for _, n in cands):
            return sorted({p for p, _ in cands}), "(every shortest direction)"
        removed = frozenset(n for n in blocked | {dest} if n != switch)
        dist2, _ = self.graphs.bfs(view, ch.switch, removed)
        here2 = dist2.get(switch)
        if here2 is None:
            return [], ""
        ports = sorted({mine for nbr, mine, _ in self.graphs.neighbours(view, switch)
                        if nbr not in removed and mine != in_port and dist2.get(nbr) == here2 - 1})
        return ports, "(detour: every shortest direction leads into the active path)"

    def _complete(self, ch: Channel, ds: Dest, pend: Pending, in_port: int, now: float, view: FabricView,
                  active: Path | None, base: dict) -> Effects:
        rid = pend.request_id
        root = ch.switch
        hops = [Hop(root, None, in_port)]
        pi = self.topo.ports[(root, in_port)]
        node, port = pi.peer, pi.peer_port
        seen = {root}
        why = None
        for _ in range(MAX_HOPS):
            if node in seen:
                why = f"loop at {node}"
                break
            seen.add(node)
            if node == ds.switch:
                if port not in pend.sent_ports:
                    why = f"arrived through {ds.switch}:{port}, a port the request was not sent on"
                hops.append(Hop(node, port, None))
                break
            rec = pend.joined.get(node)
            if rec is None:
                why = f"{node} did not join this request"
                break
            if port not in rec.up_ports:
                why = f"{node} did not forward the request on port {port}"
                break
            hops.append(Hop(node, port, rec.in_port))
            nxt = self.topo.ports[(node, rec.in_port)]
            node, port = nxt.peer, nxt.peer_port
        else:
            why = "path longer than the hop limit"
        path = Path(pend.vid, tuple(hops), rid, now) if why is None else None
        if path is not None:
            why = path.broken_at(view)
        if path is not None and why is None and active is not None:
            shared = set(path.transit) & set(active.devices)
            if shared:
                why = f"shares {sorted(shared)} with the active path"
        if why is not None:
            self.audit.hop(rid, now, root, "rejected", f"source's switch cannot complete this branch: {why}", **base)
            return Effects()
        ds.standby = path
        ds.pending = None
        ds.note = ""
        ds.backoff = 0.0
        pruned = sorted(set(pend.joined) - set(path.transit))
        self.audit.hop(rid, now, root, "completed",
                       f"source's switch: standby path {path.text()} complete; feeding (S,G) tagged vid "
                       f"{path.vid} down it as well as down the active tree", **base)
        for n in pruned:
            self.audit.hop(rid, now, n, "pruned", "joined, but not on the completed standby path: state removed")
        self.audit.finish(rid, now, "complete", f"standby path {path.text()}")
        self.audit.requests[rid]["standby_path"] = path.text()
        self.audit.event("standby", ch, ds.switch, "standby path complete", path=path.text(), vid=path.vid,
                         request_id=rid)
        self.counters["standby_complete"] += 1
        eff = Effects()
        eff.touch(ch.key)
        return eff

    # -- persistence (a controller restart keeps trees, paths and members: nothing changes) ----
    def snapshot(self, now: float, wall: float, pause=None) -> dict:
        """JSON-able state; times as wall clock (monotonic time does not survive a restart).

        ``pause()``: called every 200 memberships and every PAUSE_CHANNELS channels (the hub's
        turn for others); each entry is taken whole, and a change meanwhile asks for the next
        save."""
        def path(p: Path | None):
            return None if p is None else {"vid": p.vid, "request_id": p.request_id,
                                           "hops": [[h.switch, h.in_port, h.out_port] for h in p.hops]}

        members = []
        for (sw, port), groups in sorted(self.members.items()):
            for g, m in sorted(groups.items()):  # (a copy: a change during a pause waits for the next save)
                if pause is not None and len(members) % 200 == 199:
                    pause()
                members.append({"switch": sw, "port": port, "group": g, "mode": m.mode, "sources": sorted(m.sources),
                                "version": m.version, "host": m.host,
                                "expires": None if m.expires is None else wall + (m.expires - now)})
        channels = []
        for n, key in enumerate(sorted(self.channels)):
            if pause is not None and n % PAUSE_CHANNELS == PAUSE_CHANNELS - 1:
                pause()
            ch = self.channels.get(key)
            if ch is None:
                continue
            channels.append({"source": ch.source, "group": ch.group, "switch": ch.switch, "port": ch.port,
                             "host": ch.host, "slot": ch.slot,
                             "tree": {n: list(v) for n, v in sorted(ch.tree.items())},
                             "tree_dests": sorted(ch.tree_dests),
                             "dests": {d: {"active": path(ds.active), "standby": path(ds.standby),
                                           "failovers": ds.failovers} for d, ds in sorted(ch.dests.items())}})
        return {"version": 1, "saved": wall, "members": members, "channels": channels}

    def restore(self, data: dict, now: float, wall: float) -> None:
        """Load a snapshot; raises ValueError (nothing loaded) if it does not fit the topology."""
        topo = self.topo

        def port_ok(sw, port):
            if port is not None and (sw, port) not in topo.ports:
                raise ValueError(f"{sw}:{port} is not in the topology")

        def path(d):
            if d is None:
                return None
            hops = tuple(Hop(sw, i, o) for sw, i, o in d["hops"])
            for h in hops:
                if h.switch not in topo.switches:
                    raise ValueError(f"unknown switch {h.switch}")
                port_ok(h.switch, h.in_port)
                port_ok(h.switch, h.out_port)
            return Path(int(d["vid"]), hops, int(d.get("request_id", 0)), now)

        if data.get("version") != 1:
            raise ValueError(f"snapshot version {data.get('version')!r}")
        members: dict = {}
        for m in data["members"]:
            port_ok(m["switch"], m["port"])
            exp = m["expires"]
            if exp is not None and exp <= wall:
                continue
            members.setdefault((m["switch"], int(m["port"])), {})[m["group"]] = Membership(
                m["mode"], frozenset(m["sources"]), int(m["version"]), None if exp is None else now + (exp - wall),
                m["host"], now)
        channels = {}
        for c in data["channels"]:
            port_ok(c["switch"], c["port"])
            ch = Channel(c["source"], c["group"], c["switch"], int(c["port"]), c["host"], now)
            for n, (parent, pport, inport) in c["tree"].items():
                port_ok(parent, pport)
                port_ok(n, inport)
                ch.tree[n] = (parent, int(pport), int(inport))
            ch.tree_dests = set(c["tree_dests"])
            for d, e in c["dests"].items():
                ch.dests[d] = Dest(d, path(e["active"]), path(e["standby"]), retry_at=now,
                                   failovers=int(e.get("failovers", 0)))
            slot = c.get("slot")  # (a snapshot from before slots has none: numbered afresh)
            ch.slot = int(slot) if isinstance(slot, int) and 0 <= slot < SLOTS else -1
            channels[ch.key] = ch
        if len(channels) > SLOTS:
            raise ValueError(f"{len(channels)} channels, at most {SLOTS}")
        taken: set[int] = set()
        renumber = []
        for key in sorted(channels):
            ch = channels[key]
            if ch.slot < 0 or ch.slot in taken:
                renumber.append(ch)
            else:
                taken.add(ch.slot)
        free = (i for i in range(SLOTS) if i not in taken)
        for ch in renumber:
            ch.slot = next(free)
            taken.add(ch.slot)
        self.members, self.channels = members, channels
        self._next_slot = (max(taken) + 1) % SLOTS if taken else 0

    # -- views for REST ---------------------------------------------------------
    def channel_json(self, ch: Channel, view: FabricView, intent, now: float) -> dict:
        rx = self.receivers(ch.source, ch.group, intent, exclude=(ch.switch, ch.port))
        protected = intent.protection == "standby"
        tree = ch.tree if protected else restore_tree(view, ch.switch, rx)[0]
        dests = {}
        for d, ports in rx.items():
            ds = ch.dests.get(d)
            act = ch.active_path(d) if protected else _tree_path_of(tree, ch.switch, d)
            entry = {"receiver_ports": list(ports), "active": None, "active_kind": None, "standby": None,
                     "pending_request": None, "note": ds.note if ds else "", "failovers": ds.failovers if ds else 0}
            if act is not None:
                entry["active"] = act.to_dict()
                entry["active_kind"] = "tree" if act.vid == 0 else "tagged (promoted standby)"
                entry["active_ok"] = act.intact(view)
            if ds is not None and ds.standby is not None:
                entry["standby"] = ds.standby.to_dict()
                entry["standby_ok"] = ds.standby.intact(view)
                entry["disjoint"] = not (set(ds.standby.transit) & set(act.devices)) if act else None
            if ds is not None and ds.pending is not None:
                p = ds.pending
                entry["pending_request"] = {"request_id": p.request_id, "vid": p.vid, "age_ms":
                                            round((now - p.started) * 1000, 1), "joined": sorted(p.joined)}
            dests[d] = entry
        edges = [{"from": parent, "out_port": pport, "to": node, "in_port": inp}
                 for node, (parent, pport, inp) in sorted(tree.items())]
        return {"source": ch.source, "group": ch.group, "source_switch": ch.switch, "source_port": ch.port,
                "source_host": ch.host, "protection": intent.protection, "tree": edges,
                "tree_destinations": sorted(ch.tree_dests) if protected else sorted(rx),
                "destinations": dests}



def restore_tree(view: FabricView, root: str, rx: dict, graphs: Graphs | None = None) -> tuple[dict, set]:
    """The restoration baseline's tree: recomputed from the live view (shortest paths) every time."""
    dist, pred = (graphs or Graphs()).bfs(view, root)
    tree: dict[str, tuple[str, int, int]] = {}
    reached = set()
    for d in rx:
        if d == root:
            reached.add(d)
            continue
        if d not in dist:
            continue
        reached.add(d)
        node = d
        while node != root and node not in tree:
            tree[node] = pred[node]
            node = pred[node][0]
    return tree, reached


def _tree_path_of(tree: dict, root: str, dest: str) -> Path | None:
    ch = Channel("", "", root, 0, "", 0.0, tree=tree)
    return ch.tree_path(dest)

