"""Base fabric on real OVS, namespaces and the controller process: traffic proves it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import flowdump, kit
from ryu_apps.fabric import next_hop_group_ids
from tests.integration import labtools
from tests.integration.labtools import get, wait_for

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies"
PY = sys.executable


def ping(lab, host, addr, count=3):
    return labtools.ping(lab, host, addr, count)


def tcp(lab, host, addr, port=5001, flows=1, nbytes=2000):
    r = lab.exec(host, [PY, "-m", "ovs_scripts.traffic", "tcp", addr, str(port), "--flows", str(flows),
                        "--bytes", str(nbytes)], check=False)
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_server(lab, host, port=5001):
    proc = lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "serve", str(port)])
    line = proc.stdout.readline()
    assert "listening" in str(line), line
    return proc


def port_tx_packets(lab, switch, port) -> int:
    bridge, rundir = lab.switch_target(switch)
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", f"{rundir}/{bridge}.mgmt", str(port)],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"tx pkts=(\d+)", out)
    return int(m.group(1))


def rest(lab, path):
    return get(lab, path, timeout=5)


def test_chain3_ping_and_tcp(lab_factory):
    lab = lab_factory(TOPO / "chain3.yaml")
    hosts = lab.topology.hosts
    for src in hosts.values():
        for dst in hosts.values():
            if src is dst:
                continue
            assert ping(lab, src.name, str(dst.ipv4.ip), count=2), f"{src.name} -> {dst.name} v4"
            assert ping(lab, src.name, str(dst.ipv6.ip), count=2), f"{src.name} -> {dst.name} v6"
    start_server(lab, "h3")
    res = tcp(lab, "h1", "10.1.0.3", flows=3)
    assert res["ok"] == 3, res
    res = tcp(lab, "h1", "fd00:1::3", flows=3)
    assert res["ok"] == 3, res


def test_spoofed_source_is_dropped(lab_factory):
    lab = lab_factory(TOPO / "chain3.yaml")
    assert ping(lab, "h1", "10.1.0.3")
    # h1 claims h2's address: the ingress table admits only h1's own MAC+IP on its port
    lab.exec("h1", ["ip", "addr", "add", "10.1.0.99/24", "dev", "eth0"])
    r = kit.ping(lab, "h1", "10.1.0.3", 2, interval=1, wait=1, source="10.1.0.99")
    assert not r, r.output
    assert ping(lab, "h1", "10.1.0.3")  # the real address still works


def test_diamond_ecmp_spreads_and_survives_link_cut(lab_factory):
    lab = lab_factory(TOPO / "diamond.yaml")
    # routed across subnets through the fabric's gateway
    assert ping(lab, "h1", "10.2.2.1")
    assert ping(lab, "h1", "fd00:2:2::1")
    start_server(lab, "h2")
    before = {p: port_tx_packets(lab, "s1", p) for p in (11, 12)}
    res = tcp(lab, "h1", "10.2.2.1", flows=40, nbytes=500)
    assert res["ok"] == 40, res
    after = {p: port_tx_packets(lab, "s1", p) for p in (11, 12)}
    used = {p: after[p] - before[p] for p in (11, 12)}
    assert all(n > 20 for n in used.values()), f"both ECMP members must carry traffic: {used}"

    lab.link("s1", "s2", "down")
    time.sleep(0.5)
    before = port_tx_packets(lab, "s1", 12)
    res = tcp(lab, "h1", "10.2.2.1", flows=20, nbytes=500)
    assert res["ok"] == 20, res
    assert port_tx_packets(lab, "s1", 12) - before > 20 * 3
    # the controller recomputed: the route still points at s1's next-hop group towards s4, and
    # that group (as the switch holds it) has one bucket left, port 12
    flows = rest(lab, "/v1/switches/s1/flows?app=fabric")
    to_h2 = [f for f in flows if f["match"].get("ipv4_dst") == "10.2.2.1"]
    gid = next_hop_group_ids(lab.topology)["s4"]
    assert to_h2 and to_h2[0]["actions"] == [f"group:{gid}"], to_h2

    def buckets() -> list[int]:
        return next_hop_ports(lab, "s1", "s4")

    assert wait_for(lambda: buckets() == [12], 5), buckets()

    lab.link("s1", "s2", "up")
    assert wait_for(lambda: buckets() == [11, 12], 5), buckets()
    flows = rest(lab, "/v1/switches/s1/flows?app=fabric")
    assert [f for f in flows if f["match"].get("ipv4_dst") == "10.2.2.1"] == to_h2  # no route was touched


def next_hop_ports(lab, switch: str, dest: str) -> list[int]:
    """The output ports of ``switch``'s next-hop group towards ``dest``, as the switch holds it."""
    gid = next_hop_group_ids(lab.topology)[dest]
    (g,) = flowdump.parse_groups(lab.ofctl(switch, "dump-groups", str(gid)).stdout)
    return sorted(a["output"]["port"] for b in g.buckets for a in b.actions if "output" in a)


def test_tunnel_carries_tcp_under_controller_flows(lab_factory):
    lab = lab_factory(TOPO / "tunnel.yaml")
    assert ping(lab, "h1", "10.3.0.2")
    start_server(lab, "h2")
    res = tcp(lab, "h1", "10.3.0.2", flows=5, nbytes=20000)
    assert res["ok"] == 5, res
    res = tcp(lab, "h1", "fd00:3::2", flows=2)
    assert res["ok"] == 2, res
    # the traffic went through the controller's routes and out of the tunnel port
    # (OpenFlow counters trail the datapath by up to a revalidator round: poll)
    bridge, rundir = lab.switch_target("s1")
    carried: list[int] = []

    def route_carried() -> bool:
        dump = flowdump.dump(bridge, rundir)
        to_h2 = [f for f in dump.flows
                 if f.app == "fabric" and f.table == 90 and f.match.get("nw_dst") == "10.3.0.2"]
        gid = next_hop_group_ids(lab.topology)[lab.topology.hosts["h2"].switch]
        assert len(to_h2) == 1 and to_h2[0].actions_text == f"group:{gid}", to_h2
        carried.append(to_h2[0].n_packets)
        return carried[-1] > 20

    wait_for(route_carried, 5, step=0.3)
    assert carried[-1] > 20, f"the route into the tunnel carried only {carried[-1]} packets"
    assert next_hop_ports(lab, "s1", lab.topology.hosts["h2"].switch) == [100]  # the tunnel port


def test_controller_restart_changes_nothing(lab_factory):
    lab = lab_factory(TOPO / "diamond.yaml")
    assert ping(lab, "h1", "10.2.2.1")
    bridge, rundir = lab.switch_target("s1")
    before = {(f.table, f.priority, str(f.match)): f for f in flowdump.dump(bridge, rundir).flows}
    time.sleep(1.5)
    lab.restart_controller()
    switches = rest(lab, "/v1/switches")
    for sw in switches:
        assert sw["synced"], sw
        assert not any(sw["last_changes"].values()), f"restart changed {sw['name']}: {sw['last_changes']}"
    after = {(f.table, f.priority, str(f.match)): f for f in flowdump.dump(bridge, rundir).flows}
    assert set(after) == set(before)
    for key, f in after.items():
        assert f.duration >= before[key].duration + 1.0, f"flow {key} was re-added"
        assert f.n_packets >= before[key].n_packets
    assert ping(lab, "h1", "10.2.2.1")


def test_rest_reads_and_errors(lab_factory):
    lab = lab_factory(TOPO / "chain3.yaml")
    topo = rest(lab, "/v1/topology")
    assert set(topo["switches"]) == {"s1", "s2", "s3"}
    assert rest(lab, "/v1/apps/fabric/intent")["ecmp"] is True
    doc = rest(lab, "/v1/openapi.json")
    assert "/v1/switches/{name}/flows" in doc["paths"]
    status, body = labtools.rest(lab, "/v1/switches/s9/flows", timeout=5)
    assert status == 404
    assert "s9" in body["error"]
    # ovslab flows --diff agrees: the switch holds exactly what the controller wants
    bridge, rundir = lab.switch_target("s2")
    d = flowdump.diff(flowdump.dump(bridge, rundir), rundir, rest(lab, "/v1/switches/s2/desired"))
    assert not (d.missing or d.unexpected or d.different), d


def put_intent(lab, app, body):
    """``(status, body)`` of ``PUT /v1/apps/<app>/intent``."""
    return tuple(labtools.rest(lab, f"/v1/apps/{app}/intent", "PUT", body))


def wait_synced(lab, timeout=10):
    if not wait_for(lambda: all(s["synced"] for s in rest(lab, "/v1/switches")), timeout):
        raise AssertionError(f"not synced: {rest(lab, '/v1/switches')}")


def test_intent_put_validated_atomic_and_persisted(lab_factory):
    lab = lab_factory(TOPO / "diamond.yaml")
    bridge, rundir = lab.switch_target("s1")
    before = sorted(f.raw.split(" actions=")[-1] for f in flowdump.dump(bridge, rundir).flows)
    for bad, field in [({"ecmp": "sometimes"}, "ecmp"), ({"router_mac": "01:00:00:00:00:01"}, "router_mac"),
                       ({"ecmp": True, "colour": "red"}, "colour")]:
        status, body = put_intent(lab, "fabric", bad)
        assert status == 422 and body["field"] == field, (bad, status, body)
    status, body = put_intent(lab, "nope", {})
    assert status == 404
    wait_synced(lab)
    after = sorted(f.raw.split(" actions=")[-1] for f in flowdump.dump(bridge, rundir).flows)
    assert after == before, "a refused intent changed the switch"

    status, body = put_intent(lab, "fabric", {"ecmp": False})
    assert status == 200 and body["ecmp"] is False
    wait_synced(lab)
    flows = rest(lab, "/v1/switches/s1/flows?app=fabric")
    to_h2 = [f for f in flows if f["match"].get("ipv4_dst") == "10.2.2.1"]
    assert to_h2[0]["actions"] == [f"group:{next_hop_group_ids(lab.topology)['s4']}"], to_h2
    assert next_hop_ports(lab, "s1", "s4") == [11]  # no ECMP: the first shortest path only
    assert ping(lab, "h1", "10.2.2.1")
    lab.restart_controller()
    assert rest(lab, "/v1/apps/fabric/intent")["ecmp"] is False, "intent not persisted"
    assert not any(any(s["last_changes"].values()) for s in rest(lab, "/v1/switches"))


def test_packet_in_storm_is_contained(lab_factory):
    lab = lab_factory(TOPO / "diamond.yaml")
    assert ping(lab, "h1", "fd00:2:2::1")
    storm = lab.popen("h1", [PY, "-m", "ovs_scripts.traffic", "flood-ns", "fd00:2:1::3", "--seconds", "6"])
    time.sleep(1.5)
    # during the storm: REST answers, an intent change reaches every switch, other hosts resolve and talk
    t0 = time.monotonic()
    status, _ = put_intent(lab, "fabric", {"ecmp": False})
    assert status == 200
    wait_synced(lab, timeout=10)
    reprogram = time.monotonic() - t0
    assert ping(lab, "h3", "fd00:2:2::1"), "ND/forwarding for another host failed during the storm"
    out = storm.communicate(timeout=30)[0]
    sent = json.loads(out.strip().splitlines()[-1])["sent"]
    health = rest(lab, "/v1/health")
    handled = health["packet_ins"]["handled"] + health["packet_ins"]["rate_limited"]
    # the punt meter (200 pps by default) held the storm at the switch
    assert sent > 10 * handled, (sent, health["packet_ins"])
    print(f"storm: {sent} NS sent, {handled} reached the controller, reprogramming took {reprogram:.2f}s")
