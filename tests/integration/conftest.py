"""Fixtures for tests that build real labs (root, Open vSwitch, network namespaces).

* Everything here is skipped unless the tests run as root and ``ovs-vswitchd``
  (and the other tools a lab needs) are installed.
* Each test gets its own run directory ``/run/ovslab-test-<pid>/<n>`` and each
  lab a fresh prefix (``z`` + 3 characters), written into a copy of the
  topology file, so test labs never collide with a lab someone is running from
  the same topology (names of namespaces and interfaces come from the prefix).
* ``lab_factory`` always tears its labs down, also when the test fails.
* After the session, nothing named with one of this session's prefixes may be
  left: no namespace, no interface, no process mentioning the run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ovs_scripts import lab as labmod
from ovs_scripts import netns as nsutil
from ovs_scripts.sandbox import pid_cmdline

REPO = Path(__file__).resolve().parents[2]
RUN_BASE = Path(f"/run/ovslab-test-{os.getpid()}")
TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-ofctl", "ovs-appctl", "ip", "ethtool", "ping", "socat")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count()
USED_PREFIXES: list[str] = []


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, Open vSwitch)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"integration tests need {', '.join(missing)}"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _require_lab_environment():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def new_prefix() -> str:
    """A lab prefix unique to this session and test: ``z`` + 2 chars of the pid + a counter."""
    n = next(_counter)
    pid = os.getpid()
    prefix = "z" + _B36[pid % 36] + _B36[(pid // 36) % 36] + _B36[n % 36]
    USED_PREFIXES.append(prefix)
    return prefix


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (so test controllers never clash with a running lab)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(n: int) -> int:
    """The first of ``n`` consecutive TCP ports on 127.0.0.1 that are all free now."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        if all(labmod._port_free(base + i) for i in range(n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports found")


def topology_path(name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.exists() else REPO / "topologies" / name


def leftovers(prefixes: list[str], rundir: Path) -> list[str]:
    """Namespaces, interfaces (caller's namespace) and processes a test lab could have left."""
    found = []
    heads = tuple(f"{p}-" for p in prefixes)
    if heads:
        found += [f"namespace {n}" for n in nsutil.list_netns() if n.startswith(heads)]
        found += [f"interface {n}" for n in nsutil.list_links() if n.startswith(heads)]
    marker = str(rundir) + "/"
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            argv = pid_cmdline(int(entry))
            if any(marker in a for a in argv):
                found.append(f"process {entry}: {' '.join(argv)[:120]}")
    return found


class LabFactory:
    """``lab_factory(topology, controller=True, timeout=60, **changes)`` -> a Lab torn down after the test.

    The topology is copied with a fresh ``lab.prefix`` and free controller ports.
    ``controller=False`` is ``ovslab up --no-controller``.
    """

    def __init__(self, tmp_path: Path, rundir: Path):
        self.tmp_path = tmp_path
        self.rundir = rundir  # the base directory ($OVSLAB_RUNDIR) of this test's labs
        self.labs: list[str] = []

    def prepare(self, topology: str | Path, **changes) -> Path:
        """A copy of ``topology`` with a fresh prefix, free controller ports, and ``changes`` (top-level keys)."""
        src = topology_path(str(topology))
        data = yaml.safe_load(src.read_text())
        data.setdefault("lab", {})["prefix"] = new_prefix()
        for k, v in changes.items():
            data[k] = v
        ctl = dict(data.get("controller") or {})
        n = int(ctl.get("replicas", 1))
        if n > 1:  # instance i listens on of_port + i, rest_port + i
            ctl["of_port"], ctl["rest_port"] = free_port_range(n), free_port_range(n)
        else:
            ctl["of_port"], ctl["rest_port"] = free_port(), free_port()
        if ctl.get("store") == "etcd":
            ctl["etcd_port"] = free_port_range(2 * int(ctl.get("etcd_members", 3)))
        data["controller"] = ctl
        path = self.tmp_path / f"{data['lab']['prefix']}-{src.name}"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.labs.append(data["lab"]["name"])
        return path

    def __call__(self, topology: str | Path, controller: bool = True, timeout: float = 60, **changes) -> labmod.Lab:
        path = self.prepare(topology, **changes)
        return labmod.Lab.up(path, controller=controller, timeout=timeout, rundir=self.rundir)

    def cli(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        """Run ``ovslab ARGS`` with this test's OVSLAB_RUNDIR."""
        env = dict(os.environ, OVSLAB_RUNDIR=str(self.rundir))
        cp = subprocess.run([sys.executable, "-m", "ovs_scripts.cli", *args], capture_output=True, text=True,
                            timeout=timeout, env=env)
        if check and cp.returncode != 0:
            raise AssertionError(f"ovslab {' '.join(args)} failed ({cp.returncode}): {cp.stderr}")
        return cp

    def cleanup(self) -> list[str]:
        errors = []
        for name in labmod.list_labs(self.rundir):
            try:
                labmod.down(name, self.rundir)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                errors.append(f"{name}: {exc}")
        return errors


@contextlib.contextmanager
def module_factory(tmp_path_factory, name: str):
    """A LabFactory for a module-scoped fixture: skipped without a lab environment, always torn down.

    ``with module_factory(tmp_path_factory, "x") as factory: yield factory("chain3.yaml")``
    """
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    rundir = RUN_BASE / f"t{next(_counter)}"
    factory = LabFactory(tmp_path_factory.mktemp(name), rundir)
    try:
        yield factory
    finally:
        errors = factory.cleanup()
        shutil.rmtree(rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


@pytest.fixture
def lab_factory(tmp_path):
    rundir = RUN_BASE / f"t{next(_counter)}"
    factory = LabFactory(tmp_path, rundir)
    try:
        yield factory
    finally:
        errors = factory.cleanup()
        shutil.rmtree(rundir, ignore_errors=True)
        assert not errors, f"teardown failed: {errors}"


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind():
    yield
    if _skip_reason():
        return
    found = leftovers(USED_PREFIXES, RUN_BASE)
    # Clean up what we can (only names with this session's prefixes), then report.
    for item in found:
        if item.startswith("namespace "):
            nsutil.del_netns_if_exists(item.split()[1])
    shutil.rmtree(RUN_BASE, ignore_errors=True)
    assert not found, f"test labs left these behind: {found}"
