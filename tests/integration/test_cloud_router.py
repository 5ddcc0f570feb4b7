"""Cloud router on real OVS: 9 tier nodes (each its own OVS), VXLAN + Geneve tunnels, real traffic.

One lab for the whole module (bringing up 10 OVS instances per test would cost
more than the tests): the tests run in file order and each leaves the lab as
the next expects it; the destructive NAC kill comes last.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ovs_scripts.scenarios.cloud_router import (DB, EXPECTED, REG, TARGETS, WEB, CloudLab, RestError, outage,
                                                wait_for)
from tests.integration import conftest

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies" / "cloud_router.yaml"
APP = "cloud_router"


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "cloud_router") as factory:
        c = CloudLab(factory(TOPO))
        c.start_services()
        assert c.wait_ready(), c.rest(f"/v1/{APP}")
        yield c


def nac_table(cl, nac):
    return sorted((f.table, f.priority, f.cookie, f.match_text, f.actions_text) for f in cl.flows(nac))


def policy_of(cl, host):
    return cl.client(cl.mac(host))["policy"]


def test_policies_allow_and_deny_at_the_nac(cl):
    hosts = ["c1", "c2", "c3", "c4"]
    policies = {h: policy_of(cl, h) for h in hosts}
    assert policies == {"c1": "staff", "c2": "guest", "c3": "contractor", "c4": "quarantine"}
    drops_before = {(n, p): cl.policy_drops(n, p) for n in ("nac1", "nac2") for p in policies.values()}
    res = cl.probe_many(hosts)
    for h in hosts:
        assert cl.reachable(res[h]) == EXPECTED[policies[h]], (h, res[h])
        # denied means silently dropped, never refused by the service (which would mean it got there)
        assert all(v in ("open", "timeout") for v in res[h].values()), res[h]
    # the denied probes died on the drop flow of the client's policy at the client's NAC
    for h in hosts:
        nac, pol = cl.client(cl.mac(h))["nac"], policies[h]
        assert wait_for(lambda: cl.policy_drops(nac, pol) > drops_before[(nac, pol)], timeout=5), (h, nac, pol)


def test_rate_limit_is_measured_near_its_setting(cl):
    limit = cl.rest(f"/v1/{APP}/policies/guest")["rate_kbps"]
    got = cl.iperf("c2", WEB, seconds=3) * 1000
    free = cl.iperf("c1", WEB, seconds=2) * 1000
    print(f"\nguest rate limit {limit} kbit/s: TCP measured {got:.0f} kbit/s; unlimited staff client {free:.0f} kbit/s")
    assert 0.5 * limit < got < 1.15 * limit, got
    assert free > 5 * limit
    # UDP at twice the limit: what arrives is the limit
    sink = cl.sink("web", [6001], seconds=5)
    cl.result(cl.stream("c2", WEB, 6001, seconds=3, pps=1000, size=1000))
    kbps = outage(cl.result(sink), 6001)["kbps"]
    print(f"guest UDP offered ~8000 kbit/s, delivered {kbps:.0f} kbit/s")
    assert 0.7 * limit < kbps < 1.15 * limit


def test_quarantine_registration_and_bad_policies(cl):
    c4, c1 = cl.mac("c4"), cl.mac("c1")
    before = cl.client(c4)
    assert before["policy"] == "quarantine" and before["source"] == "lab host"
    # registration: a name and a policy; key and location stay
    now = cl.rest(f"/v1/{APP}/clients/{c4}", "PUT", {"name": "dave", "policy": "contractor"})
    assert now["policy"] == "contractor" and now["key"] == before["key"] and now["location"] == before["location"]
    assert cl.wait_synced()
    assert cl.reachable(cl.probe("c4")) == EXPECTED["contractor"]
    assert cl.client("dave")["mac"] == c4
    # quarantine a registered client: only the registration service
    cl.rest(f"/v1/{APP}/clients/{c1}", "PUT", {"name": "alice", "policy": "staff", "quarantine": True})
    assert cl.wait_synced()
    assert cl.reachable(cl.probe("c1")) == EXPECTED["quarantine"]
    cl.rest(f"/v1/{APP}/clients/{c1}", "PUT", {"name": "alice", "policy": "staff"})
    cl.rest(f"/v1/{APP}/clients/dave", "DELETE")
    assert cl.client(c4)["policy"] == "quarantine"
    assert cl.wait_synced()

    # bad policies and clients: 4xx naming the problem, nothing changes on the NACs
    nac_flows = {n: nac_table(cl, n) for n in ("nac1", "nac2")}
    bad = [
        ("PUT", "/policies/vip", {"allow": [{"dst": "10.61.0.1/24"}]}, 422, "allow[0].dst"),
        ("PUT", "/policies/vip", {"allow": [{"dst": WEB, "proto": "icmp", "ports": [80]}]}, 422, "allow[0]"),
        ("PUT", "/policies/vip", {"allow": [{"dst": WEB, "proto": "tcp", "ports": ["9-1"]}]}, 422, "ports"),
        ("PUT", "/policies/vip", {"rate_kbps": 1}, 422, "rate_kbps"),
        ("PUT", "/policies/vip", {"allow": [], "colour": "red"}, 422, "colour"),
        ("PUT", "/policies/quarantine", {"allow": []}, 422, "built in"),
        ("DELETE", "/policies/staff", None, 409, "used by clients"),
        ("DELETE", "/policies/quarantine", None, 409, "built in"),
        ("PUT", f"/clients/{c4}", {"policy": "vip"}, 422, "no policy 'vip'"),
        ("PUT", "/clients/01:00:00:00:00:01", {"policy": "staff"}, 422, "multicast"),
        ("PUT", f"/clients/{c4}", {"ipv4": "10.60.0.1"}, 422, "10.60.0.1"),
        ("GET", "/clients/nobody", None, 404, "nobody"),
    ]
    for method, path, body, status, words in bad:
        with pytest.raises(RestError) as err:
            cl.rest(f"/v1/{APP}{path}", method, body)
        text = err.value.body.get("error", "") + " " + str(err.value.body.get("field", ""))
        assert err.value.status == status and words in text, (method, path, err.value.status, err.value.body)
    assert cl.wait_synced()
    after = {n: nac_table(cl, n) for n in ("nac1", "nac2")}
    assert after == nac_flows, "a refused change touched a NAC"
    # a good policy change applies at every NAC
    cl.rest(f"/v1/{APP}/policies/vip", "PUT", {"allow": [{"dst": DB, "proto": "tcp", "ports": [5001, 5002]}]})
    cl.rest(f"/v1/{APP}/clients/{c4}", "PUT", {"policy": "vip"})
    assert cl.wait_synced()
    assert cl.reachable(cl.probe("c4", [f"tcp:{DB}:5001", f"tcp:{DB}:5002", f"tcp:{WEB}:5001"])) == \
        {f"tcp:{DB}:5001", f"tcp:{DB}:5002"}
    cl.rest(f"/v1/{APP}/clients/{c4}", "DELETE")
    cl.rest(f"/v1/{APP}/policies/vip", "DELETE")
    assert cl.wait_synced()


def test_unknown_client_is_learned_into_quarantine(cl):
    mac, ip = "02:00:00:60:00:99", "10.60.0.99"
    with pytest.raises(RestError):
        cl.client(mac)
    # a UDP packet from a MAC nobody registered, out of c4's port on ap3 (its ARP for the gateway
    # would be answered by the access point itself; its first IPv4 packet reaches the controller)
    frame = ("0efab0000001" + mac.replace(":", "") + "0800" + "4500001c00010000401100000a3c00630a3d0001"
             + "1770177100080000")
    cl.lab.exec("c4", [sys.executable, "-m", "ovs_scripts.traffic", "send-frames", frame])
    assert wait_for(lambda: cl.client(mac)["location"] is not None, timeout=5)
    c = cl.client(mac)
    assert (c["source"], c["policy"], c["ipv4"], c["location"]["switch"]) == ("learned", "quarantine", ip, "ap3")
    cl.rest(f"/v1/{APP}/clients/{mac}", "DELETE")
    with pytest.raises(RestError):
        cl.client(mac)


def test_tcp_stream_survives_three_roams_with_the_same_policy(cl):
    mac = cl.mac("c1")
    targets = [t for t in TARGETS if not t.startswith("udp")]
    before = cl.client(mac)
    start_results = cl.reachable(cl.probe("c1", targets))
    assert start_results == {t for t in EXPECTED["staff"] if t in targets}
    sink = cl.sink("db", [6001], seconds=16)
    udp = cl.stream("c1", DB, 6001, seconds=12)
    tcp = cl.tcp_stream("c1", WEB, 5001, seconds=12)
    time.sleep(1.0)
    path = [("ap1", 1), ("ap2", 10), ("ap3", 10), ("ap1", 1)]
    report = []
    for (old_sw, old_port), (sw, port) in zip(path, path[1:]):
        m = cl.move("c1", sw, port)
        t = cl.wait_location("c1", sw, port)
        assert t is not None, f"the controller did not see c1 arrive at {sw}:{port}"
        assert cl.wait_synced()
        # (the client's own ARP for its gateway may need its 1 s retry: its carrier dropped during the re-plug)
        assert wait_for(lambda: cl.probe("c1", [f"tcp:{WEB}:5001"])[f"tcp:{WEB}:5001"] == "open", timeout=5)
        assert cl.reachable(cl.probe("c1", targets)) == start_results, f"policy changed after the move to {sw}"
        # the old location's flows are gone, the new ones are there
        assert not cl.client_location_flows(old_sw, mac), f"{old_sw} still holds c1's location flows"
        assert cl.client_location_flows(sw, mac)
        loc = cl.rest(f"/v1/{APP}/clients/{mac}/location")
        assert loc["path"]["access_point"] == {"switch": sw, "port": port}
        assert (loc["key"], loc["nac"]) == (before["key"], before["nac"])
        report.append((sw, m["unplugged_seconds"] * 1000, t * 1000))
    tr = cl.result(tcp)
    cl.result(udp)
    s = outage(cl.result(sink), 6001)
    print("\nroams:", ", ".join(f"->{sw}: re-plug {u:.0f} ms, located {t:.0f} ms after the re-plug"
                               for sw, u, t in report))
    print(f"TCP: {tr['echoed']}/{tr['sent']} echoed in order, longest pause {tr['max_gap_ms']} ms "
          f"(pauses {tr['gaps_ms']}); UDP 1000 pps: lost {s['lost']} packets, outages "
          f"{[g['outage_ms'] for g in s['gaps'][:3]]} ms")
    assert tr["connected"] and tr["intact"] and tr["error"] is None, tr
    assert tr["max_gap_ms"] < 10_000  # sanity only
    assert s["received"] > 0

    # a late frame from the access point c1 left (ap2:10, unplugged since) cannot undo the move
    cl.inject_from("ap2", 10, mac, "10.60.0.1")
    assert wait_for(lambda: any(e["event"] == "stale" and e.get("at") == "ap2:10"
                                for e in cl.rest(f"/v1/{APP}/events")), timeout=5)
    assert cl.client(mac)["location"]["switch"] == "ap1"
    assert not cl.client_location_flows("ap2", mac)
    assert cl.reachable(cl.probe("c1", [f"tcp:{WEB}:5001"])) == {f"tcp:{WEB}:5001"}

    # a controller restart remembers keys and locations: it finds every switch right and changes nothing
    cl.lab.restart_controller()
    assert cl.wait_ready()
    changed = {s["name"]: s["last_changes"] for s in cl.rest("/v1/switches") if any(s["last_changes"].values())}
    assert not changed, f"the restart changed {changed}"
    after = cl.client(mac)
    assert (after["key"], after["location"]["switch"], after["location"]["port"]) == (before["key"], "ap1", 1)


def _set_identity(cl, host, mac=None, ip=None):
    """Change a client's own MAC and/or IPv4 address inside its namespace (what a hostile client can do)."""
    h = cl.topo.hosts[host]
    mac = mac or h.mac
    ip = ip or str(h.ipv4.ip)
    cmds = [["ip", "link", "set", "dev", "eth0", "address", mac],
            ["ip", "-4", "addr", "flush", "dev", "eth0"],
            ["ip", "addr", "add", f"{ip}/{h.ipv4.network.prefixlen}", "dev", "eth0"],
            ["ip", "route", "replace", "default", "via", str(h.gateway4)],
            ["ip", "neigh", "flush", "dev", "eth0"]]
    for argv in cmds:
        cl.lab.exec(host, argv)


def _conflicts(cl, at):
    return [e for e in cl.rest(f"/v1/{APP}/events") if e["event"] == "conflict" and e.get("at") == at]


def test_copied_mac_or_ip_gains_nothing_and_the_real_client_keeps_service(cl):
    """c4 (quarantined, ap3:1) takes staff client c1's MAC, its IP, then both, while c1 (ap1:1) is
    connected and streaming: c1 is not moved, loses nothing, and c4 gets nothing of c1's policy."""
    c1, c4 = cl.mac("c1"), cl.mac("c4")
    c1_ip = str(cl.topo.hosts["c1"].ipv4.ip)
    assert cl.client(c1)["location"]["switch"] == "ap1" and cl.client(c4)["location"]["switch"] == "ap3"
    staff_only = [f"tcp:{DB}:5001", f"icmp:{WEB}", f"tcp:{WEB}:5001"]  # staff allows them, quarantine none
    variants = [("MAC", c1, None), ("IP", None, c1_ip), ("MAC and IP", c1, c1_ip)]
    seconds = 3.0 * len(variants) + 4
    sink = cl.sink("db", [6001, 6002], seconds=seconds + 3)
    victim = cl.stream("c1", DB, 6001, seconds=seconds)          # staff: udp 6000-6003 to 10.61.0.0/24
    time.sleep(1.0)
    report, problems = [], []  # checked after the figures are printed
    try:
        for what, mac, ip in variants:
            _set_identity(cl, "c4", mac, ip)
            attack = cl.stream("c4", DB, 6002, seconds=2.0, pps=200)  # would pass with c1's identity
            got = cl.reachable(cl.probe("c4", staff_only))
            sent = cl.result(attack)["sent"]
            loc = cl.client(c1)["location"] or {}
            at = f"{loc.get('switch')}:{loc.get('port')}"
            report.append((what, sent, sorted(got), at))
            if got:
                problems.append(f"c4 with c1's {what} reached {sorted(got)}")
            if at != "ap1:1":
                problems.append(f"c4 with c1's {what} moved c1 to {at}")
            if not cl.client_location_flows("ap1", c1) or cl.client_location_flows("ap3", c1):
                problems.append(f"c4 with c1's {what}: c1's location flows left ap1 or appeared on ap3")
            if mac is not None and not wait_for(lambda: _conflicts(cl, "ap3:1"), timeout=5):
                problems.append(f"c4 with c1's {what}: no conflict flagged in the events")
    finally:
        _set_identity(cl, "c4")
    v = cl.result(victim)
    s = cl.result(sink)
    real, stolen = outage(s, 6001), outage(s, 6002)
    counters = cl.rest(f"/v1/{APP}")["counters"]
    print(f"\ncopied identity: {report}; c1 (the real client) sent {v['sent']}, received {real['received']}, "
          f"lost {real['lost']} (longest outage {real['longest_outage_ms']} ms); c4's streams delivered "
          f"{stolen['received']}; claims refused as conflict: {counters.get('claim_conflict', 0)}")
    assert not problems, problems
    assert stolen["received"] == 0, "the attacker's traffic got through with the victim's policy"
    assert real["received"] > 0.9 * v["sent"] and real["lost"] < 50, real  # under 50 ms at 1000 pps
    assert counters.get("claim_conflict", 0) > 0
    # c4 back to its own identity: still where it was, still quarantined, working
    assert cl.client(c4)["location"]["switch"] == "ap3" and cl.client(c4)["policy"] == "quarantine"
    assert wait_for(lambda: cl.reachable(cl.probe("c4", [f"tcp:{REG}:8080", f"tcp:{WEB}:5001"]))
                    == {f"tcp:{REG}:8080"}, timeout=5)


def test_quarantined_client_changing_mac_or_ip_stays_quarantined(cl):
    c4 = cl.mac("c4")
    new_mac, new_ip = "02:00:00:60:00:77", "10.60.0.77"
    probes = [f"tcp:{REG}:8080", f"tcp:{WEB}:5001", f"tcp:{DB}:5001", f"tcp:{DB}:5002", f"icmp:{WEB}"]
    seen = {}
    try:
        for what, mac, ip in (("MAC", new_mac, None), ("IP", None, new_ip), ("MAC and IP", new_mac, new_ip)):
            _set_identity(cl, "c4", mac, ip)
            got = cl.reachable(cl.probe("c4", probes))
            deadline = time.monotonic() + 8
            # a new device: its first packet has it learned into the default policy (quarantine), and
            # the registration service answers once its flows are in; probe again until then
            while what == "MAC and IP" and not got and time.monotonic() < deadline:
                got = cl.reachable(cl.probe("c4", probes))
            seen[what] = sorted(got)
            assert got <= EXPECTED["quarantine"], f"quarantined c4 with a new {what} reached {got}"
    finally:
        _set_identity(cl, "c4")
    learned = cl.client(new_mac)
    print(f"\nquarantined c4 with a new MAC / IP / both reached {seen}; the new MAC is "
          f"{learned['source']} with policy {learned['policy']}")
    assert learned["source"] == "learned" and learned["policy"] == "quarantine" and learned["ipv4"] == new_ip
    assert seen["MAC and IP"] == [f"tcp:{REG}:8080"]  # it is a quarantined client, nothing more
    assert cl.client(c4)["policy"] == "quarantine"
    cl.rest(f"/v1/{APP}/clients/{new_mac}", "DELETE")
    assert wait_for(lambda: cl.reachable(cl.probe("c4", [f"tcp:{REG}:8080"])) == {f"tcp:{REG}:8080"}, timeout=5)


def test_policy_change_is_enforced_on_an_open_tcp_stream(cl):
    c1 = cl.mac("c1")
    body = {"name": "alice", "policy": "staff"}
    assert cl.client(c1)["policy"] == "staff"
    tcp = cl.lab.popen("c1", [sys.executable, "-u", "-m", "ovs_scripts.traffic", "tcp-stream", WEB, "5001",
                              "--seconds", "4", "--interval-ms", "10", "--drain", "1"])
    time.sleep(1.5)
    t_sent = time.monotonic_ns()
    try:
        cl.rest(f"/v1/{APP}/clients/{c1}", "PUT", {**body, "policy": "contractor"})  # no web:5001
        t_answered = time.monotonic_ns()
        r = cl.result(tcp)
    finally:
        cl.rest(f"/v1/{APP}/clients/{c1}", "PUT", body)
    assert r["connected"] and r["first_echo_ns"] is not None and r["first_echo_ns"] < t_sent, r
    after_sent = (r["last_echo_ns"] - t_sent) / 1e9
    after_answer = (r["last_echo_ns"] - t_answered) / 1e9
    print(f"\npolicy change on an open TCP stream: PUT answered in {(t_answered - t_sent) / 1e6:.0f} ms, last "
          f"echo {after_sent * 1000:.0f} ms after the PUT was sent ({r['echoed']}/{r['sent']} echoed)")
    assert r["echoed"] < r["sent"], "the stream kept flowing after the policy stopped allowing it"
    assert after_answer < 1.0, f"the stream flowed {after_answer:.2f} s after the change was accepted"
    assert after_sent < 3.0  # generous: the PUT itself under load
    assert cl.wait_synced()
    assert wait_for(lambda: cl.reachable(cl.probe("c1", [f"tcp:{WEB}:5001"])) == {f"tcp:{WEB}:5001"}, timeout=5)


def _failover_streams(cl, victim_hosts, seconds=5.0):
    """Per victim client: an allowed and a denied sequenced stream to db, received on db."""
    allowed_port = {"c1": 6002, "c3": None, "c4": None}
    streams, ports = [], []
    for h in victim_hosts:
        if allowed_port.get(h):
            streams.append(cl.stream(h, DB, allowed_port[h], seconds))
            ports.append(allowed_port[h])
    deny = {"c1": 6005, "c3": 6004, "c4": 6003}  # staff allows udp 6000-6003 only; c3/c4 no UDP at all
    for h in victim_hosts:
        streams.append(cl.stream(h, DB, deny[h], seconds))
        ports.append(deny[h])
    return streams, ports, deny


def test_nac_underlay_cut_bfd_failover_and_back(cl):
    mac = cl.mac("c1")
    nac = cl.client(mac)["nac"]
    victims = [h for h in ("c1", "c3", "c4") if cl.client(cl.mac(h))["nac"] == nac]
    sink = cl.sink("db", [6002, 6003, 6004, 6005], seconds=9)
    streams, ports, deny = _failover_streams(cl, victims, seconds=6)
    time.sleep(1.5)
    t0 = time.monotonic()
    cl.lab.link(cl.node_of(nac), "underlay", "down")
    try:
        assert wait_for(lambda: cl.client(mac)["nac"] not in (None, nac), timeout=5), cl.rest(f"/v1/{APP}/nacs")
        t_rest = time.monotonic() - t0
        other = cl.client(mac)["nac"]
        assert cl.rest(f"/v1/{APP}/nacs")[nac]["failed"] is True
        for p in streams:
            cl.result(p)
        s = cl.result(sink)
    finally:
        cl.lab.link(cl.node_of(nac), "underlay", "up")
    allowed = outage(s, 6002)
    print(f"\nunderlay of {nac} cut: REST shows {other} after {t_rest:.2f} s; allowed stream lost "
          f"{allowed['lost']} packets, longest outage {allowed['longest_outage_ms']} ms")
    assert allowed["received"] > 0 and allowed["last_seq"] > 4000  # flowed again after the cut
    for h in victims:
        assert outage(s, deny[h])["received"] == 0, f"{h}'s denied stream got through during the failover"
    # the NAC comes back: its clients return to it (deterministic), traffic flows
    assert wait_for(lambda: cl.client(mac)["nac"] == nac, timeout=10)
    assert wait_for(lambda: cl.reachable(cl.probe("c1", [f"tcp:{WEB}:5001"])) == {f"tcp:{WEB}:5001"}, timeout=10)


def test_nac_killed_its_clients_stay_policed(cl):
    # kill the NAC of the rate-limited guest (bob) and watch the others on it too
    bob = cl.mac("c2")
    nac = cl.client(bob)["nac"]
    limit = cl.rest(f"/v1/{APP}/policies/guest")["rate_kbps"]
    victims = [h for h in ("c1", "c3", "c4") if cl.client(cl.mac(h))["nac"] == nac]
    sink_db = cl.sink("db", [6002, 6003, 6004, 6005, 6001], seconds=9)
    sink_web = cl.sink("web", [6001], seconds=9)
    streams, ports, deny = _failover_streams(cl, victims, seconds=6)
    flood = cl.stream("c2", WEB, 6001, seconds=6, pps=1000, size=1000)   # ~2x bob's limit
    bob_denied = cl.stream("c2", DB, 6001, seconds=6)                    # guest: nothing to db
    time.sleep(2.0)
    t0 = time.monotonic()
    cl.kill_switch(nac)
    assert wait_for(lambda: cl.client(bob)["nac"] not in (None, nac), timeout=5)
    t_rest = time.monotonic() - t0
    for p in streams + [flood, bob_denied]:
        cl.result(p)
    s_db, s_web = cl.result(sink_db), cl.result(sink_web)
    f = outage(s_web, 6001)
    print(f"\n{nac} killed: REST moved its clients after {t_rest:.2f} s; bob's flood lost {f['lost']} "
          f"packets (longest outage {f['longest_outage_ms']} ms), arrived at {f['kbps']:.0f} kbit/s "
          f"(limit {limit})")
    assert outage(s_db, 6001)["received"] == 0, "bob's denied stream got through"
    for h in victims:
        assert outage(s_db, deny[h])["received"] == 0, f"{h}'s denied stream got through"
    assert f["received"] > 0 and f["last_recv_ns"] > f["first_recv_ns"] + 3e9  # still flowing after the kill
    assert f["kbps"] < 1.2 * limit, "the rate limit did not hold across the failover"
    assert cl.rest(f"/v1/{APP}/nacs")[nac]["failed"] is True
    assert cl.reachable(cl.probe("c2", [f"tcp:{WEB}:5001", f"tcp:{DB}:5001"])) == {f"tcp:{WEB}:5001"}
    assert cl.reachable(cl.probe("c4", [f"tcp:{REG}:8080", f"tcp:{WEB}:5001"])) == {f"tcp:{REG}:8080"}
