"""The ``apps.oam_ecmp`` intent and the body of a verification request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OamIntent(BaseModel):
    """The ``apps.oam_ecmp`` section of a topology file."""

    model_config = ConfigDict(extra="forbid")
    #: SID block (a /32); each switch's locator is block:<node id>::/48
    locator_block: str = "fcbb:bb00::/32"
    #: node id per switch (1..65535); default: the low 16 bits of the dpid
    locators: dict[str, int] = {}
    #: switches probes go between; default: every switch with a host
    leaves: list[str] | None = None
    #: hop limit probes are launched with; default: longest shortest path + 4 switches
    hop_budget: int | None = Field(default=None, ge=2, le=64)
    #: probes launched per second (a verification of many pairs is paced)
    probe_rate: int = Field(default=300, ge=1, le=5000)
    #: probe packets per second one switch handles (OAM meter; bounds a replication storm)
    switch_rate: int = Field(default=2000, ge=10, le=100000)
    #: seconds to wait for reports at most
    collect_timeout: float = Field(default=3.0, gt=0, le=60)
    #: a verification ends when no report came for this long (or when every copy is accounted for)
    settle: float = Field(default=0.5, gt=0, le=10)
    #: reports kept per probe; a probe in a looping fabric is cut here
    max_reports_per_probe: int = Field(default=4096, ge=16, le=1_000_000)
    #: pairs whose copies were not all accounted for are probed again (at half the rate) this many
    #: times and the reports merged: a real fault repeats, a report lost to a busy switch does not
    confirm_retries: int = Field(default=1, ge=0, le=5)

    @field_validator("locator_block")
    @classmethod
    def _block(cls, v: str) -> str:
        import ipaddress

        try:
            net = ipaddress.IPv6Network(v)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an IPv6 prefix: {exc}") from None
        if net.prefixlen != 32:
            raise ValueError(f"{v} must be a /32 (the SID layout puts the node id in bits 32..47)")
        if net.is_multicast or net.is_loopback or net.is_link_local:
            raise ValueError(f"{v} must be a unicast block")
        return str(net)

    @field_validator("locators")
    @classmethod
    def _nodes(cls, v: dict[str, int]) -> dict[str, int]:
        for sw, node in v.items():
            if not isinstance(node, int) or not 1 <= node <= 0xFFFF:
                raise ValueError(f"{sw}: node id {node!r} is not in 1..65535")
        return v


class VerifyRequest(BaseModel):
    """Body of ``POST /v1/oam/ecmp/verify`` (every field optional)."""

    model_config = ConfigDict(extra="forbid")
    #: ordered [src, dst] leaf pairs; default: every ordered pair of leaves
    pairs: list[tuple[str, str]] | None = None
    #: also probe dst -> src for every pair given (for the symmetry check)
    both_directions: bool = True
    hop_budget: int | None = Field(default=None, ge=2, le=64)
    collect_timeout: float | None = Field(default=None, gt=0, le=60)
    settle: float | None = Field(default=None, gt=0, le=10)
    #: address families to probe (each probe carries the real addresses of one host on each leaf)
    families: list[Literal[4, 6]] = Field(default=[4, 6], min_length=1)


# --- desired state (pure) ----------------------------------------------------------------
