"""REST hardening against the real controller: tokens, HTTPS, limits, idle connections, OpenAPI truth.

One lab (chain3, real OVS + namespaces) brought up with ``rest_token=True`` serves
most tests; HTTPS and the start-up refusals use controller processes of their own
(loopback only, or a private network namespace with nothing but ``lo``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from ovs_scripts import kit
from ovs_scripts import lab as labmod
from ovs_scripts import netns as nsutil
from ryu_apps.manager import controller_command
from tests.integration import conftest
from tests.integration.labtools import ping

pytestmark = pytest.mark.integration
SMALL_TOPO = "lab: {name: rh, prefix: rh}\nswitches: {s1: {dpid: 0x99}}\napps: {fabric: {}}\n"


def http(method: str, url: str, body=None, headers=None, raw: bytes | None = None, timeout: float = 10,
         context: ssl.SSLContext | None = None):
    """(status, parsed JSON body, headers) of one request (:func:`ovs_scripts.kit.request`); HTTP errors
    are answers too."""
    r = kit.request(method, url, body, raw=raw, headers=headers, timeout=timeout, context=context)
    return r.status, r.body, r.headers


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "rest_hardening") as factory:
        lab = labmod.Lab.up(factory.prepare("chain3.yaml"), rundir=factory.rundir, timeout=60, rest_token=True)
        lab.factory = factory
        yield lab


class Controller:
    """A controller process of a test's own (no switches needed for REST); killed by its pid."""

    def __init__(self, tmp: Path, *options: str, netns: str | None = None, https: bool = False,
                 topology: Path | None = None, apps: list[str] | None = None):
        self.tmp, self.port, self.netns = tmp, conftest.free_port(), netns
        if topology is None:
            topology = tmp / "topo.yaml"
            topology.write_text(SMALL_TOPO)
        argv = controller_command(str(topology), apps or ["fabric"], of_port=conftest.free_port(),
                                  rest_port=self.port, state_dir=str(tmp / "state"))
        argv[-1:-1] = list(options)
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.log = tmp / f"ctl-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=str(tmp))
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, probe, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"controller exited {self.proc.returncode}: {self.text()[-2000:]}"
            return probe()

        if not kit.wait_for(ready, timeout, step=0.2):
            raise AssertionError(f"controller REST not up after {timeout} s: {self.text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


# -- the lab with a token --------------------------------------------------------------


def test_lab_writes_need_the_token_reads_stay_open(lab):
    url, good = lab.rest_url, lab.rest_headers()
    token_file = Path(lab.state.data["controller"]["rest_token_file"])
    assert token_file.parent == lab.dir and token_file.stat().st_mode & 0o777 == 0o600
    assert good["Authorization"].startswith("Bearer ") and len(lab.rest_token) >= 32
    intent = http("GET", f"{url}/v1/apps/fabric/intent")[1]  # reads: open on loopback
    for headers, names in (({}, "no Authorization header"),
                           ({"Authorization": f"Basic {lab.rest_token}"}, "scheme 'Basic' is not accepted"),
                           ({"Authorization": "Bearer " + "x" * 43}, "wrong token")):
        status, body, hdrs = http("PUT", f"{url}/v1/apps/fabric/intent", intent, headers)
        assert status == 401 and names in body["error"], body
        assert hdrs["WWW-Authenticate"].startswith("Bearer"), hdrs
        status, body, _ = http("POST", f"{url}/v1/switches/s1/resync", headers=headers)
        assert status == 401 and names in body["error"], body
    status, body, _ = http("PUT", f"{url}/v1/apps/fabric/intent?wait=1", {**intent, "nd_rate_per_host": 60}, good)
    assert status == 200 and body["nd_rate_per_host"] == 60, body
    status, body, _ = http("POST", f"{url}/v1/switches/s1/resync", headers=good)
    assert (status, body) == (202, {"resync": "s1"})
    # the lab still forwards real packets after the authenticated writes
    out = ping(lab, "h1", "10.1.0.3", count=3)
    assert out, out.output


def test_flows_diff_takes_a_bridge_name(lab):
    bridge = lab.state.data["switches"]["s1"]["bridge"]
    for name in ("s1", bridge):
        cp = lab.factory.cli("flows", name, "--diff")
        assert cp.returncode == 0, f"ovslab flows {name} --diff: rc {cp.returncode}: {cp.stderr}"
        assert cp.stdout.startswith("diff s1: 0 missing, 0 unexpected, 0 different"), cp.stdout
    status = lab.factory.cli("status", lab.name, check=True).stdout
    assert f"(REST token in {lab.dir / 'rest-token'})" in status, status


def test_deep_nesting_and_huge_integers_are_400(lab):
    url, good = lab.rest_url, lab.rest_headers()
    for raw, names in ((b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32 levels"),
                       (b'{"nd_rate_per_host": ' + b"9" * 5000 + b"}", "integer of 5000 digits")):
        status, body, _ = http("PUT", f"{url}/v1/apps/fabric/intent", raw=raw, headers=good)
        assert status == 400 and names in body["error"], (status, body)
    status, body, hdrs = http("DELETE", f"{url}/v1/health", headers=good)
    assert status == 405 and hdrs["Allow"] == "GET", (status, hdrs)
    status, body, _ = http("PUT", f"{url}/v1/apps/fabric/intent", {"router_mac": "0e:fa:b0:00:00:01", "x": 1}, good)
    assert status == 422 and body["field"] == "x", body
    for lax in ({"ecmp": 1}, {"ecmp": "true"}, {"nd_rate_per_host": "50"}):  # the schema says boolean / integer
        status, body, _ = http("PUT", f"{url}/v1/apps/fabric/intent", lax, good)
        assert status == 422, (lax, status, body)
    assert http("GET", f"{url}/v1/health")[0] == 200  # still serving


def test_idle_connections_do_not_starve_rest(lab):
    port = lab.state.data["controller"]["rest_port"]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
    try:
        t0 = time.monotonic()
        status, _, _ = http("GET", f"{lab.rest_url}/v1/health", timeout=2)
        answered = time.monotonic() - t0
        assert status == 200 and answered < 2, answered
        cp = lab.factory.cli("flows", "s1", "--diff", timeout=60)  # ovslab itself keeps working
        assert cp.returncode == 0, cp.stderr
        # and the idle ones are closed by the server (bounded keep-alive), not held forever
        deadline, closed = time.monotonic() + 45, 0
        for s in idle:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += s.recv(1) == b""
            except OSError:
                pass
        assert closed == len(idle), f"{closed} of {len(idle)} idle connections closed by the server"
        print(f"100 idle connections: REST answered in {answered:.3f} s; the server closed all of them "
              f"{time.monotonic() - t0:.1f} s after they opened")
    finally:
        for s in idle:
            s.close()


def schemathesis_run(doc: dict, url: str, headers: dict, max_examples: int = 25) -> tuple[set, int, list]:
    """Every operation of ``doc`` against ``url``: schema-valid cases, and invalid bodies where there is one.

    Returns (operations run, cases sent, failures).  A schema-valid body may still be refused
    for its meaning (422 for a MAC that is not unicast, 409 for a conflict): that is not a lie
    of the schema, so schemathesis' positive_data_acceptance is off; but a 422 for an extra key
    is (the schema allowed a key the server refuses).
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.specs.openapi import checks as oac

    def extra_key_rejected(ctx, response, case):
        if response.status_code == 422 and "Extra inputs are not permitted" in response.text:
            raise AssertionError(f"{case.method} {case.path}: schema-valid body rejected: {response.text}")

    # 413 is a refusal too: schemathesis' defaults leave it out, so a negative body of 20001
    # long-stringed reports (over the 1 MiB body limit) used to read as "accepted".
    refusals = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": refusals}}})
    schema = schemathesis.openapi.from_dict(doc, config=config)
    failures, ran, sent = [], set(), [0]
    for result in schema.get_all_operations():
        op = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if "requestBody" in doc["paths"][op.path][op.method.lower()]:  # invalid bodies must be refused
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            positive = mode == schemathesis.GenerationMode.POSITIVE

            @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                sent[0] += 1
                case.call_and_validate(base_url=url, headers=headers, excluded_checks=[oac.positive_data_acceptance],
                                       additional_checks=[extra_key_rejected] if positive else [], timeout=10)

            try:
                run()
                ran.add(f"{op.method.upper()} {op.path}")
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:1500]}")
    return ran, sent[0], failures


def test_openapi_holds_against_the_controller(lab):
    """schemathesis: every read and the documented writes, against the throwaway lab's controller."""
    url, good = lab.rest_url, lab.rest_headers()
    doc = http("GET", f"{url}/v1/openapi.json")[1]
    ops = doc["paths"]
    assert set(ops["/v1/switches/{name}/resync"]["post"]["responses"]) >= {"202", "401"}
    assert set(ops["/v1/apps/fabric/intent"]["put"]["responses"]) >= {"200", "202", "401"}
    assert doc["components"]["schemas"]["FabricIntent"]["additionalProperties"] is False
    t0 = time.monotonic()
    ran, cases, failures = schemathesis_run(doc, url, good)
    print(f"schemathesis: {len(ran)} operations, {cases} cases, {len(failures)} failures "
          f"in {time.monotonic() - t0:.1f} s")
    assert not failures, "\n".join(failures)
    assert "PUT /v1/apps/fabric/intent" in ran and "POST /v1/switches/{name}/resync" in ran


@pytest.mark.parametrize("topology,app", [("cloud_router.yaml", "cloud_router"), ("fenced_clone.yaml", "fenced_clone"),
                                          ("multicast_standby.yaml", "multicast_standby"),
                                          ("oam_ecmp_leafspine.yaml", "oam_ecmp")])
def test_openapi_holds_for_every_app(tmp_path, topology, app):
    """The same against each function app's routes (a controller of its own, no switches: REST only)."""
    ctl = Controller(tmp_path, topology=conftest.topology_path(topology), apps=["fabric", app])
    try:
        ctl.wait_ready(lambda: _answers(ctl.url + "/v1/openapi.json"))
        doc = http("GET", f"{ctl.url}/v1/openapi.json")[1]
        assert f"/v1/apps/{app}/intent" in doc["paths"]
        # what the server says is the intent, it takes back (strict validation keeps to the schema)
        intent = http("GET", f"{ctl.url}/v1/apps/{app}/intent")[1]
        status, body, _ = http("PUT", f"{ctl.url}/v1/apps/{app}/intent", intent)
        assert status in (200, 202), (status, body)
        t0 = time.monotonic()
        ran, cases, failures = schemathesis_run(doc, ctl.url, {}, max_examples=10)
        print(f"schemathesis {app}: {len(ran)} operations, {cases} cases, {len(failures)} failures "
              f"in {time.monotonic() - t0:.1f} s")
        assert not failures, "\n".join(failures)
        assert f"PUT /v1/apps/{app}/intent" in ran
    finally:
        ctl.stop()


# -- controllers of the test's own -----------------------------------------------------


def make_ca(d: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=rest-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
        "-out", "cert.pem", "-days", "1", "-extfile", "ext.cnf")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other-key.pem", "-out", "other.pem",
        "-days", "1", "-subj", "/CN=other-ca")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_https_with_a_real_tls_client(tmp_path):
    make_ca(tmp_path)
    token = tmp_path / "token"
    token.write_text("h" * 40 + "\n")
    token.chmod(0o600)
    ctl = Controller(tmp_path, "--fabric-rest-cert", str(tmp_path / "cert.pem"), "--fabric-rest-key",
                     str(tmp_path / "key.pem"), "--fabric-rest-token-file", str(token), https=True)
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    try:
        ctl.wait_ready(lambda: _answers(ctl.url + "/v1/health", trusted))
        assert http("GET", f"{ctl.url}/v1/health", context=trusted)[0] == 200
        status, body, _ = http("POST", f"{ctl.url}/v1/switches/s1/resync", context=trusted)
        assert status == 401 and "no Authorization header" in body["error"]
        status, _, _ = http("POST", f"{ctl.url}/v1/switches/s1/resync", context=trusted,
                            headers={"Authorization": "Bearer " + "h" * 40})
        assert status == 202
        # a client trusting another CA refuses the server's certificate
        with pytest.raises(urllib.error.URLError) as err:
            http("GET", f"{ctl.url}/v1/health", context=ssl.create_default_context(cafile=str(tmp_path / "other.pem")))
        assert isinstance(err.value.reason, ssl.SSLCertVerificationError), err.value
        # plain HTTP gets no answer, and the server keeps serving TLS afterwards
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            http("GET", f"http://127.0.0.1:{ctl.port}/v1/health", timeout=5)
        curl = subprocess.run(["curl", "-sS", "--cacert", str(tmp_path / "ca.pem"), f"{ctl.url}/v1/health"],
                              capture_output=True, text=True, timeout=30)
        assert curl.returncode == 0 and "compute_error" in curl.stdout, curl.stderr
        assert "Traceback" not in ctl.text().split("instantiating app os_ken.controller.ofp_handler")[-1]
    finally:
        ctl.stop()


def _answers(url: str, context=None, headers=None) -> bool:
    try:
        return http("GET", url, timeout=2, context=context, headers=headers)[0] in (200, 401)
    except (urllib.error.URLError, OSError):
        return False


def test_refuses_to_start_beyond_loopback_without_token(tmp_path):
    bad = tmp_path / "empty-token"
    bad.write_text("\n")
    for options, names in ((["--fabric-rest-host", "0.0.0.0"], "rest-host 0.0.0.0 is not a loopback address"),
                           (["--fabric-rest-token-file", str(bad)], f"rest-token-file {bad}: must hold one token"),
                           (["--fabric-rest-cert", str(tmp_path / "x.pem")],
                            "rest-cert and rest-key go together: rest-key is missing")):
        ctl = Controller(tmp_path, *options)
        try:
            rc = ctl.proc.wait(timeout=60)
        finally:
            ctl.stop()
        assert rc == 2, f"{options}: exit {rc}: {ctl.text()[-1500:]}"
        assert f"ryu-manager: {names}" in ctl.text(), ctl.text()[-1500:]
        with socket.socket() as s:  # and nothing was left listening
            assert s.connect_ex(("127.0.0.1", ctl.port)) != 0


def test_beyond_loopback_reads_need_the_token_too(tmp_path):
    """REST on 0.0.0.0 in a private namespace (only ``lo`` there): every request needs the token."""
    ns = f"{conftest.new_prefix()}-rest"
    nsutil.add_netns(ns)
    ctl = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        token = tmp_path / "token"
        token.write_text("n" * 40 + "\n")
        token.chmod(0o600)
        ctl = Controller(tmp_path, "--fabric-rest-host", "0.0.0.0", "--fabric-rest-token-file", str(token), netns=ns)

        def curl(*args: str) -> str:
            return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "5", "-o", "/dev/null",
                                   "-w", "%{http_code}", *args, f"{ctl.url}/v1/health"],
                                  capture_output=True, text=True, timeout=30).stdout

        ctl.wait_ready(lambda: curl() == "401")
        assert curl() == "401"
        assert curl("-H", "Authorization: Bearer " + "n" * 40) == "200"
        assert curl("-H", "Authorization: Bearer " + "m" * 40) == "401"
        # ovslab flows' REST client: --rest-token-file makes its reads pass
        probe = ("import sys; from ovs_scripts import flowdump as fd\n"
                 "fd.REST_AUTH['token'] = sys.argv[2] or None\n"
                 "try: print('ok', len(fd.fetch_labels(sys.argv[1])))\n"
                 "except fd.FlowdumpError as exc: print('error', exc)")
        for given, expect, names in (("", "error controller answered HTTP 401", "no Authorization header"),
                                     ("n" * 40, "ok ", "")):
            out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe, ctl.url, given],
                                 capture_output=True, text=True, timeout=60).stdout
            assert out.startswith(expect) and names in out, out
    finally:
        if ctl is not None:
            ctl.stop()
        nsutil.del_netns_if_exists(ns)
