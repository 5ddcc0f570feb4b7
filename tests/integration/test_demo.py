"""``make demo`` end to end for one scenario: the chain3 lab, real traffic, every check passes, nothing left.

The demo's labs normally use the topology files' fixed prefixes and controller
ports; here the lab gets its own prefix, free ports and a run directory under
/run/ovslab-demo-test, so it cannot collide with other tests or a lab someone
has up.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from ovs_scripts import demo
from ovs_scripts import netns as nsutil
from ovs_scripts.sandbox import pid_cmdline

pytestmark = pytest.mark.integration
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _prefix() -> str:
    """``y`` + 2 characters of the pid + ``d``: unique per test process, unlike conftest's ``z...``."""
    pid = os.getpid()
    return "y" + _B36[pid % 36] + _B36[(pid // 36) % 36] + "d"


def _processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            argv = pid_cmdline(int(entry))
            if any(marker in a for a in argv):
                found.append(f"{entry}: {' '.join(argv)[:120]}")
    return found


def _run(scenarios: list[str], replicas: int = 1):
    """Run ``scenarios`` in this test's own prefix and run dir; (rows, ok, report, leftovers)."""
    prefix = _prefix()
    base = Path("/run/ovslab-demo-test")
    rundir = base / str(os.getpid())
    assert not any(n.startswith(f"{prefix}-") for n in nsutil.list_netns()), "stale namespaces from an earlier run"
    out = io.StringIO()
    try:
        rows, ok = demo.run(scenarios, rundir=rundir, prefix=prefix, free_ports=True, out=out, replicas=replicas)
    finally:
        leftover_ns = [n for n in nsutil.list_netns() if n.startswith(f"{prefix}-")]
        leftover_procs = _processes_mentioning(str(rundir) + "/")
        for n in leftover_ns:  # only this test's own prefix
            nsutil.del_netns_if_exists(n)
        shutil.rmtree(rundir, ignore_errors=True)
        with contextlib.suppress(OSError):
            base.rmdir()  # only if no other run is using it
    report = demo.table(rows) + "\n" + out.getvalue()[-3000:]
    assert not leftover_ns, f"namespaces left behind: {leftover_ns}"
    assert not leftover_procs, f"processes left behind: {leftover_procs}"  # controllers, etcd members
    assert not any(n.startswith(f"{prefix}-") for n in nsutil.list_links()), "interfaces left in the root namespace"
    return rows, ok, report


def test_demo_chain3_scenario_passes_and_cleans_up():
    rows, ok, report = _run(["chain3"])
    failed = [r for r in rows if not r.passed]
    assert ok and not failed, f"failed checks: {failed}\n{report}"
    assert {r.scenario for r in rows} == {"chain3"}
    checks = [r.check for r in rows]
    # the scenario really covered what it promises
    assert sum("ping IPv4" in c for c in checks) == 6 and sum("ping IPv6" in c for c in checks) == 6, report
    assert any("TCP echo IPv4" in c for c in checks) and any("TCP echo IPv6" in c for c in checks), report
    assert any("spoofed source" in c for c in checks), report
    assert sum("desired state" in c for c in checks) == 3, report
    assert checks[-1].startswith("teardown"), report


def test_demo_oam_ecmp_scenario_passes_on_a_3_instance_cluster():
    """OAM ECMP runs on its leader: reads every switch, its twins programmed by every master, probes
    launched through the sources' masters, reports relayed; every fault still found (issue 11)."""
    rows, ok, report = _run(["oam_ecmp"], replicas=3)
    failed = [r for r in rows if not r.passed]
    assert ok and not failed, f"failed checks: {failed}\n{report}"
    assert sum(r.check.startswith("fault:") for r in rows) == 10, report
    assert rows[-1].check.startswith("teardown"), report
