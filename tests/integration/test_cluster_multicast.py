"""Multicast standby on a 3-instance controller cluster (issue 11): one instance leads the app
(packet-ins relayed to it, its packet-outs sent by the switches' masters), every instance
computes the same trees and paths from the snapshot it publishes, and when the leader is
killed a new one takes over: the streams keep flowing and a new IGMP join works again.

topologies/multicast_standby.yaml with ``controller: {replicas: 3, store: etcd}``::

    h1 - s1 ---- s2 ---- s3 - h2
         |       |       |
         s4 ---- s5 ---- s6 - h4
                 |
                 h3
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ovs_scripts import flowdump, kit
from ovs_scripts.lab import Lab
from tests.integration import conftest
from tests.integration.labtools import wait_for
from tests.integration.test_multicast_standby import receiver, result, sender

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies" / "multicast_standby.yaml"
APP = "multicast_standby"
GROUP = "239.1.1.1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "cluster_mcast") as factory:
        path = factory.prepare(TOPO, controller={"replicas": 3, "store": "etcd", "lease_ttl": 2})
        lab = Lab.up(path, rundir=factory.rundir, timeout=120)
        yield lab


def at(lab, member: str, path: str, method: str = "GET", body=None, status: int = 200):
    inst = next(i for i in lab.instances if i["member"] == member)
    return kit.request(method, inst["rest_url"] + path, body=body, headers=lab.rest_headers(),
                       timeout=30).expect(status)


def leader(lab, asked: str | None = None) -> str | None:
    asked = asked or lab.running_members()[0]
    return (at(lab, asked, "/v1/cluster")["leaders"].get(APP) or {}).get("member")


def standby(lab, member: str, local: bool = True) -> dict:
    entries = at(lab, member, "/v1/multicast/standby" + ("?local=1" if local else ""))
    return {e["destination"]: (e["active"] and e["active"]["devices"], e["standby"] and e["standby"]["devices"])
            for e in entries if e["group"] == GROUP}


def protected(lab, member: str, dests) -> dict | None:
    s = standby(lab, member, local=False)
    return s if all(d in s and s[d][1] for d in dests) else None


def flows_differ(lab, member: str) -> dict:
    """Switches whose flow table is not what ``member`` computed for them (each instance computes
    every switch's state; only the master sends it)."""
    bad = {}
    for sw in lab.topology.switches:
        bridge, rundir = lab.switch_target(sw)
        d = flowdump.diff(flowdump.dump(bridge, rundir), rundir, at(lab, member, f"/v1/switches/{sw}/desired"))
        if not d.identical:
            bad[sw] = (len(d.missing), len(d.unexpected), len(d.different))
    return bad


def diagnosis(lab) -> dict:
    out = {}
    for m in lab.running_members():
        mc = at(lab, m, "/v1/multicast?local=1")
        cl = at(lab, m, "/v1/cluster")
        out[m] = {"leading": mc["leading"], "followed": mc["followed"], "channels": mc["channels"],
                  "memberships": mc["memberships"], "counters": mc["counters"], "leaders": cl["leaders"],
                  "events": cl["events"][-8:], "relay": cl["relay"], "standby": standby(lab, m)}
    for i in lab.instances:  # what each instance logged about the app and its roles
        log = lab.dir / ("controller.log" if i["member"] == "c0" else f"controller-{i['member']}.log")
        if log.exists():
            lines = [ln for ln in log.read_text(errors="replace").splitlines()
                     if "multicast" in ln or "cluster:" in ln]
            out[f"{i['member']} log"] = lines[-25:]
    return out


def test_one_leader_relays_and_every_instance_computes_the_same_paths(lab):
    head = wait_for(lambda: leader(lab), 15)
    assert head in lab.running_members()
    assert all(leader(lab, m) == head for m in lab.running_members())
    rx = {h: receiver(lab, h, GROUP, 16, version=3) for h in ("h2", "h3", "h4")}
    tx = sender(lab, GROUP, 10)
    try:
        # asked of a follower: answered by the leader (forwarded)
        follower = next(m for m in lab.running_members() if m != head)
        s = wait_for(lambda: protected(lab, follower, ("s3", "s5", "s6")), 20)
        assert s, standby(lab, head)
        # every follower took the leader's snapshot: the same active and standby paths, locally
        assert wait_for(lambda: all(standby(lab, m) == standby(lab, head) for m in lab.running_members()), 5), \
            {m: standby(lab, m) for m in lab.running_members()}
        mcast = at(lab, follower, "/v1/multicast?local=1")
        assert not mcast["leading"] and mcast["followed"]["snapshots"] > 0, mcast
        relay = at(lab, follower, "/v1/cluster")["relay"]
        print(f"\nleader {head}; follower {follower}: {mcast['followed']}; relay {relay}")
        assert wait_for(lambda: all(not flows_differ(lab, m) for m in lab.running_members()), 10), \
            {m: flows_differ(lab, m) for m in lab.running_members()}
    finally:
        out = {h: result(p) for h, p in rx.items()}
        tx.communicate(timeout=30)
    for h, r in out.items():
        assert r["received"] > 5000 and r["duplicates"] == 0, (h, r)


def test_kill_9_of_the_leader_streams_keep_flowing_and_a_new_join_works(lab):
    head = wait_for(lambda: leader(lab), 15)
    vi = int(head[1:])
    rx = {h: receiver(lab, h, GROUP, 14, version=3) for h in ("h2", "h4")}
    tx = sender(lab, GROUP, 10)
    late = None
    try:
        assert wait_for(lambda: protected(lab, head, ("s3", "s6")), 20), standby(lab, head)
        time.sleep(1.0)
        t0 = time.monotonic()
        lab.kill_instance(vi)
        survivor = next(m for m in lab.running_members() if m != head)
        new = wait_for(lambda: (leader(lab, survivor) or head) != head and leader(lab, survivor), 10)
        took = time.monotonic() - t0
        assert new and new != head
        # a new receiver joins now: its IGMP report reaches the new leader through s5's master
        late = receiver(lab, "h3", GROUP, 6, version=3)
        assert wait_for(lambda: any(m["host"] == "h3" for m in at(lab, survivor, "/v1/multicast/members")), 10), \
            at(lab, survivor, "/v1/multicast/members")
        assert wait_for(lambda: protected(lab, survivor, ("s3", "s5", "s6")), 20), diagnosis(lab)
        print(f"\nleader {head} killed: {new} leads after {took:.2f} s; h3 joined and s5 has a standby path")
    finally:
        out = {h: result(p) for h, p in rx.items()}
        late_out = result(late) if late is not None else None
        tx.communicate(timeout=30)
        lab.start_instance(vi)
        lab.wait_cluster(90)
    print(json.dumps({"h2": out["h2"], "h4": out["h4"], "h3 (joined after the kill)": late_out}))
    for h, r in out.items():  # established delivery: nothing lost while the leader died
        assert r["lost"] == 0 and r["duplicates"] == 0, (h, r)
    assert late_out is not None and late_out["received"] > 1000 and late_out["duplicates"] == 0, late_out
    # the restarted instance follows (it does not take the lead back before the hold-down)
    assert wait_for(lambda: standby(lab, head) == standby(lab, new), 10)


def test_hostile_relay_bodies_are_refused_and_change_nothing(lab):
    member = lab.running_members()[0]
    before = at(lab, member, "/v1/multicast?local=1")["memberships"]
    url = next(i for i in lab.instances if i["member"] == member)["rest_url"] + "/v1/cluster/relay"
    h = lab.rest_headers()
    # not JSON, a field that is not there, too many entries, no token
    assert kit.request("POST", url, raw=b"{nope", headers=h).status == 400
    r = kit.request("POST", url, body={"sender": "x", "packet_ins": [], "extra": 1}, headers=h)
    assert r.status == 422 and "extra" in r.error
    pin = {"app": APP, "switch": "s3", "in_port": 1, "table": 0, "cookie": 0, "data": "AAAA"}
    r = kit.request("POST", url, body={"sender": "x", "packet_ins": [pin] * 600}, headers=h)
    assert r.status == 422 and "packet_ins" in r.error
    if h:
        assert kit.request("POST", url, body={"sender": "x"}).status == 401
    # well-formed but wrong: each entry refused by name, the rest of the batch still handled
    bad = {"sender": "x", "packet_ins": [dict(pin, data="not base64!"), dict(pin, app="nope"),
                                         dict(pin, switch="s99")],
           "packet_outs": [{"switch": "s99", "port": 1, "data": "AAAA"}]}
    out = kit.request("POST", url, body=bad, headers=h).expect(200)
    assert len(out["bad"]) == 4 and out["packet_ins"] == 0, out
    assert at(lab, member, "/v1/multicast?local=1")["memberships"] == before
    assert all(s["synced"] for s in at(lab, member, "/v1/switches"))
