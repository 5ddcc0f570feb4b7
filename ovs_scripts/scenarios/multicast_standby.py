"""Multicast with standby paths: the demo scenario.

``python -m ovs_scripts.demo multicast_standby`` brings up
``topologies/multicast_standby.yaml`` (a 2x3 grid, h1 the source on s1,
receivers h2 on s3, h3 on s5, h4 on s6) and shows with real traffic:

* kernel IGMPv2 and IGMPv3 joins learned by the edge switches;
* the active tree s1-s2-{s3-s6, s5} and, per destination device, a standby path
  sharing no transit switch with its active path; the request frames on the
  wire (tcpdump) reaching s2 and being suppressed there;
* a 1000 packets/s sequenced stream through a cut of link s2-s3: s3 switches
  in the datapath, s6 when the controller hears of it; no receiver sees a
  duplicate; after the repair s3 gets a new standby path;
* the same cut with ``protection: restore`` (recompute the tree), for comparison.

Every bit of traffic runs between the lab's own host namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from ovs_scripts import flowdump, kit
from ovs_scripts.demo import Check, scenario
from ovs_scripts.kit import wait_for
from ovs_scripts.lab import Lab

PY = sys.executable
SRC = "10.5.0.1"


def _rest(lab: Lab, path: str, method: str = "GET", body=None):
    return kit.rest(lab, method, path, body).expect(200, 202)


def _standby(lab: Lab, group: str) -> dict:
    return {e["destination"]: e for e in _rest(lab, "/v1/multicast/standby") if e["group"] == group}


def _protected(lab: Lab, group: str, dests) -> dict | None:
    s = _standby(lab, group)
    return s if all(d in s and s[d]["standby"] for d in dests) else None


def _recv(lab: Lab, host: str, group: str, seconds: float, version: int | None = None):
    argv = [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-recv", group, "5000", "--seconds", str(seconds)]
    if version:
        argv += ["--igmp-version", str(version)]
    p = lab.popen(host, argv)
    if "joined" not in p.stdout.readline():
        raise RuntimeError(f"receiver in {host} did not start (see {lab.dir / (host + '.log')})")
    return p


def _result(proc) -> dict:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])


def _cut_run(lab: Lab, group: str, protected: bool) -> dict:
    """A 1000 pps stream to h2 and h4 through a cut of s2-s3; the receivers' results."""
    rx = {h: _recv(lab, h, group, 30) for h in ("h2", "h4")}
    tx = lab.popen("h1", [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-send", group, "5000", "--seconds", "30"])
    ok = wait_for(lambda: _protected(lab, group, ("s3", "s6")) if protected else
                  len(_standby(lab, group)) == 2, 20)
    if not ok:
        raise RuntimeError(f"{group} not ready: {_standby(lab, group)}")
    time.sleep(1.5)
    lab.link("s2", "s3", "down")
    time.sleep(2.0)
    after = _standby(lab, group)
    lab.link("s2", "s3", "up")
    time.sleep(0.5)
    repaired = wait_for(lambda: _protected(lab, group, ("s3",)), 10) if protected else None
    res = {h: _result(p) for h, p in rx.items()}
    res["repaired"] = repaired
    tx.terminate()
    tx.wait(timeout=10)
    res["after"] = after
    # until the controller sees the link up at both ends (with BFD each end only once it is LIVE,
    # which can take seconds): nothing of this cut is still arriving when the next step starts
    # or the final comparison of every switch with the desired state runs
    wait_for(lambda: all(ln["up"] for ln in _rest(lab, "/v1/topology")["links"]), 15)
    return res


@scenario("multicast_standby", "multicast_standby.yaml")
def multicast_standby(lab: Lab, check: Check) -> None:
    """multicast: IGMP joins, active tree, disjoint standby paths, hitless failover vs restoration"""
    group = "239.1.1.1"
    caps = []
    for port in (11, 13, 15):  # everything s2 sends or receives of the standby protocol
        ifname = lab.topology.ports[("s2", port)].ifname
        path = lab.dir / f"demo-{ifname}.pcap"
        caps.append((lab.popen("s2", ["tcpdump", "-n", "-U", "-i", ifname, "-w", str(path), "ether proto 0x88b5"],
                               stdout=subprocess.DEVNULL), path))
    time.sleep(1.0)
    rx = {"h2": _recv(lab, "h2", group, 20, version=2), "h3": _recv(lab, "h3", group, 20, version=3),
          "h4": _recv(lab, "h4", group, 20, version=3)}
    members = wait_for(lambda: len([m for m in _rest(lab, "/v1/multicast/members") if m["group"] == group]) == 3, 10)
    ms = {m["host"]: m for m in _rest(lab, "/v1/multicast/members")}
    check("IGMP joins learned at the edge (h2 v2, h3 v3, h4 v3)", members and ms["h2"]["version"] == 2
          and ms["h3"]["version"] == 3, ", ".join(f"{h} v{m['version']} {m['mode']} on {m['switch']}:{m['port']}"
                                                  for h, m in sorted(ms.items())))
    tx = lab.popen("h1", [PY, "-u", "-m", "ovs_scripts.traffic", "mcast-send", group, "5000", "--seconds", "6"])
    s = wait_for(lambda: _protected(lab, group, ("s3", "s5", "s6")), 15)
    tree = _rest(lab, f"/v1/multicast/channels/{SRC}/{group}/tree")["tree"]
    check("active tree from s1 along shortest paths", bool(tree),
          ", ".join(f"{t['from']}:{t['out_port']}->{t['to']}:{t['in_port']}" for t in tree))
    if s:
        for d in ("s3", "s5", "s6"):
            e = s[d]
            check(f"{d}: standby path shares no transit switch with the active path", e["disjoint"],
                  f"active {'-'.join(e['active']['devices'])}, standby {'-'.join(e['standby']['devices'])} "
                  f"(vid {e['standby']['vid']})")
    else:
        check("standby paths complete for s3, s5, s6", False, str(_standby(lab, group)))
    tx.wait(timeout=30)
    res = {h: _result(p) for h, p in rx.items()}
    for h, r in res.items():
        check(f"{h} got the stream once", r["duplicates"] == 0 and r["lost"] == 0 and r["unique"] > 3000,
              f"{r['unique']} packets, {r['lost']} lost, {r['duplicates']} duplicates")
    time.sleep(0.5)
    for p, _ in caps:
        p.terminate()
        p.wait(timeout=10)
    req = [r for r in _rest(lab, f"/v1/multicast/requests?destination=s3&group={group}") if r["status"] == "complete"]
    if req:
        r = req[-1]
        check.note(f"request {r['request_id']} of s3: joined {r['joined']}, suppressed {r['suppressed']}, "
                   f"complete in {r['duration_ms']} ms: {r['standby_path']}")
        for h in r["hops"]:
            check.note(f"  +{h['at_ms']:7.2f} ms  {h['device']:<3} {h['action']:<10} {h['reason']}")
    import scapy.layers.l2  # noqa: F401
    from scapy.utils import rdpcap

    from ryu_apps.functions.multicast_standby import wire

    frames = [wire.parse_request(bytes(p)) for _, path in caps for p in rdpcap(str(path))]
    into = [f for f in frames if f.dest_device == 0x53 and f.sender_device == 0x55]
    out_of = [f for f in frames if f.sender_device == 0x52]
    check("on the wire: s3's request reached s2 (from s5), s2 forwarded no request at all",
          bool(into) and not out_of, f"{len(frames)} request frames captured on s2's ports; "
                                     f"{len(into)} from s5 for s3, {len(out_of)} sent by s2")

    # failover: protected vs restoration
    prot = _cut_run(lab, "239.1.1.2", True)
    check("link s2-s3 cut: s3 switched to its standby copy in the datapath",
          prot["h2"]["lost"] < 50 and prot["h2"]["duplicates"] == 0,
          f"h2 lost {prot['h2']['lost']} ({prot['h2']['longest_outage_ms']} ms), "
          f"{prot['h2']['duplicates']} duplicates")
    check("link s2-s3 cut: s6 switched when the controller heard of it",
          prot["h4"]["duplicates"] == 0 and prot["h4"]["lost"] < 500,
          f"h4 lost {prot['h4']['lost']} ({prot['h4']['longest_outage_ms']} ms), "
          f"{prot['h4']['duplicates']} duplicates")
    again = prot["repaired"]
    check("after the repair s3 has a new standby path, disjoint from its new active path",
          bool(again) and again["s3"]["disjoint"],
          (f"active {'-'.join(again['s3']['active']['devices'])}, standby "
           f"{'-'.join(again['s3']['standby']['devices'])}") if again else "none")
    _rest(lab, "/v1/apps/multicast_standby/intent", "PUT", {"protection": "restore"})
    rest_ = _cut_run(lab, "239.1.1.3", False)
    _rest(lab, "/v1/apps/multicast_standby/intent", "PUT", {"protection": "standby"})
    check("baseline (protection: restore) through the same cut: no duplicates",
          rest_["h2"]["duplicates"] == 0 and rest_["h4"]["duplicates"] == 0,
          f"h2 lost {rest_['h2']['lost']} ({rest_['h2']['longest_outage_ms']} ms), "
          f"h4 lost {rest_['h4']['lost']} ({rest_['h4']['longest_outage_ms']} ms)")
    check.note(f"outage at 1000 pps, standby vs restore: h2 {prot['h2']['longest_outage_ms']} vs "
               f"{rest_['h2']['longest_outage_ms']} ms, h4 {prot['h4']['longest_outage_ms']} vs "
               f"{rest_['h4']['longest_outage_ms']} ms (one run each; bench/multicast_standby.py takes medians)")
    wait_for(lambda: all(x["synced"] for x in _rest(lab, "/v1/switches")), 10)
    for sw in lab.topology.switches:
        bridge, rundir = lab.switch_target(sw)
        d = flowdump.diff(bridge, rundir, flowdump.fetch_desired(lab.rest_url, sw))
        check(f"{sw} flows == controller's desired state", d.identical,
              f"{len(d.missing)} missing, {len(d.unexpected)} unexpected, {len(d.different)} different")
