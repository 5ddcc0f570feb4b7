"""The project's NVMe/TCP target and host on loopback, checked by Wireshark's NVMe/TCP dissector.

Each test starts ``ovs_scripts.nvme_target`` on a free loopback port, captures that port with
``tcpdump -i lo`` and reads the capture back with ``tshark -d tcp.port==PORT,nvme-tcp``: every PDU
the host sent or received decodes as NVMe/TCP (counted per type), nothing is malformed or an
expert error, digests (when on) verify, and the Connect fields Wireshark reads are the ones the
host sent.  Traffic stays on 127.0.0.1 / ::1; transfers are at most 8 MiB.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import os
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from ovs_scripts.nvme_host import NvmeError, NvmeHost, Queue, raw_connect_bytes
from ryu_apps.functions.nvme_zoning import pdu as P

REPO = Path(__file__).resolve().parents[2]
SUB = "nqn.2024-01.org.example.zoning:disk1"
SUB2 = "nqn.2024-01.org.example.zoning:disk2"
HOST = "nqn.2014-08.org.nvmexpress:uuid:6c1a4f0e-2d3b-4c5d-8e9f-0a1b2c3d4e5f"
HOST2 = "nqn.2024-01.org.example.zoning:host2"
#: Wireshark's checksum status: 1 = good (0 bad, 2 unverified)
GOOD = "1"

pytestmark = pytest.mark.skipif(not (shutil.which("tshark") and shutil.which("tcpdump")),
                                reason="needs tshark and tcpdump (Debian: tshark, tcpdump)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_line(stream, text: str, timeout: float = 10.0) -> str:
    """Read lines of a child's pipe until one contains ``text`` (bounded)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        line = line.decode() if isinstance(line, bytes) else line
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no {text!r} within {timeout}s; got {seen!r}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End a child this test started (by its pid), waiting boundedly."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def target(tmp_path: Path, *args: str, host: str = "127.0.0.1", port: int | None = None):
    """A running nvme_target; yields (port, log file)."""
    port = port or free_port(host)
    log = tmp_path / f"target-{port}.log"
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "ovs_scripts.nvme_target", "--listen", addr, "--log", str(log),
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_line(proc.stdout, "listening on").strip() == f"listening on {addr}"
        yield port, log
    finally:
        stop(proc)


def connect_log(log: Path) -> list[dict]:
    return [json.loads(line.split(" connect ", 1)[1]) for line in log.read_text().splitlines() if " connect {" in line]


@contextlib.contextmanager
def capture(tmp_path: Path, port: int):
    """tcpdump of ``port`` on lo; the pcap path is usable after the block."""
    pcap = tmp_path / f"nvme-{port}.pcap"
    # -Z root: tcpdump would drop to its own user and could not write into pytest's tmp dir;
    # -B: room for 8 MiB of traffic even if tcpdump is slow to be scheduled (2 cores, CI beside us)
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "32768", "-U", "-Z", "root",
                             "-w", str(pcap), "tcp", "port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_line(proc.stderr, "listening on")
        yield pcap
        # libpcap hands a ring block over when it is full or 1 s old, and SIGINT loses the block
        # being filled (--immediate-mode would, but gives each tiny segment a 256 KiB slot)
        time.sleep(1.2)
    finally:
        stop(proc, signal.SIGINT)
    err = proc.stderr.read()
    dropped = [line for line in err.splitlines() if "dropped by kernel" in line]
    assert not dropped or dropped[0].startswith("0 "), err


def tshark(pcap: Path, port: int, *args: str) -> str:
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},nvme-tcp", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def fields(pcap: Path, port: int, names: list[str], where: str, *opts: str) -> list[list[str]]:
    """One row per matching frame; every occurrence of a field, comma separated."""
    args = ["-Y", where, "-T", "fields", "-E", "occurrence=a", *opts]
    for n in names:
        args += ["-e", n]
    return [line.split("\t") for line in tshark(pcap, port, *args).splitlines()]


def pdu_types(pcap: Path, port: int, *opts: str) -> collections.Counter:
    """How many PDUs of each type Wireshark decoded (several per frame are comma separated)."""
    c: collections.Counter = collections.Counter()
    for (types,) in fields(pcap, port, ["nvme-tcp.type"], "nvme-tcp", *opts):
        c.update(int(t) for t in types.split(",") if t)
    return c


def assert_clean(pcap: Path, port: int, *opts: str) -> None:
    bad = tshark(pcap, port, "-Y", "_ws.malformed || _ws.expert.severity >= 0x00800000 || nvme-tcp.unknown_data",
                 *opts)
    assert bad.strip() == "", f"malformed or expert errors:\n{bad}"


def traced_counts(trace: list) -> collections.Counter:
    return collections.Counter(t for _port, _dir, t in trace)


def connects_seen(pcap: Path, port: int) -> list[tuple[str, str, str]]:
    rows = fields(pcap, port, ["nvme.fabrics.cmd.connect.qid", "nvme.fabrics.cmd.connect.data.hostnqn",
                               "nvme.fabrics.cmd.connect.data.subnqn"], "nvme.fabrics.cmd.connect.data.hostnqn")
    return [tuple(r) for r in rows]


# -- the tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("digests", [False, True], ids=["no-digests", "digests"])
def test_session_decodes_in_wireshark(tmp_path, digests):
    entries = [f"{SUB}@127.0.0.1:4420", f"{SUB2}@[fd00::7]:4421"]
    port = free_port()
    with capture(tmp_path, port) as pcap, \
            target(tmp_path, "--subsystem", f"{SUB}=16", "--discovery", *(a for e in entries for a in ("--entry", e)),
                   port=port) as (_, log):
        trace: list = []
        host = NvmeHost("127.0.0.1", port, HOST, hdgst=digests, ddgst=digests, trace=trace)
        found = host.discover()
        with host.connect(SUB, io_queues=2) as ctrl:
            assert (ctrl.blocks, ctrl.block_size, len(ctrl.io)) == (16 << 11, 512, 2)
            data = os.urandom(256 << 10)
            ctrl.write(64, data)                    # R2T + H2CData
            ctrl.write(0, b"\x5a" * 4096)           # in the capsule
            assert ctrl.read(64, len(data) // 512) == data
            assert ctrl.read(0, 8) == b"\x5a" * 4096
            ctrl.keep_alive()
    assert found == [P.DiscoveryEntry(SUB, "127.0.0.1", "4420"), P.DiscoveryEntry(SUB2, "fd00::7", "4421")]

    checks = ("-o", "nvme-tcp.check_hdgst:TRUE", "-o", "nvme-tcp.check_ddgst:TRUE")
    assert_clean(pcap, port, *checks)
    assert pdu_types(pcap, port) == traced_counts(trace)
    assert connects_seen(pcap, port) == [("0", HOST, P.DISCOVERY_NQN), ("0", HOST, SUB), ("1", HOST, SUB),
                                         ("2", HOST, SUB)]
    assert [(c["qid"], c["hostnqn"], c["subnqn"], c["status"]) for c in connect_log(log)] == [
        (0, HOST, P.DISCOVERY_NQN, "ok"), (0, HOST, SUB, "ok"), (1, HOST, SUB, "ok"), (2, HOST, SUB, "ok")]

    rows = fields(pcap, port, ["nvme-tcp.type", "nvme-tcp.flags", "nvme-tcp.hdgst.status", "nvme-tcp.ddgst.status"],
                  "nvme-tcp.type != 0 && nvme-tcp.type != 1", *checks)
    assert rows
    for types, flags, hstatus, dstatus in rows:
        for f in flags.split(","):
            assert bool(int(f, 16) & P.HDGSTF) == digests, (types, flags)
        if digests:
            assert set(hstatus.split(",")) == {GOOD}, rows
            assert set(dstatus.split(",")) <= {GOOD, ""}, rows
    if digests:
        assert any(GOOD in d for *_, d in rows), "no data digest verified"

    records = fields(pcap, port, ["nvme.cmd.get_logpage.identify.rcrd.subnqn",
                                  "nvme.cmd.get_logpage.identify.rcrd.traddr",
                                  "nvme.cmd.get_logpage.identify.rcrd.trsvcid"], "nvme.cmd.get_logpage.identify.rcrd")
    assert [tuple(v.strip() for v in f.split(",")) for f in records[-1]] == [(SUB, SUB2), ("127.0.0.1", "fd00::7"),
                                                                            ("4420", "4421")]
    idents = fields(pcap, port, ["nvme.cmd.identify.ctrl.subnqn"], "nvme.cmd.identify.ctrl.subnqn")
    assert [r[0] for r in idents] == [P.DISCOVERY_NQN, SUB]


def test_write_read_8mib_over_4_queues(tmp_path):
    port = free_port()
    with capture(tmp_path, port) as pcap, target(tmp_path, "--subsystem", f"{SUB}=16", port=port):
        out = subprocess.run([sys.executable, "-m", "ovs_scripts.nvme_host", "write-read", "--addr", "127.0.0.1",
                              "--port", str(port), "--hostnqn", HOST, "--subnqn", SUB, "--queues", "4", "--mib", "8"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout)
    assert res["written_mib"] == 8 and res["io_queues"] == 4
    assert res["sha256_read"] == res["sha256_written"]
    assert_clean(pcap, port)
    types = pdu_types(pcap, port)
    commands = (8 << 20) // (128 << 10)                 # MDTS 128 KiB per command, 32 KiB per data PDU
    assert types[P.R2T] == commands and types[P.H2C_DATA] == 4 * commands
    assert types[P.C2H_DATA] >= 4 * commands
    assert types[P.ICREQ] == types[P.ICRESP] == 5
    queues = {r[0] for r in fields(pcap, port, ["tcp.stream"], "nvme-tcp.type == 7 && nvme-tcp.data.length")}
    assert len(queues) >= 4, "reads were not spread over the I/O queues"


def test_ipv6_loopback(tmp_path):
    port = free_port("::1")
    with capture(tmp_path, port) as pcap, target(tmp_path, "--subsystem", f"{SUB}=4", host="::1", port=port):
        trace: list = []
        host = NvmeHost("::1", port, HOST2, trace=trace)
        with host.connect(SUB, io_queues=1) as ctrl:
            ctrl.write(1, b"six" * 512)
            assert ctrl.read(1, 3) == b"six" * 512
    assert_clean(pcap, port)
    assert pdu_types(pcap, port) == traced_counts(trace)
    assert connects_seen(pcap, port) == [("0", HOST2, SUB), ("1", HOST2, SUB)]


def test_connect_in_one_byte_segments(tmp_path):
    """The Connect cut into 1-byte TCP segments (what a fabric must reassemble) is still one Connect."""
    port = free_port()
    with capture(tmp_path, port) as pcap, target(tmp_path, "--subsystem", f"{SUB}=1", port=port) as (_, log):
        q = Queue("127.0.0.1", port)
        try:
            for b in raw_connect_bytes(SUB, HOST):
                q.sock.send(bytes([b]))
                # TCP_NODELAY is set; the pause keeps Linux's autocorking from merging the bytes
                time.sleep(0.0005)
            ic, resp = q.recv(), q.recv()
            assert ic.type == P.ICRESP and resp.type == P.CAPSULE_RESP
            comp = P.parse_cqe(resp.raw_header[8:])
            assert comp.status == 0 and comp.dw0 > 0
        finally:
            q.close()
    sizes = collections.Counter(r[0] for r in fields(pcap, port, ["tcp.len"], f"tcp.dstport == {port} && tcp.len > 0"))
    assert sizes["1"] > 0.9 * len(raw_connect_bytes(SUB, HOST)), sizes
    assert connects_seen(pcap, port) == [("0", HOST, SUB)]
    assert_clean(pcap, port)
    assert [c["hostnqn"] for c in connect_log(log)] == [HOST]


@pytest.mark.parametrize("subnqn,hostnqn,ipo", [
    ("nqn.2024-01.org.example.zoning:nothere", HOST, 256),
    (SUB, b"nqn.2024-01.org.example:bad\xff", 512),
    (SUB, b"h" * 256, 512),
])
def test_connect_refused_with_invalid_parameters(tmp_path, subnqn, hostnqn, ipo):
    with target(tmp_path, "--subsystem", f"{SUB}=1") as (port, log):
        q = Queue("127.0.0.1", port)
        try:
            q.send(raw_connect_bytes(subnqn, hostnqn))
            assert q.recv().type == P.ICRESP
            comp = P.parse_cqe(q.recv().raw_header[8:])
        finally:
            q.close()
    assert comp.status == P.SC_CONNECT_INVALID_PARAM | P.DNR
    assert comp.dw0 == 1 << 16 | ipo                 # IATTR 1 (in the data), IPO: the field
    assert connect_log(log)[0]["status"].startswith("refused")


def test_io_queue_must_name_a_controller_of_the_same_host(tmp_path):
    with target(tmp_path, "--subsystem", f"{SUB}=1") as (port, _):
        with NvmeHost("127.0.0.1", port, HOST).connect(SUB, io_queues=1) as ctrl:
            other = NvmeHost("127.0.0.1", port, HOST2).queue()
            try:
                with pytest.raises(NvmeError) as e:
                    other.connect(2, SUB, HOST2, bytes(16), ctrl.cntlid, 127)
            finally:
                other.close()
            assert e.value.status == P.SC_CONNECT_INVALID_PARAM | P.DNR


def test_malformed_pdu_gets_c2h_term_req_then_close(tmp_path):
    port = free_port()
    bad = bytes([P.CAPSULE_CMD, 0, 24, 0]) + (24).to_bytes(4, "little")     # hlen 24 for a CapsuleCmd
    with capture(tmp_path, port) as pcap, target(tmp_path, "--subsystem", f"{SUB}=1", port=port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(P.icreq() + bad)
            got = b""
            while chunk := s.recv(4096):            # until the target closes
                got += chunk
    icresp, term = (P.parse_pdu(raw) for raw in P.PDUStream().feed(got))
    assert icresp.type == P.ICRESP and term.type == P.C2H_TERM
    assert P.parse_term(term) == P.Term(P.FES_INVALID_HEADER, 2, bad)
    # Wireshark reads the termination request: Invalid PDU Header Field, at offset 2 (hlen)
    rows = fields(pcap, port, ["nvme-tcp.c2htermreq.fes", "nvme-tcp.c2htermreq.phfo"], "nvme-tcp.type == 3")
    assert [[int(v, 0) for v in r] for r in rows] == [[P.FES_INVALID_HEADER, 2]]


def test_header_digest_mismatch_is_fatal(tmp_path):
    with target(tmp_path, "--subsystem", f"{SUB}=1") as (port, _):
        q = Queue("127.0.0.1", port, hdgst=True)
        try:
            q.handshake()
            raw = bytearray(P.capsule_cmd(P.connect_sqe(1, 0, 31, 0), P.connect_data(bytes(16), 0xFFFF, SUB, HOST),
                                          hdgst=True))
            raw[72] ^= 0xFF
            q.send(bytes(raw))
            with pytest.raises(NvmeError) as e:
                q.recv()
        finally:
            q.close()
    assert e.value.fes == P.FES_HEADER_DIGEST


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_discovery_entries_per_host_from_a_unix_socket_url(tmp_path):
    """``--entries-url unix:/sock:/path``: the log page lists what the URL answers for that host."""
    zones = {HOST: [{"subnqn": SUB, "traddr": "127.0.0.1", "trsvcid": "4420"}], HOST2: []}
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            url = urllib.parse.urlsplit(self.path)
            hostnqn = urllib.parse.parse_qs(url.query)["hostnqn"][0]
            asked.append((url.path, hostnqn))
            body = json.dumps(zones[hostnqn]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self):
            return "unix"

        def log_message(self, *args):
            pass

    sock = tmp_path / "zones.sock"
    srv = _UnixHTTP(str(sock), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with target(tmp_path, "--discovery", "--entries-url", f"unix:{sock}:/v1/nvme/discovery") as (port, _):
            cli = [sys.executable, "-m", "ovs_scripts.nvme_host", "discover", "--addr", "127.0.0.1", "--port",
                   str(port)]
            one = subprocess.run([*cli, "--hostnqn", HOST], cwd=REPO, capture_output=True, text=True, timeout=60)
            two = subprocess.run([*cli, "--hostnqn", HOST2], cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        srv.shutdown()
        srv.server_close()
    assert json.loads(one.stdout) == [{"subnqn": SUB, "traddr": "127.0.0.1", "trsvcid": "4420", "adrfam": 1,
                                       "subtype": 2}]
    assert json.loads(two.stdout) == []
    assert {h for _, h in asked} == {HOST, HOST2} and {p for p, _ in asked} == {"/v1/nvme/discovery"}


def test_keep_alive_timeout_ends_the_controller(tmp_path):
    """An admin queue with KATO set and no Keep Alive is dropped after KATO (+ the target's grace)."""
    with target(tmp_path, "--subsystem", f"{SUB}=1") as (port, log):
        host = NvmeHost("127.0.0.1", port, HOST, timeout=5)
        q = host.queue()
        try:
            q.connect(0, SUB, HOST, host.hostid, kato_ms=300)
            t0 = time.monotonic()
            with pytest.raises(ConnectionResetError):
                q.recv()
            assert 1.0 < time.monotonic() - t0 < 4
        finally:
            q.close()
    assert "keep-alive timeout" in log.read_text()
