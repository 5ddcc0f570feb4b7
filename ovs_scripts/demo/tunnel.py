"""Demo scenario ``tunnel``: two nodes, each with its own OVS, joined by VXLAN (topologies/tunnel.yaml).

The underlay neighbour is resolved (``tnl/neigh/show``), pings and TCP cross the
tunnel, and the controller's tunnel route on s1 is what carried them.
"""

from __future__ import annotations

from ovs_scripts import flowdump
from ovs_scripts.demo.drive import (
    addr,
    ping,
    port_tx_packets,
    start_server,
    tcp,
    tcp_detail,
    tunnel_neighbours,
    wait_for,
)
from ovs_scripts.demo.registry import Check, scenario
from ovs_scripts.lab import Lab


@scenario("tunnel", "tunnel.yaml")
def tunnel(lab: Lab, check: Check) -> None:
    """two nodes, each with its own OVS, joined by VXLAN: TCP across, carried by the tunnel route"""
    h2v4, h2v6 = addr(lab, "h2", 4), addr(lab, "h2", 6)
    # The userspace datapath drops the first packet into a tunnel whose remote underlay
    # address it has not resolved yet (it sends an ARP from br-phy and learns the MAC into
    # its tunnel neighbour cache, ``tnl/neigh/show``).  Prime it and show that it happened.
    local = lab.topology.switches["s1"].node
    remote = str(lab.topology.nodes[lab.topology.switches["s2"].node].underlay_ip.ip)
    before = remote in tunnel_neighbours(lab, local)
    sent, recv = ping(lab, "h1", h2v4, count=1)
    learned = wait_for(lambda: remote in tunnel_neighbours(lab, local), timeout=3)
    check.note(f"underlay neighbour {remote} in {local}'s tnl/neigh cache: before {before}, after priming "
               f"ping {learned} (priming ping {recv}/{sent}; the first packet waits for underlay ARP)")
    check(f"{local} resolved the tunnel's underlay neighbour {remote}", learned, "ovs-appctl tnl/neigh/show")
    sent, recv = ping(lab, "h1", h2v4)
    check("h1 -> h2 ping IPv4 over VXLAN", sent > 0 and recv == sent, f"{recv}/{sent}")
    sent, recv = ping(lab, "h1", h2v6)
    check("h1 -> h2 ping IPv6 over VXLAN", sent > 0 and recv == sent, f"{recv}/{sent}")
    start_server(lab, "h2")

    bridge, rundir = lab.switch_target("s1")
    tunnel_port = 100

    def route_packets() -> tuple[int | None, str]:
        d = flowdump.dump(bridge, rundir)
        fl = [f for f in d.flows if f.app == "fabric" and f.table == 90 and f.match.get("nw_dst") == h2v4]
        if len(fl) != 1:
            return None, f"{len(fl)} flows in table 90 for nw_dst={h2v4}"
        # the route points at s1's next-hop group towards h2's switch: say where that sends
        ports = ",".join(f"output:{p}" for p in d.output_ports(fl[0]))
        return fl[0].n_packets or 0, f"{fl[0].actions_text} -> {ports}"

    route_before, actions = route_packets()
    tun_before = port_tx_packets(lab, "s1", tunnel_port)
    flows, nbytes = 5, 20000
    res = tcp(lab, "h1", h2v4, flows=flows, nbytes=nbytes)
    check("h1 -> h2 TCP echo IPv4 across the tunnel", res.get("ok") == flows, tcp_detail(res, flows, nbytes))
    res6 = tcp(lab, "h1", h2v6, flows=2, nbytes=nbytes)
    check("h1 -> h2 TCP echo IPv6 across the tunnel", res6.get("ok") == 2, tcp_detail(res6, 2, nbytes))

    # OpenFlow counters trail the datapath by up to a revalidator round (~1 s): poll
    got: dict = {}

    def carried() -> bool:
        got["n"], got["actions"] = route_packets()
        return route_before is not None and got["n"] is not None and got["n"] - route_before > 20

    ok = wait_for(carried, timeout=5, step=0.3)
    delta = (got["n"] - route_before) if route_before is not None and got.get("n") is not None else None
    tun_delta = port_tx_packets(lab, "s1", tunnel_port) - tun_before
    check(f"s1 tunnel route (table 90, nw_dst {h2v4}, output:{tunnel_port}) carried it",
          ok and f"output:{tunnel_port}" in got.get("actions", ""),
          f"+{delta} pkts, actions {got.get('actions') or actions}" if delta is not None
          else str(got.get("actions") or actions))
    check.note(f"tunnel route on s1: +{delta} pkts; VXLAN port {tunnel_port} tx +{tun_delta} pkts")
