"""Demo scenario of the fenced clone app (``make demo``, ``python -m ovs_scripts.demo fenced_clone``).

The lab of ``topologies/fenced_clone.yaml``: the application shop (web, app,
db) and clone a of it (declared in the topology file), clone b created over
REST, wiki and its clone c, and ext outside every application.  Everything is
checked with real traffic between the lab's namespaces.
"""

from __future__ import annotations

import json
import select
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from ovs_scripts import flowdump, kit
from ovs_scripts.demo import PY, Check, ping, scenario
from ovs_scripts.lab import Lab

PORT = 7000
SHOP_B = {"name": "shop-b", "parent": ["web", "app", "db"],
          "members": [{"component": "web", "host": "bweb"}, {"component": "db", "ipv4": "10.0.2.13",
                                                             "ipv6": "fd00:fc::2:13"}],
          "egress": {"policy": "allow", "to": ["10.0.9.0/24", "fd00:fc::9:0/112"]}}
WIKI_C = {"name": "wiki-c", "parent": ["wfe", "wdb"],
          "members": [{"component": "wfe", "host": "cwfe"}, {"component": "wdb", "host": "cwdb"}]}


def _call(lab: Lab, method: str, path: str, body=None):
    """``(status, body)`` of one request to the lab's controller."""
    return tuple(kit.rest(lab, method, path, body, timeout=30))


def _ident(lab: Lab, host: str, addr: str, udp: bool = False, count: int = 1):
    argv = [PY, "-m", "ovs_scripts.traffic", "ident-get", addr, str(PORT), "--bytes", "2000", "--count", str(count)]
    r = lab.exec(host, argv + (["--udp"] if udp else []), check=False, timeout=120)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": (r.stderr or r.stdout).strip()[-200:]}


def _who(res) -> str:
    if isinstance(res, list):
        seen = sorted({(r.get("server"), r.get("peer")) for r in res}, key=str)
        return f"{sum(bool(r.get('ok')) for r in res)}/{len(res)} ok, answered by {seen}"
    if not res.get("ok"):
        return f"failed: {res.get('error', res)}"
    return f"{res['server']} answered, saw source {res['peer']} (client: {res['local']} -> {res['remote']})"


def _captures(lab: Lab, hosts: list[str]) -> dict:
    procs = {}
    for h in hosts:
        path = lab.dir / f"demo-{h}.pcap"
        procs[h] = (path, lab.popen(h, ["tcpdump", "-i", "eth0", "-Q", "in", "-U", "-n", "-Z", "root", "-w",
                                        str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for h, (_, p) in procs.items():
        ready, _, _ = select.select([p.stderr], [], [], 10)
        if not ready or b"listening" not in p.stderr.readline():
            raise RuntimeError(f"tcpdump in {h} did not start")
    return procs


def _stop(procs: dict) -> dict[str, int]:
    import scapy.layers.inet  # noqa: F401  (Ether/IP/IPv6 for the reader)
    import scapy.layers.inet6  # noqa: F401
    import scapy.layers.l2  # noqa: F401
    from scapy.utils import rdpcap

    time.sleep(1.0)
    for _, p in procs.values():
        p.terminate()
    out = {}
    for h, (path, p) in procs.items():
        p.wait(timeout=10)
        p.stderr.close()
        out[h] = len(rdpcap(str(path))) if path.exists() and path.stat().st_size > 24 else 0
    return out


def _hostile_frames(lab: Lab) -> list[tuple[str, bytes]]:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

    H = lab.topology.hosts
    a, bc = H["aweb"].mac, "ff:ff:ff:ff:ff:ff"

    def u(src, dst, eth_src=a, eth_dst=H["adb"].mac, tags=()):
        f = Ether(src=eth_src, dst=eth_dst)
        for t in tags:
            f = f / t
        return bytes(f / IP(src=src, dst=dst) / UDP(sport=40000, dport=PORT) / b"hostile")

    return [
        ("spoofed source IP (the parent web's)", u("10.0.0.11", "10.0.0.13")),
        ("spoofed source MAC (the parent web's)", u("10.0.1.11", "10.0.0.13", eth_src=H["web"].mac)),
        ("another clone's own address", u("10.0.1.11", "10.0.2.13", eth_dst=H["bdb"].mac)),
        ("outside the application (egress denied)", u("10.0.1.11", "10.0.9.9", eth_dst=H["ext"].mac)),
        ("broadcast", u("10.0.1.11", "255.255.255.255", eth_dst=bc)),
        ("IPv4 multicast", u("10.0.1.11", "224.0.0.1", eth_dst="01:00:5e:00:00:01")),
        ("double-tagged 802.1ad/802.1Q", u("10.0.1.11", "10.0.0.13", tags=(Dot1AD(vlan=10), Dot1Q(vlan=20)))),
        ("gratuitous ARP claiming db's address", bytes(Ether(src=a, dst=bc) / ARP(
            op=2, hwsrc=a, psrc="10.0.0.13", hwdst=bc, pdst="10.0.0.13"))),
        ("unsolicited NA for db's address", bytes(
            Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src="fd00:fc::1:11", dst="ff02::1", hlim=255)
            / ICMPv6ND_NA(tgt="fd00:fc::13", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=a))),
        ("IPv6 multicast", bytes(Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src="fd00:fc::1:11", dst="ff02::1")
                                 / UDP(sport=40000, dport=PORT) / b"hostile")),
    ]


def _flows(lab: Lab) -> dict[str, set]:
    out = {}
    for sw in lab.topology.switches:
        bridge, rundir = lab.switch_target(sw)
        out[sw] = {(f.table, f.priority, f.match_text, f.actions_text, f.cookie)
                   for f in flowdump.dump(bridge, rundir).flows}
    return out


@scenario("fenced_clone", "fenced_clone.yaml")
def fenced_clone(lab: Lab, check: Check) -> None:
    """fenced clones: clones reach their peers at the parent's addresses; nothing leaves the fence"""
    for h in ("adb", "bdb", "db", "ext", "cwdb"):
        proc = lab.popen(h, [PY, "-u", "-m", "ovs_scripts.traffic", "ident-serve", str(PORT), "--name", h])
        if "listening" not in proc.stdout.readline():
            raise RuntimeError(f"ident server in {h} did not start")

    # 1. the fence declared in the topology file
    caps = _captures(lab, ["db", "web"])
    results = {(fam, proto): _ident(lab, "aweb", addr, udp=proto == "UDP")
               for fam, addr in (("IPv4", "10.0.0.13"), ("IPv6", "fd00:fc::13")) for proto in ("TCP", "UDP")}
    icmp = ping(lab, "aweb", "10.0.0.13", count=2)
    parent_frames = _stop(caps)
    for (fam, proto), res in results.items():
        want = "10.0.0.11" if fam == "IPv4" else "fd00:fc::11"
        check(f"shop-a: aweb -> db's address ({fam} {proto}) reaches adb, which sees web's address",
              res.get("ok") and res.get("server") == "adb" and res.get("peer") == want, _who(res))
    check("shop-a: aweb pings db's address (ICMP, answered by adb)", icmp[1] == icmp[0] > 0, f"{icmp[1]}/{icmp[0]}")
    check("the parent (web, db) received nothing during all that", not any(parent_frames.values()),
          f"frames captured: {parent_frames}")
    res = _ident(lab, "web", "10.0.0.13")
    check("parent traffic untouched: web -> db reaches db itself", res.get("server") == "db", _who(res))

    # 2. two more fences over REST: another clone of shop, a clone of wiki
    t0 = time.monotonic()
    status, body = _call(lab, "POST", "/v1/fences?wait=1", SHOP_B)
    check("POST /v1/fences shop-b (clone b of shop, egress allowed to 10.0.9.0/24)",
          status == 201 and body.get("synced"), f"{status}; every switch holds it {time.monotonic() - t0:.2f} s "
                                                 f"after the request; {body.get('flows')} flows")
    status, body = _call(lab, "POST", "/v1/fences?wait=1", WIKI_C)
    check("POST /v1/fences wiki-c (clone c of another application)", status == 201, f"{status}")
    jobs = [("aweb", "10.0.0.13", "adb"), ("bweb", "10.0.0.13", "bdb"), ("cwfe", "10.0.5.22", "cwdb")]
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(lambda j: _ident(lab, j[0], j[1], count=20), jobs))
    for (host, addr, server), res in zip(jobs, runs):
        ok = isinstance(res, list) and all(r.get("ok") and r.get("server") == server for r in res)
        check(f"at the same time: {host} -> {addr} always reaches {server}", ok, _who(res))

    # 3. the fence holds: hostile frames from aweb, captures on everyone outside clone a
    outside = ["web", "app", "db", "bweb", "bapp", "bdb", "wfe", "wdb", "cwfe", "cwdb", "ext"]
    hostile = _hostile_frames(lab)
    caps = _captures(lab, outside)
    lab.exec("aweb", [PY, "-m", "ovs_scripts.traffic", "send-frames", *[f.hex() for _, f in hostile]])
    leaked = _stop(caps)
    check(f"{len(hostile)} hostile frames from aweb (spoofed IP/MAC, other clone, outside, broadcast, multicast, "
          f"double tag, ARP/ND spoofing): nothing reaches the parent or other clones", not any(leaked.values()),
          f"frames captured on {len(outside)} hosts: {sum(leaked.values())}")
    res = _ident(lab, "aweb", "10.0.0.13")
    check("control: aweb's own traffic still passes", res.get("server") == "adb", _who(res))
    res = _ident(lab, "bweb", "10.0.9.9")
    check("egress allowed (shop-b): bweb -> ext leaves with bweb's own address", res.get("peer") == "10.0.2.11",
          _who(res))
    res = _ident(lab, "aweb", "10.0.9.9")
    check("egress denied (shop-a): aweb -> ext gets nowhere", not res.get("ok"), _who(res))
    lab.exec("bweb", ["ip", "-6", "neigh", "flush", "all"], check=False)
    sent, got = ping(lab, "bweb", "fd00:fc::9:9", count=3)
    check("egress allowed, IPv6 with real neighbour discovery: bweb ping -6 ext (empty neighbour cache)",
          got == sent > 0, f"{got}/{sent} answered")
    _, a0 = _call(lab, "GET", "/v1/fences/shop-a")
    blocked = {(src, dst): ping(lab, src, dst, count=2)[1]
               for src in ("ext", "web") for dst in ("10.0.1.11", "fd00:fc::1:11")}
    time.sleep(1.0)  # OpenFlow counters trail the datapath
    _, a1 = _call(lab, "GET", "/v1/fences/shop-a")
    stopped = (a1.get("counters", {}).get("packets", {}).get("inbound_drop", 0)
               - a0.get("counters", {}).get("packets", {}).get("inbound_drop", 0))
    check("block in: ext and the parent web cannot reach clone aweb's own addresses",
          not any(blocked.values()) and stopped >= 2 * len(blocked),
          f"{sum(blocked.values())} answers to {2 * len(blocked)} pings; {stopped} packets stopped before aweb")
    time.sleep(1.0)  # OpenFlow counters trail the datapath
    _, a = _call(lab, "GET", "/v1/fences/shop-a")
    c = a.get("counters", {}).get("packets", {})
    check.note(f"shop-a counters: translated {c.get('translate')}, admitted {c.get('admit')}, dropped at the "
               f"port {c.get('port_drop')}, dropped in the fence {c.get('fence_drop')}, "
               f"ARP answered {c.get('arp')}, ND punted {c.get('nd')}")

    # 4. bad requests change nothing; deleting a fence removes exactly its flows
    before = _flows(lab)
    status, body = _call(lab, "POST", "/v1/fences", {"name": "x", "parent": ["web", "app", "db"],
                                                     "members": [{"component": "db", "host": "adb"}]})
    check("overlapping clone refused with 409 naming the field", status == 409 and body.get("field"),
          f"{status} {body}")
    status, body = _call(lab, "POST", "/v1/fences", {"name": "y", "parent": ["web"],
                                                     "members": [{"component": "web", "ipv4": "10.0.1.999"}]})
    check("malformed address refused with 422 naming the field", status == 422 and body.get("field"),
          f"{status} {body}")
    check("refused requests changed no flow", _flows(lab) == before, "flow dumps identical")
    _, b = _call(lab, "GET", "/v1/fences/shop-b?counters=0")
    status, body = _call(lab, "DELETE", "/v1/fences/shop-b?wait=1")
    after = _flows(lab)
    obj = int(b["cookie"].split("/")[0], 16) & ((1 << 48) - 1)
    gone = [f for sw in before for f in before[sw] - after[sw]]
    new = [f for sw in before for f in after[sw] - before[sw]]
    check("DELETE shop-b removes exactly its flows (its cookie), nothing else",
          status == 200 and gone and not new and all(f[4] & ((1 << 48) - 1) == obj for f in gone),
          f"{len(gone)} flows removed, all with cookie {b['cookie']}; 0 added")
    for sw in lab.topology.switches:
        bridge, rundir = lab.switch_target(sw)
        d = flowdump.diff(bridge, rundir, flowdump.fetch_desired(lab.rest_url, sw))
        check(f"{sw} flows == controller's desired state", d.identical,
              f"{len(d.missing)} missing, {len(d.unexpected)} unexpected, {len(d.different)} different")
