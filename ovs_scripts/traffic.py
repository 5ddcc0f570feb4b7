"""Small traffic tools run inside lab host namespaces (``ovslab exec h1 -- python -m ovs_scripts.traffic ...``).

* ``serve PORT``: a TCP echo server (IPv4 and IPv6), prints one line when ready.
* ``tcp HOST PORT [--flows N] [--bytes B]``: open N connections (distinct
  source ports, so ECMP hashing spreads them), send B bytes on each, check the
  echo; prints JSON ``{"ok": n, "failed": m, "errors": [...]}``.
* ``ping HOST [--count N]``: wraps ping(8) and prints JSON with loss.
* ``flood-ns TARGET [--seconds S]``: a neighbour-solicitation storm from this
  host's eth0 (raw frames, at most 60 s), to show packet-in protection.

Every loop is bounded in count and time; these only ever target lab hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time


def serve(port: int, once: bool = False) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(256)
    print(f"listening {port}", flush=True)

    def handle(conn):
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
        if once:
            break


def tcp(host: str, port: int, flows: int, nbytes: int, timeout: float) -> dict:
    ok, errors = 0, []
    payload = os.urandom(nbytes)
    for _ in range(flows):
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.sendall(payload)
                got = b""
                deadline = time.monotonic() + timeout
                while len(got) < nbytes and time.monotonic() < deadline:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                if got == payload:
                    ok += 1
                else:
                    errors.append(f"echo mismatch: {len(got)}/{nbytes} bytes")
        except OSError as exc:
            errors.append(str(exc))
    return {"ok": ok, "failed": flows - ok, "errors": errors[:5]}


def ping(host: str, count: int, interval: float, deadline: float) -> dict:
    cmd = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-w", str(int(deadline)), host]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    sent, recv = (int(m.group(1)), int(m.group(2))) if m else (count, 0)
    return {"sent": sent, "received": recv, "loss": 1 - recv / sent if sent else 1.0}


def flood_ns(target: str, seconds: float, iface: str = "eth0") -> dict:
    """Send neighbour solicitations for ``target`` as fast as possible for ``seconds`` (a packet-in storm)."""
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils6 import in6_getnsma, in6_getnsmac
    from socket import inet_pton

    mac = open(f"/sys/class/net/{iface}/address").read().strip()
    src = next((line.split()[0] for line in open("/proc/net/if_inet6") if line.split()[-1] == iface
                and not line.startswith("fe80")), None)
    src = ":".join(src[i:i + 4] for i in range(0, 32, 4)) if src else "::1"
    mcast = in6_getnsma(inet_pton(socket.AF_INET6, target))
    frame = bytes(Ether(src=mac, dst=in6_getnsmac(mcast)) /
                  IPv6(src=src, dst=socket.inet_ntop(socket.AF_INET6, mcast), hlim=255) /
                  ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=mac))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100):
            sock.send(frame)
        sent += 100
    return {"sent": sent, "seconds": seconds, "pps": round(sent / seconds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovs_scripts.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    t = sub.add_parser("tcp")
    t.add_argument("host")
    t.add_argument("port", type=int)
    t.add_argument("--flows", type=int, default=1)
    t.add_argument("--bytes", type=int, default=1000)
    t.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("ping")
    p.add_argument("host")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--deadline", type=float, default=10)
    f = sub.add_parser("flood-ns")
    f.add_argument("target")
    f.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.cmd == "flood-ns":
        print(json.dumps(flood_ns(args.target, min(args.seconds, 60.0))))
        return 0
    if args.cmd == "serve":
        serve(args.port)
        return 0
    if args.cmd == "tcp":
        res = tcp(args.host, args.port, args.flows, args.bytes, args.timeout)
    else:
        res = ping(args.host, args.count, args.interval, args.deadline)
    print(json.dumps(res))
    return 0 if res.get("failed", 0) == 0 and res.get("loss", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
