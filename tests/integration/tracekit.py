"""The switch simulator against ``ovs-appctl ofproto/trace``, for any lab (the shared part).

What every cross-check does (``tests/integration/test_simulator_trace*.py``):

1. :func:`desired_states`: each switch's desired state as the running controller serves it
   (``GET /v1/switches/<s>/desired``, ofdata's own text), proven identical to what the switch
   holds (``flowdump.diff``), and read back into ofdata objects (:func:`parse_state`; that the
   reading is exact, ``parse(str(x)) == x``, is a unit test over every app's computed output);
2. :class:`Tracer`: ``ofproto/trace`` of a packet on the switch, its datapath actions read as
   verdicts shaped like the simulator's (:func:`key`): output port (tunnel ports too, from a
   userspace datapath's ``tnl_push``) or a punt, with the compared header fields at that point;
   a select group's ``hash(..),recirc(id)`` is followed with one trace per dp_hash value, so
   every bucket the datapath can pick is compared with the simulator's forks;
3. :class:`Walk`: packets walked hop by hop across the lab's links and tunnels
   (:meth:`simulator.Fabric.cross`), the simulator's verdict compared with the trace's at every
   switch, and where each copy ended.

The pure parts (text to ofdata, datapath actions to verdicts) have unit tests in
``tests/unit/test_tracekit.py``.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ovs_scripts import flowdump
from ovs_scripts.flowdump import kv
from ryu_apps.openflow import simulator
from ryu_apps.openflow.ofdata import (
    FIELDS,
    OFPCML_NO_BUFFER,
    OFPP_ALL,
    OFPP_ANY,
    OFPP_CONTROLLER,
    OFPP_FLOOD,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    OFPP_NORMAL,
    OFPP_TABLE,
    Bucket,
    Ct,
    DecTtl,
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    MeterBand,
    Output,
    PopVlan,
    PushVlan,
    RawAction,
    RegMove,
    Resubmit,
    SetField,
    port_name,
)

ORDER = {name: i for i, name in enumerate(FIELDS)}

# ---------------------------------------------------------------------------------------------
# the controller's desired text -> ofdata (the inverse of ofdata's __str__)

#: ovs-ofctl field names (match and move spellings) -> ofdata names
_BY_OFCTL = {spec.ofctl: name for name, spec in FIELDS.items()}
_BY_OFCTL.update({spec.ofctl_move: name for name, spec in FIELDS.items()})
_PORTS = {port_name(p): p for p in (OFPP_IN_PORT, OFPP_TABLE, OFPP_NORMAL, OFPP_FLOOD, OFPP_ALL,
                                    OFPP_CONTROLLER, OFPP_LOCAL, OFPP_ANY)}
_FLOW_FLAGS = {"send_flow_rem": 1, "check_overlap": 2, "reset_counts": 4, "no_packet_counts": 8,
               "no_byte_counts": 16}
_SUB = re.compile(r"^(?P<f>[a-z_0-9]+)(\[(?P<lo>\d+)(\.\.(?P<hi>\d+))?\])?$")


def _port(text: str) -> int:
    return _PORTS[text] if text in _PORTS else int(text, 0)


def _field(ofctl: str) -> str:
    name = _BY_OFCTL.get(ofctl)
    if name is None:
        raise ValueError(f"unknown field {ofctl!r}")
    return name


def _value(name: str, text: str) -> Any:
    """A match or set_field value as :class:`ofdata.Match` takes it."""
    if name == "in_port":
        return _port(text)
    if FIELDS[name].kind == "int" and "/" not in text:
        return int(text, 0)
    return text  # addresses, prefixes and value/mask texts: Match parses them


def parse_match(text: str) -> Match:
    """``in_port=1,dl_type=0x0800,nw_dst=10.0.0.0/24`` -> Match."""
    if not text:
        return Match()
    fields = {}
    for k, v in kv.lenient_pairs(text):
        name = _field(k)
        fields[name] = _value(name, v)
    return Match(**fields)


def _sub(text: str) -> tuple[str, int, int | None]:
    m = _SUB.match(text)
    if m is None:
        raise ValueError(f"bad move operand {text!r}")
    name = _field(m["f"])
    if m["lo"] is None:
        return name, 0, None
    lo = int(m["lo"])
    return name, lo, (int(m["hi"]) if m["hi"] is not None else lo) - lo + 1


def _move(text: str) -> RegMove:
    src, _, dst = text.partition("->")
    (s, s_ofs, s_n), (d, d_ofs, d_n) = _sub(src), _sub(dst)
    n = s_n or d_n or FIELDS[s].move_bits
    return RegMove(s, d, n, s_ofs, d_ofs)


def _ct(text: str) -> Ct:
    args = dict(kv.lenient_pairs(text)) if text and text is not True else {}
    nat = args.get("nat")
    mark = None
    if "exec" in args:  # exec(set_field:0x3->ct_mark), the one nested action Ct models
        value, _, fld = str(args["exec"]).rpartition("->")
        if fld != "ct_mark" or not value.startswith("set_field:"):
            raise ValueError(f"unsupported ct exec({args['exec']})")
        mark = int(value[len("set_field:"):], 0)
    return Ct(commit="commit" in args, zone=int(args.get("zone", 0)),
              table=int(args["table"]) if "table" in args else None,
              nat=None if nat is None else ("" if nat is True else nat), mark=mark)


def parse_actions(text: str) -> dict[str, Any]:
    """An instruction text (``meter:1,set_field:..->..,group:5,write_metadata:..,goto_table:40``)
    -> ``{"actions": (...), "meter", "write_metadata", "goto"}`` (Flow keyword arguments)."""
    out: dict[str, Any] = {"actions": []}
    if text in ("", "drop"):
        return {**out, "actions": ()}
    acts = out["actions"]
    for k, v in kv.lenient_pairs(text):
        if k == "output":
            acts.append(Output(_port(v)))
        elif k == "controller":
            acts.append(Output(OFPP_CONTROLLER, OFPCML_NO_BUFFER if v is True else int(v, 0)))
        elif k == "group":
            acts.append(GroupAction(int(v, 0)))
        elif k == "set_field":
            value, _, fld = v.rpartition("->")
            name = _field(fld)
            acts.append(SetField(name, _value(name, value)))
        elif k == "dec_ttl":
            acts.append(DecTtl())
        elif k == "push_vlan":
            acts.append(PushVlan(int(v, 0)))
        elif k == "pop_vlan":
            acts.append(PopVlan())
        elif k == "move":
            acts.append(_move(v))
        elif k == "resubmit":
            port, _, table = v.partition(",")
            acts.append(Resubmit(int(table), _port(port) if port else OFPP_IN_PORT))
        elif k == "ct":
            acts.append(_ct(v))
        elif k == "raw":
            acts.append(RawAction(bytes.fromhex(v)))
        elif k == "meter":
            out["meter"] = int(v, 0)
        elif k == "write_metadata":
            value, _, mask = v.partition("/")
            out["write_metadata"] = (int(value, 0), int(mask, 0) if mask else (1 << 64) - 1)
        elif k == "goto_table":
            out["goto"] = int(v, 0)
        elif k == "drop":
            continue
        else:
            raise ValueError(f"unknown instruction {k!r} in {text!r}")
    out["actions"] = tuple(acts)
    return out


def parse_flow(line: str) -> Flow:
    """One flow of ``/v1/switches/<s>/desired`` (``str(Flow)``) -> Flow."""
    head, sep, actions = line.strip().partition(" actions=")
    if not sep:
        raise ValueError(f"no actions in {line!r}")
    info: dict[str, Any] = {"flags": 0}
    match = []
    for k, v in kv.lenient_pairs(head):
        if k in ("table", "priority", "idle_timeout", "hard_timeout"):
            info[k] = int(v, 0)
        elif k == "cookie":
            info[k] = int(v, 0)
        elif k in _FLOW_FLAGS and v is True:
            info["flags"] |= _FLOW_FLAGS[k]
        else:
            match.append(f"{k}={v}")
    return Flow(match=parse_match(",".join(match)), **info, **parse_actions(actions))


def parse_group(line: str) -> Group:
    """One group (``str(Group)``, ovs-ofctl add-group syntax) -> Group."""
    head, *buckets = line.strip().split(",bucket=")  # no action prints that text
    info = dict(kv.lenient_pairs(head))
    out = []
    for text in buckets:
        props, _, actions = text.partition("actions=")
        b: dict[str, Any] = {}
        for k, v in kv.lenient_pairs(props.rstrip(",")) if props.rstrip(",") else ():
            if k == "weight":
                b["weight"] = int(v, 0)
            elif k == "watch_port":
                b["watch_port"] = _port(v)
            elif k == "watch_group":
                b["watch_group"] = int(v, 0)
            else:
                raise ValueError(f"unknown bucket property {k!r} in {line!r}")
        acts = parse_actions(actions)
        if set(acts) != {"actions"}:
            raise ValueError(f"a bucket holds actions only: {text!r}")
        out.append(Bucket(actions=acts["actions"], **b))
    # (str() prints a weight only in select groups; elsewhere ofdata's default, 0, comes back)
    return Group(group_id=int(info["group_id"], 0), type=info.get("type", "all"), buckets=tuple(out))


def parse_meter(line: str) -> Meter:
    """One meter (``str(Meter)``, ovs-ofctl add-meter syntax) -> Meter."""
    head, _, bands_text = line.strip().partition(",bands=")
    words = head.split(",")
    meter_id = int(words[0].partition("=")[2], 0)
    unit = "kbps" if "kbps" in words else "pktps"
    bands, cur = [], None
    for k, v in kv.lenient_pairs(bands_text):
        if k == "type":
            cur = {}
            bands.append(cur)
        elif cur is not None and k in ("rate", "burst_size"):
            cur[k] = int(v, 0)
    return Meter(meter_id=meter_id, unit=unit, burst="burst" in words, stats="stats" in words,
                 bands=tuple(MeterBand(**b) for b in bands))


def parse_state(doc: dict):
    """A ``/v1/switches/<s>/desired`` document -> a simulator state (flows by key, groups, meters),
    flows in the document's order."""
    return simulator.state_of([parse_flow(t) for t in doc.get("flows", ())],
                              [parse_group(t) for t in doc.get("groups", ())],
                              [parse_meter(t) for t in doc.get("meters", ())])


def as_doc(st) -> dict:
    """A state as the controller's desired document (the inverse of :func:`parse_state`)."""
    return {"flows": [str(f) for f in sorted(st.flows.values(), key=lambda f: (f.table, -f.priority))],
            "groups": [str(g) for g in sorted(st.groups.values(), key=lambda g: g.group_id)],
            "meters": [str(m) for m in sorted(st.meters.values(), key=lambda m: m.meter_id)]}


def desired_states(lab, get, timeout: float = 15) -> dict[str, Any]:
    """Every switch's desired state from the running controller, proven identical to the switch.

    ``get(lab, path)`` is the tests' REST reader.  A state still moving (a recompute between the
    read and the dump) is read again, up to ``timeout`` seconds; then the difference fails the test.
    """
    out = {}
    for name in lab.topology.switches:
        bridge, rundir = lab.switch_target(name)
        deadline = time.monotonic() + timeout
        while True:
            doc = get(lab, f"/v1/switches/{name}/desired")
            d = flowdump.diff(flowdump.dump(bridge, rundir), rundir, doc)
            if d.identical:
                break
            assert time.monotonic() < deadline, (name, d.to_json())
            time.sleep(0.2)
        out[name] = parse_state(doc)
    return out


# ---------------------------------------------------------------------------------------------
# verdicts

#: header fields compared at every output and punt (simulator names)
COMPARED = ("eth_src", "eth_dst", "vlan_vid", "nw_ttl", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst",
            "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha", "icmpv6_type", "ipv6_nd_target", "ipv6_nd_tll")
#: compared too where the output is a tunnel port: what the far end receives (the key, the underlay
#: addresses), from the simulator's crossing of the tunnel and from the trace's encapsulation
TUNNEL_COMPARED = ("tunnel_id", "tun_ipv4_src", "tun_ipv4_dst")


def _norm(name: str, v: Any) -> Any:
    if v is None:
        return None
    if name == "vlan_vid":  # a tag's VID with the present bit, or 0: the one spelling both sides use
        v = simulator.as_int(name, v)
        return v & 0x1FFF if v & 0x1000 else 0
    return simulator.from_int(name, simulator.as_int(name, v))


def key(kind: str, port: int | None, pkt: dict, tunnel: bool = False) -> tuple:
    """One verdict: ``(kind, port, (field, value)...)`` with the compared fields the packet has."""
    names = COMPARED + (TUNNEL_COMPARED if tunnel else ())
    return (kind, port, *((n, _norm(n, pkt.get(n))) for n in names if pkt.get(n) is not None))


def show(verdicts) -> list[str]:
    out = []
    for v in sorted(verdicts, key=str):
        fields = ",".join(f"{n}={x}" for n, x in v[2:])
        out.append(f"{v[0]}:{v[1]} {fields}")
    return out


def simulated(one: simulator.Switch, pkt: dict, tunnel_ports=frozenset(),
              cross: Callable[[int, dict], tuple | None] | None = None) -> tuple[set[tuple], list]:
    """The simulator's verdicts for ``pkt`` (with ``in_port``) and its outcomes.  At a tunnel port
    the tunnel fields are the ones the far end receives (``cross(port, packet)``: the
    :meth:`simulator.Fabric.cross` of that output)."""
    outs = one.run(pkt)
    got = set()
    for o in outs:
        if o.kind == "output" and o.port in tunnel_ports and cross is not None:
            far = cross(o.port, o.packet)
            arrived = {n: far[2].get(n) for n in TUNNEL_COMPARED} if far is not None else {}
            got.add(key("output", o.port, {**o.packet, **arrived}, True))
        elif o.kind == "output":
            got.add(key("output", o.port, o.packet, o.port in tunnel_ports))
        elif o.kind == "controller":
            got.add(key("controller", None, o.packet))
        else:
            assert o.kind == "drop", o
    return got, outs


# ---------------------------------------------------------------------------------------------
# ofproto/trace: flows in, datapath actions out


class Untraceable(Exception):
    """A packet this comparison does not follow (conntrack, ...), with the reason."""


def flow_text(pkt: dict) -> str:
    """A simulator packet as an ofproto/trace flow (prerequisites first: ofdata's field order)."""
    parts = []
    vid = pkt.get("vlan_vid")
    for name in sorted((n for n in pkt if n in FIELDS), key=lambda n: ORDER[n]):
        value = pkt[name]
        if name == "vlan_vid":
            tci = simulator.as_int(name, value)
            if tci & 0x1000:
                tci |= simulator.as_int("vlan_pcp", pkt.get("vlan_pcp", 0)) << 13
            parts.append(f"vlan_tci={tci:#06x}")
        elif name == "vlan_pcp":
            if vid is None:
                raise Untraceable("vlan_pcp without vlan_vid")
        elif name == "eth_type":
            parts.append(f"dl_type={value:#06x}")
        elif isinstance(value, int) and FIELDS[name].hex:
            parts.append(f"{FIELDS[name].ofctl}={value:#x}")
        else:
            parts.append(f"{FIELDS[name].ofctl}={value}")
    if pkt.get("vlan_inner"):
        raise Untraceable("a second VLAN tag (ofproto/trace flows give one vlan_tci)")
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


def _inner(tok: str) -> str:
    return tok[tok.index("(") + 1:-1]


def _kv(inner: str) -> dict[str, str]:
    return {k: v.split("/")[0] for k, _, v in (p.partition("=") for p in split_top(inner))}


def _call(text: str) -> dict[str, str]:
    """``tnl_port(4),header(...),out_port(1)`` -> ``{'tnl_port': '4', 'header': '...', ...}``."""
    out = {}
    for p in split_top(text):
        name, _, rest = p.partition("(")
        out[name] = rest[:-1] if rest else ""
    return out


# datapath set() keys -> simulator field names
_SETS = {"eth": {"src": "eth_src", "dst": "eth_dst"},
         "ipv4": {"ttl": "nw_ttl", "src": "ipv4_src", "dst": "ipv4_dst"},
         "ipv6": {"hlimit": "nw_ttl", "src": "ipv6_src", "dst": "ipv6_dst"},
         "arp": {"sip": "arp_spa", "tip": "arp_tpa", "op": "arp_op", "sha": "arp_sha", "tha": "arp_tha"},
         "icmpv6": {"type": "icmpv6_type", "code": "icmpv6_code"},
         "icmp": {"type": "icmpv4_type", "code": "icmpv4_code"},
         "nd": {"target": "ipv6_nd_target", "sll": "ipv6_nd_sll", "tll": "ipv6_nd_tll"},
         "nd_ext": {"nd_reserved": "nd_reserved", "nd_options_type": "nd_options_type"},
         "tunnel": {"tun_id": "tunnel_id", "src": "tun_ipv4_src", "dst": "tun_ipv4_dst"},
         "tcp": {"src": "tcp_src", "dst": "tcp_dst"}, "udp": {"src": "udp_src", "dst": "udp_dst"}}


@dataclass
class Ports:
    """What the datapath's port numbers are, for one sandbox (``dpif/show``)."""

    odp: dict[int, tuple[str, int]] = field(default_factory=dict)      # odp port -> (switch, OpenFlow port)
    tunnels: dict[tuple[int, str], tuple[str, int]] = field(default_factory=dict)  # (odp, remote ip) -> ...
    others: set[int] = field(default_factory=set)                       # odp ports of no lab switch

    @classmethod
    def parse(cls, text: str, bridges: dict[str, str]) -> "Ports":
        """``dpif/show`` output; ``bridges``: bridge name -> switch name."""
        me = cls()
        switch = None
        for line in text.splitlines():
            head = re.match(r"^  (\S+):$", line)
            if head:
                switch = bridges.get(head.group(1))
                continue
            port = re.match(r"^\s+\S+ (\d+)/(\d+):(.*)$", line)
            if not port:
                continue
            ofp, odp, rest = int(port.group(1)), int(port.group(2)), port.group(3)
            if switch is None:
                me.others.add(odp)
                continue
            remote = re.search(r"remote_ip=([0-9.]+)", rest)
            if remote and re.search(r"\((vxlan|geneve|gre)", rest):
                me.tunnels[(odp, remote.group(1))] = (switch, ofp)
            else:
                me.odp[odp] = (switch, ofp)
        return me


def read_datapath(switch: str, actions: str, pkt: dict, ports: Ports, tunnel_ports=frozenset(),
                  recirc: Callable[[str, dict], set] | None = None) -> set[tuple]:
    """The verdicts of one ``Datapath actions:`` line for ``pkt`` entering ``switch``.

    ``recirc(id, state)``: the verdicts of the packet (as changed so far) recirculated with that
    id after a select group's ``hash(...)`` (one trace per dp_hash value); conntrack raises
    :class:`Untraceable`.
    """
    got: set[tuple] = set()
    _read(switch, split_top(actions), dict(pkt), ports, tunnel_ports, recirc, got, actions)
    return got


def _read(switch, tokens, state, ports: Ports, tunnel_ports, recirc, got, whole) -> None:
    encapsulated = False  # after a tnl_push: the rest of this list is the underlay's
    for i, tok in enumerate(tokens):
        if tok.isdigit():
            odp = int(tok)
            if encapsulated and odp not in ports.odp:
                continue  # the encapsulated packet leaving through the underlay bridge
            tun = (odp, state.get("tun_ipv4_dst"))
            if odp not in ports.odp and tun in ports.tunnels:  # a kernel datapath: set(tunnel(..)), the vport
                sw, port = ports.tunnels[tun]
                assert sw == switch, (switch, tok, whole)
                got.add(key("output", port, state, True))
                continue
            if odp not in ports.odp:
                raise AssertionError(f"{switch}: output to datapath port {odp}, on no lab switch ({whole})")
            sw, port = ports.odp[odp]
            assert sw == switch, (switch, tok, whole)
            got.add(key("output", port, state, port in tunnel_ports))
        elif encapsulated:
            if tok.startswith(("set(", "masked_set(")) or tok == "drop":
                continue
            raise AssertionError(f"{switch}: {tok!r} after a tnl_push not understood ({whole})")
        elif tok.startswith(("set(", "masked_set(")):
            proto, _, fields = _inner(tok).partition("(")
            names = _SETS.get(proto)
            if names is None:
                raise AssertionError(f"{switch}: datapath set of {proto!r} not understood ({whole})")
            for k, v in _kv(fields[:-1]).items():
                name = names.get(k)
                if name is not None:
                    state[name] = int(v, 0) if FIELDS[name].kind == "int" else v
        elif tok.startswith("push_vlan("):
            vals = _kv(_inner(tok))
            if state.get("vlan_vid") and simulator.as_int("vlan_vid", state["vlan_vid"]) & 0x1000:
                raise Untraceable("a second VLAN tag")
            state["vlan_vid"] = 0x1000 | int(vals.get("vid", "0"), 0)
            state["vlan_pcp"] = int(vals.get("pcp", "0"), 0)
        elif tok == "pop_vlan":
            state["vlan_vid"] = 0
            state.pop("vlan_pcp", None)
        elif tok.startswith("tnl_push("):
            call = _call(_inner(tok))
            header = _call(call["header"])
            remote = _kv(header["ipv4"])["dst"]
            tun = (int(call["tnl_port"]), remote)
            if tun not in ports.tunnels:
                raise AssertionError(f"{switch}: tunnel {tun} is no tunnel port of a lab switch ({whole})")
            sw, port = ports.tunnels[tun]
            assert sw == switch, (switch, tok, whole)
            vni = next((_kv(header[t])["vni"] for t in ("vxlan", "geneve") if t in header), None)
            outer = _kv(header["ipv4"])
            out = {**state, "tun_ipv4_src": outer["src"], "tun_ipv4_dst": outer["dst"]}
            if vni is not None:
                out["tunnel_id"] = int(vni, 0)
            got.add(key("output", port, out, True))
            encapsulated = True
        elif tok.startswith("clone("):
            _read(switch, split_top(_inner(tok)), dict(state), ports, tunnel_ports, recirc, got, whole)
        elif tok.startswith("userspace(") and "controller" in tok:
            got.add(key("controller", None, state))
        elif tok.startswith("ct("):
            raise Untraceable(f"conntrack in the datapath ({tok})")
        elif tok.startswith("recirc("):
            rid = _inner(tok)
            if i == 0 or not tokens[i - 1].startswith("hash("):
                raise Untraceable(f"recirculation not after a select group's hash ({whole})")
            if recirc is None:
                raise AssertionError(f"{switch}: a select group, and no way to follow it ({whole})")
            got |= recirc(rid, state)
        elif tok == "drop" or tok.startswith(("hash(", "meter(")):
            continue
        else:
            raise AssertionError(f"{switch}: datapath action {tok!r} not understood ({whole})")


def _reparsable(final: str) -> str:
    """A trace's ``Final flow`` as a flow ofproto/trace takes back: it prints UDP and SCTP ports as
    ``tp_src``/``tp_dst``, which its parser accepts for TCP only."""
    proto = final.split(",", 1)[0].rstrip("6")
    if proto in ("udp", "sctp"):
        final = re.sub(r"\btp_(src|dst)=", rf"{proto}_\1=", final)
    return final


class Tracer:
    """ofproto/trace on the lab's switches (each in its own sandbox: the root OVS or a node's),
    read as simulator-like verdicts."""

    def __init__(self, lab, dp_hashes: int = 16):
        self.lab = lab
        self.calls = 0
        self.dp_hashes = dp_hashes
        topo = lab.topology
        self.tunnel_ports = frozenset((ln.a, ln.a_port) for ln in topo.links if ln.kind != "veth") | \
            frozenset((ln.b, ln.b_port) for ln in topo.links if ln.kind != "veth")
        bridges = {topo.switches[s].bridge: s for s in topo.switches}
        self.ports: dict[str, Ports] = {}
        for sbname in sorted(set(lab.plan.switch_sandbox.values())):
            self.ports[sbname] = Ports.parse(lab.sandbox(sbname).appctl("dpif/show").stdout, bridges)

    def tunnels_of(self, switch: str) -> frozenset[int]:
        return frozenset(p for s, p in self.tunnel_ports if s == switch)

    def trace(self, switch: str, flow: str) -> tuple[str, str]:
        """(datapath actions, the final flow) of one trace."""
        bridge, _ = self.lab.switch_target(switch)
        sb = self.lab.sandbox(self.lab.plan.switch_sandbox[switch])
        self.calls += 1
        out = sb.appctl("ofproto/trace", bridge, flow).stdout
        actions = re.search(r"^Datapath actions: (.*)$", out, re.MULTILINE)
        assert actions, f"{switch}: no datapath actions in the trace of {flow}:\n{out}"
        final = re.search(r"^Final flow: (.*)$", out, re.MULTILINE).group(1)
        return actions.group(1), (flow if final == "unchanged" else _reparsable(final))

    def verdict(self, switch: str, pkt: dict, flow: str | None = None) -> set[tuple]:
        """The set of verdicts of what the datapath does with ``pkt`` (with ``in_port``)."""
        actions, final = self.trace(switch, flow or flow_text(pkt))
        ports = self.ports[self.lab.plan.switch_sandbox[switch]]

        def recirc(rid: str, state: dict) -> set:
            got: set = set()
            for h in range(1, self.dp_hashes + 1):
                got |= self.verdict(switch, state, f"recirc_id={rid},dp_hash={h},{final}")
            return got

        return read_datapath(switch, actions, pkt, ports, self.tunnels_of(switch), recirc)


# ---------------------------------------------------------------------------------------------
# walking packets through the lab, hop by hop


@dataclass
class Walk:
    """Packets walked over the lab's links and tunnels; at each switch the simulator's verdict
    must equal the trace's.  Counts what it compared."""

    lab: Any
    states: dict
    tracer: Tracer
    down: frozenset = frozenset()   # (switch, port) ends that carry nothing and are not live
    hops: int = 0
    forks: int = 0
    packets: int = 0
    groups: Counter = field(default_factory=Counter)  # group types the compared hops went through
    tunnel_outputs: int = 0                           # compared outputs to tunnel ports (with their key)
    skipped: list = field(default_factory=list)

    def __post_init__(self):
        self.fabric = simulator.Fabric(self.lab.topology, self.states, self.down)
        self._calls = self.tracer.calls

    @property
    def traces(self) -> int:
        """ofproto/trace calls this walk made."""
        return self.tracer.calls - self._calls

    def send(self, what: str, switch: str, in_port: int, pkt: dict, max_hops: int = 200) -> list[tuple]:
        """Walk ``pkt`` from ``switch``:``in_port``; every end as ``(where, packet)``: ``host:<h>``,
        ``controller:<switch>``, ``port:<switch>:<port>`` (an output to no host, link or tunnel)."""
        self.packets += 1
        queue = deque([(switch, dict(pkt, in_port=in_port))])
        ends: list[tuple] = []
        host_at = {(h.switch, h.port): n for n, h in self.lab.topology.hosts.items()}
        steps = 0
        while queue:
            sw, p = queue.popleft()
            steps += 1
            assert steps <= max_hops, f"{what}: more than {max_hops} hops"
            tunnels = self.tracer.tunnels_of(sw)
            want, outs = simulated(self.fabric.switches[sw], p, tunnels,
                                   lambda port, packet, sw=sw: self.fabric.cross(sw, port, packet))
            try:
                got = self.tracer.verdict(sw, p)
            except Untraceable as why:
                self.skipped.append((what, sw, str(why)))
                return ends
            self.hops += 1
            assert got == want, (f"{what} at {sw} in_port {p['in_port']}:\n trace     {show(got)}\n"
                                 f" simulator {show(want)}\n {[str(o) for o in outs]}\n flow {flow_text(p)}")
            self.forks += len({o.choices for o in outs}) > 1
            self.tunnel_outputs += sum(o.kind == "output" and o.port in tunnels for o in outs)
            met = {a.group_id for o in outs for f in o.flows for a in f.actions if isinstance(a, GroupAction)}
            self.groups.update(self.states[sw].groups[g].type for g in met if g in self.states[sw].groups)
            for o in outs:
                if o.kind == "controller":
                    ends.append((f"controller:{sw}", o.packet))
                if o.kind != "output":
                    continue
                if (sw, o.port) in host_at:
                    ends.append((f"host:{host_at[(sw, o.port)]}", o.packet))
                    continue
                nxt = self.fabric.cross(sw, o.port, o.packet)
                if nxt is None:
                    ends.append((f"port:{sw}:{o.port}", o.packet))
                else:
                    queue.append((nxt[0], dict(nxt[2], in_port=nxt[1])))
        return ends

    def send_from(self, what: str, host: str, pkt: dict, **kw) -> list[tuple]:
        h = self.lab.topology.hosts[host]
        return self.send(what, h.switch, h.port, pkt, **kw)

    def figures(self) -> str:
        groups = ", ".join(f"{n} {t}" for t, n in sorted(self.groups.items()))
        return (f"{self.packets} packets, {self.hops} switch hops, {self.forks} select forks, "
                f"{self.traces} traces" + (f", groups met: {groups}" if groups else "")
                + (f", {self.tunnel_outputs} tunnel outputs" if self.tunnel_outputs else "")
                + (f", {len(self.skipped)} skipped" if self.skipped else ""))


def reached(ends: list[tuple]) -> set[str]:
    """Where a walk's copies ended (``host:..``, ``controller:..``, ``port:..``)."""
    return {w for w, _ in ends}
