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

The logic lives in :mod:`ryu_apps.functions.cloud_router.model` (intent, keys,
locations) and :mod:`ryu_apps.functions.cloud_router.flows` (flows); this module is
the thin os-ken app: events in, REST, and ``compute``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque

from os_ken.controller import ofp_event
from os_ken.controller.handler import MAIN_DISPATCHER, set_ev_cls
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ryu_apps.framework import config, cookies
from ryu_apps.framework.app import FabricApp, FabricView, IntentError, PacketIn
from ryu_apps.framework.core import PACKET_IN_BYTES, FabricCore, TokenBucket
from ryu_apps.framework.rest import ApiError, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.functions.cloud_router.flows import (
    K_PUNT,
    KIND_NAMES,
    ClientInfo,
    FlowCache,
    Inputs,
    active_nac,
    client_rank,
    client_td,
    compute_cloud,
    failed_nacs,
)
from ryu_apps.functions.cloud_router.model import (
    APP,
    QUARANTINE,
    Client,
    CloudRouterIntent,
    IntentCheckError,
    Locations,
    Policy,
    Roles,
    assign_keys,
    derive_roles,
    expand_rule,
    normalize_mac,
    policy_ids,
)
from ryu_apps.functions.cloud_router.wire import client_frame
from ryu_apps.packet.parse import BadPacket

LOG = logging.getLogger(__name__)
DEFAULT_ROUTER_MAC = "0e:fa:b0:00:00:01"
RUNTIME = f"{APP}.runtime"  # <state-dir>/cloud_router.runtime.json: keys, learned clients, locations


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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = FlowCache()
        self._roles_cache: tuple | None = None  # (tiers object, its JSON, Roles)
        self._trying = False
        try:
            self._roles(self.intent)
        except IntentError as exc:
            self.core.apps.pop(self.APP_NAME, None)
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field) from None
        self.locations = Locations(holddown=self.intent.roam_holddown_s)
        self.learned: dict[str, dict] = {}   # mac -> {"ipv4", "first_seen"}
        self.keys: dict[str, int] = {}
        self._keys_dirty = False
        self.port_live: dict[tuple[str, int], bool] = {}  # tier switch ports: up and LIVE
        self.history: deque = deque(maxlen=256)
        self._conflicts: dict[tuple[str, str, int], float] = {}  # (mac, switch, port) -> last flagged
        self.counters: Counter = Counter()
        self._buckets: dict[str, TokenBucket] = {}
        self.failed: frozenset = frozenset()
        self.failed_since: dict[str, float] = {}
        self.last_compute = {"seconds": 0.0, "clients": 0}
        self._load_runtime()

    # -- model inputs ------------------------------------------------------------
    @property
    def roles(self) -> Roles | None:
        return self._roles(self.intent)

    def _roles(self, intent: CloudRouterIntent) -> Roles | None:
        tiers = intent.tiers
        if tiers is None:
            return None
        cached = self._roles_cache
        if cached and cached[0] is tiers:
            return cached[2]
        sig = tiers.model_dump_json()
        if cached and cached[1] == sig:
            self._roles_cache = (tiers, sig, cached[2])
            return cached[2]
        try:
            roles = derive_roles(self.core.topology, tiers)
        except IntentCheckError as exc:
            raise IntentError(str(exc), exc.field) from None
        self._roles_cache = (tiers, sig, roles)
        return roles

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
        fabric = self.core.apps.get("fabric")
        return getattr(getattr(fabric, "intent", None), "router_mac", None) or DEFAULT_ROUTER_MAC

    def _macs(self, intent: CloudRouterIntent) -> set[str]:
        return set(intent.clients) | set(self._topo_clients(self._roles(intent))) | set(self.learned)

    def _keys_for(self, intent: CloudRouterIntent) -> dict[str, int]:
        """Every client's key; new ones are remembered at once (persisted with the runtime state),
        so a key, once handed out, stays with its client."""
        explicit = {m: c.key for m, c in intent.clients.items() if c.key is not None}
        keys = assign_keys(self.keys, self._macs(intent), explicit)
        if any(self.keys.get(m) != k for m, k in keys.items()):
            self.keys.update(keys)
            self._keys_dirty = True
        return keys

    def client_infos(self, intent: CloudRouterIntent | None = None) -> list[ClientInfo]:
        intent = intent or self.intent
        keys = self._keys_for(intent)
        topo = self._topo_clients(self._roles(intent))
        out = []
        for mac in sorted(keys):
            c = intent.clients.get(mac)
            host = topo.get(mac)
            ip = (c.ipv4 if c and c.ipv4 else None) or (str(host.ipv4.ip) if host is not None and host.ipv4
                                                       else None) or self.learned.get(mac, {}).get("ipv4")
            loc = self.locations.where(mac)
            out.append(ClientInfo(mac, keys[mac], ip, intent.policy_of(c), c.name if c else None,
                                  (loc.switch, loc.port) if loc else None))
        return out

    def _down(self, view: FabricView) -> frozenset:
        """Ports down or not LIVE.  A port the switch has not reported yet counts as up: after a
        controller restart the switches keep what they have until they say otherwise."""
        return frozenset(view.down_ports) | frozenset(k for k, live in self.port_live.items() if not live)

    def tunnel_state(self, end: tuple[str, int]) -> str:
        """live | down | unknown (not reported yet) of one tunnel port."""
        if end[0] in self.core.dead:
            return "down"
        live = self.port_live.get(end)
        return "unknown" if live is None else "live" if live else "down"

    # -- compute -------------------------------------------------------------------
    def compute(self, view: FabricView) -> dict[str, SwitchState]:
        intent = self.intent
        roles = self._roles(intent)
        if roles is None:
            return {}
        t0 = time.monotonic()
        down = self._down(view)
        failed = failed_nacs(roles, frozenset(view.dead_switches), down)
        hosts = self.core.topology.hosts
        clients = self.client_infos(intent)
        inp = Inputs(intent, roles, self.router_mac(intent), clients, failed, frozenset(view.dead_switches),
                     down, tuple(hosts[h] for h in roles.services))
        states = compute_cloud(inp, self.cache)
        if not self._trying:  # not a candidate intent being tried
            self.locations.holddown = intent.roam_holddown_s
            now = time.time()
            for n in failed - self.failed:
                self.failed_since[n] = now
                self._event("nac_failed", nac=n)
            for n in self.failed - failed:
                self.failed_since.pop(n, None)
                self._event("nac_recovered", nac=n)
            self.failed = failed
            if self._keys_dirty:
                self._save_runtime()
            self.last_compute = {"seconds": round(time.monotonic() - t0, 4), "clients": len(clients),
                                 "cache_hits": self.cache.hits, "cache_misses": self.cache.misses}
        return states

    # -- events: packet-ins and ports -----------------------------------------------
    def _event(self, kind: str, **info) -> None:
        self.history.append({"t": round(time.time(), 3), "event": kind, **info})

    def packet_in(self, pkt: PacketIn) -> None:
        """The core's dispatch of our punts: counted only (see :meth:`_packet_in`)."""
        self.counters["packet_in_via_core"] += 1

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        """Access point punts, handled in this app's own event queue.

        The core also sees every packet-in (and calls :meth:`packet_in`), but in
        its own queue: a packet-in from a port just plugged could then be handled
        before this app has seen the port being added, and be taken for a late
        frame from a port that was deleted.  Port status and packet-ins of one
        switch arrive in this queue in the order the switch sent them.  The same
        protections as the core's apply: the switch's punt meter, a token bucket
        per switch, at most PACKET_IN_BYTES parsed with bounded code.
        """
        msg = ev.msg
        c = cookies.decode(msg.cookie)
        if c.app != APP or c.kind != K_PUNT:
            return
        name = self._switch_name(msg.datapath)
        roles = self.roles
        if name is None or roles is None or name not in roles.ap_uplinks:
            self.counters["packet_in_ignored"] += 1
            return
        bucket = self._buckets.get(name)
        if bucket is None:
            rate = config.get("packet-in-rate")
            bucket = self._buckets[name] = TokenBucket(2 * rate, 2 * rate)
        if not bucket.take():
            self.counters["packet_in_rate_limited"] += 1
            return
        try:
            frame = client_frame(bytes(msg.data[:PACKET_IN_BYTES]))
        except BadPacket as exc:
            self.counters["packet_in_bad"] += 1
            LOG.debug("bad punt from %s: %s", name, exc)
            return
        self.counters["packet_in"] += 1
        self.observe(frame.src, name, msg.match.get("in_port", 0), frame.ipv4, source="packet-in")

    def _known(self, mac: str) -> bool:
        return mac in self.intent.clients or mac in self._topo_clients(self.roles) or mac in self.learned

    def _ip_taken(self, ip: str, mac: str) -> str | None:
        for cl in self.client_infos():
            if cl.ipv4 == ip and cl.mac != mac:
                return cl.mac
        return None

    def observe(self, mac: str, switch: str, port: int, ipv4: str | None = None, source: str = "report",
                save: bool = True) -> str:
        """``mac`` was seen at ``switch:port``: learn it if unknown, move it if it roamed. Returns the verdict."""
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
            self._keys_for(self.intent)
            self._event("learned", client=mac, ipv4=ipv4, at=f"{switch}:{port}",
                        policy=self.intent.default_policy)
        verdict = self.locations.claim(mac, switch, port, reported=source == "report",
                                       alive=lambda sw: sw in self.core.datapaths)
        self.counters[f"claim_{verdict.kind}"] += 1
        if verdict.kind == "conflict":
            self._flag_conflict(mac, switch, port, verdict.reason, source)
        elif verdict.kind != "same":
            self._event(verdict.kind, client=mac, at=f"{switch}:{port}", reason=verdict.reason, source=source)
        if verdict.changed:
            self.core.schedule_recompute()
            if save:
                self._save_runtime()
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

    def _switch_name(self, dp) -> str | None:
        sw = self.core.topology.switch_by_dpid(dp.id) if dp.id is not None else None
        return sw.name if sw else None

    def _tier_switches(self) -> set[str]:
        r = self.roles
        return set() if r is None else set(r.aps + r.tds + r.fcs + r.nacs + (r.uplink,))

    def _port(self, switch: str, port: int, up: bool, live: bool, added: bool = False,
              deleted: bool = False) -> None:
        r = self.roles
        changed = False
        key = (switch, port)
        if key in self.port_live or self.core.topology.ports.get(key) is not None:
            if self.port_live.get(key) != (up and live):
                self.port_live[key] = up and live
                changed = True
        if switch in r.ap_uplinks and port not in {p for p, _, _ in r.ap_uplinks[switch]}:
            state = "deleted" if deleted else "up" if up else "down"
            detached = self.locations.port_event(switch, port, state, added=added)
            for mac in detached:
                self._event("detached", client=mac, at=f"{switch}:{port}")
            if detached:
                changed = True
                self._save_runtime()
        if changed:
            self.core.schedule_recompute()

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        name = self._switch_name(msg.datapath)
        if name is None or name not in self._tier_switches():
            return
        ofp = msg.datapath.ofproto
        desc = msg.desc
        deleted = msg.reason == ofp.OFPPR_DELETE
        up = not deleted and not desc.state & ofp.OFPPS_LINK_DOWN and not desc.config & ofp.OFPPC_PORT_DOWN
        self._port(name, desc.port_no, up, bool(desc.state & ofp.OFPPS_LIVE), added=msg.reason == ofp.OFPPR_ADD,
                   deleted=deleted)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev):
        name = self._switch_name(ev.msg.datapath)
        if name is None or name not in self._tier_switches():
            return
        ofp = ev.msg.datapath.ofproto
        for desc in ev.msg.body:
            if desc.port_no > ofp.OFPP_MAX:
                continue
            up = not desc.state & ofp.OFPPS_LINK_DOWN and not desc.config & ofp.OFPPC_PORT_DOWN
            self._port(name, desc.port_no, up, bool(desc.state & ofp.OFPPS_LIVE))

    # -- runtime persistence -----------------------------------------------------------
    def _save_runtime(self) -> None:
        self._keys_dirty = False
        self.core.save_intent(RUNTIME, {"keys": self.keys, "learned": self.learned,
                                        "locations": self.locations.dump()})

    def _load_runtime(self) -> None:
        data = self.core.load_intent(RUNTIME) or {}
        self.keys = {m: int(k) for m, k in data.get("keys", {}).items()}
        self.learned = dict(data.get("learned", {}))
        self.locations.restore(data.get("locations", {}))
        # lab hosts start where the topology plugs them (until they show up elsewhere)
        for mac, host in self._topo_clients(self.roles).items():
            if self.locations.where(mac) is None and mac not in data.get("locations", {}):
                self.locations.restore({mac: [host.switch, host.port]})
        self._keys_for(self.intent)
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
        return sorted(set(self.intent.policies) | {QUARANTINE})

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
                      "connected": n in self.core.datapaths, "primary_for": len(primary),
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
                "last_compute": self.last_compute,
                "cookie_kinds": {f"{cookies.app_id(APP):#04x}{k:02x}": v for k, v in KIND_NAMES.items()}}

    # -- REST changes: validate, try, commit ---------------------------------------------
    def _apply(self, candidate_data: dict) -> CloudRouterIntent:
        try:
            candidate = CloudRouterIntent.model_validate(candidate_data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        self._trying = True
        try:
            states = self.core.try_intent(self, candidate)
        except IntentError as exc:
            raise ApiError(422, f"refused, nothing changed: {exc}", exc.field) from None
        except (StateConflict, ValueError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        finally:
            self._trying = False
        self.core.commit_intent(self, candidate, states)
        self._save_runtime()
        return candidate

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
        self._apply(data)
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
            self._apply(data)
            self._event("unregistered", client=cl.mac)
            return {"deleted": cl.mac, "now": self._client_json(self._client_or_404(cl.mac))
                    if self._known(cl.mac) else None}
        if cl.mac in self.learned:
            self.learned.pop(cl.mac)
            self.locations.forget(cl.mac)
            self.keys.pop(cl.mac, None)
            self._save_runtime()
            self.core.schedule_recompute()
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
        self._apply(data)
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
        self._apply(data)
        self._event("policy_deleted", policy=name)
        return {"deleted": name}

