"""OAM ECMP: probe and report encoding, bounded report parsing, expected paths, and the analysis.

The analysis is tested end to end on a small data-plane simulator: a real
probe (a data packet of the pair: the hosts' own IPv4 or IPv6 addresses) enters
the source leaf on its host's port and walks every table of the switch states
(the fabric's, with faults injected as a bad push would, plus the probe twins
and mirror groups the app computes from exactly those states, as if read from
the switch); a select group picks one bucket for data, the twins copy probes
to every bucket the switch can pick; links carry copies to the next switch;
every output to the controller becomes a packet-in parsed by
:func:`parse_report`.  Findings must name the switch and bucket.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from ovs_scripts.topogen import fat_tree, leaf_spine
from ryu_apps.fabric import FabricIntent, compute_fabric, next_hop_group_ids
from ryu_apps.framework import pipeline
from ryu_apps.framework.app import FabricView
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.topology import from_dict, load
from ryu_apps.functions.oam_ecmp import model as m
from ryu_apps.oam_ecmp import (
    TWIN_TABLES,
    OamIntent,
    ReadTables,
    compute_oam,
    intended_routes,
)
from ryu_apps.openflow.ofdata import (
    OFPP_CONTROLLER,
    Bucket,
    DecTtl,
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    MeterBand,
    Output,
    SetField,
)

TOPO = Path(__file__).resolve().parents[2] / "topologies"
CTL = OFPP_CONTROLLER
RMAC = FabricIntent().router_mac


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
    data[22 if data[12:14] == b"\x08\x00" else 21] = hop_limit
    return bytes(data)


def probe_of(topo, src, dst, fam, probe_id=77, budget=9):
    plan = plan_of(topo)
    return m.build_probe(plan, src, dst, probe_id, budget, m.endpoints(topo, src)[fam], m.endpoints(topo, dst)[fam],
                         RMAC)


@pytest.mark.parametrize("fam", [4, 6])
def test_probe_is_a_data_packet_of_the_pair_and_reports_round_trip(ls, fam):
    plan = plan_of(ls)
    probe = probe_of(ls, "l1", "l3", fam)
    l3 = 20 if fam == 4 else 40
    assert len(probe) == 14 + l3 + 8 + m.PROBE_DATA_LEN
    assert probe[0:6] == bytes.fromhex("0efab0000001") and probe[6:12] == bytes.fromhex("020000060001")
    if fam == 4:
        assert probe[12:14] == b"\x08\x00" and probe[22] == 9 and probe[26:34] == bytes([10, 6, 1, 1, 10, 6, 3, 1])
        assert m._checksum(probe[14:34]) == 0
    else:
        assert probe[12:14] == b"\x86\xdd" and probe[21] == 9
        assert probe[22:54] == ipaddress.IPv6Address("fd00:6:1::1").packed + ipaddress.IPv6Address("fd00:6:3::1").packed
    rep = m.parse_report(report_bytes(probe, m.FWD, 13, 7))
    assert (rep.kind, rep.port, rep.hop_limit, rep.probe_id, rep.hop_budget, rep.family) == (m.FWD, 13, 7, 77, 9, fam)
    assert plan.switch_of(rep.dest_node) == "l3" and plan.switch_of(rep.src_node) == "l1"
    assert rep.hop == 2  # ingress (routed: dec_ttl) and the twin's dec_ttl at the first switch
    assert m.parse_report(report_bytes(probe, m.EXPIRE, 0, 1)).hop == 9


@pytest.mark.parametrize("fam", [4, 6])
def test_probe_udp_checksum_is_valid(ls, fam):
    probe = probe_of(ls, "l1", "l3", fam, 5, 7)
    if fam == 6:
        ip6, udp = probe[14:54], probe[54:]
        pseudo = ip6[8:40] + len(udp).to_bytes(4, "big") + b"\0\0\0\x11"
    else:
        ip4, udp = probe[14:34], probe[34:]
        pseudo = ip4[12:20] + b"\0\x11" + len(udp).to_bytes(2, "big")
    assert m._checksum(pseudo + udp) == 0


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d[:40], "too short"),
    (lambda d: d[:6], "shorter"),
    (lambda d: b"\x02" + d[1:], "not a report marker"),
    (lambda d: d[:2] + b"\x09" + d[3:], "unknown report kind"),
    (lambda d: d[:12] + b"\x81\x00" + d[14:], "neither IPv4 nor IPv6"),
    (lambda d: d[:14] + b"\x40" + d[15:], "IP version 4"),
    (lambda d: d[:20] + b"\x06" + d[21:], "not UDP"),
    (lambda d: d[:54] + b"\x00\x35" + d[56:], "not the probe's"),
    (lambda d: d[:62] + b"XAM-ECMP" + d[70:], "payload"),
    (lambda d: d[:79] + b"\x04" + d[80:], "payload says IPv4"),
])
def test_malformed_reports_are_refused(ls, mutate, msg):
    good = report_bytes(probe_of(ls, "l1", "l2", 6, 1, 7), m.FWD, 11, 6)
    with pytest.raises(m.BadReport, match=msg):
        m.parse_report(mutate(good))


def test_report_parsing_is_bounded_on_random_bytes(ls):
    rnd = random.Random(4)
    for fam in (4, 6):
        good = report_bytes(probe_of(ls, "l1", "l2", fam, 1, 7), m.FWD, 11, 6)
        for _ in range(1500):
            n = rnd.randrange(0, 200)
            data = bytes(rnd.randrange(256) for _ in range(n)) if rnd.random() < 0.5 else \
                bytes(b ^ (rnd.randrange(256) if rnd.random() < 0.1 else 0) for b in good[:n] + good[n:])
            try:
                m.parse_report(data)
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


# --- the switches, the app's state, and a data-plane simulator -------------------------------------


class Switches:
    """The fabric's state per switch, as the switches hold it (faults are injected here, behind the
    controller's back); ``read()`` is what a verification reads from them, exactly."""

    def __init__(self, topo, down=frozenset()):
        self.topo, self.down = topo, frozenset(down)
        fab = compute_fabric(FabricView(topo, self.down), FabricIntent())
        self.flows = {sw: {f.key: f for f in st.flows.values()} for sw, st in fab.items()}
        self.groups = {sw: dict(st.groups) for sw, st in fab.items()}
        self.meters = {sw: dict(st.meters) for sw, st in fab.items()}

    def route(self, sw, addr):
        return next(f for f in self.flows[sw].values() if f.table == 90 and
                    any(v == addr for n, v, _ in f.match.fields if n in ("ipv4_dst", "ipv6_dst")))

    def add(self, sw, flow):
        self.flows[sw][flow.key] = flow

    def delete(self, sw, flow):
        del self.flows[sw][flow.key]

    def read(self):
        return {sw: ReadTables(tuple(f for f in fl.values() if f.table in TWIN_TABLES), dict(self.groups[sw]))
                for sw, fl in self.flows.items()}


def routes_of(switches):
    """What read_routes derives from the read tables (per leaf and family)."""
    topo, out = switches.topo, {}
    for sw in topo.switches:
        out[sw] = {}
        for d in m.leaves_of(topo):
            if d == sw:
                continue
            for fam, ep in m.endpoints(topo, d).items():
                out[sw][m.route_key(d, fam)] = m.resolve_route(
                    sw, d, ep.address, m.lookup_packet(ep), list(switches.flows[sw].values()), switches.groups[sw],
                    90, switches.down)
    return out


def states_for(topo, switches=None, intent=None, down=frozenset()):
    """(executing state per switch, plan, routes): the switches' own state plus the OAM state made from it."""
    intent = intent or OamIntent()
    switches = switches or Switches(topo, down)
    view = FabricView(topo, frozenset(down))
    plan = plan_of(topo)
    oam = compute_oam(view, plan, m.leaves_of(topo), switches.read(), intent)
    merged = {}
    for sw in topo.switches:
        st = SwitchState()
        st.add_meter(Meter(1, bands=(MeterBand(200),)))  # the core's punt meter
        for f in switches.flows[sw].values():
            st.flows[f.key] = f
        for g in switches.groups[sw].values():
            st.groups[g.group_id] = g
        st.meters.update(switches.meters[sw])
        st.merge(oam[sw], "oam_ecmp")  # checks every flow against the pipeline plan
        merged[sw] = st
    return merged, plan, routes_of(switches)


class Sim:
    """Packets of the pair through the switch states and the topology's links."""

    def __init__(self, topo, states, plan, dropping=frozenset(), max_packets=20000):
        self.topo, self.states, self.plan = topo, states, plan
        self.wiring = m.Wiring.of(topo)
        self.dropping = dropping  # (switch, port) that drop what is sent out of them
        self.max_packets = max_packets
        self.leaked: list = []     # probe copies that reached a host port
        self.delivered: list = []  # (switch, port) where data packets left for a host

    def _walk(self, st, table, pkt):
        flow = m.lookup(st.flows.values(), table, pkt)
        if flow is None:
            return []
        outs = self._apply(st, flow.actions, pkt)
        if flow.goto is not None:
            outs += self._walk(st, flow.goto, pkt)
        return outs

    def _apply(self, st, actions, pkt):
        outs = []
        for a in actions:
            if isinstance(a, DecTtl):
                if pkt["nw_ttl"] <= 1:
                    return outs  # OVS: invalid ttl, the packet stops here
                pkt["nw_ttl"] -= 1
            elif isinstance(a, SetField):
                pkt[a.field] = a.value
            elif isinstance(a, Output):
                outs.append((a.port, dict(pkt)))
            elif isinstance(a, GroupAction):
                g = st.groups[a.group_id]
                buckets = g.buckets
                if g.type == "select":  # data: one bucket the switch can pick (the first, as a fixed hash)
                    buckets = [b for b in buckets if b.weight and (None, b.watch_port) not in self.dropping][:1]
                for b in buckets:
                    outs += self._apply(st, b.actions, dict(pkt))
        return outs

    def packet(self, src, dst, fam, sport, budget):
        s_ep, d_ep = m.endpoints(self.topo, src)[fam], m.endpoints(self.topo, dst)[fam]
        l3 = {"eth_type": 0x0800, "ipv4_src": s_ep.address, "ipv4_dst": d_ep.address} if fam == 4 else \
            {"eth_type": m.ETH_IPV6, "ipv6_src": s_ep.address, "ipv6_dst": d_ep.address}
        return s_ep.port, {"eth_src": s_ep.mac, "eth_dst": RMAC, "vlan_vid": 0, **l3, "ip_proto": 17,
                           "udp_src": sport, "udp_dst": 5002 if sport != m.OAM_UDP_PORT else m.OAM_UDP_PORT,
                           "nw_ttl": budget}

    def run(self, src, dst, fam=6, probe_id=1, budget=7, raw=None, sport=m.OAM_UDP_PORT):
        port, pkt = self.packet(src, dst, fam, sport, budget)
        queue = [(src, port, pkt)]
        reports, n = [], 0
        while queue:
            n += 1
            assert n < self.max_packets, "probe explosion"
            sw, in_port, p = queue.pop(0)
            for out, q in self._walk(self.states[sw], 0, dict(p, in_port=in_port)):
                q.pop("in_port", None)
                if out == CTL:
                    if raw is not None:
                        data = report_bytes(raw, 0, 0, q["nw_ttl"])
                        mac = bytes(int(x, 16) for x in q["eth_dst"].split(":"))
                        reports.append((sw, in_port, mac + data[6:]))
                elif out == in_port or (sw, out) in self.dropping:
                    continue
                elif (sw, out) in self.wiring.peer:
                    queue.append((*self.wiring.peer[(sw, out)], q))
                elif sport == m.OAM_UDP_PORT:
                    self.leaked.append((sw, out, q))
                else:
                    self.delivered.append((sw, out))
        return reports

    def verify(self, pairs, budget=7, cap=4096, families=(4, 6)):
        probes = []
        for i, (src, dst) in enumerate(pairs):
            for fam in families:
                probe = m.ProbeResult(1000 + 2 * i + fam, src, dst, budget, family=fam,
                                      root_port=m.endpoints(self.topo, src)[fam].port)
                raw = m.build_probe(self.plan, src, dst, probe.probe_id, budget, m.endpoints(self.topo, src)[fam],
                                    m.endpoints(self.topo, dst)[fam], RMAC)
                for sw, in_port, data in self.run(src, dst, fam, probe.probe_id, budget, raw):
                    probe.add(sw, in_port, m.parse_report(data), cap)
                probes.append(probe)
        return probes

    def data_reaches(self, src, dst, fam) -> bool:
        """Does a data packet of the pair (the path the switches' select groups pick) reach dst's host?"""
        self.delivered = []
        self.run(src, dst, fam, sport=40000)
        return (dst, m.endpoints(self.topo, dst)[fam].port) in self.delivered


def all_pairs(topo):
    leaves = m.leaves_of(topo)
    return [(a, b) for a in leaves for b in leaves if a != b]


def analyze(topo, states, plan, routes, probes, down=frozenset()):
    view = FabricView(topo, frozenset(down))
    _, intended = intended_routes(view, m.leaves_of(topo), FabricIntent())
    ctx = m.Context(m.Wiring.of(topo), topo.graph(), m.distances(topo.graph(), m.leaves_of(topo)), routes,
                    intended, frozenset(down))
    return m.analyze(probes, ctx)


def findings(result, cls, family=None):
    return [f for f in result["findings"] if f["class"] == cls and family in (None, f["family"])]


def verdicts(result):
    return {(p["src"], p["dst"], p["family"]): p["verdict"] for p in result["pairs"]}


def test_state_fits_the_pipeline_and_merges_with_the_fabric(ls, ft):
    for topo in (ls, ft):
        states, _, _ = states_for(topo)
        for st in states.values():
            st.check_references()
            oam = [f for f in st.flows.values() if f.cookie >> 56 == 6]
            assert oam and any(f.table == 90 for f in oam)
            for f in oam:
                pipeline.check_flow("oam_ecmp", f)
                assert f.meter is not None  # every OAM flow is metered
                if f.table == 90:  # a twin: one above a flow of the switch, probes only
                    assert {n: v for n, v, _ in f.match.fields}["udp_dst"] == m.OAM_UDP_PORT
                    assert any(g.table == 90 and g.priority == f.priority - 1 and g.cookie >> 56 != 6
                               for g in st.flows.values())
            for g in st.groups.values():
                if g.group_id >> 24 == 6:
                    assert g.type == "all"
                    for b in g.buckets:
                        outs = [a for a in b.actions if isinstance(a, Output)]
                        assert len(outs) == 1  # bucket actions are an action set: one output each
                        if outs[0].port == CTL:
                            assert outs[0].max_len == 128 and isinstance(b.actions[0], SetField)
    for table, prio in ((90, 5000), (80, 501)):  # twins: one above another app's band, in the tables that allow them
        with pytest.raises(pipeline.PipelineError):
            pipeline.check_flow("oam_ecmp", Flow(table=table, priority=prio, match=Match(), cookie=6 << 56))


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
    n = 2 * len(all_pairs(topo))
    assert result["totals"]["probes"] == n and result["totals"]["mda_probes"] > 10 * n
    assert all(sim.data_reaches(a, b, fam) for a, b in all_pairs(topo)[:6] for fam in (4, 6))


# --- the faults of issue 9 section 3: what traffic suffers, the probe must see ---------------------


def test_table0_drop_on_a_spine_is_a_black_hole_for_both_families(ls):
    sws = Switches(ls)
    for addr, eth in (("10.6.2.1", 0x0800), ("fd00:6:2::1", m.ETH_IPV6)):
        dst = "ipv4_dst" if eth == 0x0800 else "ipv6_dst"
        sws.add("s2", Flow(table=0, priority=300, match=Match(eth_type=eth, **{dst: addr})))
    states, plan, routes = states_for(ls, sws)
    sim = Sim(ls, states, plan)
    result = analyze(ls, states, plan, routes, sim.verify([("l1", "l2"), ("l3", "l2")]))
    for fam in ("ipv4", "ipv6"):
        assert {(tuple(f["pair"]), f["switch"], f["port"]) for f in findings(result, m.BLACK_HOLE, fam)} == \
            {(("l1", "l2"), "l1", 12), (("l3", "l2"), "l3", 12)}
    assert set(verdicts(result).values()) == {"fault"}
    assert not sim.leaked


def test_in_port_scoped_route_drop_hits_only_that_in_port(ls):
    sws = Switches(ls)
    for addr, eth in (("10.6.2.1", 0x0800), ("fd00:6:2::1", m.ETH_IPV6)):
        dst = "ipv4_dst" if eth == 0x0800 else "ipv6_dst"
        sws.add("s2", Flow(table=90, priority=600, match=Match(in_port=1, eth_type=eth, **{dst: addr})))
    states, plan, routes = states_for(ls, sws)
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan).verify([("l1", "l2"), ("l3", "l2")]))
    v = verdicts(result)
    assert v[("l1", "l2", "ipv4")] == v[("l1", "l2", "ipv6")] == "fault"
    assert v[("l3", "l2", "ipv4")] == v[("l3", "l2", "ipv6")] == "ok"
    assert {(f["switch"], f["port"]) for f in findings(result, m.BLACK_HOLE)} == {("l1", 12)}


def test_deleted_ipv4_route_is_an_ipv4_fault_only(ls):
    sws = Switches(ls)
    sws.delete("s2", sws.route("s2", "10.6.2.1"))
    states, plan, routes = states_for(ls, sws)
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan).verify([("l1", "l2")]))
    v = verdicts(result)
    assert v[("l1", "l2", "ipv4")] == "fault" and v[("l1", "l2", "ipv6")] == "ok"
    holes = findings(result, m.BLACK_HOLE, "ipv4")
    assert [(f["switch"], f["port"]) for f in holes] == [("l1", 12)] and "no route for 10.6.2.1" in holes[0]["detail"]


def test_zero_weight_bucket_is_never_probed_and_is_a_missing_member(ls):
    sws = Switches(ls)
    gid = next(iter(sws.groups["l1"]))
    g = sws.groups["l1"][gid]
    sws.groups["l1"][gid] = Group(gid, "select", tuple(Bucket(b.actions, weight=0 if b.watch_port == 13 else 1,
                                                              watch_port=b.watch_port) for b in g.buckets))
    assert [b.weight for b in sws.read()["l1"].groups[gid].buckets] == [1, 1, 0]  # read exactly
    states, plan, routes = states_for(ls, sws)
    mirror = states["l1"].groups[6 << 24 | gid & 0xFFFFFF]
    assert 13 not in [a.port for b in mirror.buckets for a in b.actions if isinstance(a, Output)]
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan).verify([("l1", "l2")], families=(4, 6)))
    for fam in ("ipv4", "ipv6"):
        missing = findings(result, m.MISSING, fam)
        assert [(f["switch"], f["port"], f["cause"]) for f in missing] == [("l1", 13, "bucket_inactive")]
        assert "weight is 0" in missing[0]["detail"]


def test_routes_of_any_match_shape_get_twins(ls):
    """A prefix route scoped by in_port (above the /32) sends l1's IPv4 traffic for l2 from s2 to l3 only:
    the twin of exactly that flow copies l1's probe the same way; l3's probe, from another port, is not."""
    sws = Switches(ls)
    sws.add("s2", Flow(table=90, priority=700, match=Match(in_port=1, eth_type=0x0800, ipv4_dst="10.6.2.0/24"),
                       actions=(Output(3),)))
    states, plan, routes = states_for(ls, sws)
    twins = [f for f in states["s2"].flows.values() if f.cookie >> 56 == 6 and f.priority == 701]
    assert len(twins) == 1 and ("in_port", 1, None) in twins[0].match.fields
    sim = Sim(ls, states, plan)
    result = analyze(ls, states, plan, routes, sim.verify([("l1", "l2"), ("l3", "l2")]))
    v = verdicts(result)
    assert v[("l1", "l2", "ipv4")] == "fault" and v[("l1", "l2", "ipv6")] == "ok"
    assert v[("l3", "l2", "ipv4")] == v[("l3", "l2", "ipv6")] == "ok"
    p = next(p for p in result["pairs"] if (p["src"], p["dst"], p["family"]) == ("l1", "l2", "ipv4"))
    assert "l1:12>s2:3>l3" in " ".join(p["observed"] + [x for f in result["findings"] for x in f["paths"]])
    assert not sim.leaked


def test_another_apps_table_that_outputs_to_a_host_gets_twins_and_no_probe_leaks(ls):
    """l2 steers IPv4 traffic for h2 into the NAC table (cloud_router's band), which delivers it itself:
    the probe follows the data packet there, is reported as arrived, and never reaches h2."""
    sws = Switches(ls)
    sws.add("l2", Flow(table=0, priority=4500, match=Match(in_port=12, eth_type=0x0800, ipv4_dst="10.6.2.1"),
                       goto=40, cookie=5 << 56))
    sws.add("l2", Flow(table=40, priority=500, match=Match(eth_type=0x0800, ipv4_dst="10.6.2.1"),
                       actions=(SetField("eth_dst", "02:00:00:06:00:02"), Output(1)), cookie=5 << 56))
    states, plan, routes = states_for(ls, sws)
    assert [f.priority for f in states["l2"].flows.values() if f.table == 40 and f.cookie >> 56 == 6] == [501]
    sim = Sim(ls, states, plan)
    result = analyze(ls, states, plan, routes, sim.verify([("l1", "l2")]))
    assert set(verdicts(result).values()) == {"ok"}, result["findings"]
    assert not sim.leaked
    assert sim.data_reaches("l1", "l2", 4)  # data via s2 (port 12 of l2) takes the NAC table and arrives


# --- the other faults -----------------------------------------------------------------------------


def test_removed_bucket_is_a_missing_member_and_asymmetry(ls):
    sws = Switches(ls)
    gids = next_hop_group_ids(ls)  # one next-hop group per destination: take port 13 out of each
    for d in ("l2", "l3", "l4"):
        g = sws.groups["l1"][gids[d]]
        sws.groups["l1"][gids[d]] = Group(gids[d], "select", tuple(b for b in g.buckets if b.watch_port != 13))
    states, plan, routes = states_for(ls, sws)
    result = analyze(ls, states, plan, routes, Sim(ls, states, plan).verify(all_pairs(ls)))
    missing = findings(result, m.MISSING)
    assert {(tuple(f["pair"]), f["switch"], f["port"]) for f in missing} == \
        {(("l1", d), "l1", 13) for d in ("l2", "l3", "l4")}
    assert all(f["cause"] == "bucket_removed" and f["group"] == f"{gids[f['pair'][1]]:#010x}" for f in missing)
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


def test_bucket_to_a_host_port_is_a_black_hole_and_no_probe_leaks(ls):
    sws = Switches(ls)
    gid, g = next(iter(sws.groups["l1"].items()))
    sws.groups["l1"][gid] = Group(gid, "select", tuple(
        Bucket((Output(1),), 1, 1) if b.watch_port == 13 else b for b in g.buckets))
    states, plan, routes = states_for(ls, sws)
    sim = Sim(ls, states, plan)
    result = analyze(ls, states, plan, routes, sim.verify([("l1", "l2")]))
    assert {(f["switch"], f["port"]) for f in findings(result, m.BLACK_HOLE)} == {("l1", 1)}
    assert {(f["switch"], f["port"]) for f in findings(result, m.MISSING)} == {("l1", 13)}
    assert not sim.leaked


def test_loop_ends_cleanly_and_names_the_cycle(ls):
    sws = Switches(ls)
    cycle = [("s1", 3), ("l3", 12), ("s2", 4), ("l4", 11)]  # s1 > l3 > s2 > l4 > s1
    for sw, port in cycle:
        for addr in ("10.6.2.1", "fd00:6:2::1"):
            r = sws.route(sw, addr)
            sws.add(sw, Flow(table=90, priority=r.priority, match=r.match, actions=(Output(port),), cookie=r.cookie))
    states, plan, routes = states_for(ls, sws)
    probes = Sim(ls, states, plan).verify(all_pairs(ls), budget=9)
    assert max(p.received for p in probes) < 200
    result = analyze(ls, states, plan, routes, probes)
    loops = findings(result, m.LOOP)
    assert loops and {f["switch"] for f in loops} <= {"s1", "s2", "l3", "l4"}
    assert any("cycle s1>l3>s2>l4>s1" in f["detail"] or "cycle l3>s2>l4>s1>l3" in f["detail"] for f in loops)
    assert all(p["outcomes"]["expired"] == 0 for p in result["pairs"] if p["dst"] != "l2")


def test_resolve_route_reads_groups_liveness_and_weights(ls):
    view = FabricView(ls)
    fab = compute_fabric(view, FabricIntent())["l1"]
    flows = list(fab.flows.values())
    ep = m.endpoints(ls, "l2")[6]
    addr, pkt = ep.address, m.lookup_packet(ep)
    r = m.resolve_route("l1", "l2", addr, pkt, flows, fab.groups, 90)
    assert r.kind == "group" and r.live_ports == (11, 12, 13) and r.group_type == "select"
    r = m.resolve_route("l1", "l2", addr, pkt, flows, fab.groups, 90, frozenset({("l1", 12)}))
    assert r.live_ports == (11, 13) and r.hop_of(12).live is False
    gid, g = next(iter(fab.groups.items()))
    zero = {gid: Group(gid, "select", (g.buckets[0], Bucket(g.buckets[1].actions, 0, 12), g.buckets[2]))}
    r = m.resolve_route("l1", "l2", addr, pkt, flows, zero, 90)
    assert r.live_ports == (11, 13) and r.hop_of(12).weight == 0
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
    assert "BLACK_HOLE" in text and "l1->l2 ipv4 l1 port 12" in text and "bucket 1" in text
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
            for table in (0, 90):
                compiled = m.Table(st.flows.values(), table)
                for h in topo.hosts.values():
                    for pkt in ({"eth_type": 0x86DD, "ipv6_dst": str(h.ipv6.ip)},
                                {"eth_type": 0x0800, "ipv4_dst": str(h.ipv4.ip)},
                                {"eth_type": 0x86DD, "ipv6_dst": str(h.ipv6.ip), "ip_proto": 17, "udp_src": 3594,
                                 "udp_dst": 3594, "nw_ttl": 1, "in_port": 11}):
                        assert compiled.lookup(pkt) == m.lookup(st.flows.values(), table, pkt), (sw, table, pkt)


def test_a_probe_not_launched_is_not_ok(ls):
    states, plan, routes = states_for(ls)
    probes = Sim(ls, states, plan).verify([("l1", "l2"), ("l2", "l1")], families=(6,))
    probes[0] = m.ProbeResult(probes[0].probe_id, "l1", "l2", 7, launched=False)
    result = analyze(ls, states, plan, routes, probes)
    assert verdicts(result) == {("l1", "l2", "ipv6"): "not_launched", ("l2", "l1", "ipv6"): "ok"}
    assert result["totals"]["ok"] == 1 and result["totals"]["not_launched"] == 1


def test_a_silent_source_is_a_black_hole(ls):
    states, plan, routes = states_for(ls)
    probe = m.ProbeResult(5, "l1", "l2", 7)  # launched, but not one report came back
    result = analyze(ls, states, plan, routes, [probe])
    assert [(f["class"], f["switch"]) for f in result["findings"]] == [(m.BLACK_HOLE, "l1")]


def test_lost_reports_are_filled_by_a_confirmation_probe(ls):
    states, plan, routes = states_for(ls)
    sim = Sim(ls, states, plan)
    first, second = sim.verify([("l1", "l2")], families=(6,)), sim.verify([("l1", "l2")], families=(6,))
    lost = [k for k in first[0].reports if k[0] == "s2"]  # s2's report of its copy never reached us
    for k in lost:
        del first[0].reports[k]
    broken = analyze(ls, states, plan, routes, first)
    assert findings(broken, m.BLACK_HOLE)  # on its own it reads as a black hole ...
    first[0].merge(second[0])
    healed = analyze(ls, states, plan, routes, first)
    assert healed["findings"] == [] and healed["pairs"][0]["observed"] == healed["pairs"][0]["expected"]
