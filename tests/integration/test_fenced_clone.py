"""Fenced clones on real OVS, namespaces and the controller: translation, the fence, lifecycle.

One lab (``topologies/fenced_clone.yaml``, fresh prefix and ports) serves the
tests of this module in order: the fence ``shop-a`` comes from the topology
file, the others are created over REST.  Every claim is checked with real
traffic: ident servers (``traffic ident-serve``) say which host answered and
which source address reached it; ``tcpdump -Q in`` in the hosts' namespaces
shows which frames arrived where; scapy builds the hostile frames, sent raw
from inside the clone namespaces (``traffic send-frames``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ovs_scripts import flowdump, kit
from ovs_scripts.lab import Lab
from tests.integration.conftest import RUN_BASE, LabFactory, _skip_reason

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TOPO = REPO / "topologies" / "fenced_clone.yaml"
PY = sys.executable
PORT = 7000
SERVERS = ("adb", "bdb", "db", "ext", "cwdb", "wdb", "aweb")

SHOP_B = {"name": "shop-b", "parent": ["web", "app", "db"],
          "members": [{"component": "web", "host": "bweb"}, {"component": "db", "host": "bdb"}],
          # egress allowed to the whole lab subnet: the guards must still hold the parents and clone a
          "egress": {"policy": "allow", "to": ["10.0.0.0/16", "fd00:fc::/64"]}}
WIKI_C = {"name": "wiki-c", "parent": ["wfe", "wdb"],
          "members": [{"component": "wfe", "host": "cwfe"}, {"component": "wdb", "host": "cwdb"}]}


# ---------------------------------------------------------------------------
# helpers


def call(lab, method: str, path: str, body=None, raw: bytes | None = None):
    """``(status, body)`` of one request to the lab's controller."""
    return tuple(kit.rest(lab, method, path, body, raw=raw, timeout=60))


def wait_synced(lab, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, sws = call(lab, "GET", "/v1/switches")
        if all(s["synced"] for s in sws):
            return sws
        time.sleep(0.05)
    raise AssertionError(f"not synced: {call(lab, 'GET', '/v1/switches')}")


def ensure_fence(lab, spec: dict) -> None:
    status, body = call(lab, "GET", f"/v1/fences/{spec['name']}?counters=0")
    if status == 404:
        status, body = call(lab, "POST", "/v1/fences?wait=1", spec)
        assert status == 201 and body["synced"], body


def ident(lab, host: str, addr: str, udp=False, count=1, nbytes=100):
    argv = [PY, "-m", "ovs_scripts.traffic", "ident-get", addr, str(PORT), "--bytes", str(nbytes),
            "--count", str(count)]
    if udp:
        argv.append("--udp")
    r = lab.exec(host, argv, check=False, timeout=120)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": False, "error": (r.stderr or r.stdout)[-300:]}


def ping(lab, host, addr, count=2) -> bool:
    return bool(kit.ping(lab, host, addr, count, interval=0.2, wait=2))


def dump_flows(lab, app: str | None = None) -> dict[str, set]:
    """Every switch's flows as comparable tuples (no counters, no durations)."""
    out = {}
    for sw in lab.topology.switches:
        bridge, rundir = lab.switch_target(sw)
        out[sw] = {(f.table, f.priority, f.match_text, f.actions_text, f.cookie)
                   for f in flowdump.dump(bridge, rundir).flows if app is None or f.app == app}
    return out


class Captures:
    """``tcpdump -Q in`` on eth0 of some hosts: every frame each host received while it ran."""

    def __init__(self, lab, hosts, tmp: Path):
        self.paths = {h: tmp / f"{h}.pcap" for h in hosts}
        self.procs = {}
        for h, path in self.paths.items():
            self.procs[h] = lab.popen(h, ["tcpdump", "-i", "eth0", "-Q", "in", "-U", "-n", "-Z", "root",
                                          "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for h, proc in self.procs.items():
            ready, _, _ = select.select([proc.stderr], [], [], 10)
            line = proc.stderr.readline().decode(errors="replace") if ready else ""
            assert "listening on" in line, f"tcpdump in {h} did not start: {line!r}"

    def stop(self, settle: float = 0.8) -> dict[str, list]:
        import scapy.layers.inet  # noqa: F401  (registers Ether/IP/IPv6 for the pcap reader)
        import scapy.layers.inet6  # noqa: F401
        import scapy.layers.l2  # noqa: F401
        from scapy.utils import rdpcap

        time.sleep(settle)  # frames still in flight through the userspace datapath
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(timeout=10)
            proc.stderr.close()
        return {h: list(rdpcap(str(p))) if p.exists() and p.stat().st_size > 24 else []
                for h, p in self.paths.items()}


def send_frames(lab, host: str, frames: list[bytes]) -> None:
    lab.exec(host, [PY, "-m", "ovs_scripts.traffic", "send-frames", *[f.hex() for f in frames]], timeout=30)


# ---------------------------------------------------------------------------
# the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    factory = LabFactory(tmp_path_factory.mktemp("fenced"), RUN_BASE / f"fenced-{os.getpid()}")
    lab = Lab.up(factory.prepare(TOPO), rundir=factory.rundir, timeout=60)
    try:
        for h in SERVERS:
            proc = lab.popen(h, [PY, "-u", "-m", "ovs_scripts.traffic", "ident-serve", str(PORT), "--name", h])
            assert "listening" in proc.stdout.readline()
        yield lab
    finally:
        errors = factory.cleanup()
        shutil.rmtree(factory.rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


# ---------------------------------------------------------------------------
# translation


def test_clone_web_talks_to_clone_db_through_the_parent_address(lab, tmp_path):
    """The vertical slice: aweb -> 10.0.0.13 (db's address) reaches adb, which sees web's address."""
    cap = Captures(lab, ["db", "web", "adb", "bdb"], tmp_path)
    try:
        results = {
            "tcp4": ident(lab, "aweb", "10.0.0.13", nbytes=200_000),
            "udp4": ident(lab, "aweb", "10.0.0.13", udp=True, nbytes=1200),
            "tcp6": ident(lab, "aweb", "fd00:fc::13", nbytes=200_000),
            "udp6": ident(lab, "aweb", "fd00:fc::13", udp=True, nbytes=1200),
        }
        pings = {"icmp4": ping(lab, "aweb", "10.0.0.13"), "icmp6": ping(lab, "aweb", "fd00:fc::13")}
    finally:
        frames = cap.stop()
    for name, res in results.items():
        v6 = name.endswith("6")
        assert res["ok"], (name, res)  # the echo came back intact: checksums right both ways
        assert res["server"] == "adb", (name, res)
        assert res["peer"] == ("fd00:fc::11" if v6 else "10.0.0.11"), (name, res)  # db trusts web's address
        assert res["remote"] == ("fd00:fc::13" if v6 else "10.0.0.13"), (name, res)  # web sees db's address
        assert res["local"] == ("fd00:fc::1:11" if v6 else "10.0.1.11"), (name, res)
    assert all(pings.values()), pings
    # a clone talking to its own parent address loops back to itself, translated both ways
    for addr, peer in (("10.0.0.11", "10.0.0.11"), ("fd00:fc::11", "fd00:fc::11")):
        res = ident(lab, "aweb", addr)
        assert res["ok"] and res["server"] == "aweb" and res["peer"] == peer, res
    assert frames["db"] == [] and frames["web"] == [], \
        f"the parent received {len(frames['db'])} + {len(frames['web'])} frames"
    assert frames["bdb"] == [], "another clone of the parent received frames"
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    pairs = {(p[IP].src, p[IP].dst) for p in frames["adb"] if IP in p}
    pairs |= {(p[IPv6].src, p[IPv6].dst) for p in frames["adb"] if IPv6 in p}
    assert pairs == {("10.0.0.11", "10.0.1.13"), ("fd00:fc::11", "fd00:fc::1:13")}, pairs
    # the parent itself is untouched
    res = ident(lab, "web", "10.0.0.13")
    assert res["ok"] and res["server"] == "db" and res["peer"] == "10.0.0.11", res


def test_clones_of_one_parent_and_of_another_at_the_same_time(lab):
    ensure_fence(lab, SHOP_B)
    ensure_fence(lab, WIKI_C)
    jobs = {"aweb": ("10.0.0.13", "adb", "10.0.0.11"), "bweb": ("10.0.0.13", "bdb", "10.0.0.11"),
            "cwfe": ("10.0.5.22", "cwdb", "10.0.5.21"), "web": ("10.0.0.13", "db", "10.0.0.11"),
            "wfe": ("10.0.5.22", "wdb", "10.0.5.21")}
    results = {}

    def run(host, addr):
        results[host] = ident(lab, host, addr, count=25, nbytes=5000)

    threads = [threading.Thread(target=run, args=(h, j[0])) for h, j in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for host, (addr, server, peer) in jobs.items():
        runs = results[host]
        assert isinstance(runs, list) and len(runs) == 25, (host, runs)
        got = {(r.get("server"), r.get("peer"), r.get("ok")) for r in runs}
        assert got == {(server, peer, True)}, f"{host} -> {addr}: {got}"


# ---------------------------------------------------------------------------
# the fence


def _frames(lab):
    """The negative matrix and its controls, built with scapy: (case, sender, frame, marker)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6NDOptDstLLAddr,
                                    ICMPv6NDOptSrcLLAddr, IPv6)
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

    H = lab.topology.hosts
    mac = {n: h.mac for n, h in H.items()}
    BC = "ff:ff:ff:ff:ff:ff"

    def udp4(src, dst, mk, eth_src=None, eth_dst=None, tags=()):
        f = Ether(src=eth_src, dst=eth_dst or BC)
        for t in tags:
            f = f / t
        return f / IP(src=src, dst=dst) / UDP(sport=40000, dport=PORT) / mk.encode()

    def udp6(src, dst, mk, eth_src=None, eth_dst="33:33:00:00:00:01"):
        return Ether(src=eth_src, dst=eth_dst) / IPv6(src=src, dst=dst) / UDP(sport=40000, dport=PORT) / mk.encode()

    a, b = mac["aweb"], mac["bweb"]
    neg = [  # (case, sender, frame): none of these may arrive anywhere
        ("spoofed source IP: the parent's", "aweb", udp4("10.0.0.11", "10.0.0.13", "N-spoof-ip-parent", a, mac["adb"])),
        ("spoofed source IP: a clone peer's", "aweb", udp4("10.0.1.12", "10.0.0.13", "N-spoof-ip-peer", a, mac["adb"])),
        ("spoofed source IP: another clone's", "aweb",
         udp4("10.0.2.11", "10.0.0.13", "N-spoof-ip-other", a, mac["adb"])),
        ("spoofed source MAC: the parent's", "aweb",
         udp4("10.0.1.11", "10.0.0.13", "N-spoof-mac-parent", mac["web"], mac["adb"])),
        ("spoofed source MAC: a clone peer's", "aweb",
         udp4("10.0.1.11", "10.0.0.13", "N-spoof-mac-peer", mac["aapp"], mac["adb"])),
        ("spoofed source IPv6: the parent's", "aweb",
         udp6("fd00:fc::11", "fd00:fc::13", "N-spoof-ip6-parent", a, mac["adb"])),
        ("to another clone's own address", "aweb", udp4("10.0.1.11", "10.0.2.13", "N-other-clone", a, mac["bdb"])),
        ("to another clone's own address (v6)", "aweb",
         udp6("fd00:fc::1:11", "fd00:fc::2:13", "N-other-clone6", a, mac["bdb"])),
        ("outside the application, egress denied", "aweb", udp4("10.0.1.11", "10.0.9.9", "N-deny-ext", a, mac["ext"])),
        ("another application's parent", "aweb", udp4("10.0.1.11", "10.0.5.22", "N-other-app", a, mac["wdb"])),
        ("a parent component that is not cloned", "bweb", udp4("10.0.2.11", "10.0.0.12", "N-uncloned", b, mac["app"])),
        ("a parent component that is not cloned (v6)", "bweb",
         udp6("fd00:fc::2:11", "fd00:fc::12", "N-uncloned6", b, mac["app"])),
        ("egress allowed, still not clone a's members", "bweb",
         udp4("10.0.2.11", "10.0.1.13", "N-allow-sibling", b, mac["adb"])),
        ("egress allowed, still not clone a's members (v6)", "bweb",
         udp6("fd00:fc::2:11", "fd00:fc::1:13", "N-allow-sibling6", b, mac["adb"])),
        ("egress allowed, spoofed parent source", "bweb",
         udp4("10.0.0.11", "10.0.9.9", "N-allow-spoof", b, mac["ext"])),
        ("broadcast 255.255.255.255", "aweb", udp4("10.0.1.11", "255.255.255.255", "N-bcast", a)),
        ("subnet broadcast", "aweb", udp4("10.0.1.11", "10.0.255.255", "N-bcast-subnet", a)),
        ("broadcast, egress allowed", "bweb", udp4("10.0.2.11", "255.255.255.255", "N-allow-bcast", b)),
        ("subnet broadcast, egress allowed", "bweb", udp4("10.0.2.11", "10.0.255.255", "N-allow-bcast-subnet", b)),
        ("IPv4 multicast", "aweb", udp4("10.0.1.11", "224.0.0.1", "N-mcast4", a, "01:00:5e:00:00:01")),
        ("IPv4 multicast, egress allowed", "bweb",
         udp4("10.0.2.11", "224.0.0.251", "N-allow-mcast4", b, "01:00:5e:00:00:fb")),
        ("IPv6 multicast ff02::1", "aweb", udp6("fd00:fc::1:11", "ff02::1", "N-mcast6", a)),
        ("IPv6 multicast ff05::2", "aweb", udp6("fd00:fc::1:11", "ff05::2", "N-mcast6-site", a, "33:33:00:00:00:02")),
        ("IPv6 multicast to db's solicited-node group", "aweb",
         udp6("fd00:fc::1:11", "ff02::1:ff00:13", "N-mcast6-snm", a, "33:33:ff:00:00:13")),
        ("IPv6 multicast, egress allowed", "bweb", udp6("fd00:fc::2:11", "ff02::1", "N-allow-mcast6", b)),
        ("802.1Q tagged", "aweb", udp4("10.0.1.11", "10.0.0.13", "N-vlan", a, mac["adb"], (Dot1Q(vlan=10),))),
        ("priority tagged (VID 0)", "aweb", udp4("10.0.1.11", "10.0.0.13", "N-vlan0", a, mac["adb"], (Dot1Q(vlan=0),))),
        ("double tagged 802.1ad + 802.1Q", "aweb",
         udp4("10.0.1.11", "10.0.0.13", "N-qinq", a, mac["adb"], (Dot1AD(vlan=100), Dot1Q(vlan=200)))),
        ("double tagged 802.1Q + 802.1Q", "aweb",
         udp4("10.0.1.11", "10.0.0.13", "N-qq", a, mac["adb"], (Dot1Q(vlan=100), Dot1Q(vlan=200)))),
        ("double tagged, egress allowed", "bweb",
         udp4("10.0.2.11", "10.0.9.9", "N-allow-qinq", b, mac["ext"], (Dot1AD(vlan=100), Dot1Q(vlan=200)))),
        ("another ethertype, broadcast", "aweb", Ether(src=a, dst=BC, type=0x88B5) / b"N-ethertype"),
        ("LLDP-like link-local multicast", "aweb",
         Ether(src=a, dst="01:80:c2:00:00:0e", type=0x88CC) / b"N-lldp"),
        # ARP spoofing: nothing carries a marker, so the check is "no host receives any ARP but the answers"
        ("ARP: gratuitous reply claiming db's address", "aweb",
         Ether(src=a, dst=BC) / ARP(op=2, hwsrc=a, psrc="10.0.0.13", hwdst=BC, pdst="10.0.0.13")),
        ("ARP: reply to the parent db", "aweb",
         Ether(src=a, dst=mac["db"]) / ARP(op=2, hwsrc=a, psrc="10.0.1.11", hwdst=mac["db"], pdst="10.0.0.13")),
        ("ARP: request with the parent's sender address", "aweb",
         Ether(src=a, dst=BC) / ARP(op=1, hwsrc=a, psrc="10.0.0.11", pdst="10.0.0.13")),
        ("ARP: request with the parent's sender MAC", "aweb",
         Ether(src=a, dst=BC) / ARP(op=1, hwsrc=mac["web"], psrc="10.0.1.11", pdst="10.0.0.13")),
        # ND spoofing
        ("ND: unsolicited NA for db's address to all nodes", "aweb",
         Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src="fd00:fc::1:11", dst="ff02::1", hlim=255)
         / ICMPv6ND_NA(tgt="fd00:fc::13", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=a)),
        ("ND: NA to a parent address", "aweb",
         Ether(src=a, dst=mac["adb"]) / IPv6(src="fd00:fc::1:11", dst="fd00:fc::13", hlim=255)
         / ICMPv6ND_NA(tgt="fd00:fc::11", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=a)),
        ("ND: NA with the parent's source", "aweb",
         Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src="fd00:fc::11", dst="ff02::1", hlim=255)
         / ICMPv6ND_NA(tgt="fd00:fc::11", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=a)),
        ("ND: NS with the parent's source", "aweb",
         Ether(src=a, dst="33:33:ff:00:00:13") / IPv6(src="fd00:fc::11", dst="ff02::1:ff00:13", hlim=255)
         / ICMPv6ND_NS(tgt="fd00:fc::13") / ICMPv6NDOptSrcLLAddr(lladdr=a)),
        ("ND: router advertisement", "aweb",
         Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src="fd00:fc::1:11", dst="ff02::1", hlim=255)
         / ICMPv6ND_RA()),
    ]
    ctl = [  # (case, sender, frame, receiver, expected (src, dst) there)
        ("clone a: IPv4 to db's address", "aweb", udp4("10.0.1.11", "10.0.0.13", "C-a4", a, mac["adb"]),
         "adb", ("10.0.0.11", "10.0.1.13")),
        ("clone a: IPv6 to db's address", "aweb", udp6("fd00:fc::1:11", "fd00:fc::13", "C-a6", a, mac["adb"]),
         "adb", ("fd00:fc::11", "fd00:fc::1:13")),
        ("clone b: IPv4 to db's address", "bweb", udp4("10.0.2.11", "10.0.0.13", "C-b4", b, mac["bdb"]),
         "bdb", ("10.0.0.11", "10.0.2.13")),
        ("clone b: egress to ext with its own address", "bweb", udp4("10.0.2.11", "10.0.9.9", "C-b-ext", b, mac["ext"]),
         "ext", ("10.0.2.11", "10.0.9.9")),
        ("clone b: egress to ext with its own address (v6)", "bweb",
         udp6("fd00:fc::2:11", "fd00:fc::9:9", "C-b-ext6", b, mac["ext"]), "ext", ("fd00:fc::2:11", "fd00:fc::9:9")),
    ]
    arp_ctl = Ether(src=a, dst=BC) / ARP(op=1, hwsrc=a, psrc="10.0.1.11", pdst="10.0.0.13")
    ns_ctl = (Ether(src=a, dst="33:33:ff:00:00:13") / IPv6(src="fd00:fc::1:11", dst="ff02::1:ff00:13", hlim=255)
              / ICMPv6ND_NS(tgt="fd00:fc::13") / ICMPv6NDOptSrcLLAddr(lladdr=a))
    return neg, ctl, arp_ctl, ns_ctl


def _marker(pkt) -> str | None:
    raw = bytes(pkt)
    for tag in (b"N-", b"C-"):
        i = raw.find(tag)
        if i >= 0:
            end = i
            while end < len(raw) and (raw[end:end + 1].isalnum() or raw[end:end + 1] in b"-"):
                end += 1
            return raw[i:end].decode()
    return None


def test_negative_matrix_nothing_leaks_and_every_control_passes(lab, tmp_path):
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import ICMPv6ND_NA, IPv6
    from scapy.layers.l2 import ARP

    ensure_fence(lab, SHOP_B)
    ensure_fence(lab, WIKI_C)
    wait_synced(lab)
    neg, ctl, arp_ctl, ns_ctl = _frames(lab)
    hosts = list(lab.topology.hosts)
    H = lab.topology.hosts
    _, before = call(lab, "GET", "/v1/fences/shop-a")
    cap = Captures(lab, hosts, tmp_path)
    try:
        for sender in ("aweb", "bweb"):
            frames = [bytes(f) for _, s, f in neg if s == sender] + [bytes(c[2]) for c in ctl if c[1] == sender]
            send_frames(lab, sender, frames)
        send_frames(lab, "aweb", [bytes(arp_ctl), bytes(ns_ctl)])
    finally:
        frames = cap.stop(settle=1.5)

    neg_markers = {_marker(f) for _, _, f in neg} - {None}
    leaks = [(h, _marker(p), p.summary()) for h in hosts for p in frames[h] if _marker(p) in neg_markers]
    assert not leaks, f"frames leaked out of the fence: {leaks}"

    report = []
    for case, sender, frame, receiver, (src, dst) in ctl:
        got = [p for p in frames[receiver] if _marker(p) == _marker(frame)]
        pairs = {(p[IP].src, p[IP].dst) if IP in p else (p[IPv6].src, p[IPv6].dst) for p in got}
        report.append((case, receiver, len(got), pairs))
        assert pairs == {(src, dst)}, f"control {case!r}: {receiver} got {pairs or 'nothing'}"

    # ARP and ND controls: aweb gets answers naming adb's MAC for db's addresses ...
    arp_replies = [p for p in frames["aweb"] if ARP in p]
    assert {(p[ARP].op, p[ARP].psrc, p[ARP].hwsrc, p[ARP].pdst, p[ARP].hwdst) for p in arp_replies} == \
        {(2, "10.0.0.13", H["adb"].mac, "10.0.1.11", H["aweb"].mac)}, [p.summary() for p in arp_replies]
    nas = [p for p in frames["aweb"] if ICMPv6ND_NA in p]
    assert nas and all(p[ICMPv6ND_NA].tgt == "fd00:fc::13" and p[IPv6].dst == "fd00:fc::1:11"
                       and p.src == H["adb"].mac for p in nas), [p.summary() for p in nas]

    # ... and nothing else arrives anywhere but the controls' answers: every frame a host received is explained
    expected = {r: {_marker(f) for _, _, f, rr, _ in ctl if rr == r} for r in hosts}
    for h in hosts:
        me = H[h]
        for p in frames[h]:
            mk = _marker(p)
            if mk is not None and mk in expected[h]:
                continue
            if h in ("aweb", "bweb") and mk is not None and mk.startswith("C-"):
                continue  # the ident servers' answers to the controls (they echo the payload)
            if ARP in p and p[ARP].op == 2 and p[ARP].pdst == str(me.ipv4.ip) and p.dst == me.mac:
                continue  # the switch answering this host's own ARP request
            if ICMPv6ND_NA in p and p[IPv6].dst in (str(me.ipv6.ip),) and p.dst == me.mac:
                continue  # the controller answering this host's own neighbour solicitation
            raise AssertionError(f"{h} received an unexplained frame: {p.summary()} ({bytes(p)[:64].hex()})")
    for h in hosts:
        if not expected[h] and h not in ("aweb", "bweb", "adb", "bdb"):
            assert not frames[h], f"{h} received {[p.summary() for p in frames[h]]}"

    # the fence counted what it dropped (OpenFlow counters trail the datapath by up to ~1 s)
    deadline = time.monotonic() + 5
    while True:
        _, after = call(lab, "GET", "/v1/fences/shop-a")
        dp = after["counters"]["packets"]
        grew = {k: dp[k] - before["counters"]["packets"][k] for k in dp}
        if (grew["port_drop"] >= 12 and grew["fence_drop"] >= 5) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert grew["port_drop"] >= 12 and grew["fence_drop"] >= 5 and grew["translate"] >= 2, grew
    # the NS with the parent's source is dropped at the clone's port (only its own, its link-local
    # and :: sources are admitted); the controller answered the control NS only
    assert after["counters"]["nd_ignored"] == before["counters"]["nd_ignored"], after["counters"]
    assert after["counters"]["nd_answered"] > before["counters"]["nd_answered"], after["counters"]
    print(f"\nnegative matrix: {len(neg)} hostile frames, 0 leaked; {len(ctl) + 2} controls passed; "
          f"shop-a counters grew {grew}")


# ---------------------------------------------------------------------------
# lifecycle


def test_rest_lifecycle_and_bad_requests_change_nothing(lab):
    ensure_fence(lab, SHOP_B)
    wait_synced(lab)
    before = dump_flows(lab)
    bad = [
        ({"name": "x1", "parent": ["web", "app", "db"], "members": [{"component": "web", "host": "aweb"}]},
         409, "members[0].host", "already a clone in fence 'shop-a'"),
        ({"name": "x2", "parent": ["web", "app", "db"], "members": [{"component": "web", "host": "app"}]},
         409, "members[0].host", "component of the parent"),
        ({"name": "x3", "parent": ["web", "app", "db"], "members": [{"component": "cache", "host": "bapp"}]},
         422, "members[0].component", "unknown component"),
        ({"name": "x4", "parent": ["web", "app", "db"], "members": [{"component": "app", "ipv4": "10.0.2.300"}]},
         422, "members[0].ipv4", "not an IPv4 address"),
        ({"name": "x5", "parent": ["web", "app", "db"], "members": [{"component": "app", "ipv6": "fd00::zz"}]},
         422, "members[0].ipv6", "not an IPv6 address"),
        ({"name": "x6", "parent": ["web", "app", "db"], "members": [{"component": "app", "ipv4": "10.0.7.7"}]},
         422, "members[0].ipv4", "not the address of a declared host"),
        ({"name": "x7", "parent": ["web", "nosuch"], "members": []}, 422, "parent[1]", "unknown component"),
        ({"name": "shop-a", "parent": ["web"], "members": []}, 409, "name", "already exists"),
        ({"name": "x8", "parent": ["web", "app", "db"], "members": [{"component": "app", "host": "bapp"}],
          "egress": {"policy": "allow", "to": ["10.0.9.0/33"]}}, 422, "egress.to", "not a prefix"),
        ({"name": "x9", "parent": ["web", "app", "db"], "members": [{"component": "app", "host": "bapp"}],
          "colour": "red"}, 422, "colour", "Extra inputs"),
        ({"name": "x10", "parent": ["aweb"], "members": [{"component": "aweb", "host": "bapp"}]},
         409, "parent[0]", "is a clone in fence 'shop-a'"),
        ({"name": "x11", "parent": ["web", "app", "db"],
          "members": [{"component": "app", "host": "bapp", "ipv4": "10.0.2.13"}]}, 422, "members[0].ipv4",
         "belongs to host bdb"),
    ]
    for body, status, field, words in bad:
        got, err = call(lab, "POST", "/v1/fences", body)
        assert got == status and err.get("field") == field and words in err["error"], (body, got, err)
    got, err = call(lab, "POST", "/v1/fences", raw=b"{not json")
    assert got == 400, err
    got, err = call(lab, "POST", "/v1/fences/shop-b/members", {"component": "app", "host": "aapp"})
    assert got == 409 and err["field"] == "host" and "shop-a" in err["error"], err
    got, err = call(lab, "DELETE", "/v1/fences/nosuch")
    assert got == 404 and "nosuch" in err["error"], err
    got, err = call(lab, "DELETE", "/v1/fences/shop-b/members/app")
    assert got == 404 and "app" in err["error"], err
    # the core's generic intent PUT is validated the same way
    _, intent = call(lab, "GET", "/v1/apps/fenced_clone/intent")
    broken = json.loads(json.dumps(intent))
    broken["fences"][0]["members"][0]["host"] = "bweb"
    got, err = call(lab, "PUT", "/v1/apps/fenced_clone/intent", broken)
    assert got == 409 and "bweb" in err["error"], err
    wait_synced(lab)
    assert dump_flows(lab) == before, "a refused request changed a switch"

    # add a member, read it, remove it, delete the fence: each step changes exactly the fence's flows
    got, fence = call(lab, "POST", "/v1/fences/shop-b/members?wait=1", {"component": "app", "ipv4": "10.0.2.12"})
    assert got == 201 and fence["synced"] and any(m["host"] == "bapp" for m in fence["members"]), fence
    res = ident(lab, "bweb", "10.0.0.12")  # now app's address reaches bapp
    assert res["ok"] is False or res.get("server") is None  # bapp runs no server: nothing answers ...
    assert ping(lab, "bweb", "10.0.0.12") and ping(lab, "bweb", "fd00:fc::12")  # ... but bapp answers ping
    got, one = call(lab, "GET", "/v1/fences/shop-b")
    assert got == 200 and set(one["flows_by_switch"]) == {"s1", "s2", "s3"} and "counters" in one, one
    assert one["counters"]["packets"]["translate"] > 0 or one["counters"]["packets"]["admit"] > 0
    got, fence = call(lab, "DELETE", "/v1/fences/shop-b/members/app?wait=1")
    assert got == 200 and fence["synced"] and not any(m["host"] == "bapp" for m in fence["members"]), fence
    wait_synced(lab)
    assert dump_flows(lab) == before
    assert not ping(lab, "bweb", "10.0.0.12", count=1)

    mine = dump_flows(lab, "fenced_clone")
    _, b = call(lab, "GET", "/v1/fences/shop-b?counters=0")
    fid_hex = b["cookie"].split("/")[0]
    obj = int(fid_hex, 16) & ((1 << 48) - 1)
    got, res = call(lab, "DELETE", "/v1/fences/shop-b?wait=1")
    assert got == 200 and res["synced"] and res["flows_removed"] > 0, res
    after = dump_flows(lab)
    for sw in before:
        gone = before[sw] - after[sw]
        assert not after[sw] - before[sw], f"{sw}: deleting shop-b added flows"
        assert all(c & ((1 << 48) - 1) == obj and c >> 56 == 0x03 for *_, c in gone), f"{sw}: removed others"
        assert not any(c & ((1 << 48) - 1) == obj for *_, c in after[sw] if c >> 56 == 0x03)
    assert sum(len(before[s] - after[s]) for s in before) == res["flows_removed"]
    assert sum(len(v) for v in mine.values()) - res["flows_removed"] == sum(
        len(v) for v in dump_flows(lab, "fenced_clone").values())
    got, _ = call(lab, "GET", "/v1/fences/shop-b")
    assert got == 404
    ensure_fence(lab, SHOP_B)  # back for the tests after this one


def test_controller_restart_keeps_fences_without_churn(lab):
    ensure_fence(lab, SHOP_B)
    ensure_fence(lab, WIKI_C)
    wait_synced(lab)
    before = dump_flows(lab)
    lab.restart_controller()
    _, sws = call(lab, "GET", "/v1/switches")
    assert all(s["synced"] and not any(s["last_changes"].values()) for s in sws), \
        [(s["name"], s["last_changes"]) for s in sws]
    assert dump_flows(lab) == before
    _, fences = call(lab, "GET", "/v1/fences")
    assert {f["name"] for f in fences} == {"shop-a", "shop-b", "wiki-c"}
    for host, server in (("aweb", "adb"), ("bweb", "bdb")):
        res = ident(lab, host, "10.0.0.13")
        assert res["ok"] and res["server"] == server, res


# ---------------------------------------------------------------------------
# many fences


SAMPLES = (1, 37, 100)


def many_topology(n: int) -> dict:
    """A parent (pweb, pdb) and n clones of pweb (w<i>); the sample clones also clone pdb (d<i>)."""
    hosts = {"pweb": {"mac": "02:f2:00:00:00:01", "ipv4": "10.2.0.1/16", "ipv6": "fd00:f2::1/64"},
             "pdb": {"mac": "02:f2:00:00:00:02", "ipv4": "10.2.0.2/16", "ipv6": "fd00:f2::2/64"}}
    links = [["pweb", "s1"], ["pdb", "s3"]]
    for i in range(1, n + 1):
        hosts[f"w{i}"] = {"mac": f"02:f2:01:00:{i >> 8:02x}:{i & 255:02x}", "ipv4": f"10.2.1.{i}/16",
                          "ipv6": f"fd00:f2::1:{i:x}/64"}
        links.append([f"w{i}", f"s{i % 3 + 1}"])
        if i in SAMPLES:
            hosts[f"d{i}"] = {"mac": f"02:f2:02:00:{i >> 8:02x}:{i & 255:02x}", "ipv4": f"10.2.2.{i}/16",
                              "ipv6": f"fd00:f2::2:{i:x}/64"}
            links.append([f"d{i}", f"s{(i + 1) % 3 + 1}"])
    links += [{"a": "s1", "b": "s2", "a_port": 1000, "b_port": 1000},
              {"a": "s2", "b": "s3", "a_port": 1001, "b_port": 1001}]
    return {"lab": {"name": "fenced_many"}, "switches": {"s1": {"dpid": 0xf21}, "s2": {"dpid": 0xf22},
                                                          "s3": {"dpid": 0xf23}},
            "hosts": hosts, "links": links, "apps": {"fabric": {}, "fenced_clone": {}}}


def test_hundred_fences_created_and_deleted_leave_the_tables_as_they_were(lab_factory, tmp_path):
    n = 100
    path = tmp_path / "fenced_many.yaml"
    path.write_text(yaml.safe_dump(many_topology(n), sort_keys=False))
    lab = lab_factory(path)
    for i in SAMPLES:
        proc = lab.popen(f"d{i}", [PY, "-u", "-m", "ovs_scripts.traffic", "ident-serve", str(PORT), "--name", f"d{i}"])
        assert "listening" in proc.stdout.readline()
    wait_synced(lab)
    before = dump_flows(lab)
    t0 = time.monotonic()
    for i in range(1, n + 1):
        members = [{"component": "pweb", "host": f"w{i}"}]
        if i in SAMPLES:
            members.append({"component": "pdb", "ipv4": f"10.2.2.{i}"})
        got, body = call(lab, "POST", "/v1/fences" + ("?wait=1" if i == n else ""),
                         {"name": f"f{i}", "parent": ["pweb", "pdb"], "members": members})
        assert got == 201, body
    assert body["synced"], body
    took = time.monotonic() - t0
    for i in SAMPLES:
        res = ident(lab, f"w{i}", "10.2.0.2")
        assert res["ok"] and res["server"] == f"d{i}" and res["peer"] == "10.2.0.1", (i, res)
    full = dump_flows(lab)
    added = sum(len(full[s] - before[s]) for s in full)
    assert added == sum(len(v) for v in dump_flows(lab, "fenced_clone").values())

    # one fence goes: exactly its flows, nothing else
    _, f37 = call(lab, "GET", "/v1/fences/f37?counters=0")
    obj = int(f37["cookie"].split("/")[0], 16) & ((1 << 48) - 1)
    got, res = call(lab, "DELETE", "/v1/fences/f37?wait=1")
    assert got == 200 and res["synced"], res
    after = dump_flows(lab)
    gone_total = 0
    for sw in full:
        assert not after[sw] - full[sw], f"{sw}: deleting f37 added flows"
        gone = full[sw] - after[sw]
        assert all(c >> 56 == 0x03 and c & ((1 << 48) - 1) == obj for *_, c in gone), f"{sw}: removed others"
        assert not any(c >> 56 == 0x03 and c & ((1 << 48) - 1) == obj for *_, c in after[sw]), sw
        gone_total += len(gone)
    assert gone_total == res["flows_removed"] > 0, (gone_total, res)
    for i in (1, n):  # the neighbours still work
        res = ident(lab, f"w{i}", "10.2.0.2")
        assert res["ok"] and res["server"] == f"d{i}", (i, res)

    t1 = time.monotonic()
    for i in range(1, n + 1):
        if i != 37:
            got, res = call(lab, "DELETE", f"/v1/fences/f{i}" + ("?wait=1" if i == n else ""))
            assert got == 200, res
    assert res["synced"], res
    wait_synced(lab)
    assert dump_flows(lab) == before, "100 fences created and deleted left the flow tables changed"
    print(f"\n{n} fences: created in {took:.1f} s ({added} flows on 3 switches), deleted in "
          f"{time.monotonic() - t1:.1f} s; tables identical to before")
