"""Unit tests of ovs_scripts.flowdump: parsing, grouping, diff classification, rendering, CLI.

No switch: the sample texts below are real ovs-ofctl 3.1 outputs, and the CLI
tests replace the one function that runs ovs-ofctl (``flowdump.ofctl.run``)
with canned replies.  The controller's REST API is a tiny http.server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import types

import pytest

from ovs_scripts import flowdump as fd
from ryu_apps.framework import cookies
from tests.fakecontroller import controller  # noqa: F401  (fixture)
from tests.httpstub import http_stub  # noqa: F401  (fixture)

H1 = cookies.make("fabric", 1, "h1")
H2 = cookies.make("fabric", 1, "h2")
ECMP = cookies.make("fabric", 2, 5)
CORE = cookies.make("core", 0, 1)
FENCE = cookies.make("fenced_clone", 2, 7)

FLOWS = f"""\
OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie={H1:#x}, duration=12.5s, table=0, n_packets=7, n_bytes=686, priority=100,in_port=1,dl_src=00:00:00:00:00:01 actions=goto_table:1
 cookie={H1:#x}, duration=12.5s, table=1, n_packets=5, n_bytes=490, priority=200,ip,nw_dst=10.0.0.1 actions=meter:1,output:1
 cookie={H2:#x}, duration=12.5s, table=1, n_packets=3, n_bytes=294, priority=200,ip,nw_dst=10.0.0.2 actions=output:2
 cookie={CORE:#x}, duration=12.5s, table=0, n_packets=1, n_bytes=60, priority=0 actions=CONTROLLER:65535
 cookie={ECMP:#x}, duration=12.5s, table=1, n_packets=4, n_bytes=392, priority=10,ip,nw_dst=10.0.0.0/24 actions=group:5
 cookie={FENCE:#x}, duration=3.1s, table=2, n_packets=0, n_bytes=0, idle_timeout=60, hard_timeout=300, send_flow_rem priority=5,udp,tp_dst=53 actions=set_field:00:00:00:00:00:aa->eth_src,output:2
 cookie=0x7f00000000000001, duration=1.0s, table=2, n_packets=2, n_bytes=120, tcp,tp_dst=80 actions=ct(commit,zone=5,nat(src=10.0.0.1)),output:3
 cookie=0x0, duration=1.0s, table=3, n_packets=0, n_bytes=0, actions=drop
"""

GROUPS_OF15 = """\
OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):
 group_id=7,type=all,bucket=bucket_id:0,actions=output:1,bucket=bucket_id:1,actions=output:2
 group_id=5,type=select,selection_method=hash,fields(ip_src,ip_dst),bucket=bucket_id:0,watch_port:2,actions=output:2,bucket=bucket_id:1,weight:50,watch_port:3,actions=set_field:00:00:00:00:00:02->eth_dst,output:3
"""

GROUPS_OF13 = """\
OFPST_GROUP_DESC reply (OF1.3) (xid=0x2):
 group_id=7,type=all,bucket=actions=output:1,bucket=actions=output:2
 group_id=5,type=select,bucket=watch_port:2,actions=output:2,bucket=weight:50,watch_port:3,actions=set_field:00:00:00:00:00:02->eth_dst,output:3
"""

GROUP_STATS = """\
OFPST_GROUP reply (OF1.3) (xid=0x6):
 group_id=7,duration=0.037s,ref_count=0,packet_count=0,byte_count=0,bucket0:packet_count=0,byte_count=0,bucket1:packet_count=0,byte_count=0
 group_id=5,duration=0.060s,ref_count=1,packet_count=4,byte_count=392,bucket0:packet_count=3,byte_count=294,bucket1:packet_count=1,byte_count=98
"""

METERS = """\
OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):
meter=1 pktps burst stats bands=
type=drop rate=100 burst_size=25

meter=2 kbps bands=
type=drop rate=1000
"""

METER_STATS = """\
OFPST_METER reply (OF1.3) (xid=0x2):
meter:1 flow_count:1 packet_in_count:5 byte_in_count:490 duration:83.123s bands:
0: packet_count:2 byte_count:196

meter:2 flow_count:0 packet_in_count:0 byte_in_count:0 duration:0.078s bands:
0: packet_count:0 byte_count:0
"""

# ovs-ofctl -O OpenFlow13 diff-flows DESIRED SWITCH
DIFF_FLOWS = """\
-priority=100,ip,nw_dst=10.0.0.1 cookie=0x201aabbccddeeff actions=meter:1,output:2
+priority=100,ip,nw_dst=10.0.0.1 cookie=0x201aabbccddeeff actions=meter:1,output:1
-table=1 priority=10,arp cookie=0x302000000000008 actions=set_field:00:00:00:00:00:aa->eth_src,output:2
+table=1 priority=10,arp cookie=0x302000000000007 actions=set_field:00:00:00:00:00:aa->eth_src,output:2
+table=3  actions=drop
+table=4 priority=5,udp,tp_dst=53 cookie=0x501000000000009 idle_timeout=60 hard_timeout=300 actions=output:1
-table=5 priority=1 cookie=0x600000000000001 actions=drop
- cookie=0x100000000000002 actions=drop
"""


def sample_dump(groups: str = GROUPS_OF15) -> fd.Dump:
    return fd.Dump.from_text(FLOWS, groups, GROUP_STATS, METERS, METER_STATS, bridge="br-s1", switch="s1")


# --- parsing ---------------------------------------------------------------------------


def test_parse_flow_fields():
    f = fd.parse_flow(FLOWS.splitlines()[2])
    assert (f.cookie, f.app, f.kind, f.object) == (H1, "fabric", 1, cookies.object_id("h1"))
    assert (f.table, f.priority, f.n_packets, f.n_bytes, f.duration) == (1, 200, 5, 490, 12.5)
    assert f.match == {"ip": True, "nw_dst": "10.0.0.1"}
    assert f.actions == [{"meter": 1}, {"output": {"port": 1}}]
    assert f.match_text == "ip,nw_dst=10.0.0.1"
    assert f.actions_text == "meter:1,output:1"
    assert f.raw.startswith("cookie=") and f.parse_error is None
    assert f.text() == "table=1 priority=200 ip,nw_dst=10.0.0.1 actions=meter:1,output:1  n_packets=5 n_bytes=490"


@pytest.mark.parametrize(
    "line, table, priority, match, actions_text",
    [
        # empty match: OVS omits priority 32768 and OFPFlow alone would take n_bytes for the match
        (" cookie=0x0, duration=1.0s, table=3, n_packets=0, n_bytes=0, actions=drop", 3, 32768, {}, "drop"),
        # default priority with a match
        (" cookie=0x1, duration=1s, table=2, n_packets=0, n_bytes=0, tcp,tp_dst=80 actions=output:3",
         2, 32768, {"tcp": True, "tp_dst": "80"}, "output:3"),
        # timeouts and flags between counters and match
        (" cookie=0x1, duration=1s, table=4, n_packets=0, n_bytes=0, idle_timeout=60, send_flow_rem "
         "reset_counts priority=5,udp actions=output:1", 4, 5, {"udp": True}, "output:1"),
        # flags and no match
        (" cookie=0x1, duration=1s, table=4, n_packets=0, n_bytes=0, send_flow_rem actions=drop",
         4, 32768, {}, "drop"),
        # masks and metadata keep OVS's spelling
        (" cookie=0x1, duration=1s, table=0, n_packets=0, n_bytes=0, priority=9,metadata=0x5/0xff,"
         "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=write_metadata:0x1/0x1,goto_table:2",
         0, 9, {"metadata": "0x5/0xff", "dl_dst": "01:00:00:00:00:00/01:00:00:00:00:00"},
         "write_metadata:0x1/0x1,goto_table:2"),
    ],
)
def test_parse_flow_shapes(line, table, priority, match, actions_text):
    f = fd.parse_flow(line)
    assert f.parse_error is None
    assert (f.table, f.priority, f.match, f.actions_text) == (table, priority, match, actions_text)


def test_parse_flow_timeouts():
    f = fd.parse_flow(FLOWS.splitlines()[6])
    assert (f.idle_timeout, f.hard_timeout, f.priority) == (60, 300, 5)
    assert "idle_timeout=60 hard_timeout=300" in f.text()


def test_unparseable_flow_is_kept_with_counters():
    line = " cookie=0x201aabbccddeeff, duration=1s, table=1, n_packets=9, n_bytes=90, priority=7,ip actions=frobnicate:5"
    f = fd.parse_flow(line)
    assert f.parse_error
    assert (f.cookie, f.table, f.priority, f.n_packets, f.actions_text) == (0x201AABBCCDDEEFF, 1, 7, 9, "frobnicate:5")
    assert f.match_text == "ip"


def test_parse_flows_skips_headers_and_blank_lines():
    flows = fd.parse_flows(FLOWS + "\nNXST_FLOW reply (xid=0x4):\n")
    assert len(flows) == 8


def test_parse_groups_of15_with_stats():
    groups = fd.parse_groups(GROUPS_OF15, GROUP_STATS)
    assert [g.group_id for g in groups] == [5, 7]
    g = groups[0]
    assert (g.type, g.props) == ("select", {"selection_method": "hash", "fields": "ip_src,ip_dst"})
    assert (g.n_packets, g.n_bytes, g.ref_count, g.duration) == (4, 392, 1, 0.06)
    b0, b1 = g.buckets
    assert (b0.bucket_id, b0.props, b0.actions_text) == (0, {"watch_port": 2}, "output:2")
    assert (b1.bucket_id, b1.props) == (1, {"weight": 50, "watch_port": 3})
    assert b1.actions[-1] == {"output": {"port": 3}}
    assert b1.actions_text == "set_field:00:00:00:00:00:02->eth_dst,output:3"
    assert (b0.n_packets, b1.n_packets, b1.n_bytes) == (3, 1, 98)


def test_parse_groups_of13():
    g5 = fd.parse_groups(GROUPS_OF13)[0]
    assert g5.props == {} and g5.buckets[0].bucket_id is None
    assert [b.actions_text for b in g5.buckets] == ["output:2", "set_field:00:00:00:00:00:02->eth_dst,output:3"]
    g7 = fd.parse_groups(GROUPS_OF13)[1]
    assert [b.props for b in g7.buckets] == [{}, {}]


def test_parse_meters_with_stats():
    m1, m2 = fd.parse_meters(METERS, METER_STATS)
    assert (m1.meter_id, m1.flags) == (1, ["pktps", "burst", "stats"])
    assert m1.bands == [{"type": "drop", "rate": 100, "burst_size": 25, "n_packets": 2, "n_bytes": 196}]
    assert (m1.flow_count, m1.n_packets, m1.n_bytes, m1.duration) == (1, 5, 490, 83.123)
    assert m1.raw == "meter=1,pktps,burst,stats,bands=type=drop,rate=100,burst_size=25"
    assert (m2.meter_id, m2.flags, m2.raw) == (2, ["kbps"], "meter=2,kbps,bands=type=drop,rate=1000")


@pytest.mark.parametrize(
    "text",
    [
        "meter=1,pktps,burst,stats,bands=type=drop,rate=100,burst_size=25",
        "meter=1 stats burst pktps bands=type=drop rate=100 burst_size=25",
        "meter=1,burst,pktps,stats,bands=type=drop,burst_size=25,rate=100",
        "meter=1 pktps burst stats bands=\ntype=drop rate=100 burst_size=25",
    ],
)
def test_canonical_meter_spellings_agree(text):
    assert fd.canonical_meter(text) == "meter=1,pktps,burst,stats,bands=type=drop,rate=100,burst_size=25"


def test_canonical_meter_differs_on_rate():
    assert fd.canonical_meter("meter=1,kbps,bands=type=drop,rate=1") != fd.canonical_meter(
        "meter=1,kbps,bands=type=drop,rate=2")


# --- grouping ----------------------------------------------------------------------------


def test_by_object_and_by_app():
    d = sample_dump()
    objs = d.by_object()
    assert list(objs) == sorted(objs)
    assert [(f.table, f.priority) for f in objs[H1]] == [(0, 100), (1, 200)]
    apps = d.by_app()
    assert list(apps) == ["none", "core", "fabric", "fenced_clone", "bench"]
    assert [f.cookie for f in apps["fabric"]] == [H1, H1, H2, ECMP]  # by table, then priority descending


def test_packets():
    d = sample_dump()
    assert d.packets(cookie=H1) == 12
    assert d.packets(app="fabric") == 19
    assert d.packets(cookie=H1, app="core") == 0
    assert d.packets() == 22
    assert d.bytes(cookie=H2) == 294


def test_filter_keeps_used_groups_and_meters():
    d = sample_dump()
    fab = d.filter("fabric")
    assert {f.app for f in fab.flows} == {"fabric"}
    assert [g.group_id for g in fab.groups] == [5]
    assert [m.meter_id for m in fab.meters] == [1]
    core = d.filter("core")
    assert (core.groups, core.meters) == ([], [])


def test_references_follow_group_chains():
    groups = "OFPST_GROUP_DESC reply (OF1.3):\n group_id=1,type=indirect,bucket=actions=group:2\n" \
             " group_id=2,type=all,bucket=actions=output:1\n group_id=3,type=all,bucket=actions=output:2\n"
    flows = " cookie=0x0201000000000001, duration=1s, table=0, n_packets=0, n_bytes=0, priority=1 actions=group:1\n"
    d = fd.Dump.from_text(flows, groups, bridge="b")
    assert d.references() == {("group", 1), ("group", 2)}
    assert [g.group_id for g in d.filter("fabric").groups] == [1, 2]


def test_output_ports_follow_a_route_through_its_groups():
    groups = "OFPST_GROUP_DESC reply (OF1.3):\n group_id=1,type=select,bucket=watch_port:11,actions=output:11," \
             "bucket=watch_port:12,actions=output:12\n group_id=2,type=indirect,bucket=actions=group:1\n" \
             " group_id=3,type=select\n"
    flows = (" cookie=0x0201000000000001, duration=1s, table=90, n_packets=0, n_bytes=0, priority=500,ip,"
             "nw_dst=10.0.0.1 actions=group:2\n"
             " cookie=0x0201000000000002, duration=1s, table=90, n_packets=0, n_bytes=0, priority=500,ip,"
             "nw_dst=10.0.0.2 actions=mod_dl_dst:02:00:00:00:00:01,output:3\n"
             " cookie=0x0201000000000003, duration=1s, table=90, n_packets=0, n_bytes=0, priority=500,ip,"
             "nw_dst=10.0.0.3 actions=group:3\n"
             " cookie=0x0201000000000004, duration=1s, table=90, n_packets=0, n_bytes=0, priority=500,ip,"
             "nw_dst=10.0.0.4 actions=group:9\n")
    d = fd.Dump.from_text(flows, groups, bridge="b")
    by_dst = {f.match["nw_dst"]: d.output_ports(f) for f in d.flows}
    assert by_dst == {"10.0.0.1": [11, 12], "10.0.0.2": [3], "10.0.0.3": [], "10.0.0.4": []}


# --- diff classification -----------------------------------------------------------------


def test_parse_flow_diff_classifies():
    result = fd.parse_flow_diff(DIFF_FLOWS)
    assert [e.key for e in result.missing] == ["table=0 priority=32768", "table=5 priority=1"]
    assert result.missing[1].desired == "table=5 priority=1 cookie=0x600000000000001 actions=drop"
    assert result.missing[0].cookies == (0x100000000000002,)
    assert [e.key for e in result.unexpected] == ["table=3 priority=32768", "table=4 priority=5 udp,tp_dst=53"]
    assert result.unexpected[0].cookies == (0,) and result.unexpected[0].actual == "table=3  actions=drop"
    assert [e.key for e in result.different] == ["table=0 priority=100 ip,nw_dst=10.0.0.1", "table=1 priority=10 arp"]
    cookie_change = result.different[1]
    assert cookie_change.cookies == (0x302000000000008, 0x302000000000007)
    assert cookie_change.apps == {"fenced_clone"}
    assert "output:2" in result.different[0].desired and "output:1" in result.different[0].actual
    assert result.summary("s1") == "diff s1: 2 missing, 2 unexpected, 2 different"
    assert not result.identical and bool(result)


def test_parse_flow_diff_empty_is_identical():
    result = fd.parse_flow_diff("")
    assert result.identical and not result
    assert result.summary("s1") == "diff s1: 0 missing, 0 unexpected, 0 different"


def test_diff_filter_by_app():
    result = fd.parse_flow_diff(DIFF_FLOWS)
    fabric = result.filter("fabric")
    assert (len(fabric.missing), len(fabric.unexpected), len(fabric.different)) == (0, 0, 1)
    assert result.filter("oam_ecmp").missing[0].key == "table=5 priority=1"


def test_compare_keyed():
    d = fd.compare._compare_keyed("meter", {1: "a", 2: "b", 3: "c"}, {2: "b", 3: "x", 4: "d"}, {3: {"fabric"}})
    assert [e.key for e in d.missing] == ["meter=1"]
    assert [e.key for e in d.unexpected] == ["meter=4"]
    assert [(e.key, e.desired, e.actual, e.apps) for e in d.different] == [("meter=3", "c", "x", {"fabric"})]


@pytest.mark.parametrize(
    "printed, add_flow",
    [
        ("table:1 priority=10,udp,tp_dst=53 cookie:0x301cdf7cbe88ad7 actions=set_field:00:00:00:00:00:aa->eth_src,output:3",
         "table=1,priority=10,udp,tp_dst=53,cookie=0x301cdf7cbe88ad7,actions=set_field:00:00:00:00:00:aa->eth_src,output:3"),
        ("priority=100,ip,nw_dst=10.0.0.1 cookie:0x5 idle:60 hard:300 send_flow_rem actions=meter:1,output:1",
         "priority=100,ip,nw_dst=10.0.0.1,cookie=0x5,idle_timeout=60,hard_timeout=300,send_flow_rem,actions=meter:1,output:1"),
        ("actions=drop", "actions=drop"),
        ("in_port=1,dl_src=00:00:00:00:00:01 cookie:0x7 actions=goto_table:3",
         "in_port=1,dl_src=00:00:00:00:00:01,cookie=0x7,actions=goto_table:3"),
        ("table:254 priority=65535 actions=drop", "table=254,priority=65535,actions=drop"),
        ("priority=1 buf:0x5 actions=drop", None),  # unknown flow-mod field: no guessing
    ],
)
def test_flow_mod_to_add_flow(printed, add_flow):
    assert fd.flow_mod_to_add_flow(printed) == add_flow


def test_as_installed_uses_round_trip_or_falls_back(monkeypatch):
    flows = ["table=1,priority=10,udp,actions=mod_dl_src:00:00:00:00:00:aa,output:3", "actions=drop"]
    printed = ("usable protocols: OXM-OpenFlow13\nchosen protocol: OXM-OpenFlow13\n"
               "OFPT_FLOW_MOD (OF1.3) (xid=0x1): ADD table:1 priority=10,udp "
               "actions=set_field:00:00:00:00:00:aa->eth_src,output:3\n"
               "OFPT_FLOW_MOD (OF1.3) (xid=0x2): ADD actions=drop\n")
    reply = types.SimpleNamespace(returncode=0, stdout=printed, stderr="")
    monkeypatch.setattr(fd.ofctl, "run", lambda args, ok=(0,): reply)
    assert fd.as_installed(flows) == [
        "table=1,priority=10,udp,actions=set_field:00:00:00:00:00:aa->eth_src,output:3", "actions=drop"]
    assert fd.as_installed(flows + ["actions=output:1"]) == flows + ["actions=output:1"]  # count mismatch
    reply.returncode, reply.stdout = 1, ""
    assert fd.as_installed(flows) == flows  # e.g. "no usable protocol"
    assert fd.as_installed([]) == []


def test_desired_references():
    refs = fd.compare._desired_references([
        f"table=1,priority=10,cookie={ECMP:#x},ip,actions=group:5",
        f"table=1,priority=11,cookie={H1:#x},ip,nw_dst=10.0.0.1,actions=meter:1,output:1",
        "table=0,priority=0,actions=drop",
    ])
    assert refs == {("group", 5): {"fabric"}, ("meter", 1): {"fabric"}}


def test_load_desired_validates():
    assert fd.compare._load_desired('{"flows": ["a"], "groups": []}') == {"flows": ["a"], "groups": [], "meters": []}
    with pytest.raises(fd.FlowdumpError):
        fd.compare._load_desired('{"flows": [1]}')
    with pytest.raises(fd.FlowdumpError):
        fd.compare._load_desired("not json")


# --- rendering ----------------------------------------------------------------------------


def test_render_with_labels():
    text = fd.render(sample_dump(), {H1: "fabric host h1", ECMP: "fabric ecmp 10.0.0.0/24"})
    lines = text.splitlines()
    assert lines[0] == "s1 (bridge br-s1): 8 flows, 2 groups, 2 meters, 22 pkts"
    i = lines.index(f"fabric  host h1  (2 flows, 12 pkts)  cookie={H1:#018x}")
    assert lines[i + 1] == ("    table=0 priority=100 in_port=1,dl_src=00:00:00:00:00:01 actions=goto_table:1"
                            "  n_packets=7 n_bytes=686")
    assert lines[i + 2].startswith("    table=1 priority=200 ip,nw_dst=10.0.0.1 actions=meter:1,output:1")
    assert f"fabric  ecmp 10.0.0.0/24  (1 flow, 4 pkts)  cookie={ECMP:#018x}" in lines
    # unlabelled objects: app/kind/object-hex
    assert f"fabric  {cookies.decode(H2)}  (1 flow, 3 pkts)  cookie={H2:#018x}" in lines
    assert "none  no cookie  (1 flow, 0 pkts)  cookie=0x0000000000000000" in lines
    g = lines.index("groups")
    assert lines[g + 1] == "  group 5  select  selection_method=hash,fields(ip_src,ip_dst)  (1 ref, 4 pkts)"
    assert lines[g + 2] == "      bucket 0  watch_port:2  actions=output:2  n_packets=3 n_bytes=294"
    m = lines.index("meters")
    assert lines[m + 1] == "  meter 1  pktps burst stats  (1 flow, 5 pkts in)"
    assert lines[m + 2] == "      band 0  type=drop rate=100 burst_size=25  n_packets=2 n_bytes=196"
    # apps in app-id order, objects in cookie order
    heads = [ln for ln in lines if ln and not ln.startswith(" ") and "cookie=" in ln]
    assert [h.split()[0] for h in heads] == ["none", "core", "fabric", "fabric", "fabric", "fenced_clone", "bench"]


def test_render_empty_bridge():
    text = fd.render(fd.Dump.from_text("OFPST_FLOW reply (OF1.3) (xid=0x2):\n", bridge="b0"))
    assert text == "b0 (bridge b0): 0 flows, 0 groups, 0 meters, 0 pkts\n"


def test_json_document():
    doc = json.loads(json.dumps(sample_dump().to_json({H1: "fabric host h1"})))
    assert (doc["switch"], doc["bridge"]) == ("s1", "br-s1")
    f = next(f for f in doc["flows"] if f["label"] == "fabric host h1" and f["table"] == 1)
    assert f["cookie"] == f"{H1:#018x}" and f["app"] == "fabric" and f["kind"] == 1
    assert f["object"] == f"{cookies.object_id('h1'):#014x}"
    assert f["match"] == {"ip": True, "nw_dst": "10.0.0.1"}
    assert f["actions"] == [{"meter": 1}, {"output": {"port": 1}}]
    assert (f["priority"], f["n_packets"], f["n_bytes"], f["duration"]) == (200, 5, 490, 12.5)
    fence = next(f for f in doc["flows"] if f["app"] == "fenced_clone")
    assert fence["label"] == str(cookies.decode(FENCE))
    assert fence["actions"][0]["set_field"]["value"]["eth_src"]  # masks become text
    assert doc["groups"][0]["buckets"][1]["props"] == {"weight": 50, "watch_port": 3}
    assert doc["meters"][0]["flags"] == ["pktps", "burst", "stats"]


def test_render_diff():
    result = fd.parse_flow_diff(DIFF_FLOWS)
    text = fd.render_diff(result, "s1", {0x201AABBCCDDEEFF: "fabric host h1"})
    lines = text.splitlines()
    assert lines[0] == "diff s1: 2 missing, 2 unexpected, 2 different"
    assert "  missing     flow   table=5 priority=1 cookie=0x600000000000001 actions=drop" in lines[2]
    i = next(i for i, ln in enumerate(lines) if "different" in ln and "nw_dst=10.0.0.1" in ln)
    assert lines[i].endswith("[fabric host h1]")
    assert lines[i + 1].strip().startswith("desired: priority=100,ip,nw_dst=10.0.0.1")
    assert lines[i + 2].strip().startswith("actual:  priority=100")


# --- CLI with canned ovs-ofctl replies and a local REST API ----------------------------


@pytest.fixture
def fake_switch(tmp_path, monkeypatch):
    """A rundir with br-s1.mgmt and canned ovs-ofctl replies; returns (rundir, calls, replies)."""
    (tmp_path / "br-s1.mgmt").touch()
    calls: list[list[str]] = []
    replies = {
        "dump-flows": FLOWS,
        "dump-groups": GROUPS_OF15,
        "dump-group-stats": GROUP_STATS,
        "dump-meters": METERS,
        "meter-stats": METER_STATS,
        "diff-flows": (2, DIFF_FLOWS),
        "parse-flows": (1, ""),  # no OF1.3 round trip here: the desired flows go to diff-flows as written
    }

    def fake_ofctl(args, ok=(0,)):
        args = list(args)
        calls.append(args)
        cmd = fd.ofctl.command_word(args)
        if cmd == "parse-group":  # canned: already in OVS's printed form
            return types.SimpleNamespace(returncode=0, stdout=f"OFPT_GROUP_MOD (OF1.5) (xid=0x1):\n ADD {args[-1]}\n",
                                         stderr="")
        reply = replies[cmd]
        rc, out = reply if isinstance(reply, tuple) else (0, reply)
        return types.SimpleNamespace(returncode=rc, stdout=out, stderr="")

    monkeypatch.setattr(fd.ofctl, "run", fake_ofctl)
    return str(tmp_path), calls, replies


def ns(switch="br-s1", **kw):
    base = dict(switch=switch, app=None, diff=False, json=False, rundir=None, db=None, rest=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_human_output(fake_switch, controller, capsys):
    rundir, calls, _ = fake_switch
    ctl = controller({"/v1/cookies": {f"{H1:#018x}": "fabric host h1"}})
    assert fd.cli_main(ns(rundir=rundir, rest=ctl.url)) == 0
    out = capsys.readouterr().out
    assert f"fabric  host h1  (2 flows, 12 pkts)  cookie={H1:#018x}" in out
    assert out.startswith(f"br-s1 (bridge br-s1 in {rundir}): 8 flows")
    target = f"unix:{rundir}/br-s1.mgmt"
    assert ["-O", "OpenFlow13", "--no-names", "dump-flows", target] in calls
    assert ["-O", "OpenFlow13,OpenFlow15", "--no-names", "dump-groups", target] in calls


def test_cli_db_option_and_json_app_filter(fake_switch, capsys):
    rundir, calls, _ = fake_switch
    assert fd.cli_main(ns(db=f"unix:{rundir}/db.sock", app="fabric", json=True)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {f["app"] for f in doc["flows"]} == {"fabric"} and len(doc["flows"]) == 4
    assert [g["group_id"] for g in doc["groups"]] == [5]
    assert [m["meter_id"] for m in doc["meters"]] == [1]
    assert doc["flows"][0]["label"].startswith("fabric/")


def test_cli_unknown_app(fake_switch, capsys):
    rundir, _, _ = fake_switch
    assert fd.cli_main(ns(rundir=rundir, app="nosuchapp")) == 2
    assert "unknown app 'nosuchapp'" in capsys.readouterr().err


def test_cli_diff(fake_switch, controller, capsys):
    rundir, calls, _ = fake_switch
    desired = {
        "flows": ["table=0,priority=0,cookie=0x0100000000000001,actions=CONTROLLER:65535"],
        # group 7 as on the switch, group 5 without selection_method, group 9 not on the switch
        "groups": ["group_id=7,type=all,bucket=bucket_id:0,actions=output:1,bucket=bucket_id:1,actions=output:2",
                   "group_id=5,type=select,bucket=bucket_id:0,watch_port:2,actions=output:2",
                   "group_id=9,type=all,bucket=bucket_id:0,actions=output:1"],
        "meters": ["meter=1 pktps burst stats bands=type=drop rate=100 burst_size=25"],
    }
    ctl = controller({"/v1/switches/br-s1/desired": desired, "/v1/cookies": {}})
    assert fd.cli_main(ns(rundir=rundir, rest=ctl.url, diff=True)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "diff br-s1: 3 missing, 3 unexpected, 3 different"
    assert any(ln.startswith("  missing     group  group_id=9") for ln in out)
    assert any(ln.startswith("  different   group  group_id=5") for ln in out)
    assert any(ln.startswith("  unexpected  meter  meter=2,kbps") for ln in out)
    diff_call = next(c for c in calls if "diff-flows" in c)
    assert diff_call[-1] == f"unix:{rundir}/br-s1.mgmt" and diff_call[-2].endswith("desired.flows")


def test_cli_diff_identical_exit_0(fake_switch, controller, capsys):
    rundir, _, replies = fake_switch
    replies["diff-flows"] = (0, "")
    replies["dump-groups"] = "OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):\n"
    replies["dump-meters"] = "OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):\n"
    ctl = controller({"/v1/switches/br-s1/desired": {"flows": [], "groups": [], "meters": []}})
    assert fd.cli_main(ns(rundir=rundir, rest=ctl.url, diff=True, json=True)) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["summary"] == "diff br-s1: 0 missing, 0 unexpected, 0 different" and doc["identical"]
    assert "warning: no object names" in captured.err  # /v1/cookies is 404 here: labels degrade


def test_cli_diff_app_filter(fake_switch, controller, capsys):
    rundir, _, _ = fake_switch
    ctl = controller({"/v1/switches/br-s1/desired": {"flows": [], "groups": [], "meters": []}, "/v1/cookies": {}})
    assert fd.cli_main(ns(rundir=rundir, rest=ctl.url, diff=True, app="fabric")) == 1
    out = capsys.readouterr().out.splitlines()
    # fabric: the different flow, and group 5 / meter 1 that fabric flows on the switch use
    assert out[0] == "diff br-s1: 0 missing, 2 unexpected, 1 different"


def test_cli_diff_needs_rest(fake_switch, capsys):
    rundir, _, _ = fake_switch
    assert fd.cli_main(ns(rundir=rundir, diff=True)) == 2
    assert "--diff needs the controller" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_diff_controller_unreachable(fake_switch, capsys):
    rundir, _, _ = fake_switch
    rc = fd.cli_main(ns(rundir=rundir, diff=True, rest=f"http://127.0.0.1:{free_port()}"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ovslab flows: controller unreachable at http://127.0.0.1:")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_diff_controller_404(fake_switch, controller, capsys):
    rundir, _, _ = fake_switch
    ctl = controller({})
    assert fd.cli_main(ns(rundir=rundir, diff=True, rest=ctl.url)) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_cli_bridge_not_found(tmp_path, capsys):
    assert fd.cli_main(ns(switch="nope", rundir=str(tmp_path))) == 2
    assert capsys.readouterr().err == f"ovslab flows: bridge 'nope' not found: no nope.mgmt in {tmp_path}\n"


def test_cli_ofctl_fails(tmp_path, monkeypatch, capsys):
    (tmp_path / "br0.mgmt").touch()
    monkeypatch.setattr(fd, "OFCTL", "false")
    assert fd.cli_main(ns(switch="br0", rundir=str(tmp_path))) == 2
    assert capsys.readouterr().err.startswith("ovslab flows: ovs-ofctl dump-flows failed:")


def test_cli_ofctl_missing(tmp_path, monkeypatch, capsys):
    (tmp_path / "br0.mgmt").touch()
    monkeypatch.setattr(fd, "OFCTL", str(tmp_path / "no-such-ovs-ofctl"))
    assert fd.cli_main(ns(switch="br0", rundir=str(tmp_path))) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_db_must_be_unix(capsys):
    assert fd.cli_main(ns(db="tcp:127.0.0.1:6640")) == 2
    assert "--db" in capsys.readouterr().err


def _fake_lab(monkeypatch, result):
    mod = types.ModuleType("ovs_scripts.lab")
    mod.find_switch = lambda name: result(name) if callable(result) else result
    monkeypatch.setitem(sys.modules, "ovs_scripts.lab", mod)


def test_cli_no_lab_switch(monkeypatch, capsys):
    _fake_lab(monkeypatch, None)
    assert fd.cli_main(ns(switch="s9")) == 2
    assert capsys.readouterr().err == "ovslab flows: no lab switch named s9; use --rundir or --db for other bridges\n"


def test_cli_lab_module_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ovs_scripts.lab", None)  # import raises ImportError
    assert fd.cli_main(ns(switch="s1")) == 2
    assert "no lab switch named s1; use --rundir or --db for other bridges" in capsys.readouterr().err


def test_cli_lab_switch(fake_switch, controller, monkeypatch, capsys):
    rundir, calls, _ = fake_switch
    ctl = controller({"/v1/cookies": {f"{H2:#x}": "fabric host h2"}})
    _fake_lab(monkeypatch, lambda name: ("demo", "br-s1", rundir, ctl.url) if name == "s1" else None)
    assert fd.cli_main(ns(switch="s1")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"s1 (bridge br-s1 in {rundir})")
    assert "fabric  host h2  (1 flow, 3 pkts)" in out
    assert ctl.requests == ["/v1/cookies"]


def test_main_parses_arguments(fake_switch, capsys):
    rundir, _, _ = fake_switch
    assert fd.main(["br-s1", "--rundir", rundir, "--app", "core"]) == 0
    assert "core  core/0/0x000000000001  (1 flow, 1 pkts)" in capsys.readouterr().out


# --- the package keeps the single module's API; its REST reads go through ovs_scripts.kit -----


def test_package_keeps_the_module_api(monkeypatch):
    # what the lab, the demo and the tests use as ``flowdump.<name>``
    for name in ("dump", "diff", "fetch_desired", "fetch_labels", "mgmt_target", "parse_flows", "parse_groups",
                 "FlowEntry", "Dump", "Diff", "FlowdumpError", "REST_AUTH", "cli_main", "add_arguments", "main",
                 "render", "render_diff", "canonical_meter", "as_installed", "flow_mod_to_add_flow"):
        assert hasattr(fd, name), name
    assert [n for n in fd.__all__ if not hasattr(fd, n)] == []
    # the settings still reach the code that reads them
    monkeypatch.setattr(fd, "OFCTL", "/bin/false")
    monkeypatch.setattr(fd, "HTTP_TIMEOUT", 1.5)
    assert (fd.ofctl.OFCTL, fd.remote.HTTP_TIMEOUT) == ("/bin/false", 1.5)
    monkeypatch.undo()
    assert (fd.OFCTL, fd.ofctl.OFCTL, fd.HTTP_TIMEOUT) == ("ovs-ofctl", "ovs-ofctl", 5.0)


def test_rest_reads_send_the_token_and_report_failures_in_one_line(http_stub, monkeypatch):
    srv = http_stub({("GET", "/v1/cookies"): (200, {f"{H1:#x}": "fabric host h1", "junk": "x"}),
                     ("GET", "/v1/switches/s%201/desired"): (200, b"{not json"),
                     ("GET", "/v1/switches/s2/desired"): (401, {"error": "no Authorization header"}),
                     ("GET", "/v1/switches/s3/desired"): (503, b"")})
    monkeypatch.setitem(fd.REST_AUTH, "token", "k" * 40)
    assert fd.fetch_labels(srv.url) == {H1: "fabric host h1"}
    assert srv.requests[0].headers["Authorization"] == "Bearer " + "k" * 40
    with pytest.raises(fd.FlowdumpError, match=r"controller sent invalid JSON for .*/v1/switches/s%201/desired"):
        fd.fetch_desired(srv.url, "s 1")
    with pytest.raises(fd.FlowdumpError) as err:
        fd.fetch_desired(srv.url + "/", "s2")
    assert str(err.value) == (f"controller answered HTTP 401 for {srv.url}/v1/switches/s2/desired: "
                              "no Authorization header")
    with pytest.raises(fd.FlowdumpError) as err:
        fd.fetch_desired(srv.url, "s3")
    assert str(err.value) == f"controller answered HTTP 503 for {srv.url}/v1/switches/s3/desired"
    monkeypatch.setitem(fd.REST_AUTH, "token", None)
    fd.fetch_labels(srv.url)
    assert "Authorization" not in srv.requests[-1].headers
