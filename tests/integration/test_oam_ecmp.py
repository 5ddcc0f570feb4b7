"""OAM ECMP verification on real OVS: probes are replicated, forwarded and reported by the switches.

One leaf-spine lab (4 leaves x 3 spines) serves most tests (module scope, torn
down at the end); every fault test injects its fault through the lab
(``ovs-ofctl`` on a switch, or a link), verifies, and heals before the next.
The fat-tree gets one smoke test of its own.

Probes are data packets of the pair they verify (IPv4 and IPv6, the hosts' own
addresses), so the faults of issue 9 section 3 (a table-0 drop, an in_port
scoped route drop, a deleted IPv4 route, a weight-0 bucket) are each checked
three ways: the verdict, real UDP traffic of the same pair between the hosts'
namespaces, and ``ovs-appctl ofproto/trace`` on the faulty switch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import flowdump, kit
from ovs_scripts import oam_ecmp_faults as faults
from ryu_apps.functions.oam_ecmp import model as m

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies"
PY = sys.executable
LEAVES = ["l1", "l2", "l3", "l4"]
PAIRS = 12 * 2  # ordered leaf pairs x address families
ROUTER_MAC = "0e:fa:b0:00:00:01"


def call(lab, path, body=None, method=None, timeout=60):
    """``(status, body)``: POST when there is a body, else GET."""
    return tuple(kit.rest(lab, method or ("POST" if body is not None else "GET"), path, body, timeout=timeout))


def verify(lab, **body):
    """POST /v1/oam/ecmp/verify (fault tests pass settle=1.0: a report late by more than the
    settle time would read as a black hole on a loaded machine)."""
    status, report = call(lab, "/v1/oam/ecmp/verify", body)
    assert status == 200, report
    return report


def of_class(report, cls):
    return [f for f in report["findings"] if f["class"] == cls]


def assert_healthy(report, pairs=PAIRS):
    assert report["totals"]["pairs"] == pairs and report["totals"]["ok"] == pairs, m.render_table(report)
    assert report["findings"] == [], m.render_table(report)
    for p in report["pairs"]:
        assert p["observed"] == p["expected"] and len(p["expected"]) >= 2, p


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tests.integration import conftest

    with conftest.module_factory(tmp_path_factory, "oam") as factory:
        yield factory(TOPO / "oam_ecmp_leafspine.yaml")


@pytest.fixture
def healed(lab):
    """Injected faults; healed after the test, and the fabric proven healthy again."""
    injected: list[faults.Fault] = []
    yield injected
    faults.heal(lab, injected)
    time.sleep(0.3)  # port/link state reaches the controller
    wait_converged(lab)
    assert_healthy(verify(lab))


#: counts the frames eth0 receives; "matched": probe frames (UDP 3594 -> 3594 carrying the probe payload)
SNIFF = r"""
import json, socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3)); sock.bind(("eth0", 0))
sock.settimeout(0.1); print("sniffing", flush=True)
frames = ipv6 = matched = 0; end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        data, addr = sock.recvfrom(4096)
    except (socket.timeout, TimeoutError):
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    frames += 1; ipv6 += data[12:14] == b"\x86\xdd"
    matched += b"OAM-ECMP" in data or b"\x0e\x0a\x0e\x0a" in data
print(json.dumps({"frames": frames, "ipv6": ipv6, "matched": matched}))
"""


def sniffers(lab, seconds):
    procs = {}
    for h in lab.topology.hosts:
        procs[h] = lab.popen(h, [PY, "-u", "-c", SNIFF, str(seconds)])
    for h, p in procs.items():
        assert "sniffing" in p.stdout.readline(), h
    return procs


def sniffed(procs):
    out = {}
    for h, p in procs.items():
        out[h] = json.loads(p.stdout.read().strip().splitlines()[-1])
        p.wait(timeout=30)
        p.stdout.close()
    return out


def wait_converged(lab, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gen = call(lab, "/v1/health")[1]["generation"]
        time.sleep(0.1)
        health = call(lab, "/v1/health")[1]
        if health["all_synced"] and health["generation"] == gen:
            return
    raise AssertionError(f"fabric not converged: {call(lab, '/v1/health')[1]}")


def port_tx(lab, switch, port) -> int:
    bridge, rundir = lab.switch_target(switch)
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", f"{rundir}/{bridge}.mgmt", str(port)],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"tx pkts=(\d+)", out).group(1))


# --- healthy fabric ---------------------------------------------------------------------------


def test_healthy_fabric_every_pair_exactly_the_expected_paths(lab):
    report = verify(lab)
    assert_healthy(report)
    t = report["totals"]
    # one probe per ordered pair and family; each copy on a link and each arrival was reported by a switch
    assert t["probes"] == PAIRS and t["copies"] == PAIRS * 6 and t["reports"] == PAIRS * 9 and t["duplicates"] == 0
    assert report["pairs"][0]["expected"] == ["l1:11>s1:2>l2", "l1:12>s2:2>l2", "l1:13>s3:2>l2"]
    assert {p["family"] for p in report["pairs"]} == {"ipv4", "ipv6"}
    assert t["mda_probes"] == PAIRS * 34 and t["mda_ratio"] == 34.0
    # the same report as a table, and the switches hold exactly what the controller wants
    status, table = call(lab, f"/v1/oam/ecmp/reports/{report['id']}/table")
    assert status == 200 and f"{PAIRS} ok, 0 with findings" in table["table"]
    for sw in ("l1", "s2"):
        bridge, rundir = lab.switch_target(sw)
        _, desired = call(lab, f"/v1/switches/{sw}/desired")
        d = flowdump.diff(flowdump.dump(bridge, rundir), rundir, desired)
        assert not (d.missing or d.unexpected or d.different), d
    status, st = call(lab, "/v1/oam/ecmp/status")
    assert st["bad"] == 0 and st["stale"] == 0


def test_probes_never_reach_hosts_and_traffic_still_hashes(lab):
    procs = sniffers(lab, 4)
    report = verify(lab)
    assert_healthy(report)
    # normal traffic meanwhile: many TCP flows h1 -> h2 spread over all three uplinks of l1
    server = lab.popen("h2", [PY, "-u", "-m", "ovs_scripts.traffic", "serve", "5001"])
    assert "listening" in server.stdout.readline()
    before = {p: port_tx(lab, "l1", p) for p in (11, 12, 13)}
    r = lab.exec("h1", [PY, "-m", "ovs_scripts.traffic", "tcp", "fd00:6:2::1", "5001", "--flows", "45",
                        "--bytes", "500"], check=False)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["ok"] == 45, res
    used = {p: port_tx(lab, "l1", p) - before[p] for p in (11, 12, 13)}
    assert all(n > 15 for n in used.values()), f"every ECMP member must carry flows: {used}"
    seen = sniffed(procs)
    assert all(s["matched"] == 0 for s in seen.values()), f"a probe reached a host: {seen}"
    assert seen["h2"]["ipv6"] > 45 and seen["h1"]["ipv6"] > 45, f"the sniffers saw the TCP traffic: {seen}"
    # the select groups were not touched by the verification (the fabric still owns them)
    _, flows = call(lab, "/v1/switches/l1/flows?app=fabric")
    assert any(f["actions"][0].startswith("group:") for f in flows if f["match"].get("ipv6_dst") == "fd00:6:2::1")


# --- faults -----------------------------------------------------------------------------------


def test_removed_bucket_is_a_missing_member(lab, healed):
    # l1 has one next-hop group per destination leaf: the bucket goes from each of them
    gid = {}
    for d in ("l2", "l3", "l4"):
        healed.append(faults.remove_bucket(lab, "l1", d, 13))
        gid[d] = f"{healed[-1].group_id:#010x}"
    assert len(set(gid.values())) == 3
    report = verify(lab, settle=1.0)
    missing = of_class(report, m.MISSING)
    assert {(tuple(f["pair"]), f["family"], f["switch"], f["port"], f["group"]) for f in missing} == \
        {(("l1", d), fam, "l1", 13, gid[d]) for d in ("l2", "l3", "l4") for fam in ("ipv4", "ipv6")}, \
        m.render_table(report)
    assert all(f["cause"] == "bucket_removed" for f in missing)
    assert {tuple(f["pair"]) for f in of_class(report, m.ASYMMETRIC)} == {("l1", "l2"), ("l1", "l3"), ("l1", "l4")}
    assert not of_class(report, m.BLACK_HOLE) and not of_class(report, m.LOOP)
    assert report["totals"]["ok"] == 12


def test_port_that_drops_is_a_black_hole(lab, healed):
    healed.append(faults.drop_port(lab, "l1", 12))
    report = verify(lab, settle=1.0)
    holes = of_class(report, m.BLACK_HOLE)
    assert {(tuple(f["pair"]), f["family"], f["switch"], f["port"], f["bucket"]) for f in holes} == \
        {(("l1", d), fam, "l1", 12, 1) for d in ("l2", "l3", "l4") for fam in ("ipv4", "ipv6")}, \
        m.render_table(report)
    assert all("s2 never forwarded it" in f["detail"] for f in holes)
    assert not of_class(report, m.MISSING)  # the bucket is there; its copies vanish


def test_bucket_to_a_host_port_is_a_black_hole_and_no_probe_leaks(lab, healed):
    procs = sniffers(lab, 3)
    healed.append(faults.redirect_bucket(lab, "l1", "l2", 13, 1))  # to h1's port
    report = verify(lab, settle=1.0)
    holes = of_class(report, m.BLACK_HOLE)
    assert {(f["switch"], f["port"]) for f in holes} == {("l1", 1)}, m.render_table(report)
    assert "host h1" in holes[0]["detail"] and holes[0]["bucket"] == 2
    assert {(f["switch"], f["port"]) for f in of_class(report, m.MISSING)} == {("l1", 13)}
    assert all(s["matched"] == 0 for s in sniffed(procs).values())


def test_bucket_to_a_longer_path_is_suboptimal(lab, healed):
    healed.append(faults.add_bucket(lab, "s1", "l2", 3))  # s1 sends some of l2's traffic down to l3
    report = verify(lab, settle=1.0)
    sub = of_class(report, m.SUBOPTIMAL)
    assert sub and {(f["switch"], f["port"], f["bucket"]) for f in sub} == {("s1", 3, 1)}, m.render_table(report)
    assert {tuple(f["pair"]) for f in sub} == {("l1", "l2"), ("l4", "l2")}
    assert "4 hops instead of 2" in sub[0]["detail"] and "l1:11>s1:3>l3:12>s2:2>l2" in \
        next(f for f in sub if f["pair"] == ["l1", "l2"])["paths"]
    # l3 bounces a copy straight back to s1 (output to the in port): dropped, so a black hole
    assert all("came in on" in f["detail"] for f in of_class(report, m.BLACK_HOLE))
    assert not of_class(report, m.MISSING)


def test_loop_is_found_and_the_probe_ends_cleanly(lab, healed):
    healed.append(faults.make_loop(lab, "l2", ["s1", "l3", "s2", "l4"]))
    t0 = time.monotonic()
    report = verify(lab, settle=1.0)
    assert time.monotonic() - t0 < 20
    loops = of_class(report, m.LOOP)
    assert loops, m.render_table(report)
    assert {tuple(f["pair"]) for f in loops} == {("l1", "l2"), ("l3", "l2"), ("l4", "l2")}
    assert all(f["switch"] in ("s1", "s2") and "cycle" in f["detail"] for f in loops)
    assert any("s1>l3>s2>l4>s1" in f["detail"] for f in loops)
    for p in report["pairs"]:
        assert not p["truncated"]
        if p["dst"] != "l2":
            assert p["outcomes"]["expired"] == 0
    _, st = call(lab, "/v1/oam/ecmp/status")
    assert st["running"] is False


def test_cut_link_is_a_missing_member_with_its_cause(lab, healed):
    healed.append(faults.cut_link(lab, "s3", "l2"))
    deadline = time.monotonic() + 10
    while "l2:13" not in call(lab, "/v1/topology")[1]["down_ports"] and time.monotonic() < deadline:
        time.sleep(0.05)
    wait_converged(lab)  # the fabric reroutes around the cut link first
    report = verify(lab, settle=1.0)
    assert not report["notes"], report["notes"]
    missing = of_class(report, m.MISSING)
    assert {tuple(f["pair"]) for f in missing} == {("l1", "l2"), ("l3", "l2"), ("l4", "l2"),
                                                   ("l2", "l1"), ("l2", "l3"), ("l2", "l4")}, m.render_table(report)
    assert all(f["cause"] == "link_down" and "l2:13" in f["detail"] for f in missing), m.render_table(report)
    assert not of_class(report, m.BLACK_HOLE) and not of_class(report, m.ASYMMETRIC)


# --- faults that traffic suffers from behind the forward table's back (issue 9 section 3) ------------
#
# Each verdict is checked against real UDP traffic of the same pair (many flows, each its own source
# port, so the select groups spread them over every member) and against ofproto/trace on the switch.

#: listener: accepts TCP connections (the kernel completes the handshake) for a few seconds
TCP_LISTEN = r"""
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1024); print("ready", flush=True); time.sleep(float(sys.argv[3]))
"""
#: client: n connections opened at once; prints how many were established within the deadline.
#: (TCP flows, because each connection gets its own flow hash: the select groups spread them)
TCP_CONNECT = r"""
import select, socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
socks = []
for i in range(int(sys.argv[3])):
    c = socket.socket(fam, socket.SOCK_STREAM); c.setblocking(False)
    c.connect_ex((sys.argv[1], int(sys.argv[2]))); socks.append(c)
pending, ok, end = set(socks), 0, time.monotonic() + float(sys.argv[4])
while pending and time.monotonic() < end:
    _, w, _ = select.select([], list(pending), [], 0.05)
    for c in w:
        pending.discard(c)
        ok += c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
print(ok)
"""
FLOWS = 48  # (2/3)^48 ~ 4e-9: the chance that no flow hashes onto one given member of three


def host_of(lab, leaf):
    return next(h for h in sorted(lab.topology.hosts.values(), key=lambda h: h.name) if h.switch == leaf)


def address(lab, leaf, fam):
    h = host_of(lab, leaf)
    return str((h.ipv4 if fam == 4 else h.ipv6).ip)


def delivered(lab, src, dst, fam, flows=None, port=5002) -> int:
    """How many of ``flows`` TCP connections from ``src``'s host to ``dst``'s host get through (real packets)."""
    flows = flows or FLOWS
    to = address(lab, dst, fam)
    server = lab.popen(host_of(lab, dst).name, [PY, "-u", "-c", TCP_LISTEN, to, str(port), "8"])
    try:
        assert "ready" in server.stdout.readline()
        r = lab.exec(host_of(lab, src).name, [PY, "-c", TCP_CONNECT, to, str(port), str(flows), "3"])
        return int(r.stdout.strip().splitlines()[-1])
    finally:
        server.kill()
        server.wait(timeout=30)
        server.stdout.close()


def trace(lab, switch, fam, src, dst, in_port, sport=21000) -> str:
    """``ovs-appctl ofproto/trace`` of one data packet of the pair, in the switch's namespace."""
    bridge, rundir = lab.switch_target(switch)
    sh = host_of(lab, src)
    first_hop = switch == src
    eth = f"dl_src={sh.mac if first_hop else ROUTER_MAC},dl_dst={ROUTER_MAC}"
    if fam == 4:
        l3 = f"udp,nw_src={address(lab, src, 4)},nw_dst={address(lab, dst, 4)},nw_ttl=64"
    else:
        l3 = f"udp6,ipv6_src={address(lab, src, 6)},ipv6_dst={address(lab, dst, 6)},nw_ttl=64"
    proto, rest = l3.split(",", 1)
    spec = f"{proto},in_port={in_port},{eth},{rest},udp_src={sport},udp_dst=5002"
    r = lab.exec(switch, ["env", f"OVS_RUNDIR={rundir}", "ovs-appctl", "ofproto/trace", bridge, spec])
    return r.stdout


def traced_members(lab, switch, fam, src, dst, in_port) -> set[int]:
    """Ports the switch's select group can send the pair's traffic to, by ofproto/trace: the first pass
    ends in hash + recirc (dp_hash selection); each dp_hash value is then traced through the group."""
    bridge, rundir = lab.switch_target(switch)
    first = trace(lab, switch, fam, src, dst, in_port)
    rid = re.search(r"recirc\((0x[0-9a-f]+)\)", first)
    if rid is None:  # no select group on the way: whatever the single pass outputs
        return {int(p) for p in re.findall(r"output:(\d+)", first)}
    spec = re.search(r"^Flow: (.*)$", first, re.MULTILINE).group(1)
    final = re.search(r"^Final flow: (.*)$", first, re.MULTILINE).group(1)
    spec = (spec if final == "unchanged" else final).replace("tp_src=", "udp_src=").replace("tp_dst=", "udp_dst=")
    ports = set()
    for h in range(1, 64):
        r = lab.exec(switch, ["env", f"OVS_RUNDIR={rundir}", "ovs-appctl", "ofproto/trace", bridge,
                              f"recirc_id={rid.group(1)},dp_hash={h},{spec}"])
        ports |= {int(p) for p in re.findall(r"output:(\d+)", r.stdout)}
    return ports


def trace_drops(text: str) -> bool:
    return "Datapath actions: drop" in text


def verdict(report, src, dst, fam):
    fams = {f"ipv{fam}", None}  # None: a report without families (the SID-probe design)
    found = [p for p in report["pairs"] if p["src"] == src and p["dst"] == dst and p.get("family") in fams]
    assert found, f"{src}->{dst} ipv{fam} not in the report"
    return found[0]["verdict"]


def pair_findings(report, src, dst, fam):
    return [f for f in report["findings"] if f["pair"] == [src, dst] and f.get("family") in (f"ipv{fam}", None)]


def test_table0_drop_on_a_spine_is_seen_as_traffic_sees_it(lab, healed):
    """A table-0 drop for l2's addresses on s2: probes pass table 0 like data now, so they meet it."""
    assert delivered(lab, "l1", "l2", 4) == FLOWS and delivered(lab, "l1", "l2", 6) == FLOWS
    healed.append(faults.drop_at_ingress(lab, "s2", "l2"))
    report = verify(lab, pairs=[["l1", "l2"], ["l3", "l2"]], both_directions=False, settle=1.0)
    for fam in (4, 6):
        for src in ("l1", "l3"):
            assert verdict(report, src, "l2", fam) == "fault", m.render_table(report)
            holes = [f for f in pair_findings(report, src, "l2", fam) if f["class"] == m.BLACK_HOLE]
            assert [(f["switch"], f["port"]) for f in holes] == [(src, 12)], m.render_table(report)
            assert "s2 never forwarded it" in holes[0]["detail"]
        got = delivered(lab, "l1", "l2", fam)
        assert 0 < got < FLOWS, f"real IPv{fam} traffic l1->l2 must lose the flows hashed onto s2: {got}/{FLOWS}"
        assert trace_drops(trace(lab, "s2", fam, "l1", "l2", in_port=1))
        assert not trace_drops(trace(lab, "s1", fam, "l1", "l2", in_port=1))


def test_in_port_scoped_route_drop_is_seen_for_that_in_port_only(lab, healed):
    """s2 drops l2's traffic only when it comes in from l1 (port 1): l1->l2 is faulty, l3->l2 is not."""
    healed.append(faults.drop_from_port(lab, "s2", "l2", in_port=1))
    report = verify(lab, pairs=[["l1", "l2"], ["l3", "l2"]], both_directions=False, settle=1.0)
    for fam in (4, 6):
        assert verdict(report, "l1", "l2", fam) == "fault", m.render_table(report)
        assert verdict(report, "l3", "l2", fam) == "ok", m.render_table(report)
        holes = [f for f in pair_findings(report, "l1", "l2", fam) if f["class"] == m.BLACK_HOLE]
        assert [(f["switch"], f["port"]) for f in holes] == [("l1", 12)], m.render_table(report)
        got = delivered(lab, "l1", "l2", fam)
        assert 0 < got < FLOWS, f"IPv{fam} l1->l2 over s2 must be lost: {got}/{FLOWS}"
        assert delivered(lab, "l3", "l2", fam) == FLOWS
        assert trace_drops(trace(lab, "s2", fam, "l1", "l2", in_port=1))
        assert not trace_drops(trace(lab, "s2", fam, "l3", "l2", in_port=3))


def test_deleted_ipv4_route_on_a_spine_is_an_ipv4_fault_only(lab, healed):
    healed.append(faults.delete_route(lab, "s2", "l2", family=4))
    report = verify(lab, pairs=[["l1", "l2"]], both_directions=False, settle=1.0)
    assert verdict(report, "l1", "l2", 4) == "fault", m.render_table(report)
    assert verdict(report, "l1", "l2", 6) == "ok", m.render_table(report)
    holes = [f for f in pair_findings(report, "l1", "l2", 4) if f["class"] == m.BLACK_HOLE]
    assert [(f["switch"], f["port"]) for f in holes] == [("l1", 12)] and "no route for 10.6.2.1" in \
        holes[0]["detail"], m.render_table(report)
    got4, got6 = delivered(lab, "l1", "l2", 4), delivered(lab, "l1", "l2", 6)
    assert 0 < got4 < FLOWS and got6 == FLOWS, (got4, got6)
    assert trace_drops(trace(lab, "s2", 4, "l1", "l2", in_port=1))
    assert not trace_drops(trace(lab, "s2", 6, "l1", "l2", in_port=1))


def test_zero_weight_bucket_is_a_missing_member_read_exactly(lab, healed):
    """OVS never picks a weight-0 bucket: traffic never uses l1's port 13, and the verdict says so."""
    assert traced_members(lab, "l1", 4, "l1", "l2", in_port=1) == {11, 12, 13}
    healed.append(faults.zero_weight(lab, "l1", "l2", 13))
    report = verify(lab, pairs=[["l1", "l2"]], both_directions=False, settle=1.0)
    for fam in (4, 6):
        assert verdict(report, "l1", "l2", fam) == "fault", m.render_table(report)
    _, routes = call(lab, "/v1/oam/ecmp/routes")
    hop13 = next(nh for nh in routes["routes"]["l1"]["l2/ipv4"]["next_hops"] if nh["port"] == 13)
    assert hop13["weight"] == 0 and hop13["live"] is False, hop13  # read state kept exactly
    for fam in (4, 6):
        missing = [f for f in pair_findings(report, "l1", "l2", fam) if f["class"] == m.MISSING]
        assert [(f["switch"], f["port"], f["cause"]) for f in missing] == [("l1", 13, "bucket_inactive")], \
            m.render_table(report)
        assert "weight is 0" in missing[0]["detail"]
        p = next(p for p in report["pairs"] if p["dst"] == "l2" and p["family"] == f"ipv{fam}")
        assert p["observed"] == ["l1:11>s1:2>l2", "l1:12>s2:2>l2"]
        # real traffic: every flow arrives, none of them over port 13
        before = port_tx(lab, "l1", 13)
        assert delivered(lab, "l1", "l2", fam) == FLOWS
        assert port_tx(lab, "l1", 13) - before == 0
        assert traced_members(lab, "l1", fam, "l1", "l2", in_port=1) == {11, 12}


# --- REST and CLI -----------------------------------------------------------------------------


def test_rest_errors_name_the_field(lab):
    for body, field in [({"pairs": [["l1", "l9"]]}, "pairs[0][1]"), ({"pairs": [["l1", "l1"]]}, "pairs[0]"),
                        ({"pairs": []}, "pairs"), ({"colour": 1}, "colour"), ({"hop_budget": 1}, "hop_budget")]:
        status, body_ = call(lab, "/v1/oam/ecmp/verify", body)
        assert status == 422 and body_["field"] == field, (body, status, body_)
    assert call(lab, "/v1/oam/ecmp/reports/999")[0] == 404
    # intent changes are validated, refused whole, and a good one applies
    before = call(lab, "/v1/apps/oam_ecmp/intent")[1]
    status, body = call(lab, "/v1/apps/oam_ecmp/intent", {"locator_block": "fcbb::/48"}, "PUT")
    assert status == 422 and body["field"] == "locator_block"
    status, body = call(lab, "/v1/apps/oam_ecmp/intent", {"locators": {"x9": 5}}, "PUT")
    assert status == 409 and "x9" in body["error"]
    assert call(lab, "/v1/apps/oam_ecmp/intent")[1] == before
    status, body = call(lab, "/v1/apps/oam_ecmp/intent", {**before, "hop_budget": 5}, "PUT")
    assert status == 200 and body["hop_budget"] == 5
    try:
        report = verify(lab, pairs=[["l1", "l3"]])
        assert report["hop_budget"] == 5 and report["totals"]["pairs"] == 4 and report["totals"]["ok"] == 4
    finally:
        assert call(lab, "/v1/apps/oam_ecmp/intent", before, "PUT")[0] == 200
    sids = call(lab, "/v1/oam/ecmp/sids")[1]
    assert sids["locators"]["l2"]["replicate_sid_prefix"] == "fcbb:bb00:602:e0a::/64"
    assert len(call(lab, "/v1/oam/ecmp/expected")[1]["pairs"]) == 12


def test_cli_verify_and_fault(lab, healed):
    cli = [PY, "-m", "ovs_scripts.oam_ecmp_cli"]
    env = {"OVSLAB_RUNDIR": str(lab.dir.parent), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    r = subprocess.run(cli + ["verify", "--url", lab.rest_url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"{PAIRS} ok, 0 with findings" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cli + ["fault", "remove-bucket", "l3", "l1", "11", "--lab", lab.name], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    healed.append(faults.Fault("cli", "l3", "", resync=["l3"]))
    r = subprocess.run(cli + ["verify", "--lab", lab.name, "--pair", "l3", "l1", "--one-way"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 1 and "MISSING_MEMBER" in r.stdout and "l3->l1 ipv4 l3 port 11" in r.stdout, r.stdout
    r = subprocess.run(cli + ["verify", "--url", lab.rest_url, "--pair", "l1", "l7"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "pairs[0][1]" in r.stderr


# --- the fat-tree -----------------------------------------------------------------------------


def test_fat_tree_every_pair_exactly_the_expected_paths(lab_factory):
    ft = lab_factory(TOPO / "oam_ecmp_fattree.yaml", timeout=120)
    report = verify(ft)
    t = report["totals"]
    assert t["pairs"] == 112 and t["ok"] == 112 and report["findings"] == [], m.render_table(report)
    by_pair = {(p["src"], p["dst"]): p for p in report["pairs"]}
    assert len(by_pair[("e11", "e12")]["observed"]) == 2 and len(by_pair[("e11", "e42")]["observed"]) == 4
    assert all(p["observed"] == p["expected"] for p in report["pairs"])
    # a bucket removed from an aggregation switch's uplink group shows up for every pair through it
    f = faults.remove_bucket(ft, "a11", "e21", 12)
    try:
        report = verify(ft, pairs=[["e11", "e21"]], both_directions=False)
        missing = of_class(report, m.MISSING)
        assert [(f_["switch"], f_["port"], f_["family"]) for f_ in missing] == \
            [("a11", 12, "ipv4"), ("a11", 12, "ipv6")], m.render_table(report)
    finally:
        faults.heal(ft, [f])
