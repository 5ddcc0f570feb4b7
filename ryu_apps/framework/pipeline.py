r"""The table plan: which tables exist, who may write them, at which priorities.

Written down as data (as Faucet's ``faucet_pipeline.py`` does) and checked on
every flow an app computes, so two apps can share a bridge without stepping on
each other: each app owns a priority band in each table it writes, and a flow
can only jump forward to the tables listed as its table's successors.

Packet walk::

    0 ingress --+--> 10 fence  (fenced_clone) ----+
                +--> 20 mcast  (multicast_standby) |
                +--> 30 oam    (oam_ecmp)          +--> 80 arp_nd --> 90 forward
                +--> 40 nac    (cloud_router)      |
                +--> 50 lb     (proxy_cluster)     |
                +--> 60 zone   (nvme_zoning)       |
                +----------------------------------+

``ingress`` belongs to the fabric (host admission, 100-999); each function app
owns a band above it there (to steer its traffic into its own table before the
fabric's admission sees it) and a band in its own table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ryu_apps.framework import cookies

#: Meter every flow that sends to the controller goes through (the core defines it on every switch).
PUNT_METER = 1
#: max_len of every output-to-controller action
PACKET_IN_BYTES = 256


class PipelineError(ValueError):
    """A flow breaks the table plan (unknown table, foreign band, backward goto)."""


@dataclass(frozen=True)
class Band:
    """Priorities ``low..high`` (inclusive) of one table belong to ``app``."""

    app: str
    low: int
    high: int
    purpose: str


@dataclass(frozen=True)
class Table:
    table_id: int
    name: str
    purpose: str
    bands: tuple[Band, ...]
    next_tables: tuple[int, ...] = ()
    #: apps that may install probe twins here: a copy of another app's flow one priority above it,
    #: matching only that app's probes (so it wins exactly where the flow it mirrors would win);
    #: oam_ecmp twins every flow that outputs, in every table a probe can reach with data
    twins: tuple[str, ...] = ()


INGRESS, FENCE, MCAST, OAM, NAC, LB, ZONE, ARP_ND, FORWARD = 0, 10, 20, 30, 40, 50, 60, 80, 90

_APP_TABLE_BAND = (100, 9999)


def _own(app: str, purpose: str) -> tuple[Band, ...]:
    return (Band("core", 0, 0, "table miss: drop"), Band(app, *_APP_TABLE_BAND, purpose))


PIPELINE: tuple[Table, ...] = (
    Table(INGRESS, "ingress", "admit declared hosts on their own port (anti-spoofing), fabric ports; steer to apps",
          bands=(Band("core", 0, 0, "table miss: drop"),
                 Band("fabric", 100, 999, "host admission and fabric ports"),
                 Band("fenced_clone", 1000, 1999, "clone ports into the fence table"),
                 Band("multicast_standby", 2000, 2999, "IGMP, multicast data and standby requests"),
                 Band("oam_ecmp", 3000, 3999, "replicate probes"),
                 Band("cloud_router", 4000, 4999, "client traffic into the NAC table"),
                 Band("proxy_cluster", 5000, 5999, "VIP traffic (and proxies' replies from the VIP) into the lb table"),
                 Band("nvme_zoning", 6000, 6999, "NVMe/TCP to and from subsystem listeners into the zone table"),
                 Band("static_flows", 7000, 7999, "flows written through Ryu's ofctl_rest: 7000 + their priority")),
          next_tables=(FENCE, MCAST, OAM, NAC, LB, ZONE, ARP_ND, FORWARD), twins=("oam_ecmp",)),
    Table(FENCE, "fence", "translate clone <-> parent addresses; drop whatever would leave the fence",
          bands=_own("fenced_clone", "fence translation, ARP/ND for parent addresses, fence drops"),
          next_tables=(ARP_ND, FORWARD), twins=("oam_ecmp",)),
    Table(MCAST, "mcast", "multicast trees: active and standby paths, accept/discard at the destination",
          bands=_own("multicast_standby", "multicast forwarding"),
          next_tables=(ARP_ND, FORWARD), twins=("oam_ecmp",)),
    Table(OAM, "oam", "replicate probes over every ECMP next hop and report each copy",
          bands=_own("oam_ecmp", "probe replication and reports"),
          next_tables=(ARP_ND, FORWARD), twins=("oam_ecmp",)),
    Table(NAC, "nac", "per-client policy: allowed destinations, rate limits, quarantine",
          bands=_own("cloud_router", "client policy and tunnel steering"),
          next_tables=(ARP_ND, FORWARD), twins=("oam_ecmp",)),
    Table(LB, "lb", "VIP connections: pick a proxy by hash, pin it by ct_mark, carry it to that proxy",
          bands=_own("proxy_cluster", "conntrack, proxy choice and pinning, delivery towards a proxy"),
          next_tables=(FORWARD,), twins=("oam_ecmp",)),
    Table(ZONE, "zone", "NVMe/TCP: admitted connections forward; the rest go to the controller, which reads the Connect",
          bands=_own("nvme_zoning", "admitted connections (5-tuple pairs), punts of connections not yet admitted"),
          next_tables=(FORWARD,), twins=("oam_ecmp",)),
    Table(ARP_ND, "arp_nd", "answer ARP in the switch; send IPv6 neighbor solicitations to the controller",
          bands=(Band("core", 0, 0, "table miss: drop"),
                 Band("fabric", 100, 999, "ARP responders, ND punts")),
          next_tables=(FORWARD,)),
    Table(FORWARD, "forward", "route to declared hosts along shortest paths, ECMP over select groups",
          bands=(Band("core", 0, 0, "table miss: drop"),
                 Band("fabric", 100, 999, "host routes"),
                 Band("fenced_clone", 1000, 1999, "delivery to clone addresses: fence traffic and allowed replies only")),
          next_tables=(), twins=("oam_ecmp",)),
)

def _app_block(app: str) -> tuple[int, int]:
    """Ids ``app id << 24`` to ``| 0xFFFFFF``: the default block of an app's group and meter ids."""
    base = cookies.app_id(app) << 24
    return (base, base | 0xFFFFFF)


#: Group ids each app may use (OpenFlow group ids are per switch, shared by every app).
GROUP_IDS: dict[str, tuple[tuple[int, int], ...]] = {
    app: (_app_block(app),) for app in ("fabric", "fenced_clone", "multicast_standby", "cloud_router", "oam_ecmp",
                                        "proxy_cluster", "nvme_zoning")}
#: Meter ids each app may use.
METER_IDS: dict[str, tuple[tuple[int, int], ...]] = {
    "core": ((1, 0xFF),),                       # PUNT_METER: every punt
    "fabric": ((0x100, 0x6DFF),),               # 0x100 + host port: ND policing per host
    "oam_ecmp": ((0x6E00, 0x6EFF),),            # the probe report meter
    "cloud_router": ((0x01000000, 0x02FFFFFF),),  # per-client up/down rate limits, by client key
    "fenced_clone": (_app_block("fenced_clone"),),
    "multicast_standby": (_app_block("multicast_standby"),),
    "proxy_cluster": (_app_block("proxy_cluster"),),
    "nvme_zoning": (_app_block("nvme_zoning"),),
}


def check_ids(app: str, state) -> None:
    """Raise PipelineError unless every group and meter of ``state`` is in ``app``'s id ranges."""
    for kind, ids, ranges in (("group", state.groups, GROUP_IDS.get(app, ())),
                              ("meter", state.meters, METER_IDS.get(app, ()))):
        for ident in ids:
            if not any(lo <= ident <= hi for lo, hi in ranges):
                raise PipelineError(f"{app}: {kind} id {ident:#x} is outside {app}'s {kind} ids "
                                    f"{[f'{lo:#x}-{hi:#x}' for lo, hi in ranges]}")


def _check_id_ranges() -> None:
    for what, table in (("group", GROUP_IDS), ("meter", METER_IDS)):
        spans = sorted((lo, hi, app) for app, ranges in table.items() for lo, hi in ranges)
        for (lo1, hi1, a1), (lo2, hi2, a2) in zip(spans, spans[1:]):
            if lo2 <= hi1:
                raise PipelineError(f"{what} ids of {a1} and {a2} overlap")


TABLES: dict[int, Table] = {t.table_id: t for t in PIPELINE}
TABLE_BY_NAME: dict[str, Table] = {t.name: t for t in PIPELINE}


def table_id(name: str) -> int:
    return TABLE_BY_NAME[name].table_id


def validate_plan(pipeline: tuple[Table, ...] = PIPELINE) -> None:
    """Check the plan itself: unique ids, forward-only gotos, no overlapping bands."""
    ids = [t.table_id for t in pipeline]
    if len(set(ids)) != len(ids):
        raise PipelineError(f"duplicate table ids in {ids}")
    known = set(ids)
    for t in pipeline:
        for nxt in t.next_tables:
            if nxt not in known:
                raise PipelineError(f"table {t.name}: next table {nxt} does not exist")
            if nxt <= t.table_id:
                raise PipelineError(f"table {t.name}: goto {nxt} is not forward")
        bands = sorted(t.bands, key=lambda b: b.low)
        for b in bands:
            cookies.app_id(b.app)
            if not 0 <= b.low <= b.high <= 0xFFFF:
                raise PipelineError(f"table {t.name}: band {b} out of range")
        for a, b in zip(bands, bands[1:]):
            if b.low <= a.high:
                raise PipelineError(f"table {t.name}: bands of {a.app} and {b.app} overlap")


def check_flow(app: str, flow) -> None:
    """Raise PipelineError unless ``app`` may install ``flow`` as computed."""
    table = TABLES.get(flow.table)
    if table is None:
        raise PipelineError(f"{app}: flow in unknown table {flow.table}")
    own = any(b.app == app and b.low <= flow.priority <= b.high for b in table.bands)
    twin = app in table.twins and any(b.app != "core" and b.low < flow.priority <= b.high + 1 for b in table.bands)
    if not (own or twin):
        raise PipelineError(f"{app}: priority {flow.priority} in table {table.name} is outside {app}'s band")
    if flow.goto is not None and flow.goto not in table.next_tables:
        raise PipelineError(f"{app}: goto {flow.goto} from table {table.name} is not allowed "
                            f"(allowed: {list(table.next_tables)})")
    if flow.cookie >> cookies.APP_SHIFT != cookies.app_id(app):
        raise PipelineError(f"{app}: flow cookie {flow.cookie:#x} does not carry {app}'s app id")


def add_ids(app: str, groups: tuple = (), meters: tuple = ()) -> None:
    """Give a lab or test app group/meter id ranges (checked for overlaps like the plan)."""
    old = GROUP_IDS.get(app), METER_IDS.get(app)
    GROUP_IDS[app], METER_IDS[app] = tuple(groups), tuple(meters)
    try:
        _check_id_ranges()
    except PipelineError:
        for d, o in ((GROUP_IDS, old[0]), (METER_IDS, old[1])):
            d.pop(app) if o is None else d.__setitem__(app, o)
        raise


def add_band(table: int, band: Band) -> None:
    """Give a lab or test app (not a fabric function) a band in ``table``; the plan is re-checked.

    The production plan above names only the product's apps; ``ovs_scripts/bench_app.py``
    adds its synthetic-route band this way when it is loaded.
    """
    global PIPELINE, TABLES, TABLE_BY_NAME
    cookies.app_id(band.app)
    plan = tuple(Table(t.table_id, t.name, t.purpose, bands=t.bands + (band,), next_tables=t.next_tables,
                       twins=t.twins) if t.table_id == table else t for t in PIPELINE)
    validate_plan(plan)
    PIPELINE = plan
    TABLES.clear(); TABLES.update({t.table_id: t for t in plan})
    TABLE_BY_NAME.clear(); TABLE_BY_NAME.update({t.name: t for t in plan})


def describe() -> list[dict]:
    """The plan as JSON-able data (served at /v1/pipeline)."""
    return [{"table": t.table_id, "name": t.name, "purpose": t.purpose, "next_tables": list(t.next_tables),
             "bands": [{"app": b.app, "priorities": [b.low, b.high], "purpose": b.purpose} for b in t.bands]}
            for t in PIPELINE]


def describe_ids() -> dict:
    """Group and meter id ranges per app (served at /v1/pipeline/ids)."""
    return {kind: {app: [[lo, hi] for lo, hi in ranges] for app, ranges in table.items()}
            for kind, table in (("groups", GROUP_IDS), ("meters", METER_IDS))}


validate_plan()
_check_id_ranges()
