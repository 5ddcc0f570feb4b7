"""The layered desired state (framework v2) against the brute-force merge it replaces.

Random layers are replaced one at a time; after each step the merged flows, groups and
meters equal a from-scratch merge of every layer, a replacement that the brute force
refuses is refused without changing anything, and diffing only the touched entries
takes the switch to the same state as a full diff would."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_apps.framework import cookies
from ryu_apps.framework.state import (
    ActualState,
    LayeredState,
    StateConflict,
    SwitchState,
    apply_changes,
    diff,
    diff_touched,
)
from ryu_apps.openflow.ofdata import Bucket, Flow, Group, GroupAction, Match, Meter, MeterBand, Output

LAYERS = [("fabric", "*"), ("fenced_clone", "f1"), ("fenced_clone", "f2"), ("cloud_router", "*")]


def make_flow(i: int, variant: int, group: int | None, meter: int | None) -> Flow:
    actions = (GroupAction(group),) if group is not None else (Output(1 + variant),)
    return Flow(table=90, priority=100 + i % 3, match=Match(eth_type=0x0800, ipv4_dst=f"10.0.0.{i}"),
                actions=actions, meter=meter, cookie=cookies.make("fabric", 1, i))


def make_layer(rng: random.Random) -> SwitchState:
    s = SwitchState()
    groups = {}
    for _ in range(rng.randint(0, 3)):
        gid = rng.randint(1, 4)
        groups[gid] = Group(group_id=gid, type="select",
                            buckets=(Bucket(actions=(Output(rng.randint(1, 2)),), weight=1),))
    meters = {}
    for _ in range(rng.randint(0, 2)):
        mid = rng.randint(1, 3)
        meters[mid] = Meter(meter_id=mid, bands=(MeterBand(rate=rng.choice([10, 20])),))
    for g in groups.values():
        s.groups[g.group_id] = g
    for m in meters.values():
        s.meters[m.meter_id] = m
    for _ in range(rng.randint(0, 6)):
        i = rng.randint(1, 8)
        use_group = rng.random() < 0.3
        group = rng.randint(1, 4) if use_group else None
        meter = rng.randint(1, 3) if rng.random() < 0.2 else None
        f = make_flow(i, rng.randint(0, 1), group, meter)
        s.flows[f.key] = f
        s.owners[f.cookie] = f"obj {i}"
    return s


def brute(layers: dict) -> SwitchState:
    merged = SwitchState()
    for st_ in layers.values():
        merged.merge(st_)
    merged.check_references()
    return merged


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_layered_state_matches_brute_force(seed):
    rng = random.Random(seed)
    state = LayeredState()
    layers: dict = {}
    actual = ActualState()
    for _ in range(12):
        key = rng.choice(LAYERS)
        new = None if rng.random() < 0.2 else make_layer(rng)
        trial = dict(layers)
        if new is None:
            trial.pop(key, None)
        else:
            trial[key] = new
        try:
            expect = brute(trial)
        except StateConflict:
            expect = None
        before = (dict(state.flows), dict(state.groups), dict(state.meters))
        if expect is None:
            with pytest.raises(StateConflict):
                state.replace({key: new})
            assert (state.flows, state.groups, state.meters) == before, "a refused replacement changed the state"
            continue
        touched = state.replace({key: new})
        layers = trial
        assert state.flows == expect.flows and state.groups == expect.groups and state.meters == expect.meters
        # the switch: diff only what was touched, and end where a full diff would
        changes = diff_touched(state, actual, touched)
        apply_changes(actual, changes)
        assert diff(state, actual).empty, "touched diff left a difference a full diff sees"
        assert actual.flows == ActualState.of(state.snapshot()).flows


def test_a_group_left_by_its_flows_may_go_but_not_one_another_layer_uses():
    g = Group(group_id=7, type="select", buckets=(Bucket(actions=(Output(1),), weight=1),))
    fab = SwitchState()
    fab.groups[7] = g
    f = make_flow(1, 0, 7, None)
    fab.flows[f.key] = f
    other = SwitchState()
    f2 = make_flow(2, 0, 7, None)
    other.flows[f2.key] = f2
    state = LayeredState()
    state.replace({("fabric", "*"): fab, ("fenced_clone", "x"): other})
    plain = SwitchState()
    p = make_flow(1, 1, None, None)  # same key as f, now without the group
    plain.flows[p.key] = p
    with pytest.raises(StateConflict, match="group 7 would be removed"):
        state.replace({("fabric", "*"): plain})
    state.replace({("fabric", "*"): plain, ("fenced_clone", "x"): None})  # both at once: fine
    assert 7 not in state.groups and state.flows[p.key] == p


def test_a_paced_diff_gives_way_while_it_finds_the_flows_to_delete():
    """An audit's diff pauses every PAUSE_EVERY flows, also while it walks the switch's flows
    for the ones to delete (160k at once held the hub), and finds the same changes."""
    from ryu_apps.framework.state import PAUSE_EVERY, ActualState, SwitchState, diff
    from ryu_apps.openflow import ofwire

    keep = [Flow(table=0, priority=10, match=Match(in_port=p), actions=(Output(1),)) for p in range(1, 11)]
    actual = ActualState()
    for flow in keep:
        actual.flows[ofwire.flow_identity(flow)] = ofwire.flow_body(flow)
    for i in range(3 * PAUSE_EVERY):  # on the switch, not desired: to delete
        stale = Flow(table=0, priority=20, match=Match(in_port=1, vlan_vid=0x1000 | (i % 4000), eth_type=0x800 + i // 4000))
        actual.flows[ofwire.flow_identity(stale)] = ofwire.flow_body(stale)
    desired = SwitchState()
    for flow in keep:
        desired.add_flow(flow)
    pauses = []
    paced = diff(desired, actual, pause=lambda: pauses.append(1))
    plain = diff(desired, actual)
    assert len(pauses) >= 3 and paced.flow_deletes == plain.flow_deletes and len(plain.flow_deletes) == 3 * PAUSE_EVERY
