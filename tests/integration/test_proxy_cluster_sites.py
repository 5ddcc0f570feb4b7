"""A proxy cluster over two datacenters, on a 3-instance controller cluster (etcd), real HAProxy.

``topologies/proxy_cluster_sites.yaml``: sites dc1 (p1, p2, client c1) and dc2 (p3, p4,
client c2), and a core site (servers a1, a2, client c3), each a node with its own Open
vSwitch, joined by VXLAN/Geneve tunnels with BFD.  Clients prefer their own site's
proxies; c3's site has none.  The proxies of both sites are HAProxy peers, so a session
keeps its server whichever site serves it.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import http_load, kit
from ovs_scripts.lab import Lab
from tests.integration import conftest
from tests.integration.test_proxy_cluster import Load, failures_only_on

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOPO = REPO / "topologies" / "proxy_cluster_sites.yaml"
PY = sys.executable
VIP4 = "10.69.0.100"
ALL = {"p1", "p2", "p3", "p4"}


def at(lab, member: str, path: str) -> dict:
    inst = next(i for i in lab.instances if i["member"] == member)
    return kit.request("GET", inst["rest_url"] + path, headers=lab.rest_headers(), timeout=10).expect(200)


def proxies(lab) -> dict[str, dict]:
    return {p["host"]: p for p in kit.rest(lab, "GET", "/v1/proxy-clusters/api", timeout=15).expect(200)["proxies"]}


def in_hash(lab) -> set[str]:
    return {h for h, p in proxies(lab).items() if p["in_hash"]}


def wait_all_in(lab, timeout: float = 30) -> None:
    assert kit.wait_for(lambda: in_hash(lab) == ALL, timeout, ignore=(OSError, kit.RestError)), proxies(lab)


def load(lab, host: str, seconds: float, **opts) -> Load:
    return Load(lab, host, seconds, vip=VIP4, **opts)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy (Debian) is not installed")
    with conftest.module_factory(tmp_path_factory, "proxy_sites") as factory:
        lab = Lab.up(factory.prepare(TOPO), rundir=factory.rundir, timeout=120)
        http_load.start_servers(lab, ("a1", "a2"))
        wait_all_in(lab, 60)
        yield lab


def test_clients_use_their_own_sites_proxies_and_a_session_has_one_server_everywhere(lab):
    seen = {c: load(lab, c, 2, conns=0, new_rate=40, sessions=20, key_prefix="same").result() for c in ("c1", "c2", "c3")}
    for c, r in seen.items():
        assert r["failed"] == 0, (c, r["failures"])
    assert set(seen["c1"]["by_proxy"]) == {"p1", "p2"}, seen["c1"]["by_proxy"]
    assert set(seen["c2"]["by_proxy"]) == {"p3", "p4"}, seen["c2"]["by_proxy"]
    assert set(seen["c3"]["by_proxy"]) == ALL, seen["c3"]["by_proxy"]   # no proxy at its site: every site's
    # the same session keys reach the same servers from every site (one ring, shared tables)
    sessions = [r["sessions"] for r in seen.values()]
    common = set.intersection(*(set(s) for s in sessions))
    assert common and all(len({tuple(s[k]) for s in sessions}) == 1 for k in common), sessions


def test_a_site_whose_underlay_is_cut_is_left_within_a_second_and_sessions_keep_servers(lab):
    ld = load(lab, "c3", 7, conns=10, gap_ms=5, new_rate=40, sessions=30)
    time.sleep(2)
    t0 = time.monotonic()
    lab.link("dc1", "underlay", "down")
    try:
        r = ld.result()
    finally:
        lab.link("dc1", "underlay", "up")
    since = t0 - ld.t0
    late = [f for f in r["failures"] if f["t"] > since + 1.0 and f["proxy"] not in ("p1", "p2")]
    print(f"\ndc1 cut at {since:.2f} s: {r['failed']} of {r['requests']} requests failed "
          f"{[(f['t'], f['conn'], f['kind'], f['proxy']) for f in r['failures']]}; after: {r['by_proxy']}")
    assert late == [], late                           # dc2 serves every new connection within 1 s
    assert failures_only_on(r, "p1", since, 1.0) == [f for f in r["failures"] if f["proxy"] == "p2"]
    assert r["moved_conns"] == {} and r["session_server_changes"] == {}, r
    wait_all_in(lab, 30)                              # BFD up again: dc1 back in c3's hash


@pytest.mark.parametrize("role", ["master of x1", "leader of proxy_cluster"])
def test_killing_a_controller_instance_fails_no_request(lab, role):
    """kill -9 the instance that masters c3's edge switch (x1, also the servers'), then the one
    that leads the proxy-cluster app (judges health from every heartbeat): no request fails."""
    cluster = at(lab, lab.running_members()[0], "/v1/cluster")
    leader = cluster["leaders"]["proxy_cluster"]["member"]
    victim = cluster["masters"]["x1"]["member"] if role.startswith("master") else leader
    vi = int(victim[1:])
    ld = load(lab, "c3", 7, conns=10, gap_ms=5, new_rate=40, sessions=30)
    time.sleep(2)
    lab.kill_instance(vi)
    try:
        r = ld.result()
        survivor = next(m for m in lab.running_members() if m != victim)
        after = at(lab, survivor, "/v1/cluster")
    finally:
        lab.start_instance(vi)
        lab.wait_cluster(90)
    print(f"\nkilled {victim} ({role}; leader was {leader}); x1 now at {after['masters']['x1']['member']}, "
          f"leader {after['leaders'].get('proxy_cluster', {}).get('member')}: "
          f"{r['failed']} of {r['requests']} requests failed, by proxy {r['by_proxy']}")
    assert victim not in (after["masters"]["x1"]["member"], after["leaders"]["proxy_cluster"]["member"])
    assert r["failed"] == 0, r["failures"]
    assert r["moved_conns"] == {} and r["session_server_changes"] == {}, r
    wait_all_in(lab, 30)
    # every instance computes from the same runtime state: each puts all four proxies in the hash
    for m in lab.running_members():
        assert {p["host"] for p in at(lab, m, "/v1/proxy-clusters/api?local=1")["proxies"] if p["in_hash"]} == ALL
