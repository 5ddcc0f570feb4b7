"""Proxy clusters: the intent, what a user declares (``apps.proxy_cluster`` and ``/v1/proxy-clusters``).

A *cluster* is one virtual IP (v4, v6 or both) and its service ports, served by
a set of *proxy* hosts (each runs HAProxy beside this project's agent), in
front of *pools* of API servers; *routes* send a path prefix to a pool::

    {"name": "api",
     "vip4": "10.9.0.100", "vip6": "fd00:9::100", "ports": [80],
     "proxies": [{"host": "p1"}, {"host": "p2"}, {"host": "p3", "state": "drain"}],
     "pools": [{"name": "v1", "servers": [{"name": "a", "host": "s1", "port": 8080},
                                          {"name": "b", "host": "s2", "port": 8080}]}],
     "routes": [{"prefix": "/v1/", "pool": "v1"}],
     "affinity": {"mode": "header", "name": "X-API-Key"},
     "health": {"interval_ms": 250, "fall": 3, "rise": 2, "hold_down_s": 5}}

These models check shape and syntax only; what needs the topology (hosts
exist, no host has two roles, the VIP is nobody's address) is checked by
:func:`ryu_apps.functions.proxy_cluster.model.validate`.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,30}$"
#: HTTP header names (RFC 9110 token) and cookie names (RFC 6265 token)
TOKEN_RE = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"
#: a path prefix HAProxy can match with path_beg: no spaces, quotes or control characters
PREFIX_RE = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,200}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _vip(v: object, version: int) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not an IPv{version} address")
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv{version} address") from None
    if a.version != version:
        raise ValueError(f"{v!r} is an IPv{a.version} address, not IPv{version}")
    if a.is_multicast or a.is_unspecified or a.is_loopback or (version == 6 and a.is_link_local):
        raise ValueError(f"{v!r} cannot be a virtual IP (multicast, unspecified, loopback or link-local)")
    return str(a)


def _unique(items, key: str, what: str) -> None:
    seen: set = set()
    for i, it in enumerate(items):
        k = getattr(it, key)
        if k in seen:
            raise ValueError(f"{what}[{i}].{key}: {k!r} appears twice")
        seen.add(k)


class ServerSpec(_Strict):
    """One API server: a declared host and the port it serves on."""

    name: str = Field(pattern=NAME_RE)
    host: str = Field(min_length=1, max_length=64)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=100, ge=1, le=256)
    #: ``drain``: no new sessions, existing ones finish; ``maint``: out of service
    state: Literal["ready", "drain", "maint"] = "ready"


class PoolSpec(_Strict):
    """A pool of servers and how HAProxy picks one of them."""

    name: str = Field(pattern=NAME_RE)
    servers: list[ServerSpec] = Field(min_length=1, max_length=256)
    balance: Literal["roundrobin", "leastconn", "random"] = "roundrobin"
    #: HTTP health check of each server (GET this path, 2xx/3xx is healthy)
    check_path: str = Field(default="/", pattern=PREFIX_RE)

    @model_validator(mode="after")
    def _names(self):
        _unique(self.servers, "name", "servers")
        return self


class RouteSpec(_Strict):
    """Requests whose path starts with ``prefix`` go to ``pool``."""

    prefix: str = Field(pattern=PREFIX_RE)
    pool: str = Field(pattern=NAME_RE)


class AffinitySpec(_Strict):
    """Session affinity: which request value keeps a session on its server.

    ``cookie``: the server's ``Set-Cookie: <name>=...`` is learned and later
    requests carrying it go to that server; ``header``: the value of header
    ``<name>`` (an API key) sticks to the first server chosen for it;
    ``source``: the client address.  Entries are replicated to every proxy of
    the cluster (HAProxy peers), so a session survives a change of proxy.
    """

    mode: Literal["none", "cookie", "header", "source"] = "none"
    name: str | None = Field(default=None, pattern=TOKEN_RE)
    timeout_s: int = Field(default=1800, ge=1, le=86400)

    @model_validator(mode="after")
    def _named(self):
        if self.mode in ("cookie", "header") and not self.name:
            raise ValueError(f"affinity mode {self.mode} needs the {self.mode} name (name)")
        if self.mode in ("none", "source") and self.name:
            raise ValueError(f"affinity mode {self.mode} takes no name")
        return self


class HealthSpec(_Strict):
    """How proxies are judged alive (by the fabric) and servers (by HAProxy)."""

    interval_ms: int = Field(default=250, ge=50, le=60000)
    fall: int = Field(default=3, ge=1, le=20)      # misses in a row: out of the hash
    rise: int = Field(default=2, ge=1, le=20)      # answers in a row after the hold-down: back in
    hold_down_s: float = Field(default=5.0, ge=0, le=600)


class ProxySpec(_Strict):
    """One proxy node: a declared host that holds the VIP and runs HAProxy.

    ``drain``: out of the hash for new connections, established ones stay
    pinned to it until they end or ``drain_timeout_s`` passes.
    """

    host: str = Field(min_length=1, max_length=64)
    state: Literal["active", "drain"] = "active"


class CaptureSpec(_Strict):
    """Copy every VIP packet, both directions, to a collector host."""

    host: str = Field(min_length=1, max_length=64)


class ClusterSpec(_Strict):
    """One proxy cluster: a VIP, its proxies, its pools and routes."""

    name: str = Field(pattern=NAME_RE)
    vip4: str | None = None
    vip6: str | None = None
    ports: list[int] = Field(default_factory=lambda: [80], min_length=1, max_length=8)
    proxies: list[ProxySpec] = Field(min_length=1, max_length=64)
    pools: list[PoolSpec] = Field(min_length=1, max_length=64)
    routes: list[RouteSpec] = Field(default_factory=list, max_length=1024)
    #: the pool of requests no route matches (default: the first pool)
    default_pool: str | None = Field(default=None, pattern=NAME_RE)
    affinity: AffinitySpec = AffinitySpec()
    health: HealthSpec = HealthSpec()
    drain_timeout_s: int = Field(default=30, ge=0, le=3600)
    capture: CaptureSpec | None = None

    @field_validator("vip4", mode="before")
    @classmethod
    def _v4(cls, v):
        return _vip(v, 4)

    @field_validator("vip6", mode="before")
    @classmethod
    def _v6(cls, v):
        return _vip(v, 6)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v):
        for i, p in enumerate(v):
            if not 1 <= p <= 65535:
                raise ValueError(f"ports[{i}]: {p} is not a TCP port (1-65535)")
        if len(set(v)) != len(v):
            raise ValueError("ports: a port appears twice")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.vip4 is None and self.vip6 is None:
            raise ValueError("a cluster needs a virtual IP (vip4, vip6 or both)")
        _unique(self.proxies, "host", "proxies")
        _unique(self.pools, "name", "pools")
        _unique(self.routes, "prefix", "routes")
        pools = {p.name for p in self.pools}
        for i, r in enumerate(self.routes):
            if r.pool not in pools:
                raise ValueError(f"routes[{i}].pool: no pool named {r.pool!r} (pools: {sorted(pools)})")
        if self.default_pool is not None and self.default_pool not in pools:
            raise ValueError(f"default_pool: no pool named {self.default_pool!r} (pools: {sorted(pools)})")
        if all(p.state == "drain" for p in self.proxies):
            raise ValueError("proxies: every proxy is draining; at least one must be active")
        return self

    @property
    def fallback_pool(self) -> str:
        """The pool requests no route matches go to."""
        return self.default_pool or self.pools[0].name


class ProxyClusterIntent(_Strict):
    """The ``apps.proxy_cluster`` section of a topology file (and what REST changes)."""

    clusters: list[ClusterSpec] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _names(self):
        _unique(self.clusters, "name", "clusters")
        return self
