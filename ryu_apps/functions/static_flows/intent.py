"""Static flows: the intent, flows as a Ryu ``ofctl_rest`` user writes them (``/stats/flowentry/...``).

Each entry keeps the user's own form (Ryu's JSON: ``match`` with Ryu's field names, ``actions``
as ``{"type": "OUTPUT", "port": 2}`` dicts), so ``/stats/flow`` answers what was written.  What
differs from a switch taking the same flow-mod, and why:

* table 0 only, at priority ``7000 + priority`` (the app's band in ``ingress``; ``priority``
  0..999): the other tables and bands belong to the fabric functions;
* no timeouts: the flow is intent, kept and reconciled until it is deleted (a timeout would
  have the programmer put back what the switch removed);
* no groups or meters in actions (their ids belong to the apps), no write/clear actions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the match keys Ryu's ofctl_rest takes (os-ken's ``ofctl_v1_3.to_match``, which skips any other
#: key without a word: here an unknown key is an error, not a wider match)
RYU_MATCH_KEYS = frozenset({
    "in_port", "in_phy_port", "metadata", "dl_dst", "dl_src", "eth_dst", "eth_src", "dl_type", "eth_type",
    "dl_vlan", "vlan_vid", "vlan_pcp", "ip_dscp", "ip_ecn", "nw_proto", "ip_proto", "nw_src", "nw_dst", "ipv4_src",
    "ipv4_dst", "tp_src", "tp_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "sctp_src", "sctp_dst",
    "icmpv4_type", "icmpv4_code", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha", "ipv6_src", "ipv6_dst",
    "ipv6_flabel", "icmpv6_type", "icmpv6_code", "ipv6_nd_target", "ipv6_nd_sll", "ipv6_nd_tll", "mpls_label",
    "mpls_tc", "mpls_bos", "pbb_isid", "tunnel_id", "ipv6_exthdr"})

#: the app's band in ingress: a user's priority p is 7000 + p
BASE_PRIORITY = 7000
MAX_PRIORITY = 999


class StaticFlow(BaseModel):
    """One flow in Ryu's ofctl_rest form (the keys Ryu's ``/stats/flowentry/add`` takes)."""

    model_config = ConfigDict(extra="forbid")
    dpid: int = Field(ge=1, lt=1 << 48)
    table_id: int = Field(default=0, ge=0, le=0, description="table 0 only (the others are the functions')")
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY,
                          description=f"0..{MAX_PRIORITY}: installed at {BASE_PRIORITY} + priority")
    cookie: int = Field(default=0, ge=0, lt=1 << 64, description="the user's, kept; the switch gets the app's")
    cookie_mask: int = Field(default=0, ge=0, lt=1 << 64)
    idle_timeout: int = Field(default=0, ge=0, le=0, description="static flows do not expire")
    hard_timeout: int = Field(default=0, ge=0, le=0, description="static flows do not expire")
    flags: int = Field(default=0, ge=0, le=0)
    match: dict[str, Any] = Field(default_factory=dict)
    actions: list[dict[str, Any]] = Field(default_factory=list, max_length=64)

    @field_validator("match")
    @classmethod
    def _match(cls, v):
        if len(v) > 32:
            raise ValueError("at most 32 match fields")
        unknown = sorted(set(v) - RYU_MATCH_KEYS)
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a match field of Ryu's ofctl_rest")
        return v

    def key(self) -> tuple:
        """What identifies the flow in its switch: (dpid, priority, match)."""
        return (self.dpid, self.priority, tuple(sorted((k, str(v)) for k, v in self.match.items())))


class StaticFlowsIntent(BaseModel):
    """``apps.static_flows`` of a topology file, and what ``/stats/flowentry`` writes."""

    model_config = ConfigDict(extra="forbid")
    flows: list[StaticFlow] = Field(default_factory=list, max_length=10000)
