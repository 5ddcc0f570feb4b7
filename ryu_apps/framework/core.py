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
import time
from pathlib import Path

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3
from pydantic import ValidationError

from ryu_apps.framework import admission, config, cookies, pipeline, programmer
from ryu_apps.framework.app import FabricApp, FabricView, IntentError, PacketIn
from ryu_apps.framework.pipeline import PipelineError
from ryu_apps.framework.programmer import SwitchProgrammer
from ryu_apps.framework.rest import ApiError, PerParam, RestApi, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.framework.topology import Topology, TopologyError, load
from ryu_apps.openflow import ofguard
from ryu_apps.openflow.ofdata import Flow, Match, Meter, MeterBand

LOG = logging.getLogger(__name__)

PUNT_METER, PACKET_IN_BYTES = pipeline.PUNT_METER, pipeline.PACKET_IN_BYTES
APPLY_WAIT = 10.0  # seconds a write with ?wait=1 waits for the switches to hold it


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
        self.apps: dict[str, FabricApp] = {}
        self.programmers = {name: SwitchProgrammer(name, sw.dpid) for name, sw in self.topology.switches.items()}
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
        self.packet_ins = {"handled": 0, "rate_limited": 0, "no_owner": 0, "bad": 0}
        self.compute_error: str | None = None
        self.last_compute_seconds = 0.0
        self._last_view_key = None
        self._last_app_states: dict[str, dict[str, SwitchState]] = {}
        self._computed = (None, None, {})
        self._versions: dict[str, int] = {}
        self.generation = 0
        self._recompute = hub.Event()
        self.refusals = admission.Refusals()
        self.last_echo_reply: dict[str, float] = {}
        admission.install(self._admit)
        # every message from a switch is checked before os-ken parses it
        ofguard.install(programmer.awaits_dump, programmer.awaits_error)
        self.api = RestApi()
        self._add_routes()
        self.threads.append(hub.spawn(self._recompute_loop))

    def start(self):
        thread = super().start()
        for app in self.apps.values():
            app.add_routes(self.api)
        port = config.get("rest-port")
        if port:
            self.threads.append(self.api.serve(config.get("rest-host"), port))
        self.schedule_recompute()
        return thread

    # -- apps and intent --------------------------------------------------------
    def register(self, app: FabricApp) -> None:
        if app.APP_NAME in self.apps:
            raise IntentError(f"app {app.APP_NAME} loaded twice")
        self.apps[app.APP_NAME] = app
        self.schedule_recompute()

    def load_intent(self, app: str):
        if self.state_dir is None:
            return None
        path = self.state_dir / f"{app}.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def save_intent(self, app: str, data) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f".{app}.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.state_dir / f"{app}.json")

    def view(self) -> FabricView:
        return FabricView(self.topology, frozenset(self.down_ports), frozenset(self.dead))

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

    def compute(self, view: FabricView, reuse_for: str | None = None) -> dict[str, SwitchState]:
        """Merge every app's desired state; raise StateConflict/PipelineError on bad output.

        With ``reuse_for`` (an app whose intent is being tried), every other
        app's state is taken from the last recompute when that is still
        current: same view, and no recompute pending (apps schedule one
        whenever their runtime state changes).  Those states were checked
        against the pipeline when first computed.
        """
        key = (view.down_ports, view.dead_switches)
        # ...and no app pushed to a programmer directly since (a fast local switchover)
        untouched = all(p.version == self._versions.get(n) for n, p in self.programmers.items())
        reuse = (reuse_for is not None and not self._recompute.is_set() and key == self._last_view_key
                 and untouched)
        per_app: dict[str, dict[str, SwitchState]] = {}
        merged = {name: self.core_state(name) for name in self.topology.switches}
        for name, app in self.apps.items():
            cached = reuse and name != reuse_for and name in self._last_app_states
            app_states = self._last_app_states[name] if cached else app.compute(view)
            per_app[name] = app_states
            for switch, st in app_states.items():
                if switch not in merged:
                    raise StateConflict(f"{name} computed state for unknown switch {switch}")
                merged[switch].merge(st, None if cached else name)
        for st in merged.values():
            st.check_references()
        self._computed = (id(merged), key, per_app)
        return merged

    def _remember(self, merged: dict[str, SwitchState]) -> None:
        """Keep the per-app states behind ``merged`` for reuse by try_intent."""
        ident, key, per_app = self._computed
        self._versions = {n: p.version for n, p in self.programmers.items()}
        if ident == id(merged):
            self._last_view_key, self._last_app_states = key, per_app
        else:  # not what we computed last: do not trust the cache
            self._last_view_key, self._last_app_states = None, {}

    def schedule_recompute(self) -> None:
        self._recompute.set()

    def _recompute_loop(self) -> None:
        while True:
            self._recompute.wait()
            hub.sleep(0.01)  # coalesce bursts of port events
            self._recompute.clear()
            try:
                start = time.monotonic()
                states = self.compute(self.view())
                self.last_compute_seconds = time.monotonic() - start
                self.push(states)
                self._remember(states)
                self.compute_error = None
            except Exception as exc:  # keep what the switches have
                self.compute_error = f"{type(exc).__name__}: {exc}"
                LOG.exception("recompute failed; switches keep their current state")

    def push(self, states: dict[str, SwitchState]) -> None:
        self.generation += 1
        for name, st in states.items():
            prog = self.programmers[name]
            if st.flows != prog.desired.flows or st.groups != prog.desired.groups or st.meters != prog.desired.meters:
                prog.set_desired(st)
            else:
                prog.desired.owners = st.owners

    def try_intent(self, app: FabricApp, candidate) -> dict[str, SwitchState]:
        """Compute the fabric with ``candidate`` as ``app``'s intent, without applying it.

        Apps call this before committing a REST change, so a change that
        would produce a bad state is refused and nothing is half-applied.
        """
        old = app.intent
        app.intent = candidate
        try:
            return self.compute(self.view(), reuse_for=app.APP_NAME)
        finally:
            app.intent = old

    def commit_intent(self, app: FabricApp, candidate, states: dict[str, SwitchState]) -> None:
        app.intent = candidate
        self.save_intent(app.APP_NAME, app.intent_json())
        self.push(states)
        self._remember(states)

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
            self.programmers[name].connected(dp)
            if name in self.dead:
                self.dead.discard(name)
                self.schedule_recompute()
            self._judge_soon(self.hold_down)
        elif self.datapaths.get(name) is dp:
            del self.datapaths[name]
            self.ports_known.discard(name)
            self.programmers[name].disconnected()
            self.lost[name] = now
            if not self.datapaths:
                self.view_since = None
            LOG.warning("switch %s: control channel lost; its data plane counts as forwarding for %.1f s, "
                        "and after that as long as BFD on one of its links says so", name, self.hold_down)
            self._judge_soon(self.hold_down)

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
        now, changed, later = time.monotonic(), False, None
        for name, since in self.lost.items():
            alive = self.forwards(name)
            if name in self.dead:
                if alive:  # BFD says it forwards again (its channel is still gone)
                    self.dead.discard(name)
                    changed = True
                    LOG.warning("switch %s: BFD says its data plane forwards again", name)
                continue
            wait = self.hold_down - (now - max(since, self.view_since))
            if wait > 0:
                later = wait if later is None else min(later, wait)
            elif not alive:
                self.dead.add(name)
                changed = True
                LOG.warning("switch %s: no control channel for %.1f s and no BFD link says it forwards: "
                            "routing around it", name, now - since)
        if later is not None:
            self._judge_soon(later)
        if changed:
            self.schedule_recompute()

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
        if name is None:
            return
        ofp = ev.msg.datapath.ofproto
        declared = {p.port for p in self.topology.switch_ports(name)}
        present = set()
        changed = False
        for port in ev.msg.body:
            if port.port_no not in declared:
                continue
            present.add(port.port_no)
            changed |= self._set_port(name, port.port_no, self.port_live(name, ofp, port))
        for port_no in declared - present:  # declared but missing on the switch
            changed |= self._set_port(name, port_no, False)
        self.ports_known.add(name)
        if changed:
            self.schedule_recompute()
        if self.lost:
            self._judge()

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        name = self._switch_of(msg.datapath)
        if name is None:
            return
        ofp = msg.datapath.ofproto
        live = msg.reason != ofp.OFPPR_DELETE and self.port_live(name, ofp, msg.desc)
        if self._set_port(name, msg.desc.port_no, live):
            LOG.info("port %s:%d is %s", name, msg.desc.port_no, "up" if live else "down")
            self.schedule_recompute()
            if self.lost:
                self._judge()

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
        try:
            app.packet_in(pkt)
            self.packet_ins["handled"] += 1
        except ValueError as exc:  # BadPacket and friends: count, never crash the loop
            self.packet_ins["bad"] += 1
            LOG.debug("%s: bad packet-in on %s:%d: %s", app.APP_NAME, name, pkt.in_port, exc)

    def packet_out(self, switch: str, port: int, data: bytes) -> bool:
        dp = self.datapaths.get(switch)
        if dp is None:
            return False
        parser, ofp = dp.ofproto_parser, dp.ofproto
        dp.send_msg(parser.OFPPacketOut(datapath=dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                        actions=[parser.OFPActionOutput(port, 0)], data=data))
        return True

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
        api.add("GET", "/v1/switches", lambda r: [self._switch_json(n) for n in self.topology.switches],
                "Switches: connection, sync state, entry counts")
        api.add("GET", "/v1/switches/{name}", lambda r: self._switch_json(self._switch_or_404(r.params["name"])),
                "One switch")
        api.add("GET", "/v1/switches/{name}/flows", self._flows_json,
                "Desired flows of a switch (?app=NAME filters by owner)")
        api.add("GET", "/v1/switches/{name}/desired", self._desired_json,
                "Desired flows/groups/meters in ovs-ofctl syntax (used by `ovslab flows --diff`)")
        api.add("POST", "/v1/switches/{name}/resync", self._resync,
                "Re-read the switch and repair any difference from the desired state", status=202)
        api.add("GET", "/v1/apps", lambda r: {n: {"app_id": a.app_id, "intent": a.intent_json()}
                                              for n, a in self.apps.items()}, "Loaded apps and their intent")
        api.add("GET", "/v1/apps/{app}/intent", self._intent_json, "One app's intent")
        api.add("PUT", "/v1/apps/{app}/intent", self._put_intent,
                "Replace an app's intent: validated, applied to every switch at once, persisted "
                "(202: stored, not yet on every switch)",
                body=PerParam("app", lambda: {n: a.IntentModel for n, a in self.apps.items()}), also=(202,))
        api.add("GET", "/v1/cookies", lambda r: self._cookies_json(), "Object names by cookie")
        api.add("GET", "/v1/pipeline", lambda r: pipeline.describe(), "The table plan and priority bands")
        api.add("GET", "/v1/health", lambda r: self._health(), "Controller health and packet-in counters")

    def _health(self) -> dict:
        return {"compute_error": self.compute_error, "generation": self.generation,
                "last_compute_seconds": round(self.last_compute_seconds, 4),
                "packet_ins": dict(self.packet_ins,
                                   rate_limited_by_switch={n: b.dropped for n, b in self.buckets.items()}),
                "switches_connected": sorted(self.datapaths),
                "switches_lost": {n: round(time.monotonic() - t, 1) for n, t in sorted(self.lost.items())},
                "switches_dead": sorted(self.dead),
                "switches_silent": sorted(n for n in self.datapaths if self._channel(n)["state"] == "silent"),
                "all_synced": all(p.synced for p in self.programmers.values()),
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

    def _switch_json(self, name: str) -> dict:
        sw = self.topology.switches[name]
        return {"name": name, "dpid": sw.dpid, "bridge": sw.bridge, **self.programmers[name].status(),
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
        before = {n: p.version for n, p in self.programmers.items()}
        self.commit_intent(app, candidate, states)
        changed = [n for n, p in self.programmers.items() if p.version != before[n]]
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
        while timeout > 0 and time.monotonic() < deadline:
            if all(self.programmers[n].synced for n in switches):
                return {}
            hub.sleep(0.01)
        pending = {}
        for n in switches:
            prog, channel = self.programmers[n], self._channel(n)
            if prog.synced:
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



