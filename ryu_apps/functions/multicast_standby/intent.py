"""The ``apps.multicast_standby`` intent (also ``PUT /v1/apps/multicast_standby/intent``).

Validated on the way in: unknown keys are refused, group ranges lie inside
224.0.0.0/4 and outside 224.0.0.0/24, a static member's group lies inside them.
A static member's host is checked against the topology when the state is
computed (:meth:`ryu_apps.functions.multicast_standby.model.McastState.static_members`).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ryu_apps.framework.topology import MAC_RE
from ryu_apps.functions.multicast_standby import wire


def _group(v: str) -> str:
    try:
        g = ipaddress.IPv4Address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 address") from None
    if g not in wire.MULTICAST:
        raise ValueError(f"{v} is not a multicast group (224.0.0.0/4)")
    if g in wire.LINK_LOCAL:
        raise ValueError(f"{v} is link-local (224.0.0.0/24 is never routed)")
    return str(g)


class StaticMember(BaseModel):
    """A receiver the intent joins without IGMP (never expires)."""

    model_config = ConfigDict(extra="forbid")
    host: str
    group: str
    sources: list[str] = []   # empty: any source; else only these (an INCLUDE filter)

    @field_validator("group")
    @classmethod
    def _g(cls, v: str) -> str:
        return _group(v)

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        out = []
        for s in v:
            try:
                a = ipaddress.IPv4Address(s)
            except ValueError:
                raise ValueError(f"{s!r} is not an IPv4 address") from None
            if a.is_multicast or a.is_unspecified:
                raise ValueError(f"{s} is not a unicast source address")
            out.append(str(a))
        return sorted(set(out))


class MulticastIntent(BaseModel):
    """The ``apps.multicast_standby`` section of a topology file."""

    model_config = ConfigDict(extra="forbid")
    #: standby: MoFRR-style standby paths with suppression on the active path;
    #: restore: the baseline, recompute the tree after a failure
    protection: Literal["standby", "restore"] = "standby"
    #: group ranges the fabric carries (224.0.0.0/24 never is)
    groups: list[str] = ["224.0.0.0/4"]
    static_members: list[StaticMember] = []
    #: packet-ins per second per switch: IGMP, standby requests, first packets of new sources
    igmp_rate: int = Field(100, ge=1, le=10000)
    request_rate: int = Field(1000, ge=1, le=100000)
    discover_rate: int = Field(100, ge=1, le=10000)
    #: the controller's IGMP querier; 0 = no queries, memberships never expire
    query_interval: float = Field(60.0, ge=0, le=3600)
    query_response: float = Field(10.0, ge=0.1, le=25.0)
    robustness: int = Field(2, ge=1, le=7)
    querier_ip: str = "0.0.0.0"
    querier_mac: str = "0e:fa:b0:00:04:01"
    #: a standby request not complete after this long has failed; retried after request_retry, doubling
    request_timeout: float = Field(3.0, gt=0, le=60)
    request_retry: float = Field(1.0, gt=0, le=60)
    request_retry_max: float = Field(30.0, gt=0, le=600)
    #: at most this many requests in flight at once (a burst of new channels is paced)
    requests_in_flight: int = Field(64, ge=1, le=4096)
    #: switch to the standby copy when the active stream is silent this long while the standby
    #: copy keeps arriving (flow counters polled every poll_ms; OVS updates them about every 0.5 s); 0 = off
    silence_ms: int = Field(1000, ge=0, le=60000)
    poll_ms: int = Field(250, ge=50, le=10000)
    #: a source that sent nothing for this long is forgotten (its tree and paths go); 0 = never
    source_timeout: float = Field(120.0, ge=0, le=86400)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one group range")
        out = []
        for r in v:
            try:
                net = ipaddress.IPv4Network(r)
            except ValueError as exc:
                raise ValueError(f"{r!r} is not an IPv4 prefix: {exc}") from None
            if not net.subnet_of(wire.MULTICAST):
                raise ValueError(f"{r} is not inside 224.0.0.0/4")
            if net.subnet_of(wire.LINK_LOCAL):
                raise ValueError(f"{r} is link-local (224.0.0.0/24 is never routed)")
            out.append(str(net))
        return out

    @field_validator("querier_ip")
    @classmethod
    def _qip(cls, v: str) -> str:
        a = ipaddress.IPv4Address(v)
        if a.is_multicast:
            raise ValueError(f"{v} is a multicast address")
        return str(a)

    @field_validator("querier_mac")
    @classmethod
    def _qmac(cls, v: str) -> str:
        v = v.lower()
        if not MAC_RE.match(v) or int(v[:2], 16) & 1:
            raise ValueError(f"{v!r} is not a unicast MAC address")
        return v

    @model_validator(mode="after")
    def _static_in_range(self):
        for i, sm in enumerate(self.static_members):
            g = ipaddress.IPv4Address(sm.group)
            if not any(g in ipaddress.IPv4Network(r) for r in self.groups):
                raise ValueError(f"static_members[{i}].group {sm.group} is outside groups {self.groups}")
        if self.request_retry_max < self.request_retry:
            raise ValueError("request_retry_max must be >= request_retry")
        return self

    def member_timeout(self) -> float | None:
        """RFC 3376 group membership interval; None without a querier."""
        if self.query_interval <= 0:
            return None
        return self.robustness * self.query_interval + self.query_response


def group_allowed(group: str, intent: MulticastIntent) -> bool:
    """Is ``group`` inside the ranges the intent carries (and never link-local)?"""
    g = ipaddress.IPv4Address(group)
    if g in wire.LINK_LOCAL or g not in wire.MULTICAST:
        return False
    return any(g in ipaddress.IPv4Network(r) for r in intent.groups)
