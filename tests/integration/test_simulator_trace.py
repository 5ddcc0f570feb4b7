"""The switch simulator against the real switch: ``ovs-appctl ofproto/trace`` on a diamond lab
running the fabric.

The desired state is computed in-process from the lab's topology (``compute_fabric`` plus the
core's table-miss drops and punt meter) and first shown to be exactly what every switch holds
(``flowdump.diff``: nothing missing, unexpected or different).  Then packets (every host pair,
IPv4 and IPv6, bridged and routed, ARP and ND for the gateway and for a host, spoofed and tagged
sources, an unknown destination, a TTL that expires) are walked hop by hop: at every switch the
simulator's verdict (output ports with the packet's dl_src, dl_dst, TTL and ARP fields at each,
punts, drop) must equal what ofproto/trace's datapath actions do.  A select group shows up in
the trace as ``hash(...),recirc(id)``; the test follows it with one trace per dp_hash value of
the group's hash table, so every bucket the datapath can pick is compared with the simulator's
forks.
"""

from __future__ import annotations

import re
from collections import deque

import pytest

from ovs_scripts import flowdump
from ryu_apps.fabric import FabricIntent, compute_fabric
from ryu_apps.framework import config, cookies, pipeline
from ryu_apps.framework.app import FabricView
from ryu_apps.framework.state import SwitchState
from ryu_apps.openflow import simulator
from ryu_apps.openflow.ofdata import FIELDS, Flow, Match, Meter, MeterBand
from tests.integration import conftest
from tests.integration.labtools import get

pytestmark = pytest.mark.integration
RMAC = FabricIntent().router_mac
ORDER = {name: i for i, name in enumerate(FIELDS)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "simtrace") as factory:
        yield factory("diamond.yaml")


def desired_states(topo) -> dict[str, SwitchState]:
    """What the controller should have put on every switch, computed here."""
    rate = config.get("packet-in-rate")
    miss = cookies.make("core", 1, 0)
    out = {}
    for name, st in compute_fabric(FabricView(topo), FabricIntent()).items():
        merged = SwitchState()
        for t in pipeline.PIPELINE:
            merged.add_flow(Flow(table=t.table_id, priority=0, match=Match(), cookie=miss), "core")
        merged.add_meter(Meter(meter_id=pipeline.PUNT_METER, unit="pktps",
                               bands=(MeterBand(rate=rate, burst_size=rate // 4 or 1),)))
        merged.merge(st, "fabric")
        out[name] = merged
    return out


def as_json(st: SwitchState) -> dict:
    return {"flows": [str(f) for f in st.flows.values()], "groups": [str(g) for g in st.groups.values()],
            "meters": [str(m) for m in st.meters.values()]}


# --- ofproto/trace ---------------------------------------------------------------------------


def flow_text(pkt: dict) -> str:
    """A simulator packet as an ofproto/trace flow (prerequisites first: ofdata's field order)."""
    parts = []
    for name in sorted(pkt, key=lambda n: ORDER.get(n, -1)):
        value = pkt[name]
        if name == "vlan_vid":
            parts.append(f"vlan_tci={value:#06x}")
        elif name == "eth_type":
            parts.append(f"dl_type={value:#06x}")
        else:
            parts.append(f"{FIELDS[name].ofctl}={value}")
    return ",".join(parts)


def split_top(text: str) -> list[str]:
    """``a(b,c),d`` -> ``['a(b,c)', 'd']``."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        cur += ch
    if cur:
        out.append(cur)
    return [x.strip() for x in out if x.strip()]


def _kv(inner: str) -> dict[str, str]:
    return {k: v.split("/")[0] for k, _, v in (p.partition("=") for p in split_top(inner))}


# datapath set() keys -> simulator field names
_SETS = {"eth": {"src": "eth_src", "dst": "eth_dst"},
         "ipv4": {"ttl": "nw_ttl", "src": "ipv4_src", "dst": "ipv4_dst"},
         "ipv6": {"hlimit": "nw_ttl", "src": "ipv6_src", "dst": "ipv6_dst"},
         "arp": {"sip": "arp_spa", "tip": "arp_tpa", "op": "arp_op", "sha": "arp_sha", "tha": "arp_tha"}}
COMPARED = ("eth_src", "eth_dst", "nw_ttl", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")


def key(kind: str, port, pkt: dict) -> tuple:
    vals = []
    for name in COMPARED:
        v = pkt.get(name)
        vals.append(None if v is None else simulator.from_int(name, simulator.as_int(name, v)))  # one spelling
    return (kind, port, *vals)


class Tracer:
    """ofproto/trace on the lab's switches, read as simulator-like verdicts."""

    def __init__(self, lab):
        self.lab = lab
        self.calls = 0
        sb = lab.sandbox(lab.plan.switch_sandbox[next(iter(lab.topology.switches))])
        bridges = {lab.topology.switches[s].bridge: s for s in lab.topology.switches}
        self.odp: dict[int, tuple[str, int]] = {}
        switch = None
        for line in sb.appctl("dpif/show").stdout.splitlines():
            head = re.match(r"^  (\S+):$", line)
            if head:
                switch = bridges.get(head.group(1))
                continue
            port = re.match(r"^\s+\S+ (\d+)/(\d+):", line)
            if port and switch is not None:
                self.odp[int(port.group(2))] = (switch, int(port.group(1)))

    def _trace(self, switch: str, flow: str) -> tuple[str, str]:
        bridge, _ = self.lab.switch_target(switch)
        sb = self.lab.sandbox(self.lab.plan.switch_sandbox[switch])
        self.calls += 1
        out = sb.appctl("ofproto/trace", bridge, flow).stdout
        actions = re.search(r"^Datapath actions: (.*)$", out, re.MULTILINE).group(1)
        final = re.search(r"^Final flow: (.*)$", out, re.MULTILINE).group(1)
        return actions, (flow if final == "unchanged" else final)

    def verdict(self, switch: str, pkt: dict, flow: str | None = None) -> set[tuple]:
        """The set of (kind, port, compared fields) of what the datapath does with ``pkt``."""
        actions, final = self._trace(switch, flow or flow_text(pkt))
        state = dict(pkt)
        got: set[tuple] = set()
        tokens = split_top(actions)
        for i, tok in enumerate(tokens):
            if tok.isdigit():
                sw, port = self.odp[int(tok)]
                assert sw == switch, (switch, tok)
                got.add(key("output", port, state))
            elif tok.startswith(("set(", "masked_set(")):
                inner = tok[tok.index("(") + 1:-1]
                proto, _, fields = inner.partition("(")
                for k, v in _kv(fields[:-1]).items():
                    name = _SETS.get(proto, {}).get(k)
                    if name is not None:
                        state[name] = int(v, 0) if name in ("nw_ttl", "arp_op") else v
            elif tok.startswith("userspace(") and "controller" in tok:
                got.add(("controller", None))
            elif tok.startswith("recirc("):
                rid = tok[len("recirc("):-1]
                assert tokens[i - 1].startswith("hash("), actions  # a select group (dp_hash), not ct
                for h in range(1, 17):
                    got |= self.verdict(switch, state, f"recirc_id={rid},dp_hash={h},{final}")
            elif tok == "drop" or tok.startswith(("hash(", "meter(")):
                continue
            else:
                raise AssertionError(f"{switch}: datapath action {tok!r} not understood ({actions})")
        return got


def simulated(one: simulator.Switch, pkt: dict) -> tuple[set[tuple], list[simulator.Outcome]]:
    outs = one.run(pkt)
    got = set()
    for o in outs:
        if o.kind == "output":
            got.add(key("output", o.port, o.packet))
        elif o.kind == "controller":
            got.add(("controller", None))
        else:
            assert o.kind == "drop", o
    return got, outs


# --- the test ------------------------------------------------------------------------------


def packets(topo):
    """(name, source host, packet) for the cross-check."""
    hosts = topo.hosts
    for s in hosts.values():
        base = {"eth_src": s.mac, "vlan_vid": 0}
        for d in hosts.values():
            if d is s:
                continue
            routed = s.ipv4.network != d.ipv4.network
            for fam in (4, 6):
                l3 = {"eth_type": 0x0800, "ipv4_src": str(s.ipv4.ip), "ipv4_dst": str(d.ipv4.ip)} if fam == 4 else \
                    {"eth_type": 0x86DD, "ipv6_src": str(s.ipv6.ip), "ipv6_dst": str(d.ipv6.ip)}
                pkt = {**base, "eth_dst": RMAC if routed else d.mac, **l3, "ip_proto": 6, "tcp_src": 40001,
                       "tcp_dst": 80, "nw_ttl": 64}
                yield f"{s.name}->{d.name} v{fam}", s.name, pkt, d.name
                if not routed:  # the same subnet, sent to the router MAC: routed all the same
                    yield f"{s.name}->{d.name} v{fam} via router MAC", s.name, {**pkt, "eth_dst": RMAC}, d.name
        for target in (str(s.gateway4), str(next(h for h in hosts.values() if h is not s).ipv4.ip)):
            yield f"{s.name} ARP who-has {target}", s.name, {
                **base, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806, "arp_op": 1, "arp_spa": str(s.ipv4.ip),
                "arp_tpa": target, "arp_sha": s.mac, "arp_tha": "00:00:00:00:00:00"}, s.name
        yield f"{s.name} ND for its gateway", s.name, {
            **base, "eth_dst": "33:33:ff:00:00:fe", "eth_type": 0x86DD, "ipv6_src": str(s.ipv6.ip),
            "ipv6_dst": "ff02::1:ff00:fe", "ip_proto": 58, "icmpv6_type": 135, "icmpv6_code": 0,
            "ipv6_nd_target": str(s.gateway6), "nw_ttl": 255}, s.name
    h1, h2, h3 = hosts["h1"], hosts["h2"], hosts["h3"]
    routed = {"eth_src": h1.mac, "vlan_vid": 0, "eth_dst": RMAC, "eth_type": 0x0800, "ipv4_src": str(h1.ipv4.ip),
              "ipv4_dst": str(h2.ipv4.ip), "ip_proto": 17, "udp_src": 5000, "udp_dst": 53, "nw_ttl": 64}
    yield "spoofed IPv4 source", "h1", {**routed, "ipv4_src": str(h3.ipv4.ip)}, None
    yield "spoofed MAC source", "h1", {**routed, "eth_src": h3.mac}, None
    yield "tagged frame from a host", "h1", {**routed, "vlan_vid": 0x1007}, None
    yield "unknown destination", "h1", {**routed, "ipv4_dst": "10.2.2.99"}, None
    yield "TTL expires at the first hop", "h1", {**routed, "nw_ttl": 1}, None


def test_simulator_agrees_with_ofproto_trace(lab):
    topo = lab.topology
    desired = desired_states(topo)
    for name, st in desired.items():
        bridge, rundir = lab.switch_target(name)
        d = flowdump.diff(flowdump.dump(bridge, rundir), rundir, as_json(st))
        assert d.identical, (name, d.to_json())
        rest = get(lab, f"/v1/switches/{name}/desired")
        assert {k: sorted(v) for k, v in rest.items()} == {k: sorted(v) for k, v in as_json(st).items()}, name

    tracer = Tracer(lab)
    switches = {n: simulator.Switch(st) for n, st in desired.items()}
    peer = {}
    for ln in topo.links:
        peer[(ln.a, ln.a_port)] = (ln.b, ln.b_port)
        peer[(ln.b, ln.b_port)] = (ln.a, ln.a_port)
    host_at = {(h.switch, h.port): n for n, h in topo.hosts.items()}
    hops = forks = 0
    for what, src, pkt, dst in packets(topo):
        h = topo.hosts[src]
        queue = deque([(h.switch, dict(pkt, in_port=h.port))])
        reached = set()
        while queue:
            sw, p = queue.popleft()
            hops += 1
            assert hops < 2000
            want, outs = simulated(switches[sw], p)
            got = tracer.verdict(sw, p)
            assert got == want, f"{what} at {sw} in_port {p['in_port']}:\n trace {sorted(got, key=str)}\n " \
                                f"simulator {sorted(want, key=str)}\n {[str(o) for o in outs]}"
            forks += len({o.choices for o in outs}) > 1
            for o in outs:
                if o.kind != "output":
                    continue
                if (sw, o.port) in host_at:
                    reached.add(host_at[(sw, o.port)])
                else:
                    nxt, nport = peer[(sw, o.port)]
                    nxt_pkt = {k: v for k, v in o.packet.items() if k not in simulator.PIPELINE_FIELDS}
                    queue.append((nxt, dict(nxt_pkt, in_port=nport)))
        assert reached == ({dst} if dst else set()), (what, reached)
    print(f"simulator == ofproto/trace: {hops} switch hops, {forks} select forks, {tracer.calls} traces")
    assert forks >= 4  # the ECMP groups were really compared bucket by bucket
