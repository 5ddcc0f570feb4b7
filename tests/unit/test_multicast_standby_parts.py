"""multicast_standby on framework v2: one part per channel, recomputed only when named.

The core caches every part's per-switch state and recomputes only the parts an input
names (the state machine's ``Effects.channels``, ``parts_changed`` for a port or switch).
These tests keep such a cache the way the core does (one layer per part, merged by
:class:`~ryu_apps.framework.state.LayeredState`) through joins, leaves, requests, cuts,
failovers, a silent path, a dead switch and a forgotten source, and check after each step
that it equals a full recompute.  The app's hooks are driven with a fake core.
"""

from __future__ import annotations

import zlib
from collections import deque

import pytest

from ryu_apps.framework.app import FabricView, PortChange, SwitchChange
from ryu_apps.framework.state import LayeredState
from ryu_apps.functions.multicast_standby import flows, model, wire
from tests.unit.test_multicast_standby import G, S, TOPO, Net

G2 = "239.1.1.2"


def port_of(a: str, b: str) -> tuple[str, int]:
    """``a``'s port facing ``b``."""
    for ln in TOPO.links:
        if (ln.a, ln.b) == (a, b):
            return a, ln.a_port
        if (ln.b, ln.a) == (a, b):
            return a, ln.b_port
    raise KeyError((a, b))


class Cached:
    """The core's cache of the app's parts: a part is recomputed only when something names it."""

    def __init__(self, net: Net):
        self.net = net
        self.cache: dict = {}
        self.computed = 0
        self.refresh(None)

    def refresh(self, parts) -> None:
        n = self.net
        current = set(flows.parts(n.st))
        todo = current | set(self.cache) if parts is None else set(parts)
        for part in todo:
            if part in current:
                self.cache[part] = flows.compute_part(n.view(), n.intent, n.st, part)
                self.computed += 1
            else:
                self.cache.pop(part, None)

    def effects(self, eff: model.Effects) -> None:
        self.refresh({flows.part_of(k) for k in eff.channels})

    def merged(self) -> dict:
        out = {}
        for sw in TOPO.switches:
            layered = LayeredState()
            layered.replace({(model.APP, p): states[sw] for p, states in self.cache.items() if sw in states})
            out[sw] = layered.snapshot()
        return out

    def check(self) -> None:
        assert self.merged() == flows.compute(self.net.view(), self.net.intent, self.net.st)


def deliver(net: Net, eff: model.Effects) -> model.Effects:
    """Net.deliver, keeping every hop's effects (the channels a join or a completion changed)."""
    total = model.Effects()
    total += eff
    queue = deque(eff.sends)
    while queue:
        sw, port, frame = queue.popleft()
        pi = net.topo.ports[(sw, port)]
        if (sw, port) in net.down or pi.peer in net.dead:
            continue
        got = net.st.handle_request(pi.peer, pi.peer_port, wire.parse_request(frame), net.now, net.view())
        total += got
        queue.extend(got.sends)
    return total


def reconcile(net: Net, cached: Cached) -> model.Effects:
    eff = deliver(net, net.st.reconcile(net.now, net.view(), net.intent))
    cached.effects(eff)
    return eff


def join(net: Net, cached: Cached, host: str, group: str = G) -> model.Effects:
    h = TOPO.hosts[host]
    from scapy.layers.igmp import IGMP
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    frame = bytes(Ether(src=h.mac) / IP(src=str(h.ipv4.ip), dst=group) / IGMP(type=0x16, gaddr=group))
    eff = net.st.igmp(h.switch, h.port, wire.parse_igmp(frame), net.now, net.intent.member_timeout())
    cached.effects(eff)
    return eff


def cut(net: Net, cached: Cached, a: str, b: str) -> list:
    """Both ends go down one after the other, each a port change named by parts_touching."""
    named = []
    for end in (port_of(a, b), port_of(b, a)):
        net.down.add(end)
        parts = flows.parts_touching(net.st, net.view(), net.intent, *end)
        named.append(parts)
        cached.refresh(parts)
        cached.check()
    return named


def test_parts_are_the_channels_and_ingress_and_merge_to_the_whole():
    n = Net()
    for h in ("h2", "h3", "h4"):
        n.join(h)
    n.join("h3", G2)
    n.source()
    n.source(group=G2)
    n.reconcile()
    assert flows.parts(n.st) == ["ingress", f"{S}>{G}", f"{S}>{G2}"]
    chan = flows.compute_part(n.view(), n.intent, n.st, f"{S}>{G}")
    assert set(chan) == {"s1", "s2", "s3", "s4", "s5", "s6"}
    for sw, st in chan.items():  # a channel's part holds its tree and paths, nothing of the other's
        assert all(f.match.to_dict()["ipv4_dst"] == G for f in st.flows.values()), sw
        assert not st.meters
    only_h3 = flows.compute_part(n.view(), n.intent, n.st, f"{S}>{G2}")
    assert "s3" not in only_h3 and "s6" not in only_h3  # the switches its tree and paths touch, only
    ingress = flows.compute_part(n.view(), n.intent, n.st, "ingress")
    assert all(not any(f.priority in (flows.P_TREE, flows.P_PATH) for f in st.flows.values())
               for st in ingress.values())
    assert flows.compute_part(n.view(), n.intent, n.st, "10.5.0.9>239.9.9.9") == {}  # a forgotten channel
    Cached(n).check()


def test_group_ids_never_collide_across_channels():
    # these two channels' old group names ("tree S>G", crc32 in 24 bits) collide: computed as
    # separate parts, both trees would claim one group id at the root with different buckets
    g1, g2 = "239.3.6.29", "239.3.121.202"
    assert zlib.crc32(f"tree {S}>{g1}".encode()) & 0xFFFFFF == zlib.crc32(f"tree {S}>{g2}".encode()) & 0xFFFFFF
    n = Net()
    for h in ("h2", "h3", "h4"):
        n.join(h, g1)
    n.join("h3", g2)
    n.source(group=g1)
    n.source(group=g2)
    n.reconcile()
    cached = Cached(n)
    cached.check()  # (LayeredState refuses one group id with two different contents)
    gids = {}
    for part, states in cached.cache.items():
        for sw, st in states.items():
            for gid in st.groups:
                assert (sw, gid) not in gids, f"{part} and {gids[(sw, gid)]} share group {gid:#x} on {sw}"
                gids[(sw, gid)] = part
    # a restart keeps the slots, so the group ids
    again = Net()
    again.st.restore(n.st.snapshot(n.now, 1000.0), 50.0, 1000.0)
    assert {k: c.slot for k, c in again.st.channels.items()} == {k: c.slot for k, c in n.st.channels.items()}
    assert again.states() == n.states()


def test_slots_are_handed_out_round_robin_and_run_out():
    n = Net()
    n.source(group=G)
    n.source(group=G2)
    assert [n.st.channels[(S, g)].slot for g in (G, G2)] == [0, 1]
    n.st.forget_source((S, G))
    n.source(group="239.1.1.3")
    assert n.st.channels[(S, "239.1.1.3")].slot == 2  # not 0 at once: the old groups may still be in flight
    n.st.channels = {(S, f"239.4.{i >> 8}.{i & 255}"): model.Channel(S, "239.4.0.0", "s1", 1, "h1", 0, slot=i)
                     for i in range(model.SLOTS)}
    eff = n.st.source_seen("s1", 1, S, "239.5.0.1", n.now, n.intent)
    assert not eff.changed and "refused" in eff.notes[0] and (S, "239.5.0.1") not in n.st.channels


def test_incremental_recompute_equals_a_full_one_through_every_input():
    n = Net()
    cached = Cached(n)
    for h in ("h2", "h3", "h4"):
        join(n, cached, h)
    cached.check()
    eff = n.st.source_seen("s1", 1, S, G, n.now, n.intent)
    assert eff.channels == {(S, G)}
    cached.effects(eff)
    eff = reconcile(n, cached)
    assert eff.channels == {(S, G)}
    cached.check()
    # a second channel: its join and its requests name it, never the first
    eff = join(n, cached, "h3", G2)
    assert eff.changed and not eff.channels  # no source sends to G2 yet: nothing to recompute
    cached.effects(n.st.source_seen("s1", 1, S, G2, n.now, n.intent))
    assert reconcile(n, cached).channels == {(S, G2)}
    cached.check()
    assert join(n, cached, "h2", G2).channels == {(S, G2)}
    assert reconcile(n, cached).channels == {(S, G2)}
    cached.check()
    assert not reconcile(n, cached).channels  # nothing left to do: nothing named
    # a link cut: the port changes flip the destinations (named by parts_touching), then reconcile promotes
    named = cut(n, cached, "s2", "s3")
    assert named[0] == {f"{S}>{G}", f"{S}>{G2}"}
    assert named[1] == set()  # the far end of a link already down: no path's health changes
    reconcile(n, cached)
    cached.check()
    for end in (port_of("s2", "s3"), port_of("s3", "s2")):
        n.down.discard(end)
        cached.refresh(flows.parts_touching(n.st, n.view(), n.intent, *end))
        cached.check()
    n.st.topology_improved(n.now)
    n.now += 1
    reconcile(n, cached)
    cached.check()
    # a leave, a silent active path (muted, then promoted), a dead switch, a forgotten source
    h4 = TOPO.hosts["h4"]
    from scapy.layers.igmp import IGMP
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    leave = bytes(Ether(src=h4.mac) / IP(src=str(h4.ipv4.ip), dst="224.0.0.2") / IGMP(type=0x17, gaddr=G))
    eff = n.st.igmp(h4.switch, h4.port, wire.parse_igmp(leave), n.now, None)
    assert eff.channels == {(S, G)}
    cached.effects(eff)
    reconcile(n, cached)
    cached.check()
    n.st.silent[(S, G, "s5")] = "silent"
    reconcile(n, cached)
    cached.check()
    n.now += model.MUTE_HOLD + 0.01
    reconcile(n, cached)
    cached.check()
    kinds = [e["kind"] for e in n.st.audit.events if e["destination"] == "s5"]
    assert "mute" in kinds and kinds.index("mute") < kinds.index("failover"), kinds
    n.dead.add("s4")
    cached.refresh(flows.parts_touching(n.st, n.view(), n.intent, "s4"))
    cached.check()
    for nbr in ("s1", "s5"):
        end = port_of(nbr, "s4")
        n.down.add(end)
        cached.refresh(flows.parts_touching(n.st, n.view(), n.intent, *end))
        cached.check()
    reconcile(n, cached)
    cached.check()
    n.st.forget_source((S, G2))
    cached.refresh({f"{S}>{G2}"})
    cached.check()
    assert set(cached.cache) == {"ingress", f"{S}>{G}"}


def test_member_expiry_names_the_channels_of_the_group():
    n = Net(query_interval=10, query_response=2, robustness=2)
    cached = Cached(n)
    join(n, cached, "h2")
    join(n, cached, "h4", G2)
    for g in (G, G2):
        cached.effects(n.st.source_seen("s1", 1, S, g, n.now, n.intent))
    reconcile(n, cached)
    n.now += 15
    join(n, cached, "h4", G2)  # refreshed; h2's membership of G is not
    n.now += 8
    eff = reconcile(n, cached)
    assert eff.channels == {(S, G)}
    cached.check()
    assert not n.st.receivers(S, G, n.intent) and n.st.receivers(S, G2, n.intent)


def test_restore_mode_recomputes_every_part_on_a_view_change():
    n = Net(protection="restore")
    n.join("h2")
    n.source()
    n.reconcile()
    assert flows.parts_touching(n.st, n.view(), n.intent, "s2", 13) is None
    assert flows.parts_touching(n.st, n.view(), n.intent, "s2") is None


def test_undeclared_ports_and_unrelated_links_name_nothing():
    n = Net()
    for h in ("h2", "h3"):
        n.join(h)
    n.source()
    n.reconcile()
    assert flows.parts_touching(n.st, n.view(), n.intent, "s2", 99) == set()
    # s6 is on no path of this channel (receivers on s3 and s5: tree s1-s2-{s3,s5}; standby
    # paths s1-s4-s5 and, for s3, s1-s4-s5-s6-s3): the link s5-s6 is on s3's standby path
    n.down.add(port_of("s5", "s6"))
    assert flows.parts_touching(n.st, n.view(), n.intent, *port_of("s5", "s6")) == {f"{S}>{G}"}
    n.down.clear()
    n.down.add(port_of("s3", "s6"))
    assert flows.parts_touching(n.st, n.view(), n.intent, *port_of("s3", "s6")) == {f"{S}>{G}"}
    n.down.clear()
    st = flows.compute(n.view(), n.intent, n.st)
    n.down.add(("s6", 1))  # a host port: on no path
    assert flows.parts_touching(n.st, n.view(), n.intent, "s6", 1) == set()
    assert flows.compute(n.view(), n.intent, n.st) == st


# -- the app's hooks, with a fake core ------------------------------------------------------


class FakeCore:
    """The part of the core API the app's hooks use; records what the app asks for."""

    def __init__(self, net: Net):
        self.net, self.topology = net, TOPO
        self.calls: list = []
        self.persistent = False

    def load_intent(self, name):
        return None

    def register(self, app):
        self.calls.append(("register", app.APP_NAME))

    def view(self) -> FabricView:
        return self.net.view()

    def recompute_now(self, app, parts=None):
        self.calls.append(("recompute_now", None if parts is None else set(parts)))
        return []

    def invalidate(self, app, parts=None):
        self.calls.append(("invalidate", None if parts is None else set(parts)))

    def all_synced(self, switches=None):
        return True

    def packet_out(self, switch, port, data, in_port=None):
        self.calls.append(("packet_out", switch, port, data))
        return True


@pytest.fixture
def app():
    from os_ken.lib import hub

    from ryu_apps.multicast_standby import MulticastStandby

    n = Net()
    for h in ("h2", "h3", "h4"):
        n.join(h)
    n.join("h3", G2)
    n.source()
    n.source(group="239.1.1.2")
    n.reconcile()
    core = FakeCore(n)
    a = MulticastStandby(fabric_core=core)
    a.state, a.intent = n.st, n.intent
    core.calls.clear()
    yield a, n, core
    for t in a.threads:
        hub.kill(t)


def test_a_failed_port_recomputes_now_only_the_channels_whose_paths_it_touches(app):
    a, n, core = app
    end = port_of("s5", "s6")  # on the standby paths of G's s3 and s6, not on G2's (h3 on s5)
    n.down.add(end)
    change = PortChange(end[0], end[1], "modify", False, False, False, True)
    assert a.parts_changed(n.view(), n.intent, change) == {f"{S}>{G}"}
    a.on_port_change(change)
    assert core.calls == [("recompute_now", {f"{S}>{G}"})]
    assert a.port_events[-1]["recomputed"] and not a.port_events[-1]["live"]
    # the other end of the same link: no path's health changes, nothing is recomputed
    core.calls.clear()
    far = port_of("s6", "s5")
    n.down.add(far)
    a.on_port_change(PortChange(far[0], far[1], "modify", False, False, False, True))
    assert core.calls == [] and not a.port_events[-1]["recomputed"]
    # a port whose message changed nothing in the view (OVS's first, still-up message)
    a.on_port_change(PortChange("s2", 13, "modify", True, True, True, False))
    assert core.calls == []
    # a repair: nothing recomputed at once; destinations without a standby path may ask again
    n.down -= {end, far}
    ds = n.st.channels[(S, G)].dests["s3"]
    ds.standby, ds.retry_at = None, 1e9  # (as after a standby path was lost)
    a.on_port_change(PortChange(end[0], end[1], "modify", True, True, True, True))
    assert core.calls == [] and a.port_events[-1]["live"]
    assert ds.retry_at < 1e9


def test_switch_changes_name_the_channels_through_the_switch(app):
    a, n, core = app
    n.dead.add("s4")  # on every standby path of both channels
    assert a.parts_changed(n.view(), n.intent, SwitchChange("s4", "dead")) == {f"{S}>{G}", f"{S}>{G2}"}
    assert a.parts_changed(n.view(), n.intent, SwitchChange("s4", "connected")) == set()
    assert a.compute(n.view(), n.intent, f"{S}>{G}") == flows.compute_part(n.view(), n.intent, n.st, f"{S}>{G}")
    assert a.parts(n.intent) == ["ingress", f"{S}>{G}", f"{S}>{G2}"]


def test_stale_parts_accumulate_until_the_pacer_hands_them_over(app):
    a, n, core = app
    a.recompute_soon({f"{S}>{G2}"})
    a.recompute_soon({f"{S}>{G}"})
    assert a._stale == {f"{S}>{G}", f"{S}>{G2}"}
    a.recompute_soon(None)
    a.recompute_soon({f"{S}>{G}"})
    assert a._stale is None



def test_join_state_of_a_request_still_in_flight_is_named():
    n = Net()
    cached = Cached(n)
    join(n, cached, "h2")
    cached.effects(n.st.source_seen("s1", 1, S, G, n.now, n.intent))
    eff = n.st.reconcile(n.now, n.view(), n.intent)
    cached.effects(eff)
    # the wire loses every copy toward the source's switch: the switches that joined hold
    # standby state (flows) for a path that is not complete
    queue, named = deque(eff.sends), set()
    while queue:
        sw, port, frame = queue.popleft()
        pi = TOPO.ports[(sw, port)]
        if pi.peer == "s1":
            continue
        got = n.st.handle_request(pi.peer, pi.peer_port, wire.parse_request(frame), n.now, n.view())
        named |= got.channels
        cached.effects(got)
        queue.extend(got.sends)
    ds = n.st.channels[(S, G)].dests["s3"]
    assert ds.pending is not None and ds.pending.joined and ds.standby is None
    assert named == {(S, G)}
    cached.check()


def test_expiry_of_one_of_two_receivers_on_a_switch_names_the_channel():
    import yaml

    from ryu_apps.framework.topology import from_dict

    data = yaml.safe_load(open(TOPO.source).read())
    data["hosts"]["h5"] = {"mac": "02:00:00:00:05:05", "ipv4": "10.5.0.5/24"}
    data["links"].append({"a": "h5", "b": "s3", "b_port": 2})
    topo = from_dict(data, "h5 on s3")
    n = Net(topo=topo, query_interval=10, query_response=2, robustness=2)
    cached = Cached(n)
    n.join("h2")
    n.join("h5")
    cached.effects(n.st.source_seen("s1", 1, S, G, n.now, n.intent))
    reconcile(n, cached)
    cached.check()
    n.now += 15
    n.join("h5")  # refreshed (no change: nothing named); h2's membership is not
    n.now += 8
    eff = reconcile(n, cached)
    assert eff.channels == {(S, G)} and n.st.receivers(S, G, n.intent) == {"s3": (2,)}
    assert "s3" in n.st.channels[(S, G)].dests  # the destination stays: only its receiver ports change
    cached.check()


# -- a join costs its own channel: partial reconcile, join state held until the path completes ---


def _igmp_packet_in(host: str, group: str):
    from scapy.layers.igmp import IGMP
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    from ryu_apps.framework import cookies
    from ryu_apps.framework.app import PacketIn

    h = TOPO.hosts[host]
    frame = bytes(Ether(src=h.mac) / IP(src=str(h.ipv4.ip), dst=group) / IGMP(type=0x16, gaddr=group))
    return PacketIn(h.switch, h.port, 0, cookies.make(model.APP, flows.K_IGMP, 0), frame)


def test_a_reconcile_of_named_channels_leaves_the_others_for_the_full_pass():
    n = Net()
    n.join("h2")
    n.join("h2", G2)
    n.source()
    n.source(group=G2)
    n.reconcile()
    n.join("h4")
    n.join("h4", G2)  # both groups gain a receiver on s6
    eff = n.st.reconcile(n.now, n.view(), n.intent, only=[(S, G), ("10.9.9.9", G)])  # (no such channel)
    assert eff.channels == {(S, G)}
    assert "s6" in n.st.channels[(S, G)].dests and "s6" not in n.st.channels[(S, G2)].dests
    assert n.st.reconcile(n.now, n.view(), n.intent).channels == {(S, G2)}  # the full pass: the rest
    assert "s6" in n.st.channels[(S, G2)].dests


def test_a_join_reconciles_only_its_channel_a_kick_every_channel(app, monkeypatch):
    a, n, core = app
    seen = []
    real = a.state.reconcile
    monkeypatch.setattr(a.state, "reconcile", lambda *args, only=None, **kw: seen.append(
        None if only is None else set(only)) or real(*args, only=only, **kw))
    now = n.now
    a.maintain(now)  # the first pass is of every channel
    a.on_packet_in(_igmp_packet_in("h4", G2))  # h4 joins G2: the channel (S, G2) changes
    a.maintain(now + 0.1)
    assert seen == [None, {(S, G2)}]
    assert "s6" in n.st.channels[(S, G2)].dests
    a.kick()  # a view change: everything
    a.maintain(now + 0.2)
    a.maintain(now + 0.3)  # nothing named, nothing due: an empty partial pass
    a.maintain(now + 0.8)  # FULL_EVERY after the last full pass: every channel again
    assert seen[2:] == [None, set(), None]


def test_join_state_is_handed_over_with_the_completed_path_not_hop_by_hop(app):
    a, n, core = app
    from ryu_apps.framework import cookies
    from ryu_apps.framework.app import PacketIn

    part = flows.part_of((S, G2))
    n.join("h4", G2)
    a.maintain(n.now)  # grafts s6, and s6 sends its standby request
    a._stale, a._held = set(), set()
    queue = deque((sw, port, frame) for c, sw, port, frame in
                  (c for c in core.calls if c[0] == "packet_out") if frame[12:14] == b"\x88\xb5")
    assert queue
    states = []
    while queue:
        sw, port, frame = queue.popleft()
        pi = TOPO.ports[(sw, port)]
        core.calls.clear()
        a.on_packet_in(PacketIn(pi.peer, pi.peer_port, 0, cookies.make(model.APP, flows.K_REQ_PUNT, 0), frame))
        states.append((pi.peer, set(a._held), set(a._stale or ())))
        queue.extend((sw, port, frame) for _, sw, port, frame in (c for c in core.calls if c[0] == "packet_out"))
    ds = n.st.channels[(S, G2)].dests["s6"]
    assert ds.standby is not None and ds.pending is None  # the path completed
    done = next(i for i, (sw, _, _) in enumerate(states) if sw == "s1")
    joined = [held for sw, held, stale in states[:done] if held]
    assert joined and all(held == {part} for held in joined)  # hops that joined: held back ...
    assert all(not stale for _, _, stale in states[:done])    # ... nothing handed to the core
    assert states[done][1:] == (set(), {part})                # the completion takes them along


def test_a_paced_pass_gives_way_and_what_changes_meanwhile_is_reconciled_after(monkeypatch):
    """The full reconcile and the snapshot pause between channels (the hub's turn); a join and a
    forgotten source in a pause are taken by the channels after it, or by the partial pass the
    join names, and the result is the one a pass without pauses reaches."""
    monkeypatch.setattr(model, "PAUSE_CHANNELS", 1)
    G3 = "239.1.1.3"

    def net():
        n = Net()
        for g in (G, G2, G3):
            n.join("h2", g)
            n.source(group=g)
        n.reconcile()
        return n

    n, ref = net(), net()
    assert n.st.snapshot(n.now, 1.0, pause=lambda: None) == n.st.snapshot(n.now, 1.0)
    events = []

    def pause():
        if not events:  # first pause: after (S, G) -- h4 joins G, G3 loses its source
            events.append(n.st.igmp("s6", TOPO.hosts["h4"].port, _igmp_frame("h4", G), n.now, None))
            n.st.forget_source((S, G3))
    eff = n.st.reconcile(n.now, n.view(), n.intent, pause=pause)
    assert events and events[0].channels == {(S, G)}
    assert (S, G3) not in n.st.channels and (S, G3) not in eff.channels
    assert "s6" not in n.st.channels[(S, G)].dests  # done before the join ...
    n.st.reconcile(n.now, n.view(), n.intent, only=events[0].channels)  # ... and by its partial pass
    # the same inputs without pauses
    ref.st.igmp("s6", TOPO.hosts["h4"].port, _igmp_frame("h4", G), ref.now, None)
    ref.st.forget_source((S, G3))
    ref.st.reconcile(ref.now, ref.view(), ref.intent)
    for key in ((S, G), (S, G2)):
        a, b = n.st.channels[key], ref.st.channels[key]
        assert (a.tree, a.tree_dests, set(a.dests)) == (b.tree, b.tree_dests, set(b.dests)), key


def _igmp_frame(host: str, group: str) -> wire.Igmp:
    return wire.parse_igmp(_igmp_packet_in(host, group).data)
