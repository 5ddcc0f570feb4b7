"""The lab builder against real Open vSwitch, without a controller (``--no-controller``).

Bridges are fail_mode=secure with no controller, so they forward nothing until
a test installs a flow; ``actions=NORMAL`` on every bridge turns the lab into
plain learning switches, which is enough to prove the wiring: namespaces,
veths, ofport numbers, the VXLAN underlay, link control and teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ovs_scripts import kit
from ovs_scripts import lab as labmod
from ovs_scripts import netns as nsutil
from ovs_scripts.lab import Lab, LabError
from ovs_scripts.sandbox import pid_alive, pid_cmdline

# A TCP echo server for one host namespace: prints "ready", serves until killed.
ECHO_SERVER = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d: return
            c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Sends N bytes, reads the echo, prints the number of bytes that came back intact.
ECHO_CLIENT = r"""
import os, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(n)
with socket.create_connection((host, port), timeout=10) as c:
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:
        b = c.recv(65536)
        if not b: break
        got += b
print(len(got) if bytes(got) == data else -1)
"""


def ping(lab: Lab, src: str, dst: str, count: int = 2) -> kit.PingResult:
    return kit.ping(lab, src, dst, count, interval=0.2, wait=1, timeout=30)


def wait_ping(lab: Lab, src: str, dst: str, timeout: float = 10) -> bool:
    return kit.wait_for(lambda: ping(lab, src, dst, count=1), timeout, step=0)


def normal_flows(lab: Lab) -> None:
    for s in lab.topology.switches:
        lab.ofctl(s, "add-flow", "priority=0,actions=NORMAL")


def start_echo_server(lab: Lab, host: str, port: int = 5001):
    proc = lab.popen(host, [sys.executable, "-c", ECHO_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "ready", f"echo server in {host} did not start: {line!r}"
    return proc


def tcp_echo(lab: Lab, src: str, dst: str, nbytes: int, port: int = 5001) -> int:
    cp = lab.exec(src, [sys.executable, "-c", ECHO_CLIENT, dst, str(port), str(nbytes)], timeout=60)
    return int(cp.stdout.strip())


def link_names(netns: str) -> set[str]:
    return set(nsutil.list_links(netns))


def snapshot() -> dict:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            procs[int(entry)] = " ".join(pid_cmdline(int(entry)))
    return {"links": set(nsutil.list_links()), "netns": set(nsutil.list_netns()), "procs": procs}


def assert_clean(before: dict, lab_prefix: str, labdir, extra_pids=()) -> None:
    after = snapshot()
    new_links = after["links"] - before["links"]
    assert not {n for n in new_links if n.startswith(f"{lab_prefix}-") or n == "ovs-netdev"}, new_links
    assert not {n for n in after["netns"] - before["netns"] if n.startswith(f"{lab_prefix}-")}
    assert not [n for n in after["netns"] if n.startswith(f"{lab_prefix}-")]
    marker = str(labdir) + "/"
    ours = {pid: cmd for pid, cmd in after["procs"].items()
            if pid not in before["procs"] and marker in cmd and pid_alive(pid)}
    assert not ours, f"processes left behind: {ours}"
    for pid in extra_pids:
        assert not pid_alive(pid), f"pid {pid} still runs"
    assert not labdir.exists(), f"{labdir} still exists"


# ---------------------------------------------------------------------------------


def test_chain3_builds_namespaces_veths_and_bridges(lab_factory):
    before = set(nsutil.list_links())
    lab = lab_factory("chain3.yaml", controller=False)
    topo, p = lab.topology, lab.topology.prefix
    assert lab.state.data["status"] == "up"

    # namespaces: one for the switches, one per host; nothing in our own namespace
    netns = set(nsutil.list_netns())
    assert {f"{p}-sw", f"{p}-h1", f"{p}-h2", f"{p}-h3"} <= netns
    assert not [n for n in set(nsutil.list_links()) - before if n.startswith(f"{p}-")]

    # host side: eth0 with the MAC and addresses of the file, tx checksum offload off
    for h in topo.hosts.values():
        st = nsutil.link_state("eth0", h.netns)
        assert st and st["up"] and st["mac"] == h.mac
        addrs = lab.exec(h.name, ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert str(h.ipv4) in addrs and str(h.ipv6) in addrs
        feats = lab.exec(h.name, ["ethtool", "-k", "eth0"]).stdout
        assert "tx-checksumming: off" in feats
        assert lab.exec(h.name, ["sysctl", "-n", "net.ipv6.conf.eth0.accept_ra"]).stdout.strip() == "0"

    # switch side: one veth end per port, named after the port, all up, no IPv6
    sw_links = link_names(f"{p}-sw")
    for pi in topo.ports.values():
        assert pi.ifname in sw_links
        assert nsutil.link_state(pi.ifname, f"{p}-sw")["up"]
    assert lab.exec("s1", ["sysctl", "-n", f"net.ipv6.conf.{p}-s1-1.disable_ipv6"]).stdout.strip() == "1"

    # bridges, read back through ovsdbapp
    with lab.sandbox("sw").db() as db:
        assert db.list_bridges() == sorted(sw.bridge for sw in topo.switches.values())
        for s, sw in topo.switches.items():
            br = db.bridge(sw.bridge)
            assert br["datapath_type"] == "netdev"
            assert br["fail_mode"] == "secure"
            assert br["protocols"] == ["OpenFlow13"]
            assert br["other_config"]["datapath-id"] == f"{sw.dpid:016x}"
            assert br["other_config"]["disable-in-band"] == "true"
            assert br["controller"] == []  # --no-controller
            ifaces = db.interfaces(sw.bridge)
            for pi in topo.switch_ports(s):
                assert ifaces[pi.ifname]["ofport"] == pi.port, pi
                assert ifaces[pi.ifname]["ofport_request"] == pi.port
            # the bridge's own internal port (a tap in the netdev datapath) stays down, without IPv6
            assert not nsutil.link_state(sw.bridge, f"{p}-sw")["up"]
            v6 = lab.exec(s, ["sysctl", "-n", f"net.ipv6.conf.{sw.bridge}.disable_ipv6"]).stdout.strip()
            assert v6 == "1"

    # ofport numbers as the switch reports them over OpenFlow
    show = lab.ofctl("s2", "show").stdout
    for pi in topo.switch_ports("s2"):
        assert f" {pi.port}({pi.ifname})" in show

    # status and switch lookups
    st = lab.status()
    assert st["switches"]["s2"]["ports"][3]["ifname"] == f"{p}-s2-3"
    assert st["sandboxes"]["sw"]["ovs_vswitchd"]
    bridge, rundir = lab.switch_target("s1")
    assert bridge == f"{p}-s1" and os.path.exists(os.path.join(rundir, f"{bridge}.mgmt"))
    assert labmod.find_switch(f"{p}-s3", rundir=lab_factory.rundir)[:2] == ("chain3", f"{p}-s3")
    assert labmod.find_switch("nope", rundir=lab_factory.rundir) is None

    # a second `up` of the same lab is refused, pointing at `ovslab down`
    with pytest.raises(LabError, match="already up.*ovslab down chain3"):
        Lab.up(lab_factory.tmp_path / f"{p}-chain3.yaml", controller=False, rundir=lab_factory.rundir)
    assert lab.state.data["status"] == "up"


def test_chain3_ping_tcp_and_link_control(lab_factory):
    lab = lab_factory("chain3.yaml", controller=False)
    assert not ping(lab, "h1", "10.1.0.3", count=1), "fail_mode=secure without flows must not forward"
    normal_flows(lab)
    assert wait_ping(lab, "h1", "10.1.0.3")
    assert ping(lab, "h1", "fd00:1::3")
    start_echo_server(lab, "h3")
    assert tcp_echo(lab, "h1", "10.1.0.3", 1_000_000) == 1_000_000

    cli = lab_factory.cli
    r = cli("link", "h1", "s1", "down")
    assert r.returncode == 0, r.stderr
    assert not ping(lab, "h1", "10.1.0.3", count=2)
    assert cli("link", "h1", "s1", "up").returncode == 0
    assert wait_ping(lab, "h1", "10.1.0.3")

    r = cli("link", "s2", "s3", "down")
    assert r.returncode == 0 and f"{lab.topology.prefix}-s3-2" in r.stdout, r.stderr
    assert not ping(lab, "h1", "10.1.0.3", count=2)
    assert ping(lab, "h1", "10.1.0.2")  # h2 on s2 is still reachable
    assert cli("link", "s3", "s2", "up").returncode == 0
    assert wait_ping(lab, "h1", "10.1.0.3")

    r = cli("link", "h1", "s3", "down")
    assert r.returncode == 2 and r.stderr.startswith("ovslab: host h1 is linked to s1"), r.stderr

    # exec: the command's exit code comes back; unknown hosts are a one-line error
    assert cli("exec", "h2", "--", "sh", "-c", "exit 7").returncode == 7
    r = cli("exec", "h2", "--", "ip", "-o", "link", "show", "eth0")
    assert r.returncode == 0 and "02:00:00:00:01:02" in r.stdout
    r = cli("exec", "h9", "--", "true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("ovslab: ")

    st = json.loads(cli("status", "--json").stdout)
    assert st[0]["name"] == "chain3" and st[0]["status"] == "up"


def test_tunnel_ping_and_tcp_across_vxlan(lab_factory):
    lab = lab_factory("tunnel.yaml", controller=False)
    topo, p = lab.topology, lab.topology.prefix
    assert {f"{p}-ul", f"{p}-n1", f"{p}-n2", f"{p}-h1", f"{p}-h2"} <= set(nsutil.list_netns())
    assert f"{p}-sw" not in nsutil.list_netns()  # every switch is on a node

    for node in ("n1", "n2"):
        ns = topo.nodes[node].netns
        with lab.sandbox(node).db() as db:
            assert db.list_bridges() == sorted([f"{p}-{node}-p", topo.switches["s" + node[1]].bridge])
            phy = db.bridge(f"{p}-{node}-p")
            assert phy["fail_mode"] == "standalone" and phy["controller"] == []
            sw = "s1" if node == "n1" else "s2"
            ifaces = db.interfaces(topo.switches[sw].bridge)
            tun = ifaces[f"{p}-{sw}-100"]
            assert tun["type"] == "vxlan" and tun["ofport"] == 100
            peer = "192.168.77.2" if node == "n1" else "192.168.77.1"
            assert tun["options"] == {"remote_ip": peer, "key": "5001"}
            assert ifaces[f"{p}-{sw}-1"]["ofport"] == 1
        # the underlay address lives on br-phy's internal port, inside the node
        addrs = lab.exec(node, ["ip", "-o", "-4", "addr", "show", "dev", f"{p}-{node}-p"]).stdout
        assert str(topo.nodes[node].underlay_ip) in addrs
        assert nsutil.link_state(f"{p}-{sw}-1", ns)["up"]

    normal_flows(lab)
    assert wait_ping(lab, "h1", "10.3.0.2")
    assert ping(lab, "h1", "fd00:3::2")

    def underlay_rx(node: str) -> int:
        out = lab.exec(node, ["ip", "-j", "-s", "link", "show", "dev", "underlay"]).stdout
        return json.loads(out)[0]["stats64"]["rx"]["bytes"]

    start_echo_server(lab, "h2")
    rx0 = underlay_rx("n2")
    assert tcp_echo(lab, "h1", "10.3.0.2", 1_000_000) == 1_000_000
    assert underlay_rx("n2") - rx0 > 1_000_000, "the TCP stream did not cross the underlay"
    assert tcp_echo(lab, "h1", "fd00:3::2", 200_000) == 200_000

    # cutting n1's underlay cuts the tunnel
    cli = lab_factory.cli
    assert cli("link", "n1", "underlay", "down").returncode == 0
    assert not ping(lab, "h1", "10.3.0.2", count=2)
    assert cli("link", "n1", "underlay", "up").returncode == 0
    assert wait_ping(lab, "h1", "10.3.0.2")
    r = cli("link", "s1", "s2", "down")
    assert r.returncode == 2 and "underlay" in r.stderr


def test_down_leaves_nothing_behind(lab_factory):
    before = snapshot()
    path = lab_factory.prepare("tunnel.yaml")
    r = lab_factory.cli("up", str(path), "--no-controller")
    assert r.returncode == 0, r.stderr
    lab = Lab.attach("tunnel", rundir=lab_factory.rundir)
    p = lab.topology.prefix
    # while up: nothing of the lab in our namespace
    assert not {n for n in set(nsutil.list_links()) - before["links"] if n.startswith(f"{p}-")}
    daemons = [pid for e in lab.state.objects if e["kind"] == "sandbox" for pid in e["pids"].values()]
    assert len(daemons) == 4 and all(pid_alive(x) for x in daemons)
    bg = lab.popen("h1", ["sleep", "300"])
    normal_flows(lab)
    assert wait_ping(lab, "h1", "10.3.0.2")

    r = lab_factory.cli("down")  # the only lab up: no name needed
    assert r.returncode == 0 and "lab tunnel is down" in r.stdout, r.stderr
    bg.wait(timeout=5)
    assert_clean(before, p, lab.dir, extra_pids=daemons + [bg.pid])

    # down is idempotent
    r = lab_factory.cli("down", "tunnel")
    assert r.returncode == 0 and "nothing to do" in r.stderr + r.stdout


def test_down_after_vswitchd_crash(lab_factory):
    before = snapshot()
    lab = lab_factory("chain3.yaml", controller=False)
    p = lab.topology.prefix
    sb = lab.sandbox("sw")
    vs = sb.pid("ovs-vswitchd")
    assert vs and "ovs-vswitchd" in pid_cmdline(vs)[0]
    os.kill(vs, signal.SIGKILL)
    kit.wait_for(lambda: not pid_alive(vs), 5)
    assert not pid_alive(vs)
    # the userspace datapath's taps outlive the daemon
    assert f"{p}-s1" in link_names(f"{p}-sw")
    db_pid = sb.pid("ovsdb-server")

    r = lab_factory.cli("down", "chain3")
    assert r.returncode == 0, r.stderr
    assert_clean(before, p, lab.dir, extra_pids=[db_pid])


def test_down_after_crash_during_up(lab_factory, monkeypatch):
    """A crash half-way through `up` (simulated: up fails and its own cleanup is lost) is undone by `down`."""
    before = snapshot()
    path = lab_factory.prepare("chain3.yaml")
    p = path.name.split("-")[0]
    calls = {"n": 0}
    real_add_veth = nsutil.add_veth

    def flaky_add_veth(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_add_veth(*a, **kw)

    monkeypatch.setattr(nsutil, "add_veth", flaky_add_veth)
    monkeypatch.setattr(labmod, "teardown", lambda labdir: [])  # the crash: no cleanup ran
    with pytest.raises(RuntimeError, match="simulated crash"):
        Lab.up(path, controller=False, rundir=lab_factory.rundir)
    monkeypatch.undo()

    labdir = lab_factory.rundir / "chain3"
    state = json.loads((labdir / "state.json").read_text())
    kinds = [e["kind"] for e in state["objects"]]
    assert kinds.count("netns") == 4 and "sandbox" in kinds and kinds.count("link") == 3
    assert f"{p}-sw" in nsutil.list_netns()

    r = lab_factory.cli("down", "chain3")
    assert r.returncode == 0, r.stderr
    assert_clean(before, p, labdir)


@pytest.mark.parametrize("bad,words", [
    ("switches:\n  s1: {dpid: 1}\n  s2: {dpid: 1}\n", ["switches.s2.dpid", "already used by s1"]),
    ("switches: [\n", ["line", "invalid YAML"]),
    ("switches:\n  s1: {dpid: 1, colour: red}\n", ["switches.s1.colour"]),
])
def test_up_invalid_file_fails_clearly_and_creates_nothing(lab_factory, tmp_path, bad, words):
    before = snapshot()
    path = tmp_path / "bad.yaml"
    path.write_text("lab: {name: badlab, prefix: zbad}\n" + bad)
    r = lab_factory.cli("up", str(path), "--no-controller")
    assert r.returncode == 2
    assert r.stderr.startswith(f"ovslab: {path}") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr
    assert not (lab_factory.rundir / "badlab").exists()
    after = snapshot()
    assert after["netns"] - before["netns"] == {n for n in after["netns"] - before["netns"]
                                                if not n.startswith("zbad-")}


def test_up_refuses_clashing_namespace_and_creates_nothing(lab_factory):
    path = lab_factory.prepare("chain3.yaml")
    p = path.name.split("-")[0]
    nsutil.add_netns(f"{p}-h2")  # someone else's namespace with the lab's name
    try:
        r = lab_factory.cli("up", str(path), "--no-controller")
        assert r.returncode == 2 and f"namespace {p}-h2 already exists" in r.stderr, r.stderr
        assert not (lab_factory.rundir / "chain3").exists()
        assert f"{p}-sw" not in nsutil.list_netns()
        assert f"{p}-h2" in nsutil.list_netns()  # not ours: left alone
    finally:
        nsutil.del_netns_if_exists(f"{p}-h2")
