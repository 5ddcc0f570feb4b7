"""Cloud router: the demo scenario, and the lab helpers its tests and benchmark share.

``python -m ovs_scripts.demo cloud_router`` brings up ``topologies/cloud_router.yaml``
(3 access points, 2 tunnel devices, 2 forwarders, 2 NACs, a service network),
and shows with real traffic: per-client policy at the NACs, quarantine and
registration, a TCP stream surviving three roams, a late frame from an old
access point refused, and a NAC failure during which nothing passes unpoliced.

:class:`CloudLab` wraps a lab that is up: service processes, probes, sequenced
streams, roaming (``Lab.move_host``), NAC failures, REST.  Every bit of
traffic runs between the lab's own host namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ovs_scripts import flowdump, kit
from ovs_scripts.demo import Check, scenario
from ovs_scripts.lab import Lab
from ovs_scripts.sandbox import kill_pid
from ryu_apps.framework import cookies

PY = sys.executable
APP = "cloud_router"
K_LOC, K_POLICY = 2, 4  # cookie kinds (ryu_apps.functions.cloud_router.flows)
P_RULE_DENY = 4000

# what each service host runs: TCP+UDP echo ports (iperf3 on web:5201)
SERVICES = {"web": [5001, 5002, 6000], "db": [5001, 5002, 6000], "reg": [8080, 5001]}
WEB, DB, REG = "10.61.0.1", "10.61.0.2", "10.61.0.10"
# the probe matrix and what each topology client's policy allows (topologies/cloud_router.yaml)
TARGETS = [f"tcp:{WEB}:5001", f"tcp:{WEB}:5002", f"tcp:{DB}:5001", f"tcp:{DB}:5002", f"tcp:{REG}:8080",
           f"icmp:{WEB}", f"icmp:{DB}", f"udp:{WEB}:6000"]
EXPECTED = {
    "staff": {f"tcp:{WEB}:5001", f"tcp:{DB}:5001", f"icmp:{WEB}", f"udp:{WEB}:6000"},
    "guest": {f"tcp:{WEB}:5001", f"udp:{WEB}:6000"},
    "contractor": {f"tcp:{DB}:5002", f"icmp:{DB}"},
    "quarantine": {f"tcp:{REG}:8080"},
}


RestError = kit.RestError  # what CloudLab.rest raises for an answer other than 2xx


class CloudLab:
    """Drive a cloud router lab that is up."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.topo = lab.topology
        self.services: list[subprocess.Popen] = []

    # -- REST -------------------------------------------------------------------------
    def rest(self, path: str, method: str = "GET", body=None, timeout: float = 30):
        """The JSON body of a 2xx answer; :class:`RestError` (``.status``, ``.body``) otherwise."""
        return kit.rest(self.lab, method, path, body, timeout=timeout).expect(200, 201, 202, 204)

    def client(self, ident: str) -> dict:
        return self.rest(f"/v1/{APP}/clients/{ident}")

    def mac(self, host: str) -> str:
        return self.topo.hosts[host].mac

    def wait_synced(self, timeout: float = 15) -> bool:
        return wait_for(lambda: all(s["synced"] for s in self.rest("/v1/switches")), timeout)

    def wait_ready(self, timeout: float = 20) -> bool:
        """Every tunnel reported LIVE (BFD needs a moment after the lab is up), no NAC failed, all synced."""
        def tunnels_live() -> bool:
            t = self.rest(f"/v1/{APP}/tunnels")
            return all(x["live"] for x in t["set1"]["tunnels"] + t["set2"]["tunnels"])
        return (wait_for(tunnels_live, timeout) and wait_for(lambda: not self.rest(f"/v1/{APP}")["failed_nacs"],
                                                             timeout) and self.wait_synced(timeout))

    def wait_location(self, host: str, switch: str, port: int, timeout: float = 10) -> float | None:
        """Seconds until the controller places ``host`` at switch:port (None: it did not)."""
        t0 = time.monotonic()
        ok = wait_for(lambda: (self.client(self.mac(host))["location"] or {}).get("switch") == switch
                      and self.client(self.mac(host))["location"]["port"] == port, timeout, step=0.02)
        return time.monotonic() - t0 if ok else None

    # -- services and traffic -----------------------------------------------------------
    def start_services(self, iperf: bool = True) -> None:
        for host, ports in SERVICES.items():
            p = self.lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "serve-ports", *map(str, ports)])
            line = p.stdout.readline()
            if "listening" not in line:
                raise RuntimeError(f"services on {host} did not start: {line!r}")
            self.services.append(p)
        if iperf:
            self.services.append(self.lab.popen("web", ["iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL))
            time.sleep(0.3)

    def probe(self, host: str, targets=TARGETS, timeout: float = 1.0) -> dict[str, str]:
        r = self.lab.exec(host, [PY, "-m", "ovs_scripts.traffic", "probe", *targets, "--timeout", str(timeout)],
                          check=False, timeout=60)
        try:
            return json.loads(r.stdout)
        except ValueError:
            raise RuntimeError(f"probe from {host} failed: {r.stderr[-300:]}") from None

    def probe_many(self, hosts: list[str], targets=TARGETS, timeout: float = 1.0) -> dict[str, dict[str, str]]:
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            return dict(zip(hosts, pool.map(lambda h: self.probe(h, targets, timeout), hosts)))

    def reachable(self, results: dict[str, str]) -> set[str]:
        return {t for t, v in results.items() if v == "open"}

    def sink(self, host: str, ports: list[int], seconds: float, pps: float = 1000) -> subprocess.Popen:
        p = self.lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "udp-sink", *map(str, ports),
                                  "--seconds", str(seconds), "--pps", str(pps)])
        line = p.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"udp sink on {host} did not start: {line!r}")
        return p

    def stream(self, host: str, dst: str, port: int, seconds: float, pps: float = 1000,
               size: int = 64) -> subprocess.Popen:
        return self.lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "udp-stream", dst, str(port),
                                     "--pps", str(pps), "--seconds", str(seconds), "--size", str(size)])

    def tcp_stream(self, host: str, dst: str, port: int, seconds: float) -> subprocess.Popen:
        return self.lab.popen(host, [PY, "-u", "-m", "ovs_scripts.traffic", "tcp-stream", dst, str(port),
                                     "--seconds", str(seconds), "--interval-ms", "10"])

    @staticmethod
    def result(proc: subprocess.Popen, timeout: float = 60) -> dict:
        out, _ = proc.communicate(timeout=timeout)
        lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"no JSON result (exit {proc.returncode}): {out[-300:]!r}")
        return json.loads(lines[-1])

    def iperf(self, host: str, dst: str = WEB, seconds: float = 3, port: int = 5201) -> float:
        """TCP goodput (Mbit/s at the receiver) of ``iperf3 -c`` from ``host``."""
        r = self.lab.exec(host, ["iperf3", "-c", dst, "-p", str(port), "-t", str(seconds), "-J"], check=False,
                          timeout=seconds + 30)
        data = json.loads(r.stdout)
        if "error" in data:
            raise RuntimeError(f"iperf3 from {host}: {data['error']}")
        return data["end"]["sum_received"]["bits_per_second"] / 1e6

    # -- roaming, failures ------------------------------------------------------------------
    def move(self, host: str, switch: str, port: int) -> dict:
        return self.lab.move_host(host, switch, port)

    def node_of(self, switch: str) -> str:
        return self.topo.switches[switch].node

    def kill_switch(self, switch: str) -> int:
        """Kill the ovs-vswitchd of ``switch``'s node (a pid the lab started)."""
        sb = self.lab.sandbox(self.node_of(switch))
        pid = sb.pid("ovs-vswitchd")
        kill_pid(pid, sb.marker, "ovs-vswitchd")
        return pid

    # -- flows ----------------------------------------------------------------------------------
    def flows(self, switch: str) -> list[flowdump.FlowEntry]:
        bridge, rundir = self.lab.switch_target(switch)
        return flowdump.dump(bridge, rundir, switch=switch).flows

    def client_location_flows(self, switch: str, mac: str) -> list[flowdump.FlowEntry]:
        c = cookies.make(APP, K_LOC, mac)
        return [f for f in self.flows(switch) if f.cookie == c]

    def policy_drops(self, nac: str, policy: str) -> int:
        """Packets the NAC dropped by ``policy``'s default-deny flow."""
        c = cookies.make(APP, K_POLICY, policy)
        return sum(f.n_packets or 0 for f in self.flows(nac) if f.cookie == c and f.priority == P_RULE_DENY)

    def inject_from(self, switch: str, in_port: int, src_mac: str, src_ip: str, dst_ip: str = WEB) -> None:
        """A frame from ``src_mac`` entering ``switch``'s pipeline as if on ``in_port`` (ovs-ofctl packet-out).

        The port need not exist any more: this is how a frame queued at an access point before a
        client left it would reach the controller after the move.
        """
        eth = bytes.fromhex("0efab0000001") + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
        src = bytes(int(x) for x in src_ip.split("."))
        dst = bytes(int(x) for x in dst_ip.split("."))
        ip = bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0]) + src + dst
        udp = bytes([0x17, 0x70, 0x17, 0x71, 0, 8, 0, 0])
        frame = (eth + ip + udp).hex()
        bridge, rundir = self.lab.switch_target(switch)
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "packet-out", flowdump.mgmt_target(bridge, rundir),
                        str(in_port), "resubmit(,0)", frame], check=True, capture_output=True, timeout=15)


def wait_for(pred, timeout: float, step: float = 0.1):
    """:func:`ovs_scripts.kit.wait_for`, a REST error or a client not there yet counting as not yet."""
    return kit.wait_for(pred, timeout, step, ignore=(RestError, OSError, KeyError, TypeError))


def outage(sink_result: dict, port: int) -> dict:
    return sink_result["ports"][str(port)]


# ---------------------------------------------------------------------------------------------


@scenario("cloud_router", "cloud_router.yaml")
def cloud_router(lab: Lab, check: Check) -> None:
    """per-client policy at NACs over VXLAN+Geneve tiers: allow/deny, quarantine, roaming, NAC failover"""
    cl = CloudLab(lab)
    cl.start_services(iperf=False)
    check("tunnels up (BFD), every switch synced", cl.wait_ready(), "GET /v1/cloud_router: no failed NAC")
    policies = {h: cl.client(cl.mac(h))["policy"] for h in ("c1", "c2", "c3", "c4")}
    res = cl.probe_many(list(policies))
    for h, pol in policies.items():
        got = cl.reachable(res[h])
        check(f"{h} ({pol}) reaches exactly what {pol} allows", got == EXPECTED[pol],
              f"reached {sorted(t.split(':', 1)[1] for t in got)}")
    nac = cl.client(cl.mac("c3"))["nac"]
    check(f"c3's denied probes were dropped at its NAC {nac}", cl.policy_drops(nac, "contractor") > 0,
          f"{cl.policy_drops(nac, 'contractor')} packets on the contractor policy's drop flow")

    # roaming: a TCP stream survives three moves, policy identical after each
    c1 = cl.mac("c1")
    before = cl.client(c1)
    ts = cl.tcp_stream("c1", WEB, 5001, seconds=9)
    time.sleep(1.0)
    moves = [("ap2", 10), ("ap3", 10), ("ap1", 1)]
    for sw, port in moves:
        m = cl.move("c1", sw, port)
        t = cl.wait_location("c1", sw, port)
        cl.wait_synced()
        wait_for(lambda: cl.probe("c1", [f"tcp:{WEB}:5001"])[f"tcp:{WEB}:5001"] == "open", timeout=5)
        same = cl.reachable(cl.probe("c1")) == EXPECTED["staff"]
        check(f"c1 roams to {sw}:{port}: controller follows, policy unchanged",
              t is not None and same, f"re-plug {m['unplugged_seconds'] * 1000:.0f} ms, "
              f"located {t * 1000 if t else -1:.0f} ms after the move")
    r = cl.result(ts)
    after = cl.client(c1)
    check("c1's TCP stream survived the three roams", r["intact"],
          f"{r['echoed']}/{r['sent']} messages echoed in order; longest pause {r['max_gap_ms']} ms")
    check("c1 keeps its key and NAC across roams", (before["key"], before["nac"]) == (after["key"], after["nac"]),
          f"key {after['key']}, NAC {after['nac']}")
    cl.inject_from("ap2", 10, c1, "10.60.0.1")
    time.sleep(0.5)
    loc = cl.client(c1)["location"]
    stale = [e for e in cl.rest(f"/v1/{APP}/events") if e.get("event") == "stale" and e.get("at") == "ap2:10"]
    check("a late frame from the old access point does not undo the move",
          loc["switch"] == "ap1" and bool(stale),
          f"refused: {stale[-1]['reason']}; c1 stays at {loc['switch']}:{loc['port']}" if stale else f"location {loc}")

    # NAC failure: its clients go to the other NAC, denied traffic never reaches a service
    nac = cl.client(c1)["nac"]
    sink = cl.sink("db", [6002, 6005], seconds=6)
    ok = cl.stream("c1", DB, 6002, seconds=4)
    bad = cl.stream("c1", DB, 6005, seconds=4)
    time.sleep(1.5)
    cl.kill_switch(nac)
    for p in (ok, bad):
        cl.result(p)
    s = cl.result(sink)
    allowed, denied = outage(s, 6002), outage(s, 6005)
    check(f"NAC {nac} killed: c1 now policed by {cl.client(c1)['nac']}",
          cl.client(c1)["nac"] not in (None, nac), f"allowed stream lost {allowed['lost']} packets "
          f"(longest outage {allowed['longest_outage_ms']} ms at 1000 pps)")
    check("nothing unpoliced during the NAC failover", denied["received"] == 0,
          f"{denied['received']} packets of the denied stream reached db")
