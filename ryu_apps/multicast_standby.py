"""Multicast with standby forwarding paths and suppression on the active path.

Launch with the base fabric::

    ryu-manager --fabric-topology topologies/multicast_standby.yaml \\
        ryu_apps/fabric.py ryu_apps/multicast_standby.py

What it does (the intent is :mod:`ryu_apps.functions.multicast_standby.intent`, the state
machine :mod:`~ryu_apps.functions.multicast_standby.model`, the flows, one part per channel,
:mod:`~ryu_apps.functions.multicast_standby.flows`; this module is the thin app: hooks,
timers, REST):

* receivers join with real IGMP (v1/v2/v3, any-source and source-specific);
  the edge switch punts IGMP to the controller (metered, bounded parsing of
  :mod:`ryu_apps.functions.multicast_standby.wire`); the controller is the querier
  (general queries to every host port) so memberships of hosts that vanish
  expire;
* a source is learned from its first packets (punted, metered); the channel
  (S, G) gets an active tree from the source's switch to every destination
  device along shortest paths, replicated at branch points by ALL groups;
* each destination device sends a standby-path establishment request (a raw
  Ethernet frame, ethertype 0x88b5) out of its non-active upstream ports; it
  is punted and handled at every switch it reaches: a switch on that
  destination's active path suppresses it, any other joins (installs standby
  state) and forwards it toward the source; the source's switch completes the
  path and feeds the stream, VLAN-tagged, down it too;
* the destination discards the standby copy through a fast-failover group
  (its own active in-port down: the datapath switches at once); on a failure
  further up (port-status of any switch on the path, a switch lost, or the
  active stream silent while the standby flows) the controller flips the
  destination to the standby copy, which becomes the active path, and asks for
  a new standby path;
* ``protection: restore`` is the baseline: no standby paths, the tree is
  recomputed from the live topology after a failure.

REST under ``/v1/multicast``; the audit of every request under
``/v1/multicast/requests``.

In a controller cluster the app runs on one leader (``CLUSTER = "leader"``): every
switch's master relays the app's packet-ins (IGMP, sources, standby requests) to it,
its queries and requests go out through the switches' masters, and after each change
it publishes the snapshot (members, trees, paths) to etcd; every other instance
restores it and recomputes the channels that changed, so each master programs the
same trees and paths.  A failure's fast flip needs no leader: each master computes it
from the port-status it receives itself.  A new leader starts from the last snapshot
and sends a general query at once, so memberships the old one had not published yet
are learned again.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import defaultdict, deque
from typing import Hashable

from os_ken.lib import hub

from ryu_apps.framework import cookies
from ryu_apps.framework.app import (
    WHOLE,
    FabricApp,
    FabricView,
    PacketIn,
    PortChange,
    SwitchChange,
)
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import MCAST
from ryu_apps.framework.rest import ApiError
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.store import StoreError
from ryu_apps.functions.multicast_standby import flows, model, wire
from ryu_apps.functions.multicast_standby.intent import MulticastIntent, StaticMember  # noqa: F401 - re-exported

LOG = logging.getLogger(__name__)
APP = model.APP
SNAPSHOT = f"{APP}.state"  # <state dir>/multicast_standby.state.json: members, trees, paths
RECOMPUTE_PACE = 4  # recomputes asked for at most every RECOMPUTE_PACE x the last compute time
FULL_EVERY = 0.5    # seconds between reconciles of every channel (timers, expiry, retries)
JOIN_HOLD = 0.1     # seconds the join state of a request in flight may wait for its completion
SAVE_PAUSE = 0.2    # seconds a burst of changes is coalesced into one save (state dir)
PUBLISH_PAUSE = 0.02  # ...into one publication (a cluster: the other masters wait for it)


class MulticastStandby(FabricApp):
    """``ryu_apps/multicast_standby.py``."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = MulticastIntent
    #: whole IGMPv3 reports (hundreds of group records) reach the parser
    PACKET_IN_BYTES = flows.IGMP_PUNT_BYTES
    #: the flows read the health of the channels' paths (ports, dead switches), not the channels
    INPUTS = frozenset({"ports", "switches"})
    #: a standby request crosses many switches: one instance learns, the others follow its snapshot
    CLUSTER = "leader"

    def __init__(self, *args, **kwargs):
        core = kwargs["fabric_core"]
        self.state = model.McastState(core.topology)
        saved = core.load_intent(SNAPSHOT)
        if saved is not None:  # before the first compute: a restart changes no flow
            try:
                self.state.restore(saved, time.monotonic(), time.time())
                LOG.info("restored %d channels and %d memberships", len(self.state.channels),
                         sum(len(g) for g in self.state.members.values()))
            except (ValueError, KeyError, TypeError) as exc:
                LOG.warning("ignoring the saved multicast state: %s", exc)
        super().__init__(*args, **kwargs)
        self._kick = hub.Event()
        self._full = True                           # the next reconcile is of every channel
        self._last_full = 0.0
        self._dirty = False                         # memberships or sources changed: reconcile, save
        self._dirty_parts: set[str] = set()         # ...and these channels' flows with them
        self._dirty_channels: set[tuple[str, str]] = set()  # ...and these channels to reconcile
        self._rc_kick = hub.Event()
        self._held: set[str] = set()                # parts with join state of requests in flight
        self._held_timer = False
        self._stale: set[str] | None = set()        # parts to hand to the core (None: all of them)
        self._save_kick = hub.Event()
        self._counters: dict[tuple, tuple[float, int]] = {}
        self._source_seen: dict[tuple[str, str], tuple[int, float]] = {}
        self._history: dict[tuple, deque] = defaultdict(lambda: deque(maxlen=64))
        self.stats_polls = 0
        self.port_events: deque = deque(maxlen=32)
        self.followed = {"snapshots": 0, "refused": 0, "parts": 0}  # snapshots taken from the leader
        self._followed: tuple[dict, dict] | None = None
        self.threads.append(hub.spawn(self._maintain_loop))
        self.threads.append(hub.spawn(self._recompute_pacer))
        self.threads.append(hub.spawn(self._saver))
        self.threads.append(hub.spawn(self._querier_loop))
        self.threads.append(hub.spawn(self._poll_loop))

    # -- the fabric app contract (pure) -------------------------------------------------
    def parts(self, intent: MulticastIntent) -> list[str]:
        """One part per channel (``S>G``), and ``ingress`` (the punts and steering in table 0)."""
        return flows.parts(self.state)

    def compute(self, view: FabricView, intent: MulticastIntent, part: Hashable = WHOLE) -> dict[str, SwitchState]:
        if part == WHOLE:  # (not one of this app's parts: the whole state, for a caller that asks so)
            return flows.compute(view, intent, self.state)
        return flows.compute_part(view, intent, self.state, part)

    def parts_changed(self, view: FabricView, intent: MulticastIntent, change) -> set[str] | None:
        """The channels with a path whose health the port or switch change flipped."""
        if isinstance(change, PortChange):
            return flows.parts_touching(self.state, view, intent, change.switch, change.port)
        if isinstance(change, SwitchChange) and change.event in ("dead", "alive"):
            return flows.parts_touching(self.state, view, intent, change.switch)
        return set()

    def on_packet_in(self, pkt: PacketIn) -> None:
        kind = (pkt.cookie >> cookies.KIND_SHIFT) & 0xFF
        now = time.monotonic()
        if kind == flows.K_IGMP:
            msg = wire.parse_igmp(pkt.data)
            eff = self.state.igmp(pkt.switch, pkt.in_port, msg, now, self.intent.member_timeout(), self.intent)
            LOG.debug("%s:%d %s", pkt.switch, pkt.in_port, msg.describe())
        elif kind == flows.K_REQ_PUNT:
            req = wire.parse_request(pkt.data)
            eff = self.state.handle_request(pkt.switch, pkt.in_port, req, now, self.core.view())
            self._send(eff)
            if eff.changed:  # join state or a completed path: flows change, nothing else to reconcile
                if self._in_flight(req):
                    self.recompute_later(self._parts(eff))
                else:
                    self.recompute_soon(self._parts(eff))
                self.save_soon()
            return
        elif kind == flows.K_DISCOVER:
            src, grp = wire.mcast_data(pkt.data)
            eff = self.state.source_seen(pkt.switch, pkt.in_port, src, grp, now, self.intent)
            if eff.changed:
                LOG.info("source %s -> %s on %s:%d", src, grp, pkt.switch, pkt.in_port)
        else:
            raise wire.BadPacket(f"packet-in with unknown cookie kind {kind}")
        if eff.changed:  # membership or sources changed: trees and requests follow in reconcile
            self._dirty = True
            self._dirty_parts |= self._parts(eff)
            self._dirty_channels |= eff.channels
            self._kick.set()  # (only those channels: a join costs its channel, not the whole state)

    @staticmethod
    def _parts(eff: model.Effects) -> set[str]:
        return {flows.part_of(k) for k in eff.channels}

    def kick(self) -> None:
        """Reconcile every channel soon (the view changed, a path went silent, a switch came)."""
        self._full = True
        self._kick.set()

    def _send(self, eff: model.Effects) -> None:
        for switch, port, frame in eff.sends:
            if not self.core.packet_out(switch, port, frame):
                LOG.warning("cannot send on %s:%d: switch not connected", switch, port)

    # -- loops ---------------------------------------------------------------------------
    def _maintain_loop(self) -> None:
        while True:
            self._kick.wait(timeout=max(0.0, self._last_full + FULL_EVERY - time.monotonic()))
            self._kick.clear()
            if not self.core.leads(self):
                continue  # the leader reconciles; this instance follows its snapshots
            try:
                self.maintain(time.monotonic())
            except Exception:  # keep the loop; the state is left as it was before the failing step
                LOG.exception("multicast reconcile failed")

    def maintain(self, now: float) -> None:
        """One reconcile: of every channel every FULL_EVERY s and after a kick; after a membership
        or source change of only the channels it named (a join among 100 x 10 destinations: its
        own channel, 0.1 ms, where every channel takes 15-45 ms of the hub)."""
        full = self._full or now - self._last_full >= FULL_EVERY
        if full:
            self._full, self._last_full = False, now
        dirty, self._dirty = self._dirty, False
        parts, self._dirty_parts = self._dirty_parts, set()
        channels, self._dirty_channels = self._dirty_channels, set()
        in_flight = sum(ds.pending is not None for ch in self.state.channels.values()
                        for ds in ch.dests.values())
        budget = max(0, self.intent.requests_in_flight - in_flight)
        if not self.core.all_synced():
            budget = 0  # active trees first: ask for standby paths once the switches hold them
        eff = self.state.reconcile(now, self.core.view(), self.intent, request_budget=budget,
                                   only=None if full else channels, pause=_pause if full else None)
        self._send(eff)
        if eff.changed or dirty:
            self.recompute_soon(parts | self._parts(eff))
            self.save_soon()

    def _in_flight(self, req: wire.StandbyRequest) -> bool:
        """Is the request still on its way (a switch joined it; the source's switch has not completed it)?"""
        ch = self.state.channels.get((req.source, req.group))
        dest = self.state.switch_of(req.dest_device)
        ds = ch.dests.get(dest) if ch is not None and dest is not None else None
        return ds is not None and ds.pending is not None and ds.pending.request_id == req.request_id

    def recompute_later(self, parts: set[str]) -> None:
        """The join state of a request in flight: for the switches only once the request completes
        (then the path replaces it) or JOIN_HOLD s have passed, whichever comes first.

        No tagged copy flows before the source's switch completes the path, so join state
        matters to the data plane only from then on; the request's hops, each a packet-in,
        are not held up behind a recompute and a sync wave per hop (a join among 100 x 10
        destinations: six hops, one sync of the completed path instead of seven)."""
        self._held |= parts
        if not self._held_timer:
            self._held_timer = True
            hub.spawn_after(JOIN_HOLD, self._release_held)

    def _release_held(self) -> None:
        self._held_timer = False
        if self._held:
            self.recompute_soon(set())

    def recompute_soon(self, parts: set[str] | None = None) -> None:
        """Tell the core these parts (channels; None: all) are stale, at most every
        RECOMPUTE_PACE x this app's last compute: at scale a compute takes a while, and a
        controller that recomputes back to back has no time left for the packet-ins that
        build the paths."""
        parts = parts if parts is None else parts | self._held  # held join state goes with it
        self._held = set()
        if parts is None:
            self._stale = None
        elif self._stale is not None:
            self._stale |= parts
        self._rc_kick.set()

    def _recompute_pacer(self) -> None:
        last = 0.0
        while True:
            self._rc_kick.wait()
            gap = max(0.0, RECOMPUTE_PACE * self.core.compute_seconds(self) - (time.monotonic() - last))
            if gap:
                hub.sleep(gap)
            self._rc_kick.clear()
            parts, self._stale = self._stale, set()
            last = time.monotonic()
            if parts is None or parts:
                self.core.invalidate(self, parts)

    def save_soon(self) -> None:
        """Persist trees, paths and members shortly (coalesced): a restart then changes nothing."""
        self._save_kick.set()

    def _saver(self) -> None:
        took = 0.0
        while True:
            fired = self._save_kick.wait(timeout=10.0)
            if fired:  # coalesce a burst of changes
                hub.sleep(max(PUBLISH_PAUSE if self.core.clustered else SAVE_PAUSE, 10 * took))
            elif not self.state.members:
                continue  # (membership refreshes move expiry times: saved every 10 s)
            self._save_kick.clear()
            if not self.core.persistent or not self.core.leads(self):
                continue
            t0 = time.monotonic()
            try:
                self.core.save_intent(SNAPSHOT, self.state.snapshot(t0, time.time(), pause=_pause))
            except StoreError as exc:  # etcd without quorum: the switches keep what they have; retry
                LOG.warning("cannot publish the multicast state: %s", exc)
                hub.sleep(1.0)
                self._save_kick.set()
            except OSError:
                LOG.exception("cannot save the multicast state")
            took = time.monotonic() - t0

    def _querier_loop(self) -> None:
        hub.sleep(1.0)
        while True:
            interval = self.intent.query_interval
            if interval > 0 and self.core.leads(self):
                self.query_all()
            hub.sleep(interval if interval > 0 else 5.0)

    def query_all(self, switches=None) -> int:
        it = self.intent
        frame = wire.igmp_query(it.querier_mac, it.querier_ip, it.query_response, it.robustness,
                                it.query_interval or 125)
        sent = 0
        for h in self.core.topology.hosts.values():
            if switches is not None and h.switch not in switches:
                continue
            if h.ipv4 is not None and self.core.packet_out(h.switch, h.port, frame):
                sent += 1
        self.state.counters["igmp_queries_sent"] += sent
        return sent

    def _poll_loop(self) -> None:
        """Flow counters: the destinations' active and standby ends (the silence detector), every
        poll_ms; the sources' first-hop flows (source expiry), every source_timeout / 4."""
        last_sources = 0.0
        while True:
            hub.sleep(self.intent.poll_ms / 1000.0)
            if not self.core.leads(self):
                continue
            now = time.monotonic()
            wanted = set()
            if self.intent.silence_ms > 0 and self.intent.protection == "standby":
                for ch in self.state.channels.values():
                    for d, ds in ch.dests.items():
                        if ds.standby is not None:
                            wanted.add(d)
            if self.intent.source_timeout > 0 and now - last_sources >= self.intent.source_timeout / 4:
                last_sources = now
                wanted |= {ch.switch for ch in self.state.channels.values()}
                self._expire_sources(now)
            for sw in sorted(wanted, key=model.natural):
                if self.core.request_stats(self, sw, _mcast_flow_stats):
                    self.stats_polls += 1

    def _expire_sources(self, now: float) -> None:
        """Forget channels whose source sent nothing for source_timeout (its first-hop flow stood still)."""
        gone = []
        for key in [k for k in self._source_seen if k not in self.state.channels]:
            del self._source_seen[key]
        for key, ch in list(self.state.channels.items()):
            c = self._counters.get((ch.switch, ch.source, ch.group, ch.port, 0))
            seen = self._source_seen.get(key)
            if c is None:
                if seen is None:
                    self._source_seen[key] = (-1, now)
                continue
            if seen is None or seen[0] != c[1]:
                self._source_seen[key] = (c[1], now)
            elif now - seen[1] > self.intent.source_timeout:
                gone.append(ch)
        for ch in gone:
            self.state.audit.event("source-expired", ch, ch.switch,
                                   f"no packet from {ch.source} for {self.intent.source_timeout:g} s")
            self.state.forget_source(ch.key)
            self._source_seen.pop(ch.key, None)
            self.state.counters["sources_expired"] += 1
        if gone:
            self.save_soon()
            self.recompute_soon({flows.part_of(ch.key) for ch in gone})

    # -- hooks the core calls (after it updated the view) -------------------------------------
    def on_port_change(self, change: PortChange) -> None:
        if change.reason == "desc":  # the port list after a connect: reconcile sees what it says
            if change.changed:
                self.kick()
            return
        LOG.debug("port-status %s:%d %s up=%s live=%s usable=%s", change.switch, change.port, change.reason,
                  change.up, change.live, change.usable)
        received, t0 = time.time(), time.monotonic()
        # the core's verdict (a port it does not know of is never down in its view)
        live = change.usable or (change.switch, change.port) not in self.core.topology.ports
        computed = False
        if not live and change.changed:
            # a failure: the pure compute already flips every destination whose active path broke
            # to its standby copy (one group change each); hand the channels whose paths it touched
            # to the programmers now rather than after the core's coalescing pause (none: the far
            # end of a link already seen down changes no path's health)
            parts = flows.parts_touching(self.state, self.core.view(), self.intent, change.switch, change.port)
            if parts is None or parts:
                self.recompute_now(parts)
                computed = True
        elif live:
            self.state.topology_improved(t0)
        entry = {"switch": change.switch, "port": change.port, "live": live, "received": received,
                 "recomputed": computed, "compute_ms": round((time.monotonic() - t0) * 1000, 2)}
        self.port_events.append(entry)
        if computed:
            hub.spawn(self._watch_sync, entry, t0)
        if live:
            self.kick()
        else:  # let the programmers send the flip before promotion and new requests
            hub.spawn_after(0.02, self.kick)

    def _watch_sync(self, entry: dict, t0: float) -> None:
        """Record when every switch holds the state computed for a failure (for the benchmark)."""
        for _ in range(500):
            if self.core.all_synced():
                entry["synced_ms"] = round((time.monotonic() - t0) * 1000, 2)
                return
            hub.sleep(0.001)

    def recompute_now(self, parts: set[str] | None = None) -> None:
        """Hand the programmers these parts of this app's state (None: all) at once.

        A failure flips destinations to their standby copies: only the channels whose paths
        the failure touched change, so only they are recomputed (pure) and swapped into each
        switch's desired state; the core's own recompute of the same parts (dirtied by the
        port change) follows and finds them in place.
        """
        try:
            self.core.recompute_now(self, parts)
        except Exception:  # the core's loop computes everything anyway, and reports what is wrong
            LOG.exception("fast failover push failed")
            self.core.invalidate(self)

    def on_switch_change(self, change: SwitchChange) -> None:
        if change.event == "connected":
            hub.spawn(self._query_later, change.switch)
        self.kick()

    def _query_later(self, switch: str) -> None:
        hub.sleep(1.0)  # the IGMP punt flows are in place by then
        self.state.topology_improved(time.monotonic())
        if self.intent.query_interval > 0 and self.core.leads(self):
            self.query_all({switch})
        self.kick()

    # -- a controller cluster -----------------------------------------------------------
    def on_leadership(self, leading: bool) -> None:
        """Leader now: reconcile everything, and query every host at once (memberships the old
        leader learned but had not published yet are reported again); publish soon."""
        LOG.info("multicast: %s", "leading: reconcile, query every host" if leading else "following the leader")
        if leading:
            self.state.counters["leaderships"] += 1
            hub.spawn_after(0.3, self._lead)  # (the switches' masters know of us by then)

    def _lead(self) -> None:
        if not self.core.leads(self):
            return
        if self.intent.query_interval > 0:
            self.query_all()
        self.kick()
        self.save_soon()

    def on_store_change(self, change) -> None:
        """The leader published its snapshot: take it (a follower) and recompute what changed."""
        if change.name == "*":
            try:
                text = self.core.load_intent(SNAPSHOT)
            except StoreError:
                return
            if text is not None:
                self._follow(text)
            return
        if change.name != SNAPSHOT or change.key is not None or change.text is None:
            return
        self._follow(json.loads(change.text))

    def _follow(self, data: dict) -> None:
        if self.core.leads(self):
            return  # (an old leader's last write: ours is newer)
        now, wall = time.monotonic(), time.time()
        try:
            self.state.restore(data, now, wall)
        except (ValueError, KeyError, TypeError) as exc:
            self.followed["refused"] += 1
            LOG.warning("multicast: the leader's snapshot does not fit here, ignored: %s", exc)
            return
        chans = {(c["source"], c["group"]): c for c in data["channels"]}
        groups: dict[str, list] = {}
        for m in data["members"]:
            groups.setdefault(m["group"], []).append((m["switch"], m["port"], m["mode"], m["sources"], m["version"]))
        groups = {g: sorted(v) for g, v in groups.items()}
        old = self._followed
        self._followed = (chans, groups)
        self.followed["snapshots"] += 1
        if old is None:
            self.core.invalidate(self)
            return
        old_chans, old_groups = old
        moved = {g for g in set(groups) | set(old_groups) if groups.get(g) != old_groups.get(g)}
        parts = {flows.part_of(k) for k in set(chans) | set(old_chans)
                 if chans.get(k) != old_chans.get(k) or k[1] in moved}
        if parts:
            self.followed["parts"] += len(parts)
            self.core.invalidate(self, parts)

    def on_stats_reply(self, switch: str, msg) -> None:
        """Flow counters of this app's mcast-table flows (``_poll_loop`` asked for them)."""
        now = time.monotonic()
        app = cookies.app_id(APP)
        for stat in getattr(msg, "body", ()):
            if getattr(stat, "table_id", None) != MCAST or stat.cookie >> cookies.APP_SHIFT != app:
                continue
            m = stat.match
            try:
                vid = m["vlan_vid"] & 0xFFF if "vlan_vid" in m else 0
                key = (switch, m["ipv4_src"], m["ipv4_dst"], m["in_port"], vid)
            except KeyError:
                continue
            self._counters[key] = (now, stat.packet_count)
        self._check_silence(switch, now)

    def _check_silence(self, switch: str, now: float) -> None:
        limit = self.intent.silence_ms / 1000.0
        for ch in self.state.channels.values():
            ds = ch.dests.get(switch)
            if ds is None or ds.standby is None:
                continue
            active = ch.active_path(switch)
            if active is None:
                continue
            a = self._counters.get((switch, ch.source, ch.group, active.hops[-1].in_port, active.vid))
            s = self._counters.get((switch, ch.source, ch.group, ds.standby.hops[-1].in_port, ds.standby.vid))
            if a is None or s is None:
                continue
            hist = self._history[(ch.source, ch.group, switch, active.vid, ds.standby.vid)]
            hist.append((now, a[1], s[1]))
            # the last time the active count moved
            last_move = hist[0][0]
            for (t0, a0, _), (t1, a1, _) in zip(hist, list(hist)[1:]):
                if a1 != a0:
                    last_move = t1
            old = [h for h in hist if h[0] <= now - limit]
            if not old or now - last_move < limit:
                continue
            base = old[-1]
            if s[1] > base[2] and a[1] == base[1]:
                why = (f"active stream silent for {int((now - last_move) * 1000)} ms while the standby copy "
                       f"kept arriving ({s[1] - base[2]} packets)")
                self.state.silent[(ch.source, ch.group, switch)] = why
                hist.clear()
                LOG.warning("%s %s: %s", ch.name, switch, why)
                self.kick()

    # -- REST --------------------------------------------------------------------------------
    def add_routes(self, api) -> None:
        tag = APP
        api.add("GET", "/v1/multicast", lambda r: self._summary(), "Multicast: mode, counts, counters", tag)
        api.add("GET", "/v1/multicast/groups", lambda r: self._groups_json(), "Groups: members and sources", tag)
        api.add("GET", "/v1/multicast/members", lambda r: self._members_json(), "Every membership, per port", tag)
        api.add("GET", "/v1/multicast/channels", lambda r: self._channels_json(),
                "Channels (S,G): active tree, per destination its active and standby path", tag)
        api.add("GET", "/v1/multicast/channels/{source}/{group}", self._channel_json, "One channel", tag)
        api.add("GET", "/v1/multicast/channels/{source}/{group}/tree", self._tree_json,
                "The active tree of one channel", tag)
        api.add("GET", "/v1/multicast/standby", lambda r: self._standby_json(),
                "Standby paths per destination device", tag)
        api.add("GET", "/v1/multicast/requests", self._requests_json,
                "Audit of standby requests (?status=&destination=&group=&limit=)", tag)
        api.add("GET", "/v1/multicast/requests/{request_id}", self._request_json, "Audit of one request", tag)
        api.add("GET", "/v1/multicast/events", lambda r: list(self.state.audit.events),
                "Failovers, restorations, standby paths completed and lost", tag)
        api.add("POST", "/v1/multicast/query", self._query_now, "Send a general IGMP query to every host now", tag)
        api.add("DELETE", "/v1/multicast/channels/{source}/{group}", self._forget,
                "Forget a source (its flows go; its next packet re-learns it)", tag)

    def _summary(self) -> dict:
        chans = self.state.channels.values()
        dests = [ds for ch in chans for d, ds in ch.dests.items() if d != ch.switch]
        return {"protection": self.intent.protection, "channels": len(self.state.channels),
                "destinations": len(dests), "standby_complete": sum(ds.standby is not None for ds in dests),
                "requests_in_flight": sum(ds.pending is not None for ds in dests),
                "memberships": sum(len(g) for g in self.state.members.values()),
                "member_timeout_s": self.intent.member_timeout(),
                "counters": dict(sorted(self.state.counters.items())), "stats_polls": self.stats_polls,
                "leading": self.core.leads(self), "followed": dict(self.followed),
                "port_events": list(self.port_events),
                "foreign_queriers": sorted(self.state.foreign_queriers)}

    def _members_json(self) -> list:
        now = time.monotonic()
        out = []
        for (sw, port), groups in sorted(self.state.members.items()):
            for g, m in sorted(groups.items()):
                out.append({"switch": sw, "port": port, "group": g, **m.to_dict(now)})
        for (sw, port), groups in sorted(self.state.static_members(self.intent).items()):
            for g, m in sorted(groups.items()):
                out.append({"switch": sw, "port": port, "group": g, **m.to_dict(now), "static": True})
        return out

    def _groups_json(self) -> list:
        groups: dict[str, dict] = {}
        for m in self._members_json():
            groups.setdefault(m["group"], {"group": m["group"], "members": [], "sources": []})["members"].append(m)
        for ch in self.state.channels.values():
            groups.setdefault(ch.group, {"group": ch.group, "members": [], "sources": []})["sources"].append(
                {"source": ch.source, "host": ch.host, "switch": ch.switch, "port": ch.port})
        return [groups[g] for g in sorted(groups, key=lambda x: ipaddress.IPv4Address(x))]

    def _channels_json(self) -> list:
        now, view = time.monotonic(), self.core.view()
        return [self.state.channel_json(self.state.channels[k], view, self.intent, now)
                for k in sorted(self.state.channels)]

    def _channel(self, r) -> model.Channel:
        key = []
        for name in ("source", "group"):
            try:
                key.append(str(ipaddress.IPv4Address(r.params[name])))
            except ValueError as exc:
                raise ApiError(422, f"{name}: {exc}", name) from None
        key = tuple(key)
        ch = self.state.channels.get(key)
        if ch is None:
            raise ApiError(404, f"no channel {key[0]} -> {key[1]}; known: "
                                f"{[model.channel_name(*k) for k in sorted(self.state.channels)]}")
        return ch

    def _channel_json(self, r) -> dict:
        return self.state.channel_json(self._channel(r), self.core.view(), self.intent, time.monotonic())

    def _tree_json(self, r) -> dict:
        c = self._channel_json(r)
        return {k: c[k] for k in ("source", "group", "source_switch", "tree", "tree_destinations")}

    def _standby_json(self) -> list:
        out = []
        for c in self._channels_json():
            for d, e in c["destinations"].items():
                out.append({"source": c["source"], "group": c["group"], "destination": d, "active": e["active"],
                            "active_kind": e["active_kind"], "standby": e["standby"],
                            "disjoint": e.get("disjoint"), "pending_request": e["pending_request"],
                            "note": e["note"], "failovers": e["failovers"]})
        return out

    def _requests_json(self, r) -> list:
        q = r.query
        try:
            limit = int(q.get("limit", 200))
        except ValueError:
            raise ApiError(422, "limit must be an integer", "limit") from None
        recs = list(self.state.audit.requests.values())
        for k in ("status", "destination", "group", "source"):
            if k in q:
                recs = [x for x in recs if str(x.get(k)) == q[k]]
        return [self.state.audit.public(x) for x in recs[-max(0, limit):]]

    def _request_json(self, r) -> dict:
        try:
            rid = int(r.params["request_id"], 0)
        except ValueError:
            raise ApiError(422, "request_id must be an integer", "request_id") from None
        rec = self.state.audit.requests.get(rid)
        if rec is None:
            raise ApiError(404, f"no request {rid} in the audit (it keeps the last {self.state.audit.limit})")
        return self.state.audit.public(rec)

    def _query_now(self, r):
        return {"queries_sent": self.query_all()}

    def _forget(self, r):
        ch = self._channel(r)
        self.state.forget_source(ch.key)
        self.save_soon()
        self.recompute_soon({flows.part_of(ch.key)})
        return {"forgot": ch.name}


def _pause() -> None:
    """The hub's turn for others in the middle of a pass over every channel."""
    hub.sleep(0)


def _mcast_flow_stats(dp):
    """The flow stats request of the poll: this app's flows in the mcast table."""
    parser, ofp = dp.ofproto_parser, dp.ofproto
    cookie, mask = cookies.app_cookie(APP)
    return parser.OFPFlowStatsRequest(dp, 0, MCAST, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask, parser.OFPMatch())
