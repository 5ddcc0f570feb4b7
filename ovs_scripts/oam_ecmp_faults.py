"""Fault injection for OAM ECMP demos and tests, done to a running lab behind the controller's back.

Each helper changes one switch with ``ovs-ofctl`` (through ``lab.ofctl``) or
the lab's links, the way a bad config push, a bug or a broken optic would,
and returns a :class:`Fault` saying what it did.  The controller is not told:
its programmer keeps believing the switch holds what it last wrote, so the
fault stays until :func:`heal` (which undoes port/link changes and asks the
controller to re-read and repair the switches it touched).

* :func:`remove_bucket` - an ECMP member disappears from a select group
* :func:`add_bucket` - a bucket leading away from the shortest paths (a longer path)
* :func:`drop_port` - a port silently drops what is sent to it (OFPPC_NO_FWD): its bucket stays
* :func:`redirect_bucket` - a bucket (or a single-next-hop route) points at another port
* :func:`make_loop` - switches send a destination's traffic around a cycle
* :func:`cut_link` - a link goes down (the controller notices and reroutes)
* :func:`drop_at_ingress` - a drop flow in table 0 for one destination's addresses
* :func:`drop_from_port` - a forward-table drop for one destination, scoped by ``in_port``
* :func:`delete_route` - one address family's route to a destination is deleted
* :func:`zero_weight` - a select-group bucket gets weight 0 (OVS never picks it)

``lab`` is an :class:`ovs_scripts.lab.Lab` (anything with ``topology``,
``ofctl(switch, *args)``, ``link(a, b, state)`` and ``rest_url``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ovs_scripts import kit
from ryu_apps.openflow.ofdata import Bucket, Group, Output

FORWARD_TABLE = 90
INGRESS_TABLE = 0
#: priorities of the injected drops: above the fabric's fabric-port admission (200) and its routes (500)
FAULT_INGRESS_PRIORITY = 300
FAULT_ROUTE_PRIORITY = 600
#: group ids this module creates (outside the fabric's 0x02xxxxxx and the app's 0x06xxxxxx)
FAULT_GROUP_BASE = 0x0E0A0000
OAM_APP_ID = 0x06  # cookie app id of the OAM app's own flows (probe twins): never the target of a fault


class FaultError(ValueError):
    """The fault cannot be injected as asked (no such route, port or bucket)."""


@dataclass
class Fault:
    kind: str
    switch: str
    detail: str
    port: int | None = None
    group_id: int | None = None
    undo_ports: list[tuple[str, int]] = field(default_factory=list)   # (switch, port): mod-port forward
    undo_links: list[tuple[str, str]] = field(default_factory=list)   # link up
    undo_flows: list[tuple[str, str]] = field(default_factory=list)   # (switch, spec): del-flows --strict
    resync: list[str] = field(default_factory=list)                   # switches the controller must repair

    def to_json(self) -> dict:
        return {"kind": self.kind, "switch": self.switch, "port": self.port,
                "group_id": None if self.group_id is None else f"{self.group_id:#010x}", "detail": self.detail}


def _flowdump():
    from ovs_scripts import (
        flowdump,  # lab tooling; imported only when a fault is injected
    )

    return flowdump


def _addresses(lab, dest: str) -> list[tuple[str, str]]:
    """(ovs-ofctl match field, address) of every host address behind leaf ``dest``."""
    out = []
    for h in sorted(lab.topology.hosts.values(), key=lambda h: h.name):
        if h.switch != dest:
            continue
        if h.ipv6:
            out.append(("ipv6_dst", str(h.ipv6.ip)))
        if h.ipv4:
            out.append(("nw_dst", str(h.ipv4.ip)))
    if not out:
        raise FaultError(f"{dest} has no host, so there is no route to it")
    return out


def _routes(lab, switch: str, dest: str) -> list:
    """The switch's forward-table flows for ``dest``'s hosts (as read from the switch)."""
    fd = _flowdump()
    flows = fd.parse_flows(lab.ofctl(switch, "dump-flows", f"table={FORWARD_TABLE}").stdout)
    wanted = _addresses(lab, dest)
    found = [f for f in flows if any(str(f.match.get(k)) == v for k, v in wanted)
             and f.cookie >> 56 != OAM_APP_ID]  # not the OAM app's probe twins
    if not found:
        raise FaultError(f"{switch} has no route to {dest} in table {FORWARD_TABLE}")
    return found


def _route_target(lab, switch: str, dest: str) -> tuple[str, int]:
    """('group', id) or ('output', port) of the switch's (IPv6 first) route to ``dest``."""
    for f in _routes(lab, switch, dest):
        for a in f.actions:
            if "group" in a:
                return "group", int(a["group"])
            if "output" in a:
                return "output", int(a["output"]["port"])
    raise FaultError(f"{switch}'s route to {dest} neither outputs nor uses a group")


def _group(lab, switch: str, gid: int):
    groups = _flowdump().parse_groups(lab.ofctl(switch, "dump-groups", str(gid)).stdout)
    for g in groups:
        if g.group_id == gid:
            return g
    raise FaultError(f"{switch} has no group {gid:#x}")


def _buckets(group) -> list[Bucket]:
    out = []
    for b in group.buckets:
        ports = [a["output"]["port"] for a in b.actions if "output" in a]
        if len(ports) != 1:
            raise FaultError(f"bucket {b.index} of group {group.group_id:#x} is not a single output: "
                             f"{b.actions_text}")
        out.append(Bucket(actions=(Output(int(ports[0])),), weight=int(b.props.get("weight", 1)),
                          watch_port=int(b.props.get("watch_port", ports[0]))))
    return out


def _mod_group(lab, switch: str, gid: int, gtype: str, buckets: list[Bucket], command: str = "mod-group") -> None:
    lab.ofctl(switch, command, str(Group(group_id=gid, type=gtype, buckets=tuple(buckets))))


def _port_of(bucket: Bucket) -> int:
    return bucket.actions[0].port


def _check_port(lab, switch: str, port: int) -> None:
    if (switch, port) not in lab.topology.ports:
        raise FaultError(f"{switch} has no port {port}; ports: "
                         f"{sorted(p for s, p in lab.topology.ports if s == switch)}")


def _retarget_routes(lab, switch: str, dest: str, actions: str) -> None:
    """Change exactly the route flows (``--strict``, their priority): a non-strict mod-flows would also
    rewrite every more specific flow, the OAM app's probe twins included."""
    routes = _routes(lab, switch, dest)
    for field_, addr in _addresses(lab, dest):
        proto = "ipv6" if field_ == "ipv6_dst" else "ip"
        for f in routes:
            if str(f.match.get(field_)) == addr:
                lab.ofctl(switch, "--strict", "mod-flows", f"table={FORWARD_TABLE},priority={f.priority},{proto},"
                                                           f"{field_}={addr},actions={actions}")


# --- the faults -------------------------------------------------------------------------------


def remove_bucket(lab, switch: str, dest: str, port: int) -> Fault:
    """Remove the bucket for ``port`` from the select group ``switch`` uses towards ``dest``."""
    kind, target = _route_target(lab, switch, dest)
    if kind != "group":
        raise FaultError(f"{switch} routes {dest} straight out of port {target}, no group to remove a bucket from")
    g = _group(lab, switch, target)
    buckets = _buckets(g)
    keep = [b for b in buckets if _port_of(b) != port]
    if len(keep) == len(buckets):
        raise FaultError(f"group {target:#x} on {switch} has no bucket for port {port} "
                         f"(ports {[_port_of(b) for b in buckets]})")
    _mod_group(lab, switch, target, g.type, keep)
    return Fault("remove_bucket", switch, f"{switch} group {target:#x}: bucket for port {port} removed "
                 f"(towards {dest} and every destination sharing the group)", port, target, resync=[switch])


def add_bucket(lab, switch: str, dest: str, port: int) -> Fault:
    """Add a bucket for ``port`` to ``switch``'s ECMP set towards ``dest`` (a single-port route becomes a group)."""
    _check_port(lab, switch, port)
    kind, target = _route_target(lab, switch, dest)
    extra = Bucket(actions=(Output(port),), weight=1, watch_port=port)
    if kind == "group":
        g = _group(lab, switch, target)
        buckets = _buckets(g)
        if any(_port_of(b) == port for b in buckets):
            raise FaultError(f"group {target:#x} on {switch} already has a bucket for port {port}")
        _mod_group(lab, switch, target, g.type, buckets + [extra])
        gid = target
    else:
        if target == port:
            raise FaultError(f"{switch} already routes {dest} out of port {port}")
        gid = FAULT_GROUP_BASE | lab.topology.switches[dest].dpid & 0xFFFF
        _mod_group(lab, switch, gid, "select", [Bucket(actions=(Output(target),), weight=1, watch_port=target),
                                                extra], command="add-group")
        _retarget_routes(lab, switch, dest, f"group:{gid}")
    return Fault("add_bucket", switch, f"{switch} group {gid:#x} towards {dest}: extra bucket for port {port}",
                 port, gid, resync=[switch])


def redirect_bucket(lab, switch: str, dest: str, old_port: int, new_port: int) -> Fault:
    """Point the bucket (or the single-port route) of ``switch`` towards ``dest`` from ``old_port`` to ``new_port``."""
    kind, target = _route_target(lab, switch, dest)
    if kind == "output":
        if target != old_port:
            raise FaultError(f"{switch} routes {dest} out of port {target}, not {old_port}")
        _retarget_routes(lab, switch, dest, f"output:{new_port}")
        return Fault("redirect_bucket", switch, f"{switch} route towards {dest}: output {old_port} -> {new_port}",
                     new_port, None, resync=[switch])
    g = _group(lab, switch, target)
    buckets = _buckets(g)
    if not any(_port_of(b) == old_port for b in buckets):
        raise FaultError(f"group {target:#x} on {switch} has no bucket for port {old_port}")
    new = [Bucket(actions=(Output(new_port),), weight=b.weight, watch_port=b.watch_port)
           if _port_of(b) == old_port else b for b in buckets]
    _mod_group(lab, switch, target, g.type, new)
    return Fault("redirect_bucket", switch, f"{switch} group {target:#x}: bucket for port {old_port} now outputs "
                 f"to port {new_port}", new_port, target, resync=[switch])


def drop_port(lab, switch: str, port: int) -> Fault:
    """Make ``port`` drop everything sent out of it (OFPPC_NO_FWD); link and buckets stay up."""
    _check_port(lab, switch, port)
    lab.ofctl(switch, "mod-port", str(port), "no-forward")
    return Fault("drop_port", switch, f"{switch} port {port} silently drops what it should send", port,
                 undo_ports=[(switch, port)])


def make_loop(lab, dest: str, cycle: list[str]) -> Fault:
    """Route ``dest``'s traffic around ``cycle`` (>= 3 linked switches, none of them ``dest``): each
    switch sends it to the next one only, the last back to the first.

    (Two switches sending to each other make no loop in OpenFlow: the packet
    would leave by the port it came in on, which a switch never does; it is
    dropped instead.  That case is what :func:`redirect_bucket` towards the
    previous hop shows.)
    """
    if len(cycle) < 3 or len(set(cycle)) != len(cycle) or dest in cycle:
        raise FaultError("a loop needs 3 or more distinct switches, without the destination")
    ports = []
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        link = next((ln for ln in lab.topology.links if {ln.a, ln.b} == {a, b}), None)
        if link is None:
            raise FaultError(f"{a} and {b} are not linked")
        ports.append((a, link.a_port if link.a == a else link.b_port))
    for sw, _ in ports:
        _routes(lab, sw, dest)
    for sw, port in ports:
        _retarget_routes(lab, sw, dest, f"output:{port}")
    return Fault("make_loop", cycle[0], f"traffic for {dest} loops {'>'.join(cycle + cycle[:1])}", ports[0][1],
                 resync=list(cycle))


def cut_link(lab, a: str, b: str) -> Fault:
    lab.link(a, b, "down")
    return Fault("cut_link", a, f"link {a}-{b} down", undo_links=[(a, b)])


def _family_addresses(lab, dest: str, family: int | None) -> list[tuple[str, str, str]]:
    """(ovs-ofctl protocol, match field, address) of ``dest``'s host addresses of ``family`` (None: both)."""
    out = []
    for field_, addr in _addresses(lab, dest):
        fam = 6 if field_ == "ipv6_dst" else 4
        if family in (None, fam):
            out.append(("ipv6" if fam == 6 else "ip", field_, addr))
    if not out:
        raise FaultError(f"{dest} has no IPv{family} host address")
    return out


def _add_drops(lab, kind: str, switch: str, dest: str, table: int, priority: int, extra: str,
               family: int | None, port: int | None) -> Fault:
    specs = [f"table={table},priority={priority},{extra}{proto},{field_}={addr}"
             for proto, field_, addr in _family_addresses(lab, dest, family)]
    for spec in specs:
        lab.ofctl(switch, "add-flow", f"{spec},actions=drop")
    return Fault(kind, switch, f"{switch}: {'; '.join(specs)} actions=drop", port,
                 undo_flows=[(switch, spec) for spec in specs], resync=[switch])


def drop_at_ingress(lab, switch: str, dest: str, family: int | None = None) -> Fault:
    """A table-0 flow on ``switch`` that drops traffic to ``dest``'s hosts (above the fabric's admission)."""
    return _add_drops(lab, "drop_at_ingress", switch, dest, INGRESS_TABLE, FAULT_INGRESS_PRIORITY, "", family, None)


def drop_from_port(lab, switch: str, dest: str, in_port: int, family: int | None = None) -> Fault:
    """A forward-table flow on ``switch`` that drops traffic to ``dest``'s hosts arriving on ``in_port`` only."""
    _check_port(lab, switch, in_port)
    return _add_drops(lab, "drop_from_port", switch, dest, FORWARD_TABLE, FAULT_ROUTE_PRIORITY,
                      f"in_port={in_port},", family, in_port)


def delete_route(lab, switch: str, dest: str, family: int = 4) -> Fault:
    """Delete ``switch``'s IPv``family`` route(s) to ``dest``'s hosts (exactly those flows)."""
    found = 0
    for proto, field_, addr in _family_addresses(lab, dest, family):
        for f in _routes(lab, switch, dest):
            if str(f.match.get(field_)) == addr:
                prio = f.priority
                lab.ofctl(switch, "--strict", "del-flows", f"table={FORWARD_TABLE},priority={prio},{proto},"
                                                           f"{field_}={addr}")
                found += 1
    if not found:
        raise FaultError(f"{switch} has no IPv{family} route to {dest}")
    return Fault("delete_route", switch, f"{switch}: IPv{family} route to {dest} deleted", resync=[switch])


def zero_weight(lab, switch: str, dest: str, port: int) -> Fault:
    """Give the bucket for ``port`` of ``switch``'s select group towards ``dest`` weight 0: it stays in the
    group, live, and OVS never picks it."""
    kind, target = _route_target(lab, switch, dest)
    if kind != "group":
        raise FaultError(f"{switch} routes {dest} straight out of port {target}, no group bucket to weigh")
    g = _group(lab, switch, target)
    if g.type != "select":
        raise FaultError(f"group {target:#x} on {switch} is {g.type}, not select")
    buckets = _buckets(g)
    if not any(_port_of(b) == port for b in buckets):
        raise FaultError(f"group {target:#x} on {switch} has no bucket for port {port}")
    new = [Bucket(actions=b.actions, weight=0, watch_port=b.watch_port) if _port_of(b) == port else b
           for b in buckets]
    _mod_group(lab, switch, target, g.type, new)
    return Fault("zero_weight", switch, f"{switch} group {target:#x}: bucket for port {port} has weight 0", port,
                 target, resync=[switch])


# --- undoing them --------------------------------------------------------------------------


def _rest(lab, method: str, path: str):
    return kit.rest(lab, method, path, raw=b"" if method == "POST" else None).expect(200, 202)


def heal(lab, faults: list[Fault], timeout: float = 15.0) -> None:
    """Undo port and link faults, then have the controller re-read and repair the switches touched."""
    for f in faults:
        for sw, port in f.undo_ports:
            lab.ofctl(sw, "mod-port", str(port), "forward")
        for a, b in f.undo_links:
            lab.link(a, b, "up")
        for sw, spec in f.undo_flows:
            lab.ofctl(sw, "--strict", "del-flows", spec)
    switches = sorted({sw for f in faults for sw in f.resync})
    for sw in switches:
        _rest(lab, "POST", f"/v1/switches/{sw}/resync")
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = {s["name"]: s for s in _rest(lab, "GET", "/v1/switches")}
        if all(state[s]["synced"] for s in state):
            return
        time.sleep(0.05)
    raise FaultError(f"switches not repaired within {timeout} s: "
                     f"{[s for s in state if not state[s]['synced']]}")


def heal_all(lab, timeout: float = 15.0) -> None:
    """Undo anything: every port forwards again, every link up, every switch re-read and repaired."""
    faults = []
    for (sw, port), pi in lab.topology.ports.items():
        if pi.kind != "host":
            faults.append(Fault("heal", sw, "", undo_ports=[(sw, port)]))
    for ln in lab.topology.links:
        if ln.kind == "veth":
            faults.append(Fault("heal", ln.a, "", undo_links=[(ln.a, ln.b)]))
    faults.append(Fault("heal", "", "", resync=sorted(lab.topology.switches)))
    heal(lab, faults, timeout)
