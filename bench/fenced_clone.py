"""Fenced clones: data-plane cost of the translation, control-plane time to a working fence.

Data plane (``--data``): TCP throughput (iperf3, one stream, then four) from
clone web to clone db of ``topologies/fenced_clone.yaml`` (aweb on s1, adb on
s3, two switch hops apart), through the fence (``aweb -> 10.0.0.13``, the
parent db's address, translated both ways), side by side with the very same two
hosts on plain base-fabric forwarding (the fence deleted, ``aweb -> 10.0.1.13``).
Rounds alternate the two modes (and which goes first); the median of each is
reported, and their ratio (target >= 0.9).  Other labs share the 2 CPUs, so
single rounds vary by 10-20 %: use enough rounds.

Control plane (``--control [SIZES]``, default 1 100 1000): for N fences of 10
components each,

* bulk: the N-1 background fences are put in one intent
  (``PUT /v1/apps/fenced_clone/intent``) and the time until every switch holds
  them is measured;
* create: one more fence is created with ``POST /v1/fences`` and the time from
  the request until traffic flows through it (clone m0 reaches clone m1 at the
  parent address of p1: a poller inside m0 opens a TCP connection every 10 ms
  and stamps the first one m1 answers) is measured;
* sequential (N <= 100): the background fences created one POST at a time;
* flows per fence and the flow-table size of each switch at N.

The background fences' clone components are declared in the controller's
topology but not built as namespaces (10 000 namespaces and veths would
measure the lab, not the controller): the lab is brought up from the real part
of the topology, then the controller is restarted with the full topology (same
switches, same ports for the real hosts, the extra hosts on ports that do not
exist on the bridges).  Their flows are real flows in the real bridges; only the
10 components of the measured fence and the parent carry traffic.

Run: ``.venv/bin/python bench/fenced_clone.py`` (both), ``--data``, ``--control 1 100``.
Traffic: only between lab namespaces; control over loopback.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ovs_scripts import kit  # noqa: E402
from ovs_scripts.lab import Lab  # noqa: E402
from ryu_apps.framework import cookies  # noqa: E402

PY = sys.executable
OF_PORT, REST_PORT = 16663, 18090


def rest(lab: Lab, method: str, path: str, body=None, timeout: float = 900):
    """``(status, body)`` of one request to the lab's controller."""
    return tuple(kit.rest(lab, method, path, body, timeout=timeout))


def wait_synced(lab: Lab, timeout: float = 900) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        _, sws = rest(lab, "GET", "/v1/switches")
        if all(s["synced"] for s in sws):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError(f"switches not synced after {timeout} s")


# ---------------------------------------------------------------------------
# data plane


def iperf(lab: Lab, client: str, addr: str, seconds: int, streams: int) -> float:
    r = lab.exec(client, ["iperf3", "-c", addr, "-t", str(seconds), "-O", "1", "-P", str(streams), "-J"],
                 check=False, timeout=seconds + 30)
    data = json.loads(r.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 {client} -> {addr}: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def data_plane(workdir: Path, rounds: int, seconds: int) -> list[dict]:
    src = yaml.safe_load((ROOT / "topologies" / "fenced_clone.yaml").read_text())
    src["lab"] = {"name": "benchfc_dp", "prefix": "bfd"}
    src["controller"] = {"of_port": OF_PORT, "rest_port": REST_PORT}
    path = workdir / "dp.yaml"
    path.write_text(yaml.safe_dump(src, sort_keys=False))
    lab = Lab.up(path, controller=True, timeout=120, rundir=workdir / "run")
    rows = []
    try:
        server = lab.popen("adb", ["iperf3", "-s"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        _, shop_a = rest(lab, "GET", "/v1/fences/shop-a?counters=0")
        spec = {k: v for k, v in lab.topology.apps["fenced_clone"]["fences"][0].items()}
        for streams in (1, 4):
            got: dict[str, list[float]] = {"fence": [], "fabric": []}
            for i in range(rounds):
                for mode in (("fence", "fabric") if i % 2 == 0 else ("fabric", "fence")):
                    status, _ = rest(lab, "GET", "/v1/fences/shop-a?counters=0")
                    if mode == "fence" and status == 404:
                        assert rest(lab, "POST", "/v1/fences?wait=1", spec)[0] == 201
                    if mode == "fabric" and status == 200:
                        assert rest(lab, "DELETE", "/v1/fences/shop-a?wait=1")[0] == 200
                    addr = "10.0.0.13" if mode == "fence" else "10.0.1.13"
                    got[mode].append(iperf(lab, "aweb", addr, seconds, streams))
            fence, fabric = statistics.median(got["fence"]), statistics.median(got["fabric"])
            rows.append({"streams": streams, "fence": fence, "fabric": fabric, "ratio": fence / fabric,
                         "all_fence": got["fence"], "all_fabric": got["fabric"]})
        server.terminate()
        server.wait(timeout=10)
        assert shop_a["members"], shop_a
    finally:
        lab.down()
    return rows


# ---------------------------------------------------------------------------
# control plane


SWITCHES = {"s1": {"dpid": 0xb1}, "s2": {"dpid": 0xb2}, "s3": {"dpid": 0xb3}}
TRUNKS = [{"a": "s1", "b": "s2", "a_port": 60000, "b_port": 60000},
          {"a": "s2", "b": "s3", "a_port": 60001, "b_port": 60001}]
COMPONENTS = 10


def _host(mac_hi: int, k: int, j: int, v4: str, v6: str) -> dict:
    return {"mac": f"02:{mac_hi:02x}:{k >> 8 & 255:02x}:{k & 255:02x}:00:{j:02x}", "ipv4": f"{v4}/8",
            "ipv6": f"{v6}/64"}


def real_part() -> tuple[dict, list]:
    """The parent p0..p9 and the measured clone m0..m9: real hosts, fixed ports."""
    hosts, links = {}, []
    for j in range(COMPONENTS):
        hosts[f"p{j}"] = _host(0xb0, 0, j, f"10.0.0.{j + 1}", f"fd00:b::{j + 1:x}")
        hosts[f"m{j}"] = _host(0xb1, 0, j, f"10.0.1.{j + 1}", f"fd00:b::1:{j + 1:x}")
        links.append({"a": f"p{j}", "b": f"s{j % 3 + 1}", "b_port": 1 + j})
        links.append({"a": f"m{j}", "b": f"s{(j + 1) % 3 + 1}", "b_port": 20 + j})
    return hosts, links


def background_hosts(n: int) -> tuple[dict, list]:
    """Clone components of background fences 1..n: declared only (their ports do not exist)."""
    hosts, links = {}, []
    port = {"s1": 100, "s2": 100, "s3": 100}
    for k in range(1, n + 1):
        for j in range(COMPONENTS):
            a = 0x0A400000 + k * 16 + j  # 10.64.0.0/10
            v4 = ".".join(str(a >> s & 255) for s in (24, 16, 8, 0))
            hosts[f"x{k}_{j}"] = _host(0xb2, k, j, v4, f"fd00:b::2:{k:x}:{j:x}")
            sw = f"s{(k + j) % 3 + 1}"
            links.append({"a": f"x{k}_{j}", "b": sw, "b_port": port[sw]})
            port[sw] += 1
    return hosts, links


def topology(background: int, prefix: str) -> dict:
    hosts, links = real_part()
    h2, l2 = background_hosts(background)
    hosts.update(h2)
    return {"lab": {"name": "benchfc_cp", "prefix": prefix},
            "controller": {"of_port": OF_PORT + 1, "rest_port": REST_PORT + 1},
            "switches": SWITCHES, "hosts": hosts, "links": links + l2 + TRUNKS,
            "apps": {"fabric": {}, "fenced_clone": {"fences": []}}}


def fence(name: str, clone: list[str]) -> dict:
    return {"name": name, "parent": [f"p{j}" for j in range(COMPONENTS)],
            "members": [{"component": f"p{j}", "host": clone[j]} for j in range(COMPONENTS)]}


def flow_counts(lab: Lab) -> dict[str, tuple[int, int]]:
    """(all flows, fenced_clone flows) per switch, from the switch itself."""
    out = {}
    app = f"cookie={cookies.app_id('fenced_clone') << 56:#x}/{cookies.APP_MASK:#x}"
    for sw in lab.topology.switches:
        total = lab.ofctl(sw, "dump-aggregate").stdout
        mine = lab.ofctl(sw, "dump-aggregate", app).stdout
        out[sw] = (int(total.split("flow_count=")[1].split()[0]), int(mine.split("flow_count=")[1].split()[0]))
    return out


POLLER = r"""
import json, socket, sys, time
print("ready", flush=True)
deadline = time.monotonic() + 900
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("10.0.0.2", 7000), timeout=0.05) as s:
            s.settimeout(0.2)
            hello = json.loads(s.makefile().readline())
            if hello.get("server") == "m1" and hello.get("peer") == "10.0.0.1":
                print(time.monotonic(), flush=True)
                sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.01)
sys.exit(1)
"""


def ident_ok(lab: Lab) -> bool:
    r = lab.exec("m0", [PY, "-m", "ovs_scripts.traffic", "ident-get", "10.0.0.2", "7000", "--timeout", "0.5"],
                 check=False, timeout=30)
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return False
    return res.get("ok") and res.get("server") == "m1" and res.get("peer") == "10.0.0.1"


def control_plane(workdir: Path, sizes: list[int]) -> list[dict]:
    prefix = "bfc"
    real = workdir / "cp-real.yaml"
    real.write_text(yaml.safe_dump(topology(0, prefix), sort_keys=False))
    lab = Lab.up(real, controller=True, timeout=120, rundir=workdir / "run")
    rows = []
    try:
        server = lab.popen("m1", [PY, "-u", "-m", "ovs_scripts.traffic", "ident-serve", "7000", "--name", "m1"])
        assert "listening" in server.stdout.readline()
        for n in sorted(sizes):
            row = {"fences": n}
            rest(lab, "PUT", "/v1/apps/fenced_clone/intent", {"fences": []})
            wait_synced(lab)
            (lab.dir / "topology.yaml").write_text(yaml.safe_dump(topology(n - 1, prefix), sort_keys=False))
            t0 = time.monotonic()
            lab.restart_controller(timeout=1800)
            row["restart_s"] = time.monotonic() - t0
            background = [fence(f"bg{k}", [f"x{k}_{j}" for j in range(COMPONENTS)]) for k in range(1, n)]
            if background and n <= 100:
                t0 = time.monotonic()
                for spec in background:
                    status, body = rest(lab, "POST", "/v1/fences", spec)
                    assert status == 201, body
                wait_synced(lab)
                row["sequential_s"] = time.monotonic() - t0
                rest(lab, "PUT", "/v1/apps/fenced_clone/intent", {"fences": []})
                wait_synced(lab)
            if background:
                t0 = time.monotonic()
                status, body = rest(lab, "PUT", "/v1/apps/fenced_clone/intent", {"fences": background})
                assert status == 200, body
                row["bulk_put_s"] = time.monotonic() - t0
                wait_synced(lab)
                row["bulk_s"] = time.monotonic() - t0
            assert not ident_ok(lab), "traffic flows before the measured fence exists"
            # a poller inside m0 tries a TCP connection to p1's address every 10 ms and prints
            # CLOCK_MONOTONIC (shared by every namespace) at the first answer from m1
            poller = lab.popen("m0", [PY, "-u", "-c", POLLER])
            assert poller.stdout.readline().strip() == "ready"
            t0 = time.monotonic()
            status, body = rest(lab, "POST", "/v1/fences", fence("measured", [f"m{j}" for j in range(COMPONENTS)]))
            row["post_s"] = time.monotonic() - t0
            assert status == 201, body
            row["post_breakdown"] = body["seconds"]
            first = poller.stdout.readline().strip()
            assert poller.wait(timeout=900) == 0 and first, "the measured fence never carried traffic"
            row["to_traffic_s"] = float(first) - t0
            wait_synced(lab)
            assert ident_ok(lab)
            counts = flow_counts(lab)
            row["fence_flows"] = sum(m for _, m in counts.values())
            row["flows_per_fence"] = row["fence_flows"] / n
            row["table"] = {sw: t for sw, (t, _) in counts.items()}
            _, health = rest(lab, "GET", "/v1/health")
            row["compute_s"] = health["last_compute_seconds"]
            t0 = time.monotonic()
            status, body = rest(lab, "DELETE", "/v1/fences/measured?wait=1")
            assert status == 200 and body["synced"], body
            row["delete_s"] = time.monotonic() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
        rest(lab, "PUT", "/v1/apps/fenced_clone/intent", {"fences": []})
    finally:
        lab.down()
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="store_true", help="only the data-plane benchmark")
    ap.add_argument("--control", nargs="*", type=int, help="only the control-plane benchmark (sizes)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args(argv)
    do_data = args.data or args.control is None
    do_control = args.control is not None or not args.data
    sizes = args.control or [1, 100, 1000]
    with tempfile.TemporaryDirectory(prefix="bench-fc-") as tmp:
        dp = data_plane(Path(tmp), args.rounds, args.seconds) if do_data else []
        cp = control_plane(Path(tmp), sizes) if do_control else []
    if dp:
        print()
        print("data plane: TCP aweb (s1) -> adb (s3), iperf3, median of "
              f"{args.rounds} x {args.seconds} s rounds (Gbit/s)")
        print(f"{'streams':>8} {'fence':>8} {'fabric':>8} {'ratio':>6}   all fence / all fabric")
        for r in dp:
            print(f"{r['streams']:>8} {r['fence']:>8.3f} {r['fabric']:>8.3f} {r['ratio']:>6.2f}   "
                  f"{[round(x, 3) for x in r['all_fence']]} / {[round(x, 3) for x in r['all_fabric']]}")
        worst = min(r["ratio"] for r in dp)
        print(f"translation / plain fabric: {worst:.2f} at worst (target >= 0.9: "
              f"{'met' if worst >= 0.9 else 'NOT met'})")
    if cp:
        print()
        print(f"control plane: fences of {COMPONENTS} components on 3 switches (seconds)")
        print(f"{'fences':>7} {'bulk N-1':>9} {'seq N-1':>8} {'POST':>6} {'->traffic':>10} {'delete':>7} "
              f"{'compute':>8} {'flows/fence':>12} {'table s1/s2/s3':>22}")
        for r in cp:
            tbl = "/".join(str(r["table"][s]) for s in ("s1", "s2", "s3"))
            print(f"{r['fences']:>7} {r.get('bulk_s', 0):>9.2f} {r.get('sequential_s', float('nan')):>8.2f} "
                  f"{r['post_s']:>6.2f} {r['to_traffic_s']:>10.2f} {r['delete_s']:>7.2f} {r['compute_s']:>8.2f} "
                  f"{r['flows_per_fence']:>12.1f} {tbl:>22}")
        print("bulk = PUT of the N-1 background fences until every switch holds them; seq = the same one POST "
              "at a time; POST/->traffic = one more fence: request answered / first TCP echo through it; "
              "compute = one full recompute (every app) at N")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
