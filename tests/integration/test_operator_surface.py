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
    lab = factory(TOPO / "diamond.yaml")
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


def test_ofctl_writes_are_refused_and_explained(lab):
    status, err = http(lab, "POST", "/stats/flowentry/add", {"dpid": 1, "priority": 1, "actions": []})
    assert status == 405 and "programmer" in err["error"], err


def test_portdesc_reads_are_not_port_events(lab):
    """A /stats/portdesc answer is the switch's port list again: not news for the apps."""
    before = http(lab, "GET", "/v1/health")[1]["generation"]
    for sw in lab.topology.switches.values():
        http(lab, "GET", f"/stats/portdesc/{sw.dpid}")
    assert http(lab, "GET", "/v1/health")[1]["generation"] == before
