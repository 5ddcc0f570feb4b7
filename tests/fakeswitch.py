"""A small OpenFlow table simulator for unit tests (Faucet's fakeoftable idea).

Unit tests assert where a packet goes, not what the flow text says: a packet
is a dict of match-field values (the same names and value forms as
``ofdata.Match``), walked through a :class:`SwitchState` table by table.
Select groups fork over every bucket (each is a possible path), so a test can
check the whole ECMP set.  ``Fabric`` chains switches along the topology's
links to follow a packet from a host to wherever it ends.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ryu_apps.framework.state import SwitchState
from ryu_apps.openflow.ofdata import (
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    DecTtl,
    GroupAction,
    Output,
    RegMove,
    Resubmit,
    SetField,
)

MAX_STEPS = 32


def _as_int(value) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.count(":") == 5 and len(value) == 17:
        return int(value.replace(":", ""), 16)
    return int(ipaddress.ip_address(value))


def field_matches(pkt: dict, name: str, value, mask) -> bool:
    if name == "vlan_vid" and name not in pkt:
        pkt = dict(pkt, vlan_vid=0)  # an untagged frame matches vlan_vid=OFPVID_NONE
    if name not in pkt:
        return False
    if mask is None:
        return _as_int(pkt[name]) == _as_int(value)
    return _as_int(pkt[name]) & _as_int(mask) == _as_int(value) & _as_int(mask)


def lookup(state: SwitchState, table: int, pkt: dict):
    best = None
    for flow in state.flows.values():
        if flow.table != table:
            continue
        if all(field_matches(pkt, n, v, m) for n, v, m in flow.match.fields):
            if best is None or flow.priority > best.priority:
                best = flow
    return best


@dataclass
class Outcome:
    kind: str        # output | controller | drop
    port: int | None
    packet: dict
    flows: list      # the flows the packet hit, in order


def run(state: SwitchState, pkt: dict, in_port: int) -> list[Outcome]:
    """Every place ``pkt`` arriving on ``in_port`` can end up (select groups fork)."""
    start = dict(pkt, in_port=in_port)
    return _walk(state, 0, start, [])


def _walk(state, table, pkt, hit) -> list[Outcome]:
    if len(hit) > MAX_STEPS:
        raise RuntimeError("pipeline loop")
    flow = lookup(state, table, pkt)
    if flow is None:
        return [Outcome("drop", None, pkt, hit)]
    hit = hit + [flow]
    outs = _apply(state, flow.actions, pkt, hit)
    if flow.goto is not None:
        outs += _walk(state, flow.goto, _after(flow.actions, pkt), hit)
    if not outs:
        return [Outcome("drop", None, pkt, hit)]
    return outs


def _after(actions, pkt) -> dict:
    pkt = dict(pkt)
    for a in actions:
        _mutate(a, pkt)
    return pkt


def _mutate(a, pkt: dict) -> None:
    if isinstance(a, SetField):
        pkt[a.field] = a.value
    elif isinstance(a, RegMove):
        pkt[a.dst] = pkt.get(a.src)
    elif isinstance(a, DecTtl):
        pkt["ttl"] = pkt.get("ttl", 64) - 1


def _apply(state, actions, pkt, hit) -> list[Outcome]:
    pkt = dict(pkt)
    outs: list[Outcome] = []
    for a in actions:
        if isinstance(a, Output):
            if a.port == OFPP_CONTROLLER:
                outs.append(Outcome("controller", None, dict(pkt), hit))
            elif a.port == OFPP_IN_PORT:
                outs.append(Outcome("output", pkt["in_port"], dict(pkt), hit))
            else:
                outs.append(Outcome("output", a.port, dict(pkt), hit))
        elif isinstance(a, GroupAction):
            group = state.groups[a.group_id]
            for bucket in group.buckets:
                outs += _apply(state, bucket.actions, pkt, hit)
        elif isinstance(a, Resubmit):  # a lookup in a.table with the packet as it is now, then go on
            if len(hit) > MAX_STEPS:
                raise RuntimeError("pipeline loop")
            outs += [o for o in _walk(state, a.table, pkt, hit) if o.kind != "drop"]
        else:
            _mutate(a, pkt)
    return outs


class Fabric:
    """Switch states joined by the topology's links."""

    def __init__(self, topology, states: dict[str, SwitchState], down: frozenset = frozenset()):
        self.topology, self.states, self.down = topology, states, down
        self.peer = {}
        for ln in topology.links:
            self.peer[(ln.a, ln.a_port)] = (ln.b, ln.b_port)
            self.peer[(ln.b, ln.b_port)] = (ln.a, ln.a_port)
        self.host_at = {(h.switch, h.port): h.name for h in topology.hosts.values()}

    def send(self, host: str, pkt: dict) -> list[tuple[str, dict, list[str]]]:
        """Inject ``pkt`` from ``host``; return (where, packet, switch path) for every end."""
        h = self.topology.hosts[host]
        return self._go(h.switch, h.port, pkt, [h.switch])

    def _go(self, switch, port, pkt, path):
        if len(path) > MAX_STEPS:
            return [("loop", pkt, path)]
        ends = []
        for out in run(self.states[switch], pkt, port):
            if out.kind != "output":
                ends.append((out.kind, out.packet, path))
                continue
            if (switch, out.port) in self.host_at:
                ends.append((f"host:{self.host_at[(switch, out.port)]}", out.packet, path))
            elif (switch, out.port) in self.peer and (switch, out.port) not in self.down:
                nxt, nport = self.peer[(switch, out.port)]
                packet = {k: v for k, v in out.packet.items() if k != "in_port"}
                ends += self._go(nxt, nport, packet, path + [nxt])
            else:
                ends.append((f"port:{switch}:{out.port}", out.packet, path))
        return ends
