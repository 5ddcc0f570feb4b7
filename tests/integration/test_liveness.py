"""Control-plane loss is not data-plane loss (issue 15).

chain3 (h1 - s1 - s2 - s3 - h3, h2 on s2) with BFD on both switch-to-switch
links, real pings and a TCP stream running while the control channels fail.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from ovs_scripts import flowdump
from ovs_scripts.lab import ROOT_SANDBOX
from ryu_apps.fabric import next_hop_group_ids
from tests.integration import conftest
from tests.integration.labtools import frozen_relay, get, ping_loss, set_controller_target, start_ping, wait_for

pytestmark = pytest.mark.integration
PY = sys.executable
BFD_MS = 100


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    links = [["h1", "s1"], ["h2", "s2"], ["h3", "s3"],
             {"a": "s1", "b": "s2", "bfd_ms": BFD_MS}, {"a": "s2", "b": "s3", "bfd_ms": BFD_MS}]
    with conftest.module_factory(tmp_path_factory, "liveness") as factory:
        lab = factory("chain3.yaml", links=links)  # ready once the BFD links are up, too
        assert get(lab, "/v1/topology")["down_ports"] == [], get(lab, "/v1/topology")
        yield lab


def _tcp_stream(lab, seconds):
    """A paced echo connection h1 -> h3 (a message every 10 ms)."""
    server = lab.popen("h3", [PY, "-u", "-m", "ovs_scripts.traffic", "serve-ports", "5001"])
    assert "listening" in str(server.stdout.readline())
    client = lab.popen("h1", [PY, "-u", "-m", "ovs_scripts.traffic", "tcp-stream", "10.1.0.3", "5001",
                              "--seconds", str(seconds), "--interval-ms", "10"])
    return server, client


def _retransmits(lab) -> int:
    out = lab.exec("h1", ["nstat", "-az", "TcpRetransSegs"]).stdout
    m = re.search(r"TcpRetransSegs\s+(\d+)", out)
    return int(m.group(1)) if m else 0


def _flow_mods(lab) -> dict[str, int]:
    return {s["name"]: sum(s["last_changes"].values()) for s in get(lab, "/v1/switches")}


def test_losing_every_control_channel_for_12_s_changes_nothing_in_the_data_plane(lab):
    syncs = {s["name"]: s["syncs"] for s in get(lab, "/v1/switches")}
    retrans = _retransmits(lab)
    pings = [start_ping(lab, "h1", "10.1.0.3", 16), start_ping(lab, "h3", "fd00:1::1", 16)]
    server, client = _tcp_stream(lab, 14)
    time.sleep(1.0)
    with frozen_relay(lab):  # every channel freezes; the keepalive closes them after ~5 s
        assert wait_for(lambda: {s["channel"]["state"] for s in get(lab, "/v1/switches")} == {"down"}, 15)
        time.sleep(12 - 5)
        health = get(lab, "/v1/health")
        assert health["switches_dead"] == [], health
        assert sorted(health["switches_lost"]) == ["s1", "s2", "s3"], health
    assert wait_for(lambda: all(s["synced"] for s in get(lab, "/v1/switches")), 30), get(lab, "/v1/switches")
    results = [ping_loss(p) for p in pings]
    tcp = json.loads([ln for ln in client.communicate(timeout=60)[0].splitlines() if ln.startswith("{")][-1])
    server.terminate()
    server.wait(timeout=10)
    sws = get(lab, "/v1/switches")
    changed = {s["name"]: s["last_changes"] for s in sws if any(s["last_changes"].values())}
    retrans = _retransmits(lab) - retrans
    print(f"\nall channels lost ~12 s: pings sent/lost {results}, TCP {tcp}, {retrans} retransmits, "
          f"flow changes on reconnect {changed or 'none'}, resyncs {[s['syncs'] - syncs[s['name']] for s in sws]}")
    assert not changed, f"a reconnect with nothing changed sent changes: {changed}"
    for sent, lost in results:
        assert sent > 500 and lost == 0, results
    assert tcp["intact"], tcp
    assert retrans == 0, f"{retrans} TCP retransmits"


def test_one_switch_losing_its_channel_is_still_forwarding_by_bfd(lab):
    before = _flow_mods(lab)
    pings = [start_ping(lab, "h1", "10.1.0.3", 8), start_ping(lab, "h1", "fd00:1::2", 8)]
    time.sleep(0.5)
    # point s2's Controller row at a socket nobody listens on: its channel drops, its flows stay
    target = set_controller_target(lab, "s2", f"unix:{lab.sandbox(ROOT_SANDBOX).dir}/nowhere.sock")
    try:
        assert wait_for(lambda: not get(lab, "/v1/switches/s2")["connected"], 5)
        time.sleep(lab.topology.spec.controller.switch_hold_down + 2)
        st = get(lab, "/v1/switches/s2")
        health = get(lab, "/v1/health")
        assert st["data_plane"] == "forwarding (BFD)" and health["switches_dead"] == [], (st, health)
        assert _flow_mods(lab)["s1"] == before["s1"] and _flow_mods(lab)["s3"] == before["s3"]
    finally:
        set_controller_target(lab, "s2", target)
    results = [ping_loss(p) for p in pings]
    assert wait_for(lambda: get(lab, "/v1/switches/s2")["synced"], 20), get(lab, "/v1/switches/s2")
    st = get(lab, "/v1/switches/s2")
    print(f"\ns2 without a channel for {lab.topology.spec.controller.switch_hold_down + 2:.0f} s: data plane "
          f"judged by BFD, pings {results}; on reconnect s2 got {st['last_changes']}")
    for sent, lost in results:
        assert lost == 0, results
    assert not any(st["last_changes"].values()), st


def test_a_switch_whose_data_plane_dies_is_found_by_bfd_and_routed_around(lab):
    # s2 loses its channel and its datapath stops forwarding on both fabric links (its ports
    # leave the bridge; the veths stay up, so no carrier is lost: only BFD can tell)
    sb = lab.sandbox(ROOT_SANDBOX)
    s2 = lab.topology.switches["s2"]
    fabric_ifaces = [p.ifname for p in lab.topology.switch_ports("s2") if p.kind == "veth"]
    set_controller_target(lab, "s2", f"unix:{lab.sandbox(ROOT_SANDBOX).dir}/nowhere.sock")
    assert wait_for(lambda: not get(lab, "/v1/switches/s2")["connected"], 5)
    t0 = time.monotonic()
    with sb.db() as db:
        txn = db.api.create_transaction(check_error=True, log_errors=False)
        for ifname in fabric_ifaces:
            txn.add(db.api.del_port(ifname, bridge=s2.bridge))
        db._commit(txn, "detach s2's fabric ports")
    assert wait_for(lambda: {"s1:2", "s3:2"} <= set(get(lab, "/v1/topology")["down_ports"]), 10), \
        get(lab, "/v1/topology")
    t_bfd = time.monotonic() - t0
    assert wait_for(lambda: get(lab, "/v1/health")["switches_dead"] == ["s2"], 10), get(lab, "/v1/health")
    t_dead = time.monotonic() - t0
    assert get(lab, "/v1/switches/s2")["data_plane"] == "dead"
    # h2 (behind s2) is no longer routed to from s1: s1's next-hop group towards s2 has no bucket
    # left (dropped at s1), nothing is black-holed into s2
    gid = next_hop_group_ids(lab.topology)["s2"]

    def ports_towards_s2() -> list:
        groups = [g for g in flowdump.parse_groups(lab.ofctl("s1", "dump-groups", str(gid)).stdout)
                  if g.group_id == gid]
        assert len(groups) == 1, groups
        return [a for b in groups[0].buckets for a in b.actions if "output" in a]

    assert wait_for(lambda: ports_towards_s2() == [], 5), ports_towards_s2()
    print(f"\ns2's data plane stopped: BFD took the links down after {t_bfd:.1f} s, s2 judged dead after "
          f"{t_dead:.1f} s")
