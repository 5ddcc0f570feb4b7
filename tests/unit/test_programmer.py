"""The switch programmer against a fake switch: incremental syncs, and what happens when the
switch or the controller pulls the rug mid-sync (issue 10: reconnect during a sync, resync
during a sync, a bundle rejected, the audit repairing drift)."""

from __future__ import annotations

import copy

import pytest

from ryu_apps.framework import cookies, programmer
from ryu_apps.framework.state import PAUSE_EVERY, ActualState, SwitchState, apply_changes, diff
from ryu_apps.openflow.ofdata import Flow, Match, Output


class FakeSwitch:
    """What the switch holds; ``on_send`` runs inside a sync, after the diff, before the switch applies it."""

    def __init__(self):
        self.actual = ActualState()
        self.reads = 0
        self.sent: list = []
        self.on_send = None
        self.on_read = None

    def read(self, channel, between=None):
        self.reads += 1
        snapshot = copy.deepcopy(self.actual)
        if self.on_read is not None:  # runs while the dump is on its way: the snapshot is already taken
            hook, self.on_read = self.on_read, None
            hook()
        if between is not None:  # (the programmer's turn between two reply bodies)
            between()
        return snapshot

    def send(self, channel, changes):
        if self.on_send is not None:
            hook, self.on_send = self.on_send, None
            hook()
        self.sent.append(changes.counts())
        apply_changes(self.actual, changes)


@pytest.fixture
def rig(monkeypatch):
    sw = FakeSwitch()
    monkeypatch.setattr(programmer, "read_actual", sw.read)
    monkeypatch.setattr(programmer, "send_changes", sw.send)
    monkeypatch.setattr(programmer.hub, "spawn", lambda *a, **k: None)  # no loop thread: the test drives
    prog = programmer.SwitchProgrammer("s1", 1)
    prog.connected(object())
    return prog, sw


def layer(n: int, first: int = 0, port: int = 1) -> SwitchState:
    st = SwitchState()
    for i in range(first, first + n):
        st.add_flow(Flow(table=90, priority=500, match=Match(eth_type=0x0800, ipv4_dst=f"10.1.{i // 250}.{i % 250}"),
                         actions=(Output(port),), cookie=cookies.make("fabric", 5, i)))
    return st


def holds_desired(prog, sw) -> bool:
    return diff(prog.desired, sw.actual).empty


def test_incremental_sync_sends_only_what_a_layer_changed(rig):
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(100)})
    assert prog.attempt(prog.channel) and prog.synced and sw.reads == 1
    assert sw.sent[-1]["flow_adds"] == 100
    prog.set_layers({("fenced_clone", "f1"): layer(3, first=1000)})
    assert not prog.synced
    assert prog.attempt(prog.channel) and prog.synced
    assert sw.reads == 1, "an incremental sync must not re-read the switch"
    assert sw.sent[-1]["flow_adds"] == 3 and sw.sent[-1]["flow_deletes"] == 0
    prog.set_layers({("fenced_clone", "f1"): None})
    assert prog.attempt(prog.channel)
    assert sw.sent[-1]["flow_deletes"] == 3 and holds_desired(prog, sw)


def test_reconnect_during_a_sync_reads_the_new_connection_in_full(rig):
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(10)})
    sw.on_send = lambda: prog.connected(object())  # the switch reconnects while the bundle is on its way
    first_channel = prog.channel
    assert not prog.attempt(first_channel)
    assert "reconnected" in prog.last_error and not prog.synced
    assert prog.attempt(prog.channel) and prog.synced
    assert sw.reads == 2 and holds_desired(prog, sw)


def test_resync_during_a_sync_is_not_lost(rig):
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(10)})
    assert prog.attempt(prog.channel)
    prog.set_layers({("fabric", "*"): layer(12)})
    sw.on_send = prog.resync  # an operator asks for a resync while a sync is sending
    assert prog.attempt(prog.channel)
    assert not prog.synced, "a sync overtaken by a resync must not mark the switch synced"
    sw.actual.flows.clear()  # and the switch lost everything meanwhile
    assert prog.attempt(prog.channel) and prog.synced
    assert sw.reads == 2 and holds_desired(prog, sw)


def test_a_rejected_bundle_leaves_the_switch_unsynced_and_is_retried_from_a_full_read(rig):
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(5)})

    def reject():
        raise programmer.ProgrammingError("flow bundle discarded: xid 0x7f000002 type 5 code 0")

    sw.on_send = reject
    assert not prog.attempt(prog.channel)
    assert "bundle discarded" in prog.last_error and not prog.synced and prog.actual is None
    assert prog.attempt(prog.channel) and prog.synced and prog.last_error is None
    assert sw.reads == 2 and holds_desired(prog, sw)


def test_the_audit_repairs_drift_and_counts_it(rig):
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(20)})
    assert prog.attempt(prog.channel)
    prog.audit()
    assert prog.attempt(prog.channel) and prog.audits == 1 and prog.audit_repairs == 0
    # behind the controller's back: one flow deleted, one changed, one stray added
    idents = sorted(sw.actual.flows)
    del sw.actual.flows[idents[0]]
    body = sw.actual.flows[idents[1]]
    sw.actual.flows[idents[1]] = (body[0], b"\x00" * len(body[1]), *body[2:])
    stray = layer(1, first=5000)
    apply_changes(sw.actual, diff(stray, ActualState()))
    assert not holds_desired(prog, sw)
    assert prog.synced, "the controller cannot know before it looks"
    prog.audit()
    assert prog.synced, "an audit does not make the switch count as unsynced"
    assert prog.attempt(prog.channel)
    assert prog.audits == 2 and prog.audit_repairs == 1 and holds_desired(prog, sw)
    assert prog.audit_repaired["flow_deletes"] == 1 and prog.audit_repaired["flow_adds"] >= 1
    prog.audit()
    assert prog.attempt(prog.channel) and prog.audit_repairs == 1


def test_a_resync_asked_while_the_switch_is_being_read_reads_it_again(rig):
    """The OAM heal flake: a fault made while a dump was in flight, then a resync request. The
    dump taken before the fault must not become what the programmer believes the switch holds."""
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(10)})
    assert prog.attempt(prog.channel)
    ident = sorted(sw.actual.flows)[0]

    def fault_then_resync():
        body = sw.actual.flows[ident]
        sw.actual.flows[ident] = (body[0], b"\x00" * len(body[1]), *body[2:])  # a route retargeted
        prog.resync()

    prog.resync()
    sw.on_read = fault_then_resync
    prog.attempt(prog.channel)
    assert not prog.synced, "the read started before the resync request: it must not count"
    assert prog.attempt(prog.channel) and prog.synced
    assert holds_desired(prog, sw), "the fault made during the first read is still on the switch"


def test_a_change_during_an_audit_goes_out_at_once_and_is_not_drift(rig):
    """An audit of a big switch takes seconds to parse: a layer change made meanwhile is sent
    between two reply bodies, not after the audit, and the dump (taken before it) does not
    make it count as drift; drift made behind the controller's back still does."""
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(10)})
    assert prog.attempt(prog.channel)
    ident = sorted(sw.actual.flows)[3]
    del sw.actual.flows[ident]  # drift: a flow deleted behind the controller's back
    sent_before = len(sw.sent)

    def change_while_reading():
        prog.set_layers({("fenced_clone", "f1"): layer(5, first=100, port=2)})
    sw.on_read = change_while_reading
    prog.audit()
    assert prog.attempt(prog.channel)
    assert sw.sent[sent_before] == {**{k: 0 for k in sw.sent[sent_before]}, "flow_adds": 5}, sw.sent[sent_before:]
    assert sw.sent[sent_before + 1]["flow_adds"] == 1 and len(sw.sent) == sent_before + 2  # the audit's repair
    assert prog.audit_repairs == 1 and prog.audit_repaired["flow_adds"] == 1, prog.audit_repaired
    assert prog.synced and holds_desired(prog, sw)
    # the next audit finds the switch as written
    prog.audit()
    assert prog.attempt(prog.channel) and prog.audit_repairs == 1 and len(sw.sent) == sent_before + 2


def test_a_change_pending_when_an_audit_starts_is_not_drift_either(rig):
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(10)})
    assert prog.attempt(prog.channel)
    prog.set_layers({("fabric", "*"): layer(6)})  # four flows go, not sent yet when the audit begins
    prog.audit()
    assert prog.attempt(prog.channel)
    assert prog.audit_repairs == 0 and prog.synced and holds_desired(prog, sw), prog.audit_repaired


def test_a_change_made_after_the_flows_were_read_is_a_sync_not_a_repair(rig):
    prog, sw = rig
    prog.set_layers({("fabric", "*"): layer(10)})
    assert prog.attempt(prog.channel)
    real = programmer.read_actual

    def read_then_change(channel, between=None):
        got = sw.read(channel, between)
        prog.set_layers({("fabric", "*"): layer(7)})  # (while the groups and meters are read)
        return got
    programmer.read_actual = read_then_change
    try:
        prog.audit()
        assert prog.attempt(prog.channel)
    finally:
        programmer.read_actual = real
    assert prog.audit_repairs == 0 and prog.synced and holds_desired(prog, sw), prog.audit_repaired


def test_a_change_during_an_audits_diff_goes_out_at_its_pauses_and_is_not_undone(rig, monkeypatch):
    """The diff of a big switch pauses for the hub: a layer change made then is sent at the
    next pause, and the audit (diffing the state as read) leaves the entries it touched alone:
    a flow deleted behind the controller's back and then removed by the controller stays gone."""
    prog, sw = rig
    n = 3 * PAUSE_EVERY  # (the diff pauses every PAUSE_EVERY entries)
    prog.set_layers({("fabric", "*"): layer(n)})
    assert prog.attempt(prog.channel)
    drifted = ofwire_identity(layer(1, first=3))
    del sw.actual.flows[drifted]  # drift on flow 3
    lost = ofwire_identity(layer(1, first=n - 1))
    del sw.actual.flows[lost]  # and on the last flow, which stays desired
    sent_before = len(sw.sent)
    fired = []

    def pause():
        if not fired:  # the controller's change, while the audit diffs
            fired.append(1)
            prog.set_layers({("fabric", "*"): layer(n - 10, first=10),
                             ("fenced_clone", "f1"): layer(5, first=10000, port=2)})
    monkeypatch.setattr(programmer, "_pause", pause)
    prog.audit()
    assert prog.attempt(prog.channel) and fired
    during, repair = sw.sent[sent_before:]
    assert (during["flow_deletes"], during["flow_adds"]) == (9, 5), during  # flow 3 was already gone
    assert repair["flow_adds"] == 1 and repair["flow_deletes"] == 0, repair  # only the last flow
    assert prog.synced and holds_desired(prog, sw)
    assert prog.audit_repairs == 1


def ofwire_identity(st: SwitchState):
    from ryu_apps.openflow import ofwire

    (flow,) = st.flows.values()
    return ofwire.flow_identity(flow)


# --- read_actual: an audit reads the flows in cookie slices -----------------------------


class _Stat:
    def __init__(self, i: int, cookie: int):
        self.identity, self.body, self.cookie = ("flow", i), ("body", i), cookie


class SlicingChannel:
    """Answers flow stats requests from a list of flows, honouring the request's cookie and mask."""

    def __init__(self, flows):
        self.flows = flows
        self.requests: list[tuple[int, int]] = []

    def multipart(self, build):
        import struct

        req = build(1)
        if struct.unpack_from("!H", req, 8)[0] != programmer.ofwire.OFPMP_FLOW:
            return []
        cookie, mask = struct.unpack_from("!QQ", req, 32)
        self.requests.append((cookie, mask))
        return [[f for f in self.flows if f.cookie & mask == cookie & mask]]


def test_an_audit_reads_every_flow_once_in_cookie_slices(monkeypatch):
    monkeypatch.setattr(programmer.ofwire, "parse_flow_stats", lambda body: body)
    monkeypatch.setattr(programmer, "_pause", lambda: None)
    flows = [_Stat(i, c) for i, c in enumerate([0, 1, 7, 8, 0xFF, cookies.make("fabric", 5, 12345),
                                                cookies.make("core", 1, 0), (1 << 64) - 1])]
    full = SlicingChannel(flows)
    whole = programmer.read_actual(full)
    assert full.requests == [(0, 0)]  # a (re)connect reads everything in one request
    turns = []
    audit = SlicingChannel(flows)
    sliced = programmer.read_actual(audit, between=lambda: turns.append(len(audit.requests)))
    n = programmer.AUDIT_SLICES
    assert audit.requests == [(k, n - 1) for k in range(n)]
    assert turns == list(range(1, n + 1))  # the controller's turn after every slice's reply
    assert sliced.flows == whole.flows and len(whole.flows) == len(flows)
