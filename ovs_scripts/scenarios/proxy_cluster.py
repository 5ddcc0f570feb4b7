"""Demo of the proxy cluster (``topologies/proxy_cluster.yaml``): one VIP, HAProxy nodes that
configure themselves, spread and pinned in OVS, and what happens under load when proxies are
added, killed and drained.

The capture of the VIP's traffic that the collector k1 received is kept as
``demo-artifacts/proxy_cluster-vip.pcap`` (read it with ``tshark -r``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from ovs_scripts import kit
from ovs_scripts.demo.registry import REPO, Check, scenario
from ovs_scripts.http_load import LabLoad, start_servers
from ovs_scripts.lab import Lab

VIP4, VIP6 = "10.59.0.100", "fd00:59::100"
ARTIFACTS = REPO / "demo-artifacts"


def proxies(lab: Lab) -> dict[str, dict]:
    return {p["host"]: p for p in kit.rest(lab, "GET", "/v1/proxy-clusters/api").expect(200)["proxies"]}


def in_hash(lab: Lab) -> set[str]:
    return {h for h, p in proxies(lab).items() if p["in_hash"]}


def wait_hash(lab: Lab, want: set[str], timeout: float = 20) -> bool:
    return bool(kit.wait_for(lambda: in_hash(lab) == want, timeout, ignore=(OSError, kit.RestError)))


def put_proxy(lab: Lab, host: str, state: str | None) -> None:
    if state is None:
        kit.rest(lab, "DELETE", f"/v1/proxy-clusters/api/proxies/{host}").expect(200)
    else:
        kit.rest(lab, "PUT", f"/v1/proxy-clusters/api/proxies/{host}", {"host": host, "state": state}).expect(200)


def summary(r: dict) -> str:
    return (f"{r['requests']} requests, {r['failed']} failed, {len(r['moved_conns'])} connections moved, "
            f"{len(r['session_server_changes'])} sessions changed server; by proxy {dict(sorted(r['by_proxy'].items()))}")


@scenario("proxy_cluster", "proxy_cluster.yaml")
def proxy_cluster(lab: Lab, check: Check) -> None:
    """an API VIP over self-configuring HAProxy nodes: spread and pinned in OVS, scale-out, proxy death, drain"""
    start_servers(lab, ("a1", "a2"))
    check("agents configured p1 and p2; both heard and in the hash", wait_hash(lab, {"p1", "p2"}),
          f"config versions {[p['health']['config_version'] for p in proxies(lab).values()]}")
    both = LabLoad(lab, "c1", VIP4, 2, conns=4, new_rate=40, sessions=20).result()
    six = LabLoad(lab, "c2", VIP6, 2, conns=2, new_rate=20, sessions=20).result()
    check("the VIP answers over both proxies, IPv4 and IPv6",
          both["failed"] == six["failed"] == 0 and set(both["by_proxy"]) == {"p1", "p2"},
          f"v4: {summary(both)}; v6: {six['requests']} requests, {six['failed']} failed")

    # scale out under load: p3 is a spare node whose agent waits; declaring it is all it takes
    ld = LabLoad(lab, "c1", VIP4, 6, conns=10, new_rate=40, sessions=40)
    time.sleep(1.5)
    t0 = time.monotonic()
    put_proxy(lab, "p3", "active")
    joined = wait_hash(lab, {"p1", "p2", "p3"}, 10)
    took = time.monotonic() - t0
    r = ld.result()
    check("p3 declared under load: serving, nothing failed, no connection moved",
          joined and r["failed"] == 0 and not r["moved_conns"] and r["by_proxy"].get("p3", 0) > 0,
          f"in the hash {took:.1f} s after the PUT; {summary(r)}")

    # kill -9 a proxy's HAProxy under load
    ld = LabLoad(lab, "c1", VIP4, 6, conns=10, new_rate=40, sessions=40)
    time.sleep(1.5)
    pid = int((lab.dir / "agent-p2" / "haproxy.pid").read_text().split()[0])
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    out = kit.wait_for(lambda: "p2" not in in_hash(lab), 5, step=0.02)
    took = time.monotonic() - t0
    r = ld.result()
    others = [f for f in r["failures"] if f["proxy"] not in ("p2", None)]
    check("kill -9 p2's HAProxy: out of the hash within 1 s, only its requests in flight fail",
          bool(out) and took <= 1.0 and not others and not r["session_server_changes"],
          f"out after {took * 1000:.0f} ms; {summary(r)}")
    back = wait_hash(lab, {"p1", "p2", "p3"}, 15)
    check("p2's agent restarted HAProxy; p2 is back after the hold-down", back,
          f"back {time.monotonic() - t0:.1f} s after the kill (hold-down 2 s), load included")

    # drain p3 and remove it, under load
    ld = LabLoad(lab, "c1", VIP4, 7, conns=10, new_rate=40, sessions=40)
    time.sleep(1.0)
    put_proxy(lab, "p3", "drain")
    drained = kit.wait_for(lambda: proxies(lab)["p3"]["drain_complete"], 8, ignore=(OSError, kit.RestError))
    put_proxy(lab, "p3", None)
    r = ld.result()
    check("p3 drained (its keep-alive clients moved between requests) and removed: nothing failed",
          bool(drained) and r["failed"] == 0 and not r["moved_conns"], summary(r))

    # isolation: a client cannot reach a server or a proxy's own address
    probes = lab.exec("c1", [sys.executable, "-m", "ovs_scripts.traffic", "probe", "tcp:10.53.0.1:8000",
                             "tcp:10.52.0.1:10000", "--timeout", "1"]).stdout
    check("c1 reaches neither a server nor a proxy's own address (only the VIP)",
          "open" not in probes and "refused" not in probes, probes.strip())

    # capture: every VIP packet, both directions, copied to k1; kept as a pcap
    ARTIFACTS.mkdir(exist_ok=True)
    pcap = ARTIFACTS / "proxy_cluster-vip.pcap"
    cap = lab.popen("k1", ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(pcap), "tcp port 80"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()
    time.sleep(1.0)  # ("listening" comes a moment before the first packet is written)
    r = LabLoad(lab, "c2", VIP4, 1.5, conns=2, new_rate=10, sessions=5).result()
    time.sleep(0.3)
    cap.send_signal(signal.SIGINT)
    cap.wait(timeout=10)
    detail = f"{pcap.relative_to(REPO)}"
    ok = pcap.exists() and pcap.stat().st_size > 0
    if shutil.which("tshark") and ok:
        tsh = subprocess.run(["tshark", "-r", str(pcap), "-Y", "http", "-T", "fields", "-e", "http.request.method",
                              "-e", "http.response.code"], capture_output=True, text=True)
        rows = [ln.split("\t") for ln in tsh.stdout.splitlines() if ln.strip()]
        gets = sum(1 for x in rows if x[0] == "GET")
        oks = sum(1 for x in rows if len(x) > 1 and x[1] == "200")
        ok = gets == oks == r["requests"]
        detail += f": tshark reads {gets} requests and {oks} answers for the {r['requests']} made"
    check("the collector got a copy of every VIP packet, both directions (pcap)", ok, detail)
