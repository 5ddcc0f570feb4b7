"""Base fabric: connectivity between the declared hosts over any topology.

Launch like any Ryu app::

    ryu-manager --fabric-topology topologies/diamond.yaml ryu_apps/fabric.py

What it installs (all proactive, computed from the topology file):

* ``ingress`` (table 0): a host may send only untagged frames from its own
  port, with its own MAC and IP (anti-spoofing); ARP and neighbour solicitations go to
  ``arp_nd``; packets a host sends to the fabric's router MAC are routed
  (TTL decremented, source MAC rewritten); fabric ports go to ``forward``.
* ``arp_nd`` (table 80): ARP and IPv6 neighbour solicitations for every
  declared address and gateway are answered by the switch itself (see
  :func:`nd_responder`), so address resolution keeps working while the
  controller is unreachable; duplicate address detection is never answered.
* ``forward`` (table 90): a /32 and /128 route per host address: output to
  the host (rewriting the destination MAC) on its own switch, else to the
  next-hop group towards the host's switch: one OpenFlow select group per
  (switch, destination switch) with a bucket per port on a shortest path
  (ECMP; ``watch_port`` set so a dead link's bucket is skipped at once, before
  the controller recomputes).  A link going down or up rewrites those groups
  only, never a route: the ``next_hops`` part is all a port event recomputes.
* everything else is dropped by the table-miss flows of the core.
"""

from __future__ import annotations

from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

from ryu_apps.framework.app import FabricApp, FabricView, PortChange
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.state import SwitchState
from ryu_apps.functions.fabric.flows import (  # noqa: F401 - the fabric's pure model, re-exported
    APP,
    ETH_IPV6,
    NEXT_HOPS,
    PARTS,
    compute_fabric,
    compute_part,
    ecmp_group_id,
    next_hop_group_ids,
    next_hops,
)
from ryu_apps.functions.fabric.intent import FabricIntent
from ryu_apps.packet import parse as pktparse


def neighbor_advertisement(ns: pktparse.NeighborSolicitation, mac: str) -> bytes:
    """A solicited NA answering ``ns`` for its target with ``mac`` (os-ken builds it)."""
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=ns.eth.src, src=mac, ethertype=ETH_IPV6))
    pkt.add_protocol(ipv6.ipv6(src=str(ns.target), dst=str(ns.src), nxt=58, hop_limit=255))
    pkt.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_NEIGHBOR_ADVERT, data=icmpv6.nd_neighbor(
        res=0b011, dst=str(ns.target), option=icmpv6.nd_option_tla(hw_src=mac))))  # solicited + override
    pkt.serialize()
    return bytes(pkt.data)


class Fabric(FabricApp):
    """The base fabric app (``ryu_apps/fabric.py``): everything it installs is computed by
    :func:`ryu_apps.functions.fabric.flows.compute_fabric` from the topology and the intent."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = FabricIntent

    def parts(self, intent: FabricIntent):
        return PARTS

    def compute(self, view: FabricView, intent: FabricIntent, part=NEXT_HOPS) -> dict[str, SwitchState]:
        return compute_part(view, intent, part)

    def parts_changed(self, view: FabricView, intent: FabricIntent, change):
        """Paths change with fabric links and switches only; a host port's state changes nothing."""
        if isinstance(change, PortChange):
            port = view.topology.ports.get((change.switch, change.port))
            return {NEXT_HOPS} if port is not None and port.kind != "host" else set()
        return {NEXT_HOPS}
