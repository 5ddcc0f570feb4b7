"""The cloud router's pure model: roles, policy ids, client keys, NAC choice, locations.

Nothing here talks to a switch or to os-ken; :mod:`ryu_apps.cloud_router` is
the thin app around it, :mod:`ryu_apps.functions.cloud_router.intent` is what
users declare, and :mod:`ryu_apps.functions.cloud_router.flows` turns this model
into flows.

* :func:`derive_roles` checks the tiers against the topology (access points
  uplink to tunnel devices, tunnel devices reach forwarders over flow-keyed
  tunnels, forwarders reach NACs over flow-keyed tunnels, each NAC has one link
  to the uplink switch) and records which port leads where.
* :func:`assign_keys` gives each client its tunnel key (the VNI both tunnel
  sets carry): stable, derived from the MAC, persisted once given
  (:func:`known_key` is the same rule for one client that already has one).
* :func:`nac_order` is rendezvous (highest random weight) hashing: each client
  ranks the NACs by ``hash(client, nac)``; its NAC is the first one alive, so
  a NAC failure moves only that NAC's clients, and they come back when it does.
* :class:`Locations` is where clients are, with the rule that makes roaming
  safe: a location claim from a port the client has left (or a port that is
  down) is refused, so a late event from the old access point cannot undo a
  move.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ryu_apps.framework.topology import Topology
from ryu_apps.functions.cloud_router.intent import (  # noqa: F401 - the intent moved to intent.py
    APP,
    KEY_SPACE,
    MAX_RULE_MATCHES,
    NAME_PATTERN,
    QUARANTINE,
    Client,
    CloudRouterIntent,
    Policy,
    Rule,
    Tiers,
    expand_rule,
    normalize_mac,
    range_to_masks,
)


class IntentCheckError(ValueError):
    """The intent does not fit the topology; ``field`` names the key."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------------------
# Rules and policies at the NACs


def reverse_match(fields: dict[str, Any]) -> dict[str, Any]:
    """The downstream (return traffic) match of an upstream rule match."""
    swap = {"ipv4_dst": "ipv4_src", "tcp_dst": "tcp_src", "udp_dst": "udp_src"}
    return {swap.get(k, k): v for k, v in fields.items()}


def policy_id(name: str, taken: dict[int, str] | None = None) -> int:
    """reg0 value naming a policy at the NACs: stable per name, never 0."""
    digest = int.from_bytes(hashlib.blake2b(f"policy:{name}".encode(), digest_size=4).digest(), "big")
    pid = (digest & 0x7FFFFFFF) or 1
    while taken is not None and pid in taken and taken[pid] != name:
        pid = (pid % 0x7FFFFFFF) + 1
    return pid


def policy_ids(names) -> dict[str, int]:
    taken: dict[int, str] = {}
    out = {}
    for n in sorted(names):
        pid = policy_id(n, taken)
        taken[pid] = n
        out[n] = pid
    return out


# ---------------------------------------------------------------------------
# Keys and NAC choice


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def preferred_key(mac: str) -> int:
    return 1 + _h64(f"key:{mac}") % KEY_SPACE


def assign_keys(stored: dict[str, int], macs, explicit: dict[str, int] | None = None) -> dict[str, int]:
    """Tunnel keys for ``macs``: pinned ones, then stored ones, then hashed with probing (pure).

    ``stored``: the keys handed out so far (one key per MAC, also of clients not present
    now: a key stays reserved for its client).  A client keeps its stored key unless
    another client pins it (``explicit``); clients without a key are placed in MAC order,
    each on the first key from its preferred one that no pinned, stored or just placed
    key holds, so the result depends only on the inputs.  :func:`known_key` is the same
    rule for one client.
    """
    explicit = explicit or {}
    pinned = set(explicit.values())
    out: dict[str, int] = {}
    new = []
    for m in sorted(set(macs)):
        if m in explicit:
            out[m] = explicit[m]
        elif m in stored and stored[m] not in pinned:
            out[m] = stored[m]
        else:
            new.append(m)
    used = pinned | set(stored.values())
    for m in new:
        out[m] = free_key(m, used)
        used.add(out[m])
    return out


def known_key(intent: CloudRouterIntent, stored: dict[str, int], mac: str) -> int | None:
    """``mac``'s key under ``intent`` if it has one already (pinned, or stored and not pinned by
    another client), as :func:`assign_keys` would give it; None: it needs one."""
    c = intent.clients.get(mac)
    if c is not None and c.key is not None:
        return c.key
    k = stored.get(mac)
    if k is not None and intent.pinned_by(k) is None:
        return k
    return None


def free_key(mac: str, used) -> int:
    """The first key from ``mac``'s preferred one that is not in ``used``."""
    k = preferred_key(mac)
    while k in used:
        k = k % KEY_SPACE + 1
    return k


def nac_order(mac: str, nacs: tuple[str, ...]) -> tuple[str, ...]:
    """Rendezvous hashing: the NACs ranked for this client (first = its NAC while alive)."""
    return tuple(sorted(nacs, key=lambda n: (-_h64(f"{mac}|{n}"), n)))


def nac_orders(nacs: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every ranking a client can have (one group per ranking at forwarders and the uplink)."""
    return sorted(itertools.permutations(nacs))


def order_index(order: tuple[str, ...]) -> int:
    """``nac_orders(order).index(order)`` without listing them (the rank of a permutation)."""
    rest = sorted(order)
    idx = 0
    for n in order:
        pos = rest.index(n)
        idx += pos * math.factorial(len(rest) - 1)
        rest.pop(pos)
    return idx


# ---------------------------------------------------------------------------
# Roles: which port of which tier switch leads where


@dataclass(frozen=True)
class Roles:
    aps: tuple[str, ...]
    tds: tuple[str, ...]
    fcs: tuple[str, ...]
    nacs: tuple[str, ...]
    uplink: str
    ap_uplinks: dict[str, tuple[tuple[int, str, int], ...]]  # ap -> ((ap port, td, td port), ...)
    td_fc: dict[str, dict[str, int]]       # td -> fc -> td's port
    fc_td: dict[str, dict[str, int]]       # fc -> td -> fc's port
    fc_nac: dict[str, dict[str, int]]      # fc -> nac -> fc's port
    nac_fc: dict[str, dict[str, int]]      # nac -> fc -> nac's port
    nac_up: dict[str, int]                 # nac -> its port to the uplink
    up_nac: dict[str, int]                 # nac -> the uplink's port to it
    services: tuple[str, ...]              # hosts on the uplink switch
    ap_hosts: tuple[str, ...]              # hosts on access points (clients of the lab)
    tunnels: tuple[dict, ...]              # the two tunnel sets, for REST

    def tier_of(self, switch: str) -> str | None:
        for tier, members in (("access_point", self.aps), ("tunnel_device", self.tds),
                              ("forwarder", self.fcs), ("nac", self.nacs)):
            if switch in members:
                return tier
        return "uplink" if switch == self.uplink else None


def derive_roles(topo: Topology, tiers: Tiers) -> Roles:
    """Check the tiers against the topology; raise IntentCheckError naming the key."""
    lists = {"access_points": tiers.access_points, "tunnel_devices": tiers.tunnel_devices,
             "forwarders": tiers.forwarders, "nacs": tiers.nacs}
    seen: dict[str, str] = {}
    for tier, members in list(lists.items()) + [("uplink", [tiers.uplink])]:
        for i, sw in enumerate(members):
            key = f"tiers.{tier}" + (f"[{i}]" if tier != "uplink" else "")
            if sw not in topo.switches:
                raise IntentCheckError(f"{key}: {sw!r} is not a switch of the topology "
                                       f"(switches: {', '.join(topo.switches)})", key)
            if sw in seen:
                raise IntentCheckError(f"{key}: {sw} is already in tiers.{seen[sw]}", key)
            seen[sw] = tier
    aps, tds, fcs, nacs = (tuple(lists[k]) for k in ("access_points", "tunnel_devices", "forwarders", "nacs"))
    uplink = tiers.uplink
    role = {s: t for s, t in seen.items()}

    def tunnel_ok(pi, what: str, key: str) -> None:
        if pi.kind not in ("vxlan", "geneve"):
            raise IntentCheckError(f"{key}: {pi.switch} port {pi.port} to {pi.peer} is a {pi.kind} link; "
                                   f"{what} must be a VXLAN or Geneve tunnel", key)
        link = next(l for l in topo.links if (l.a, l.a_port) == (pi.switch, pi.port)
                    or (l.b, l.b_port) == (pi.switch, pi.port))
        if link.key != "flow":
            raise IntentCheckError(f"{key}: tunnel {link.name} has key {link.key}; it needs key: flow "
                                   "(the tunnel key carries the client)", key)

    ap_uplinks: dict[str, tuple] = {}
    td_fc: dict[str, dict[str, int]] = {t: {} for t in tds}
    fc_td: dict[str, dict[str, int]] = {f: {} for f in fcs}
    fc_nac: dict[str, dict[str, int]] = {f: {} for f in fcs}
    nac_fc: dict[str, dict[str, int]] = {n: {} for n in nacs}
    nac_up: dict[str, int] = {}
    up_nac: dict[str, int] = {}
    tunnels = []
    for i, ap in enumerate(aps):
        key = f"tiers.access_points[{i}]"
        ups = []
        for pi in topo.switch_ports(ap):
            if pi.kind == "host":
                continue
            if role.get(pi.peer) != "tunnel_devices":
                raise IntentCheckError(f"{key}: access point {ap} links to {pi.peer}; access points link "
                                       "only to tunnel devices (and clients)", key)
            ups.append((pi.port, pi.peer, pi.peer_port))
        if not ups:
            raise IntentCheckError(f"{key}: access point {ap} has no link to a tunnel device", key)
        ap_uplinks[ap] = tuple(ups)
    def tunnel_tier(names, tier, what, below, above, set_no, wiring, peer_wiring, only, link_what):
        """Check one tunnel tier's links (to the tier below or tunnels to ``above``) and record them."""
        for i, sw in enumerate(names):
            key = f"tiers.{tier}[{i}]"
            for pi in topo.switch_ports(sw):
                peer_role = role.get(pi.peer)
                if peer_role == below:
                    continue
                if peer_role != above:
                    raise IntentCheckError(f"{key}: {what} {sw} links to {pi.peer}; {only}", key)
                tunnel_ok(pi, link_what, key)
                wiring[sw][pi.peer] = pi.port
                peer_wiring[pi.peer][sw] = pi.peer_port
                tunnels.append({"set": set_no, "a": sw, "a_port": pi.port, "b": pi.peer, "b_port": pi.peer_port,
                                "type": pi.kind})

    tunnel_tier(tds, "tunnel_devices", "tunnel device", "access_points", "forwarders", 1, td_fc, fc_td,
                "tunnel devices link only to access points and forwarders", "a tunnel device's link to a forwarder")
    for i, td in enumerate(tds):
        if not td_fc[td]:
            raise IntentCheckError(f"tiers.tunnel_devices[{i}]: tunnel device {td} has no tunnel to a forwarder",
                                   f"tiers.tunnel_devices[{i}]")
    tunnel_tier(fcs, "forwarders", "forwarder", "tunnel_devices", "nacs", 2, fc_nac, nac_fc,
                "forwarders link only to tunnel devices and NACs (client traffic never goes around a NAC)",
                "a forwarder's link to a NAC")
    for i, fc in enumerate(fcs):
        key = f"tiers.forwarders[{i}]"
        if not fc_nac[fc]:
            raise IntentCheckError(f"{key}: forwarder {fc} has no tunnel to a NAC", key)
        if not fc_td[fc]:
            raise IntentCheckError(f"{key}: forwarder {fc} has no tunnel from a tunnel device", key)
    for i, nac in enumerate(nacs):
        key = f"tiers.nacs[{i}]"
        ups = []
        for pi in topo.switch_ports(nac):
            peer_role = role.get(pi.peer)
            if peer_role == "forwarders":
                continue
            if pi.peer != uplink:
                raise IntentCheckError(f"{key}: NAC {nac} links to {pi.peer}; NACs link only to forwarders "
                                       f"and the uplink {uplink}", key)
            ups.append(pi)
        if len(ups) != 1:
            raise IntentCheckError(f"{key}: NAC {nac} needs exactly one link to the uplink {uplink}, "
                                   f"has {len(ups)}", key)
        if not nac_fc[nac]:
            raise IntentCheckError(f"{key}: NAC {nac} has no tunnel from a forwarder", key)
        nac_up[nac] = ups[0].port
        up_nac[nac] = ups[0].peer_port
    services = tuple(sorted(h.name for h in topo.hosts.values() if h.switch == uplink))
    ap_hosts = tuple(sorted(h.name for h in topo.hosts.values() if h.switch in aps))
    for h in topo.hosts.values():
        if h.switch in role and role[h.switch] not in ("access_points", "uplink"):
            raise IntentCheckError(f"tiers: host {h.name} is attached to {h.switch}, a "
                                   f"{role[h.switch].rstrip('s').replace('_', ' ')}; hosts attach to access "
                                   "points (clients) or the uplink (services)", "tiers")
    return Roles(aps, tds, fcs, nacs, uplink, ap_uplinks, td_fc, fc_td, fc_nac, nac_fc, nac_up, up_nac,
                 services, ap_hosts, tuple(tunnels))


# ---------------------------------------------------------------------------
# Locations


@dataclass
class Location:
    switch: str
    port: int
    gen: int      # the port's generation when the client arrived (bumped each time the port comes up)
    epoch: int    # global sequence of accepted moves
    since: float  # wall-clock time (for REST)

    def to_dict(self) -> dict:
        return {"switch": self.switch, "port": self.port, "epoch": self.epoch, "since": round(self.since, 3)}


@dataclass
class Verdict:
    """What a location claim did: new | moved | same | stale (refused: a late frame) |
    conflict (refused: the client is connected elsewhere)."""

    kind: str
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.kind in ("new", "moved")


@dataclass
class Locations:
    """Where each client is, and which claims are late.

    * ``port_event(sw, port, state, added)`` follows the access points' ports
      (``state``: up, down, deleted).  Each add, and each return to up after
      being down, starts a new generation of the port.  A client on a port
      that goes down (after having been up) or is deleted is detached (its
      location flows go; key and policy stay).  A port first seen down, or
      added with its link still down, is *fresh*: a packet from it proves it
      came up (the switch may report the link state after the first packet).
    * ``claim(mac, sw, port)`` is an observation "mac is at sw:port" (its
      packet reached the controller from there, or an association report).
      It is refused as *stale* when that port went down or was deleted, or
      when the client left that port and the port has not started a new
      generation since, within ``holddown`` seconds: a frame queued at the old
      access point before the move, processed after it, cannot pull the
      client back.
    * A claim for a client that is *connected elsewhere* (its current port is
      up on a switch that is connected) is refused as a *conflict*: a second
      device using a connected client's MAC (a copied MAC) does not move it.
      The client moves once its old port goes down or is deleted (a wired
      re-plug, the old association ending), or when the access point reports
      the move (``reported=True``: ``POST /v1/cloud_router/locations``, how a
      shared radio port says a client left it).
    """

    holddown: float = 2.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    port_gen: dict[tuple[str, int], int] = field(default_factory=dict)
    port_state: dict[tuple[str, int], str] = field(default_factory=dict)  # up | fresh | down | deleted
    current: dict[str, Location] = field(default_factory=dict)
    last: dict[str, Location] = field(default_factory=dict)
    left: dict[str, dict[tuple[str, int], tuple[int, float]]] = field(default_factory=dict)
    epoch: int = 0

    def port_event(self, switch: str, port: int, state: str, added: bool = False) -> list[str]:
        """A port's state (up | down | deleted); ``added``: it was just plugged. Returns the clients detached."""
        if state not in ("up", "down", "deleted"):
            raise ValueError(f"port state {state!r} is not up, down or deleted")
        key = (switch, port)
        was = self.port_state.get(key)
        if added or (state == "up" and was in ("down", "deleted")):
            self.port_gen[key] = self.port_gen.get(key, 0) + 1
        if state == "down" and (added or was in (None, "fresh")):
            self.port_state[key] = "fresh"  # never seen up yet: nothing on it can be stale
            return []
        self.port_state[key] = state
        detached = []
        if state in ("down", "deleted"):
            now = self.clock()
            for mac, loc in list(self.current.items()):
                if (loc.switch, loc.port) == key:
                    self.left.setdefault(mac, {})[key] = (loc.gen, now)
                    self.last[mac] = loc
                    del self.current[mac]
                    detached.append(mac)
        return detached

    def in_use(self, mac: str, alive: Callable[[str], bool] = lambda sw: True) -> Location | None:
        """The client's location if it is connected there: its port is up (or not reported yet)
        on a switch that is connected (``alive``)."""
        cur = self.current.get(mac)
        if cur is None or not alive(cur.switch):
            return None
        return cur if self.port_state.get((cur.switch, cur.port)) in (None, "up", "fresh") else None

    def claim(self, mac: str, switch: str, port: int, reported: bool = False,
              alive: Callable[[str], bool] = lambda sw: True) -> Verdict:
        """``reported``: the access point says the client moved (an association report), not just a
        frame seen there; ``alive(switch)``: that switch is connected."""
        key = (switch, port)
        pstate = self.port_state.get(key)
        if pstate in ("down", "deleted"):
            return Verdict("stale", f"{switch}:{port} is {pstate}")
        if pstate == "fresh":  # its packet proves the port is up now
            self.port_state[key] = "up"
        gen = self.port_gen.get(key, 0)
        cur = self.current.get(mac)
        if cur is not None and (cur.switch, cur.port, cur.gen) == (switch, port, gen):
            return Verdict("same")
        now = self.clock()
        gone = self.left.get(mac, {}).get(key)
        if gone is not None and gone[0] == gen and now - gone[1] < self.holddown:
            where = f"{cur.switch}:{cur.port}" if cur else "nowhere (detached)"
            return Verdict("stale", f"{mac} left {switch}:{port} {now - gone[1]:.3f}s ago and the port has not "
                                    f"come up again since; it is at {where}")
        if not reported and cur is not None and self.in_use(mac, alive) is not None:
            return Verdict("conflict", f"{mac} is connected at {cur.switch}:{cur.port} (port up); a frame with its "
                                       f"MAC at {switch}:{port} does not move it (a copied MAC?) until that port "
                                       "goes down or the access point reports the move")
        if cur is not None:
            self.left.setdefault(mac, {})[(cur.switch, cur.port)] = (cur.gen, now)
            self.last[mac] = cur
        self.epoch += 1
        self.current[mac] = Location(switch, port, gen, self.epoch, self.wall())
        kind = "moved" if cur is not None or mac in self.last else "new"
        return Verdict(kind, f"from {cur.switch}:{cur.port}" if cur else "")

    def place(self, mac: str, at: tuple[str, int] | None) -> bool:
        """Another controller instance decided where ``mac`` is (its claim, from the shared store):
        take it as such, the old location counting as left (hold-down).  True if it moved."""
        cur = self.current.get(mac)
        if at is None:
            if cur is None:
                return False
            self.left.setdefault(mac, {})[(cur.switch, cur.port)] = (cur.gen, self.clock())
            self.last[mac] = cur
            del self.current[mac]
            return True
        sw, port = at[0], int(at[1])
        if cur is not None and (cur.switch, cur.port) == (sw, port):
            return False
        if cur is not None:
            self.left.setdefault(mac, {})[(cur.switch, cur.port)] = (cur.gen, self.clock())
            self.last[mac] = cur
        self.epoch += 1
        self.current[mac] = Location(sw, port, self.port_gen.get((sw, port), 0), self.epoch, self.wall())
        return True

    def save_one(self, mac: str) -> tuple:
        """What :meth:`claim` may change for ``mac`` (to put back with :meth:`undo_one`)."""
        left = self.left.get(mac)
        return (self.current.get(mac), self.last.get(mac), dict(left) if left is not None else None, self.epoch,
                {k: v for k, v in self.port_state.items() if v == "fresh"})

    def undo_one(self, mac: str, saved: tuple) -> None:
        cur, last, left, epoch, fresh = saved
        for d, v in ((self.current, cur), (self.last, last), (self.left, left)):
            if v is None:
                d.pop(mac, None)
            else:
                d[mac] = v
        self.epoch = epoch
        self.port_state.update(fresh)

    def forget(self, mac: str) -> None:
        self.current.pop(mac, None)
        self.last.pop(mac, None)
        self.left.pop(mac, None)

    def where(self, mac: str) -> Location | None:
        return self.current.get(mac)

    # persistence: current locations only (port generations restart at 0 with the controller)
    def dump(self) -> dict:
        return {mac: [loc.switch, loc.port] for mac, loc in self.current.items()}

    def restore(self, data: dict) -> None:
        for mac, (sw, port) in data.items():
            self.epoch += 1
            self.current[mac] = Location(sw, int(port), self.port_gen.get((sw, int(port)), 0), self.epoch,
                                         self.wall())
