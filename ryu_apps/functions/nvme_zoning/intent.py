"""NVMe-oF zoning: the intent, what the name server (NNS) holds (``apps.nvme_zoning`` and ``/v1/nvme``).

Subsystems are NVMe/TCP targets: an NQN and the listeners it is reached on (a
declared host's address and a port, 4420 by default).  Hosts are host NQNs,
optionally *bound* to the fabric identity the base fabric admitted for a
declared host (its switch port, MAC and addresses): a bound NQN is refused
from anywhere else.  Zones, grouped in zone groups as in NVMe TP8010, are sets
of host NQNs and subsystem NQNs: a host may connect to a subsystem when some
zone holds both::

    {"subsystems": [{"nqn": "nqn.2026-12.io.lab:vol1", "host": "t1", "listeners": [{"port": 4420}]}],
     "hosts": [{"nqn": "nqn.2026-12.io.lab:host-h1", "bind": "h1"}],
     "zone_groups": [{"name": "prod", "zones": [
         {"name": "db", "hosts": ["nqn.2026-12.io.lab:host-h1"], "subsystems": ["nqn.2026-12.io.lab:vol1"]}]}],
     "discovery": {"host": "d1"}}

These models check shape and syntax (NQN format, at most 223 bytes, never
blank); what needs the topology (hosts exist and have the address a listener
names, a zone names declared subsystems) is checked by
:func:`ryu_apps.functions.nvme_zoning.model.validate`.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ryu_apps.functions.nvme_zoning.pdu import DISCOVERY_NQN, DISCOVERY_PORT, NVME_TCP_PORT, check_nqn

NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _nqn(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not an NQN (a string)")
    why = check_nqn(v)
    if why:
        raise ValueError(f"{v[:40]!r}{'...' if len(v) > 40 else ''} is not a valid NQN: {why}")
    return v


def _unique(items, key: str, what: str) -> None:
    seen: set = set()
    for i, it in enumerate(items):
        k = getattr(it, key) if not isinstance(it, str) else it
        if k in seen:
            raise ValueError(f"{what}[{i}]{'.' + key if not isinstance(it, str) else ''}: {k!r} appears twice")
        seen.add(k)


class ListenerSpec(_Strict):
    """One NVMe/TCP listener of a subsystem: an address of its host (default: every address it
    has) and a TCP port."""

    addr: str | None = None
    port: int = Field(default=NVME_TCP_PORT, ge=1, le=65535)

    @field_validator("addr")
    @classmethod
    def _addr(cls, v):
        if v is None:
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None


class SubsystemSpec(_Strict):
    """An NVMe subsystem (target) reached over NVMe/TCP at its listeners.

    ``tls``: TLS on the NVMe/TCP port (TP 8011) hides the Connect from the
    fabric; ``refuse`` (the default) resets such a connection, ``allow`` lets
    it through unread (the target must then authenticate the host itself).
    """

    nqn: str
    host: str = Field(min_length=1, max_length=64, description="the declared host the target runs on")
    listeners: list[ListenerSpec] = Field(default_factory=lambda: [ListenerSpec()], min_length=1, max_length=8)
    tls: Literal["refuse", "allow"] = "refuse"

    @field_validator("nqn", mode="before")
    @classmethod
    def _nqn_ok(cls, v):
        return _nqn(v)

    @model_validator(mode="after")
    def _plain(self):
        if self.nqn == DISCOVERY_NQN:
            raise ValueError(f"nqn: {DISCOVERY_NQN} is the discovery subsystem (declare it under discovery)")
        seen = set()
        for i, lst in enumerate(self.listeners):
            if (lst.addr, lst.port) in seen:
                raise ValueError(f"listeners[{i}]: {lst.addr or 'every address'} port {lst.port} appears twice")
            seen.add((lst.addr, lst.port))
        return self


class HostNqnSpec(_Strict):
    """A host NQN; ``bind``: the declared host it may connect from (and from nowhere else)."""

    nqn: str
    bind: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("nqn", mode="before")
    @classmethod
    def _nqn_ok(cls, v):
        return _nqn(v)


class ZoneSpec(_Strict):
    """Hosts and subsystems that may talk: each host to each subsystem of the zone."""

    name: str = Field(pattern=NAME_RE)
    hosts: list[str] = Field(default_factory=list, max_length=4096)
    subsystems: list[str] = Field(default_factory=list, max_length=4096)

    @field_validator("hosts", "subsystems", mode="before")
    @classmethod
    def _nqns(cls, v):
        if not isinstance(v, list):
            raise ValueError("must be a list of NQNs")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(_nqn(x))
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        return out

    @model_validator(mode="after")
    def _once(self):
        _unique(self.hosts, "", "hosts")
        _unique(self.subsystems, "", "subsystems")
        return self


class ZoneGroupSpec(_Strict):
    """A zone group (TP8010): the unit a storage admin changes at once."""

    name: str = Field(pattern=NAME_RE)
    zones: list[ZoneSpec] = Field(default_factory=list, max_length=1024)

    @model_validator(mode="after")
    def _names(self):
        _unique(self.zones, "name", "zones")
        return self


class DiscoverySpec(_Strict):
    """The project's discovery controller: a declared host the lab runs it on, and its port."""

    host: str = Field(min_length=1, max_length=64)
    port: int = Field(default=DISCOVERY_PORT, ge=1, le=65535)


class LimitsSpec(_Strict):
    """What one connection the fabric has not admitted yet may cost the controller."""

    #: bytes of a pending connection's segments held while its Connect is read
    held_bytes: int = Field(default=16384, ge=2048, le=1 << 20)
    #: connections waiting for their Connect, per host (source address) and per switch
    pending_per_host: int = Field(default=64, ge=1, le=100000)
    pending_per_switch: int = Field(default=4096, ge=1, le=1000000)
    #: from the SYN to a complete Connect (s): longer gets both ends reset
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    #: packets per second each switch may send the controller for zoning (an OpenFlow meter)
    punt_rate: int = Field(default=2000, ge=10, le=1000000)


class NvmeZoningIntent(_Strict):
    """The ``apps.nvme_zoning`` section of a topology file (and what ``/v1/nvme`` changes)."""

    subsystems: list[SubsystemSpec] = Field(default_factory=list, max_length=4096)
    hosts: list[HostNqnSpec] = Field(default_factory=list, max_length=100000)
    zone_groups: list[ZoneGroupSpec] = Field(default_factory=list, max_length=1024)
    discovery: DiscoverySpec | None = None
    limits: LimitsSpec = LimitsSpec()

    @model_validator(mode="after")
    def _consistent(self):
        _unique(self.subsystems, "nqn", "subsystems")
        _unique(self.hosts, "nqn", "hosts")
        _unique(self.zone_groups, "name", "zone_groups")
        declared = {s.nqn for s in self.subsystems}
        for g, group in enumerate(self.zone_groups):
            for z, zone in enumerate(group.zones):
                for i, nqn in enumerate(zone.subsystems):
                    if nqn not in declared:
                        raise ValueError(f"zone_groups[{g}].zones[{z}].subsystems[{i}]: no subsystem {nqn!r} "
                                         f"is declared (subsystems: {sorted(declared)[:20]})")
        return self

    def zoned(self, hostnqn: str, subnqn: str) -> bool:
        """Does some zone hold both?"""
        return any(hostnqn in z.hosts and subnqn in z.subsystems for g in self.zone_groups for z in g.zones)

    def zoned_subsystems(self, hostnqn: str) -> list[str]:
        """The subsystems ``hostnqn`` may connect to, in declaration order."""
        ok = {s for g in self.zone_groups for z in g.zones if hostnqn in z.hosts for s in z.subsystems}
        return [s.nqn for s in self.subsystems if s.nqn in ok]
