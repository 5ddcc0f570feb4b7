"""Proxy clusters: one virtual IP served by a cluster of HAProxy nodes, spread and pinned in OVS.

Launch together with the base fabric (whose next-hop groups carry VIP traffic to a proxy)::

    ryu-manager --fabric-topology topologies/proxy_cluster.yaml ryu_apps/fabric.py ryu_apps/proxy_cluster.py

The intent is ``ryu_apps/functions/proxy_cluster/intent.py``; the flows are
``flows.py`` there (a select group picks a proxy per new connection, conntrack
marks pin it); ``haproxy.py`` renders what each proxy node runs, from the view
``GET /v1/proxy-clusters/<name>/config`` serves to the node's agent.

On framework v2: one part per cluster (its name), so a REST change of one
cluster computes that cluster only; the whole intent's checks are the
stateless part ``CHECK``.  The flows read the view (which switches reach
which proxies) and the cluster's *runtime state*: which proxies are up (the
health judge, fed by the agents' heartbeats), which drains timed out, which
removed servers still keep their role.

In a controller cluster the app has a leader (``CLUSTER = "leader"``): every
heartbeat punted anywhere reaches it, it alone judges, and it publishes each
cluster's runtime state (``proxy_cluster.runtime`` in the store) before it
acts; every instance computes its switches' flows from that.  A proxy the
leader has not said is up gets no new connection anywhere.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Hashable, Iterable

import networkx as nx
from os_ken.lib import hub
from pydantic import ValidationError

from ryu_apps.framework import cookies
from ryu_apps.framework.app import WHOLE, FabricApp, FabricView, IntentError, PacketIn, PortChange, SwitchChange
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import PipelineError
from ryu_apps.framework.rest import ApiError, remove_item, upsert_item, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.framework.store import StoreError
from ryu_apps.functions.proxy_cluster import haproxy
from ryu_apps.functions.proxy_cluster.agent import config_version
from ryu_apps.functions.proxy_cluster.flows import APP, KIND_NAMES, compute_cluster, group_id, proxy_mark
from ryu_apps.functions.proxy_cluster.health import (
    DEGRADED,
    DOWN,
    K_HEARTBEAT,
    UP,
    ProxyHealth,
    heartbeat_cookie,
    heartbeat_flows,
)
from ryu_apps.functions.proxy_cluster.intent import ClusterSpec, ProxyClusterIntent, ProxySpec, ServerSpec
from ryu_apps.functions.proxy_cluster.model import resolve, slot_table, validate
from ryu_apps.functions.proxy_cluster.wire import HEARTBEAT_PORT, BadHeartbeat, parse_frame

LOG = logging.getLogger(__name__)

DEFAULT_ROUTER_MAC = "0e:fa:b0:00:00:01"
SYNC_WAIT_MAX = 30.0
#: the longest an agent's config poll is held open (s)
AGENT_WAIT_MAX = 30.0
#: the part with no state: the whole intent's checks across clusters (no cluster is named like it)
CHECK = "*checks"
#: the store collection of each cluster's runtime state (the leader writes, every instance computes from it)
SHARED = "proxy_cluster.runtime"
NOTHING = {"up": frozenset(), "pinned": frozenset(), "drained": frozenset(), "retiring": frozenset(), "slots": ()}


class ProxyCluster(FabricApp):
    """The proxy cluster app (``ryu_apps/proxy_cluster.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = ProxyClusterIntent
    #: which proxies a switch can reach (over live links) decides its buckets and pins
    INPUTS = frozenset({"ports", "switches"})
    #: one instance judges health (every heartbeat is relayed to it) and publishes the result
    CLUSTER = "leader"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: cluster -> its proxies' judge (runtime state, not intent)
        self.health: dict[str, ProxyHealth] = {}
        #: heartbeat punt cookie -> (cluster, proxy)
        self._hb_owner: dict[int, tuple[str, str]] = {}
        #: (cluster, proxy) -> when its drain ends (monotonic); ``drained``: those past it
        self._drain_ends: dict[tuple[str, str], float] = {}
        self.drained: dict[str, frozenset[str]] = {}
        #: (cluster, host) -> until when a host removed from the pools keeps its server role (isolation)
        self._retiring: dict[tuple[str, str], float] = {}
        self._servers_of: dict[str, set[str]] = {}
        self.counters: Counter = Counter()
        #: health changes and drain ends, newest last (GET /v1/proxy-clusters/<name>: events)
        self.history: deque = deque(maxlen=64)
        self._changed = hub.Event()   # set (and replaced) on every intent change: agents' polls wake
        #: cluster -> what its flows are computed from: proxies up, drains timed out, servers retiring
        self.runtime: dict[str, dict[str, frozenset]] = {}
        try:
            validate(self.core.topology, self.intent)
        except IntentError as exc:
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field, exc.status) from None
        # before the first compute: what was last published (by the leader of a controller cluster,
        # or by this controller before a restart): proxies up then are up now, the others join
        try:
            for cname, data in self.core.load_items(SHARED).items():
                self.runtime[cname] = _runtime_of(data)
        except StoreError as exc:
            LOG.warning("proxy clusters: runtime state not read from the store (%s)", exc)
        self._follow_intent(initial=True)
        self.threads.append(hub.spawn(self._monitor_loop))

    def router_mac(self) -> str:
        fabric = self.core.app_intent("fabric")
        return getattr(fabric, "router_mac", None) or DEFAULT_ROUTER_MAC

    # -- runtime state that follows the intent ---------------------------------------------
    def _follow_intent(self, initial: bool = False) -> None:
        """Judge exactly the declared proxies (new ones join); time drains; wake the agents."""
        now = time.monotonic()
        names = {c.name for c in self.intent.clusters}
        for gone in set(self.health) - names:
            del self.health[gone]
        self._hb_owner = {}
        drains: dict[tuple[str, str], float] = {}
        for c in self.intent.clusters:
            h = self.health.setdefault(c.name, ProxyHealth())
            h.configure(c.health.interval_ms, c.health.fall, c.health.rise, c.health.hold_down_s)
            h.declare([p.host for p in c.proxies], now, initial, up=self.runtime.get(c.name, NOTHING)["up"])
            for p in c.proxies:
                self._hb_owner[heartbeat_cookie(c.name, p.host)] = (c.name, p.host)
                if p.state == "drain":
                    key = (c.name, p.host)
                    drains[key] = self._drain_ends.get(key, now + c.drain_timeout_s)
        self._drain_ends = drains
        self._expire_drains(now)
        self.retire_removed_servers(self.intent)
        self._servers_of = {c.name: {x.host for pool in c.pools for x in pool.servers} for c in self.intent.clusters}
        self._retiring = {k: v for k, v in self._retiring.items() if k[0] in names}
        for gone in set(self.runtime) - names:
            del self.runtime[gone]
            if self.core.leads(self):
                try:
                    self.core.save_items(SHARED, {gone: None})
                except StoreError:
                    pass
        if self.core.leads(self):
            for cname in sorted(names):
                if self._derive(cname):  # (the intent's own result was computed from the old state)
                    self.core.invalidate(self, {cname})
        old, self._changed = self._changed, hub.Event()
        old.set()

    def on_intent_change(self) -> None:
        """A new intent (here, or from another instance): judge its proxies, time its drains."""
        self._follow_intent()

    # -- the runtime state: derived by the leader, published, computed from everywhere ----------
    def _derive(self, cname: str) -> bool:
        """The leader's view of ``cname`` into :attr:`runtime`; published when it changed. True then."""
        h = self.health.get(cname)
        old = self.runtime.get(cname, NOTHING)
        up = frozenset(n for n, j in (h.proxies.items() if h else ()) if j.state == UP)
        c = next((c for c in self.intent.clusters if c.name == cname), None)
        members = sorted(p.host for p in (c.proxies if c else ()) if p.state == "active" and p.host in up)
        new = {"up": up, "pinned": h.pinned() if h else frozenset(),
               "drained": self.drained.get(cname, frozenset()),
               "retiring": frozenset(host for (cn, host) in self._retiring if cn == cname),
               # which proxy owns each hash slot: changed only as far as the members changed
               "slots": tuple(slot_table(members, old["slots"]))}
        if old == new:
            return False
        self.runtime[cname] = new
        # written before it is acted on: followers compute the same flows, a restart starts from it
        try:
            self.core.save_items(SHARED, {cname: {k: list(v) if k == "slots" else sorted(v)
                                                  for k, v in new.items()}})
        except StoreError as exc:
            LOG.error("proxy cluster %s: runtime state not saved (%s): other instances lag", cname, exc)
        return True

    def on_store_change(self, change) -> None:
        """The leader published a cluster's runtime state: compute from it (a follower)."""
        if self.core.leads(self):
            return
        if change.name == "*":
            try:
                self.runtime = {c: _runtime_of(d) for c, d in self.core.load_items(SHARED).items()}
            except StoreError:
                return
            self.core.invalidate(self)
            return
        if change.name != SHARED or change.key is None:
            return
        if change.text is None:
            self.runtime.pop(change.key, None)
        else:
            self.runtime[change.key] = _runtime_of(json.loads(change.text))
        self.core.invalidate(self, {change.key})

    def on_leadership(self, leading: bool) -> None:
        """Leader now: judge from what the last leader published (its up proxies get a grace of
        ``fall`` beats, the others must rise), and publish."""
        if not leading:
            return
        now = time.monotonic()
        for c in self.intent.clusters:
            h = self.health.get(c.name)
            up = self.runtime.get(c.name, NOTHING)["up"]
            if h is None:
                continue
            pinned = self.runtime.get(c.name, NOTHING)["pinned"]
            for n, j in h.proxies.items():
                state = UP if n in up else DEGRADED if n in pinned else DOWN
                j.state, j.since, j.last_ok, j.streak, j.hold_until = state, now, now, 0, now
            self._derive(c.name)
        LOG.info("proxy clusters: leading (judging %d proxies)", sum(len(h.proxies) for h in self.health.values()))
    def retire_removed_servers(self, intent: ProxyClusterIntent) -> None:
        """Servers ``intent`` removes keep their role (isolation) for the drain timeout: the
        proxies' old workers still send them their last requests.  Called before a candidate
        intent is computed, so its flows already say so."""
        now = time.monotonic()
        for c in intent.clusters:
            servers = {x.host for pool in c.pools for x in pool.servers}
            for host in self._servers_of.get(c.name, set()) - servers:
                self._retiring.setdefault((c.name, host), now + c.drain_timeout_s)
            for host in servers:
                self._retiring.pop((c.name, host), None)

    def _expire_drains(self, now: float) -> set[str]:
        """Move proxies whose drain timed out into ``drained``; the clusters that changed."""
        drained: dict[str, set[str]] = {}
        for (cname, host), end in self._drain_ends.items():
            if now >= end:
                drained.setdefault(cname, set()).add(host)
        new = {k: frozenset(v) for k, v in drained.items()}
        changed = {k for k in set(new) | set(self.drained) if new.get(k) != self.drained.get(k)}
        self.drained = new
        return changed

    def out_of_hash(self, c: ClusterSpec) -> frozenset[str]:
        """Proxies that get no new connection: not said to be up (down, joining, not yet judged)."""
        up = self.runtime.get(c.name, NOTHING)["up"]
        return frozenset(p.host for p in c.proxies if p.host not in up)

    # -- the desired state (pure) -----------------------------------------------------
    def parts(self, intent: ProxyClusterIntent) -> Iterable[Hashable]:
        """One part per cluster (its name), and :data:`CHECK`."""
        return (CHECK, *(c.name for c in intent.clusters))

    def compute(self, view: FabricView, intent: ProxyClusterIntent, part: Hashable = WHOLE) -> dict[str, SwitchState]:
        """The flows and groups of cluster ``part`` on every switch (pure)."""
        if part in (CHECK, WHOLE):
            validate(view.topology, intent)
        if part == CHECK:
            return {}
        out: dict[str, SwitchState] = {}
        rmac = self.router_mac()
        component = {sw: i for i, comp in enumerate(nx.connected_components(view.graph())) for sw in comp}

        def reach(a: str, b: str) -> bool:
            return a in component and component.get(a) == component.get(b)

        for c in intent.clusters:
            if part not in (WHOLE, c.name):
                continue
            # out of the hash and unpinned: proxies not judged up (a joining one has no connection yet,
            # a dead one's are picked again) and draining ones whose drain timed out
            rt = self.runtime.get(c.name, NOTHING)
            # unpinned: proxies not up nor degraded (a joining one has no connection yet, a dead one's
            # are picked again) and draining ones whose drain timed out; degraded: out of the hash only
            unpinned = frozenset(p.host for p in c.proxies if p.host not in rt["pinned"]) | rt["drained"]
            for states in (compute_cluster(view.topology, c, rmac, unpinned, rt["retiring"], reach,
                                           unpicked=self.out_of_hash(c), slots=rt["slots"]),
                           heartbeat_flows(view.topology, c.name, [p.host for p in c.proxies], rmac)):
                for sw, st in states.items():
                    out.setdefault(sw, SwitchState()).merge(st)
        return out

    def parts_changed(self, view: FabricView, intent, change) -> set:
        """A fabric link or a switch changing may change which proxies a switch reaches: every
        cluster; a host port changes nothing here (a proxy's own port is the judge's business)."""
        if isinstance(change, PortChange) and self.core.topology.ports[(change.switch, change.port)].kind == "host":
            return set()
        if isinstance(change, SwitchChange) and change.event not in ("dead", "alive"):
            return set()
        return {c.name for c in intent.clusters}

    # -- health: heartbeats, ports, the clock ----------------------------------------------
    def on_packet_in(self, pkt: PacketIn) -> None:
        """A proxy's heartbeat, punted by its edge switch (the flow matched its port, MAC and address)."""
        owner = self._hb_owner.get(pkt.cookie)
        if cookies.decode(pkt.cookie).kind != K_HEARTBEAT or owner is None:
            self.counters["packet_in_ignored"] += 1
            return
        try:
            hb = parse_frame(pkt.data)
        except BadHeartbeat as exc:
            self.counters["heartbeat_bad"] += 1
            LOG.debug("bad heartbeat from %s port %d: %s", pkt.switch, pkt.in_port, exc)
            return
        self.counters["heartbeats"] += 1
        cname, host = owner
        h = self.health.get(cname)
        if h is not None and h.heartbeat(host, hb, time.monotonic()):
            self._react(cname, f"{host} is {h.proxies[host].state}")

    def on_port_change(self, change: PortChange) -> None:
        """A proxy's own port went down (its link cut): out of the hash now, not after ``fall`` beats."""
        if change.usable or not self.core.leads(self):
            return
        now = time.monotonic()
        hosts = self.core.topology.hosts
        for c in self.intent.clusters:
            h = self.health.get(c.name)
            for p in c.proxies:
                x = hosts[p.host]
                if (x.switch, x.port) == (change.switch, change.port) and h is not None and h.link_down(p.host, now):
                    self._react(c.name, f"{p.host}'s port is down")

    def _react(self, cname: str, why: str) -> None:
        """Health changed: publish, recompute this cluster and hand it to the switches at once."""
        self.counters["health_changes"] += 1
        self.history.append({"t": round(time.time(), 3), "cluster": cname, "event": why})
        LOG.info("proxy cluster %s: %s", cname, why)
        if not self._derive(cname):
            return
        try:
            self.core.recompute_now(self, {cname})
        except (StateConflict, PipelineError, IntentError) as exc:
            LOG.error("proxy cluster %s: recompute after a health change failed: %s", cname, exc)

    def _monitor_loop(self) -> None:
        """Every eighth of an interval: proxies gone quiet go down; drains and retired servers end."""
        while True:
            step = min((c.health.interval_ms for c in self.intent.clusters), default=250) / 8000.0
            hub.sleep(max(0.02, step))
            if not self.core.leads(self):
                continue
            now = time.monotonic()
            for cname, h in list(self.health.items()):
                for host in h.tick(now):
                    self._react(cname, f"{host} is down ({h.proxies[host].why})")
            for cname in self._expire_drains(now):
                self._react(cname, "a drain timed out: its pinned connections are released")
            retired = {k for k, until in self._retiring.items() if now >= until}
            for key in retired:
                del self._retiring[key]
            for cname in sorted({cn for cn, _ in retired}):
                self._react(cname, "removed servers retired: proxies no longer reach them")

    # -- REST ----------------------------------------------------------------------------
    def add_routes(self, api) -> None:
        tag = "proxy-clusters"
        api.add("GET", "/v1/proxy-clusters", self._list, "Proxy clusters: VIP, proxies and their health, pools", tag)
        api.add("POST", "/v1/proxy-clusters", self._create,
                "Create a cluster (?wait=1: answer once every switch holds it)", tag, body=ClusterSpec, status=201)
        api.add("GET", "/v1/proxy-clusters/{name}", self._get,
                "One cluster: its intent, proxies' health, marks, flows per switch", tag)
        api.add("PUT", "/v1/proxy-clusters/{name}", self._replace,
                "Replace a cluster (proxies, servers, routes, ...): established connections stay pinned", tag,
                body=ClusterSpec)
        api.add("DELETE", "/v1/proxy-clusters/{name}", self._delete, "Delete a cluster: exactly its flows go", tag)
        api.add("PUT", "/v1/proxy-clusters/{name}/proxies/{host}", self._put_proxy,
                "Add a proxy, or set its state (active | drain)", tag, body=ProxySpec)
        api.add("DELETE", "/v1/proxy-clusters/{name}/proxies/{host}", self._delete_proxy,
                "Remove a proxy (drain it first: its pinned connections are released)", tag)
        api.add("PUT", "/v1/proxy-clusters/{name}/pools/{pool}/servers/{server}", self._put_server,
                "Add a server to a pool, or change it (state ready | drain | maint, weight): "
                "every proxy takes it through HAProxy's runtime API", tag, body=ServerSpec)
        api.add("DELETE", "/v1/proxy-clusters/{name}/pools/{pool}/servers/{server}", self._delete_server,
                "Remove a server from a pool (every proxy reloads without dropping a connection)", tag)
        api.add("GET", "/v1/proxy-clusters/{name}/config", self._config,
                "The cluster with every host's addresses and site, server ids", tag)
        api.add("GET", "/v1/proxy-clusters/{name}/haproxy/{proxy}", self._haproxy,
                "The haproxy.cfg the agent renders for one proxy (?run_dir=)", tag)
        api.add("GET", "/v1/proxy-agents/{host}", self._agent,
                "What host's proxy agent runs: its cluster (or null), heartbeat settings, a version "
                "(?version=V&wait=S: answer when the version differs from V, or after S seconds, at most 30)", tag)

    def _index(self, name: str) -> int:
        for i, c in enumerate(self.intent.clusters):
            if c.name == name:
                return i
        raise ApiError(404, f"no proxy cluster named {name!r}; clusters: {[c.name for c in self.intent.clusters][:50]}")

    def _apply(self, clusters: list[ClusterSpec], parts: set, r, index: int | None) -> dict:
        t0 = time.monotonic()
        try:
            candidate = ProxyClusterIntent.model_validate({"clusters": [c.model_dump() for c in clusters]})
        except ValidationError as exc:
            raise validation_error(exc) from None
        try:
            validate(self.core.topology, candidate)
        except IntentError as exc:
            field = exc.field
            if index is not None and field and field.startswith(f"clusters[{index}]."):
                field = field[len(f"clusters[{index}]."):]
                raise ApiError(exc.status, str(exc).replace(exc.field, field, 1), field) from None
            raise ApiError(exc.status, str(exc), field) from None
        self.retire_removed_servers(candidate)
        for c in candidate.clusters:  # published before the intent: followers never drop a removed server early
            self._derive(c.name)
        try:
            result = self.core.try_intent(self, candidate, parts=parts)
        except (StateConflict, PipelineError, IntentError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        self.core.commit_intent(self, candidate, result)   # (on_intent_change follows it)
        out = {"seconds": {"apply": round(time.monotonic() - t0, 4)}}
        if r.query.get("wait") in ("1", "true", "yes"):
            connected = [s for s in self.core.topology.switches if self.core.is_connected(s)]
            out["synced"] = not self.core.wait_applied(connected, SYNC_WAIT_MAX)
        return out

    def _change(self, r, name: str, edit) -> dict:
        """Apply ``edit`` (a function of the cluster's intent as data) to cluster ``name``."""
        i = self._index(name)
        data = self.intent.clusters[i].model_dump()
        edit(data)
        try:
            spec = ClusterSpec.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        clusters = list(self.intent.clusters)
        clusters[i] = spec
        return {**self._summary(spec), **self._apply(clusters, {name, CHECK}, r, i)}

    def _create(self, r):
        spec: ClusterSpec = r.body
        if any(c.name == spec.name for c in self.intent.clusters):
            raise ApiError(409, f"name: a proxy cluster named {spec.name!r} already exists", "name")
        clusters = [*self.intent.clusters, spec]
        extra = self._apply(clusters, {spec.name, CHECK}, r, len(clusters) - 1)
        return 201, {**self._summary(spec), **extra}

    def _replace(self, r):
        name = r.params["name"]
        spec: ClusterSpec = r.body
        if spec.name != name:
            raise ApiError(422, f"name: the body names {spec.name!r}, the path {name!r}", "name")
        i = self._index(name)
        clusters = list(self.intent.clusters)
        clusters[i] = spec
        extra = self._apply(clusters, {name, CHECK}, r, i)
        return {**self._summary(spec), **extra}

    def _delete(self, r):
        name = r.params["name"]
        i = self._index(name)
        clusters = [c for j, c in enumerate(self.intent.clusters) if j != i]
        extra = self._apply(clusters, {name, CHECK}, r, None)
        return {"deleted": name, **extra}

    def _put_proxy(self, r):
        host, spec = r.params["host"], r.body
        if spec.host != host:
            raise ApiError(422, f"host: the body names {spec.host!r}, the path {host!r}", "host")
        return self._change(r, r.params["name"], lambda data: upsert_item(data["proxies"], "host", spec.model_dump()))

    def _delete_proxy(self, r):
        host = r.params["host"]
        return self._change(r, r.params["name"], lambda data: remove_item(
            data["proxies"], "host", host, f"{host} is not a proxy of cluster {data['name']}"))

    def _pool(self, data: dict, pool: str) -> dict:
        for p in data["pools"]:
            if p["name"] == pool:
                return p
        raise ApiError(404, f"cluster {data['name']} has no pool {pool!r}; pools: {[p['name'] for p in data['pools']]}")

    def _put_server(self, r):
        server, spec = r.params["server"], r.body
        if spec.name != server:
            raise ApiError(422, f"name: the body names {spec.name!r}, the path {server!r}", "name")
        return self._change(r, r.params["name"], lambda data: upsert_item(
            self._pool(data, r.params["pool"])["servers"], "name", spec.model_dump()))

    def _delete_server(self, r):
        server, pool = r.params["server"], r.params["pool"]
        return self._change(r, r.params["name"], lambda data: remove_item(
            self._pool(data, pool)["servers"], "name", server, f"pool {pool} has no server {server!r}"))

    def _summary(self, c: ClusterSpec) -> dict:
        now = time.monotonic()
        h = self.health.get(c.name)
        judged = h.as_dict(now) if h is not None else {}
        versions = {p.host: self.agent_view(p.host)["version"] for p in c.proxies}
        drained = self.drained.get(c.name, frozenset())
        out = self.out_of_hash(c)
        proxies = []
        for p in c.proxies:
            j = judged.get(p.host, {"state": "joining"})
            proxies.append({"host": p.host, "state": p.state, "in_hash": p.state == "active" and p.host not in out,
                            "connections": j.get("connections"),
                            "drain_complete": p.state == "drain" and j.get("connections") == 0,
                            "drain_timed_out": p.host in drained,
                            "health": j, "config_current": j.get("config_version") == versions[p.host],
                            "mark": f"{proxy_mark(c.name, p.host):#x}"})
        return {"name": c.name, "vip4": c.vip4, "vip6": c.vip6, "ports": list(c.ports), "proxies": proxies,
                "pools": {p.name: [s.name for s in p.servers] for p in c.pools},
                "group": group_id(c.name),
                "cookie": f"{cookies.make(APP, 0, c.name):#018x}/0xff00ffffffffffff"}

    def _list(self, r):
        return [self._summary(c) for c in self.intent.clusters]

    def _get(self, r):
        c = self.intent.clusters[self._index(r.params["name"])]
        states = self.compute(self.core.view(), self.intent, c.name)
        flows = {sw: [{**f.to_dict(), "kind": KIND_NAMES.get(cookies.decode(f.cookie).kind, "heartbeat")}
                      for f in sorted(st.flows.values(), key=lambda f: (f.table, -f.priority))]
                 for sw, st in sorted(states.items())}
        return {**self._summary(c), "intent": c.model_dump(), "counters": dict(self.counters),
                "events": [e for e in self.history if e["cluster"] == c.name],
                "retiring_servers": sorted(h for (cn, h) in self._retiring if cn == c.name),
                "flows_by_switch": flows}

    def _config(self, r):
        c = self.intent.clusters[self._index(r.params["name"])]
        return resolve(self.core.topology, c)

    def _haproxy(self, r):
        c = self.intent.clusters[self._index(r.params["name"])]
        run_dir = r.query.get("run_dir", "/run/haproxy")
        try:
            return {"proxy": r.params["proxy"],
                    "config": haproxy.render(resolve(self.core.topology, c), r.params["proxy"], run_dir)}
        except ValueError as exc:
            raise ApiError(404, str(exc)) from None

    # -- the agents' view -------------------------------------------------------------------
    def agent_view(self, host: str) -> dict:
        """What ``host``'s agent runs: the cluster it is a proxy of (or None), heartbeat settings, version."""
        topo = self.core.topology
        c = next((c for c in self.intent.clusters if any(p.host == host for p in c.proxies)), None)
        x = topo.hosts[host]
        view = {"host": host, "cluster": resolve(topo, c) if c is not None else None,
                "heartbeat": {"port": HEARTBEAT_PORT, "source": str(x.ipv4.ip) if x.ipv4 else None,
                              "gateway": str(x.gateway4) if x.gateway4 else None,
                              "interval_ms": c.health.interval_ms if c is not None else 250}}
        return {**view, "version": config_version(view)}

    def _agent(self, r):
        host = r.params["host"]
        if host not in self.core.topology.hosts:
            raise ApiError(404, f"no host named {host!r} in the topology")
        try:
            wait = float(r.query.get("wait", "0"))
        except ValueError:
            raise ApiError(422, f"wait: {r.query.get('wait')!r} is not a number of seconds", "wait") from None
        if not math.isfinite(wait) or wait < 0:
            raise ApiError(422, "wait: must be a number of seconds >= 0", "wait")
        deadline = time.monotonic() + min(wait, AGENT_WAIT_MAX)
        since = r.query.get("version", "")
        view = self.agent_view(host)
        while view["version"] == since and (left := deadline - time.monotonic()) > 0:
            self._changed.wait(timeout=left)
            view = self.agent_view(host)
        return view


def _runtime_of(data: dict) -> dict[str, frozenset]:
    """A published runtime state (lists) as sets; what is missing is empty (pinned: the up ones)."""
    out = {k: frozenset(data.get(k) or ()) for k in NOTHING if k != "slots"}
    if "pinned" not in data:
        out["pinned"] = out["up"]
    out["slots"] = tuple(data.get("slots") or ())
    return out
