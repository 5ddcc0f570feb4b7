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
from ryu_apps.functions.proxy_cluster.model import SLOTS, resolve, server_id, site_of, slot_table, validate


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
    # a server of two clusters would be an outsider to the other cluster's proxies (isolation)
    second = _cluster(name="b", vip4="10.9.0.101", vip6=None, proxies=[{"host": "col"}])
    with pytest.raises(IntentError, match=r"pools\[0\].servers\[0\].host: host a1 is already a server of cluster api"):
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


def _fabric(topo, spec, dead=frozenset(), retiring=frozenset(), reach=None, down=frozenset()):
    c = ClusterSpec.model_validate(spec)
    states = {n: SwitchState() for n in topo.switches}
    for n, st in compute_fabric(FabricView(topo, down_ports=frozenset(down)), FabricIntent()).items():
        states[n].merge(st, "fabric")
    for n, st in F.compute_cluster(topo, c, RMAC, frozenset(dead), frozenset(retiring), reach).items():
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
    """Where ``pkt`` from ``host`` can end up (each place once: the select group's 128 slots
    fork the walk, several slots per proxy)."""
    return sorted({where for where, _, _ in fab.send(host, pkt)})


def test_new_connections_fork_over_active_proxies_and_get_their_mark(topo):
    fab = _fabric(topo, _cluster())
    ends = fab.send("c1", _syn(topo, "c1"))
    assert sorted({w for w, _, _ in ends}) == ["host:p1", "host:p2"] and len(ends) == SLOTS   # a path per slot
    for where, pkt, path in ends:
        proxy = where.split(":")[1]
        assert path == ["s1", "s2"] and pkt["eth_dst"] == topo.hosts[proxy].mac
    # IPv6 VIP and the second service port too; other ports and spoofed sources go nowhere
    marks = [o.packet["ct_mark"] for o in fab.switches["s1"].run(_syn(topo, "c1"), topo.hosts["c1"].port)]
    assert sorted(marks.count(F.proxy_mark("api", p)) for p in ("p1", "p2")) == [SLOTS // 2] * 2   # Maglev: even
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


# --- isolation: who may reach whose own addresses ----------------------------------------------------

import ipaddress  # noqa: E402

from ryu_apps.framework import cookies  # noqa: E402
from ryu_apps.functions.fabric.flows import next_hop_group_ids  # noqa: E402
from ryu_apps.openflow.ofdata import GroupAction, Output  # noqa: E402

CAPTURED = {"capture": {"host": "col"}}


def _addrs(topo, host) -> list[str]:
    h = topo.hosts[host]
    return [str(h.ipv4.ip), str(h.ipv6.ip)]


def _isolated(fab, topo, host, pkt) -> None:
    """``pkt`` from ``host`` dies at its own edge, by an isolation drop and nothing else."""
    ends = fab.trace(host, pkt)
    assert [(w, path) for w, _, path in ends] == [("drop", [topo.hosts[host].switch])], ends
    out = ends[0][1]
    assert out.reason == "actions=drop" and cookies.decode(out.flows[-1].cookie).kind == F.K_ISOLATE


def test_outsiders_reach_no_server_proxy_or_collector_address_only_the_vip(topo):
    fab = _fabric(topo, _cluster(**CAPTURED))
    for target in ("a1", "a2", "p1", "p2", "col"):
        for addr in _addrs(topo, target):
            for dport in (22, 80, 8000, 10000):
                _isolated(fab, topo, "c1", _syn(topo, "c1", dst=addr, dport=dport))
    # the collector only receives: it is barred from servers and proxies like an outsider
    for target in ("a1", "p1"):
        for addr in _addrs(topo, target):
            _isolated(fab, topo, "col", _syn(topo, "col", dst=addr, dport=8000))
    # the VIP still serves the outsider, both families
    assert _ends(fab, "c1", _syn(topo, "c1", dport=80)) == ["host:col", "host:p1", "host:p2"]
    assert "host:p2" in _ends(fab, "c1", _syn(topo, "c1", dst="fd00:9::100", dport=8080))
    # without a collector, col is an outsider: barred from the cluster, served by the VIP
    fab = _fabric(topo, _cluster())
    _isolated(fab, topo, "col", _syn(topo, "col", dst=_addrs(topo, "a1")[1], dport=8000))
    assert _ends(fab, "col", _syn(topo, "col", dport=80)) == ["host:p1", "host:p2"]


@pytest.mark.parametrize("six", [False, True])
def test_proxies_reach_clients_only_by_replying_from_the_vip_service_ports(topo, six):
    fab = _fabric(topo, _cluster(**CAPTURED))
    fam = 1 if six else 0
    vip, src = ("fd00:9::100", "ipv6_src") if six else ("10.9.0.100", "ipv4_src")
    c1 = _addrs(topo, "c1")[fam]
    for proxy in ("p1", "p2"):
        own = _syn(topo, proxy, dst=c1, dport=40000, tcp_src=80)                # its own address, a service port
        _isolated(fab, topo, proxy, own)
        _isolated(fab, topo, proxy, {**own, src: vip, "tcp_src": 22})           # the VIP, not a service port
        _isolated(fab, topo, proxy, _syn(topo, proxy, dst=_addrs(topo, "col")[fam], dport=9))
        ends = fab.send(proxy, {**own, src: vip, "tcp_src": 8080})              # the VIP's reply
        assert [w for w, _, _ in ends if w != "host:col"] == ["host:c1"]
    # proxies reach the servers and each other (HAProxy peers on their own addresses)
    assert _ends(fab, "p1", _syn(topo, "p1", dst=_addrs(topo, "a1")[fam], dport=8000)) == ["host:a1"]
    assert _ends(fab, "p1", _syn(topo, "p1", dst=_addrs(topo, "p2")[fam], dport=10000)) == ["host:p2"]
    assert _ends(fab, "p2", _syn(topo, "p2", dst=_addrs(topo, "p1")[fam], dport=10000)) == ["host:p1"]


def _ns(topo, host, target, dst=None) -> dict:
    """A neighbour solicitation for ``target``, to its solicited-node group unless ``dst`` is given."""
    h = topo.hosts[host]
    snm = ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + ipaddress.IPv6Address(target).packed[-3:])
    return {"eth_src": h.mac, "eth_dst": RMAC if dst else "33:33:ff:00:00:01", "vlan_vid": 0, "eth_type": 0x86DD,
            "nw_ttl": 255, "ip_proto": 58, "icmpv6_type": 135, "ipv6_src": str(h.ipv6.ip),
            "ipv6_dst": dst or str(snm), "ipv6_nd_target": target, "ipv6_nd_sll": h.mac, "nd_options_type": 1}


def test_servers_reach_proxies_and_every_host_still_resolves_its_neighbours(topo):
    fab = _fabric(topo, _cluster(**CAPTURED))
    for fam in (0, 1):
        assert _ends(fab, "a1", _syn(topo, "a1", dst=_addrs(topo, "p1")[fam], dport=40000)) == ["host:p1"]
        _isolated(fab, topo, "a2", _syn(topo, "a2", dst=_addrs(topo, "col")[fam], dport=9))
    for name in ("c1", "p1", "a1", "col"):
        h = topo.hosts[name]
        arp = {"eth_src": h.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "vlan_vid": 0, "eth_type": 0x0806, "arp_op": 1,
               "arp_spa": str(h.ipv4.ip), "arp_sha": h.mac, "arp_tpa": str(h.gateway4),
               "arp_tha": "00:00:00:00:00:00"}
        ((where, rep, _),) = fab.send(name, arp)
        assert where == f"host:{name}" and (rep["arp_op"], rep["arp_sha"]) == (2, RMAC)
        gw = str(h.gateway6)
        # resolution (solicited-node multicast) and reachability probes (unicast to the gateway)
        for probe in (_ns(topo, name, gw), _ns(topo, name, gw, dst=gw)):
            ((where, na, _),) = fab.send(name, probe)
            assert where == f"host:{name}" and (na["icmpv6_type"], na["ipv6_nd_tll"]) == (136, RMAC)
    # a barred host's own address is resolved too (the switch answers; the traffic after it dies)
    col = topo.hosts["col"]
    ((where, na, _),) = fab.send("c1", _ns(topo, "c1", str(col.ipv6.ip)))
    assert where == "host:c1" and na["ipv6_nd_tll"] == col.mac
    # the claim behind it: isolation matches host addresses only, never multicast or a gateway
    hosts = {a for n in topo.hosts for a in _addrs(topo, n)}
    states = F.compute_cluster(topo, ClusterSpec.model_validate(_cluster(**CAPTURED)), RMAC)
    dsts = {f.match.to_dict().get("ipv4_dst") or f.match.to_dict().get("ipv6_dst")
            for st in states.values() for f in st.flows.values() if cookies.decode(f.cookie).kind == F.K_ISOLATE}
    assert dsts and dsts <= hosts


# --- capture: one copy of every VIP packet, both directions, at the collector --------------------------

def _headers(pkt: dict) -> dict:
    return {k: v for k, v in pkt.items() if k not in simulator.PIPELINE_FIELDS}


def _copies_and_rest(ends, topo):
    """The copies at the collector (each addressed to its MAC), and every other end with its headers."""
    copies = [p for w, p, _ in ends if w == "host:col"]
    rest = sorted((w, tuple(sorted(_headers(p).items()))) for w, p, _ in ends if w != "host:col")
    assert all(p["eth_dst"] == topo.hosts["col"].mac for p in copies)
    return copies, rest


@pytest.mark.parametrize("vip, dport", [("10.9.0.100", 80), ("fd00:9::100", 8080)])
def test_capture_copies_each_request_once_and_leaves_the_original_alone(topo, vip, dport):
    plain, fab = _fabric(topo, _cluster()), _fabric(topo, _cluster(**CAPTURED))
    mark2 = F.proxy_mark("api", "p2")
    syn = _syn(topo, "c1", dst=vip, dport=dport, ct_mark=mark2)     # pinned: one path, to p2
    copies, rest = _copies_and_rest(fab.send("c1", syn), topo)
    _, before = _copies_and_rest(plain.send("c1", syn), topo)
    assert [w for w, _ in rest] == ["host:p2"] and rest == before      # the original, untouched
    (copy,) = copies
    original = dict(rest[0][1])
    assert _headers(copy) == {**original, "eth_dst": topo.hosts["col"].mac}   # IP and TCP headers as sent
    # a new connection: every proxy it may be picked for, with one copy each
    ends = fab.send("c1", _syn(topo, "c1", dst=vip, dport=dport))
    copies, rest = _copies_and_rest(ends, topo)
    assert sorted({w for w, _ in rest}) == ["host:p1", "host:p2"] and len(copies) == len(rest) == SLOTS
    # what is not VIP traffic is not copied
    assert _ends(fab, "c1", _syn(topo, "c1", dst=vip, dport=22)) == ["drop"]


@pytest.mark.parametrize("six", [False, True])
def test_capture_copies_each_reply_once_and_the_client_gets_the_original(topo, six):
    plain, fab = _fabric(topo, _cluster()), _fabric(topo, _cluster(**CAPTURED))
    fam = 1 if six else 0
    vip, src = ("fd00:9::100", "ipv6_src") if six else ("10.9.0.100", "ipv4_src")
    reply = _syn(topo, "p1", dst=_addrs(topo, "c1")[fam], dport=40000, tcp_src=80, **{src: vip})
    copies, rest = _copies_and_rest(fab.send("p1", reply), topo)
    _, before = _copies_and_rest(plain.send("p1", reply), topo)
    assert [w for w, _ in rest] == ["host:c1"] and rest == before
    (copy,) = copies
    assert _headers(copy) == {**reply, "eth_dst": topo.hosts["col"].mac}   # copied as the proxy sent it


def test_without_capture_nothing_is_copied_and_there_is_no_capture_group(topo):
    states = F.compute_cluster(topo, ClusterSpec.model_validate(_cluster()), RMAC)
    gid = F.capture_group_id("api")
    assert all(gid not in st.groups for st in states.values())
    assert not [f for st in states.values() for f in st.flows.values()
                if cookies.decode(f.cookie).kind == F.K_CAPTURE or GroupAction(gid) in f.actions]
    fab = _fabric(topo, _cluster())
    assert _ends(fab, "c1", _syn(topo, "c1", ct_mark=F.proxy_mark("api", "p1"))) == ["host:p1"]
    reply = _syn(topo, "p2", dst=_addrs(topo, "c1")[0], dport=40000, tcp_src=80, ipv4_src="10.9.0.100")
    assert _ends(fab, "p2", reply) == ["host:c1"]


@pytest.fixture(scope="module")
def topo_shared():
    """The collector and a second client on the proxies' switch."""
    hosts = {"c1": _host(1, 1), "c2": _host(2, 1), "p1": _host(1, 2), "p2": _host(2, 2), "a1": _host(1, 3),
             "a2": _host(2, 3), "col": _host(9, 1)}
    return from_dict({"lab": {"name": "pc", "prefix": "pc"},
                      "switches": {"s1": {"dpid": 1}, "s2": {"dpid": 2}, "s3": {"dpid": 3}},
                      "hosts": hosts,
                      "links": [["c1", "s1"], ["c2", "s2"], ["col", "s2"], ["p1", "s2"], ["p2", "s2"], ["a1", "s3"],
                                ["a2", "s3"], ["s1", "s2"], ["s2", "s3"]]})


def test_capture_on_the_proxies_switch_for_local_and_remote_clients(topo_shared):
    topo = topo_shared
    fab = _fabric(topo, _cluster(**CAPTURED))
    for client in ("c1", "c2"):   # c2 is picked and pinned on the proxies' own switch, c1 arrives by carry
        for vip in ("10.9.0.100", "fd00:9::100"):
            copies, rest = _copies_and_rest(fab.send(client, _syn(topo, client, dst=vip,
                                                                   ct_mark=F.proxy_mark("api", "p1"))), topo)
            assert [w for w, _ in rest] == ["host:p1"] and len(copies) == 1
            copies, rest = _copies_and_rest(fab.send(client, _syn(topo, client, dst=vip)), topo)
            assert sorted({w for w, _ in rest}) == ["host:p1", "host:p2"] and len(copies) == len(rest) == SLOTS
        reply = _syn(topo, "p2", dst=_addrs(topo, client)[0], dport=40000, tcp_src=80, ipv4_src="10.9.0.100")
        copies, rest = _copies_and_rest(fab.send("p2", reply), topo)
        assert [w for w, _ in rest] == [f"host:{client}"] and len(copies) == 1
    # the copy leaves by the collector's own port: the group outputs there, no fabric hop
    (group,) = (g for g in fab.states["s2"].groups.values() if g.group_id == F.capture_group_id("api"))
    assert group.type == "indirect" and Output(topo.hosts["col"].port) in group.buckets[0].actions


def test_capture_copies_cross_a_transit_switch(topo):
    # proxies on s3, the collector on s1: copies from s3 pass s2 as VIP packets addressed to the collector
    spec = _cluster(proxies=[{"host": "a1"}, {"host": "a2"}],
                    pools=[{"name": "v1", "servers": [{"name": "a", "host": "p1", "port": 8000}]}],
                    routes=[], **CAPTURED)
    fab = _fabric(topo, spec)
    ends = fab.send("c1", _syn(topo, "c1", ct_mark=F.proxy_mark("api", "a2")))
    assert sorted((w, tuple(path)) for w, _, path in ends) == [
        ("host:a2", ("s1", "s2", "s3")), ("host:col", ("s1", "s2", "s3", "s2", "s1"))]
    reply = _syn(topo, "a1", dst="fd00:1::1", dport=40000, tcp_src=8080, ipv6_src="fd00:9::100")
    assert sorted((w, tuple(path)) for w, _, path in fab.send("a1", reply)) == [
        ("host:c1", ("s3", "s2", "s1")), ("host:col", ("s3", "s2", "s1"))]


def test_isolation_and_capture_flows_fit_the_pipeline_with_their_kinds(topo, monkeypatch):
    states = F.compute_cluster(topo, ClusterSpec.model_validate(_cluster(**CAPTURED)), RMAC)
    gid, cap = F.group_id("api"), F.capture_group_id("api")
    assert cap != gid and cap >> 24 == 0x07
    isolate = {sw: 0 for sw in states}
    for sw, st in states.items():
        pipeline.check_ids(F.APP, st)
        for f in st.flows.values():
            pipeline.check_flow(F.APP, f)
            ck = cookies.decode(f.cookie)
            assert (ck.app, ck.obj) == (F.APP, cookies.object_id("api")) and ck.kind in F.KIND_NAMES
            if ck.kind == F.K_ISOLATE:
                isolate[sw] += 1
                assert (f.table, f.priority, f.actions, f.goto) == (pipeline.INGRESS, F.P_ISOLATE, (), None)
            if ck.kind == F.K_CAPTURE:
                assert (f.table, f.priority) == (pipeline.LB, F.P_CAPTURE)
        # the capture group only where a proxy is (s2); the collector is on s1: through the next hops
        assert (cap in st.groups) == (sw == "s2")
    (bucket,) = states["s2"].groups[cap].buckets
    assert bucket.actions[-1] == GroupAction(next_hop_group_ids(topo)["s1"])
    kinds = {cookies.decode(f.cookie).kind for st in states.values() for f in st.flows.values()}
    assert {F.K_ISOLATE, F.K_CAPTURE} <= kinds and F.KIND_NAMES[F.K_ISOLATE] == "isolate"
    # s1: c1 and col barred from 5 and 4 hosts, s2: each proxy from c1 and col, s3: each server from col
    assert isolate == {"s1": (5 + 4) * 2, "s2": 2 * 2 * 2, "s3": 2 * 1 * 2}
    # a capture id that would equal the select group's moves aside
    monkeypatch.setattr(F, "_crc24", lambda name: 0x123456)
    assert F.capture_group_id("api") != F.group_id("api")


# --- sites: a switch prefers its own site's proxies, and never picks or pins one it cannot reach ----

@pytest.fixture(scope="module")
def sites():
    def host(i, net):
        return {"mac": f"02:00:00:00:{net:02x}:{i:02x}", "ipv4": f"10.{net}.0.{i}/24", "gateway4": f"10.{net}.0.254"}
    hosts = {"c1": host(1, 11), "p1": host(11, 11), "p2": host(12, 11), "c2": host(1, 12), "p3": host(13, 12),
             "c3": host(1, 13), "a1": host(21, 13)}
    return from_dict({"lab": {"name": "st", "prefix": "st"},
                      "nodes": {"dc1": {"underlay_ip": "192.168.80.1/24"}, "dc2": {"underlay_ip": "192.168.80.2/24"},
                                "core": {"underlay_ip": "192.168.80.3/24"}},
                      "switches": {"d1": {"dpid": 1, "node": "dc1"}, "d2": {"dpid": 2, "node": "dc2"},
                                   "x1": {"dpid": 3, "node": "core"}},
                      "hosts": hosts,
                      "links": [["c1", "d1"], ["p1", "d1"], ["p2", "d1"], ["c2", "d2"], ["p3", "d2"],
                                ["c3", "x1"], ["a1", "x1"]],
                      "tunnels": [{"a": "d1", "b": "x1", "key": 1, "a_port": 100, "b_port": 100, "bfd_ms": 100},
                                  {"a": "d2", "b": "x1", "type": "geneve", "key": 2, "a_port": 100, "b_port": 101,
                                   "bfd_ms": 100},
                                  {"a": "d1", "b": "d2", "key": 3, "a_port": 101, "b_port": 101, "bfd_ms": 100}]})


SITES = {"name": "api", "vip4": "10.9.0.100", "ports": [80],
         "proxies": [{"host": "p1"}, {"host": "p2"}, {"host": "p3"}],
         "pools": [{"name": "v1", "servers": [{"name": "a1", "host": "a1", "port": 8000}]}]}


def _buckets(fab, sw) -> set[str]:
    """The proxies ``sw``'s select group spreads over (the marks its 128 buckets write)."""
    marks = {F.proxy_mark("api", p): p for p in ("p1", "p2", "p3")}
    g = fab.switches[sw].state.groups[F.group_id("api")]
    assert len(g.buckets) == SLOTS
    return {marks[a.value] for b in g.buckets for a in b.actions if getattr(a, "field", None) == F.PICKED}


def test_each_switch_prefers_its_own_sites_proxies_and_a_site_without_any_uses_all(sites):
    fab = _fabric(sites, SITES)
    assert _buckets(fab, "d1") == {"p1", "p2"} and _buckets(fab, "d2") == {"p3"}
    assert _buckets(fab, "x1") == {"p1", "p2", "p3"}
    assert _ends(fab, "c2", _syn(sites, "c2")) == ["host:p3"]          # across no tunnel at all
    assert _ends(fab, "c3", _syn(sites, "c3")) == ["host:p1", "host:p2", "host:p3"]   # over both tunnels
    # the local site's proxies all out: the other site serves
    fab = _fabric(sites, SITES, dead={"p3"})
    assert _buckets(fab, "d2") == {"p1", "p2"} and _ends(fab, "c2", _syn(sites, "c2")) == ["host:p1", "host:p2"]


def test_a_cut_off_site_is_neither_picked_nor_pinned_from_elsewhere(sites):
    """dc1's tunnels down (its underlay cut): x1 and d2 reach only p3; a connection pinned to p1 is
    picked again (its new proxy resets it at once) instead of being sent into a dead tunnel."""
    cut = {("d1", 100), ("x1", 100), ("d1", 101), ("d2", 101)}
    graph = sites.graph(frozenset(cut))
    comp = {sw: i for i, c in enumerate(__import__("networkx").connected_components(graph)) for sw in c}
    fab = _fabric(sites, SITES, reach=lambda a, b: comp[a] == comp[b], down=cut)
    assert _buckets(fab, "x1") == {"p3"} and _buckets(fab, "d1") == {"p1", "p2"}
    pinned = _syn(sites, "c3", ct_mark=F.proxy_mark("api", "p1"))
    assert _ends(fab, "c3", pinned) == ["host:p3"]
    pins = [f for f in fab.switches["x1"].state.flows.values()
            if f.table == F.LB and f.priority == F.P_PIN]
    assert {f.match.to_dict().get("ct_mark") for f in pins} == {F.proxy_mark("api", "p3")}


def test_a_retiring_server_keeps_its_role_for_isolation(topo):
    """a1 removed from the pools but retiring: proxies still reach it, clients still do not."""
    spec = _cluster(pools=[{"name": "v1", "servers": [{"name": "b", "host": "a2", "port": 8000}]}], routes=[])
    gone = _fabric(topo, spec)
    kept = _fabric(topo, spec, retiring={"a1"})
    to_a1 = {"eth_src": topo.hosts["p1"].mac, "eth_dst": RMAC, "vlan_vid": 0, "nw_ttl": 64, "eth_type": 0x0800,
             "ipv4_src": "10.2.0.1", "ipv4_dst": "10.3.0.1", "ip_proto": 6, "tcp_src": 40000, "tcp_dst": 8000}
    assert _ends(gone, "p1", to_a1) == ["drop"]            # a1 is an outsider now: proxies may not reach it
    assert _ends(kept, "p1", to_a1) == ["host:a1"]
    from_c1 = {**to_a1, "eth_src": topo.hosts["c1"].mac, "ipv4_src": "10.1.0.1"}
    assert _ends(kept, "c1", from_c1) == ["drop"]


def test_the_slot_table_is_balanced_and_moves_only_what_a_change_must():
    """128 slots: each proxy owns an equal share (within one slot); a joining proxy takes exactly
    its share from the others, a leaving one gives exactly its slots; the same previous table and
    members give the same table whatever their order (every instance computes alike)."""
    names = [f"p{i}" for i in range(1, 6)]
    table = slot_table(names[:2])
    for n in (3, 4, 5):
        after = slot_table(names[:n], table)
        counts = [after.count(k) for k in names[:n]]
        assert max(counts) - min(counts) <= 1 and sum(counts) == SLOTS
        moved = sum(a != b for a, b in zip(table, after))
        assert moved == after.count(names[n - 1]), (n, moved)         # only the newcomer's share moved
        table = after
    gone = slot_table(["p1", "p2", "p4", "p5"], table)                   # p3 leaves
    assert sum(a != b for a, b in zip(table, gone)) == table.count("p3")
    assert slot_table(list(reversed(names)), table) == slot_table(names, table) == table   # unchanged set: same
    assert slot_table([]) == [] and set(slot_table(["p1"])) == {"p1"}
