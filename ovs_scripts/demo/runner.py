"""The demo's runner: one lab per scenario, brought up, driven, always torn down; ``main`` is ``make demo``.

Every lab is torn down after its scenario (try/finally; also on Ctrl-C,
SIGTERM or any exception), and only a lab this run brought up: if a lab of
the same name (run directory), namespace prefix or controller port is already
in use, that scenario fails with the reason and the other lab is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import yaml

from ovs_scripts import netns as nsutil
from ovs_scripts.demo.drive import reap_servers
from ovs_scripts.demo.registry import REPO, SCENARIOS, Check, Row, Scenario, say, select, table
from ovs_scripts.lab import Lab, LabError, base_dir

DESCRIPTION = "``make demo``: bring up each lab, drive it with real traffic, print what the data plane proved."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_range(n: int) -> int:
    """The first of ``n`` consecutive free TCP ports on 127.0.0.1."""
    import random

    from ovs_scripts.lab import _port_free

    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        if all(_port_free(base + i) for i in range(n)):
            return base
    raise LabError(f"no {n} consecutive free ports on 127.0.0.1")


def _prepared_topology(sc: Scenario, tmp: Path, prefix: str | None, free_ports: bool, replicas: int = 1) -> Path:
    """The topology file to bring up: the original, or a copy with another prefix / free controller
    ports / a controller cluster of ``replicas`` instances on etcd."""
    if not prefix and not free_ports and replicas == 1:
        return sc.path
    data = yaml.safe_load(sc.path.read_text())
    if prefix:
        data.setdefault("lab", {})["prefix"] = prefix
    ctl = dict(data.get("controller") or {})
    if replicas > 1:
        ctl.update(replicas=replicas, store="etcd")
        if free_ports:
            ctl["of_port"], ctl["rest_port"] = _free_range(replicas), _free_range(replicas)
            ctl["etcd_port"] = _free_range(2 * int(ctl.get("etcd_members", 3)))
    elif free_ports:
        ctl["of_port"], ctl["rest_port"] = _free_port(), _free_port()
    data["controller"] = ctl
    path = tmp / f"{sc.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _header(out: TextIO, sc: Scenario, lab: Lab, seconds: float) -> None:
    topo = lab.topology
    sws = ", ".join(f"{s} ({sw.bridge}{', node ' + sw.node if sw.node else ''})" for s, sw in topo.switches.items())
    hosts = ", ".join(f"{h} {x.ipv4.ip if x.ipv4 else ''}/{x.ipv6.ip if x.ipv6 else ''}"
                      for h, x in topo.hosts.items())
    say(out, f"lab {lab.name} up in {seconds:.1f} s")
    say(out, f"  switches: {sws}")
    say(out, f"  hosts:    {hosts}")
    if topo.nodes:
        say(out, "  nodes:    " + ", ".join(f"{n} underlay {x.underlay_ip}" for n, x in topo.nodes.items()))
    say(out, f"  controller: {lab.rest_url}   run directory: {lab.dir}")


@contextlib.contextmanager
def _no_interrupts():
    """Hold off SIGINT/SIGTERM while tearing down (a second Ctrl-C must not leave half a lab)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda n, f: pending.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            raise KeyboardInterrupt


def _teardown(lab: Lab, check: Check, out: TextIO) -> None:
    with _no_interrupts():
        t0 = time.monotonic()
        try:
            notes = lab.down()
        except Exception as exc:  # noqa: BLE001 - reported as a failed row
            check("teardown", False, f"{exc}; retry with `ovslab down {lab.name}`")
            return
        finally:
            reap_servers()
        left = [ns for ns in lab.plan.all_netns() if nsutil.netns_exists(ns)]
        check("teardown: namespaces and run directory removed", not left and not lab.dir.exists(),
              f"{time.monotonic() - t0:.1f} s" + (f"; left: {', '.join(left)}" if left else "")
              + "".join(f"; {n}" for n in notes if not n.startswith("stopped ")))


def run(scenarios: Iterable[str] | None = None, *, rundir: str | os.PathLike | None = None,
        prefix: str | None = None, free_ports: bool = False, out: TextIO | None = None,
        rows: list[Row] | None = None, replicas: int = 1) -> tuple[list[Row], bool]:
    """Run scenarios (all by default) one lab at a time; returns ``(rows, ok)``.

    ``rundir`` is the labs' base directory (default $OVSLAB_RUNDIR or /run/ovslab).
    ``prefix`` replaces every lab's namespace prefix and ``free_ports`` picks
    free controller ports, so a run (a test) cannot collide with labs brought
    up from the same topology files.  Rows are appended to ``rows`` if given
    (so a caller still has them when Ctrl-C interrupts the run).
    """
    out = out or sys.stdout
    selected = select(scenarios)
    rows = [] if rows is None else rows
    with tempfile.TemporaryDirectory(prefix="ovslab-demo-") as tmpdir:
        for sc in selected:
            check = Check(sc.name, rows, out)
            say(out, "")
            say(out, f"== {sc.name}: {sc.summary}  [{sc.path.relative_to(REPO) if sc.path.is_relative_to(REPO) else sc.path}]")
            lab = None
            try:
                path = _prepared_topology(sc, Path(tmpdir), prefix, free_ports, replicas)
                existing = base_dir(rundir) / yaml.safe_load(path.read_text())["lab"]["name"]
                if existing.exists():
                    env = "" if base_dir(rundir) == base_dir(None) else f"OVSLAB_RUNDIR={base_dir(rundir)} "
                    check("bring the lab up", False,
                          f"lab {existing.name} is already up ({existing}), not started by this demo: "
                          f"left alone; take it down with `{env}ovslab down {existing.name}` or use another --rundir")
                    continue
                t0 = time.monotonic()
                try:
                    lab = Lab.up(path, controller=True, rundir=rundir, timeout=60 if replicas == 1 else 120)
                except LabError as exc:  # another lab's namespaces/ports, missing tools, not root...
                    check("bring the lab up", False, f"{exc}" + (f" [{exc.details.splitlines()[-1]}]"
                                                                 if exc.details else ""))
                    continue
                _header(out, sc, lab, time.monotonic() - t0)
                sc.run(lab, check)
            except KeyboardInterrupt:
                check("scenario", False, "interrupted")
                raise
            except Exception as exc:  # noqa: BLE001 - one scenario's crash must not stop the others
                check("scenario finished", False, f"{type(exc).__name__}: {exc}")
                say(out, "".join(traceback.format_exception(exc)).rstrip())
            finally:
                if lab is not None:
                    _teardown(lab, check, out)
    ok = bool(rows) and all(r.passed for r in rows)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovs_scripts.demo", description=DESCRIPTION)
    ap.add_argument("scenarios", nargs="*", help="scenarios to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--rundir", help="base run directory of the labs (default $OVSLAB_RUNDIR or /run/ovslab)")
    ap.add_argument("--prefix", help="namespace prefix for every lab instead of the topology's")
    ap.add_argument("--free-ports", action="store_true", help="pick free controller ports instead of the topology's")
    ap.add_argument("--replicas", type=int, default=1, choices=range(1, 8), metavar="N",
                    help="run each lab's controller as a cluster of N instances on etcd (README, \"Controller cluster\")")
    args = ap.parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:<12}{sc.topology:<16}{sc.summary}")
        return 0
    try:
        select(args.scenarios)
    except ValueError as exc:
        ap.error(str(exc))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    rows: list[Row] = []
    interrupted = False
    try:
        _, ok = run(args.scenarios, rundir=args.rundir, prefix=args.prefix, free_ports=args.free_ports, rows=rows,
                    replicas=args.replicas)
    except KeyboardInterrupt:
        interrupted, ok = True, False
    elapsed = time.monotonic() - t0
    print()
    print(table(rows))
    passed = sum(r.passed for r in rows)
    failed = len(rows) - passed
    print(f"summary: {passed} passed, {failed} failed ({elapsed:.1f} s)" + ("  INTERRUPTED" if interrupted else ""))
    if interrupted:
        return 130
    return 0 if ok else 1
