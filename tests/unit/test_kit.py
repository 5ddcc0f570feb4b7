"""Unit tests of ovs_scripts.kit: wait_for, the REST client, ping parsing and command lines.

No lab: the REST client talks to a recording http.server on 127.0.0.1, and
``kit.ping`` gets a stand-in lab whose ``exec`` returns canned ping output.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error

import pytest

from ovs_scripts import kit
from tests.httpstub import http_stub  # noqa: F401  (fixture)

# --- ping output, as iputils 20221126 (Debian 12) and busybox print it ------------------

IPUTILS_OK = """\
PING 10.1.0.3 (10.1.0.3) 56(84) bytes of data.
64 bytes from 10.1.0.3: icmp_seq=1 ttl=64 time=0.512 ms
64 bytes from 10.1.0.3: icmp_seq=2 ttl=64 time=0.081 ms
64 bytes from 10.1.0.3: icmp_seq=3 ttl=64 time=0.077 ms

--- 10.1.0.3 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 405ms
rtt min/avg/max/mdev = 0.077/0.223/0.512/0.204 ms
"""
IPUTILS_QUIET_LOSS = """\
PING fd00:1::3(fd00:1::3) 56 data bytes

--- fd00:1::3 ping statistics ---
50 packets transmitted, 47 received, 6% packet loss, time 1004ms
rtt min/avg/max/mdev = 0.031/0.062/0.290/0.041 ms, pipe 2
"""
IPUTILS_ERRORS = """\
PING 10.1.0.3 (10.1.0.3) 56(84) bytes of data.
From 10.1.0.1 icmp_seq=1 Destination Host Unreachable

--- 10.1.0.3 ping statistics ---
3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2030ms
pipe 3
"""
BUSYBOX = """\
PING 10.0.0.2 (10.0.0.2): 56 data bytes
64 bytes from 10.0.0.2: seq=0 ttl=64 time=0.100 ms

--- 10.0.0.2 ping statistics ---
2 packets transmitted, 2 packets received, 0% packet loss
round-trip min/avg/max = 0.100/0.150/0.200 ms
"""


@pytest.mark.parametrize("text,expect", [
    (IPUTILS_OK, kit.PingStats(3, 3, 0, 0.077, 0.223, 0.512, 0.204)),
    (IPUTILS_QUIET_LOSS, kit.PingStats(50, 47, 0, 0.031, 0.062, 0.290, 0.041)),
    (IPUTILS_ERRORS, kit.PingStats(3, 0, 3)),
    (BUSYBOX, kit.PingStats(2, 2, 0, 0.100, 0.150, 0.200, None)),
    ("ping: connect: Network is unreachable\n", None),
    ("", None),
])
def test_parse_ping(text, expect):
    assert kit.parse_ping(text) == expect


def test_ping_stats_loss():
    assert kit.parse_ping(IPUTILS_QUIET_LOSS).lost == 3
    assert kit.parse_ping(IPUTILS_QUIET_LOSS).loss == pytest.approx(0.06)
    assert kit.parse_ping(IPUTILS_ERRORS).loss == 1.0
    assert kit.PingStats(0, 0).loss == 1.0  # nothing sent: nothing got through


def test_parse_ping_takes_the_last_summary():
    assert kit.parse_ping(IPUTILS_ERRORS + IPUTILS_OK).received == 3


@pytest.mark.parametrize("kw,argv", [
    ({}, ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "10.1.0.3"]),
    ({"count": 3, "wait": 2, "quiet": True}, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.3"]),
    ({"count": 800, "interval": 0.02, "source": "10.1.0.99", "deadline": 20.5, "family": 4},
     ["ping", "-4", "-n", "-c", "800", "-i", "0.02", "-W", "1", "-I", "10.1.0.99", "-w", "20", "10.1.0.3"]),
])
def test_ping_argv(kw, argv):
    assert kit.ping_argv("10.1.0.3", **kw) == argv


def test_ping_argv_family():
    assert kit.ping_argv("fd00:1::3", family=6)[:2] == ["ping", "-6"]
    with pytest.raises(ValueError):
        kit.ping_argv("10.1.0.3", family=5)


class FakeLab:
    """``exec`` answers with canned output; ``rest_url`` / ``rest_headers`` like a lab with a token."""

    def __init__(self, returncode=0, stdout="", rest_url="", token=None):
        self.returncode, self.stdout, self.rest_url, self.token = returncode, stdout, rest_url, token
        self.calls = []

    def exec(self, host, argv, check=True, timeout=60):
        self.calls.append((host, argv, check, timeout))
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, "")

    def rest_headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def test_ping_in_a_lab_host():
    lab = FakeLab(0, IPUTILS_OK)
    r = kit.ping(lab, "h1", "10.1.0.3", 3, wait=2, quiet=True, timeout=30)
    assert lab.calls == [("h1", ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "10.1.0.3"], False, 30)]
    assert r and r.ok and (r.sent, r.received) == (3, 3) and r.stats.rtt_avg == 0.223 and r.loss == 0
    assert r.output == IPUTILS_OK


def test_ping_failures_are_results_not_exceptions():
    r = kit.ping(FakeLab(1, IPUTILS_ERRORS), "h1", "10.1.0.3", 3)
    assert not r and (r.sent, r.received) == (3, 0) and r.stats.errors == 3
    # true means "ping exited 0", as the tests' ``returncode == 0`` meant: with -w, some answers can still be 1
    r = kit.ping(FakeLab(1, IPUTILS_QUIET_LOSS), "h1", "fd00:1::3", 50)
    assert not r and r.received == 47
    # no summary at all (ping could not start): what was asked for counts as sent, nothing received
    r = kit.ping(FakeLab(2, ""), "h1", "10.9.9.9", 4)
    assert not r and r.stats is None and (r.sent, r.received) == (4, 0) and r.loss == 1.0


# --- wait_for ---------------------------------------------------------------------------


def test_wait_for_true_at_once_calls_once():
    calls = []
    assert kit.wait_for(lambda: calls.append(1) or True, timeout=5) is True
    assert calls == [1]


def test_wait_for_polls_until_true():
    values = iter([0, None, "", 7])
    t0 = time.monotonic()
    assert kit.wait_for(lambda: next(values), timeout=5, step=0.01) == 7  # the true value itself
    assert time.monotonic() - t0 < 1


def test_wait_for_gives_up_after_the_timeout_with_one_last_look():
    calls = []
    t0 = time.monotonic()
    assert kit.wait_for(lambda: calls.append(time.monotonic()) and False, timeout=0.2, step=0.05) is False
    took = time.monotonic() - t0
    assert 0.2 <= took < 1.5, took
    assert calls[-1] - t0 > 0.2  # the last call came after the deadline
    assert 3 <= len(calls) <= 10, len(calls)


def test_wait_for_zero_step_and_exceptions():
    with pytest.raises(ZeroDivisionError):
        kit.wait_for(lambda: 1 / 0, timeout=1)
    n = []
    assert kit.wait_for(lambda: n.append(1) or len(n) > 50, timeout=5, step=0) is True


def test_wait_for_ignores_only_the_exceptions_named():
    n = []

    def starting():
        n.append(1)
        if len(n) < 3:
            raise ConnectionRefusedError("not yet")
        return {"ok": 1}

    assert kit.wait_for(starting, timeout=5, step=0, ignore=(OSError,)) == {"ok": 1}
    assert len(n) == 3
    with pytest.raises(KeyError):
        kit.wait_for(lambda: {}["x"], timeout=1, ignore=(OSError,))
    assert kit.wait_for(lambda: {}["x"], timeout=0.1, step=0.02, ignore=(KeyError,)) is False


# --- REST -------------------------------------------------------------------------------


def test_request_get_json_and_headers(http_stub):
    srv = http_stub({("GET", "/v1/switches"): (200, [{"name": "s1", "synced": True}])})
    r = kit.request("GET", f"{srv.url}/v1/switches", headers={"X-Test": "1"})
    assert (r.status, r.ok, r.body) == (200, True, [{"name": "s1", "synced": True}])
    assert r.headers["X-Stub"] == "yes" and r.method == "GET" and r.url == f"{srv.url}/v1/switches"
    assert r.expect(200) == r.body and r.expect(200, 202) == r.body
    seen = srv.requests[0]
    assert seen.headers["X-Test"] == "1" and "Content-Type" not in seen.headers and seen.body == b""


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
def test_request_sends_json_bodies(http_stub, method):
    srv = http_stub({(method, "/v1/apps/fabric/intent"): (202, {"queued": True})})
    status, body = kit.request(method.lower(), f"{srv.url}/v1/apps/fabric/intent", {"ecmp": False})
    assert (status, body) == (202, {"queued": True})
    seen = srv.requests[0]
    assert seen.method == method and json.loads(seen.body) == {"ecmp": False}
    assert seen.headers["Content-Type"] == "application/json"


def test_request_raw_body_and_own_content_type(http_stub):
    srv = http_stub({("POST", "/x"): (200, b"")})
    r = kit.request("POST", f"{srv.url}/x", raw=b"[[[", headers={"Content-Type": "text/plain"})
    assert r.status == 200 and r.body is None and r.data == b""
    assert srv.requests[0].body == b"[[[" and srv.requests[0].headers["Content-Type"] == "text/plain"


def test_http_errors_are_replies(http_stub):
    srv = http_stub({("PUT", "/v1/apps/fabric/intent"): (422, {"error": "ecmp: not a boolean", "field": "ecmp"}),
                     ("GET", "/boom"): (500, b"<html>oops</html>")})
    r = kit.request("PUT", f"{srv.url}/v1/apps/fabric/intent", {"ecmp": "sometimes"})
    assert (r.status, r.ok, r.body["field"], r.error) == (422, False, "ecmp", "ecmp: not a boolean")
    with pytest.raises(kit.RestError) as err:
        r.expect(200)
    assert err.value.status == 422 and "HTTP 422 for PUT" in str(err.value) and "not a boolean" in str(err.value)
    r = kit.request("GET", f"{srv.url}/boom")
    assert r.status == 500 and r.error is None and r.data == b"<html>oops</html>"
    with pytest.raises(ValueError):
        r.body  # noqa: B018 - not JSON
    assert kit.request("GET", f"{srv.url}/nowhere").status == 404


def test_no_answer_raises_urllib_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(urllib.error.URLError):
        kit.request("GET", f"http://127.0.0.1:{port}/v1/health", timeout=2)


def test_rest_uses_the_labs_url_and_token(http_stub):
    srv = http_stub({("GET", "/v1/health"): (200, {"ok": True}), ("POST", "/v1/switches/s1/resync"): (202, {})})
    lab = FakeLab(rest_url=srv.url, token="t" * 40)
    assert kit.rest(lab, "GET", "/v1/health").expect() == {"ok": True}
    assert kit.rest(lab, "POST", "/v1/switches/s1/resync", headers={"X-Extra": "y"}).status == 202
    assert [s.headers["Authorization"] for s in srv.requests] == ["Bearer " + "t" * 40] * 2
    assert srv.requests[1].headers["X-Extra"] == "y"
    # a lab without a token sends no Authorization header; given headers override the lab's
    kit.rest(FakeLab(rest_url=srv.url), "GET", "/v1/health")
    kit.rest(lab, "GET", "/v1/health", headers={"Authorization": "Basic x"})
    assert "Authorization" not in srv.requests[2].headers and srv.requests[3].headers["Authorization"] == "Basic x"
