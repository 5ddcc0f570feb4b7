"""What the demo's scenarios drive a lab with: pings, TCP echo, counters, the controller's REST API.

All traffic runs inside the lab's own host namespaces.  Waiting, REST and ping
parsing come from :mod:`ovs_scripts.kit` (``wait_for`` is re-exported here for
the scenarios).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ovs_scripts import flowdump, kit
from ovs_scripts.kit import wait_for
from ovs_scripts.lab import Lab

__all__ = ["PY", "ECHO_PORT", "SERVERS", "ping", "ping_many", "start_server", "tcp", "tcp_detail",
           "port_tx_packets", "rest", "addr", "wait_for", "tunnel_neighbours", "flow_snapshot", "reap_servers"]

PY = sys.executable
ECHO_PORT = 5001


#: echo servers started by this run; ``lab.down()`` stops them, :func:`reap_servers` reaps them
SERVERS: list[subprocess.Popen] = []


def ping(lab: Lab, host: str, addr: str, count: int = 3, source: str | None = None) -> tuple[int, int]:
    """``(sent, received)`` of ``ping -c count addr`` from ``host`` (``(count, 0)`` if ping printed no summary)."""
    r = kit.ping(lab, host, addr, count, interval=0.2, wait=1, quiet=True, source=source,
                 timeout=count * 1.5 + 10)
    return r.sent, r.received


def ping_many(lab: Lab, jobs: list[tuple[str, str]], count: int = 3) -> list[tuple[int, int]]:
    """Several pings at once (each its own host/destination), results in order."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda j: ping(lab, j[0], j[1], count), jobs))


def start_server(lab: Lab, host: str, port: int = ECHO_PORT) -> subprocess.Popen:
    """A TCP echo server (v4+v6) in ``host``; recorded in the lab's state, so ``down`` stops it."""
    proc = lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "serve", str(port)])
    SERVERS.append(proc)
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
    """The JSON body of ``GET path`` from the lab's controller (:class:`ovs_scripts.kit.RestError` unless 200)."""
    return kit.rest(lab, "GET", path, timeout=5).expect(200)


def addr(lab: Lab, host: str, family: int) -> str:
    h = lab.topology.hosts[host]
    return str((h.ipv4 if family == 4 else h.ipv6).ip)


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


def reap_servers() -> None:
    """Wait for the echo servers this run started (after ``lab.down()`` stopped them) and forget them."""
    for proc in SERVERS:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
    SERVERS.clear()
