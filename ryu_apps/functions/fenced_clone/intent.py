"""Fenced clones: the intent, what a user declares (``apps.fenced_clone`` and ``/v1/fences``).

A *fence* holds one clone of an application.  The application (the *parent*)
is a list of components, each a declared lab host (``web``, ``app``, ``db``).
A clone component is another declared host with its own MAC and addresses;
a fence *member* says which parent component it clones::

    {"name": "shop-a",
     "parent": ["web", "app", "db"],
     "members": [{"component": "web", "host": "aweb"},
                 {"component": "db", "ipv4": "10.0.1.13", "ipv6": "fd00:fc::1:13"}],
     "egress": {"policy": "deny"}}

A member names its clone by ``host`` or by its addresses (``ipv4``/``ipv6``,
which must be the addresses of one declared host), or both (they must agree).

These models check the shape and the address syntax only; everything that
needs the topology or the other fences is checked by
:func:`ryu_apps.functions.fenced_clone.model.validate`.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FENCE_NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _addr(v: str | None, version: int) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not an IPv{version} address (a string like "
                         f"{'10.0.1.11' if version == 4 else 'fd00::11'})")
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv{version} address") from None
    if a.version != version:
        raise ValueError(f"{v!r} is an IPv{a.version} address, not IPv{version}")
    return str(a)


class MemberSpec(_Strict):
    """One clone component: which parent component it clones, and which host it is."""

    component: str = Field(min_length=1, max_length=64)
    host: str | None = Field(default=None, min_length=1, max_length=64)
    ipv4: str | None = None
    ipv6: str | None = None

    @field_validator("ipv4", mode="before")
    @classmethod
    def _v4(cls, v):
        return _addr(v, 4)

    @field_validator("ipv6", mode="before")
    @classmethod
    def _v6(cls, v):
        return _addr(v, 6)

    @model_validator(mode="after")
    def _something(self):
        if self.host is None and self.ipv4 is None and self.ipv6 is None:
            raise ValueError("a member needs the clone's host name or its address (host, ipv4, ipv6)")
        return self


class EgressSpec(_Strict):
    """What a clone may reach outside its application: nothing (deny) or ``to`` prefixes (allow).

    Allowed packets leave with the clone's own address as source, never a parent address.
    Parent components and the members of other clones of the same parent stay unreachable
    whatever ``to`` says.
    """

    policy: Literal["deny", "allow"] = "deny"
    to: list[str] | None = None

    @field_validator("to", mode="before")
    @classmethod
    def _prefixes(cls, v):
        if v is None:
            return v
        if not isinstance(v, list):
            raise ValueError("to is a list of prefixes like [\"10.0.9.0/24\", \"fd00:9::/64\"]")
        out = []
        for i, p in enumerate(v):
            if not isinstance(p, str):
                raise ValueError(f"to[{i}]: {p!r} is not a prefix string")
            try:
                out.append(str(ipaddress.ip_network(p, strict=True)))
            except ValueError as exc:
                raise ValueError(f"to[{i}]: {p!r} is not a prefix: {exc}") from None
        return out

    @model_validator(mode="after")
    def _consistent(self):
        if self.policy == "deny" and self.to:
            raise ValueError("egress.to lists prefixes, but policy is deny; use policy allow")
        return self

    def networks(self) -> list[IPNet]:
        if self.policy == "deny":
            return []
        if self.to is None:
            return [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        return [ipaddress.ip_network(p) for p in self.to]


class FenceSpec(_Strict):
    """One fence: the parent's components, the clone's members, the egress policy."""

    name: str = Field(pattern=FENCE_NAME_RE)
    parent: list[str] = Field(min_length=1, max_length=256)
    members: list[MemberSpec] = Field(default_factory=list, max_length=256)
    egress: EgressSpec = EgressSpec()


class FencedCloneIntent(_Strict):
    """The ``apps.fenced_clone`` section of a topology file (and what REST changes)."""

    #: neighbour solicitations per second one clone port may send to the controller
    nd_rate_per_clone: int = Field(default=50, ge=1, le=10000)
    fences: list[FenceSpec] = Field(default_factory=list)
