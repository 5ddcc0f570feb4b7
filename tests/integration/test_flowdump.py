"""ovs_scripts.flowdump against a real Open vSwitch.

The test starts its own ovsdb-server and ovs-vswitchd in a temporary
directory (OVS_RUNDIR/OVS_DBDIR/OVS_LOGDIR there, explicit pidfiles), with
ovs-vswitchd inside a private network namespace so that the userspace
datapath's tap devices never appear in the host's namespace.  Bridges get
random names and the netdev datapath.  Teardown deletes the bridges through
OVSDB first, then stops both daemons by their pidfiles and removes the
namespace.  The host's OVS (/var/run/openvswitch) is never used.

Traffic is injected with ``ovs-ofctl packet-out ... actions=table`` so flow,
group and meter counters move without any host or route.  The controller's
REST API is a tiny http.server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile

import pytest

from ovs_scripts import flowdump as fd
from ovs_scripts.kit import wait_for
from ryu_apps.framework import cookies
from tests.fakecontroller import controller  # noqa: F401  (fixture)

TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl")
SCHEMAS = ("/usr/share/openvswitch/vswitch.ovsschema", "/usr/local/share/openvswitch/vswitch.ovsschema")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in TOOLS:
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{tool} not installed"
    if not any(os.path.exists(p) for p in SCHEMAS):
        return "vswitch.ovsschema not found"
    return None


pytestmark = [pytest.mark.integration, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]

H1 = cookies.make("fabric", 1, "h1")
H2 = cookies.make("fabric", 1, "h2")
ECMP = cookies.make("fabric", 2, "10.0.1.0/24")
CORE = cookies.make("core", 0, 1)
FENCE = cookies.make("fenced_clone", 1, "fence-a")

FLOWS = [
    f"table=0,priority=100,cookie={H1:#x},ip,nw_dst=10.0.0.1,actions=meter:1,output:1",
    f"table=0,priority=100,cookie={H1:#x},arp,arp_tpa=10.0.0.1,actions=output:1",
    f"table=0,priority=100,cookie={H2:#x},ip,nw_dst=10.0.0.2,actions=output:2",
    f"table=0,priority=50,cookie={ECMP:#x},ip,nw_dst=10.0.1.0/24,actions=group:1",
    f"table=0,priority=0,cookie={CORE:#x},actions=drop",
    f"table=1,priority=10,cookie={FENCE:#x},udp,tp_dst=53,actions=set_field:00:00:00:00:00:aa->eth_src,output:3",
]
GROUPS = [
    "group_id=1,type=select,bucket=weight:10,output:1,bucket=weight:20,output:2",
    "group_id=2,type=fast_failover,bucket=watch_port:1,output:1,bucket=watch_port:2,output:2",
]
METERS = ["meter=1,pktps,burst,stats,bands=type=drop,rate=1000,burst_size=100"]

# The same state spelled differently: OVS's normalisation must see no difference.
EQUIVALENT = {
    "flows": [
        f"priority=100,cookie={H1:#x},nw_dst=10.0.0.1/32,ip,actions=meter:1,output:1",
        f"table=0,priority=100,cookie={H1:#x},arp,arp_tpa=10.0.0.1,actions=1",
        f"table=0,priority=100,cookie={H2:#x},dl_type=0x0800,nw_dst=10.0.0.2,actions=output:2",
        f"table=0,priority=50,cookie={ECMP:#x},ip,nw_dst=10.0.1.7/24,actions=group:1",
        f"table=0,priority=0,cookie={CORE:#x},actions=drop",
        f"table=1,priority=10,cookie={FENCE:#x},udp,tp_dst=53,actions=mod_dl_src:00:00:00:00:00:aa,output:3",
    ],
    "groups": [
        "group_id=2,type=ff,bucket=watch_port:1,actions=output:1,bucket=watch_port:2,actions=output:2",
        "group_id=1,type=select,bucket=weight:10,actions=output:1,bucket=weight:20,actions=output:2",
    ],
    "meters": ["meter=1 stats pktps burst bands=type=drop rate=1000 burst_size=100"],
}


# --- a private OVS ----------------------------------------------------------------------


def _run(argv, env=None, check=True, timeout=30):
    cp = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def _alive(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return name.encode() in fh.read()
    except OSError:
        return False


class PrivateOvs:
    """ovsdb-server + ovs-vswitchd (in their own netns) living in one temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="fdt-")  # short: unix socket paths are limited
        self.netns: str | None = None
        self.bridges: list[str] = []
        self.env = dict(os.environ, OVS_RUNDIR=self.dir, OVS_DBDIR=self.dir, OVS_LOGDIR=self.dir,
                        OVS_SYSCONFDIR=self.dir)
        self.env["PATH"] = self.env.get("PATH", "") + ":/usr/sbin:/sbin"
        self.db = f"unix:{self.dir}/db.sock"

    def start(self):
        schema = next(p for p in SCHEMAS if os.path.exists(p))
        d = self.dir
        _run(["ovsdb-tool", "create", f"{d}/conf.db", schema], env=self.env)
        _run(["ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb-server.pid",
              f"--unixctl={d}/ovsdb-server.ctl", f"--log-file={d}/ovsdb-server.log", "--detach", "--no-chdir"],
             env=self.env)
        self.vsctl("--no-wait", "init")
        vswitchd = ["ovs-vswitchd", self.db, f"--pidfile={d}/ovs-vswitchd.pid", f"--unixctl={d}/ovs-vswitchd.ctl",
                    f"--log-file={d}/ovs-vswitchd.log", "--detach", "--no-chdir"]
        if shutil.which("ip", path=self.env["PATH"]):
            self.netns = f"fdt-{secrets.token_hex(3)}"
            _run(["ip", "netns", "add", self.netns])
            vswitchd = ["ip", "netns", "exec", self.netns, *vswitchd]
        _run(vswitchd, env=self.env)

    def vsctl(self, *args, check=True):
        return _run(["ovs-vsctl", f"--db={self.db}", "--timeout=30", *args], env=self.env, check=check)

    def add_bridge(self, protocols: str = "OpenFlow13,OpenFlow15") -> str:
        name = f"fd{secrets.token_hex(4)}"
        self.bridges.append(name)
        self.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure",
                   f"protocols={protocols}")
        mgmt = os.path.join(self.dir, f"{name}.mgmt")
        if not wait_for(lambda: os.path.exists(mgmt), 10):
            raise RuntimeError(f"{mgmt} did not appear")
        return name

    def del_bridge(self, name: str):
        self.vsctl("--if-exists", "del-br", name, check=False)
        if name in self.bridges:
            self.bridges.remove(name)

    def _stop(self, daemon: str):
        pidfile = os.path.join(self.dir, f"{daemon}.pid")
        try:
            with open(pidfile) as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            return
        if not _alive(pid, daemon):
            return
        os.kill(pid, signal.SIGTERM)
        if not wait_for(lambda: not _alive(pid, daemon), 10):
            os.kill(pid, signal.SIGKILL)

    def stop(self):
        for name in list(self.bridges):  # bridges first: their taps must go through OVSDB
            self.del_bridge(name)
        self._stop("ovs-vswitchd")
        self._stop("ovsdb-server")
        if self.netns:
            _run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ovs():
    sandbox = PrivateOvs()
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.stop()


def ipv4_frame(dst: str, src: str = "10.0.0.9", proto: int = 1) -> str:
    """An Ethernet/IPv4/ICMP echo frame as hex (checksums do not matter to the flow tables)."""
    eth = bytes.fromhex("000000000001" "00000000aa09" "0800")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1)
    return (eth + ip + icmp).hex()


def program(ovs: PrivateOvs, bridge: str, flows=FLOWS, groups=GROUPS, meters=METERS):
    target = fd.mgmt_target(bridge, ovs.dir)
    for meter in meters:
        _run(["ovs-ofctl", "-O", "OpenFlow13", "add-meter", target, meter])
    for group in groups:
        _run(["ovs-ofctl", "-O", "OpenFlow13", "add-group", target, group])
    with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as fh:
        fh.write("\n".join(flows) + "\n")
    try:
        _run(["ovs-ofctl", "-O", "OpenFlow13", "add-flows", target, fh.name])
    finally:
        os.unlink(fh.name)


def send(ovs: PrivateOvs, bridge: str, dst: str, count: int):
    target = fd.mgmt_target(bridge, ovs.dir)
    for _ in range(count):
        _run(["ovs-ofctl", "-O", "OpenFlow13", "packet-out", target,
              f"in_port=CONTROLLER packet={ipv4_frame(dst)} actions=table"])


@pytest.fixture
def bridge(ovs):
    """A programmed bridge: 3 packets hit fabric h1, 2 go through ECMP group 1."""
    name = ovs.add_bridge()
    try:
        program(ovs, name)
        send(ovs, name, "10.0.0.1", 3)
        send(ovs, name, "10.0.1.5", 2)
        yield name
    finally:
        ovs.del_bridge(name)


LABELS = {f"{H1:#018x}": "fabric host h1", f"{H2:#018x}": "fabric host h2", f"{ECMP:#018x}": "fabric ecmp 10.0.1.0/24"}


def args(switch, **kw):
    base = dict(switch=switch, app=None, diff=False, json=False, rundir=None, db=None, rest=None)
    base.update(kw)
    return argparse.Namespace(**base)


# --- dump -------------------------------------------------------------------------------


def test_dump_groups_by_cookie_and_counts(ovs, bridge):
    d = fd.dump(bridge, ovs.dir)
    assert len(d.flows) == len(FLOWS) and all(f.parse_error is None for f in d.flows)
    objs = d.by_object()
    assert [(f.table, f.priority, f.match_text) for f in objs[H1]] == [
        (0, 100, "arp,arp_tpa=10.0.0.1"), (0, 100, "ip,nw_dst=10.0.0.1")]
    assert d.packets(cookie=H1) == 3
    assert d.packets(cookie=H2) == 0
    assert d.packets(cookie=ECMP) == 2
    assert d.packets(app="fabric") == 5
    assert d.bytes(cookie=H1) == 3 * 42
    assert list(d.by_app()) == ["core", "fabric", "fenced_clone"]
    h1_ip = next(f for f in objs[H1] if f.match.get("ip"))
    assert h1_ip.actions == [{"meter": 1}, {"output": {"port": 1}}]
    assert (h1_ip.app, h1_ip.kind, h1_ip.object) == ("fabric", 1, cookies.object_id("h1"))

    g1, g2 = d.groups
    assert (g1.group_id, g1.type, g1.n_packets, g1.ref_count) == (1, "select", 2, 1)
    assert [b.props.get("weight") for b in g1.buckets] == [10, 20]
    assert sum(b.n_packets for b in g1.buckets) == 2
    assert (g2.type, [b.props for b in g2.buckets]) == ("ff", [{"watch_port": 1}, {"watch_port": 2}])
    (m1,) = d.meters
    assert (m1.meter_id, m1.flags, m1.flow_count, m1.n_packets) == (1, ["pktps", "burst", "stats"], 1, 3)
    assert m1.bands[0]["rate"] == 1000 and m1.bands[0]["burst_size"] == 100
    assert d.group_version == "OpenFlow15"


def test_cli_render_with_labels(ovs, bridge, controller, capsys):
    ctl = controller({"/v1/cookies": LABELS})
    assert fd.cli_main(args(bridge, rundir=ovs.dir, rest=ctl.url)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{bridge} (bridge {bridge} in {ovs.dir}): 6 flows, 2 groups, 1 meter, 5 pkts"
    i = lines.index(f"fabric  host h1  (2 flows, 3 pkts)  cookie={H1:#018x}")
    assert lines[i + 1] == "    table=0 priority=100 arp,arp_tpa=10.0.0.1 actions=output:1  n_packets=0 n_bytes=0"
    assert lines[i + 2] == "    table=0 priority=100 ip,nw_dst=10.0.0.1 actions=meter:1,output:1  n_packets=3 n_bytes=126"
    assert f"fabric  ecmp 10.0.1.0/24  (1 flow, 2 pkts)  cookie={ECMP:#018x}" in lines
    assert f"core  {cookies.decode(CORE)}  (1 flow, 0 pkts)  cookie={CORE:#018x}" in lines
    assert "  group 1  select  (1 ref, 2 pkts)" in lines
    assert "  meter 1  pktps burst stats  (1 flow, 3 pkts in)" in lines


def test_cli_json_app_filter_via_db(ovs, bridge, capsys):
    assert fd.cli_main(args(bridge, db=ovs.db, app="fabric", json=True)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["switch"], doc["bridge"]) == (bridge, bridge)
    assert {f["app"] for f in doc["flows"]} == {"fabric"} and len(doc["flows"]) == 4
    assert [g["group_id"] for g in doc["groups"]] == [1]  # group 2 is used by no fabric flow
    assert [m["meter_id"] for m in doc["meters"]] == [1]
    f = next(f for f in doc["flows"] if f["cookie"] == f"{H1:#018x}" and f["match"].get("ip"))
    assert f["match"] == {"ip": True, "nw_dst": "10.0.0.1"} and f["n_packets"] == 3
    assert f["label"] == str(cookies.decode(H1))


def test_empty_bridge(ovs, capsys):
    name = ovs.add_bridge(protocols="OpenFlow13")
    try:
        assert fd.cli_main(args(name, rundir=ovs.dir)) == 0
        assert capsys.readouterr().out == f"{name} (bridge {name} in {ovs.dir}): 0 flows, 0 groups, 0 meters, 0 pkts\n"
        assert fd.dump(name, ovs.dir).group_version == "OpenFlow13"
    finally:
        ovs.del_bridge(name)


# --- diff -------------------------------------------------------------------------------


def test_diff_identical(ovs, bridge, controller, capsys):
    ctl = controller({f"/v1/switches/{bridge}/desired": EQUIVALENT, "/v1/cookies": LABELS})
    rc = fd.cli_main(args(bridge, rundir=ovs.dir, rest=ctl.url, diff=True))
    assert capsys.readouterr().out == f"diff {bridge}: 0 missing, 0 unexpected, 0 different\n"
    assert rc == 0
    assert fd.diff(bridge, ovs.dir, EQUIVALENT).identical
    assert fd.diff(fd.dump(bridge, ovs.dir), None, json.dumps(EQUIVALENT)).identical


def changed_desired() -> dict:
    flows = [f for f in FLOWS if f"cookie={CORE:#x}" not in f]  # core flow: unexpected
    flows = [f.replace("nw_dst=10.0.0.2,actions=output:2", "nw_dst=10.0.0.2,actions=output:4") for f in flows]
    flows = [f.replace(f"cookie={FENCE:#x}", f"cookie={cookies.make('fenced_clone', 1, 'fence-b'):#x}")
             for f in flows]
    flows.append(f"table=2,priority=5,cookie={cookies.make('oam_ecmp', 1, 'probe'):#x},icmp,actions=drop")
    return {
        "flows": flows,
        "groups": ["group_id=1,type=select,bucket=weight:10,output:1,bucket=weight:30,output:2",
                   "group_id=3,type=all,bucket=output:1"],
        "meters": ["meter=1,pktps,burst,stats,bands=type=drop,rate=500,burst_size=100"],
    }


def test_diff_classifies(ovs, bridge, controller, capsys):
    desired = changed_desired()
    ctl = controller({f"/v1/switches/{bridge}/desired": desired, "/v1/cookies": LABELS})
    rc = fd.cli_main(args(bridge, rundir=ovs.dir, rest=ctl.url, diff=True))
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert out[0] == f"diff {bridge}: 2 missing, 2 unexpected, 4 different"
    assert any(ln.startswith("  missing     flow   table=2 priority=5,icmp") and "oam_ecmp" in ln for ln in out)
    assert any(ln.startswith("  missing     group  group_id=3,type=all") for ln in out)
    assert any(ln.startswith("  unexpected  flow   priority=0 cookie=") for ln in out)
    assert any(ln.startswith("  unexpected  group  group_id=2,type=ff") for ln in out)
    i = out.index("  different   flow   table=0 priority=100 ip,nw_dst=10.0.0.2  [fabric host h2]")
    assert out[i + 1].endswith("actions=output:4") and out[i + 2].endswith("actions=output:2")
    assert any(ln.startswith("  different   flow   table=1 priority=10 udp,tp_dst=53") for ln in out)
    assert any(ln.startswith("  different   group  group_id=1") for ln in out)
    assert any(ln.startswith("  different   meter  meter=1") for ln in out)

    live = fd.diff(bridge, ovs.dir, desired)
    snap = fd.diff(fd.dump(bridge, ovs.dir), None, desired)
    for d in (live, snap):
        assert [e.key for e in d.missing] == ["table=2 priority=5 icmp", "group_id=3"]
        assert [e.key for e in d.unexpected] == ["table=0 priority=0", "group_id=2"]
        assert [e.key for e in d.different] == [
            "table=0 priority=100 ip,nw_dst=10.0.0.2", "table=1 priority=10 udp,tp_dst=53", "group_id=1", "meter=1"]
    fence = live.different[1]
    assert fence.cookies == (cookies.make("fenced_clone", 1, "fence-b"), FENCE)
    assert live.different[3].desired == "meter=1,pktps,burst,stats,bands=type=drop,rate=500,burst_size=100"
    assert live.different[3].actual == "meter=1,pktps,burst,stats,bands=type=drop,rate=1000,burst_size=100"


def test_diff_app_filter_json(ovs, bridge, controller, capsys):
    ctl = controller({f"/v1/switches/{bridge}/desired": changed_desired()})
    rc = fd.cli_main(args(bridge, rundir=ovs.dir, rest=ctl.url, diff=True, app="fabric", json=True))
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert rc == 1
    # fabric: its h2 flow, the ECMP group its flow uses, the meter its h1 flow uses
    assert doc["summary"] == f"diff {bridge}: 0 missing, 0 unexpected, 3 different"
    assert [(e["type"], e["key"]) for e in doc["different"]] == [
        ("flow", "table=0 priority=100 ip,nw_dst=10.0.0.2"), ("group", "group_id=1"), ("meter", "meter=1")]
    assert doc["different"][1]["apps"] == ["fabric"]
    assert "warning: no object names" in captured.err  # this controller has no /v1/cookies


def test_diff_select_group_selection_method(ovs, controller):
    """OpenFlow 1.5 bridges: selection_method/fields are compared; 1.3-only bridges cannot show them."""
    group = "group_id=4,type=select,selection_method=hash,fields(ip_src,ip_dst),bucket=output:1,bucket=output:2"
    plain = "group_id=4,type=select,bucket=output:1,bucket=output:2"
    of15 = ovs.add_bridge()
    of13 = ovs.add_bridge(protocols="OpenFlow13")
    try:
        _run(["ovs-ofctl", "-O", "OpenFlow15", "add-group", fd.mgmt_target(of15, ovs.dir), group])
        _run(["ovs-ofctl", "-O", "OpenFlow13", "add-group", fd.mgmt_target(of13, ovs.dir), plain])
        assert fd.diff(of15, ovs.dir, {"groups": [group]}).identical
        changed = fd.diff(of15, ovs.dir, {"groups": [plain]})
        assert [e.key for e in changed.different] == ["group_id=4"]
        assert "selection_method=hash" in changed.different[0].actual
        d13 = fd.dump(of13, ovs.dir)
        assert (d13.group_version, d13.groups[0].props) == ("OpenFlow13", {})
        assert fd.diff(d13, None, {"groups": [plain]}).identical
    finally:
        ovs.del_bridge(of15)
        ovs.del_bridge(of13)


# --- errors -----------------------------------------------------------------------------


def test_error_unknown_bridge(ovs, capsys):
    assert fd.cli_main(args("fdnosuch", rundir=ovs.dir)) == 2
    assert capsys.readouterr().err == f"ovslab flows: bridge 'fdnosuch' not found: no fdnosuch.mgmt in {ovs.dir}\n"


def test_error_controller_unreachable(ovs, bridge, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fd.cli_main(args(bridge, rundir=ovs.dir, rest=f"http://127.0.0.1:{port}", diff=True)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ovslab flows: controller unreachable at ") and err.count("\n") == 1


def test_error_bad_desired_flow(ovs, bridge, controller, capsys):
    ctl = controller({f"/v1/switches/{bridge}/desired": {"flows": ["table=0,actions=frobnicate"]}})
    assert fd.cli_main(args(bridge, rundir=ovs.dir, rest=ctl.url, diff=True)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ovslab flows: ovs-ofctl diff-flows failed:") and "frobnicate" in err
    assert err.count("\n") == 1


def test_error_bad_desired_group(ovs, bridge, controller, capsys):
    ctl = controller({f"/v1/switches/{bridge}/desired": {"groups": ["group_id=9,type=nonsense"]}})
    assert fd.cli_main(args(bridge, rundir=ovs.dir, rest=ctl.url, diff=True)) == 2
    assert "desired group 'group_id=9,type=nonsense' does not parse" in capsys.readouterr().err


def test_error_bridge_without_openflow13(ovs, capsys):
    name = ovs.add_bridge(protocols="OpenFlow10")
    try:
        assert fd.cli_main(args(name, rundir=ovs.dir)) == 2
        err = capsys.readouterr().err
        assert err.startswith("ovslab flows: ovs-ofctl dump-flows failed:") and err.count("\n") == 1
    finally:
        ovs.del_bridge(name)
