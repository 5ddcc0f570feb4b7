"""multicast_standby model: trees, standby requests hop by hop, failover -- where packets go.

Requests travel a simulated wire (each frame the model sends comes back as a
packet-in at the far end of the link); data packets walk the computed tables on
the switch simulator (``ryu_apps.openflow.simulator``: VLAN push/pop, ALL and
fast-failover groups with port liveness, the switches joined by the topology's
links), the one that is cross-checked against ofproto/trace on the real lab
(``tests/integration/test_simulator_trace_multicast_standby.py``).
"""

from __future__ import annotations

from collections import Counter, deque
from pathlib import Path

import pytest
from pydantic import ValidationError
from scapy.layers.igmp import IGMP, IGMPv3_MR, IGMPv3_MR_Group
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from ryu_apps.framework import cookies, pipeline
from ryu_apps.framework.app import FabricView, IntentError
from ryu_apps.framework.topology import load
from ryu_apps.functions.multicast_standby import flows, model, wire
from ryu_apps.functions.multicast_standby.intent import MulticastIntent
from ryu_apps.openflow import simulator
from ryu_apps.packet.parse import BadPacket

TOPO = load(Path(__file__).resolve().parents[2] / "topologies" / "multicast_standby.yaml")
S, G = "10.5.0.1", "239.1.1.1"


class Net:
    """The model plus a wire for its requests and a clock."""

    def __init__(self, topo=TOPO, **intent):
        self.topo = topo
        self.intent = MulticastIntent.model_validate(intent)
        self.st = model.McastState(topo, request_id_base=100)
        self.down: set[tuple[str, int]] = set()
        self.dead: set[str] = set()
        self.now = 10.0
        self.wire: list[tuple[str, int, str, int, wire.StandbyRequest]] = []

    def view(self) -> FabricView:
        return FabricView(self.topo, frozenset(self.down), frozenset(self.dead))

    def cut(self, a: str, b: str) -> None:
        for ln in self.topo.links:
            if {ln.a, ln.b} == {a, b}:
                self.down |= {(ln.a, ln.a_port), (ln.b, ln.b_port)}

    def heal(self, a: str, b: str) -> None:
        for ln in self.topo.links:
            if {ln.a, ln.b} == {a, b}:
                self.down -= {(ln.a, ln.a_port), (ln.b, ln.b_port)}

    def deliver(self, eff: model.Effects) -> None:
        queue = deque(eff.sends)
        while queue:
            sw, port, frame = queue.popleft()
            pi = self.topo.ports[(sw, port)]
            req = wire.parse_request(frame)
            self.wire.append((sw, port, pi.peer, pi.peer_port, req))
            if (sw, port) in self.down or pi.peer in self.dead:
                continue
            queue.extend(self.st.handle_request(pi.peer, pi.peer_port, req, self.now, self.view()).sends)

    def reconcile(self) -> model.Effects:
        eff = self.st.reconcile(self.now, self.view(), self.intent)
        self.deliver(eff)
        return eff

    def igmp(self, host: str, frame: bytes) -> model.Effects:
        h = self.topo.hosts[host]
        return self.st.igmp(h.switch, h.port, wire.parse_igmp(frame), self.now, self.intent.member_timeout())

    def join(self, host: str, group: str = G, version: int = 2, sources=(), rtype=None) -> None:
        h = self.topo.hosts[host]
        if version == 2:
            frame = bytes(Ether(src=h.mac) / IP(src=str(h.ipv4.ip), dst=group) / IGMP(type=0x16, gaddr=group))
        else:
            rec = IGMPv3_MR_Group(rtype=rtype or (3 if sources else 4), maddr=group, srcaddrs=list(sources))
            frame = bytes(Ether(src=h.mac) / IP(src=str(h.ipv4.ip), dst="224.0.0.22") / IGMPv3_MR(records=[rec]))
        self.igmp(host, frame)

    def leave(self, host: str, group: str = G) -> None:
        h = self.topo.hosts[host]
        self.igmp(host, bytes(Ether(src=h.mac) / IP(src=str(h.ipv4.ip), dst="224.0.0.2") /
                              IGMP(type=0x17, gaddr=group)))

    def source(self, host: str = "h1", group: str = G) -> None:
        h = self.topo.hosts[host]
        self.st.source_seen(h.switch, h.port, str(h.ipv4.ip), group, self.now, self.intent)

    def states(self, view: FabricView | None = None):
        return flows.compute(view or self.view(), self.intent, self.st)

    def send(self, host: str = "h1", group: str = G, states=None, live_down=None) -> Counter:
        """Walk one packet from ``host`` through the tables; count deliveries per host.

        ``live_down``: ports the datapath sees down (fast-failover liveness, links that carry
        nothing), default the controller's view ``self.down``.
        """
        return Counter(h for h, _ in self.copies(host, group, states, live_down))

    def copies(self, host: str = "h1", group: str = G, states=None, live_down=None) -> list[tuple[str, tuple]]:
        """Where the copies of one packet from ``host`` end: ``(host or "controller", switch path)`` each,
        on the switch simulator (``live_down`` as for :meth:`send`; a dead switch's links carry nothing)."""
        states = states or self.states()
        down = set(self.down if live_down is None else live_down)
        down |= {end for ln in self.topo.links if {ln.a, ln.b} & self.dead for end in ((ln.a, ln.a_port), (ln.b, ln.b_port))}
        h = self.topo.hosts[host]
        pkt = {"eth_src": h.mac, "eth_type": 0x0800, "vlan_vid": 0, "ipv4_src": str(h.ipv4.ip),
               "ipv4_dst": group, "ip_proto": 17}
        out = []
        for where, o, path in simulator.Fabric(self.topo, states, down).trace(host, pkt):
            assert where != "loop", f"forwarding loop: {o} along {path}"
            if where.startswith("host:"):
                assert o.packet["vlan_vid"] == 0, f"tagged copy delivered to {where}"
                out.append((where.removeprefix("host:"), tuple(path)))
            elif where == "controller":
                out.append(("controller", tuple(path)))
        return out


@pytest.fixture
def net():
    n = Net()
    for h in ("h2", "h3", "h4"):
        n.join(h)
    n.source()
    n.reconcile()
    return n


def standby(n: Net, d: str) -> model.Path | None:
    return n.st.channels[(S, G)].dests[d].standby


def test_tree_delivers_once_everywhere_and_standby_copies_are_discarded(net):
    got = net.send()
    assert got == Counter({"h2": 1, "h3": 1, "h4": 1})
    ch = net.st.channels[(S, G)]
    assert ch.tree_path("s3").text() == "s1-s2-s3"
    assert ch.tree_path("s6").text() == "s1-s2-s3-s6"
    assert ch.tree_path("s5").text() == "s1-s2-s5"
    # replication at branch points with ALL groups: s2 feeds s3 and s5, s3 feeds s6 and h2
    st = net.states()
    assert any(g.type == "all" and {b.actions[0].port for b in g.buckets} == {13, 15} for g in st["s2"].groups.values())


def test_copies_follow_the_active_tree_then_the_standby_paths(net):
    ch = net.st.channels[(S, G)]
    dest_of = {"h2": "s3", "h3": "s5", "h4": "s6"}
    copies = sorted(net.copies())
    assert copies == sorted((h, ch.tree_path(d).devices) for h, d in dest_of.items())
    assert copies == [("h2", ("s1", "s2", "s3")), ("h3", ("s1", "s2", "s5")), ("h4", ("s1", "s2", "s3", "s6"))]
    # the link into s3 cut, the switches as programmed before: s3's fast-failover group takes the
    # standby copy (which it discarded while the active in-port was live); s6 has nothing yet
    states = net.states()
    standby_s3 = standby(net, "s3").devices
    net.cut("s2", "s3")
    assert sorted(net.copies(states=states)) == [("h2", standby_s3), ("h3", ("s1", "s2", "s5"))]
    # the controller promotes: every receiver once, s3 and s6 over their (former) standby paths
    net.reconcile()
    assert sorted(net.copies()) == [("h2", ("s1", "s4", "s5", "s6", "s3")), ("h3", ("s1", "s2", "s5")),
                                    ("h4", ("s1", "s4", "s5", "s6"))]
    assert [ch.active_path(d).devices for d in ("s3", "s6")] == [("s1", "s4", "s5", "s6", "s3"),
                                                                 ("s1", "s4", "s5", "s6")]


def test_every_flow_fits_the_pipeline_and_names_its_object(net):
    for st in net.states().values():
        for flow in st.flows.values():
            pipeline.check_flow(model.APP, flow)
            assert flow.cookie in st.owners, f"unlabelled cookie {flow.cookie:#x}"
            assert cookies.decode(flow.cookie).kind in flows.KIND_NAMES


def test_standby_paths_disjoint_and_suppressed_on_the_active_path(net):
    paths = {d: standby(net, d) for d in ("s3", "s5", "s6")}
    assert paths["s3"].text() == "s1-s4-s5-s6-s3"
    assert paths["s5"].text() == "s1-s4-s5"
    assert paths["s6"].text() == "s1-s4-s5-s6"
    ch = net.st.channels[(S, G)]
    for d, p in paths.items():
        assert not set(p.transit) & set(ch.active_path(d).devices), d
    # the audit: s3's request was suppressed at s2 (reached from s5) and went no further
    rec = next(r for r in net.st.audit.requests.values() if r["destination"] == "s3")
    pub = net.st.audit.public(rec)
    assert pub["status"] == "complete" and pub["suppressed"] == ["s2"] and set(pub["joined"]) == {"s4", "s5", "s6"}
    sup = next(h for h in rec["hops"] if h["action"] == "suppressed")
    assert (sup["device"], sup["from"], sup["in_port"]) == ("s2", "s5", 15)
    assert "active path s1-s2-s3" in sup["reason"]
    # on the wire: requests reached s2, and s2 (on every destination's active path) never sent one
    assert any(to == "s2" for _, _, to, _, _ in net.wire)
    assert not any(frm == "s2" for frm, *_ in net.wire)
    # each hop names its transmitter; copies lose one hop each
    first = [r for frm, _, _, _, r in net.wire if frm == "s3"][0]
    assert first.sender_device == 0x53 and first.dest_device == 0x53 and first.hops_left == wire.REQUEST_HOPS


def test_destination_device_fails_over_locally_on_its_own_link(net):
    states = net.states()  # programmed before the failure; the datapath alone reacts
    net.cut("s2", "s3")
    got = net.send(states=states)
    # s3's fast-failover group takes the standby copy at once; s6 (further down) waits for the controller
    assert got["h2"] == 1 and got["h3"] == 1 and got["h4"] == 0
    got = net.send()  # the controller's compute with the link down
    assert got == Counter({"h2": 1, "h3": 1, "h4": 1})


def test_remote_failure_flip_is_one_group_change_per_destination(net):
    before = net.states()
    net.cut("s1", "s2")
    after = net.states()
    assert net.send(states=before)["h2"] == 0
    assert net.send(states=after) == Counter({"h2": 1, "h3": 1, "h4": 1})
    for sw in TOPO.switches:
        assert after[sw].flows == before[sw].flows, f"{sw}: the flip changed flows"
        changed = {gid for gid in after[sw].groups if after[sw].groups[gid] != before[sw].groups.get(gid)}
        assert len(changed) <= 1, sw


def test_promotion_then_new_standby_after_repair(net):
    net.cut("s2", "s3")
    net.reconcile()
    ch = net.st.channels[(S, G)]
    events = [e for e in net.st.audit.events if e["kind"] == "failover"]
    assert {e["destination"] for e in events} == {"s3", "s6"}
    assert ch.dests["s3"].active.text() == "s1-s4-s5-s6-s3"
    assert "s3" not in ch.tree_dests and "s3" not in ch.tree  # pruned: s6 left the tree too
    assert ch.dests["s3"].standby is None  # no upstream direction but the active one
    assert "no upstream direction" in ch.dests["s3"].note
    assert net.send() == Counter({"h2": 1, "h3": 1, "h4": 1})
    net.heal("s2", "s3")
    net.st.topology_improved(net.now)
    net.now += 1
    net.reconcile()
    assert standby(net, "s3").text() == "s1-s2-s3"
    assert not set(standby(net, "s3").transit) & set(ch.active_path("s3").devices)
    assert net.send() == Counter({"h2": 1, "h3": 1, "h4": 1})
    # and the new standby protects: cut the promoted active path next to s3
    states = net.states()
    net.cut("s6", "s3")
    assert net.send(states=states)["h2"] == 1


def test_switch_failure(net):
    net.dead.add("s2")
    net.down |= {("s1", 12), ("s3", 12), ("s5", 12)}  # its neighbours see their links go down
    assert net.send() == Counter({"h2": 1, "h3": 1, "h4": 1})
    net.reconcile()
    assert {e["destination"] for e in net.st.audit.events if e["kind"] == "failover"} == {"s3", "s5", "s6"}
    assert net.send() == Counter({"h2": 1, "h3": 1, "h4": 1})


def test_restore_mode_recomputes_the_tree():
    n = Net(protection="restore")
    for h in ("h2", "h3", "h4"):
        n.join(h)
    n.source()
    eff = n.reconcile()
    assert not eff.sends and not n.st.audit.requests  # no standby requests in the baseline
    assert n.send() == Counter({"h2": 1, "h3": 1, "h4": 1})
    n.cut("s1", "s2")
    assert n.send() == Counter({"h2": 1, "h3": 1, "h4": 1})
    assert all(not any(f.priority == flows.P_PATH for f in st.flows.values()) for st in n.states().values())


def test_leave_and_churn_leave_no_state(net):
    baseline_net = Net()
    baseline_net.source()
    baseline_net.reconcile()
    empty = baseline_net.states()
    for _ in range(3):
        for h in ("h2", "h3", "h4"):
            net.leave(h)
        net.reconcile()
        assert net.send() == Counter()
        now = net.states()
        for sw in empty:
            assert now[sw].flows == empty[sw].flows and now[sw].groups == empty[sw].groups, sw
        for h in ("h2", "h4"):
            net.join(h, version=3)
        net.reconcile()
        assert net.send() == Counter({"h2": 1, "h4": 1})
    for h in ("h2", "h4"):
        net.leave(h)
    net.reconcile()
    now = net.states()
    for sw in empty:
        assert now[sw].flows == empty[sw].flows and now[sw].groups == empty[sw].groups, sw
    assert not any(r["status"] == "pending" for r in net.st.audit.requests.values())


def test_igmpv3_source_filters():
    n = Net()
    n.source()
    n.join("h3", version=3, sources=["10.5.0.9"])  # INCLUDE {another source}
    n.reconcile()
    assert n.send() == Counter()
    h = TOPO.hosts["h3"]
    allow = IGMPv3_MR_Group(rtype=5, maddr=G, srcaddrs=[S])
    n.igmp("h3", bytes(Ether(src=h.mac) / IP(src="10.5.0.3", dst="224.0.0.22") / IGMPv3_MR(records=[allow])))
    n.reconcile()
    assert n.send() == Counter({"h3": 1})
    block = IGMPv3_MR_Group(rtype=6, maddr=G, srcaddrs=[S, "10.5.0.9"])
    n.igmp("h3", bytes(Ether(src=h.mac) / IP(src="10.5.0.3", dst="224.0.0.22") / IGMPv3_MR(records=[block])))
    n.reconcile()
    assert n.send() == Counter() and not n.st.members
    n.join("h3", version=3)  # TO_EX {}: any source
    n.reconcile()
    assert n.send() == Counter({"h3": 1})


def test_apply_record_table():
    ex = model.Membership("exclude", frozenset({"1.1.1.1"}), 3, None, "h", 0)
    inc = model.Membership("include", frozenset({"1.1.1.1"}), 3, None, "h", 0)
    R = wire.GroupRecord

    def ap(cur, t, *src):
        m = model.apply_record(cur, R(t, G, src), 3, "h", 1, None)
        return None if m is None else (m.mode, sorted(m.sources))

    assert ap(None, wire.CHANGE_TO_INCLUDE) is None
    assert ap(None, wire.ALLOW_NEW, "2.2.2.2") == ("include", ["2.2.2.2"])
    assert ap(inc, wire.BLOCK_OLD, "1.1.1.1") is None
    assert ap(ex, wire.ALLOW_NEW, "1.1.1.1") == ("exclude", [])
    assert ap(ex, wire.BLOCK_OLD, "2.2.2.2") == ("exclude", ["1.1.1.1", "2.2.2.2"])
    assert ap(inc, wire.MODE_IS_EXCLUDE) == ("exclude", [])


def test_member_expiry_with_a_querier():
    n = Net(query_interval=10, query_response=2, robustness=2)
    n.join("h2")
    n.source()
    n.reconcile()
    assert n.send() == Counter({"h2": 1})
    n.now += 21.5
    n.reconcile()
    assert n.send() == Counter({"h2": 1})
    n.now += 1.0  # past robustness * interval + response = 22 s
    n.reconcile()
    assert n.send() == Counter(), "membership should expire after robustness * interval + response"


def test_requests_are_checked(net):
    rid = next(iter(net.st.audit.requests))
    bad_sender = wire.StandbyRequest(rid, 0x53, 0x99, S, G, 1)
    with pytest.raises(BadPacket, match="wired there"):
        net.st.handle_request("s6", 13, bad_sender, net.now, net.view())
    stale = wire.StandbyRequest(rid, 0x53, 0x53, S, G, 1)  # that request completed long ago
    assert not net.st.handle_request("s6", 13, stale, net.now, net.view()).sends
    assert net.st.audit.requests[rid]["hops"][-1]["action"] == "stale"
    with pytest.raises(BadPacket, match="not a fabric port"):
        net.st.handle_request("s3", 1, stale, net.now, net.view())


def test_request_timeout_and_retry():
    n = Net(request_timeout=1.0, request_retry=2.0)
    n.join("h2")
    n.source()
    n.down |= {("s6", 13)}  # s3's only other way toward the source drops everything (seen live by s3)
    eff = n.st.reconcile(n.now, FabricView(TOPO), n.intent)  # s3 thinks its port is fine: sends
    assert eff.sends  # ...and the wire loses it
    n.now += 1.5
    n.st.reconcile(n.now, FabricView(TOPO), n.intent)
    rec = list(n.st.audit.requests.values())[-1]
    assert rec["status"] == "failed" and "within 1.0 s" in rec["reason"]
    assert not n.st.reconcile(n.now + 0.5, FabricView(TOPO), n.intent).sends  # backing off
    assert n.st.reconcile(n.now + 2.5, FabricView(TOPO), n.intent).sends  # retried


def test_silence_mutes_then_promotes(net):
    net.st.silent[(S, G, "s5")] = "active stream silent for 1000 ms while the standby copy kept arriving"
    net.reconcile()
    # first the silent active stream stops being delivered (it may come back: never both at once)
    assert net.send() == Counter({"h2": 1, "h4": 1})
    assert [e["kind"] for e in net.st.audit.events if e["destination"] == "s5"][-1] == "mute"
    net.now += model.MUTE_HOLD + 0.01
    net.reconcile()
    ev = [e for e in net.st.audit.events if e["kind"] == "failover"]
    assert [(e["destination"], e["detection"]) for e in ev] == [("s5", "silence")]
    assert net.st.channels[(S, G)].dests["s5"].active.text() == "s1-s4-s5"
    assert net.send() == Counter({"h2": 1, "h3": 1, "h4": 1})


def test_compute_is_deterministic(net):
    assert net.states() == net.states()


def test_intent_validation():
    for bad, field in [({"groups": ["10.0.0.0/8"]}, "groups"), ({"groups": ["224.0.0.0/24"]}, "groups"),
                       ({"protection": "maybe"}, "protection"), ({"colour": 1}, "colour"),
                       ({"static_members": [{"host": "h2", "group": "224.0.0.9"}]}, "static_members"),
                       ({"static_members": [{"host": "h2", "group": G, "sources": ["239.0.0.1"]}]}, "static_members")]:
        with pytest.raises(ValidationError) as err:
            MulticastIntent.model_validate(bad)
        assert err.value.errors()[0]["loc"][0] == field, bad
    n = Net(static_members=[{"host": "h9", "group": G}])
    with pytest.raises(IntentError, match="h9"):
        n.states()


def test_static_members_receive_without_igmp():
    n = Net(static_members=[{"host": "h4", "group": G}])
    n.source()
    n.reconcile()
    assert n.send() == Counter({"h4": 1})
    assert standby(n, "s6").text() == "s1-s4-s5-s6"


def test_source_is_learned_only_from_its_own_port():
    n = Net()
    with pytest.raises(BadPacket, match="not that host"):
        n.st.source_seen("s3", 1, S, G, n.now, n.intent)
    with pytest.raises(BadPacket, match="outside"):
        Net(groups=["232.0.0.0/8"]).st.source_seen("s1", 1, S, G, 0, MulticastIntent(groups=["232.0.0.0/8"]))


def test_snapshot_restore_changes_no_flow(net):
    import json

    net.cut("s2", "s3")
    net.reconcile()  # some promoted paths, some tree ones
    data = json.loads(json.dumps(net.st.snapshot(net.now, 1000.0)))
    again = Net()
    again.down = set(net.down)
    again.st.restore(data, 50.0, 1001.0)
    assert again.states() == net.states()
    assert again.send() == Counter({"h2": 1, "h3": 1, "h4": 1})
    data["channels"][0]["tree"]["s9"] = ["s1", 99, 1]
    with pytest.raises(ValueError):
        Net().st.restore(data, 0, 0)


def test_igmp_records_outside_the_ranges_are_ignored():
    n = Net(groups=["232.0.0.0/8"])
    h = TOPO.hosts["h2"]
    frame = bytes(Ether(src=h.mac) / IP(src="10.5.0.2", dst="224.0.0.22") / IGMPv3_MR(records=[
        IGMPv3_MR_Group(rtype=4, maddr="239.1.1.1"), IGMPv3_MR_Group(rtype=4, maddr="232.1.1.1")]))
    eff = n.st.igmp(h.switch, h.port, wire.parse_igmp(frame), 0, None, n.intent)
    assert list(n.st.members[(h.switch, h.port)]) == ["232.1.1.1"] and "outside" in eff.notes[0]
