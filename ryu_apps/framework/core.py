"""The fabric core: topology, switch programmers, packet-in dispatch, REST.

Shared by every fabric app as the os-ken context ``fabric_core``.  The os-ken
handlers here are thin: they record what happened (a switch came or went, a
port changed, a packet arrived) and either schedule a recompute or hand the
packet to the app whose cookie the flow carried.  Recompute asks every app
for its desired state (pure), merges and checks it, and gives each switch's
programmer its new desired state; the programmers do the rest.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3
from pydantic import BaseModel, ValidationError

from ryu_apps.framework import admission, config, cookies, pipeline, programmer
from ryu_apps.framework.cluster import Cluster
from ryu_apps.framework.heap import HeapGuard
from ryu_apps.framework.app import FabricApp
from ryu_apps.framework.view import WHOLE, FabricView, IntentError, PacketIn, PortChange, SwitchChange
from ryu_apps.framework.pipeline import PipelineError
from ryu_apps.framework.programmer import SwitchProgrammer
from ryu_apps.framework.relay import Relay, RelayBatch
from ryu_apps.framework import relay as relays
from ryu_apps.framework.metrics import CONTENT_TYPE as METRICS_TYPE
from ryu_apps.framework.metrics import Metrics
from ryu_apps.framework.ofctl_rest import OfctlRest
from ryu_apps.framework.rest import ApiError, PerParam, Raw, RestApi, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.framework.store import Change, EtcdStore, LocalStore, StoreError
from ryu_apps.framework.topology import Topology, TopologyError, load
from ryu_apps.openflow import ofguard, ofwire
from ryu_apps.openflow.ofdata import Flow, Match, Meter, MeterBand

LOG = logging.getLogger(__name__)

PUNT_METER, PACKET_IN_BYTES = pipeline.PUNT_METER, pipeline.PACKET_IN_BYTES
APPLY_WAIT = 10.0  # seconds a write with ?wait=1 waits for the switches to hold it


#: "every part" in a dirty set
ALL = "all"


@dataclass
class Candidate:
    """One app's newly computed layers, checked against every switch, not yet applied."""

    app: str
    layers: dict        # switch -> {(app, part): SwitchState | None}
    wrote: dict         # part -> switches it now writes (None: the part is gone)
    seconds: float
    parts: int


class HubLag:
    """How long the eventlet hub was blocked: a green thread that asks to wake every 5 ms and
    records how late it woke (nothing else runs while one green thread computes)."""

    PERIOD = 0.005

    def __init__(self):
        self.max = 0.0
        self.recent: deque = deque()   # (when, late) for lateness over 1 ms, the last 10 s

    def run(self) -> None:
        while True:
            t0 = time.monotonic()
            hub.sleep(self.PERIOD)
            now = time.monotonic()
            late = now - t0 - self.PERIOD
            if late > 0.001:
                self.max = max(self.max, late)
                self.recent.append((now, late))
            while self.recent and self.recent[0][0] < now - 10:
                self.recent.popleft()

    def json(self) -> dict:
        return {"max_last_10s": round(1000 * max((late for _, late in self.recent), default=0.0), 2),
                "max": round(1000 * self.max, 2)}


class IntentText:
    """An app's intent as the readable JSON of its state file, encoded fast.

    One line per top-level key, and one per element of a list of models (a fence, a
    client), sorted keys.  Each element's text is kept, by identity, for the next commit:
    an intent is replaced, never changed in place (apps build a candidate with
    ``model_copy``), so a REST change of one fence among 1000 encodes one fence (the
    indented ``json.dumps`` of everything took 57 ms, its pure-Python encoder on the hub).
    ``json.loads`` of the text equals ``intent.model_dump(mode="json")``.
    """

    def __init__(self):
        self._texts: dict[int, tuple[BaseModel, str]] = {}

    def encode(self, intent: BaseModel) -> str:
        lists = set()
        for name, info in type(intent).model_fields.items():
            value = getattr(intent, name)
            if not info.exclude and isinstance(value, list) and all(isinstance(v, BaseModel) for v in value):
                lists.add(name)
        out = {k: json.dumps(v, sort_keys=True) for k, v in intent.model_dump(mode="json", exclude=lists).items()}
        old, kept = self._texts, {}
        for name in lists:
            items = []
            for v in getattr(intent, name):
                hit = old.get(id(v))
                if hit is None or hit[0] is not v:
                    hit = (v, json.dumps(v.model_dump(mode="json"), sort_keys=True))
                kept[id(v)] = hit
                items.append(hit[1])
            out[name] = "[\n  " + ",\n  ".join(items) + "\n ]" if items else "[]"
        self._texts = kept
        return "{\n" + ",\n".join(f" {json.dumps(k)}: {out[k]}" for k in sorted(out)) + "\n}\n"


class TokenBucket:
    """Packet-ins per second per switch, checked before any parsing."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()
        self.dropped = 0

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False


class FabricCore(app_manager.OSKenApp):
    """Owns the switches; fabric apps register with it and supply desired state."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = "fabric_core"
        config.register()
        path = config.get("topology")
        if not path:
            raise TopologyError("no topology: start with --fabric-topology FILE "
                                "(or FABRIC_TOPOLOGY=FILE, or [fabric] topology= in --config-file)")
        self.topology: Topology = load(path)
        state_dir = config.get("state-dir")
        self.state_dir = Path(state_dir) if state_dir else None
        self.store = self._open_store()
        self.store_errors = 0
        self.apps: dict[str, FabricApp] = {}
        self.programmers = {name: SwitchProgrammer(name, sw.dpid) for name, sw in self.topology.switches.items()}
        self.metrics = Metrics(self)
        self.ofctl = OfctlRest(self)
        for name, prog in self.programmers.items():
            prog.on_synced = self.metrics.sync.labels(name).observe
        self.datapaths: dict[str, object] = {}
        self.down_ports: set[tuple[str, int]] = set()
        # Liveness (README, "Liveness"): losing a switch's control channel is not losing its
        # data plane.  A switch without a channel is "lost"; it becomes "dead" (routed around)
        # only after the hold-down, while the controller sees at least one switch, and when no
        # BFD-monitored link says the switch still forwards.
        self.dead: set[str] = set()
        self.lost: dict[str, float] = {}       # switch -> when its channel went away
        self.view_since: float | None = None   # since when at least one switch is connected
        self.ports_known: set[str] = set()     # connected switches whose port list has arrived
        self.hold_down = self.topology.spec.controller.switch_hold_down
        self._judge_at: float | None = None
        self.ever_connected: set[str] = set()
        rate = config.get("packet-in-rate")
        # a backstop behind the switches' meters (the first line of defence)
        self.buckets = {name: TokenBucket(2 * rate, 2 * rate) for name in self.topology.switches}
        self.packet_ins = {"handled": 0, "rate_limited": 0, "no_owner": 0, "bad": 0, "not_master": 0}
        self.compute_error: str | None = None
        self.last_compute_seconds = 0.0
        self.dirty: dict[str, object] = {}                 # app -> ALL or a set of parts
        self.part_switches: dict[str, dict] = {}           # app -> part -> switches it wrote
        self.compute_stats: dict[str, dict] = {}           # app -> its last recompute
        self.intent_texts: dict[str, IntentText] = {}      # app -> its intent's encoder (state file)
        self.generation = 0
        self._recompute = hub.Event()
        self._coalesce = True   # a view event dirtied something: pause for the rest of its burst
        self._computing = False  # the recompute loop holds a taken dirty set it has not applied yet
        self.refusals = admission.Refusals()
        self.last_echo_reply: dict[str, float] = {}
        admission.install(self._admit)
        # every message from a switch is checked before os-ken parses it
        ofguard.install(programmer.awaits_dump, programmer.awaits_error)
        self.api = RestApi()
        self._add_routes()
        self._install_core_layers()
        self.stats_waiters: dict[tuple[str, int], FabricApp] = {}  # (switch, xid) -> app asking
        self.hub_lag = HubLag()
        self.heap = HeapGuard()
        self.audit_interval = config.get("audit-interval")
        if self.audit_interval is None:
            self.audit_interval = self.topology.spec.controller.audit_interval
        self.threads += [hub.spawn(self._recompute_loop), hub.spawn(self.hub_lag.run),
                         hub.spawn(self._audit_loop)]
        self.cluster: Cluster | None = None
        if isinstance(self.store, EtcdStore):
            member = config.get("member-id") or f"{socket.gethostname()}-{os.getpid()}"
            port = config.get("rest-port")
            self.cluster = Cluster(self.store, member, self.topology.switches, config.get("lease-ttl"),
                                   on_role=self._on_role, on_master=self._on_master,
                                   info={"pid": os.getpid(), "rest": f"http://{config.get('rest-host')}:{port}"
                                         if port else None})
            for name, prog in self.programmers.items():
                prog.on_not_master = (lambda why, name=name: self.cluster.fenced(name, why))
        self.relay: Relay | None = None
        if self.cluster is not None:
            self.relay = Relay(self.cluster.member, self.cluster.rest_of, lambda: self.api.security.token)

    def _open_store(self):
        """The state dir (default) or etcd (``--fabric-store etcd``: a controller cluster)."""
        if config.get("store") != "etcd":
            return LocalStore(self.state_dir)
        endpoints = [e.strip() for e in str(config.get("etcd-endpoints")).split(",") if e.strip()]
        return EtcdStore(endpoints, config.get("cluster-id"))

    def start(self):
        thread = super().start()
        for app in self.apps.values():
            # a leader app's REST calls are answered by its leader (they start its work or read
            # what it learned); ?local=1 asks this instance
            app.add_routes(self.api if self.cluster is None or app.CLUSTER != "leader" else _LeaderRoutes(self, app))
        port = config.get("rest-port")
        if port:
            self.threads.append(self.api.serve(config.get("rest-host"), port))
        self.schedule_recompute()
        if self.cluster is not None:
            self.store.watch(self._store_changed)
            self.cluster.apps = sorted(n for n, a in self.apps.items() if a.CLUSTER == "leader")
            self.cluster.on_leader = self._on_leader
            self.cluster.start()
            # a clean stop (SIGTERM: ovslab down, systemd, a rolling upgrade) hands our switches
            # over at once instead of after the lease's TTL
            signal.signal(signal.SIGTERM, lambda signum, frame: hub.spawn(self._leave_and_exit))
        return thread

    def _leave_and_exit(self) -> None:
        LOG.warning("cluster: %s stopping (SIGTERM): giving up its lease", self.cluster.member)
        try:
            self.cluster.leave()
        finally:
            logging.shutdown()
            os._exit(0)

    def _audit_loop(self) -> None:
        """Every audit interval, re-read each connected switch and repair drift (spread over the interval)."""
        while True:
            interval = self.audit_interval
            if not interval or interval <= 0:
                hub.sleep(5.0)
                continue
            names = sorted(self.programmers)
            for name in names:
                hub.sleep(interval / len(names))
                prog = self.programmers[name]
                if prog.synced:  # a switch being synced is read in full anyway
                    prog.audit()

    def _hooks(self, hook: str, *args) -> None:
        """Call ``hook`` on every app; one app's failure is logged, never another app's problem."""
        for app in list(self.apps.values()):
            try:
                getattr(app, hook)(*args)
            except Exception:  # noqa: BLE001
                LOG.exception("%s.%s failed", app.APP_NAME, hook)

    # -- apps and intent --------------------------------------------------------
    def register(self, app: FabricApp) -> None:
        if app.APP_NAME in self.apps:
            raise IntentError(f"app {app.APP_NAME} loaded twice")
        self.apps[app.APP_NAME] = app
        self.invalidate(app)

    def unregister(self, app: FabricApp) -> None:
        """An app that failed to start (bad intent) leaves again."""
        if self.apps.get(app.APP_NAME) is app:
            del self.apps[app.APP_NAME]
            self.dirty.pop(app.APP_NAME, None)

    def load_intent(self, app: str):
        """The saved JSON of ``app`` (its intent, or runtime state under another name), or None."""
        text = self.store.get(app)
        return None if text is None else json.loads(text)

    def save_intent(self, app: str, data, expect: int | None = None) -> None:
        """``data`` into the store under ``app`` (the state dir: ``<app>.json``, replaced atomically).

        ``data``: JSON data, or a pydantic model (an intent: its :class:`IntentText`, readable
        and cached per element, so committing one changed fence of 1000 encodes one fence).
        An app's intent is written only if nobody changed it since this instance read it (or
        since revision ``expect``; StoreConflict otherwise); runtime state is written as it is.
        Raises StoreUnavailable when the store cannot take it (nothing was written).
        """
        readable = app in self.apps
        if not self.store.persistent and not readable:
            return
        if isinstance(data, BaseModel):
            text = self.intent_texts.setdefault(app, IntentText()).encode(data)
        else:
            # an app's intent is for people to read; runtime state (10k clients' keys) is written
            # compactly: indenting it costs tens of ms of a hub that nothing else can use meanwhile
            text = json.dumps(data, indent=1 if readable else None, sort_keys=readable,
                              separators=None if readable else (",", ":"))
        self.store.put(app, text, expect=expect, force=not readable)

    @property
    def clustered(self) -> bool:
        """Is the state shared with other controller instances (etcd)?  Apps then keep learned
        state as items (:meth:`save_items`), written before it is acted on, and follow the
        other instances' writes through ``on_store_change``."""
        return self.cluster is not None

    def load_items(self, name: str) -> dict:
        """The collection ``name`` (key -> JSON data) from the store."""
        return {k: json.loads(v) for k, v in self.store.items(name).items()}

    @staticmethod
    def _item_text(data) -> str:
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    def save_items(self, name: str, items: dict, expect: dict | None = None) -> int:
        """Write items of the collection ``name`` (key -> JSON data, None deletes); raises
        StoreUnavailable when the store cannot take them (nothing of a batch up to 128 is written).
        ``expect``: key -> the data the item must still hold (else StoreConflict, nothing written).
        Returns the store revision of the write (etcd; 0 in the state dir)."""
        return self.store.put_items(name, {k: None if v is None else self._item_text(v) for k, v in items.items()},
                                    expect=None if expect is None else {k: self._item_text(v)
                                                                        for k, v in expect.items()})

    def _store_changed(self, change: Change) -> None:
        """Another instance changed something in etcd: an app's intent is taken as if put here."""
        if change.name == "*":  # the watch lost history: read every intent again
            for app in list(self.apps.values()):
                try:
                    data = self.load_intent(app.APP_NAME)
                except StoreError:
                    self.store_errors += 1
                    continue
                if data is not None and data != app.intent_json():
                    self._take_intent(app, data)
            self._hooks("on_store_change", change)
            return
        app = self.apps.get(change.name)
        if app is not None and change.key is None:
            if change.text is not None:
                self._take_intent(app, json.loads(change.text))
            return
        self._hooks("on_store_change", change)

    def _take_intent(self, app: FabricApp, data) -> None:
        try:
            candidate = app.IntentModel.model_validate(data)
            result = self.try_intent(app, candidate)
        except (ValidationError, StateConflict, PipelineError, IntentError) as exc:
            self.compute_error = f"{app.APP_NAME}: intent from the store refused: {exc}"
            LOG.error("%s: intent written by another instance refused here: %s", app.APP_NAME, exc)
            return
        app.intent = candidate
        self._intent_changed(app)
        self.apply(result)
        LOG.info("%s: intent changed by another instance, applied", app.APP_NAME)

    def view(self) -> FabricView:
        """The view apps compute on: declared topology, ports down, switches dead, channels up."""
        return FabricView(self.topology, frozenset(self.down_ports), frozenset(self.dead),
                          frozenset(self.datapaths))

    # -- desired state ---------------------------------------------------------
    def core_state(self, switch: str) -> SwitchState:
        """The framework's own entries: table-miss drops and the punt meter."""
        st = SwitchState()
        miss = cookies.make("core", 1, 0)
        for table in pipeline.PIPELINE:
            st.add_flow(Flow(table=table.table_id, priority=0, match=Match(), cookie=miss), "core")
        st.label(miss, "core table-miss drop")
        rate = config.get("packet-in-rate")
        st.add_meter(Meter(meter_id=PUNT_METER, unit="pktps", bands=(MeterBand(rate=rate, burst_size=rate // 4 or 1),)))
        return st

    def _install_core_layers(self) -> None:
        for name, prog in self.programmers.items():
            prog.set_layers({("core", WHOLE): self.core_state(name)})

    def invalidate(self, app: FabricApp, parts=None) -> None:
        """``app``'s state for ``parts`` (default: all of it) is stale: recompute it soon."""
        name = app.APP_NAME
        if parts is None:
            self.dirty[name] = ALL
        else:
            cur = self.dirty.get(name)
            if cur is not ALL:
                self.dirty[name] = (cur or set()) | set(parts)
        self._recompute.set()

    def schedule_recompute(self) -> None:
        """Every app's whole state is stale (a full recompute; used when in doubt)."""
        for app in self.apps.values():
            self.dirty[app.APP_NAME] = ALL
        self._coalesce = True
        self._recompute.set()

    def _view_changed(self, kind: str, change) -> None:
        """Dirty the apps that read ``kind`` (ports | switches | channels), only the parts they name."""
        view = None
        for app in self.apps.values():
            if kind not in app.INPUTS:
                continue
            if self.dirty.get(app.APP_NAME) is ALL:
                continue
            view = view or self.view()
            try:
                parts = app.parts_changed(view, app.intent, change)
            except Exception:  # noqa: BLE001 - when an app cannot say, recompute all of it
                LOG.exception("%s: parts_changed failed", app.APP_NAME)
                parts = None
            if parts is None or parts:
                self._coalesce = True
                self.invalidate(app, parts)

    def compute_app(self, app: FabricApp, view: FabricView, intent, parts=ALL) -> "Candidate":
        """Compute ``parts`` of ``app`` for ``intent`` over the cached rest; check it; change nothing.

        Returns the layer replacements per switch.  Raises StateConflict or
        PipelineError when the result would break a switch's state or the table plan.
        """
        name = app.APP_NAME
        start = time.monotonic()
        cached = self.part_switches.get(name, {})
        current = set(app.parts(intent))
        if parts is ALL:
            targets, removed = current, set(cached) - current
        else:
            targets, removed = set(parts) & current, {p for p in parts if p not in current and p in cached}
        repl: dict[str, dict[tuple, SwitchState | None]] = {}
        wrote: dict = {}
        for part in targets:
            states = app.compute(view) if app.LEGACY else app.compute(view, intent, part)
            key = (name, part)
            for switch, st in states.items():
                if switch not in self.programmers:
                    raise StateConflict(f"{name} computed state for unknown switch {switch}")
                for flow in st.flows.values():
                    pipeline.check_flow(name, flow)
                pipeline.check_ids(name, st)
                repl.setdefault(switch, {})[key] = st
            wrote[part] = frozenset(states)
            for switch in cached.get(part, ()):
                if switch not in states:
                    repl.setdefault(switch, {})[key] = None
        for part in removed:
            for switch in cached.get(part, ()):
                repl.setdefault(switch, {})[(name, part)] = None
            wrote[part] = None
        for switch, layers in repl.items():
            self.programmers[switch].desired.check(layers)
        return Candidate(name, repl, wrote, time.monotonic() - start, len(targets))

    def apply(self, result: "Candidate") -> list[str]:
        """Hand a computed (and checked) result to the programmers; the switches whose state changed."""
        changed, entries = [], 0
        for switch, layers in result.layers.items():
            if self.programmers[switch].set_layers(layers, check=False):
                changed.append(switch)
            entries += sum(len(st.flows) + len(st.groups) + len(st.meters) for st in layers.values() if st is not None)
        self.heap.after_bulk(entries)
        cache = self.part_switches.setdefault(result.app, {})
        for part, switches in result.wrote.items():
            if switches is None:
                cache.pop(part, None)
            else:
                cache[part] = switches
        self.generation += 1
        metrics = getattr(self, "metrics", None)  # (a test's stand-in core may have none)
        if metrics is not None:
            metrics.recompute.labels(result.app).observe(result.seconds)
        self.compute_stats[result.app] = {"seconds": round(result.seconds, 5), "parts": result.parts,
                                          "switches": len(result.layers)}
        return changed

    def recompute_now(self, app: FabricApp, parts=None) -> list[str]:
        """Recompute ``app`` (``parts`` of it, default all) and hand it to the programmers at once.

        For a fast local reaction (multicast failover): no coalescing pause, the other apps
        untouched.  Returns the switches whose desired state changed.  Raises what
        :meth:`compute_app` raises (and then changes nothing).
        """
        if parts is None:
            self.dirty.pop(app.APP_NAME, None)
        result = self.compute_app(app, self.view(), app.intent, ALL if parts is None else parts)
        return self.apply(result)

    def _recompute_loop(self) -> None:
        while True:
            self._recompute.wait()
            # coalesce bursts of port and switch events (a link is two port messages, a switch
            # many); an app's own invalidate (a learned client, a join: it paces itself) is
            # recomputed on the hub's next turn, not 10 ms later
            coalesce, self._coalesce = self._coalesce, False
            hub.sleep(0.01 if coalesce else 0)
            self._recompute.clear()
            dirty, self.dirty = self.dirty, {}
            if not dirty:
                continue
            start = time.monotonic()
            view = self.view()
            errors = []
            self._computing = True
            try:
                for name in list(self.apps):
                    if name not in dirty:
                        continue
                    app = self.apps[name]
                    try:
                        self.apply(self.compute_app(app, view, app.intent, dirty[name]))
                    except Exception as exc:  # keep what the switches have (for this app)
                        errors.append(f"{name}: {type(exc).__name__}: {exc}")
                        LOG.exception("recompute of %s failed; switches keep its current state", name)
                    hub.sleep(0)  # one app at a time: packet-ins, echoes and REST get their turn between
            finally:
                self._computing = False
            self.last_compute_seconds = time.monotonic() - start
            self.compute_error = "; ".join(errors) or None

    def try_intent(self, app: FabricApp, candidate, parts=None) -> "Candidate":
        """Compute ``app`` with ``candidate`` as its intent, without applying or mutating anything.

        ``parts``: only these parts change with the candidate (default: all of them).
        Apps call this before committing a REST change, so a change that would produce
        a bad state is refused and nothing is half-applied.
        """
        if not app.LEGACY:
            return self.compute_app(app, self.view(), candidate, ALL if parts is None else parts)
        old = app.intent  # an app that reads self.intent in compute(view)
        app.intent = candidate
        try:
            return self.compute_app(app, self.view(), candidate, ALL)
        finally:
            app.intent = old

    def commit_intent(self, app: FabricApp, candidate, result: "Candidate", expect: int | None = None) -> list[str]:
        """Persist ``candidate``, then make it the app's intent and apply what :meth:`try_intent`
        computed.  ``expect``: only if the stored intent is still at this revision.  Raises
        StoreConflict / StoreUnavailable (and then changes nothing)."""
        old = app.intent
        # the model itself (its cached readable encoding) unless the app encodes its intent its own way
        own = type(app).intent_json is not FabricApp.intent_json
        if own:  # (its encoding may read the app's intent)
            app.intent = candidate
            try:
                self.save_intent(app.APP_NAME, app.intent_json(), expect)
            except StoreError:
                app.intent = old
                raise
        else:
            self.save_intent(app.APP_NAME, candidate, expect)
            app.intent = candidate
        self._intent_changed(app)
        return self.apply(result)

    def _intent_changed(self, app: FabricApp) -> None:
        try:
            app.on_intent_change()
        except Exception:  # noqa: BLE001 - an app's bookkeeping must not stop the intent taking effect
            LOG.exception("%s.on_intent_change failed", app.APP_NAME)

    # -- OpenFlow events (thin) ------------------------------------------------
    def _switch_of(self, dp) -> str | None:
        sw = self.topology.switch_by_dpid(dp.id)
        return sw.name if sw else None

    def _admit(self, dp, established) -> str | None:
        """None to let ``dp`` become its switch, else why not (see :mod:`admission`)."""
        sw = self.topology.switch_by_dpid(dp.id) if dp.id is not None else None
        if sw is None:
            return None  # not ours: ignored (and logged) once it is up, as before
        names = admission.peer_names(dp)
        if names is not None:
            allowed = {sw.name, sw.bridge, f"{sw.dpid:016x}"}
            if not allowed & set(names):
                detail = f"TLS certificate names {sorted(names)}, expected one of {sorted(allowed)}"
                self.refusals.add(sw.name, "certificate", dp.address, detail)
                LOG.warning("switch %s: refused connection from %s: %s", sw.name, dp.address, detail)
                return detail
        if established is not None:
            detail = f"dpid {dp.id:#x} is already connected from {established.address}"
            self.refusals.add(sw.name, "duplicate", dp.address, detail)
            LOG.warning("switch %s: refused a second connection from %s claiming dpid %#x; "
                        "the established connection from %s stays", sw.name, dp.address, dp.id,
                        established.address)
            return detail
        return None

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        name = self._switch_of(dp) if dp.id is not None else None
        if name is None:
            if ev.state == MAIN_DISPATCHER:
                LOG.warning("switch dpid %s is not in the topology; ignoring it", dp.id)
            return
        now = time.monotonic()
        if ev.state == MAIN_DISPATCHER:
            LOG.info("switch %s (dpid %#x) connected", name, dp.id)
            if not self.datapaths:
                self.view_since = now  # the others get a hold-down to come back too
            self.datapaths[name] = dp
            self.ever_connected.add(name)
            self.lost.pop(name, None)
            parser = dp.ofproto_parser
            dp.send_msg(parser.OFPPortDescStatsRequest(dp, 0))
            if self.cluster is None:
                self.programmers[name].connected(dp)
            else:  # program it only as its master (see _on_role); meanwhile a SLAVE if one is known
                held = self.cluster.master_of(name)
                if name in self.cluster.mine:
                    hub.spawn(self._assert_master, name, self.cluster.mine[name])
                elif held is not None:
                    hub.spawn(self._be_slave, name, held[1])
                self.cluster.set_connected(name, True)
            self._view_changed("channels", SwitchChange(name, "connected"))
            self._hooks("on_switch_change", SwitchChange(name, "connected"))
            if name in self.dead:
                self.dead.discard(name)
                self._view_changed("switches", SwitchChange(name, "alive"))
                self._hooks("on_switch_change", SwitchChange(name, "alive"))
            self._judge_soon(self.hold_down)
        elif self.datapaths.get(name) is dp:
            del self.datapaths[name]
            self.ports_known.discard(name)
            self.programmers[name].disconnected()
            if self.cluster is not None:
                self.cluster.set_connected(name, False)
            self.lost[name] = now
            if not self.datapaths:
                self.view_since = None
            LOG.warning("switch %s: control channel lost; its data plane counts as forwarding for %.1f s, "
                        "and after that as long as BFD on one of its links says so", name, self.hold_down)
            for key in [k for k in self.stats_waiters if k[0] == name]:
                del self.stats_waiters[key]
            self._view_changed("channels", SwitchChange(name, "disconnected"))
            self._hooks("on_switch_change", SwitchChange(name, "disconnected"))
            self._judge_soon(self.hold_down)

    # -- the cluster (README, "Controller cluster") ---------------------------------
    def _on_role(self, switch: str, generation: int | None) -> None:
        """The cluster made us master of ``switch`` (with ``generation``), or not any more (None)."""
        prog = self.programmers[switch]
        if generation is None:
            old, prog.generation = prog.generation, None
            prog.disconnected()  # stop programming it (the channel stays: port events, a SLAVE)
            if switch in self.datapaths and old is not None:
                # SLAVE with the generation we mastered it with: a switch that has seen a newer
                # master refuses it as stale (and says so: counted), else we are its SLAVE now
                hub.spawn(self._be_slave, switch, old)
            return
        if switch in self.datapaths:
            hub.spawn(self._assert_master, switch, generation)

    def _on_master(self, switch: str, member: str, generation: int) -> None:
        """Another instance masters ``switch`` now: be its SLAVE (no packet-ins, no writes)."""
        if switch in self.datapaths:
            hub.spawn(self._be_slave, switch, generation)

    def _assert_master(self, switch: str, generation: int) -> None:
        """ROLE_REQUEST MASTER with ``generation``; then read the switch and program it."""
        dp = self.datapaths.get(switch)
        if dp is None or self.cluster.mine.get(switch) != generation:
            return
        try:
            role, _ = programmer.OFChannel(dp, timeout=5.0).role(ofwire.OFPCR_ROLE_MASTER, generation)
        except programmer.NotMaster as exc:
            self.cluster.fenced(switch, str(exc))
            return
        except (ConnectionError, TimeoutError, programmer.ProgrammingError) as exc:
            LOG.warning("%s: MASTER role request failed: %s", switch, exc)
            return
        if self.datapaths.get(switch) is not dp or self.cluster.mine.get(switch) != generation:
            return
        prog = self.programmers[switch]
        prog.generation = generation
        if prog.channel is None or prog.channel.datapath is not dp:
            prog.connected(dp)  # a full read and diff: nothing is sent when nothing changed

    def _be_slave(self, switch: str, generation: int) -> None:
        dp = self.datapaths.get(switch)
        if dp is None or switch in self.cluster.mine:
            return
        try:
            programmer.OFChannel(dp, timeout=5.0).role(ofwire.OFPCR_ROLE_SLAVE, generation)
        except programmer.NotMaster as exc:  # a newer master took over meanwhile: it demoted us already
            self.cluster.stale(switch, generation, str(exc))
        except (programmer.ProgrammingError, ConnectionError, TimeoutError) as exc:
            LOG.info("%s: SLAVE role request (generation %d) not taken: %s", switch, generation, exc)

    def masters(self, switch: str) -> bool:
        """Does this instance program ``switch`` (always, without a cluster)?"""
        return self.cluster is None or switch in self.cluster.mine

    def leads(self, app: FabricApp) -> bool:
        """Does this instance run ``app``'s learning and loops (always, without a cluster or for
        an app that is not ``CLUSTER = "leader"``)?"""
        return self.cluster is None or app.CLUSTER != "leader" or app.APP_NAME in self.cluster.leading

    def _on_leader(self, name: str, generation: int | None) -> None:
        app = self.apps.get(name)
        if app is None:
            return
        try:
            app.on_leadership(generation is not None)
        except Exception:  # noqa: BLE001
            LOG.exception("%s.on_leadership failed", name)

    def _relay_in(self, r) -> dict:
        """``POST /v1/cluster/relay``: packet-ins for apps we lead, packet-outs for switches we master."""
        if self.relay is None:
            raise ApiError(404, "not a controller cluster: nothing is relayed")
        batch: RelayBatch = r.body
        done = {"packet_ins": 0, "packet_outs": 0, "refused": [], "bad": []}
        for i, p in enumerate(batch.packet_ins):
            app = self.apps.get(p.app)
            where = f"packet_ins[{i}]"
            if app is None or p.switch not in self.topology.switches:
                done["bad"].append(f"{where}: no app {p.app!r}" if app is None else f"{where}: no switch {p.switch!r}")
                continue
            try:
                data = relays.decode(p.data)
            except ValueError as exc:
                done["bad"].append(f"{where}.data: {exc}")
                continue
            if not self.leads(app):  # leadership moved while it travelled: dropped (like a lost packet-in)
                done["refused"].append(f"{where}: {self.cluster.member} does not lead {p.app}")
                continue
            pkt = PacketIn(p.switch, p.in_port, p.table, p.cookie, data[:getattr(app, "PACKET_IN_BYTES",
                                                                                  PACKET_IN_BYTES)])
            self.relay.counters["packet_ins_received"] += 1
            try:
                app.on_packet_in(pkt)
                self.packet_ins["handled"] += 1
                done["packet_ins"] += 1
            except ValueError as exc:
                self.packet_ins["bad"] += 1
                LOG.debug("%s: bad relayed packet-in from %s:%d: %s", p.app, p.switch, p.in_port, exc)
        for i, p in enumerate(batch.packet_outs):
            where = f"packet_outs[{i}]"
            if p.switch not in self.topology.switches:
                done["bad"].append(f"{where}: no switch {p.switch!r}")
                continue
            try:
                data = relays.decode(p.data)
            except ValueError as exc:
                done["bad"].append(f"{where}.data: {exc}")
                continue
            if not self.masters(p.switch) or not self._send_packet(p.switch, p.port, data, p.in_port, p.table):
                done["refused"].append(f"{where}: {self.cluster.member} does not master {p.switch} now")
                continue
            self.relay.counters["packet_outs_received"] += 1
            done["packet_outs"] += 1
        self.relay.counters["refused"] += len(done["refused"])
        self.relay.counters["bad"] += len(done["bad"])
        done["refused"], done["bad"] = done["refused"][:20], done["bad"][:20]
        return done

    def _cluster_json(self) -> dict:
        if self.cluster is None:
            return {"mode": "single", "store": self.store.health()}
        return {"mode": "cluster", **self.cluster.json(), "relay": self.relay.json(), "store": self.store.health()}

    # -- liveness ----------------------------------------------------------------
    def forwards(self, switch: str) -> bool:
        """Does a BFD-monitored link say ``switch``'s data plane still answers?"""
        for ln in self.topology.bfd_links:
            if switch not in (ln.a, ln.b):
                continue
            peer, peer_port = (ln.b, ln.b_port) if ln.a == switch else (ln.a, ln.a_port)
            if peer in self.ports_known and (peer, peer_port) not in self.down_ports:
                return True
        return False

    def _judge_soon(self, delay: float) -> None:
        at = time.monotonic() + delay
        if self._judge_at is not None and self._judge_at <= at:
            return
        self._judge_at = at
        hub.spawn_after(delay + 0.01, self._judge)

    def _judge(self) -> None:
        """Decide which lost switches are dead (routed around) and which still forward."""
        self._judge_at = None
        if self.view_since is None:
            return  # the controller sees no switch at all: it cannot tell, so it changes nothing
        now, changes, later = time.monotonic(), [], None
        for name, since in self.lost.items():
            alive = self.forwards(name)
            if name in self.dead:
                if alive:  # BFD says it forwards again (its channel is still gone)
                    self.dead.discard(name)
                    changes.append(SwitchChange(name, "alive"))
                    LOG.warning("switch %s: BFD says its data plane forwards again", name)
                continue
            wait = self.hold_down - (now - max(since, self.view_since))
            if wait > 0:
                later = wait if later is None else min(later, wait)
            elif not alive:
                self.dead.add(name)
                changes.append(SwitchChange(name, "dead"))
                LOG.warning("switch %s: no control channel for %.1f s and no BFD link says it forwards: "
                            "routing around it", name, now - since)
        if later is not None:
            self._judge_soon(later)
        for change in changes:
            self._view_changed("switches", change)
            self._hooks("on_switch_change", change)

    def data_plane(self, switch: str) -> str:
        """forwarding | dead | forwarding (BFD) | presumed forwarding (hold-down) | unknown."""
        if switch in self.datapaths:
            return "forwarding"
        if switch in self.dead:
            return "dead"
        if switch in self.lost:
            return "forwarding (BFD)" if self.forwards(switch) else "presumed forwarding (hold-down)"
        return "unknown"

    @staticmethod
    def _live(ofp, port) -> bool:
        return not (port.state & ofp.OFPPS_LINK_DOWN) and not (port.config & ofp.OFPPC_PORT_DOWN)

    def port_live(self, switch: str, ofp, port) -> bool:
        """Up, and on a BFD-monitored link also LIVE (the far switch's data plane answers)."""
        if not self._live(ofp, port):
            return False
        return (switch, port.port_no) not in self.topology.bfd_ports or bool(port.state & ofp.OFPPS_LIVE)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev):
        name = self._switch_of(ev.msg.datapath)
        if name is None or self.ofctl.owns(ev.msg):  # (a /stats/portdesc answer: not news)
            return
        ofp = ev.msg.datapath.ofproto
        declared = {p.port for p in self.topology.switch_ports(name)}
        present = set()
        changes = []
        for port in ev.msg.body:
            present.add(port.port_no)
            usable = self.port_live(name, ofp, port)
            changed = port.port_no in declared and self._set_port(name, port.port_no, usable)
            changes.append(PortChange(name, port.port_no, "desc", self._live(ofp, port),
                                      bool(port.state & ofp.OFPPS_LIVE), usable, changed))
        for port_no in declared - present:  # declared but missing on the switch
            changes.append(PortChange(name, port_no, "desc", False, False, False,
                                      self._set_port(name, port_no, False)))
        self.ports_known.add(name)
        self._port_changes(changes)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        name = self._switch_of(msg.datapath)
        if name is None:
            return
        ofp = msg.datapath.ofproto
        deleted = msg.reason == ofp.OFPPR_DELETE
        usable = not deleted and self.port_live(name, ofp, msg.desc)
        declared = self.topology.ports.get((name, msg.desc.port_no)) is not None
        changed = declared and self._set_port(name, msg.desc.port_no, usable)
        if changed:
            LOG.info("port %s:%d is %s", name, msg.desc.port_no, "up" if usable else "down")
        reason = {ofp.OFPPR_ADD: "add", ofp.OFPPR_DELETE: "delete"}.get(msg.reason, "modify")
        self._port_changes([PortChange(name, msg.desc.port_no, reason, not deleted and self._live(ofp, msg.desc),
                                       bool(msg.desc.state & ofp.OFPPS_LIVE), usable, changed)])

    def _port_changes(self, changes: list[PortChange]) -> None:
        """The view first (dirty what reads it), then every app's hook, in the switch's order."""
        for change in changes:
            if change.changed:
                self._view_changed("ports", change)
        if self.lost and any(c.changed for c in changes):
            self._judge()
        for change in changes:
            self._hooks("on_port_change", change)

    def _set_port(self, switch: str, port: int, live: bool) -> bool:
        key = (switch, port)
        if live and key in self.down_ports:
            self.down_ports.discard(key)
            return True
        if not live and key not in self.down_ports:
            self.down_ports.add(key)
            return True
        return False

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        name = self._switch_of(msg.datapath)
        if name is None:
            return
        if self.cluster is not None and name not in self.cluster.mine:
            self.packet_ins["not_master"] += 1  # (an EQUAL connection before the roles are set)
            return
        if not self.buckets[name].take():
            self.packet_ins["rate_limited"] += 1
            return
        app = self.apps.get(cookies.APP_NAMES.get(msg.cookie >> cookies.APP_SHIFT, ""))
        if app is None:
            self.packet_ins["no_owner"] += 1
            return
        # an app may raise the bound (class attribute PACKET_IN_BYTES), e.g. for whole IGMPv3 reports
        limit = getattr(app, "PACKET_IN_BYTES", PACKET_IN_BYTES)
        pkt = PacketIn(name, msg.match.get("in_port", 0), msg.table_id, msg.cookie,
                       bytes(msg.data[:limit]))
        if not self.leads(app):  # one instance leads this app: hand the packet-in to it
            leader = self.cluster.leader(app.APP_NAME)
            if leader is None or leader == self.cluster.member or not self.relay.packet_in(
                    leader, app.APP_NAME, name, pkt.in_port, pkt.table, pkt.cookie, pkt.data):
                self.packet_ins["no_leader"] = self.packet_ins.get("no_leader", 0) + 1
            else:
                self.packet_ins["relayed"] = self.packet_ins.get("relayed", 0) + 1
            return
        try:
            app.on_packet_in(pkt)
            self.packet_ins["handled"] += 1
        except ValueError as exc:  # BadPacket and friends: count, never crash the loop
            self.packet_ins["bad"] += 1
            LOG.debug("%s: bad packet-in on %s:%d: %s", app.APP_NAME, name, pkt.in_port, exc)

    # -- the app API (README, "Writing an app"): what apps may call on the core -----------
    def packet_out(self, switch: str, port: int, data: bytes, in_port: int | None = None,
                   table: int | None = None) -> bool:
        """Send ``data`` out of ``port`` (``TABLE``: through the pipeline, as if it came in on
        ``in_port``); with ``table``: resubmit it to that table as if it came in on ``in_port``
        (the tables before it are skipped: a packet an app has judged already).  False when the
        switch has no control channel."""
        dp = self.datapaths.get(switch)
        if dp is None:
            return False
        if not self.masters(switch):  # a cluster: the switch's master sends it
            held = self.cluster.master_of(switch)
            return held is not None and self.relay.packet_out(held[0], switch, port, data, in_port, table)
        return self._send_packet(switch, port, data, in_port, table)

    def _send_packet(self, switch: str, port: int, data: bytes, in_port: int | None,
                     table: int | None = None) -> bool:
        dp = self.datapaths.get(switch)
        if dp is None:
            return False
        parser, ofp = dp.ofproto_parser, dp.ofproto
        if table is None:
            actions = [parser.OFPActionOutput(port, 0)]
        else:  # OVS's resubmit: the packet enters ``table`` with in_port as given
            actions = [parser.NXActionResubmitTable(table_id=table)]  # (in_port: 0xfff8, the packet-out's)
        dp.send_msg(parser.OFPPacketOut(datapath=dp, buffer_id=ofp.OFP_NO_BUFFER,
                                        in_port=ofp.OFPP_CONTROLLER if in_port is None else in_port,
                                        actions=actions, data=data))
        return True

    def request_stats(self, app: FabricApp, switch: str, build) -> bool:
        """Send the stats request ``build(datapath)`` returns; the reply reaches ``app.on_stats_reply``."""
        dp = self.datapaths.get(switch)
        if dp is None:
            return False
        msg = build(dp)
        dp.set_xid(msg)
        if len(self.stats_waiters) > 10000:  # replies that never came (a switch that went away)
            self.stats_waiters.clear()
        self.stats_waiters[(switch, msg.xid)] = app
        dp.send_msg(msg)
        return True

    def multipart(self, switch: str, build) -> list[bytes]:
        """Send an ofwire multipart request ``build(xid)`` and wait for every reply body.

        Taken off the wire before os-ken parses it (parse with ofwire's bounded parsers).
        Raises ConnectionError when the switch has no control channel.
        """
        channel = self.programmers[switch].channel
        if channel is None:
            dp = self.datapaths.get(switch)
            if dp is None:
                raise ConnectionError(f"{switch} is not connected")
            # a SLAVE connection (a cluster, another instance masters it) may read
            channel = programmer.OFChannel(dp, timeout=30.0)
        return channel.multipart(build)

    def is_connected(self, switch: str) -> bool:
        """Can this instance talk to ``switch``: read it, and send to it (in a cluster: as its
        master, or through its master)?"""
        if switch not in self.datapaths:
            return False
        return self.masters(switch) or self.cluster.master_of(switch) is not None

    @property
    def settling(self) -> bool:
        """Some app's state is stale and not recomputed yet: desired state is about to change.

        A dirty part's switches are not known before it is computed, so while this holds no
        switch counts as synced (a learned channel or client is in the app's REST answers a
        few ms before its flows are in the programmers' desired state).
        """
        return bool(self.dirty) or self._computing

    def switch_synced(self, name: str) -> bool:
        """``name`` holds its desired state and no recompute is pending that could change it."""
        return self.programmers[name].synced and not self.settling

    def all_synced(self, switches=None) -> bool:
        """Every connected switch (of ``switches``) holds its desired state, none pending."""
        names = self.datapaths if switches is None else [s for s in switches if s in self.datapaths]
        names = [n for n in names if self.masters(n)]  # (the others are their masters' business)
        return all(self.switch_synced(n) for n in names)

    def cluster_synced(self, switches=None, revision: int = 0) -> dict[str, str]:
        """Which connected switches (of ``switches``) do not yet hold their desired state, and
        why; in a cluster as their masters report it, each having handled the store up to
        ``revision`` (a write this instance made).  Empty: all of them do.  Without a cluster
        the same as :meth:`all_synced`."""
        names = [n for n in (self.topology.switches if switches is None else switches) if n in self.datapaths]
        out = {n: "not synced" for n in names if self.masters(n) and not self.switch_synced(n)}
        if self.cluster is None:
            return out
        others = [n for n in names if not self.masters(n)]
        remote = self._remote_switches(others)
        for n in others:
            e = remote.get(n)
            if e is None:
                out[n] = "no master"
            elif e.get("note"):
                out[n] = e["note"]
            elif not e.get("synced") or e.get("role") != "master":
                out[n] = f"not synced at {e.get('answered_by')}"
            elif int(e.get("store_applied") or 0) < revision:
                out[n] = f"{e.get('answered_by')} has not handled store revision {revision} yet"
        return out

    def desired_state(self, switch: str):
        """The merged desired state of ``switch`` (read only)."""
        return self.programmers[switch].desired

    def app_intent(self, name: str):
        """Another app's intent (its published state), or None when it is not loaded."""
        app = self.apps.get(name)
        return None if app is None else app.intent

    def compute_seconds(self, app: FabricApp) -> float:
        """How long ``app``'s last recompute took."""
        return self.compute_stats.get(app.APP_NAME, {}).get("seconds", 0.0)

    def packet_in_counts(self) -> dict:
        return dict(self.packet_ins)

    @property
    def persistent(self) -> bool:
        """Does the controller keep state across restarts (a state dir, or etcd)?"""
        return self.store.persistent

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPPortStatsReply,
                 ofp_event.EventOFPGroupStatsReply, ofp_event.EventOFPMeterStatsReply,
                 ofp_event.EventOFPAggregateStatsReply, ofp_event.EventOFPTableStatsReply], MAIN_DISPATCHER)
    def _stats_reply(self, ev):
        msg = ev.msg
        name = self._switch_of(msg.datapath)
        if name is None or self.ofctl.take(msg):
            return
        more = msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE
        app = (self.stats_waiters.get if more else self.stats_waiters.pop)((name, msg.xid), None)
        if app is None:
            return
        try:
            app.on_stats_reply(name, msg)
        except Exception:  # noqa: BLE001
            LOG.exception("%s.on_stats_reply failed", app.APP_NAME)

    @set_ev_cls([ofp_event.EventOFPDescStatsReply, ofp_event.EventOFPPortDescStatsReply,
                 ofp_event.EventOFPGroupDescStatsReply, ofp_event.EventOFPMeterConfigStatsReply], MAIN_DISPATCHER)
    def _ofctl_reply(self, ev):
        """Replies to ``/stats`` (Ryu's ofctl_rest) requests; the port list is also read by ``_port_desc``."""
        if self._switch_of(ev.msg.datapath) is not None:
            self.ofctl.take(ev.msg)

    # -- REST ---------------------------------------------------------------------
    def _switch_or_404(self, name: str) -> str:
        if name not in self.topology.switches:
            raise ApiError(404, f"no switch named {name!r}; known: {sorted(self.topology.switches)}")
        return name

    def _add_routes(self) -> None:
        api = self.api
        api.param_values("/v1/switches/{name}", lambda: sorted(self.topology.switches))
        api.param_values("/v1/apps/{app}", lambda: sorted(self.apps))
        api.add("GET", "/v1/topology", lambda r: self._topology_json(), "The declared topology and live link state")
        api.add("GET", "/v1/switches", lambda r: self._switches_json(list(self.topology.switches), r),
                "Switches: connection, sync state, entry counts (in a cluster each switch as its master "
                "reports it; ?local=1: as this instance sees it)")
        api.add("GET", "/v1/switches/{name}", lambda r: self._switches_json([self._switch_or_404(r.params["name"])],
                                                                           r)[0],
                "One switch")
        api.add("GET", "/v1/switches/{name}/flows", self._flows_json,
                "Desired flows of a switch (?app=NAME filters by owner)")
        api.add("GET", "/v1/switches/{name}/desired", self._desired_json,
                "Desired flows/groups/meters in ovs-ofctl syntax (used by `ovslab flows --diff`)")
        api.add("POST", "/v1/switches/{name}/resync", self._resync,
                "Re-read the switch and repair any difference from the desired state", status=202)
        api.add("GET", "/v1/apps", lambda r: {n: {"app_id": a.app_id, "intent": a.intent_json(),
                                                  "revision": self.store.revision_of(n)}
                                              for n, a in self.apps.items()},
                "Loaded apps, their intent and its store revision (for PUT ...?revision=N)")
        api.add("GET", "/v1/apps/{app}/intent", self._intent_json, "One app's intent")
        api.add("PUT", "/v1/apps/{app}/intent", self._put_intent,
                "Replace an app's intent: validated, applied to every switch at once, persisted "
                "(202: stored, not yet on every switch; ?revision=N: only if still at revision N, else 409)",
                body=PerParam("app", lambda: {n: a.IntentModel for n, a in self.apps.items()}), also=(202,))
        api.add("GET", "/v1/cookies", lambda r: self._cookies_json(), "Object names by cookie")
        api.add("GET", "/v1/pipeline", lambda r: pipeline.describe(), "The table plan and priority bands")
        api.add("GET", "/v1/pipeline/ids", lambda r: pipeline.describe_ids(), "Group and meter id ranges per app")
        api.add("GET", "/v1/health", lambda r: self._health(), "Controller health and packet-in counters")
        self.ofctl.add_routes(api)
        api.add("GET", "/ui", lambda r: _ui_file("index.html"), "The live page: topology and each function's view",
                "meta", content_type="text/html")
        api.add("GET", "/ui/{name}", lambda r: _ui_file(r.params["name"]), "The live page's static files", "meta",
                content_type="text/plain")
        api.add("GET", "/metrics", lambda r: Raw(METRICS_TYPE, self.metrics.text()),
                "Prometheus metrics (text format): switches, packet-ins, apps' counters, recompute and sync times",
                "meta", content_type=METRICS_TYPE)
        api.add("GET", "/v1/cluster", lambda r: self._cluster_json(),
                "The controller cluster: members, which switches each masters, generation ids, lease ages, etcd health")
        api.add("POST", "/v1/cluster/relay", self._relay_in,
                "Between cluster instances: packet-ins for an app this instance leads, packet-outs for a switch it "
                "masters", body=RelayBatch)

    def _health(self) -> dict:
        progs = self.programmers.values()
        return {"compute_error": self.compute_error, "generation": self.generation,
                "last_compute_seconds": round(self.last_compute_seconds, 4),
                "recompute": {"dirty": sorted(self.dirty), "pending": self.settling, "by_app": self.compute_stats},
                "hub_blocked_ms": self.hub_lag.json(),
                "gc": self.heap.json(),
                "audit": {"interval_seconds": self.audit_interval, "audits": sum(p.audits for p in progs),
                          "repairs": sum(p.audit_repairs for p in progs),
                          "repaired": {n: dict(p.audit_repaired) for n, p in self.programmers.items()
                                       if p.audit_repairs}},
                "packet_ins": dict(self.packet_ins,
                                   rate_limited_by_switch={n: b.dropped for n, b in self.buckets.items()}),
                "switches_connected": sorted(self.datapaths),
                "switches_lost": {n: round(time.monotonic() - t, 1) for n, t in sorted(self.lost.items())},
                "switches_dead": sorted(self.dead),
                "switches_silent": sorted(n for n in self.datapaths if self._channel(n)["state"] == "silent"),
                "all_synced": (not self.settling and all(p.synced for p in self.programmers.values()))
                if self.cluster is None else all(e["synced"] for e in self._switches_json(list(self.topology.switches))),
                "refused_connections": self.refusals.json(),
                "openflow_guard": ofguard.stats()}

    def _topology_json(self) -> dict:
        t, view = self.topology, self.view()
        return {
            "name": t.name, "source": t.source,
            "switches": {n: {"dpid": s.dpid, "bridge": s.bridge, "node": s.node} for n, s in t.switches.items()},
            "hosts": {n: {"mac": h.mac, "ipv4": str(h.ipv4) if h.ipv4 else None,
                          "ipv6": str(h.ipv6) if h.ipv6 else None, "switch": h.switch, "port": h.port}
                      for n, h in t.hosts.items()},
            "links": [{"name": ln.name, "a": ln.a, "a_port": ln.a_port, "b": ln.b, "b_port": ln.b_port,
                       "kind": ln.kind, "up": view.port_live(ln.a, ln.a_port) and view.port_live(ln.b, ln.b_port)}
                      for ln in t.links],
            "down_ports": [f"{s}:{p}" for s, p in sorted(self.down_ports)],
        }

    def _switches_json(self, names: list[str], r=None) -> list[dict]:
        """The switches as this instance sees them; in a cluster, a switch another instance masters
        as that instance reports it (its sync state is only known there)."""
        local = [self._switch_json(n) for n in names]
        if self.cluster is None or (r is not None and r.query.get("local") in ("1", "true", "yes")):
            return local
        remote = self._remote_switches([n for n in names if n not in self.cluster.mine])
        return [remote.get(e["name"], e) for e in local]

    def _remote_switches(self, names: list[str]) -> dict[str, dict]:
        """``/v1/switches?local=1`` of the masters of ``names`` (one request per master, 1 s each)."""
        import urllib.request

        by_master: dict[str, list[str]] = {}
        for n in names:
            held = self.cluster.master_of(n)
            if held is not None and held[0] != self.cluster.member:
                by_master.setdefault(held[0], []).append(n)
        out = {}
        headers = {"Authorization": f"Bearer {self.api.security.token}"} if self.api.security.token else {}
        for member, sws in by_master.items():
            url = (self.cluster.members.get(member) or {}).get("rest")
            if not url:
                continue
            try:
                req = urllib.request.Request(f"{url}/v1/switches?local=1", headers=headers)
                with urllib.request.urlopen(req, timeout=1.0) as resp:
                    entries = json.loads(resp.read().decode())
            except (OSError, ValueError) as exc:
                for n in sws:
                    e = self._switch_json(n)
                    e["synced"] = False
                    e["note"] = f"its master {member} did not answer: {exc}"
                    out[n] = e
                continue
            for e in entries:
                if isinstance(e, dict) and e.get("name") in sws:
                    out[e["name"]] = dict(e, answered_by=member)
        return out

    def _switch_json(self, name: str) -> dict:
        sw = self.topology.switches[name]
        status = self.programmers[name].status()
        status["synced"] = status["synced"] and not self.settling
        if self.cluster is not None:
            held = self.cluster.master_of(name)
            status["connected"] = name in self.datapaths
            status["role"] = "master" if name in self.cluster.mine else "slave"
            status["master"] = None if held is None else {"member": held[0], "generation": held[1]}
            status["store_revision"] = self.store.revision
            status["store_applied"] = self.store.applied
        return {"name": name, "dpid": sw.dpid, "bridge": sw.bridge, **status,
                "channel": self._channel(name), "data_plane": self.data_plane(name)}

    def _channel(self, name: str) -> dict:
        """Is the control channel alive? ``silent``: connected, but echoes go unanswered."""
        dp = self.datapaths.get(name)
        if dp is None:
            return {"state": "down"}
        now = time.monotonic()
        heard = max(self.last_echo_reply.get(name, 0.0), self.programmers[name].connected_at or 0.0)
        quiet = now - heard
        unanswered = len(getattr(dp, "unreplied_echo_requests", ()))
        silent = unanswered > 1 and quiet > 2 * config.ECHO_INTERVAL
        return {"state": "silent" if silent else "ok", "unanswered_echoes": unanswered,
                "last_heard_seconds_ago": round(quiet, 2)}

    @set_ev_cls(ofp_event.EventOFPEchoReply, MAIN_DISPATCHER)
    def _echo_reply(self, ev):
        name = self._switch_of(ev.msg.datapath)
        if name is not None and self.datapaths.get(name) is ev.msg.datapath:
            self.last_echo_reply[name] = time.monotonic()

    def _flows_json(self, r) -> list:
        name = self._switch_or_404(r.params["name"])
        app = r.query.get("app")
        if app is not None and app not in cookies.APPS:
            raise ApiError(422, f"unknown app {app!r}; known: {sorted(cookies.APPS)}", "app")
        st = self.programmers[name].desired
        out = []
        for flow in sorted(st.flows.values(), key=lambda f: (f.table, -f.priority)):
            c = cookies.decode(flow.cookie)
            if app is None or c.app == app:
                out.append({**flow.to_dict(), "app": c.app, "object": st.owners.get(flow.cookie, str(c))})
        return out

    def _desired_json(self, r) -> dict:
        st = self.programmers[self._switch_or_404(r.params["name"])].desired
        return {"flows": [str(f) for f in sorted(st.flows.values(), key=lambda f: (f.table, -f.priority))],
                "groups": [str(g) for g in sorted(st.groups.values(), key=lambda g: g.group_id)],
                "meters": [str(m) for m in sorted(st.meters.values(), key=lambda m: m.meter_id)]}

    def _resync(self, r):
        name = self._switch_or_404(r.params["name"])
        if not self.masters(name):  # a cluster: only the switch's master programs it
            held = self.cluster.master_of(name)
            url = self.cluster.rest_of(held[0]) if held else None
            if not url or "forwarded" in r.query:
                raise ApiError(503, f"{name} has no master now (mastership is moving); retry in a moment")
            try:
                status, payload = relays.forward(url, "POST", r.path, {"forwarded": self.cluster.member}, None,
                                                 self.api.security.token, 10.0)
            except OSError as exc:
                raise ApiError(503, f"{name}'s master {held[0]} did not answer: {exc}") from None
            if status >= 400:
                raise ApiError(status, str((payload or {}).get("error", payload)))
            return status, dict(payload, master=held[0])
        self.programmers[name].resync()
        return 202, {"resync": name}

    def _app_or_404(self, name: str) -> FabricApp:
        app = self.apps.get(name)
        if app is None:
            raise ApiError(404, f"app {name!r} is not loaded; loaded: {sorted(self.apps)}")
        return app

    def _intent_json(self, r) -> dict:
        return self._app_or_404(r.params["app"]).intent_json()

    def _put_intent(self, r) -> dict:
        app = self._app_or_404(r.params["app"])
        try:
            candidate = app.IntentModel.model_validate(r.body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        try:
            states = self.try_intent(app, candidate)
        except (StateConflict, PipelineError, IntentError) as exc:
            raise ApiError(409, f"intent refused, nothing changed: {exc}") from None
        expect = None
        if "revision" in r.query:  # compare-and-set: only if nobody changed it since that revision
            try:
                expect = int(r.query["revision"])
            except ValueError:
                raise ApiError(422, f"revision must be a number, not {r.query['revision']!r}", "revision") from None
        changed = self.commit_intent(app, candidate, states, expect)
        pending = self.wait_applied(changed, APPLY_WAIT if r.query.get("wait") in ("1", "true", "yes") else 0)
        if pending:  # stored and persisted, but not (yet) on these switches: say so
            return 202, {"applied": False, "pending": pending, "intent": app.intent_json()}
        return app.intent_json()

    def wait_applied(self, switches: list[str], timeout: float) -> dict[str, str]:
        """Wait up to ``timeout`` s until ``switches`` hold their desired state; why not, per switch.

        With ``timeout`` 0 only switches that cannot be programmed now (no channel, or a
        silent one) are reported; the others are being programmed.
        """
        deadline = time.monotonic() + timeout
        others = [n for n in switches if not self.masters(n)]
        switches = [n for n in switches if self.masters(n)]
        while timeout > 0 and time.monotonic() < deadline:
            if all(self.switch_synced(n) for n in switches):
                break
            hub.sleep(0.01)
        pending = {}
        if others and timeout > 0:  # a cluster: their masters program them, after taking our last write
            revision = self.store.last_write
            while True:
                pending = self.cluster_synced(others, revision)
                if not pending or time.monotonic() >= deadline:
                    break
                hub.sleep(0.05)
        for n in switches:
            prog, channel = self.programmers[n], self._channel(n)
            if self.switch_synced(n):
                continue
            if channel["state"] == "down":
                pending[n] = "not connected"
            elif channel["state"] == "silent":
                pending[n] = f"connected but silent for {channel['last_heard_seconds_ago']} s"
            elif timeout > 0:
                pending[n] = f"not synced within {timeout} s" + (f" (last error: {prog.last_error})"
                                                                  if prog.last_error else "")
        return pending

    def _cookies_json(self) -> dict:
        out = {}
        for prog in self.programmers.values():
            for cookie, label in prog.desired.owners.items():
                out[f"{cookie:#018x}"] = label
        return out





class _LeaderRoutes:
    """What a ``CLUSTER = "leader"`` app registers its REST routes on: a request to an instance
    that does not lead the app is forwarded to the leader (``?local=1``: answered here)."""

    FORWARD_TIMEOUT = 300.0  # an OAM verification takes as long as its probes

    def __init__(self, core: FabricCore, app: FabricApp):
        self.core, self.app = core, app

    def add(self, method: str, path: str, handler, summary: str, tag: str = "core", body=None,
            status: int = 200, also: tuple[int, ...] = ()) -> None:
        def routed(r):
            if self.core.leads(self.app) or r.query.get("local") in ("1", "true", "yes"):
                return handler(r)
            return self._forward(r, handler)

        self.core.api.add(method, path, routed, summary, tag, body=body, status=status, also=also)

    def param_values(self, prefix: str, values) -> None:
        self.core.api.param_values(prefix, values)

    def _forward(self, r, handler):
        cluster, name = self.core.cluster, self.app.APP_NAME
        leader = cluster.leader(name)
        url = cluster.rest_of(leader) if leader else None
        if "forwarded" in r.query or not url:
            if r.method in ("GET", "HEAD"):  # this instance's copy of the app's state
                return handler(r)
            why = "leadership is moving" if "forwarded" in r.query else "no instance leads it now"
            raise ApiError(503, f"{name}: {why} (leader {leader or 'none'}); retry in a moment")
        if r.body is None:
            data = None
        elif isinstance(r.body, BaseModel):
            data = r.body.model_dump_json(exclude_unset=True).encode()
        else:
            data = json.dumps(r.body).encode()
        query = {k: v for k, v in r.query.items()} | {"forwarded": cluster.member}
        try:
            status, payload = relays.forward(url, r.method, r.path, query, data, self.core.api.security.token,
                                             self.FORWARD_TIMEOUT if r.method not in ("GET", "HEAD") else 10.0)
        except OSError as exc:
            if r.method in ("GET", "HEAD"):
                return handler(r)
            raise ApiError(503, f"{name}: its leader {leader} did not answer: {exc}") from None
        if status >= 400:
            err = payload if isinstance(payload, dict) else {}
            raise ApiError(status, str(err.get("error", payload)), err.get("field"))
        return status, payload


#: the live page's files (``ryu_apps/framework/ui/``), served as they are: no build step, no CDN
UI_DIR = Path(__file__).resolve().parent / "ui"
_UI_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


def _ui_file(name: str) -> Raw:
    """A file of the live page; 404 for anything not directly in its directory."""
    path = UI_DIR / name
    kind = _UI_TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        raise ApiError(404, f"no file {name!r} in the live page")
    return Raw(kind, path.read_bytes())
