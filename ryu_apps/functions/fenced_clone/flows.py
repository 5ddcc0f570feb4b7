"""Fenced clones: the flows of one fence, as pure data.

How a packet from a clone component walks the pipeline (all on the clone's own switch)::

    table 0 ingress, fenced_clone band (above the fabric's host admission):
      1900  NS from the clone's port+MAC, untagged, source = its own address, its own
            EUI-64 link-local address or :: (DAD)   -> meter, metadata:=fence, goto fence
      1800  ARP from the clone's port+MAC+IP, untagged  -> metadata:=fence, goto fence
      1800  IPv4/IPv6 from the clone's port+MAC+IP, untagged
                                   -> src := the PARENT component's address, metadata:=fence, goto fence
      1000  anything else from the clone's port         -> drop   (spoofed IP/MAC, VLAN tags, ...)

    table 10 fence (match metadata=fence):
      1250  NS from :: (DAD)                             -> drop  (never answered, never forwarded)
      1200  ICMPv6 RS/RA/NA/redirect from a clone        -> drop
      1100  NS for a parent address of a member          -> controller (answers with the clone's MAC)
      1090  (egress allowed) NS for a protected address  -> drop
      1080  NS for the clone's own gateway               -> goto arp_nd (the fabric answers)
      1070  (egress allowed) NS inside an allowed prefix -> goto arp_nd (solicited-node NS included)
      1060  any other NS                                 -> drop  (no NS is ever translated or forwarded)
      1050  IP to the sender's own parent address        -> dst := its clone address, back out of its port
      1000  IP to a parent address of a member           -> dst := that member's clone address,
                                                            eth_src := the fence's MAC, goto forward
      1000  ARP for a parent address of a member         -> answered in the switch with the clone's MAC
       900  ARP for the clone's own gateway              -> goto arp_nd (the fabric answers)
       850  (egress allowed) multicast / broadcast       -> drop
       800  (egress allowed) protected destinations      -> drop  (other parent addresses, other clones)
    600+plen (egress allowed) ARP inside an allowed prefix -> goto arp_nd
    500+plen (egress allowed) IP from the member's port to an allowed prefix
                                                         -> src := the clone's own address, goto forward
       100  everything else                              -> drop   (counted: the fence's drops)

    table 90 forward, fenced_clone band (above the fabric's routes), on the clone's switch:
      1900  to a clone's own address with the fence's MAC      -> deliver (fence traffic)
      1800  (egress allowed) ... from a protected source       -> drop
    1200+plen (egress allowed) ... from an allowed prefix      -> deliver (replies of allowed egress)
      1100  anything else to a clone's own address             -> drop   ("block in and out")

So a clone's packets only ever leave the fence table translated to a member of
the same fence, or (when the fence allows egress) with the clone's own
address towards an allowed, unprotected destination.  The fabric's forward
table (90) then routes by the (translated) destination.  Replies come back the
same way: the clone peer's reply to the parent address of the sender is
translated on the peer's own switch, so every member sees its peers as parent
addresses.  Parent ports are never steered: parent traffic is untouched.

Every flow carries the fence's cookie (app ``fenced_clone``, a kind below,
object = the fence's id), and the fence id is also the metadata value, so one
fence's flows are exactly ``cookie=0x03XX<fid>/0xff00ffffffffffff``.

A fence's flows sit on the switches of its members only and depend on the
intent and the declared topology alone, never on which ports or switches are
up (the fabric routes the translated packets around failures): one fence is
one part of the app's state (:func:`compute_part`), and no port or switch
event ever recomputes a fence.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from ryu_apps.framework import cookies
from ryu_apps.framework.pipeline import (
    ARP_ND,
    FENCE,
    FORWARD,
    INGRESS,
    PACKET_IN_BYTES,
    PUNT_METER,
)
from ryu_apps.framework.state import SwitchState
from ryu_apps.functions.fenced_clone.intent import FencedCloneIntent
from ryu_apps.functions.fenced_clone.model import (
    Directory,
    Fence,
    Member,
    link_local,
    resolve_part,
)
from ryu_apps.openflow.ofdata import (
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    Flow,
    Match,
    Meter,
    MeterBand,
    Output,
    RegMove,
    SetField,
)

APP = "fenced_clone"
ETH_IP, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
NO_VLAN = 0x0000          # OXM vlan_vid value of an untagged frame
ICMPV6 = 58
ND_NS = 135
ND_OTHER = (133, 134, 136, 137)   # RS, RA, NA, redirect: a clone never needs to send them
META_MASK = (1 << 64) - 1

# cookie kinds
K_ADMIT = 1        # table 0: a clone port's admitted traffic, steered into the fence
K_PORT_DROP = 2    # table 0: everything else from a clone port
K_XLATE = 3        # fence: parent destination -> clone destination
K_ARP = 4          # fence: ARP for a parent address answered with the clone's MAC
K_ND = 5           # fence: NS for a parent address, answered by the controller
K_GATEWAY = 6      # fence: ARP/ND for the clone's own gateway -> arp_nd
K_GUARD = 7        # fence: drops of protected destinations, multicast, broadcast, ND spoofing
K_EGRESS = 8       # fence: allowed egress with the clone's own source address
K_FENCE_DROP = 9   # fence: everything else
K_METER = 10       # a clone port's ND meter (metadata only)
K_INBOUND = 11     # forward: delivery to a clone's own address (fence traffic, allowed replies)
K_INBOUND_DROP = 12  # forward: anything else to a clone's own address (block in)

KIND_NAMES = {K_ADMIT: "admit", K_PORT_DROP: "port_drop", K_XLATE: "translate", K_ARP: "arp", K_ND: "nd",
              K_GATEWAY: "gateway", K_GUARD: "guard", K_EGRESS: "egress", K_FENCE_DROP: "fence_drop",
              K_INBOUND: "inbound", K_INBOUND_DROP: "inbound_drop"}

# priorities: table 0 band 1000-1999, fence table band 100-9999
P_IN_ND = 1900
P_IN_ADMIT = 1800
P_IN_DROP = 1000
# fence table: every neighbour solicitation is decided in the ND band (1055-1250), above translation,
# so no NS is ever forwarded into the fence or out of it: it is answered (switch or controller) or dropped
P_ND_DAD = 1250     # NS from :: (duplicate address detection): never answered, never forwarded
P_ND_OTHER = 1200
P_ND = 1100         # NS for a parent address of a member -> controller
P_ND_GUARD = 1090   # (egress allowed) NS for a protected address
P_ND_GATEWAY = 1080  # NS for the clone's own gateway -> arp_nd
P_ND_EGRESS = 1070  # (egress allowed) NS for an address inside an allowed prefix -> arp_nd
P_ND_DROP = 1060    # any other NS (another clone's own address, link-local targets, ...)
P_HAIRPIN = 1050
P_XLATE = 1000
P_ARP = 1000
P_GATEWAY = 900
P_MCAST = 850
P_GUARD = 800
P_EGRESS_ND = 600   # + prefix length
P_EGRESS = 500      # + prefix length
P_FENCE_DROP = 100
# forward table (band 1000-1999), on the clone's own switch: who may reach a clone's own address
P_INB_FENCE = 1900  # carries the fence's MAC: translated fence traffic
P_INB_GUARD = 1800  # (egress allowed) from a parent address or another clone of the parent: drop
P_INB_ALLOW = 1200  # + prefix length: (egress allowed) from an allowed prefix (replies of allowed egress)
P_INB_DROP = 1100   # anything else: block in

#: meter id of clone port p: the app id in the top byte, so it never meets the fabric's 0x100 + p
ND_METER_BASE = cookies.app_id(APP) << 24

MCAST4 = ipaddress.ip_network("224.0.0.0/4")
BCAST4 = ipaddress.ip_address("255.255.255.255")
MCAST6 = ipaddress.ip_network("ff00::/8")


def nd_meter_id(port: int) -> int:
    return ND_METER_BASE + port


def fence_cookie(fid: int, kind: int) -> int:
    return cookies.make(APP, kind, fid)


def fence_cookie_mask() -> int:
    """Cookie mask selecting every kind of one fence (app id and object, any kind)."""
    return cookies.APP_MASK | cookies.OBJECT_MASK


def _label(st: SwitchState, fence: Fence, kind: int, text: str) -> int:
    c = fence_cookie(fence.fid, kind)
    st.label(c, f"fence {fence.name}: {text}")
    return c


def arp_answer(table: int, priority: int, match: Match, ip: str, mac: str, cookie: int) -> Flow:
    """Answer an ARP request for ``ip`` with ``mac`` in the switch, back out of the in-port."""
    return Flow(table=table, priority=priority, cookie=cookie, match=match,
                actions=(RegMove("eth_src", "eth_dst", 48), SetField("eth_src", mac), SetField("arp_op", 2),
                         RegMove("arp_sha", "arp_tha", 48), SetField("arp_sha", mac),
                         RegMove("arp_spa", "arp_tpa", 32), SetField("arp_spa", ip), Output(OFPP_IN_PORT)))


def _inner_src(m: Member, fam: int) -> tuple[str, str | None]:
    """(source address inside the fence table, clone address to restore on egress or None)."""
    h = m.clone
    pair = m.v4 if fam == 4 else m.v6
    own = str((h.ipv4 if fam == 4 else h.ipv6).ip)
    if pair is None:
        return own, None
    return pair[0], own


def _admission(st: SwitchState, fence: Fence, m: Member, nd_rate: int) -> None:
    h = m.clone
    meta = (fence.fid, META_MASK)
    c = _label(st, fence, K_ADMIT, "clone ports steered into the fence")
    base = dict(in_port=h.port, eth_src=h.mac, vlan_vid=NO_VLAN)
    if h.ipv4:
        own = str(h.ipv4.ip)
        st.add_flow(Flow(table=INGRESS, priority=P_IN_ADMIT, cookie=c, goto=FENCE, write_metadata=meta,
                         match=Match(**base, eth_type=ETH_ARP, arp_spa=own, arp_sha=h.mac)))
        inner, _ = _inner_src(m, 4)
        acts = (SetField("ipv4_src", inner),) if inner != own else ()
        st.add_flow(Flow(table=INGRESS, priority=P_IN_ADMIT, cookie=c, goto=FENCE, write_metadata=meta,
                         match=Match(**base, eth_type=ETH_IP, ipv4_src=own), actions=acts))
    if h.ipv6:
        own = str(h.ipv6.ip)
        mid = nd_meter_id(h.port)
        st.add_meter(Meter(meter_id=mid, unit="pktps", cookie=fence_cookie(fence.fid, K_METER),
                           bands=(MeterBand(rate=nd_rate, burst_size=max(1, nd_rate // 2)),)))
        # an NS only from the clone's own address, its own EUI-64 link-local address, or :: (DAD,
        # dropped in the fence table); anything else (a foreign source) falls to the port drop
        for src in (own, str(link_local(h.mac)), "::"):
            st.add_flow(Flow(table=INGRESS, priority=P_IN_ND, cookie=c, goto=FENCE, write_metadata=meta,
                             meter=mid, match=Match(**base, eth_type=ETH_IPV6, ipv6_src=src, ip_proto=ICMPV6,
                                                    icmpv6_type=ND_NS)))
        inner, _ = _inner_src(m, 6)
        acts = (SetField("ipv6_src", inner),) if inner != own else ()
        st.add_flow(Flow(table=INGRESS, priority=P_IN_ADMIT, cookie=c, goto=FENCE, write_metadata=meta,
                         match=Match(**base, eth_type=ETH_IPV6, ipv6_src=own), actions=acts))
    cd = _label(st, fence, K_PORT_DROP, "clone port drops (spoofed source, VLAN tags, other protocols)")
    st.add_flow(Flow(table=INGRESS, priority=P_IN_DROP, cookie=cd, match=Match(in_port=h.port)))


def _fence_table(st: SwitchState, fence: Fence, local: list[Member]) -> None:
    """The fence table of one fence on a switch holding ``local`` members."""
    fid = fence.fid
    md = dict(metadata=fid)
    cx = _label(st, fence, K_XLATE, "parent destinations translated to clone destinations")
    ca = _label(st, fence, K_ARP, "ARP for parent addresses answered with clone MACs")
    cn = _label(st, fence, K_ND, "ND for parent addresses (answered by the controller)")
    cg = _label(st, fence, K_GUARD, "protected destinations, multicast, broadcast, ND spoofing dropped")
    cd = _label(st, fence, K_FENCE_DROP, "everything else dropped")
    has6 = any(m.clone.ipv6 for m in local)
    has4 = any(m.clone.ipv4 for m in local)
    for m in fence.members:
        if m.v4:
            parent_ip, clone_ip = m.v4
            st.add_flow(Flow(table=FENCE, priority=P_XLATE, cookie=cx, goto=FORWARD,
                             match=Match(**md, eth_type=ETH_IP, ipv4_dst=parent_ip),
                             actions=(SetField("ipv4_dst", clone_ip), SetField("eth_src", fence.mac))))
            if has4:
                st.add_flow(arp_answer(FENCE, P_ARP, Match(**md, eth_type=ETH_ARP, arp_op=1, arp_tpa=parent_ip),
                                       parent_ip, m.clone.mac, ca))
        if m.v6:
            parent_ip, clone_ip = m.v6
            st.add_flow(Flow(table=FENCE, priority=P_XLATE, cookie=cx, goto=FORWARD,
                             match=Match(**md, eth_type=ETH_IPV6, ipv6_dst=parent_ip),
                             actions=(SetField("ipv6_dst", clone_ip), SetField("eth_src", fence.mac))))
            if has6:
                st.add_flow(Flow(table=FENCE, priority=P_ND, cookie=cn, meter=PUNT_METER,
                                 match=Match(**md, eth_type=ETH_IPV6, ip_proto=ICMPV6, icmpv6_type=ND_NS,
                                             ipv6_nd_target=parent_ip),
                                 actions=(Output(OFPP_CONTROLLER, PACKET_IN_BYTES),)))
    # a clone talking to its own parent address (the parent's kernel would loop it back): back out
    # of its own port, translated both ways, as if it came from the parent address
    for m in local:
        port, mac = m.clone.port, m.clone.mac
        if m.v4:
            st.add_flow(Flow(table=FENCE, priority=P_HAIRPIN, cookie=cx,
                             match=Match(**md, in_port=port, eth_type=ETH_IP, ipv4_dst=m.v4[0]),
                             actions=(SetField("ipv4_dst", m.v4[1]), SetField("eth_dst", mac),
                                      Output(OFPP_IN_PORT))))
        if m.v6:
            st.add_flow(Flow(table=FENCE, priority=P_HAIRPIN, cookie=cx,
                             match=Match(**md, in_port=port, eth_type=ETH_IPV6, ipv6_dst=m.v6[0]),
                             actions=(SetField("ipv6_dst", m.v6[1]), SetField("eth_dst", mac),
                                      Output(OFPP_IN_PORT))))
    if has6:
        for t in ND_OTHER:
            st.add_flow(Flow(table=FENCE, priority=P_ND_OTHER, cookie=cg,
                             match=Match(**md, eth_type=ETH_IPV6, ip_proto=ICMPV6, icmpv6_type=t)))
        st.add_flow(Flow(table=FENCE, priority=P_ND_DAD, cookie=cg,
                         match=Match(**md, eth_type=ETH_IPV6, ipv6_src="::", ip_proto=ICMPV6, icmpv6_type=ND_NS)))
        st.add_flow(Flow(table=FENCE, priority=P_ND_DROP, cookie=cg,
                         match=Match(**md, eth_type=ETH_IPV6, ip_proto=ICMPV6, icmpv6_type=ND_NS)))
    # the clones' own gateways (the fabric's router answers; routed packets still pass the fence)
    cgw = None
    for m in local:
        for gw, fam in ((m.clone.gateway4, 4), (m.clone.gateway6, 6)):
            if gw is None:
                continue
            cgw = cgw or _label(st, fence, K_GATEWAY, "ARP/ND for the clones' gateways to arp_nd")
            if fam == 4:
                match = Match(**md, eth_type=ETH_ARP, arp_op=1, arp_tpa=str(gw))
            else:
                match = Match(**md, eth_type=ETH_IPV6, ip_proto=ICMPV6, icmpv6_type=ND_NS, ipv6_nd_target=str(gw))
            st.add_flow(Flow(table=FENCE, priority=P_GATEWAY if fam == 4 else P_ND_GATEWAY, cookie=cgw,
                             goto=ARP_ND, match=match))
    if fence.egress:
        _egress(st, fence, local, md, cg)
    st.add_flow(Flow(table=FENCE, priority=P_FENCE_DROP, cookie=cd, match=Match(**md)))


def _egress(st: SwitchState, fence: Fence, local: list[Member], md: dict, cg: int) -> None:
    ce = _label(st, fence, K_EGRESS, "allowed egress with the clone's own source address")
    nets4 = [n for n in fence.egress if n.version == 4]
    nets6 = [n for n in fence.egress if n.version == 6]
    if nets4:
        drops4 = {MCAST4, ipaddress.ip_network(BCAST4)}
        for m in local:
            if m.clone.ipv4 and m.clone.ipv4.network.prefixlen < 31:
                drops4.add(ipaddress.ip_network(m.clone.ipv4.network.broadcast_address))
        for n in drops4:
            st.add_flow(Flow(table=FENCE, priority=P_MCAST, cookie=cg, match=Match(**md, eth_type=ETH_IP,
                                                                                   ipv4_dst=str(n))))
    if nets6:
        st.add_flow(Flow(table=FENCE, priority=P_MCAST, cookie=cg,
                         match=Match(**md, eth_type=ETH_IPV6, ipv6_dst=str(MCAST6))))
    for a in fence.guards:
        if a.version == 4:
            st.add_flow(Flow(table=FENCE, priority=P_GUARD, cookie=cg, match=Match(**md, eth_type=ETH_IP,
                                                                                   ipv4_dst=str(a))))
            st.add_flow(Flow(table=FENCE, priority=P_GUARD, cookie=cg,
                             match=Match(**md, eth_type=ETH_ARP, arp_op=1, arp_tpa=str(a))))
        else:
            st.add_flow(Flow(table=FENCE, priority=P_GUARD, cookie=cg, match=Match(**md, eth_type=ETH_IPV6,
                                                                                   ipv6_dst=str(a))))
            st.add_flow(Flow(table=FENCE, priority=P_ND_GUARD, cookie=cg,
                             match=Match(**md, eth_type=ETH_IPV6, ip_proto=ICMPV6, icmpv6_type=ND_NS,
                                         ipv6_nd_target=str(a))))
    for n in nets4:
        if any(m.clone.ipv4 for m in local):
            st.add_flow(Flow(table=FENCE, priority=P_EGRESS_ND + n.prefixlen, cookie=ce, goto=ARP_ND,
                             match=Match(**md, eth_type=ETH_ARP, arp_op=1, arp_tpa=str(n))))
        for m in local:
            if not m.clone.ipv4:
                continue
            inner, own = _inner_src(m, 4)
            st.add_flow(Flow(table=FENCE, priority=P_EGRESS + n.prefixlen, cookie=ce, goto=FORWARD,
                             match=Match(**md, in_port=m.clone.port, eth_type=ETH_IP, ipv4_src=inner,
                                         ipv4_dst=str(n)),
                             actions=(SetField("ipv4_src", own),) if own else ()))
    for n in nets6:
        if any(m.clone.ipv6 for m in local):
            # above the ff00::/8 guard: the solicited-node NS of real neighbour discovery
            st.add_flow(Flow(table=FENCE, priority=P_ND_EGRESS, cookie=ce, goto=ARP_ND,
                             match=Match(**md, eth_type=ETH_IPV6, ip_proto=ICMPV6, icmpv6_type=ND_NS,
                                         ipv6_nd_target=str(n))))
        for m in local:
            if not m.clone.ipv6:
                continue
            inner, own = _inner_src(m, 6)
            st.add_flow(Flow(table=FENCE, priority=P_EGRESS + n.prefixlen, cookie=ce, goto=FORWARD,
                             match=Match(**md, in_port=m.clone.port, eth_type=ETH_IPV6, ipv6_src=inner,
                                         ipv6_dst=str(n)),
                             actions=(SetField("ipv6_src", own),) if own else ()))


def _inbound(st: SwitchState, fence: Fence, local: list[Member]) -> None:
    """Forward-table flows guarding each local clone's own address ("block in and out").

    A packet reaches a clone's own address only if it carries the fence's MAC (it was
    translated inside this fence: its sender is a member) or, when the fence allows egress,
    if its source lies in an allowed prefix and is neither a parent address nor another
    clone of the parent (the replies of allowed egress; stateless, so such a peer may also
    open a connection).  Everything else (a parent, an unfenced host, an outside host when
    egress is denied) is dropped before delivery, and counted.
    """
    ci = _label(st, fence, K_INBOUND, "delivery to clone addresses (fence traffic, allowed replies)")
    cb = _label(st, fence, K_INBOUND_DROP, "anything else to a clone's own address dropped (block in)")
    guards = set(fence.guards) | set(fence.parent_addresses())
    for m in local:
        h = m.clone
        deliver = (SetField("eth_dst", h.mac), Output(h.port))
        for fam, ip in ((4, h.ipv4), (6, h.ipv6)):
            if ip is None:
                continue
            eth, dkey, skey = (ETH_IP, "ipv4_dst", "ipv4_src") if fam == 4 else (ETH_IPV6, "ipv6_dst", "ipv6_src")
            own = str(ip.ip)
            st.add_flow(Flow(table=FORWARD, priority=P_INB_FENCE, cookie=ci, actions=deliver,
                             match=Match(eth_type=eth, eth_src=fence.mac, **{dkey: own})))
            nets = [n for n in fence.egress if n.version == fam]
            for a in sorted((a for a in guards if a.version == fam and any(a in n for n in nets)), key=int):
                st.add_flow(Flow(table=FORWARD, priority=P_INB_GUARD, cookie=cb,
                                 match=Match(eth_type=eth, **{dkey: own, skey: str(a)})))
            for n in nets:
                st.add_flow(Flow(table=FORWARD, priority=P_INB_ALLOW + n.prefixlen, cookie=ci, actions=deliver,
                                 match=Match(eth_type=eth, **{dkey: own, skey: str(n)})))
            st.add_flow(Flow(table=FORWARD, priority=P_INB_DROP, cookie=cb, match=Match(eth_type=eth, **{dkey: own})))


def compute_fence(fence: Fence, nd_rate: int) -> dict[str, SwitchState]:
    """The flows and meters of one fence, per switch that holds at least one of its members (pure)."""
    local: dict[str, list[Member]] = defaultdict(list)
    for m in fence.members:
        local[m.clone.switch].append(m)
    out = {}
    for switch, members in local.items():
        st = SwitchState()
        for m in members:
            _admission(st, fence, m, nd_rate)
        _fence_table(st, fence, members)
        _inbound(st, fence, members)
        out[switch] = st
    return out


def compute_part(d: Directory, intent: FencedCloneIntent, name: str) -> dict[str, SwitchState]:
    """The state of one part of the app, the fence ``name``, for an intent that passed validation (pure)."""
    fence = resolve_part(d, intent, name)
    return {} if fence is None else compute_fence(fence, intent.nd_rate_per_clone)
