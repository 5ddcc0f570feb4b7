"""The bounded OpenFlow message guard (issue 9 section 1) and the programmer's
channel bookkeeping (issue 15: waiters on a dead channel, stray errors)."""

from __future__ import annotations

import struct
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from os_ken.lib import hub
from os_ken.ofproto import ofproto_parser, ofproto_v1_3, ofproto_v1_3_parser

from ryu_apps.framework import programmer
from ryu_apps.openflow import ofguard, ofwire
from tests.timelimit import Hang, time_limit
from tests.unit import ofguard_shapes as shapes

# wired as the core wires it: the programmer's own dumps and bundle errors are its business
ofguard.set_awaited(programmer.awaits_dump, programmer.awaits_error)

SAMPLES = shapes.samples()
MALFORMED = shapes.all_malformed()


class FakeDatapath:
    def __init__(self, dpid=None):
        self.id = dpid
        self.address = ("127.0.0.1", 40000)
        self.ofproto = ofproto_v1_3
        self.ofproto_parser = ofproto_v1_3_parser
        self.closed = 0
        self.sent = []

    def close(self):
        self.closed += 1

    def send(self, data):
        self.sent.append(data)
        return True


def os_ken_parse(buf: bytes, seconds: float = 0.5):
    """os-ken's own parser for ``buf`` (no catch-all around it); raises Hang if it loops."""
    version, typ, length, xid = struct.unpack_from("!BBHI", buf)
    parse = ofproto_parser._MSG_PARSERS.get(version)
    if parse is None:
        return None
    if programmer._installed and version == 4:
        parse = ORIGINAL_V13
    with time_limit(seconds):
        try:
            return parse(FakeDatapath(), version, typ, max(length, 8), xid, buf)
        except Exception as exc:  # noqa: BLE001 - os-ken's msg() catches these too; only a hang matters
            return exc


ORIGINAL_V13 = ofproto_parser._MSG_PARSERS[4]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_well_formed_messages_pass_and_os_ken_parses_them(name):
    msg, fields = SAMPLES[name]
    assert ofguard.check(msg) == (4, msg[1])
    parsed = os_ken_parse(msg)
    assert not isinstance(parsed, (Exception, type(None))), (name, parsed)
    assert fields, name


@pytest.mark.parametrize("name,buf", MALFORMED, ids=[n for n, _ in MALFORMED])
def test_every_length_variant_is_refused_with_a_reason(name, buf):
    with time_limit(0.5):
        with pytest.raises(ofguard.Malformed) as err:
            ofguard.check(buf)
    assert str(err.value), name


def test_os_ken_alone_hangs_on_the_issue_shapes():
    """Why the guard exists: without it these loop forever inside os-ken 3.1.1."""
    hung = []
    for name, buf in shapes.issue_shapes():
        try:
            os_ken_parse(buf, 0.2)
        except Hang:
            hung.append(name)
    print(f"\nos-ken alone hangs on {len(hung)} of {len(shapes.issue_shapes())} issue shapes: {hung}")
    assert len(hung) >= 5, hung


def test_controller_only_messages_and_unknown_versions_and_types_are_refused():
    for typ in sorted(ofguard.CONTROLLER_ONLY):
        with pytest.raises(ofguard.Malformed, match="controller-to-switch"):
            ofguard.check(struct.pack("!BBHI", 4, typ, 8, 1))
    with pytest.raises(ofguard.Malformed, match="unknown message type 99"):
        ofguard.check(struct.pack("!BBHI", 4, 99, 8, 1))
    with pytest.raises(ofguard.Malformed, match="unknown OpenFlow version 9"):
        ofguard.check(struct.pack("!BBHI", 9, 0, 8, 1))
    with pytest.raises(ofguard.Malformed, match="only OpenFlow 1.3"):
        ofguard.check(struct.pack("!BBHI", 6, 10, 8, 1))
    # a HELLO of another version is fine (version negotiation)
    assert ofguard.check(struct.pack("!BBHIHHI", 6, 0, 16, 1, 1, 8, 0x52)) == (6, 0)
    with pytest.raises(ofguard.Malformed, match="not ASCII"):  # os-ken's handler would raise in its loop
        ofguard.check(struct.pack("!BBHIHH", 4, 1, 14, 1, 0, 0) + b"\xff\xfe")
    assert ofguard.check(struct.pack("!BBHIHH", 4, 1, 14, 1, 0, 0) + b"no") == (4, 1)
    with pytest.raises(ofguard.Malformed, match="header length 16 but 12 bytes"):
        ofguard.check(struct.pack("!BBHII", 4, 2, 16, 1, 0))


def test_a_real_ovs_style_flow_dump_with_nat_and_groups_passes():
    from ryu_apps.openflow.ofdata import Ct, DecTtl, Flow, GroupAction, Match, SetField
    flows = [Flow(table=0, priority=100, match=Match(in_port=1, eth_type=0x0800, ipv4_dst="10.0.0.1"), cookie=7,
                  actions=(Ct(commit=True, zone=3, table=10, nat="src=10.0.0.1-10.0.0.9"),), goto=None),
             Flow(table=90, priority=200, match=Match(eth_type=0x86dd, ipv6_dst="fd00::1"), cookie=8,
                  actions=(DecTtl(), SetField("eth_src", "0e:00:00:00:00:01"), GroupAction(5)))]
    body = bytearray()
    for f in flows:
        fm = ofwire.flow_mod(f, ofwire.OFPFC_ADD, 1)
        match_and_inst = fm[48:]
        entry = struct.pack("!HBxIIHHHH4xQQQ", 48 + len(match_and_inst), f.table, 1, 0, f.priority, 0, 0, 0,
                            f.cookie, 3, 300) + match_and_inst
        body += entry
    msg = struct.pack("!BBHIHH4x", 4, 19, 16 + len(body), 9, 1, 0) + bytes(body)
    assert ofguard.check(msg) == (4, 19)
    assert len(ofwire.parse_flow_stats(msg[16:])) == 2


# -- fuzz: the guard is bounded, and what it lets through never hangs os-ken ------------------------

def _mutations():
    names = sorted(SAMPLES)
    flip = st.tuples(st.integers(0, 4095), st.one_of(st.sampled_from([0, 1, 3, 4, 7, 8, 0xFF]), st.integers(0, 255)))
    return st.tuples(st.sampled_from(names), st.lists(flip, max_size=6), st.integers(0, 4096),
                     st.booleans(), st.binary(max_size=64))


@settings(max_examples=400, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_fuzz_guard_is_bounded_and_never_lets_through_what_os_ken_loops_on(case):
    name, flips, cut, fix_header, tail = case
    buf = bytearray(SAMPLES[name][0])
    for pos, value in flips:
        buf[pos % len(buf)] = value
    buf = buf[:max(0, min(len(buf), cut))] + tail if cut < len(buf) else buf + tail
    if fix_header and len(buf) >= 8:
        struct.pack_into("!H", buf, 2, min(len(buf), 0xFFFF))
    buf = bytes(buf)
    with time_limit(1.0):
        try:
            ofguard.check(buf)
        except ofguard.Malformed:
            return
    # admitted: os-ken must finish parsing it (an exception is fine, os-ken's msg() catches it)
    os_ken_parse(buf, 1.0)


@settings(max_examples=300, deadline=500)
@given(st.binary(min_size=0, max_size=300))
def test_fuzz_guard_on_random_bytes_only_returns_or_raises_malformed(data):
    with time_limit(1.0):
        try:
            ofguard.check(data)
        except ofguard.Malformed:
            return
    os_ken_parse(data, 1.0)


# -- the hook ---------------------------------------------------------------------------------------

def test_a_refused_message_closes_only_that_connection_and_is_counted():
    seen = []
    msg = ofguard.guarded(lambda dp, *a: seen.append(a) or "parsed")
    bad_dp, good_dp = FakeDatapath(dpid=0x99), FakeDatapath()
    before = ofguard.stats()["counts"].get("dpid 0x99:HELLO", 0)
    hello0 = shapes.issue_shapes()[0][1]
    assert msg(bad_dp, 4, 0, len(hello0), 1, hello0) is None
    assert bad_dp.closed == 1
    assert ofguard.stats()["counts"]["dpid 0x99:HELLO"] == before + 1
    assert ofguard.stats()["recent"][-1]["reason"].startswith("HELLO: element type 1 length 0")
    # the rest of that connection's buffer is dropped unparsed; the other connection is untouched
    echo = SAMPLES["echo_request"][0]
    assert msg(bad_dp, 4, 2, len(echo), 1, echo) is None
    assert msg(good_dp, 4, 2, len(echo), 1, echo) == "parsed" and len(seen) == 1
    assert good_dp.closed == 0


def test_an_error_flood_closes_the_connection():
    msg = ofguard.guarded(lambda dp, *a: "parsed")
    dp = FakeDatapath(dpid=0x98)
    err = SAMPLES["error"][0]
    floods = ofguard.stats()["error_floods"]
    n = 0
    while dp.closed == 0 and n < 3 * ofguard.ERROR_BURST:
        msg(dp, 4, 1, len(err), 1, err)
        n += 1
    assert dp.closed == 1 and ofguard.ERROR_BURST <= n < 1.5 * ofguard.ERROR_BURST, n
    assert ofguard.stats()["error_floods"] == floods + 1
    # errors for the xids of a bundle being sent are the programmer's business, not a flood
    dp2 = FakeDatapath(dpid=0x97)
    ch = programmer.OFChannel(dp2)
    first = programmer.XID_BASE | 1
    ch.expect_errors(first, first + 100_000)
    for i in range(int(2 * ofguard.ERROR_BURST)):
        msg(dp2, 4, 1, len(err), first + i, err)
    assert dp2.closed == 0
    ch.take_errors(first, first + 100_000)
    n = 0
    while dp2.closed == 0 and n < 3 * ofguard.ERROR_BURST:
        msg(dp2, 4, 1, len(err), first + n, err)
        n += 1
    assert dp2.closed == 1, "once the window is closed the same errors count again"


# -- the programmer's channel -----------------------------------------------------------------------

def test_disconnect_fails_every_waiter_of_that_channel_at_once():
    dp, other = FakeDatapath(dpid=1), FakeDatapath(dpid=2)
    ch, ch2 = programmer.OFChannel(dp, timeout=60), programmer.OFChannel(other, timeout=60)
    results = {}

    def waiting(name, channel):
        t0 = time.monotonic()
        try:
            channel.multipart(ofwire.flow_stats_request)
            results[name] = ("ok", time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001
            results[name] = (type(exc).__name__, time.monotonic() - t0)

    threads = [hub.spawn(waiting, "a", ch), hub.spawn(waiting, "b", ch), hub.spawn(waiting, "c", ch2)]
    hub.sleep(0.05)
    assert len(dp.sent) == 2 and not results
    t0 = time.monotonic()
    ch.close()
    hub.sleep(0.05)
    took = time.monotonic() - t0
    print(f"\nwaiters woken by disconnect after {took * 1000:.0f} ms: {results}")
    assert results["a"][0] == "ConnectionError" and results["b"][0] == "ConnectionError", results
    assert "c" not in results, "a waiter of another channel was woken"
    assert not any(k[0] == id(dp) for k in programmer._waiters)
    ch2.close()
    hub.joinall(threads)
    assert results["c"][0] == "ConnectionError"


def _error(xid: int) -> bytes:
    return struct.pack("!BBHIHH", 4, 1, 12 + 64, xid, 1, 2) + b"\0" * 64


def test_stray_errors_stay_bounded_after_100k_and_are_dropped_on_disconnect():
    programmer.install_interceptor()
    parse = ofproto_parser._MSG_PARSERS[4]
    dp = FakeDatapath(dpid=3)
    ch = programmer.OFChannel(dp)
    base = programmer.XID_BASE
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(100_000):  # nobody opened a window: nothing is kept
        x = base | (i & programmer.XID_MASK)
        assert parse(dp, 4, 1, 76, x, _error(x)) is None
    assert id(dp) not in programmer._stray_errors
    first, last = base | 1, base | 200_000
    ch.expect_errors(first, last)  # a bundle in flight: errors in its window are kept, up to the cap
    for i in range(100_000):
        x = base | (i + 1)
        parse(dp, 4, 1, 76, x, _error(x))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    kept = len(programmer._stray_errors[id(dp)])
    print(f"\n200k stray errors: {kept} kept, memory grew by {grown / 1024:.0f} KiB")
    assert kept == programmer.STRAY_ERRORS_MAX
    assert grown < 2 * 1024 * 1024, grown
    found = ch.take_errors(first, last)
    assert len(found) == programmer.STRAY_ERRORS_MAX and id(dp) not in programmer._error_windows
    ch.expect_errors(first, last)
    parse(dp, 4, 1, 76, first, _error(first))
    ch.close()  # disconnect drops what was kept for it
    assert id(dp) not in programmer._stray_errors and id(dp) not in programmer._error_windows
