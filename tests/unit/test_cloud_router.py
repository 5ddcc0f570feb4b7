"""Cloud router model and flows, without switches: intent checks, keys, NAC choice, locations, flows."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ryu_apps.framework import cookies, pipeline
from ryu_apps.framework import topology as T
from ryu_apps.functions.cloud_router.flows import (
    K_LOC,
    UP,
    ClientInfo,
    FlowCache,
    Inputs,
    active_nac,
    compute_cloud,
    failed_nacs,
)
from ryu_apps.functions.cloud_router.model import (
    QUARANTINE,
    CloudRouterIntent,
    IntentCheckError,
    Locations,
    Rule,
    assign_keys,
    derive_roles,
    expand_rule,
    nac_order,
    policy_ids,
    range_to_masks,
)
from ryu_apps.functions.cloud_router.wire import client_frame
from ryu_apps.openflow.ofdata import (
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    GroupAction,
    Meter,
    MeterBand,
    Output,
    Resubmit,
)
from ryu_apps.packet.parse import BadPacket

REPO = Path(__file__).resolve().parents[2]
TOPO_FILE = REPO / "topologies" / "cloud_router.yaml"


def topo_data() -> dict:
    return yaml.safe_load(TOPO_FILE.read_text())


@pytest.fixture(scope="module")
def topo():
    return T.load(TOPO_FILE)


@pytest.fixture(scope="module")
def intent(topo):
    return CloudRouterIntent.model_validate(topo.apps["cloud_router"])


@pytest.fixture(scope="module")
def roles(topo, intent):
    return derive_roles(topo, intent.tiers)


def inputs(topo, intent, roles, n_extra: int = 0, failed=frozenset(), down=frozenset(), locations=None):
    hosts = [topo.hosts[h] for h in roles.ap_hosts]
    macs = [h.mac for h in hosts]
    extra = [(f"02:10:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}:01",
              str(ipaddress.IPv4Address("10.60.1.0") + i)) for i in range(n_extra)]
    keys = assign_keys({}, macs + [m for m, _ in extra])
    clients = []
    for h in hosts:
        loc = (locations or {}).get(h.name, (h.switch, h.port))
        clients.append(ClientInfo(h.mac, keys[h.mac], str(h.ipv4.ip), intent.policy_of(intent.clients.get(h.mac)),
                                  None, loc))
    aps = roles.aps
    for i, (m, ip) in enumerate(extra):
        clients.append(ClientInfo(m, keys[m], ip, "staff", None, (aps[i % len(aps)], 1000 + i % 7)))
    return Inputs(intent, roles, "0e:fa:b0:00:00:01", clients, failed, frozenset(), down,
                  tuple(topo.hosts[h] for h in roles.services))


# -- intent -------------------------------------------------------------------------------


def test_the_shipped_topology_is_a_valid_cloud_router(topo, intent, roles):
    assert roles.aps == ("ap1", "ap2", "ap3") and roles.nacs == ("nac1", "nac2")
    assert len([t for t in roles.tunnels if t["set"] == 1]) == 4
    assert len([t for t in roles.tunnels if t["set"] == 2]) == 4
    assert {t["type"] for t in roles.tunnels if t["set"] == 1} == {"vxlan"}
    assert {t["type"] for t in roles.tunnels if t["set"] == 2} == {"geneve"}
    assert roles.services == ("db", "reg", "web")
    assert intent.policy_of(intent.clients["02:00:00:60:00:01"]) == "staff"
    assert intent.policy_of(None) == QUARANTINE  # unknown clients


@pytest.mark.parametrize("change,words", [
    ({"default_policy": "nope"}, "default_policy"),
    ({"clients": {"02:00:00:60:00:09": {"policy": "vip"}}}, "clients.02:00:00:60:00:09.policy"),
    ({"clients": {"01:00:00:60:00:09": {}}}, "multicast"),
    ({"clients": {"02:00:00:60:00:09": {"ipv4": "10.99.0.1"}}}, "not in client_subnets"),
    ({"clients": {"02:00:00:60:00:09": {"name": "alice"}, "02:00:00:60:00:0a": {"name": "alice"}}},
     "already the name"),
    ({"policies": {"quarantine": {}}}, "built in"),
    ({"policies": {"p": {"allow": [{"dst": "10.61.0.1/24"}]}}}, "host bits"),
    ({"policies": {"p": {"allow": [{"dst": "10.61.0.1", "proto": "icmp", "ports": [80]}]}}}, "only for proto"),
    ({"policies": {"p": {"allow": [{"dst": "10.61.0.1", "proto": "tcp", "ports": ["90-80"]}]}}}, "low <= high"),
    ({"policies": {"p": {"allow": [{"dst": "10.61.0.1", "proto": "tcp", "ports": [70000]}]}}}, "1..65535"),
    ({"policies": {"p": {"rate_kbps": 1}}}, "rate_kbps"),
    ({"policies": {"p": {"allow": [{"dst": "10.61.0.1", "proto": "tcp", "ports": ["1-65535"]}] * 20}}}, "expand"),
    ({"client_gateway": "10.61.0.254"}, "client_gateway"),
    ({"colour": "red"}, "colour"),
])
def test_bad_intent_is_refused_naming_the_key(intent, change, words):
    data = intent.model_dump(mode="json", exclude_none=True)
    for k, v in change.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) and k in ("clients", "policies") else v
    with pytest.raises(ValidationError) as err:
        CloudRouterIntent.model_validate(data)
    assert words in str(err.value), str(err.value)


@pytest.mark.parametrize("mutate,key,words", [
    (lambda d: d["apps"]["cloud_router"]["tiers"].update(nacs=["nac1", "nac9"]), "tiers.nacs[1]", "not a switch"),
    (lambda d: d["apps"]["cloud_router"]["tiers"].update(forwarders=["fc1", "td2"]), "tiers.forwarders[1]",
     "already in"),
    (lambda d: d["tunnels"][0].update(key=77), "tiers.tunnel_devices[0]", "key: flow"),
    (lambda d: d["links"].append({"a": "fc1", "b": "svc", "a_port": 50, "b_port": 50}), "tiers.forwarders[0]",
     "never goes around a NAC"),
])
def test_tiers_that_do_not_fit_the_topology_are_refused(mutate, key, words):
    data = topo_data()
    mutate(data)
    topo = T.from_dict(data)
    intent = CloudRouterIntent.model_validate(data["apps"]["cloud_router"])
    with pytest.raises(IntentCheckError) as err:
        derive_roles(topo, intent.tiers)
    assert err.value.field == key and words in str(err.value), str(err.value)


# -- rules, keys, NAC choice ---------------------------------------------------------------


@pytest.mark.parametrize("lo,hi", [(1, 1), (80, 80), (8000, 8080), (1, 65535), (1023, 1025), (6000, 6003)])
def test_port_ranges_become_exact_masks(lo, hi):
    masks = range_to_masks(lo, hi)
    covered = set()
    for value, mask in masks:
        block = {p for p in range(value, value + ((~mask) & 0xFFFF) + 1) if p & mask == value}
        assert not covered & block
        covered |= block
    assert covered == set(range(lo, hi + 1))
    assert len(masks) <= 32


def test_rule_expansion_and_return_match():
    r = Rule(dst="10.61.0.0/24", proto="tcp", ports=[443, "6000-6003"])
    got = expand_rule(r)
    assert {"eth_type": 0x800, "ipv4_dst": "10.61.0.0/24", "ip_proto": 6, "tcp_dst": 443} in got
    assert {"eth_type": 0x800, "ipv4_dst": "10.61.0.0/24", "ip_proto": 6, "tcp_dst": (6000, 0xFFFC)} in got
    assert expand_rule(Rule(dst="any")) == [{"eth_type": 0x800}]


def test_keys_are_stable_unique_and_explicit_keys_win():
    macs = [f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(3000)]
    keys = assign_keys({}, macs)
    assert len(set(keys.values())) == len(macs) and all(0 < k < 1 << 24 for k in keys.values())
    assert assign_keys(keys, list(reversed(macs))) == keys  # order of arrival does not matter
    more = assign_keys(keys, macs + ["02:ff:00:00:00:01"])
    assert {m: more[m] for m in macs} == keys  # a new client moves nobody
    pinned = assign_keys(keys, macs, explicit={macs[5]: keys[macs[7]]})
    assert pinned[macs[5]] == keys[macs[7]] and pinned[macs[7]] != keys[macs[7]]


def test_rendezvous_moves_only_the_failed_nacs_clients():
    nacs = ("nac1", "nac2", "nac3")
    macs = [f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(3000)]
    before = {m: active_nac(nac_order(m, nacs), frozenset()) for m in macs}
    share = {n: sum(v == n for v in before.values()) for n in nacs}
    assert all(800 < c < 1200 for c in share.values()), share
    after = {m: active_nac(nac_order(m, nacs), frozenset({"nac2"})) for m in macs}
    for m in macs:
        if before[m] != "nac2":
            assert after[m] == before[m]
        else:
            assert after[m] in ("nac1", "nac3")
    assert nac_order(macs[0], nacs) == nac_order(macs[0], nacs)  # deterministic


def test_policy_ids_are_stable_and_distinct():
    ids = policy_ids(["staff", "guest", QUARANTINE])
    assert len(set(ids.values())) == 3 and 0 not in ids.values()
    assert policy_ids(["guest", "staff", QUARANTINE, "new"])["staff"] == ids["staff"]


# -- locations ------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_roam_and_late_claim_from_the_old_port_is_refused():
    clk = Clock()
    loc = Locations(holddown=2.0, clock=clk)
    mac = "02:00:00:60:00:01"
    loc.port_event("ap1", 1, "up")
    assert loc.claim(mac, "ap1", 1).kind == "new"
    assert loc.claim(mac, "ap1", 1).kind == "same"
    # the lab re-plugs the client: old port deleted, new port added (link state reported later)
    assert loc.port_event("ap1", 1, "deleted") == [mac]
    assert loc.where(mac) is None and loc.last[mac].switch == "ap1"
    loc.port_event("ap2", 10, "down", added=True)
    v = loc.claim(mac, "ap2", 10)  # its packet arrived before the link-up report: still accepted
    assert v.kind == "moved" and loc.where(mac).switch == "ap2"
    # a frame queued at ap1 before the move, handled now: refused, location unchanged
    v = loc.claim(mac, "ap1", 1)
    assert v.kind == "stale" and "deleted" in v.reason and loc.where(mac).switch == "ap2"
    # a shared port (radio): the client leaves ap3:5 for ap1:7 (the access point reports the move,
    # ap3:5 stays up for its other clients), a late frame from ap3:5 is refused
    loc.port_event("ap3", 5, "up")
    loc.port_event("ap1", 7, "up")
    assert loc.claim(mac, "ap3", 5).kind == "conflict"  # only a frame there: it is still at ap2:10
    assert loc.claim(mac, "ap3", 5, reported=True).kind == "moved"
    clk.t += 0.5
    assert loc.claim(mac, "ap1", 7, reported=True).kind == "moved"
    clk.t += 0.5
    v = loc.claim(mac, "ap3", 5)
    assert v.kind == "stale" and "left ap3:5" in v.reason and loc.where(mac).switch == "ap1"
    # ... until the holddown is over (a real return to a port that stayed up, reported)
    clk.t += 2.0
    assert loc.claim(mac, "ap3", 5).kind == "conflict"
    assert loc.claim(mac, "ap3", 5, reported=True).kind == "moved"


def test_copied_mac_does_not_move_a_connected_client():
    clk = Clock()
    loc = Locations(holddown=2.0, clock=clk)
    mac = "02:00:00:60:00:01"
    loc.port_event("ap1", 1, "up")
    loc.port_event("ap3", 1, "up")
    loc.port_event("ap1", 2, "up")
    assert loc.claim(mac, "ap1", 1).kind == "new"
    # another device sends with its MAC at another access point, or at another port of the same one
    for sw, port in (("ap3", 1), ("ap1", 2), ("ap3", 1)):
        clk.t += 5.0  # long after any holddown: time does not make it acceptable
        v = loc.claim(mac, sw, port)
        assert v.kind == "conflict" and "ap1:1" in v.reason, v
        assert (loc.where(mac).switch, loc.where(mac).port) == ("ap1", 1)
    # its port not reported yet (controller restart): still in use; its switch disconnected: not
    loc.restore({"02:00:00:60:00:02": ["ap2", 4]})
    assert loc.claim("02:00:00:60:00:02", "ap3", 1).kind == "conflict"
    assert loc.claim("02:00:00:60:00:02", "ap3", 1, alive=lambda sw: sw != "ap2").kind == "moved"
    # the real client's port goes down: now the claim is a genuine move
    assert loc.port_event("ap1", 1, "down") == [mac]
    assert loc.claim(mac, "ap3", 1).kind == "moved"
    # or the access point reports the move while the old port stays up
    loc.port_event("ap1", 1, "up")
    clk.t += 5.0
    assert loc.claim(mac, "ap1", 1).kind == "conflict"  # it is connected at ap3:1 now
    assert loc.claim(mac, "ap1", 1, reported=True).kind == "moved"


def test_port_that_comes_back_up_starts_a_new_generation():
    clk = Clock()
    loc = Locations(holddown=60.0, clock=clk)
    mac = "02:00:00:60:00:02"
    loc.port_event("ap1", 2, "up")
    loc.claim(mac, "ap1", 2)
    assert loc.port_event("ap1", 2, "down") == [mac]
    assert loc.claim(mac, "ap1", 2).kind == "stale"  # down: nothing can come from it
    loc.port_event("ap1", 2, "up")  # re-plugged: a new generation, the claim is genuine
    assert loc.claim(mac, "ap1", 2).kind == "moved" and loc.where(mac).port == 2


def test_ports_first_seen_down_detach_nobody():
    loc = Locations()
    loc.restore({"02:00:00:60:00:03": ["ap2", 1]})
    assert loc.port_event("ap2", 1, "down") == []  # the switch's first report, before carrier
    assert loc.where("02:00:00:60:00:03") is not None
    assert loc.claim("02:00:00:60:00:03", "ap2", 1).kind in ("same", "moved")


# -- flows ------------------------------------------------------------------------------------


def test_every_flow_fits_the_pipeline_and_carries_the_apps_cookie(topo, intent, roles):
    states = compute_cloud(inputs(topo, intent, roles, n_extra=50))
    for sw, st in states.items():
        for f in st.flows.values():
            pipeline.check_flow("cloud_router", f)
            assert cookies.decode(f.cookie).app == "cloud_router"
        st.add_meter(Meter(meter_id=1, bands=(MeterBand(rate=200),)))  # the core's punt meter
        st.check_references()


def _outputs(st, flow):
    """Ports a flow can send to (through groups), and whether it resubmits."""
    out = set()
    for a in flow.actions:
        if isinstance(a, Output):
            out.add(a.port)
        elif isinstance(a, GroupAction):
            for b in st.groups[a.group_id].buckets:
                out |= {x.port for x in b.actions if isinstance(x, Output)}
    return out


def test_forwarders_send_client_traffic_only_to_nacs_and_back(topo, intent, roles):
    states = compute_cloud(inputs(topo, intent, roles, n_extra=30))
    for fc in roles.fcs:
        st = states[fc]
        nac_ports = set(roles.fc_nac[fc].values())
        td_ports = set(roles.fc_td[fc].values())
        for f in st.flows.values():
            if f.table == 0:
                assert f.goto in (None, 40) and not f.actions
                continue
            meta = f.match.get("metadata")
            outs = _outputs(st, f)
            assert meta is not None, f"forwarder flow without a direction: {f}"
            if meta[0] == UP:
                assert outs and outs <= nac_ports, f
            else:
                assert outs <= td_ports, f
    for td in roles.tds:
        st = states[td]
        fc_ports = set(roles.td_fc[td].values())
        for f in st.flows.values():
            if f.table == 40 and f.match.get("metadata", (0,))[0] == UP:
                assert _outputs(st, f) <= fc_ports and any(a.__class__.__name__ == "SetField" and
                                                           a.field == "tunnel_id" for a in f.actions), f
    for ap in roles.aps:
        st = states[ap]
        ups = {p for p, _, _ in roles.ap_uplinks[ap]}
        for f in st.flows.values():
            if f.table == 40 and f.match.get("metadata", (0,))[0] == UP:
                assert _outputs(st, f) <= ups | {OFPP_IN_PORT, OFPP_CONTROLLER}, f


def test_nacs_hold_every_clients_policy_and_only_allowed_traffic_leaves(topo, intent, roles):
    inp = inputs(topo, intent, roles)
    states = compute_cloud(inp)
    pids = policy_ids(set(intent.policies) | {QUARANTINE})
    for nac in roles.nacs:
        st = states[nac]
        stage1 = [f for f in st.flows.values() if f.table == 40 and f.match.get("reg0") == 0]
        keys = {f.match.get("tunnel_id") for f in stage1 if f.match.get("tunnel_id")}
        assert keys == {c.key for c in inp.clients}
        for f in stage1:
            assert any(isinstance(a, Resubmit) and a.table == 40 for a in f.actions)
        # the uplink port is reached only from rules (stage 2) of a known policy
        up = roles.nac_up[nac]
        for f in st.flows.values():
            if up in _outputs(st, f):
                assert f.match.get("reg0") in pids.values() and f.match.get("metadata")[0] == UP
        # a policy's default is drop
        for pid in pids.values():
            deny = [f for f in st.flows.values() if f.match.to_dict() == {"reg0": pid}]
            assert len(deny) == 1 and not deny[0].actions


def test_roam_changes_location_flows_only(topo, intent, roles):
    cache = FlowCache()
    a = compute_cloud(inputs(topo, intent, roles), cache)
    b = compute_cloud(inputs(topo, intent, roles, locations={"c1": ("ap2", 10)}), cache)
    mac = topo.hosts["c1"].mac
    for sw in a:
        changed = {k for k in set(a[sw].flows) | set(b[sw].flows) if a[sw].flows.get(k) != b[sw].flows.get(k)}
        for k in changed:
            f = a[sw].flows.get(k) or b[sw].flows.get(k)
            assert cookies.decode(f.cookie).kind == K_LOC and f.cookie == cookies.make("cloud_router", K_LOC, mac)
    assert {sw for sw in a if a[sw].flows != b[sw].flows} == {"ap1", "ap2", "td1", "td2", "fc1", "fc2"}
    assert cache.hits > 0


def test_nac_failure_changes_rank_groups_only(topo, intent, roles):
    a = compute_cloud(inputs(topo, intent, roles))
    failed = failed_nacs(roles, frozenset({"nac1"}), frozenset())
    assert failed == {"nac1"}
    b = compute_cloud(inputs(topo, intent, roles, failed=failed))
    for sw in a:
        assert a[sw].flows == b[sw].flows
    for sw in roles.fcs + (roles.uplink,):
        for gid, g in b[sw].groups.items():
            ports = {x.port for bk in g.buckets for x in bk.actions}
            assert (roles.fc_nac.get(sw, roles.up_nac) if sw != roles.uplink else roles.up_nac)["nac1"] not in ports
    # every forwarder tunnel to nac2 not LIVE: nac2 has failed too
    down = frozenset((fc, roles.fc_nac[fc]["nac2"]) for fc in roles.fcs)
    assert failed_nacs(roles, frozenset(), down) == {"nac2"}


def test_flows_per_client_at_scale(topo, intent, roles):
    base = compute_cloud(inputs(topo, intent, roles))
    big = compute_cloud(inputs(topo, intent, roles, n_extra=1000))
    per_client = (sum(len(s.flows) for s in big.values()) - sum(len(s.flows) for s in base.values())) / 1000
    assert per_client == 13  # NACs 2x2, forwarders 2x2 (up + back), TD 2, AP 2, uplink 1


# -- packet parsing ------------------------------------------------------------------------------


def test_client_frames_are_parsed_boundedly():
    mac = bytes.fromhex("020000600001")
    eth = bytes.fromhex("0efab0000001") + mac
    ip = eth + b"\x08\x00" + bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 60, 0, 1, 10, 61, 0, 1])
    f = client_frame(ip)
    assert (f.src, f.ipv4, f.kind) == ("02:00:00:60:00:01", "10.60.0.1", "ipv4")
    arp = (b"\xff" * 6 + mac + b"\x08\x06" + bytes.fromhex("0001080006040001") + mac + bytes([10, 60, 0, 7])
           + b"\x00" * 6 + bytes([10, 60, 255, 254]))
    assert client_frame(arp).ipv4 == "10.60.0.7"
    for bad in (b"", ip[:20], arp[:30], b"\x01" + ip[1:6] + b"\x01" + ip[7:],
                eth + b"\x81\x00\x00\x05\x08\x00" + ip[14:]):
        with pytest.raises(BadPacket):
            client_frame(bad)
    assert client_frame(eth + b"\x86\xdd" + b"\x00" * 40).ipv4 is None


# -- topology additions this app needs (tunnel key "flow", BFD) ------------------------------------


def test_flow_keyed_tunnels_with_bfd(topo):
    tun = [l for l in topo.links if l.kind in ("vxlan", "geneve")]
    assert len(tun) == 8 and all(l.key == "flow" and l.bfd_ms == 100 for l in tun)
    old = T.load(REPO / "topologies" / "tunnel.yaml")  # fixed keys still mean what they meant
    assert [(l.key, l.bfd_ms) for l in old.links if l.kind == "vxlan"] == [(5001, None)]


@pytest.mark.parametrize("key,ok", [("flow", True), (0, True), (5001, True), ("5001", True), ((1 << 24) - 1, True),
                                    ("flo", False), (1 << 24, False), (-1, False), (True, False), (2.5, False)])
def test_tunnel_key_is_a_vni_or_flow(key, ok):
    data = topo_data()
    data["tunnels"][0]["key"] = key
    if ok:
        T.from_dict(data)
    else:
        with pytest.raises(T.TopologyError) as err:
            T.from_dict(data)
        assert "tunnels[0].key" in str(err.value) and "flow" in str(err.value)


def test_bfd_interval_is_checked():
    data = topo_data()
    data["tunnels"][0]["bfd_ms"] = 1
    with pytest.raises(T.TopologyError) as err:
        T.from_dict(data)
    assert "tunnels[0].bfd_ms" in str(err.value)
