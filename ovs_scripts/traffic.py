"""Small traffic tools run inside lab host namespaces (``ovslab exec h1 -- python -m ovs_scripts.traffic ...``).

* ``serve PORT``: a TCP echo server (IPv4 and IPv6), prints one line when ready.
* ``tcp HOST PORT [--flows N] [--bytes B]``: open N connections (distinct
  source ports, so ECMP hashing spreads them), send B bytes on each, check the
  echo; prints JSON ``{"ok": n, "failed": m, "errors": [...]}``.
* ``ping HOST [--count N]``: wraps ping(8) and prints JSON with loss.
* ``flood-ns TARGET [--seconds S]``: a neighbour-solicitation storm from this
  host's eth0 (raw frames, at most 60 s), to show packet-in protection.
* ``mcast-send GROUP PORT [--rate R] [--seconds S] [--groups N]``: a sequenced
  UDP multicast stream (u64 sequence, u64 send time in ns, per packet) to GROUP
  (or N consecutive groups, round robin); prints JSON ``{"sent": n, ...}``.
* ``mcast-recv GROUP PORT [--seconds S] [--source S] [--igmp-version 2|3]``: join
  GROUP with a real kernel membership (IGMP from this host), print ``joined``,
  receive the sequenced stream until S seconds or SIGTERM, print JSON with
  received, lost, duplicates, reordered and the longest outage (send-time gap).
* ``mcast-join GROUP [--groups N] [--seconds S]``: hold memberships of N
  consecutive groups (no data), print ``joined N``; leave on exit.
* ``ident-serve PORT --name NAME``: TCP and UDP (v4+v6) on PORT; answers every
  connection / datagram with one JSON line ``{"server": NAME, "peer": <source
  address it saw>}`` and then echoes (the fenced clone tests: who answered, and
  which source address reached it).
* ``ident-get HOST PORT [--udp] [--bytes B] [--count N]``: ask an ident server, check
  the echo of B bytes; prints JSON ``{"ok": .., "server": .., "peer": .., "local": ..}``
  (a list of N of them with ``--count``).
* ``send-frames HEX [HEX ...] [--repeat N]``: send raw Ethernet frames (built by
  the caller, e.g. with scapy) out of eth0; prints JSON ``{"sent": n}``.
* ``serve-ports PORT [PORT ...]``: TCP and UDP echo on several ports in one
  process (the cloud router's service hosts).
* ``udp-stream HOST PORT [--pps N] [--seconds S]``: a paced, sequenced UDP
  stream (u64 sequence, u64 send time in ns); ``udp-sink PORT [PORT ...]``
  receives such streams and prints JSON per port: received, lost, outages on
  the sender's clock, and the rate it arrived at (kbit/s).
* ``tcp-stream HOST PORT [--seconds S] [--interval-ms I]``: one long echo
  connection with a sequenced message every I ms; prints whether it survived
  with every byte echoed in order, and the longest pause between echoes.
* ``probe tcp:HOST:PORT|udp:HOST:PORT|icmp:HOST ...``: reachability of
  several targets at once (open / refused / timeout) as JSON.
* ``mcast-sniff [GROUP ...] [--seconds S]``: without joining, count (promiscuous) the
  IPv4 multicast frames to GROUP (any non-link-local group when none) and the standby
  requests eth0 receives; prints ``sniffing`` when ready, then JSON counts.
* ``sniff [--seconds S] [--ipv6-prefix P]``: count the frames eth0 receives for S
  seconds (at most 60), print ``sniffing`` when ready and then JSON
  ``{"frames": n, "ipv6": n, "matched": n}``: ``matched`` are IPv6 frames to an
  address in P (e.g. the OAM SID block: a probe that leaked to a host).

Every loop is bounded in count and time; these only ever target lab hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from ovs_scripts import kit


def _dual_stack(port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket bound to ``port`` on every IPv4 and IPv6 address (listening, if TCP)."""
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(256)
    return sock


def _echo(conn: socket.socket, timeout: float, greeting: bytes = b"") -> None:
    """Echo a TCP connection until the peer closes it (after an optional greeting)."""
    with conn:
        conn.settimeout(timeout)
        try:
            if greeting:
                conn.sendall(greeting)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return


def serve(port: int, once: bool = False) -> None:
    sock = _dual_stack(port)
    print(f"listening {port}", flush=True)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_echo, args=(conn, 30), daemon=True).start()
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
    argv = kit.ping_argv(host, count, interval=interval, wait=deadline, quiet=True, deadline=deadline)
    stats = kit.parse_ping(subprocess.run(argv, capture_output=True, text=True).stdout)
    sent, recv = (stats.transmitted, stats.received) if stats else (count, 0)
    return {"sent": sent, "received": recv, "loss": 1 - recv / sent if sent else 1.0}


def flood_ns(target: str, seconds: float, iface: str = "eth0") -> dict:
    """Send neighbour solicitations for ``target`` as fast as possible for ``seconds`` (a packet-in storm)."""
    from socket import inet_pton

    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils6 import in6_getnsma, in6_getnsmac

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


# -- multicast ------------------------------------------------------------------------------

MCAST_HEADER = struct.Struct("!QQ")  # sequence number, send time (CLOCK_MONOTONIC ns, same clock in every netns)
IP_ADD_SOURCE_MEMBERSHIP = 39        # linux/in.h (Python's socket module lacks it)
IP_MULTICAST_ALL = 49


def _iface_addr(iface: str) -> tuple[str, int]:
    """The first IPv4 address and the ifindex of ``iface``."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", iface.encode()[:15])
        addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
    return addr, socket.if_nametoindex(iface)


def _groups(first: str, n: int) -> list[str]:
    import ipaddress

    base = ipaddress.IPv4Address(first)
    if not base.is_multicast:
        raise SystemExit(f"{first} is not an IPv4 multicast group")
    return [str(base + i) for i in range(n)]


def set_igmp_version(version: int | None, iface: str) -> None:
    """Force IGMPv2 or v3 on this namespace's ``iface`` (sysctl force_igmp_version; 0 = kernel default)."""
    if version is None:
        return
    with open(f"/proc/sys/net/ipv4/conf/{iface}/force_igmp_version", "w") as f:
        f.write(str(version))


def _join(sock: socket.socket, group: str, iface: str, source: str | None = None) -> None:
    addr, index = _iface_addr(iface)
    if source:  # SSM: an IGMPv3 INCLUDE {source} record
        mreq = socket.inet_aton(group) + socket.inet_aton(addr) + socket.inet_aton(source)
        sock.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, mreq)
    else:  # ip_mreqn: group, local address, ifindex
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(group) + socket.inet_aton(addr) + struct.pack("@i", index))


def mcast_send(group: str, port: int, rate: float, seconds: float, ngroups: int = 1, ttl: int = 8,
               iface: str = "eth0", size: int = 64) -> dict:
    """A paced, sequenced multicast stream; at most 10 minutes and 100 kpps."""
    rate = max(1.0, min(rate, 100_000.0))
    seconds = max(0.0, min(seconds, 600.0))
    groups = _groups(group, ngroups)
    addr, _ = _iface_addr(iface)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(addr))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    pad = b"\0" * max(0, size - MCAST_HEADER.size)
    stop = threading.Event()
    try:
        import signal
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
    except ValueError:
        pass
    interval = 1.0 / rate
    start = time.monotonic()
    end = start + seconds
    seq = errors = 0
    next_at = start
    while not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        if now < next_at:
            time.sleep(min(next_at - now, 0.01))
            continue
        dst = groups[seq % len(groups)]
        try:
            sock.sendto(MCAST_HEADER.pack(seq, time.monotonic_ns()) + pad, (dst, port))
        except OSError:
            errors += 1
        seq += 1
        next_at += interval
        if now - next_at > 0.1:  # fell far behind (CPU starved): do not burst to catch up
            next_at = now
    took = time.monotonic() - start
    return {"sent": seq, "errors": errors, "seconds": round(took, 3), "pps": round(seq / took) if took else 0,
            "groups": len(groups)}


def mcast_analyse(arrivals: list[tuple[int, int, int]], rate: float) -> dict:
    """Loss, duplicates and outage from ``(seq, send_ns, recv_ns)`` in arrival order (pure)."""
    if not arrivals:
        return {"received": 0, "unique": 0, "duplicates": 0, "lost": None, "reordered": 0,
                "outage_ms": None, "gaps": []}
    seen: set[int] = set()
    dups = reordered = 0
    highest = -1
    for seq, _, _ in arrivals:
        if seq in seen:
            dups += 1
            continue
        seen.add(seq)
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    first, last = min(seen), max(seen)
    lost = (last - first + 1) - len(seen)
    # outages: runs of missing sequence numbers, measured on the sender's clock
    sent_at = {}
    for seq, sent, _ in arrivals:
        sent_at.setdefault(seq, sent)
    order = sorted(seen)
    gaps = []
    for a, b in zip(order, order[1:]):
        if b - a > 1:
            ms = (sent_at[b] - sent_at[a]) / 1e6 - 1000.0 / rate
            gaps.append({"after_seq": a, "missing": b - a - 1, "outage_ms": round(max(ms, 0.0), 3)})
    gaps.sort(key=lambda g: -g["missing"])
    return {"received": len(arrivals), "unique": len(seen), "duplicates": dups, "lost": lost,
            "reordered": reordered, "first_seq": first, "last_seq": last,
            "outage_ms": round(sum(g["outage_ms"] for g in gaps), 3), "longest_outage_ms":
            max((g["outage_ms"] for g in gaps), default=0.0), "gaps": gaps[:10]}


def mcast_recv(group: str, port: int, seconds: float, source: str | None = None, igmp_version: int | None = None,
               iface: str = "eth0", rate: float = 1000.0) -> dict:
    """Join ``group`` (kernel IGMP), record every datagram of the stream until ``seconds`` or SIGTERM."""
    import signal

    set_igmp_version(igmp_version, iface)
    seconds = max(0.0, min(seconds, 600.0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((group, port))
    _join(sock, group, iface, source)
    print(f"joined {group}" + (f" source {source}" if source else ""), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    sock.settimeout(0.05)
    arrivals: list[tuple[int, int, int]] = []
    bad = 0
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end and len(arrivals) < 2_000_000:
        try:
            data = sock.recv(2048)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        if len(data) < MCAST_HEADER.size:
            bad += 1
            continue
        seq, sent = MCAST_HEADER.unpack_from(data)
        arrivals.append((seq, sent, time.monotonic_ns()))
    res = mcast_analyse(arrivals, rate)
    res.update(group=group, malformed=bad)
    return res


def mcast_join(group: str, ngroups: int, seconds: float, source: str | None = None,
               igmp_version: int | None = None, iface: str = "eth0") -> dict:
    """Hold kernel memberships of ``ngroups`` consecutive groups (20 per socket, the kernel's default cap)."""
    import signal

    set_igmp_version(igmp_version, iface)
    groups = _groups(group, max(1, min(ngroups, 4096)))
    socks = []
    for i, g in enumerate(groups):
        if i % 20 == 0:
            socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        _join(socks[-1], g, iface, source)
    print(f"joined {len(groups)}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait(max(0.0, min(seconds, 3600.0)))
    for s in socks:
        s.close()  # the kernel sends the leaves
    return {"joined": len(groups)}


# -- identity server (fenced clones: who answered, which source address reached it) -------------


def ident_serve(port: int, name: str) -> None:
    """TCP and UDP on ``port`` (dual stack): one JSON line naming this server and the peer it saw."""

    def hello(peer: str) -> bytes:
        host = peer[7:] if peer.startswith("::ffff:") else peer
        return (json.dumps({"server": name, "peer": host}) + "\n").encode()

    tcp_sock = _dual_stack(port)
    udp_sock = _dual_stack(port, socket.SOCK_DGRAM)

    def accept_loop():
        while True:
            conn, addr = tcp_sock.accept()
            threading.Thread(target=_echo, args=(conn, 30, hello(addr[0])), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    print(f"listening {port}", flush=True)
    while True:
        data, addr = udp_sock.recvfrom(65536)
        udp_sock.sendto(hello(addr[0]) + data, addr)


def ident_get(host: str, port: int, udp: bool, nbytes: int, timeout: float) -> dict:
    payload = os.urandom(nbytes)
    out: dict = {"ok": False}
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if udp:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.connect((host, port))
                s.send(payload)
                data = s.recv(65536)
                out["local"], out["remote"] = s.getsockname()[0], s.getpeername()[0]
        else:
            with socket.create_connection((host, port), timeout=timeout) as s:
                out["local"], out["remote"] = s.getsockname()[0], s.getpeername()[0]
                s.sendall(payload)
                data = b""
                deadline = time.monotonic() + timeout
                while (b"\n" not in data or len(data) - data.index(b"\n") - 1 < nbytes) \
                        and time.monotonic() < deadline:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        line, _, rest = data.partition(b"\n")
        out.update(json.loads(line))
        out["echo_ok"] = rest == payload
        out["ok"] = out["echo_ok"]
    except (OSError, ValueError) as exc:
        out["error"] = str(exc)
    return out


def send_frames(frames: list[str], repeat: int, iface: str = "eth0", interval: float = 0.0) -> dict:
    """Send raw Ethernet frames (hex) out of ``iface``, each ``repeat`` times (at most 1000),
    ``interval`` seconds apart (at most 1 s)."""
    data = [bytes.fromhex(f) for f in frames]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    sent = 0
    for i in range(max(1, min(repeat, 1000))):
        if i and interval > 0:
            time.sleep(min(interval, 1.0))
        for d in data:
            sock.send(d)
            sent += 1
    return {"sent": sent}


# -- cloud router: sequenced unicast streams, multi-port servers, reachability probes -----------

SEQ_HEADER = struct.Struct("!QQ")  # sequence number, send time (CLOCK_MONOTONIC ns, one clock for every netns)


def _stop_event():
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, lambda *a: stop.set())
        except ValueError:  # not the main thread
            pass
    return stop


def serve_ports(ports: list[int]) -> None:
    """TCP echo and UDP echo on every port (IPv4 and IPv6); one line when all listen."""
    def tcp_loop(sock):
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=_echo, args=(conn, 60), daemon=True).start()

    def udp_loop(sock):
        while True:
            data, addr = sock.recvfrom(65536)
            try:
                sock.sendto(data, addr)
            except OSError:
                pass

    for port in ports[:64]:
        t, u = _dual_stack(port), _dual_stack(port, socket.SOCK_DGRAM)
        threading.Thread(target=tcp_loop, args=(t,), daemon=True).start()
        threading.Thread(target=udp_loop, args=(u,), daemon=True).start()
    print(f"listening {' '.join(map(str, ports[:64]))}", flush=True)
    _stop_event().wait()


def udp_stream(host: str, port: int, pps: float, seconds: float, size: int = 64) -> dict:
    """A paced, sequenced UDP stream to ``host:port`` (at most 10 minutes, 50 kpps); stops on SIGTERM."""
    pps = max(1.0, min(pps, 50_000.0))
    seconds = max(0.0, min(seconds, 600.0))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    pad = b"\0" * max(0, size - SEQ_HEADER.size)
    stop = _stop_event()
    interval = 1.0 / pps
    start = time.monotonic()
    end, next_at = start + seconds, start
    seq = errors = 0
    while not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        if now < next_at:
            time.sleep(min(next_at - now, 0.005))
            continue
        try:  # never wait: a full socket buffer (e.g. packets queued behind ARP) is a lost packet
            sock.sendto(SEQ_HEADER.pack(seq, time.monotonic_ns()) + pad, socket.MSG_DONTWAIT, (host, port))
        except OSError:
            errors += 1  # no route / buffer full while a client's link is re-plugged: counted as lost
        seq += 1
        next_at += interval
        if now - next_at > 0.1:  # CPU starved: do not burst to catch up
            next_at = now
    took = time.monotonic() - start
    return {"sent": seq, "errors": errors, "seconds": round(took, 3), "pps": round(seq / took) if took else 0}


def seq_analyse(arrivals: list[tuple[int, int, int, int]], pps: float) -> dict:
    """``(seq, send_ns, recv_ns, nbytes)`` in arrival order -> loss, outages (sender clock), rate (pure)."""
    if not arrivals:
        return {"received": 0, "unique": 0, "lost": None, "outage_ms": 0.0, "longest_outage_ms": 0.0,
                "gaps": [], "kbps": 0.0}
    seen: dict[int, int] = {}
    dups = 0
    for seq, sent, _, _ in arrivals:
        if seq in seen:
            dups += 1
        else:
            seen[seq] = sent
    order = sorted(seen)
    gaps = []
    for a, b in zip(order, order[1:]):
        if b - a > 1:
            ms = (seen[b] - seen[a]) / 1e6 - 1000.0 / pps
            gaps.append({"after_seq": a, "missing": b - a - 1, "outage_ms": round(max(ms, 0.0), 3),
                         "at_ns": seen[a]})
    lost = (order[-1] - order[0] + 1) - len(order)
    recv_ns = [r for _, _, r, _ in arrivals]
    arrival_gaps = sorted(((b - a) / 1e6, a) for a, b in zip(recv_ns, recv_ns[1:]))[-5:]
    span = (max(recv_ns) - min(recv_ns)) / 1e9
    nbytes = sum(n for *_, n in arrivals)
    return {"received": len(arrivals), "unique": len(order), "duplicates": dups, "lost": lost,
            "first_seq": order[0], "last_seq": order[-1],
            "outage_ms": round(sum(g["outage_ms"] for g in gaps), 3),
            "longest_outage_ms": max((g["outage_ms"] for g in gaps), default=0.0),
            "gaps": sorted(gaps, key=lambda g: -g["missing"])[:20],
            "first_recv_ns": min(recv_ns), "last_recv_ns": max(recv_ns),
            "arrival_gaps": [{"ms": round(ms, 3), "at_ns": at} for ms, at in reversed(arrival_gaps)],
            "kbps": round(nbytes * 8 / 1000 / span, 1) if span > 0 else 0.0}


def udp_sink(ports: list[int], seconds: float, pps: float) -> dict:
    """Receive sequenced streams on several UDP ports until ``seconds`` or SIGTERM; JSON per port."""
    import select

    socks = {}
    for port in ports[:16]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        socks[s.fileno()] = (port, s)
    print(f"listening {' '.join(str(p) for p, _ in socks.values())}", flush=True)
    stop = _stop_event()
    arrivals: dict[int, list] = {p: [] for p, _ in socks.values()}
    bad = 0
    end = time.monotonic() + max(0.0, min(seconds, 600.0))
    total = 0
    while not stop.is_set() and time.monotonic() < end and total < 3_000_000:
        ready, _, _ = select.select(list(socks), [], [], 0.05)
        for fd in ready:
            port, s = socks[fd]
            while True:
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                if len(data) < SEQ_HEADER.size:
                    bad += 1
                    continue
                seq, sent = SEQ_HEADER.unpack_from(data)
                arrivals[port].append((seq, sent, time.monotonic_ns(), len(data) + 28))
                total += 1
    return {"ports": {str(p): seq_analyse(a, pps) for p, a in arrivals.items()}, "malformed": bad}


def tcp_stream(host: str, port: int, seconds: float, interval_ms: float = 10.0, size: int = 64,
               drain: float = 10.0) -> dict:
    """One TCP connection to an echo server: a sequenced message every ``interval_ms`` for ``seconds``
    (or until SIGTERM), then wait up to ``drain`` s for the rest of the echo.  Reports whether the
    connection survived with every byte echoed in order, and the longest pause between echoes."""
    msg_len = max(SEQ_HEADER.size, size)
    stop = _stop_event()
    out: dict = {"connected": False, "sent": 0, "echoed": 0, "intact": False, "max_gap_ms": None, "error": None}
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as exc:
        out["error"] = f"connect: {exc}"
        return out
    out["connected"] = True
    sock.settimeout(None)
    echoes: list[int] = []  # arrival ns per complete echoed message
    state = {"bad": False, "error": None}
    sent_lock = threading.Lock()

    def reader():
        buf = b""
        expect = 0
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= msg_len:
                    seq, _ = SEQ_HEADER.unpack_from(buf)
                    if seq != expect:
                        state["bad"] = True
                    expect += 1
                    echoes.append(time.monotonic_ns())
                    buf = buf[msg_len:]
        except OSError as exc:
            state["error"] = f"recv: {exc}"

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    pad = b"\x55" * (msg_len - SEQ_HEADER.size)
    start = time.monotonic()
    end = start + max(0.0, min(seconds, 600.0))
    seq = 0
    try:
        while not stop.is_set() and time.monotonic() < end:
            with sent_lock:
                sock.sendall(SEQ_HEADER.pack(seq, time.monotonic_ns()) + pad)
                seq += 1
            time.sleep(interval_ms / 1000.0)
    except OSError as exc:
        state["error"] = f"send: {exc}"
    deadline = time.monotonic() + drain
    while len(echoes) < seq and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.02)
    with contextlib_suppress():
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    gaps = [(b - a) / 1e6 for a, b in zip(echoes, echoes[1:])]
    top = sorted(((g, i) for i, g in enumerate(gaps)), reverse=True)[:5]
    out.update(sent=seq, echoed=len(echoes), intact=(len(echoes) == seq and not state["bad"] and seq > 0),
               out_of_order=state["bad"], error=state["error"],
               max_gap_ms=round(max(gaps), 1) if gaps else None,
               gaps_ms=[round(g, 1) for g, _ in top], seconds=round(time.monotonic() - start, 3),
               first_echo_ns=echoes[0] if echoes else None, last_echo_ns=echoes[-1] if echoes else None)
    return out


class contextlib_suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def probe(targets: list[str], timeout: float) -> dict:
    """Reachability of ``tcp:HOST:PORT``, ``udp:HOST:PORT`` (needs an echo) and ``icmp:HOST``, in parallel.

    Results: ``open`` (TCP connected / UDP echoed / ping answered), ``refused`` (a RST came back: the
    host was reached), ``timeout``, or ``error: ...``.
    """
    results: dict[str, str] = {}

    def one(target: str) -> None:
        kind, _, rest = target.partition(":")
        try:
            if kind == "tcp":
                host, _, port = rest.rpartition(":")
                try:
                    with socket.create_connection((host, int(port)), timeout=timeout):
                        results[target] = "open"
                except ConnectionRefusedError:
                    results[target] = "refused"
                except (socket.timeout, TimeoutError):
                    results[target] = "timeout"
            elif kind == "udp":
                host, _, port = rest.rpartition(":")
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(timeout)
                    s.connect((host, int(port)))
                    s.send(b"probe")
                    try:
                        results[target] = "open" if s.recv(64) == b"probe" else "error: wrong echo"
                    except ConnectionRefusedError:
                        results[target] = "refused"
                    except (socket.timeout, TimeoutError):
                        results[target] = "timeout"
            elif kind == "icmp":
                cp = subprocess.run(["ping", "-n", "-q", "-c", "1", "-W", str(max(1, round(timeout))), rest],
                                    capture_output=True, text=True)
                results[target] = "open" if cp.returncode == 0 else "timeout"
            else:
                results[target] = f"error: unknown probe kind {kind!r} (tcp, udp, icmp)"
        except (OSError, ValueError) as exc:
            results[target] = f"error: {exc}"

    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in targets[:64]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return {t: results.get(t, "timeout") for t in targets[:64]}


def sniff(seconds: float, prefix: str | None, iface: str = "eth0") -> dict:
    """Frames received on ``iface`` for ``seconds``; ``matched``: IPv6 to an address in ``prefix``."""
    import ipaddress

    net = ipaddress.IPv6Network(prefix) if prefix else None
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind((iface, 0))
    sock.settimeout(0.1)
    print("sniffing", flush=True)
    frames = ipv6 = matched = 0
    end = time.monotonic() + max(0.0, min(seconds, 60.0))
    while time.monotonic() < end:
        try:
            data, addr = sock.recvfrom(2048)
        except (socket.timeout, TimeoutError):
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        frames += 1
        if len(data) >= 54 and data[12:14] == b"\x86\xdd":
            ipv6 += 1
            if net is not None and ipaddress.IPv6Address(data[38:54]) in net:
                matched += 1
    sock.close()
    return {"frames": frames, "ipv6": ipv6, "matched": matched, "seconds": seconds}


def mcast_sniff(groups: list[str], seconds: float, iface: str = "eth0") -> dict:
    """What a host that never joined receives: IPv4 frames to ``groups`` (any address in 224/4 when
    none are given) and standby requests (ethertype 0x88b5), on ``iface`` in promiscuous mode, for
    ``seconds`` (at most 120).  Prints ``sniffing`` when ready, then JSON counts."""
    import ipaddress

    want = {ipaddress.IPv4Address(g).packed for g in groups}
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind((iface, 0))
    mreq = struct.pack("iHH8s", socket.if_nametoindex(iface), 1, 0, b"")  # PACKET_MR_PROMISC
    sock.setsockopt(263, 1, mreq)  # SOL_PACKET, PACKET_ADD_MEMBERSHIP
    sock.settimeout(0.1)
    print("sniffing", flush=True)
    out = {"frames": 0, "group_frames": 0, "multicast_frames": 0, "standby_requests": 0, "groups": {},
           "seconds": seconds}
    end = time.monotonic() + max(0.0, min(seconds, 120.0))
    while time.monotonic() < end and out["frames"] < 10_000_000:
        try:
            data, addr = sock.recvfrom(2048)
        except (socket.timeout, TimeoutError):
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        out["frames"] += 1
        etype = data[12:14]
        if etype == b"\x88\xb5":
            out["standby_requests"] += 1
        elif etype == b"\x08\x00" and len(data) >= 34:
            dst = data[30:34]
            if dst[0] & 0xF0 == 0xE0 and dst[:3] != b"\xe0\x00\x00":  # 224/4 but not link-local 224.0.0/24
                out["multicast_frames"] += 1
                if not want or dst in want:
                    out["group_frames"] += 1
                    name = str(ipaddress.IPv4Address(dst))
                    out["groups"][name] = out["groups"].get(name, 0) + 1
    sock.close()
    return out


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
    ms = sub.add_parser("mcast-send")
    ms.add_argument("group")
    ms.add_argument("port", type=int)
    ms.add_argument("--rate", type=float, default=1000.0)
    ms.add_argument("--seconds", type=float, default=5.0)
    ms.add_argument("--groups", type=int, default=1, help="send round robin to this many consecutive groups")
    ms.add_argument("--ttl", type=int, default=8)
    ms.add_argument("--size", type=int, default=64, help="UDP payload bytes (at least 16)")
    mr = sub.add_parser("mcast-recv")
    mr.add_argument("group")
    mr.add_argument("port", type=int)
    mr.add_argument("--seconds", type=float, default=10.0)
    mr.add_argument("--source", help="join (source, group) only: an IGMPv3 INCLUDE record")
    mr.add_argument("--igmp-version", type=int, choices=(0, 2, 3))
    mr.add_argument("--rate", type=float, default=1000.0, help="the sender's rate (for the outage figure)")
    mj = sub.add_parser("mcast-join")
    mj.add_argument("group")
    mj.add_argument("--groups", type=int, default=1)
    mj.add_argument("--seconds", type=float, default=60.0)
    mj.add_argument("--source")
    mj.add_argument("--igmp-version", type=int, choices=(0, 2, 3))
    isv = sub.add_parser("ident-serve")
    isv.add_argument("port", type=int)
    isv.add_argument("--name", required=True)
    ig = sub.add_parser("ident-get")
    ig.add_argument("host")
    ig.add_argument("port", type=int)
    ig.add_argument("--udp", action="store_true")
    ig.add_argument("--bytes", type=int, default=100)
    ig.add_argument("--timeout", type=float, default=3.0)
    ig.add_argument("--count", type=int, default=1, help="N connections one after another (JSON list)")
    sf = sub.add_parser("send-frames")
    sf.add_argument("frames", nargs="+", help="Ethernet frames in hex")
    sf.add_argument("--repeat", type=int, default=1)
    sf.add_argument("--iface", default="eth0")
    sf.add_argument("--interval", type=float, default=0.0, help="seconds between repeats")
    sp = sub.add_parser("serve-ports", help="TCP and UDP echo on several ports")
    sp.add_argument("ports", type=int, nargs="+")
    us = sub.add_parser("udp-stream", help="a paced sequenced UDP stream")
    us.add_argument("host")
    us.add_argument("port", type=int)
    us.add_argument("--pps", type=float, default=1000.0)
    us.add_argument("--seconds", type=float, default=5.0)
    us.add_argument("--size", type=int, default=64)
    uk = sub.add_parser("udp-sink", help="receive sequenced UDP streams on several ports")
    uk.add_argument("ports", type=int, nargs="+")
    uk.add_argument("--seconds", type=float, default=10.0)
    uk.add_argument("--pps", type=float, default=1000.0, help="the sender's rate (for the outage figure)")
    ts = sub.add_parser("tcp-stream", help="one long TCP echo connection, paced messages")
    ts.add_argument("host")
    ts.add_argument("port", type=int)
    ts.add_argument("--seconds", type=float, default=10.0)
    ts.add_argument("--interval-ms", type=float, default=10.0)
    ts.add_argument("--size", type=int, default=64)
    ts.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the last echoes")
    pr = sub.add_parser("probe", help="reachability of tcp:HOST:PORT, udp:HOST:PORT, icmp:HOST")
    pr.add_argument("targets", nargs="+")
    pr.add_argument("--timeout", type=float, default=1.0)
    sn = sub.add_parser("sniff", help="count received frames (and IPv6 frames to a prefix) for some seconds")
    sn.add_argument("--seconds", type=float, default=5.0)
    sn.add_argument("--ipv6-prefix")
    sn.add_argument("--iface", default="eth0")
    msn = sub.add_parser("mcast-sniff", help="count multicast data and standby requests a host receives "
                                             "without joining")
    msn.add_argument("groups", nargs="*")
    msn.add_argument("--seconds", type=float, default=5.0)
    msn.add_argument("--iface", default="eth0")
    args = ap.parse_args(argv)
    if args.cmd == "mcast-sniff":
        print(json.dumps(mcast_sniff(args.groups, args.seconds, args.iface)), flush=True)
        return 0
    if args.cmd == "sniff":
        print(json.dumps(sniff(args.seconds, args.ipv6_prefix, args.iface)), flush=True)
        return 0
    if args.cmd == "serve-ports":
        serve_ports(args.ports)
        return 0
    if args.cmd == "udp-stream":
        print(json.dumps(udp_stream(args.host, args.port, args.pps, args.seconds, args.size)), flush=True)
        return 0
    if args.cmd == "udp-sink":
        print(json.dumps(udp_sink(args.ports, args.seconds, args.pps)), flush=True)
        return 0
    if args.cmd == "tcp-stream":
        print(json.dumps(tcp_stream(args.host, args.port, args.seconds, args.interval_ms, args.size,
                                    drain=max(0.0, min(args.drain, 60.0)))), flush=True)
        return 0
    if args.cmd == "probe":
        print(json.dumps(probe(args.targets, args.timeout)))
        return 0
    if args.cmd == "ident-serve":
        ident_serve(args.port, args.name)
        return 0
    if args.cmd == "ident-get":
        if args.count > 1:
            runs = [ident_get(args.host, args.port, args.udp, args.bytes, args.timeout)
                    for _ in range(min(args.count, 10000))]
            print(json.dumps(runs))
            return 0 if all(r["ok"] for r in runs) else 1
        res = ident_get(args.host, args.port, args.udp, args.bytes, args.timeout)
        print(json.dumps(res))
        return 0 if res["ok"] else 1
    if args.cmd == "send-frames":
        print(json.dumps(send_frames(args.frames, args.repeat, args.iface, args.interval)))
        return 0
    if args.cmd == "mcast-send":
        print(json.dumps(mcast_send(args.group, args.port, args.rate, args.seconds, args.groups, args.ttl,
                                    size=max(16, min(args.size, 1472)))))
        return 0
    if args.cmd == "mcast-recv":
        print(json.dumps(mcast_recv(args.group, args.port, args.seconds, args.source, args.igmp_version,
                                    rate=args.rate)), flush=True)
        return 0
    if args.cmd == "mcast-join":
        print(json.dumps(mcast_join(args.group, args.groups, args.seconds, args.source, args.igmp_version)))
        return 0
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
