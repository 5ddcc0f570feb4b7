"""What apps compute on and receive: the view of the network, packet-ins, intent errors.

Pure data, no os-ken: function models import these without pulling in the controller.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from ryu_apps.framework.topology import Topology


@dataclass(frozen=True)
class FabricView:
    """The topology as declared plus what is live right now."""

    topology: Topology
    down_ports: frozenset = frozenset()      # (switch, port) with link down or port down
    dead_switches: frozenset = frozenset()   # switches that were connected and went away
    connected: frozenset = frozenset()       # switches with a control channel now

    #: the names an app lists in ``FabricApp.INPUTS``: which part of the view it reads
    INPUTS = frozenset({"ports", "switches", "channels"})

    def graph(self) -> nx.MultiGraph:
        g = self.topology.graph(self.down_ports)
        g.remove_nodes_from(self.dead_switches)
        return g

    def port_live(self, switch: str, port: int) -> bool:
        return (switch, port) not in self.down_ports and switch not in self.dead_switches


@dataclass(frozen=True)
class PortChange:
    """A port of a declared switch changed (port status, or the port list after a connect).

    ``up``: link up and not administratively down; ``live``: OpenFlow's LIVE flag (on a
    BFD-monitored link, the far end answers); ``usable``: what the core concluded and put
    into the view (up, and LIVE where BFD watches the link).
    """

    switch: str
    port: int
    reason: str          # add | delete | modify | desc (from the port list after a connect)
    up: bool
    live: bool
    usable: bool
    changed: bool        # the core's view of the port changed with this message


@dataclass(frozen=True)
class SwitchChange:
    """A declared switch's control channel or data plane changed."""

    switch: str
    event: str           # connected | disconnected | dead (routed around) | alive (forwards again)


#: the one part of an app that does not split its state (``FabricApp.parts``)
WHOLE = "*"


@dataclass(frozen=True)
class PacketIn:
    """A packet-in as apps see it: where it came from, and the first bytes."""

    switch: str
    in_port: int
    table: int
    cookie: int
    data: bytes


class IntentError(ValueError):
    """Intent failed validation; ``field`` names the offending key."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.field, self.status = field, status
