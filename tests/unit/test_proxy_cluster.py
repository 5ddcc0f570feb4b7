"""Proxy clusters: intent validation, the resolved view, and haproxy.cfg checked by HAProxy itself."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from pydantic import ValidationError

from ryu_apps.framework.topology import from_dict
from ryu_apps.framework.view import IntentError
from ryu_apps.functions.proxy_cluster import haproxy
from ryu_apps.functions.proxy_cluster.intent import ClusterSpec, ProxyClusterIntent
from ryu_apps.functions.proxy_cluster.model import resolve, server_id, site_of, validate


def _host(i: int, net: int) -> dict:
    return {"mac": f"02:00:00:00:{net:02x}:{i:02x}", "ipv4": f"10.{net}.0.{i}/24", "gateway4": f"10.{net}.0.254",
            "ipv6": f"fd00:{net}::{i}/64", "gateway6": f"fd00:{net}::fe"}


@pytest.fixture(scope="module")
def topo():
    hosts = {"c1": _host(1, 1), "p1": _host(1, 2), "p2": _host(2, 2), "a1": _host(1, 3), "a2": _host(2, 3),
             "col": _host(9, 1)}
    return from_dict({"lab": {"name": "pc", "prefix": "pc"},
                      "switches": {"s1": {"dpid": 1}, "s2": {"dpid": 2}, "s3": {"dpid": 3}},
                      "hosts": hosts,
                      "links": [["c1", "s1"], ["col", "s1"], ["p1", "s2"], ["p2", "s2"], ["a1", "s3"], ["a2", "s3"],
                                ["s1", "s2"], ["s2", "s3"]]})


def _cluster(**over) -> dict:
    c = {"name": "api", "vip4": "10.9.0.100", "vip6": "fd00:9::100", "ports": [80, 8080],
         "proxies": [{"host": "p1"}, {"host": "p2"}],
         "pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 8000},
                                              {"name": "b", "host": "a2", "port": 8000, "state": "drain"}]},
                   {"name": "v2", "servers": [{"name": "a", "host": "a1", "port": 8001}]}],
         "routes": [{"prefix": "/v1/", "pool": "v1"}, {"prefix": "/v1/users/", "pool": "v2"}],
         "affinity": {"mode": "header", "name": "X-API-Key"}}
    c.update(over)
    return c


def _intent(*clusters) -> ProxyClusterIntent:
    return ProxyClusterIntent.model_validate({"clusters": list(clusters)})


def test_a_good_cluster_validates_and_resolves(topo):
    intent = _intent(_cluster())
    validate(topo, intent)
    r = resolve(topo, intent.clusters[0])
    assert [p["ipv4"] for p in r["proxies"]] == ["10.2.0.1", "10.2.0.2"]
    assert r["default_pool"] == "v1" and site_of(topo, "p1") == "main"
    ids = [s["id"] for s in r["pools"][0]["servers"]]
    assert ids == [server_id("v1", "a"), server_id("v1", "b")] and len(set(ids)) == 2


@pytest.mark.parametrize("over, field", [
    ({"vip4": "10.9.0.1.2"}, "vip4"),
    ({"vip4": "fd00::1"}, "vip4"),
    ({"vip4": "224.0.0.5"}, "vip4"),
    ({"vip4": None, "vip6": None}, "virtual IP"),
    ({"ports": [80, 80]}, "ports"),
    ({"ports": [0]}, "ports"),
    ({"proxies": [{"host": "p1"}, {"host": "p1"}]}, "proxies[1].host"),
    ({"proxies": [{"host": "p1", "state": "drain"}]}, "every proxy is draining"),
    ({"routes": [{"prefix": "/x", "pool": "nope"}]}, "routes[0].pool"),
    ({"routes": [{"prefix": "no-slash", "pool": "v1"}]}, "prefix"),
    ({"routes": [{"prefix": "/a b", "pool": "v1"}]}, "prefix"),
    ({"default_pool": "nope"}, "default_pool"),
    ({"affinity": {"mode": "cookie"}}, "needs the cookie name"),
    ({"affinity": {"mode": "header", "name": "bad header"}}, "name"),
    ({"health": {"interval_ms": 1}}, "interval_ms"),
    ({"colour": "red"}, "colour"),
])
def test_bad_shapes_name_the_field(over, field):
    with pytest.raises(ValidationError) as exc:
        ClusterSpec.model_validate(_cluster(**over))
    assert field in str(exc.value)


@pytest.mark.parametrize("over, field, words", [
    ({"vip4": "10.2.0.1"}, "clusters[0].vip4", "p1's address"),
    ({"proxies": [{"host": "nobody"}]}, "clusters[0].proxies[0].host", "unknown host"),
    ({"proxies": [{"host": "a1"}]}, "clusters[0].pools[0].servers[0].host", "already a proxy"),
    ({"capture": {"host": "p1"}}, "clusters[0].capture.host", "already a proxy"),
])
def test_topology_checks_name_the_field(topo, over, field, words):
    with pytest.raises(IntentError) as exc:
        validate(topo, _intent(_cluster(**over)))
    assert exc.value.field == field and words in str(exc.value)


def test_two_clusters_cannot_share_a_vip_or_a_proxy(topo):
    second = _cluster(name="b", vip6=None, proxies=[{"host": "col"}])
    with pytest.raises(IntentError, match="already the VIP of cluster api"):
        validate(topo, _intent(_cluster(), second))
    second = _cluster(name="b", vip4="10.9.0.101", vip6=None)
    with pytest.raises(IntentError, match="already a proxy of cluster api"):
        validate(topo, _intent(_cluster(), second))


def test_rendered_config_has_peers_routes_and_stable_server_ids(topo):
    r = resolve(topo, ClusterSpec.model_validate(_cluster()))
    cfg = haproxy.render(r, "p2", "/run/x")
    assert "localpeer p2" in cfg and "peer p1 10.2.0.1:10000" in cfg and "peer p2 10.2.0.2:10000" in cfg
    assert "bind 10.9.0.100:8080" in cfg and "bind [fd00:9::100]:80 v6only" in cfg
    # the longer prefix is tested first whatever the declared order
    assert cfg.index("path_beg /v1/users/") < cfg.index("path_beg /v1/ }")
    assert f"server a 10.3.0.1:8000 id {server_id('v1', 'a')} weight 100\n" in cfg
    assert "server b 10.3.0.2:8000" in cfg and "weight 0" in cfg  # drain
    assert "stick on req.hdr(X-API-Key)" in cfg and "peers api" in cfg
    with pytest.raises(ValueError, match="not a proxy"):
        haproxy.render(r, "a1", "/run/x")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy (Debian) not installed")
@pytest.mark.parametrize("affinity", [{"mode": "none"}, {"mode": "cookie", "name": "SID"},
                                      {"mode": "header", "name": "X-API-Key"}, {"mode": "source"}])
def test_haproxy_accepts_the_rendered_config(topo, tmp_path, affinity):
    r = resolve(topo, ClusterSpec.model_validate(_cluster(affinity=affinity)))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy.render(r, "p1", str(tmp_path)))
    out = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr


def test_server_state_and_weight_change_at_runtime_everything_else_reloads(topo):
    spec = _cluster()
    old = resolve(topo, ClusterSpec.model_validate(spec))
    changed = _cluster()
    changed["pools"][0]["servers"][0]["state"] = "maint"
    changed["pools"][0]["servers"][1]["state"] = "ready"
    changed["pools"][1]["servers"][0]["weight"] = 7
    new = resolve(topo, ClusterSpec.model_validate(changed))
    assert haproxy.runtime_commands(old, new) == [
        "set server pool_v1/a state maint", "set server pool_v1/b weight 100", "set server pool_v2/a weight 7"]
    assert haproxy.runtime_commands(new, old) == [
        "set server pool_v1/a state ready", "set server pool_v1/a weight 100", "set server pool_v1/b weight 0",
        "set server pool_v2/a weight 100"]
    assert haproxy.runtime_commands(old, old) == []
    moved = _cluster(routes=[{"prefix": "/v2/", "pool": "v2"}])
    assert haproxy.runtime_commands(old, resolve(topo, ClusterSpec.model_validate(moved))) is None


# --- the flows, walked through the switch simulator (checked against real OVS elsewhere) ------------

from ryu_apps.fabric import FabricIntent, compute_fabric  # noqa: E402
from ryu_apps.framework import pipeline  # noqa: E402
from ryu_apps.framework.view import FabricView  # noqa: E402
from ryu_apps.functions.proxy_cluster import flows as F  # noqa: E402
from ryu_apps.openflow import simulator  # noqa: E402
from ryu_apps.framework.state import SwitchState  # noqa: E402

RMAC = FabricIntent().router_mac


def _fabric(topo, spec, dead=frozenset()):
    c = ClusterSpec.model_validate(spec)
    states = {n: SwitchState() for n in topo.switches}
    for n, st in compute_fabric(FabricView(topo), FabricIntent()).items():
        states[n].merge(st, "fabric")
    for n, st in F.compute_cluster(topo, c, RMAC, frozenset(dead)).items():
        for f in st.flows.values():
            pipeline.check_flow(F.APP, f)
        pipeline.check_ids(F.APP, st)
        states[n].merge(st, F.APP)
        states[n].check_references()
    return simulator.Fabric(topo, states)


def _syn(topo, host, dst="10.9.0.100", dport=80, **extra):
    h = topo.hosts[host]
    six = ":" in dst
    pkt = {"eth_src": h.mac, "eth_dst": RMAC, "vlan_vid": 0, "nw_ttl": 64, "ip_proto": 6, "tcp_src": 40000,
           "tcp_dst": dport}
    if six:
        pkt.update(eth_type=0x86DD, ipv6_src=str(h.ipv6.ip), ipv6_dst=dst)
    else:
        pkt.update(eth_type=0x0800, ipv4_src=str(h.ipv4.ip), ipv4_dst=dst)
    return {**pkt, **extra}


def _ends(fab, host, pkt):
    return sorted(where for where, _, _ in fab.send(host, pkt))


def test_new_connections_fork_over_active_proxies_and_get_their_mark(topo):
    fab = _fabric(topo, _cluster())
    ends = fab.send("c1", _syn(topo, "c1"))
    assert sorted(w for w, _, _ in ends) == ["host:p1", "host:p2"]
    for where, pkt, path in ends:
        proxy = where.split(":")[1]
        assert path == ["s1", "s2"] and pkt["eth_dst"] == topo.hosts[proxy].mac
    # IPv6 VIP and the second service port too; other ports and spoofed sources go nowhere
    marks = sorted(o.packet["ct_mark"] for o in fab.switches["s1"].run(_syn(topo, "c1"), topo.hosts["c1"].port))
    assert marks == sorted([F.proxy_mark("api", "p1"), F.proxy_mark("api", "p2")])
    assert _ends(fab, "c1", _syn(topo, "c1", dst="fd00:9::100", dport=8080)) == ["host:p1", "host:p2"]
    assert _ends(fab, "c1", _syn(topo, "c1", dport=22)) == ["drop"]
    assert _ends(fab, "c1", _syn(topo, "c1", ipv4_src="10.1.0.77")) == ["drop"]


def test_a_pinned_connection_stays_on_its_proxy_whatever_the_membership(topo):
    mark2 = F.proxy_mark("api", "p2")
    fab = _fabric(topo, _cluster())
    assert _ends(fab, "c1", _syn(topo, "c1", ct_mark=mark2)) == ["host:p2"]
    # p2 drains: new connections avoid it, pinned ones still reach it
    fab = _fabric(topo, _cluster(proxies=[{"host": "p1"}, {"host": "p2", "state": "drain"}]))
    assert _ends(fab, "c1", _syn(topo, "c1")) == ["host:p1"]
    assert _ends(fab, "c1", _syn(topo, "c1", ct_mark=mark2)) == ["host:p2"]
    # p2 dead (out of the hash by health): its connections are picked again
    fab = _fabric(topo, _cluster(), dead={"p2"})
    assert _ends(fab, "c1", _syn(topo, "c1", ct_mark=mark2)) == ["host:p1"]
    # a third proxy joins: the pinned connection does not move, new ones may reach it
    fab = _fabric(topo, _cluster(proxies=[{"host": "p1"}, {"host": "p2"}, {"host": "col"}]))
    assert _ends(fab, "c1", _syn(topo, "c1", ct_mark=mark2)) == ["host:p2"]
    assert _ends(fab, "c1", _syn(topo, "c1")) == ["host:col", "host:p1", "host:p2"]


def test_proxies_reply_from_the_vip_and_nothing_else_may(topo):
    fab = _fabric(topo, _cluster())
    c1 = topo.hosts["c1"]
    reply = {"eth_src": topo.hosts["p1"].mac, "eth_dst": RMAC, "vlan_vid": 0, "eth_type": 0x0800, "nw_ttl": 64,
             "ipv4_src": "10.9.0.100", "ipv4_dst": str(c1.ipv4.ip), "ip_proto": 6, "tcp_src": 80, "tcp_dst": 40000}
    ends = fab.send("p1", reply)
    assert [w for w, _, _ in ends] == ["host:c1"] and ends[0][1]["eth_dst"] == c1.mac
    assert _ends(fab, "p1", {**reply, "tcp_src": 22}) == ["drop"]            # not a service port
    spoof = {**reply, "eth_src": topo.hosts["a1"].mac}
    assert _ends(fab, "a1", spoof) == ["drop"]                               # a server is not the VIP


def test_marks_zones_and_group_ids_are_stable_and_in_range(topo):
    assert F.proxy_mark("api", "p1") == F.proxy_mark("api", "p1") != F.proxy_mark("api", "p2")
    assert F.proxy_mark("api", "p1") >> 24 == 0x07 and F.group_id("api") >> 24 == 0x07
    assert sorted(F.zone_of(topo, s) for s in topo.switches) == [0x5000, 0x5001, 0x5002]
