"""Controller cluster benchmarks (issue 11): failover, the cluster's cost on the hot path, intent writes.

Run: ``.venv/bin/python bench/controller_ha.py [--runs 10] [--ttl 2] [--only failover,hotpath,writes]``

On ``topologies/cloud_router.yaml`` (its access points learn clients from packet-ins):

* **failover**: kill -9 the instance that masters ap3, then send a frame from a client
  nobody knows at ap3 every 10 ms.  Per run: the time until a survivor masters ap3 (polled on
  ``/v1/cluster`` every 10 ms) and until that client's location flows are on ap3 (the new
  master learned it from a packet-in, wrote it to etcd and programmed it); the killed instance
  is restarted before the next run.  etcd's lease TTL (``--ttl``) is the floor.
* **hotpath**: packet-in -> learned -> flows committed, a single controller (state dir) against
  a 3-instance cluster (etcd first): a frame from a new client enters ap3, and ``ovs-ofctl
  monitor`` says when its location flow is added.
* **writes**: ``PUT /v1/apps/fabric/intent`` back to back (writes per second) and, in the
  cluster, the time until every instance answers with the new intent.

Traffic runs only inside the labs' namespaces and to loopback; the labs are torn down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ovs_scripts import kit  # noqa: E402
from ovs_scripts.flowdump import mgmt_target  # noqa: E402
from ovs_scripts.lab import Lab, _port_free  # noqa: E402
from ovs_scripts.scenarios.cloud_router import K_LOC, CloudLab  # noqa: E402
from ryu_apps.framework import cookies  # noqa: E402

TOPO = ROOT / "topologies" / "cloud_router.yaml"
APP = "cloud_router"
AP, AP_PORT = "ap3", 10   # c4's port on ap3 (topologies/cloud_router.yaml): new clients appear there


def free_range(n: int, start: int) -> int:
    base = start
    while not all(_port_free(base + i) for i in range(n)):
        base += n + 7
    return base


def prepared(workdir: Path, name: str, prefix: str, cluster: bool, ttl: int) -> Path:
    data = yaml.safe_load(TOPO.read_text())
    data["lab"] = {**data["lab"], "name": name, "prefix": prefix}
    ctl = {"of_port": free_range(3, 16700), "rest_port": free_range(3, 18700)}
    if cluster:
        ctl.update(replicas=3, store="etcd", lease_ttl=ttl, etcd_port=free_range(6, 23990))
    data["controller"] = ctl
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stats(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"median {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms (n={len(xs)})"


def get(lab: Lab, member: str, path: str):
    inst = next(i for i in lab.instances if i["member"] == member)
    return kit.request("GET", inst["rest_url"] + path, headers=lab.rest_headers(), timeout=5).body



class FlowWatch:
    """``ovs-ofctl monitor SWITCH watch:!initial``: the moment each flow is added, as the switch reports it."""

    def __init__(self, lab: Lab, switch: str):
        bridge, rundir = lab.switch_target(switch)
        # (its control socket in the switch's run dir: /var/run/openvswitch need not exist)
        self.proc = subprocess.Popen(["stdbuf", "-oL", "ovs-ofctl", "-O", "OpenFlow13",
                                      f"--unixctl={rundir}/ofctl-monitor-{os.getpid()}.ctl", "monitor",
                                      mgmt_target(bridge, rundir), "watch:!initial"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.seen: dict[str, float] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.3)

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = re.search(r"event=ADDED .*cookie=(0x[0-9a-f]+)", line)
            if m:
                self.seen.setdefault(m.group(1), time.monotonic())

    def added(self, cookie: int) -> float | None:
        return self.seen.get(f"{cookie:#x}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def learn_time(cl: CloudLab, watch: FlowWatch, mac: str, ip: str, timeout: float = 10.0) -> float | None:
    """One frame from a new client entering ap3 at c4's port (ovs-ofctl packet-out into the
    pipeline); seconds until ap3 reports its location flow added (ovs-ofctl monitor)."""
    cookie = cookies.make(APP, K_LOC, mac)
    t0 = time.monotonic()
    cl.inject_from(AP, AP_PORT, mac, ip)
    while time.monotonic() - t0 < timeout:
        at = watch.added(cookie)
        if at is not None:
            return at - t0
        time.sleep(0.001)
    return None


def forget(cl: CloudLab, mac: str) -> None:
    try:
        cl.rest(f"/v1/{APP}/clients/{mac}", "DELETE")
    except kit.RestError:
        pass


def bench_failover(cl: CloudLab, runs: int) -> dict:
    lab = cl.lab
    to_master, to_learned = [], []
    for n in range(runs):
        victim = get(lab, lab.running_members()[0], "/v1/cluster")["masters"][AP]["member"]
        survivor = next(m for m in lab.running_members() if m != victim)
        mac, ip = f"02:00:00:61:{n // 256:02x}:{n % 256:02x}", f"10.60.1.{n + 10}"
        t0 = time.monotonic()
        lab.kill_instance(int(victim[1:]))
        master = learned = None
        while time.monotonic() - t0 < 15 and (master is None or learned is None):
            if learned is None:
                cl.inject_from(AP, AP_PORT, mac, ip)  # the new client keeps sending
            if master is None:
                held = get(lab, survivor, "/v1/cluster")["masters"].get(AP, {}).get("member")
                if held not in (None, victim):
                    master = time.monotonic() - t0
            if learned is None and cl.client_location_flows(AP, mac):
                learned = time.monotonic() - t0
            time.sleep(0.005)
        print(f"  run {n + 1}: killed {victim}; new master of {AP} after "
              f"{'-' if master is None else f'{master * 1000:.0f} ms'}, a new client's flows on {AP} after "
              f"{'-' if learned is None else f'{learned * 1000:.0f} ms'}", flush=True)
        if master is not None:
            to_master.append(master)
        if learned is not None:
            to_learned.append(learned)
        lab.start_instance(int(victim[1:]))
        lab.wait_cluster(120)
        forget(cl, mac)
    return {"to_master": to_master, "to_learned": to_learned}


def bench_hotpath(cl: CloudLab, runs: int, tag: str) -> list[float]:
    out = []
    watch = FlowWatch(cl.lab, AP)
    try:
        for n in range(runs):
            mac, ip = f"02:00:00:62:{tag}:{n:02x}", f"10.60.2.{n + 10 + (100 if tag == 'c1' else 0)}"
            t = learn_time(cl, watch, mac, ip)
            if t is not None:
                out.append(t)
            forget(cl, mac)
            time.sleep(0.3)
    finally:
        watch.close()
    return out


def bench_writes(lab: Lab, n: int, cluster: bool) -> dict:
    base = kit.rest(lab, "GET", "/v1/apps/fabric/intent").expect(200)
    seen = []
    t0 = time.monotonic()
    for i in range(n):
        body = dict(base, nd_rate_per_host=20 + i % 50)
        kit.rest(lab, "PUT", "/v1/apps/fabric/intent", body).expect(200, 202)
    rate = n / (time.monotonic() - t0)
    if cluster:
        for i in range(min(n, 20)):
            body = dict(base, nd_rate_per_host=100 + i)
            t1 = time.monotonic()
            kit.rest(lab, "PUT", "/v1/apps/fabric/intent", body).expect(200, 202)
            while time.monotonic() - t1 < 5:
                if all(get(lab, m, "/v1/apps/fabric/intent") == body for m in lab.running_members()):
                    seen.append(time.monotonic() - t1)
                    break
                time.sleep(0.002)
    kit.rest(lab, "PUT", "/v1/apps/fabric/intent", base).expect(200, 202)
    return {"writes_per_s": rate, "all_instances": seen}


@contextlib.contextmanager
def cloud_lab(workdir: Path, name: str, prefix: str, cluster: bool, ttl: int):
    """A cloud_router lab (single controller or 3-instance cluster) with its services, torn down after."""
    lab = Lab.up(prepared(workdir, name, prefix, cluster, ttl), rundir=workdir / "run",
                 timeout=180 if cluster else 120)
    try:
        cl = CloudLab(lab)
        cl.start_services(iperf=False)
        assert cl.wait_ready(30)
        yield cl
    finally:
        lab.down()


def measure(results: dict, cl: CloudLab, label: str, key: str, only: set, runs: int) -> None:
    """The hot path and intent writes on one lab, into ``results[hot_<key>]``/``[writes_<key>]``."""
    cluster = key == "cluster"
    if "hotpath" in only:
        results[f"hot_{key}"] = bench_hotpath(cl, 2 * runs, "c1" if cluster else "c0")
        print(f"hot path, {label}: {stats(results[f'hot_{key}'])}", flush=True)
    if "writes" in only:
        w = results[f"writes_{key}"] = bench_writes(cl.lab, 50, cluster)
        print(f"intent writes, {label}: {w['writes_per_s']:.0f}/s"
              + (f"; every instance has a write after {stats(w['all_instances'])}" if cluster else ""), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ttl", type=int, default=2, help="the etcd lease TTL (s) of the cluster")
    ap.add_argument("--only", default="failover,hotpath,writes")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        if "hotpath" in only or "writes" in only:
            with cloud_lab(Path(tmp), "bench_ha_single", "bh1", False, args.ttl) as cl:
                measure(results, cl, "single controller", "single", only, args.runs)
        with cloud_lab(Path(tmp), "bench_ha_cluster", "bh3", True, args.ttl) as cl:
            measure(results, cl, "3-instance cluster", "cluster", only, args.runs)
            if "failover" in only:
                print(f"failover (lease TTL {args.ttl} s), {args.runs} runs:", flush=True)
                results["failover"] = bench_failover(cl, args.runs)
    print("\nsummary")
    if "failover" in results:
        f = results["failover"]
        print(f"  kill -9 of ap3's master -> new master:        {stats(f['to_master'])}   (target < 1 s)")
        print(f"  kill -9 of ap3's master -> new client's flows: {stats(f['to_learned'])}   (target < 1.5 s)")
    if "hot_single" in results:
        hs, hc = results["hot_single"], results.get("hot_cluster", [])
        extra = (statistics.median(hc) - statistics.median(hs)) * 1000 if hs and hc else float("nan")
        print(f"  packet-in -> flows on the switch: single {stats(hs)}; cluster {stats(hc)}; "
              f"the cluster adds {extra:.1f} ms median   (target < 10 ms)")
    if "writes_single" in results:
        print(f"  intent writes/s: single {results['writes_single']['writes_per_s']:.0f}, "
              f"cluster {results['writes_cluster']['writes_per_s']:.0f}; all 3 instances hold a write after "
              f"{stats(results['writes_cluster']['all_instances'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
