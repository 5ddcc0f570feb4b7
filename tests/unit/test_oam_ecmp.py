"""OAM ECMP: SID encoding, bounded report parsing, expected paths, and the analysis.

The analysis is tested end to end on a small data-plane simulator: a real
probe (the bytes the controller sends) walks the switch states the app and the
fabric compute (merged like the core merges them), group buckets fork, links
carry copies to the next switch, every output to the controller becomes a
packet-in parsed by :func:`parse_report`.  Faults are injected into the routes
the replicate groups mirror (as if read from a faulty switch) or into the
simulated links, and the findings must name the switch and bucket.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.lib import oam_ecmp_model as m
from ryu_apps.lib import pipeline
from ryu_apps.lib.app import FabricView
from ryu_apps.lib.ofdata import (OFPP_CONTROLLER, DecTtl, GroupAction, Meter, MeterBand, Output, SetField)
from ryu_apps.lib.oam_ecmp_topo import fat_tree, leaf_spine
from ryu_apps.lib.state import SwitchState
from ryu_apps.lib.topology import from_dict, load
from ryu_apps.oam_ecmp import OamIntent, compute_oam, intended_routes

TOPO = Path(__file__).resolve().parents[2] / "topologies"
CTL = OFPP_CONTROLLER


@pytest.fixture(scope="module")
def ls():
    return load(TOPO / "oam_ecmp_leafspine.yaml")


@pytest.fixture(scope="module")
def ft():
    return load(TOPO / "oam_ecmp_fattree.yaml")


def plan_of(topo, **overrides):
    return m.make_plan({n: s.dpid for n, s in topo.switches.items()}, "fcbb:bb00::/32", overrides)


# --- the SID plan and the wire formats --------------------------------------------------------


def test_sid_layout(ls):
    plan = plan_of(ls)
    assert plan.nodes["l2"] == 0x602  # low 16 bits of the dpid
    sid = plan.sid("l2", probe_id=0xDEADBEEF, src="l1", hop_budget=7)
    assert str(sid) == "fcbb:bb00:602:e0a:dead:beef:601:7"
    assert sid in ipaddress.IPv6Network(plan.function_prefix("l2"))
    assert sid not in ipaddress.IPv6Network(plan.function_prefix("l3"))
    assert str(plan.locator("l2")) == "fcbb:bb00:602::/48"
    assert plan.to_json()["locators"]["s1"]["replicate_sid_prefix"] == "fcbb:bb00:6a01:e0a::/64"


def test_node_ids_must_be_unique_and_nonzero():
    with pytest.raises(ValueError, match=r"locators\.b: node id 0x5 is used by both a and b"):
        m.make_plan({"a": 5, "b": 0x10005}, "fcbb:bb00::/32", {})
    with pytest.raises(ValueError, match=r"locators\.a: node id 0"):
        m.make_plan({"a": 0x10000}, "fcbb:bb00::/32", {})
    assert m.make_plan({"a": 5, "b": 0x10005}, "fcbb:bb00::/32", {"b": 9}).nodes == {"a": 5, "b": 9}


def test_intent_validation_names_the_field():
    with pytest.raises(ValidationError, match="locator_block"):
        OamIntent(locator_block="fcbb:bb00::/48")
    with pytest.raises(ValidationError, match="locators"):
        OamIntent(locators={"l1": 0})
    with pytest.raises(ValidationError, match="colour"):
        OamIntent.model_validate({"colour": "red"})
    with pytest.raises(ValidationError, match="hop_budget"):
        OamIntent(hop_budget=1)


def report_bytes(probe: bytes, kind: int, port: int, hop_limit: int) -> bytes:
    data = bytearray(probe)
    data[0:6] = bytes(int(x, 16) for x in m.marker_mac(kind, port).split(":"))
    data[21] = hop_limit
    return bytes(data)


def test_probe_and_report_round_trip(ls):
    plan = plan_of(ls)
    probe = m.build_probe(plan, "l1", "l3", 77, 9)
    assert len(probe) == 14 + 40 + 8 + len(m.PROBE_PAYLOAD)
    assert probe[12:14] == b"\x86\xdd" and probe[21] == 9
    rep = m.parse_report(report_bytes(probe, m.FWD, 13, 8), plan.block_int)
    assert (rep.kind, rep.port, rep.hop_limit, rep.probe_id, rep.hop_budget) == (m.FWD, 13, 8, 77, 9)
    assert plan.switch_of(rep.dest_node) == "l3" and plan.switch_of(rep.src_node) == "l1"
    assert rep.hop == 1  # forwarded by the first switch (after its dec_ttl)
    assert m.parse_report(report_bytes(probe, m.ARRIVE, 0, 8), plan.block_int).hop == 2


def test_probe_udp_checksum_is_valid(ls):
    plan = plan_of(ls)
    probe = m.build_probe(plan, "l1", "l3", 5, 7)
    ip6, udp = probe[14:54], probe[54:]
    pseudo = ip6[8:40] + len(udp).to_bytes(4, "big") + b"\0\0\0\x11"
    assert m._checksum(pseudo + udp) == 0


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d[:40], "shorter"),
    (lambda d: b"\x02" + d[1:], "not a report marker"),
    (lambda d: d[:2] + b"\x09" + d[3:], "unknown report kind"),
    (lambda d: d[:12] + b"\x81\x00" + d[14:], "not IPv6"),
    (lambda d: d[:14] + b"\x40" + d[15:], "IP version 4"),
    (lambda d: d[:38] + b"\xfd\x00" + d[40:], "outside the SID block"),
    (lambda d: d[:44] + b"\x00\x01" + d[46:], "not replicate"),
])
def test_malformed_reports_are_refused(ls, mutate, msg):
    plan = plan_of(ls)
    good = report_bytes(m.build_probe(plan, "l1", "l2", 1, 7), m.FWD, 11, 6)
    with pytest.raises(m.BadReport, match=msg):
        m.parse_report(mutate(good), plan.block_int)


def test_report_parsing_is_bounded_on_random_bytes(ls):
    plan = plan_of(ls)
    rnd = random.Random(4)
    good = report_bytes(m.build_probe(plan, "l1", "l2", 1, 7), m.FWD, 11, 6)
    for _ in range(3000):
        n = rnd.randrange(0, 200)
        data = bytes(rnd.randrange(256) for _ in range(n)) if rnd.random() < 0.5 else \
            bytes(b ^ (rnd.randrange(256) if rnd.random() < 0.1 else 0) for b in good[:n] + good[n:])
        try:
            m.parse_report(data, plan.block_int)
        except m.BadReport:
            pass  # the only error a packet from the wire may cause


# --- expected paths and MDA -----------------------------------------------------------


def test_expected_paths(ls, ft):
    assert [str(p) for p in m.expected_paths(ls.graph(), "l1", "l2")] == \
        ["l1:11>s1:2>l2", "l1:12>s2:2>l2", "l1:13>s3:2>l2"]
    assert len(m.expected_paths(ft.graph(), "e11", "e12")) == 2    # inside a pod
    assert len(m.expected_paths(ft.graph(), "e11", "e42")) == 4    # across pods
    assert {p.length for p in m.expected_paths(ft.graph(), "e11", "e42")} == {4}


def test_parallel_links_are_distinct_paths():
    topo = from_dict({"lab": {"name": "par"}, "switches": {"a": {"dpid": 1}, "b": {"dpid": 2}},
                      "hosts": {"h1": {"mac": "02:00:00:00:00:01", "ipv6": "fd00::1/64"},
                                "h2": {"mac": "02:00:00:00:00:02", "ipv6": "fd00::2/64"}},
                      "links": [["h1", "a"], ["h2", "b"], {"a": "a", "b": "b", "a_port": 5, "b_port": 5},
                                {"a": "a", "b": "b", "a_port": 6, "b_port": 6}]})
    assert [str(p) for p in m.expected_paths(topo.graph(), "a", "b")] == ["a:5>b", "a:6>b"]


def test_mda_probe_counts():
    assert [m.mda_probes(k) for k in range(1, 6)] == [6, 11, 16, 21, 27]


def test_mda_cost_of_a_leaf_spine_pair(ls):
    cost = m.mda_cost(m.expected_paths(ls.graph(), "l1", "l2"))
    # l1 has 3 next hops (16 probes), each spine 1 (6 probes each)
    assert cost == {"all_hops": 16 + 3 * 6, "branching_hops": 16, "hops": 4, "branching": 1}


# --- desired state --------------------------------------------------------------------


def states_for(topo, routes=None, intent=None, down=frozenset()):
    intent = intent or OamIntent()
    view = FabricView(topo, frozenset(down))
    plan = plan_of(topo)
    leaves = m.leaves_of(topo)
    intended, _ = intended_routes(view, leaves, FabricIntent())
    if routes:
        for sw, per in routes.items():
            intended[sw].update(per)
    oam = compute_oam(view, plan, leaves, intended, intent)
    fab = compute_fabric(view, FabricIntent())
    merged = {}
    for sw in topo.switches:
        st = SwitchState()
        st.add_meter(Meter(1, bands=(MeterBand(200),)))  # the core's punt meter
        st.merge(fab[sw], "fabric")
        st.merge(oam[sw], "oam_ecmp")  # checks every flow against the pipeline plan
        st.check_references()
        merged[sw] = st
    return merged, plan, intended


def test_state_fits_the_pipeline_and_merges_with_the_fabric(ls, ft):
    for topo in (ls, ft):
        states, _, _ = states_for(topo)
        for st in states.values():
            oam = [f for f in st.flows.values() if f.cookie >> 56 == 6]
            assert oam
            for f in oam:
                pipeline.check_flow("oam_ecmp", f)
                if f.table == 30:
                    assert f.meter is not None  # every OAM flow is metered
            for g in st.groups.values():
                if g.group_id >> 24 == 6:
                    assert g.type == "all"
                    for b in g.buckets:
                        outs = [a for a in b.actions if isinstance(a, Output)]
                        assert len(outs) == 1  # bucket actions are an action set: one output each
                        if outs[0].port == CTL:
                            assert outs[0].max_len == 128 and isinstance(b.actions[0], SetField)


def test_replicate_group_never_outputs_to_a_host(ls):
    bad = m.Route("l1", "l2", "fd00:6:2::1", "group", group_id=7, group_type="select",
                  next_hops=(m.NextHop(11, 0), m.NextHop(1, 1)))  # bucket 1 points at h1's port
    states, plan, _ = states_for(ls, {"l1": {"l2": bad}})
    group = states["l1"].groups[6 << 24 | plan.nodes["l2"]]
    ports = [a.port for b in group.buckets for a in b.actions if isinstance(a, Output)]
    assert 1 not in ports and 11 in ports
    markers = [a.value for b in group.buckets for a in b.actions if isinstance(a, SetField)]
    assert m.marker_mac(m.EDGE, 1) in markers


# --- a data-plane simulator ---------------------------------------------------------------


class Sim:
    """Probes through merged switch states and the topology's links."""

    def __init__(self, topo, states, plan, dropping=frozenset(), max_packets=20000):
        self.topo, self.states, self.plan = topo, states, plan
        self.wiring = m.Wiring.of(topo)
        self.dropping = dropping  # (switch, port) that drop what is sent out of them
        self.max_packets = max_packets
        self.leaked: list = []

    def _walk(self, st, table, pkt):
        flow = m.lookup(st.flows.values(), table, pkt)
        if flow is None:
            return []
        outs = self._apply(st, flow.actions, dict(pkt))
        if flow.goto is not None:
            outs += self._walk(st, flow.goto, pkt)
        return outs

    def _apply(self, st, actions, pkt):
        outs = []
        for a in actions:
            if isinstance(a, DecTtl):
                pkt["nw_ttl"] -= 1
            elif isinstance(a, SetField):
                pkt[a.field] = a.value
            elif isinstance(a, Output):
                outs.append((a.port, dict(pkt)))
            elif isinstance(a, GroupAction):
                for b in st.groups[a.group_id].buckets:
                    outs += self._apply(st, b.actions, dict(pkt))
        return outs

    def run(self, src, dst, probe_id, budget, inject_at=None):
        raw = m.build_probe(self.plan, src, dst, probe_id, budget)
        pkt = {"eth_type": m.ETH_IPV6, "eth_dst": m.PROBE_ETH_DST,
               "ipv6_dst": str(self.plan.sid(dst, probe_id, src, budget)), "nw_ttl": budget}
        sw, port = inject_at or (src, CTL)
        queue = [(sw, port, pkt)]
        reports, n = [], 0
        while queue:
            n += 1
            assert n < self.max_packets, "probe explosion"
            sw, in_port, p = queue.pop(0)
            for out, q in self._walk(self.states[sw], 0, dict(p, in_port=in_port)):
                q.pop("in_port", None)
                if out == CTL:
                    data = report_bytes(raw, 0, 0, q["nw_ttl"])
                    mac = bytes(int(x, 16) for x in q["eth_dst"].split(":"))
                    reports.append((sw, in_port, mac + data[6:]))
                elif out == in_port or (sw, out) in self.dropping:
                    continue
                elif (sw, out) in self.wiring.peer:
                    queue.append((*self.wiring.peer[(sw, out)], q))
                else:
                    self.leaked.append((sw, out, q))
        return reports

    def verify(self, pairs, budget=7, cap=4096):
        probes = []
        for i, (src, dst) in enumerate(pairs):
            probe = m.ProbeResult(1000 + i, src, dst, budget)
            for sw, in_port, data in self.run(src, dst, probe.probe_id, budget):
                probe.add(sw, in_port, m.parse_report(data, self.plan.block_int), cap)
            probes.append(probe)
        return probes


def all_pairs(topo):
    leaves = m.leaves_of(topo)
    return [(a, b) for a in leaves for b in leaves if a != b]


def analyze(topo, states, plan, routes, probes, down=frozenset()):
    view = FabricView(topo, frozenset(down))
    _, intended = intended_routes(view, m.leaves_of(topo), FabricIntent())
    ctx = m.Context(m.Wiring.of(topo), topo.graph(), m.distances(topo.graph(), m.leaves_of(topo)), routes,
                    intended, frozenset(down))
    return m.analyze(probes, ctx)


def findings(result, cls):
    return [f for f in result["findings"] if f["class"] == cls]


@pytest.mark.parametrize("name", ["ls", "ft"])
def test_healthy_fabric_every_pair_exactly_expected(request, name):
    topo = request.getfixturevalue(name)
    states, plan, routes = states_for(topo)
    sim = Sim(topo, states, plan)
    result = analyze(topo, states, plan, routes, sim.verify(all_pairs(topo)))
    assert result["findings"] == []
    for p in result["pairs"]:
        assert p["verdict"] == "ok" and p["observed"] == p["expected"], p
    assert not sim.leaked, "probes reached a host port"
    n = len(all_pairs(topo))
    assert result["totals"]["probes"] == n and result["totals"]["mda_probes"] > 10 * n


def test_probe_from_a_host_port_is_dropped(ls):
    states, plan, _ = states_for(ls)
    sim = Sim(ls, states, plan)
    assert sim.run("l1", "l2", 1, 7, inject_at=("l1", 1)) == []  # host h1's port
    assert not sim.leaked


def test_removed_bucket_is_a_missing_member_and_asymmetry(ls):
    states0, plan, routes = states_for(ls)
    r = routes["l1"]["l2"]
    short = m.Route("l1", "l2", r.address, "group", group_id=r.group_id, group_type="select",
                    next_hops=tuple(nh for nh in r.next_hops if nh.port != 13))
    faulty = {"l1": {d: short for d in ("l2", "l3", "l4")}}  # the group is shared by every destination
    states, plan, routes = states_for(ls, faulty)
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan).verify(all_pairs(ls)))
    missing = findings(result, m.MISSING)
    assert {(tuple(f["pair"]), f["switch"], f["port"]) for f in missing} == \
        {(("l1", d), "l1", 13) for d in ("l2", "l3", "l4")}
    assert all(f["cause"] == "bucket_removed" and f["group"] == f"{r.group_id:#010x}" for f in missing)
    assert {tuple(f["pair"]) for f in findings(result, m.ASYMMETRIC)} == {("l1", "l2"), ("l1", "l3"), ("l1", "l4")}
    assert not findings(result, m.BLACK_HOLE) and not findings(result, m.LOOP)


def test_dropping_port_is_a_black_hole_naming_the_bucket(ls):
    states, plan, routes = states_for(ls)
    probes = Sim(ls, states, plan, dropping={("l1", 12)}).verify(all_pairs(ls))
    result = analyze(ls, states, plan, routes, probes)
    holes = findings(result, m.BLACK_HOLE)
    assert {(tuple(f["pair"]), f["switch"], f["port"], f["bucket"]) for f in holes} == \
        {(("l1", d), "l1", 12, 1) for d in ("l2", "l3", "l4")}
    assert not findings(result, m.MISSING)  # the member is there, its copies vanish


def test_longer_bucket_is_suboptimal_and_hairpin_is_a_black_hole(ls):
    routes0 = states_for(ls)[2]
    longer = m.Route("s1", "l2", routes0["s1"]["l2"].address, "group", group_id=0x0E0A0602, group_type="select",
                     next_hops=(m.NextHop(2, 0), m.NextHop(3, 1)))  # s1 -> l2 or l3
    states, plan, routes = states_for(ls, {"s1": {"l2": longer}})
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan).verify(all_pairs(ls)))
    sub = findings(result, m.SUBOPTIMAL)
    assert sub and all((f["switch"], f["port"], f["bucket"]) == ("s1", 3, 1) for f in sub)
    assert "l1:11>s1:3>l3:12>s2:2>l2" in sub[0]["paths"]
    holes = findings(result, m.BLACK_HOLE)  # l3 hashing the bounced copy back to s1 = output to the in port
    assert holes and all("came in on" in f["detail"] for f in holes)
    assert not findings(result, m.MISSING)


def test_loop_ends_cleanly_and_names_the_cycle(ls):
    routes0 = states_for(ls)[2]
    cycle = [("s1", 3), ("l3", 12), ("s2", 4), ("l4", 11)]  # s1 > l3 > s2 > l4 > s1
    faulty = {sw: {"l2": m.Route(sw, "l2", routes0[sw]["l2"].address, "output", next_hops=(m.NextHop(p),))}
              for sw, p in cycle}
    states, plan, routes = states_for(ls, faulty)
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan).verify(all_pairs(ls), budget=9))
    loops = findings(result, m.LOOP)
    assert loops and {f["switch"] for f in loops} <= {"s1", "s2", "l3", "l4"}
    assert any("cycle s1>l3>s2>l4>s1" in f["detail"] or "cycle l3>s2>l4>s1>l3" in f["detail"] for f in loops)
    assert all(p["outcomes"]["expired"] == 0 for p in result["pairs"] if p["dst"] != "l2")


def test_loop_with_branching_is_bounded_by_the_hop_budget(ft):
    # e11's aggregation a11 sends e12's traffic up to both cores, each core back down to a11: a fan-out loop
    routes0 = states_for(ft)[2]
    a11 = m.Route("a11", "e12", routes0["a11"]["e12"].address, "group", group_id=1, group_type="select",
                  next_hops=(m.NextHop(11, 0), m.NextHop(12, 1)))
    cores = {c: {"e12": m.Route(c, "e12", "", "output", next_hops=(m.NextHop(1),))} for c in ("c1", "c2")}
    states, plan, routes = states_for(ft, {"a11": {"e12": a11}, **cores})
    probes = Sim(ft, states, plan).verify([("e11", "e12")], budget=12)
    assert probes[0].received < 2000  # hop budget bounds the replication
    result = analyze(ft, states, plan, routes, probes)
    assert findings(result, m.BLACK_HOLE)  # the cores send it back out of the port it came in on
    assert findings(result, m.MISSING)


def test_edge_bucket_and_no_route_are_black_holes(ls):
    routes0 = states_for(ls)[2]
    r = routes0["l1"]["l2"]
    to_host = m.Route("l1", "l2", r.address, "group", group_id=r.group_id, group_type="select",
                      next_hops=(m.NextHop(11, 0), m.NextHop(12, 1), m.NextHop(1, 2)))
    gone = m.Route("s2", "l2", r.address, "none")
    states, plan, routes = states_for(ls, {"l1": {"l2": to_host}, "s2": {"l2": gone}})
    sim = Sim(ls, states, plan)
    result = analyze(ls, states, plan, routes, sim.verify([("l1", "l2")]))
    holes = {(f["switch"], f["port"]) for f in findings(result, m.BLACK_HOLE)}
    assert holes == {("l1", 1), ("s2", None)}
    assert not sim.leaked
    assert {(f["switch"], f["port"]) for f in findings(result, m.MISSING)} == {("l1", 13)}


def test_resolve_route_reads_groups_and_liveness(ls):
    view = FabricView(ls)
    fab = compute_fabric(view, FabricIntent())["l1"]
    flows = list(fab.flows.values())
    addr, pkt = m.representative(ls, "l2")
    r = m.resolve_route("l1", "l2", addr, pkt, flows, fab.groups, 90)
    assert r.kind == "group" and r.live_ports == (11, 12, 13) and r.group_type == "select"
    r = m.resolve_route("l1", "l2", addr, pkt, flows, fab.groups, 90, frozenset({("l1", 12)}))
    assert r.live_ports == (11, 13) and r.hop_of(12).live is False
    r = m.resolve_route("l1", "l2", addr, pkt, flows, {}, 90)
    assert r.kind == "missing_group"
    assert m.resolve_route("l1", "l2", addr, pkt, [], {}, 90).kind == "none"


def test_link_down_cause(ls):
    down = frozenset({("s3", 2), ("l2", 13)})
    states, plan, routes = states_for(ls, down=down)
    sim = Sim(ls, states, plan, dropping=down)
    result = analyze(ls, states, plan, routes, sim.verify(all_pairs(ls)), down=down)
    missing = findings(result, m.MISSING)
    assert missing and all(f["cause"] == "link_down" for f in missing)
    assert {tuple(f["pair"]) for f in missing} == {("l1", "l2"), ("l3", "l2"), ("l4", "l2"),
                                                   ("l2", "l1"), ("l2", "l3"), ("l2", "l4")}
    assert not findings(result, m.ASYMMETRIC)  # both directions lost the same spine


def test_render_table(ls):
    states, plan, routes = states_for(ls)
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan, dropping={("l1", 12)}).verify(all_pairs(ls)))
    text = m.render_table({"id": 1, "topology": "oamls", "hop_budget": 7, "timing": {"total_s": 0.2}, **result})
    assert "BLACK_HOLE" in text and "l1->l2 l1 port 12" in text and "bucket 1" in text
    assert text.splitlines()[1].split() == ["pair", "verdict", "expected", "observed", "copies", "findings"]


def test_generated_topologies_fit_interface_names():
    for data in (leaf_spine(32, 8), fat_tree(8)):
        data["lab"]["prefix"] = "zzzz"  # the longest prefix a test lab uses
        topo = from_dict(data)
        assert len(m.leaves_of(topo)) in (32, 32)


def test_compiled_table_agrees_with_lookup(ls, ft):
    for topo in (ls, ft):
        states, _, _ = states_for(topo)
        for sw, st in states.items():
            for table in (0, 30, 90):
                compiled = m.Table(st.flows.values(), table)
                for h in topo.hosts.values():
                    for pkt in ({"eth_type": 0x86DD, "ipv6_dst": str(h.ipv6.ip)},
                                {"eth_type": 0x0800, "ipv4_dst": str(h.ipv4.ip)},
                                {"eth_type": 0x86DD, "ipv6_dst": "fcbb:bb00:602:e0a::1", "nw_ttl": 1,
                                 "in_port": 11}):
                        assert compiled.lookup(pkt) == m.lookup(st.flows.values(), table, pkt), (sw, table, pkt)


def test_a_probe_not_launched_is_not_ok(ls):
    states, plan, routes = states_for(ls)
    probes = Sim(ls, states, plan).verify([("l1", "l2"), ("l2", "l1")])
    probes[0] = m.ProbeResult(probes[0].probe_id, "l1", "l2", 7, launched=False)
    result = analyze(ls, states, plan, routes, probes)
    verdicts = {(p["src"], p["dst"]): p["verdict"] for p in result["pairs"]}
    assert verdicts == {("l1", "l2"): "not_launched", ("l2", "l1"): "ok"}
    assert result["totals"]["ok"] == 1 and result["totals"]["not_launched"] == 1


def test_a_silent_source_is_a_black_hole(ls):
    states, plan, routes = states_for(ls)
    probe = m.ProbeResult(5, "l1", "l2", 7)  # launched, but not one report came back
    result = analyze(ls, states, plan, routes, [probe])
    assert [(f["class"], f["switch"]) for f in result["findings"]] == [(m.BLACK_HOLE, "l1")]


def test_lost_reports_are_filled_by_a_confirmation_probe(ls):
    states, plan, routes = states_for(ls)
    sim = Sim(ls, states, plan)
    first, second = sim.verify([("l1", "l2")]), sim.verify([("l1", "l2")])
    lost = [k for k in first[0].reports if k[0] == "s2"]  # s2's report of its copy never reached us
    for k in lost:
        del first[0].reports[k]
    broken = analyze(ls, states, plan, routes, first)
    assert findings(broken, m.BLACK_HOLE)  # on its own it reads as a black hole ...
    first[0].merge(second[0])
    healed = analyze(ls, states, plan, routes, first)
    assert healed["findings"] == [] and healed["pairs"][0]["observed"] == healed["pairs"][0]["expected"]
