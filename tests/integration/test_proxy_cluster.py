"""Proxy clusters on real OVS, real HAProxy (Debian) and the controller: a VIP spread over proxies.

One lab (``topologies/proxy_cluster.yaml``): clients on s1, proxies on s2,
servers on s3.  Each proxy runs HAProxy with the ``haproxy.cfg`` the
controller serves for it (``/v1/proxy-clusters/api/haproxy/<proxy>``) and
holds the VIP on its loopback; servers are small HTTP servers that name
themselves, HAProxy names the proxy (``X-Proxy``), so every request's path is
known.  (Until the agent lands, the test starts HAProxy itself.)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import kit
from ovs_scripts.lab import Lab
from tests.integration.conftest import RUN_BASE, LabFactory, _skip_reason

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOPO = REPO / "topologies" / "proxy_cluster.yaml"
PY = sys.executable
VIP4, VIP6 = "10.59.0.100", "fd00:59::100"

SERVER = r"""
import http.server, sys
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("X-Server", name)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET6
    def server_bind(self):
        import socket
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
srv = S(("::", 8000), H)
print("listening", flush=True)
srv.serve_forever()
"""

#: requests over one keep-alive connection per entry of argv; prints one JSON line per connection
CLIENT = r"""
import http.client, json, sys
host, n, conns, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(conns):
    c = http.client.HTTPConnection(host, 80, timeout=5)
    seen = []
    try:
        for _ in range(n):
            c.request("GET", "/v1/x", headers={"X-API-Key": key} if key != "-" else {})
            r = c.getresponse()
            r.read()
            seen.append([r.status, r.getheader("X-Proxy"), r.getheader("X-Server"), c.sock.getsockname()[1]])
    except Exception as exc:
        seen.append(["error", repr(exc)])
    finally:
        c.close()
    print(json.dumps(seen), flush=True)
"""


def call(lab, method, path, body=None):
    return tuple(kit.rest(lab, method, path, body, timeout=60))


def clients(lab, host, vip=VIP4, n=3, conns=1, key="-"):
    cp = lab.exec(host, [PY, "-c", CLIENT, vip, str(n), str(conns), key], timeout=60)
    return [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]


def start_haproxy(lab, proxy):
    run = lab.dir / f"haproxy-{proxy}"
    run.mkdir(exist_ok=True)
    status, body = call(lab, "GET", f"/v1/proxy-clusters/api/haproxy/{proxy}?run_dir={run}")
    assert status == 200, body
    cfg = run / "haproxy.cfg"
    cfg.write_text(body["config"])
    lab.exec(proxy, ["ip", "addr", "replace", f"{VIP4}/32", "dev", "lo"])
    lab.exec(proxy, ["ip", "-6", "addr", "replace", f"{VIP6}/128", "dev", "lo"])
    return lab.popen(proxy, ["haproxy", "-W", "-db", "-f", str(cfg)], stdout=open(run / "out.log", "ab"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _skip_reason() or (None if shutil.which("haproxy") else "haproxy (Debian) is not installed")
    if reason:
        pytest.skip(reason)
    factory = LabFactory(tmp_path_factory.mktemp("proxy"), RUN_BASE / f"proxy-{os.getpid()}")
    lab = Lab.up(factory.prepare(TOPO), rundir=factory.rundir, timeout=60)
    try:
        for s in ("a1", "a2"):
            proc = lab.popen(s, [PY, "-u", "-c", SERVER, s])
            assert "listening" in proc.stdout.readline()
        for p in ("p1", "p2"):
            start_haproxy(lab, p)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:   # HAProxy up and both servers checked healthy
            out = clients(lab, "c1", n=1, conns=4)
            if all(o[0][0] == 200 for o in out):
                break
            time.sleep(0.5)
        yield lab
    finally:
        errors = factory.cleanup()
        shutil.rmtree(factory.rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


def test_the_vip_serves_over_both_proxies_and_both_families(lab):
    out = clients(lab, "c1", n=2, conns=24) + clients(lab, "c2", n=2, conns=24)
    assert all(r[0] == 200 for conn in out for r in conn), out
    # one connection never changes proxy; connections spread over the active proxies only
    per_conn = [{r[1] for r in conn} for conn in out]
    assert all(len(s) == 1 for s in per_conn), per_conn
    assert set().union(*per_conn) == {"p1", "p2"}, per_conn
    assert {r[2] for conn in out for r in conn} == {"a1", "a2"}
    v6 = clients(lab, "c1", vip=VIP6, n=2, conns=8)
    assert all(r[0] == 200 for conn in v6 for r in conn), v6


def test_an_api_key_keeps_its_server_whichever_proxy_takes_it(lab):
    out = clients(lab, "c1", n=1, conns=16, key="alice")
    assert {conn[0][2] for conn in out} and len({conn[0][2] for conn in out}) == 1, out
    assert len({conn[0][1] for conn in out}) == 2, out   # both proxies served alice: peers share the entry


def test_a_proxy_joining_moves_no_established_connection(lab):
    """Keep-alive connections opened before p3 joins stay on their proxies; new ones reach p3 too."""
    c = lab.popen("c1", [PY, "-u", "-c", r"""
import http.client, json, sys, time
cs = [http.client.HTTPConnection(sys.argv[1], 80, timeout=5) for _ in range(12)]
def ask():
    out = []
    for c in cs:
        try:
            c.request("GET", "/v1/x"); r = c.getresponse(); r.read(); out.append(r.getheader("X-Proxy"))
        except Exception as exc:
            out.append(repr(exc))
    return out
print(json.dumps(ask()), flush=True)
sys.stdin.readline()
print(json.dumps(ask()), flush=True)
""", VIP4], stdin=__import__("subprocess").PIPE)
    before = json.loads(c.stdout.readline())
    status, spec = call(lab, "GET", "/v1/proxy-clusters/api")
    intent = spec["intent"]
    intent["proxies"].append({"host": "p3", "state": "active"})
    status, body = call(lab, "PUT", "/v1/proxy-clusters/api?wait=1", intent)
    assert status == 200 and body.get("synced"), body
    start_haproxy(lab, "p3")
    c.stdin.write("go\n")
    c.stdin.flush()
    after = json.loads(c.stdout.readline())
    if after != before:
        sb = lab.sandbox(lab.plan.switch_sandbox["s1"])
        diag = lab.ofctl("s1", "dump-flows", "table=50").stdout
        pid = (sb.dir / "ovs-vswitchd.pid").read_text().strip()
        ct = __import__("subprocess").run(["ovs-appctl", "-t", str(sb.dir / f"ovs-vswitchd.{pid}.ctl"),
                                           "dpctl/dump-conntrack"], capture_output=True, text=True, env=sb.env()).stdout
        print(diag, ct[:4000])
    assert after == before, (before, after)
    deadline = time.monotonic() + 15
    while True:  # p3's HAProxy needs a moment to check its servers
        fresh = clients(lab, "c2", n=1, conns=40)
        if all(conn[0][0] == 200 for conn in fresh) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(conn[0][0] == 200 for conn in fresh), fresh
    assert {conn[0][1] for conn in fresh} == {"p1", "p2", "p3"}, fresh


def test_bad_cluster_bodies_are_refused_and_change_nothing(lab):
    status, before = call(lab, "GET", "/v1/proxy-clusters")
    for body, field in [({"name": "x", "vip4": "10.59.0.1", "proxies": [{"host": "nobody"}],
                          "pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 1}]}]},
                         "proxies[0].host"),
                        ({"name": "x", "vip4": "10.51.0.1", "proxies": [{"host": "p3"}],
                          "pools": [{"name": "v1", "servers": [{"name": "a", "host": "a1", "port": 1}]}]}, "vip4"),
                        ({"name": "x", "proxies": []}, "proxies")]:
        status, err = call(lab, "POST", "/v1/proxy-clusters", body)
        assert status in (409, 422), (status, err)
        assert field in json.dumps(err), (field, err)
    assert call(lab, "GET", "/v1/proxy-clusters") == (200, before)
    out = clients(lab, "c1", n=1, conns=4)
    assert all(conn[0][0] == 200 for conn in out), out
