"""Proxy health: the agent's heartbeat on the wire, the flows that punt it, and the judge (pure).

Every proxy's agent sends a small UDP datagram, from the proxy's own address
to its gateway, every ``health.interval_ms``: whether its HAProxy answers
(the agent asks HAProxy's ``monitor-uri`` on the node), and which config it
runs.  The proxy's edge switch punts exactly that datagram (its port, MAC,
address, the gateway, UDP port :data:`HEARTBEAT_PORT`) to the controller, so
one message proves the three things a proxy needs to serve the VIP: HAProxy
answers, the agent that keeps it configured runs, and the proxy's link to
the fabric carries packets.  (A heartbeat over the management channel would
not notice a cut link; a TCP probe from the fabric would not notice a dead
agent or a hung HAProxy whose kernel still completes handshakes.)

The judge (:class:`ProxyHealth`) is a state machine per proxy, fed with the
clock by its caller:

* **up -> down** at once when the agent says HAProxy exited or the proxy's
  port goes down; when no good heartbeat came for ``fall`` intervals (250 ms
  x 3 by default: out of the hash in well under 1 s): the agent died, the
  link fails silently, or HAProxy does not answer its checks (one slow check,
  during a reload say, is only a missed beat);
* **up -> degraded** (no new connection, its pinned ones stay) after ``fall``
  heartbeats in a row finding fewer servers up than the best other proxy in
  the hash: cut off from the servers (its site's underlay died), or merely the
  first to notice a server die; **degraded -> up** after ``rise`` beats seeing
  as many again, no hold-down;
* **down -> up** after ``rise`` good heartbeats in a row, each finding at
  least as many servers up as the best proxy in the hash does, and not before
  ``hold_down_s`` after it went down (a flapping proxy does not drag
  connections back and forth; a proxy never heard from since judging began
  has no hold-down: it was not serving);
* a proxy the controller finds declared and up in the saved runtime state
  when it starts is taken as up (the switches already spread connections over
  it: a restart changes no flow) and judged from then on; any other starts as
  **joining**, out of the hash until ``rise`` good
  heartbeats arrive (there is no hold-down before a first start).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import INGRESS, PACKET_IN_BYTES, PUNT_METER
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.topology import Topology
from ryu_apps.functions.fabric.flows import UNTAGGED
from ryu_apps.functions.proxy_cluster.wire import HEARTBEAT_PORT, UDP, WHY_EXITED, Heartbeat
from ryu_apps.openflow.ofdata import OFPP_CONTROLLER, Flow, Match, Output

APP = "proxy_cluster"
K_HEARTBEAT = 9
P_HEARTBEAT = 5900
ETH_IP = 0x0800

UP, DOWN, JOINING, DEGRADED = "up", "down", "joining", "degraded"
#: states whose proxy keeps its pinned connections (a degraded one only gets no new connection)
PINNED = frozenset({UP, DEGRADED})


def proxy_key(cluster: str, host: str) -> str:
    return f"{cluster}/{host}"


def heartbeat_cookie(cluster: str, host: str) -> int:
    """The punt flow's cookie: its object names the proxy, so a packet-in says whose it is."""
    return cookies.make(APP, K_HEARTBEAT, proxy_key(cluster, host))


def heartbeat_flows(topology: Topology, cluster: str, proxies: list[str], router_mac: str) -> dict[str, SwitchState]:
    """At each proxy's edge: its heartbeat (own port, MAC, address, to its gateway) -> controller, metered."""
    out: dict[str, SwitchState] = {}
    for name in proxies:
        h = topology.hosts[name]
        if h.ipv4 is None or h.gateway4 is None:
            continue
        st = out.setdefault(h.switch, SwitchState())
        ck = heartbeat_cookie(cluster, name)
        st.add_flow(Flow(table=INGRESS, priority=P_HEARTBEAT, cookie=ck, meter=PUNT_METER,
                         match=Match(in_port=h.port, vlan_vid=UNTAGGED, eth_src=h.mac, eth_dst=router_mac,
                                     eth_type=ETH_IP,
                                     ipv4_src=str(h.ipv4.ip), ipv4_dst=str(h.gateway4), ip_proto=UDP,
                                     udp_dst=HEARTBEAT_PORT),
                         actions=(Output(OFPP_CONTROLLER, PACKET_IN_BYTES),)))
        st.label(ck, f"proxy cluster {cluster}: heartbeat of {name} -> controller")
    return out


def gateway_of(topology: Topology, host: str) -> str | None:
    g = topology.hosts[host].gateway4
    return None if g is None else str(ipaddress.ip_address(g))


@dataclass
class Judged:
    """One proxy's health as the judge sees it."""

    state: str
    since: float                  # when it entered this state
    last_ok: float = 0.0          # the last good heartbeat (or when judging began)
    streak: int = 0               # good heartbeats in a row while down/joining
    heartbeats: int = 0
    version: str = ""             # the config version the agent last said it runs
    conns: int | None = None      # client connections to the VIP on the node, as the agent last counted
    servers: int = 0              # servers its HAProxy finds up
    why: str = ""                 # why it is down
    changes: int = 0
    failing: str = ""             # why the last heartbeat was not good (while no good one came since)
    short: int = 0                # heartbeats in a row finding fewer servers up than the best other proxy
    heard: bool = False           # a good heartbeat came since judging began
    hold_until: float = 0.0       # down: not back before this (the hold-down)

    def as_dict(self, now: float) -> dict:
        return {"state": self.state, "for_s": round(now - self.since, 3),
                "last_heartbeat_ms_ago": None if not self.heartbeats else round((now - self.last_ok) * 1000),
                "heartbeats": self.heartbeats, "config_version": self.version or None,
                "connections": self.conns, "servers_up": self.servers if self.heartbeats else None,
                "why": self.why or None, "changes": self.changes}


@dataclass
class ProxyHealth:
    """The judge of one cluster's proxies (see the module doc); every call takes ``now`` (monotonic s)."""

    interval_s: float = 0.25
    fall: int = 3
    rise: int = 2
    hold_down_s: float = 5.0
    proxies: dict[str, Judged] = field(default_factory=dict)

    def configure(self, interval_ms: int, fall: int, rise: int, hold_down_s: float) -> None:
        self.interval_s, self.fall, self.rise, self.hold_down_s = interval_ms / 1000.0, fall, rise, hold_down_s

    def declare(self, names, now: float, initial: bool, up=None) -> bool:
        """Follow exactly ``names``; new ones start up (``initial``: found at start, and in ``up``
        when given: what was serving before a restart) or joining."""
        changed = False
        for n in list(self.proxies):
            if n not in names:
                del self.proxies[n]
                changed = True
        for n in names:
            if n not in self.proxies:
                serving = initial and (up is None or n in up)
                self.proxies[n] = Judged(UP if serving else JOINING, now, last_ok=now)
                changed = True
        return changed

    def out(self) -> frozenset[str]:
        """Proxies out of the hash: down, degraded or still joining."""
        return frozenset(n for n, j in self.proxies.items() if j.state != UP)

    def pinned(self) -> frozenset[str]:
        """Proxies that keep their pinned connections: up or degraded."""
        return frozenset(n for n, j in self.proxies.items() if j.state in PINNED)

    def _go(self, j: Judged, state: str, now: float, why: str = "") -> bool:
        if j.state == state:
            return False
        j.state, j.since, j.why, j.streak, j.short = state, now, why, 0, 0
        if state == DOWN:  # a proxy never heard from was never serving: no hold-down before its start
            j.hold_until = now + self.hold_down_s if j.heard else now
        j.changes += 1
        return True

    def heartbeat(self, name: str, hb: Heartbeat, now: float) -> bool:
        """Take one heartbeat; True when the proxy changed state."""
        j = self.proxies.get(name)
        if j is None:
            return False
        j.heartbeats += 1
        j.version, j.conns, j.servers = hb.version, hb.conns, hb.servers
        if not hb.ok:
            # HAProxy gone: out at once; a failed check (slow during a reload, say) is a missed beat
            why = f"agent: {hb.why or 'HAProxy not answering'}"
            j.streak, j.failing = 0, why
            if j.state in PINNED and hb.why == WHY_EXITED:
                return self._go(j, DOWN, now, why)
            if j.state != UP:
                j.why = why
            return False
        if now - j.last_ok > 2 * self.interval_s:  # silence between two good beats breaks the row
            j.streak = 0
        j.last_ok, j.failing = now, ""
        # a proxy gets new connections only while its HAProxy finds as many servers up as the best
        # other proxy in the hash: one cut off from the servers (its site's underlay down) would
        # answer 503, and so would one back from a cut before its checks see the servers again.
        # Seeing fewer only *degrades* a serving proxy (its pinned connections stay): proxies' checks
        # notice a server die seconds apart, and the first to notice must not lose its connections
        best = max((o.servers for n, o in self.proxies.items() if n != name and o.state == UP), default=0)
        if j.state == UP:
            j.heard = True
            j.short = j.short + 1 if hb.servers < best else 0
            if j.short >= self.fall:
                return self._go(j, DEGRADED, now, f"its HAProxy finds {hb.servers} servers up, another proxy {best}")
            return False
        if hb.servers < best:
            j.streak, j.why = 0, f"its HAProxy finds {hb.servers} servers up, the others {best}"
            return False
        j.streak += 1
        if j.streak >= self.rise and (j.state == DEGRADED or now >= j.hold_until):
            j.heard = True
            return self._go(j, UP, now)
        return False

    def link_down(self, name: str, now: float) -> bool:
        """The proxy's port went down: out at once."""
        j = self.proxies.get(name)
        if j is None:
            return False
        j.streak = 0  # (a beat before the flap and one after are not ``rise`` in a row)
        if j.state == JOINING:
            return False
        return self._go(j, DOWN, now, "its switch port is down")

    def tick(self, now: float) -> list[str]:
        """Proxies that went quiet for ``fall`` intervals: down (returned)."""
        limit = self.fall * self.interval_s
        gone = []
        for n, j in self.proxies.items():
            if j.state in PINNED and now - j.last_ok > limit:
                self._go(j, DOWN, now, f"no good heartbeat for {round((now - j.last_ok) * 1000)} ms"
                         + (f" ({j.failing})" if j.failing else ""))
                gone.append(n)
        return gone

    def as_dict(self, now: float) -> dict:
        return {n: j.as_dict(now) for n, j in sorted(self.proxies.items())}
