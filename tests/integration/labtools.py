"""Small helpers several integration modules share: REST reads, waiting, pings, a frozen relay.

Waiting, the REST client and ping parsing are :mod:`ovs_scripts.kit`'s (the lab, the demo and
the tests use the same ones); what is here binds them to a lab the way the tests use them.
"""

from __future__ import annotations

import contextlib
import os
import signal

from ovs_scripts import kit
from ovs_scripts.kit import wait_for  # noqa: F401 - the tests' wait_for
from ovs_scripts.lab import ROOT_SANDBOX


def get(lab, path: str, timeout: float = 10):
    """GET ``path`` from the lab's controller; the JSON body (asserting 200)."""
    r = kit.rest(lab, "GET", path, timeout=timeout)
    assert r.status == 200, (path, r.status, r.data[:500])
    return r.body


def rest(lab, path: str, method: str = "GET", body=None, timeout: float = 10) -> kit.Reply:
    """One request to the lab's controller (with its token): the :class:`~ovs_scripts.kit.Reply`,
    HTTP errors included (``status, body = rest(...)``)."""
    return kit.rest(lab, method, path, body, timeout=timeout)


def ping(lab, host: str, addr: str, count: int = 2, wait: float = 2, timeout: float = 60,
         family: int | None = None) -> kit.PingResult:
    """``ping -c count`` from ``host`` (IPv6 addresses work too): true when answered (ping exited 0);
    ``.output`` for the assertion message, ``.sent`` / ``.received`` / ``.stats`` for figures."""
    return kit.ping(lab, host, addr, count, interval=0.2, wait=wait, timeout=timeout, family=family)


def wait_synced(lab, timeout: float = 30) -> bool:
    """Every switch connected and holding the controller's desired state."""
    return wait_for(lambda: all(s["connected"] and s["synced"] for s in get(lab, "/v1/switches")), timeout)


def start_ping(lab, host: str, addr: str, seconds: float, interval: float = 0.02):
    """``ping`` from ``host`` for about ``seconds`` (read the result with :func:`ping_loss`)."""
    return lab.popen(host, kit.ping_argv(addr, int(seconds / interval), interval=interval, wait=1, quiet=True))


def ping_loss(proc, timeout: float = 120) -> tuple[int, int]:
    """``(sent, lost)`` of a finished :func:`start_ping`."""
    out, _ = proc.communicate(timeout=timeout)
    stats = kit.parse_ping(out)
    assert stats, out
    return stats.transmitted, stats.lost


@contextlib.contextmanager
def frozen_relay(lab, sandbox: str = ROOT_SANDBOX):
    """Freeze (SIGSTOP) the control-channel relay the lab started for ``sandbox``, and its
    per-connection children (socat fork): the TCP connections stay open, nothing moves.
    Thawed on exit, whatever happens.  Yields the process group."""
    for e in lab.state.objects:
        if e["kind"] == "process" and e.get("what") == f"relay {sandbox}" and e.get("pid"):
            pgid = os.getpgid(e["pid"])
            break
    else:
        raise AssertionError(f"no relay recorded for {sandbox}")
    os.killpg(pgid, signal.SIGSTOP)
    try:
        yield pgid
    finally:
        os.killpg(pgid, signal.SIGCONT)


def set_controller_target(lab, switch: str, target: str) -> str:
    """Point ``switch``'s Controller row at ``target`` (OVSDB, through ovsdbapp); the old target.

    Editing the row keeps the bridge's controller (and its settings): removing the last
    controller of a secure bridge would make OVS flush its flows.  So would a unix socket
    outside the switch's run directory, which OVS refuses to use: to cut the channel but keep
    the flows, point it at a path inside ``lab.sandbox(...).dir`` that nobody listens on.
    """
    sw = lab.topology.switches[switch]
    sb = lab.sandbox(lab.plan.switch_sandbox[switch])
    with sb.db() as db:
        (row,) = db.controllers(sw.bridge)
        db.api.db_set("Controller", row["_uuid"], ("target", target)).execute(check_error=True)
    return row["target"]
