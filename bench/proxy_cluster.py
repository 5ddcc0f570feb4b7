"""Proxy cluster benchmarks: throughput through the VIP, failover against keepalived, remap on a join, config latency.

Run: ``.venv/bin/python bench/proxy_cluster.py [--only throughput,failover,remap,config] [--seconds S]
[--runs N] [--flows N] [--config-runs N] [--json FILE]``

On ``topologies/proxy_cluster.yaml`` (clients c1, c2 and the collector k1 on s1; proxies p1, p2
declared and p3 a spare node on s2; servers a1, a2 on s3; VIP 10.59.0.100:80), with the lab's
controller and the proxy agents running real HAProxy (Debian 2.6, master-worker):

* **throughput**: ``wrk -t2 -c32 -d<S>s --latency`` from c1 to the VIP (c1's edge switch tracks
  each connection in its conntrack zone and picks a proxy with the cluster's select group; the
  proxies forward to the servers), against the same client straight to one proxy: a lab from the
  same topology with only the base fabric (the cluster's isolation flows drop a client's packets
  to a proxy's own address), where HAProxy runs on p1 with the very config the cluster lab's
  controller renders for p1, its ``bind`` lines moved from the VIP to p1's own address.  Same
  HAProxy config, same servers, same hops; the difference is the ``lb`` table.  The servers are
  small HAProxy instances answering every request themselves (``http-request return``,
  ``X-Server``): Python's http.server would be the bottleneck.  The cluster lab runs without
  capture (the lb table only).  ``--runs`` rounds, each a cluster lab then a plain lab (one lab
  at a time, the sides alternating so a machine that gets busier or quieter weighs on both),
  each run after the machine is quiet (other work on the 2 cores shows in the figures: a run
  that started on a busy machine is flagged).  Per side the median: requests/s, p50 and p99
  under load, and p50/p99 of ``wrk -t1 -c1`` (one request at a time: what the path itself
  adds); the ratio (target >= 0.9x) and the p50 the VIP adds (target < 0.2 ms).  Also, to
  explain the figures: datapath passes per request and ovs-vswitchd's CPU (every switch of a
  lab is one userspace datapath: ``dpif-netdev/pmd-stats-show``), and two more VIP runs per
  round: with the cluster's capture to k1 switched on, and with p1 the only proxy (the lb
  table's cost without a second HAProxy competing for the cores).
* **failover**: ``http_load load VIP --conns 10 --new-rate 50 --sessions 50 --seconds 8`` from c1
  and a prober opening a new connection every 10 ms; 3 s in, kill -9 of the HAProxy master of a
  proxy that carries traffic (its workers exit with it).  Figures: failed requests (http_load),
  the outage of new connections (the prober: from the first to the last failed one, plus one
  probe interval; also the longest gap between two successful ones), sessions that changed
  server, keep-alive connections that changed proxy.  The same against the classic
  active/standby pair: a lab of one plain L2 switch (no controller, ``actions=NORMAL``) with c1,
  p1, p2, a1, a2 in one subnet and the VIP one more address in it; keepalived (VRRP only,
  advert_int 1, in the proxies' namespaces, its own config and pid files) on p1 (MASTER, 150)
  and p2 (BACKUP, 100) tracking HAProxy with a ``vrrp_script`` (``kill -0`` of the master's pid
  from its pidfile; interval 1, fall 2, rise 2); HAProxy bound to the VIP on both
  (``net.ipv4.ip_nonlocal_bind=1``) with our renderer's config as the usual pair runs it
  (``balance roundrobin``, a stick table on the API key): once without peers (the usual
  active/standby) and once with peers between p1 and p2 (what peers change).  Target: our
  outage at least 5x shorter.  Skipped, with a message, when keepalived is not installed.
* **remap**: N (``--flows``, default 4000) distinct TCP SYNs from c1 to VIP:80 (raw frames,
  source ports 1024..1024+N-1, 4000/s), captured on every proxy (tcpdump) to learn which proxy
  got which flow, with p1 and p2 in the cluster; p3 joins (while 40 keep-alive connections of
  ``http_load`` run across the join: how many changed proxy, target 0), c1's edge switch's
  conntrack zone is flushed and the same SYNs are sent again.  Figures: the fraction of flows
  that changed proxy (ideal 1/(N+1) = 1/3; target 0.30..0.367), how many moved between the old
  proxies, the balance (busiest proxy / mean; target <= 1.1x at 10k flows).  The cluster's group
  leaves the method to OVS (``dp_hash`` by default); for comparison the same two rounds run with
  the group switched to ``selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)`` on the
  same switch (an OpenFlow 1.5 mod-group: the bridge allows 1.5 meanwhile, its controller
  connection re-initialises and the controller reconciles without a change), then the
  controller's group and the bridge's versions are put back and the switch resynced.
* **config**: the cluster gets 100 routes (/r0/ .. /r99/, all to pool v1, whose only server is
  now a1); then a2 is put into v1 over REST (a server added: every agent reloads HAProxy), and
  the bench measures until every agent logged the config applied, (a) until every proxy reports
  it (``config_current``: the agents' heartbeats, every 250 ms, carry the applied version) and
  (b) until a request through the VIP (new connections from c1, 4 at a time) is first answered
  by a2, and through every proxy.  ``--config-runs`` times (a2 removed in between); median and
  max.  The cluster's intent is put back afterwards.

A summary table ends the run.  Every lab has its own prefix and free controller ports, one lab
runs at a time, and each is torn down at the end, on errors and on Ctrl-C.  Traffic runs only
inside the labs' namespaces, REST on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ovs_scripts import kit  # noqa: E402
from ovs_scripts.lab import Lab  # noqa: E402
from ryu_apps.functions.proxy_cluster import haproxy as haproxy_cfg  # noqa: E402
from ryu_apps.functions.proxy_cluster.agent import HAProxy  # noqa: E402
from ryu_apps.functions.proxy_cluster.flows import zone_of  # noqa: E402
from ryu_apps.functions.proxy_cluster.model import server_id  # noqa: E402

TOPO = ROOT / "topologies" / "proxy_cluster.yaml"
PY = sys.executable
CLUSTER = "api"
VIP4 = "10.59.0.100"
PARTS = ("throughput", "failover", "remap", "config")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
DEFAULT_ROUTER_MAC = "0e:fa:b0:00:00:01"

# ---------------------------------------------------------------------------------------------
# Small programs run inside the lab's namespaces (``python -c``; standard library only).

#: one GET, prints [status, X-Server, X-Proxy] (or ["error", why])
GET_ONCE = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=2)
try:
    c.request("GET", sys.argv[3]); r = c.getresponse(); r.read()
    print(json.dumps([r.status, r.getheader("X-Server"), r.getheader("X-Proxy")]))
except Exception as exc:
    print(json.dumps(["error", repr(exc)]))
"""

#: a new connection every INTERVAL s (one thread each) for SECONDS; prints "started", then JSON
#: [[start (CLOCK_MONOTONIC), ok, why, proxy], ...]
NEWCONN_PROBE = r"""
import http.client, json, sys, threading, time
host, seconds, interval, timeout = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
out, lock = [], threading.Lock()
def one(t):
    c = http.client.HTTPConnection(host, 80, timeout=timeout)
    try:
        c.request("GET", "/probe"); r = c.getresponse(); r.read()
        rec = [t, r.status == 200, str(r.status), r.getheader("X-Proxy")]
    except Exception as exc:
        rec = [t, False, type(exc).__name__, None]
    finally:
        c.close()
    with lock:
        out.append(rec)
print("started", flush=True)
threads, nxt = [], time.monotonic()
end = nxt + seconds
while nxt < end:
    th = threading.Thread(target=one, args=(nxt,), daemon=True); th.start(); threads.append(th)
    nxt += interval
    time.sleep(max(0.0, nxt - time.monotonic()))
for th in threads:
    th.join(timeout + 1)
with lock:
    print(json.dumps(sorted(out)), flush=True)
"""

#: THREADS loops of new connections back to back until server WANT has answered through NPROXIES
#: proxies (or TIMEOUT s); prints "ready", starts on a line on stdin, then prints JSON
#: {"first": t, "per_proxy": {proxy: t}, "requests": n} (CLOCK_MONOTONIC)
FIRST_ANSWER_PROBE = r"""
import http.client, json, sys, threading, time
host, path, want, nproxies, timeout, nthreads = sys.argv[1:7]
nproxies, timeout, nthreads = int(nproxies), float(timeout), int(nthreads)
per_proxy, count, lock, done = {}, [0], threading.Lock(), threading.Event()
def loop():
    while not done.is_set() and time.monotonic() < end:
        c = http.client.HTTPConnection(host, 80, timeout=2)
        try:
            c.request("GET", path); r = c.getresponse(); r.read()
            t = time.monotonic()
            with lock:
                count[0] += 1
                if r.getheader("X-Server") == want:
                    per_proxy.setdefault(r.getheader("X-Proxy"), t)
                    if len(per_proxy) >= nproxies:
                        done.set()
        except Exception:
            time.sleep(0.002)
        finally:
            c.close()
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + timeout
threads = [threading.Thread(target=loop) for _ in range(nthreads)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(json.dumps({"first": min(per_proxy.values(), default=None), "per_proxy": per_proxy, "requests": count[0]}))
"""

#: TCP SYNs from the source ports read from stdin (comma separated) as raw Ethernet frames out of
#: eth0, RATE per second; prints JSON {"sent": n, "seconds": s}
SYN_SENDER = r"""
import json, socket, struct, sys, time
smac, dmac, sip, dip, dport, rate = sys.argv[1:7]
dport, rate = int(dport), float(rate)
ports = [int(p) for p in sys.stdin.read().split(",") if p.strip()]
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
mac = lambda m: bytes.fromhex(m.replace(":", ""))
src, dst = socket.inet_aton(sip), socket.inet_aton(dip)
head = mac(dmac) + mac(smac) + b"\x08\x00"
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("eth0", 0))
t0 = time.monotonic()
for i, sport in enumerate(ports):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000003 * sport & 0xFFFFFFFF, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    sock.send(head + ip + tcp)
    if i % 20 == 19:
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
print(json.dumps({"sent": len(ports), "seconds": round(time.monotonic() - t0, 3)}))
"""

# ---------------------------------------------------------------------------------------------
# Labs.

_KEEP: list[str] = []   # labs whose teardown failed: their run directory must stay


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefix(role: str) -> str:
    """A lab prefix of this run: ``b`` + 2 characters of the pid + the lab's role letter."""
    pid = os.getpid()
    return "b" + _B36[pid % 36] + _B36[(pid // 36) % 36] + role


def write_topology(workdir: Path, data: dict, name: str, role: str) -> Path:
    data = copy.deepcopy(data)
    data["lab"] = {**data.get("lab", {}), "name": name, "prefix": prefix(role)}
    data["controller"] = {**(data.get("controller") or {}), "of_port": free_port(), "rest_port": free_port()}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _down(lab: Lab, procs=()) -> None:
    """Tear a lab down; Ctrl-C / SIGTERM cannot interrupt it.  A failure keeps the run directory
    (``ovslab down`` finishes the job) and is reported."""
    masked = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            stop_proc(p)
        lab.down()
    except Exception as exc:  # noqa: BLE001
        _KEEP.append(str(lab.dir))
        print(f"teardown of {lab.dir} failed: {exc}; finish it with "
              f"OVSLAB_RUNDIR={lab.dir.parent} .venv/bin/ovslab down {lab.dir.name}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in masked.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def lab_up(path: Path, rundir: Path, controller: bool = True, timeout: float = 90):
    """``Lab.up`` as a context: the lab (and whatever it started) is torn down on the way out."""
    t0 = time.monotonic()
    lab = Lab.up(path, controller=controller, timeout=timeout, rundir=rundir)
    print(f"  lab {lab.name} up in {time.monotonic() - t0:.1f} s", flush=True)
    try:
        yield lab
    finally:
        _down(lab)


def stop_proc(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop a process this bench started (by its own pid), and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cluster_topology() -> dict:
    return yaml.safe_load(TOPO.read_text())


def plain_topology() -> dict:
    """The same hosts and links with only the base fabric: no proxy cluster, no agents."""
    data = cluster_topology()
    data["apps"] = {"fabric": data["apps"].get("fabric") or {}}
    for h in data["hosts"].values():
        h.pop("services", None)
    return data


KA_NET = "10.61.0"
KA_VIP = f"{KA_NET}.100"


def keepalived_topology() -> dict:
    """One plain L2 switch, c1, p1, p2, a1, a2 in one subnet; the VIP is one more address in it."""
    hosts = {"c1": 1, "p1": 11, "p2": 12, "a1": 21, "a2": 22}
    return {
        "lab": {"name": "bench_proxy_keepalived"},
        "switches": {"s1": {"dpid": 0x5961}},
        "hosts": {h: {"mac": f"02:00:00:06:01:{n:02x}", "ipv4": f"{KA_NET}.{n}/24"} for h, n in hosts.items()},
        "links": [[h, "s1"] for h in hosts],
        "apps": {"fabric": {}},
    }


# ---------------------------------------------------------------------------------------------
# Talking to the cluster.


def rest(lab: Lab, method: str, path: str, body=None, expect=(200,)):
    return kit.rest(lab, method, path, body, timeout=60).expect(*expect)


def cluster(lab: Lab) -> dict:
    """The cluster's summary (proxies, health, group): ``GET /v1/proxy-clusters``, which is cheap to
    poll (``GET /v1/proxy-clusters/<name>`` computes every switch's flows for its answer)."""
    return next(c for c in rest(lab, "GET", "/v1/proxy-clusters") if c["name"] == CLUSTER)


def cluster_intent(lab: Lab) -> dict:
    return rest(lab, "GET", f"/v1/proxy-clusters/{CLUSTER}")["intent"]


def proxies(lab: Lab) -> dict[str, dict]:
    return {p["host"]: p for p in cluster(lab)["proxies"]}


def in_hash(lab: Lab) -> set[str]:
    return {h for h, p in proxies(lab).items() if p["in_hash"]}


def wait_hash(lab: Lab, want: set[str], timeout: float = 30) -> float:
    t0 = time.monotonic()
    if not kit.wait_for(lambda: in_hash(lab) == want, timeout, step=0.02):
        raise RuntimeError(f"proxies in the hash are not {sorted(want)} after {timeout} s: {proxies(lab)}")
    return time.monotonic() - t0


def all_current(lab: Lab) -> bool:
    ps = proxies(lab).values()
    return all(p["config_current"] for p in ps)


def haproxy_pid(lab: Lab, proxy: str) -> int:
    return int((lab.dir / f"agent-{proxy}" / "haproxy.pid").read_text().split()[0])


def get_once(lab: Lab, host: str, addr: str, port: int = 80, path: str = "/") -> list:
    return json.loads(lab.exec(host, [PY, "-c", GET_ONCE, addr, str(port), path], timeout=20).stdout)


def wait_serving(lab: Lab, host: str, addr: str, port: int = 80, timeout: float = 20) -> None:
    if not kit.wait_for(lambda: get_once(lab, host, addr, port)[0] == 200, timeout, step=0.1):
        raise RuntimeError(f"{addr}:{port} does not answer {host}: {get_once(lab, host, addr, port)}")


def router_mac(lab: Lab) -> str:
    r = kit.rest(lab, "GET", "/v1/apps/fabric/intent", timeout=10)
    return (r.body or {}).get("router_mac", DEFAULT_ROUTER_MAC) if r.ok else DEFAULT_ROUTER_MAC


# ---------------------------------------------------------------------------------------------
# Servers.

SERVER_CFG = """global
    pidfile {run}/server.pid
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 10s
frontend server
    bind :{port}
    http-request return status 200 content-type text/plain hdr X-Server {name} string {name}
"""


def start_haproxy_servers(lab: Lab, workdir: Path, names=("a1", "a2"), port: int = 8000) -> list[subprocess.Popen]:
    """A small HAProxy on each server host answering every request itself (``X-Server: <name>``)."""
    procs = []
    for name in names:
        run = workdir / f"{lab.name}-server-{name}"
        run.mkdir(parents=True, exist_ok=True)
        cfg = run / "server.cfg"
        cfg.write_text(SERVER_CFG.format(run=run, port=port, name=name))
        subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], check=True)
        procs.append(lab.popen(name, ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL))
    for name in names:
        addr = str(lab.topology.hosts[name].ipv4.ip)
        wait_serving(lab, name, addr, port)
    return procs


def start_http_servers(lab: Lab, names=("a1", "a2")) -> list[subprocess.Popen]:
    """``http_load serve`` (Python, names itself) on each server host."""
    procs = []
    for name in names:
        proc = lab.popen(name, [PY, "-m", "ovs_scripts.http_load", "serve", "--name", name], cwd=str(ROOT))
        if "listening" not in proc.stdout.readline():
            raise RuntimeError(f"http_load serve on {name} did not start (see {lab.dir / (name + '.log')})")
        procs.append(proc)
    return procs


# ---------------------------------------------------------------------------------------------
# Loads and probes.

_loads = 0


class HttpLoad:
    """``http_load load`` in a client namespace; :meth:`result` waits for its JSON summary."""

    def __init__(self, lab: Lab, host: str, vip: str, seconds: float, **opts):
        global _loads
        _loads += 1
        opts.setdefault("key_prefix", f"B{os.getpid()}L{_loads}")
        argv = [PY, "-m", "ovs_scripts.http_load", "load", vip, "--seconds", str(seconds)]
        for k, v in opts.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = lab.popen(host, argv, cwd=str(ROOT))
        if self.proc.stdout.readline().strip() != "started":
            raise RuntimeError("http_load did not start")
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def result(self, timeout: float = 120) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])


class NewConnProbe:
    def __init__(self, lab: Lab, host: str, vip: str, seconds: float, interval: float = 0.01, timeout: float = 2.0):
        self.interval = interval
        self.proc = lab.popen(host, [PY, "-c", NEWCONN_PROBE, vip, str(seconds), str(interval), str(timeout)])
        if self.proc.stdout.readline().strip() != "started":
            raise RuntimeError("the new-connection probe did not start")

    def result(self, timeout: float = 120) -> list:
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])


def outage(probes: list, t_event: float, interval: float) -> dict:
    """From a NewConnProbe's records: failed new connections after the event, the span from the
    first to the last of them (+ one interval), the longest gap between successful ones."""
    fails = [p for p in probes if not p[1] and p[0] >= t_event - interval]
    ok = [p[0] for p in probes if p[1]]
    gaps = [b - a for a, b in zip(ok, ok[1:])]
    span = (fails[-1][0] - fails[0][0] + interval) if fails else 0.0
    return {"probes": len(probes), "failed": len(fails), "failed_before": sum(1 for p in probes if not p[1]) - len(fails),
            "span_s": span, "first_fail_after_s": fails[0][0] - t_event if fails else None,
            "last_fail_after_s": fails[-1][0] - t_event if fails else None,
            "longest_ok_gap_s": max(gaps) if gaps else None,
            "kinds": dict(Counter(p[2] for p in fails))}


# ---------------------------------------------------------------------------------------------
# 1. Throughput.


def _ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        raise ValueError(f"not a wrk duration: {v!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def parse_wrk(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    lat = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = re.search(r"(\d+) requests in ", out)
    return {"rps": float(rps.group(1)), "requests": int(requests.group(1)) if requests else 0,
            "p50_ms": lat.get(50), "p99_ms": lat.get(99),
            "errors": sum(map(int, errors.groups())) if errors else 0, "non2xx": int(non2xx.group(1)) if non2xx else 0}


def cpu_busy(window: float = 0.5) -> float:
    """How busy the whole machine was over ``window`` seconds (0..1 of all CPUs, /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
        return sum(vals), vals[3] + vals[4]
    t1, i1 = snap()
    time.sleep(window)
    t2, i2 = snap()
    return 1.0 - (i2 - i1) / max(1, t2 - t1)


def wait_quiet(threshold: float = 0.2, max_wait: float = 10) -> float:
    """Wait (at most ``max_wait`` s) until the machine is quiet before a timed run: on 2 cores
    anything else running (another lab, a test suite) shows up in the figures.  Returns how busy it was."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy >= threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


class DatapathStats:
    """What the lab's ovs-vswitchd (every switch of the lab is one userspace datapath) did over a
    run: packets received, recirculations, its CPU time (``dpif-netdev/pmd-stats-*``, /proc)."""

    def __init__(self, lab: Lab):
        self.sandbox = lab.sandbox(lab.plan.switch_sandbox[next(iter(lab.topology.switches))])
        self.pid = self.sandbox.pid("ovs-vswitchd")

    def _cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self.sandbox.appctl("dpif-netdev/pmd-stats-clear")
        self.t0, self.cpu0 = time.monotonic(), self._cpu()

    def stop(self) -> dict:
        cpu = (self._cpu() - self.cpu0) / (time.monotonic() - self.t0)
        out = self.sandbox.appctl("dpif-netdev/pmd-stats-show").stdout
        num = lambda key: float(m.group(1)) if (m := re.search(rf"{key}:\s+([\d.]+)", out)) else 0.0  # noqa: E731
        return {"packets": num("packets received"), "recirculations": num("packet recirculations"),
                "passes_per_packet": num("avg. datapath passes per packet"), "ovs_cpu": cpu,
                "upcalls": int(num("miss with success upcall")), "failed_upcalls": int(num("miss with failed upcall"))}


def wrk_runs(lab: Lab, url: str, seconds: int, runs: int, label: str) -> list[dict]:
    """``runs`` times: wrk -t2 -c32 (throughput, latency under load), then wrk -t1 -c1 (latency
    of one request at a time: what the path itself adds), each after the machine is quiet."""
    lab.exec("c1", ["wrk", "-t2", "-c32", "-d1s", url], timeout=60)   # warm-up: datapath flows, conntrack
    dp = DatapathStats(lab)
    out = []
    for i in range(runs):
        busy = wait_quiet()
        dp.start()
        cp = lab.exec("c1", ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url], timeout=seconds + 60)
        d = dp.stop()
        r = parse_wrk(cp.stdout)
        requests = max(1, r["requests"])
        r.update(busy_before=busy, ovs_cpu=d["ovs_cpu"], dp_packets_per_request=d["packets"] / requests,
                 dp_passes_per_request=d["packets"] * d["passes_per_packet"] / requests)
        wait_quiet()
        one = parse_wrk(lab.exec("c1", ["wrk", "-t1", "-c1", f"-d{min(seconds, 3)}s", "--latency", url],
                                 timeout=seconds + 60).stdout)
        r.update(p50_1c_ms=one["p50_ms"], p99_1c_ms=one["p99_ms"], rps_1c=one["rps"])
        out.append(r)
        print(f"    {label}{f' run {i + 1}' if runs > 1 else ''}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms; "
              f"one connection: p50 {one['p50_ms']:.3f} ms, p99 {one['p99_ms']:.3f} ms; datapath: "
              f"{r['dp_packets_per_request']:.1f} packets and {r['dp_passes_per_request']:.1f} passes per request, "
              f"ovs-vswitchd at {r['ovs_cpu']:.0%} of a core"
              + (f", {r['errors'] + one['errors']} socket errors" if r["errors"] + one["errors"] else "")
              + (f", {r['non2xx'] + one['non2xx']} non-2xx" if r["non2xx"] + one["non2xx"] else "")
              + (f"  (machine {busy:.0%} busy before the run: figures disturbed)" if busy >= 0.2 else ""),
              flush=True)
    return out


def med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def throughput_vip(lab: Lab, workdir: Path, seconds: int, label: str, extras: bool) -> dict:
    """One run through the VIP; with ``extras`` also one with the cluster's capture to k1 switched
    on, and one with p1 the only proxy (capture off again: the lb table's cost without the
    second HAProxy competing for the 2 cores).  Also p1's rendered config for the straight side."""
    servers = start_haproxy_servers(lab, workdir)
    out = {"vip": [], "captured": [], "one_proxy": []}
    try:
        wait_hash(lab, {"p1", "p2"})
        wait_serving(lab, "c1", VIP4)
        out["vip"] = wrk_runs(lab, f"http://{VIP4}/", seconds, 1, f"VIP, 2 proxies ({label})")
        out["cfg"] = rest(lab, "GET", f"/v1/proxy-clusters/{CLUSTER}/haproxy/p1?run_dir={workdir / 'straight-p1'}")["config"]
        if extras:
            intent = cluster_intent(lab)
            rest(lab, "PUT", f"/v1/proxy-clusters/{CLUSTER}?wait=1", {**intent, "capture": {"host": "k1"}})
            out["captured"] = wrk_runs(lab, f"http://{VIP4}/", seconds, 1, f"VIP + capture to k1 ({label})")
            rest(lab, "PUT", f"/v1/proxy-clusters/{CLUSTER}?wait=1",
                 {**intent, "proxies": [p for p in intent["proxies"] if p["host"] == "p1"]})
            wait_hash(lab, {"p1"})
            out["one_proxy"] = wrk_runs(lab, f"http://{VIP4}/", seconds, 1, f"VIP, p1 the only proxy ({label})")
    finally:
        for p in servers:
            stop_proc(p)
    return out


def bench_throughput(workdir: Path, rundir: Path, seconds: int, runs: int, extras: bool) -> dict:
    """``runs`` rounds, each: a cluster lab (VIP; VIP with capture), torn down, then a plain
    fabric lab (straight to p1), torn down: the two sides alternate in time (one lab at a time),
    so a machine that gets busier or quieter over the run weighs on both alike."""
    data = cluster_topology()
    data["apps"]["proxy_cluster"]["clusters"][0].pop("capture", None)   # the lb table only; capture is a run of its own
    vip_path = write_topology(workdir, data, "bench_proxy_cluster_tp", "t")
    plain_path = write_topology(workdir, plain_topology(), "bench_proxy_plain", "p")
    runs_ = {"vip": [], "captured": [], "one_proxy": [], "straight": []}
    for i in range(runs):
        label = f"round {i + 1} of {runs}"
        with lab_up(vip_path, rundir) as lab:
            got = throughput_vip(lab, workdir, seconds, label, extras)
        for k in ("vip", "captured", "one_proxy"):
            runs_[k] += got[k]
        with lab_up(plain_path, rundir) as lab:
            runs_["straight"] += throughput_straight(lab, workdir, got["cfg"], seconds, label)
    return report_throughput(runs_)


def throughput_straight(lab: Lab, workdir: Path, cfg_text: str, seconds: int, label: str) -> list[dict]:
    """HAProxy on p1 with the cluster's config for p1, bound to p1's own addresses (plain fabric lab)."""
    p1 = lab.topology.hosts["p1"]
    spec = cluster_topology()["apps"]["proxy_cluster"]["clusters"][0]
    text = cfg_text.replace(f"bind {spec['vip4']}:", f"bind {p1.ipv4.ip}:")
    if spec.get("vip6"):
        text = text.replace(f"bind [{spec['vip6']}]:", f"bind [{p1.ipv6.ip}]:")
    if f"bind {p1.ipv4.ip}:80" not in text:
        raise RuntimeError(f"could not move the bind lines to p1's address:\n{text}")
    run_dir = workdir / "straight-p1"
    run_dir.mkdir(parents=True, exist_ok=True)
    hp = HAProxy("haproxy", run_dir)
    why = hp.check(text)
    if why:
        raise RuntimeError(f"HAProxy refuses the rewritten config: {why}")
    hp.install(text)
    procs = start_haproxy_servers(lab, workdir)
    procs.append(start_haproxy(lab, "p1", hp))
    hp.proc = procs[-1]
    try:
        if not hp.wait_ready(10):
            raise RuntimeError(f"HAProxy on p1 did not start (see {run_dir / 'haproxy.log'})")
        wait_serving(lab, "c1", str(p1.ipv4.ip))
        return wrk_runs(lab, f"http://{p1.ipv4.ip}/", seconds, 1, f"straight to p1 ({label})")
    finally:
        for p in reversed(procs):
            stop_proc(p)


def start_haproxy(lab: Lab, host: str, hp: HAProxy) -> subprocess.Popen:
    """HAProxy master-worker with ``hp``'s config in ``host``'s namespace (``ip netns exec`` execs:
    the Popen's pid is the master's, which the bench reaps itself)."""
    with open(hp.dir / "haproxy.log", "ab") as log:
        return lab.popen(host, ["haproxy", "-W", "-db", "-f", str(hp.cfg), "-S", f"{hp.dir / 'master.sock'},mode,600"],
                         stdout=log, stderr=subprocess.STDOUT)


TP_KEYS = ("rps", "p50_ms", "p99_ms", "p50_1c_ms", "p99_1c_ms", "dp_passes_per_request", "ovs_cpu")


def report_throughput(runs: dict[str, list[dict]]) -> dict:
    vip, straight = runs["vip"], runs["straight"]
    m = {k: ({f: med(rs, f) for f in TP_KEYS} if rs else None) for k, rs in runs.items()}
    v, s = m["vip"], m["straight"]
    ratio = v["rps"] / s["rps"] if s["rps"] else float("nan")
    quiet = [r for r in vip if r["busy_before"] < 0.2], [r for r in straight if r["busy_before"] < 0.2]
    quiet_ratio = (med(quiet[0], "rps") / med(quiet[1], "rps")) if all(quiet) else None
    # other work on the machine only ever takes throughput away: the best run of each side is the least disturbed
    best = max(r["rps"] for r in vip) / max(r["rps"] for r in straight)
    out = {**m, "ratio": ratio, "ratio_quiet": quiet_ratio, "ratio_best": best, "added_p50_ms": v["p50_ms"] - s["p50_ms"],
           "added_p50_1c_ms": v["p50_1c_ms"] - s["p50_1c_ms"], "runs": runs}
    print(f"  throughput, median of {len(vip)} rounds (ratio to straight; p50 under load / at one connection; "
          f"datapath passes per request; ovs-vswitchd CPU):", flush=True)
    for key, name in (("straight", "straight to p1"), ("vip", "VIP, 2 proxies"), ("one_proxy", "VIP, p1 only"),
                      ("captured", "VIP + capture to k1")):
        x = m.get(key)
        if x:
            print(f"    {name:20} {x['rps']:8,.0f} req/s ({x['rps'] / s['rps']:.2f}x)  p50 {x['p50_ms']:.3f} / "
                  f"{x['p50_1c_ms']:.3f} ms  p99 {x['p99_ms']:.3f} / {x['p99_1c_ms']:.3f} ms  "
                  f"{x['dp_passes_per_request']:.1f} passes  {x['ovs_cpu']:.0%}", flush=True)
    print(f"    best run of each side: VIP {max(r['rps'] for r in vip):,.0f}, straight "
          f"{max(r['rps'] for r in straight):,.0f} req/s ({best:.2f}x)", flush=True)
    if len(quiet[0]) < len(vip) or len(quiet[1]) < len(straight):
        print(f"    (runs started on a quiet machine only: VIP/straight {quiet_ratio:.2f}x)" if quiet_ratio else
              "    (no run of one side started on a quiet machine)", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# 2. Failover.

LOAD_OPTS = dict(conns=10, new_rate=50, sessions=50)


def failover_ours(lab: Lab, seconds: float = 8, kill_at: float = 3) -> dict:
    wait_hash(lab, {"p1", "p2"})
    wait_serving(lab, "c1", VIP4)
    busy = wait_quiet()
    if busy >= 0.2:
        print(f"    (machine {busy:.0%} busy before the run: figures may be disturbed)", flush=True)
    load = HttpLoad(lab, "c1", VIP4, seconds, **LOAD_OPTS)
    probe = NewConnProbe(lab, "c1", VIP4, seconds)
    time.sleep(kill_at)
    conns = {h: (p["health"].get("connections") or 0) for h, p in proxies(lab).items()}
    victim = max(sorted(conns), key=lambda h: conns[h])
    t_kill, wall_kill = time.monotonic(), time.time()
    marks = agent_log_lines(lab, victim)
    os.kill(haproxy_pid(lab, victim), signal.SIGKILL)
    out_of_hash = None
    if kit.wait_for(lambda: victim not in in_hash(lab), 5, step=0.01):
        out_of_hash = time.monotonic() - t_kill
    r = load.result()
    o = outage(probe.result(), t_kill, probe.interval)
    res = {"victim": victim, "victim_conns": conns[victim], "out_of_hash_s": out_of_hash, "failed": r["failed"],
           "requests": r["requests"], "session_changes": len(r["session_server_changes"]),
           "moved_conns": len(r["moved_conns"]), "by_proxy": r["by_proxy"], "outage": o,
           "failure_kinds": dict(Counter(f["kind"] for f in r["failures"]))}
    # what the controller's judge said, and the victim's agent (the health events of GET /v1/proxy-clusters/<name>)
    res["events"] = [(round(e["t"] - wall_kill, 3), e["event"])
                     for e in rest(lab, "GET", f"/v1/proxy-clusters/{CLUSTER}").get("events", [])
                     if -1 <= e["t"] - wall_kill <= 10]
    res["agent_log"] = agent_log_tail(lab, victim, marks)
    print_failover("ours (OVS select group + agents)", res)
    print(f"    controller's health events after the kill (s): {res['events']}", flush=True)
    if out_of_hash is None:
        print(f"    {victim} never left the hash; its agent said: {res['agent_log'][-6:]}", flush=True)
    back = wait_hash(lab, {"p1", "p2"}, 40)
    print(f"    {victim} back in the hash {back:.1f} s after the load ended (the agent restarted HAProxy)", flush=True)
    return res


def print_failover(label: str, r: dict) -> None:
    o = r["outage"]
    extra = f"; out of the hash after {r['out_of_hash_s'] * 1000:.0f} ms" if r.get("out_of_hash_s") is not None else ""
    extra += f"; VIP on p2 after {r['vip_moved_s']:.2f} s" if r.get("vip_moved_s") is not None else ""
    listed = "" if r["failed"] <= 200 else " (kinds of the first 200: http_load lists no more)"
    print(f"    {label}: kill -9 of {r['victim']}'s HAProxy master{extra}; {r['failed']} of {r['requests']} requests "
          f"failed {r['failure_kinds']}{listed}; new connections failed for {o['span_s'] * 1000:.0f} ms "
          f"({o['failed']} of {o['probes']} probes, first {fmt_s(o['first_fail_after_s'])} last "
          f"{fmt_s(o['last_fail_after_s'])} after the kill, longest gap between successes "
          f"{fmt_s(o['longest_ok_gap_s'])}); sessions that changed server: {r['session_changes']}; "
          f"keep-alive connections that changed proxy: {r['moved_conns']}; by proxy {r['by_proxy']}", flush=True)


def fmt_s(x) -> str:
    return "-" if x is None else f"{max(0.0, x) * 1000:.0f} ms"


KEEPALIVED_CONF = """global_defs {{
    router_id {host}
    script_user root
}}

vrrp_script chk_haproxy {{
    script "{check}"
    interval 1
    fall 2
    rise 2
}}

vrrp_instance VI_1 {{
    state {state}
    interface eth0
    virtual_router_id 61
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
    track_script {{
        chk_haproxy
    }}
}}
"""


def keepalived_haproxy_cfg(lab: Lab, proxy: str, run_dir: Path, peers: bool) -> str:
    """The config our renderer writes for a proxy, as the usual active/standby pair runs it:
    bound to the VIP (ip_nonlocal_bind), ``balance roundrobin`` with a stick table on the API
    key, and a ``peers`` section only when ``peers``."""
    hosts = lab.topology.hosts

    def addr(h):
        return {"host": h, "ipv4": str(hosts[h].ipv4.ip), "ipv6": None, "site": "main"}

    spec = cluster_topology()["apps"]["proxy_cluster"]["clusters"][0]
    resolved = {
        "name": "ka", "vip4": KA_VIP, "vip6": None, "ports": [80], "peers_port": 10000, "health_port": 10001,
        "health_uri": "/healthz", "proxies": [{**addr(p), "state": "active"} for p in ("p1", "p2")],
        "pools": [{"name": "v1", "balance": "roundrobin", "check_path": "/",
                   "servers": [{**addr(s), "name": s, "port": 8000, "weight": 100, "state": "ready",
                                "id": server_id("v1", s)} for s in ("a1", "a2")]}],
        "routes": [], "default_pool": "v1", "affinity": {"mode": "header", "name": spec["affinity"]["name"],
                                                         "timeout_s": 1800},
        "health": {"interval_ms": 250, "fall": 3, "rise": 2, "hold_down_s": 2}, "drain_timeout_s": 30,
    }
    text = haproxy_cfg.render(resolved, proxy, str(run_dir))
    text = text.replace(f"balance hdr({spec['affinity']['name']})", "balance roundrobin")
    text = text.replace("    hash-type consistent\n", "")
    if not peers:
        lines, skip = [], False
        for ln in text.splitlines():
            if ln.startswith("peers "):
                skip = True
                continue
            if skip and ln.startswith("    "):
                continue
            skip = False
            if ln.strip().startswith("localpeer "):
                continue
            lines.append(ln.replace(" peers ka", ""))
        text = "\n".join(lines) + "\n"
    return text


def vip_on(lab: Lab, host: str, vip: str) -> bool:
    return f"inet {vip}/" in lab.exec(host, ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout


def keepalived_failover(lab: Lab, workdir: Path, peers: bool, seconds: float = 8, kill_at: float = 3) -> dict:
    tag = "peers" if peers else "nopeers"
    base = workdir / f"keepalived-{tag}"
    hp: dict[str, HAProxy] = {}
    procs: dict[str, subprocess.Popen] = {}
    kas: list[subprocess.Popen] = []
    try:
        for p in ("p1", "p2"):
            run = base / p
            run.mkdir(parents=True, exist_ok=True)
            hp[p] = HAProxy("haproxy", run)
            text = keepalived_haproxy_cfg(lab, p, run, peers)
            why = hp[p].check(text)
            if why:
                raise RuntimeError(f"HAProxy refuses the keepalived-side config of {p}: {why}")
            hp[p].install(text)
            procs[p] = hp[p].proc = start_haproxy(lab, p, hp[p])
        for p in ("p1", "p2"):
            if not hp[p].wait_ready(10):
                raise RuntimeError(f"HAProxy on {p} did not start (see {base / p / 'haproxy.log'})")
        for p, state, prio in (("p1", "MASTER", 150), ("p2", "BACKUP", 100)):
            run = base / p
            check = run / "check-haproxy.sh"
            # the master's pid from its pidfile: pidof would see every HAProxy on the machine
            check.write_text(f"#!/bin/sh\nexec /bin/kill -0 \"$(cat {run / 'haproxy.pid'})\" 2>/dev/null\n")
            check.chmod(0o755)
            conf = run / "keepalived.conf"
            conf.write_text(KEEPALIVED_CONF.format(host=p, check=check, state=state, priority=prio, vip=KA_VIP))
            with open(run / "keepalived.log", "ab") as log:
                kas.append(lab.popen(p, ["keepalived", "-n", "-l", "-D", "-P", "-f", str(conf),
                                         "-p", str(run / "keepalived.pid"), "-r", str(run / "vrrp.pid"),
                                         "-c", str(run / "checkers.pid"), "-b", str(run / "bfd.pid")],
                                     stdout=log, stderr=subprocess.STDOUT))
        if not kit.wait_for(lambda: vip_on(lab, "p1", KA_VIP) and not vip_on(lab, "p2", KA_VIP), 20, step=0.1):
            raise RuntimeError(f"keepalived did not put the VIP on p1 (see {base}/p*/keepalived.log)")
        if not kit.wait_for(lambda: "Entering BACKUP STATE" in (base / "p2" / "keepalived.log").read_text(), 10):
            raise RuntimeError(f"p2's keepalived is not BACKUP (see {base / 'p2' / 'keepalived.log'})")
        wait_serving(lab, "c1", KA_VIP)
        busy = wait_quiet()
        if busy >= 0.2:
            print(f"    (machine {busy:.0%} busy before the run: figures may be disturbed)", flush=True)
        load = HttpLoad(lab, "c1", KA_VIP, seconds, **LOAD_OPTS)
        probe = NewConnProbe(lab, "c1", KA_VIP, seconds)
        time.sleep(kill_at)
        t_kill = time.monotonic()
        procs["p1"].kill()
        procs["p1"].wait()          # reaped at once: a zombie would still pass kill -0
        moved = None
        if kit.wait_for(lambda: vip_on(lab, "p2", KA_VIP), seconds, step=0.02):
            moved = time.monotonic() - t_kill
        r = load.result()
        o = outage(probe.result(), t_kill, probe.interval)
        res = {"victim": "p1", "vip_moved_s": moved, "failed": r["failed"], "requests": r["requests"],
               "session_changes": len(r["session_server_changes"]), "moved_conns": len(r["moved_conns"]),
               "by_proxy": r["by_proxy"], "outage": o, "failure_kinds": dict(Counter(f["kind"] for f in r["failures"]))}
        print_failover(f"keepalived + HAProxy, stick table {'with' if peers else 'without'} peers", res)
        return res
    finally:
        for k in kas:
            stop_proc(k)
        for p in procs.values():
            stop_proc(p)


# ---------------------------------------------------------------------------------------------
# 3. Remap.

SYN_BPF = "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and dst port 80 and src host {src}"


def tcpdump(lab: Lab, host: str, bpf: str, path: Path) -> subprocess.Popen:
    proc = lab.popen(host, ["tcpdump", "-i", "eth0", "-n", "-U", "-B", "8192", "-w", str(path), bpf],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "listening on" not in line:
        raise RuntimeError(f"tcpdump in {host}: {line}")
    return proc


def syn_sports(path: Path, src: str) -> list[int]:
    cp = subprocess.run(["tcpdump", "-r", str(path), "-n"], capture_output=True, text=True)
    return [int(m) for m in re.findall(rf"IP {re.escape(src)}\.(\d+) > ", cp.stdout)]


def syn_round(lab: Lab, workdir: Path, tag: str, n: int, rmac: str, hosts=("p1", "p2", "p3"),
              rate: float = 4000, first: int = 1024, retries: int = 2) -> dict:
    """Send the N SYNs (source ports FIRST..FIRST+N-1) and learn which proxy each reached
    (``{"map": {sport: proxy}, ...}``); SYNs no proxy saw are sent again (``retries`` times: a
    SYN the datapath dropped, its upcall failed say, committed nothing, so a second one is
    picked alike).  Also the datapath's upcalls over the round."""
    c1 = lab.topology.hosts["c1"]
    src = str(c1.ipv4.ip)
    dp = DatapathStats(lab)
    caps = {}
    wanted = set(range(first, first + n))
    resent = 0

    def seen() -> dict[str, set[int]]:
        return {h: set(syn_sports(path, src)) & wanted for h, (path, _) in caps.items()}

    try:
        for h in hosts:
            caps[h] = (workdir / f"{tag}-{h}.pcap", tcpdump(lab, h, SYN_BPF.format(src=src), workdir / f"{tag}-{h}.pcap"))
        dp.start()
        todo = sorted(wanted)
        for attempt in range(retries + 1):
            lab.exec("c1", [PY, "-c", SYN_SENDER, c1.mac, rmac, src, VIP4, "80", str(rate)],
                     input=",".join(map(str, todo)), timeout=len(todo) / rate + 60)
            time.sleep(1.0)
            todo = sorted(wanted - set().union(*seen().values()))
            if not todo or attempt == retries:
                break
            resent += len(todo)
        stats = dp.stop()
    finally:
        for _, proc in caps.values():
            stop_proc(proc, signal.SIGINT)
    mapping: dict[int, str] = {}
    dups = 0
    per = {}
    for h, ports in seen().items():
        per[h] = len(ports)
        for sp in ports:
            dups += sp in mapping
            mapping[sp] = h
    return {"map": mapping, "sent": n, "seen": len(mapping), "resent": resent, "per_proxy": per,
            "on_two_proxies": dups, "upcalls": stats["upcalls"], "failed_upcalls": stats["failed_upcalls"]}


def balance(counts: dict[str, int], members) -> float:
    xs = [counts.get(m, 0) for m in members]
    return max(xs) / statistics.mean(xs) if xs and statistics.mean(xs) else float("nan")


def compare_rounds(before: dict, after: dict, new: str) -> dict:
    both = set(before["map"]) & set(after["map"])
    moved = [s for s in both if before["map"][s] != after["map"][s]]
    to_new = sum(1 for s in moved if after["map"][s] == new)
    c_before = Counter(before["map"].values())
    c_after = Counter(after["map"].values())
    olds = sorted(set(c_before))
    return {"flows": len(both), "remapped": len(moved), "fraction": len(moved) / len(both) if both else float("nan"),
            "to_new": to_new, "between_old": len(moved) - to_new,
            "before": dict(c_before), "after": dict(c_after),
            "balance_before": balance(c_before, olds), "balance_after": balance(c_after, [*olds, new]),
            "lost": {"before": before["sent"] - before["seen"], "after": after["sent"] - after["seen"]},
            "resent": {"before": before["resent"], "after": after["resent"]},
            "upcalls": {"before": before["upcalls"], "after": after["upcalls"]},
            "failed_upcalls": {"before": before["failed_upcalls"], "after": after["failed_upcalls"]}}


def print_remap(label: str, r: dict) -> None:
    print(f"    {label}: {r['remapped']} of {r['flows']} flows changed proxy = {r['fraction']:.3f} (ideal 0.333); "
          f"{r['to_new']} to the new proxy, {r['between_old']} between the old ones; per proxy before "
          f"{dict(sorted(r['before'].items()))} (balance {r['balance_before']:.3f}x), after "
          f"{dict(sorted(r['after'].items()))} (balance {r['balance_after']:.3f}x); datapath upcalls "
          f"{r['upcalls']['before']} / {r['upcalls']['after']} (failed {r['failed_upcalls']['before']} / "
          f"{r['failed_upcalls']['after']}); SYNs sent again {r['resent']['before']} / {r['resent']['after']}, "
          f"never seen {r['lost']['before']} / {r['lost']['after']}", flush=True)


class Switch:
    """OpenFlow 1.5 and conntrack access to one switch of a lab (for the group comparison)."""

    def __init__(self, lab: Lab, name: str):
        self.lab, self.name = lab, name
        self.sandbox = lab.sandbox(lab.plan.switch_sandbox[name])
        bridge, rundir = lab.switch_target(name)
        self.target = f"unix:{rundir}/{bridge}.mgmt"
        self.zone = zone_of(lab.topology, name)

    def of15(self, *args: str) -> str:
        cmd, rest_ = args[0], args[1:]
        cp = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", cmd, self.target, *rest_], capture_output=True,
                            text=True, env=self.sandbox.env(), timeout=30)
        if cp.returncode != 0:
            raise RuntimeError(f"ovs-ofctl {cmd} {self.name}: {cp.stderr.strip()}")
        return cp.stdout

    def group(self, gid: int) -> str:
        """The group as ``mod-group`` takes it (``group_id=...,type=select,...``)."""
        lines = [ln.strip() for ln in self.of15("dump-groups", str(gid)).splitlines()
                 if ln.strip().startswith(f"group_id={gid},")]
        if len(lines) != 1:
            raise RuntimeError(f"group {gid} on {self.name}: {lines}")
        return lines[0]

    def set_protocols(self, protocols: list[str]) -> list[str]:
        """Set the bridge's OpenFlow versions (OVS re-initialises its controller connection: the
        controller reconnects and reconciles, changing nothing); the versions it had before."""
        bridge, _ = self.lab.switch_target(self.name)
        with self.sandbox.db() as db:
            before = list(db.bridge(bridge)["protocols"])
            txn = db.api.create_transaction(check_error=True, log_errors=False)
            txn.add(db.api.db_set("Bridge", bridge, ("protocols", protocols)))
            txn.commit()
        return before

    def status(self) -> dict:
        return next(s for s in rest(self.lab, "GET", "/v1/switches") if s["name"] == self.name)

    def wait_full_sync(self, after: int, timeout: float = 20) -> None:
        """Wait until the controller has re-read the switch (a full sync after ``after`` of them) and it is synced."""
        def ok():
            st = self.status()
            return st["connected"] and st["synced"] and st["full_syncs"] > after
        if not kit.wait_for(ok, timeout, step=0.05):
            raise RuntimeError(f"{self.name} was not re-read by the controller within {timeout} s: {self.status()}")

    def flush_conntrack(self) -> None:
        self.sandbox.appctl("dpctl/flush-conntrack", f"zone={self.zone}")


def hashed_group(line: str) -> str:
    """A group as dumped, with ``selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)``."""
    head, *buckets = line.split(",bucket=")
    head = re.sub(r",selection_method=[^,]+", "", head)
    head = re.sub(r",selection_method_param=[^,]+", "", head)
    head = re.sub(r",fields\([^)]*\)", "", head)
    head = head.replace("type=select", "type=select,selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)")
    return ",bucket=".join([head, *buckets])


def with_hash_method(sw: Switch, gid: int, do_round):
    """``do_round()`` with the cluster's group on ``sw`` switched to ``selection_method=hash`` (its
    buckets untouched, so the controller's audit, which reads groups in OpenFlow 1.3, sees nothing
    to repair); then the group exactly as it was."""
    original = sw.group(gid)
    sw.of15("mod-group", hashed_group(original))
    try:
        out = do_round()
        now = sw.group(gid)
        if "selection_method=hash" not in now:   # the controller rewrote it (OpenFlow 1.3: OVS's default)
            raise RuntimeError(f"the group was replaced during the measurement: {now}")
    finally:
        sw.of15("mod-group", original)
    if sw.group(gid) != original:
        raise RuntimeError(f"group {gid} on {sw.name} not restored: {sw.group(gid)}")
    return out


#: rounds with selection_method=hash: every SYN is an upcall (a datapath flow per connection), and
#: in OVS 3.1's userspace datapath some of them fail after a join (coverage datapath_drop_upcall_error):
#: slower, and unseen SYNs sent again up to 4 times
HASH_ROUND = dict(rate=1000, retries=4)


def remap(lab: Lab, workdir: Path, n: int, compare_hash: bool = True) -> dict:
    """Rounds of N SYNs before and after p3 joins: with the controller's group (OVS's default
    method, source ports from 1024) and, with ``compare_hash``, with the group switched to
    ``selection_method=hash`` for the round (source ports from 1024 + N).  40 keep-alive
    connections run across the join; c1's edge conntrack zone is flushed once the join is done."""
    wait_hash(lab, {"p1", "p2"})
    rmac = router_mac(lab)
    sw = Switch(lab, "s1")
    gid = cluster(lab)["group"]
    first_dp, first_h = 1024, 1024 + n
    res: dict = {}
    protocols = None
    try:
        if compare_hash:   # OpenFlow 1.5 for the selection method: the controller reconnects, changes nothing
            full = sw.status()["full_syncs"]
            protocols = sw.set_protocols(["OpenFlow13", "OpenFlow15"])
            sw.wait_full_sync(full)
            print(f"    s1 allows OpenFlow 1.5 meanwhile; the cluster's group as OVS holds it: "
                  f"{sw.group(gid).split(',bucket=')[0]} (no selection_method: OVS's default, dp_hash)", flush=True)
        sw.flush_conntrack()
        load = HttpLoad(lab, "c1", VIP4, 60, conns=40, new_rate=0, gap_ms=100)
        try:
            time.sleep(1.5)
            d1 = syn_round(lab, workdir, "dp-2", n, rmac, first=first_dp)
            if compare_hash:
                h1 = with_hash_method(sw, gid, lambda: syn_round(lab, workdir, "hash-2", n, rmac, first=first_h,
                                                                       **HASH_ROUND))
            t0 = time.monotonic()
            rest(lab, "PUT", f"/v1/proxy-clusters/{CLUSTER}/proxies/p3", {"host": "p3", "state": "active"})
            wait_hash(lab, {"p1", "p2", "p3"}, 40)
            res["join_s"] = time.monotonic() - t0
            time.sleep(2.0)
        finally:
            load.stop()
        lr = load.result()
        res["established"] = {"conns": 40, "requests": lr["requests"], "failed": lr["failed"],
                              "moved_conns": len(lr["moved_conns"]), "by_proxy": lr["by_proxy"],
                              "closed_by_server": lr["closed_by_server"]}
        print(f"    p3 joined (in the hash {res['join_s']:.1f} s after the PUT) under 40 keep-alive connections: "
              f"{lr['requests']} requests, {lr['failed']} failed, connections that changed proxy: "
              f"{len(lr['moved_conns'])} {lr['by_proxy']}", flush=True)
        time.sleep(0.5)
        sw.flush_conntrack()
        d2 = syn_round(lab, workdir, "dp-3", n, rmac, first=first_dp)
        res["dp_hash"] = compare_rounds(d1, d2, "p3")
        print_remap("the controller's select group (OVS's default method, dp_hash)", res["dp_hash"])
        if compare_hash:
            h2 = with_hash_method(sw, gid, lambda: syn_round(lab, workdir, "hash-3", n, rmac, first=first_h,
                                                                       **HASH_ROUND))
            res["hash"] = compare_rounds(h1, h2, "p3")
            print_remap("the same group with selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)", res["hash"])
    finally:
        if protocols is not None:
            full = sw.status()["full_syncs"]
            sw.set_protocols(protocols)
            sw.wait_full_sync(full)
            rest(lab, "POST", "/v1/switches/s1/resync", expect=(200, 202))
            print(f"    s1 back to {', '.join(protocols)} and resynced; the group as the controller wrote it", flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# 4. Config.


def wait_current(lab: Lab, timeout: float = 30) -> float:
    t0 = time.monotonic()
    if not kit.wait_for(lambda: all_current(lab), timeout, step=0.01):
        raise RuntimeError(f"not every proxy runs the current config after {timeout} s: {proxies(lab)}")
    return time.monotonic() - t0


def agent_log_lines(lab: Lab, proxy: str) -> int:
    try:
        return len((lab.dir / f"agent-{proxy}.log").read_text().splitlines())
    except OSError:
        return 0


def agent_log_tail(lab: Lab, proxy: str, since: int) -> list[str]:
    try:
        return (lab.dir / f"agent-{proxy}.log").read_text().splitlines()[since:][-20:]
    except OSError:
        return []


def agent_applied_at(lab: Lab, proxy: str, since: int) -> tuple[float, str] | None:
    """(wall time, how) of the first ``config ... applied: HOW`` the agent logged after line ``since``."""
    from datetime import datetime
    for ln in (lab.dir / f"agent-{proxy}.log").read_text().splitlines()[since:]:
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) proxy-agent INFO config \S+ applied: (.*)", ln)
        if m:
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(2)
    return None


def config_latency(lab: Lab, runs: int, nroutes: int = 100) -> dict:
    want = set(in_hash(lab))
    original = cluster_intent(lab)
    intent = copy.deepcopy(original)
    pool = next(p for p in intent["pools"] if p["name"] == "v1")
    a2 = next(s for s in pool["servers"] if s["name"] == "a2")
    pool["servers"] = [s for s in pool["servers"] if s["name"] != "a2"]
    intent["routes"] = [{"prefix": f"/r{i}/", "pool": "v1"} for i in range(nroutes)]
    out = {"accepted": [], "applied": [], "current": [], "first_a2": [], "every_proxy_a2": []}
    try:
        rest(lab, "PUT", f"/v1/proxy-clusters/{CLUSTER}", intent)
        wait_current(lab)
        time.sleep(0.5)
        for i in range(runs):
            probe = lab.popen("c1", [PY, "-c", FIRST_ANSWER_PROBE, VIP4, f"/r{nroutes // 2}/x", "a2", str(len(want)),
                                     "20", "4"], stdin=subprocess.PIPE)
            marks = {p: agent_log_lines(lab, p) for p in want}
            if probe.stdout.readline().strip() != "ready":
                raise RuntimeError("the first-answer probe did not start")
            probe.stdin.write("go\n")
            probe.stdin.flush()
            time.sleep(0.05)
            t0, wall0 = time.monotonic(), time.time()
            rest(lab, "PUT", f"/v1/proxy-clusters/{CLUSTER}/pools/v1/servers/a2", a2)
            accepted = time.monotonic() - t0
            wait_current(lab)
            cur = time.monotonic() - t0
            pr_out, _ = probe.communicate(timeout=40)
            pr = json.loads(pr_out.strip().splitlines()[-1])
            first = pr["first"] - t0 if pr["first"] else None
            every = max(pr["per_proxy"].values()) - t0 if len(pr["per_proxy"]) >= len(want) else None
            applied = {p: agent_applied_at(lab, p, marks[p]) for p in sorted(want)}
            applied_s = {p: (a[0] - wall0 if a else None) for p, a in applied.items()}
            out["current"].append(cur)
            out["accepted"].append(accepted)
            if all(v is not None for v in applied_s.values()):
                out["applied"].append(max(applied_s.values()))
            if first is not None:
                out["first_a2"].append(first)
            if every is not None:
                out["every_proxy_a2"].append(every)
            print(f"    run {i + 1}: PUT answered after {accepted * 1000:.0f} ms; agents applied it after "
                  + ", ".join(f"{p} {fmt_s(v)} ({applied[p][1] if applied[p] else '?'})" for p, v in applied_s.items())
                  + f"; every proxy config_current after {cur * 1000:.0f} ms; first answer from a2 "
                  f"after {fmt_s(first)}, through every proxy ({', '.join(sorted(pr['per_proxy']))}) after "
                  f"{fmt_s(every)} ({pr['requests']} requests)", flush=True)
            rest(lab, "DELETE", f"/v1/proxy-clusters/{CLUSTER}/pools/v1/servers/a2")
            wait_current(lab)
            time.sleep(0.5)
    finally:
        rest(lab, "PUT", f"/v1/proxy-clusters/{CLUSTER}", original)
        wait_current(lab)
    return out


def stats_ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"median {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms (n={len(xs)})"


# ---------------------------------------------------------------------------------------------


def run(args, workdir: Path) -> dict:
    only = args.only
    results: dict = {}
    rundir = workdir / "run"
    ka_missing = shutil.which("keepalived") is None
    if "throughput" in only:
        print(f"throughput: wrk -t2 -c32 -d{args.seconds}s and wrk -t1 -c1, {args.runs} rounds of a cluster lab "
              f"(VIP{'; VIP + capture; VIP with p1 only' if not args.no_extra_runs else ''}) then a plain fabric lab "
              f"(HAProxy on p1 with p1's config, bound to p1's address)", flush=True)
        results["throughput"] = bench_throughput(workdir, rundir, args.seconds, args.runs, not args.no_extra_runs)
    if {"failover", "remap", "config"} & only:
        path = write_topology(workdir, cluster_topology(), "bench_proxy_cluster", "c")
        print("proxy cluster lab (topologies/proxy_cluster.yaml)", flush=True)
        with lab_up(path, rundir) as lab:
            wait_hash(lab, {"p1", "p2"})
            servers = start_http_servers(lab)
            wait_serving(lab, "c1", VIP4)
            if "failover" in only:
                print("  failover: http_load --conns 10 --new-rate 50 --sessions 50, kill -9 at 3 s", flush=True)
                results["fo_ours"] = failover_ours(lab)
            if "config" in only:
                print(f"  config: 100 routes, a2 added to pool v1, {args.config_runs} runs", flush=True)
                results["config"] = config_latency(lab, args.config_runs)
            if "remap" in only:
                print(f"  remap: {args.flows} SYNs per round, p3 joins p1 and p2", flush=True)
                results["remap"] = remap(lab, workdir, args.flows, compare_hash=not args.no_hash_compare)
            for p in servers:
                stop_proc(p)
    if "failover" in only:
        if ka_missing:
            print("keepalived is not installed (Debian package keepalived): the keepalived comparison is skipped",
                  flush=True)
        else:
            path = write_topology(workdir, keepalived_topology(), "bench_proxy_keepalived", "k")
            print("keepalived lab (one L2 switch, no controller; VRRP between p1 and p2)", flush=True)
            with lab_up(path, rundir, controller=False) as lab:
                lab.ofctl("s1", "add-flow", "actions=NORMAL")
                for p in ("p1", "p2"):
                    lab.exec(p, ["sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1"])
                servers = start_http_servers(lab)
                try:
                    results["fo_ka"] = keepalived_failover(lab, workdir, peers=False)
                    if not args.no_peers_variant:
                        results["fo_ka_peers"] = keepalived_failover(lab, workdir, peers=True)
                finally:
                    for p in servers:
                        stop_proc(p)
    return results


def summary(results: dict, args) -> None:
    rows = []
    if "throughput" in results:
        t = results["throughput"]
        v, st = t["vip"], t["straight"]
        rows += [
            ("throughput, requests/s (median)", f"{v['rps']:,.0f}", f"{st['rps']:,.0f} straight", f"{t['ratio']:.2f}x",
             ">= 0.9x", t["ratio"] >= 0.9),
            ("throughput, best run of each side", f"{max(r['rps'] for r in t['runs']['vip']):,.0f}",
             f"{max(r['rps'] for r in t['runs']['straight']):,.0f} straight", f"{t['ratio_best']:.2f}x", ">= 0.9x",
             t["ratio_best"] >= 0.9),
            ("datapath passes per request", f"{v['dp_passes_per_request']:.1f}",
             f"{st['dp_passes_per_request']:.1f} straight", f"{v['dp_passes_per_request'] / st['dp_passes_per_request']:.2f}x",
             "", None),
            ("latency p50 / p99 (ms), 32 connections", f"{v['p50_ms']:.3f} / {v['p99_ms']:.3f}",
             f"{st['p50_ms']:.3f} / {st['p99_ms']:.3f}", f"{t['added_p50_ms']:+.3f} ms p50", "< 0.2 ms added",
             t["added_p50_ms"] < 0.2),
            ("latency p50 / p99 (ms), 1 connection", f"{v['p50_1c_ms']:.3f} / {v['p99_1c_ms']:.3f}",
             f"{st['p50_1c_ms']:.3f} / {st['p99_1c_ms']:.3f}", f"{t['added_p50_1c_ms']:+.3f} ms p50",
             "< 0.2 ms added", t["added_p50_1c_ms"] < 0.2),
        ]
        for key, name in (("one_proxy", "throughput, VIP with p1 the only proxy"),
                          ("captured", "throughput, VIP + capture to k1")):
            if t.get(key):
                rows.append((name, f"{t[key]['rps']:,.0f}", f"{st['rps']:,.0f} straight",
                             f"{t[key]['rps'] / st['rps']:.2f}x", "", None))
    if "fo_ours" in results:
        o = results["fo_ours"]
        k = results.get("fo_ka")
        kp = results.get("fo_ka_peers")
        so, sk = o["outage"]["span_s"], (k["outage"]["span_s"] if k else None)
        ratio = (sk / so if so else float("inf")) if k else None
        rows += [
            ("failover: failed requests", str(o["failed"]), f"{k['failed']} keepalived" if k else "skipped",
             "", "", None),
            ("failover: outage of new connections", f"{so * 1000:.0f} ms",
             f"{sk * 1000:.0f} ms keepalived" if k else "skipped",
             (f"{ratio:.0f}x shorter" if ratio != float("inf") else "no outage") if k else "",
             ">= 5x shorter", (ratio >= 5) if k else None),
            ("failover: sessions that changed server", str(o["session_changes"]),
             f"{k['session_changes']} keepalived" + (f", {kp['session_changes']} with peers" if kp else "")
             if k else "skipped", "", "", None),
        ]
    if "remap" in results:
        r = results["remap"]
        d = r["dp_hash"]
        rows += [
            ("remap on a join, OVS default select", f"{d['fraction']:.3f}", "1/3 ideal", f"{d['flows']} flows",
             "0.30 .. 0.367", 0.30 <= d["fraction"] <= 0.367),
            ("balance after the join, default select", f"{d['balance_after']:.3f}x", "", f"{d['flows']} flows",
             "<= 1.1x at 10k", d["balance_after"] <= 1.1),
        ]
        if "hash" in r:
            h = r["hash"]
            rows += [
                ("remap on a join, selection_method=hash", f"{h['fraction']:.3f}", "1/3 ideal", f"{h['flows']} flows",
                 "0.30 .. 0.367", 0.30 <= h["fraction"] <= 0.367),
                ("balance after the join, hash", f"{h['balance_after']:.3f}x", "", f"{h['flows']} flows",
                 "<= 1.1x at 10k", h["balance_after"] <= 1.1),
            ]
        rows.append(("established connections moved by the join", str(r["established"]["moved_conns"]),
                     f"of {r['established']['conns']}", "", "0", r["established"]["moved_conns"] == 0))
    if "config" in results:
        c = results["config"]
        rows += [
            ("config: REST -> every agent applied it (log)", stats_ms(c["applied"]), "", "", "", None),
            ("config: REST -> every proxy config_current", stats_ms(c["current"]), "", "", "", None),
            ("config: REST -> first answer from a2", stats_ms(c["first_a2"]), "", "", "", None),
            ("config: REST -> a2 through every proxy", stats_ms(c["every_proxy_a2"]), "", "", "", None),
        ]
    if not rows:
        return
    head = ("figure", "ours", "baseline", "ratio / note", "target", "met")
    table = [head] + [(a, b, c, d, e, "-" if f is None else ("yes" if f else "NO")) for a, b, c, d, e, f in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    print("\nsummary")
    for i, r in enumerate(table):
        print("  " + "  ".join(x.ljust(w) for x, w in zip(r, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts, comma separated ({', '.join(PARTS)})")
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per throughput run (s)")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs per side (the median is reported)")
    ap.add_argument("--flows", type=int, default=4000, help="remap: distinct SYNs per round")
    ap.add_argument("--config-runs", type=int, default=5, help="config: server additions measured")
    ap.add_argument("--no-hash-compare", action="store_true", help="remap: skip the selection_method=hash comparison")
    ap.add_argument("--no-peers-variant", action="store_true", help="failover: skip keepalived with HAProxy peers")
    ap.add_argument("--no-extra-runs", action="store_true",
                    help="throughput: skip the VIP runs with capture on and with p1 the only proxy")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not args.only <= set(PARTS):
        ap.error(f"--only: unknown parts {sorted(args.only - set(PARTS))} ({', '.join(PARTS)})")
    if not 1 <= args.flows <= 15000:
        ap.error("--flows: 1 .. 15000 (two rounds of source ports from 1024)")
    if os.geteuid() != 0:
        ap.error("needs root (Open vSwitch, network namespaces)")
    for tool in ("haproxy", "wrk", "tcpdump"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} is not installed (Debian package {tool}; `make` installs it)")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # also when started with SIGINT ignored (`&`)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pc-"))
    try:
        results = run(args, tmp)
    finally:
        if not _KEEP:  # a lab whose teardown failed needs its run directory for `ovslab down`
            shutil.rmtree(tmp, ignore_errors=True)
    summary(results, args)
    print(f"\n(total {time.monotonic() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; " + (f"labs left for `ovslab down`: {_KEEP}" if _KEEP else "the labs were torn down"),
              file=sys.stderr)
        sys.exit(130)
