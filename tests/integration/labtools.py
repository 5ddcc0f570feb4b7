"""Small helpers several integration modules share: REST reads, waiting, pings, a frozen relay."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import urllib.request

from ovs_scripts.lab import ROOT_SANDBOX


def get(lab, path: str, timeout: float = 10):
    """GET ``path`` from the lab's controller; the JSON body (asserting 200)."""
    req = urllib.request.Request(f"{lab.rest_url}{path}", headers=lab.rest_headers())
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status == 200, (path, resp.status)
        return json.loads(resp.read())


def wait_for(pred, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def ping(lab, host: str, addr: str, count: int = 2, wait: float = 2) -> bool:
    """Does ``host`` get answers from ``addr`` (``ping -c count``; IPv6 addresses work too)?"""
    r = lab.exec(host, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(wait), addr], check=False, timeout=60)
    return r.returncode == 0


def wait_synced(lab, timeout: float = 30) -> bool:
    """Every switch connected and holding the controller's desired state."""
    return wait_for(lambda: all(s["connected"] and s["synced"] for s in get(lab, "/v1/switches")), timeout)


def start_ping(lab, host: str, addr: str, seconds: float, interval: float = 0.02):
    """``ping`` from ``host`` for about ``seconds`` (read the result with :func:`ping_loss`)."""
    return lab.popen(host, ["ping", "-n", "-q", "-i", str(interval), "-W", "1",
                            "-c", str(int(seconds / interval)), addr])


def ping_loss(proc, timeout: float = 120) -> tuple[int, int]:
    """``(sent, lost)`` of a finished :func:`start_ping`."""
    out, _ = proc.communicate(timeout=timeout)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, got = int(m.group(1)), int(m.group(2))
    return sent, sent - got


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
