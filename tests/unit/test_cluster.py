"""Mastership assignment of the controller cluster (pure: rendezvous hashing over live members)."""

from __future__ import annotations

import pytest

from ryu_apps.framework.cluster import assignment, preferred
from ryu_apps.framework.topology import ControllerSpec

SWITCHES = [f"s{i}" for i in range(60)]
MEMBERS = ["c0", "c1", "c2"]


def all_connected(members):
    return {m: SWITCHES for m in members}


def test_every_instance_computes_the_same_choice_whatever_the_order():
    a = assignment(all_connected(MEMBERS), SWITCHES)
    b = assignment(dict(reversed(list(all_connected(MEMBERS).items()))), list(reversed(SWITCHES)))
    assert a == b
    assert set(a.values()) == set(MEMBERS)


def test_switches_are_balanced_across_members():
    a = assignment(all_connected(MEMBERS), SWITCHES)
    counts = {m: sum(1 for v in a.values() if v == m) for m in MEMBERS}
    assert all(10 <= n <= 30 for n in counts.values()), counts


def test_losing_a_member_moves_only_its_switches():
    before = assignment(all_connected(MEMBERS), SWITCHES)
    after = assignment(all_connected(["c0", "c2"]), SWITCHES)
    moved = {sw for sw in SWITCHES if before[sw] != after[sw]}
    assert moved == {sw for sw in SWITCHES if before[sw] == "c1"}
    assert all(after[sw] in ("c0", "c2") for sw in moved)


def test_a_new_member_takes_only_the_switches_it_now_wins():
    before = assignment(all_connected(["c0", "c1"]), SWITCHES)
    after = assignment(all_connected(MEMBERS), SWITCHES)
    moved = {sw for sw in SWITCHES if before[sw] != after[sw]}
    assert moved and all(after[sw] == "c2" for sw in moved)


def test_only_members_connected_to_a_switch_can_master_it():
    connected = {"c0": SWITCHES, "c1": [s for s in SWITCHES if s != "s7"], "c2": []}
    a = assignment(connected, SWITCHES)
    assert "c2" not in a.values()
    assert a["s7"] == "c0"
    assert assignment({"c0": []}, ["s1"]) == {"s1": None}
    assert preferred("s1", []) is None


def test_replicas_need_the_etcd_store():
    with pytest.raises(ValueError, match="replicas: 3 needs store: etcd"):
        ControllerSpec(replicas=3)
    assert ControllerSpec(replicas=3, store="etcd").lease_ttl == 2
    assert ControllerSpec().replicas == 1 and ControllerSpec().store == "local"


def test_an_apps_leader_is_one_live_member_and_moves_only_when_it_dies():
    from ryu_apps.framework.cluster import leader_of

    apps = [f"app{i}" for i in range(30)]
    first = {a: leader_of(a, MEMBERS) for a in apps}
    assert first == {a: leader_of(a, list(reversed(MEMBERS))) for a in apps}  # every instance agrees
    assert len(set(first.values())) > 1  # apps are spread, not all on one instance
    after = {a: leader_of(a, ["c0", "c2"]) for a in apps}
    assert {a for a in apps if first[a] != after[a]} == {a for a in apps if first[a] == "c1"}
    assert leader_of("x", []) is None


def test_relayed_batches_are_validated_before_anything_is_handled():
    from pydantic import ValidationError

    from ryu_apps.framework import relay

    pin = {"app": "multicast_standby", "switch": "s1", "in_port": 1, "table": 0, "cookie": 5,
           "data": relay.encode(b"\x01\x02")}
    ok = relay.RelayBatch.model_validate_json(
        '{"sender": "c0", "packet_ins": [%s]}' % __import__("json").dumps(pin), strict=True)
    assert relay.decode(ok.packet_ins[0].data) == b"\x01\x02"
    for bad in ({"sender": "c0", "packet_ins": [dict(pin, in_port=-1)]},
                {"sender": "c0", "packet_ins": [dict(pin, cookie=1 << 64)]},
                {"sender": "c0", "packet_ins": [dict(pin, data="A" * (relay.MAX_DATA_CHARS + 1))]},
                {"sender": "c0", "packet_ins": [pin] * (relay.BATCH_ENTRIES + 1)},
                {"sender": "c0", "packet_outs": [{"switch": "s1", "port": 1, "data": "", "extra": 1}]},
                {"packet_ins": []}):
        with pytest.raises(ValidationError):
            relay.RelayBatch.model_validate(bad, strict=True)
    with pytest.raises(ValueError, match="not base64"):
        relay.decode("not base64!")
