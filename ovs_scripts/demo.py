"""``make demo``: bring up each lab, drive it with real traffic, print what the data plane proved.

Usage::

    python -m ovs_scripts.demo                 # every scenario, in order
    python -m ovs_scripts.demo chain3 tunnel   # some of them
    python -m ovs_scripts.demo --list

Each scenario is a :class:`Scenario` in :data:`SCENARIOS`: a name, a topology
file and a function ``run(lab, check)`` that drives the lab that is up and
calls ``check(description, passed, detail)`` once per thing it verified.  A
new fabric function adds its scenario with the :func:`scenario` decorator::

    @scenario("fenced", "fenced.yaml", "fenced clones: ...")
    def fenced(lab, check):
        ...
        check("clone B cannot reach clone A", not reached, f"{sent} sent, 0 answered")

``check.note(text)`` prints a measured figure under the lab's header.

Every lab is torn down after its scenario (try/finally; also on Ctrl-C,
SIGTERM or any exception), and only a lab this run brought up: if a lab of
the same name (run directory), namespace prefix or controller port is already
in use, that scenario fails with the reason and the other lab is left alone.
Traffic only flows between hosts inside the lab's own namespaces.

Exit status: 0 if every check passed, 1 if any failed, 130 if interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TextIO

import yaml

from ovs_scripts import flowdump
from ovs_scripts import netns as nsutil
from ovs_scripts.lab import Lab, LabError, base_dir

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"
PY = sys.executable
ECHO_PORT = 5001


# ---------------------------------------------------------------------------
# Results and the scenario registry.


@dataclass
class Row:
    scenario: str
    check: str
    passed: bool
    detail: str = ""


class Check:
    """The ``check`` a scenario gets: ``check(description, passed, detail)`` records one row."""

    def __init__(self, scenario: str, rows: list[Row], out: TextIO):
        self.scenario = scenario
        self.rows = rows
        self.out = out

    def __call__(self, description: str, passed: bool, detail: str = "") -> bool:
        row = Row(self.scenario, description, bool(passed), str(detail))
        self.rows.append(row)
        _say(self.out, f"  {'PASS' if row.passed else 'FAIL'}  {description}" + (f"  ({detail})" if detail else ""))
        return row.passed

    def note(self, text: str) -> None:
        """A measured figure, printed under the lab's header."""
        _say(self.out, f"  ..    {text}")


RunFn = Callable[[Lab, Check], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    topology: str  # a file in topologies/ or a path
    run: RunFn
    summary: str = ""

    @property
    def path(self) -> Path:
        p = Path(self.topology)
        return p if p.is_absolute() else TOPOLOGIES / p


SCENARIOS: list[Scenario] = []


def register(sc: Scenario) -> Scenario:
    if any(s.name == sc.name for s in SCENARIOS):
        raise ValueError(f"scenario {sc.name!r} is registered twice")
    SCENARIOS.append(sc)
    return sc


def scenario(name: str, topology: str, summary: str = "") -> Callable[[RunFn], RunFn]:
    """Decorator: ``@scenario("chain3", "chain3.yaml")`` registers ``run(lab, check)``."""
    def deco(fn: RunFn) -> RunFn:
        register(Scenario(name, topology, fn, summary or (fn.__doc__ or "").strip().splitlines()[0]))
        return fn
    return deco


def _say(out: TextIO, text: str = "") -> None:
    print(text, file=out, flush=True)


# ---------------------------------------------------------------------------
# Traffic helpers (all of it runs inside the lab's host namespaces).

_SERVERS: list[subprocess.Popen] = []  # started by this run; stopped by lab.down(), reaped here


def ping(lab: Lab, host: str, addr: str, count: int = 3, source: str | None = None) -> tuple[int, int]:
    """``(sent, received)`` of ``ping -c count addr`` from ``host``."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1"]
    if source:
        argv += ["-I", source]
    r = lab.exec(host, argv + [addr], check=False, timeout=count * 1.5 + 10)
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", r.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (count, 0)


def ping_many(lab: Lab, jobs: list[tuple[str, str]], count: int = 3) -> list[tuple[int, int]]:
    """Several pings at once (each its own host/destination), results in order."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda j: ping(lab, j[0], j[1], count), jobs))


def start_server(lab: Lab, host: str, port: int = ECHO_PORT) -> subprocess.Popen:
    """A TCP echo server (v4+v6) in ``host``; recorded in the lab's state, so ``down`` stops it."""
    proc = lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "serve", str(port)])
    _SERVERS.append(proc)
    line = proc.stdout.readline()
    if "listening" not in str(line):
        raise RuntimeError(f"echo server in {host} did not start: {line!r} (see {lab.dir / (host + '.log')})")
    return proc


def tcp(lab: Lab, host: str, addr: str, port: int = ECHO_PORT, flows: int = 1, nbytes: int = 2000,
        timeout: float = 5.0) -> dict:
    """``{"ok": n, "failed": m, "errors": [...]}``: ``flows`` echo connections from ``host``."""
    r = lab.exec(host, [PY, "-m", "ovs_scripts.traffic", "tcp", addr, str(port), "--flows", str(flows),
                        "--bytes", str(nbytes), "--timeout", str(timeout)],
                 check=False, timeout=flows * (2 * timeout + 1) + 10)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"ok": 0, "failed": flows, "errors": [(r.stderr or r.stdout).strip()[-200:]]}


def tcp_detail(res: dict, flows: int, nbytes: int) -> str:
    text = f"{res.get('ok', 0)}/{flows} connections echoed {nbytes} B"
    if res.get("errors"):
        text += f"; {res['errors'][0]}"
    return text


def port_tx_packets(lab: Lab, switch: str, port: int) -> int:
    """OpenFlow tx packet counter of one switch port (``ovs-ofctl dump-ports``)."""
    bridge, rundir = lab.switch_target(switch)
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", flowdump.mgmt_target(bridge, rundir),
                          str(port)], capture_output=True, text=True, check=True, timeout=15).stdout
    m = re.search(r"tx pkts=(\d+)", out)
    if not m:
        raise RuntimeError(f"no tx counter for {switch} port {port} in: {out.strip()[:200]}")
    return int(m.group(1))


def rest(lab: Lab, path: str):
    with urllib.request.urlopen(f"{lab.rest_url}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def addr(lab: Lab, host: str, family: int) -> str:
    h = lab.topology.hosts[host]
    return str((h.ipv4 if family == 4 else h.ipv6).ip)


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def tunnel_neighbours(lab: Lab, node: str) -> str:
    """``ovs-appctl tnl/neigh/show`` of a node's OVS instance (the underlay ARP/ND cache)."""
    return lab.sandbox(node).appctl("tnl/neigh/show", check=False).stdout or ""


def flow_snapshot(lab: Lab) -> dict[str, tuple[float, dict[tuple, flowdump.FlowEntry]]]:
    """Every switch's ``(time read, flows by (table, priority, match))``."""
    out = {}
    for sw in lab.topology.switches:
        bridge, rundir = lab.switch_target(sw)
        flows = flowdump.dump(bridge, rundir).flows
        out[sw] = (time.monotonic(), {(f.table, f.priority, f.match_text): f for f in flows})
    return out


# ---------------------------------------------------------------------------
# Scenarios of the base fabric.


@scenario("chain3", "chain3.yaml")
def chain3(lab: Lab, check: Check) -> None:
    """three switches in a row: L2 reachability v4/v6, TCP, anti-spoofing, flows == intent"""
    hosts = list(lab.topology.hosts)
    jobs = [(a, b, fam) for a in hosts for b in hosts if a != b for fam in (4, 6)]
    results = ping_many(lab, [(a, addr(lab, b, fam)) for a, b, fam in jobs])
    for (a, b, fam), (sent, recv) in zip(jobs, results):
        check(f"{a} -> {b} ping IPv{fam}", sent > 0 and recv == sent, f"{recv}/{sent}")

    start_server(lab, "h3")
    for fam in (4, 6):
        res = tcp(lab, "h1", addr(lab, "h3", fam), flows=3, nbytes=2000)
        check(f"h1 -> h3 TCP echo IPv{fam}", res.get("ok") == 3, tcp_detail(res, 3, 2000))

    # h1 claims an address that is not its own: the ingress table admits only h1's own MAC+IP on its port
    spoofed, real, target = "10.1.0.99", addr(lab, "h1", 4), addr(lab, "h3", 4)
    lab.exec("h1", ["ip", "addr", "add", f"{spoofed}/24", "dev", "eth0"])
    try:
        sent, recv = ping(lab, "h1", target, count=2, source=spoofed)
        check(f"h1 spoofed source {spoofed} -> h3 dropped", recv == 0, f"{recv}/{sent} answered")
        sent, recv = ping(lab, "h1", target, count=3)
        check(f"h1 real source {real} -> h3 still works", sent > 0 and recv == sent, f"{recv}/{sent}")
    finally:
        lab.exec("h1", ["ip", "addr", "del", f"{spoofed}/24", "dev", "eth0"], check=False)

    for sw in lab.topology.switches:
        desired = flowdump.fetch_desired(lab.rest_url, sw)
        bridge, rundir = lab.switch_target(sw)
        d = flowdump.diff(bridge, rundir, desired)
        n = len(desired.get("flows", []))
        check(f"{sw} flows == controller's desired state", d.identical,
              f"{n} flows; {len(d.missing)} missing, {len(d.unexpected)} unexpected, {len(d.different)} different")


@scenario("diamond", "diamond.yaml")
def diamond(lab: Lab, check: Check) -> None:
    """two equal-cost paths: routing, ECMP spread, link-cut failover, hitless controller restart"""
    up, down_ = 11, 12  # s1's ports towards s2 and s3 (the two ECMP members)
    h2v4, h2v6 = addr(lab, "h2", 4), addr(lab, "h2", 6)
    sent4, recv4 = ping(lab, "h1", h2v4)
    check("h1 -> h2 routed ping IPv4 (via gateway)", sent4 > 0 and recv4 == sent4, f"{recv4}/{sent4}")
    sent6, recv6 = ping(lab, "h1", h2v6)
    check("h1 -> h2 routed ping IPv6 (via gateway)", sent6 > 0 and recv6 == sent6, f"{recv6}/{sent6}")

    start_server(lab, "h2")
    flows, nbytes = 40, 500
    before = {p: port_tx_packets(lab, "s1", p) for p in (up, down_)}
    res = tcp(lab, "h1", h2v4, flows=flows, nbytes=nbytes)
    after = {p: port_tx_packets(lab, "s1", p) for p in (up, down_)}
    check(f"h1 -> h2 {flows} TCP connections", res.get("ok") == flows, tcp_detail(res, flows, nbytes))
    used = {p: after[p] - before[p] for p in (up, down_)}
    total = sum(used.values()) or 1
    worth = {p: round(flows * used[p] / total) for p in used}
    check(f"ECMP: s1 ports {up} and {down_} both carry traffic", all(n > 20 for n in used.values()),
          f"tx +{used[up]} / +{used[down_]} pkts")
    check.note(f"ECMP split {worth[up]}/{worth[down_]} flows-worth of packets "
               f"(s1 port {up}: +{used[up]} pkts, port {down_}: +{used[down_]} pkts)")

    def route_to_h2() -> list[str]:
        fl = [f for f in rest(lab, "/v1/switches/s1/flows?app=fabric") if f["match"].get("ipv4_dst") == h2v4]
        return fl[0]["actions"] if fl else []

    # cut s1-s2: the controller must move h2's route onto port 12 alone
    t0 = time.monotonic()
    lab.link("s1", "s2", "down")
    rerouted = wait_for(lambda: route_to_h2() == [f"output:{down_}"], timeout=10)
    t_route = time.monotonic() - t0
    first_ok = wait_for(lambda: tcp(lab, "h1", h2v4, flows=1, nbytes=nbytes, timeout=1).get("ok") == 1,
                        timeout=10, step=0)
    t_tcp = time.monotonic() - t0
    check("link s1-s2 cut: controller reroutes h2 via port 12 only", rerouted,
          f"route {route_to_h2()} after {t_route:.2f} s")
    b12 = port_tx_packets(lab, "s1", down_)
    n = 20
    res = tcp(lab, "h1", h2v4, flows=n, nbytes=nbytes)
    d12 = port_tx_packets(lab, "s1", down_) - b12
    check("link s1-s2 cut: TCP h1 -> h2 still works", first_ok and res.get("ok") == n,
          tcp_detail(res, n, nbytes) + f"; first echo {t_tcp:.2f} s after the cut")
    check(f"link s1-s2 cut: traffic leaves s1 on port {down_}", d12 > n * 3, f"tx +{d12} pkts for {n} connections")
    check.note(f"link-cut recovery: route moved in {t_route:.2f} s, first TCP echo {t_tcp:.2f} s after the cut")

    t0 = time.monotonic()
    lab.link("s1", "s2", "up")
    back = wait_for(lambda: (route_to_h2() or [""])[0].startswith("group:"), timeout=10)
    t_back = time.monotonic() - t0
    res = tcp(lab, "h1", h2v4, flows=4, nbytes=nbytes)
    check("link s1-s2 restored: h2's route back on the ECMP group", back and res.get("ok") == 4,
          f"route {route_to_h2()} after {t_back:.2f} s; {tcp_detail(res, 4, nbytes)}")
    wait_for(lambda: all(s.get("synced") for s in rest(lab, "/v1/switches")), timeout=10)

    # restart the controller: it must find every switch already right and change nothing
    before_flows = flow_snapshot(lab)
    time.sleep(1.0)
    t0 = time.monotonic()
    lab.restart_controller()
    t_restart = time.monotonic() - t0
    switches = rest(lab, "/v1/switches")
    changed = {s["name"]: {k: v for k, v in s.get("last_changes", {}).items() if v} for s in switches}
    unsynced = [s["name"] for s in switches if not s.get("synced")]
    check("controller restart: every switch synced, nothing changed",
          not unsynced and not any(changed.values()) and len(switches) == len(lab.topology.switches),
          f"{len(switches) - len(unsynced)}/{len(switches)} synced, restart {t_restart:.1f} s"
          + (f"; changes {({k: v for k, v in changed.items() if v})}" if any(changed.values()) else
             "; last_changes all 0"))
    after_flows = flow_snapshot(lab)
    # A flow the restarted controller re-added would be younger than the time between the
    # two reads minus the 1 s before the restart; one left alone aged by all of it.
    problems, kept, min_gain, min_wall = [], 0, None, None
    for sw, (t_before, flows_before) in before_flows.items():
        t_after, fa = after_flows[sw]
        wall = t_after - t_before
        min_wall = wall if min_wall is None else min(min_wall, wall)
        if set(fa) != set(flows_before):
            problems.append(f"{sw}: {len(set(flows_before) - set(fa))} gone, {len(set(fa) - set(flows_before))} new")
            continue
        for key, f in fa.items():
            gain = (f.duration or 0) - (flows_before[key].duration or 0)
            min_gain = gain if min_gain is None else min(min_gain, gain)
            if gain < wall - 0.5:
                problems.append(f"{sw} table={key[0]} priority={key[1]} {key[2]} was re-added "
                                f"(aged {gain:.1f} s in {wall:.1f} s)")
            else:
                kept += 1
    check("controller restart: flows kept (durations kept counting)", not problems,
          f"{kept} flows aged +{min_gain or 0:.1f} s or more over {min_wall or 0:.1f} s"
          if not problems else "; ".join(problems[:3]))
    sent, recv = ping(lab, "h1", h2v4)
    check("controller restart: h1 -> h2 ping IPv4 afterwards", sent > 0 and recv == sent, f"{recv}/{sent}")
    check.note(f"controller restart took {t_restart:.1f} s; {kept} flows untouched on {len(before_flows)} switches")


@scenario("tunnel", "tunnel.yaml")
def tunnel(lab: Lab, check: Check) -> None:
    """two nodes, each with its own OVS, joined by VXLAN: TCP across, carried by the tunnel route"""
    h2v4, h2v6 = addr(lab, "h2", 4), addr(lab, "h2", 6)
    # The userspace datapath drops the first packet into a tunnel whose remote underlay
    # address it has not resolved yet (it sends an ARP from br-phy and learns the MAC into
    # its tunnel neighbour cache, ``tnl/neigh/show``).  Prime it and show that it happened.
    local = lab.topology.switches["s1"].node
    remote = str(lab.topology.nodes[lab.topology.switches["s2"].node].underlay_ip.ip)
    before = remote in tunnel_neighbours(lab, local)
    sent, recv = ping(lab, "h1", h2v4, count=1)
    learned = wait_for(lambda: remote in tunnel_neighbours(lab, local), timeout=3)
    check.note(f"underlay neighbour {remote} in {local}'s tnl/neigh cache: before {before}, after priming "
               f"ping {learned} (priming ping {recv}/{sent}; the first packet waits for underlay ARP)")
    check(f"{local} resolved the tunnel's underlay neighbour {remote}", learned, "ovs-appctl tnl/neigh/show")
    sent, recv = ping(lab, "h1", h2v4)
    check("h1 -> h2 ping IPv4 over VXLAN", sent > 0 and recv == sent, f"{recv}/{sent}")
    sent, recv = ping(lab, "h1", h2v6)
    check("h1 -> h2 ping IPv6 over VXLAN", sent > 0 and recv == sent, f"{recv}/{sent}")
    start_server(lab, "h2")

    bridge, rundir = lab.switch_target("s1")
    tunnel_port = 100

    def route_packets() -> tuple[int | None, str]:
        fl = [f for f in flowdump.dump(bridge, rundir).flows
              if f.app == "fabric" and f.table == 90 and f.match.get("nw_dst") == h2v4]
        if len(fl) != 1:
            return None, f"{len(fl)} flows in table 90 for nw_dst={h2v4}"
        return fl[0].n_packets or 0, fl[0].actions_text

    route_before, actions = route_packets()
    tun_before = port_tx_packets(lab, "s1", tunnel_port)
    flows, nbytes = 5, 20000
    res = tcp(lab, "h1", h2v4, flows=flows, nbytes=nbytes)
    check("h1 -> h2 TCP echo IPv4 across the tunnel", res.get("ok") == flows, tcp_detail(res, flows, nbytes))
    res6 = tcp(lab, "h1", h2v6, flows=2, nbytes=nbytes)
    check("h1 -> h2 TCP echo IPv6 across the tunnel", res6.get("ok") == 2, tcp_detail(res6, 2, nbytes))

    # OpenFlow counters trail the datapath by up to a revalidator round (~1 s): poll
    got: dict = {}

    def carried() -> bool:
        got["n"], got["actions"] = route_packets()
        return route_before is not None and got["n"] is not None and got["n"] - route_before > 20

    ok = wait_for(carried, timeout=5, step=0.3)
    delta = (got["n"] - route_before) if route_before is not None and got.get("n") is not None else None
    tun_delta = port_tx_packets(lab, "s1", tunnel_port) - tun_before
    check(f"s1 tunnel route (table 90, nw_dst {h2v4}, output:{tunnel_port}) carried it",
          ok and f"output:{tunnel_port}" in got.get("actions", ""),
          f"+{delta} pkts, actions {got.get('actions') or actions}" if delta is not None
          else str(got.get("actions") or actions))
    check.note(f"tunnel route on s1: +{delta} pkts; VXLAN port {tunnel_port} tx +{tun_delta} pkts")


# ---------------------------------------------------------------------------
# The runner.


#: function apps' scenario modules (ovs_scripts/scenarios/<name>.py), in demo order
FUNCTION_SCENARIOS = ("fenced_clone", "oam_ecmp", "multicast_standby", "cloud_router")


def _load_function_scenarios() -> None:
    import importlib

    for name in FUNCTION_SCENARIOS:
        module = f"ovs_scripts.scenarios.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepared_topology(sc: Scenario, tmp: Path, prefix: str | None, free_ports: bool) -> Path:
    """The topology file to bring up: the original, or a copy with another prefix / free controller ports."""
    if not prefix and not free_ports:
        return sc.path
    data = yaml.safe_load(sc.path.read_text())
    if prefix:
        data.setdefault("lab", {})["prefix"] = prefix
    if free_ports:
        ctl = dict(data.get("controller") or {})
        ctl["of_port"], ctl["rest_port"] = _free_port(), _free_port()
        data["controller"] = ctl
    path = tmp / f"{sc.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _header(out: TextIO, sc: Scenario, lab: Lab, seconds: float) -> None:
    topo = lab.topology
    sws = ", ".join(f"{s} ({sw.bridge}{', node ' + sw.node if sw.node else ''})" for s, sw in topo.switches.items())
    hosts = ", ".join(f"{h} {x.ipv4.ip if x.ipv4 else ''}/{x.ipv6.ip if x.ipv6 else ''}"
                      for h, x in topo.hosts.items())
    _say(out, f"lab {lab.name} up in {seconds:.1f} s")
    _say(out, f"  switches: {sws}")
    _say(out, f"  hosts:    {hosts}")
    if topo.nodes:
        _say(out, "  nodes:    " + ", ".join(f"{n} underlay {x.underlay_ip}" for n, x in topo.nodes.items()))
    _say(out, f"  controller: {lab.rest_url}   run directory: {lab.dir}")


@contextlib.contextmanager
def _no_interrupts():
    """Hold off SIGINT/SIGTERM while tearing down (a second Ctrl-C must not leave half a lab)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda n, f: pending.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            raise KeyboardInterrupt


def _teardown(lab: Lab, check: Check, out: TextIO) -> None:
    with _no_interrupts():
        t0 = time.monotonic()
        try:
            notes = lab.down()
        except Exception as exc:  # noqa: BLE001 - reported as a failed row
            check("teardown", False, f"{exc}; retry with `ovslab down {lab.name}`")
            return
        finally:
            for proc in _SERVERS:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)
                if proc.stdout:
                    proc.stdout.close()
            _SERVERS.clear()
        left = [ns for ns in lab.plan.all_netns() if nsutil.netns_exists(ns)]
        check("teardown: namespaces and run directory removed", not left and not lab.dir.exists(),
              f"{time.monotonic() - t0:.1f} s" + (f"; left: {', '.join(left)}" if left else "")
              + "".join(f"; {n}" for n in notes if not n.startswith("stopped ")))


def select(names: Iterable[str] | None) -> list[Scenario]:
    if not names:
        return list(SCENARIOS)
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def run(scenarios: Iterable[str] | None = None, *, rundir: str | os.PathLike | None = None,
        prefix: str | None = None, free_ports: bool = False, out: TextIO | None = None,
        rows: list[Row] | None = None) -> tuple[list[Row], bool]:
    """Run scenarios (all by default) one lab at a time; returns ``(rows, ok)``.

    ``rundir`` is the labs' base directory (default $OVSLAB_RUNDIR or /run/ovslab).
    ``prefix`` replaces every lab's namespace prefix and ``free_ports`` picks
    free controller ports, so a run (a test) cannot collide with labs brought
    up from the same topology files.  Rows are appended to ``rows`` if given
    (so a caller still has them when Ctrl-C interrupts the run).
    """
    out = out or sys.stdout
    selected = select(scenarios)
    rows = [] if rows is None else rows
    with tempfile.TemporaryDirectory(prefix="ovslab-demo-") as tmpdir:
        for sc in selected:
            check = Check(sc.name, rows, out)
            _say(out, "")
            _say(out, f"== {sc.name}: {sc.summary}  [{sc.path.relative_to(REPO) if sc.path.is_relative_to(REPO) else sc.path}]")
            lab = None
            try:
                path = _prepared_topology(sc, Path(tmpdir), prefix, free_ports)
                existing = base_dir(rundir) / yaml.safe_load(path.read_text())["lab"]["name"]
                if existing.exists():
                    env = "" if base_dir(rundir) == base_dir(None) else f"OVSLAB_RUNDIR={base_dir(rundir)} "
                    check("bring the lab up", False,
                          f"lab {existing.name} is already up ({existing}), not started by this demo: "
                          f"left alone; take it down with `{env}ovslab down {existing.name}` or use another --rundir")
                    continue
                t0 = time.monotonic()
                try:
                    lab = Lab.up(path, controller=True, rundir=rundir, timeout=60)
                except LabError as exc:  # another lab's namespaces/ports, missing tools, not root...
                    check("bring the lab up", False, f"{exc}" + (f" [{exc.details.splitlines()[-1]}]"
                                                                 if exc.details else ""))
                    continue
                _header(out, sc, lab, time.monotonic() - t0)
                sc.run(lab, check)
            except KeyboardInterrupt:
                check("scenario", False, "interrupted")
                raise
            except Exception as exc:  # noqa: BLE001 - one scenario's crash must not stop the others
                check("scenario finished", False, f"{type(exc).__name__}: {exc}")
                _say(out, "".join(traceback.format_exception(exc)).rstrip())
            finally:
                if lab is not None:
                    _teardown(lab, check, out)
    ok = bool(rows) and all(r.passed for r in rows)
    return rows, ok


def table(rows: list[Row]) -> str:
    heads = ("scenario", "check", "result", "detail")
    w0 = max([len(heads[0])] + [len(r.scenario) for r in rows]) + 2
    w1 = max([len(heads[1])] + [len(r.check) for r in rows]) + 2
    lines = [f"{heads[0]:<{w0}}{heads[1]:<{w1}}{heads[2]:<8}{heads[3]}"]
    for r in rows:
        lines.append(f"{r.scenario:<{w0}}{r.check:<{w1}}{'PASS' if r.passed else 'FAIL':<8}{r.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovs_scripts.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help="scenarios to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--rundir", help="base run directory of the labs (default $OVSLAB_RUNDIR or /run/ovslab)")
    ap.add_argument("--prefix", help="namespace prefix for every lab instead of the topology's")
    ap.add_argument("--free-ports", action="store_true", help="pick free controller ports instead of the topology's")
    args = ap.parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:<12}{sc.topology:<16}{sc.summary}")
        return 0
    try:
        select(args.scenarios)
    except ValueError as exc:
        ap.error(str(exc))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    rows: list[Row] = []
    interrupted = False
    try:
        _, ok = run(args.scenarios, rundir=args.rundir, prefix=args.prefix, free_ports=args.free_ports, rows=rows)
    except KeyboardInterrupt:
        interrupted, ok = True, False
    elapsed = time.monotonic() - t0
    print()
    print(table(rows))
    passed = sum(r.passed for r in rows)
    failed = len(rows) - passed
    print(f"summary: {passed} passed, {failed} failed ({elapsed:.1f} s)" + ("  INTERRUPTED" if interrupted else ""))
    if interrupted:
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    # Run the package module, not this __main__ copy, so the scenario modules
    # (which import ovs_scripts.demo) register into the registry main() reads.
    from ovs_scripts import demo as _demo

    sys.exit(_demo.main())
else:
    _load_function_scenarios()
