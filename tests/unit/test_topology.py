"""Validation of lab topology files (ryu_apps/framework/topology.py); no OVS needed.

Every bad input must give a TopologyError whose message reads
``FILE: KEY: what is wrong``; the table below is one row per class of mistake.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path

import pytest
import yaml

from ryu_apps.framework import topology as T
from ryu_apps.framework.topology import TopologyError

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = sorted((REPO / "topologies").glob("*.yaml"))


def chain3() -> dict:
    return yaml.safe_load((REPO / "topologies" / "chain3.yaml").read_text())


def write(tmp_path: Path, data, name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# -- good files ---------------------------------------------------------------------


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_shipped_topologies_load(path):
    topo = T.load(path)
    assert topo.name == path.stem
    assert topo.switches and topo.source == str(path)
    # every port has a unique, kernel-sized interface name and a fixed number
    names = [p.ifname for p in topo.ports.values()]
    assert len(names) == len(set(names))
    assert all(len(n) <= T.IFNAMSIZ for n in names)
    assert all(len(sw.bridge) <= T.IFNAMSIZ for sw in topo.switches.values())
    for host in topo.hosts.values():
        assert topo.ports[(host.switch, host.port)].peer == host.name


def test_chain3_ports_in_file_order():
    topo = T.load(REPO / "topologies" / "chain3.yaml")
    assert topo.prefix == "ch"
    assert [(h, s, p) for h, s, p in topo.host_links] == [("h1", "s1", 1), ("h2", "s2", 1), ("h3", "s3", 1)]
    assert [(l.a, l.a_port, l.b, l.b_port) for l in topo.links] == [("s1", 2, "s2", 2), ("s2", 3, "s3", 2)]
    assert topo.ports[("s2", 3)].ifname == "ch-s2-3"
    assert topo.hosts["h1"].netns == "ch-h1"
    assert topo.hosts["h1"].ipv4 == ipaddress.IPv4Interface("10.1.0.1/24")
    assert topo.switches["s1"].bridge == "ch-s1" and topo.switches["s1"].dpid == 0x11


def test_diamond_explicit_ports_and_gateways():
    topo = T.load(REPO / "topologies" / "diamond.yaml")
    assert topo.ports[("s1", 11)].peer == "s2" and topo.ports[("s1", 11)].peer_port == 11
    assert topo.ports[("s4", 12)].peer == "s3"
    assert str(topo.hosts["h1"].gateway4) == "10.2.1.254"
    assert len(topo.graph().edges) == 4
    # a link that is down leaves the graph
    assert len(topo.graph(down=frozenset({("s1", 11)})).edges) == 3


def test_tunnel_nodes_and_tunnel_link():
    topo = T.load(REPO / "topologies" / "tunnel.yaml")
    assert topo.switches["s1"].node == "n1"
    assert topo.nodes["n2"].netns == "tn-n2"
    tun = [l for l in topo.links if l.kind != "veth"]
    assert len(tun) == 1 and tun[0].kind == "vxlan" and tun[0].key == 5001
    assert (tun[0].a_port, tun[0].b_port) == (100, 100)
    assert topo.ports[("s1", 100)].kind == "vxlan"


def test_prefix_defaults_from_name():
    d = chain3()
    del d["lab"]["prefix"]
    topo = T.from_dict(d)
    assert topo.prefix == "chai"


def test_topology_is_frozen():
    topo = T.load(REPO / "topologies" / "chain3.yaml")
    with pytest.raises(Exception):
        topo.switches["s1"].dpid = 5  # type: ignore[misc]
    with pytest.raises(Exception):
        topo.spec.lab.name = "x"  # type: ignore[misc]


# -- bad files: (id, mutation, key named, words in the message) -----------------------


def _set(path: str, value):
    def mut(d):
        *parents, last = path.split(".")
        cur = d
        for p in parents:
            cur = cur[p]
        cur[last] = value
    return mut


def _chain(*muts):
    def mut(d):
        for m in muts:
            m(d)
    return mut


BAD = [
    ("unknown-top-level-key", _set("bogus", 1), "bogus", "Extra inputs"),
    ("unknown-switch-key", _set("switches.s1.colour", "red"), "switches.s1.colour", "Extra inputs"),
    ("unknown-host-key", _set("hosts.h1.ip", "10.1.0.9/24"), "hosts.h1.ip", "Extra inputs"),
    ("bad-mac", _set("hosts.h1.mac", "02:00:00:00:01"), "hosts.h1.mac", "not a MAC address"),
    ("multicast-mac", _set("hosts.h1.mac", "01:00:00:00:01:01"), "hosts.h1.mac", "multicast"),
    ("duplicate-mac", _set("hosts.h2.mac", "02:00:00:00:01:01"), "hosts.h2.mac", "already used by h1"),
    ("duplicate-dpid", _set("switches.s2.dpid", 0x11), "switches.s2.dpid", "already used by s1"),
    ("dpid-too-big", _set("switches.s2.dpid", 1 << 48), "switches.s2.dpid", "less than"),
    ("duplicate-ipv4", _set("hosts.h2.ipv4", "10.1.0.1/24"), "hosts.h2.ipv4", "already used by h1"),
    ("duplicate-ipv6", _set("hosts.h3.ipv6", "fd00:1::1/64"), "hosts.h3.ipv6", "already used by h1"),
    ("ipv4-without-prefix", _set("hosts.h1.ipv4", "10.1.0.1"), "hosts.h1.ipv4", "prefix length"),
    ("gateway-outside-subnet", _set("hosts.h1.gateway4", "10.9.0.1"), "hosts.h1.gateway4", "subnet"),
    ("gateway-is-a-host", _set("hosts.h1.gateway4", "10.1.0.2"), "hosts.h1.gateway4", "address of host h2"),
    ("unknown-link-end", lambda d: d["links"].__setitem__(3, ["s1", "s9"]), "links[3]", "'s9'"),
    ("host-with-two-links", lambda d: d["links"].append(["h1", "s3"]), "links[5]", "already has a link"),
    ("host-without-link", lambda d: d["links"].pop(0), "hosts.h1", "no link"),
    ("two-hosts-linked", lambda d: d["links"].append(["h1", "h2"]), "links[5]", "not two hosts"),
    ("link-loop", lambda d: d["links"].append(["s1", "s1"]), "links[5]", "same switch"),
    ("port-used-twice", lambda d: d["links"].append({"a": "s1", "b": "s3", "a_port": 1}), "links[5]",
     "port 1 of s1 is already used"),
    ("link-not-a-pair", lambda d: d["links"].append(["s1", "s2", "s3"]), "links", "pair"),
    ("too-long-bridge-name", _chain(_set("lab.prefix", "abcd"),
                                    _set("switches.s1234567890", {"dpid": 99}),
                                    lambda d: d["links"].append(["s1234567890", "s1"])),
     "switches.s1234567890", "longer than 15"),
    ("too-long-interface-name", _chain(_set("lab.prefix", "abcd"),
                                       _set("switches.s12345678", {"dpid": 99}),
                                       lambda d: d["links"].append(["s12345678", "s1"])),
     "links[5]", "longer than 15"),
    ("bad-prefix", _set("lab.prefix", "Ab-"), "lab.prefix", "pattern"),
    ("bad-switch-name", _set("switches.S1", {"dpid": 50}), "switches", "must match"),
    ("disconnected-switches", lambda d: d["links"].pop(4), "links", "not all connected"),
    ("unknown-node", _set("switches.s1", {"dpid": 0x11, "node": "n9"}), "switches.s1.node", "unknown node"),
    ("tunnel-without-nodes", _set("tunnels", [{"a": "s1", "b": "s3"}]), "tunnels[0]", "nodes"),
    ("name-clash-host-switch", _set("hosts.s1", {"mac": "02:00:00:00:01:09", "ipv4": "10.1.0.9/24"}),
     "switches.s1", "also used"),
    ("rate-limit-too-low", _set("controller", {"rate_limit": 10}), "controller.rate_limit", "greater than"),
    ("unknown-datapath", _set("lab.datapath", "dpdk"), "lab.datapath", "auto"),
    ("bfd-on-a-host-link", lambda d: d["links"].__setitem__(0, {"a": "h1", "b": "s1", "bfd_ms": 100}), "links[0]",
     "BFD runs between switches"),
    ("bfd-too-fast", lambda d: d["links"].__setitem__(3, {"a": "s1", "b": "s2", "bfd_ms": 1}), "links[3].bfd_ms",
     "greater than"),
    ("hold-down-zero", _set("controller", {"switch_hold_down": 0}), "controller.switch_hold_down", "greater than"),
]


def test_bfd_on_switch_links_is_kept():
    data = chain3()
    data["links"][3] = {"a": "s1", "b": "s2", "bfd_ms": 100}
    topo = T.from_dict(data, "x.yaml")
    assert topo.link_at("s1", 2).bfd_ms == 100 and topo.link_at("s2", 2).bfd_ms == 100
    assert topo.link_at("s2", 3).bfd_ms is None and topo.link_at("s1", 1) is None  # a host port


@pytest.mark.parametrize("mutate,key,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_file_and_key(tmp_path, mutate, key, words):
    data = chain3()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(TopologyError) as info:
        T.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {key}"), msg
    assert words in msg, msg


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "lab: {name: x\nswitches: [\n")
    with pytest.raises(TopologyError) as info:
        T.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: line ") and "invalid YAML" in msg


def test_not_a_mapping(tmp_path):
    path = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(TopologyError, match=r": \(top level\): expected a mapping"):
        T.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError, match=r"cannot read"):
        T.load(tmp_path / "nope.yaml")


def test_missing_required_key(tmp_path):
    data = chain3()
    del data["switches"]
    path = write(tmp_path, data)
    with pytest.raises(TopologyError, match=rf"^{path}: switches: Field required"):
        T.load(path)


def test_from_dict_uses_given_source():
    data = copy.deepcopy(chain3())
    data["switches"]["s2"]["dpid"] = 0x11
    with pytest.raises(TopologyError, match=r"^mem\.yaml: switches\.s2\.dpid:"):
        T.from_dict(data, source="mem.yaml")
