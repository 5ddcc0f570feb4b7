"""The ``apps.fabric`` intent."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ryu_apps.framework.topology import MAC_RE


class FabricIntent(BaseModel):
    """The ``apps.fabric`` section of a topology file."""

    model_config = ConfigDict(extra="forbid")
    #: MAC the fabric answers for every gateway address (a virtual router MAC).
    router_mac: str = "0e:fa:b0:00:00:01"
    #: spread traffic over equal-cost paths with select groups
    ecmp: bool = True
    #: neighbour solicitations per second one host port may send to the controller;
    #: a storm from one host then cannot starve its neighbours' address resolution
    nd_rate_per_host: int = Field(default=50, ge=1, le=10000)

    @field_validator("router_mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        v = v.lower()
        if not MAC_RE.match(v) or int(v[:2], 16) & 1:
            raise ValueError(f"{v!r} is not a unicast MAC address")
        return v
