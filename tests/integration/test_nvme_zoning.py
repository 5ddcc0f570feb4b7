"""NVMe-oF zoning on real OVS: the controller reads every NVMe/TCP Connect and admits only zoned pairs.

One lab (``topologies/nvme_zoning.yaml``): hosts h1, h2 on s1 and h3 on s2; the
project's NVMe/TCP target on t1 (vol1, vol2 on port 4420) and its discovery
controller on d1, both on s3.  h1 is zoned to vol1 and bound to its port; h2
is zoned to nothing; h3 (unbound) to vol1 and vol2.  Hosts run
``ovs_scripts.nvme_host`` in their namespaces: the kernel's TCP, real packets.
The target logs every Connect it receives, and a capture on t1 is read by
tshark: what never reached the target is known, not assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovs_scripts import kit, nvme_lab
from ovs_scripts.lab import Lab
from ovs_scripts.nvme_lab import host_tool, target_connects
from tests.integration.conftest import RUN_BASE, LabFactory, _skip_reason

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOPO = REPO / "topologies" / "nvme_zoning.yaml"
PY = sys.executable
T4, T6, D4 = "10.63.0.1", "fd00:63::1", "10.63.0.9"
NQN = "nqn.2026-12.io.lab:"
VOL1, VOL2 = NQN + "vol1", NQN + "vol2"


def hostnqn(h: str) -> str:
    return f"{NQN}host-{h}"


def call(lab, method, path, body=None):
    return tuple(kit.rest(lab, method, path, body, timeout=60))


def nvme(lab, host: str, *args: str, timeout: float = 120) -> dict | list:
    return host_tool(lab, host, *args, timeout=timeout)


def connections(lab) -> dict:
    return call(lab, "GET", "/v1/nvme/connections")[1]


def attempts(lab) -> list[dict]:
    return call(lab, "GET", "/v1/nvme/attempts")[1]


def IoLoop(lab, host: str, subnqn: str, addr: str = T4, queues: int = 4) -> nvme_lab.IoLoop:
    """I/O from ``host`` (its own NQN) in its own 8 MiB of the namespace."""
    return nvme_lab.IoLoop(lab, host, hostnqn(host), subnqn, addr, queues=queues, base_lba=16384 * int(host[1:]))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    factory = LabFactory(tmp_path_factory.mktemp("nvme"), RUN_BASE / f"nvme-{os.getpid()}")
    lab = Lab.up(factory.prepare(TOPO), rundir=factory.rundir, timeout=60)
    try:
        assert kit.wait_for(lambda: call(lab, "GET", "/v1/nvme")[0] == 200, 10)
        yield lab
    finally:
        errors = factory.cleanup()
        shutil.rmtree(factory.rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


@pytest.fixture()
def quiet(lab):
    """Each test starts with no admitted connection left over (their FIN copies end them)."""
    assert kit.wait_for(lambda: not connections(lab)["admitted"], 10), connections(lab)
    yield lab


def tcpdump(lab, host: str, bpf: str, path: Path):
    proc = lab.popen(host, ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(path), bpf],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "listening on" in proc.stderr.readline()
    return proc


def stop(proc) -> None:
    time.sleep(1.2)  # libpcap writes its last, partly filled block only if given the time
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)


def tshark_connects(pcap: Path) -> list[tuple[str, str, str]]:
    """(source address, hostnqn, subnqn) of every Connect capsule in ``pcap`` (tshark's NVMe/TCP dissector)."""
    cp = subprocess.run(["tshark", "-r", str(pcap), "-Y", "nvme.fabrics.cmd.connect.data.hostnqn", "-T", "fields",
                         "-e", "ip.src", "-e", "ipv6.src", "-e", "nvme.fabrics.cmd.connect.data.hostnqn",
                         "-e", "nvme.fabrics.cmd.connect.data.subnqn"], capture_output=True, text=True, check=True)
    return [(r[0] or r[1], r[2], r[3]) for r in (ln.split("\t") for ln in cp.stdout.splitlines() if ln.strip())]


def test_a_zoned_host_writes_and_reads_back_64_mib_over_an_admin_and_four_io_queues(quiet):
    lab = quiet
    before = len(target_connects(lab))
    r = nvme(lab, "h1", "write-read", "--addr", T4, "--port", "4420", "--hostnqn", hostnqn("h1"),
             "--subnqn", VOL1, "--queues", "4", "--mib", "64")
    print(f"zoned: {r}")
    assert r.get("sha256_written") and r["sha256_written"] == r["sha256_read"], r
    seen = target_connects(lab)[before:]
    assert sorted(c["qid"] for c in seen) == [0, 1, 2, 3, 4] and {c["hostnqn"] for c in seen} == {hostnqn("h1")}
    # every queue was decided by the controller, and each pair is gone once the host closed it
    assert kit.wait_for(lambda: not connections(lab)["admitted"], 10), connections(lab)
    status, info = call(lab, "GET", "/v1/nvme")
    assert info["counters"]["admitted"] >= 5


def test_an_unzoned_hosts_connect_never_reaches_the_target_and_both_ends_are_reset(quiet, tmp_path):
    lab = quiet
    if shutil.which("tshark") is None:
        pytest.skip("tshark (Debian) is not installed")
    pcap = tmp_path / "t1.pcap"
    cap = tcpdump(lab, "t1", "tcp port 4420", pcap)
    before = len(target_connects(lab))
    try:
        r = nvme(lab, "h2", "connect", "--addr", T4, "--port", "4420", "--hostnqn", hostnqn("h2"), "--subnqn", VOL1)
        ok = nvme(lab, "h3", "connect", "--addr", T6, "--port", "4420", "--hostnqn", hostnqn("h3"), "--subnqn", VOL2)
    finally:
        stop(cap)
    assert r.get("kind") == "ConnectionResetError", r
    assert "error" not in ok, ok
    assert {c["hostnqn"] for c in target_connects(lab)[before:]} == {hostnqn("h3")}  # (its admin and I/O queue)
    # the outside judge: tshark finds h3's Connect on the target's wire, and none from h2
    seen = tshark_connects(pcap)
    assert ("fd00:62::1", hostnqn("h3"), VOL2) in seen and not any(s[0] == "10.61.0.2" for s in seen), seen
    # the target got a reset for the connection it had answered the ICReq on
    cp = subprocess.run(["tshark", "-r", str(pcap), "-Y", "ip.src == 10.61.0.2 && tcp.flags.reset == 1"],
                        capture_output=True, text=True, check=True)
    assert cp.stdout.strip(), "no reset reached the target"
    last = [a for a in attempts(lab) if a["event"] == "refused"][-1]
    assert (last["hostnqn"], last["subnqn"], last["host"]) == (hostnqn("h2"), VOL1, "h2")
    assert "no zone" in last["why"]


def test_a_host_claiming_another_hosts_bound_nqn_is_refused(quiet):
    lab = quiet
    before = len(target_connects(lab))
    r = nvme(lab, "h2", "connect", "--addr", T4, "--port", "4420", "--hostnqn", hostnqn("h1"), "--subnqn", VOL1)
    assert r.get("kind") == "ConnectionResetError", r
    assert target_connects(lab)[before:] == []
    last = attempts(lab)[-1]
    assert last["host"] == "h2" and "bound to h1" in last["why"] and "stolen" in last["why"], last
    # the same NQN from its own port is fine
    ok = nvme(lab, "h1", "connect", "--addr", T4, "--port", "4420", "--hostnqn", hostnqn("h1"), "--subnqn", VOL1)
    assert "error" not in ok, ok


def test_discovery_lists_exactly_the_zoned_subsystems_per_host(quiet):
    lab = quiet
    want = {"h1": {VOL1}, "h2": set(), "h3": {VOL1, VOL2}}
    for host, subs in want.items():
        entries = nvme(lab, host, "discover", "--addr", D4, "--port", "8009", "--hostnqn", hostnqn(host))
        assert isinstance(entries, list), entries
        assert {e["subnqn"] for e in entries} == subs, (host, entries)
        assert {(e["traddr"], e["trsvcid"]) for e in entries} == ({(T4, "4420"), (T6, "4420")} if subs else set())


def test_revoking_a_host_resets_its_live_connections_at_once_and_readding_it_needs_no_restart(quiet):
    lab = quiet
    other = IoLoop(lab, "h1", VOL1, queues=2)      # must not notice anything
    victim = IoLoop(lab, "h3", VOL1, queues=4)
    time.sleep(1.0)
    t0 = time.time()
    status, body = call(lab, "DELETE", f"/v1/nvme/zone-groups/prod/zones/web/hosts/{hostnqn('h3')}")
    answered = time.time() - t0
    assert status == 200 and len(body["revoked"]) == 5, body
    assert kit.wait_for(lambda: victim.proc.poll() is not None, 5), "the revoked host's I/O did not stop"
    r = victim.result()
    took = r["t_error"] - t0 if r["t_error"] else None
    print(f"revocation: I/O stopped {took * 1000:.0f} ms after the REST call (answered in {answered * 1000:.0f} ms, "
          f"{body['seconds']}; {r['ops']} ops before): {r['error']}")
    assert r["error"] and ("Reset" in r["error"] or "reset" in r["error"]), r
    assert took is not None and took < 0.1, took
    time.sleep(0.5)
    o = other.result()
    assert o["error"] is None and o["ops"] > 0, o
    # its reconnect is refused; back in the zone, it connects (no controller restart)
    again = nvme(lab, "h3", "connect", "--addr", T4, "--port", "4420", "--hostnqn", hostnqn("h3"), "--subnqn", VOL1)
    assert again.get("kind") == "ConnectionResetError", again
    zone = {"name": "web", "hosts": [hostnqn("h3")], "subsystems": [VOL1, VOL2]}
    status, body = call(lab, "PUT", "/v1/nvme/zone-groups/prod/zones/web", zone)
    assert status == 200, body
    back = nvme(lab, "h3", "write-read", "--addr", T4, "--port", "4420", "--hostnqn", hostnqn("h3"),
                "--subnqn", VOL1, "--queues", "2", "--mib", "4")
    assert back.get("sha256_read") == back.get("sha256_written"), back


#: sends raw bytes to the target from inside a host: ``mode`` one of split (1-byte segments), whole
RAW = r"""
import json, socket, sys, time
addr, port, hexdata, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = bytes.fromhex(hexdata)
s = socket.create_connection((addr, port), timeout=8 if mode == "split" else 3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
got, out = b"", {}
try:
    if mode == "split":  # one segment per byte, ~300 a second: within the controller's packet-in budget
        for b in data:
            s.send(bytes([b]))
            time.sleep(0.003)
    elif mode == "split8":  # the ICReq, then the Connect in 8 segments
        s.sendall(data[:128])
        s.recv(128)
        step = -(-(len(data) - 128) // 8)
        for i in range(128, len(data), step):
            s.send(data[i:i + step])
            time.sleep(0.01)
    else:
        s.sendall(data)
    # what comes back: an ICResp (128 bytes) and the Connect's response (24) when admitted; a
    # reset (after the ICResp when the ICReq was good) when refused
    while len(got) < (24 if mode == "split8" else 152):
        chunk = s.recv(65536)
        if not chunk:
            out["closed"] = True
            break
        got += chunk
except OSError as exc:
    out["error"] = type(exc).__name__
out["answered"] = len(got)
print(json.dumps(out))
"""


def _raw(lab, host: str, data: bytes, mode: str = "whole") -> dict:
    cp = lab.exec(host, [PY, "-c", RAW, T4, "4420", data.hex(), mode], check=False, timeout=30)
    return json.loads(cp.stdout.strip().splitlines()[-1])


def _bad_pdu_cases():
    from ovs_scripts.nvme_host import raw_connect_bytes
    from ryu_apps.functions.nvme_zoning import pdu

    good = raw_connect_bytes(VOL1, hostnqn("h1"))
    ic, capsule = good[:128], good[128:]
    nqn_at = 128 + 72 + 512                   # HOSTNQN in the Connect data
    yield "plen lies", ic[:4] + (4096).to_bytes(4, "little") + ic[8:] + capsule, "whole", "reset"
    yield "hlen wrong", ic[:2] + bytes([64]) + ic[3:] + capsule, "whole", "reset"
    yield "connect in 8 segments", good, "split8", "admitted"
    # held bytes are not acknowledged (nothing reached the target): a host sending one byte per
    # segment is held to its congestion window (about 10 segments in flight, then retransmission
    # timers) and cannot finish its Connect before the Connect timeout: it is reset then
    yield "connect in 1-byte segments", good, "split", "timeout"
    yield "hostnqn not NUL-terminated", good[:nqn_at] + b"n" * 256 + good[nqn_at + 256:], "whole", "reset"
    yield "blank hostnqn", good[:nqn_at] + bytes(256) + good[nqn_at + 256:], "whole", "reset"
    long_nqn = (hostnqn("h1") + "x" * 300).encode()[:255] + b"\0"
    yield "300-byte hostnqn", good[:nqn_at] + long_nqn + good[nqn_at + 256:], "whole", "reset"
    yield "TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + bytes(160), "whole", "reset"
    yield "identify before connect", ic + pdu.capsule_cmd(pdu.identify(1, 1), b""), "whole", "reset"


@pytest.mark.parametrize("name, data, mode, outcome", list(_bad_pdu_cases()), ids=lambda v: v if isinstance(v, str)
                         and len(v) < 40 else "")
def test_bad_pdus_get_their_documented_outcome_and_disturb_no_one(quiet, name, data, mode, outcome):
    lab = quiet
    other = IoLoop(lab, "h3", VOL2, queues=1)
    before = len(target_connects(lab))
    r = _raw(lab, "h1", data, mode)
    o = other.result()
    assert o["error"] is None and o["ops"] > 0, (name, o)
    if outcome == "admitted":
        want = 24 if mode == "split8" else 152   # (split8 read the ICResp itself)
        assert r == {"answered": want}, (name, r, attempts(lab)[-3:])  # the ICResp and the Connect's answer
        assert [c["qid"] for c in target_connects(lab)[before:]] == [0], name
    else:
        assert r.get("error") == "ConnectionResetError" or r.get("closed"), (name, r)
        new = target_connects(lab)[before:]
        assert new == [], (name, new)                               # nothing reached the target's Connect
        last = attempts(lab)[-1]
        assert last["event"] == "refused", (name, last)
        assert ("no complete Connect" in last["why"]) == (outcome == "timeout"), (name, last)


def test_a_controller_restart_keeps_admitted_connections_and_changes_no_flow(quiet):
    """The admitted pairs are saved before a Connect is released: a restarted controller computes the
    same flows (no switch changes), I/O running through the restart never notices, and the pairs
    still end when the host closes."""
    lab = quiet
    io = IoLoop(lab, "h1", VOL1, queues=2)
    time.sleep(0.5)
    held = {c["id"] for c in connections(lab)["admitted"]}
    assert len(held) == 3, held
    lab.restart_controller()
    assert kit.wait_for(lambda: call(lab, "GET", "/v1/nvme")[0] == 200, 20)
    changed = {s["name"]: s["last_changes"] for s in call(lab, "GET", "/v1/switches")[1]
               if any(s["last_changes"].values())}
    assert not changed, f"the restart changed {changed}"
    assert {c["id"] for c in connections(lab)["admitted"]} == held
    time.sleep(0.5)
    r = io.result()
    assert r["error"] is None and r["ops"] > 0, r
    assert kit.wait_for(lambda: not connections(lab)["admitted"], 10), connections(lab)


def test_tls_is_admitted_unread_only_where_every_subsystem_of_the_listener_allows_it(quiet):
    lab = quiet
    status, info = call(lab, "GET", "/v1/nvme")
    intent = info["intent"]
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(160)
    try:
        allow = json.loads(json.dumps(intent))
        allow["subsystems"][0]["tls"] = "allow"          # vol1 only: vol2 shares the listener
        status, body = call(lab, "PUT", "/v1/nvme", allow)
        assert status == 422 and body["field"] == "subsystems[1].tls", body
        for s in allow["subsystems"]:
            s["tls"] = "allow"
        status, body = call(lab, "PUT", "/v1/nvme?wait=1", allow)
        assert status == 200, body
        before = call(lab, "GET", "/v1/nvme")[1]["counters"].get("admitted", 0)
        refused = len([a for a in attempts(lab) if a["event"] == "refused"])
        _raw(lab, "h1", hello)                            # reaches the target, which refuses it itself
        assert call(lab, "GET", "/v1/nvme")[1]["counters"].get("admitted", 0) == before + 1
        assert len([a for a in attempts(lab) if a["event"] == "refused"]) == refused
    finally:
        status, body = call(lab, "PUT", "/v1/nvme?wait=1", intent)
        assert status == 200, body
    r = _raw(lab, "h1", hello)                            # refused again by default
    assert r.get("error") == "ConnectionResetError" or r.get("closed"), r
    assert "TLS" in attempts(lab)[-1]["why"]


def scrape(lab) -> dict[tuple, float]:
    """``GET /metrics`` read by prometheus_client's own parser: (sample name, labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(lab.state.data["controller"]["rest_url"] + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_what_the_traffic_did(quiet):
    """Counters move by what the traffic did: 5 admissions for an admin and 4 I/O queues, a refusal,
    packet-ins handled, the zoning's flows on the host's switch while the queues are open."""
    lab = quiet
    before = scrape(lab)

    def delta(after, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    io = IoLoop(lab, "h1", VOL1, queues=4)
    during = scrape(lab)
    r = io.result()
    assert r["error"] is None, r
    nvme(lab, "h2", "connect", "--addr", T4, "--port", "4420", "--hostnqn", hostnqn("h2"), "--subnqn", VOL1)
    assert kit.wait_for(lambda: not connections(lab)["admitted"], 10)
    after = scrape(lab)
    assert delta(after, "fabric_app_events_total", app="nvme_zoning", event="admitted") == 5
    assert delta(after, "fabric_app_events_total", app="nvme_zoning", event="refused") == 1
    # about 7 punts per connection (handshake, ICReq, ICResp, the Connect) at two edges, 6 connections
    assert delta(after, "fabric_packet_ins_total", outcome="handled") >= 6 * 6
    # the zoning's flows on s1 (h1's edge): the base ones, plus 3 per open connection, then back
    base = after[("fabric_app_flows", (("app", "nvme_zoning"), ("switch", "s1")))]
    assert during[("fabric_app_flows", (("app", "nvme_zoning"), ("switch", "s1")))] == base + 5 * 3
    assert delta(after, "fabric_switch_syncs_total", switch="s1") >= 2
    assert after[("fabric_switch_synced", (("switch", "s1"),))] == 1
    # one recompute per admission, and at least one for the pairs removed when the host closed
    assert delta(after, "fabric_recompute_seconds_count", app="nvme_zoning") >= 6
