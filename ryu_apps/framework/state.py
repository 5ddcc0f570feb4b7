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


def diff(desired: SwitchState, actual: ActualState) -> Changes:
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
    for flow in desired.flows.values():
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
    ch.flow_deletes = [ident for ident in actual.flows if ident not in seen]
    ch.group_deletes = sorted(gid for gid in actual.groups if gid not in desired.groups)
    ch.meter_deletes = sorted(mid for mid in actual.meters if mid not in desired.meters)
    return ch
