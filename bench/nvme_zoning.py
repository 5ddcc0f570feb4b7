"""NVMe-oF zoning benchmarks: throughput and admission latency against plain forwarding, admissions
per second, flows per connection, revocation time.

Run: ``.venv/bin/python bench/nvme_zoning.py [--only throughput,latency,admissions,revocation]
[--runs N] [--mib M] [--hosts N] [--queues Q] [--json FILE]``

On ``topologies/nvme_zoning.yaml`` (hosts h1, h2 on s1, h3 on s2; the project's NVMe/TCP target
on t1 and its discovery controller on d1, on s3), with the lab's controller.  The peers are this
project's (``ovs_scripts/nvme_target.py``, ``nvme_host.py``: Python, asyncio on the target) since
no NVMe/TCP stack exists on this machine; they, not OVS, bound the throughput.

* **throughput**: h3 writes ``--mib`` MiB to vol1 over 4 I/O queues once, then reads them back
  sequentially (128 KiB commands, spread over the queues), timed; through admitted connections
  (zoning on), against the same host and target on plain fabric forwarding (zoning off: the
  whole zoning replaced over REST by one without subsystems, so no steering flow is left and the
  fabric's own routes carry NVMe/TCP).  Sides alternate, ``--runs`` each; medians and the ratio
  (target >= 0.95x).
* **latency**: from the TCP SYN (the connect call) to the first 4 KiB read completed, admin and
  one I/O queue, ``--latency-runs`` times per side, zoning on and off: median and p90 of each
  and what admission adds.
* **admissions**: ``--hosts`` host NQNs (unbound, zoned to vol1 in one zone) each connect an
  admin queue and ``--queues - 1`` I/O queues from h3, 16 at a time, all held open until the
  last is admitted: admissions (queue connections) per second, flows in the switches then
  (per admitted connection), then all disconnect and the pairs go.  The lab raises the
  controller's packet-in budget for it (``controller.packet_in_rate``, OVS's
  ``controller_rate_limit`` and the zoning's ``punt_rate``: 20000/s): with the defaults
  (200 packet-ins/s per switch, about 7 punts per admission) the budget is the bound.
* **revocation**: h3 runs I/O over 4 I/O queues; h3 is taken out of its zone over REST; the time
  from the REST call to the host's I/O failing with a reset, and to the target logging the
  controller's queues closed.  ``--runs`` times (h3 put back each time).
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
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovs_scripts import kit  # noqa: E402
from ovs_scripts.lab import Lab  # noqa: E402
from ovs_scripts.nvme_lab import PY, IoLoop, target_connects  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOPO = REPO / "topologies" / "nvme_zoning.yaml"
PARTS = ("throughput", "latency", "admissions", "revocation")
T4 = "10.63.0.1"
NQN = "nqn.2026-12.io.lab:"
VOL1 = NQN + "vol1"
H3 = NQN + "host-h3"
_KEEP: list[str] = []

#: write M MiB once, then read them back R times; JSON of MiB/s per read round
THROUGHPUT = r"""
import json, os, sys, time
from ovs_scripts.nvme_host import NvmeHost
addr, hostnqn, subnqn, mib, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
data = os.urandom(mib << 20)
with NvmeHost(addr, 4420, hostnqn, timeout=30).connect(subnqn, io_queues=4) as c:
    c.write(0, data)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        got = c.read(0, len(data) // 512)
        out.append(mib / (time.perf_counter() - t0))
        assert got == data
print(json.dumps(out))
"""

#: SYN to the first 4 KiB read done, N times (admin + 1 I/O queue each); JSON list of seconds
LATENCY = r"""
import json, sys, time
from ovs_scripts.nvme_host import NvmeHost
addr, hostnqn, subnqn, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out = []
for _ in range(n):
    t0 = time.perf_counter()
    c = NvmeHost(addr, 4420, hostnqn, timeout=10).connect(subnqn, io_queues=1)
    c.read(0, 8)
    out.append(time.perf_counter() - t0)
    c.disconnect()
    time.sleep(0.02)
print(json.dumps(out))
"""

#: N host NQNs connect (admin + Q-1 I/O queues each), W at a time, all held; then all disconnect
ADMISSIONS = r"""
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from ovs_scripts.nvme_host import NvmeHost
addr, prefix, subnqn, n, q, w = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def one(i):
    return NvmeHost(addr, 4420, f"{prefix}{i}", timeout=30).connect(subnqn, io_queues=q - 1)
t0 = time.perf_counter()
with ThreadPoolExecutor(w) as pool:
    ctrls = list(pool.map(one, range(n)))
took = time.perf_counter() - t0
print(json.dumps({"seconds": took}), flush=True)
sys.stdin.readline()          # held open until the bench has counted the flows
for c in ctrls:
    c.disconnect()
print(json.dumps({"closed": True}), flush=True)
"""


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def topology(workdir: Path, fast: bool) -> Path:
    data = yaml.safe_load(TOPO.read_text())
    data = copy.deepcopy(data)
    data["lab"] = {**data["lab"], "prefix": "bn" + "0123456789abcdefghijklmnopqrstuvwxyz"[os.getpid() % 36]}
    ctl = {"of_port": free_port(), "rest_port": free_port()}
    if fast:  # the admissions part: the packet-in budget raised at every step
        ctl.update(packet_in_rate=20000, rate_limit=20000, burst_limit=2000)
        data["apps"]["nvme_zoning"]["limits"] = {"punt_rate": 20000, "pending_per_host": 256}
    data["controller"] = ctl
    path = workdir / f"nvme_zoning{'-fast' if fast else ''}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def lab_up(path: Path, rundir: Path):
    t0 = time.monotonic()
    lab = Lab.up(path, rundir=rundir, timeout=90)
    print(f"  lab {lab.name} up in {time.monotonic() - t0:.1f} s", flush=True)
    try:
        yield lab
    finally:
        masked = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            lab.down()
        except Exception as exc:  # noqa: BLE001
            _KEEP.append(str(lab.dir))
            print(f"teardown of {lab.dir} failed: {exc}; finish it with OVSLAB_RUNDIR={lab.dir.parent} "
                  f".venv/bin/ovslab down {lab.dir.name}", file=sys.stderr, flush=True)
        finally:
            for sig, handler in masked.items():
                signal.signal(sig, handler)


def rest(lab: Lab, method: str, path: str, body=None):
    return kit.rest(lab, method, path, body, timeout=60).expect(200)


def in_ns(lab: Lab, host: str, script: str, *args: str, timeout: float = 600):
    cp = lab.exec(host, [PY, "-c", script, *args], check=False, timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError(f"{host}: {cp.stdout[-500:]} {cp.stderr[-1500:]}")
    return json.loads(cp.stdout.strip().splitlines()[-1])


class Zoning:
    """Zoning on (the topology's) and off (no subsystem: no steering flow) over REST."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.on_intent = rest(lab, "GET", "/v1/nvme")["intent"]

    def set(self, on: bool) -> None:
        body = self.on_intent if on else {**self.on_intent, "subsystems": [], "zone_groups": [], "hosts": []}
        rest(self.lab, "PUT", "/v1/nvme?wait=1", body)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def part_throughput(lab: Lab, args) -> dict:
    z = Zoning(lab)
    sides: dict[str, list[float]] = {"zoned": [], "plain": []}
    for i in range(args.runs):
        for side in (("zoned", "plain") if i % 2 == 0 else ("plain", "zoned")):
            z.set(side == "zoned")
            rates = in_ns(lab, "h3", THROUGHPUT, T4, H3, VOL1, str(args.mib), "2")
            sides[side].append(max(rates))
            print(f"    {side}: {max(rates):.1f} MiB/s sequential read", flush=True)
    z.set(True)
    med = {k: statistics.median(v) for k, v in sides.items()}
    return {"zoned_mib_s": round(med["zoned"], 1), "plain_mib_s": round(med["plain"], 1),
            "ratio": round(med["zoned"] / med["plain"], 3), "runs": sides}


def part_latency(lab: Lab, args) -> dict:
    z = Zoning(lab)
    out = {}
    for side in ("zoned", "plain", "zoned2", "plain2"):
        z.set(side.startswith("zoned"))
        out[side] = in_ns(lab, "h3", LATENCY, T4, H3, VOL1, str(args.latency_runs))
    z.set(True)
    zoned, plain = out["zoned"] + out["zoned2"], out["plain"] + out["plain2"]
    res = {"zoned_ms": {"p50": round(pct(zoned, 0.5) * 1000, 2), "p90": round(pct(zoned, 0.9) * 1000, 2)},
           "plain_ms": {"p50": round(pct(plain, 0.5) * 1000, 2), "p90": round(pct(plain, 0.9) * 1000, 2)}}
    res["added_p50_ms"] = round(res["zoned_ms"]["p50"] - res["plain_ms"]["p50"], 2)
    return res


def flows(lab: Lab, switch: str, kinds=(4, 5)) -> int:
    out = lab.ofctl(switch, "dump-flows").stdout
    n = 0
    for ln in out.splitlines():
        m = re.search(r"cookie=0x([0-9a-f]+)", ln)
        if m and int(m.group(1), 16) >> 56 == 0x08 and (int(m.group(1), 16) >> 48) & 0xFF in kinds:
            n += 1
    return n


def part_admissions(lab: Lab, args) -> dict:
    prefix = f"{NQN}bench-"
    intent = rest(lab, "GET", "/v1/nvme")["intent"]
    zone = {"name": "bench", "hosts": [f"{prefix}{i}" for i in range(args.hosts)], "subsystems": [VOL1]}
    intent["zone_groups"].append({"name": "bench", "zones": [zone]})
    rest(lab, "PUT", "/v1/nvme?wait=1", intent)
    before = rest(lab, "GET", "/v1/nvme")["counters"].get("admitted", 0)
    proc = lab.popen("h3", [PY, "-c", ADMISSIONS, T4, prefix, VOL1, str(args.hosts), str(args.queues), "16"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"admissions: the host process ended: rc {proc.wait()}")
        took = json.loads(line)["seconds"]
        info = rest(lab, "GET", "/v1/nvme")
        admitted = info["counters"].get("admitted", 0) - before
        held = len(rest(lab, "GET", "/v1/nvme/connections")["admitted"])
        n_flows = {sw: flows(lab, sw) for sw in ("s2", "s3")}
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.stdout.readline()
    finally:
        proc.wait(timeout=300)
    t0 = time.monotonic()
    kit.wait_for(lambda: not rest(lab, "GET", "/v1/nvme/connections")["admitted"], 120)
    gone = time.monotonic() - t0
    total = sum(n_flows.values())
    return {"hosts": args.hosts, "queues_per_host": args.queues, "connections": admitted, "seconds": round(took, 2),
            "admissions_per_s": round(admitted / took, 1), "held_open": held, "flows": n_flows,
            "flows_per_connection": round(total / max(held, 1), 2), "all_removed_after_close_s": round(gone, 1),
            "counters": info["counters"]}


def part_revocation(lab: Lab, args) -> dict:
    zone = {"name": "web", "hosts": [H3], "subsystems": [VOL1, NQN + "vol2"]}
    host_ms, target_ms = [], []
    for _ in range(args.runs):
        io = IoLoop(lab, "h3", H3, VOL1, T4, queues=4, base_lba=32768)
        time.sleep(1.0)
        seen = len((lab.dir / "nvme-t1.log").read_text().splitlines())
        t0 = time.time()
        rest(lab, "DELETE", f"/v1/nvme/zone-groups/prod/zones/web/hosts/{H3}")
        kit.wait_for(lambda: not io.running(), 5)
        r = io.result()
        time.sleep(0.3)
        host_ms.append((r["t_error"] - t0) * 1000 if r["t_error"] else float("nan"))
        stamps = []
        for ln in (lab.dir / "nvme-t1.log").read_text().splitlines()[seen:]:
            if " disconnect {" in ln and H3 in ln:
                stamps.append(datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
        target_ms.append((max(stamps) - t0) * 1000 if len(stamps) == 5 else float("nan"))
        print(f"    host reset after {host_ms[-1]:.0f} ms, the target's 5 queues closed after {target_ms[-1]:.0f} ms",
              flush=True)
        rest(lab, "PUT", "/v1/nvme/zone-groups/prod/zones/web", zone)
        time.sleep(0.5)
    return {"host_ms": {"median": round(statistics.median(host_ms), 1), "max": round(max(host_ms), 1)},
            "target_ms": {"median": round(statistics.median(target_ms), 1), "max": round(max(target_ms), 1)},
            "runs": args.runs}


def run(args, tmp: Path) -> dict:
    results: dict = {}
    rundir = tmp / "run"
    if args.only & {"throughput", "latency", "revocation"}:
        print("lab: defaults", flush=True)
        with lab_up(topology(tmp, fast=False), rundir) as lab:
            for part in ("throughput", "latency", "revocation"):
                if part in args.only:
                    print(f"  {part}", flush=True)
                    results[part] = globals()[f"part_{part}"](lab, args)
    if "admissions" in args.only:
        print("lab: packet-in budget raised", flush=True)
        with lab_up(topology(tmp, fast=True), rundir) as lab:
            print("  admissions", flush=True)
            results["admissions"] = part_admissions(lab, args)
    return results


def summary(r: dict) -> None:
    print("\n== NVMe-oF zoning")
    if "throughput" in r:
        t = r["throughput"]
        print(f"sequential read: {t['zoned_mib_s']} MiB/s admitted vs {t['plain_mib_s']} MiB/s plain forwarding: "
              f"{t['ratio']}x (target >= 0.95x)")
    if "latency" in r:
        la = r["latency"]
        print(f"SYN to first 4 KiB read (admin + 1 I/O queue): p50 {la['zoned_ms']['p50']} ms zoned vs "
              f"{la['plain_ms']['p50']} ms plain (+{la['added_p50_ms']} ms); p90 {la['zoned_ms']['p90']} vs "
              f"{la['plain_ms']['p90']} ms")
    if "admissions" in r:
        a = r["admissions"]
        print(f"admissions: {a['connections']} connections ({a['hosts']} host NQNs x {a['queues_per_host']} queues) "
              f"in {a['seconds']} s = {a['admissions_per_s']}/s; {a['flows_per_connection']} flows per admitted "
              f"connection ({a['flows']} held open); all removed {a['all_removed_after_close_s']} s after the hosts "
              f"closed")
    if "revocation" in r:
        v = r["revocation"]
        print(f"revocation, REST call to reset: host median {v['host_ms']['median']} ms (max {v['host_ms']['max']}), "
              f"target's queues closed median {v['target_ms']['median']} ms (max {v['target_ms']['max']}), "
              f"{v['runs']} runs")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts, comma separated ({', '.join(PARTS)})")
    ap.add_argument("--runs", type=int, default=3, help="throughput and revocation rounds")
    ap.add_argument("--mib", type=int, default=64, help="throughput: MiB written then read back")
    ap.add_argument("--latency-runs", type=int, default=20, help="latency: connections per side and round")
    ap.add_argument("--hosts", type=int, default=1000, help="admissions: host NQNs")
    ap.add_argument("--queues", type=int, default=5, help="admissions: queues per host (admin + I/O)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not args.only <= set(PARTS):
        ap.error(f"--only: unknown parts {sorted(args.only - set(PARTS))} ({', '.join(PARTS)})")
    if not 1 <= args.mib <= 64:
        ap.error("--mib: 1 .. 64 (the lab's namespaces are 80 MiB)")
    if os.geteuid() != 0:
        ap.error("needs root (Open vSwitch, network namespaces)")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-nz-"))
    try:
        results = run(args, tmp)
    finally:
        if not _KEEP:
            shutil.rmtree(tmp, ignore_errors=True)
    summary(results)
    print(f"\n(total {time.monotonic() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
