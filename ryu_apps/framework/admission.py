"""Admission of switch connections: one established connection per datapath id.

os-ken takes any connection that completes the handshake as the switch whose
datapath id it announces.  A second connection claiming a known dpid (a local
process, a misconfigured second bridge) would otherwise be taken as that
switch: it would receive the switch's flow set and its port list would
replace the real one.  So the rule here, as in ONOS's device mastership, is
that an established connection is never replaced by a newcomer.  A newcomer
for a dpid that has a live connection is refused before it reaches
``MAIN_DISPATCHER`` (so no app ever sees an event from it), counted, logged
and reported in ``/v1/health``.  A connection that has really gone is
noticed by the echo keepalive (see :mod:`ryu_apps.framework.config`), after which
the switch's own reconnect is accepted.

With TLS the certificate must also name the switch: its subject CN or a DNS
subject-alternative name must be the switch's name, its bridge name, or its
dpid as 16 hex digits.

The check sits in ``Datapath.set_state`` because that is the one place every
connection passes on its way to ``MAIN_DISPATCHER``, before any app handler.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from os_ken.controller import controller
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER

LOG = logging.getLogger(__name__)

#: check(datapath, established) -> None to admit, or the reason to refuse.  ``established`` is the
#: live connection that already holds the same dpid, or None.
Check = Callable[[object, object], "str | None"]
_check: Check | None = None
_installed = False
# dpid -> the connection admitted for it; kept here, synchronously with the state changes,
# because apps learn of a new connection only later, from their event queues.
_established: dict[int, object] = {}


def established(dpid: int):
    """The live connection admitted for ``dpid``, or None."""
    dp = _established.get(dpid)
    if dp is None or not dp.is_active or dp.state == DEAD_DISPATCHER:
        return None
    return dp


def install(check: Check) -> None:
    """Route every connection's step to MAIN_DISPATCHER through ``check`` (idempotent)."""
    global _check, _installed
    _check = check
    if _installed:
        return
    original = controller.Datapath.set_state

    def set_state(dp, state):
        if state == MAIN_DISPATCHER and dp.state != MAIN_DISPATCHER and _check is not None:
            cur = established(dp.id) if dp.id is not None else None
            try:
                reason = _check(dp, None if cur is dp else cur)
            except Exception:  # never let a bug here admit a connection silently
                LOG.exception("admission check failed; refusing the connection")
                reason = "admission check failed"
            if reason:
                dp.close()
                return
            if dp.id is not None:
                _established[dp.id] = dp
        elif state == DEAD_DISPATCHER and dp.id is not None and _established.get(dp.id) is dp:
            del _established[dp.id]
        original(dp, state)

    controller.Datapath.set_state = set_state
    _installed = True


def peer_names(dp) -> list[str] | None:
    """Names a TLS peer certificate gives (CN and DNS SANs); None on a plain connection."""
    getpeercert = getattr(dp.socket, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert() or {}
    names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    names += [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    return names


class Refusals:
    """What was refused: counts per switch and the last few, for /v1/health."""

    def __init__(self, keep: int = 20):
        self.counts: dict[str, int] = {}
        self.recent: deque = deque(maxlen=keep)

    def add(self, switch: str, kind: str, peer, detail: str) -> None:
        self.counts[f"{switch}:{kind}"] = self.counts.get(f"{switch}:{kind}", 0) + 1
        self.recent.append({"switch": switch, "kind": kind, "peer": str(peer), "detail": detail,
                            "at": round(time.time(), 3)})

    def json(self) -> dict:
        return {"counts": dict(self.counts), "recent": list(self.recent)}
