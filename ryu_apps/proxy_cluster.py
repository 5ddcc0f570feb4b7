"""Proxy clusters: one virtual IP served by a cluster of HAProxy nodes, spread and pinned in OVS.

Launch together with the base fabric (whose next-hop groups carry VIP traffic to a proxy)::

    ryu-manager --fabric-topology topologies/proxy_cluster.yaml ryu_apps/fabric.py ryu_apps/proxy_cluster.py

The intent is ``ryu_apps/functions/proxy_cluster/intent.py``; the flows are
``flows.py`` there (a select group picks a proxy per new connection, conntrack
marks pin it); ``haproxy.py`` renders what each proxy node runs, from the view
``GET /v1/proxy-clusters/<name>/config`` serves to the node's agent.

On framework v2: one part per cluster (its name), so a REST change of one
cluster computes that cluster only; the whole intent's checks are the
stateless part ``CHECK``.  The flows read no view input (``INPUTS`` is empty):
a link failure is handled by the fabric's next-hop groups underneath.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable

from pydantic import ValidationError

from ryu_apps.framework import cookies
from ryu_apps.framework.app import WHOLE, FabricApp, FabricView, IntentError
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import PipelineError
from ryu_apps.framework.rest import ApiError, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.functions.proxy_cluster import haproxy
from ryu_apps.functions.proxy_cluster.flows import APP, KIND_NAMES, compute_cluster, group_id, proxy_mark
from ryu_apps.functions.proxy_cluster.intent import ClusterSpec, ProxyClusterIntent
from ryu_apps.functions.proxy_cluster.model import resolve, validate

DEFAULT_ROUTER_MAC = "0e:fa:b0:00:00:01"
SYNC_WAIT_MAX = 30.0
#: the part with no state: the whole intent's checks across clusters (no cluster is named like it)
CHECK = "*checks"


class ProxyCluster(FabricApp):
    """The proxy cluster app (``ryu_apps/proxy_cluster.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = ProxyClusterIntent
    INPUTS = frozenset()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: cluster -> proxies out of the hash (health); runtime state, not intent
        self.dead: dict[str, frozenset[str]] = {}
        try:
            validate(self.core.topology, self.intent)
        except IntentError as exc:
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field, exc.status) from None

    def router_mac(self) -> str:
        fabric = self.core.app_intent("fabric")
        return getattr(fabric, "router_mac", None) or DEFAULT_ROUTER_MAC

    # -- the desired state (pure) -----------------------------------------------------
    def parts(self, intent: ProxyClusterIntent) -> Iterable[Hashable]:
        """One part per cluster (its name), and :data:`CHECK`."""
        return (CHECK, *(c.name for c in intent.clusters))

    def compute(self, view: FabricView, intent: ProxyClusterIntent, part: Hashable = WHOLE) -> dict[str, SwitchState]:
        """The flows and group of cluster ``part`` on every switch (pure)."""
        if part in (CHECK, WHOLE):
            validate(view.topology, intent)
        if part == CHECK:
            return {}
        out: dict[str, SwitchState] = {}
        for c in intent.clusters:
            if part in (WHOLE, c.name):
                for sw, st in compute_cluster(view.topology, c, self.router_mac(),
                                              self.dead.get(c.name, frozenset())).items():
                    out.setdefault(sw, SwitchState()).merge(st)
        return out

    def parts_changed(self, view: FabricView, intent, change) -> set:
        return set()

    # -- REST ----------------------------------------------------------------------------
    def add_routes(self, api) -> None:
        tag = "proxy-clusters"
        api.add("GET", "/v1/proxy-clusters", self._list, "Proxy clusters: VIP, proxies, pools, flows", tag)
        api.add("POST", "/v1/proxy-clusters", self._create,
                "Create a cluster (?wait=1: answer once every switch holds it)", tag, body=ClusterSpec, status=201)
        api.add("GET", "/v1/proxy-clusters/{name}", self._get, "One cluster: its intent, marks, flows per switch", tag)
        api.add("PUT", "/v1/proxy-clusters/{name}", self._replace,
                "Replace a cluster (proxies, servers, routes, ...): established connections stay pinned", tag,
                body=ClusterSpec)
        api.add("DELETE", "/v1/proxy-clusters/{name}", self._delete, "Delete a cluster: exactly its flows go", tag)
        api.add("GET", "/v1/proxy-clusters/{name}/config", self._config,
                "What a proxy's agent fetches: the cluster with every host's addresses and site, server ids", tag)
        api.add("GET", "/v1/proxy-clusters/{name}/haproxy/{proxy}", self._haproxy,
                "The haproxy.cfg the agent renders for one proxy (?run_dir=)", tag)

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
        try:
            result = self.core.try_intent(self, candidate, parts=parts)
        except (StateConflict, PipelineError, IntentError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        self.core.commit_intent(self, candidate, result)
        out = {"seconds": {"apply": round(time.monotonic() - t0, 4)}}
        if r.query.get("wait") in ("1", "true", "yes"):
            connected = [s for s in self.core.topology.switches if self.core.is_connected(s)]
            out["synced"] = not self.core.wait_applied(connected, SYNC_WAIT_MAX)
        return out

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
        self.dead.pop(name, None)
        return {"deleted": name, **extra}

    def _summary(self, c: ClusterSpec) -> dict:
        dead = self.dead.get(c.name, frozenset())
        return {"name": c.name, "vip4": c.vip4, "vip6": c.vip6, "ports": list(c.ports),
                "proxies": [{"host": p.host, "state": "dead" if p.host in dead else p.state,
                             "mark": f"{proxy_mark(c.name, p.host):#x}"} for p in c.proxies],
                "pools": {p.name: [s.name for s in p.servers] for p in c.pools},
                "group": group_id(c.name),
                "cookie": f"{cookies.make(APP, 0, c.name):#018x}/0xff00ffffffffffff"}

    def _list(self, r):
        return [self._summary(c) for c in self.intent.clusters]

    def _get(self, r):
        c = self.intent.clusters[self._index(r.params["name"])]
        states = compute_cluster(self.core.topology, c, self.router_mac(), self.dead.get(c.name, frozenset()))
        flows = {sw: [{**f.to_dict(), "kind": KIND_NAMES.get(cookies.decode(f.cookie).kind)}
                      for f in sorted(st.flows.values(), key=lambda f: (f.table, -f.priority))]
                 for sw, st in sorted(states.items())}
        return {**self._summary(c), "intent": c.model_dump(), "flows_by_switch": flows}

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
