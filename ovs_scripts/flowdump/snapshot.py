"""One bridge read at one moment: :class:`Dump` (flows, groups, meters), grouped by app and object.

:func:`dump` reads a live bridge through ``ovs-ofctl``; :meth:`Dump.from_text`
builds the same from saved ovs-ofctl outputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ovs_scripts.flowdump import kv, ofctl
from ovs_scripts.flowdump.flows import FlowEntry, flow_order, parse_flows
from ovs_scripts.flowdump.groups import GroupEntry, parse_groups
from ovs_scripts.flowdump.meters import MeterEntry, parse_meters
from ovs_scripts.flowdump.ofctl import OFP_VERSION, check_bridge, mgmt_target, reply_version
from ryu_apps.framework import cookies


@dataclass
class Dump:
    """Everything read from one bridge at one moment."""

    bridge: str
    flows: list[FlowEntry]
    groups: list[GroupEntry] = field(default_factory=list)
    meters: list[MeterEntry] = field(default_factory=list)
    rundir: str | None = None
    switch: str | None = None  # the name the user gave (a lab switch name), else the bridge
    #: OpenFlow version of the group text: OVS prints select-group
    #: ``selection_method``/``fields`` only in OpenFlow 1.5 replies.
    group_version: str = OFP_VERSION

    @classmethod
    def from_text(cls, flows: str, groups: str = "", group_stats: str = "", meters: str = "",
                  meter_stats: str = "", *, bridge: str = "", switch: str | None = None,
                  rundir: str | None = None) -> "Dump":
        """A Dump from saved ovs-ofctl outputs (dump-flows, dump-groups, dump-group-stats,
        dump-meters, meter-stats)."""
        return cls(
            bridge=bridge,
            flows=sorted(parse_flows(flows), key=flow_order),
            groups=parse_groups(groups, group_stats),
            meters=parse_meters(meters, meter_stats),
            rundir=rundir,
            switch=switch or bridge,
            group_version=reply_version(groups),
        )

    def output_ports(self, flow: FlowEntry) -> list[int]:
        """The ports ``flow`` sends to, through its groups' buckets (a fabric route points at the
        next-hop group towards its switch), sorted; a missing group contributes nothing."""
        groups = {g.group_id: g for g in self.groups}
        ports: set[int] = set()
        todo, seen = [flow.actions], set()
        while todo:
            for a in todo.pop():
                if "output" in a and isinstance(a["output"].get("port"), int):
                    ports.add(a["output"]["port"])
                elif "group" in a and a["group"] not in seen and int(a["group"]) in groups:
                    seen.add(a["group"])
                    todo.extend(b.actions for b in groups[int(a["group"])].buckets)
        return sorted(ports)

    def by_app(self) -> dict[str, list[FlowEntry]]:
        """Flows per app name, apps in app-id order, flows by table then priority descending."""
        out: dict[str, list[FlowEntry]] = {}
        for f in sorted(self.flows, key=lambda f: (f.cookie >> cookies.APP_SHIFT, *flow_order(f))):
            out.setdefault(f.app, []).append(f)
        return out

    def by_object(self) -> dict[int, list[FlowEntry]]:
        """Flows per cookie (one cookie = one object of one app), in cookie order."""
        out: dict[int, list[FlowEntry]] = {}
        for f in sorted(self.flows, key=lambda f: (f.cookie, *flow_order(f))):
            out.setdefault(f.cookie, []).append(f)
        return out

    def _select(self, cookie: int | None, app: str | None) -> list[FlowEntry]:
        return [f for f in self.flows
                if (cookie is None or f.cookie == cookie) and (app is None or f.app == app)]

    def packets(self, cookie: int | None = None, app: str | None = None) -> int:
        """Summed n_packets of the flows with this cookie and/or of this app (all flows if neither)."""
        return sum(f.n_packets or 0 for f in self._select(cookie, app))

    def bytes(self, cookie: int | None = None, app: str | None = None) -> int:
        return sum(f.n_bytes or 0 for f in self._select(cookie, app))

    def apps(self) -> list[str]:
        return list(self.by_app())

    def references(self, flows: Iterable[FlowEntry] | None = None) -> set[tuple[str, int]]:
        """Groups and meters used by ``flows`` (default: all), following group chains."""
        refs = kv.references([f.actions for f in (self.flows if flows is None else flows)])
        groups = {g.group_id: g for g in self.groups}
        todo = [gid for kind, gid in refs if kind == "group"]
        while todo:
            group = groups.get(todo.pop())
            for ref in group.references() if group else ():
                if ref not in refs:
                    refs.add(ref)
                    if ref[0] == "group":
                        todo.append(ref[1])
        return refs

    def filter(self, app: str) -> "Dump":
        """Only ``app``'s flows, and the groups and meters those flows use."""
        flows = [f for f in self.flows if f.app == app]
        refs = self.references(flows)
        return Dump(
            bridge=self.bridge,
            flows=flows,
            groups=[g for g in self.groups if ("group", g.group_id) in refs],
            meters=[m for m in self.meters if ("meter", m.meter_id) in refs],
            rundir=self.rundir,
            switch=self.switch,
            group_version=self.group_version,
        )

    def to_json(self, labels: dict[int, str] | None = None) -> dict:
        return {
            "switch": self.switch or self.bridge,
            "bridge": self.bridge,
            "flows": [f.to_json(labels) for f in self.flows],
            "groups": [g.to_json() for g in self.groups],
            "meters": [m.to_json() for m in self.meters],
        }


def _dump_groups(target: str) -> tuple[str, str]:
    """(dump-groups text, its OpenFlow version).

    Asks for OpenFlow 1.5 when the bridge allows it (negotiated from
    ``-O OpenFlow13,OpenFlow15``): only 1.5 replies carry a select group's
    ``selection_method`` and ``fields``, so only then can --diff see them.  The
    lab's bridges speak 1.3 only, and then 1.3 it is.
    """
    cp = ofctl.run(["-O", f"{OFP_VERSION},OpenFlow15", "--no-names", "dump-groups", target])
    return cp.stdout, reply_version(cp.stdout)


def dump(bridge: str, rundir: str, *, switch: str | None = None) -> Dump:
    """Read flows, groups and meters (with counters) of ``bridge`` of the OVS instance in ``rundir``."""
    check_bridge(bridge, rundir)
    target = mgmt_target(bridge, rundir)
    o = ["-O", OFP_VERSION, "--no-names"]
    flows = ofctl.run([*o, "dump-flows", target]).stdout
    groups, _ = _dump_groups(target)
    group_stats = ofctl.run([*o, "dump-group-stats", target]).stdout
    meters = ofctl.run([*o, "dump-meters", target]).stdout
    meter_stats = ofctl.run([*o, "meter-stats", target]).stdout
    return Dump.from_text(flows, groups, group_stats, meters, meter_stats,
                          bridge=bridge, switch=switch or bridge, rundir=rundir)
