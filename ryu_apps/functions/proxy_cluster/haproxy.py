"""Render one proxy's ``haproxy.cfg`` from a resolved cluster (:func:`model.resolve`); pure.

What every proxy of a cluster gets, and why:

* ``master-worker`` with a master CLI socket, so the agent reloads without
  dropping a connection (the old worker finishes its sessions, bounded by
  ``hard-stop-after`` = the cluster's drain timeout) and an admin socket for
  runtime changes (server state and weight) that need no reload at all;
* a ``peers`` section listing every proxy of the cluster on its own address,
  so stick-table entries (session affinity) are replicated and a session keeps
  its server whichever proxy takes it next (``localpeer`` names this proxy);
* one frontend bound to the VIP's ports (the proxy holds the VIP itself),
  routes as ``use_backend ... if { path_beg ... }``;
* a ``health`` frontend on the node's loopback whose ``monitor-uri`` the
  agent asks every interval (HAProxy answers it itself, no server involved);
* a backend per pool with HTTP checks (with header or source affinity, a
  key's first server is its consistent hash, the same on every proxy), ``option redispatch`` (a session whose
  server died is re-assigned, and the new entry replicated) and servers with
  explicit ids (:func:`model.server_id`): peers replicate entries by id.
"""

from __future__ import annotations

from typing import Any

STATE_ARGS = {"ready": "", "drain": " weight 0", "maint": " disabled"}


def backend_name(pool: str) -> str:
    return f"pool_{pool}"


def render(cluster: dict[str, Any], proxy: str, run_dir: str) -> str:
    """haproxy.cfg for proxy host ``proxy`` of ``cluster``; sockets and pidfile in ``run_dir``."""
    me = next((p for p in cluster["proxies"] if p["host"] == proxy), None)
    if me is None:
        raise ValueError(f"{proxy} is not a proxy of cluster {cluster['name']}")
    name = cluster["name"]
    aff = cluster["affinity"]
    health = cluster["health"]
    lines = [
        "# rendered by ryu_apps.functions.proxy_cluster.haproxy; the agent rewrites it, do not edit",
        "global",
        "    master-worker",
        f"    localpeer {proxy}",
        f"    pidfile {run_dir}/haproxy.pid",
        f"    stats socket {run_dir}/admin.sock mode 600 level admin expose-fd listeners",
        f"    hard-stop-after {max(1, cluster['drain_timeout_s'])}s",
        "    log stderr format short local0 notice",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option redispatch",
        # on a reload the old worker keeps an idle keep-alive connection until its next request and
        # answers it with Connection: close (closing it idle races with a request the client is sending)
        "    option idle-close-on-response",
        "    retries 2",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-keep-alive 10s",
        "    timeout check 2s",
        "",
        f"peers {name}",
    ]
    lines += [f"    peer {p['host']} {p['ipv4']}:{cluster['peers_port']}" for p in cluster["proxies"]]
    # the agent's check: answered by the worker itself (a hung or dead worker fails it)
    lines += ["", "frontend health", f"    bind 127.0.0.1:{cluster['health_port']}",
              f"    monitor-uri {cluster['health_uri']}"]
    lines += ["", "frontend vip"]
    for port in cluster["ports"]:
        if cluster["vip4"]:
            lines.append(f"    bind {cluster['vip4']}:{port}")
        if cluster["vip6"]:
            lines.append(f"    bind [{cluster['vip6']}]:{port} v6only")
    lines.append(f"    http-after-response set-header X-Proxy {proxy}")  # its own errors (503) too
    # longest prefix first, so /v1/users/ wins over /v1/ whatever order the routes were declared in
    for r in sorted(cluster["routes"], key=lambda r: -len(r["prefix"])):
        lines.append(f"    use_backend {backend_name(r['pool'])} if {{ path_beg {r['prefix']} }}")
    lines.append(f"    default_backend {backend_name(cluster['default_pool'])}")
    # header and source affinity: a key's first server is its consistent hash over the servers (the
    # same ids on every proxy), so every proxy picks alike even before an entry has replicated (a
    # new proxy still learning its peers' table, a worker just reloaded); the table remembers the
    # exceptions (a key moved off a server that was down)
    balance = {"header": f"hdr({aff['name']})", "source": "source"}.get(aff["mode"])
    for pool in cluster["pools"]:
        lines += ["", f"backend {backend_name(pool['name'])}", f"    balance {balance or pool['balance']}"]
        if balance:
            lines.append("    hash-type consistent")
        lines.append(f"    option httpchk GET {pool['check_path']}")
        if aff["mode"] != "none":
            kind = "ip" if aff["mode"] == "source" else "string len 128"
            lines.append(f"    stick-table type {kind} size 1m expire {aff['timeout_s']}s peers {name}")
            if aff["mode"] == "cookie":
                lines += [f"    stick store-response res.cook({aff['name']})",
                          f"    stick match req.cook({aff['name']})"]
            elif aff["mode"] == "header":
                lines.append(f"    stick on req.hdr({aff['name']})")
            else:
                lines.append("    stick on src")
        lines.append(f"    default-server check inter {health['interval_ms']}ms fall {health['fall']} "
                     f"rise {health['rise']}")
        for s in pool["servers"]:
            lines.append(f"    server {s['name']} {s['ipv4']}:{s['port']} id {s['id']} weight {s['weight']}"
                         f"{STATE_ARGS[s['state']]}")
    return "\n".join(lines) + "\n"


def runtime_commands(old: dict[str, Any], new: dict[str, Any]) -> list[str] | None:
    """Admin-socket commands that take a running proxy from ``old`` to ``new``; ``None`` if a reload is needed.

    Server state and weight change at runtime (no reload, the same on every
    proxy at once); anything else (servers added or removed, routes, ports,
    proxies, affinity) needs a hitless reload.
    """
    strip = _without_runtime(old), _without_runtime(new)
    if strip[0] != strip[1]:
        return None
    cmds = []
    for po, pn in zip(old["pools"], new["pools"]):
        for so, sn in zip(po["servers"], pn["servers"]):
            target = f"{backend_name(pn['name'])}/{sn['name']}"
            if (so["state"], so["weight"]) == (sn["state"], sn["weight"]):
                continue
            if sn["state"] == "maint":
                cmds.append(f"set server {target} state maint")
                continue
            if so["state"] == "maint":
                cmds.append(f"set server {target} state ready")
            cmds.append(f"set server {target} weight {0 if sn['state'] == 'drain' else sn['weight']}")
    return cmds


def _without_runtime(c: dict[str, Any]) -> dict[str, Any]:
    """What needs a reload to change: everything but server state and weight, and a proxy's
    state (draining is the fabric's business; the config of the other proxies does not change)."""
    pools = [{**p, "servers": [{k: v for k, v in s.items() if k not in ("state", "weight")} for s in p["servers"]]}
             for p in c["pools"]]
    proxies = [{k: v for k, v in p.items() if k != "state"} for p in c["proxies"]]
    return {**c, "pools": pools, "proxies": proxies}
