"""Cloud router benchmarks: roam interruption, NAC failover, policy scale, throughput through the tiers.

Run: ``.venv/bin/python bench/cloud_router.py [--roams N] [--clients N] [--only roam,failover,scale,throughput]``

* Roam interruption: a client sends 1000 UDP packets/s to a service while the
  lab re-plugs its link to another access point (``Lab.move_host``), over and
  over; per roam the packets lost = ms of interruption.  Two client kinds:
  one that keeps its gateway's ARP entry (as a Wi-Fi client does when it
  roams: its interface never loses carrier) and one with default Linux ARP,
  which flushes its neighbour cache when the re-plugged veth's carrier drops
  and re-resolves the gateway (1 s retry) - that part is the host, not the network.
  Also: how long the re-plug itself took, and when the controller had the new location.
* NAC failover: the same stream while the client's NAC fails, (a) its node's
  underlay is cut (BFD on the tunnels notices, fast-failover buckets skip it,
  the controller follows) and later restored, (b) its ovs-vswitchd is killed
  (the controller sees the switch go).
* Policy scale: N clients (default 10,000) with policies (a third rate-limited)
  registered in one intent change, then located at access points with one
  association-report batch: time to program them, flows per client, and the
  time to handle a roam at that scale (a report, and a real re-plug).
* Throughput: TCP (iperf3) client -> service through AP, TD, VXLAN, forwarder,
  Geneve, NAC and the uplink, side by side with the same two hosts on one plain
  bridge under the base fabric, as a ratio.

Traffic flows only between the labs' own namespaces; the labs are torn down at the end.
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

from ovs_scripts.lab import Lab  # noqa: E402
from ovs_scripts.scenarios.cloud_router import DB, WEB, CloudLab, outage, wait_for  # noqa: E402

TOPO = ROOT / "topologies" / "cloud_router.yaml"
OF_PORT, REST_PORT = 16681, 18681
APP = "cloud_router"


def prepared(workdir: Path, name: str, prefix: str, data: dict | None = None, port_offset: int = 0) -> Path:
    data = data or yaml.safe_load(TOPO.read_text())
    data["lab"] = {**data["lab"], "name": name, "prefix": prefix}
    data["controller"] = {"of_port": OF_PORT + port_offset, "rest_port": REST_PORT + port_offset}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def up(workdir: Path, name: str, prefix: str, data: dict | None = None) -> CloudLab:
    lab = Lab.up(prepared(workdir, name, prefix, data), controller=True, timeout=120, rundir=workdir / "run")
    cl = CloudLab(lab)
    if not cl.wait_ready(30):
        raise RuntimeError(f"lab {name} not ready: {cl.rest(f'/v1/{APP}')}")
    return cl


def med(xs) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):.0f} (min {min(xs):.0f}, max {max(xs):.0f}, n={len(xs)})"


def losses_by_event(sink: dict, port: int, events_ns: list[int], window_ns: int = int(1.8e9)) -> list[int]:
    """Packets lost around each event: gaps whose last packet before the gap was sent within
    [event - 0.3 s, event + window)."""
    gaps = outage(sink, port)["gaps"]
    out = []
    for t in events_ns:
        out.append(sum(g["missing"] for g in gaps if t - 3e8 <= g["at_ns"] < t + window_ns))
    return out


def arrival_gaps_by_event(sink: dict, port: int, events_ns: list[int], window_ns: int = int(1.8e9)) -> list:
    """The longest pause in arrivals at the service around each event (ms; None if not among the top 5)."""
    gaps = outage(sink, port).get("arrival_gaps", [])
    out = []
    for t in events_ns:
        near = [g["ms"] for g in gaps if t - 3e8 <= g["at_ns"] < t + window_ns]
        out.append(max(near) if near else None)
    return out


# ---------------------------------------------------------------------------------------------


def bench_roams(cl: CloudLab, n: int) -> dict:
    cycle = [("ap2", 10), ("ap3", 10), ("ap1", 1)]
    results = {}
    gw = "10.60.255.254"
    router_mac = cl.rest("/v1/apps/fabric/intent")["router_mac"]
    for mode in ("gateway ARP kept", "default ARP"):
        if mode == "gateway ARP kept":
            cl.lab.exec("c1", ["ip", "neigh", "replace", gw, "lladdr", router_mac, "dev", "eth0", "nud", "permanent"])
        else:
            cl.lab.exec("c1", ["ip", "neigh", "del", gw, "dev", "eth0"], check=False)
        period = 2.0
        seconds = 1.5 + n * period + 1.0
        sink = cl.sink("db", [6001], seconds=seconds + 3)
        stream = cl.stream("c1", DB, 6001, seconds=seconds)
        time.sleep(1.5)
        events, replug, located = [], [], []
        for i in range(n):
            sw, port = cycle[i % 3]
            t_ns, w0 = time.monotonic_ns(), time.time()
            m = cl.move("c1", sw, port)
            events.append(t_ns)
            replug.append(m["unplugged_seconds"] * 1000)
            done = time.time()
            time.sleep(max(0.0, period - (time.monotonic_ns() - t_ns) / 1e9))
            ev = [e for e in cl.rest(f"/v1/{APP}/events") if e["event"] == "moved" and e.get("at") == f"{sw}:{port}"
                  and e["t"] >= w0]
            located.append((ev[0]["t"] - done) * 1000 if ev else None)
        cl.result(stream)
        s = cl.result(sink)
        lost = losses_by_event(s, 6001, events)
        results[mode] = {"loss_ms": lost, "replug_ms": replug, "located_after_replug_ms": located,
                         "sent": outage(s, 6001)["last_seq"]}
    return results


def bench_nac_cuts(cl: CloudLab, n: int) -> dict:
    mac = cl.mac("c1")
    nac = cl.client(mac)["nac"]
    node = cl.node_of(nac)
    period = 4.0
    seconds = 1.5 + n * period + 1.0
    sink = cl.sink("db", [6002], seconds=seconds + 3)
    stream = cl.stream("c1", DB, 6002, seconds=seconds)
    time.sleep(1.5)
    cuts, restores, detect = [], [], []
    for _ in range(n):
        t = time.monotonic_ns()
        cuts.append(t)
        cl.lab.link(node, "underlay", "down")
        ok = wait_for(lambda: cl.client(mac)["nac"] != nac, timeout=3, step=0.02)
        detect.append((time.monotonic_ns() - t) / 1e6 if ok else None)
        time.sleep(max(0.0, period / 2 - (time.monotonic_ns() - t) / 1e9))
        restores.append(time.monotonic_ns())
        cl.lab.link(node, "underlay", "up")
        wait_for(lambda: cl.client(mac)["nac"] == nac, timeout=5, step=0.05)
        time.sleep(max(0.0, period - (time.monotonic_ns() - t) / 1e9))
    cl.result(stream)
    s = cl.result(sink)
    return {"cut_loss_ms": losses_by_event(s, 6002, cuts), "restore_loss_ms": losses_by_event(s, 6002, restores),
            "rest_shows_other_nac_ms": detect, "nac": nac}


def bench_nac_kill(cl: CloudLab) -> dict:
    mac = cl.mac("c1")
    nac = cl.client(mac)["nac"]
    sink = cl.sink("db", [6002], seconds=7)
    stream = cl.stream("c1", DB, 6002, seconds=4)
    time.sleep(1.5)
    t = time.monotonic_ns()
    cl.kill_switch(nac)
    ok = wait_for(lambda: cl.client(mac)["nac"] != nac, timeout=3, step=0.02)
    detect = (time.monotonic_ns() - t) / 1e6 if ok else None
    cl.result(stream)
    s = cl.result(sink)
    return {"loss_ms": losses_by_event(s, 6002, [t])[0], "rest_shows_other_nac_ms": detect}


def bench_throughput(cl: CloudLab, workdir: Path, seconds: int = 5, runs: int = 2) -> dict:
    tiers = [cl.iperf("c1", WEB, seconds=seconds) for _ in range(runs)]
    topo = yaml.safe_load(TOPO.read_text())
    plain = {
        "lab": {"name": "bcrplain", "prefix": "bcp"},
        "switches": {"br": {"dpid": 0x6099}},
        "hosts": {h: topo["hosts"][h] for h in ("c1", "web")},
        "links": [{"a": "c1", "b": "br", "b_port": 1}, {"a": "web", "b": "br", "b_port": 2}],
        "apps": {"fabric": {}},
    }
    path = prepared(workdir, "bcrplain", "bcp", plain, port_offset=1)
    lab = Lab.up(path, controller=True, timeout=60, rundir=workdir / "run")
    try:
        pl = CloudLab(lab)
        lab.popen("web", ["iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        base = [pl.iperf("c1", WEB, seconds=seconds) for _ in range(runs)]
    finally:
        lab.down()
    return {"tiers_mbps": tiers, "plain_mbps": base}


def bench_scale(cl: CloudLab, n: int) -> dict:
    intent = cl.rest(f"/v1/apps/{APP}/intent")
    aps = intent["tiers"]["access_points"]
    before = {s["name"]: s["flows"] for s in cl.rest("/v1/switches")}
    clients = {}
    macs = []
    for i in range(n):
        mac = f"02:70:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}:01"
        ip = f"10.60.{100 + (i >> 8)}.{i & 0xff}"
        policy = ("staff", "guest", "contractor")[i % 3]
        clients[mac] = {"policy": policy, "ipv4": ip}
        macs.append(mac)
    intent["clients"] = {**intent.get("clients", {}), **clients}

    def synced_after(version: dict) -> bool:
        sws = cl.rest("/v1/switches")
        return all(s["synced"] and s["version"] >= version.get(s["name"], 0) for s in sws)

    def versions() -> dict:
        return {s["name"]: s["version"] for s in cl.rest("/v1/switches")}

    # 1. register N clients with their policies: one intent change
    t0 = time.monotonic()
    cl.rest(f"/v1/apps/{APP}/intent", "PUT", intent, timeout=600)
    t_accept = time.monotonic() - t0
    v = versions()
    wait_for(lambda: synced_after(v), timeout=600, step=0.2)
    t_policy = time.monotonic() - t0
    # 2. locate them: one batch of association reports (a few clients per radio port)
    reports = [{"client": m, "switch": aps[i % len(aps)], "port": 1000 + (i // len(aps)) % 64}
               for i, m in enumerate(macs)]
    t0 = time.monotonic()
    v = versions()
    cl.rest(f"/v1/{APP}/locations", "POST", {"reports": reports}, timeout=600)
    wait_for(lambda: synced_after({k: x + 1 for k, x in v.items() if k in aps}), timeout=600, step=0.2)
    t_locate = time.monotonic() - t0
    after = {s["name"]: s for s in cl.rest("/v1/switches")}
    flows = {k: after[k]["flows"] for k in after}
    meters = {k: after[k]["meters"] for k in after}
    # what the switches really hold
    real = {}
    for sw in ("nac1", "fc1", "ap1"):
        out = cl.lab.ofctl(sw, "dump-aggregate").stdout
        real[sw] = int(out.split("flow_count=")[1].split()[0])
    # 3. roams at scale: an association report moving one client (controller -> every switch synced)
    report_roam, breakdown = [], []
    for i in range(5):
        mac = macs[i * 7]
        new_ap = aps[(aps.index(reports[i * 7]["switch"]) + 1 + i) % len(aps)]
        v = versions()
        t0 = time.monotonic()
        cl.rest(f"/v1/{APP}/locations", "POST", {"reports": [{"client": mac, "switch": new_ap, "port": 1999}]})
        wait_for(lambda: synced_after({k: x + 1 for k, x in v.items() if k in (new_ap,)}), timeout=60, step=0.01)
        report_roam.append((time.monotonic() - t0) * 1000)
        sws = {x["name"]: x for x in cl.rest("/v1/switches")}
        mine = cl.rest(f"/v1/{APP}")["last_compute"]["seconds"]
        core = cl.rest("/v1/health")["last_compute_seconds"]
        breakdown.append({"app_compute_ms": mine * 1000, "core_compute_and_merge_ms": core * 1000,
                          "slowest_switch_sync_ms": max(sws[k]["last_sync_seconds"] for k in sws
                                                        if sws[k]["version"] > v[k]) * 1000})
        time.sleep(0.5)
    summary = cl.rest(f"/v1/{APP}")
    # 4. a real re-plug at scale, with the 1000 pps stream
    gw = "10.60.255.254"
    cl.lab.exec("c1", ["ip", "neigh", "replace", gw, "lladdr", cl.rest("/v1/apps/fabric/intent")["router_mac"],
                       "dev", "eth0", "nud", "permanent"])
    replug_loss, replug_gap = [], []
    here = cl.lab.host_location("c1")
    for sw, port in [x for x in (("ap2", 10), ("ap3", 10), ("ap1", 1)) if x != here][:2] + [here]:
        sink = cl.sink("db", [6003], seconds=12)  # one stream per roam: a slow roam cannot hide the next
        stream = cl.stream("c1", DB, 6003, seconds=8)
        time.sleep(1.5)
        t = time.monotonic_ns()
        cl.move("c1", sw, port)
        cl.result(stream)
        s = cl.result(sink)
        replug_loss += losses_by_event(s, 6003, [t], window_ns=int(6e9))
        replug_gap += arrival_gaps_by_event(s, 6003, [t], window_ns=int(6e9))
    health = cl.rest("/v1/health")
    return {"clients": n, "accept_s": t_accept, "policy_program_s": t_policy, "locate_program_s": t_locate,
            "flows": flows, "meters": meters, "flows_before": before, "real_flow_counts": real,
            "report_roam_ms": report_roam, "report_roam_breakdown": breakdown,
            "replug_roam_loss_ms": replug_loss, "replug_roam_arrival_gap_ms": replug_gap,
            "compute_s": summary["last_compute"], "core_compute_s": health["last_compute_seconds"]}


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roams", type=int, default=9, help="roams per client kind (default 9)")
    ap.add_argument("--cuts", type=int, default=3, help="underlay cuts of a NAC (default 3)")
    ap.add_argument("--kills", type=int, default=2, help="NAC kills, one fresh lab each (default 2)")
    ap.add_argument("--clients", type=int, default=10000, help="clients for the scale run (default 10000)")
    ap.add_argument("--only", default="roam,failover,throughput,scale")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-cr-") as tmp:
        workdir = Path(tmp)
        if only & {"roam", "failover", "throughput"}:
            cl = up(workdir, "bcr1", "bcr")
            try:
                cl.start_services()
                if "throughput" in only:
                    out["throughput"] = bench_throughput(cl, workdir)
                if "roam" in only:
                    out["roam"] = bench_roams(cl, args.roams)
                if "failover" in only:
                    out["cuts"] = bench_nac_cuts(cl, args.cuts)
                    out["kills"] = [bench_nac_kill(cl)]
            finally:
                cl.lab.down()
            if "failover" in only:
                for _ in range(max(0, args.kills - 1)):
                    cl = up(workdir, "bcr1", "bcr")
                    try:
                        out["kills"].append(bench_nac_kill(cl))
                    finally:
                        cl.lab.down()
        if "scale" in only:
            cl = up(workdir, "bcr2", "bcs")
            try:
                cl.start_services(iperf=False)
                out["scale"] = bench_scale(cl, args.clients)
            finally:
                cl.lab.down()
    report(out)
    print("\nraw: " + json.dumps(out, default=str))
    return 0


def report(out: dict) -> None:
    print("\n== cloud router benchmarks (2-core box, other labs running) ==")
    if "throughput" in out:
        t = out["throughput"]
        a, b = statistics.mean(t["tiers_mbps"]), statistics.mean(t["plain_mbps"])
        print(f"\nTCP throughput c1 -> web (iperf3, {len(t['tiers_mbps'])} x 5 s)")
        print(f"  through AP, TD, VXLAN, FC, Geneve, NAC, uplink: {a:8.1f} Mbit/s")
        print(f"  same hosts on one plain bridge (fabric):       {b:8.1f} Mbit/s")
        print(f"  ratio tiers / plain: {a / b:.2f}")
    if "roam" in out:
        print("\nRoam interruption, 1000 packets/s client -> service (ms of loss = packets lost), median:")
        for mode, r in out["roam"].items():
            print(f"  client with {mode:17s}: loss {med(r['loss_ms'])} ms")
            print(f"      re-plug by the lab {med(r['replug_ms'])} ms; controller had the new location "
                  f"{med(r['located_after_replug_ms'])} ms after the re-plug returned")
    if "cuts" in out:
        c = out["cuts"]
        print(f"\nNAC failover, 1000 packets/s (client's NAC {c['nac']}):")
        print(f"  underlay cut (BFD 100 ms x 3):  loss {med(c['cut_loss_ms'])} ms; REST shows the other NAC after "
              f"{med(c['rest_shows_other_nac_ms'])} ms")
        print(f"  underlay restored (clients return to their NAC): loss {med(c['restore_loss_ms'])} ms")
    if "kills" in out:
        k = out["kills"]
        print(f"  ovs-vswitchd killed:            loss {med([x['loss_ms'] for x in k])} ms; REST shows the other NAC "
              f"after {med([x['rest_shows_other_nac_ms'] for x in k])} ms")
    if "scale" in out:
        s = out["scale"]
        n = s["clients"]
        added = sum(s["flows"].values()) - sum(s["flows_before"].values())
        print(f"\nPolicy scale: {n} clients (3 policies, a third rate-limited), 10 switches")
        print(f"  register (one intent PUT, accepted in {s['accept_s']:.1f} s): every switch programmed after "
              f"{s['policy_program_s']:.1f} s")
        print(f"  locate (one batch of {n} association reports): programmed after {s['locate_program_s']:.1f} s")
        print(f"  flows: {added} added = {added / n:.1f} per client; per switch " +
              ", ".join(f"{k} {v}" for k, v in sorted(s["flows"].items())))
        print(f"  meters: " + ", ".join(f"{k} {v}" for k, v in sorted(s["meters"].items()) if v > 1))
        print(f"  switches really hold (dump-aggregate): {s['real_flow_counts']}")
        print(f"  roam at scale, association report -> new AP synced: {med(s['report_roam_ms'])} ms "
              f"(controller compute {s['compute_s'].get('seconds')} s for {s['compute_s'].get('clients')} clients, "
              f"core merge+compute {s['core_compute_s']} s)")
        b = s["report_roam_breakdown"]
        print(f"      of which: cloud router compute {med([x['app_compute_ms'] for x in b])} ms, core compute+merge "
              f"(all apps, every switch) {med([x['core_compute_and_merge_ms'] for x in b])} ms, slowest switch sync "
              f"{med([x['slowest_switch_sync_ms'] for x in b])} ms")
        print(f"  roam at scale, real re-plug, 1000 pps, gateway ARP kept: loss {med(s['replug_roam_loss_ms'])} ms, "
              f"longest pause at the service {med(s['replug_roam_arrival_gap_ms'])} ms")


if __name__ == "__main__":
    sys.exit(main())
