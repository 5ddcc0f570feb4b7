"""Cookie layout and the table plan."""

import pytest

from ryu_apps.framework import cookies, pipeline


def test_cookie_round_trip():
    c = cookies.make("fabric", 5, "h1")
    d = cookies.decode(c)
    assert (d.app, d.kind, d.obj) == ("fabric", 5, cookies.object_id("h1"))
    assert c & cookies.APP_MASK == cookies.app_cookie("fabric")[0]


def test_object_ids_are_stable_and_distinct():
    # blake2b, not hash(): same in every process, so restarts change no cookie
    assert cookies.object_id("h1") == cookies.object_id("h1")
    ids = {cookies.object_id(f"host{i}") for i in range(10000)}
    assert len(ids) == 10000


@pytest.mark.parametrize("args,msg", [
    (("nope", 1, 0), "no registered cookie id"),
    (("fabric", 256, 0), "kind 256"),
    (("fabric", 1, 1 << 48), "does not fit"),
])
def test_cookie_errors(args, msg):
    with pytest.raises(cookies.CookieError, match=msg):
        cookies.make(*args)


def test_app_ids_unique():
    assert len(set(cookies.APPS.values())) == len(cookies.APPS)


def test_plan_is_valid():
    pipeline.validate_plan()


@pytest.mark.parametrize("tables,msg", [
    ((pipeline.Table(0, "a", "", (), (0,)),), "not forward"),
    ((pipeline.Table(0, "a", "", (), (5,)),), "does not exist"),
    ((pipeline.Table(0, "a", "", (pipeline.Band("core", 0, 10, ""), pipeline.Band("fabric", 5, 20, ""))),),
     "overlap"),
    ((pipeline.Table(0, "a", "", ()), pipeline.Table(0, "b", "", ())), "duplicate"),
])
def test_plan_errors(tables, msg):
    with pytest.raises(pipeline.PipelineError, match=msg):
        pipeline.validate_plan(tables)


def test_group_and_meter_ids_are_pipeline_data():
    from ryu_apps.framework.state import SwitchState
    from ryu_apps.openflow.ofdata import Group, Meter, MeterBand

    st = SwitchState()
    st.add_group(Group(group_id=(cookies.app_id("fabric") << 24) | 5, type="select", buckets=()))
    st.add_meter(Meter(meter_id=0x105, bands=(MeterBand(rate=10),)))
    pipeline.check_ids("fabric", st)
    with pytest.raises(pipeline.PipelineError, match="fenced_clone: group id 0x2000005 is outside"):
        pipeline.check_ids("fenced_clone", st)
    st2 = SwitchState()
    st2.add_meter(Meter(meter_id=0x6E0A, bands=(MeterBand(rate=10),)))
    pipeline.check_ids("oam_ecmp", st2)
    with pytest.raises(pipeline.PipelineError, match="meter id 0x6e0a"):
        pipeline.check_ids("fabric", st2)
    with pytest.raises(pipeline.PipelineError, match="overlap"):
        pipeline.add_ids("fabric_twin", meters=((0x200, 0x300),))
    assert "fabric_twin" not in pipeline.METER_IDS
    assert pipeline.describe_ids()["meters"]["core"] == [[1, 0xFF]]
