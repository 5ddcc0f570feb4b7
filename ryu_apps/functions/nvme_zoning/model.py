"""NVMe-oF zoning: checks against the topology, and the listeners the fabric guards.

:func:`validate` checks what the intent models cannot: the hosts a subsystem,
a binding or the discovery controller names exist, a listener's address is its
host's, no two subsystems claim one listener with different TLS policies, a
host NQN is bound to one host only.  :func:`listeners` resolves every
subsystem (and the discovery controller) into plain
:class:`Listener` records: where the fabric steers NVMe/TCP into the zone table.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ryu_apps.framework.topology import Topology
from ryu_apps.framework.view import IntentError
from ryu_apps.functions.nvme_zoning.intent import NvmeZoningIntent
from ryu_apps.functions.nvme_zoning.pdu import DISCOVERY_NQN


def _err(field: str, msg: str) -> IntentError:
    return IntentError(f"{field}: {msg}", field)


@dataclass(frozen=True)
class Listener:
    """One NVMe/TCP listening address and port, the subsystems behind it, its host."""

    addr: str                      # an address of ``host``
    port: int
    host: str                      # the declared host the target (or discovery controller) runs on
    switch: str
    switch_port: int
    subsystems: tuple[str, ...]    # NQNs reached here (the discovery NQN for the discovery controller)
    tls: str                       # refuse | allow: every subsystem here allows TLS, or not

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.addr).version

    @property
    def discovery(self) -> bool:
        return self.subsystems == (DISCOVERY_NQN,)


def validate(topology: Topology, intent: NvmeZoningIntent) -> None:
    """Raise IntentError (naming the field) unless ``intent`` fits ``topology``."""
    hosts = topology.hosts
    for i, s in enumerate(intent.subsystems):
        if s.host not in hosts:
            raise _err(f"subsystems[{i}].host", f"no host named {s.host!r} in the topology")
        have = {str(a) for a in hosts[s.host].addresses}
        if not have:
            raise _err(f"subsystems[{i}].host", f"{s.host} has no address to listen on")
        for j, lst in enumerate(s.listeners):
            if lst.addr is not None and lst.addr not in have:
                raise _err(f"subsystems[{i}].listeners[{j}].addr",
                           f"{lst.addr} is not an address of {s.host} ({sorted(have)})")
    bound: dict[str, str] = {}
    for i, h in enumerate(intent.hosts):
        if h.bind is None:
            continue
        if h.bind not in hosts:
            raise _err(f"hosts[{i}].bind", f"no host named {h.bind!r} in the topology")
        bound[h.nqn] = h.bind
    if intent.discovery is not None:
        d = intent.discovery
        if d.host not in hosts:
            raise _err("discovery.host", f"no host named {d.host!r} in the topology")
        if not hosts[d.host].addresses:
            raise _err("discovery.host", f"{d.host} has no address to listen on")
    seen: dict[tuple[str, int], tuple[str, str]] = {}  # listener -> (subsystem, tls)
    for i, s in enumerate(intent.subsystems):
        for addr, port in _addrs(topology, s.host, s.listeners):
            other = seen.get((addr, port))
            if other is not None and other[1] != s.tls:
                raise _err(f"subsystems[{i}].tls", f"{addr} port {port} also serves {other[0]} with tls "
                           f"{other[1]}: one listener has one TLS policy (the fabric cannot tell them apart)")
            seen.setdefault((addr, port), (s.nqn, s.tls))
    if intent.discovery is not None:
        for addr in hosts[intent.discovery.host].addresses:
            if (str(addr), intent.discovery.port) in seen:
                raise _err("discovery.port", f"{addr} port {intent.discovery.port} is already a subsystem's listener")


def _addrs(topology: Topology, host: str, listeners) -> list[tuple[str, int]]:
    out = []
    for lst in listeners:
        addrs = [lst.addr] if lst.addr is not None else [str(a) for a in topology.hosts[host].addresses]
        out += [(a, lst.port) for a in addrs]
    return out


def listeners(topology: Topology, intent: NvmeZoningIntent) -> list[Listener]:
    """Every listener the fabric guards, sorted by (addr, port); a validated intent."""
    by_key: dict[tuple[str, int], dict] = {}
    for s in intent.subsystems:
        h = topology.hosts[s.host]
        for addr, port in _addrs(topology, s.host, s.listeners):
            e = by_key.setdefault((addr, port), {"host": s.host, "switch": h.switch, "port": h.port,
                                                 "subs": [], "tls": s.tls})
            e["subs"].append(s.nqn)
    if intent.discovery is not None:
        h = topology.hosts[intent.discovery.host]
        for addr in h.addresses:
            by_key[(str(addr), intent.discovery.port)] = {"host": h.name, "switch": h.switch, "port": h.port,
                                                          "subs": [DISCOVERY_NQN], "tls": "refuse"}
    return [Listener(addr, port, e["host"], e["switch"], e["port"], tuple(e["subs"]), e["tls"])
            for (addr, port), e in sorted(by_key.items())]


def bindings(intent: NvmeZoningIntent) -> dict[str, str]:
    """Host NQN -> the declared host it is bound to."""
    return {h.nqn: h.bind for h in intent.hosts if h.bind is not None}


def discovery_entries(topology: Topology, intent: NvmeZoningIntent, hostnqn: str) -> list[dict]:
    """The discovery log entries ``hostnqn`` may see: every listener of every subsystem zoned for it."""
    zoned = set(intent.zoned_subsystems(hostnqn))
    out = []
    for lst in listeners(topology, intent):
        for nqn in lst.subsystems:
            if nqn in zoned:
                # adrfam as the discovery log page numbers it: 1 IPv4, 2 IPv6
                out.append({"subnqn": nqn, "traddr": lst.addr, "trsvcid": str(lst.port), "trtype": "tcp",
                            "adrfam": 1 if lst.version == 4 else 2})
    return sorted(out, key=lambda e: (e["subnqn"], e["traddr"], e["trsvcid"]))


def decide(intent: NvmeZoningIntent, listener: Listener, host: str, hostnqn: str, subnqn: str) -> str:
    """Why a Connect of ``hostnqn`` to ``subnqn`` at ``listener``, from declared host ``host``, is
    refused; '' when it is admitted.  Every queue's Connect is decided alike."""
    bound = bindings(intent).get(hostnqn)
    if bound is not None and bound != host:
        return f"host NQN {hostnqn} is bound to {bound}; this Connect came from {host} (a stolen NQN)"
    if subnqn not in listener.subsystems:
        return f"{subnqn} is not served at {listener.addr} port {listener.port}"
    if subnqn == DISCOVERY_NQN:
        return ""  # every host may ask; the discovery controller lists what it is zoned for
    if not intent.zoned(hostnqn, subnqn):
        return f"no zone holds {hostnqn} and {subnqn}"
    return ""
