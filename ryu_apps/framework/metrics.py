"""``GET /metrics``: what the controller knows, in Prometheus' text format (``prometheus_client``).

Everything but the histograms is read when Prometheus scrapes (a custom collector over the
core's own counters), so serving metrics costs the packet path nothing; the histograms are
observed where the work is timed anyway (a recompute, a switch sync).

Names (every one prefixed ``fabric_``):

========================================  ===========================================================
``switch_connected{switch}``              1 while the switch has a control channel to this instance
``switch_synced{switch}``                 1 while it holds exactly its desired state
``switch_entries{switch,kind}``           flows / groups / meters the switch should hold
``app_flows{switch,app}``                 of those flows, each app's
``switch_syncs_total{switch}``            syncs (and ``switch_full_syncs_total``: full reads)
``switch_audits_total{switch}``           audits; ``switch_audit_repairs_total``: drift repaired
``switch_last_bundle_entries{switch}``    entries the last sync sent
``packet_ins_total{outcome}``             handled, rate_limited, bad, no_owner, relayed, ...
``packet_ins_rate_limited_total{switch}`` packet-ins dropped by the per-switch budget
``app_events_total{app,event}``           each app's own counters (admitted, refused, roams, ...)
``recompute_seconds``                     histogram: one app's recompute (compute and checks)
``sync_seconds``                          histogram: one switch sync (diff sent, barrier answered)
``generation``                            applied recomputes since start
========================================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The controller's registry: a collector over ``core`` and two histograms it observes."""

    def __init__(self, core):
        self.core = core
        self.registry = CollectorRegistry(auto_describe=True)
        self.recompute = Histogram("fabric_recompute_seconds", "One app's recompute: compute and checks",
                                   ["app"], buckets=_BUCKETS, registry=self.registry)
        self.sync = Histogram("fabric_sync_seconds", "One switch sync: the difference sent and confirmed",
                              ["switch"], buckets=_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(core))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, core):
        self.core = core

    def describe(self):
        return []

    def collect(self):
        core = self.core
        g_conn = GaugeMetricFamily("fabric_switch_connected", "The switch has a control channel", labels=["switch"])
        g_sync = GaugeMetricFamily("fabric_switch_synced", "The switch holds its desired state", labels=["switch"])
        g_ent = GaugeMetricFamily("fabric_switch_entries", "Entries the switch should hold", labels=["switch", "kind"])
        g_app = GaugeMetricFamily("fabric_app_flows", "Flows of each app the switch should hold",
                                  labels=["switch", "app"])
        g_bundle = GaugeMetricFamily("fabric_switch_last_bundle_entries", "Entries the last sync sent",
                                     labels=["switch"])
        c_syncs = CounterMetricFamily("fabric_switch_syncs", "Syncs of the switch", labels=["switch"])
        c_full = CounterMetricFamily("fabric_switch_full_syncs", "Syncs that read the switch whole", labels=["switch"])
        c_audit = CounterMetricFamily("fabric_switch_audits", "Audits of the switch", labels=["switch"])
        c_rep = CounterMetricFamily("fabric_switch_audit_repairs", "Drift an audit repaired", labels=["switch"])
        c_limited = CounterMetricFamily("fabric_packet_ins_rate_limited", "Packet-ins over the switch's budget",
                                        labels=["switch"])
        for name, prog in sorted(core.programmers.items()):
            st = prog.status()
            g_conn.add_metric([name], 1 if core.is_connected(name) else 0)
            g_sync.add_metric([name], 1 if st["synced"] and not core.settling else 0)
            for kind in ("flows", "groups", "meters"):
                g_ent.add_metric([name, kind], st.get(kind, 0))
            for app, n in sorted(_flows_by_app(prog.desired).items()):
                g_app.add_metric([name, app], n)
            g_bundle.add_metric([name], sum((st.get("last_changes") or {}).values()))
            c_syncs.add_metric([name], st["syncs"])
            c_full.add_metric([name], st["full_syncs"])
            c_audit.add_metric([name], st["audits"])
            c_rep.add_metric([name], st["audit_repairs"])
            bucket = core.buckets.get(name)
            c_limited.add_metric([name], bucket.dropped if bucket is not None else 0)
        yield from (g_conn, g_sync, g_ent, g_app, g_bundle, c_syncs, c_full, c_audit, c_rep, c_limited)
        c_pin = CounterMetricFamily("fabric_packet_ins", "Packet-ins by what became of them", labels=["outcome"])
        for outcome, n in sorted(core.packet_in_counts().items()):
            if isinstance(n, int):
                c_pin.add_metric([outcome], n)
        yield c_pin
        c_ev = CounterMetricFamily("fabric_app_events", "Each app's own counters", labels=["app", "event"])
        for app_name, app in sorted(core.apps.items()):
            counters = getattr(app, "counters", None)
            if isinstance(counters, Mapping):
                for event, n in sorted(counters.items()):
                    if isinstance(n, int) and not isinstance(n, bool):
                        c_ev.add_metric([app_name, str(event)], n)
        yield c_ev
        gen = GaugeMetricFamily("fabric_generation", "Applied recomputes since the controller started")
        gen.add_metric([], core.generation)
        yield gen


def _flows_by_app(desired) -> dict[str, int]:
    """Flows of each app in a switch's desired state (its layers are keyed by (app, part))."""
    out: dict[str, int] = {}
    for (app, _part), st in getattr(desired, "layers", {}).items():
        if st is not None:
            out[app] = out.get(app, 0) + len(st.flows)
    return out
