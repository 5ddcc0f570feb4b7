"""The cloud router's intent: the ``apps.cloud_router`` section of a topology file.

Also the body of ``PUT /v1/apps/cloud_router/intent`` and of the app's own REST
writes (``/v1/cloud_router/clients/{mac}``, ``/v1/cloud_router/policies/{name}``):
the tiers, named policies (rules a client may reach, meters), registered clients,
the registration service quarantined clients may reach.  These models check the
shape and syntax; what needs the topology (the tiers) is checked by
:func:`ryu_apps.functions.cloud_router.model.derive_roles`.

Pure: no os-ken, no switches.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ryu_apps.framework.topology import MAC_RE

APP = "cloud_router"
QUARANTINE = "quarantine"  # the built-in policy: only the registration service
KEY_SPACE = (1 << 24) - 1  # VNIs 1..2^24-1 (0 means "no client")
MAX_RULE_MATCHES = 256     # flows one policy may expand to (port ranges become masks)
NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _port_range(v: Any) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a port")
    if isinstance(v, int):
        lo = hi = v
    elif isinstance(v, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", v):
        a, _, b = v.partition("-")
        lo, hi = int(a), int(b or a)
    else:
        raise ValueError(f"{v!r} is not a port (80) or a port range (\"8000-8080\")")
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"port range {v!r} must lie within 1..65535 with low <= high")
    return lo, hi


class Rule(_M):
    """One allowed destination: an address or prefix, a protocol, ports."""

    dst: str = Field(description="IPv4 address or prefix (10.61.0.1, 10.61.0.0/24), or 'any'")
    proto: Literal["any", "tcp", "udp", "icmp"] = "any"
    ports: list[int | str] = Field(default_factory=list, max_length=32,
                                   description="destination ports (tcp/udp only): 443 or \"8000-8080\"")

    @field_validator("dst")
    @classmethod
    def _dst(cls, v: str) -> str:
        if v == "any":
            return v
        try:
            net = ipaddress.IPv4Network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IPv4 address or prefix: {exc}") from None
        return str(net) if net.prefixlen < 32 else str(net.network_address)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list) -> list:
        for p in v:
            _port_range(p)
        return v

    @model_validator(mode="after")
    def _ports_need_tcp_udp(self) -> "Rule":
        if self.ports and self.proto not in ("tcp", "udp"):
            raise ValueError(f"ports are only for proto tcp or udp, not {self.proto}")
        return self

    def port_ranges(self) -> list[tuple[int, int]]:
        return [_port_range(p) for p in self.ports]


class Policy(_M):
    """What a client may reach, and how fast it may send."""

    allow: list[Rule] = Field(default_factory=list, max_length=64)
    rate_kbps: int | None = Field(default=None, ge=64, le=10_000_000,
                                  description="meter on what the client sends (kbit/s)")
    down_rate_kbps: int | None = Field(default=None, ge=64, le=10_000_000,
                                       description="meter on what the client receives (kbit/s)")
    burst_kb: int | None = Field(default=None, ge=8, le=10_000_000, description="meter burst (kbit)")

    @model_validator(mode="after")
    def _size(self) -> "Policy":
        n = sum(len(expand_rule(r)) for r in self.allow)
        if n > MAX_RULE_MATCHES:
            raise ValueError(f"the allow rules expand to {n} flows (port ranges become masks); "
                             f"at most {MAX_RULE_MATCHES}")
        return self

    def burst(self, rate: int) -> int:
        return self.burst_kb or max(64, rate // 4)


class Client(_M):
    """A registered client, by MAC (the key of ``clients``)."""

    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="registered name")
    policy: str | None = Field(default=None, description="policy name; default: the intent's default_policy")
    quarantine: bool = Field(default=False, description="only the registration service, whatever the policy")
    ipv4: str | None = Field(default=None, description="address (default: the lab host with this MAC, "
                                                        "or the source of its first packet)")
    key: int | None = Field(default=None, ge=1, le=KEY_SPACE, description="tunnel key (VNI); default: assigned")

    @field_validator("ipv4")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None


class Tiers(_M):
    """Which switches form each tier (each a lab node with its own OVS)."""

    access_points: list[str] = Field(min_length=1)
    tunnel_devices: list[str] = Field(min_length=1)
    forwarders: list[str] = Field(min_length=1)
    nacs: list[str] = Field(min_length=1, max_length=6)
    uplink: str


def normalize_mac(v: str) -> str:
    m = v.lower().replace("-", ":")
    if not MAC_RE.match(m):
        raise ValueError(f"{v!r} is not a MAC address like 02:00:00:00:00:01")
    if int(m[:2], 16) & 1:
        raise ValueError(f"{v} is a multicast MAC; clients have unicast MACs")
    return m


class CloudRouterIntent(_M):
    """The ``apps.cloud_router`` section of a topology file."""

    tiers: Tiers | None = None
    client_subnets: list[str] = Field(default_factory=lambda: ["10.60.0.0/16"], min_length=1, max_length=16)
    client_gateway: str | None = Field(default=None, description="the clients' gateway; access points answer ARP")
    router_mac: str | None = Field(default=None, description="default: the fabric's router MAC")
    registration: list[Rule] = Field(default_factory=list, max_length=16,
                                     description="what quarantined (and unknown) clients may reach")
    default_policy: str = Field(default=QUARANTINE, description="policy of clients without one (unknown clients)")
    policies: dict[str, Policy] = Field(default_factory=dict)
    clients: dict[str, Client] = Field(default_factory=dict)
    max_learned_clients: int = Field(default=1024, ge=0, le=100_000)
    roam_holddown_s: float = Field(default=2.0, ge=0, le=60,
                                   description="for this long a client's old port cannot claim it back")
    #: explicit key -> the client pinning it (derived once at validation; intents are not changed after)
    _pinned: dict[int, str] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        self._pinned = {c.key: mac for mac, c in self.clients.items() if c.key is not None}

    @field_validator("client_subnets")
    @classmethod
    def _subnets(cls, v: list[str]) -> list[str]:
        out = []
        for s in v:
            try:
                out.append(str(ipaddress.IPv4Network(s, strict=True)))
            except ValueError as exc:
                raise ValueError(f"{s!r} is not an IPv4 prefix: {exc}") from None
        return out

    @field_validator("client_gateway")
    @classmethod
    def _gw(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None

    @field_validator("router_mac")
    @classmethod
    def _rmac(cls, v: str | None) -> str | None:
        return None if v is None else normalize_mac(v)

    @field_validator("policies")
    @classmethod
    def _pnames(cls, v: dict) -> dict:
        for name in v:
            if name == QUARANTINE:
                raise ValueError(f"{QUARANTINE!r} is built in (it allows only the registration rules); "
                                 "use another name")
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"policy name {name!r} must match {NAME_PATTERN}")
        return v

    @field_validator("clients", mode="before")
    @classmethod
    def _macs(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for mac, c in v.items():
            m = normalize_mac(str(mac))
            if m in out:
                raise ValueError(f"client {mac} is listed twice")
            out[m] = c
        return out

    @model_validator(mode="after")
    def _refs(self) -> "CloudRouterIntent":
        known = set(self.policies) | {QUARANTINE}
        if self.default_policy not in known:
            raise ValueError(f"default_policy: no policy {self.default_policy!r}; known: {sorted(known)}")
        nets = [ipaddress.IPv4Network(s) for s in self.client_subnets]
        if self.client_gateway and not any(ipaddress.IPv4Address(self.client_gateway) in n for n in nets):
            raise ValueError(f"client_gateway: {self.client_gateway} is not in client_subnets {self.client_subnets}")
        names: dict[str, str] = {}
        keys: dict[int, str] = {}
        ips: dict[str, str] = {}
        for mac, c in self.clients.items():
            where = f"clients.{mac}"
            if c.policy is not None and c.policy not in known:
                raise ValueError(f"{where}.policy: no policy {c.policy!r}; known: {sorted(known)}")
            if c.name is not None:
                if c.name in names:
                    raise ValueError(f"{where}.name: {c.name!r} is already the name of {names[c.name]}")
                names[c.name] = mac
            if c.key is not None:
                if c.key in keys:
                    raise ValueError(f"{where}.key: {c.key} is already the key of {keys[c.key]}")
                keys[c.key] = mac
            if c.ipv4 is not None:
                if not any(ipaddress.IPv4Address(c.ipv4) in n for n in nets):
                    raise ValueError(f"{where}.ipv4: {c.ipv4} is not in client_subnets {self.client_subnets}")
                if c.ipv4 in ips:
                    raise ValueError(f"{where}.ipv4: {c.ipv4} is already the address of {ips[c.ipv4]}")
                ips[c.ipv4] = mac
        return self

    def pinned_by(self, key: int) -> str | None:
        """The registered client whose ``key`` is ``key`` (an operator's pin), or None."""
        return self._pinned.get(key)

    def explicit_keys(self) -> dict[str, int]:
        """mac -> key of every client with a pinned key."""
        return {mac: key for key, mac in self._pinned.items()}

    def policy_names(self) -> list[str]:
        """Every policy, with the built-in quarantine."""
        return sorted(set(self.policies) | {QUARANTINE})

    def policy_of(self, client: Client | None) -> str:
        """The effective policy name of a client (None: an unknown client)."""
        if client is None:
            return self.default_policy
        if client.quarantine:
            return QUARANTINE
        return client.policy or self.default_policy

    def policy_obj(self, name: str) -> Policy:
        if name == QUARANTINE:
            return Policy(allow=list(self.registration))
        return self.policies[name]

    def in_client_subnets(self, ip: str) -> bool:
        a = ipaddress.IPv4Address(ip)
        return any(a in ipaddress.IPv4Network(n) for n in self.client_subnets)



# ---------------------------------------------------------------------------
# Rules as matches


def range_to_masks(lo: int, hi: int, bits: int = 16) -> list[tuple[int, int]]:
    """Cover ``lo..hi`` with (value, mask) pairs (the classic prefix split)."""
    out = []
    full = (1 << bits) - 1
    while lo <= hi:
        size = lo & -lo if lo else 1 << bits
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, full ^ (size - 1)))
        lo += size
    return out


def expand_rule(rule: Rule) -> list[dict[str, Any]]:
    """The upstream match fields of one rule (one dict per flow)."""
    base: dict[str, Any] = {"eth_type": 0x0800}
    if rule.dst != "any":
        base["ipv4_dst"] = rule.dst
    if rule.proto == "any":
        return [base]
    proto = {"tcp": 6, "udp": 17, "icmp": 1}[rule.proto]
    base["ip_proto"] = proto
    if not rule.ports:
        return [base]
    field_ = "tcp_dst" if rule.proto == "tcp" else "udp_dst"
    out = []
    for lo, hi in rule.port_ranges():
        for value, mask in range_to_masks(lo, hi):
            out.append({**base, field_: value if mask == 0xFFFF else (value, mask)})
    return out

