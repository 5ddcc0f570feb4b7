"""Synthetic flows for ``bench/flow_programming.py`` (not a fabric function).

``apps: {bench: {flows: 100000}}`` makes every switch hold that many distinct
IPv4 host routes in the ``forward`` table, each object (cookie) covering 1000
of them, so the benchmark measures the framework's own path: compute, diff,
encode, bundle, commit.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

from ovs_scripts import lab_apps  # noqa: F401 - the bench app's cookie id and band
from ryu_apps.framework.app import FabricApp, FabricView
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import FORWARD
from ryu_apps.framework.state import SwitchState
from ryu_apps.openflow.ofdata import Flow, Match, Output

BASE = int(ipaddress.IPv4Address("10.128.0.0"))
PRIORITY = 2000


class BenchIntent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flows: int = Field(default=1000, ge=0, le=1_000_000)
    out_port: int = Field(default=1, ge=1, le=0xFEFF)


def bench_flows(n: int, cookie_of, out_port: int = 1) -> list[Flow]:
    """``n`` distinct /32 routes (the same flows the ovs-ofctl baseline loads)."""
    return [Flow(table=FORWARD, priority=PRIORITY, cookie=cookie_of(i // 1000),
                 match=Match(eth_type=0x0800, ipv4_dst=str(ipaddress.IPv4Address(BASE + i))),
                 actions=(Output(out_port),))
            for i in range(n)]


class Bench(FabricApp):
    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = "bench"
    IntentModel = BenchIntent

    def compute(self, view: FabricView, intent: BenchIntent, part=None) -> dict[str, SwitchState]:
        flows = bench_flows(intent.flows, lambda blk: self.cookie(1, blk), intent.out_port)
        out = {}
        for name in view.topology.switches:
            st = SwitchState()
            for f in flows:
                st.add_flow(f)
            out[name] = st
        return out
