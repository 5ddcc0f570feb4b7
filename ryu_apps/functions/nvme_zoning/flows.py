"""NVMe-oF zoning: the desired flows (pure).

On every switch, NVMe/TCP to a listener and from it goes into the zone table
(ingress, band 6000-6999: before any other app and the fabric's admission; the
zone table does its own admission).  There::

    priority 9000  in_port=<a fabric port>                -> forward   (judged at its edge already)
    priority 5100  <admitted 5-tuple from the host>,+fin   -> controller (headers) and forward
    priority 5100  <admitted 5-tuple from the host>,+rst   -> controller (headers) and forward
    priority 5000  <admitted 5-tuple>, host side and target side, each at its edge port -> forward
    priority  100  anything else                           -> controller (whole frame), metered

so a connection the controller has not admitted reaches it, segment by
segment and in both directions, at the two edges, until its Connect has been
read; an admitted one never does again (its end excepted: the host's FIN or
RST is copied so the pair is removed).  Admitted connections are the app's
runtime state (:class:`Admitted`), saved before their flows are installed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import FORWARD, INGRESS, ZONE
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.topology import Topology
from ryu_apps.functions.fabric.flows import UNTAGGED
from ryu_apps.functions.nvme_zoning.model import Listener
from ryu_apps.openflow.ofdata import OFPP_CONTROLLER, Flow, Match, Meter, MeterBand, Output

APP = "nvme_zoning"
ETH_IP, ETH_IPV6, TCP = 0x0800, 0x86DD, 6
OFPCML_NO_BUFFER = 0xFFFF
#: the zoning app's own punt meter: a storm of connection attempts never starves other apps' punts
PUNT_METER_ID = (cookies.app_id(APP) << 24) | 1
#: bytes of a FIN/RST copy sent to the controller (headers are enough)
END_BYTES = 160

# cookie kinds
K_STEER = 1    # listener traffic into the zone table
K_FABRIC = 2   # arrivals on fabric ports: judged at their edge already
K_PUNT = 3     # what no admitted pair matches: to the controller
K_CONN = 4     # an admitted connection's pair (object: the connection)
K_END = 5      # an admitted connection's FIN/RST copies (object: the connection)
KIND_NAMES = {K_STEER: "steer", K_FABRIC: "fabric-port", K_PUNT: "punt", K_CONN: "connection", K_END: "end"}

P_STEER = 6100
P_FABRIC = 9000
P_END = 5100
P_CONN = 5000
P_PUNT = 100

FIN_FLAG, RST_FLAG = 0x001, 0x004


@dataclass(frozen=True)
class Admitted:
    """A connection the fabric admitted: who, to what, and both edges it is pinned at."""

    host_addr: str
    host_port: int
    addr: str
    port: int
    hostnqn: str
    subnqn: str
    qid: int
    host: str            # the declared host it came from
    switch: str          # the host's edge switch and port
    in_port: int
    mac: str
    target_switch: str   # the listener's edge switch and port
    target_port: int
    since: float         # wall clock
    template: str = ""   # hex of the host's last frame before admission (revocation builds segments from it)

    @property
    def key(self) -> tuple[str, int, str, int]:
        return (self.host_addr, self.host_port, self.addr, self.port)

    @property
    def ident(self) -> str:
        """The connection's name (its cookie object): ``host:port>listener:port``."""
        return conn_id(self.key)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def conn_id(key: tuple[str, int, str, int]) -> str:
    return f"[{key[0]}]:{key[1]}>[{key[2]}]:{key[3]}"


def _ip(version: int, src: str | None = None, dst: str | None = None) -> dict:
    eth = ETH_IP if version == 4 else ETH_IPV6
    out: dict = {"eth_type": eth, "ip_proto": TCP}
    pre = "ipv4" if version == 4 else "ipv6"
    if src is not None:
        out[f"{pre}_src"] = src
    if dst is not None:
        out[f"{pre}_dst"] = dst
    return out


def base_flows(topology: Topology, listeners: list[Listener], punt_rate: int) -> dict[str, SwitchState]:
    """Every switch: steering of ``listeners``' traffic, fabric ports, the punt and its meter."""
    out: dict[str, SwitchState] = {}
    if not listeners:
        return out
    fabric_ports: dict[str, list[int]] = {}
    for (sw, port), p in topology.ports.items():
        if p.kind != "host":
            fabric_ports.setdefault(sw, []).append(port)
    ck_steer, ck_fabric, ck_punt = (cookies.make(APP, k) for k in (K_STEER, K_FABRIC, K_PUNT))
    for sw in topology.switches:
        st = out.setdefault(sw, SwitchState())
        st.add_meter(Meter(meter_id=PUNT_METER_ID, unit="pktps",
                           bands=(MeterBand(rate=punt_rate, burst_size=max(1, punt_rate // 4)),)))
        for lst in listeners:
            v = lst.version
            st.add_flow(Flow(table=INGRESS, priority=P_STEER, cookie=ck_steer, goto=ZONE,
                             match=Match(vlan_vid=UNTAGGED, **_ip(v, dst=lst.addr), tcp_dst=lst.port)))
            st.add_flow(Flow(table=INGRESS, priority=P_STEER, cookie=ck_steer, goto=ZONE,
                             match=Match(vlan_vid=UNTAGGED, **_ip(v, src=lst.addr), tcp_src=lst.port)))
        for port in sorted(fabric_ports.get(sw, ())):
            st.add_flow(Flow(table=ZONE, priority=P_FABRIC, cookie=ck_fabric, goto=FORWARD,
                             match=Match(in_port=port)))
        st.add_flow(Flow(table=ZONE, priority=P_PUNT, cookie=ck_punt, meter=PUNT_METER_ID, match=Match(),
                         actions=(Output(OFPP_CONTROLLER, OFPCML_NO_BUFFER),)))
        st.label(ck_steer, "NVMe/TCP to and from listeners into the zone table")
        st.label(ck_fabric, "arrivals on fabric ports: judged at their edge")
        st.label(ck_punt, "connections not admitted: to the controller (it reads the Connect)")
    return out


def connection_flows(c: Admitted) -> dict[str, SwitchState]:
    """One admitted connection: its pair at both edges, and the copies of the host's FIN and RST."""
    out: dict[str, SwitchState] = {}
    v = ipaddress.ip_address(c.addr).version
    ck, ck_end = cookies.make(APP, K_CONN, c.ident), cookies.make(APP, K_END, c.ident)
    there = dict(_ip(v, src=c.host_addr, dst=c.addr), tcp_src=c.host_port, tcp_dst=c.port)
    back = dict(_ip(v, src=c.addr, dst=c.host_addr), tcp_src=c.port, tcp_dst=c.host_port)
    host_side = out.setdefault(c.switch, SwitchState())
    host_side.add_flow(Flow(table=ZONE, priority=P_CONN, cookie=ck, goto=FORWARD,
                            match=Match(in_port=c.in_port, eth_src=c.mac, **there)))
    for flag in (FIN_FLAG, RST_FLAG):
        host_side.add_flow(Flow(table=ZONE, priority=P_END, cookie=ck_end, goto=FORWARD, meter=PUNT_METER_ID,
                                match=Match(in_port=c.in_port, eth_src=c.mac, tcp_flags=(flag, flag), **there),
                                actions=(Output(OFPP_CONTROLLER, END_BYTES),)))
    out.setdefault(c.target_switch, SwitchState()).add_flow(
        Flow(table=ZONE, priority=P_CONN, cookie=ck, goto=FORWARD, match=Match(in_port=c.target_port, **back)))
    for st in out.values():
        st.label(ck, f"admitted {c.hostnqn} -> {c.subnqn} qid {c.qid}")
    host_side.label(ck_end, f"end of {c.ident}: the host's FIN and RST, copied")
    return out
