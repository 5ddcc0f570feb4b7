"""The documented TLS option: switch and controller authenticate each other with certificates."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from ovs_scripts import kit
from ovs_scripts.ovsdb import BridgeConfig, Ovsdb
from ovs_scripts.sandbox import Sandbox

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pki(d) -> None:
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca in ("ctl-ca", "sw-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}-key.pem", "-out", f"{ca}.pem",
            "-days", "1", "-subj", f"/CN={ca}")
    # the switch's certificate names it (s1); "other" is a valid certificate of another switch
    for who, ca, cn in (("ctl", "ctl-ca", "ctl"), ("sw", "sw-ca", "s1"), ("rogue", "ctl-ca", "s1"),
                        ("other", "sw-ca", "s2")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}-key.pem", "-out", f"{who}.csr",
            "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
            "-CAcreateserial", "-out", f"{who}-cert.pem", "-days", "1")


def switch_synced(rest_port: int, timeout: float) -> bool:
    def synced() -> bool:
        try:
            r = kit.request("GET", f"http://127.0.0.1:{rest_port}/v1/switches", timeout=2)
        except OSError:
            return False
        return r.ok and r.body[0]["synced"]

    return kit.wait_for(synced, timeout, step=0.2)


@pytest.mark.parametrize("switch_identity,expect", [("sw", True), ("rogue", False), ("other", False)])
def test_openflow_over_tls_with_client_certificates(tmp_path, switch_identity, expect):
    make_pki(tmp_path)
    of_port, rest_port = free_port(), free_port()
    topo = tmp_path / "topo.yaml"
    topo.write_text(f"lab: {{name: tls, prefix: tl}}\ncontroller: {{of_port: {of_port}, rest_port: {rest_port}}}\n"
                    "switches: {s1: {dpid: 0x77}}\napps: {fabric: {}}\n")
    sb = Sandbox(tmp_path / "ovs")
    sb.start()
    ctl = None
    try:
        with Ovsdb(sb.remote) as db:
            db.set_ssl(str(tmp_path / f"{switch_identity}-key.pem"), str(tmp_path / f"{switch_identity}-cert.pem"),
                       str(tmp_path / "ctl-ca.pem"))
            db.add_bridge(BridgeConfig("tl-s1", dpid=0x77, controller=f"ssl:127.0.0.1:{of_port}"))
        ctl = subprocess.Popen(
            [sys.executable, "-m", "ryu_apps.manager", "--ofp-ssl-listen-port", str(of_port),
             "--ofp-tcp-listen-port", str(free_port()),
             "--ctl-privkey", str(tmp_path / "ctl-key.pem"), "--ctl-cert", str(tmp_path / "ctl-cert.pem"),
             "--ca-certs", str(tmp_path / "sw-ca.pem"),
             "--fabric-topology", str(topo), "--fabric-rest-port", str(rest_port), "ryu_apps.fabric"],
            stdout=open(tmp_path / "ctl.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        # a switch whose certificate the controller's CA did not sign is refused, and so is one
        # whose (valid) certificate names another switch
        assert switch_synced(rest_port, 20 if expect else 6) is expect, (tmp_path / "ctl.log").read_text()[-2000:]
        if switch_identity == "other":
            health = kit.request("GET", f"http://127.0.0.1:{rest_port}/v1/health", timeout=2).expect(200)
            refused = health["refused_connections"]
            assert refused["counts"].get("s1:certificate", 0) >= 1, refused
            assert "['s2']" in refused["recent"][-1]["detail"], refused
    finally:
        if ctl is not None:
            os.killpg(ctl.pid, signal.SIGTERM)
            ctl.wait(timeout=10)
        sb.stop()
