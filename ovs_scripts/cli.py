"""``ovslab``: bring labs up and down, run commands in them, cut links.

::

    ovslab up topologies/chain3.yaml [--no-controller] [--timeout 60]
    ovslab status [LAB] [--json]
    ovslab exec h1 -- ping -c1 10.1.0.3      # exit code of the command
    ovslab link h1 s1 down                   # host link, or two switches, or NODE underlay
    ovslab flows s1 [--app fabric] [--diff] [--json]
    ovslab down [LAB]                        # LAB optional when one lab is up

Labs live under $OVSLAB_RUNDIR (default /run/ovslab).  User errors print one
line, ``ovslab: <what is wrong>``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ovs_scripts import lab as labmod
from ovs_scripts.lab import Lab, LabError
from ovs_scripts.netns import CommandError
from ovs_scripts.ovsdb import OvsdbError
from ovs_scripts.sandbox import SandboxError
from ryu_apps.framework.topology import TopologyError

USER_ERRORS = (LabError, TopologyError, CommandError, OvsdbError, SandboxError)


class UsageError(Exception):
    pass


def _one_line(msg: str) -> str:
    return " | ".join(line.strip() for line in str(msg).strip().splitlines() if line.strip())


def _pick_lab(name: str | None) -> str | None:
    labs = labmod.list_labs()
    if name:
        return name
    if len(labs) == 1:
        return labs[0]
    if not labs:
        return None
    raise UsageError(f"several labs are up ({', '.join(labs)}); name one")


def _lab_with(names: list[str], lab: str | None) -> Lab:
    """The lab given by --lab, or the only lab that has all of ``names``."""
    if lab:
        return Lab.attach(lab)
    labs = labmod.list_labs()
    if not labs:
        raise UsageError(f"no lab is up under {labmod.base_dir()}")
    matches = []
    for name in labs:
        try:
            lb = Lab.attach(name)
        except LabError:
            continue
        known = set(lb.topology.hosts) | set(lb.topology.switches) | set(lb.topology.nodes) | {"underlay"}
        if all(n in known for n in names):
            matches.append(lb)
    if not matches:
        raise UsageError(f"no lab that is up has {' and '.join(repr(n) for n in names)} (labs up: {', '.join(labs)})")
    if len(matches) > 1:
        raise UsageError(f"{' and '.join(names)} exist in labs {', '.join(m.name for m in matches)}; "
                         f"pick one with --lab")
    return matches[0]


# -- subcommands -----------------------------------------------------------------


def cmd_up(ns: argparse.Namespace) -> int:
    def say(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr)

    lab = Lab.up(ns.file, controller=not ns.no_controller, timeout=ns.timeout, log=say, rest_token=ns.rest_token)
    t = lab.topology
    print(f"lab {lab.name} is up: {len(t.switches)} switches, {len(t.hosts)} hosts, {len(t.nodes)} nodes "
          f"(run directory {lab.dir})")
    ctl = lab.state.data["controller"]
    if ctl["enabled"] and ctl.get("etcd"):
        print(f"controller cluster of {len(ctl['instances'])} on etcd {', '.join(ctl['etcd']['endpoints'])}:")
        for inst in ctl["instances"]:
            log = "controller.log" if inst["member"] == "c0" else f"controller-{inst['member']}.log"
            print(f"  {inst['member']}: pid {inst['pid']}, REST {inst['rest_url']}, OpenFlow {inst['of_port']}, "
                  f"log {lab.dir / log}")
        if ctl.get("rest_token_file"):
            print(f"REST writes need 'Authorization: Bearer <token>'; the token is in {ctl['rest_token_file']}")
    elif ctl["enabled"]:
        print(f"controller pid {ctl.get('pid')}, REST {ctl['rest_url']}, log {lab.dir / 'controller.log'}")
        if ctl.get("rest_token_file"):
            print(f"REST writes need 'Authorization: Bearer <token>'; the token is in {ctl['rest_token_file']}")
    else:
        print("no controller: bridges are fail_mode=secure without flows; add some with ovs-ofctl")
    print(f"take it down with: ovslab down {lab.name}")
    return 0


def cmd_check(ns: argparse.Namespace) -> int:
    """Exit 0 when every file is fine; 1 (and every problem, one per line on stderr) when not."""
    from ovs_scripts.check import check

    bad = 0
    for path in ns.files:
        errors = check(path)
        if errors:
            bad += 1
            for e in errors:
                print(e, file=sys.stderr)
        else:
            print(f"{path}: ok")
    return 1 if bad else 0


def cmd_down(ns: argparse.Namespace) -> int:
    if getattr(ns, "all", False):
        for name in labmod.list_labs():
            for n in labmod.down(name):
                print(f"  {n}", file=sys.stderr)
            print(f"lab {name} is down")
        return 0
    name = _pick_lab(ns.lab)
    if name is None:
        print(f"no lab is up under {labmod.base_dir()}; nothing to do")
        return 0
    was_up = (labmod.base_dir() / name).exists()
    notes = labmod.down(name)
    for n in notes:
        print(f"  {n}", file=sys.stderr)
    if was_up:
        print(f"lab {name} is down")
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    names = [ns.lab] if ns.lab else labmod.list_labs()
    out = []
    for name in names:
        out.append(Lab.attach(name).status())
    if ns.json:
        print(json.dumps(out if not ns.lab else out[0], indent=2, default=str))
        return 0
    if not out:
        print(f"no lab is up under {labmod.base_dir()}")
    for st in out:
        ctl = st["controller"]
        ctl_s = (f"controller pid {ctl.get('pid')} {'alive' if ctl.get('alive') else 'NOT RUNNING'}, {ctl['rest_url']}"
                 if ctl.get("enabled") else "no controller")
        if ctl.get("rest_token_file"):
            ctl_s += f" (REST token in {ctl['rest_token_file']})"
        if ctl.get("enabled") and ctl.get("etcd"):
            ctl_s = "controller cluster " + ", ".join(
                f"{i['member']} pid {i['pid']} {'alive' if i['alive'] else 'NOT RUNNING'} {i['rest_url']}"
                for i in ctl["instances"]) + "; etcd " + ", ".join(
                f"{m['endpoint']} {'alive' if m['alive'] else 'NOT RUNNING'}" for m in ctl["etcd"]["members"])
        print(f"lab {st['name']}: {st['status']}, {st['datapath']} datapath, {ctl_s}, run directory {st['rundir']}")
        for key, sb in st["sandboxes"].items():
            ok = "running" if sb["ovs_vswitchd"] and sb["ovsdb_server"] else "NOT RUNNING"
            print(f"  ovs {key:<6} netns {sb['netns']:<12} {ok}")
        for s, sw in st["switches"].items():
            ports = ", ".join(f"{p}:{i['ifname']}->{i['peer']}" + ("" if i.get("up", True) in (True, None)
                                                                   else " DOWN")
                              for p, i in sw["ports"].items())
            print(f"  switch {s:<6} bridge {sw['bridge']:<12} dpid {sw['dpid']}  {ports}")
        for h, hs in st["hosts"].items():
            addrs = " ".join(a for a in (hs["ipv4"], hs["ipv6"]) if a)
            print(f"  host   {h:<6} netns {hs['netns']:<12} {hs['mac']} {addrs} on {hs['switch']}:{hs['port']}")
        for n, nd in st["nodes"].items():
            ul = "up" if nd["underlay"].get("up") else "DOWN"
            print(f"  node   {n:<6} netns {nd['netns']:<12} underlay {nd['underlay_ip']} {ul}")
    return 0


def cmd_exec(ns: argparse.Namespace) -> int:
    argv = list(ns.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("exec needs a command: ovslab exec HOST -- CMD ...")
    lab = _lab_with([ns.host], ns.lab)
    full = ["ip", "netns", "exec", lab.netns_of(ns.host), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(full[0], full)  # replaces this process: the command's exit code is ours
    except OSError as exc:
        raise UsageError(f"cannot run ip netns exec: {exc}") from None
    return 0  # not reached


def cmd_link(ns: argparse.Namespace) -> int:
    lab = _lab_with([ns.a, ns.b], ns.lab)
    ends = lab.link(ns.a, ns.b, ns.state)
    print(f"{ns.a} {ns.b} {ns.state}: " + ", ".join(f"{i} (netns {n})" for i, n in ends))
    return 0


def cmd_flows(ns: argparse.Namespace) -> int:
    try:
        from ovs_scripts import flowdump
    except ImportError as exc:
        raise UsageError(f"the flows command is not available: cannot import ovs_scripts.flowdump ({exc})") from None
    rc = flowdump.cli_main(ns)
    return int(rc or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ovslab", description="Open vSwitch labs in network namespaces.",
                                epilog=f"Labs live under $OVSLAB_RUNDIR (now {labmod.base_dir()}).")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("up", help="build a lab from a topology file")
    s.add_argument("file", help="topology YAML (see topologies/)")
    s.add_argument("--no-controller", action="store_true",
                   help="do not start the controller (bridges get no controller and no flows)")
    s.add_argument("--timeout", type=float, default=60,
                   help="seconds to wait for every switch to be connected and synced (default 60)")
    s.add_argument("--rest-token", action="store_true",
                   help="REST writes need a token: the lab writes one to <run dir>/rest-token (mode 600)")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("check", help="check topology files and their apps' intent without building anything")
    s.add_argument("files", nargs="+", metavar="FILE", help="topology YAML")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("down", help="tear a lab down (idempotent; also after a crash)")
    s.add_argument("lab", nargs="?", help="lab name (optional when exactly one lab is up)")
    s.add_argument("--all", action="store_true", help="tear down every lab under the run directory")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("status", help="show labs, their switches, hosts and processes")
    s.add_argument("lab", nargs="?", help="lab name (default: all labs)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("exec", help="run a command in a host's or node's namespace",
                       usage="ovslab exec [--lab LAB] HOST -- CMD [ARG ...]")
    s.add_argument("--lab", help="lab name, if HOST exists in several labs")
    s.add_argument("host", help="host, node or switch name")
    s.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments (after --)")
    s.set_defaults(func=cmd_exec)

    s = sub.add_parser("link", help="set a link down or up: HOST SWITCH, SWITCH SWITCH, or NODE underlay")
    s.add_argument("--lab", help="lab name, if the names exist in several labs")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("state", choices=["down", "up"])
    s.set_defaults(func=cmd_link)

    s = sub.add_parser("flows", help="dump a switch's flows grouped by app (see ovs_scripts/flowdump.py)")
    s.add_argument("switch", help="switch name or bridge name")
    s.add_argument("--app", help="only flows of this app (by cookie)")
    s.add_argument("--diff", action="store_true", help="compare the switch's flows with what the controller wants")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--rundir", help="OVS run directory holding <bridge>.mgmt (default: found from the labs)")
    where.add_argument("--db", help="unix:/path/db.sock of the OVS instance (its directory is the rundir)")
    s.add_argument("--rest", help="controller REST URL (default: the lab's)")
    s.add_argument("--rest-token-file", help="file with the controller's REST token (needed when its REST "
                                             "listens beyond loopback)")
    s.add_argument("--rest-cacert", help="CA certificate to verify an https:// controller")
    s.set_defaults(func=cmd_flows)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        rc = ns.func(ns)
    except (UsageError, *USER_ERRORS) as exc:
        details = getattr(exc, "details", "")
        if details and ns.cmd != "up":  # up already printed the controller log tail
            print(details, file=sys.stderr)
        print(f"ovslab: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ovslab: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc)


if __name__ == "__main__":
    main()
