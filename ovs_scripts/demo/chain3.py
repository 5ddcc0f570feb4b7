"""Demo scenario ``chain3``: three switches in a row (topologies/chain3.yaml).

L2 reachability over IPv4 and IPv6 between every pair of hosts, TCP echo,
anti-spoofing at the ingress table, and every switch holding exactly the
controller's desired state (``ovslab flows --diff``).
"""

from __future__ import annotations

from ovs_scripts import flowdump
from ovs_scripts.demo.drive import addr, ping, ping_many, start_server, tcp, tcp_detail
from ovs_scripts.demo.registry import Check, scenario
from ovs_scripts.lab import Lab


@scenario("chain3", "chain3.yaml")
def chain3(lab: Lab, check: Check) -> None:
    """three switches in a row: L2 reachability v4/v6, TCP, anti-spoofing, flows == intent"""
    hosts = list(lab.topology.hosts)
    jobs = [(a, b, fam) for a in hosts for b in hosts if a != b for fam in (4, 6)]
    results = ping_many(lab, [(a, addr(lab, b, fam)) for a, b, fam in jobs])
    for (a, b, fam), (sent, recv) in zip(jobs, results):
        check(f"{a} -> {b} ping IPv{fam}", sent > 0 and recv == sent, f"{recv}/{sent}")

    start_server(lab, "h3")
    for fam in (4, 6):
        res = tcp(lab, "h1", addr(lab, "h3", fam), flows=3, nbytes=2000)
        check(f"h1 -> h3 TCP echo IPv{fam}", res.get("ok") == 3, tcp_detail(res, 3, 2000))

    # h1 claims an address that is not its own: the ingress table admits only h1's own MAC+IP on its port
    spoofed, real, target = "10.1.0.99", addr(lab, "h1", 4), addr(lab, "h3", 4)
    lab.exec("h1", ["ip", "addr", "add", f"{spoofed}/24", "dev", "eth0"])
    try:
        sent, recv = ping(lab, "h1", target, count=2, source=spoofed)
        check(f"h1 spoofed source {spoofed} -> h3 dropped", recv == 0, f"{recv}/{sent} answered")
        sent, recv = ping(lab, "h1", target, count=3)
        check(f"h1 real source {real} -> h3 still works", sent > 0 and recv == sent, f"{recv}/{sent}")
    finally:
        lab.exec("h1", ["ip", "addr", "del", f"{spoofed}/24", "dev", "eth0"], check=False)

    for sw in lab.topology.switches:
        desired = flowdump.fetch_desired(lab.rest_url, sw)
        bridge, rundir = lab.switch_target(sw)
        d = flowdump.diff(bridge, rundir, desired)
        n = len(desired.get("flows", []))
        check(f"{sw} flows == controller's desired state", d.identical,
              f"{n} flows; {len(d.missing)} missing, {len(d.unexpected)} unexpected, {len(d.different)} different")
