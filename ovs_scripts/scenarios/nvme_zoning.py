"""Demo of NVMe-oF zoning (``topologies/nvme_zoning.yaml``): the fabric reads every NVMe/TCP Connect
and admits only the pairs the name server zoned; revoking a host resets its live connections.

The capture on the target's port is kept as ``demo-artifacts/nvme_zoning-target.pcap``: read it
with ``tshark -r demo-artifacts/nvme_zoning-target.pcap -Y nvme-tcp``; only zoned Connects are in it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

from ovs_scripts import kit
from ovs_scripts.demo.registry import REPO, Check, scenario
from ovs_scripts.lab import Lab
from ovs_scripts.nvme_lab import IoLoop, host_tool, target_connects

T4, T6, D4 = "10.63.0.1", "fd00:63::1", "10.63.0.9"
NQN = "nqn.2026-12.io.lab:"
VOL1, VOL2 = NQN + "vol1", NQN + "vol2"
ARTIFACTS = REPO / "demo-artifacts"


def nqn(host: str) -> str:
    return f"{NQN}host-{host}"


@scenario("nvme_zoning", "nvme_zoning.yaml")
def nvme_zoning(lab: Lab, check: Check) -> None:
    """NVMe/TCP admitted only after the fabric read a zoned Connect; stolen NQNs and revoked hosts reset"""
    ARTIFACTS.mkdir(exist_ok=True)
    pcap = ARTIFACTS / "nvme_zoning-target.pcap"
    cap = lab.popen("t1", ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(pcap), "tcp port 4420"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()
    try:
        seen = {h: {e["subnqn"] for e in host_tool(lab, h, "discover", "--addr", D4, "--port", "8009",
                                                   "--hostnqn", nqn(h))} for h in ("h1", "h2", "h3")}
        check("discovery lists exactly each host's zoned subsystems",
              seen == {"h1": {VOL1}, "h2": set(), "h3": {VOL1, VOL2}}, f"{ {h: sorted(s) for h, s in seen.items()} }")

        r = host_tool(lab, "h1", "write-read", "--addr", T4, "--port", "4420", "--hostnqn", nqn("h1"),
                      "--subnqn", VOL1, "--queues", "4", "--mib", "16")
        check("h1 (zoned to vol1) connects an admin and 4 I/O queues, writes and reads back 16 MiB",
              r.get("sha256_written") == r.get("sha256_read") is not None,
              f"{r.get('mib_per_s')} MiB/s; the target saw qids {sorted(c['qid'] for c in target_connects(lab))}")

        before = len(target_connects(lab))
        r = host_tool(lab, "h2", "connect", "--addr", T4, "--port", "4420", "--hostnqn", nqn("h2"), "--subnqn", VOL1)
        last = kit.rest(lab, "GET", "/v1/nvme/attempts").expect(200)[-1]
        check("h2 (zoned to nothing): reset; its Connect never reached the target",
              r.get("kind") == "ConnectionResetError" and len(target_connects(lab)) == before,
              f"logged: {last['why']}")

        r = host_tool(lab, "h2", "connect", "--addr", T4, "--port", "4420", "--hostnqn", nqn("h1"), "--subnqn", VOL1)
        last = kit.rest(lab, "GET", "/v1/nvme/attempts").expect(200)[-1]
        check("h2 claiming h1's NQN (bound to h1's port): refused", r.get("kind") == "ConnectionResetError",
              f"logged: {last['why']}")

        io = IoLoop(lab, "h3", nqn("h3"), VOL1, T6, queues=4, base_lba=32768)
        time.sleep(1.0)
        t0 = time.time()
        body = kit.rest(lab, "DELETE", f"/v1/nvme/zone-groups/prod/zones/web/hosts/{nqn('h3')}").expect(200)
        kit.wait_for(lambda: not io.running(), 5)
        res = io.result()
        took = (res["t_error"] - t0) * 1000 if res["t_error"] else None
        check("h3 taken out of its zone during I/O (IPv6): its 5 connections reset, its I/O stops",
              len(body["revoked"]) == 5 and took is not None, f"I/O stopped {took:.0f} ms after the REST call"
              if took is not None else f"{res}")
        zone = {"name": "web", "hosts": [nqn("h3")], "subsystems": [VOL1, VOL2]}
        kit.rest(lab, "PUT", "/v1/nvme/zone-groups/prod/zones/web", zone).expect(200)
        r = host_tool(lab, "h3", "write-read", "--addr", T6, "--port", "4420", "--hostnqn", nqn("h3"),
                      "--subnqn", VOL2, "--queues", "2", "--mib", "4")
        check("h3 back in its zone connects again, no controller restart",
              r.get("sha256_written") == r.get("sha256_read") is not None, f"{r.get('mib_per_s')} MiB/s")
    finally:
        time.sleep(1.2)
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=10)
    if shutil.which("tshark"):
        cp = subprocess.run(["tshark", "-r", str(pcap), "-Y", "nvme.fabrics.cmd.connect.data.hostnqn", "-T",
                             "fields", "-e", "nvme.fabrics.cmd.connect.data.hostnqn"], capture_output=True, text=True)
        hosts = sorted(set(cp.stdout.split()))
        check("tshark on the target's wire: Connects only from zoned host NQNs",
              hosts == [nqn("h1"), nqn("h3")], f"{hosts}; capture kept as {pcap.relative_to(REPO)}")
