"""NVMe-oF zoning: the fabric reads each NVMe/TCP Connect and only then lets the connection through.

Launch together with the base fabric (which routes the storage network)::

    ryu-manager --fabric-topology topologies/nvme_zoning.yaml ryu_apps/fabric.py ryu_apps/nvme_zoning.py

The intent (``ryu_apps/functions/nvme_zoning/intent.py``) is the name server's
zoning: subsystems and their listeners, host NQNs (optionally bound to a
declared host), zone groups of zones.  The flows (``flows.py`` there) send
every segment of a connection to a listener that is not admitted yet to this
app, at both edges; ``follow.py`` follows it up to the Fabrics Connect and
:func:`~ryu_apps.functions.nvme_zoning.model.decide` decides:

* admitted: the pair is saved (runtime state ``nvme_zoning.admitted``), its
  flows computed (one part per connection), and the held segments released in
  order into the forward table; the connection never reaches the controller
  again (but for the copy of the host's FIN or RST, which ends it);
* refused: the held segments are dropped (the Connect never reaches the
  target), both ends get a reset, the attempt is logged with both NQNs.

A zone change that takes a pair away revokes its live connections: their
flows go at once, each end gets an out-of-window ACK, answers it with its own
sequence numbers (RFC 5961), and the answer is turned into an exact reset.

In a controller cluster the app has a leader (``CLUSTER = "leader"``): every
punt reaches it, it alone follows connections, and it publishes the admitted
pairs before it releases anything; every instance computes its switches'
flows from them.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Hashable, Iterable

from os_ken.lib import hub
from pydantic import ValidationError

from ryu_apps.framework import cookies
from ryu_apps.framework.app import WHOLE, FabricApp, FabricView, IntentError, PacketIn
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import FORWARD, PipelineError
from ryu_apps.framework.rest import ApiError, remove_item, upsert_item, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.framework.store import StoreError
from ryu_apps.functions.nvme_zoning import segment
from ryu_apps.functions.nvme_zoning.flows import (
    APP,
    K_END,
    K_PUNT,
    KIND_NAMES,
    Admitted,
    base_flows,
    conn_id,
    connection_flows,
)
from ryu_apps.functions.nvme_zoning.follow import Follower, Pending, Step, reset_sender
from ryu_apps.functions.nvme_zoning.intent import (
    HostNqnSpec,
    NvmeZoningIntent,
    SubsystemSpec,
    ZoneGroupSpec,
    ZoneSpec,
)
from ryu_apps.functions.nvme_zoning.pdu import check_nqn
from ryu_apps.functions.nvme_zoning.model import Listener, decide, discovery_entries, listeners, validate
from ryu_apps.packet.parse import BadPacket

LOG = logging.getLogger(__name__)

#: the part with the steering, fabric-port and punt flows (every other part is one admitted connection)
BASE = "*base"
#: the store collection of admitted connections (the leader writes before it releases a Connect)
SHARED = "nvme_zoning.admitted"
#: how long a connection whose host sent FIN keeps its pair (the close handshake goes through)
CLOSING_S = 2.0
#: how long a revoked connection's record answers its ends' segments with resets
REVOKED_S = 10.0
#: how long a REST change waits for the switches (?wait=1)
SYNC_WAIT_MAX = 30.0


class NvmeZoning(FabricApp):
    """The NVMe-oF zoning app (``ryu_apps/nvme_zoning.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = NvmeZoningIntent
    #: the flows depend on the topology file, the intent and the admitted connections only
    INPUTS = frozenset()
    CLUSTER = "leader"
    #: whole frames: the follower reads every byte of a pending connection
    PACKET_IN_BYTES = 0xFFFF

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            validate(self.core.topology, self.intent)
        except IntentError as exc:
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field, exc.status) from None
        lim = self.intent.limits
        self.follower = Follower(lim.held_bytes, lim.pending_per_host, lim.pending_per_switch, lim.connect_timeout_s)
        self.counters: Counter = Counter()
        #: refused attempts and revocations, newest last (GET /v1/nvme/attempts)
        self.attempts: deque = deque(maxlen=1000)
        #: admitted connections by key (runtime state, published in the store), and by name (the part)
        self.admitted: dict[tuple, Admitted] = {}
        self.by_ident: dict[str, Admitted] = {}
        #: key -> until when (monotonic): connections whose host sent FIN, or that were revoked
        self.closing: dict[tuple, float] = {}
        self.revoked: dict[tuple, float] = {}
        self._index()
        try:
            for data in self.core.load_items(SHARED).values():
                c = _admitted_of(data)
                if c is not None:
                    self._keep(c)
        except StoreError as exc:
            LOG.warning("nvme zoning: admitted connections not read from the store (%s)", exc)
        self.threads.append(hub.spawn(self._clock_loop))

    def _index(self) -> None:
        """Listeners by (address, port), declared hosts by (switch, port): what every punt is checked against."""
        self.listeners: dict[tuple[str, int], Listener] = {
            (lst.addr, lst.port): lst for lst in listeners(self.core.topology, self.intent)}
        self.host_at = {(h.switch, h.port): h for h in self.core.topology.hosts.values()}

    def _keep(self, c: Admitted) -> None:
        self.admitted[c.key] = c
        self.by_ident[c.ident] = c

    def _drop(self, key: tuple) -> Admitted:
        c = self.admitted.pop(key)
        self.by_ident.pop(c.ident, None)
        return c

    # -- the desired state (pure) -------------------------------------------------------
    def parts(self, intent: NvmeZoningIntent) -> Iterable[Hashable]:
        """The base part and one part per admitted connection (its name)."""
        return (BASE, *self.by_ident)

    def compute(self, view: FabricView, intent: NvmeZoningIntent, part: Hashable = WHOLE) -> dict[str, SwitchState]:
        topo = view.topology
        if part in (BASE, WHOLE):
            validate(topo, intent)
        out: dict[str, SwitchState] = {}
        if part in (BASE, WHOLE):
            out = base_flows(topo, listeners(topo, intent), intent.limits.punt_rate)
        for c in (self.admitted.values() if part == WHOLE else filter(None, [self.by_ident.get(part)])):
            for sw, st in connection_flows(c).items():
                out.setdefault(sw, SwitchState()).merge(st)
        return out

    def on_intent_change(self) -> None:
        """New zoning: new bounds and listeners; pairs it no longer allows are revoked."""
        lim = self.intent.limits
        self.follower.configure(lim.held_bytes, lim.pending_per_host, lim.pending_per_switch, lim.connect_timeout_s)
        self._index()
        if self.core.leads(self):
            self._revoke_unzoned("zoning changed")

    # -- packet-ins -----------------------------------------------------------------------------
    def on_packet_in(self, pkt: PacketIn) -> None:
        """A punted segment (or the copy of an admitted connection's FIN/RST)."""
        kind = cookies.decode(pkt.cookie).kind
        try:
            seg = segment.parse(pkt.data)
        except BadPacket as exc:
            self.counters["bad_frames"] += 1
            LOG.debug("nvme zoning: bad frame from %s:%d: %s", pkt.switch, pkt.in_port, exc)
            return
        now = time.monotonic()
        if kind == K_END:
            self._end(seg, now)
            return
        if kind != K_PUNT:
            self.counters["ignored"] += 1
            return
        if (seg.dst, seg.dport) in self.listeners:
            self._from_host(pkt, seg, now)
        elif (seg.src, seg.sport) in self.listeners:
            self._from_target(pkt, seg, now)
        else:
            self.counters["not_a_listener"] += 1

    def _from_host(self, pkt: PacketIn, seg: segment.Segment, now: float) -> None:
        key = seg.key
        if key in self.admitted:  # its pair is on its way to the switches: through, in order
            self.counters["released_admitted"] += 1
            self._release(pkt.switch, pkt.in_port, pkt.data)
            return
        if key in self.revoked:
            self._reset(pkt, seg, "revoked")
            return
        host = self.host_at.get((pkt.switch, pkt.in_port))
        if host is None or host.mac != seg.eth_src or seg.src not in {str(a) for a in host.addresses}:
            self.counters["spoofed"] += 1  # only a declared host, from its own port, MAC and address
            return
        step = self.follower.from_host(seg, pkt.data, pkt.switch, pkt.in_port, now)
        self._do(step, pkt, seg, host.name)

    def _from_target(self, pkt: PacketIn, seg: segment.Segment, now: float) -> None:
        lst = self.listeners[(seg.src, seg.sport)]
        key = (seg.dst, seg.dport, seg.src, seg.sport)
        if (pkt.switch, pkt.in_port) != (lst.switch, lst.switch_port):
            self.counters["spoofed"] += 1  # a listener's address from anywhere but its host's port
            return
        if key in self.admitted:
            self.counters["released_admitted"] += 1
            self._release(pkt.switch, pkt.in_port, pkt.data)
            return
        if key in self.revoked:
            self._reset(pkt, seg, "revoked")
            return
        step = self.follower.from_target(seg)
        if step.action in ("pass", "end"):
            self._release(pkt.switch, pkt.in_port, pkt.data)
        elif not seg.has(segment.RST):
            self.counters["target_segment_unknown"] += 1  # (a refused connection's last words)

    def _do(self, step: Step, pkt: PacketIn, seg: segment.Segment, host: str) -> None:
        """Carry out what the follower said about a host segment."""
        act = step.action
        self.counters[f"step_{act}"] += 1
        if act in ("pass", "end"):
            self._release(pkt.switch, pkt.in_port, pkt.data)
        elif act == "unknown":
            if not seg.has(segment.RST):
                self._reset(pkt, seg, "a connection the fabric never saw open")
        elif act == "refuse":
            self._refused(step, host, None)
        elif act == "connect":
            p, c = step.pending, step.pending.connect
            lst = self.listeners[(p.key[2], p.key[3])]
            why = decide(self.intent, lst, host, c.hostnqn, c.subnqn)
            if why:
                self._refused(self.follower.refuse(p, why), host, c)
            else:
                self._admit(p, host, c.hostnqn, c.subnqn, c.qid)
        elif act == "tls":
            p = step.pending
            lst = self.listeners[(p.key[2], p.key[3])]
            if lst.tls == "allow":
                self._admit(p, host, "(tls)", "(tls)", -1)
            else:
                self._refused(self.follower.refuse(p, f"TLS at {lst.addr} port {lst.port}: the fabric cannot read "
                                                      "the Connect, and this listener's policy refuses it"), host, None)

    # -- decisions ----------------------------------------------------------------------------
    def _admit(self, p: Pending, host: str, hostnqn: str, subnqn: str, qid: int) -> None:
        lst = self.listeners[(p.key[2], p.key[3])]
        c = Admitted(p.key[0], p.key[1], p.key[2], p.key[3], hostnqn, subnqn, qid, host, p.switch, p.in_port,
                     p.tseg.eth_src, lst.switch, lst.switch_port, round(time.time(), 3), p.template.hex())
        self._keep(c)
        try:  # written before it is acted on: a follower (or this controller restarted) keeps the pair
            self.core.save_items(SHARED, {c.ident: c.to_json()})
        except StoreError as exc:
            LOG.error("nvme zoning: admitted %s not saved (%s); other instances lag", c.ident, exc)
        try:
            self.core.recompute_now(self, {c.ident})
        except (StateConflict, PipelineError) as exc:
            LOG.error("nvme zoning: the flows of %s were refused: %s", c.ident, exc)
        for frame in self.follower.admit(p):
            self._release(p.switch, p.in_port, frame)
        self.counters["admitted"] += 1
        LOG.info("nvme zoning: admitted %s (%s) -> %s qid %d from %s", c.ident, hostnqn, subnqn, qid, host)

    def _refused(self, step: Step, host: str | None, connect) -> None:
        for switch, port, frame, through in step.resets:
            if through:
                self._release(switch, port, frame)
            else:
                self.core.packet_out(switch, port, frame)
        self.counters["refused"] += 1
        key = step.pending.key if step.pending is not None else None
        entry = {"t": round(time.time(), 3), "event": "refused", "host": host, "why": step.why,
                 "hostnqn": connect.hostnqn if connect is not None else None,
                 "subnqn": connect.subnqn if connect is not None else None,
                 "qid": connect.qid if connect is not None else None,
                 "connection": conn_id(key) if key else None}
        self.attempts.append(entry)
        LOG.warning("nvme zoning: refused %s from %s (%s -> %s): %s", entry["connection"], host,
                    entry["hostnqn"], entry["subnqn"], step.why)

    def _release(self, switch: str, in_port: int, frame: bytes) -> None:
        """Send ``frame`` on as if it had just come in on ``in_port`` and passed the zone table."""
        if not self.core.packet_out(switch, 0, frame, in_port=in_port, table=FORWARD):
            self.counters["release_failed"] += 1

    def _reset(self, pkt: PacketIn, seg: segment.Segment, why: str) -> None:
        """Answer ``seg`` with a reset for its sender, straight out of the port it came in on."""
        if seg.has(segment.RST):
            return
        self.counters[f"reset_{why.split()[0]}"] += 1
        self.core.packet_out(pkt.switch, pkt.in_port, reset_sender(seg, pkt.data))

    # -- ends, revocation, the clock ------------------------------------------------------
    def _end(self, seg: segment.Segment, now: float) -> None:
        """The host of an admitted connection sent FIN (the pair stays while the close completes) or RST."""
        key = seg.key
        if key not in self.admitted:
            return
        if seg.has(segment.RST):
            self._forget([key])
        else:
            self.closing.setdefault(key, now + CLOSING_S)

    def _forget(self, keys: list) -> None:
        """Remove admitted connections: their records (published) and their flows."""
        gone = [self._drop(k) for k in keys if k in self.admitted]
        for k in keys:
            self.closing.pop(k, None)
        if not gone:
            return
        try:
            self.core.save_items(SHARED, {c.ident: None for c in gone})
        except StoreError as exc:
            LOG.error("nvme zoning: removal of %d connections not saved (%s)", len(gone), exc)
        try:
            self.core.recompute_now(self, {c.ident for c in gone})
        except (StateConflict, PipelineError) as exc:
            LOG.error("nvme zoning: removing flows failed: %s", exc)
        self.counters["ended"] += len(gone)

    def _revoke_unzoned(self, why: str) -> list[str]:
        """Revoke every admitted connection the intent no longer allows."""
        now = time.monotonic()
        victims = []
        for key, c in list(self.admitted.items()):
            lst = self.listeners.get((c.addr, c.port))
            reason = "its listener is gone" if lst is None else (
                "" if c.qid < 0 and lst.tls == "allow" else
                "TLS is no longer allowed" if c.qid < 0 else decide(self.intent, lst, c.host, c.hostnqn, c.subnqn))
            if reason:
                victims.append((c, reason))
        if not victims:
            return []
        for c, _ in victims:
            self.revoked[c.key] = now + REVOKED_S
        self._forget([c.key for c, _ in victims])
        # their next segments reach the controller (and are answered with resets) once the pairs
        # are gone from the switches; idle ends are asked to speak up then
        hub.spawn(self._challenge_when_applied, [c for c, _ in victims])
        for c, reason in victims:
            self.attempts.append({"t": round(time.time(), 3), "event": "revoked", "host": c.host, "why": reason,
                                  "hostnqn": c.hostnqn, "subnqn": c.subnqn, "qid": c.qid, "connection": c.ident})
            LOG.warning("nvme zoning: revoked %s (%s -> %s qid %d): %s (%s)", c.ident, c.hostnqn, c.subnqn,
                        c.qid, reason, why)
        self.counters["revoked"] += len(victims)
        return [c.ident for c, _ in victims]

    def _challenge_when_applied(self, victims: list[Admitted]) -> None:
        switches = sorted({sw for c in victims for sw in (c.switch, c.target_switch)})
        self.core.wait_applied(switches, 2.0)
        for c in victims:
            if c.key in self.revoked:
                self._challenge(c)

    def _challenge(self, c: Admitted) -> None:
        """Make both ends of a revoked connection say where they are: an ACK far outside their window
        is answered by an ACK with their own sequence numbers, which the punt turns into a reset."""
        try:
            frame = bytes.fromhex(c.template)
            seg = segment.parse(frame)
        except (ValueError, BadPacket):
            return
        far = seg.seq + 0x40000000
        to_target = segment.reply(frame, seg, seq=far, ack=seg.ack, flags=segment.ACK)
        to_host = segment.reply(frame, seg, seq=seg.ack + 0x40000000, ack=seg.seq, flags=segment.ACK, reverse=True)
        self._release(c.switch, c.in_port, to_target)
        self.core.packet_out(c.switch, c.in_port, to_host)

    def _clock_loop(self) -> None:
        """Connect timeouts, closed connections, old revocations: every 100 ms."""
        while True:
            hub.sleep(0.1)
            if not self.core.leads(self):
                continue
            now = time.monotonic()
            for p in self.follower.expired(now):
                host = self.host_at.get((p.switch, p.in_port))
                self._refused(self.follower.refuse(p, f"no complete Connect within {self.follower.timeout} s"),
                              host.name if host is not None else None, None)
            done = [k for k, until in self.closing.items() if now >= until]
            if done:
                self._forget(done)
            for k in [k for k, until in self.revoked.items() if now >= until]:
                del self.revoked[k]

    def on_store_change(self, change) -> None:
        """The leader admitted or removed connections: compute their flows (a follower)."""
        if self.core.leads(self):
            return
        if change.name == "*":
            try:
                saved = self.core.load_items(SHARED)
            except StoreError:
                return
            self.admitted, self.by_ident = {}, {}
            for c in (_admitted_of(d) for d in saved.values()):
                if c is not None:
                    self._keep(c)
            self.core.invalidate(self)
            return
        if change.name != SHARED or change.key is None:
            return
        old = self.by_ident.get(change.key)
        if old is not None:
            self._drop(old.key)
        if change.text is not None:
            c = _admitted_of(json.loads(change.text))
            if c is not None:
                self._keep(c)
        self.core.invalidate(self, {change.key})

    def on_leadership(self, leading: bool) -> None:
        if leading:
            self._revoke_unzoned("a new leader checks every admitted connection")

    # -- REST -----------------------------------------------------------------------------
    def add_routes(self, api) -> None:
        tag = "nvme"
        api.add("GET", "/v1/nvme", self._get, "The zoning (subsystems, hosts, zone groups), listeners, counters", tag)
        api.add("PUT", "/v1/nvme", self._put, "Replace the whole zoning at once (connections it no longer "
                "allows are revoked)", tag, body=NvmeZoningIntent)
        api.add("PUT", "/v1/nvme/subsystems/{nqn}", lambda r: self._put_nqn(r, "subsystems"),
                "Add or change a subsystem", tag,
                body=SubsystemSpec)
        api.add("DELETE", "/v1/nvme/subsystems/{nqn}",
                lambda r: self._delete_nqn(r, "subsystems", "no subsystem {nqn!r}"),
                "Remove a subsystem (and it from every zone): its connections are reset", tag)
        api.add("PUT", "/v1/nvme/hosts/{nqn}", lambda r: self._put_nqn(r, "hosts"),
                "Add or change a host NQN (its binding)", tag,
                body=HostNqnSpec)
        api.add("DELETE", "/v1/nvme/hosts/{nqn}", lambda r: self._delete_nqn(r, "hosts", "no host {nqn!r} is declared"),
                "Remove a host NQN's declaration (and it from every zone)", tag)
        api.add("PUT", "/v1/nvme/zone-groups/{group}", self._put_group, "Add or replace a zone group", tag,
                body=ZoneGroupSpec)
        api.add("DELETE", "/v1/nvme/zone-groups/{group}", self._delete_group, "Remove a zone group", tag)
        api.add("PUT", "/v1/nvme/zone-groups/{group}/zones/{zone}", self._put_zone, "Add or replace a zone", tag,
                body=ZoneSpec)
        api.add("DELETE", "/v1/nvme/zone-groups/{group}/zones/{zone}", self._delete_zone, "Remove a zone", tag)
        api.add("DELETE", "/v1/nvme/zone-groups/{group}/zones/{zone}/hosts/{nqn}", self._revoke_host,
                "Take a host out of a zone: its connections to the zone's subsystems are reset at once", tag)
        api.add("GET", "/v1/nvme/connections", self._connections, "Admitted and pending connections", tag)
        api.add("GET", "/v1/nvme/attempts", self._attempts, "Refused attempts and revocations, newest last", tag)
        api.add("GET", "/v1/nvme/discovery", self._discovery,
                "The discovery log a host may see (?hostnqn=): the listeners of its zoned subsystems", tag)

    def _apply(self, data: dict, r) -> dict:
        """Validate ``data`` as the whole new zoning, apply it atomically (or change nothing)."""
        t0 = time.monotonic()
        try:
            candidate = NvmeZoningIntent.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        try:
            validate(self.core.topology, candidate)
        except IntentError as exc:
            raise ApiError(exc.status, str(exc), exc.field) from None
        try:
            result = self.core.try_intent(self, candidate, parts={BASE})
        except (StateConflict, PipelineError, IntentError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        before = set(self.revoked)
        self.core.commit_intent(self, candidate, result)   # (on_intent_change revokes)
        out = {"revoked": sorted(conn_id(k) for k in set(self.revoked) - before),
               "seconds": {"apply": round(time.monotonic() - t0, 4)}}
        if r.query.get("wait") in ("1", "true", "yes"):
            connected = [s for s in self.core.topology.switches if self.core.is_connected(s)]
            out["synced"] = not self.core.wait_applied(connected, SYNC_WAIT_MAX)
        return out

    def _data(self) -> dict:
        return self.intent.model_dump(mode="json")

    def _get(self, r):
        return {"intent": self._data(), "listeners": [_listener_json(lst) for lst in self.listeners.values()],
                "admitted": len(self.admitted), "pending": len(self.follower.pending),
                "counters": dict(self.counters), "kinds": KIND_NAMES,
                "cookie": f"{cookies.make(APP, 0):#018x}/0xff00000000000000"}

    def _put(self, r):
        return self._apply(r.body.model_dump(mode="json"), r)

    def _put_nqn(self, r, collection: str) -> dict:
        """PUT of a subsystem or host NQN (``collection``): the body must name the path's NQN."""
        nqn, spec = r.params["nqn"], r.body
        if spec.nqn != nqn:
            raise ApiError(422, f"nqn: the body names {spec.nqn!r}, the path {nqn!r}", "nqn")
        data = self._data()
        upsert_item(data[collection], "nqn", spec.model_dump(mode="json"))
        return self._apply(data, r)

    def _delete_nqn(self, r, collection: str, missing: str) -> dict:
        """DELETE of a subsystem or host NQN: it also leaves every zone (``collection`` names the
        zones' list of it too)."""
        nqn = r.params["nqn"]
        data = self._data()
        remove_item(data[collection], "nqn", nqn, missing.format(nqn=nqn))
        for g in data["zone_groups"]:
            for z in g["zones"]:
                z[collection] = [x for x in z[collection] if x != nqn]
        return self._apply(data, r)

    def _group(self, data: dict, name: str) -> dict:
        for g in data["zone_groups"]:
            if g["name"] == name:
                return g
        raise ApiError(404, f"no zone group {name!r}; zone groups: {[g['name'] for g in data['zone_groups']][:50]}")

    def _put_group(self, r):
        name, spec = r.params["group"], r.body
        if spec.name != name:
            raise ApiError(422, f"name: the body names {spec.name!r}, the path {name!r}", "name")
        data = self._data()
        upsert_item(data["zone_groups"], "name", spec.model_dump(mode="json"))
        return self._apply(data, r)

    def _delete_group(self, r):
        data = self._data()
        remove_item(data["zone_groups"], "name", r.params["group"], f"no zone group {r.params['group']!r}")
        return self._apply(data, r)

    def _put_zone(self, r):
        name, spec = r.params["zone"], r.body
        if spec.name != name:
            raise ApiError(422, f"name: the body names {spec.name!r}, the path {name!r}", "name")
        data = self._data()
        upsert_item(self._group(data, r.params["group"])["zones"], "name", spec.model_dump(mode="json"))
        return self._apply(data, r)

    def _delete_zone(self, r):
        data = self._data()
        g = self._group(data, r.params["group"])
        remove_item(g["zones"], "name", r.params["zone"], f"zone group {g['name']} has no zone {r.params['zone']!r}")
        return self._apply(data, r)

    def _revoke_host(self, r):
        data = self._data()
        g = self._group(data, r.params["group"])
        zone = next((z for z in g["zones"] if z["name"] == r.params["zone"]), None)
        if zone is None:
            raise ApiError(404, f"zone group {g['name']} has no zone {r.params['zone']!r}")
        if r.params["nqn"] not in zone["hosts"]:
            raise ApiError(404, f"zone {zone['name']} does not hold host {r.params['nqn']!r}")
        zone["hosts"] = [h for h in zone["hosts"] if h != r.params["nqn"]]
        return self._apply(data, r)

    def _connections(self, r):
        now = time.monotonic()
        return {"admitted": [{**c.to_json(), "id": c.ident, "closing": c.key in self.closing}
                             for c in sorted(self.admitted.values(), key=lambda c: c.key)],
                "pending": [{"connection": conn_id(p.key), "switch": p.switch, "in_port": p.in_port,
                             "age_s": round(now - p.started, 3), "bytes": len(p.stream), "held": p.held_bytes,
                             "tls": p.tls} for p in self.follower.pending.values()],
                "revoked": sorted(conn_id(k) for k in self.revoked)}

    def _attempts(self, r):
        return list(self.attempts)

    def _discovery(self, r):
        hostnqn = r.query.get("hostnqn", "")
        why = check_nqn(hostnqn)
        if why:
            raise ApiError(422, f"hostnqn: {why}", "hostnqn")
        return discovery_entries(self.core.topology, self.intent, hostnqn)


def _listener_json(lst: Listener) -> dict:
    return {"addr": lst.addr, "port": lst.port, "host": lst.host, "switch": lst.switch,
            "switch_port": lst.switch_port, "subsystems": list(lst.subsystems), "tls": lst.tls}


def _admitted_of(data: dict) -> Admitted | None:
    try:
        return Admitted(**{k: data[k] for k in Admitted.__dataclass_fields__ if k in data})
    except (TypeError, KeyError):
        LOG.warning("nvme zoning: a saved connection is unreadable: %s", str(data)[:200])
        return None
