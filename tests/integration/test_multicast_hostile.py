"""multicast_standby against what a host could try, and a transit switch (not a link) failing.

One lab for the module (topologies/multicast_standby.yaml with two changes): s2 runs in its own
node (its own ovs-vswitchd, so it can really die), and h5 sits on s3 next to receiver h2::

    h1 - s1 ---- s2 ---- s3 - h2, h5
         |       |       |
         s4 ---- s5 ---- s6 - h4
                 |
                 h3

h2 and h4 join; h1 sends.  h3 (on s5, which carries the standby copies) and h5 (on a
destination device) never join.  Tests run in file order; the switch kill comes last.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ovs_scripts.sandbox import kill_pid
from ryu_apps.functions.multicast_standby import wire
from tests.integration import conftest
from tests.integration.test_multicast_standby import (
    SRC,
    all_protected,
    diff_all,
    get,
    receiver,
    result,
    sender,
    standby_of,
    wait_for,
    wait_synced,
)

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies" / "multicast_standby.yaml"
PY = sys.executable
GROUP = "239.1.3.1"
MEMBERS = ("h2", "h4")
NON_MEMBERS = ("h1", "h3", "h5")  # h1 is the source: it must not get its own stream back either


def _topology_changes() -> dict:
    data = yaml.safe_load(TOPO.read_text())
    switches = copy.deepcopy(data["switches"])
    switches["s2"]["node"] = "n2"
    hosts = dict(data["hosts"], h5={"mac": "02:00:00:00:05:05", "ipv4": "10.5.0.5/24"})
    links = list(data["links"]) + [{"a": "h5", "b": "s3", "b_port": 2}]
    return {"nodes": {"n2": {"underlay_ip": "192.168.55.2/24"}}, "switches": switches, "hosts": hosts,
            "links": links}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    procs: list[subprocess.Popen] = []
    with conftest.module_factory(tmp_path_factory, "multicast_hostile") as factory:
        try:
            lab = factory(TOPO, timeout=90, **_topology_changes())
            lab.procs = procs
            yield lab
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()


def sniffer(lab, host, seconds):
    p = lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-sniff", "--seconds", str(seconds)])
    line = p.stdout.readline()
    assert "sniffing" in line, f"{host}: {line!r}"
    lab.procs.append(p)
    return p


def mcast_flows(lab):
    return {sw: sorted(repr(f["match"]) + str(f["actions"])
                       for f in get(lab, f"/v1/switches/{sw}/flows?app=multicast_standby"))
            for sw in lab.topology.switches}


@pytest.fixture(scope="module")
def streaming(lab):
    """h2 and h4 hold memberships; h1 streams for the whole module; the standby paths are complete."""
    for h in MEMBERS:
        holder = lab.popen(h, [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-join", GROUP, "--seconds", "120"])
        assert "joined" in holder.stdout.readline()
        lab.procs.append(holder)
    tx = sender(lab, GROUP, 120)
    lab.procs.append(tx)
    assert wait_for(lambda: all_protected(lab, GROUP, ("s3", "s6")), 20), standby_of(lab, GROUP)
    assert wait_synced(lab)
    return tx


def test_non_members_receive_nothing_of_the_group(lab, streaming):
    sniffs = {h: sniffer(lab, h, 5) for h in NON_MEMBERS}
    rx = {h: receiver(lab, h, GROUP, 4) for h in MEMBERS}
    for h in NON_MEMBERS:  # the sniffers work: each sees these unicast pings
        ip = str(lab.topology.hosts[h].ipv4.ip)
        lab.exec("h2", ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", ip], check=False)
    got = {h: result(p) for h, p in rx.items()}
    seen = {h: result(p) for h, p in sniffs.items()}
    print("\nmembers:", {h: (r["unique"], r["lost"], r["duplicates"]) for h, r in got.items()},
          "non-members (group frames, any multicast, standby requests):",
          {h: (s["group_frames"], s["multicast_frames"], s["standby_requests"]) for h, s in seen.items()})
    for h, r in got.items():
        assert r["unique"] > 2000 and r["duplicates"] == 0, (h, r)
    for h, s in seen.items():
        assert s["frames"] >= 3, (h, s)  # the sniffer works
        assert s["group_frames"] == 0 and s["multicast_frames"] == 0, f"non-member {h} received {s}"
        assert s["standby_requests"] == 0, f"{h} received standby requests: {s}"


def test_standby_request_injected_from_a_host_port_is_ignored(lab, streaming):
    done = [r for r in get(lab, f"/v1/multicast/requests?group={GROUP}") if r["status"] == "complete"]
    assert done, get(lab, "/v1/multicast/requests")
    real = get(lab, f"/v1/multicast/requests/{done[-1]['request_id']}")
    dpid = {sw: lab.topology.switches[sw].dpid for sw in lab.topology.switches}
    flows_before = mcast_flows(lab)
    summary = get(lab, "/v1/multicast")
    before = (summary["counters"].get("request_hops", 0), get(lab, "/v1/health")["packet_ins"],
              len(get(lab, "/v1/multicast/requests?limit=1000")))
    # from h5 (on s3) and h3 (on s5): copies of a real request, one claiming to come from the
    # switch's fabric neighbour, one for a fresh request id and vid, one tagged, each many times
    frames = []
    for host_sw, neighbour in (("s3", "s2"), ("s5", "s4")):
        for rid, vid in ((real["request_id"], real["vid"]), (real["request_id"] + 1000, 4000)):
            req = wire.StandbyRequest(rid, dpid["s3"], dpid[neighbour], SRC, GROUP, vid)
            frames.append(req.encode())
        tagged = wire.StandbyRequest(real["request_id"], dpid["s6"], dpid[neighbour], SRC, GROUP, real["vid"])
        raw = tagged.encode()
        frames.append(raw[:12] + b"\x81\x00\x00\x05" + raw[12:])
    sent = 0
    for host in ("h5", "h3"):
        r = lab.exec(host, [PY, "-m", "ovs_scripts.traffic", "send-frames", *(f.hex() for f in frames),
                            "--repeat", "50"])
        sent += len(frames) * 50
        assert r.returncode == 0, r.stderr
    time.sleep(1.5)
    summary = get(lab, "/v1/multicast")
    after = (summary["counters"].get("request_hops", 0), get(lab, "/v1/health")["packet_ins"],
             len(get(lab, "/v1/multicast/requests?limit=1000")))
    print(f"\ninjected {sent} standby-request frames from host ports: request hops handled "
          f"{before[0]} -> {after[0]}, packet-ins {before[1]} -> {after[1]}, audit records {before[2]} -> {after[2]}")
    assert after[0] == before[0], "a request from a host port reached the request handler"
    assert after[1]["bad"] == before[1]["bad"] and after[1]["handled"] - before[1]["handled"] < 20, \
        "frames from host ports were punted to the controller"
    assert mcast_flows(lab) == flows_before, "a frame from a host created forwarding state"
    assert summary["requests_in_flight"] == 0
    assert wait_synced(lab)
    assert not diff_all(lab)
    s = standby_of(lab, GROUP)
    assert all(s[d]["standby"] and s[d]["disjoint"] for d in ("s3", "s6")), s


def test_transit_switch_failure_on_the_active_path_fails_over_to_standby(lab, streaming):
    s = standby_of(lab, GROUP)
    assert "s2" in s["s3"]["active"]["devices"] and "s2" in s["s6"]["active"]["devices"], s
    assert all("s2" not in s[d]["standby"]["devices"] for d in ("s3", "s6")), s
    rx = {h: receiver(lab, h, GROUP, 9) for h in MEMBERS}
    sniffs = {h: sniffer(lab, h, 9) for h in ("h3", "h5")}
    time.sleep(2.0)
    sb = lab.sandbox(lab.topology.switches["s2"].node)
    pid = sb.pid("ovs-vswitchd")
    t0 = time.monotonic()
    kill_pid(pid, sb.marker, "ovs-vswitchd")  # the pid the lab recorded for s2's node, never by name
    moved = wait_for(lambda: (lambda x: all(x[d]["active_kind"] != "tree" for d in ("s3", "s6")) and x)(
        standby_of(lab, GROUP)), 10)
    t_rest = time.monotonic() - t0
    got = {h: result(p) for h, p in rx.items()}
    seen = {h: result(p) for h, p in sniffs.items()}
    events = [e for e in get(lab, "/v1/multicast/events") if e["kind"] == "failover"]
    print(f"\ns2's ovs-vswitchd (pid {pid}) killed: REST shows s3/s6 on their standby paths after {t_rest:.2f} s; "
          + ", ".join(f"{h} lost {r['lost']} packets (longest outage {r.get('longest_outage_ms')} ms), "
                      f"{r['duplicates']} duplicates" for h, r in got.items())
          + f"; failover detection: {sorted({(e['destination'], e.get('detection')) for e in events})}; "
          f"non-members got {[(h, x['group_frames']) for h, x in seen.items()]}")
    assert moved, standby_of(lab, GROUP)
    assert moved["s3"]["active"]["devices"] == ["s1", "s4", "s5", "s6", "s3"], moved["s3"]
    assert "s2" in {sw["name"] for sw in get(lab, "/v1/switches") if not sw["connected"]}
    for h, r in got.items():
        assert r["duplicates"] == 0, (h, r)
        assert r["unique"] > 3000, (h, r)  # flowing again after the failure
        # BFD (100 ms) on the fabric links: detected in ~0.3 s, s3 in its datapath; without BFD only the
        # silence detector (silence_ms 1000) notices a switch whose links keep their carrier: 1.6 s lost
        assert r["lost"] < 1000, (h, r)
    assert {e["destination"]: e.get("detection") for e in events}.get("s3") == "topology", events
    for h, x in seen.items():
        assert x["group_frames"] == 0, f"non-member {h} received the group during the failover: {x}"
