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
