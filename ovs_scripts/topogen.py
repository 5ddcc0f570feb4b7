"""Leaf-spine and fat-tree lab topologies for the OAM ECMP app (as topology-file dicts).

``python -m ovs_scripts.topogen leafspine 4 3 > topologies/oam_ecmp_leafspine.yaml`` and
``python -m ovs_scripts.topogen fattree 4 > topologies/oam_ecmp_fattree.yaml`` wrote the
files in ``topologies/``; ``bench/oam_ecmp.py`` builds larger ones the same way.

Names are short because every switch port is a Linux interface
``<prefix>-<switch>-<port>`` (15 characters at most): leaves ``l1..``, spines
``s1..``; fat-tree edges ``e<pod><i>``, aggregations ``a<pod><i>``, cores ``c<j>``.
One host per leaf/edge switch, each in its own subnet behind the fabric's
gateway, with IPv4 and IPv6.

Port plan (fixed, so flow dumps read the same in every run):

* leaf-spine: leaf host port 1, uplink to spine j is port 10+j; spine port i goes to leaf i.
* fat-tree (k pods): edge host port 1, edge uplink to its pod's aggregation i is
  port 10+i; aggregation downlink to edge i is port i, uplink j (to core
  (i-1)*k/2 + j) is port 10+j; core port p goes to pod p.
"""

from __future__ import annotations

import sys

import yaml


def _host(n: int, net: int) -> dict:
    """Host number ``n`` (1..254) of network ``net``: 10.<net>.<n>.1/24 and fd00:<net>:<n>::1/64, routed."""
    if not 1 <= n <= 254:
        raise ValueError(f"host number {n} not in 1..254")
    return {"mac": f"02:00:00:{net:02x}:00:{n:02x}",
            "ipv4": f"10.{net}.{n}.1/24", "gateway4": f"10.{net}.{n}.254",
            "ipv6": f"fd00:{net}:{n:x}::1/64", "gateway6": f"fd00:{net}:{n:x}::fe"}


def leaf_spine(leaves: int = 4, spines: int = 3, name: str = "oam_ecmp_leafspine", prefix: str = "ol",
               of_port: int = 6663, rest_port: int = 8083) -> dict:
    """A two-tier Clos: every leaf linked to every spine, one host per leaf."""
    if not 1 <= leaves <= 250 or not 1 <= spines <= 89:
        raise ValueError("1..250 leaves and 1..89 spines")
    switches = {f"l{i}": {"dpid": 0x600 + i} for i in range(1, leaves + 1)}
    switches.update({f"s{j}": {"dpid": 0x6A00 + j} for j in range(1, spines + 1)})
    hosts = {f"h{i}": _host(i, 6) for i in range(1, leaves + 1)}
    links = [{"a": f"h{i}", "b": f"l{i}", "b_port": 1} for i in range(1, leaves + 1)]
    links += [{"a": f"l{i}", "b": f"s{j}", "a_port": 10 + j, "b_port": i}
              for i in range(1, leaves + 1) for j in range(1, spines + 1)]
    return {"lab": {"name": name, "prefix": prefix},
            # no audit: injected faults stay until heal (an audit would repair them)
            "controller": {"of_port": of_port, "rest_port": rest_port, "audit_interval": 0},
            "switches": switches, "hosts": hosts, "links": links,
            "apps": {"fabric": {}, "oam_ecmp": {}}}


def fat_tree(k: int = 4, name: str = "oam_ecmp_fattree", prefix: str = "of", of_port: int = 6664,
             rest_port: int = 8084) -> dict:
    """A k-ary fat-tree (k pods of k/2 edge + k/2 aggregation switches, (k/2)^2 cores), one host per edge."""
    if k < 2 or k % 2 or k > 16:
        raise ValueError("k must be even, 2..16")
    half = k // 2
    switches, hosts, links = {}, {}, []
    n = 0
    for p in range(1, k + 1):
        for i in range(1, half + 1):
            switches[f"e{p}{i}"] = {"dpid": 0x7000 + (p << 4) + i}
            switches[f"a{p}{i}"] = {"dpid": 0x7100 + (p << 4) + i}
    for j in range(1, half * half + 1):
        switches[f"c{j}"] = {"dpid": 0x7200 + j}
    for p in range(1, k + 1):
        for i in range(1, half + 1):
            n += 1
            hosts[f"h{p}{i}"] = _host(n, 7)
            links.append({"a": f"h{p}{i}", "b": f"e{p}{i}", "b_port": 1})
    for p in range(1, k + 1):
        for e in range(1, half + 1):
            for a in range(1, half + 1):
                links.append({"a": f"e{p}{e}", "b": f"a{p}{a}", "a_port": 10 + a, "b_port": e})
        for a in range(1, half + 1):
            for j in range(1, half + 1):
                core = (a - 1) * half + j
                links.append({"a": f"a{p}{a}", "b": f"c{core}", "a_port": 10 + j, "b_port": p})
    return {"lab": {"name": name, "prefix": prefix},
            # no audit: injected faults stay until heal (an audit would repair them)
            "controller": {"of_port": of_port, "rest_port": rest_port, "audit_interval": 0},
            "switches": switches, "hosts": hosts, "links": links,
            "apps": {"fabric": {}, "oam_ecmp": {}}}


HEADERS = {
    "leafspine": "# OAM ECMP: a 4-leaf x 3-spine Clos (written by `python -m ovs_scripts.topogen leafspine 4 3`).\n"
                 "# Every leaf pair has 3 equal-cost paths (one per spine); leaves ECMP over select groups.\n"
                 "# Leaf li: host hi on port 1, spine sj on port 10+j.  Spine sj: leaf li on port i.\n",
    "fattree": "# OAM ECMP: a k=4 fat-tree, 20 switches (written by `python -m ovs_scripts.topogen fattree 4`).\n"
               "# Pods 1-4: edges e<pod>1,e<pod>2 and aggregations a<pod>1,a<pod>2; cores c1-c4.\n"
               "# 2 equal-cost paths inside a pod, 4 between pods.  One host per edge switch.\n",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("leafspine", "fattree"):
        print("usage: python -m ovs_scripts.topogen leafspine LEAVES SPINES | fattree K", file=sys.stderr)
        return 2
    if args[0] == "leafspine":
        data = leaf_spine(*(int(a) for a in args[1:3]))
    else:
        data = fat_tree(*(int(a) for a in args[1:2]))
    sys.stdout.write(HEADERS[args[0]] + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
