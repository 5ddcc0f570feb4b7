"""Demo scenario ``diamond``: two equal-cost paths (topologies/diamond.yaml).

Routed pings, the ECMP spread over s1's two uplinks (port counters), a link cut
rerouting onto the surviving path and back, and a controller restart that
finds every switch right and changes nothing (flow durations keep counting).
"""

from __future__ import annotations

import time

from ovs_scripts import flowdump
from ovs_scripts.demo.drive import (
    addr,
    flow_snapshot,
    ping,
    port_tx_packets,
    rest,
    start_server,
    tcp,
    tcp_detail,
    wait_for,
)
from ovs_scripts.demo.registry import Check, scenario
from ovs_scripts.lab import Lab


@scenario("diamond", "diamond.yaml")
def diamond(lab: Lab, check: Check) -> None:
    """two equal-cost paths: routing, ECMP spread, link-cut failover, hitless controller restart"""
    up, down_ = 11, 12  # s1's ports towards s2 and s3 (the two ECMP members)
    h2v4, h2v6 = addr(lab, "h2", 4), addr(lab, "h2", 6)
    sent4, recv4 = ping(lab, "h1", h2v4)
    check("h1 -> h2 routed ping IPv4 (via gateway)", sent4 > 0 and recv4 == sent4, f"{recv4}/{sent4}")
    sent6, recv6 = ping(lab, "h1", h2v6)
    check("h1 -> h2 routed ping IPv6 (via gateway)", sent6 > 0 and recv6 == sent6, f"{recv6}/{sent6}")

    start_server(lab, "h2")
    flows, nbytes = 40, 500
    before = {p: port_tx_packets(lab, "s1", p) for p in (up, down_)}
    res = tcp(lab, "h1", h2v4, flows=flows, nbytes=nbytes)
    after = {p: port_tx_packets(lab, "s1", p) for p in (up, down_)}
    check(f"h1 -> h2 {flows} TCP connections", res.get("ok") == flows, tcp_detail(res, flows, nbytes))
    used = {p: after[p] - before[p] for p in (up, down_)}
    total = sum(used.values()) or 1
    worth = {p: round(flows * used[p] / total) for p in used}
    check(f"ECMP: s1 ports {up} and {down_} both carry traffic", all(n > 20 for n in used.values()),
          f"tx +{used[up]} / +{used[down_]} pkts")
    check.note(f"ECMP split {worth[up]}/{worth[down_]} flows-worth of packets "
               f"(s1 port {up}: +{used[up]} pkts, port {down_}: +{used[down_]} pkts)")

    bridge, rundir = lab.switch_target("s1")

    def route_to_h2() -> list[int]:
        """The ports s1 sends h2's traffic to, as s1 holds it: its route, then the next-hop group."""
        d = flowdump.dump(bridge, rundir)
        fl = [f for f in d.flows if f.app == "fabric" and f.table == 90 and f.match.get("nw_dst") == h2v4]
        return d.output_ports(fl[0]) if len(fl) == 1 else []

    # cut s1-s2: the controller must take port 11 out of s1's next hops towards h2's switch
    t0 = time.monotonic()
    lab.link("s1", "s2", "down")
    rerouted = wait_for(lambda: route_to_h2() == [down_], timeout=10)
    t_route = time.monotonic() - t0
    first_ok = wait_for(lambda: tcp(lab, "h1", h2v4, flows=1, nbytes=nbytes, timeout=1).get("ok") == 1,
                        timeout=10, step=0)
    t_tcp = time.monotonic() - t0
    check("link s1-s2 cut: controller reroutes h2 via port 12 only", rerouted,
          f"route {route_to_h2()} after {t_route:.2f} s")
    b12 = port_tx_packets(lab, "s1", down_)
    n = 20
    res = tcp(lab, "h1", h2v4, flows=n, nbytes=nbytes)
    d12 = port_tx_packets(lab, "s1", down_) - b12
    check("link s1-s2 cut: TCP h1 -> h2 still works", first_ok and res.get("ok") == n,
          tcp_detail(res, n, nbytes) + f"; first echo {t_tcp:.2f} s after the cut")
    check(f"link s1-s2 cut: traffic leaves s1 on port {down_}", d12 > n * 3, f"tx +{d12} pkts for {n} connections")
    check.note(f"link-cut recovery: route moved in {t_route:.2f} s, first TCP echo {t_tcp:.2f} s after the cut")

    t0 = time.monotonic()
    lab.link("s1", "s2", "up")
    back = wait_for(lambda: route_to_h2() == [up, down_], timeout=10)
    t_back = time.monotonic() - t0
    res = tcp(lab, "h1", h2v4, flows=4, nbytes=nbytes)
    check("link s1-s2 restored: h2's next hops back on both ECMP members", back and res.get("ok") == 4,
          f"route {route_to_h2()} after {t_back:.2f} s; {tcp_detail(res, 4, nbytes)}")
    wait_for(lambda: all(s.get("synced") for s in rest(lab, "/v1/switches")), timeout=10)

    # restart the controller: it must find every switch already right and change nothing
    before_flows = flow_snapshot(lab)
    time.sleep(1.0)
    t0 = time.monotonic()
    lab.restart_controller()
    t_restart = time.monotonic() - t0
    switches = rest(lab, "/v1/switches")
    changed = {s["name"]: {k: v for k, v in s.get("last_changes", {}).items() if v} for s in switches}
    unsynced = [s["name"] for s in switches if not s.get("synced")]
    check("controller restart: every switch synced, nothing changed",
          not unsynced and not any(changed.values()) and len(switches) == len(lab.topology.switches),
          f"{len(switches) - len(unsynced)}/{len(switches)} synced, restart {t_restart:.1f} s"
          + (f"; changes {({k: v for k, v in changed.items() if v})}" if any(changed.values()) else
             "; last_changes all 0"))
    after_flows = flow_snapshot(lab)
    # A flow the restarted controller re-added would be younger than the time between the
    # two reads minus the 1 s before the restart; one left alone aged by all of it.
    problems, kept, min_gain, min_wall = [], 0, None, None
    for sw, (t_before, flows_before) in before_flows.items():
        t_after, fa = after_flows[sw]
        wall = t_after - t_before
        min_wall = wall if min_wall is None else min(min_wall, wall)
        if set(fa) != set(flows_before):
            problems.append(f"{sw}: {len(set(flows_before) - set(fa))} gone, {len(set(fa) - set(flows_before))} new")
            continue
        for key, f in fa.items():
            gain = (f.duration or 0) - (flows_before[key].duration or 0)
            min_gain = gain if min_gain is None else min(min_gain, gain)
            if gain < wall - 0.5:
                problems.append(f"{sw} table={key[0]} priority={key[1]} {key[2]} was re-added "
                                f"(aged {gain:.1f} s in {wall:.1f} s)")
            else:
                kept += 1
    check("controller restart: flows kept (durations kept counting)", not problems,
          f"{kept} flows aged +{min_gain or 0:.1f} s or more over {min_wall or 0:.1f} s"
          if not problems else "; ".join(problems[:3]))
    sent, recv = ping(lab, "h1", h2v4)
    check("controller restart: h1 -> h2 ping IPv4 afterwards", sent > 0 and recv == sent, f"{recv}/{sent}")
    check.note(f"controller restart took {t_restart:.1f} s; {kept} flows untouched on {len(before_flows)} switches")
