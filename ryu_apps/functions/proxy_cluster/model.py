"""Proxy clusters: checks against the topology, and the resolved view a proxy's agent fetches.

:func:`validate` checks what the intent models cannot: hosts exist, no host
has two roles in a cluster or is a proxy of two clusters, a VIP is nobody's
address and belongs to one cluster only, servers have an address of a VIP's
family.  :func:`resolve` turns one cluster into plain data with every host's
addresses and site, stable server ids (HAProxy peers replicate stick-table
entries by server id, so every proxy must number the servers alike), which is
what ``GET /v1/proxy-clusters/<name>/config`` serves and what
:mod:`~ryu_apps.functions.proxy_cluster.haproxy` renders.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

from ryu_apps.framework.topology import Topology
from ryu_apps.framework.view import IntentError
from ryu_apps.functions.proxy_cluster.intent import ClusterSpec, ProxyClusterIntent

#: the TCP port HAProxy peers talk on (on each proxy's own address, never the VIP)
PEERS_PORT = 10000
#: HAProxy's monitor-uri listener, on the proxy node's loopback: what the agent asks every interval
HEALTH_PORT = 10001
HEALTH_URI = "/healthz"
#: the site of a host whose switch is in the lab's root OVS (not on a node)
MAIN_SITE = "main"


def _err(field: str, msg: str) -> IntentError:
    return IntentError(f"{field}: {msg}", field)


#: hash slots of a cluster's select group (OVS maps each of its 128 dp_hash values to one bucket,
#: and the buckets never change: a slot's connections go elsewhere only when the slot is given
#: another proxy)
SLOTS = 128


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def slot_table(members: list[str], previous: list[str | None] | tuple = (), slots: int = SLOTS) -> list[str]:
    """Which member (proxy) owns each hash slot, starting from the ``previous`` table.

    Balanced: every member owns ``slots // n`` or one more.  Minimal: a slot keeps its owner while
    that owner is still a member and within its share, so a member that joins takes exactly its
    share (from the members that had more) and one that leaves gives away exactly its slots; the
    slots that change owner go, in slot order, to the member under its share that ranks highest
    for the slot (rendezvous hashing), so the result depends only on ``previous`` and the set of
    members: every controller instance computes the same table from the same previous one.
    """
    if not members:
        return []
    members = sorted(set(members))
    prev = list(previous) if len(previous) == slots else [None] * slots
    held = {m: sum(1 for o in prev if o == m) for m in members}
    base, extra = divmod(slots, len(members))
    # the members holding most keep the extra slots (fewest moves), ties by name
    ranked = sorted(members, key=lambda m: (-held[m], m))
    share = {m: base + (1 if i < extra else 0) for i, m in enumerate(ranked)}
    table: list[str | None] = [None] * slots
    count = dict.fromkeys(members, 0)
    for i, owner in enumerate(prev):
        if owner in count and count[owner] < share[owner]:
            table[i] = owner
            count[owner] += 1
    for i in range(slots):
        if table[i] is None:
            owner = max((m for m in members if count[m] < share[m]), key=lambda m: _h64(f"{i}/{m}"))
            table[i] = owner
            count[owner] += 1
    return table  # type: ignore[return-value]


def switch_site(topology: Topology, switch: str) -> str:
    """The site of a switch: the node it runs on (a datacenter of the lab), or the main one."""
    return topology.switches[switch].node or MAIN_SITE


def site_of(topology: Topology, host: str) -> str:
    """The site (node) a host's switch lives on."""
    return switch_site(topology, topology.hosts[host].switch)


def server_id(pool: str, server: str) -> int:
    """HAProxy's numeric id of a server: stable, from its names, the same on every proxy."""
    return zlib.crc32(f"{pool}/{server}".encode()) % 1_000_000 + 1


def validate(topology: Topology, intent: ProxyClusterIntent) -> None:
    """Raise IntentError naming the field unless every cluster fits the topology."""
    hosts = topology.hosts
    taken = {str(a): h.name for h in hosts.values() for a in h.addresses}
    vips: dict[str, str] = {}
    elsewhere: dict[str, tuple[str, str]] = {}  # host -> (cluster, role)
    for ci, c in enumerate(intent.clusters):
        base = f"clusters[{ci}]"
        for fam in ("vip4", "vip6"):
            vip = getattr(c, fam)
            if vip is None:
                continue
            if vip in taken:
                raise _err(f"{base}.{fam}", f"{vip} is host {taken[vip]}'s address")
            if vip in vips:
                raise _err(f"{base}.{fam}", f"{vip} is already the VIP of cluster {vips[vip]}")
            vips[vip] = c.name
        roles: dict[str, str] = {}

        def role(field: str, host: str, what: str) -> None:
            if host not in hosts:
                raise _err(field, f"unknown host {host!r}")
            if host in roles and roles[host] != what:
                raise _err(field, f"host {host} is already a {roles[host]} of this cluster")
            # each cluster isolates its roles from every other host, so a host serves one cluster
            # (a server shared by two VIPs would be an outsider to the other cluster's proxies)
            if host in elsewhere and elsewhere[host][0] != c.name:
                raise _err(field, f"host {host} is already a {elsewhere[host][1]} of cluster {elsewhere[host][0]}")
            roles[host] = what
            elsewhere[host] = (c.name, what)

        for pi, p in enumerate(c.proxies):
            f = f"{base}.proxies[{pi}].host"
            role(f, p.host, "proxy")
            h = hosts[p.host]
            if h.ipv4 is None:
                raise _err(f, f"proxy {p.host} needs an IPv4 address (HAProxy peers and health checks use it)")
            if c.vip6 is not None and h.ipv6 is None:
                raise _err(f, f"proxy {p.host} has no IPv6 address but the cluster has vip6")
        for pi, pool in enumerate(c.pools):
            for si, s in enumerate(pool.servers):
                f = f"{base}.pools[{pi}].servers[{si}].host"
                role(f, s.host, "server")
                if hosts[s.host].ipv4 is None:
                    raise _err(f, f"server {s.host} needs an IPv4 address (proxies connect to it)")
            ids: dict[int, str] = {}
            for si, s in enumerate(pool.servers):
                sid = server_id(pool.name, s.name)
                if sid in ids:
                    raise _err(f"{base}.pools[{pi}].servers[{si}].name",
                               f"server names {ids[sid]!r} and {s.name!r} hash to the same id; rename one")
                ids[sid] = s.name
        if c.capture is not None:
            role(f"{base}.capture.host", c.capture.host, "capture collector")


def resolve(topology: Topology, c: ClusterSpec) -> dict[str, Any]:
    """One cluster as plain data, every host with its addresses and site (see module doc)."""
    hosts = topology.hosts

    def addr(h: str) -> dict[str, Any]:
        x = hosts[h]
        return {"host": h, "ipv4": str(x.ipv4.ip) if x.ipv4 else None,
                "ipv6": str(x.ipv6.ip) if x.ipv6 else None, "site": site_of(topology, h)}

    return {
        "name": c.name, "vip4": c.vip4, "vip6": c.vip6, "ports": list(c.ports),
        "peers_port": PEERS_PORT, "health_port": HEALTH_PORT, "health_uri": HEALTH_URI,
        "proxies": [{**addr(p.host), "state": p.state} for p in c.proxies],
        "pools": [{"name": pool.name, "balance": pool.balance, "check_path": pool.check_path,
                   "servers": [{**addr(s.host), "name": s.name, "port": s.port, "weight": s.weight,
                                "state": s.state, "id": server_id(pool.name, s.name)}
                               for s in pool.servers]}
                  for pool in c.pools],
        "routes": [r.model_dump() for r in c.routes],
        "default_pool": c.fallback_pool,
        "affinity": c.affinity.model_dump(),
        "health": c.health.model_dump(),
        "drain_timeout_s": c.drain_timeout_s,
    }
