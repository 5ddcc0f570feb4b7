"""Fenced clones: intent validation, and where packets go on the table simulator (fabric + fences)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.framework import cookies, pipeline
from ryu_apps.framework.app import FabricView, IntentError
from ryu_apps.framework.state import ActualState, SwitchState, diff
from ryu_apps.framework.topology import load
from ryu_apps.functions.fenced_clone.flows import (
    APP,
    K_FENCE_DROP,
    K_PORT_DROP,
    compute_fence,
    fence_cookie_mask,
)
from ryu_apps.functions.fenced_clone.intent import FencedCloneIntent
from ryu_apps.functions.fenced_clone.model import (
    fence_mac,
    intent_error_relative,
    link_local,
    resolve,
)
from tests import fakeswitch
from tests.fakeswitch import Fabric

TOPO = Path(__file__).resolve().parents[2] / "topologies" / "fenced_clone.yaml"
SHOP = ["web", "app", "db"]
A = {"name": "shop-a", "parent": SHOP, "members": [{"component": "web", "host": "aweb"},
                                                   {"component": "app", "host": "aapp"},
                                                   {"component": "db", "ipv4": "10.0.1.13", "ipv6": "fd00:fc::1:13"}]}
B = {"name": "shop-b", "parent": SHOP, "members": [{"component": "web", "host": "bweb"},
                                                   {"component": "db", "host": "bdb"}],
     "egress": {"policy": "allow", "to": ["10.0.0.0/16", "fd00:fc::/64"]}}
C = {"name": "wiki-c", "parent": ["wfe", "wdb"], "members": [{"component": "wfe", "host": "cwfe"},
                                                             {"component": "wdb", "host": "cwdb"}]}


@pytest.fixture(scope="module")
def topo():
    return load(TOPO)


@pytest.fixture(autouse=True)
def _metadata_aware_walk(monkeypatch):
    """tests/fakeswitch.py does not apply write_metadata; the fence needs it (goto carries it)."""
    original = fakeswitch._walk

    def walk(state, table, pkt, hit):
        if hit and hit[-1].write_metadata is not None and hit[-1].goto == table:
            value, mask = hit[-1].write_metadata
            pkt = dict(pkt, metadata=(pkt.get("metadata", 0) & ~mask) | value)
        return original(state, table, pkt, hit)

    monkeypatch.setattr(fakeswitch, "_walk", walk)


def intent(*fences, **kw):
    return FencedCloneIntent.model_validate({"fences": list(fences), **kw})


def network(topo, *fences):
    """Fabric + fences merged per switch, as the core does (pipeline checked)."""
    states = {n: SwitchState() for n in topo.switches}
    for n, st in compute_fabric(FabricView(topo), FabricIntent()).items():
        states[n].merge(st, "fabric")
    for f in resolve(topo, intent(*fences)):
        for n, st in compute_fence(f, 50).items():
            states[n].merge(st, APP)
    return Fabric(topo, states), states


def udp(topo, host, dst, src=None, **kw):
    h = topo.hosts[host]
    v6 = ":" in dst
    pkt = {"eth_src": h.mac, "eth_dst": "02:00:00:00:00:99", "vlan_vid": 0,
           "eth_type": 0x86DD if v6 else 0x0800, "ip_proto": 17}
    if v6:
        pkt.update(ipv6_src=src or str(h.ipv6.ip), ipv6_dst=dst)
    else:
        pkt.update(ipv4_src=src or str(h.ipv4.ip), ipv4_dst=dst)
    pkt.update(kw)
    return pkt


def ends(fab, host, pkt):
    return [(e[0], e[1]) for e in fab.send(host, pkt)]


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize("fence,field,status,words", [
    ({"name": "x", "parent": ["web", "nope"]}, "fences[0].parent[1]", 422, "unknown component"),
    ({"name": "x", "parent": ["web", "web"]}, "fences[0].parent[1]", 422, "listed twice"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "cache", "host": "aweb"}]},
     "fences[0].members[0].component", 422, "unknown component"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "host": "nohost"}]},
     "fences[0].members[0].host", 422, "unknown host"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "ipv4": "10.0.77.1"}]},
     "fences[0].members[0].ipv4", 422, "not the address of a declared host"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "host": "aweb", "ipv6": "fd00:fc::2:11"}]},
     "fences[0].members[0].ipv6", 422, "belongs to host bweb"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "host": "db"}]},
     "fences[0].members[0].host", 409, "component of the parent"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "host": "aweb"},
                                               {"component": "web", "host": "bweb"}]},
     "fences[0].members[1].component", 422, "already has a clone"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "host": "aweb"},
                                               {"component": "app", "host": "aweb"}]},
     "fences[0].members[1].host", 409, "already the clone of web"),
])
def test_bad_fences_name_the_field(topo, fence, field, status, words):
    with pytest.raises(IntentError) as err:
        resolve(topo, intent(fence))
    assert err.value.field == field and err.value.status == status and words in str(err.value), str(err.value)


def test_overlaps_between_fences_are_conflicts(topo):
    with pytest.raises(IntentError) as err:
        resolve(topo, intent(A, {"name": "a2", "parent": SHOP, "members": [{"component": "db", "host": "adb"}]}))
    assert err.value.status == 409 and err.value.field == "fences[1].members[0].host"
    assert "already a clone in fence 'shop-a'" in str(err.value)
    with pytest.raises(IntentError) as err:
        resolve(topo, intent(A, {"name": "shop-a", "parent": SHOP}))
    assert err.value.status == 409 and err.value.field == "fences[1].name"
    with pytest.raises(IntentError) as err:  # a clone cannot be another fence's parent
        resolve(topo, intent(A, {"name": "cc", "parent": ["aweb"], "members": [{"component": "aweb",
                                                                                "host": "bweb"}]}))
    assert err.value.status == 409 and err.value.field == "fences[1].parent[0]"


@pytest.mark.parametrize("body,loc", [
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "ipv4": "10.0.1.300"}]}, "ipv4"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "ipv4": "fd00::1"}]}, "ipv4"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web", "ipv6": "10.0.1.1"}]}, "ipv6"),
    ({"name": "x", "parent": SHOP, "members": [{"component": "web"}]}, "members"),
    ({"name": "Bad Name", "parent": SHOP}, "name"),
    ({"name": "x", "parent": []}, "parent"),
    ({"name": "x", "parent": SHOP, "egress": {"policy": "deny", "to": ["10.0.0.0/8"]}}, "egress"),
    ({"name": "x", "parent": SHOP, "egress": {"policy": "allow", "to": ["10.0.0.1/8"]}}, "egress"),
    ({"name": "x", "parent": SHOP, "colour": "red"}, "colour"),
])
def test_malformed_bodies_rejected_by_the_model(body, loc):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        FencedCloneIntent.model_validate({"fences": [body]})
    assert loc in ".".join(str(p) for p in err.value.errors()[0]["loc"])


def test_error_fields_relative_to_one_fence():
    e = intent_error_relative(IntentError("fences[3].members[1].ipv4: bad", "fences[3].members[1].ipv4"), 3)
    assert e.field == "members[1].ipv4" and str(e) == "members[1].ipv4: bad"


def test_guards_cover_protected_addresses_inside_the_allowed_prefixes(topo):
    fences = {f.name: f for f in resolve(topo, intent(A, B, C))}
    guards = {str(a) for a in fences["shop-b"].guards}
    # app is not cloned in b; clone a's members are another clone of the same parent
    assert guards == {"10.0.0.12", "fd00:fc::12", "10.0.1.11", "10.0.1.12", "10.0.1.13",
                      "fd00:fc::1:11", "fd00:fc::1:12", "fd00:fc::1:13"}
    assert fences["shop-a"].guards == () and fences["wiki-c"].guards == ()  # deny: nothing to guard


# -- the flows -------------------------------------------------------------------------


def test_flows_fit_the_pipeline_and_carry_the_fence_cookie(topo):
    for f in resolve(topo, intent(A, B, C)):
        for st in compute_fence(f, 50).values():
            for flow in st.flows.values():
                pipeline.check_flow(APP, flow)
                assert flow.cookie & fence_cookie_mask() == cookies.make(APP, 0, f.fid)


def test_computation_is_deterministic(topo):
    for f in resolve(topo, intent(A, B)):
        a, b = compute_fence(f, 50), compute_fence(f, 50)
        for sw in a:
            assert a[sw].flows == b[sw].flows and diff(b[sw], ActualState.of(a[sw])).empty


def test_translation_both_ways(topo):
    fab, _ = network(topo, A, B, C)
    for dst, clone_dst, src in (("10.0.0.13", "10.0.1.13", "10.0.0.11"), ("fd00:fc::13", "fd00:fc::1:13", "fd00:fc::11")):
        out = ends(fab, "aweb", udp(topo, "aweb", dst))
        key = "ipv6" if ":" in dst else "ipv4"
        assert [(w, p[f"{key}_src"], p[f"{key}_dst"]) for w, p in out] == [("host:adb", src, clone_dst)]
        # adb answers web's parent address: aweb sees db's parent address
        back = ends(fab, "adb", udp(topo, "adb", src))
        assert [(w, p[f"{key}_src"], p[f"{key}_dst"]) for w, p in back] == \
            [("host:aweb", dst, str(getattr(topo.hosts["aweb"], key).ip))]
    # clone b: the same parent address, its own db
    out = ends(fab, "bweb", udp(topo, "bweb", "10.0.0.13"))
    assert [(w, p["ipv4_src"]) for w, p in out] == [("host:bdb", "10.0.0.11")]
    # another application's clone
    out = ends(fab, "cwfe", udp(topo, "cwfe", "10.0.5.22"))
    assert [(w, p["ipv4_src"], p["ipv4_dst"]) for w, p in out] == [("host:cwdb", "10.0.5.21", "10.0.6.22")]


def test_parent_traffic_untouched(topo):
    fab, _ = network(topo, A, B, C)
    out = ends(fab, "web", udp(topo, "web", "10.0.0.13"))
    assert [(w, p["ipv4_src"], p["ipv4_dst"]) for w, p in out] == [("host:db", "10.0.0.11", "10.0.0.13")]
    _, states = network(topo, A, B, C)
    h = topo.hosts["web"]
    (first_hop,) = fakeswitch.run(states[h.switch], udp(topo, "web", "10.0.0.13"), h.port)
    assert not any(cookies.decode(fl.cookie).app == APP for fl in first_hop.flows), first_hop.flows


@pytest.mark.parametrize("sender,changes,why", [
    ("aweb", dict(ipv4_src="10.0.0.11"), "spoofed parent source"),
    ("aweb", dict(ipv4_src="10.0.1.12"), "spoofed peer source"),
    ("aweb", dict(eth_src="02:fc:00:00:00:11"), "spoofed parent MAC"),
    ("aweb", dict(vlan_vid=0x1000 | 10), "tagged"),
    ("aweb", dict(ipv4_dst="10.0.2.13"), "another clone"),
    ("aweb", dict(ipv4_dst="10.0.9.9"), "outside, denied"),
    ("aweb", dict(ipv4_dst="255.255.255.255", eth_dst="ff:ff:ff:ff:ff:ff"), "broadcast"),
    ("aweb", dict(ipv4_dst="224.0.0.1"), "multicast"),
    ("bweb", dict(ipv4_dst="10.0.0.12"), "parent component not cloned (guard)"),
    ("bweb", dict(ipv4_dst="10.0.1.13"), "another clone, egress allowed (guard)"),
    ("bweb", dict(ipv4_dst="10.0.255.255"), "subnet broadcast, egress allowed"),
    ("bweb", dict(ipv4_dst="224.0.0.251"), "multicast, egress allowed"),
])
def test_negative_matrix_on_the_simulator(topo, sender, changes, why):
    fab, _ = network(topo, A, B, C)
    dst = "10.0.0.13"
    assert [w for w, _ in ends(fab, sender, udp(topo, sender, dst))][0].startswith("host:"), "control"
    out = ends(fab, sender, udp(topo, sender, dst) | changes)
    assert [w for w, _ in out] == ["drop"], (why, out)


def test_drops_are_counted_by_the_fence_not_the_table_miss(topo):
    fab, states = network(topo, A)
    h = topo.hosts["aweb"]
    spoofed = fakeswitch.run(states[h.switch], udp(topo, "aweb", "10.0.0.13", src="10.0.0.11"), h.port)
    assert spoofed[0].kind == "drop" and cookies.decode(spoofed[0].flows[-1].cookie).kind == K_PORT_DROP
    other = fakeswitch.run(states[h.switch], udp(topo, "aweb", "10.0.2.13"), h.port)
    assert other[0].kind == "drop" and cookies.decode(other[0].flows[-1].cookie).kind == K_FENCE_DROP


def test_egress_allowed_leaves_with_the_clone_address(topo):
    fab, _ = network(topo, B)
    out = ends(fab, "bweb", udp(topo, "bweb", "10.0.9.9"))
    assert [(w, p["ipv4_src"]) for w, p in out] == [("host:ext", "10.0.2.11")]
    out = ends(fab, "bweb", udp(topo, "bweb", "fd00:fc::9:9"))
    assert [(w, p["ipv6_src"]) for w, p in out] == [("host:ext", "fd00:fc::2:11")]


def test_arp_and_nd_for_parent_addresses(topo):
    _, states = network(topo, A)
    h = topo.hosts["aweb"]
    arp = {"eth_src": h.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "vlan_vid": 0, "eth_type": 0x0806, "arp_op": 1,
           "arp_spa": "10.0.1.11", "arp_sha": h.mac, "arp_tpa": "10.0.0.13", "arp_tha": "00:00:00:00:00:00"}
    (out,) = fakeswitch.run(states[h.switch], arp, h.port)
    assert out.kind == "output" and out.port == h.port
    assert (out.packet["arp_op"], out.packet["arp_sha"], out.packet["arp_spa"]) == (2, topo.hosts["adb"].mac,
                                                                                     "10.0.0.13")
    spoofed = fakeswitch.run(states[h.switch], arp | {"arp_spa": "10.0.0.11"}, h.port)
    assert [o.kind for o in spoofed] == ["drop"]
    ns = {"eth_src": h.mac, "vlan_vid": 0, "eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135,
          "ipv6_src": "fd00:fc::1:11", "ipv6_dst": "ff02::1:ff00:13", "ipv6_nd_target": "fd00:fc::13"}
    (out,) = fakeswitch.run(states[h.switch], ns, h.port)
    assert out.kind == "controller" and cookies.decode(out.flows[-1].cookie).app == APP
    assert [f.meter for f in out.flows if f.meter] == [0x03000000 + h.port, 1]
    na = ns | {"icmpv6_type": 136, "ipv6_dst": "fd00:fc::13"}
    assert [o.kind for o in fakeswitch.run(states[h.switch], na, h.port)] == ["drop"]


def test_hairpin_to_own_parent_address(topo):
    _, states = network(topo, A)
    h = topo.hosts["aweb"]
    (out,) = fakeswitch.run(states[h.switch], udp(topo, "aweb", "10.0.0.11"), h.port)
    assert (out.kind, out.port, out.packet["ipv4_src"], out.packet["ipv4_dst"]) == \
        ("output", h.port, "10.0.0.11", "10.0.1.11")


def test_member_removal_and_fence_deletion_touch_only_that_fence(topo):
    with_b = {f.name: f for f in resolve(topo, intent(A, B))}
    a_only = {f.name: f for f in resolve(topo, intent(A))}
    assert with_b["shop-a"] == a_only["shop-a"]  # a deny fence does not depend on its siblings
    full = compute_fence(with_b["shop-b"], 50)
    fewer = compute_fence(resolve(topo, intent(A, B | {"members": B["members"][:1]}))[1], 50)
    assert set(fewer) < set(full)  # bdb's switch no longer holds shop-b at all


# -- IPv6 neighbour discovery and fence semantics (issue 9, section 2) --------------------------

X = {"name": "mix", "parent": ["db", "wdb"],  # two members on one switch (s1), egress allowed to ext
     "members": [{"component": "db", "host": "bdb"}, {"component": "wdb", "host": "cwdb"}],
     "egress": {"policy": "allow", "to": ["10.0.9.0/24", "fd00:fc::9:0/112"]}}


def ns(topo, host, target, src=None, dst=None):
    h = topo.hosts[host]
    t = ipaddress.ip_address(target).packed
    snm = dst or str(ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + t[-3:]))
    return {"eth_src": h.mac, "eth_dst": "33:33:ff:00:00:01", "vlan_vid": 0, "eth_type": 0x86DD, "ip_proto": 58,
            "icmpv6_type": 135, "ipv6_src": src or str(h.ipv6.ip), "ipv6_dst": snm, "ipv6_nd_target": target}


def first(states, topo, host, pkt):
    h = topo.hosts[host]
    return fakeswitch.run(states[h.switch], pkt, h.port)


@pytest.mark.parametrize("src", ["fd00:fc::99", "fd00:fc::11", "fd00:fc::1:12", "fd00:fc::5:22", "fe80::1"])
def test_ns_with_any_foreign_source_is_dropped_at_the_clone_port(topo, src):
    """The issue's repro: IPv6(src=<other>, dst=<parent db>)/NS(tgt=<clone db's own address>)."""
    _, states = network(topo, A)
    out = first(states, topo, "aweb", ns(topo, "aweb", "fd00:fc::1:13", src=src, dst="fd00:fc::13"))
    assert [o.kind for o in out] == ["drop"] and cookies.decode(out[0].flows[-1].cookie).kind == K_PORT_DROP


def test_ns_for_anything_but_parent_gateway_or_egress_is_never_forwarded(topo):
    fab, states = network(topo, A, B)
    ll = str(link_local(topo.hosts["aweb"].mac))
    for pkt in (ns(topo, "aweb", "fd00:fc::1:13", dst="fd00:fc::13"),      # a peer's own address, unicast
                ns(topo, "aweb", "fd00:fc::1:13", src=ll, dst="fd00:fc::13"),
                ns(topo, "aweb", "fd00:fc::2:13"),                           # another clone
                ns(topo, "aweb", "fe80::1"),                                 # link-local target
                ns(topo, "aweb", "fd00:fc::1:11", src="::"),                 # DAD for its own address
                ns(topo, "aweb", "fd00:fc::13", src="::")):                  # DAD for a parent address
        assert [w for w, _ in ends(fab, "aweb", pkt)] == ["drop"], pkt
    # own address and own link-local source: answered by the controller, as before
    for src in (None, ll):
        (o,) = first(states, topo, "aweb", ns(topo, "aweb", "fd00:fc::13", src=src))
        assert o.kind == "controller", src


def test_egress_nd_solicited_node_ns_is_answered_while_multicast_stays_blocked(topo):
    _, states = network(topo, A, B)
    (o,) = first(states, topo, "bweb", ns(topo, "bweb", "fd00:fc::9:9"))  # ext, inside fd00:fc::/64
    assert (o.kind, o.port, o.packet["icmpv6_type"], o.packet["ipv6_nd_tll"]) == \
        ("output", topo.hosts["bweb"].port, 136, topo.hosts["ext"].mac), o
    for guarded in ("fd00:fc::12", "fd00:fc::1:13"):  # a parent not cloned, clone a's db
        assert [x.kind for x in first(states, topo, "bweb", ns(topo, "bweb", guarded))] == ["drop"]
    fab, _ = network(topo, B)
    for dst in ("ff02::1", "ff02::1:ff09:9", "ff05::2"):
        assert [w for w, _ in ends(fab, "bweb", udp(topo, "bweb", dst))] == ["drop"], dst


def test_one_member_cannot_leave_with_another_members_address(topo):
    fab, _ = network(topo, X)
    assert topo.hosts["bdb"].switch == topo.hosts["cwdb"].switch
    # control: bdb's own egress leaves with its own address
    assert [(w, p["ipv6_src"]) for w, p in ends(fab, "bdb", udp(topo, "bdb", "fd00:fc::9:9"))] == \
        [("host:ext", "fd00:fc::2:13")]
    for pkt in (udp(topo, "bdb", "fd00:fc::9:9", src="fd00:fc::5:22"),                       # cwdb's parent address
                ns(topo, "bdb", "fd00:fc::77", src="fd00:fc::5:22", dst="fd00:fc::9:9"),      # ... in an NS
                ns(topo, "bdb", "fd00:fc::77", dst="fd00:fc::9:9"),                           # own source, unicast
                udp(topo, "bdb", "10.0.9.9", src="10.0.5.22")):
        assert [w for w, _ in ends(fab, "bdb", pkt)] == ["drop"], pkt


def test_block_in_unfenced_hosts_cannot_reach_a_clone_address(topo):
    fab, _ = network(topo, A, B)
    for sender in ("ext", "web", "db", "wfe"):
        for dst in ("10.0.1.11", "fd00:fc::1:11", "10.0.1.13"):         # clone a (egress denied)
            assert [w for w, _ in ends(fab, sender, udp(topo, sender, dst))] == ["drop"], (sender, dst)
    # clone b allows egress to the lab subnet: its peers there may answer (ext), the parents may not
    assert [w for w, _ in ends(fab, "ext", udp(topo, "ext", "10.0.2.11"))] == ["host:bweb"]
    assert [w for w, _ in ends(fab, "ext", udp(topo, "ext", "fd00:fc::2:11"))] == ["host:bweb"]
    for sender in ("web", "db", "app"):
        assert [w for w, _ in ends(fab, sender, udp(topo, sender, "10.0.2.11"))] == ["drop"], sender
    # fence traffic still arrives (it carries the fence's MAC)
    out = ends(fab, "aweb", udp(topo, "aweb", "10.0.0.13"))
    assert [(w, p["eth_src"]) for w, p in out] == [("host:adb", fence_mac(resolve(topo, intent(A))[0].fid))]


def test_fence_mac_never_collides_with_a_host(topo):
    f = resolve(topo, intent(A))[0]
    assert f.mac.startswith("fe:") and f.mac not in {h.mac for h in topo.hosts.values()}


# -- framework v2: one part per fence, pure compute, only the changed fences computed -----------


class FakeCore:
    """The core API the app uses, keeping per-part state like the framework (no os-ken, no switches)."""

    def __init__(self, topo):
        self.topology = topo
        self.tried: list = []                   # the parts of every try_intent (None: all)
        self.state: dict = {}                   # part -> {switch: SwitchState}

    def load_intent(self, name):
        return None

    def register(self, app):
        self.app = app

    def view(self):
        return FabricView(self.topology)

    def try_intent(self, app, candidate, parts=None):
        from ryu_apps.framework.core import Candidate

        self.tried.append(None if parts is None else set(parts))
        current = set(app.parts(candidate))
        targets = current if parts is None else set(parts) & current
        removed = (set(self.state) - current) if parts is None else {p for p in parts if p not in current}
        layers, wrote = {}, {}
        for part in targets:
            states = app.compute(self.view(), candidate, part)
            for switch, st in states.items():
                layers.setdefault(switch, {})[(app.APP_NAME, part)] = st
            for switch in self.state.get(part, {}):
                layers.setdefault(switch, {}).setdefault((app.APP_NAME, part), None)
            wrote[part] = states
        for part in removed:
            for switch in self.state.get(part, {}):
                layers.setdefault(switch, {})[(app.APP_NAME, part)] = None
            wrote[part] = None
        return Candidate(app.APP_NAME, layers, wrote, 0.0, len(targets))

    def commit_intent(self, app, candidate, result):
        app.intent = candidate
        for part, states in result.wrote.items():
            if states is None:
                self.state.pop(part, None)
            else:
                self.state[part] = states
        return sorted(result.layers)

    def desired_state(self, switch):
        out = SwitchState()
        for states in self.state.values():
            if switch in states:
                out.merge(states[switch])
        return out

    def is_connected(self, switch):
        return False

    def wait_applied(self, switches, timeout):
        return {}


@pytest.fixture
def app(topo):
    from ryu_apps.fenced_clone import FencedClone

    core = FakeCore(topo)
    a = FencedClone(fabric_core=core)
    core.commit_intent(a, a.intent, core.try_intent(a, a.intent))  # the first full recompute
    core.tried.clear()
    return a


def rest(app, handler, body=None, **params):
    """Call a REST handler as the REST layer does (the body validated by the route's model)."""
    from ryu_apps.framework.rest import Request
    from ryu_apps.functions.fenced_clone.intent import FenceSpec, MemberSpec

    model = {"_create": FenceSpec, "_add_member": MemberSpec}.get(handler)
    body = model.model_validate(body) if model else body
    got = getattr(app, handler)(Request("X", "/", params, {}, body))
    return got if isinstance(got, tuple) else (200, got)


def merged(states_by_part) -> dict:
    out = {}
    for states in states_by_part:
        for switch, st in states.items():
            out.setdefault(switch, SwitchState()).merge(st)
    return out


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[s].flows == b[s].flows and a[s].meters == b[s].meters for s in a)


def test_one_part_per_fence_and_their_union_is_the_whole(topo, app):
    from ryu_apps.fenced_clone import CHECK

    it = intent(A, B, C)
    assert set(app.parts(it)) == {CHECK, "shop-a", "shop-b", "wiki-c"}
    view = FabricView(topo)
    parts = {p: app.compute(view, it, p) for p in app.parts(it)}
    assert parts[CHECK] == {}
    old = merged(compute_fence(f, 50) for f in resolve(topo, it))  # v1: every fence at once
    assert same(merged(parts.values()), old) and same(app.compute(view, it), old)
    for f in resolve(topo, it):  # each part is exactly its fence, with its guards
        assert same(parts[f.name], compute_fence(f, 50))


def test_compute_is_pure(topo, app):
    import copy

    it = intent(A, B, C)
    dump, before = it.model_dump(), copy.copy(vars(app))
    for p in app.parts(it):
        app.compute(FabricView(topo), it, p)
    assert it.model_dump() == dump
    assert vars(app).keys() == before.keys() and all(vars(app)[k] is v for k, v in before.items())
    assert not any(k.startswith(("_cache", "_resolved", "_by_")) for k in vars(app)), sorted(vars(app))


def test_no_view_input_so_port_events_recompute_no_fence(topo, app):
    from ryu_apps.framework.view import PortChange, SwitchChange

    assert app.INPUTS == frozenset()
    h = topo.hosts["aweb"]
    view = FabricView(topo, down_ports=frozenset({(h.switch, h.port)}), dead_switches=frozenset({"s2"}))
    it = intent(A, B)
    for p in app.parts(it):  # the flows do not change with the view ...
        assert same(app.compute(view, it, p), app.compute(FabricView(topo), it, p)), p
    # ... so a change of one touches no part
    assert app.parts_changed(view, it, PortChange(h.switch, h.port, "modify", False, False, False, True)) == set()
    assert app.parts_changed(view, it, SwitchChange("s2", "dead")) == set()


def test_the_check_part_refuses_a_whole_intent_with_conflicts(topo, app):
    from ryu_apps.fenced_clone import CHECK

    bad = intent(A, {"name": "a2", "parent": SHOP, "members": [{"component": "db", "host": "adb"}]})
    assert app.compute(FabricView(topo), bad, "a2")  # on its own, the fence resolves ...
    with pytest.raises(IntentError) as err:  # ... the whole intent does not
        app.compute(FabricView(topo), bad, CHECK)
    assert err.value.status == 409 and err.value.field == "fences[1].members[0].host"


def test_rest_changes_compute_only_the_fences_they_change(topo, app):
    core = app.core
    steps = [
        ("_create", B, {}, {"shop-b"}),                         # shop-a denies egress: no guard to update
        ("_create", C, {}, {"wiki-c"}),
        ("_remove_member", None, {"name": "shop-a", "component": "app"}, {"shop-a", "shop-b"}),  # b guards a's
        ("_add_member", {"component": "app", "host": "aapp"}, {"name": "shop-a"}, {"shop-a", "shop-b"}),
        ("_remove_member", None, {"name": "wiki-c", "component": "wfe"}, {"wiki-c"}),
        ("_delete", None, {"name": "shop-a"}, {"shop-a", "shop-b"}),
        ("_delete", None, {"name": "wiki-c"}, {"wiki-c"}),
    ]
    for handler, body, params, parts in steps:
        core.tried.clear()
        status, answer = rest(app, handler, body, **params)
        assert status in (200, 201) and core.tried == [parts], (handler, params, core.tried)
        # what the parts hold equals a full recompute of the new intent
        full = app.compute(FabricView(topo), app.intent)
        assert same(merged(core.state.values()), full), (handler, params)
        if "flows" in answer:
            name = answer["name"]
            assert answer["flows"] == sum(len(st.flows) for st in core.state[name].values())
    # the list counts each fence's flows from the desired state
    (listed,) = rest(app, "_list")[1]
    assert listed["name"] == "shop-b" and listed["flows"] == sum(len(s.flows) for s in core.state["shop-b"].values())


def test_refused_rest_changes_compute_nothing(topo, app):
    from ryu_apps.framework.rest import ApiError

    core = app.core
    with pytest.raises(ApiError) as err:
        rest(app, "_create", {"name": "x", "parent": SHOP, "members": [{"component": "db", "host": "adb"}]})
    assert err.value.status == 409 and err.value.field == "members[0].host"
    assert core.tried == [] and [f.name for f in app.intent.fences] == ["shop-a"]


# -- one fence's change checked against an index of the others ---------------------------------


def _random_fence(rng, name):
    """A fence over the topology's hosts, often invalid or conflicting with others."""
    hosts = ["web", "app", "db", "wfe", "wdb", "aweb", "aapp", "adb", "bweb", "bapp", "bdb", "cwfe", "cwdb", "ext"]
    parent = rng.sample(hosts[:5] + rng.sample(hosts[5:], 1), rng.randint(1, 3))
    members = []
    for comp in rng.sample(parent, rng.randint(0, len(parent))):
        members.append({"component": comp, "host": rng.choice(hosts)})
    return {"name": name, "parent": parent, "members": members}


def test_index_admits_only_changes_the_whole_intent_checks_accept(topo):
    """Random creates, member changes and deletes: whenever the index admits a change, validating
    the whole changed intent passes; it admits every valid create and member change of these; and
    after each change it equals the index built from scratch."""
    import random

    from ryu_apps.functions.fenced_clone.intent import FenceSpec
    from ryu_apps.functions.fenced_clone.model import Directory, Index, validate

    rng = random.Random(7)
    d = Directory.of(topo)
    current = intent()
    index = Index.of(d, current)
    admitted = refused = 0
    for step in range(3000):
        names = [f.name for f in current.fences]
        kind = rng.choice(["create", "create", "modify", "delete"] if names else ["create"])
        fences = list(current.fences)
        if kind == "create":
            before, after = None, FenceSpec.model_validate(_random_fence(rng, rng.choice(["f1", "f2", "f3", "f4"])))
            if after.name in names:
                continue  # the REST layer refuses a taken name before validation
            fences.append(after)
        else:
            i = rng.randrange(len(fences))
            before = fences[i]
            if kind == "delete":
                after = None
                del fences[i]
            else:
                body = _random_fence(rng, before.name)
                after = FenceSpec.model_validate({**body, "parent": list(before.parent),
                                                  "members": [m for m in body["members"] if m["component"] in before.parent]})
                fences[i] = after
        candidate = current.model_copy(update={"fences": fences})
        try:
            validate(d, candidate)
            valid = True
        except IntentError:
            valid = False
        ok = index.admits(d, before, after)
        assert not ok or valid, (step, kind, before, after)
        assert ok or not valid, (step, kind, "a valid change the index should have admitted", before, after)
        if valid:
            index.update(d, before, after)
            current = candidate
            assert index == Index.of(d, current), step
            admitted += 1
        else:
            refused += 1
    assert admitted > 300 and refused > 300, (admitted, refused)


def test_rest_changes_check_only_the_changed_fence(topo, app, monkeypatch):
    """A REST change that is fine never runs the whole intent's checks; one that is not does, and
    is refused naming the field as before."""
    import ryu_apps.fenced_clone as mod
    from ryu_apps.framework.rest import ApiError

    calls = []
    real = mod.validate
    monkeypatch.setattr(mod, "validate", lambda d, it: calls.append(len(it.fences)) or real(d, it))
    assert rest(app, "_create", B)[0] == 201
    assert rest(app, "_create", C)[0] == 201
    assert rest(app, "_remove_member", None, name="wiki-c", component="wfe")[0] == 200
    assert rest(app, "_add_member", {"component": "wfe", "host": "cwfe"}, name="wiki-c")[0] == 201
    assert rest(app, "_delete", None, name="wiki-c")[0] == 200
    assert calls == []
    with pytest.raises(ApiError) as err:  # aweb is a clone in shop-a: no fence's parent component
        rest(app, "_create", {"name": "cc", "parent": ["aweb"], "members": [{"component": "aweb", "host": "cwfe"}]})
    assert (err.value.status, err.value.field, calls) == (409, "parent[0]", [3])
    with pytest.raises(ApiError) as err:  # aapp is a clone in shop-a already
        rest(app, "_add_member", {"component": "app", "host": "aapp"}, name="shop-b")
    assert (err.value.status, err.value.field, calls) == (409, "host", [3, 2])
    assert "already a clone in fence 'shop-a'" in err.value.message
    assert [f.name for f in app.intent.fences] == ["shop-a", "shop-b"]
