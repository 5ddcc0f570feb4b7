"""Running ``ovs-ofctl`` against one bridge, and the bits of its replies every parser needs.

:func:`run` is the one place a subprocess is started (tests replace it with
canned replies); a failure becomes a :class:`FlowdumpError` naming the command
and quoting ovs-ofctl's own message.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence

#: The program that talks to the switch; tests may point it elsewhere (``flowdump.ofctl.OFCTL``).
OFCTL = "ovs-ofctl"
#: OpenFlow version for everything but the group comparison (see snapshot._dump_groups).
OFP_VERSION = "OpenFlow13"
#: Seconds ovs-ofctl may wait for the switch; the subprocess gets a bit more.
OFCTL_TIMEOUT = 10


class FlowdumpError(RuntimeError):
    """A problem worth one line on stderr: bridge not found, ovs-ofctl or the controller failed."""


def run(args: Sequence[str], ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess:
    """Run ``ovs-ofctl args``; raise FlowdumpError with its message unless the exit code is in ``ok``."""
    argv = [OFCTL, f"--timeout={OFCTL_TIMEOUT}", *args]
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=OFCTL_TIMEOUT + 5)
    except FileNotFoundError:
        raise FlowdumpError(f"{OFCTL} not found; install Open vSwitch (openvswitch-common)") from None
    except subprocess.TimeoutExpired:
        raise FlowdumpError(f"`{' '.join(argv)}` timed out after {OFCTL_TIMEOUT + 5} s") from None
    if cp.returncode not in tuple(ok):
        raise FlowdumpError(f"ovs-ofctl {command_word(args)} failed: {error_message(cp)}")
    return cp


def command_word(args: Sequence[str]) -> str:
    """The ovs-ofctl command word of ``args`` (``dump-flows``), skipping options and their values."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-O":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def error_message(cp: subprocess.CompletedProcess) -> str:
    """The line of ovs-ofctl's output that says what went wrong."""
    lines = [ln.strip() for ln in (cp.stderr or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("ovs-ofctl:"):
            return ln[len("ovs-ofctl:"):].strip()
    if lines:
        return lines[-1]
    return (cp.stdout or "").strip().splitlines()[-1] if (cp.stdout or "").strip() else f"exit status {cp.returncode}"


def mgmt_target(bridge: str, rundir: str) -> str:
    """The ovs-ofctl target for a bridge of the OVS instance whose run directory is ``rundir``.

    The ``unix:`` prefix matters: ``diff-flows`` takes any name starting with
    ``/`` for a file.
    """
    return f"unix:{os.path.join(rundir, bridge)}.mgmt"


def check_bridge(bridge: str, rundir: str) -> None:
    if not rundir or not os.path.isdir(rundir):
        raise FlowdumpError(f"OVS run directory {rundir!r} does not exist")
    if not os.path.exists(os.path.join(rundir, f"{bridge}.mgmt")):
        raise FlowdumpError(f"bridge {bridge!r} not found: no {bridge}.mgmt in {rundir}")


def body_lines(text: str) -> list[str]:
    """The entry lines of an ovs-ofctl reply: no reply headers, no blank lines."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("OFPST_", "NXST_", "OFPT_", "NXT_", "ONFST_")):
            continue
        out.append(line.rstrip())
    return out


def reply_version(text: str, default: str = OFP_VERSION) -> str:
    """``OpenFlow15`` from a reply header such as ``OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):``."""
    for line in text.splitlines():
        _, sep, rest = line.partition("(OF1.")
        if sep and rest[:1].isdigit():
            return f"OpenFlow1{rest[0]}"
    return default
