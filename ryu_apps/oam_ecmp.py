"""OAM ECMP verification: probes that travel as the pair's own traffic and are copied at every ECMP decision.

Launch it with the base fabric::

    ryu-manager --fabric-topology topologies/oam_ecmp_leafspine.yaml ryu_apps/fabric.py ryu_apps/oam_ecmp.py

A probe is a data packet of the pair it verifies: the source host's MAC and
IPv4 or IPv6 address, the destination host's address, UDP 3594 -> 3594 with
the probe's identity in the payload, launched into the source leaf as if its
host had sent it (packet-out with the host's ``in_port``).  It goes through
ingress, other apps' tables and the forward table like that host's traffic.

What it installs (cookie kinds in brackets, see ``ovslab flows --app oam_ecmp``):

* ``ingress`` (table 0, priority 3800): a probe whose TTL/hop limit is 0 or 1
  is reported and dropped [5].
* ``forward`` (table 90), and any other table whose flows output (other apps'
  tables too): a *probe twin* one priority above every such flow read from
  the switch [7]: the same match plus the probe's UDP ports, ``dec_ttl``,
  then the flow's own outputs on fabric links (each reported to the
  controller), outputs to hosts reported instead of taken (no probe frame
  reaches a host), and each group replaced by its *mirror* [8]: an ``all``
  group with a copy and a report per bucket the switch can pick now (select:
  weight > 0 and watch_port live; fast failover: the first live bucket).
  Every OAM flow goes through the OAM meter (probe packets per second per
  switch), which bounds a replication storm in the data plane.

The twins and mirrors are rebuilt from the switches' forward tables and groups
read at the start of every verification, exactly as decoded, because Open
vSwitch cannot send one packet through every bucket of a select group.  The
copies then travel the real links, and every switch reports each copy, so the
controller rebuilds the paths the probe actually took and compares them with
the ECMP set the topology implies (:mod:`ryu_apps.functions.oam_ecmp.model`
documents the encoding and the analysis; ``docs/oam_ecmp.md`` the design).

In a controller cluster a verification runs on the app's leader (``CLUSTER =
"leader"``; the REST call is forwarded to it): it reads every switch (a SLAVE
connection may read), publishes what it read to etcd (``oam_ecmp.tables``, one item
per switch: the raw flow and group dump replies), from which every switch's master
computes the same probe twins; it waits until each master holds them, launches the
probes through the sources' masters and gets every report relayed.  Reports are kept
in etcd too (``oam_ecmp.reports``), so any instance shows them and a new leader
numbers on.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections import deque

from os_ken.lib import hub

from ryu_apps.fabric import FabricIntent
from ryu_apps.framework import cookies
from ryu_apps.framework.app import FabricApp, FabricView, IntentError, PacketIn
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import FORWARD
from ryu_apps.framework.rest import ApiError
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.store import StoreError
from ryu_apps.functions.oam_ecmp import model
from ryu_apps.functions.oam_ecmp.flows import (
    APP,
    HISTORY,
    TWIN_TABLES,
    ReadTables,
    all_pairs,
    compute_oam,
    intended_routes,
)
from ryu_apps.functions.oam_ecmp.intent import OamIntent, VerifyRequest
from ryu_apps.openflow import ofwire
from ryu_apps.openflow.ofdata import (
    OFPP_TABLE,
)

LOG = logging.getLogger(__name__)
TABLES = f"{APP}.tables"    # a cluster: what the leader read, one item per switch
REPORTS = f"{APP}.reports"  # a cluster: the reports, one item per id


class Busy(Exception):
    pass


class OamEcmp(FabricApp):
    """Replicate-and-forward ECMP verification (``ryu_apps/oam_ecmp.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = OamIntent
    #: one verification reads and probes every switch: it runs on one instance
    CLUSTER = "leader"

    def __init__(self, *args, **kwargs):
        self._planned: tuple | None = None
        self.snapshot: dict[str, dict[str, model.Route]] | None = None  # routes read from the switches
        self.snapshot_at: float | None = None
        self.tables: dict[str, ReadTables] | None = None  # forward tables and groups read from the switches
        self.active: dict[int, model.ProbeResult] = {}
        self.reports: deque[dict] = deque(maxlen=HISTORY)
        self.next_report = 1
        self.next_probe = random.randrange(1, 1 << 31)
        self.running = False
        self._raw: dict[str, dict] = {}
        self.counters = {"reports": 0, "stale": 0, "capped": 0, "bad": 0, "verifications": 0}
        core = kwargs["fabric_core"]
        if core.clustered:  # before the first compute: the twins the cluster's switches hold now
            self._load_shared(core)
        super().__init__(*args, **kwargs)  # registers with the core (which may compute from now on)
        self._plan_of(self.intent)  # refuse a bad intent at start, naming the key

    # -- a controller cluster: what the leader read and reported, shared through etcd --------
    def _load_shared(self, core) -> None:
        try:
            tables = {sw: _decode_tables(data) for sw, data in core.load_items(TABLES).items()}
            reports = [data for _, data in sorted(core.load_items(REPORTS).items())]
        except (StoreError, ValueError, KeyError) as exc:
            LOG.warning("oam: cannot read the shared tables and reports: %s", exc)
            return
        self.tables = tables or None
        self.reports.extend(reports[-HISTORY:])
        if reports:
            self.next_report = max(r["id"] for r in reports) + 1

    def on_store_change(self, change) -> None:
        """The leader published what it read (the probe twins follow) or a report."""
        if change.name == "*":
            self.reports.clear()
            self._load_shared(self.core)
            self.core.invalidate(self)
            return
        if change.key is None or change.name not in (TABLES, REPORTS):
            return
        if change.name == REPORTS:
            if change.text is not None:
                rep = json.loads(change.text)
                self.reports.append(rep)
                self.next_report = max(self.next_report, rep["id"] + 1)
            return
        tables = dict(self.tables or {})
        if change.text is None:
            tables.pop(change.key, None)
        else:
            try:
                tables[change.key] = _decode_tables(json.loads(change.text))
            except (ValueError, KeyError, ofwire.DecodeError) as exc:
                LOG.warning("oam: the leader's tables of %s do not decode here: %s", change.key, exc)
                return
        self.tables = tables or None
        self.core.invalidate(self)

    def _publish_tables(self, raw: dict[str, dict]) -> int:
        """What the leader read, for every other master (one item per switch); the store revision."""
        items = {sw: raw.get(sw) for sw in self.core.topology.switches}
        rev = 0
        for sw, data in items.items():  # one write each: a big switch's dump stays within etcd's limits
            rev = max(rev, self.core.save_items(TABLES, {sw: data}))
        return rev

    def _publish_report(self, report: dict) -> None:
        gone = [f"{i:012d}" for i in range(max(0, report["id"] - HISTORY - 8), report["id"] - HISTORY + 1) if i > 0]
        try:
            self.core.save_items(REPORTS, {f"{report['id']:012d}": report} | {k: None for k in gone})
        except StoreError as exc:
            LOG.warning("oam: report %d not shared (%s): only this instance has it", report["id"], exc)

    # -- intent --------------------------------------------------------------------
    @property
    def plan(self) -> model.SidPlan:
        return self._plan_of(self.intent)[0]

    @property
    def leaves(self) -> list[str]:
        return self._plan_of(self.intent)[1]

    def _plan_of(self, intent: OamIntent) -> tuple[model.SidPlan, list[str]]:
        """SID plan and leaves of ``intent`` (cached for the current intent object)."""
        if self._planned is not None and self._planned[0] is intent:
            return self._planned[1]
        result = self._make_plan(intent)
        self._planned = (intent, result)
        return result

    def _make_plan(self, intent: OamIntent) -> tuple[model.SidPlan, list[str]]:
        topo = self.core.topology
        for sw in intent.locators:
            if sw not in topo.switches:
                raise IntentError(f"apps.{APP}.locators.{sw}: no switch named {sw!r}", f"locators.{sw}")
        for i, sw in enumerate(intent.leaves or []):
            if sw not in topo.switches:
                raise IntentError(f"apps.{APP}.leaves[{i}]: no switch named {sw!r}", f"leaves[{i}]")
        try:
            plan = model.make_plan({n: s.dpid for n, s in topo.switches.items()}, intent.locator_block,
                                   intent.locators)
        except ValueError as exc:
            raise IntentError(f"apps.{APP}.{exc}", str(exc).split(":")[0]) from None
        leaves = model.leaves_of(topo, intent.leaves)
        for i, leaf in enumerate(intent.leaves or leaves):
            if not model.endpoints(topo, leaf):
                raise IntentError(f"apps.{APP}.leaves[{i}]: {leaf} has no host, so no route leads to it",
                                  f"leaves[{i}]") from None
        if len(leaves) < 2:
            raise IntentError(f"apps.{APP}.leaves: verification needs at least 2 leaves, got {leaves}", "leaves")
        return plan, leaves

    def _fabric_intent(self) -> FabricIntent | None:
        return self.core.app_intent("fabric")

    def compute(self, view: FabricView, intent: OamIntent, part=None) -> dict[str, SwitchState]:
        planned = self._planned
        # pure: the current intent's plan was made when it became the intent; a candidate's is made here
        plan, leaves = planned[1] if planned is not None and planned[0] is intent else self._make_plan(intent)
        return compute_oam(view, plan, leaves, self.tables, intent)

    def intent_json(self) -> dict:
        return self.intent.model_dump(mode="json")

    # -- reports from the switches ------------------------------------------------
    def on_packet_in(self, pkt: PacketIn) -> None:
        try:
            rep = model.parse_report(pkt.data)
        except model.BadReport:
            self.counters["bad"] += 1
            raise
        self.counters["reports"] += 1
        probe = self.active.get(rep.probe_id)
        if probe is None or self.plan.nodes.get(probe.dst) != rep.dest_node \
                or self.plan.nodes.get(probe.src) != rep.src_node or probe.family != rep.family:
            self.counters["stale"] += 1
            return
        if not probe.add(pkt.switch, pkt.in_port, rep, self.intent.max_reports_per_probe):
            self.counters["capped"] += 1

    # -- reading what the switches hold ------------------------------------------------
    def read_routes(self) -> tuple[dict[str, dict[str, model.Route]], list[str]]:
        """Every connected switch's forward table and groups, read in parallel (kept in ``self.tables``
        for the probe twins), and from them its route towards every leaf and family (for the findings)."""
        topo = self.core.topology
        down = self.core.view().down_ports
        lookups = {model.route_key(d, fam): (d, ep.address, model.lookup_packet(ep))
                   for d in self.leaves for fam, ep in model.endpoints(topo, d).items()}
        out: dict[str, dict[str, model.Route]] = {}
        tables: dict[str, ReadTables] = {}
        raw: dict[str, dict] = {}
        notes: list[str] = []

        def read(sw: str) -> None:
            if not self.core.is_connected(sw):
                notes.append(f"{sw} is not connected: its routes are unknown and probes through it vanish")
                return
            try:
                bodies = {"flows": [_b64(b) for b in self.core.multipart(sw, ofwire.flow_stats_request)],
                          "groups": [_b64(b) for b in self.core.multipart(sw, ofwire.group_desc_request)]}
                flows, groups = _decode(bodies)
            except Exception as exc:  # noqa: BLE001 - a switch that cannot be read is a note, not a crash
                notes.append(f"{sw}: reading its tables failed: {exc}")
                return
            raw[sw] = bodies
            tables[sw] = ReadTables(tuple(f for f in flows if f.table in TWIN_TABLES), groups)
            table = model.Table(flows, FORWARD)
            out[sw] = {key: model.resolve_route(sw, d, addr, pkt, table, groups, FORWARD, down)
                       for key, (d, addr, pkt) in lookups.items() if d != sw}

        hub.joinall([hub.spawn(read, sw) for sw in topo.switches])
        self.tables = tables
        self._raw = raw
        return out, sorted(notes)

    def _wait_programmed(self, since_generation: int, timeout: float, revision: int = 0) -> bool:
        """This instance recomputed since ``since_generation`` and every switch holds its state (in a
        cluster: at its master, which has taken the store up to ``revision``, the tables just read)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.core.generation > since_generation and self.core.all_synced():
                if not self.core.clustered or not self.core.cluster_synced(revision=revision):
                    return True
                hub.sleep(0.05)
                continue
            hub.sleep(0.02)
        return False

    # -- a verification -------------------------------------------------------------
    def verify(self, pairs: list[tuple[str, str]] | None = None, both_directions: bool = True,
               hop_budget: int | None = None, collect_timeout: float | None = None,
               settle: float | None = None, families: tuple[int, ...] = model.FAMILIES) -> dict:
        """Read the switches, program the probe twins, probe ``pairs`` (default all) in ``families``, classify."""
        if self.running:
            raise Busy("a verification is already running")
        self.running = True
        try:
            return self._verify(pairs, both_directions, hop_budget, collect_timeout,
                                settle or self.intent.settle, tuple(families))
        finally:
            self.running = False
            self.active = {}

    def default_budget(self) -> int:
        graph = self.core.topology.graph()
        longest = 1
        for a in self.leaves:
            lengths = model.distances(graph, [a])[a]
            longest = max([longest] + [lengths[b] + 1 for b in self.leaves if b in lengths])
        return min(64, longest + 4)

    def _new_probes(self, pairs, budget: int, families: tuple[int, ...]) -> list[model.ProbeResult]:
        """One probe per pair and address family both leaves have (each carries real host addresses)."""
        topo = self.core.topology
        eps = {leaf: model.endpoints(topo, leaf) for leaf in self.leaves}
        return [model.ProbeResult(0, src, dst, budget, family=fam, root_port=eps[src][fam].port)
                for src, dst in pairs for fam in families if fam in eps[src] and fam in eps[dst]]

    def _verify(self, pairs, both_directions, hop_budget, collect_timeout, settle, families) -> dict:
        t0 = time.monotonic()
        started = time.time()
        if pairs is None:
            pairs = all_pairs(self.leaves)
        elif both_directions:
            pairs = list(dict.fromkeys(list(pairs) + [(b, a) for a, b in pairs]))
        budget = hop_budget or self.intent.hop_budget or self.default_budget()
        timeout = collect_timeout or self.intent.collect_timeout
        rate_limited0 = self.core.packet_in_counts()["rate_limited"]
        notes: list[str] = []

        # 1. what the switches hold, and the probe twins and mirror groups made from it
        converging = sorted(n for n in self.core.topology.switches
                            if self.core.is_connected(n) and not self.core.all_synced([n]))
        routes, read_notes = self.read_routes()
        notes += read_notes
        if converging:
            notes.append(f"the controller was still reprogramming {', '.join(converging)} when the routes were "
                         f"read: findings may show the fabric mid-convergence")
        t1 = time.monotonic()
        gen = self.core.generation
        self.snapshot, self.snapshot_at = routes, time.time()
        revision = 0
        if self.core.clustered:  # every other master programs the twins of its switches from it
            revision = self._publish_tables(self._raw)  # (no etcd quorum: StoreUnavailable, a 503)
        self.core.invalidate(self)  # the twins follow the tables just read
        if not self._wait_programmed(gen, timeout=15, revision=revision):
            notes.append("the probe twins were not programmed on every switch in time"
                         + (f" ({self.core.compute_error})" if self.core.compute_error else ""))
        t2 = time.monotonic()

        # 2. one probe per pair, paced; 3. collect until every copy is accounted for, or quiet, or the timeout
        wiring = model.Wiring.of(self.core.topology)
        probes = self._new_probes(pairs, budget, families)
        t3, incomplete = self._probe_round(probes, routes, wiring, self.intent.probe_rate, timeout, settle, notes)
        t4 = time.monotonic()
        retried = 0
        for _ in range(self.intent.confirm_retries):
            if not incomplete:
                break
            retried += len(incomplete)
            again = [model.ProbeResult(0, p.src, p.dst, budget, family=p.family, root_port=p.root_port)
                     for p in incomplete]
            _, _ = self._probe_round(again, routes, wiring, max(1, self.intent.probe_rate // 2), timeout, settle,
                                     notes)
            for first, second in zip(incomplete, again):
                first.merge(second)
            incomplete = [p for p in incomplete if not self._complete(p, routes, wiring)]
        if retried:
            notes.append(f"{retried} probe(s) whose copies were not all accounted for were sent again and their "
                         f"reports merged; {len(incomplete)} pair(s) still incomplete (the findings below)")
        t5 = time.monotonic()
        self.active = {}

        # 4. compare with the expected ECMP sets
        view = self.core.view()
        intended_r, intended_p = intended_routes(view, self.leaves, self._fabric_intent())
        for sw, per in intended_r.items():  # switches we could not read: assume intended
            routes.setdefault(sw, per)
        ctx = model.Context(wiring, self.core.topology.graph(), model.distances(self.core.topology.graph(),
                                                                                 self.leaves),
                            routes, intended_p, view.down_ports)
        result = model.analyze(probes, ctx)
        rate_limited = self.core.packet_in_counts()["rate_limited"] - rate_limited0
        if rate_limited:
            notes.append(f"{rate_limited} packet-ins were rate-limited by the controller during this run; "
                         f"findings may include reports that were dropped, not lost in the fabric")
        if any(p.capped for p in probes):
            notes.append("some probes produced more reports than max_reports_per_probe; their paths are cut")
        t6 = time.monotonic()
        report = {"id": self.next_report, "started": started, "topology": self.core.topology.name,
                  "hop_budget": budget, "leaves": self.leaves, "sid_block": str(self.plan.block),
                  "timing": {"read_s": round(t1 - t0, 4), "program_s": round(t2 - t1, 4),
                             "launch_s": round(t3 - t2, 4), "collect_s": round(t4 - t3, 4),
                             "confirm_s": round(t5 - t4, 4), "analyze_s": round(t6 - t5, 4),
                             "total_s": round(t6 - t0, 4), "probe_s": round(t5 - t2, 4)},
                  **result, "notes": notes}
        totals = report["totals"]
        totals["rate_limited"] = rate_limited
        totals["reprobed"] = retried
        totals["probes"] += retried  # packet-outs sent, confirmation probes included
        totals["mda_ratio"] = round(totals["mda_probes"] / (totals["probes"] or 1), 1)
        self.next_report += 1
        self.counters["verifications"] += 1
        self.reports.append(report)
        if self.core.clustered:
            self._publish_report(report)
        return report

    def _probe_round(self, probes: list[model.ProbeResult], routes, wiring, rate: int, timeout: float,
                     settle: float, notes: list[str]) -> tuple[float, list[model.ProbeResult]]:
        """Launch ``probes`` at ``rate`` per second and collect their reports; (launch end, incomplete probes)."""
        start = time.monotonic()
        interval = 1.0 / rate
        for i, probe in enumerate(probes):
            probe.probe_id = self.next_probe
            self.next_probe = (self.next_probe + 1) & 0xFFFFFFFF or 1
            self.active[probe.probe_id] = probe
            src_ep = model.endpoints(self.core.topology, probe.src)[probe.family]
            dst_ep = model.endpoints(self.core.topology, probe.dst)[probe.family]
            probe.launched = self._launch(probe.src, src_ep.port, model.build_probe(
                self.plan, probe.src, probe.dst, probe.probe_id, probe.hop_budget, src_ep, dst_ep, self._router_mac()))
            if not probe.launched:
                notes.append(f"probe {probe.src}->{probe.dst} not launched: {probe.src} is not connected")
            delay = start + (i + 1) * interval - time.monotonic()
            hub.sleep(max(0.0, delay))  # always yield: reports are handled meanwhile
        launched_at = time.monotonic()
        deadline = launched_at + timeout
        last_count, last_change = -1, time.monotonic()
        pending = {p.probe_id: [p, -1] for p in probes if p.launched}
        while time.monotonic() < deadline:
            count = sum(p.received for p in probes)
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            for pid, entry in list(pending.items()):  # recheck only probes with new reports
                probe, seen = entry
                if probe.received != seen:
                    entry[1] = probe.received
                    if self._complete(probe, routes, wiring):
                        del pending[pid]
            if not pending:
                hub.sleep(0.05)  # stragglers (duplicates) of the last copies
                break
            if now - last_change >= settle:
                break
            hub.sleep(0.02)
        for p in probes:
            self.active.pop(p.probe_id, None)
        return launched_at, [entry[0] for entry in pending.values()]

    def _router_mac(self) -> str:
        fab = self._fabric_intent()
        return fab.router_mac if fab is not None else FabricIntent().router_mac

    def _launch(self, switch: str, in_port: int, data: bytes) -> bool:
        """Send ``data`` into ``switch``'s pipeline as if its host on ``in_port`` had sent it."""
        return self.core.packet_out(switch, OFPP_TABLE, data, in_port=in_port)

    @staticmethod
    def _complete(probe, routes, wiring) -> bool:
        """Every switch the probe reached reported every copy it should make, and every forwarded copy arrived."""
        nodes = model.reached(probe)
        if model.root_of(probe, nodes) is None:
            return False
        for (sw, in_port, hop), recs in nodes.items():
            kinds = {k for k, _ in recs}
            if kinds & {model.ARRIVE, model.EXPIRE, model.NOROUTE}:
                continue
            route = routes.get(sw, {}).get(model.route_key(probe.dst, probe.family))
            want = set(route.live_ports) if route else set()
            if {p for k, p in recs if k in model.AFTER_DEC} != want:
                return False
            for k, p in recs:
                if k == model.FWD and p != in_port:  # output to the in port: dropped (a hairpin)
                    nxt = wiring.peer.get((sw, p))
                    if nxt is None or (nxt[0], nxt[1], hop + 1) not in nodes:
                        return False
        return True

    # -- REST -----------------------------------------------------------------------------
    def add_routes(self, api) -> None:
        api.add("POST", "/v1/oam/ecmp/verify", self._rest_verify,
                "Probe leaf pairs (default: all) and classify every ECMP difference", tag=APP, body=VerifyRequest)
        api.add("GET", "/v1/oam/ecmp/reports", lambda r: [self._summary(x) for x in self.reports],
                "Recent verification reports (summaries)", tag=APP)
        api.add("GET", "/v1/oam/ecmp/reports/{id}", lambda r: self._report(r.params["id"]),
                "One verification report (id or 'latest')", tag=APP)
        api.add("GET", "/v1/oam/ecmp/reports/{id}/table", lambda r: {"table": model.render_table(
            self._report(r.params["id"]))}, "One verification report as a readable table", tag=APP)
        api.add("GET", "/v1/oam/ecmp/expected", self._rest_expected,
                "Expected ECMP path set of every leaf pair (declared topology) and its MDA cost", tag=APP)
        api.add("GET", "/v1/oam/ecmp/routes", self._rest_routes,
                "Routes the replicate groups mirror (last read from the switches, else intended)", tag=APP)
        api.add("GET", "/v1/oam/ecmp/sids", lambda r: {**self.plan.to_json(), "leaves": self.leaves},
                "The SID plan: locators, function, argument layout", tag=APP)
        api.add("GET", "/v1/oam/ecmp/status", lambda r: {"running": self.running, **self.counters,
                                                           "reports_kept": len(self.reports)},
                "Counters: reports received, stale, capped, malformed", tag=APP)

    def _rest_verify(self, r):
        body: VerifyRequest = r.body
        pairs = None
        if body.pairs is not None:
            if not body.pairs:
                raise ApiError(422, "pairs: give at least one [src, dst] pair, or leave pairs out for all", "pairs")
            for i, (a, b) in enumerate(body.pairs):
                for j, x in enumerate((a, b)):
                    if x not in self.leaves:
                        raise ApiError(422, f"pairs[{i}][{j}]: {x!r} is not a leaf; leaves: {self.leaves}",
                                       f"pairs[{i}][{j}]")
                if a == b:
                    raise ApiError(422, f"pairs[{i}]: source and destination are both {a}", f"pairs[{i}]")
            pairs = [tuple(p) for p in body.pairs]
        try:
            return self.verify(pairs, body.both_directions, body.hop_budget, body.collect_timeout, body.settle,
                               tuple(dict.fromkeys(body.families)))
        except Busy as exc:
            raise ApiError(409, str(exc)) from None

    def _report(self, ident: str) -> dict:
        if not self.reports:
            raise ApiError(404, "no verification has run yet; POST /v1/oam/ecmp/verify")
        if ident == "latest":
            return self.reports[-1]
        for rep in self.reports:
            if str(rep["id"]) == ident:
                return rep
        raise ApiError(404, f"no report {ident!r}; kept: {[x['id'] for x in self.reports]}")

    @staticmethod
    def _summary(rep: dict) -> dict:
        return {"id": rep["id"], "started": rep["started"], "totals": rep["totals"], "timing": rep["timing"]}

    def _rest_expected(self, r) -> dict:
        graph = self.core.topology.graph()
        out = []
        for a in self.leaves:
            for b in self.leaves:
                if a != b:
                    paths = model.expected_paths(graph, a, b)
                    out.append({"src": a, "dst": b, "paths": [str(p) for p in paths],
                                "mda": model.mda_cost(paths)})
        return {"leaves": self.leaves, "pairs": out}

    def _rest_routes(self, r) -> dict:
        routes = self.snapshot
        if routes is None:
            routes, _ = intended_routes(self.core.view(), self.leaves, self._fabric_intent())
        return {"read_at": self.snapshot_at,
                "routes": {sw: {d: rt.to_json() for d, rt in sorted(per.items())} for sw, per in sorted(routes.items())}}


def _b64(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def _decode(bodies: dict) -> tuple[list, dict]:
    """Flows and groups (not this app's own) from raw flow-stats and group-desc reply bodies."""
    app_id = cookies.app_id(APP)
    flows = []
    for body in bodies["flows"]:
        for fs in ofwire.parse_flow_stats(base64.b64decode(body)):
            if fs.cookie >> cookies.APP_SHIFT == app_id:
                continue  # our own probe twins
            try:
                flows.append(fs.to_flow())
            except ofwire.DecodeError:
                continue
    groups = {}
    for body in bodies["groups"]:
        for gs in ofwire.parse_group_desc(base64.b64decode(body)):
            if gs.group_id >> 24 == app_id:
                continue  # our own mirror groups
            try:
                groups[gs.group_id] = gs.to_group()
            except ofwire.DecodeError:
                continue
    return flows, groups


def _decode_tables(bodies: dict) -> ReadTables:
    flows, groups = _decode(bodies)
    return ReadTables(tuple(f for f in flows if f.table in TWIN_TABLES), groups)
