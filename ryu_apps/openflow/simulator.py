"""One switch simulator: where a packet goes through a switch's OpenFlow 1.3 tables (pure).

Faucet's ``fakeoftable`` idea, grown up: tests (and models) ask where a packet
goes rather than read flow text.  A *state* is anything with ``flows`` (flows by
key), ``groups`` (by id) and ``meters`` (by id) dicts of :mod:`ofdata` objects
(``framework.state.SwitchState``, ``LayeredState``, or :func:`state_of`); it is
duck-typed, so this module imports nothing but :mod:`ofdata`.

A *packet* is a dict of header and pipeline field values, with the names and
value forms of :class:`ofdata.Match` (``eth_dst="02:..."``, ``ipv4_dst="10.0.0.1"``,
``eth_type=0x0800``, ``vlan_vid=0`` for untagged / ``0x1000 | vid`` tagged,
``nw_ttl=64``).  ovs-ofctl spellings are accepted too (``tun_id``, ``tun_dst``,
``dl_dst``, ``nw_src``, ``ttl`` ...) and come back spelled as given.  Pipeline
fields a switch starts at zero (``metadata``, ``reg0..7``, tunnel fields,
``ct_*``, ``vlan_vid``) match as zero when absent; any other field absent from the
packet matches no flow that names it.

What it models, as Open vSwitch 3.1 executes it (``ofproto-dpif-xlate.c``):

* the highest-priority matching flow per table (ties: the first in the state's
  order), then the instructions in OpenFlow order: meter (a pass-through, recorded
  in the outcome), apply-actions, write-metadata (value/mask), goto-table;
* actions as a list: ``output`` (to a port, ``IN_PORT``, ``CONTROLLER``, ``TABLE``;
  ``output:N`` with N the packet's in_port is skipped, as OVS does; ``NORMAL``,
  ``FLOOD``, ``ALL``, ``LOCAL`` are outcomes with that port number), ``set_field``
  on every field :mod:`ofdata` knows, ``dec_ttl`` (TTL 0 or 1: a ``controller``
  outcome with reason ``invalid_ttl`` and the action list stops there, as the
  datapath does; OVS's default asynchronous config then keeps that packet-in
  from the controller), ``push_vlan`` (a new outer tag, VID 0 and
  PCP 0 as OVS writes it; the old tag is kept as the inner one) / ``pop_vlan``,
  ``move`` (bit ranges), ``resubmit(port,table)`` (a lookup with the packet as it
  is now; its changes persist, a given in_port is restored afterwards), ``ct``
  (``ct_state``/``ct_zone`` set, and ``ct_mark`` when a ``commit`` sets a mark
  (``exec(set_field:M->ct_mark)``), the copy with ``table=`` recirculated; no NAT, no
  connection table: the mark is not remembered for later packets, and unlike OVS,
  which exposes the ct fields only to the recirculated copy and clears them for the
  rest of the action list, the packet keeps them after the action), groups;
* groups: ``all`` runs every bucket on its own copy of the packet, ``indirect`` its
  bucket, ``ff`` the first live bucket, ``select`` forks: every live bucket of
  non-zero weight is one possible path (outcomes carry the ``(group, bucket)``
  choices made).  A bucket is live when its ``watch_port`` is live (``live`` /
  ``down`` arguments) and its ``watch_group`` has a live bucket; OVS ignores
  liveness in ``all`` and ``indirect`` groups and so does this;
* a bound on table lookups and depth: a loop ends with a ``loop`` outcome.

Each run returns a list of :class:`Outcome`: ``output`` (port and the packet as
rewritten), ``controller`` (a punt), ``loop``, and ``drop`` (with the table that
dropped and why) for every fork of the packet that delivered nothing.
:class:`Fabric` chains switch states along a topology's links; a tunnel (VXLAN, Geneve) delivers
the packet with ``tunnel_id`` (its key, or the sender's VNI for ``key: flow``) and the underlay
addresses as ``tun_ipv4_src``/``tun_ipv4_dst``, as Open vSwitch's tunnel ports do.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ryu_apps.openflow.ofdata import (
    FIELDS,
    OFPG_ANY,
    OFPP_ALL,
    OFPP_ANY,
    OFPP_CONTROLLER,
    OFPP_FLOOD,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    OFPP_MAX,
    OFPP_NORMAL,
    OFPP_TABLE,
    OFPVID_PRESENT,
    Ct,
    DecTtl,
    Flow,
    GroupAction,
    Output,
    PopVlan,
    PushVlan,
    RawAction,
    RegMove,
    Resubmit,
    SetField,
)

#: table lookups one run may make (OVS stops a translation after 4096 resubmits)
MAX_LOOKUPS = 256
#: nested goto/resubmit/group depth (OVS: 64 resubmits deep)
MAX_DEPTH = 64
#: switches a packet may cross in a :class:`Fabric` before it counts as looping
MAX_HOPS = 32

#: ct_state a ``ct`` action gives the packet when the caller says nothing (+trk+new)
CT_NEW = 0x21

#: other spellings of fields -> the ofdata name
ALIASES: dict[str, str] = {spec.ofctl: name for name, spec in FIELDS.items() if spec.ofctl != name}
ALIASES.update({"ttl": "nw_ttl", "dl_src": "eth_src", "dl_dst": "eth_dst"})

#: pipeline fields a packet enters the switch with at zero (absent = 0)
ZERO_FIELDS = frozenset({"metadata", "vlan_vid", "tunnel_id", "tun_ipv4_src", "tun_ipv4_dst",
                         "ct_state", "ct_zone", "ct_mark", *(f"reg{i}" for i in range(8))})
#: fields that exist only inside one switch: a packet crossing a link leaves them behind
PIPELINE_FIELDS = ZERO_FIELDS - {"vlan_vid"} | {"in_port"}

_FLOOD_LIKE = (OFPP_NORMAL, OFPP_FLOOD, OFPP_ALL, OFPP_LOCAL)


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=65536)
def _str_int(name: str, value: str) -> int:
    spec = FIELDS.get(name)
    kind = spec.kind if spec is not None else None
    if kind == "mac" or (kind is None and value.count(":") == 5 and len(value) == 17):
        return int(value.replace(":", "").replace("-", ""), 16)
    if kind == "int":
        return int(value, 0)
    return int(ipaddress.ip_address(value))


def as_int(name: str, value: Any) -> int:
    """A field value (int, MAC / IP string, bytes) as an integer."""
    if value.__class__ is int:
        return value
    if isinstance(value, str):
        return _str_int(name, value)
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big")
    if isinstance(value, ipaddress._BaseAddress):
        return int(value)
    return int(value)


def from_int(name: str, value: int) -> Any:
    """An integer as the value form :class:`ofdata.Match` uses for ``name``."""
    spec = FIELDS.get(name)
    kind = spec.kind if spec is not None else "int"
    if kind == "mac":
        h = f"{value:012x}"
        return ":".join(h[k:k + 2] for k in range(0, 12, 2))
    if kind == "ipv4":
        return str(ipaddress.IPv4Address(value))
    if kind == "ipv6":
        return str(ipaddress.IPv6Address(value))
    return value


def field_matches(pkt: dict, name: str, value: Any, mask: Any) -> bool:
    """Does ``pkt`` match one ``(name, value, mask)`` of a :class:`ofdata.Match`?"""
    have = pkt.get(name)
    if have is None:
        if name not in ZERO_FIELDS:
            return False
        have = 0
    if mask is None:
        return as_int(name, have) == as_int(name, value)
    m = as_int(name, mask)
    return as_int(name, have) & m == as_int(name, value) & m


def _compile(fields: tuple) -> tuple:
    return tuple((n, as_int(n, v), None if mk is None else as_int(n, mk)) for n, v, mk in fields)


def _matches(compiled: tuple, pkt: dict, ints: dict) -> bool:
    for n, v, mk in compiled:
        have = ints.get(n)
        if have is None:
            raw = pkt.get(n)
            if raw is None:
                if n not in ZERO_FIELDS:
                    return False
                have = 0
            else:
                have = as_int(n, raw)
            ints[n] = have
        if (have != v) if mk is None else (have & mk != v):
            return False
    return True


def normalise(pkt: dict) -> tuple[dict, dict[str, str]]:
    """``pkt`` with ofdata field names, and the caller's spellings (ofdata name -> alias)."""
    out: dict = {}
    spelled: dict[str, str] = {}
    for k, v in pkt.items():
        name = ALIASES.get(k, k)
        if name in out:
            raise ValueError(f"packet gives {name} twice ({spelled.get(name, name)!r} and {k!r})")
        if name != k:
            spelled[name] = k
        out[name] = v
    return out, spelled


def respell(pkt: dict, spelled: dict[str, str]) -> dict:
    """Inverse of :func:`normalise` for a packet the simulator returns."""
    if not spelled:
        return pkt
    return {spelled.get(k, k): v for k, v in pkt.items()}


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

@dataclass
class Outcome:
    """One place a packet ends."""

    kind: str                 # output | controller | drop | loop
    port: int | None          # output: the port (a reserved number for NORMAL/FLOOD/ALL/LOCAL)
    packet: dict              # the packet as rewritten at that point
    flows: list               # the flows it hit, in order
    table: int | None = None  # the table whose flow output / punted; where it was dropped
    reason: str = ""          # drop: miss | actions=drop | no output | ...; controller: max_len=N | invalid_ttl
    choices: tuple = ()       # ((group_id, bucket index), ...) of every select group on its way
    meters: tuple = ()        # meters it passed (not applied: a simulator has no clock)

    def is_output(self, port: int | None = None, **fields: Any) -> bool:
        """Faucet's ``is_output``: an output (to ``port``) whose packet has these field values."""
        if self.kind != "output" or (port is not None and self.port != port):
            return False
        return all(k in self.packet and as_int(ALIASES.get(k, k), self.packet[k]) == as_int(ALIASES.get(k, k), v)
                   for k, v in fields.items())

    def __str__(self) -> str:
        where = {"output": f"output:{self.port}", "controller": "controller"}.get(self.kind, self.kind)
        extra = f" ({self.reason})" if self.reason and self.kind != "output" else ""
        pick = "".join(f" group {g:#x} bucket {b}" for g, b in self.choices)
        return f"{where}{extra} at table {self.table}{pick}"


def ports(outcomes: Iterable[Outcome]) -> list[int]:
    """The output ports of ``outcomes``, in order, each once."""
    seen: list[int] = []
    for o in outcomes:
        if o.kind == "output" and o.port not in seen:
            seen.append(o.port)
    return seen


@dataclass(frozen=True)
class Hop:
    """One next hop of :meth:`Switch.forwarding`."""

    port: int
    bucket: int | None = None  # index in the group; None for the flow's own output
    live: bool = True          # the switch can pick it: bucket live (select/ff) and weight > 0 (select)
    weight: int | None = None  # a select bucket's weight


@dataclass(frozen=True)
class Forwarding:
    """What one table does with a packet, read as next hops (every bucket of its group)."""

    kind: str                  # output | group | none | missing_group
    flow: Flow | None = None
    group_id: int | None = None
    group_type: str | None = None
    hops: tuple[Hop, ...] = ()

    @property
    def live_ports(self) -> tuple[int, ...]:
        seen: list[int] = []
        for h in self.hops:
            if h.live and h.port not in seen:
                seen.append(h.port)
        return tuple(seen)


@dataclass
class _State:
    flows: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)
    meters: dict = field(default_factory=dict)


def state_of(flows: Iterable[Flow] = (), groups: Iterable | dict = (), meters: Iterable | dict = ()) -> _State:
    """A state from lists (or id dicts) of flows, groups and meters."""
    g = dict(groups) if isinstance(groups, dict) else {x.group_id: x for x in groups}
    m = dict(meters) if isinstance(meters, dict) else {x.meter_id: x for x in meters}
    return _State({f.key: f for f in flows}, g, m)


def lookup(state, table: int, pkt: dict) -> Flow | None:
    """The highest-priority flow of ``table`` matching ``pkt`` (``state``: a state or flows)."""
    flows = state.flows.values() if hasattr(state, "flows") else state
    best = None
    ints: dict = {}
    for f in flows:
        if f.table != table or (best is not None and f.priority <= best.priority):
            continue
        if _matches(_compile(f.match.fields), pkt, ints):
            best = f
    return best


def _liveness(live, down) -> Callable[[int], bool]:
    down = frozenset(down)
    if live is None:
        return (lambda port: port not in down) if down else (lambda port: True)
    if callable(live):
        return (lambda port: live(port) and port not in down)
    live = frozenset(live)
    return lambda port: port in live and port not in down


# ---------------------------------------------------------------------------
# the switch
# ---------------------------------------------------------------------------

class Switch:
    """A state compiled for lookups, with the port liveness its datapath sees.

    ``live``: the live ports (a collection or a predicate; None: every port),
    ``down``: ports that are not live.  ``ct_state``: what a ``ct`` action sets.
    The state is read once, when the first lookup needs it: build a new Switch after
    changing it.
    """

    def __init__(self, state, *, live=None, down: Iterable[int] = (), ct_state: int = CT_NEW):
        self.state = state
        self.groups = state.groups
        self.meters = getattr(state, "meters", {})
        self.port_live = _liveness(live, down)
        self.ct_state = ct_state
        self._tables: dict[int, list] | None = None

    def _index(self) -> dict[int, list]:
        if self._tables is None:
            tables: dict[int, list] = {}
            for f in self.state.flows.values():
                tables.setdefault(f.table, []).append((f.priority, _compile(f.match.fields), f))
            for rows in tables.values():
                rows.sort(key=lambda r: -r[0])  # stable: ties keep the state's order
            self._tables = tables
        return self._tables

    def lookup(self, table: int, pkt: dict) -> Flow | None:
        """The highest-priority flow of ``table`` matching ``pkt`` (ofdata field names)."""
        ints: dict = {}
        for _, compiled, flow in self._index().get(table, ()):
            if _matches(compiled, pkt, ints):
                return flow
        return None

    # -- liveness ------------------------------------------------------------
    def bucket_live(self, bucket, depth: int = 0) -> bool:
        if bucket.watch_port != OFPP_ANY and not self.port_live(bucket.watch_port):
            return False
        if bucket.watch_group != OFPG_ANY:
            return self.group_live(bucket.watch_group, depth + 1)
        return True

    def group_live(self, group_id: int, depth: int = 0) -> bool:
        group = self.groups.get(group_id)
        if group is None or depth > MAX_DEPTH:
            return False
        return any(self.bucket_live(b, depth) for b in group.buckets)

    # -- walking -------------------------------------------------------------
    def run(self, pkt: dict, in_port: int | None = None, *, table: int = 0) -> list[Outcome]:
        """Every place ``pkt`` arriving on ``in_port`` can end up (select groups fork)."""
        pkt, spelled = normalise(pkt)
        if in_port is not None:
            pkt["in_port"] = in_port
        if "in_port" not in pkt:
            raise ValueError("the packet needs an in_port")
        walk = _Walk(self)
        walk.table(table, pkt, 0)
        outs = walk.finish()
        if spelled:
            for o in outs:
                o.packet = respell(o.packet, spelled)
        return outs

    def forwarding(self, table: int, pkt: dict) -> Forwarding:
        """Where ``table`` sends ``pkt``, as next hops: the flow's outputs up to its first group, then
        every bucket of that group with its liveness (``ff``: the first live bucket only); ports of
        groups nested in a bucket count as the bucket's, two levels deep."""
        pkt, _ = normalise(pkt)
        flow = self.lookup(table, pkt)
        if flow is None:
            return Forwarding("none")
        hops: list[Hop] = []
        for a in flow.actions:
            if isinstance(a, Output):
                hops.append(Hop(a.port))
            elif isinstance(a, GroupAction):
                group = self.groups.get(a.group_id)
                if group is None:
                    return Forwarding("missing_group", flow, a.group_id)
                buckets = list(enumerate(group.buckets))
                if group.type == "ff":
                    buckets = [(i, b) for i, b in buckets if self.bucket_live(b)][:1]
                for i, b in buckets:
                    alive = self.bucket_live(b) if group.type in ("ff", "select") else \
                        b.watch_port == OFPP_ANY or self.port_live(b.watch_port)
                    weight = b.weight if group.type == "select" else None
                    if weight is not None:
                        alive = alive and weight > 0
                    hops.extend(Hop(p, i, alive, weight) for p in self._bucket_ports(b, 0))
                return Forwarding("group", flow, group.group_id, group.type, tuple(hops))
        return Forwarding("output" if hops else "none", flow, hops=tuple(hops))

    def _bucket_ports(self, bucket, depth: int) -> list[int]:
        out = []
        for a in bucket.actions:
            if isinstance(a, Output):
                out.append(a.port)
            elif isinstance(a, GroupAction) and depth < 2 and a.group_id in self.groups:
                for b in self.groups[a.group_id].buckets:
                    out.extend(self._bucket_ports(b, depth + 1))
        return out


@dataclass
class _End:
    """Where a fork of the packet was last: its drop outcome if it delivers nothing."""

    table: int | None
    reason: str
    packet: dict
    flows: list
    choices: tuple
    meters: tuple


def _prefix(a: tuple, b: tuple) -> bool:
    return b[:len(a)] == a


class _Walk:
    """One packet's walk: the interpreter (state in the walk, the packet passed along)."""

    def __init__(self, sw: Switch):
        self.sw = sw
        self.events: list = []      # Outcome | _End, in the order they happened
        self.hit: list = []
        self.choices: tuple = ()
        self.meters: tuple = ()
        self.lookups = 0
        self.stopped = False        # the lookup bound was hit: unwind

    # -- records ---------------------------------------------------------------
    def out(self, kind: str, port, pkt: dict, table, reason: str = "") -> None:
        self.events.append(Outcome(kind, port, dict(pkt), list(self.hit), table, reason, self.choices,
                                   self.meters))

    def end(self, table, reason: str, pkt: dict) -> None:
        self.events.append(_End(table, reason, dict(pkt), list(self.hit), self.choices, self.meters))

    def finish(self) -> list[Outcome]:
        """Outcomes, plus one drop for every fork (a maximal choice sequence) that delivered nothing."""
        delivered = [e for e in self.events if isinstance(e, Outcome)]
        seen: list[tuple] = []
        for e in self.events:
            c = e.choices
            if c not in seen:
                seen.append(c)
        forks = [c for c in seen if not any(len(o) > len(c) and _prefix(c, o) for o in seen)] or [()]
        drops: dict[int, Outcome] = {}
        for fork in forks:
            if any(_prefix(o.choices, fork) for o in delivered):
                continue
            # where the fork itself ended (a bucket's own end), else the last end on its way
            ends = [i for i, e in enumerate(self.events) if isinstance(e, _End) and _prefix(e.choices, fork)]
            own = [i for i in ends if self.events[i].choices == fork]
            if not ends:
                continue
            last = (own or ends)[-1]
            e = self.events[last]
            drops[last] = Outcome("drop", None, e.packet, e.flows, e.table, e.reason, fork, e.meters)
        return [e if isinstance(e, Outcome) else drops[i] for i, e in enumerate(self.events)
                if isinstance(e, Outcome) or i in drops]

    # -- tables -----------------------------------------------------------------
    def table(self, table: int, pkt: dict, depth: int) -> None:
        if self.stopped:
            return
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS or depth > MAX_DEPTH:
            why = f"more than {MAX_LOOKUPS} lookups" if self.lookups > MAX_LOOKUPS else f"deeper than {MAX_DEPTH}"
            self.out("loop", None, pkt, table, why)
            self.stopped = True
            return
        flow = self.sw.lookup(table, pkt)
        if flow is None:
            self.end(table, "miss", pkt)
            return
        self.hit.append(flow)
        if flow.meter is not None:
            self.meters += (flow.meter,)
        mark = len(self.events)
        if not self.actions(flow.actions, pkt, table, depth):
            return
        if flow.write_metadata is not None:
            value, mask = flow.write_metadata
            pkt["metadata"] = (as_int("metadata", pkt.get("metadata", 0)) & ~mask) | value
        if flow.goto is None:
            # unless its actions said why already (a group without a live bucket ...)
            if not any(isinstance(e, _End) and e.table == table and e.choices == self.choices
                       for e in self.events[mark:]):
                self.end(table, "no output" if flow.actions else "actions=drop", pkt)
            return
        self.table(flow.goto, pkt, depth + 1)

    # -- actions ----------------------------------------------------------------
    def actions(self, actions: tuple, pkt: dict, table: int, depth: int) -> bool:
        """Run an action list on ``pkt`` (in place); False: it stopped (invalid TTL, loop)."""
        for a in actions:
            if self.stopped:
                return False
            cls = a.__class__
            if cls is Output:
                self.output(a, pkt, table, depth)
            elif cls is SetField:
                pkt[a.field] = a.value
            elif cls is GroupAction:
                self.group(a.group_id, pkt, table, depth + 1)
            elif cls is DecTtl:
                ttl = as_int("nw_ttl", pkt.get("nw_ttl", 64))
                if ttl <= 1:  # OVS: a packet-in (reason invalid_ttl) to every controller, the list stops
                    self.out("controller", None, pkt, table, "invalid_ttl")
                    return False
                pkt["nw_ttl"] = ttl - 1
            elif cls is Resubmit:
                saved = pkt.get("in_port")
                if a.in_port != OFPP_IN_PORT:
                    pkt["in_port"] = a.in_port
                self.table(a.table, pkt, depth + 1)
                if a.in_port != OFPP_IN_PORT:
                    pkt["in_port"] = saved
            elif cls is RegMove:
                _move(a, pkt)
            elif cls is PushVlan:
                vid = as_int("vlan_vid", pkt.get("vlan_vid", 0))
                if vid & OFPVID_PRESENT:
                    pkt["vlan_inner"] = ((vid, pkt.get("vlan_pcp", 0)),) + tuple(pkt.get("vlan_inner", ()))
                pkt["vlan_vid"], pkt["vlan_pcp"] = OFPVID_PRESENT, 0
            elif cls is PopVlan:
                inner = tuple(pkt.pop("vlan_inner", ()))
                if inner:
                    (pkt["vlan_vid"], pkt["vlan_pcp"]), rest = inner[0], inner[1:]
                    if rest:
                        pkt["vlan_inner"] = rest
                else:
                    pkt["vlan_vid"] = 0
                    pkt.pop("vlan_pcp", None)
            elif cls is Ct:
                pkt["ct_state"], pkt["ct_zone"] = self.sw.ct_state, a.zone
                if a.commit and a.mark is not None:
                    pkt["ct_mark"] = a.mark  # exec(set_field:M->ct_mark): the committed connection's mark
                if a.table is not None:
                    self.branch(pkt, lambda p, t=a.table: self.table(t, p, depth + 1))
            elif cls is RawAction:
                continue  # unknown to the model: no effect
        return not self.stopped

    def output(self, a: Output, pkt: dict, table: int, depth: int) -> None:
        port = a.port
        in_port = pkt.get("in_port")
        if port == OFPP_CONTROLLER:
            self.out("controller", None, pkt, table, f"max_len={a.max_len}")
        elif port == OFPP_IN_PORT:
            self.out("output", in_port, pkt, table)
        elif port == OFPP_TABLE:
            self.branch(pkt, lambda p: self.table(0, p, depth + 1))
        elif port == in_port:
            return  # OVS: "skipping output to input port"
        elif port < OFPP_MAX or port in _FLOOD_LIKE:
            self.out("output", port, pkt, table)

    def branch(self, pkt: dict, run, choice: tuple = ()) -> None:
        """Run ``run`` on a copy of ``pkt`` (a bucket, a recirculation); the walk's place is restored."""
        hit, choices, meters = len(self.hit), self.choices, self.meters
        self.choices = choices + choice
        try:
            run(dict(pkt))
        finally:
            del self.hit[hit:]
            self.choices, self.meters = choices, meters

    def group(self, group_id: int, pkt: dict, table: int, depth: int) -> None:
        group = self.sw.groups.get(group_id)
        if group is None:
            self.end(table, f"group {group_id:#x} missing", pkt)
            return
        if depth > MAX_DEPTH:
            self.out("loop", None, pkt, table, f"groups deeper than {MAX_DEPTH}")
            self.stopped = True
            return
        buckets = list(enumerate(group.buckets))
        if group.type == "ff":
            buckets = [(i, b) for i, b in buckets if self.sw.bucket_live(b)][:1]
        elif group.type == "select":
            buckets = [(i, b) for i, b in buckets if b.weight and self.sw.bucket_live(b)]
        if not buckets:
            self.end(table, f"group {group_id:#x} ({group.type}) has no live bucket", pkt)
            return
        for i, b in buckets:
            choice = ((group_id, i),) if group.type == "select" else ()

            def bucket(p, i=i, b=b, choice=choice):
                if choice:  # a fork of its own, even if the bucket does nothing
                    self.end(table, f"group {group_id:#x} bucket {i}: no output", p)
                self.actions(b.actions, p, table, depth)

            self.branch(pkt, bucket, choice)


def _move(a: RegMove, pkt: dict) -> None:
    src = as_int(a.src, pkt.get(a.src, 0))
    if a.src == "vlan_vid":
        src &= 0xFFF
    bits = (src >> a.src_ofs) & ((1 << a.n_bits) - 1)
    dst = as_int(a.dst, pkt.get(a.dst, 0))
    keep = 0
    if a.dst == "vlan_vid":
        keep, dst = dst & OFPVID_PRESENT, dst & 0xFFF
    mask = ((1 << a.n_bits) - 1) << a.dst_ofs
    pkt[a.dst] = from_int(a.dst, keep | (dst & ~mask) | (bits << a.dst_ofs))


def run(state, pkt: dict, in_port: int | None = None, *, table: int = 0, live=None, down: Iterable[int] = (),
        ct_state: int = CT_NEW) -> list[Outcome]:
    """Every place ``pkt`` arriving on ``in_port`` at ``state`` can end up (see :class:`Switch`)."""
    return Switch(state, live=live, down=down, ct_state=ct_state).run(pkt, in_port, table=table)


def forwarding(state, table: int, pkt: dict, *, live=None, down: Iterable[int] = ()) -> Forwarding:
    """What ``table`` of ``state`` does with ``pkt``, as next hops (see :meth:`Switch.forwarding`)."""
    return Switch(state, live=live, down=down).forwarding(table, pkt)


# ---------------------------------------------------------------------------
# a fabric of switches
# ---------------------------------------------------------------------------

class Fabric:
    """Switch states joined by a topology's links (duck-typed: ``links`` with ``a, a_port, b, b_port``,
    ``hosts`` by name with ``switch, port``).  ``down``: ``(switch, port)`` ends that carry
    nothing and that the switches see as not live (fast-failover and select buckets).

    A link whose ``kind`` is not ``veth`` is a tunnel (VXLAN, Geneve): the packet arrives with
    ``tunnel_id`` set to the link's ``key``, or for ``key: "flow"`` to the 24-bit VNI of the
    ``tunnel_id`` it was sent with, and ``tun_ipv4_src``/``tun_ipv4_dst`` the underlay addresses of
    the two switches' nodes when the topology has them (``switches[s].node``,
    ``nodes[n].underlay_ip``); every other pipeline field stays behind, as on any link."""

    def __init__(self, topology, states: dict, down: Iterable[tuple[str, int]] = frozenset()):
        self.topology, self.states, self.down = topology, states, frozenset(down)
        self.peer = {}
        self.link = {}
        for ln in topology.links:
            self.peer[(ln.a, ln.a_port)] = (ln.b, ln.b_port)
            self.peer[(ln.b, ln.b_port)] = (ln.a, ln.a_port)
            self.link[(ln.a, ln.a_port)] = self.link[(ln.b, ln.b_port)] = ln
        self.host_at = {(h.switch, h.port): name for name, h in topology.hosts.items()}
        self.switches = {
            name: Switch(st, down={p for s, p in self.down if s == name}) for name, st in states.items()}
        self.underlay: dict[str, str] = {}
        nodes = getattr(topology, "nodes", None) or {}
        for name, sw in (getattr(topology, "switches", None) or {}).items():
            node = nodes.get(getattr(sw, "node", None))
            if node is not None and getattr(node, "underlay_ip", None) is not None:
                self.underlay[name] = str(getattr(node.underlay_ip, "ip", node.underlay_ip))

    def cross(self, switch: str, port: int, pkt: dict) -> tuple[str, int, dict] | None:
        """Where ``pkt`` output on ``switch``:``port`` arrives: ``(switch, port, packet)`` at the far
        end of the link or tunnel; None for a port of no link, or a link end in ``down``."""
        if (switch, port) not in self.peer or (switch, port) in self.down:
            return None
        nxt, nport = self.peer[(switch, port)]
        packet = {k: v for k, v in pkt.items() if k not in PIPELINE_FIELDS}
        ln = self.link[(switch, port)]
        if getattr(ln, "kind", "veth") != "veth":
            key = getattr(ln, "key", 0)
            packet["tunnel_id"] = (as_int("tunnel_id", pkt.get("tunnel_id", 0)) if key == "flow" else int(key)) \
                & 0xFFFFFF
            if switch in self.underlay and nxt in self.underlay:
                packet["tun_ipv4_src"], packet["tun_ipv4_dst"] = self.underlay[switch], self.underlay[nxt]
        return nxt, nport, packet

    def send(self, host: str, pkt: dict) -> list[tuple[str, dict, list[str]]]:
        """Inject ``pkt`` from ``host``; return (where, packet, switch path) for every end:
        ``host:<name>``, ``port:<switch>:<port>`` (an output to no host and no live link),
        ``drop``, ``controller``, ``loop``."""
        return [(where, out.packet, path) for where, out, path in self.trace(host, pkt)]

    def trace(self, host: str, pkt: dict) -> list[tuple[str, Outcome, list[str]]]:
        """Like :meth:`send`, with each end's :class:`Outcome` (at the switch where it ended)."""
        h = self.topology.hosts[host]
        pkt, spelled = normalise(pkt)
        ends = self._go(h.switch, h.port, pkt, [h.switch])
        for _, out, _ in ends:
            out.packet = respell(out.packet, spelled)
        return ends

    def _go(self, switch, port, pkt, path):
        if len(path) > MAX_HOPS:
            return [("loop", Outcome("loop", None, pkt, [], None, f"more than {MAX_HOPS} switches"), path)]
        ends = []
        for out in self.switches[switch].run(pkt, port):
            if out.kind != "output":
                ends.append((out.kind, out, path))
                continue
            if (switch, out.port) in self.host_at:
                ends.append((f"host:{self.host_at[(switch, out.port)]}", out, path))
                continue
            nxt = self.cross(switch, out.port, out.packet)
            if nxt is not None:
                ends += self._go(nxt[0], nxt[1], nxt[2], path + [nxt[0]])
            else:
                ends.append((f"port:{switch}:{out.port}", out, path))
        return ends


__all__ = [
    "ALIASES",
    "CT_NEW",
    "MAX_DEPTH",
    "MAX_HOPS",
    "MAX_LOOKUPS",
    "Fabric",
    "Forwarding",
    "Hop",
    "Outcome",
    "Switch",
    "as_int",
    "field_matches",
    "forwarding",
    "from_int",
    "lookup",
    "normalise",
    "ports",
    "respell",
    "run",
    "state_of",
]
