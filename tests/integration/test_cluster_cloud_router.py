"""The cloud router on a 3-instance controller cluster (issue 11): what one instance learned
(a new client, a roam) is in etcd, so the instance that takes over a dead master's access
points knows it, and new learning works on the survivors.

topologies/cloud_router.yaml with ``controller: {replicas: 3, store: etcd}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import kit
from ovs_scripts.lab import Lab
from ovs_scripts.scenarios.cloud_router import TARGETS, WEB, CloudLab, RestError
from tests.integration import conftest
from tests.integration.labtools import wait_for

pytestmark = pytest.mark.integration
TOPO = Path(__file__).resolve().parents[2] / "topologies" / "cloud_router.yaml"
APP = "cloud_router"


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "cluster_cloud") as factory:
        path = factory.prepare(TOPO, controller={"replicas": 3, "store": "etcd", "lease_ttl": 2})
        c = CloudLab(Lab.up(path, rundir=factory.rundir, timeout=120))
        c.start_services()
        assert c.wait_ready(30), c.rest(f"/v1/{APP}")
        yield c


def at(lab, member: str, path: str) -> dict:
    inst = next(i for i in lab.instances if i["member"] == member)
    return kit.request("GET", inst["rest_url"] + path, headers=lab.rest_headers(), timeout=10).expect(200)


def master_of(lab, switch: str) -> str:
    return at(lab, lab.running_members()[0], "/v1/cluster")["masters"][switch]["member"]



def client_on(lab, member: str, mac: str) -> dict | None:
    try:
        return at(lab, member, f"/v1/{APP}/clients/{mac}")
    except RestError:
        return None


def test_a_client_learned_by_one_instance_is_known_to_all(cl):
    lab = cl.lab
    mac, ip = "02:00:00:60:00:98", "10.60.0.98"
    frame = ("0efab0000001" + mac.replace(":", "") + "0800" + "4500001c00010000401100000a3c00620a3d0001"
             + "1770177100080000")
    lab.exec("c4", [sys.executable, "-m", "ovs_scripts.traffic", "send-frames", frame])  # from ap3
    learner = master_of(lab, "ap3")
    for m in lab.running_members():
        assert wait_for(lambda m=m: (client_on(lab, m, mac) or {}).get("location") is not None, 5), m
        c = client_on(lab, m, mac)
        assert (c["source"], c["policy"], c["ipv4"], c["location"]["switch"]) == ("learned", "quarantine", ip, "ap3")
    keys = {m: client_on(lab, m, mac)["key"] for m in lab.running_members()}
    print(f"\nlearned by {learner} (master of ap3), seen by every instance with key {keys}")
    assert len(set(keys.values())) == 1
    cl.rest(f"/v1/{APP}/clients/{mac}", "DELETE")
    for m in lab.running_members():
        assert wait_for(lambda m=m: client_on(lab, m, mac) is None, 5), m


def test_roams_after_the_access_points_master_is_killed(cl):
    lab = cl.lab
    mac = cl.mac("c1")
    before = cl.client(mac)
    sw0 = before["location"]["switch"]
    victim = master_of(lab, sw0)
    vi = int(victim[1:])
    survivor = next(m for m in lab.running_members() if m != victim)
    lab.kill_instance(vi)
    try:
        assert wait_for(lambda: at(lab, survivor, "/v1/cluster")["masters"].get(sw0, {}).get("member")
                        not in (None, victim), 10)
        # the new master of c1's access point knows c1 (key, location) from etcd
        c = at(lab, survivor, f"/v1/{APP}/clients/{mac}")
        assert (c["key"], c["location"]["switch"]) == (before["key"], sw0), c
        # a roam now is learned by whichever survivor masters the new access point, and every
        # survivor follows it
        target = ("ap2", 10) if sw0 != "ap2" else ("ap3", 10)
        t0 = time.monotonic()
        cl.move("c1", *target)
        for m in lab.running_members():
            assert wait_for(lambda m=m: (at(lab, m, f"/v1/{APP}/clients/{mac}")["location"] or {}).get("switch")
                            == target[0], 10), (m, at(lab, m, f"/v1/{APP}/clients/{mac}"))
        took = time.monotonic() - t0
        assert wait_for(lambda: all(s["synced"] for s in at(lab, survivor, "/v1/switches")), 15)
        assert wait_for(lambda: cl.probe("c1", [f"tcp:{WEB}:5001"])[f"tcp:{WEB}:5001"] == "open", 10)
        got = cl.reachable(cl.probe("c1", [t for t in TARGETS if not t.startswith("udp")]))
        print(f"\n{victim} (master of {sw0}) killed; c1 roamed to {target[0]}:{target[1]}, learned by "
              f"{master_of(lab, target[0])}, every survivor knew it {took:.2f} s after the move; reaches {sorted(got)}")
        assert f"tcp:{WEB}:5001" in got
        assert at(lab, survivor, f"/v1/{APP}/clients/{mac}")["key"] == before["key"]
    finally:
        lab.start_instance(vi)
        lab.wait_cluster(90)
    # the restarted instance read c1's new location from etcd
    assert at(lab, victim, f"/v1/{APP}/clients/{mac}")["location"]["switch"] == target[0]
    cl.move("c1", sw0, before["location"]["port"])
    assert cl.wait_location("c1", sw0, before["location"]["port"]) is not None
