"""The proxy agent: runs beside HAProxy on a proxy node and keeps it what the controller says.

    proxy-agent --controller unix:/run/ovslab/pc/rest.sock --proxy p1 --run-dir /run/proxy-agent

One agent per node that may be a proxy (the lab starts it in the host's
namespace).  It asks the controller which cluster this host is a proxy of
(``GET /v1/proxy-agents/<host>``, a long poll that answers at once when the
config changes) and then:

* puts the cluster's VIPs on the node's loopback (the proxy answers from the
  VIP itself; the fabric steers VIP connections to it by MAC);
* renders ``haproxy.cfg`` (:mod:`.haproxy`), checks it with ``haproxy -c``
  and starts HAProxy in master-worker mode (``-W``, master CLI socket);
* applies a change of server state or weight through HAProxy's runtime API
  (the admin socket: no reload, no connection touched), and anything else
  with a hitless reload (``SIGUSR2`` to the master: the new worker takes the
  listening sockets over the socket pair, the old one finishes its sessions
  up to ``hard-stop-after``); a config HAProxy refuses is not applied and
  the old one keeps running;
* restarts HAProxy if it exits, and when the host stops being a proxy
  soft-stops it (``SIGUSR1``: sessions finish) and removes the VIPs;
* every ``health.interval_ms`` asks HAProxy's ``monitor-uri`` on the node's
  loopback and sends a heartbeat (UDP, from the proxy's address to its
  gateway, see :mod:`.health`) that says whether HAProxy answered and which
  config version runs.  The proxy's edge switch punts it to the controller.

HAProxy stays in the agent's process group but outlives the agent: a new
agent adopts the running HAProxy from its pidfile and the config it last
applied (``applied.json``), so restarting the agent drops no connection.

Standard library only (it runs on proxy nodes), plus the renderer and the
heartbeat format of this package.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ryu_apps.functions.proxy_cluster import haproxy
from ryu_apps.functions.proxy_cluster.wire import WHY_EXITED, Heartbeat

LOG = logging.getLogger("proxy-agent")
POLL_WAIT_S = 20
RESTART_BACKOFF_S = 1.0
#: the longest a started HAProxy is kept out for learning its peers' stick tables (HAProxy's own
#: resync timeout is 5 s)
PEERS_SYNC_MAX_S = 6.0
#: how often the agent looks whether HAProxy's master still runs (between heartbeats)
WATCH_S = 0.02


def config_version(view: dict[str, Any]) -> str:
    """The version of an agent's view: a hash of its canonical JSON (the same on every controller)."""
    return hashlib.sha256(json.dumps(view, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _state_of(cluster: dict[str, Any], host: str) -> str | None:
    return next((p.get("state") for p in cluster["proxies"] if p["host"] == host), None)


def _proc_net_key(ip: str, port: int) -> str:
    """``ip:port`` as /proc/net/tcp{,6} spells a local address (32-bit words in host order)."""
    raw = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    words = "".join(f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}" for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"


def vip_connections(vips: list[str], ports: list[int]) -> int:
    """Client connections established to the VIP's service ports on this node (every HAProxy
    worker, old ones finishing a reload included), from the kernel's socket tables."""
    wanted = {_proc_net_key(v, p) for v in vips for p in ports}
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == "01" and fields[1] in wanted:  # ESTABLISHED
                        n += 1
        except OSError:
            continue
    return n


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Controller:
    """The controller's REST API at one or more addresses (``http://h:p``, ``unix:/path``): any answers."""

    def __init__(self, urls: list[str], token: str | None = None):
        if not urls:
            raise ValueError("no controller address")
        self.urls, self.token, self.current = urls, token, 0

    def _conn(self, url: str, timeout: float) -> http.client.HTTPConnection:
        if url.startswith("unix:"):
            return _UnixHTTPConnection(url[5:], timeout)
        u = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        return cls(u.hostname, u.port, timeout=timeout)

    def get(self, path: str, timeout: float) -> tuple[int, Any]:
        """GET ``path`` from the first controller that answers (the last good one first)."""
        last: Exception | None = None
        for i in range(len(self.urls)):
            k = (self.current + i) % len(self.urls)
            conn = self._conn(self.urls[k], timeout)
            try:
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
                body = r.read()
                self.current = k
                return r.status, json.loads(body or b"null")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = exc
            finally:
                conn.close()
        raise OSError(f"no controller answered ({', '.join(self.urls)}): {last}")


def _running(pid: int) -> bool:
    """Is ``pid`` a live process (not a zombie waiting for its parent)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


class HAProxy:
    """The HAProxy master this agent runs (or adopted), in ``run_dir``."""

    def __init__(self, binary: str, run_dir: Path):
        self.binary, self.dir = binary, run_dir
        self.cfg = run_dir / "haproxy.cfg"
        self.pidfile = run_dir / "haproxy.pid"
        self.proc: subprocess.Popen | None = None
        #: masters told to stop (they finish their sessions and exit): no longer this agent's HAProxy
        self.stopping: list[subprocess.Popen | int] = []
        #: the adopted master: its pidfile is rewritten and its cmdline replaced each time it
        #: re-executes for a reload, so a read in that instant must not make it look gone
        self.adopted: int | None = None

    def master_pid(self) -> int | None:
        """The running master's pid (ours, or adopted from the pidfile), else None."""
        self.stopping = [p for p in self.stopping if (p.poll() is None if isinstance(p, subprocess.Popen)
                                                      else Path(f"/proc/{p}").exists())]
        if self.proc is not None:
            return self.proc.pid if self.proc.poll() is None else None
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            pid, cmd = None, []
        if pid is not None and any(b"haproxy" in c for c in cmd[:1]) and str(self.cfg).encode() in cmd \
                and pid not in self.stopping:
            self.adopted = pid
            return pid
        if self.adopted is not None and self.adopted not in self.stopping and _running(self.adopted):
            return self.adopted  # known to be ours; mid re-exec
        self.adopted = None
        return None

    def check(self, text: str) -> str | None:
        """Why HAProxy refuses config ``text``, or None when it accepts it."""
        tmp = self.dir / "haproxy.cfg.new"
        tmp.write_text(text)
        cp = subprocess.run([self.binary, "-c", "-q", "-f", str(tmp)], capture_output=True, text=True)
        if cp.returncode != 0:
            return (cp.stderr or cp.stdout).strip()[-2000:] or f"haproxy -c exited {cp.returncode}"
        return None

    def install(self, text: str) -> None:
        (self.dir / "haproxy.cfg.new").write_text(text)
        os.replace(self.dir / "haproxy.cfg.new", self.cfg)

    def start(self) -> None:
        log = open(self.dir / "haproxy.log", "ab")  # noqa: SIM115 - the child's
        with log:
            self.proc = subprocess.Popen([self.binary, "-W", "-db", "-f", str(self.cfg), "-S",
                                          f"{self.dir / 'master.sock'},mode,600"],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        LOG.info("started HAProxy (master pid %d)", self.proc.pid)
        self.wait_ready()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until the master answers on its CLI (its signal handlers are in place by then: a
        reload signal sent earlier would kill it) and a worker runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.master_pid() is not None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1.0)
                    s.connect(str(self.dir / "master.sock"))
                    s.sendall(b"show proc\n")
                    s.shutdown(socket.SHUT_WR)  # the master CLI answers, then closes on end of input
                    answer = b""
                    while chunk := s.recv(4096):
                        answer += chunk
                if b"worker" in answer:
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def reload(self) -> None:
        # the master re-executes itself and re-reads the file; the new worker takes the sockets over.
        # Signals are sent only to a master answering on its CLI: one still starting (or re-executing
        # after the last reload) has no handler yet, and the signal's default action kills it
        pid = self.master_pid()
        if pid is not None and self.wait_ready():
            os.kill(pid, signal.SIGUSR2)
            self.wait_ready()

    def soft_stop(self) -> None:
        """Stop accepting (the listeners close at once), let sessions finish, exit: a HAProxy
        started later binds the ports while this one still drains."""
        pid = self.master_pid()
        if pid is not None and self.wait_ready():
            os.kill(pid, signal.SIGUSR1)
            self.stopping.append(self.proc if self.proc is not None else pid)
            self.proc = None

    def runtime(self, commands: list[str], timeout: float = 2.0) -> list[str]:
        """Send commands to the admin socket; the answers (HAProxy says nothing on success)."""
        out = []
        for cmd in commands:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.dir / "admin.sock"))
                s.sendall(cmd.encode() + b"\n")
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    chunks.append(b)
            out.append(b"".join(chunks).decode(errors="replace").strip())
        return out

    def peers_synced(self, timeout: float = 2.0) -> bool:
        """Has the worker finished learning the stick tables from its peers (``show peers``:
        resync from the local and the remote peers done, flags 0x1 and 0x2)?"""
        try:
            first = self.runtime(["show peers"], timeout)[0].splitlines()[0]
        except (OSError, IndexError):
            return False
        m = re.search(r"\bflags=0x([0-9a-fA-F]+)", first)
        return m is not None and int(m.group(1), 16) & 0x3 == 0x3

    def servers_up(self, timeout: float = 2.0) -> int | None:
        """Servers HAProxy's checks find up (UP or DRAIN: both still serve), over every backend;
        None when the admin socket did not answer in time (a worker taking over in a reload)."""
        try:
            csv = self.runtime(["show stat -1 4 -1"], timeout)[0]
        except (OSError, IndexError):
            return None
        lines = csv.splitlines()
        if not lines or not lines[0].startswith("# "):
            return None
        col = lines[0][2:].split(",").index("status")
        statuses = (ln.split(",")[col] for ln in lines[1:] if ln)
        return sum(1 for st in statuses if st in ("UP", "DRAIN") or st.startswith("UP "))  # "UP 1/2": rising

    def healthy(self, port: int, uri: str, timeout: float) -> tuple[bool, str]:
        """Does HAProxy answer its monitor-uri on the node's loopback within ``timeout``?"""
        if self.master_pid() is None:
            return False, WHY_EXITED
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", uri)
            status = conn.getresponse().status
            return (True, "") if status == 200 else (False, f"monitor-uri-answered-{status}")
        except (OSError, http.client.HTTPException):
            return False, "monitor-uri-no-answer"
        finally:
            conn.close()


class Agent:
    """Follows one host's proxy config and keeps HAProxy and the heartbeat going (see module doc)."""

    def __init__(self, controller: Controller, host: str, run_dir: Path, binary: str = "haproxy"):
        self.ctl, self.host, self.dir = controller, host, run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.haproxy = HAProxy(binary, run_dir)
        self.view: dict[str, Any] | None = None     # what the controller last served
        self.applied: dict[str, Any] | None = None  # the cluster HAProxy runs, and its version
        self.vips: set[str] = set()
        self.error = ""
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._restart_at = 0.0
        self._learning_until = 0.0   # a started HAProxy learns its peers' tables until then at most
        self._adopt()

    # -- state kept across agent restarts ---------------------------------------------
    def _adopt(self) -> None:
        try:
            saved = json.loads((self.dir / "applied.json").read_text())
        except (OSError, ValueError):
            return
        if self.haproxy.master_pid() is not None and isinstance(saved, dict):
            self.applied = saved
            self.vips = set(saved.get("vips", []))
            LOG.info("adopted HAProxy (master pid %s) running config %s", self.haproxy.master_pid(),
                     saved.get("version"))

    def _save_applied(self) -> None:
        tmp = self.dir / "applied.json.new"
        tmp.write_text(json.dumps(self.applied))
        os.replace(tmp, self.dir / "applied.json")

    # -- the config loop ----------------------------------------------------------------
    def poll_once(self, wait: float) -> bool:
        """One long poll; True when a new view came and was applied."""
        version = (self.view or {}).get("version", "")
        # local=1: any instance of a controller cluster answers from its own copy of the intent
        # (a long poll is not forwarded to the app's leader)
        status, body = self.ctl.get(f"/v1/proxy-agents/{urllib.parse.quote(self.host)}?version={version}"
                                    f"&wait={wait:g}&local=1", timeout=wait + 10)
        if status != 200 or not isinstance(body, dict):
            raise OSError(f"controller answered {status}: {body}")
        if body.get("version") == version:
            return False
        self.view = body
        with self._lock:
            self.apply(body)
        return True

    def apply(self, view: dict[str, Any]) -> None:
        cluster = view.get("cluster")
        if cluster is None:
            if self.applied is not None:
                LOG.info("no longer a proxy: soft-stopping HAProxy")
                self.haproxy.soft_stop()
                self._set_vips(set())
                self.applied = None
                with contextlib.suppress(OSError):
                    (self.dir / "applied.json").unlink()
            return
        text = haproxy.render(cluster, self.host, str(self.dir))
        why = self.haproxy.check(text)
        if why:
            self.error = f"config-refused: {why.splitlines()[-1][:60]}"
            LOG.error("HAProxy refuses the config of version %s, keeping the old one: %s", view["version"], why)
            return
        self._set_vips({v for v in (cluster.get("vip4"), cluster.get("vip6")) if v})
        old = (self.applied or {}).get("cluster")
        running = self.haproxy.master_pid() is not None
        # this proxy starts draining: the fabric sends it no new connection; a reload makes the old
        # worker answer each keep-alive connection's next request with Connection: close, so clients
        # reconnect (through the fabric, to another proxy) between requests, never in the middle of one
        draining = running and old is not None and _state_of(old, self.host) != "drain" \
            and _state_of(cluster, self.host) == "drain"
        if running and old == cluster:
            how = "unchanged"
        elif not running:
            self.haproxy.install(text)
            self._start()
            how = "started"
        elif old is not None and not draining and (cmds := haproxy.runtime_commands(old, cluster)) is not None:
            self.haproxy.install(text)  # the file matches what runs, for the next reload or restart
            answers = self.haproxy.runtime(cmds) if cmds else []
            bad = [a for a in answers if a]
            how = f"runtime API ({len(cmds)} commands{', answers: ' + '; '.join(bad) if bad else ''})"
        else:
            self.haproxy.install(text)
            self.haproxy.reload()
            how = "hitless reload" + (" (draining)" if draining else "")
        self.applied = {"version": view["version"], "cluster": cluster, "vips": sorted(self.vips)}
        self.error = ""
        self._save_applied()
        LOG.info("config %s applied: %s", view["version"], how)

    def _set_vips(self, vips: set[str]) -> None:
        for v in sorted(vips - self.vips):
            self._ip("replace", v)
        for v in sorted(self.vips - vips):
            self._ip("del", v)
        self.vips = vips

    @staticmethod
    def _ip(verb: str, vip: str) -> None:
        six = ":" in vip
        argv = ["ip", *(["-6"] if six else []), "addr", verb, f"{vip}/{128 if six else 32}", "dev", "lo"]
        cp = subprocess.run(argv, capture_output=True, text=True)
        if cp.returncode != 0 and verb != "del":
            raise OSError(f"{' '.join(argv)}: {cp.stderr.strip()}")

    # -- supervision and heartbeats -------------------------------------------------------
    def supervise(self) -> None:
        """Restart HAProxy when it exited while this host is a proxy (at most once a second).

        Called by the heartbeat loop, which must never wait for a config being applied (a check
        and a reload or two take long enough to miss ``fall`` beats): skipped while one is."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self.applied is None or self.haproxy.master_pid() is not None:
                return
            now = time.monotonic()
            if now < self._restart_at:
                return
            self._restart_at = now + RESTART_BACKOFF_S
            LOG.warning("HAProxy is not running: starting it again")
            self.haproxy.proc = None
            self._start()
        finally:
            self._lock.release()

    def _start(self) -> None:
        """Start HAProxy; it is reported healthy only once it learned its peers' tables (a proxy
        that served before learning them would give sessions new servers, and tell every peer)."""
        self.haproxy.start()
        self._learning_until = time.monotonic() + PEERS_SYNC_MAX_S

    def heartbeat_loop(self) -> None:
        """A heartbeat every interval, and one at once when HAProxy's master exits (checked every
        :data:`WATCH_S`): the controller takes the proxy out of the hash without waiting for
        ``fall``.  HAProxy is restarted only after a heartbeat has said it exited (restarted
        first, it could answer the next check and the controller would never know it died)."""
        sock, bound, seq, due = None, None, 0, 0.0
        reported_alive, told_dead = False, False  # what the last heartbeat said
        last_servers = 0
        while not self.stop.is_set():
            hb = (self.view or {}).get("heartbeat") or {}
            interval = (hb.get("interval_ms") or 250) / 1000.0
            now = time.monotonic()
            died = reported_alive and self.haproxy.master_pid() is None
            if now >= due or died:
                due = now + interval
                if told_dead:
                    self.supervise()
                applied = self.applied
                if applied is not None and hb.get("gateway") and hb.get("source"):
                    cluster = applied["cluster"]
                    # every question to HAProxy gets a share of the interval: a beat that waits
                    # on a socket being handed over in a reload is a beat the controller misses
                    ask = interval * 0.25
                    ok, why = self.haproxy.healthy(cluster["health_port"], cluster["health_uri"], timeout=ask)
                    if ok and self._learning_until:
                        if self.haproxy.peers_synced(ask) or time.monotonic() > self._learning_until:
                            self._learning_until = 0.0
                        else:
                            ok, why = False, "learning-peers-tables"
                    seq += 1
                    conns = vip_connections(applied.get("vips", []), cluster["ports"])
                    servers = 0
                    if ok:
                        got = self.haproxy.servers_up(ask)
                        last_servers = servers = last_servers if got is None else got  # (no answer: as last said)
                    data = Heartbeat(ok, applied["version"], seq, why or self.error, conns, servers).encode()
                    try:
                        if bound != hb["source"]:
                            if sock is not None:
                                sock.close()
                            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            sock.bind((hb["source"], 0))
                            bound = hb["source"]
                        sock.sendto(data, (hb["gateway"], hb["port"]))
                    except OSError as exc:
                        LOG.debug("heartbeat not sent: %s", exc)
                    reported_alive, told_dead = why != WHY_EXITED, why == WHY_EXITED
                else:  # nobody to tell: restart it if it is gone
                    reported_alive, told_dead = False, applied is not None
            self.stop.wait(max(0.0, min(WATCH_S, due - time.monotonic())))

    def run(self) -> None:
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        backoff = 0.2
        while not self.stop.is_set():
            try:
                self.poll_once(POLL_WAIT_S)
                backoff = 0.2
            except OSError as exc:
                LOG.warning("%s; retrying in %.1f s", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="proxy-agent", description=__doc__.split("\n\n")[0])
    ap.add_argument("--controller", required=True,
                    help="controller REST addresses, comma separated: http://127.0.0.1:8080 or unix:/path/rest.sock")
    ap.add_argument("--proxy", required=True, help="this host's name in the topology")
    ap.add_argument("--run-dir", required=True, help="HAProxy's config, sockets, pidfile and log")
    ap.add_argument("--haproxy", default="haproxy", help="the HAProxy binary")
    ap.add_argument("--token-file", help="REST bearer token, if the controller wants one for reads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s proxy-agent %(levelname)s %(message)s")
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    agent = Agent(Controller([u for u in args.controller.split(",") if u], token), args.proxy,
                  Path(args.run_dir), args.haproxy)
    # HAProxy is left running: an agent stopped or upgraded drops no connection (the next one adopts it)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    LOG.info("agent for %s, controller %s", args.proxy, args.controller)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
