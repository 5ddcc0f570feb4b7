"""Cloud router: per-client policy at network access controllers, following roaming clients.

Launch with the base fabric (it routes the service network)::

    ryu-manager --fabric-topology topologies/cloud_router.yaml ryu_apps/fabric.py ryu_apps/cloud_router.py

Tiers (each a lab node running its own Open vSwitch), client to service::

    client - AP (access point) - TD (tunnel device) =VXLAN= FC (forwarder) =Geneve= NAC - uplink - services

* Tunnel devices put each client's traffic into a VXLAN tunnel whose key (VNI)
  is the client's key; forwarders carry it on in a Geneve tunnel with the same
  key to the client's NAC; the NAC applies the client's policy (allowed
  destinations and ports, meters, quarantine) and hands allowed traffic to the
  uplink.  Return traffic takes the same tiers back through the client's NAC.
* Clients are identified by MAC (and an optional registered name); unknown
  clients get the default policy (quarantine: only the registration service).
* Roaming: an access point punts a client seen at a port where it is not
  known; the controller moves its location (new AP, TD and forwarder flows,
  the old ones removed); key, NAC and policy stay.  A late claim from the
  port the client left is refused (:class:`~ryu_apps.functions.cloud_router.model.Locations`).
* NAC choice: rendezvous hashing per client; forwarders send a client to the
  first of its NACs that has not failed (its switch went away, its uplink is
  down, or no forwarder's tunnel to it is LIVE).  Every NAC holds every
  client's policy, so no path exists on which a client's packet skips it.

The logic lives in :mod:`ryu_apps.functions.cloud_router` (``intent``: what users
declare; ``model``: roles, keys, locations; ``flows``: the flows; ``wire``: the
punted frames); this module is the thin app: hooks in, REST, and ``compute``.

Framework v2: the state is made of parts, one per client (its MAC) and one shared
part (tiers, NACs, policies, tunnels, services).  ``compute`` is pure: it reads the
view, the intent it is given and the runtime state (keys, learned clients,
locations), which changes only in the hooks and REST handlers: a roam, a learned
client or a registration dirties only that client's part.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ryu_apps.framework import cookies
from ryu_apps.framework.app import WHOLE, FabricApp, FabricView, IntentError, PacketIn, PortChange, SwitchChange
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.rest import ApiError, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.framework.store import StoreConflict, StoreError
from ryu_apps.functions.cloud_router.flows import (
    K_PUNT,
    KIND_NAMES,
    ClientInfo,
    Inputs,
    active_nac,
    client_rank,
    client_state,
    client_td,
    failed_nacs,
    shared_state,
)
from ryu_apps.functions.cloud_router.intent import (
    APP,
    QUARANTINE,
    Client,
    CloudRouterIntent,
    Policy,
    expand_rule,
    normalize_mac,
)
from ryu_apps.functions.cloud_router.model import (
    IntentCheckError,
    Locations,
    Roles,
    assign_keys,
    derive_roles,
    free_key,
    known_key,
    policy_ids,
)
from ryu_apps.functions.cloud_router.wire import client_frame
from ryu_apps.openflow.ofdata import OFPP_MAX
from ryu_apps.packet.parse import BadPacket

LOG = logging.getLogger(__name__)
DEFAULT_ROUTER_MAC = "0e:fa:b0:00:00:01"
RUNTIME = f"{APP}.runtime"  # <state-dir>/cloud_router.runtime.json: keys, learned clients, locations
# a controller cluster keeps the same per client, one item each: {"key", "learned", "at"}
CLIENTS = f"{APP}.clients"
#: the part that is not per client: tier flows and groups, rank groups, policies, service steering
SHARED = "shared"


class ClientPart(str):
    """A client's part: its MAC, carrying the key :meth:`CloudRouter.parts` planned for it.

    Only for an intent whose clients do not all have a key yet (a candidate that registers
    new clients): the key plan is computed once for all of them, not once per client.  Equal
    to (and hashes like) the plain MAC, so ``invalidate(app, {mac})`` names the same part;
    ``compute`` handed a plain MAC finds the same key itself.
    """

    key: int

    def __new__(cls, mac: str, key: int):
        part = super().__new__(cls, mac)
        part.key = key
        return part


class LocationReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client: str = Field(description="MAC or registered name")
    switch: str
    port: int = Field(ge=1, le=0xFEFF)


class LocationReports(BaseModel):
    """Association reports (as an access point or WLAN controller would send them)."""

    model_config = ConfigDict(extra="forbid")
    reports: list[LocationReport] = Field(max_length=20000)


class CloudRouter(FabricApp):
    """The cloud router app (``ryu_apps/cloud_router.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = CloudRouterIntent
    #: compute reads ports (down or not LIVE: NAC failure, a client's TD) and dead switches
    INPUTS = frozenset({"ports", "switches"})

    def __init__(self, *args, **kwargs):
        self._ready = False               # the intent setter assigns keys only once we are set up
        self.roles: Roles | None = None   # of the current intent's tiers
        self._roles_tiers = None          # ... which are these
        super().__init__(*args, **kwargs)
        try:
            self.roles, self._roles_tiers = self._roles(self.intent), self.intent.tiers
        except IntentError as exc:
            self.core.unregister(self)
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field) from None
        self._hosts = {h.mac: h for h in self.core.topology.hosts.values()}
        self.locations = Locations(holddown=self.intent.roam_holddown_s)
        self.learned: dict[str, dict] = {}   # mac -> {"ipv4", "first_seen"}
        self.keys: dict[str, int] = {}       # mac -> key: every client's, kept once handed out (one key per MAC)
        self.port_live: dict[tuple[str, int], bool] = {}  # tier switch ports as reported: up and LIVE
        self.history: deque = deque(maxlen=256)
        self._conflicts: dict[tuple[str, str, int], float] = {}  # (mac, switch, port) -> last flagged
        self.counters: Counter = Counter()
        self.failed: frozenset = frozenset()  # NACs failed in the view (tracked by the hooks, for REST/events)
        self.failed_since: dict[str, float] = {}
        self._written: dict[str, dict] = {}  # (cluster) mac -> the item as last written or read
        self._load_runtime()
        self._ready = True

    # -- the intent: committed by the core (commit_intent) or at start ---------------------
    @property
    def intent(self) -> CloudRouterIntent:
        return self._intent

    @intent.setter
    def intent(self, value: CloudRouterIntent) -> None:
        """A new intent is the app's (start, or ``core.commit_intent`` after ``try_intent``):
        its tiers' roles, and a key for each client that has none yet, persisted at once."""
        self._intent = value
        if not self._ready:
            return
        self.roles, self._roles_tiers = self._roles(value), value.tiers
        self.locations.holddown = value.roam_holddown_s
        if self._assign_keys():
            self._save_runtime()

    def _roles(self, intent: CloudRouterIntent) -> Roles | None:
        """The roles of ``intent``'s tiers (the current ones unless the tiers differ; pure)."""
        tiers = intent.tiers
        if tiers is None:
            return None
        if self._roles_tiers is not None and tiers == self._roles_tiers:
            return self.roles
        try:
            return derive_roles(self.core.topology, tiers)
        except IntentCheckError as exc:
            raise IntentError(str(exc), exc.field) from None

    def _host(self, roles: Roles | None, mac: str):
        """The lab host with ``mac`` if it sits on an access point (a client known from the topology)."""
        host = self._hosts.get(mac)
        return host if host is not None and roles is not None and host.switch in roles.ap_uplinks else None

    def _topo_clients(self, roles: Roles | None) -> dict[str, object]:
        """Lab hosts on access points, by MAC (their addresses are known from the topology)."""
        if roles is None:
            return {}
        hosts = self.core.topology.hosts
        return {hosts[h].mac: hosts[h] for h in roles.ap_hosts}

    def router_mac(self, intent: CloudRouterIntent | None = None) -> str:
        intent = intent or self.intent
        if intent.router_mac:
            return intent.router_mac
        fabric = self.core.app_intent("fabric")
        return getattr(fabric, "router_mac", None) or DEFAULT_ROUTER_MAC

    def _macs(self, intent: CloudRouterIntent, roles: Roles | None) -> set[str]:
        return set(intent.clients) | set(self._topo_clients(roles)) | set(self.learned)

    # -- keys: handed out when a client becomes known, persisted there ----------------------
    def _key_plan(self, intent: CloudRouterIntent, roles: Roles | None) -> dict[str, int]:
        """Every client's key under ``intent`` (pure: ``assign_keys`` over the stored keys)."""
        return assign_keys(self.keys, self._macs(intent, roles), intent.explicit_keys())

    def _assign_keys(self) -> bool:
        """Give every client of the current intent its key (``self.keys``); True if any changed."""
        plan = self._key_plan(self.intent, self.roles)
        changed = {m: k for m, k in plan.items() if self.keys.get(m) != k}
        if not changed:
            return False
        taken = set(changed.values())
        for m in [m for m, k in self.keys.items() if k in taken and m not in changed]:
            del self.keys[m]  # a client not present whose key an operator pinned to another one
        self.keys.update(changed)
        return True

    def _give_key(self, mac: str) -> None:
        """A client just became known (learned): its key, as the plan would give it."""
        if known_key(self.intent, self.keys, mac) is None:
            used = set(self.keys.values()) | set(self.intent.explicit_keys().values())
            self.keys[mac] = free_key(mac, used)

    def _key(self, intent: CloudRouterIntent, roles: Roles | None, mac: str) -> int:
        key = known_key(intent, self.keys, mac)
        return key if key is not None else self._key_plan(intent, roles)[mac]

    def _client(self, intent: CloudRouterIntent, roles: Roles | None, mac: str,
                key: int | None = None) -> ClientInfo | None:
        """One client as the flows need it (None: ``mac`` is not a client under ``intent``)."""
        c = intent.clients.get(mac)
        host = self._host(roles, mac)
        learned = self.learned.get(mac)
        if c is None and host is None and learned is None:
            return None
        ip = (c.ipv4 if c and c.ipv4 else None) or (str(host.ipv4.ip) if host is not None and host.ipv4
                                                   else None) or (learned or {}).get("ipv4")
        loc = self.locations.where(mac)
        return ClientInfo(mac, key if key is not None else self._key(intent, roles, mac), ip, intent.policy_of(c),
                          c.name if c else None, (loc.switch, loc.port) if loc else None)

    def client_infos(self, intent: CloudRouterIntent | None = None) -> list[ClientInfo]:
        intent = intent or self.intent
        roles = self._roles(intent)
        return [self._client(intent, roles, m) for m in sorted(self._macs(intent, roles))]

    def _down(self, view: FabricView) -> frozenset:
        """Ports down or not LIVE.  The core's view has a tunnel port down only when its link is;
        BFD on a tunnel clears LIVE when the far end stops answering, which the app follows
        itself (:meth:`on_port_change`).  A port the switch has not reported yet counts as up:
        after a controller restart the switches keep what they have until they say otherwise."""
        return view.down_ports | frozenset(k for k, live in self.port_live.items() if not live)

    def tunnel_state(self, end: tuple[str, int]) -> str:
        """live | down | unknown (not reported yet) of one tunnel port."""
        if self.core.data_plane(end[0]) == "dead":
            return "down"
        live = self.port_live.get(end)
        return "unknown" if live is None else "live" if live else "down"

    # -- the desired state (pure) ---------------------------------------------------------
    def parts(self, intent: CloudRouterIntent):
        """The shared part and one part per client (its MAC)."""
        roles = self._roles(intent)
        if roles is None:
            return ()
        macs = self._macs(intent, roles)
        if intent is self.intent:  # every client of the current intent has its key (self.keys)
            return (SHARED, *macs)
        need = {m for m in macs if known_key(intent, self.keys, m) is None}
        if not need:
            return (SHARED, *macs)
        plan = self._key_plan(intent, roles)  # once, not once per new client
        return (SHARED, *(ClientPart(m, plan[m]) if m in need else m for m in macs))

    def compute(self, view: FabricView, intent: CloudRouterIntent, part=WHOLE) -> dict[str, SwitchState]:
        roles = self._roles(intent)
        if roles is None:
            return {}
        hosts = self.core.topology.hosts
        down = self._down(view)
        inp = Inputs(intent, roles, self.router_mac(intent), [], frozenset(), view.dead_switches, down,
                     tuple(hosts[h] for h in roles.services))
        if part == SHARED:
            inp.failed_nacs = failed_nacs(roles, view.dead_switches, down)
            return shared_state(inp)
        cl = self._client(intent, roles, str(part), getattr(part, "key", None))
        return {} if cl is None else client_state(inp, cl)

    def parts_changed(self, view: FabricView, intent: CloudRouterIntent, change) -> set:
        """Dead or alive switches: the shared part (NAC failure, select groups).  A port: see
        :meth:`_port_parts`."""
        roles = self._roles(intent)
        if roles is None:
            return set()
        if isinstance(change, SwitchChange):
            return {SHARED} if change.event in ("dead", "alive") else set()
        return self._port_parts(roles, change.switch, change.port)

    def _port_parts(self, roles: Roles, sw: str, port: int) -> set:
        """The parts a port's state feeds: the shared part if a NAC's failure depends on it; the
        clients of an access point if it is one of that AP's uplinks (their TD follows the AP's
        first live uplink)."""
        parts = set()
        if ((sw in roles.nac_up and roles.nac_up[sw] == port) or (sw == roles.uplink and port in roles.up_nac.values())
                or (sw in roles.fc_nac and port in roles.fc_nac[sw].values())):
            parts.add(SHARED)
        aps = {ap for ap, ups in roles.ap_uplinks.items() for ap_port, td, td_port in ups
               if (ap, ap_port) == (sw, port) or (td, td_port) == (sw, port)}
        if aps:
            parts |= {mac for mac, loc in self.locations.current.items() if loc.switch in aps}
        return parts

    # -- hooks: packet-ins, ports, switches (the core calls them in the switch's order) -----
    def _event(self, kind: str, **info) -> None:
        self.history.append({"t": round(time.time(), 3), "event": kind, **info})

    def on_packet_in(self, pkt: PacketIn) -> None:
        """An access point's punt (a client unknown at that port).

        The core calls this and :meth:`on_port_change` in the order the switch sent the
        messages, so a packet-in from a port just plugged is handled after the port was
        seen being added (not taken for a late frame from a deleted port).  The core
        also applies the per-switch packet-in rate and the byte bound (behind the switch's
        punt meter); the frame is parsed with bounded code.
        """
        roles = self.roles
        if cookies.decode(pkt.cookie).kind != K_PUNT or roles is None or pkt.switch not in roles.ap_uplinks:
            self.counters["packet_in_ignored"] += 1
            return
        try:
            frame = client_frame(pkt.data)
        except BadPacket as exc:
            self.counters["packet_in_bad"] += 1
            LOG.debug("bad punt from %s: %s", pkt.switch, exc)
            return
        self.counters["packet_in"] += 1
        self.observe(frame.src, pkt.switch, pkt.in_port, frame.ipv4, source="packet-in")

    def on_port_change(self, change: PortChange) -> None:
        """A tier switch's port: its liveness (up and LIVE: what compute reads, with the view), an
        access port's clients (detached when it goes down or is deleted), NAC failures (events)."""
        r = self.roles
        sw, port = change.switch, change.port
        if r is None or port > OFPP_MAX or r.tier_of(sw) is None:
            return
        key = (sw, port)
        live_changed = False
        if key in self.port_live or self.core.topology.ports.get(key) is not None:
            live = change.up and change.live
            live_changed = self.port_live.get(key, True) != live  # not reported yet counts as up
            self.port_live[key] = live
            if live_changed:
                parts = self._port_parts(r, sw, port)
                if parts:
                    self.core.invalidate(self, parts)
        if sw in r.ap_uplinks and port not in {p for p, _, _ in r.ap_uplinks[sw]}:
            state = "deleted" if change.reason == "delete" else "up" if change.up else "down"
            detached = self.locations.port_event(sw, port, state, added=change.reason == "add")
            for mac in detached:
                self._event("detached", client=mac, at=f"{sw}:{port}")
            if detached:
                self.core.invalidate(self, set(detached))
                self._save_detached(sw, detached)
        if change.changed or live_changed:
            self._track_nacs()

    def on_switch_change(self, change: SwitchChange) -> None:
        if change.event in ("dead", "alive"):
            self._track_nacs()

    def _track_nacs(self) -> None:
        """NAC failures as the view says (what compute derives too), with events and since when."""
        r = self.roles
        if r is None:
            return
        view = self.core.view()
        failed = failed_nacs(r, view.dead_switches, self._down(view))
        now = time.time()
        for n in sorted(failed - self.failed):
            self.failed_since[n] = now
            self._event("nac_failed", nac=n)
        for n in sorted(self.failed - failed):
            self.failed_since.pop(n, None)
            self._event("nac_recovered", nac=n)
        self.failed = failed

    def _known(self, mac: str) -> bool:
        return mac in self.intent.clients or self._host(self.roles, mac) is not None or mac in self.learned

    def _ip_taken(self, ip: str, mac: str) -> str | None:
        """The client other than ``mac`` whose address is ``ip`` (as ``_client`` derives it), or None."""
        intent, roles = self.intent, self.roles
        for m in sorted(self._macs(intent, roles)):
            if m == mac:
                continue
            c, host = intent.clients.get(m), self._host(roles, m)
            got = (c.ipv4 if c and c.ipv4 else None) or (str(host.ipv4.ip) if host is not None and host.ipv4
                                                        else None) or self.learned.get(m, {}).get("ipv4")
            if got == ip:
                return m
        return None

    def observe(self, mac: str, switch: str, port: int, ipv4: str | None = None, source: str = "report",
                save: bool = True) -> str:
        """``mac`` was seen at ``switch:port``: learn it if unknown, move it if it roamed. Returns the verdict."""
        learned = False
        if not self._known(mac):
            if ipv4 is None or not self.intent.in_client_subnets(ipv4):
                self.counters["unknown_without_address"] += 1
                return "unlearned"
            if len(self.learned) >= self.intent.max_learned_clients:
                self.counters["learn_refused_full"] += 1
                return "refused"
            other = self._ip_taken(ipv4, mac)
            if other is not None:
                self.counters["learn_refused_address_taken"] += 1
                self._event("learn_refused", client=mac, ipv4=ipv4, reason=f"{ipv4} belongs to {other}")
                return "refused"
            self.learned[mac] = {"ipv4": ipv4, "first_seen": round(time.time(), 3)}
            self._give_key(mac)
            learned = True
            self._event("learned", client=mac, ipv4=ipv4, at=f"{switch}:{port}",
                        policy=self.intent.default_policy)
        before = self.locations.save_one(mac) if self.core.clustered else None
        # (a client's switch is alive while any controller instance has a channel to it)
        verdict = self.locations.claim(mac, switch, port, reported=source == "report",
                                       alive=lambda sw: self.core.data_plane(sw) == "forwarding")
        self.counters[f"claim_{verdict.kind}"] += 1
        if verdict.kind == "conflict":
            self._flag_conflict(mac, switch, port, verdict.reason, source)
        elif verdict.kind != "same":
            self._event(verdict.kind, client=mac, at=f"{switch}:{port}", reason=verdict.reason, source=source)
        if verdict.changed or learned:
            if self.core.clustered:  # the shared store first: what it does not take did not happen
                try:
                    self._save_runtime({mac})
                except StoreError as exc:
                    self.locations.undo_one(mac, before)
                    if learned:
                        self.learned.pop(mac, None)
                        self.keys.pop(mac, None)
                    self.counters["store_refused"] += 1
                    LOG.warning("cloud router: %s at %s:%d not taken: %s", mac, switch, port, exc)
                    return "unsaved"
            elif save:
                self._save_runtime()
            self.core.invalidate(self, {mac})  # this client's part only
        return verdict.kind

    def _flag_conflict(self, mac: str, switch: str, port: int, reason: str, source: str) -> None:
        """A frame with a connected client's MAC at another port: refused (see ``Locations.claim``) and
        flagged, one event and log line per client and port per second (the counter counts them all)."""
        key = (mac, switch, port)
        now = time.monotonic()
        if now - self._conflicts.get(key, -1e9) < 1.0:
            return
        if len(self._conflicts) > 4096:
            self._conflicts.clear()
        self._conflicts[key] = now
        self._event("conflict", client=mac, at=f"{switch}:{port}", reason=reason, source=source)
        LOG.warning("cloud router: refused %s at %s:%d: %s", mac, switch, port, reason)

    # -- runtime persistence -----------------------------------------------------------
    def _record(self, mac: str) -> dict | None:
        loc = self.locations.where(mac)
        rec = {"key": self.keys.get(mac), "learned": self.learned.get(mac),
               "at": [loc.switch, loc.port] if loc else None}
        return None if rec == {"key": None, "learned": None, "at": None} else rec

    def _save_runtime(self, macs=None) -> None:
        """Persist the clients' keys, learned addresses and locations.  A cluster writes one item per
        client that changed (``macs``: only these; raises StoreUnavailable), a single controller
        its state file."""
        if not self.core.clustered:
            self.core.save_intent(RUNTIME, {"keys": self.keys, "learned": self.learned,
                                            "locations": self.locations.dump()})
            return
        if macs is None:
            macs = set(self.keys) | set(self.learned) | set(self.locations.current) | set(self._written)
        items = {}
        for mac in macs:
            rec = self._record(mac)
            if rec != self._written.get(mac):
                items[mac] = rec
        if items:
            self.core.save_items(CLIENTS, items)
            for mac, rec in items.items():
                if rec is None:
                    self._written.pop(mac, None)
                else:
                    self._written[mac] = rec

    def _save_detached(self, switch: str, macs: list[str]) -> None:
        """Clients detached by a port event.  In a cluster every instance sees the event; the
        switch's master writes it, each client only if the store still has it at that port
        (another instance may have seen it arrive elsewhere meanwhile)."""
        if not self.core.clustered:
            self._save_runtime()
            return
        if not self.core.masters(switch):
            return
        for mac in macs:
            old = self._written.get(mac)
            if old is None:
                continue
            try:
                rec = self._record(mac)
                self.core.save_items(CLIENTS, {mac: rec}, expect={mac: old})
                if rec is None:
                    self._written.pop(mac, None)
                else:
                    self._written[mac] = rec
            except StoreConflict:
                pass  # it moved meanwhile: the watch brings where
            except StoreError as exc:
                self.counters["store_refused"] += 1
                LOG.warning("cloud router: detaching %s not saved: %s", mac, exc)

    def on_store_change(self, change) -> None:
        """Another instance learned, moved or forgot a client (cluster): take it, recompute its part."""
        if change.name == "*":
            self._written = {}
            for mac, rec in self.core.load_items(CLIENTS).items():
                self._take_record(mac, rec)
            self.core.invalidate(self)
            return
        if change.name != CLIENTS or change.key is None:
            return
        self._take_record(change.key, None if change.text is None else json.loads(change.text))
        self.core.invalidate(self, {change.key})

    def _take_record(self, mac: str, rec: dict | None) -> None:
        if rec is None:
            self.learned.pop(mac, None)
            self.keys.pop(mac, None)
            self.locations.place(mac, None)
            self._written.pop(mac, None)
            return
        if rec.get("key") is not None:
            self.keys[mac] = int(rec["key"])
        if rec.get("learned") is not None:
            self.learned[mac] = dict(rec["learned"])
        else:
            self.learned.pop(mac, None)
        if self.locations.place(mac, rec.get("at")):
            self._event("moved" if rec.get("at") else "detached", client=mac,
                        at=":".join(map(str, rec["at"])) if rec.get("at") else None, source="cluster")
        self._written[mac] = rec

    def _load_runtime(self) -> None:
        if self.core.clustered:
            items = self.core.load_items(CLIENTS)
            data = {"keys": {m: r["key"] for m, r in items.items() if r.get("key") is not None},
                    "learned": {m: r["learned"] for m, r in items.items() if r.get("learned")},
                    "locations": {m: r["at"] for m, r in items.items() if r.get("at")}}
            self._written = dict(items)
        else:
            data = self.core.load_intent(RUNTIME) or {}
        keys: dict[str, int] = {}
        for m, k in sorted(data.get("keys", {}).items()):
            if int(k) not in keys:  # one client per key (a file written before that rule may repeat one)
                keys[int(k)] = m
        self.keys = {m: k for k, m in keys.items()}
        self.learned = dict(data.get("learned", {}))
        self.locations.restore(data.get("locations", {}))
        # lab hosts start where the topology plugs them (until they show up elsewhere)
        for mac, host in self._topo_clients(self.roles).items():
            if self.locations.where(mac) is None and mac not in data.get("locations", {}):
                self.locations.restore({mac: [host.switch, host.port]})
        self._assign_keys()
        self._save_runtime()

    # -- REST ------------------------------------------------------------------------------
    def add_routes(self, api) -> None:
        base = f"/v1/{APP}"
        add = lambda m, p, h, s, **kw: api.add(m, base + p, h, s, tag=APP, **kw)  # noqa: E731
        add("GET", "", lambda r: self._summary(), "Tiers, clients, NACs, tunnels at a glance")
        add("GET", "/clients", lambda r: [self._client_json(c) for c in self.client_infos()],
            "Clients: identity, policy, key, location, NAC")
        add("GET", "/clients/{client}", lambda r: self._client_json(self._client_or_404(r.params["client"])),
            "One client (by MAC or registered name)")
        add("PUT", "/clients/{client}", self._put_client,
            "Register or update a client by MAC (name, policy, quarantine, ipv4, key)", body=Client)
        add("DELETE", "/clients/{client}", self._delete_client,
            "Forget a client: a registered one falls back to the default policy; a learned one is forgotten")
        add("GET", "/clients/{client}/location", self._location_json, "Where a client is, its path and its NAC")
        add("POST", "/locations", self._post_locations,
            "Association reports: [{client, switch, port}] (as an access point would send them)",
            body=LocationReports)
        add("GET", "/policies", lambda r: {n: self._policy_json(n) for n in self._policy_names()},
            "Policies (and the built-in quarantine)")
        add("GET", "/policies/{name}", lambda r: self._policy_json(self._policy_or_404(r.params["name"])),
            "One policy, its flows per NAC and its clients")
        add("PUT", "/policies/{name}", self._put_policy, "Create or replace a policy", body=Policy)
        add("DELETE", "/policies/{name}", self._delete_policy, "Delete a policy no client uses")
        add("GET", "/tunnels", lambda r: self._tunnels_json(), "The two tunnel sets, their liveness and keys")
        add("GET", "/nacs", lambda r: self._nacs_json(), "NACs: failed or not, and their clients")
        add("GET", "/events", lambda r: list(self.history), "Recent location and NAC events (newest last)")

    def _require_tiers(self) -> Roles:
        if self.roles is None:
            raise ApiError(409, f"apps.{APP}.tiers is not set: the cloud router is idle")
        return self.roles

    def _client_or_404(self, ident: str) -> ClientInfo:
        infos = self.client_infos()
        try:
            mac = normalize_mac(ident)
        except ValueError:
            mac = None
        for cl in infos:
            if cl.mac == mac or (cl.name is not None and cl.name == ident):
                return cl
        raise ApiError(404, f"no client {ident!r} (MAC or registered name); {len(infos)} clients known")

    def _source(self, mac: str) -> str:
        if mac in self.intent.clients:
            return "registered"
        if mac in self._topo_clients(self.roles):
            return "lab host"
        return "learned"

    def _client_json(self, cl: ClientInfo) -> dict:
        r = self.roles
        order = client_rank(cl.mac, r) if r else ()
        nac = active_nac(order, self.failed)
        loc = self.locations.where(cl.mac)
        last = self.locations.last.get(cl.mac)
        topo = self._topo_clients(r)
        host = topo.get(cl.mac)
        out = {"mac": cl.mac, "name": cl.name, "host": host.name if host is not None else None,
               "source": self._source(cl.mac), "policy": cl.policy, "quarantined": cl.policy == QUARANTINE,
               "ipv4": cl.ipv4, "key": cl.key, "location": loc.to_dict() if loc else None,
               "nac": nac, "nac_order": list(order)}
        if loc is None and last is not None:
            out["last_location"] = last.to_dict()
        return out

    def _location_json(self, r) -> dict:
        roles = self._require_tiers()
        cl = self._client_or_404(r.params["client"])
        loc = self.locations.where(cl.mac)
        order = client_rank(cl.mac, roles)
        nac = active_nac(order, self.failed)
        out = {"client": cl.mac, "name": cl.name, "location": loc.to_dict() if loc else None, "nac": nac,
               "nac_order": list(order), "key": cl.key}
        if loc is not None and loc.switch in roles.ap_uplinks:
            td, td_port = client_td((loc.switch, loc.port), roles, self._down(self.core.view()))
            out["path"] = {
                "access_point": {"switch": loc.switch, "port": loc.port},
                "tunnel_device": {"switch": td, "port": td_port},
                "set1": {"type": "/".join(sorted({t["type"] for t in roles.tunnels if t["set"] == 1})),
                         "vni": cl.key, "forwarders": sorted(roles.td_fc[td])},
                "set2": {"type": "/".join(sorted({t["type"] for t in roles.tunnels if t["set"] == 2})),
                         "vni": cl.key, "nac": nac},
            }
        else:
            last = self.locations.last.get(cl.mac)
            out["last_location"] = last.to_dict() if last else None
        return out

    def _policy_names(self) -> list[str]:
        return self.intent.policy_names()

    def _policy_or_404(self, name: str) -> str:
        if name not in self._policy_names():
            raise ApiError(404, f"no policy {name!r}; known: {self._policy_names()}")
        return name

    def _policy_json(self, name: str) -> dict:
        pol = self.intent.policy_obj(name)
        pid = policy_ids(self._policy_names())[name]
        users = [c.mac for c in self.client_infos() if c.policy == name]
        return {"name": name, **pol.model_dump(mode="json", exclude_none=True), "reg0": pid,
                "builtin": name == QUARANTINE, "default": name == self.intent.default_policy,
                "flows_per_nac": 2 * sum(len(expand_rule(r)) for r in pol.allow) + 1,
                "clients": len(users), "client_macs": users[:100]}

    def _tunnels_json(self) -> dict:
        roles = self._require_tiers()
        out = []
        for t in roles.tunnels:
            a, b = self.tunnel_state((t["a"], t["a_port"])), self.tunnel_state((t["b"], t["b_port"]))
            out.append({**t, "name": f"{t['a']}:{t['a_port']}-{t['b']}:{t['b_port']}", "key": "flow",
                        "live": a == b == "live", "a_state": a, "b_state": b})
        return {"set1": {"between": "tunnel devices and forwarders", "tunnels": [t for t in out if t["set"] == 1]},
                "set2": {"between": "forwarders and NACs", "tunnels": [t for t in out if t["set"] == 2]},
                "keys": "each client's key is the VNI on both sets (GET /v1/cloud_router/clients)",
                "clients_with_keys": len(self.keys)}

    def _nacs_json(self) -> dict:
        roles = self._require_tiers()
        infos = self.client_infos()
        out = {}
        for n in roles.nacs:
            primary = [c for c in infos if client_rank(c.mac, roles)[0] == n]
            active = [c for c in infos if active_nac(client_rank(c.mac, roles), self.failed) == n]
            out[n] = {"failed": n in self.failed, "failed_since": self.failed_since.get(n),
                      "connected": self.core.is_connected(n), "primary_for": len(primary),
                      "serving": len(active), "clients": [c.mac for c in active][:100]}
        return out

    def _summary(self) -> dict:
        roles = self.roles
        infos = self.client_infos()
        return {"tiers": self.intent.tiers.model_dump() if self.intent.tiers else None,
                "clients": {"total": len(infos), "located": sum(c.location is not None for c in infos),
                            "quarantined": sum(c.policy == QUARANTINE for c in infos),
                            "learned": len(self.learned)},
                "policies": self._policy_names(), "failed_nacs": sorted(self.failed),
                "tunnels": len(roles.tunnels) if roles else 0, "counters": dict(self.counters),
                "last_compute": {"seconds": round(self.core.compute_seconds(self), 4), "clients": len(infos)},
                "cookie_kinds": {f"{cookies.app_id(APP):#04x}{k:02x}": v for k, v in KIND_NAMES.items()}}

    # -- REST changes: validate, try, commit ---------------------------------------------
    def _apply(self, candidate_data: dict, parts=None) -> CloudRouterIntent:
        """Validate, compute ``parts`` (None: all) with the candidate (nothing changes), commit."""
        try:
            candidate = CloudRouterIntent.model_validate(candidate_data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        try:
            result = self.core.try_intent(self, candidate, parts)
        except IntentError as exc:
            raise ApiError(422, f"refused, nothing changed: {exc}", exc.field) from None
        except (StateConflict, ValueError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        self.core.commit_intent(self, candidate, result)  # the intent setter hands out new keys
        self._save_runtime()
        return candidate

    def _policy_parts(self, candidate_data: dict, name: str) -> set | None:
        """What a change of policy ``name`` changes: the shared part (the policies at the NACs) and
        the clients with that policy (their meters); every part if another policy's id moves."""
        before = policy_ids(self._policy_names())
        after = policy_ids(set(candidate_data.get("policies", {})) | {QUARANTINE})
        if any(before[n] != after[n] for n in before.keys() & after.keys()):
            return None
        return {SHARED} | {c.mac for c in self.client_infos() if c.policy == name}

    def _intent_data(self) -> dict:
        return self.intent.model_dump(mode="json", exclude_none=True)

    def _put_client(self, r):
        try:
            mac = normalize_mac(r.params["client"])
        except ValueError as exc:
            raise ApiError(422, f"client: {exc}; register clients by MAC", "client") from None
        body: Client = r.body
        data = self._intent_data()
        data.setdefault("clients", {})[mac] = body.model_dump(mode="json", exclude_none=True)
        if body.ipv4 is None and mac in self.learned:  # keep what was learned: no re-registration
            data["clients"][mac]["ipv4"] = self.learned[mac]["ipv4"]
        if mac not in self.intent.clients and body.ipv4 is not None:
            other = self._ip_taken(body.ipv4, mac)
            if other is not None:
                raise ApiError(422, f"ipv4: {body.ipv4} is the address of client {other}", "ipv4")
        # this client's part, and that of a client whose key it now pins
        self._apply(data, {mac} | {m for m, k in self.keys.items() if k == body.key and m != mac})
        if mac in self.learned:
            self.learned.pop(mac)
            self._save_runtime()
        self._event("registered", client=mac, policy=self.intent.policy_of(self.intent.clients[mac]))
        return self._client_json(self._client_or_404(mac))

    def _delete_client(self, r):
        cl = self._client_or_404(r.params["client"])
        if cl.mac in self.intent.clients:
            data = self._intent_data()
            del data["clients"][cl.mac]
            self._apply(data, {cl.mac})
            self._event("unregistered", client=cl.mac)
            return {"deleted": cl.mac, "now": self._client_json(self._client_or_404(cl.mac))
                    if self._known(cl.mac) else None}
        if cl.mac in self.learned:
            self.learned.pop(cl.mac)
            self.locations.forget(cl.mac)
            self.keys.pop(cl.mac, None)
            self._save_runtime()
            self.core.invalidate(self, {cl.mac})
            self._event("forgotten", client=cl.mac)
            return {"deleted": cl.mac, "now": None}
        raise ApiError(409, f"client {cl.mac} is lab host {self._client_json(cl)['host']} with no registration; "
                            "there is nothing to delete (it has the default policy)")

    def _post_locations(self, r):
        roles = self._require_tiers()
        verdicts: Counter = Counter()
        errors = []
        for i, rep in enumerate(r.body.reports):
            if rep.switch not in roles.ap_uplinks:
                errors.append({"index": i, "error": f"{rep.switch} is not an access point"})
                continue
            try:
                mac = normalize_mac(rep.client)
            except ValueError:
                try:
                    mac = self._client_or_404(rep.client).mac
                except ApiError as exc:
                    errors.append({"index": i, "error": exc.message})
                    continue
            if not self._known(mac):
                errors.append({"index": i, "error": f"{mac} is not a known client; register it first"})
                continue
            verdicts[self.observe(mac, rep.switch, rep.port, source="report", save=False)] += 1
        if verdicts.get("new") or verdicts.get("moved"):
            self._save_runtime()
        if errors and not verdicts:
            raise ApiError(422, f"reports[{errors[0]['index']}]: {errors[0]['error']}",
                           f"reports[{errors[0]['index']}]")
        return {"verdicts": dict(verdicts), "errors": errors[:20]}

    def _put_policy(self, r):
        name = r.params["name"]
        data = self._intent_data()
        data.setdefault("policies", {})[name] = r.body.model_dump(mode="json", exclude_none=True)
        self._apply(data, self._policy_parts(data, name))
        self._event("policy_set", policy=name)
        return self._policy_json(name)

    def _delete_policy(self, r):
        name = self._policy_or_404(r.params["name"])
        if name == QUARANTINE:
            raise ApiError(409, "the quarantine policy is built in; change apps.cloud_router.registration instead")
        users = sorted(m for m, c in self.intent.clients.items() if c.policy == name)
        if users:
            raise ApiError(409, f"policy {name} is used by clients {', '.join(users[:5])}"
                                f"{' and more' if len(users) > 5 else ''}; move them to another policy first")
        if self.intent.default_policy == name:
            raise ApiError(409, f"policy {name} is the default_policy; change it first")
        data = self._intent_data()
        del data["policies"][name]
        self._apply(data, self._policy_parts(data, name))
        self._event("policy_deleted", policy=name)
        return {"deleted": name}

