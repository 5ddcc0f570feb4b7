"""The control channel under faults: impostor switches and silent channels (issue 15).

One chain3 lab for the module (h1 - s1 - s2 - s3 - h3, h2 on s2), with real
pings running while the faults happen.
"""

from __future__ import annotations

import re
import socket
import struct
import time

import pytest

from ovs_scripts.lab import ROOT_SANDBOX
from ovs_scripts.ovsdb import BridgeConfig
from tests.integration import conftest, labtools
from tests.integration.labtools import frozen_relay, get, ping_loss, rest, start_ping, wait_for

pytestmark = pytest.mark.integration

OFP_VERSION = 4
HELLO, ECHO_REQUEST, ECHO_REPLY, FEATURES_REQUEST, FEATURES_REPLY = 0, 2, 3, 5, 6
MULTIPART_REQUEST, MULTIPART_REPLY = 18, 19
#: messages that would mean the controller took the peer as a switch to program
PROGRAMMING = {4: "EXPERIMENTER (bundle)", 13: "PACKET_OUT", 14: "FLOW_MOD", 15: "GROUP_MOD", 29: "METER_MOD"}


class FakeSwitch:
    """An OpenFlow 1.3 peer that completes the handshake as ``dpid`` and records what it is sent."""

    def __init__(self, port: int, dpid: int):
        self.dpid = dpid
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.received: list[int] = []
        self.closed = False
        self._buf = b""
        self.sock.sendall(struct.pack("!BBHI", OFP_VERSION, HELLO, 8, 1))

    def _answer(self, typ: int, xid: int, body: bytes) -> None:
        if typ == FEATURES_REQUEST:
            reply = struct.pack("!QIBB2xII", self.dpid, 0, 254, 0, 0x4F, 0)
            self.sock.sendall(struct.pack("!BBHI", OFP_VERSION, FEATURES_REPLY, 8 + len(reply), xid) + reply)
        elif typ == MULTIPART_REQUEST and len(body) >= 2:
            mp_type = struct.unpack_from("!H", body)[0]   # e.g. port desc (13): no ports
            self.sock.sendall(struct.pack("!BBHIHH4x", OFP_VERSION, MULTIPART_REPLY, 16, xid, mp_type, 0))
        elif typ == ECHO_REQUEST:
            self.sock.sendall(struct.pack("!BBHI", OFP_VERSION, ECHO_REPLY, 8 + len(body), xid) + body)

    def pump(self, seconds: float) -> None:
        """Answer and record messages for ``seconds`` or until the controller closes the connection."""
        deadline = time.monotonic() + seconds
        while not self.closed and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self._buf += data
            while len(self._buf) >= 8:
                _, typ, length, xid = struct.unpack_from("!BBHI", self._buf)
                if length < 8 or len(self._buf) < length:
                    break
                body, self._buf = self._buf[8:length], self._buf[length:]
                self.received.append(typ)
                try:
                    self._answer(typ, xid, body)
                except OSError:
                    self.closed = True

    def close(self) -> None:
        self.sock.close()


def all_synced(lab) -> bool:
    return all(s["synced"] for s in get(lab, "/v1/switches"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with conftest.module_factory(tmp_path_factory, "control_channel") as factory:  # one lab for the module
        yield factory("chain3.yaml")


def of_port(lab) -> int:
    return lab.topology.spec.controller.of_port


def test_an_impostor_claiming_a_connected_dpid_is_refused_and_changes_nothing(lab):
    assert wait_for(lambda: all_synced(lab), 20)
    before = {s["name"]: s["syncs"] for s in get(lab, "/v1/switches")}
    pings = [start_ping(lab, "h1", "10.1.0.3", 4), start_ping(lab, "h3", "fd00:1::1", 4)]
    time.sleep(0.5)
    impostors = []
    try:
        for name in ("s1", "s3"):
            fake = FakeSwitch(of_port(lab), lab.topology.switches[name].dpid)
            fake.pump(3.0)
            impostors.append(fake)
        results = [ping_loss(p) for p in pings]
    finally:
        for fake in impostors:
            fake.close()
    for fake in impostors:
        sent = {PROGRAMMING.get(t, t) for t in fake.received if t in PROGRAMMING}
        assert not sent, f"the impostor for dpid {fake.dpid:#x} was programmed: {sent}"
        assert fake.closed, f"the controller kept the impostor for dpid {fake.dpid:#x} connected"
    health = get(lab, "/v1/health")
    counts = health["refused_connections"]["counts"]
    assert counts.get("s1:duplicate", 0) >= 1 and counts.get("s3:duplicate", 0) >= 1, health
    print(f"\nimpostors for s1 and s3: refused ({counts}); pings sent/lost {results}")
    for sent, lost in results:
        assert sent > 100 and lost == 0, results
    switches = {s["name"]: s for s in get(lab, "/v1/switches")}
    assert all(s["connected"] and s["synced"] for s in switches.values()), switches
    assert {n: s["syncs"] for n, s in switches.items()} == before, "an impostor caused a resync"
    topo = get(lab, "/v1/topology")
    assert topo["down_ports"] == [] and all(ln["up"] for ln in topo["links"]), topo


def test_a_second_real_bridge_with_a_known_dpid_is_refused_and_leaves_no_trace(lab):
    assert wait_for(lambda: all_synced(lab), 20)
    s2 = lab.topology.switches["s2"]
    refused = get(lab, "/v1/health")["refused_connections"]["counts"].get("s2:duplicate", 0)
    sock = lab.dir / ROOT_SANDBOX / "controller.sock"
    dup = f"{lab.topology.prefix}-dup"
    sandbox = lab.sandbox(ROOT_SANDBOX)
    ping = start_ping(lab, "h1", "10.1.0.3", 5)
    try:
        with sandbox.db() as db:
            db.add_bridge(BridgeConfig(dup, dpid=s2.dpid, controller=f"unix:{sock}"))
        assert wait_for(lambda: get(lab, "/v1/health")["refused_connections"]["counts"].get("s2:duplicate", 0)
                        > refused, 10), "the second bridge was never refused"
        time.sleep(1.5)  # it keeps retrying meanwhile
    finally:
        with sandbox.db() as db:
            db.del_bridges([dup])
    sent, lost = ping_loss(ping)
    print(f"\nsecond bridge with s2's dpid: refused; pings through s2 sent {sent}, lost {lost}")
    assert lost == 0, (sent, lost)
    time.sleep(1.0)
    st = get(lab, "/v1/switches/s2")
    assert st["connected"] and st["synced"] and st["channel"]["state"] == "ok", st
    topo = get(lab, "/v1/topology")
    assert topo["down_ports"] == [], topo
    r = labtools.ping(lab, "h1", "fd00:1::2", count=3)
    assert r, r.output


def test_a_silent_channel_is_reported_and_a_write_says_it_was_not_applied(lab):
    assert wait_for(lambda: all_synced(lab), 20)
    rate = get(lab, "/v1/apps/fabric/intent")["nd_rate_per_host"]
    with frozen_relay(lab):  # the channel freezes: TCP stays open, nothing moves
        t0 = time.monotonic()
        assert wait_for(lambda: {s["channel"]["state"] for s in get(lab, "/v1/switches")} == {"silent"}, 6), \
            get(lab, "/v1/switches")
        t_silent = time.monotonic() - t0
        assert sorted(get(lab, "/v1/health")["switches_silent"]) == ["s1", "s2", "s3"]
        t1 = time.monotonic()
        status, body = rest(lab, "/v1/apps/fabric/intent", "PUT", {"nd_rate_per_host": rate + 1})
        t_put = time.monotonic() - t1
        assert status == 202 and body["applied"] is False, (status, body)
        assert sorted(body["pending"]) == ["s1", "s2", "s3"], body
        assert body["intent"]["nd_rate_per_host"] == rate + 1
        sws = get(lab, "/v1/switches")
        assert not any(s["synced"] for s in sws), sws
        # the keepalive closes the dead channels
        assert wait_for(lambda: {s["channel"]["state"] for s in get(lab, "/v1/switches")} == {"down"}, 15)
        t_down = time.monotonic() - t0
    print(f"\nfrozen channel: reported silent after {t_silent:.1f} s, PUT answered 202 in {t_put * 1000:.0f} ms "
          f"naming {sorted(body['pending'])}, channels closed after {t_down:.1f} s")
    # the switches come back and get what was written meanwhile
    t2 = time.monotonic()
    assert wait_for(lambda: all_synced(lab), 20), [
        {k: s[k] for k in ("name", "connected", "synced", "last_error", "channel")} for s in get(lab, "/v1/switches")]
    print(f"reconnected and synced {time.monotonic() - t2:.1f} s after the channel thawed")
    out = lab.ofctl("s1", "dump-meters").stdout
    assert re.search(rf"\brate={rate + 1}\b", out), out
    status, body = rest(lab, "/v1/apps/fabric/intent?wait=1", "PUT", {"nd_rate_per_host": rate})
    assert status == 200 and body["nd_rate_per_host"] == rate, (status, body)
    assert re.search(rf"\brate={rate}\b", lab.ofctl("s1", "dump-meters").stdout)


def test_neighbour_discovery_is_answered_while_the_controller_is_down(lab):
    assert wait_for(lambda: all_synced(lab), 20)
    lab.stop_controller()
    try:
        for h in ("h1", "h2", "h3"):
            lab.exec(h, ["ip", "-6", "neigh", "flush", "dev", "eth0"])
            lab.exec(h, ["ip", "-4", "neigh", "flush", "dev", "eth0"])
        t0 = time.monotonic()
        r6 = labtools.ping(lab, "h1", "fd00:1::3", count=3, family=6)
        r4 = labtools.ping(lab, "h1", "10.1.0.3", count=3)
        took = time.monotonic() - t0
        neigh = {h: lab.exec(h, ["ip", "-6", "neigh", "show", "dev", "eth0"]).stdout for h in ("h1", "h3")}
    finally:
        lab.restart_controller()
    print(f"\ncontroller down, neighbour tables flushed: ping -6 rc={r6.returncode}, ping rc={r4.returncode} "
          f"({took:.1f} s); h1: {neigh['h1'].strip()!r}")
    assert r6, r6.output
    assert r4, r4.output
    # the switch answered with the real owners' MACs, never anything else
    assert re.search(r"fd00:1::3 lladdr 02:00:00:00:01:03 ", neigh["h1"]), neigh
    assert re.search(r"fd00:1::1 lladdr 02:00:00:00:01:01 ", neigh["h3"]), neigh
    assert wait_for(lambda: all_synced(lab), 20)
    assert not any(any(s["last_changes"].values()) for s in get(lab, "/v1/switches")), \
        "the restarted controller changed flows that the switches already held"
