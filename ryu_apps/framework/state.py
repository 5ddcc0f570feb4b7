"""Desired switch state as data, and the diff against what a switch holds.

Apps return :class:`SwitchState` objects (flows, groups, meters); the core
merges them per switch, checks each flow against the pipeline, and hands the
result to that switch's programmer, which calls :func:`diff` against the
state it read from (or last wrote to) the switch.  Everything here is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ryu_apps.framework import pipeline
from ryu_apps.openflow import ofwire
from ryu_apps.openflow.ofdata import Flow, Group, Meter


class StateConflict(ValueError):
    """Two apps computed different entries for the same flow, group or meter."""


@dataclass
class SwitchState:
    """Everything the controller wants on one switch."""

    flows: dict[tuple, Flow] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    meters: dict[int, Meter] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)  # cookie -> object label

    def add_flow(self, flow: Flow, app: str | None = None) -> None:
        if app is not None:
            pipeline.check_flow(app, flow)
        key = flow.key
        old = self.flows.get(key)
        if old is not None and old != flow:
            raise StateConflict(f"two flows with table={flow.table} priority={flow.priority} "
                                f"match={flow.match.to_dict()}: {old} / {flow}")
        self.flows[key] = flow

    def add_group(self, group: Group) -> None:
        old = self.groups.get(group.group_id)
        if old is not None and old != group:
            raise StateConflict(f"group {group.group_id} computed twice with different buckets")
        self.groups[group.group_id] = group

    def add_meter(self, meter: Meter) -> None:
        old = self.meters.get(meter.meter_id)
        if old is not None and old != meter:
            raise StateConflict(f"meter {meter.meter_id} computed twice with different bands")
        self.meters[meter.meter_id] = meter

    def label(self, cookie: int, text: str) -> None:
        self.owners[cookie] = text

    def merge(self, other: "SwitchState", app: str | None = None) -> None:
        for flow in other.flows.values():
            self.add_flow(flow, app)
        for group in other.groups.values():
            self.add_group(group)
        for meter in other.meters.values():
            self.add_meter(meter)
        self.owners.update(other.owners)

    def check_references(self) -> None:
        """Every group/meter a flow or bucket uses must be in this state."""
        for flow in self.flows.values():
            if flow.meter is not None and flow.meter not in self.meters:
                raise StateConflict(f"flow {flow} uses meter {flow.meter}, which no app defines")
            for gid in _groups_used(flow.actions):
                if gid not in self.groups:
                    raise StateConflict(f"flow {flow} uses group {gid}, which no app defines")

    def summary(self) -> dict:
        return {"flows": len(self.flows), "groups": len(self.groups), "meters": len(self.meters)}


def _groups_used(actions) -> list[int]:
    return [a.group_id for a in actions if type(a).__name__ == "GroupAction"]


@dataclass
class ActualState:
    """What a switch holds, in canonical comparable form (as read or last written).

    ``flows`` maps a flow identity ``(table, priority, match bytes)`` to its
    body ``(cookie, instruction bytes, idle, hard, flags)``; groups and meters
    map ids to their canonical encodings.
    """

    flows: dict[tuple, tuple] = field(default_factory=dict)
    groups: dict[int, bytes] = field(default_factory=dict)
    meters: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, desired: SwitchState) -> "ActualState":
        """The state a switch is in after ``desired`` was applied completely."""
        return cls({ofwire.flow_identity(f): ofwire.flow_body(f) for f in desired.flows.values()},
                   {g.group_id: ofwire.group_key(g) for g in desired.groups.values()},
                   {m.meter_id: ofwire.meter_key(m) for m in desired.meters.values()})


@dataclass
class Changes:
    """The minimal set of messages that takes a switch from actual to desired."""

    meter_adds: list[Meter] = field(default_factory=list)
    meter_mods: list[Meter] = field(default_factory=list)
    group_adds: list[Group] = field(default_factory=list)
    group_mods: list[Group] = field(default_factory=list)
    flow_deletes: list[tuple] = field(default_factory=list)  # identities
    flow_adds: list[Flow] = field(default_factory=list)      # new, or cookie changed (ADD replaces)
    flow_mods: list[Flow] = field(default_factory=list)      # same cookie, other actions/timeouts
    group_deletes: list[int] = field(default_factory=list)
    meter_deletes: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(self.counts().values())

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}


PAUSE_EVERY = 2000  # entries between two calls of a diff's ``pause`` (the hub's turn for others)


def diff(desired: SwitchState, actual: ActualState, pause=None) -> Changes:
    """Compute what to send so the switch holds exactly ``desired``.

    Flow identity is OpenFlow's (table, priority, match).  A flow whose cookie
    changed (or whose timeouts or flags changed) is re-added, since an OpenFlow 1.3
    modify keeps the old cookie and timeouts; one whose instructions alone
    changed is modified in place, so its counters survive.
    """
    ch = Changes()
    for mid, meter in desired.meters.items():
        have = actual.meters.get(mid)
        if have is None:
            ch.meter_adds.append(meter)
        elif have != ofwire.meter_key(meter):
            ch.meter_mods.append(meter)
    for gid, group in desired.groups.items():
        have = actual.groups.get(gid)
        if have is None:
            ch.group_adds.append(group)
        elif have != ofwire.group_key(group):
            ch.group_mods.append(group)

    seen = set()
    for n, flow in enumerate(desired.flows.values()):
        if pause is not None and n % PAUSE_EVERY == PAUSE_EVERY - 1:
            pause()
        ident = ofwire.flow_identity(flow)
        seen.add(ident)
        have = actual.flows.get(ident)
        if have is None:
            ch.flow_adds.append(flow)
            continue
        body = ofwire.flow_body(flow)
        if have == body:
            continue
        if have[0] != body[0] or have[2:] != body[2:]:
            ch.flow_adds.append(flow)  # cookie/timeouts/flags: only an ADD (which replaces) changes them
        else:
            ch.flow_mods.append(flow)  # instructions only: modify in place, counters survive
    if pause is None:
        ch.flow_deletes = [ident for ident in actual.flows if ident not in seen]
    else:  # (the switch's 160k flows in one go held the hub ~15 ms of every audit)
        for n, ident in enumerate(actual.flows):
            if n % PAUSE_EVERY == PAUSE_EVERY - 1:
                pause()
            if ident not in seen:
                ch.flow_deletes.append(ident)
    ch.group_deletes = sorted(gid for gid in actual.groups if gid not in desired.groups)
    ch.meter_deletes = sorted(mid for mid in actual.meters if mid not in desired.meters)
    return ch


# ---------------------------------------------------------------------------
# Incremental desired state: one layer per (app, part), merged per switch.


@dataclass
class Touched:
    """Entries whose merged desired value may have changed since the switch last got them."""

    flows: set = field(default_factory=set)     # flow keys (table, priority, match)
    groups: set = field(default_factory=set)
    meters: set = field(default_factory=set)
    gone: dict = field(default_factory=dict)    # flow key -> the flow that was removed (its wire identity)

    def update(self, other: "Touched") -> None:
        self.gone.update(other.gone)
        self.flows |= other.flows
        self.groups |= other.groups
        self.meters |= other.meters

    def __len__(self) -> int:
        return len(self.flows) + len(self.groups) + len(self.meters)


def _flow_refs(flow: Flow):
    if flow.meter is not None:
        yield ("m", flow.meter)
    for gid in _groups_used(flow.actions):
        yield ("g", gid)


class LayeredState:
    """A switch's desired state as the union of layers, each one app's part (``(app, part)``).

    Looks like a :class:`SwitchState` to readers (``flows``, ``groups``, ``meters``,
    ``owners`` are the merged dicts), but changes one layer at a time: :meth:`check`
    says whether replacing some layers would conflict (two layers, two different
    entries under one key; a flow using a group or meter no layer defines) without
    changing anything, :meth:`replace` applies and returns what it touched, so the
    programmer diffs only those entries.  Cost is proportional to the layers
    replaced, not to the switch's size.
    """

    def __init__(self):
        self.layers: dict[tuple, SwitchState] = {}
        self.flows: dict[tuple, Flow] = {}
        self.groups: dict[int, Group] = {}
        self.meters: dict[int, Meter] = {}
        self.owners: dict[int, str] = {}
        self._flow_n: dict[tuple, int] = {}   # how many layers hold this flow key
        self._group_n: dict[int, int] = {}
        self._meter_n: dict[int, int] = {}
        self._label_n: dict[int, int] = {}
        self._uses: dict[tuple, int] = {}     # ("g", id) / ("m", id) -> merged flows using it

    # -- reading ------------------------------------------------------------
    def summary(self) -> dict:
        return {"flows": len(self.flows), "groups": len(self.groups), "meters": len(self.meters)}

    def layer_keys(self, app: str) -> list[tuple]:
        return [k for k in self.layers if k[0] == app]

    def snapshot(self) -> SwitchState:
        """A plain SwitchState copy of the merged state."""
        return SwitchState(dict(self.flows), dict(self.groups), dict(self.meters), dict(self.owners))

    # -- checking -----------------------------------------------------------
    def check(self, replacements: dict[tuple, SwitchState | None]) -> None:
        """Raise StateConflict if applying ``replacements`` would; change nothing.

        Linear in the size of the layers replaced (old and new), whatever the switch holds.
        """
        # how many of each entry's holders are among the layers being replaced
        held_f: dict = {}
        held_g: dict = {}
        held_m: dict = {}
        for key in replacements:
            old = self.layers.get(key)
            if old is None:
                continue
            for fk in old.flows:
                held_f[fk] = held_f.get(fk, 0) + 1
            for gid in old.groups:
                held_g[gid] = held_g.get(gid, 0) + 1
            for mid in old.meters:
                held_m[mid] = held_m.get(mid, 0) + 1

        def kept(key, merged, counts, held):
            """The merged entry under ``key`` if a layer that is not being replaced holds it."""
            n = counts.get(key, 0)
            return merged[key] if n > held.get(key, 0) else None

        new_flows: dict[tuple, Flow] = {}
        new_groups: dict[int, Group] = {}
        new_meters: dict[int, Meter] = {}
        for st in replacements.values():
            if st is None:
                continue
            for fk, flow in st.flows.items():
                prev = new_flows.get(fk)
                if prev is None:
                    prev = kept(fk, self.flows, self._flow_n, held_f)
                if prev is not None and prev != flow:
                    raise StateConflict(f"two flows with table={flow.table} priority={flow.priority} "
                                        f"match={flow.match.to_dict()}: {prev} / {flow}")
                new_flows[fk] = flow
            for gid, group in st.groups.items():
                prev = new_groups.get(gid)
                if prev is None:
                    prev = kept(gid, self.groups, self._group_n, held_g)
                if prev is not None and prev != group:
                    raise StateConflict(f"group {gid} computed twice with different buckets")
                new_groups[gid] = group
            for mid, meter in st.meters.items():
                prev = new_meters.get(mid)
                if prev is None:
                    prev = kept(mid, self.meters, self._meter_n, held_m)
                if prev is not None and prev != meter:
                    raise StateConflict(f"meter {mid} computed twice with different bands")
                new_meters[mid] = meter

        def defined(ref) -> bool:
            kind, ident = ref
            if kind == "g":
                return ident in new_groups or kept(ident, self.groups, self._group_n, held_g) is not None
            return ident in new_meters or kept(ident, self.meters, self._meter_n, held_m) is not None

        for flow in new_flows.values():  # what the new layers use must exist
            for ref in _flow_refs(flow):
                if not defined(ref):
                    what = "meter" if ref[0] == "m" else "group"
                    raise StateConflict(f"flow {flow} uses {what} {ref[1]}, which no app defines")
        # what the replaced layers defined and no longer do must not be used by a flow that stays
        dropped = {("g", g) for g in held_g} | {("m", m) for m in held_m}
        dropped = {ref for ref in dropped if not defined(ref)}
        if dropped:
            # merged flows using each dropped entry after the replacement: today's count, minus
            # the merged flows that go away or change, plus what replaces them
            delta: dict = {}
            for fk in set(held_f) | set(new_flows):
                if kept(fk, self.flows, self._flow_n, held_f) is not None:
                    continue  # another layer keeps the merged flow as it is
                cur = self.flows.get(fk)
                if cur is not None:
                    for ref in _flow_refs(cur):
                        delta[ref] = delta.get(ref, 0) - 1
                new = new_flows.get(fk)
                if new is not None:
                    for ref in _flow_refs(new):
                        delta[ref] = delta.get(ref, 0) + 1
            for ref in dropped:
                remaining = self._uses.get(ref, 0) + delta.get(ref, 0)
                if remaining > 0:
                    what = "meter" if ref[0] == "m" else "group"
                    raise StateConflict(f"{what} {ref[1]} would be removed while {remaining} flow(s) of "
                                        f"other apps still use it")

    # -- changing -----------------------------------------------------------
    def replace(self, replacements: dict[tuple, SwitchState | None], check: bool = True) -> Touched:
        """Swap the given layers (None removes one); return the entries touched."""
        if check:
            self.check(replacements)
        touched = Touched()
        for key, st in replacements.items():
            old = self.layers.pop(key, None)
            if st is not None and not (st.flows or st.groups or st.meters or st.owners):
                st = None
            if old is not None and st is not None:
                # only what differs leaves and enters: a recomputed layer that is mostly the
                # same touches (and so makes the programmer diff) only its real changes
                gone, came = _delta(old, st), _delta(st, old)
                gone.owners, came.owners = old.owners, st.owners
            else:
                gone, came = old, st
            if gone is not None:
                self._remove(gone, touched)
            if st is not None:
                self.layers[key] = st
                self._add(came, touched)
        return touched

    def _add(self, st: SwitchState, touched: Touched) -> None:
        for fk, flow in st.flows.items():
            n = self._flow_n.get(fk, 0)
            self._flow_n[fk] = n + 1
            if n == 0:
                self.flows[fk] = flow
                touched.flows.add(fk)
                for ref in _flow_refs(flow):
                    self._uses[ref] = self._uses.get(ref, 0) + 1
        _hold(st.groups, self._group_n, self.groups, touched.groups)
        _hold(st.meters, self._meter_n, self.meters, touched.meters)
        for cookie, text in st.owners.items():
            self._label_n[cookie] = self._label_n.get(cookie, 0) + 1
            self.owners[cookie] = text

    def _remove(self, st: SwitchState, touched: Touched) -> None:
        for fk in st.flows:
            n = self._flow_n[fk] - 1
            if n == 0:
                del self._flow_n[fk]
                flow = self.flows.pop(fk)
                touched.flows.add(fk)
                touched.gone[fk] = flow
                for ref in _flow_refs(flow):
                    left = self._uses[ref] - 1
                    if left:
                        self._uses[ref] = left
                    else:
                        del self._uses[ref]
            else:
                self._flow_n[fk] = n
        _release(st.groups, self._group_n, self.groups, touched.groups)
        _release(st.meters, self._meter_n, self.meters, touched.meters)
        _release(st.owners, self._label_n, self.owners, None)


def _hold(entries: dict, counts: dict, merged: dict, touched: set) -> None:
    """One more layer holds each of ``entries``; the first holder puts it into ``merged``."""
    for key, value in entries.items():
        n = counts.get(key, 0)
        counts[key] = n + 1
        if n == 0:
            merged[key] = value
            touched.add(key)


def _release(keys, counts: dict, merged: dict, touched: set | None) -> None:
    """One layer fewer holds each of ``keys``; the last one takes it out of ``merged``."""
    for key in keys:
        n = counts[key] - 1
        if n:
            counts[key] = n
        else:
            del counts[key], merged[key]
            if touched is not None:
                touched.add(key)


def _delta(a: SwitchState, b: SwitchState) -> SwitchState:
    """The entries of ``a`` that ``b`` lacks or holds differently."""
    bf, bg, bm = b.flows, b.groups, b.meters
    return SwitchState({k: v for k, v in a.flows.items() if bf.get(k) != v},
                       {k: v for k, v in a.groups.items() if bg.get(k) != v},
                       {k: v for k, v in a.meters.items() if bm.get(k) != v})


def diff_touched(desired, actual: ActualState, touched: Touched) -> Changes:
    """:func:`diff` restricted to the touched entries (the rest is known to be in place)."""
    ch = Changes()
    for mid in sorted(touched.meters):
        meter = desired.meters.get(mid)
        have = actual.meters.get(mid)
        if meter is None:
            if have is not None:
                ch.meter_deletes.append(mid)
        elif have is None:
            ch.meter_adds.append(meter)
        elif have != ofwire.meter_key(meter):
            ch.meter_mods.append(meter)
    for gid in sorted(touched.groups):
        group = desired.groups.get(gid)
        have = actual.groups.get(gid)
        if group is None:
            if have is not None:
                ch.group_deletes.append(gid)
        elif have is None:
            ch.group_adds.append(group)
        elif have != ofwire.group_key(group):
            ch.group_mods.append(group)
    for fk in touched.flows:
        flow = desired.flows.get(fk)
        if flow is None:
            ident = ofwire.flow_identity(touched.gone[fk])
            if ident in actual.flows:
                ch.flow_deletes.append(ident)
            continue
        ident = ofwire.flow_identity(flow)
        have = actual.flows.get(ident)
        if have is None:
            ch.flow_adds.append(flow)
            continue
        body = ofwire.flow_body(flow)
        if have == body:
            continue
        if have[0] != body[0] or have[2:] != body[2:]:
            ch.flow_adds.append(flow)
        else:
            ch.flow_mods.append(flow)
    return ch


def apply_changes(actual: ActualState, changes: Changes, pause=None) -> None:
    """``actual`` after the switch applied ``changes`` (patched in place, O(changes))."""
    for ident in changes.flow_deletes:
        actual.flows.pop(ident, None)
    for n, flow in enumerate(changes.flow_adds):
        if pause is not None and n % PAUSE_EVERY == PAUSE_EVERY - 1:
            pause()
        actual.flows[ofwire.flow_identity(flow)] = ofwire.flow_body(flow)
    for flow in changes.flow_mods:
        actual.flows[ofwire.flow_identity(flow)] = ofwire.flow_body(flow)
    for g in changes.group_adds + changes.group_mods:
        actual.groups[g.group_id] = ofwire.group_key(g)
    for gid in changes.group_deletes:
        actual.groups.pop(gid, None)
    for m in changes.meter_adds + changes.meter_mods:
        actual.meters[m.meter_id] = ofwire.meter_key(m)
    for mid in changes.meter_deletes:
        actual.meters.pop(mid, None)
