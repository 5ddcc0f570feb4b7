"""HTTP tools run inside lab host namespaces: servers that name themselves, and a load that
records what happened to every request (``python -m ovs_scripts.http_load ...``).

* ``serve --name NAME [--port P]``: an HTTP/1.1 keep-alive server (IPv4 and IPv6) that
  answers every GET with ``200``, header ``X-Server: NAME`` and a JSON body naming
  itself and the path (so every session's server is known); prints ``listening``.
* ``load HOST [--port P] [--seconds S] [--conns K] [--new-rate R] [--sessions N]``:
  ``K`` keep-alive connections, each sending requests back to back (``--gap-ms``
  apart) with its own session key, and ``R`` new connections per second (one
  request each, session keys from a pool of ``N``).  Sessions are sent as the
  header ``--key-header`` (an API key).  Prints ``started``, then one JSON
  summary: requests, failures (when, which kind, on which proxy), keep-alive
  TCP connections that saw more than one proxy (``moved_conns``; a reconnect after a
  ``Connection: close`` is a new connection, counted in ``closed_by_server``), sessions that saw more than one
  server, requests per proxy and per server.  SIGTERM ends it early (still prints).

Every loop is bounded by ``--seconds`` (at most 600); these only ever target lab hosts.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict

MAX_SECONDS = 600


# -- the server ----------------------------------------------------------------------------

def serve(name: str, port: int) -> None:
    body_of = lambda path: json.dumps({"server": name, "path": path}).encode()  # noqa: E731

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - http.server's name
            body = body_of(self.path)
            self.send_response(200)
            self.send_header("X-Server", name)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True
        request_queue_size = 1024

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    srv = Server(("::", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("listening", flush=True)
    srv.serve_forever()


# -- the load ------------------------------------------------------------------------------

def _kind(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed"
    return type(exc).__name__


class Load:
    """The recorder every request thread reports to (see module doc)."""

    def __init__(self, host: str, port: int, key_header: str, path: str, timeout: float, key_prefix: str = ""):
        self.host, self.port, self.key_header, self.path, self.timeout = host, port, key_header, path, timeout
        self.key_prefix = key_prefix
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.failures: list[dict] = []
        self.by_proxy: Counter = Counter()
        self.by_server: Counter = Counter()
        self.session_servers: dict[str, set] = defaultdict(set)
        self.conn_proxies: dict[str, set] = defaultdict(set)
        self.new_conns = 0
        self.closed_by_server = 0   # answers that said Connection: close (a draining or reloading proxy)

    def _ask(self, conn: http.client.HTTPConnection, key: str | None) -> tuple[str | None, str | None, int]:
        """One GET; (proxy, server, local port): the port names the TCP connection it went over
        (http.client reconnects by itself after a ``Connection: close``)."""
        conn.request("GET", self.path, headers={self.key_header: key} if key else {})
        port = conn.sock.getsockname()[1]
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"http {r.status}")
        if r.will_close:
            with self.lock:
                self.closed_by_server += 1
        return r.getheader("X-Proxy"), r.getheader("X-Server"), port

    def _record(self, conn_id: str, key: str | None, proxy, server) -> None:
        with self.lock:
            self.requests += 1
            self.by_proxy[proxy] += 1
            self.by_server[server] += 1
            if key:
                self.session_servers[key].add(server)
            self.conn_proxies[conn_id].add(proxy)

    def _fail(self, conn_id: str, exc: BaseException, proxy: str | None) -> None:
        with self.lock:
            self.failures.append({"t": round(time.monotonic() - self.t0, 3), "conn": conn_id,
                                  "kind": _kind(exc) if not isinstance(exc, RuntimeError) else str(exc),
                                  "proxy": proxy})

    def keepalive(self, i: int, gap: float) -> None:
        """One keep-alive connection, requests back to back; reconnects after a failure."""
        key = f"{self.key_prefix}k{i}"
        while not self.stop.is_set():
            conn_id, proxy = f"ka{i}", None
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                while not self.stop.is_set():
                    proxy, server, port = self._ask(conn, key)
                    conn_id = f"ka{i}:{port}"
                    self._record(conn_id, key, proxy, server)
                    if gap:
                        self.stop.wait(gap)
            except Exception as exc:  # noqa: BLE001 - every failure is data here
                self._fail(conn_id, exc, proxy)
                self.stop.wait(0.05)
            finally:
                conn.close()

    def newconns(self, rate: float, sessions: int) -> None:
        """``rate`` new connections per second, one request each (spread over a few threads)."""
        n = 0
        interval = 1.0 / rate
        nxt = time.monotonic()
        while not self.stop.is_set():
            n += 1
            key = f"{self.key_prefix}s{n % sessions}" if sessions else None
            threading.Thread(target=self._one, args=(f"new{n}", key), daemon=True).start()
            nxt += interval
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def _one(self, conn_id: str, key: str | None) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        with self.lock:
            self.new_conns += 1
        try:
            proxy, server, _ = self._ask(conn, key)
            self._record(conn_id, key, proxy, server)
        except Exception as exc:  # noqa: BLE001
            self._fail(conn_id, exc, None)
        finally:
            conn.close()

    def summary(self) -> dict:
        with self.lock:
            moved = {c: sorted(p) for c, p in self.conn_proxies.items() if c.startswith("ka") and len(p) > 1}
            changed = {k: sorted(s) for k, s in self.session_servers.items() if len(s) > 1}
            return {"seconds": round(time.monotonic() - self.t0, 3), "requests": self.requests,
                    "new_conns": self.new_conns, "closed_by_server": self.closed_by_server,
                    "failed": len(self.failures), "failures": self.failures[:200],
                    "moved_conns": moved, "sessions": {k: sorted(s) for k, s in self.session_servers.items()},
                    "session_server_changes": changed,
                    "conn_proxy": {c: sorted(p)[0] for c, p in self.conn_proxies.items()
                                   if c.startswith("ka") and p},
                    "by_proxy": dict(self.by_proxy), "by_server": dict(self.by_server)}


def load(args) -> dict:
    ld = Load(args.host, args.port, args.key_header, args.path, args.timeout, args.key_prefix)
    signal.signal(signal.SIGTERM, lambda *_: ld.stop.set())
    threads = [threading.Thread(target=ld.keepalive, args=(i, args.gap_ms / 1000.0), daemon=True)
               for i in range(args.conns)]
    if args.new_rate > 0:
        threads.append(threading.Thread(target=ld.newconns, args=(args.new_rate, args.sessions), daemon=True))
    for t in threads:
        t.start()
    print("started", flush=True)
    ld.stop.wait(min(args.seconds, MAX_SECONDS))
    ld.stop.set()
    for t in threads:
        t.join(args.timeout + 1)
    time.sleep(0.05)  # the last one-shot requests
    return ld.summary()


class LabLoad:
    """A ``load`` running in a lab host's namespace (the lab records it): :meth:`result` waits
    for its JSON summary.  ``opts`` are its options (``conns=10`` -> ``--conns 10``)."""

    def __init__(self, lab, host: str, vip: str, seconds: float, **opts):
        argv = [sys.executable, "-m", "ovs_scripts.http_load", "load", vip, "--seconds", str(seconds)]
        for k, v in opts.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = lab.popen(host, argv)
        if self.proc.stdout.readline().strip() != "started":
            raise RuntimeError(f"http_load in {host} did not start (see {lab.dir / (host + '.log')})")
        self.t0 = time.monotonic()

    def result(self, timeout: float = 60) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])


def start_servers(lab, hosts, port: int = 8000) -> None:
    """``serve --name <host>`` in each of ``hosts`` (the lab stops them); returns once all listen."""
    for h in hosts:
        proc = lab.popen(h, [sys.executable, "-m", "ovs_scripts.http_load", "serve", "--name", h,
                             "--port", str(port)])
        if "listening" not in proc.stdout.readline():
            raise RuntimeError(f"http server in {h} did not start (see {lab.dir / (h + '.log')})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="http_load", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, default=8000)
    g = sub.add_parser("load")
    g.add_argument("host")
    g.add_argument("--port", type=int, default=80)
    g.add_argument("--seconds", type=float, default=5.0)
    g.add_argument("--conns", type=int, default=8, help="keep-alive connections")
    g.add_argument("--gap-ms", type=float, default=5.0, help="pause between a connection's requests")
    g.add_argument("--new-rate", type=float, default=0.0, help="new connections per second")
    g.add_argument("--sessions", type=int, default=0, help="session keys the new connections use (0: none)")
    g.add_argument("--key-header", default="X-API-Key")
    g.add_argument("--key-prefix", default="", help="prefix of the session keys (k<i>, s<n>)")
    g.add_argument("--path", default="/v1/items")
    g.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.name, args.port)
        return 0
    print(json.dumps(load(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
