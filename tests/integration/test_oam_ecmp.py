"""OAM ECMP verification on real OVS: probes are replicated, forwarded and reported by the switches.

One leaf-spine lab (4 leaves x 3 spines) serves most tests (module scope, torn
down at the end); every fault test injects its fault through the lab
(``ovs-ofctl`` on a switch, or a link), verifies, and heals before the next.
The fat-tree gets one smoke test of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ovs_scripts import flowdump
from ryu_apps.lib import oam_ecmp_faults as faults
from ryu_apps.lib import oam_ecmp_model as m

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies"
PY = sys.executable
SID_BLOCK = "fcbb:bb00::/32"
LEAVES = ["l1", "l2", "l3", "l4"]


def call(lab, path, body=None, method=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{lab.rest_url}{path}", data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def verify(lab, **body):
    """POST /v1/oam/ecmp/verify (fault tests pass settle=1.0: a report late by more than the
    settle time would read as a black hole on a loaded machine)."""
    status, report = call(lab, "/v1/oam/ecmp/verify", body)
    assert status == 200, report
    return report


def of_class(report, cls):
    return [f for f in report["findings"] if f["class"] == cls]


def assert_healthy(report, pairs=12):
    assert report["totals"]["pairs"] == pairs and report["totals"]["ok"] == pairs, m.render_table(report)
    assert report["findings"] == [], m.render_table(report)
    for p in report["pairs"]:
        assert p["observed"] == p["expected"] and len(p["expected"]) >= 2, p


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tests.integration import conftest

    reason = conftest._skip_reason()
    if reason:
        pytest.skip(reason)
    rundir = conftest.RUN_BASE / f"oam{next(conftest._counter)}"
    factory = conftest.LabFactory(tmp_path_factory.mktemp("oam"), rundir)
    try:
        yield factory(TOPO / "oam_ecmp_leafspine.yaml")
    finally:
        errors = factory.cleanup()
        shutil.rmtree(rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


@pytest.fixture
def healed(lab):
    """Injected faults; healed after the test, and the fabric proven healthy again."""
    injected: list[faults.Fault] = []
    yield injected
    faults.heal(lab, injected)
    time.sleep(0.3)  # port/link state reaches the controller
    wait_converged(lab)
    assert_healthy(verify(lab))


def sniffers(lab, seconds):
    procs = {}
    for h in lab.topology.hosts:
        procs[h] = lab.popen(h, [PY, "-u", "-m", "ovs_scripts.traffic", "sniff", "--seconds", str(seconds),
                                 "--ipv6-prefix", SID_BLOCK])
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
    # one probe per ordered pair; each copy on a link and each arrival was reported by a switch
    assert t["probes"] == 12 and t["copies"] == 12 * 6 and t["reports"] == 12 * 9 and t["duplicates"] == 0
    assert report["pairs"][0]["expected"] == ["l1:11>s1:2>l2", "l1:12>s2:2>l2", "l1:13>s3:2>l2"]
    assert t["mda_probes"] == 12 * 34 and t["mda_ratio"] == 34.0
    # the same report as a table, and the switches hold exactly what the controller wants
    status, table = call(lab, f"/v1/oam/ecmp/reports/{report['id']}/table")
    assert status == 200 and "12 ok, 0 with findings" in table["table"]
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
    healed.append(faults.remove_bucket(lab, "l1", "l2", 13))
    report = verify(lab, settle=1.0)
    missing = of_class(report, m.MISSING)
    gid = f"{healed[0].group_id:#010x}"
    assert {(tuple(f["pair"]), f["switch"], f["port"], f["group"]) for f in missing} == \
        {(("l1", d), "l1", 13, gid) for d in ("l2", "l3", "l4")}, m.render_table(report)
    assert all(f["cause"] == "bucket_removed" for f in missing)
    assert {tuple(f["pair"]) for f in of_class(report, m.ASYMMETRIC)} == {("l1", "l2"), ("l1", "l3"), ("l1", "l4")}
    assert not of_class(report, m.BLACK_HOLE) and not of_class(report, m.LOOP)
    assert report["totals"]["ok"] == 6


def test_port_that_drops_is_a_black_hole(lab, healed):
    healed.append(faults.drop_port(lab, "l1", 12))
    report = verify(lab, settle=1.0)
    holes = of_class(report, m.BLACK_HOLE)
    assert {(tuple(f["pair"]), f["switch"], f["port"], f["bucket"]) for f in holes} == \
        {(("l1", d), "l1", 12, 1) for d in ("l2", "l3", "l4")}, m.render_table(report)
    assert all("never arrived at s2:1" in f["detail"] for f in holes)
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
        assert report["hop_budget"] == 5 and report["totals"]["pairs"] == 2 and report["totals"]["ok"] == 2
    finally:
        assert call(lab, "/v1/apps/oam_ecmp/intent", before, "PUT")[0] == 200
    sids = call(lab, "/v1/oam/ecmp/sids")[1]
    assert sids["locators"]["l2"]["replicate_sid_prefix"] == "fcbb:bb00:602:e0a::/64"
    assert len(call(lab, "/v1/oam/ecmp/expected")[1]["pairs"]) == 12


def test_cli_verify_and_fault(lab, healed):
    cli = [PY, "-m", "ryu_apps.lib.oam_ecmp_cli"]
    env = {"OVSLAB_RUNDIR": str(lab.dir.parent), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    r = subprocess.run(cli + ["verify", "--url", lab.rest_url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "12 ok, 0 with findings" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cli + ["fault", "remove-bucket", "l3", "l1", "11", "--lab", lab.name], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    healed.append(faults.Fault("cli", "l3", "", resync=["l3"]))
    r = subprocess.run(cli + ["verify", "--lab", lab.name, "--pair", "l3", "l1", "--one-way"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 1 and "MISSING_MEMBER" in r.stdout and "l3->l1 l3 port 11" in r.stdout, r.stdout
    r = subprocess.run(cli + ["verify", "--url", lab.rest_url, "--pair", "l1", "l7"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "pairs[0][1]" in r.stderr


# --- the fat-tree -----------------------------------------------------------------------------


def test_fat_tree_every_pair_exactly_the_expected_paths(lab_factory):
    ft = lab_factory(TOPO / "oam_ecmp_fattree.yaml", timeout=120)
    report = verify(ft)
    t = report["totals"]
    assert t["pairs"] == 56 and t["ok"] == 56 and report["findings"] == [], m.render_table(report)
    by_pair = {(p["src"], p["dst"]): p for p in report["pairs"]}
    assert len(by_pair[("e11", "e12")]["observed"]) == 2 and len(by_pair[("e11", "e42")]["observed"]) == 4
    assert all(p["observed"] == p["expected"] for p in report["pairs"])
    # a bucket removed from an aggregation switch's uplink group shows up for every pair through it
    f = faults.remove_bucket(ft, "a11", "e21", 12)
    try:
        report = verify(ft, pairs=[["e11", "e21"]], both_directions=False)
        missing = of_class(report, m.MISSING)
        assert [(f_["switch"], f_["port"]) for f_ in missing] == [("a11", 12)], m.render_table(report)
    finally:
        faults.heal(ft, [f])
