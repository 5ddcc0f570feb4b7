"""The operator surface on a real lab: Ryu's ofctl_rest read side compared with ovs-ofctl, /metrics.

``/stats/...`` answers in the shapes Ryu's ofctl_rest documentation gives (os-ken's
``ofctl_v1_3`` builds them); every answer is checked against ``ovs-ofctl`` dumps of the same
switch, not against the controller's own view.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration import labtools

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies"


def http(lab, method: str, path: str, body=None) -> tuple[int, object]:
    url = lab.state.data["controller"]["rest_url"] + path
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            raw = resp.read().decode()
            return resp.status, json.loads(raw) if resp.headers["Content-Type"].startswith("application/json") else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode() or "{}")


def ofctl_flows(lab, switch: str, *match: str) -> list[tuple[int, int, int]]:
    """(table, priority, cookie) of every flow ``ovs-ofctl dump-flows`` shows."""
    out = lab.ofctl(switch, "dump-flows", *match).stdout
    rows = []
    for ln in out.splitlines():
        m = re.search(r"cookie=0x([0-9a-f]+).*?table=(\d+).*?(?:priority=(\d+))?[, ]", ln)
        if m and "cookie=" in ln:
            prio = re.search(r"priority=(\d+)", ln)
            rows.append((int(m.group(2)), int(prio.group(1)) if prio else 32768, int(m.group(1), 16)))
    return sorted(rows)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tests.integration.conftest import RUN_BASE, LabFactory, _skip_reason

    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import os
    import shutil

    factory = LabFactory(tmp_path_factory.mktemp("ops"), RUN_BASE / f"ops-{os.getpid()}")
    lab = factory(TOPO / "diamond.yaml", apps={"fabric": {}, "static_flows": {}})
    try:
        hosts = list(lab.topology.hosts.values())
        assert labtools.ping(lab, hosts[0].name, str(hosts[-1].ipv4.ip), 2)   # some counters move
        yield lab
    finally:
        errors = factory.cleanup()
        shutil.rmtree(factory.rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


def test_stats_switches_and_desc(lab):
    status, dpids = http(lab, "GET", "/stats/switches")
    assert status == 200 and dpids == sorted(sw.dpid for sw in lab.topology.switches.values())
    status, desc = http(lab, "GET", f"/stats/desc/{dpids[0]}")
    assert status == 200 and set(desc) == {str(dpids[0])}
    assert desc[str(dpids[0])]["mfr_desc"] == "Nicira, Inc." and desc[str(dpids[0])]["hw_desc"] == "Open vSwitch"


@pytest.mark.parametrize("as_hex", [False, True])
def test_stats_flow_equals_ovs_ofctl(lab, as_hex):
    for name, sw in lab.topology.switches.items():
        key = hex(sw.dpid) if as_hex else str(sw.dpid)
        status, body = http(lab, "GET", f"/stats/flow/{key}")
        assert status == 200 and list(body) == [str(sw.dpid)]
        flows = body[str(sw.dpid)]
        ours = sorted((f["table_id"], f["priority"], f["cookie"]) for f in flows)
        assert ours == ofctl_flows(lab, name), name
        one = flows[0]   # Ryu's shape
        assert {"priority", "cookie", "idle_timeout", "hard_timeout", "actions", "match", "byte_count",
                "duration_sec", "duration_nsec", "packet_count", "table_id", "length", "flags"} <= set(one)
        assert all(isinstance(a, str) for f in flows for a in f["actions"])


def test_stats_flow_filter_and_aggregate(lab):
    name, sw = next(iter(lab.topology.switches.items()))
    status, body = http(lab, "POST", f"/stats/flow/{sw.dpid}", {"table_id": 0})
    assert status == 200
    assert sorted((f["table_id"], f["priority"], f["cookie"]) for f in body[str(sw.dpid)]) == \
        ofctl_flows(lab, name, "table=0")
    status, agg = http(lab, "GET", f"/stats/aggregateflow/{sw.dpid}")
    assert status == 200 and agg[str(sw.dpid)][0]["flow_count"] == len(ofctl_flows(lab, name))
    status, err = http(lab, "POST", f"/stats/flow/{sw.dpid}", {"table": 0})
    assert status == 400 and err["field"] == "table", err
    assert http(lab, "GET", "/stats/flow/99999")[0] == 404
    assert http(lab, "GET", "/stats/flow/sw1")[0] == 400


def test_stats_ports_groups_meters_equal_ovs_ofctl(lab):
    for name, sw in lab.topology.switches.items():
        d = str(sw.dpid)
        ports = {p["port_no"] for p in http(lab, "GET", f"/stats/portdesc/{d}")[1][d]}
        shown = set(re.findall(r"^\s*(\d+|LOCAL)\(", lab.ofctl(name, "show").stdout, re.M))
        assert {str(p) for p in ports} == shown, name
        stats = {p["port_no"] for p in http(lab, "GET", f"/stats/port/{d}")[1][d]}
        assert {str(p) for p in stats} == shown
        groups = sorted(g["group_id"] for g in http(lab, "GET", f"/stats/groupdesc/{d}")[1][d])
        assert groups == sorted(int(x) for x in re.findall(r"group_id=(\d+)", lab.ofctl(name, "dump-groups").stdout))
        meters = sorted(m["meter_id"] for m in http(lab, "GET", f"/stats/meterconfig/{d}")[1][d])
        assert meters == sorted(int(x) for x in re.findall(r"meter=(\d+)", lab.ofctl(name, "dump-meters").stdout))


H1_TO_H3 = {"dpid": 0x21, "priority": 100, "match": {"in_port": 1, "eth_type": 2048, "ip_proto": 1,
                                                     "ipv4_dst": "10.2.1.3"},
            "actions": [{"type": "OUTPUT", "port": 2}]}


def static_flow(lab) -> list[str]:
    return [ln for ln in lab.ofctl("s1", "dump-flows", "table=0").stdout.splitlines() if "priority=7100" in ln]


def packets(lab) -> int:
    status, body = http(lab, "POST", "/stats/flow/33", {"table_id": 0, "priority": 7100})
    assert status == 200 and len(body["33"]) == 1, body
    return body["33"][0]["packet_count"]


def test_a_static_flow_written_over_stats_carries_traffic_and_survives_a_restart(lab):
    status, body = http(lab, "POST", "/stats/flowentry/add", H1_TO_H3)
    assert status == 200, body
    assert labtools.wait_for(lambda: static_flow(lab), 5), lab.ofctl("s1", "dump-flows").stdout
    assert "actions=output:2" in static_flow(lab)[0] and "cookie=0x9" in static_flow(lab)[0]
    assert labtools.ping(lab, "h1", "10.2.1.3", 3)
    # the static flow carried them (OVS pushes datapath counters to flows about once a second)
    assert labtools.wait_for(lambda: packets(lab) >= 3, 5), packets(lab)
    lab.restart_controller()
    changed = {s["name"]: s["last_changes"] for s in http(lab, "GET", "/v1/switches")[1]
               if any(s["last_changes"].values())}
    assert not changed, f"the restart changed {changed}"
    assert len(static_flow(lab)) == 1
    before = packets(lab)
    assert labtools.ping(lab, "h1", "10.2.1.3", 2)
    assert labtools.wait_for(lambda: packets(lab) >= before + 2, 5), (before, packets(lab))
    status, body = http(lab, "POST", "/stats/flowentry/delete_strict", H1_TO_H3)
    assert status == 200 and body["static_flows"] == 0, body
    assert labtools.wait_for(lambda: not static_flow(lab), 5)
    assert labtools.ping(lab, "h1", "10.2.1.3", 2)           # the fabric carries it again


@pytest.mark.parametrize("change, field", [
    ({"priority": 5000}, "priority"),
    ({"table_id": 5}, "table_id"),
    ({"idle_timeout": 30}, "idle_timeout"),
    ({"dpid": 99}, "dpid"),
    ({"actions": [{"type": "GROUP", "group_id": 1}]}, "actions"),
    ({"match": {"no_such_field": 1}}, "match"),
])
def test_bad_static_flows_are_refused_naming_the_field_and_change_nothing(lab, change, field):
    before = lab.ofctl("s1", "dump-flows").stdout.count("\n")
    status, err = http(lab, "POST", "/stats/flowentry/add", {**H1_TO_H3, **change})
    assert status in (400, 422) and err.get("field", "").startswith(field), (change, err)
    assert lab.ofctl("s1", "dump-flows").stdout.count("\n") == before


def test_portdesc_reads_are_not_port_events(lab):
    """A /stats/portdesc answer is the switch's port list again: not news for the apps."""
    before = http(lab, "GET", "/v1/health")[1]["generation"]
    for sw in lab.topology.switches.values():
        http(lab, "GET", f"/stats/portdesc/{sw.dpid}")
    assert http(lab, "GET", "/v1/health")[1]["generation"] == before
