"""Proxy clusters on real OVS, real HAProxy (Debian), the agents and the controller: a VIP spread over proxies.

One lab (``topologies/proxy_cluster.yaml``): clients on s1, proxies on s2 (p1, p2
declared; p3, p4 spare nodes whose agents wait to be declared), servers on s3.
The lab starts an agent on every proxy node; the agent renders HAProxy's config
from the controller, starts it, holds the VIP, and sends the heartbeats that
keep the proxy in the hash.  Servers are ``ovs_scripts.http_load serve``
(they name themselves), HAProxy names the proxy (``X-Proxy``), so every
request's path is known; ``http_load load`` records what happened to each one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import http_load, kit
from ovs_scripts.lab import Lab
from tests.integration.conftest import RUN_BASE, LabFactory, _skip_reason

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOPO = REPO / "topologies" / "proxy_cluster.yaml"
PY = sys.executable
VIP4, VIP6 = "10.59.0.100", "fd00:59::100"
#: what the topology sets: 250 ms heartbeats, 3 missed -> out, 2 s hold-down before coming back
OUT_WITHIN_S = 1.0

#: requests over one keep-alive connection per entry of argv; prints one JSON line per connection
CLIENT = r"""
import http.client, json, sys
host, n, conns, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(conns):
    c = http.client.HTTPConnection(host, 80, timeout=5)
    seen = []
    try:
        for _ in range(n):
            c.request("GET", "/v1/x", headers={"X-API-Key": key} if key != "-" else {})
            r = c.getresponse()
            r.read()
            seen.append([r.status, r.getheader("X-Proxy"), r.getheader("X-Server"), c.sock.getsockname()[1]])
    except Exception as exc:
        seen.append(["error", repr(exc)])
    finally:
        c.close()
    print(json.dumps(seen), flush=True)
"""


def call(lab, method, path, body=None):
    return tuple(kit.rest(lab, method, path, body, timeout=60))


def clients(lab, host, vip=VIP4, n=3, conns=1, key="-"):
    cp = lab.exec(host, [PY, "-c", CLIENT, vip, str(n), str(conns), key], timeout=60)
    return [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]


def proxies(lab) -> dict[str, dict]:
    status, body = call(lab, "GET", "/v1/proxy-clusters/api")
    assert status == 200, body
    return {p["host"]: p for p in body["proxies"]}


def in_hash(lab) -> set[str]:
    return {h for h, p in proxies(lab).items() if p["in_hash"]}


def wait_hash(lab, want: set[str], timeout: float = 20) -> None:
    assert kit.wait_for(lambda: in_hash(lab) == want, timeout), (want, proxies(lab))


def timed_out_of_hash(lab, proxy: str, t0: float, timeout: float = 5) -> float:
    """Seconds from ``t0`` until ``proxy`` is out of the hash (REST polled every 20 ms)."""
    assert kit.wait_for(lambda: proxy not in in_hash(lab), timeout, step=0.02), proxies(lab)
    return time.monotonic() - t0


class Load(http_load.LabLoad):
    """``http_load load`` in a client namespace with fresh session keys (a key another test moved
    off a server - a drain - sticks to its new server in the tables, unlike its consistent hash)."""

    runs = 0

    def __init__(self, lab, host: str, seconds: float, vip: str = VIP4, **opts):
        Load.runs += 1
        opts.setdefault("key_prefix", f"L{Load.runs}")
        super().__init__(lab, host, vip, seconds, **opts)


def haproxy_pid(lab, proxy: str) -> int:
    return int((lab.dir / f"agent-{proxy}" / "haproxy.pid").read_text().split()[0])


def haproxy_running(lab, proxy: str) -> bool:
    """Is the HAProxy master the agent started for ``proxy`` running (not a zombie)?"""
    try:
        stat = Path(f"/proc/{haproxy_pid(lab, proxy)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return "(haproxy)" in stat and stat.rsplit(")", 1)[1].split()[0] != "Z"


def set_proxies(lab, states: dict[str, str | None]) -> None:
    """PUT (state) or DELETE (None) proxies through the per-proxy endpoints."""
    for host, state in states.items():
        if state is None:
            status, body = call(lab, "DELETE", f"/v1/proxy-clusters/api/proxies/{host}")
        else:
            status, body = call(lab, "PUT", f"/v1/proxy-clusters/api/proxies/{host}", {"host": host, "state": state})
        assert status == 200, body


def diag(lab) -> str:
    """What the controller and the agents said about health and config: for failure messages."""
    status, body = call(lab, "GET", "/v1/proxy-clusters/api")
    lines = [time.strftime("%H:%M:%S", time.localtime(e["t"])) + f".{int(e['t'] % 1 * 1000):03d} {e['event']}"
             for e in body.get("events", [])][-30:]
    for p in ("p1", "p2", "p3", "p4"):
        log = lab.dir / f"agent-{p}.log"
        if log.exists():
            lines += [f"{p}: {ln}" for ln in log.read_text().splitlines()[-8:]]
    return "\n".join(lines)


#: the switches take a health change a few ms after REST shows it, and the load's clock started
#: a little before ours: new connections failing this long after the REST view count as in the window
WINDOW_SLACK_S = 0.25


def no_failures(r: dict, lab) -> None:
    """Zero failed requests, or the failures and what the controller and agents said, in full."""
    if r["failed"]:
        print(f"failures: {r['failures']}\n{diag(lab)}")
    assert r["failed"] == 0, r["failures"][:5]


def failures_only_on(result: dict, proxy: str, since: float, window: float) -> list[dict]:
    """Failures that are neither on ``proxy``'s connections nor new connections (or reconnects)
    in the window after the fault at ``since`` (load clock): what must be empty."""
    return [f for f in result["failures"]
            if not (f["proxy"] == proxy or (f["proxy"] is None and since <= f["t"] <= since + window + WINDOW_SLACK_S))]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _skip_reason() or (None if shutil.which("haproxy") else "haproxy (Debian) is not installed")
    if reason:
        pytest.skip(reason)
    factory = LabFactory(tmp_path_factory.mktemp("proxy"), RUN_BASE / f"proxy-{os.getpid()}")
    lab = Lab.up(factory.prepare(TOPO), rundir=factory.rundir, timeout=60)
    try:
        http_load.start_servers(lab, ("a1", "a2"))
        wait_hash(lab, {"p1", "p2"})
        assert kit.wait_for(lambda: all(o[0][0] == 200 for o in clients(lab, "c1", n=1, conns=4)), 20)
        yield lab
    finally:
        errors = factory.cleanup()
        shutil.rmtree(factory.rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


@pytest.fixture()
def healthy(lab):
    """Each test starts and ends with p1 and p2 in the hash and p3, p4 not proxies."""
    wait_hash(lab, {"p1", "p2"})
    yield lab
    wait_hash(lab, {"p1", "p2"})


def test_agents_configure_their_proxies_and_the_controller_hears_them(healthy):
    lab = healthy
    ps = proxies(lab)
    for p in ("p1", "p2"):
        assert ps[p]["config_current"] and ps[p]["health"]["state"] == "up", ps[p]
        cfg = (lab.dir / f"agent-{p}" / "haproxy.cfg").read_text()
        status, served = call(lab, "GET", f"/v1/proxy-clusters/api/haproxy/{p}?run_dir={lab.dir / f'agent-{p}'}")
        assert cfg == served["config"]
        addrs = lab.exec(p, ["ip", "addr", "show", "dev", "lo"]).stdout
        assert f"{VIP4}/32" in addrs and f"{VIP6}/128" in addrs
    for spare in ("p3", "p4"):  # agents running, not proxies: no HAProxy, no VIP
        assert not (lab.dir / f"agent-{spare}" / "haproxy.pid").exists()
        assert VIP4 not in lab.exec(spare, ["ip", "addr", "show", "dev", "lo"]).stdout


def test_the_vip_serves_over_both_proxies_and_both_families(healthy):
    lab = healthy
    out = clients(lab, "c1", n=2, conns=24) + clients(lab, "c2", n=2, conns=24)
    assert all(r[0] == 200 for conn in out for r in conn), out
    # one connection never changes proxy; connections spread over the active proxies only
    per_conn = [{r[1] for r in conn} for conn in out]
    assert all(len(s) == 1 for s in per_conn), per_conn
    assert set().union(*per_conn) == {"p1", "p2"}, per_conn
    assert {r[2] for conn in out for r in conn} == {"a1", "a2"}
    v6 = clients(lab, "c1", vip=VIP6, n=2, conns=8)
    assert all(r[0] == 200 for conn in v6 for r in conn), v6


def test_an_api_key_keeps_its_server_whichever_proxy_takes_it(healthy):
    out = clients(healthy, "c1", n=1, conns=16, key="alice")
    assert len({conn[0][2] for conn in out}) == 1, out
    assert len({conn[0][1] for conn in out}) == 2, out   # both proxies served alice: peers share the entry


def test_scale_out_to_four_proxies_and_back_under_load(healthy):
    """Declaring p3, p4 is all it takes (their agents start HAProxy); then drain and remove them.
    Zero failed requests, no TCP connection ever changes proxy, every session keeps its server."""
    lab = healthy
    load = Load(lab, "c1", 16, conns=12, gap_ms=5, new_rate=40, sessions=30)
    time.sleep(2)
    set_proxies(lab, {"p3": "active", "p4": "active"})
    wait_hash(lab, {"p1", "p2", "p3", "p4"}, timeout=10)
    time.sleep(3)
    set_proxies(lab, {"p3": "drain", "p4": "drain"})
    assert kit.wait_for(lambda: all(proxies(lab)[p]["drain_complete"] for p in ("p3", "p4")), 8), proxies(lab)
    set_proxies(lab, {"p3": None, "p4": None})
    r = load.result()
    no_failures(r, lab)
    assert r["moved_conns"] == {}, r["moved_conns"]
    assert r["session_server_changes"] == {}, r["session_server_changes"]
    assert r["by_proxy"].get("p3", 0) > 0 and r["by_proxy"].get("p4", 0) > 0, r["by_proxy"]
    for p in ("p3", "p4"):  # no longer proxies: VIP gone, HAProxy stopped once its sessions ended
        assert VIP4 not in lab.exec(p, ["ip", "addr", "show", "dev", "lo"]).stdout
        assert kit.wait_for(lambda p=p: not haproxy_running(lab, p), 10), diag(lab)


def test_a_killed_haproxy_leaves_the_hash_in_time_and_sessions_keep_their_servers(healthy):
    lab = healthy
    load = Load(lab, "c1", 7, conns=10, gap_ms=5, new_rate=40, sessions=30)
    time.sleep(2)
    t0 = time.monotonic()
    os.kill(haproxy_pid(lab, "p2"), signal.SIGKILL)
    took = timed_out_of_hash(lab, "p2", t0)
    r = load.result()
    print(f"kill -9 HAProxy: out of the hash after {took * 1000:.0f} ms; {r['failed']} of {r['requests']} "
          f"requests failed: {[(f['conn'], f['kind']) for f in r['failures']]}")
    assert took <= OUT_WITHIN_S
    assert failures_only_on(r, "p2", t0 - load.t0, took) == []
    assert r["moved_conns"] == {} and r["session_server_changes"] == {}, r
    # the agent started HAProxy again; p2 is back after the hold-down (the fixture waits for it)


def test_a_killed_agent_takes_its_proxy_out_and_a_new_agent_adopts_haproxy(healthy):
    lab = healthy
    before = haproxy_pid(lab, "p2")
    load = Load(lab, "c1", 6, conns=10, gap_ms=5, new_rate=40, sessions=30)
    time.sleep(1.5)
    t0 = time.monotonic()
    lab.signal_process("proxy-agent p2", signal.SIGKILL)
    took = timed_out_of_hash(lab, "p2", t0)
    r = load.result()
    print(f"kill -9 agent: out of the hash after {took * 1000:.0f} ms; {r['failed']} of {r['requests']} failed")
    assert OUT_WITHIN_S * 0.5 <= took <= OUT_WITHIN_S  # fall (3) missed beats of 250 ms, not at once
    assert failures_only_on(r, "p2", t0 - load.t0, took) == []
    assert r["session_server_changes"] == {}, r
    lab.start_agent("p2")
    wait_hash(lab, {"p1", "p2"})
    assert haproxy_pid(lab, "p2") == before   # adopted, not restarted
    assert "adopted HAProxy" in (lab.dir / "agent-p2.log").read_text()


def test_a_cut_link_takes_its_proxy_out_at_once(healthy):
    lab = healthy
    load = Load(lab, "c1", 6, conns=10, gap_ms=5, new_rate=40, sessions=30)
    time.sleep(1.5)
    t0 = time.monotonic()
    lab.link("p1", "s2", "down")
    try:
        took = timed_out_of_hash(lab, "p1", t0)
        r = load.result()
    finally:
        lab.link("p1", "s2", "up")
    print(f"link cut: out of the hash after {took * 1000:.0f} ms; {r['failed']} of {r['requests']} failed")
    assert took <= OUT_WITHIN_S
    assert failures_only_on(r, "p1", t0 - load.t0, took) == []
    assert r["session_server_changes"] == {}, r


def test_bad_cluster_bodies_are_refused_and_change_nothing(healthy):
    lab = healthy
    status, before = call(lab, "GET", "/v1/proxy-clusters/api")
    cases = [
        ("POST", "/v1/proxy-clusters",
         {"name": "x", "vip4": "10.59.0.1", "proxies": [{"host": "nobody"}],
          "pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 1}]}]}, "proxies[0].host"),
        ("POST", "/v1/proxy-clusters",
         {"name": "x", "vip4": "10.51.0.1", "proxies": [{"host": "p3"}],
          "pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 1}]}]}, "vip4"),
        ("POST", "/v1/proxy-clusters", {"name": "x", "proxies": []}, "proxies"),
        ("PUT", "/v1/proxy-clusters/api/proxies/p3", {"host": "p3", "state": "asleep"}, "state"),
        ("PUT", "/v1/proxy-clusters/api/proxies/p3", {"host": "p4"}, "host"),
        ("PUT", "/v1/proxy-clusters/api/proxies/a1", {"host": "a1"}, "host a1"),
        ("PUT", "/v1/proxy-clusters/api/pools/v1/servers/a3", {"name": "a3", "host": "nobody", "port": 80}, "host"),
        ("PUT", "/v1/proxy-clusters/api/pools/v1/servers/a3", {"name": "a3", "host": "a1", "port": 0}, "port"),
        ("DELETE", "/v1/proxy-clusters/api/pools/v9/servers/a1", None, "no pool"),
    ]
    for method, path, body, field in cases:
        status, err = call(lab, method, path, body)
        assert status in (404, 409, 422), (path, body, status, err)
        assert field in json.dumps(err), (field, err)
    status, after = call(lab, "GET", "/v1/proxy-clusters/api")
    assert after["intent"] == before["intent"]
    out = clients(lab, "c1", n=1, conns=4)
    assert all(conn[0][0] == 200 for conn in out), (out, diag(lab))


def put_server(lab, name: str, host: str, state: str = "ready") -> dict:
    status, body = call(lab, "PUT", f"/v1/proxy-clusters/api/pools/v1/servers/{name}",
                        {"name": name, "host": host, "port": 8000, "state": state})
    assert status == 200, body
    return body


def agent_lines(lab, proxy: str, since: int) -> list[str]:
    return (lab.dir / f"agent-{proxy}.log").read_text().splitlines()[since:]


def test_a_server_drains_and_leaves_through_every_proxy_without_a_failed_request(healthy):
    """Drain a2 (runtime API on every proxy: no reload), remove it (a seamless reload), bring it back.
    Sessions on a2 move to a1 the same way on every proxy; nothing fails."""
    lab = healthy
    marks = {p: len(agent_lines(lab, p, 0)) for p in ("p1", "p2")}
    load = Load(lab, "c1", 9, conns=10, gap_ms=5, new_rate=40, sessions=40)
    time.sleep(1.5)
    put_server(lab, "a2", "a2", "drain")
    assert kit.wait_for(lambda: all(proxies(lab)[p]["config_current"] for p in ("p1", "p2")), 5)
    for p in ("p1", "p2"):  # one step, the same on both: the runtime API, no reload
        assert any("runtime API (1 commands)" in ln for ln in agent_lines(lab, p, marks[p])), agent_lines(lab, p, 0)
    time.sleep(1.5)
    status, body = call(lab, "DELETE", "/v1/proxy-clusters/api/pools/v1/servers/a2")
    assert status == 200, body
    time.sleep(2.5)
    after = Load(lab, "c2", 2, conns=4, gap_ms=5, new_rate=40, sessions=40).result()
    put_server(lab, "a2", "a2")
    r = load.result()
    no_failures(r, lab)
    assert r["moved_conns"] == {}
    # once a2 is gone every session is on a1, whichever proxy answers
    assert after["failed"] == 0 and set(after["by_server"]) == {"a1"}, after
    assert all(s == ["a1"] for s in after["sessions"].values()), after["sessions"]


def test_ten_reloads_of_every_proxy_under_load_fail_no_request(healthy):
    """Zero failed requests, no connection moved, and sessions keep their servers.  (Sessions are
    fresh here: one whose table entry differs from its consistent hash - moved off a drained
    server - can be re-assigned if it reconnects in the milliseconds before a reloaded worker has
    learned the table from the old one; see the README's limits.)"""
    lab = healthy
    status, spec = call(lab, "GET", "/v1/proxy-clusters/api")
    intent = spec["intent"]
    marks = {p: len(agent_lines(lab, p, 0)) for p in ("p1", "p2")}
    load = Load(lab, "c1", 9, conns=12, gap_ms=5, new_rate=40, sessions=30)
    time.sleep(1)
    for i in range(10):  # a route that comes and goes: a change only a reload can make
        intent["routes"] = [] if i % 2 else [{"prefix": f"/r{i}/", "pool": "v1"}]
        status, body = call(lab, "PUT", "/v1/proxy-clusters/api", intent)
        assert status == 200, body
        time.sleep(0.6)
    intent["routes"] = []
    call(lab, "PUT", "/v1/proxy-clusters/api", intent)
    r = load.result()
    reloads = {p: sum("hitless reload" in ln for ln in agent_lines(lab, p, marks[p])) for p in ("p1", "p2")}
    print(f"reloads {reloads}: {r['requests']} requests, {r['failed']} failed, "
          f"{r['closed_by_server']} connections closed gracefully by a reloading proxy")
    assert min(reloads.values()) >= 10, reloads
    no_failures(r, lab)
    assert r["moved_conns"] == {} and r["session_server_changes"] == {}, r


def tcpdump(lab, host: str, bpf: str, path: Path):
    """A capture in ``host``'s namespace (returns once tcpdump listens); stop it with .send_signal(SIGINT)."""
    proc = lab.popen(host, ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(path), bpf],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "listening on" in proc.stderr.readline()
    return proc


def stop(proc) -> None:
    # libpcap hands packets over in blocks, retired by a timer: a capture stopped sooner loses its
    # last, partly filled block (the capture test once read an empty file)
    time.sleep(1.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)


def frames(path: Path) -> int:
    cp = subprocess.run(["tcpdump", "-r", str(path), "-n"], capture_output=True, text=True)
    return len([ln for ln in cp.stdout.splitlines() if ln.strip()])


def capture_flows(lab, sw: str) -> int:
    """The capture flows (copies of VIP traffic to the collector) installed on switch ``sw``."""
    from ryu_apps.framework import cookies
    cookie = cookies.make("proxy_cluster", 8, "api")
    return len([ln for ln in lab.ofctl(sw, "dump-flows", f"cookie={cookie:#x}/-1").stdout.splitlines()
                if "cookie=" in ln])


def isolate_drops(lab) -> int:
    """Packets the isolation flows of every switch dropped (their counters)."""
    from ryu_apps.framework import cookies
    cookie = cookies.make("proxy_cluster", 7, "api")
    total = 0
    for sw in ("s1", "s2", "s3"):
        out = lab.ofctl(sw, "dump-flows", f"cookie={cookie:#x}/-1").stdout
        total += sum(int(part.split("=")[1].rstrip(",")) for part in out.split() if part.startswith("n_packets="))
    return total


FROM_VIP = r"""
import socket, sys
s = socket.socket(); s.settimeout(1.0); s.bind((sys.argv[1], 0))
try:
    s.connect((sys.argv[2], int(sys.argv[3]))); print("open")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_isolation_matrix_delivers_zero_frames(healthy, tmp_path):
    """Clients to server addresses and to proxies' own ports, to the VIP off its service ports,
    proxies to clients (from their own address and from the VIP): dropped at the sender's
    switch, counted, and not one frame arrives."""
    lab = healthy
    served = lab.popen("c2", [PY, "-m", "ovs_scripts.http_load", "serve", "--name", "c2", "--port", "9000"],
                       cwd=str(REPO))
    assert "listening" in served.stdout.readline()
    before = isolate_drops(lab)
    caps = {h: (tcp := tmp_path / f"{h}.pcap", tcpdump(lab, h, bpf, tcp)) for h, bpf in (
        ("a1", "src net 10.51.0.0/24 or src net fd00:51::/64"),       # from any client
        ("p1", "(src net 10.51.0.0/24 or src net fd00:51::/64) and not dst host 10.59.0.100 "
               "and not dst host fd00:59::100 or dst port 8080"),       # clients to p1 itself or off-port VIP
        ("c2", "src net 10.52.0.0/24 or src host 10.59.0.100 or src host fd00:59::100"))}
    probes = ["tcp:10.53.0.1:8000", "tcp:fd00:53::1:8000", "tcp:10.52.0.1:80", "tcp:10.52.0.1:10000",
              "tcp:10.52.0.1:22", "tcp:fd00:52::1:80", "icmp:10.53.0.1", "tcp:10.59.0.100:8080"]
    out = json.loads(lab.exec("c1", [PY, "-m", "ovs_scripts.traffic", "probe", *probes, "--timeout", "1"],
                              cwd=str(REPO)).stdout)
    out |= {f"p1->{t}": lab.exec("p1", [PY, "-m", "ovs_scripts.traffic", "probe", t, "--timeout", "1"],
                                 cwd=str(REPO)).stdout for t in ("tcp:10.51.0.2:9000", "icmp:10.51.0.2")}
    out["p1 from the VIP ->c2:9000"] = lab.exec("p1", [PY, "-c", FROM_VIP, VIP4, "10.51.0.2", "9000"]).stdout.strip()
    for host, (path, proc) in caps.items():
        stop(proc)
    delivered = {h: frames(path) for h, (path, _) in caps.items()}
    print(f"isolation: {out}; frames delivered {delivered}; drops counted {isolate_drops(lab) - before}")
    assert all("open" not in str(v) and "refused" not in str(v) for v in out.values()), out
    assert delivered == {"a1": 0, "p1": 0, "c2": 0}, delivered
    assert isolate_drops(lab) - before >= 8
    # the VIP itself still serves c1, and c2's server is reachable from its neighbour
    assert all(o[0][0] == 200 for o in clients(lab, "c1", n=1, conns=2))


def test_capture_copies_both_directions_to_the_collector_readable_by_tshark(healthy, tmp_path):
    lab = healthy
    pcap = tmp_path / "vip.pcap"
    # the capture group and its flows are in place on every switch before the traffic starts
    assert kit.wait_for(lambda: all(capture_flows(lab, sw) for sw in ("s1", "s2")), 5), \
        {sw: capture_flows(lab, sw) for sw in ("s1", "s2", "s3")}
    cap = tcpdump(lab, "k1", "tcp port 80", pcap)
    out = clients(lab, "c1", n=5, conns=4) + clients(lab, "c2", vip=VIP6, n=5, conns=2)
    time.sleep(0.5)
    stop(cap)
    assert all(r[0] == 200 for conn in out for r in conn), out
    if shutil.which("tshark") is None:
        pytest.skip("tshark (Debian) is not installed")
    # each HTTP message once: a TCP retransmission is a packet of its own, copied like any other
    retrans = subprocess.run(["tshark", "-r", str(pcap), "-Y", "tcp.analysis.retransmission"],
                             capture_output=True, text=True).stdout.count("\n")
    fields = subprocess.run(["tshark", "-r", str(pcap), "-Y", "http && !tcp.analysis.retransmission", "-T", "fields",
                             "-e", "ip.src", "-e", "ip.dst",
                             "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "http.request.method", "-e",
                             "http.response.code", "-e", "eth.dst", "-e", "tcp.stream", "-e", "tcp.seq_raw"],
                            capture_output=True, text=True, check=True)
    all_rows = [ln.split("\t") for ln in fields.stdout.splitlines() if ln.strip()]
    # a message is its TCP stream and sequence number: a second copy of one (which tshark does not
    # always call a retransmission) is the same message, counted once and reported
    rows = list({(r[7], r[8], r[4], r[5]): r for r in all_rows}.values())
    if len(rows) != len(all_rows):
        print(f"capture: {len(all_rows) - len(rows)} HTTP messages seen twice")
    requests = [r for r in rows if r[4] == "GET" and VIP4 in (r[1], r[3]) or r[4] == "GET" and r[3] == VIP6]
    answers = [r for r in rows if r[5] == "200" and (r[0] == VIP4 or r[2] == VIP6)]
    print(f"capture: {frames(pcap)} frames, {len(rows)} HTTP messages, {len(requests)} requests to the VIP, "
          f"{len(answers)} answers from it; {retrans} TCP retransmissions")
    # every request and every answer exactly once, as seen between client and proxy, addressed to k1's MAC
    assert len(requests) == 30 and len(answers) == 30, rows
    assert {r[6] for r in rows} == {"02:00:00:05:01:09"}
