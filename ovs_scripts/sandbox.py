"""A private Open vSwitch instance: its own database, daemons, sockets and logs.

Like OVS's ``tutorial/ovs-sandbox``: everything lives in one directory that
serves as OVS_RUNDIR, OVS_DBDIR and OVS_LOGDIR (OVS_PKGDATADIR is left alone)::

    <dir>/conf.db                 ovsdb-tool create conf.db vswitch.ovsschema
    <dir>/db.sock                 ovsdb-server --remote=punix:<dir>/db.sock
    <dir>/ovs-vswitchd.pid        pidfiles, and ovs-vswitchd.<pid>.ctl next to them
    <dir>/<bridge>.mgmt           OpenFlow management socket of each bridge
    <dir>/*.log

With ``netns`` set, both daemons run inside that network namespace
(``ip netns exec NS ...``); their unix sockets are on the shared filesystem, so
ovs-ofctl, ovs-appctl and OVSDB clients reach them from anywhere.  The system
Open vSwitch (/var/run/openvswitch) is never touched: every command gets the
sandbox's environment and explicit socket paths.

:meth:`Sandbox.stop` deletes the bridges through OVSDB first (the userspace
datapath's tap devices are persistent and outlive a killed ovs-vswitchd), then
asks the daemons to exit, then kills the recorded pids that are still ours.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ovs_scripts import netns as nsutil
from ovs_scripts.netns import CommandError
from ovs_scripts.ovsdb import Ovsdb, OvsdbError

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
DAEMONS = ("ovsdb-server", "ovs-vswitchd")


class SandboxError(RuntimeError):
    """A sandbox daemon did not start or stop."""


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def pid_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def pid_matches(pid: int | None, marker: str, program: str | None = None) -> bool:
    """True if ``pid`` is alive and its command line contains ``marker`` (and runs ``program``)."""
    if not pid_alive(pid):
        return False
    argv = pid_cmdline(pid)  # type: ignore[arg-type]
    if not argv:
        return False
    if program is not None and os.path.basename(argv[0]) != program:
        return False
    return any(marker in a for a in argv)


def find_pids(marker: str, program: str | None = None) -> list[int]:
    """Live pids whose command line contains ``marker`` (a path unique to one lab object).

    Only used when a pid was not recorded (a crash between starting a process
    and writing the state file); the marker is a run-directory path, so only
    processes this tool started can match.
    """
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and pid_matches(int(entry), marker, program):
            out.append(int(entry))
    return out


def kill_pid(pid: int, marker: str, program: str | None = None, *, group: bool = False,
             timeout: float = 5) -> bool:
    """SIGTERM, then SIGKILL, ``pid`` (or its process group) if it still matches ``marker``."""
    if not pid_matches(pid, marker, program):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if group and os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
    return not pid_alive(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


class Sandbox:
    """A private OVS (ovsdb-server + ovs-vswitchd) in ``directory``, optionally inside ``netns``."""

    def __init__(self, directory: str | Path, netns: str | None = None, *, pids: dict[str, int] | None = None):
        self.dir = Path(directory).resolve()
        self.netns = netns
        self.recorded: dict[str, int] = dict(pids or {})
        # Every daemon of this sandbox has this path in its command line (pidfile, log file).
        self.marker = str(self.dir) + "/"

    # -- paths and environment ---------------------------------------------------

    @property
    def db_sock(self) -> Path:
        return self.dir / "db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.db_sock}"

    def mgmt(self, bridge: str) -> Path:
        return self.dir / f"{bridge}.mgmt"

    def env(self) -> dict[str, str]:
        """Environment for ovs-ofctl / ovs-appctl / ovs-vsctl against this sandbox."""
        env = dict(os.environ)
        for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR"):
            env[var] = str(self.dir)
        env["OVS_DB"] = self.remote  # not read by OVS tools; handy for scripts
        return env

    def pidfile(self, daemon: str) -> Path:
        return self.dir / f"{daemon}.pid"

    def pid(self, daemon: str) -> int | None:
        """The daemon's pid if it is alive and ours (pidfile, then recorded pid, then a /proc scan)."""
        candidates: list[int] = []
        try:
            candidates.append(int(self.pidfile(daemon).read_text().strip()))
        except (OSError, ValueError):
            pass
        if daemon in self.recorded:
            candidates.append(self.recorded[daemon])
        for pid in candidates:
            if pid_matches(pid, self.marker, daemon):
                return pid
        found = find_pids(self.marker, daemon)
        return found[0] if found else None

    def alive(self, daemon: str = "ovs-vswitchd") -> bool:
        return self.pid(daemon) is not None

    # -- start -------------------------------------------------------------------

    def start(self, on_started=None, timeout: float = 20) -> dict[str, int]:
        """Create the database and start both daemons; ``on_started(daemon, pid)`` records each pid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        db = self.dir / "conf.db"
        if not db.exists():
            nsutil.run(["ovsdb-tool", "create", str(db), SCHEMA], env=env)
        nsutil.run(nsutil.in_netns(self.netns, [
            "ovsdb-server", str(db), f"--remote=punix:{self.db_sock}",
            f"--pidfile={self.pidfile('ovsdb-server')}", "--detach", "--no-chdir",
            f"--log-file={self.dir / 'ovsdb-server.log'}"]), env=env, timeout=timeout)
        self._record("ovsdb-server", on_started)
        with Ovsdb(self.remote, timeout=timeout) as db_api:
            db_api.init_root()
        nsutil.run(nsutil.in_netns(self.netns, [
            "ovs-vswitchd", self.remote, f"--pidfile={self.pidfile('ovs-vswitchd')}", "--detach",
            "--no-chdir", f"--log-file={self.dir / 'ovs-vswitchd.log'}"]), env=env, timeout=timeout)
        self._record("ovs-vswitchd", on_started)
        return dict(self.recorded)

    def _record(self, daemon: str, on_started) -> None:
        pid = self.pid(daemon)
        if pid is None:
            raise SandboxError(f"{daemon} in {self.dir} did not start; see {self.dir / (daemon + '.log')}")
        self.recorded[daemon] = pid
        if on_started is not None:
            on_started(daemon, pid)

    def db(self, timeout: float = 10) -> Ovsdb:
        """A new ovsdbapp connection to this sandbox (close it, or use it as a context manager)."""
        return Ovsdb(self.remote, timeout=timeout)

    # -- stop --------------------------------------------------------------------

    def stop(self, timeout: float = 10) -> list[str]:
        """Delete all bridges, stop both daemons; tolerate daemons that are already gone.

        Returns notes about what needed a fallback (for the caller's log).
        """
        notes: list[str] = []
        vs_pid = self.pid("ovs-vswitchd")
        db_pid = self.pid("ovsdb-server")
        if vs_pid and db_pid:
            # With ovs-vswitchd alive, deleting the bridges makes it remove their tap devices.
            try:
                with self.db(timeout=timeout) as db_api:
                    db_api.del_bridges()
            except OvsdbError as exc:
                notes.append(f"could not delete bridges through OVSDB: {exc}")
        for daemon, pid, args in (("ovs-vswitchd", vs_pid, ["exit", "--cleanup"]),
                                  ("ovsdb-server", db_pid, ["exit"])):
            if not pid:
                continue
            ctl = self.dir / f"{daemon}.{pid}.ctl"
            try:
                nsutil.run(["ovs-appctl", "-t", str(ctl), *args], env=self.env(), timeout=timeout)
                deadline = time.monotonic() + timeout
            except CommandError as exc:
                notes.append(f"{daemon}: {exc}")
                deadline = 0.0  # no point waiting: go straight to the kill fallback
            while pid_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
            if pid_alive(pid):
                notes.append(f"{daemon} (pid {pid}) did not exit; killing it")
                kill_pid(pid, self.marker, daemon)
        return notes

    # -- tools -------------------------------------------------------------------

    def ofctl(self, bridge: str, *args: str, check: bool = True, timeout: float = 30,
              input: str | None = None):
        """``ovs-ofctl -O OpenFlow13 [OPTIONS] COMMAND unix:<dir>/<bridge>.mgmt [ARGS]``.

        ``args`` are ovs-ofctl's options (leading ``-...``), the command, then its arguments:
        ``sb.ofctl("br0", "add-flow", "actions=NORMAL")``,
        ``sb.ofctl("br0", "--bundle", "add-flows", "-", input=text)``.
        """
        opts = []
        rest = list(args)
        while rest and rest[0].startswith("-") and rest[0] != "-":
            opts.append(rest.pop(0))
        if not rest:
            raise ValueError("ofctl needs a command, e.g. dump-flows")
        cmd, cmd_args = rest[0], rest[1:]
        argv = ["ovs-ofctl", "-O", "OpenFlow13", *opts, cmd, f"unix:{self.mgmt(bridge)}", *cmd_args]
        return nsutil.run(argv, check=check, timeout=timeout, input=input, env=self.env())

    def appctl(self, *args: str, target: str = "ovs-vswitchd", check: bool = True, timeout: float = 30):
        """``ovs-appctl -t <dir>/<target>.<pid>.ctl ARGS``."""
        pid = self.pid(target)
        if pid is None:
            raise SandboxError(f"{target} of {self.dir} is not running")
        ctl = self.dir / f"{target}.{pid}.ctl"
        return nsutil.run(["ovs-appctl", "-t", str(ctl), *args], check=check, timeout=timeout, env=self.env())
