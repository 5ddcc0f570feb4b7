"""Fenced clones and IPv6 neighbour discovery on real stacks (issue 9, section 2).

One lab (``topologies/fenced_clone.yaml``, fresh prefix and ports) for the module.
Fences: ``shop-a`` from the file (egress denied) and ``mix``, created here: two
members on the same switch s1 (bdb cloning db, cwdb cloning wdb) with egress
allowed to ext's prefixes only.  Everything is checked with the hosts' own
kernels: ``ping -6``, TCP over IPv6 to an ident server (a small Python socket
server that names itself and the peer address it saw), ``ip -6 neigh`` read in
every host after scapy-crafted spoofing attempts, ``tcpdump -Q in`` at the
outside host.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from ovs_scripts import kit
from ryu_apps.functions.fenced_clone.model import link_local
from tests.integration.conftest import module_factory
from tests.integration.test_fenced_clone import (
    TOPO,
    Captures,
    call,
    ident,
    send_frames,
    wait_synced,
)

pytestmark = pytest.mark.integration
PY = sys.executable
PORT = 7000
SERVERS = ("adb", "aweb", "bdb", "ext")
MIX = {"name": "mix", "parent": ["db", "wdb"],
       "members": [{"component": "db", "host": "bdb"}, {"component": "wdb", "host": "cwdb"}],
       "egress": {"policy": "allow", "to": ["10.0.9.0/24", "fd00:fc::9:0/112"]}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with module_factory(tmp_path_factory, "fenced-nd") as factory:
        lab = factory(TOPO)
        for h in SERVERS:
            proc = lab.popen(h, [PY, "-u", "-m", "ovs_scripts.traffic", "ident-serve", str(PORT), "--name", h])
            assert "listening" in proc.stdout.readline()
        status, body = call(lab, "POST", "/v1/fences?wait=1", MIX)
        assert status == 201 and body["synced"], body
        wait_synced(lab)
        yield lab


def _ping(lab, host, addr, count, family) -> tuple[bool, str]:
    r = kit.ping(lab, host, addr, count, interval=0.3, wait=2, family=family)
    summary = next((ln for ln in r.output.splitlines() if "packet loss" in ln), r.output[-200:])
    return bool(r), summary


def ping6(lab, host, addr, count=3) -> tuple[bool, str]:
    return _ping(lab, host, addr, count, 6)


def ping4(lab, host, addr, count=2) -> tuple[bool, str]:
    return _ping(lab, host, addr, count, None)


def flush_neigh(lab, hosts) -> None:
    for h in hosts:
        lab.exec(h, ["ip", "-6", "neigh", "flush", "all"], check=False)


def neigh6(lab, host) -> list[dict]:
    """``ip -6 neigh`` of a host: [{dst, lladdr, state}] (FAILED/INCOMPLETE entries have no lladdr)."""
    r = lab.exec(host, ["ip", "-j", "-6", "neigh", "show"], check=True)
    return [{"dst": e.get("dst"), "lladdr": (e.get("lladdr") or "").lower(), "state": e.get("state")}
            for e in json.loads(r.stdout or "[]")]


def counters(lab, fence):
    _, body = call(lab, "GET", f"/v1/fences/{fence}")
    return body["counters"]["packets"]


# ---------------------------------------------------------------------------


def test_spoofed_ns_from_a_clone_leaves_no_neighbour_entry_anywhere(lab, tmp_path):
    """The issue's repro, with every source kind; then every host's neighbour table is read."""
    from scapy.layers.inet6 import (
        ICMPv6ND_NA,
        ICMPv6ND_NS,
        ICMPv6NDOptDstLLAddr,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
    )
    from scapy.layers.l2 import Ether

    H = lab.topology.hosts
    hosts = list(H)
    a = H["aweb"].mac
    flush_neigh(lab, hosts)
    before = counters(lab, "shop-a")
    spoofed = {"fd00:fc::99": "nobody's", "fd00:fc::11": "the parent web's", "fd00:fc::13": "the parent db's",
               "fd00:fc::5:21": "another application's (wfe)", "fd00:fc::1:12": "the clone peer aapp's",
               "fd00:fc::2:11": "another clone's (bweb)", "fe80::99": "a foreign link-local"}
    frames = []
    for src in spoofed:
        # unicast to the parent db (the fence would translate it to clone db) and to clone db's own group
        frames.append(Ether(src=a, dst=H["adb"].mac) / IPv6(src=src, dst="fd00:fc::13", hlim=255)
                      / ICMPv6ND_NS(tgt="fd00:fc::1:13") / ICMPv6NDOptSrcLLAddr(lladdr=a))
        frames.append(Ether(src=a, dst="33:33:ff:01:00:13") / IPv6(src=src, dst="ff02::1:ff01:13", hlim=255)
                      / ICMPv6ND_NS(tgt="fd00:fc::1:13") / ICMPv6NDOptSrcLLAddr(lladdr=a))
    # with its own source, for a target that is not a parent address: must not be forwarded either
    frames.append(Ether(src=a, dst=H["adb"].mac) / IPv6(src="fd00:fc::1:11", dst="fd00:fc::13", hlim=255)
                  / ICMPv6ND_NS(tgt="fd00:fc::1:13") / ICMPv6NDOptSrcLLAddr(lladdr=a))
    send_frames(lab, "aweb", [bytes(f) for f in frames])
    time.sleep(1.0)
    tables = {h: neigh6(lab, h) for h in hosts}
    bad = [(h, e) for h, es in tables.items() for e in es
           if e["dst"] in spoofed or e["lladdr"] == a or (h == "aweb" and e["dst"] == "fd00:fc::1:13")]
    entries = sum(len(es) for es in tables.values())
    print(f"\nspoofed NS: {len(frames)} frames from aweb; {len(hosts)} neighbour tables read, "
          f"{entries} entries in all, {len(bad)} pointing at aweb or naming a spoofed source")
    assert not bad, f"neighbour tables poisoned: {bad}"
    # control: the clone's own, real neighbour discovery still works (and names clone db's MAC) ...
    cap = Captures(lab, ["aweb"], tmp_path)
    try:
        ok, summary = ping6(lab, "aweb", "fd00:fc::13")
    finally:
        got = cap.stop()
    assert ok, summary
    mine = {e["dst"]: e["lladdr"] for e in neigh6(lab, "aweb")}
    assert mine.get("fd00:fc::13") == H["adb"].mac, mine
    # ... answered by a solicited NA: target the parent address, override set, not a router
    nas = [p[ICMPv6ND_NA] for p in got["aweb"] if ICMPv6ND_NA in p]
    assert nas, [p.summary() for p in got["aweb"]]
    for na in nas:
        assert (na.tgt, na.R, na.S, na.O) == ("fd00:fc::13", 0, 1, 1), na.show(dump=True)
        assert na[ICMPv6NDOptDstLLAddr].lladdr == H["adb"].mac
    # the link-local source the fence admits is the one the clone's kernel really has
    r = lab.exec("aweb", ["ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"])
    kernel_ll = {a["local"] for i in json.loads(r.stdout) for a in i.get("addr_info", []) if a.get("local")}
    assert kernel_ll == {str(link_local(a))}, kernel_ll
    after = counters(lab, "shop-a")
    assert after["port_drop"] - before["port_drop"] >= 2 * len(spoofed), (before, after)


def test_one_member_cannot_leave_the_fence_as_another(lab, tmp_path):
    """bdb and cwdb are both on s1 in fence mix (egress allowed): bdb sends with cwdb's parent source."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import Ether

    H = lab.topology.hosts
    assert H["bdb"].switch == H["cwdb"].switch
    b, ext = H["bdb"].mac, H["ext"].mac
    cap = Captures(lab, ["ext"], tmp_path)
    try:
        frames = [
            Ether(src=b, dst=ext) / IPv6(src="fd00:fc::5:22", dst="fd00:fc::9:9", hlim=255)
            / ICMPv6ND_NS(tgt="fd00:fc::77") / ICMPv6NDOptSrcLLAddr(lladdr=b),
            Ether(src=b, dst=ext) / IPv6(src="fd00:fc::6:22", dst="fd00:fc::9:9", hlim=255)
            / ICMPv6ND_NS(tgt="fd00:fc::77") / ICMPv6NDOptSrcLLAddr(lladdr=b),
            Ether(src=b, dst=ext) / IPv6(src="fd00:fc::5:22", dst="fd00:fc::9:9") / UDP(sport=4, dport=PORT) / b"X",
            Ether(src=b, dst=ext) / IP(src="10.0.5.22", dst="10.0.9.9") / UDP(sport=4, dport=PORT) / b"X",
        ]
        send_frames(lab, "bdb", [bytes(f) for f in frames])
    finally:
        got = cap.stop(settle=1.0)
    from scapy.layers.inet import IP as IP4
    from scapy.layers.inet6 import IPv6 as IP6

    srcs = [p[IP6].src if IP6 in p else p[IP4].src for p in got["ext"] if IP6 in p or IP4 in p]
    print(f"\nimpersonation: {len(frames)} frames from bdb with cwdb's addresses; ext received {len(srcs)}: {srcs}")
    assert not any(s in ("fd00:fc::6:22", "fd00:fc::5:22", "10.0.6.22", "10.0.5.22") for s in srcs), srcs
    # control: cwdb itself leaves with its own address
    res = ident(lab, "cwdb", "fd00:fc::9:9")
    assert res["ok"] and res["server"] == "ext" and res["peer"] == "fd00:fc::6:22", res


def test_ipv6_egress_with_real_neighbour_discovery(lab):
    """ping -6 and TCP over IPv6 from a clone to an allowed outside host, neighbour cache empty first."""
    H = lab.topology.hosts
    flush_neigh(lab, ["bdb", "ext"])
    ok, summary = ping6(lab, "bdb", "fd00:fc::9:9")
    print(f"\nbdb ping -6 ext: {summary}")
    assert ok, summary
    learned = {e["dst"]: e["lladdr"] for e in neigh6(lab, "bdb")}
    assert learned.get("fd00:fc::9:9") == H["ext"].mac, learned  # resolved by a solicited-node NS
    flush_neigh(lab, ["bdb"])
    res = ident(lab, "bdb", "fd00:fc::9:9", nbytes=100_000)
    assert res["ok"] and res["server"] == "ext" and res["peer"] == "fd00:fc::2:13", res  # its own address
    res4 = ident(lab, "bdb", "10.0.9.9", nbytes=10_000)
    assert res4["ok"] and res4["peer"] == "10.0.2.13", res4
    # all other multicast stays blocked: nobody answers an all-nodes echo, nothing outside the prefix
    r = lab.exec("bdb", ["ping", "-6", "-n", "-c", "2", "-i", "0.3", "-W", "2", "ff02::1%eth0"], check=False)
    answered = {ln.split()[3].rstrip(":").split("%")[0] for ln in r.stdout.splitlines() if " bytes from " in ln}
    mine = {"fd00:fc::2:13", str(link_local(H["bdb"].mac))}
    assert answered <= mine, f"an all-nodes ping got answers from outside the clone: {answered - mine}"
    ok, summary = ping6(lab, "bdb", "fd00:fc::12", count=2)  # app: not in the allowed prefixes
    assert not ok, summary


def test_block_in_outside_hosts_cannot_reach_a_clone_address(lab, tmp_path):
    """vCD "block in and out": only fence members (and, with egress allowed, the allowed prefixes) get in.

    Checked where it matters, at the clones: ``tcpdump -Q in`` on aweb and adb while four
    unfenced hosts (outside, two parents, another application) ping and connect to their
    own addresses; not one of those packets may arrive (answers alone would not show it:
    the clone's answers never leave a deny fence anyway).
    """
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    H = lab.topology.hosts
    senders = ("ext", "web", "db", "wfe")
    before = counters(lab, "shop-a")
    cap = Captures(lab, ["aweb", "adb"], tmp_path)
    answered = []
    try:
        for sender in senders:
            for dst in ("fd00:fc::1:11", "10.0.1.11", "fd00:fc::1:13", "10.0.1.13"):
                ok, _ = (ping6 if ":" in dst else ping4)(lab, sender, dst, count=2)
                if ok:
                    answered.append((sender, dst))
            res = ident(lab, sender, "fd00:fc::1:13")
            if res.get("ok"):
                answered.append((sender, "tcp fd00:fc::1:13"))
    finally:
        frames = cap.stop(settle=1.0)
    addrs = {str(a) for s in senders for a in H[s].addresses}
    arrived = [(h, p.summary()) for h, ps in frames.items() for p in ps
               if (IP in p and p[IP].src in addrs) or (IPv6 in p and p[IPv6].src in addrs)]
    print(f"\nblock in: {len(senders) * 9} attempts (pings and TCP) from {len(senders)} unfenced hosts to clone a's "
          f"own addresses; {len(arrived)} packets arrived at aweb/adb, {len(answered)} answered")
    assert not arrived and not answered, (arrived[:10], answered)
    after = counters(lab, "shop-a")
    assert after["inbound_drop"] > before.get("inbound_drop", 0), after
    # inside the fence everything still works, and mix lets its allowed prefix (ext) in, not a parent
    res = ident(lab, "aweb", "fd00:fc::13")
    assert res["ok"] and res["server"] == "adb" and res["peer"] == "fd00:fc::11", res
    res = ident(lab, "ext", "fd00:fc::2:13")
    assert res["ok"] and res["server"] == "bdb", res
    res = ident(lab, "db", "fd00:fc::2:13")
    assert not res["ok"], res
