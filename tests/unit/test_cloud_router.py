"""Cloud router model and flows, without switches: intent checks, keys, NAC choice, locations, flows."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pydantic import ValidationError

from ryu_apps.cloud_router import SHARED, ClientPart, CloudRouter
from ryu_apps.framework import cookies, pipeline
from ryu_apps.framework import topology as T
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.state import LayeredState, SwitchState
from ryu_apps.framework.view import FabricView, PacketIn, PortChange
from ryu_apps.functions.cloud_router.flows import (
    K_LOC,
    K_PUNT,
    UP,
    ClientInfo,
    Inputs,
    active_nac,
    compute_cloud,
    failed_nacs,
)
from ryu_apps.functions.cloud_router.intent import (
    APP,
    QUARANTINE,
    Client,
    CloudRouterIntent,
    Rule,
    expand_rule,
    range_to_masks,
)
from ryu_apps.functions.cloud_router.model import (
    IntentCheckError,
    Locations,
    assign_keys,
    derive_roles,
    nac_order,
    nac_orders,
    order_index,
    policy_ids,
)
from ryu_apps.functions.cloud_router.wire import client_frame
from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.openflow import simulator
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
    a = compute_cloud(inputs(topo, intent, roles))
    b = compute_cloud(inputs(topo, intent, roles, locations={"c1": ("ap2", 10)}))
    mac = topo.hosts["c1"].mac
    for sw in a:
        changed = {k for k in set(a[sw].flows) | set(b[sw].flows) if a[sw].flows.get(k) != b[sw].flows.get(k)}
        for k in changed:
            f = a[sw].flows.get(k) or b[sw].flows.get(k)
            assert cookies.decode(f.cookie).kind == K_LOC and f.cookie == cookies.make("cloud_router", K_LOC, mac)
    assert {sw for sw in a if a[sw].flows != b[sw].flows} == {"ap1", "ap2", "td1", "td2", "fc1", "fc2"}
    # (the FlowCache this asserted hits on is gone: the app computes one part per client and the core keeps
    # each; that a roam recomputes only the roaming client's part is test_app_roam_recomputes_one_part)


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


# -- where packets go: the tiers and the service switch on the switch simulator -----------------------
#
# The cloud router's state merged with the fabric's (as the core layers them on every switch), the
# switches joined by the topology's links and its VXLAN/Geneve tunnels (``simulator.Fabric``: a
# tunnel delivers the packet with its key as tun_id), the simulator checked against ofproto/trace on
# the real lab in tests/integration/test_simulator_trace_cloud_router.py.

RMAC = FabricIntent().router_mac  # the router MAC inputs() gives the cloud router too


def network(topo, intent, roles, down=frozenset(), **kw):
    """(the fabric of switches, the Inputs) for the shipped clients at their topology ports."""
    inp = inputs(topo, intent, roles, down=frozenset(down), **kw)
    states = {n: SwitchState() for n in topo.switches}
    for n, st in compute_fabric(FabricView(topo, frozenset(down)), FabricIntent()).items():
        states[n].merge(st, "fabric")
    for n, st in compute_cloud(inp).items():
        states[n].merge(st, APP)
    return simulator.Fabric(topo, states, down), inp


def probe_packet(h, target: str) -> dict:
    """What ``traffic probe`` sends for ``proto:dst[:port]`` (the scenario's targets), from ``h``."""
    proto, dst, *port = target.split(":")
    pkt = {"eth_src": h.mac, "eth_dst": RMAC, "vlan_vid": 0, "eth_type": 0x0800, "ipv4_src": str(h.ipv4.ip),
           "ipv4_dst": dst, "nw_ttl": 64}
    if proto == "tcp":
        return {**pkt, "ip_proto": 6, "tcp_src": 40000, "tcp_dst": int(port[0])}
    if proto == "udp":
        return {**pkt, "ip_proto": 17, "udp_src": 40000, "udp_dst": int(port[0])}
    return {**pkt, "ip_proto": 1, "icmpv4_type": 8, "icmpv4_code": 0}


def nac_of(inp, roles, host, topo):
    return active_nac(nac_order(topo.hosts[host].mac, roles.nacs), inp.failed_nacs)


@pytest.mark.parametrize("client", ["c1", "c2", "c3", "c4"])
def test_a_client_reaches_exactly_its_policys_targets_through_its_nac(topo, intent, roles, client):
    from ovs_scripts.scenarios.cloud_router import EXPECTED, TARGETS

    fab, inp = network(topo, intent, roles)
    h = topo.hosts[client]
    policy = intent.policy_of(intent.clients.get(h.mac))
    nac = nac_of(inp, roles, client, topo)
    td = next(t for _, t, _ in roles.ap_uplinks[h.switch])
    services = {str(x.ipv4.ip): name for name, x in topo.hosts.items() if x.switch == roles.uplink}
    reached = set()
    for t in TARGETS:
        ends = fab.trace(client, probe_packet(h, t))
        # the select group at the tunnel device forks over both forwarders; each fork meets the policy
        assert {tuple(path[:2]) for _, _, path in ends} == {(h.switch, td)}, (t, ends)
        assert {path[2] for _, _, path in ends} == set(roles.fcs), (t, ends)
        assert {path[3] for _, _, path in ends} == {nac}, (t, ends)  # the client's NAC, whichever forwarder
        where = {w for w, _, _ in ends}
        if where == {f"host:{services[t.split(':')[1]]}"}:
            reached.add(t)
            for _, out, path in ends:
                assert path[4:] == [roles.uplink] and out.packet["eth_src"] == RMAC and out.packet["nw_ttl"] == 63
        else:
            assert where == {"drop"}, (t, ends)  # denied: dropped by the policy at the NAC, nowhere else
            assert {(path[-1], out.table) for _, out, path in ends} == {(nac, 40)}, (t, ends)
    assert reached == EXPECTED[policy], (client, policy)


def test_replies_of_allowed_traffic_come_back_to_the_client_and_nothing_else(topo, intent, roles):
    fab, inp = network(topo, intent, roles)
    web, c1 = topo.hosts["web"], topo.hosts["c1"]
    reply = {"eth_src": web.mac, "eth_dst": RMAC, "vlan_vid": 0, "eth_type": 0x0800, "ipv4_src": str(web.ipv4.ip),
             "ipv4_dst": str(c1.ipv4.ip), "nw_ttl": 64, "ip_proto": 6, "tcp_src": 5001, "tcp_dst": 40000}
    ends = fab.trace("web", reply)
    assert {w for w, _, _ in ends} == {"host:c1"}
    for _, out, path in ends:
        assert path[:2] == [roles.uplink, nac_of(inp, roles, "c1", topo)] and path[-2:] == ["td1", "ap1"], path
        assert (out.packet["eth_dst"], out.packet["eth_src"], out.packet["nw_ttl"]) == (c1.mac, RMAC, 63)
    # not the reply of an allowed rule (c1 may reach web:5001, not web:5002): dropped at the NAC
    assert {(w, path[-1]) for w, _, path in fab.trace("web", {**reply, "tcp_src": 5002})} == \
        {("drop", nac_of(inp, roles, "c1", topo))}


def test_the_access_point_answers_arp_and_punts_unknown_clients(topo, intent, roles):
    fab, _ = network(topo, intent, roles)
    c1 = topo.hosts["c1"]
    arp = {"eth_src": c1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "vlan_vid": 0, "eth_type": 0x0806, "arp_op": 1,
           "arp_spa": str(c1.ipv4.ip), "arp_tpa": intent.client_gateway, "arp_sha": c1.mac,
           "arp_tha": "00:00:00:00:00:00"}
    ((where, out, path),) = fab.trace("c1", arp)
    assert (where, path, out.packet["arp_op"], out.packet["arp_sha"], out.packet["eth_dst"]) == \
        ("host:c1", ["ap1"], 2, RMAC, c1.mac)
    for pkt in ({**probe_packet(c1, "tcp:10.61.0.1:5001"), "eth_src": "02:00:00:60:00:99"},  # nobody's MAC
                {**probe_packet(c1, "tcp:10.61.0.1:5001"), "eth_src": topo.hosts["c2"].mac}):  # c2's, on c1's port
        ((where, out, path),) = fab.trace("c1", pkt)
        assert (where, path, out.table) == ("controller", ["ap1"], 40)


def test_a_dead_nacs_clients_pass_the_other_nac_in_the_datapath_and_after_the_recompute(topo, intent, roles):
    from ovs_scripts.scenarios.cloud_router import EXPECTED, TARGETS

    fab, inp = network(topo, intent, roles)
    on_nac1 = [c for c in ("c1", "c2", "c3", "c4") if nac_of(inp, roles, c, topo) == "nac1"]
    assert on_nac1, "no client ranks nac1 first"
    # nac1's tunnels stop being LIVE (BFD): the forwarders' fast-failover rank groups skip them at
    # once, with the flows as they were; then the controller's compute with nac1 failed
    dead = frozenset((fc, roles.fc_nac[fc]["nac1"]) for fc in roles.fcs)
    datapath = simulator.Fabric(topo, {n: sw.state for n, sw in fab.switches.items()}, dead)
    failed = failed_nacs(roles, frozenset(), dead)
    assert failed == {"nac1"}
    after, _ = network(topo, intent, roles, down=dead, failed=failed)
    for c in on_nac1:
        h = topo.hosts[c]
        for f in (datapath, after):
            reached = set()
            for t in TARGETS:
                ends = f.trace(c, probe_packet(h, t))
                assert {path[3] for _, _, path in ends} == {"nac2"}, (c, t, ends)  # nothing around a NAC
                reached |= {t} if any(w.startswith("host:") for w, _, _ in ends) else set()
            assert reached == EXPECTED[intent.policy_of(intent.clients.get(h.mac))], c


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


# -- the app on framework v2: parts, purity, what an event dirties (a core that runs the real
# compute_app/apply/try_intent/commit_intent/_view_changed over fake programmers) ------------------


class FakeProgrammer:
    def __init__(self):
        self.desired = LayeredState()
        self.synced = True  # the fake switch holds whatever is handed over

    def set_layers(self, layers, check=True):
        return len(self.desired.replace(layers, check=check))


class FakeCore:
    """FabricCore's bookkeeping and recompute without os-ken: switches, channels and hub are data."""

    register, unregister, invalidate = FabricCore.register, FabricCore.unregister, FabricCore.invalidate
    _view_changed, compute_app, apply = FabricCore._view_changed, FabricCore.compute_app, FabricCore.apply
    try_intent, commit_intent, recompute_now = FabricCore.try_intent, FabricCore.commit_intent, FabricCore.recompute_now
    _intent_changed = FabricCore._intent_changed
    app_intent, compute_seconds = FabricCore.app_intent, FabricCore.compute_seconds
    settling, switch_synced, all_synced = FabricCore.settling, FabricCore.switch_synced, FabricCore.all_synced
    masters, cluster, clustered = FabricCore.masters, None, False  # one controller: it masters every switch

    def __init__(self, topo, saved=None):
        self.topology = topo
        self.apps, self.dirty, self.part_switches, self.compute_stats = {}, {}, {}, {}
        self.generation = 0
        self._recompute = SimpleNamespace(set=lambda: None)
        self._computing = False
        self.datapaths = dict.fromkeys(topo.switches)
        self.heap = SimpleNamespace(after_bulk=lambda entries: False)
        self.programmers = {n: FakeProgrammer() for n in topo.switches}
        for prog in self.programmers.values():  # the core's own layer: the punt meter
            prog.set_layers({("core", "*"): SwitchState(meters={1: Meter(meter_id=1, bands=(MeterBand(rate=200),))})})
        self.down_ports, self.dead, self.connected = set(), set(), set(topo.switches)
        self.saved = dict(saved or {})
        self.computed: list = []  # (app, parts) of every recompute

    def view(self):
        return FabricView(self.topology, frozenset(self.down_ports), frozenset(self.dead), frozenset(self.connected))

    def load_intent(self, name):
        return copy.deepcopy(self.saved.get(name))

    def save_intent(self, name, data, expect=None):
        self.saved[name] = copy.deepcopy(data)

    def is_connected(self, switch):
        return switch in self.connected

    def data_plane(self, switch):
        if switch in self.connected:
            return "forwarding"
        return "dead" if switch in self.dead else "presumed forwarding (hold-down)"

    def run(self):
        """One pass of the core's recompute loop."""
        dirty, self.dirty = self.dirty, {}
        for name, parts in dirty.items():
            app = self.apps[name]
            result = self.compute_app(app, self.view(), app.intent, parts)
            self.computed.append((name, result.parts))
            self.apply(result)

    def merged(self) -> dict:
        """The cloud router's layers merged, per switch it writes."""
        out = {}
        for n, p in self.programmers.items():
            for key, st in p.desired.layers.items():
                if key[0] == APP:
                    out.setdefault(n, SwitchState()).merge(st)
        return out

    def port(self, switch, port, up, reason="modify", live=None):
        """A port status as the core handles it: the view, what reads it, then the hooks."""
        live = up if live is None else live
        key = (switch, port)
        # as the core judges it: LIVE counts only on BFD veth links (a tunnel's LIVE is the app's business)
        usable = up and (live or key not in self.topology.bfd_ports)
        was = key not in self.down_ports
        (self.down_ports.discard if usable else self.down_ports.add)(key)
        change = PortChange(switch, port, reason, up, live, usable,
                            self.topology.ports.get(key) is not None and was != usable)
        if change.changed:
            self._view_changed("ports", change)
        for app in self.apps.values():
            app.on_port_change(change)


@pytest.fixture
def app(topo):
    core = FakeCore(topo)
    a = CloudRouter(fabric_core=core)
    core.run()
    return a


def runtime(a) -> dict:
    """Everything an app's compute must leave as it is."""
    return copy.deepcopy({"keys": a.keys, "learned": a.learned, "locations": a.locations.dump(),
                          "history": list(a.history), "counters": dict(a.counters), "failed": a.failed,
                          "failed_since": a.failed_since, "intent": a.intent.model_dump(), "dict": sorted(vars(a))})


def rest(handler, body=None, **params):
    return handler(SimpleNamespace(params=params, body=body, query={}))


def test_app_is_v2_and_its_parts_make_the_whole_state(app, topo):
    assert not CloudRouter.LEGACY
    core = app.core
    macs = {h.mac for h in (topo.hosts[n] for n in app.roles.ap_hosts)}
    assert set(core.part_switches[APP]) == {SHARED} | macs
    assert core.computed == [(APP, 1 + len(macs))]
    # the layers merged are exactly compute_cloud's whole state for the same clients
    view = core.view()
    whole = compute_cloud(Inputs(app.intent, app.roles, app.router_mac(), app.client_infos(), frozenset(),
                                 view.dead_switches, view.down_ports,
                                 tuple(topo.hosts[h] for h in app.roles.services)))
    merged = core.merged()
    assert set(merged) == set(whole)
    for sw, st in whole.items():
        assert (merged[sw].flows, merged[sw].groups, merged[sw].meters) == (st.flows, st.groups, st.meters), sw
    # keys were handed out at start and persisted
    assert set(core.saved[f"{APP}.runtime"]["keys"]) == macs and len(set(app.keys.values())) == len(macs)


def test_compute_and_try_intent_change_nothing(app):
    before = runtime(app)
    view = app.core.view()
    for part in app.parts(app.intent):
        app.compute(view, app.intent, part)
    data = app.intent.model_dump(mode="json", exclude_none=True)
    data["clients"]["02:00:00:70:00:01"] = {"policy": "staff", "ipv4": "10.60.7.1"}
    data["policies"]["guest"]["rate_kbps"] = 8000
    candidate = CloudRouterIntent.model_validate(data)
    result = app.core.try_intent(app, candidate)
    assert result.parts == len(app.parts(candidate))
    assert runtime(app) == before
    assert "02:00:00:70:00:01" not in app.keys  # a key is handed out at the commit, not when trying


def test_roam_recomputes_only_the_roaming_clients_part(app, topo):
    core = app.core
    mac = topo.hosts["c1"].mac
    before = core.merged()
    assert app.observe(mac, "ap2", 10, source="report") == "moved"
    assert core.dirty == {APP: {mac}}
    # the roam is in REST answers already, its flows are not: no switch may read as synced yet
    assert core.settling and not core.all_synced() and not core.switch_synced("ap2")
    core.computed.clear()
    core.run()
    assert core.computed == [(APP, 1)]
    assert core.all_synced()
    after = core.merged()
    changed = {sw for sw in before if before[sw].flows != after[sw].flows}
    assert changed == {"ap1", "ap2", "td1", "td2", "fc1", "fc2"}
    for sw in changed:
        for k in set(before[sw].flows) ^ set(after[sw].flows):
            f = before[sw].flows.get(k) or after[sw].flows.get(k)
            assert f.cookie == cookies.make(APP, K_LOC, mac)
    assert core.saved[f"{APP}.runtime"]["locations"][mac] == ["ap2", 10]


def _punt(switch, port, mac, ip):
    eth = bytes.fromhex("0efab0000001") + bytes.fromhex(mac.replace(":", "")) + b"\x08\x00"
    ipb = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + ipaddress.IPv4Address(ip).packed + bytes([10, 61, 0, 1])
    return PacketIn(switch, port, 40, cookies.make(APP, K_PUNT, switch), eth + ipb + bytes(8))


def test_learned_client_gets_a_key_and_dirties_only_its_part(app):
    core = app.core
    mac = "02:00:00:60:00:99"
    app.on_packet_in(_punt("ap3", 1, mac, "10.60.0.99"))
    assert app.learned[mac]["ipv4"] == "10.60.0.99" and mac in app.keys
    assert core.dirty == {APP: {mac}}
    assert core.saved[f"{APP}.runtime"]["keys"][mac] == app.keys[mac]
    assert len(set(app.keys.values())) == len(app.keys)
    core.run()
    assert core.computed[-1] == (APP, 1)
    nac = core.merged()["nac1"]
    assert any(f.match.get("tunnel_id") == app.keys[mac] for f in nac.flows.values())
    # a frame from an unknown MAC without an address, a foreign punt, a malformed one: nothing learned
    app.on_packet_in(_punt("td1", 1, "02:00:00:60:00:98", "10.60.0.98"))
    bad = _punt("ap1", 2, "02:00:00:60:00:97", "10.60.0.97")
    app.on_packet_in(PacketIn(bad.switch, bad.in_port, bad.table, bad.cookie, bad.data[:20]))
    assert not {"02:00:00:60:00:98", "02:00:00:60:00:97"} & set(app.learned)
    assert app.counters["packet_in_ignored"] == 1 and app.counters["packet_in_bad"] == 1


def test_registration_tries_one_part_and_keys_follow_pins(app, topo):
    core = app.core
    c4, c1 = topo.hosts["c4"].mac, topo.hosts["c1"].mac
    key4 = app.keys[c4]
    core.computed.clear()
    got = rest(app._put_client, Client(name="dave", policy="contractor"), client=c4)
    assert (got["policy"], got["key"]) == ("contractor", key4)
    assert core.part_switches[APP].keys() >= {SHARED, c4}
    # a new client registered over REST: its part only, its key planned when trying is the one it keeps
    new = "02:00:00:70:00:05"
    got = rest(app._put_client, Client(policy="staff", ipv4="10.60.7.5"), client=new)
    assert got["key"] == app.keys[new] and core.saved[f"{APP}.runtime"]["keys"][new] == got["key"]
    assert any(f.match.get("tunnel_id") == got["key"] for f in core.merged()["nac2"].flows.values())
    # pinning c1's key on c4 moves c1 to a new key (both parts), nobody else
    others = {m: k for m, k in app.keys.items() if m not in (c1, c4)}
    old1 = app.keys[c1]
    rest(app._put_client, Client(name="dave", policy="contractor", key=old1), client=c4)
    assert app.keys[c4] == old1 and app.keys[c1] != old1
    assert {m: k for m, k in app.keys.items() if m not in (c1, c4)} == others
    assert len(set(app.keys.values())) == len(app.keys)
    stage1 = {f.match.get("tunnel_id"): f.match.get("eth_src") for f in core.merged()["nac1"].flows.values()
              if f.match.get("reg0") == 0 and f.match.get("tunnel_id")}
    assert stage1[old1] == c4 and stage1[app.keys[c1]] == c1
    # a policy's meters change: the shared part and that policy's clients
    data = app.intent.model_dump(mode="json", exclude_none=True)
    data["policies"]["guest"]["rate_kbps"] = 8000
    assert app._policy_parts(data, "guest") == {SHARED, topo.hosts["c2"].mac}


def test_many_new_clients_in_one_intent_get_the_keys_they_keep(app):
    core = app.core
    data = app.intent.model_dump(mode="json", exclude_none=True)
    macs = [f"02:70:00:{i >> 8:02x}:{i & 0xff:02x}:01" for i in range(300)]
    data["clients"].update({m: {"policy": "guest", "ipv4": f"10.60.{100 + (i >> 8)}.{i & 0xff}"}
                            for i, m in enumerate(macs)})
    candidate = CloudRouterIntent.model_validate(data)
    parts = app.parts(candidate)
    assert sum(isinstance(p, ClientPart) for p in parts) == len(macs)  # planned once, carried by the parts
    result = core.try_intent(app, candidate)
    core.commit_intent(app, candidate, result)
    assert len(set(app.keys.values())) == len(app.keys) and set(macs) <= set(app.keys)
    keys = {f.match.get("eth_src"): f.match.get("tunnel_id") for f in core.merged()["nac1"].flows.values()
            if f.match.get("reg0") == 0 and f.match.get("eth_src")}
    assert {m: keys[m] for m in macs} == {m: app.keys[m] for m in macs}
    assert core.saved[f"{APP}.runtime"]["keys"] == app.keys
    # the same with plain MACs as parts (as ``try_intent(app, c, parts={mac})`` hands them): the same keys
    view = core.view()
    plain = app.compute(view, candidate, macs[7])
    assert plain == app.compute(view, candidate, ClientPart(macs[7], app.keys[macs[7]]))


def test_nac_failure_is_tracked_by_the_hooks_and_dirties_the_shared_part(app):
    core = app.core
    r = app.roles
    for fc in r.fcs:  # every forwarder's tunnel to nac1 stops being LIVE (BFD): down in the view (a BFD link
        core.port(fc, r.fc_nac[fc]["nac1"], up=True, live=False)  # is up only while LIVE, tunnels too)
    assert core.view().down_ports == frozenset((fc, r.fc_nac[fc]["nac1"]) for fc in r.fcs)
    assert core.dirty == {APP: {SHARED}}
    assert app.failed == {"nac1"} and [e["event"] for e in app.history][-1:] == ["nac_failed"]
    core.computed.clear()
    core.run()
    assert core.computed == [(APP, 1)]
    for gid, g in core.merged()["svc"].groups.items():
        assert r.up_nac["nac1"] not in {a.port for b in g.buckets for a in b.actions}
    core.port(r.fcs[0], r.fc_nac[r.fcs[0]]["nac1"], up=True)
    assert app.failed == frozenset() and app.history[-1]["event"] == "nac_recovered"
    assert core.dirty == {APP: {SHARED}}
    # an AP's uplink going down moves that AP's clients (their TD), nothing else
    core.run()
    core.port("ap1", 100, up=False)
    at_ap1 = {m for m, loc in app.locations.current.items() if loc.switch == "ap1"}
    assert at_ap1 and core.dirty == {APP: at_ap1}
    # an access port deleted detaches its client: that client's part
    core.run()
    c3 = next(m for m, loc in app.locations.current.items() if (loc.switch, loc.port) == ("ap2", 1))
    core.port("ap2", 1, up=False, reason="delete")
    assert app.locations.where(c3) is None and core.dirty == {APP: {c3}}
    assert app.history[-1] == {**app.history[-1], "event": "detached", "client": c3}


def test_order_index_is_the_rank_of_the_ranking():
    for nacs in (("a",), ("nac1", "nac2"), ("x", "b", "m", "c")):
        orders = nac_orders(nacs)
        assert [order_index(o) for o in orders] == list(range(len(orders)))


def test_restart_with_saved_runtime_computes_the_same_state(app, topo):
    core = app.core
    app.observe(topo.hosts["c1"].mac, "ap2", 10, source="report")
    app.on_packet_in(_punt("ap3", 1, "02:00:00:60:00:99", "10.60.0.99"))
    core.run()
    again = FakeCore(topo, saved=core.saved)
    b = CloudRouter(fabric_core=again)
    again.run()
    assert b.keys == app.keys and b.learned == app.learned
    for sw, st in core.merged().items():
        assert again.merged()[sw].flows == st.flows and again.merged()[sw].groups == st.groups, sw
