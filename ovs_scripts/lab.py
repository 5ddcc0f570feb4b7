"""The lab builder: a topology file made real with namespaces, veths and private OVS instances.

Layout of one lab (``PREFIX`` is ``lab.prefix`` of the topology)::

    PREFIX-sw      the lab's switch namespace: the "root sandbox" (a private
                   ovsdb-server + ovs-vswitchd) holding every switch without
                   ``node:``; switch-side veth ends live here
    PREFIX-<host>  one namespace per host; its veth end is ``eth0``
    PREFIX-<node>  one namespace per node, running the node's own sandbox:
                   its switches plus ``PREFIX-<node>-p`` (br-phy, NORMAL) with
                   the node's underlay IP on its internal port and the veth
                   ``underlay`` into ...
    PREFIX-ul      the underlay segment: a Linux bridge ``ul0`` and one veth
                   per node (named after the node)

Nothing is created in the namespace the tool runs in: no interface, address
or route, so lab subnets can never leak into the host's routing.  (The root
sandbox runs in ``PREFIX-sw`` rather than in the caller's namespace because
the userspace datapath's ``ovs-netdev`` tap is one per namespace: a second
netdev ovs-vswitchd in the same namespace fails with "creating tap device
failed: Device or resource busy", which made labs collide with every other
private OVS on the machine.)

Control channel: the controller listens on 127.0.0.1 only, which no lab
namespace can reach.  Each sandbox's bridges use the controller
``unix:<sandbox dir>/controller.sock``; a relay started and recorded by the
lab, ``socat UNIX-LISTEN:<sandbox dir>/controller.sock,fork,unlink-early
TCP:127.0.0.1:<of_port>,nodelay``, runs in the caller's namespace and forks one
TCP connection per switch connection.  ``nodelay`` as ovs-vswitchd sets on its own
TCP connections: without it the relay holds a switch's reply behind Nagle until the
controller's delayed ACK of the previous one (40 ms for a barrier right after a
bundle-open reply).  The socket is a file on the shared
filesystem, so ovs-vswitchd in any namespace reaches it.  (One relay per
sandbox, because ovs-vswitchd refuses unix controller sockets outside its
own rundir.)

Run directory ``$OVSLAB_RUNDIR/<lab>`` (default ``/run/ovslab/<lab>``)::

    state.json      intent log: each object is recorded (kind, name, how to
                    remove it) BEFORE it is created, so ``down`` can undo a
                    crash at any point and removes nothing it did not create
    topology.yaml   the topology as built (the controller reads this copy)
    sw/, <node>/    sandbox directories (OVS_RUNDIR of each instance)
    */controller.sock  control-channel relay of each sandbox
    controller.log  controller output (relay-*.log, <host>.log: relays, lab.popen)

In ``--no-controller`` mode the bridges get no Controller row and no relay
runs: they are fail_mode=secure and forward nothing until flows are added
with ovs-ofctl (``lab.ofctl(switch, ...)``).  A controller left configured
would connect to whatever listens on the port (another lab's controller).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovs_scripts import etcd as etcd_mod
from ovs_scripts import netns as nsutil
from ovs_scripts.lab_apps import LAB_APPS
from ovs_scripts.netns import CommandError
from ovs_scripts.ovsdb import BridgeConfig, OvsdbError, PortConfig
from ovs_scripts.sandbox import Sandbox, find_pids, kill_pid, pid_alive, pid_cmdline
from ryu_apps.framework import topology as topo_mod
from ryu_apps.framework.topology import IFNAMSIZ, Topology, TopologyError

DEFAULT_BASE = "/run/ovslab"
STATE_VERSION = 1
UNDERLAY_MTU = 9000  # room for VXLAN/Geneve headers around full-size host frames
ROOT_SANDBOX = "sw"


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says what and what to do."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def base_dir(rundir: str | os.PathLike | None = None) -> Path:
    """Directory holding one run directory per lab (``rundir``, $OVSLAB_RUNDIR, /run/ovslab)."""
    return Path(rundir or os.environ.get("OVSLAB_RUNDIR") or DEFAULT_BASE).absolute()


# ---------------------------------------------------------------------------
# Names: a pure function of the topology, checked before anything is created.


@dataclass
class Plan:
    """Every name the lab will create, derived from the topology."""

    prefix: str
    sw_netns: str | None
    ul_netns: str | None
    host_netns: dict[str, str]
    node_netns: dict[str, str]
    switch_netns: dict[str, str]
    switch_sandbox: dict[str, str]  # switch -> sandbox key ("sw" or a node name)
    phy_bridge: dict[str, str]  # node -> br-phy bridge
    ul_ifname: dict[str, str]  # node -> its veth end in the underlay namespace
    node_uplink: str = "underlay"  # the node's veth end, in the node namespace
    ul_bridge: str = "ul0"
    sandboxes: dict[str, str | None] = field(default_factory=dict)  # key -> netns

    def all_netns(self) -> list[str]:
        out = [n for n in (self.sw_netns, self.ul_netns) if n]
        return out + list(self.node_netns.values()) + list(self.host_netns.values())


def make_plan(topo: Topology) -> Plan:
    """Names for everything; raises LabError for names that would collide or not fit."""
    p = topo.prefix
    root_switches = [s for s in topo.switches.values() if s.node is None]
    sw_netns = f"{p}-{ROOT_SANDBOX}" if root_switches else None
    ul_netns = f"{p}-ul" if topo.nodes else None
    node_netns = {n: node.netns for n, node in topo.nodes.items()}
    host_netns = {h: host.netns for h, host in topo.hosts.items()}
    switch_netns = {s: (node_netns[sw.node] if sw.node else sw_netns) for s, sw in topo.switches.items()}
    switch_sandbox = {s: (sw.node or ROOT_SANDBOX) for s, sw in topo.switches.items()}
    phy_bridge = {n: f"{p}-{n}-p" for n in topo.nodes}
    ul_ifname = {n: n for n in topo.nodes}
    sandboxes: dict[str, str | None] = {}
    if sw_netns:
        sandboxes[ROOT_SANDBOX] = sw_netns
    sandboxes.update(node_netns)
    plan = Plan(p, sw_netns, ul_netns, host_netns, node_netns, switch_netns, switch_sandbox,
                phy_bridge, ul_ifname, sandboxes=sandboxes)

    seen: dict[str, str] = {}
    for what, ns in ([("the switch namespace", sw_netns), ("the underlay namespace", ul_netns)]
                     + [(f"node {n}", ns) for n, ns in node_netns.items()]
                     + [(f"host {h}", ns) for h, ns in host_netns.items()]):
        if ns is None:
            continue
        if ns in seen:
            raise LabError(f"{topo.source}: namespace {ns} would be used by both {seen[ns]} and {what}; "
                           f"rename one (names 'sw' and 'ul' are reserved)")
        seen[ns] = what
    for n in topo.nodes:
        if n == ROOT_SANDBOX:
            raise LabError(f"{topo.source}: nodes.{n}: the name {n!r} is reserved for the lab's switch namespace")
        for name in (phy_bridge[n], ul_ifname[n]):
            if len(name) > IFNAMSIZ:
                raise LabError(f"{topo.source}: nodes.{n}: interface name {name!r} is longer than "
                               f"{IFNAMSIZ} characters; shorten the node name or the lab prefix")
    bridges = {sw.bridge for sw in topo.switches.values()} | set(phy_bridge.values())
    for pi in topo.ports.values():
        if pi.ifname in bridges:
            raise LabError(f"{topo.source}: interface {pi.ifname} clashes with a bridge name")
    return plan


def resolve_datapath(topo: Topology) -> str:
    dp = topo.spec.lab.datapath
    if dp == "auto":
        return "system" if os.path.exists("/sys/module/openvswitch") else "netdev"
    return dp


# ---------------------------------------------------------------------------
# The intent log.


class State:
    """``state.json``: lab facts plus the ordered list of objects created (intent first)."""

    def __init__(self, path: Path, data: dict | None = None):
        self.path = path
        self.data: dict[str, Any] = data if data is not None else {"version": STATE_VERSION, "objects": []}

    @classmethod
    def load(cls, path: Path) -> "State":
        try:
            return cls(path, json.loads(path.read_text()))
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {path}: {exc}") from None

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, self.path)

    @property
    def objects(self) -> list[dict]:
        return self.data["objects"]

    def intend(self, kind: str, **info: Any) -> dict:
        """Record an object about to be created; returns its (mutable) entry."""
        entry = {"kind": kind, **info}
        self.objects.append(entry)
        self.save()
        return entry


def _proc_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def wait_gone(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid``."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _kill_recorded(entry: dict) -> str | None:
    """Kill a recorded process (its process group) if it is still the one we started."""
    pid = entry.get("pid")
    marker = entry.get("marker")
    if pid:
        start = entry.get("starttime")
        if not pid_alive(pid):
            # the leader died (kill -9 in a test) but what it started lives on in its group
            # (a proxy agent's HAProxy): a group id is never reused while a member is alive
            if entry.get("group", True) and start is not None and _group_members(pid):
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, sig)
                    if wait_gone(lambda: not _group_members(pid), 3):
                        break
                return f"stopped what {entry.get('what', 'process')} (pid {pid}, gone) left in its group"
            return None
        if start is not None:
            if _proc_starttime(pid) != start:  # the pid was reused: not ours
                return None
            identity = (pid_cmdline(pid) or ["?"])[0]  # starttime proved it is ours
        elif marker:
            identity = marker
        else:
            return None
        kill_pid(pid, identity, group=entry.get("group", True))
        return f"stopped {entry.get('what', 'process')} (pid {pid})"
    if marker:  # crashed between starting it and recording its pid
        for p in find_pids(marker):
            kill_pid(p, marker, group=entry.get("group", True))
        return None
    return None


# ---------------------------------------------------------------------------
# The lab.


class Lab:
    """A lab that is up (or was being built).  Create with :meth:`up` or :meth:`attach`."""

    def __init__(self, labdir: Path, state: State, topology: Topology):
        self.dir = labdir
        self.state = state
        self.topology = topology
        self.plan = make_plan(topology)
        self._controller_proc: subprocess.Popen | None = None

    # -- construction ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self.topology.name

    @classmethod
    def up(cls, path: str | os.PathLike, controller: bool = True, timeout: float = 60,
           rundir: str | os.PathLike | None = None, log=None, rest_token: bool = False) -> "Lab":
        """Build the lab described by ``path``; on any failure everything created is removed.

        ``rundir`` is the base directory (default $OVSLAB_RUNDIR or /run/ovslab);
        the lab's own directory is ``<rundir>/<lab name>``.  ``rest_token``: the lab
        writes a token file ``<lab dir>/rest-token`` (mode 600), the controller's REST
        then wants ``Authorization: Bearer`` for writes, and the lab's clients send it.
        """
        topo = topo_mod.load(path)
        if controller:  # the apps' intent, as the controller would find it: before anything is built
            from ovs_scripts.check import check_topology

            errors = check_topology(topo)
            if errors:
                raise LabError("\n".join(errors))
        plan = make_plan(topo)
        base = base_dir(rundir)
        labdir = base / topo.name
        if (labdir / "state.json").exists() or labdir.exists():
            raise LabError(f"lab {topo.name} is already up (run directory {labdir}); "
                           f"run `ovslab down {topo.name}` first")
        _preflight(topo, plan, controller)
        base.mkdir(parents=True, exist_ok=True)
        try:
            labdir.mkdir()
        except FileExistsError:
            raise LabError(f"lab {topo.name} is already up (run directory {labdir}); "
                           f"run `ovslab down {topo.name}` first") from None
        copy = labdir / "topology.yaml"
        shutil.copyfile(path, copy)
        token_file = _write_rest_token(labdir) if rest_token and controller else None
        state = State(labdir / "state.json")
        state.data.update({
            "name": topo.name, "prefix": topo.prefix, "source": str(Path(path).resolve()),
            "topology": str(copy), "status": "building", "created": time.time(),
            "datapath": resolve_datapath(topo),
            "controller": {"enabled": controller, "of_port": topo.spec.controller.of_port,
                           "rest_port": topo.spec.controller.rest_port,
                           "rest_url": f"http://127.0.0.1:{topo.spec.controller.rest_port}" if controller else None,
                           "rest_token_file": token_file,
                           "replicas": topo.spec.controller.replicas, "store": topo.spec.controller.store,
                           "instances": [{"member": f"c{i}", "of_port": topo.spec.controller.of_port + i,
                                          "rest_port": topo.spec.controller.rest_port + i,
                                          "rest_url": f"http://127.0.0.1:{topo.spec.controller.rest_port + i}",
                                          "pid": None}
                                         for i in range(topo.spec.controller.replicas)] if controller else [],
                           "etcd": {"endpoints": etcd_mod.endpoints(topo.spec.controller.etcd_port,
                                                                   topo.spec.controller.etcd_members)}
                           if controller and topo.spec.controller.store == "etcd" else None},
            "switches": {s: {"bridge": sw.bridge, "dpid": sw.dpid, "node": sw.node,
                             "netns": plan.switch_netns[s],
                             "sandbox": str(labdir / plan.switch_sandbox[s])}
                         for s, sw in topo.switches.items()},
            "hosts": dict(plan.host_netns),
            "nodes": dict(plan.node_netns),
        })
        state.save()
        lab = cls(labdir, state, topology=topo_mod.load(copy))
        try:
            lab._build(controller=controller, timeout=timeout, log=log)
        except BaseException as exc:
            state.data["status"] = "failed"
            with contextlib.suppress(Exception):
                state.save()
            try:
                lab.down()
            except Exception as down_exc:  # noqa: BLE001
                if isinstance(exc, Exception):
                    raise LabError(f"{exc}; and teardown failed too: {down_exc}") from exc
            raise
        return lab

    @classmethod
    def attach(cls, name: str, rundir: str | os.PathLike | None = None) -> "Lab":
        labdir = base_dir(rundir) / name
        try:
            state = State.load(labdir / "state.json")
        except FileNotFoundError:
            up = [n for n in list_labs(rundir)]
            raise LabError(f"no lab {name!r} is up under {base_dir(rundir)}"
                           + (f" (labs up: {', '.join(up)})" if up else "")) from None
        try:
            topo = topo_mod.load(state.data["topology"])
        except (TopologyError, KeyError) as exc:
            raise LabError(f"lab {name}: cannot read its topology copy: {exc}") from None
        return cls(labdir, state, topo)

    # -- build ----------------------------------------------------------------

    def _build(self, controller: bool, timeout: float, log=None) -> None:
        topo, plan, st = self.topology, self.plan, self.state
        say = log or (lambda msg: None)
        datapath = st.data["datapath"]

        # 1. namespaces
        for ns in plan.all_netns():
            st.intend("netns", name=ns)
            nsutil.add_netns(ns)
            if ns in plan.host_netns.values():
                nsutil.sysctl(ns, {"net.ipv6.conf.all.accept_ra": 0, "net.ipv6.conf.default.accept_ra": 0,
                                   "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
            else:  # switch, node and underlay namespaces carry no IPv6 at all
                nsutil.sysctl(ns, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        say(f"namespaces: {', '.join(plan.all_netns())}")

        # 2. OVS sandboxes
        for key, ns in plan.sandboxes.items():
            entry = st.intend("sandbox", key=key, dir=str(self.dir / key), netns=ns, pids={})

            def record(daemon: str, pid: int, entry=entry) -> None:
                entry["pids"][daemon] = pid
                st.save()

            Sandbox(self.dir / key, ns).start(on_started=record)
        say(f"OVS sandboxes: {', '.join(plan.sandboxes)}")

        # 3. underlay segment
        if plan.ul_netns:
            ul = plan.ul_netns
            st.intend("link", name=plan.ul_bridge, netns=ul)
            nsutil.add_bridge(plan.ul_bridge, ul)
            nsutil.set_link(plan.ul_bridge, ul, mtu=UNDERLAY_MTU)
            nsutil.link_up(plan.ul_bridge, ul)
            for n in topo.nodes:
                ns = plan.node_netns[n]
                st.intend("link", name=plan.ul_ifname[n], netns=ul)
                nsutil.add_veth(plan.node_uplink, plan.ul_ifname[n], netns=ns, peer_netns=ul)
                nsutil.set_link(plan.ul_ifname[n], ul, mtu=UNDERLAY_MTU, master=plan.ul_bridge)
                nsutil.set_link(plan.node_uplink, ns, mtu=UNDERLAY_MTU)
                for ifname, where in ((plan.ul_ifname[n], ul), (plan.node_uplink, ns)):
                    nsutil.tx_checksum_off(ifname, where)
                    nsutil.link_up(ifname, where)

        # 4. host veths: switch end named PortInfo.ifname, host end eth0
        for host, sw, port in topo.host_links:
            h = topo.hosts[host]
            pi = topo.ports[(sw, port)]
            swns = plan.switch_netns[sw]
            st.intend("link", name=pi.ifname, netns=swns, peer="eth0", peer_netns=h.netns)
            nsutil.add_veth(pi.ifname, "eth0", netns=swns, peer_netns=h.netns, peer_mac=h.mac)
            nsutil.link_up(pi.ifname, swns)

        # 5. switch-to-switch veths
        for link in topo.links:
            if link.kind != "veth":
                continue
            pa, pb = topo.ports[(link.a, link.a_port)], topo.ports[(link.b, link.b_port)]
            nsa, nsb = plan.switch_netns[link.a], plan.switch_netns[link.b]
            st.intend("link", name=pa.ifname, netns=nsa, peer=pb.ifname, peer_netns=nsb)
            nsutil.add_veth(pa.ifname, pb.ifname, netns=nsa, peer_netns=nsb)
            nsutil.link_up(pa.ifname, nsa)
            nsutil.link_up(pb.ifname, nsb)
        say(f"links: {len(topo.host_links)} host, {sum(l.kind == 'veth' for l in topo.links)} veth, "
            f"{sum(l.kind != 'veth' for l in topo.links)} tunnel")

        # 6. control channel (before the bridges, so they connect at once)
        # ovs-vswitchd only connects to unix sockets inside its own rundir ("Not
        # connecting to socket controller ... due to possibility for remote
        # exploit"), so each sandbox gets its own relay socket.
        ctl_targets: dict[str, tuple[str, ...] | None] = {key: None for key in plan.sandboxes}
        if controller:
            if st.data["controller"].get("etcd"):
                for i in range(topo.spec.controller.etcd_members):
                    self.start_etcd(i, state="new")
                etcd_mod.wait_healthy(st.data["controller"]["etcd"]["endpoints"], timeout=30)
                say(f"etcd: {topo.spec.controller.etcd_members} members on "
                    f"{', '.join(st.data['controller']['etcd']['endpoints'])}")
            for key in plan.sandboxes:
                targets = []
                for inst in self.instances:  # one relay and one Controller row per instance
                    i = int(inst["member"][1:])
                    sock = self.dir / key / ("controller.sock" if i == 0 else f"controller-{i}.sock")
                    targets.append(f"unix:{sock}")
                    self._spawn(f"relay {key}" + (f" {inst['member']}" if i else ""),
                                ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early",
                                 f"TCP:127.0.0.1:{inst['of_port']},nodelay"],
                                marker=str(sock), log=self.dir / f"relay-{key}.log")
                ctl_targets[key] = tuple(targets)
            self._start_controller()

        # 7. bridges, one transaction each, then wait for every ofport
        for key, ns in plan.sandboxes.items():
            sb = self.sandbox(key)
            wanted: dict[str, int | None] = {}
            with sb.db() as db:
                if key != ROOT_SANDBOX:  # a node: br-phy first
                    phy = plan.phy_bridge[key]
                    db.add_bridge(BridgeConfig(phy, datapath_type=datapath, fail_mode="standalone", protocols=(),
                                               ports=(PortConfig(plan.node_uplink),),
                                               external_ids={"ovslab-role": "underlay"}))
                    wanted[plan.node_uplink] = None
                bfd: dict[str, int] = {}  # tunnel or link interface -> BFD interval (ms)
                for s, sw in topo.switches.items():
                    if plan.switch_sandbox[s] != key:
                        continue
                    ports = []
                    for pi in topo.switch_ports(s):
                        if pi.kind in ("host", "veth"):
                            ports.append(PortConfig(pi.ifname, pi.port))
                            if (s, pi.port) in topo.bfd_ports:
                                bfd[pi.ifname] = topo.link_at(s, pi.port).bfd_ms
                        else:
                            peer_node = topo.switches[pi.peer].node
                            link = next(l for l in topo.links if (l.a, l.a_port) == (s, pi.port)
                                        or (l.b, l.b_port) == (s, pi.port))
                            ports.append(PortConfig(pi.ifname, pi.port, type=pi.kind, options={
                                "remote_ip": str(topo.nodes[peer_node].underlay_ip.ip), "key": str(link.key)}))
                            if getattr(link, "bfd_ms", None):
                                bfd[pi.ifname] = link.bfd_ms
                        wanted[pi.ifname] = pi.port
                    spec = topo.spec.controller
                    db.add_bridge(BridgeConfig(
                        sw.bridge, datapath_type=datapath, dpid=sw.dpid, fail_mode="secure",
                        controller=ctl_targets[key], controller_rate_limit=spec.rate_limit,
                        controller_burst_limit=spec.burst_limit, ports=tuple(ports),
                        external_ids={"ovslab-lab": topo.name, "ovslab-switch": s}))
                if bfd:  # link liveness: the Interface's bfd column (min_tx = min_rx)
                    txn = db.api.create_transaction(check_error=True, log_errors=False)
                    for ifname, ms in bfd.items():
                        txn.add(db.api.db_set("Interface", ifname, ("bfd", {
                            "enable": "true", "min_tx": str(ms), "min_rx": str(ms)})))
                    db._commit(txn, f"enable BFD on {', '.join(bfd)}")
                try:
                    db.wait_ofports(wanted, timeout=20)
                except OvsdbError as exc:
                    raise LabError(f"{exc} (see {sb.dir / 'ovs-vswitchd.log'})") from None
            if key != ROOT_SANDBOX:
                node = topo.nodes[key]
                phy = plan.phy_bridge[key]
                nsutil.add_addr(phy, str(node.underlay_ip), ns)
                nsutil.link_up(phy, ns)
        say(f"bridges: {', '.join(sw.bridge for sw in topo.switches.values())}")

        # 8. hosts
        for h in topo.hosts.values():
            ns = h.netns
            nsutil.sysctl(ns, {"net.ipv6.conf.eth0.accept_ra": 0})
            if h.ipv4:
                nsutil.add_addr("eth0", str(h.ipv4), ns)
            if h.ipv6:
                nsutil.add_addr("eth0", str(h.ipv6), ns, nodad=True)
            nsutil.tx_checksum_off("eth0", ns)
            nsutil.link_up("eth0", ns)
            if h.gateway4:
                nsutil.add_route("default", str(h.gateway4), ns, dev="eth0")
            if h.gateway6:
                nsutil.add_route("default", str(h.gateway6), ns, dev="eth0")
        say(f"hosts: {', '.join(topo.hosts)}")

        # 9. controller readiness
        if controller:
            self._wait_controller(timeout)

        # 10. services in hosts (proxy agents, NVMe/TCP targets), once the controller answers
        if controller:
            for host in self.agent_hosts():
                self.start_agent(host)
            if self.agent_hosts():
                say(f"proxy agents: {', '.join(self.agent_hosts())}")
            nvme = self.nvme_services()
            for host in nvme:
                self.start_nvme(host)
            if nvme:
                say(f"NVMe/TCP targets: {', '.join(nvme)}")
        st.data["status"] = "up"
        st.save()

    def _spawn(self, what: str, argv: list[str], *, marker: str | None = None, netns: str | None = None,
               log: Path | None = None, **popen: Any) -> subprocess.Popen:
        """Start a background process in its own process group, recorded before and after it starts."""
        full = nsutil.in_netns(netns, argv)
        entry = self.state.intend("process", what=what, argv=full, marker=marker, pid=None, group=True)
        if log is not None:
            popen.setdefault("stdout", open(log, "ab"))  # noqa: SIM115 - handed to the child
            popen.setdefault("stderr", subprocess.STDOUT)
        popen.setdefault("stdin", subprocess.DEVNULL)
        try:
            proc = subprocess.Popen(full, start_new_session=True, **popen)
        except FileNotFoundError as exc:
            raise LabError(f"cannot start {what}: {exc.filename}: command not found") from None
        finally:
            if log is not None and hasattr(popen.get("stdout"), "close"):
                popen["stdout"].close()
        entry["pid"] = proc.pid
        entry["starttime"] = _proc_starttime(proc.pid)
        self.state.save()
        return proc

    @property
    def instances(self) -> list[dict]:
        """The controller instances (one without a cluster): member, of_port, rest_port, rest_url, pid."""
        ctl = self.state.data.get("controller", {})
        return ctl.get("instances") or ([{"member": "c0", "of_port": ctl.get("of_port"),
                                          "rest_port": ctl.get("rest_port"), "rest_url": ctl.get("rest_url"),
                                          "pid": ctl.get("pid")}] if ctl.get("enabled") else [])

    @property
    def clustered(self) -> bool:
        return bool(self.state.data.get("controller", {}).get("etcd"))

    def _start_controller(self, only: int | None = None) -> None:
        """Start the controller (every instance of a cluster, or instance ``only``)."""
        from ryu_apps.manager import controller_command

        spec = self.topology.spec.controller
        apps = [LAB_APPS.get(a, a) for a in self.topology.apps]
        ctl = self.state.data["controller"]
        for i, inst in enumerate(self.instances):
            if only is not None and i != only:
                continue
            extra = []
            if ctl.get("etcd"):
                extra = ["--fabric-store", "etcd", "--fabric-etcd-endpoints", ",".join(ctl["etcd"]["endpoints"]),
                         "--fabric-cluster-id", self.name, "--fabric-member-id", inst["member"],
                         "--fabric-lease-ttl", str(spec.lease_ttl)]
            argv = controller_command(str(self.dir / "topology.yaml"), apps,
                                      of_port=inst["of_port"], rest_port=inst["rest_port"],
                                      state_dir=str(self.dir / ("controller-state" if i == 0 else f"controller-state-{i}")),
                                      rest_token_file=ctl.get("rest_token_file"))
            if spec.packet_in_rate is not None:
                extra += ["--fabric-packet-in-rate", str(spec.packet_in_rate)]
            argv = argv[:3] + extra + argv[3:]
            what = "controller" if i == 0 else f"controller {inst['member']}"
            proc = self._spawn(what, argv, marker=str(self.dir / "topology.yaml"),
                               log=self.dir / ("controller.log" if i == 0 else f"controller-{inst['member']}.log"),
                               cwd=str(self.dir))
            if i == 0:
                self._controller_proc = proc
                ctl["pid"] = proc.pid
            inst["pid"] = proc.pid
        self.state.save()

    def start_etcd(self, i: int, state: str = "existing") -> None:
        """Start etcd member ``i`` (``state``: new at build, existing when it comes back)."""
        spec = self.topology.spec.controller
        data = self.dir / "etcd" / f"m{i}"
        data.parent.mkdir(exist_ok=True)
        argv = etcd_mod.member_command(self.name, spec.etcd_port, i, spec.etcd_members, data, f"ovslab-{self.name}",
                                       state="existing" if data.exists() and state != "new" else state)
        self._spawn(f"etcd m{i}", argv, marker=str(data), log=self.dir / f"etcd-m{i}.log")

    # -- services in hosts ------------------------------------------------------

    def agent_hosts(self) -> list[str]:
        """Hosts that run a proxy agent: the proxies the file declares, and hosts with ``services: [proxy-agent]``."""
        declared = {p.get("host") for c in (self.topology.apps.get("proxy_cluster") or {}).get("clusters", [])
                    for p in c.get("proxies", [])}
        return [h.name for h in self.topology.hosts.values() if h.name in declared or "proxy-agent" in h.services]

    def rest_sockets(self) -> list[Path]:
        """The controller's REST API as unix sockets a host namespace can reach (one relay per
        instance, started on first use): the agents' way to the controller, which listens on
        127.0.0.1 of the caller's namespace only."""
        socks = []
        for inst in self.instances:
            i = int(inst["member"][1:])
            sock = self.dir / ("rest.sock" if i == 0 else f"rest-{i}.sock")
            what = "rest relay" + (f" {inst['member']}" if i else "")
            if self._process(what) is None:
                self._spawn(what, ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early",
                                   f"TCP:127.0.0.1:{inst['rest_port']},nodelay"],
                            marker=str(sock), log=self.dir / "relay-rest.log")
            socks.append(sock)
        return socks

    def start_agent(self, host: str) -> subprocess.Popen:
        """Start ``host``'s proxy agent (again, after :meth:`signal_process` killed it): it adopts a
        running HAProxy.  Its log is ``<rundir>/agent-<host>.log``, HAProxy's in ``agent-<host>/``."""
        h = self.topology.hosts[host]
        argv = [sys.executable, "-m", "ryu_apps.functions.proxy_cluster.agent",
                "--controller", ",".join(f"unix:{s}" for s in self.rest_sockets()),
                "--proxy", host, "--run-dir", str(self.dir / f"agent-{host}")]
        token = self.state.data.get("controller", {}).get("rest_token_file")
        if token:
            argv += ["--token-file", token]
        return self._spawn(f"proxy-agent {host}", argv, netns=h.netns, log=self.dir / f"agent-{host}.log")

    #: the RAM namespace of each subsystem a lab target serves (MiB)
    NVME_NAMESPACE_MIB = 80

    def nvme_services(self) -> dict[str, list[str]]:
        """Hosts that run this project's NVMe/TCP target (every host a subsystem of
        ``apps.nvme_zoning`` names) or its discovery controller, and the arguments of each."""
        raw = self.topology.apps.get("nvme_zoning")
        if raw is None:
            return {}
        from ryu_apps.functions.nvme_zoning.intent import NvmeZoningIntent
        from ryu_apps.functions.nvme_zoning.model import listeners

        intent = NvmeZoningIntent.model_validate(raw)
        out: dict[str, list[str]] = {}
        for lst in listeners(self.topology, intent):
            args = out.setdefault(lst.host, [])
            args += ["--listen", f"[{lst.addr}]:{lst.port}" if lst.version == 6 else f"{lst.addr}:{lst.port}"]
            if lst.discovery:
                if "--discovery" not in args:
                    args += ["--discovery", "--entries-url", f"unix:{self.rest_sockets()[0]}:/v1/nvme/discovery"]
                continue
            for nqn in lst.subsystems:
                sub = f"{nqn}={self.NVME_NAMESPACE_MIB}"
                if sub not in args:
                    args += ["--subsystem", sub]
        return out

    def start_nvme(self, host: str, timeout: float = 15.0) -> subprocess.Popen:
        """Start ``host``'s NVMe/TCP target (and/or discovery controller); returns once every
        listener listens.  Its log (every Connect it saw) is ``<rundir>/nvme-<host>.log``."""
        args = self.nvme_services()[host]
        log = self.dir / f"nvme-{host}.log"
        argv = [sys.executable, "-m", "ovs_scripts.nvme_target", *args, "--log", str(log)]
        out = self.dir / f"nvme-{host}.out"
        proc = self._spawn(f"nvme-target {host}", argv, netns=self.topology.hosts[host].netns, log=out)
        want = args.count("--listen")
        deadline = time.monotonic() + timeout
        while (out.read_text() if out.exists() else "").count("listening on") < want:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"lab {self.name}: the NVMe/TCP target on {host} did not start: "
                               f"{(out.read_text() if out.exists() else '')[-500:]}")
            time.sleep(0.05)
        return proc

    def _process(self, what: str) -> dict | None:
        """The newest running process entry named ``what``."""
        for e in reversed(self.state.objects):
            if e["kind"] == "process" and e.get("what") == what and not e.get("stopped"):
                return e
        return None

    def signal_process(self, what: str, sig: int) -> int:
        """Send ``sig`` to the process the lab recorded as ``what`` (its pid, checked by start
        time; never by name); its pid.  SIGKILL/SIGTERM mark it stopped."""
        import signal as _signal

        e = self._process(what)
        if e is None or not e.get("pid") or _proc_starttime(e["pid"]) != e.get("starttime"):
            raise LabError(f"lab {self.name}: no running {what}")
        os.kill(e["pid"], sig)
        if sig in (_signal.SIGKILL, _signal.SIGTERM):
            e["stopped"] = True
            self.state.save()
        return e["pid"]

    def instance_process(self, i: int) -> str:
        return "controller" if i == 0 else f"controller c{i}"

    def running_members(self) -> list[str]:
        """The controller instances the lab has running (started and not killed by it)."""
        return [i["member"] for i in self.instances if self._process(self.instance_process(int(i["member"][1:])))]

    def kill_instance(self, i: int, sig: int | None = None) -> int:
        """kill -9 (or ``sig``) controller instance ``i``; its pid."""
        import signal as _signal

        pid = self.signal_process(self.instance_process(i), _signal.SIGKILL if sig is None else sig)
        if sig in (None, _signal.SIGKILL, _signal.SIGTERM) and i == 0:
            self._controller_proc = None
        return pid

    def start_instance(self, i: int) -> None:
        """Start controller instance ``i`` again (after :meth:`kill_instance`)."""
        self._start_controller(only=i)

    def _wait_controller(self, timeout: float) -> None:
        if self.clustered:
            self.wait_cluster(timeout)
            return
        url = self.state.data["controller"]["rest_url"] + "/v1/switches"
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        want = {sw.dpid for sw in self.topology.switches.values()}
        while True:
            proc = self._controller_proc
            if proc is not None and proc.poll() is not None:
                self._fail_controller(f"the controller exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=self.rest_headers()),
                                            timeout=2) as resp:
                    data = json.loads(resp.read().decode())
                if isinstance(data, dict):
                    data = data.get("switches", data)
                if isinstance(data, list) and data:
                    ready = [s for s in data if isinstance(s, dict) and s.get("connected") is True
                             and s.get("synced") is True]
                    dpids = {_as_dpid(s.get("dpid")) for s in ready}
                    if len(ready) == len(data) and (want <= dpids or len(ready) >= len(want)):
                        waiting = self._bfd_links_down()
                        if not waiting:
                            return
                        last = f"BFD not up yet on {', '.join(waiting)}"
                    else:
                        last = f"{len(ready)} of {len(want)} switches connected and synced"
                else:
                    last = f"unexpected answer {str(data)[:100]}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = f"{url}: {getattr(exc, 'reason', exc)}"
            if time.monotonic() > deadline:
                self._fail_controller(f"controller not ready after {timeout:g} s ({last})")
            time.sleep(0.25)

    def cluster_status(self) -> dict:
        """``GET /v1/switches`` of every instance that answers: member -> its list (or the error)."""
        out = {}
        for inst in self.instances:
            try:
                with urllib.request.urlopen(urllib.request.Request(inst["rest_url"] + "/v1/switches?local=1",
                                                                   headers=self.rest_headers()), timeout=2) as resp:
                    out[inst["member"]] = json.loads(resp.read().decode())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                out[inst["member"]] = f"{getattr(exc, 'reason', exc)}"
        return out

    def _balanced(self, running: list[str], need: list[str]) -> bool:
        """Does every answering instance count ``need`` among its members and say each switch is
        mastered by its preferred member?"""
        for inst in self.instances:
            if inst["member"] not in running:
                continue
            try:
                with urllib.request.urlopen(urllib.request.Request(inst["rest_url"] + "/v1/cluster",
                                                                   headers=self.rest_headers()), timeout=2) as resp:
                    view = json.loads(resp.read().decode())
                    if not view.get("balanced") or not set(need) <= set(view.get("members", {})):
                        return False
            except (urllib.error.URLError, OSError, ValueError):
                return False
        return True

    def wait_cluster(self, timeout: float, members: list[str] | None = None) -> dict[str, str]:
        """Wait until every switch has a master among the instances that run, synced, and every
        running instance (or ``members``) is connected to every switch; switch -> its master."""
        deadline = time.monotonic() + timeout
        want = set(self.topology.switches)
        while True:
            status, last = self.cluster_status(), ""
            running = [m for m, v in status.items() if isinstance(v, list)]
            need = members if members is not None else self.running_members()
            masters: dict[str, str] = {}
            for m in running:
                for sw in status[m]:
                    if sw.get("role") == "master" and sw.get("synced"):
                        masters[sw["name"]] = m
            unconnected = [f"{m}:{sw['name']}" for m in running if m in need for sw in status[m] if not sw.get("connected")]
            missing = [m for m in need if m not in running]
            balanced = self._balanced(running, need)
            if want <= set(masters) and not unconnected and not missing and balanced:
                waiting = self._bfd_links_down()
                if not waiting:
                    return masters
                last = f"BFD not up yet on {', '.join(waiting)}"
            else:
                last = (f"masters synced for {sorted(masters)} of {sorted(want)}; not connected: {unconnected[:6]}; "
                        f"not answering: {missing}; balanced: {balanced}")
            for inst in self.instances:
                e = self._process(self.instance_process(int(inst["member"][1:])))
                if e is not None and e.get("pid") and not pid_alive(e["pid"]):
                    self._fail_controller(f"controller instance {inst['member']} exited")
            if time.monotonic() > deadline:
                self._fail_controller(f"controller cluster not ready after {timeout:g} s ({last})")
            time.sleep(0.25)

    def _bfd_links_down(self) -> list[str]:
        """BFD-monitored switch links the controller still sees down (BFD sessions take about a
        second to come up; until then those links are not LIVE and carry nothing)."""
        bfd = {f"{s}:{p}" for s, p in self.topology.bfd_ports}
        if not bfd:
            return []
        url = self.state.data["controller"]["rest_url"] + "/v1/topology"
        with urllib.request.urlopen(urllib.request.Request(url, headers=self.rest_headers()), timeout=2) as resp:
            down = set(json.loads(resp.read().decode()).get("down_ports", []))
        return sorted(bfd & down)

    def _fail_controller(self, why: str) -> None:
        tail = self.controller_log_tail()
        if tail:
            print(f"--- last lines of {self.dir / 'controller.log'} ---\n{tail}\n---", file=sys.stderr)
        raise LabError(why, details=tail)

    def controller_log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.dir / "controller.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- teardown -------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything the intent log records, newest first; idempotent.

        Returns notes about what needed a fallback.  Raises LabError (and keeps
        the run directory, so it can be retried) if something could not be removed.
        """
        return teardown(self.dir)

    # -- using the lab --------------------------------------------------------

    def sandbox(self, key: str) -> Sandbox:
        """The sandbox ``"sw"`` (root sandbox) or of a node."""
        for e in self.state.objects:
            if e["kind"] == "sandbox" and e["key"] == key:
                return Sandbox(e["dir"], e["netns"], pids=e.get("pids"))
        if key in self.plan.sandboxes:
            return Sandbox(self.dir / key, self.plan.sandboxes[key])
        raise LabError(f"lab {self.name} has no sandbox {key!r}")

    def _switch(self, name: str) -> str:
        if name in self.topology.switches:
            return name
        for s, sw in self.topology.switches.items():
            if sw.bridge == name:
                return s
        raise LabError(f"lab {self.name} has no switch or bridge {name!r} "
                       f"(switches: {', '.join(self.topology.switches)})")

    def switch_target(self, name: str) -> tuple[str, str]:
        """``(bridge, sandbox rundir)`` of a switch (by name or bridge): ovs-ofctl ... unix:<rundir>/<bridge>.mgmt."""
        s = self._switch(name)
        return self.topology.switches[s].bridge, str(self.dir / self.plan.switch_sandbox[s])

    def ofctl(self, switch: str, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        """``ovs-ofctl -O OpenFlow13`` against a switch: ``lab.ofctl("s1", "add-flow", "actions=NORMAL")``."""
        s = self._switch(switch)
        return self.sandbox(self.plan.switch_sandbox[s]).ofctl(self.topology.switches[s].bridge, *args, **kw)

    def netns_of(self, name: str) -> str:
        """Namespace of a host, node or switch."""
        if name in self.plan.host_netns:
            return self.plan.host_netns[name]
        if name in self.plan.node_netns:
            return self.plan.node_netns[name]
        if name in self.plan.switch_netns:
            return self.plan.switch_netns[name]
        raise LabError(f"lab {self.name} has no host, node or switch {name!r} "
                       f"(hosts: {', '.join(self.topology.hosts) or '-'}; "
                       f"nodes: {', '.join(self.topology.nodes) or '-'})")

    def exec(self, host: str, argv: list[str], check: bool = True, timeout: float | None = 60,
             **popen: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` in a host's (or node's, or switch's) namespace and wait for it.

        Output is captured as text unless ``popen`` says otherwise; with
        ``check`` a non-zero exit raises :class:`CommandError` with its stderr.
        """
        full = nsutil.in_netns(self.netns_of(host), argv)
        if not any(k in popen for k in ("stdout", "stderr", "capture_output")):
            popen["capture_output"] = True
        if not any(k in popen for k in ("text", "universal_newlines", "encoding")):
            popen["text"] = True
        try:
            cp = subprocess.run(full, timeout=timeout, **popen)
        except subprocess.TimeoutExpired as exc:
            raise CommandError(full, -1, f"timed out after {timeout} s") from exc
        if check and cp.returncode != 0:
            err = cp.stderr if isinstance(cp.stderr, str) else (cp.stderr or b"").decode(errors="replace")
            raise CommandError(full, cp.returncode, err or (cp.stdout if isinstance(cp.stdout, str) else ""))
        return cp

    def popen(self, host: str, argv: list[str], **popen: Any) -> subprocess.Popen:
        """Start a background process in a host's namespace; ``down`` stops it (recorded in the state).

        By default its stdout is a text pipe (``proc.stdout.readline()`` for a
        readiness line) and its stderr goes to ``<rundir>/<host>.log``.
        """
        log = None
        if "stdout" not in popen:
            popen["stdout"] = subprocess.PIPE
            popen.setdefault("text", True)
        if "stderr" not in popen:
            log = self.dir / f"{host}.log"
            popen["stderr"] = open(log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            return self._spawn(f"process in {host}", argv, netns=self.netns_of(host), **popen)
        finally:
            if log is not None:
                popen["stderr"].close()

    @property
    def rest_url(self) -> str | None:
        """``http://127.0.0.1:<rest_port>`` of the lab's controller, or None without a controller;
        of a cluster, the first instance the lab has running (any instance answers for all)."""
        ctl = self.state.data.get("controller", {})
        if ctl.get("etcd"):
            for inst in ctl.get("instances", []):
                if self._process(self.instance_process(int(inst["member"][1:]))):
                    return inst["rest_url"]
        return ctl.get("rest_url")

    @property
    def rest_token(self) -> str | None:
        """The token the lab's controller wants for REST writes (``up(rest_token=True)``), else None."""
        path = self.state.data.get("controller", {}).get("rest_token_file")
        return Path(path).read_text().strip() if path else None

    def rest_headers(self) -> dict[str, str]:
        """Headers for a REST request to the lab's controller: ``Authorization: Bearer`` when it has a token."""
        token = self.rest_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def stop_controller(self) -> None:
        """Stop the lab's controller (the switches keep their flows: fail_mode=secure)."""
        if not self.state.data.get("controller", {}).get("enabled"):
            raise LabError(f"lab {self.name} runs without a controller")
        for e in self.state.objects:
            if (e["kind"] == "process" and (e.get("what") == "controller" or e.get("what", "").startswith("controller "))
                    and not e.get("stopped")):
                _kill_recorded(e)
                e["stopped"] = True
        self.state.data["controller"]["pid"] = None
        self.state.save()
        self._controller_proc = None

    def restart_controller(self, timeout: float = 60) -> None:
        """Stop the controller, start it again and wait until every switch is connected and synced."""
        self.stop_controller()
        self._start_controller()
        self._wait_controller(timeout)

    def link(self, a: str, b: str, state: str) -> list[tuple[str, str]]:
        """Set a link down or up: host-switch, switch-switch (veth), or ``(NODE, "underlay")``.

        Returns the ``(ifname, netns)`` ends changed.
        """
        if state not in ("up", "down"):
            raise LabError(f"link state must be 'up' or 'down', not {state!r}")
        ends = self._link_ends(a, b)
        for ifname, ns in ends:
            (nsutil.link_up if state == "up" else nsutil.link_down)(ifname, ns)
        return ends

    # -- moving a host's link (roaming) -----------------------------------------

    def _host_plug(self, host: str) -> tuple[str, int, str]:
        """``(switch, port, switch-side ifname)`` where ``host``'s link is plugged now."""
        moved = self.state.data.get("host_moves", {}).get(host)
        if moved:
            return moved["switch"], moved["port"], moved["ifname"]
        h = self.topology.hosts[host]
        return h.switch, h.port, self.topology.ports[(h.switch, h.port)].ifname

    def host_location(self, host: str) -> tuple[str, int]:
        """``(switch, port)`` of a host's link now: the topology's, or where :meth:`move_host` put it."""
        if host not in self.topology.hosts:
            raise LabError(f"lab {self.name} has no host {host!r} (hosts: {', '.join(self.topology.hosts) or '-'})")
        sw, port, _ = self._host_plug(host)
        return sw, port

    def move_host(self, host: str, switch: str, port: int, timeout: float = 20) -> dict:
        """Re-plug ``host``'s link into ``switch`` port ``port`` (a client roaming to another access point).

        The host keeps its namespace, its ``eth0``, MAC and addresses (sockets
        survive): only the switch end of its veth moves.  It leaves its bridge,
        goes down, moves into the target switch's namespace as
        ``PREFIX-<switch>-<port>``, joins the target bridge with
        ``ofport_request=port`` and comes up again, so the old switch sees the
        port deleted and the new one sees a port added and its link come up
        (the host sees its carrier drop and return).  ``port`` must not be
        declared for another link of ``switch`` in the topology, nor hold another
        moved host.  The move is recorded in the state (``host_moves``) before it
        happens, so ``down`` removes the veth wherever it is.

        Returns ``{"from": [switch, port], "to": [switch, port], "seconds": s, "unplugged_seconds": u}``
        (``u``: from unplugging the old port to the new one being up).
        """
        t0 = time.monotonic()
        topo, plan = self.topology, self.plan
        old_sw, old_port, old_if = self._host_plug(host) if host in topo.hosts else (None, 0, "")
        if old_sw is None:
            raise LabError(f"lab {self.name} has no host {host!r} (hosts: {', '.join(topo.hosts) or '-'})")
        new_sw = self._switch(switch)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFEFF:
            raise LabError(f"port must be an OpenFlow port number 1..{0xFEFF}, not {port!r}")
        if (new_sw, port) == (old_sw, old_port):
            raise LabError(f"host {host} is already on {new_sw} port {port}")
        declared = topo.ports.get((new_sw, port))
        if declared is not None and not (declared.kind == "host" and declared.peer == host):
            raise LabError(f"{new_sw} port {port} is declared for {declared.peer} in {topo.source}; pick a free port")
        for other, m in self.state.data.get("host_moves", {}).items():
            if other != host and (m["switch"], m["port"]) == (new_sw, port):
                raise LabError(f"{new_sw} port {port} holds host {other} (moved there); pick a free port")
        for other in topo.hosts:
            if other != host and self._host_plug(other)[:2] == (new_sw, port):
                raise LabError(f"{new_sw} port {port} holds host {other}; pick a free port")
        new_if = f"{plan.prefix}-{new_sw}-{port}"
        if len(new_if) > IFNAMSIZ:
            raise LabError(f"interface name {new_if!r} is longer than {IFNAMSIZ} characters")
        old_ns, new_ns = plan.switch_netns[old_sw], plan.switch_netns[new_sw]
        if new_if != old_if and nsutil.link_exists(new_if, new_ns):
            raise LabError(f"interface {new_if} already exists in {new_ns}")
        old_br, new_br = topo.switches[old_sw].bridge, topo.switches[new_sw].bridge
        h = topo.hosts[host]

        # intent first: wherever a crash leaves the veth, `down` finds and removes it
        self.state.intend("link", name=new_if, netns=new_ns, peer="eth0", peer_netns=h.netns)
        new_sb = self.sandbox(plan.switch_sandbox[new_sw])
        # both OVSDB connections are opened before the link is touched: the host is cut off
        # only for the unplug / move / plug itself
        with self.sandbox(plan.switch_sandbox[old_sw]).db() as old_db, new_sb.db() as new_db:
            t_cut = time.monotonic()
            txn = old_db.api.create_transaction(check_error=True, log_errors=False)
            txn.add(old_db.api.del_port(old_if, bridge=old_br, if_exists=True))
            old_db._commit(txn, f"remove {old_if} from {old_br}")
            nsutil.link_down(old_if, old_ns)
            if old_ns != new_ns:
                nsutil.move_link(old_if, new_ns, from_netns=old_ns)
            if new_if != old_if:
                nsutil.rename_link(old_if, new_if, new_ns)
            txn = new_db.api.create_transaction(check_error=True, log_errors=False)
            txn.add(new_db.api.add_port(new_br, new_if, may_exist=True, ofport_request=port))
            new_db._commit(txn, f"add {new_if} to {new_br}")
            try:
                new_db.wait_ofports({new_if: port}, timeout=timeout)
            except OvsdbError as exc:
                raise LabError(f"{exc} (see {new_sb.dir / 'ovs-vswitchd.log'})") from None
            nsutil.link_up(new_if, new_ns)
            t_plugged = time.monotonic()
        self.state.data.setdefault("host_moves", {})[host] = {"switch": new_sw, "port": port, "ifname": new_if}
        self.state.save()
        return {"from": [old_sw, old_port], "to": [new_sw, port], "seconds": round(time.monotonic() - t0, 4),
                "unplugged_seconds": round(t_plugged - t_cut, 4)}

    def _link_ends(self, a: str, b: str) -> list[tuple[str, str]]:
        topo, plan = self.topology, self.plan
        for x, y in ((a, b), (b, a)):
            if x in topo.nodes and y == "underlay":
                return [(plan.ul_ifname[x], plan.ul_netns), (plan.node_uplink, plan.node_netns[x])]
            if x in topo.hosts:
                sw, _, ifname = self._host_plug(x)
                if y != sw:
                    raise LabError(f"host {x} is linked to {sw}, not {y!r}")
                return [(ifname, plan.switch_netns[sw])]
        if a in topo.switches and b in topo.switches:
            links = [l for l in topo.links if {l.a, l.b} == {a, b}]
            if not links:
                raise LabError(f"switches {a} and {b} are not linked")
            veths = [l for l in links if l.kind == "veth"]
            if not veths:
                nodes = " or ".join(sorted({topo.switches[a].node, topo.switches[b].node} - {None}))
                raise LabError(f"{a} and {b} are joined by a tunnel; cut a node's underlay instead: "
                               f"`ovslab link {nodes} underlay down`")
            ends = []
            for l in veths:
                ends.append((topo.ports[(l.a, l.a_port)].ifname, plan.switch_netns[l.a]))
                ends.append((topo.ports[(l.b, l.b_port)].ifname, plan.switch_netns[l.b]))
            return ends
        known = set(topo.hosts) | set(topo.switches) | set(topo.nodes)
        for x in (a, b):
            if x not in known and x != "underlay":
                raise LabError(f"lab {self.name} has no host, switch or node {x!r}")
        raise LabError(f"{a} and {b} are not a host and its switch, two linked switches, or NODE underlay")

    def status(self) -> dict:
        """A JSON-able description of the lab and the live state of its parts."""
        topo, plan, st = self.topology, self.plan, self.state
        links: dict[str, dict[str, dict]] = {}
        for ns in set(plan.switch_netns.values()) | set(plan.node_netns.values()) | {plan.ul_netns} - {None}:
            links[ns] = {}
            cp = nsutil.run(["ip", "-n", ns, "-j", "link", "show"], check=False)
            if cp.returncode == 0 and cp.stdout.strip():
                for l in json.loads(cp.stdout):
                    links[ns][l["ifname"]] = {"up": "UP" in l.get("flags", []),
                                              "carrier": "LOWER_UP" in l.get("flags", [])}
        procs = {}
        for e in st.objects:
            if e["kind"] == "process":
                pid = e.get("pid")
                alive = bool(pid) and pid_alive(pid) and _proc_starttime(pid) == e.get("starttime")
                procs.setdefault(e["what"], []).append({"pid": pid, "alive": alive, "argv": e.get("argv")})
        sandboxes = {}
        for key, ns in plan.sandboxes.items():
            sb = self.sandbox(key)
            sandboxes[key] = {"dir": str(sb.dir), "netns": ns, "ovsdb_server": sb.pid("ovsdb-server"),
                              "ovs_vswitchd": sb.pid("ovs-vswitchd")}
        ctl = dict(st.data.get("controller", {}))
        if ctl.get("enabled"):
            ctl["alive"] = any(p["alive"] for p in procs.get("controller", []))
            ctl["log"] = str(self.dir / "controller.log")
            if ctl.get("etcd"):
                ctl["instances"] = [dict(inst, alive=any(p["alive"] for p in procs.get(
                    self.instance_process(int(inst["member"][1:])), []))) for inst in ctl.get("instances", [])]
                ctl["alive"] = any(i["alive"] for i in ctl["instances"])
                ctl["etcd"] = dict(ctl["etcd"], members=[
                    {"endpoint": ep, "alive": any(p["alive"] for p in procs.get(f"etcd m{j}", []))}
                    for j, ep in enumerate(ctl["etcd"]["endpoints"])])
        switches = {}
        for s, sw in topo.switches.items():
            ns = plan.switch_netns[s]
            ports = {}
            for pi in topo.switch_ports(s):
                ports[pi.port] = {"ifname": pi.ifname, "kind": pi.kind, "peer": pi.peer, "peer_port": pi.peer_port,
                                  **links.get(ns, {}).get(pi.ifname, {} if pi.kind not in ("host", "veth")
                                                          else {"up": None})}
            switches[s] = {"bridge": sw.bridge, "dpid": f"{sw.dpid:016x}", "node": sw.node, "netns": ns,
                           "sandbox": str(self.dir / plan.switch_sandbox[s]), "ports": ports}
        hosts = {h: {"netns": x.netns, "mac": x.mac, "ipv4": str(x.ipv4) if x.ipv4 else None,
                     "ipv6": str(x.ipv6) if x.ipv6 else None, "switch": x.switch, "port": x.port}
                 for h, x in topo.hosts.items()}
        for h, m in st.data.get("host_moves", {}).items():  # where move_host re-plugged them
            if h in hosts:
                hosts[h].update(switch=m["switch"], port=m["port"])
        nodes = {n: {"netns": x.netns, "underlay_ip": str(x.underlay_ip), "br_phy": plan.phy_bridge[n],
                     "underlay": links.get(plan.ul_netns or "", {}).get(plan.ul_ifname[n], {})}
                 for n, x in topo.nodes.items()}
        return {"name": self.name, "status": st.data.get("status"), "rundir": str(self.dir),
                "source": st.data.get("source"), "datapath": st.data.get("datapath"),
                "namespaces": plan.all_netns(), "controller": ctl, "processes": procs, "sandboxes": sandboxes,
                "switches": switches, "hosts": hosts, "nodes": nodes}


def _as_dpid(v: Any) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            return int(v.replace(":", ""), 16)
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _preflight(topo: Topology, plan: Plan, controller: bool) -> None:
    """Checks that need the machine, before anything is created."""
    for tool in ("ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-appctl", "ip", "ethtool"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed (needs Open vSwitch, iproute2 and ethtool)")
    if os.geteuid() != 0:
        raise LabError("building a lab needs root (network namespaces and Open vSwitch)")
    existing = set(nsutil.list_netns())
    clash = [ns for ns in plan.all_netns() if ns in existing]
    if clash:
        raise LabError(f"namespace {clash[0]} already exists (another lab with prefix {plan.prefix!r} is up, "
                       f"or a leftover); take that lab down or change lab.prefix in {topo.source}")
    if controller:
        if shutil.which("socat") is None:
            raise LabError("socat is not installed (it relays the switches' control channel)")
        spec = topo.spec.controller
        for i in range(spec.replicas):
            for what, port in (("OpenFlow", spec.of_port + i), ("REST", spec.rest_port + i)):
                if not _port_free(port):
                    raise LabError(f"127.0.0.1:{port} ({what} port{f' of instance {i}' if i else ''}) is in use, "
                                   f"another lab's controller? Change "
                                   f"controller.{'of_port' if what == 'OpenFlow' else 'rest_port'} "
                                   f"in {topo.source} or take the other lab down")
        if spec.store == "etcd":
            if shutil.which("etcd") is None:
                raise LabError("etcd is not installed (Debian package etcd-server): store: etcd needs it")
            for i in range(spec.etcd_members):
                for port in (etcd_mod.client_port(spec.etcd_port, i), etcd_mod.peer_port(spec.etcd_port, i)):
                    if not _port_free(port):
                        raise LabError(f"127.0.0.1:{port} (etcd member {i}) is in use; change controller.etcd_port "
                                       f"in {topo.source} or take the other lab down")


def teardown(labdir: Path) -> list[str]:
    """Undo a lab's intent log, newest object first; then remove its run directory."""
    notes: list[str] = []
    errors: list[str] = []
    try:
        state = State.load(labdir / "state.json")
    except FileNotFoundError:
        if labdir.exists():  # created the directory, crashed before the first state write
            shutil.rmtree(labdir, ignore_errors=True)
        return notes
    state.data["status"] = "tearing-down"
    with contextlib.suppress(OSError):
        state.save()
    for entry in reversed(state.objects):
        kind = entry.get("kind")
        try:
            if kind == "process":
                note = _kill_recorded(entry)
                if note:
                    notes.append(note)
            elif kind == "sandbox":
                notes += Sandbox(entry["dir"], entry.get("netns"), pids=entry.get("pids")).stop()
            elif kind == "link":
                nsutil.del_link_if_exists(entry["name"], entry.get("netns"))
            elif kind == "netns":
                name = entry["name"]
                if nsutil.netns_exists(name):
                    strays = nsutil.netns_pids(name)
                    if strays:
                        notes.append(f"namespace {name} still has processes {strays} that ovslab did not "
                                     f"start; it lives on (unnamed) until they exit")
                    nsutil.del_netns_if_exists(name)
            else:
                notes.append(f"unknown object in the state file: {entry}")
        except (CommandError, OSError, RuntimeError) as exc:
            errors.append(f"{kind} {entry.get('name') or entry.get('dir') or entry.get('what')}: {exc}")
    if errors:
        state.data["status"] = "teardown-failed"
        with contextlib.suppress(OSError):
            state.save()
        raise LabError(f"could not remove everything ({'; '.join(errors)}); fix it and run `ovslab down` again")
    shutil.rmtree(labdir, ignore_errors=True)
    return notes


def down(name: str, rundir: str | os.PathLike | None = None) -> list[str]:
    """Tear down lab ``name``; a no-op (returns a note) if it is not up."""
    labdir = base_dir(rundir) / name
    if not labdir.exists():
        return [f"lab {name} is not up under {base_dir(rundir)}; nothing to do"]
    return teardown(labdir)


def list_labs(rundir: str | os.PathLike | None = None) -> list[str]:
    """Names of labs with a run directory (up, or left by a crash) under the base directory."""
    base = base_dir(rundir)
    try:
        return sorted(d.name for d in base.iterdir() if d.is_dir() and (d / "state.json").exists())
    except OSError:
        return []


def _write_rest_token(labdir: Path) -> str:
    """A fresh random REST token in ``<labdir>/rest-token`` (mode 600); its path."""
    import secrets

    path = labdir / "rest-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return str(path)


def _lab_switch(name_or_bridge: str, rundir) -> tuple[str, str, dict, dict] | None:
    """``(lab, switch, switch info, lab state)`` of a switch (name or bridge) in any lab that is up."""
    for lab in list_labs(rundir):
        try:
            data = json.loads((base_dir(rundir) / lab / "state.json").read_text())
        except (OSError, ValueError):
            continue
        for s, info in data.get("switches", {}).items():
            if name_or_bridge in (s, info.get("bridge")):
                return lab, s, info, data
    return None


def switch_name(name_or_bridge: str, rundir: str | os.PathLike | None = None) -> str | None:
    """The lab switch name of a switch or bridge name in any lab that is up (``zab-s1`` -> ``s1``)."""
    found = _lab_switch(name_or_bridge, rundir)
    return found[1] if found else None


def find_switch(name_or_bridge: str, rundir: str | os.PathLike | None = None
                ) -> tuple[str, str, str, str | None] | None:
    """``(lab_name, bridge, sandbox_rundir, rest_url)`` of a switch (name or bridge) in any lab that is up.

    ``rest_url`` is ``http://127.0.0.1:<rest_port>`` when the lab runs its controller, else None.
    A switch name used by several labs matches the first lab in name order; bridges are unique.
    """
    found = _lab_switch(name_or_bridge, rundir)
    if found is None:
        return None
    lab, _, info, data = found
    return lab, info["bridge"], info["sandbox"], data.get("controller", {}).get("rest_url")
