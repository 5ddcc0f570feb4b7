"""NVMe-oF zoning without OVS: intent checks, the decision, the connection follower, resets, flows.

Segments are crafted with scapy and the NVMe/TCP bytes come from the project's codec
(``pdu``), which tshark checks in ``tests/integration/test_nvme_peers.py``.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ryu_apps.framework.pipeline import check_flow
from ryu_apps.framework.topology import from_dict
from ryu_apps.framework.view import IntentError
from ryu_apps.functions.nvme_zoning import pdu, segment
from ryu_apps.functions.nvme_zoning.flows import Admitted, base_flows, connection_flows
from ryu_apps.functions.nvme_zoning.follow import ICREQ_BYTES, Follower, reset_sender
from ryu_apps.functions.nvme_zoning.intent import NvmeZoningIntent
from ryu_apps.functions.nvme_zoning.model import decide, discovery_entries, listeners, validate

H1, H2 = "nqn.2026-12.io.lab:host-h1", "nqn.2026-12.io.lab:host-h2"
VOL1, VOL2 = "nqn.2026-12.io.lab:vol1", "nqn.2026-12.io.lab:vol2"


def _host(i: int, net: int) -> dict:
    return {"mac": f"02:00:00:00:{net:02x}:{i:02x}", "ipv4": f"10.{net}.0.{i}/24", "gateway4": f"10.{net}.0.254",
            "ipv6": f"fd00:{net}::{i}/64", "gateway6": f"fd00:{net}::fe"}


@pytest.fixture(scope="module")
def topo():
    return from_dict({"lab": {"name": "nz", "prefix": "nz"},
                      "switches": {"s1": {"dpid": 1}, "s2": {"dpid": 2}},
                      "hosts": {"h1": _host(1, 1), "h2": _host(2, 1), "t1": _host(1, 2), "d1": _host(9, 2)},
                      "links": [["h1", "s1"], ["h2", "s1"], ["t1", "s2"], ["d1", "s2"], ["s1", "s2"]]})


def _intent(**over) -> NvmeZoningIntent:
    data = {"subsystems": [{"nqn": VOL1, "host": "t1"}, {"nqn": VOL2, "host": "t1", "listeners": [{"port": 4421}]}],
            "hosts": [{"nqn": H1, "bind": "h1"}],
            "zone_groups": [{"name": "prod", "zones": [{"name": "db", "hosts": [H1], "subsystems": [VOL1]}]}],
            "discovery": {"host": "d1"}}
    data.update(over)
    return NvmeZoningIntent.model_validate(data)


# -- intent and model -------------------------------------------------------------------
def test_a_good_zoning_validates_and_lists_its_listeners(topo):
    intent = _intent()
    validate(topo, intent)
    lst = listeners(topo, intent)
    assert [(x.addr, x.port, x.subsystems) for x in lst] == [
        ("10.2.0.1", 4420, (VOL1,)), ("10.2.0.1", 4421, (VOL2,)), ("10.2.0.9", 8009, (pdu.DISCOVERY_NQN,)),
        ("fd00:2::1", 4420, (VOL1,)), ("fd00:2::1", 4421, (VOL2,)), ("fd00:2::9", 8009, (pdu.DISCOVERY_NQN,))]
    assert intent.zoned(H1, VOL1) and not intent.zoned(H1, VOL2) and not intent.zoned(H2, VOL1)
    assert [e["subnqn"] for e in discovery_entries(topo, intent, H1)] == [VOL1, VOL1]
    assert discovery_entries(topo, intent, H2) == []


@pytest.mark.parametrize("nqn, words", [
    ("", "not a valid NQN"), ("   ", "not a valid NQN"), ("nqn.2026-12.io.lab:" + "x" * 300, "223"),
    ("iqn.2026-12.io.lab:x", "not a valid NQN"), ("nqn.2026-13.io.lab:x", "not a valid NQN"), (7, "string"),
])
def test_bad_nqns_are_refused_naming_the_field(nqn, words):
    with pytest.raises(ValidationError) as exc:
        _intent(hosts=[{"nqn": nqn}])
    err = exc.value.errors()[0]
    assert err["loc"][:2] == ("hosts", 0), err
    assert words.lower() in err["msg"].lower(), err["msg"]


@pytest.mark.parametrize("over, field", [
    ({"subsystems": [{"nqn": VOL1, "host": "nobody"}]}, "subsystems[0].host"),
    ({"subsystems": [{"nqn": VOL1, "host": "t1", "listeners": [{"addr": "10.1.0.1"}]}]},
     "subsystems[0].listeners[0].addr"),
    ({"hosts": [{"nqn": H1, "bind": "nobody"}]}, "hosts[0].bind"),
    ({"discovery": {"host": "nobody"}}, "discovery.host"),
    ({"discovery": {"host": "t1", "port": 4420}}, "discovery.port"),
    ({"subsystems": [{"nqn": VOL1, "host": "t1"}, {"nqn": VOL2, "host": "t1", "tls": "allow"}],
      "zone_groups": []}, "subsystems[1].tls"),
])
def test_what_needs_the_topology_is_checked_there(topo, over, field):
    with pytest.raises(IntentError) as exc:
        validate(topo, _intent(**over))
    assert exc.value.field == field, str(exc.value)


def test_a_zone_must_name_declared_subsystems():
    with pytest.raises(ValidationError) as exc:
        _intent(zone_groups=[{"name": "g", "zones": [{"name": "z", "hosts": [H1], "subsystems": [VOL2 + "x"]}]}])
    assert "no subsystem" in str(exc.value)


def test_the_decision(topo):
    intent = _intent()
    by = {(x.addr, x.port): x for x in listeners(topo, intent)}
    at = by[("10.2.0.1", 4420)]
    assert decide(intent, at, "h1", H1, VOL1) == ""
    assert "stolen" in decide(intent, at, "h2", H1, VOL1)             # bound to h1
    assert "no zone" in decide(intent, at, "h2", H2, VOL1)
    assert "not served" in decide(intent, at, "h1", H1, VOL2)          # vol2 listens on 4421
    assert decide(intent, by[("10.2.0.9", 8009)], "h2", H2, pdu.DISCOVERY_NQN) == ""


# -- the follower ---------------------------------------------------------------------------
HOST_MAC, ROUTER_MAC = "02:00:00:00:01:01", "0e:fa:b0:00:00:01"


class Conn:
    """Crafted segments of one host -> target connection."""

    def __init__(self, v6: bool = False, sport: int = 40000, isn: int = 1000, tisn: int = 5000):
        self.v6, self.sport, self.seq, self.tseq = v6, sport, isn, tisn
        self.src, self.dst = ("fd00:1::1", "fd00:2::1") if v6 else ("10.1.0.1", "10.2.0.1")

    def _ip(self, src, dst):
        return IPv6(src=src, dst=dst) if self.v6 else IP(src=src, dst=dst)

    def host(self, flags: str = "A", data: bytes = b"", seq: int | None = None) -> bytes:
        pkt = Ether(src=HOST_MAC, dst=ROUTER_MAC) / self._ip(self.src, self.dst) / TCP(
            sport=self.sport, dport=4420, flags=flags, seq=self.seq if seq is None else seq, ack=self.tseq) / data
        if seq is None:
            self.seq += len(data) + (1 if "S" in flags or "F" in flags else 0)
        return bytes(pkt)

    def target(self, flags: str = "A", data: bytes = b"") -> bytes:
        pkt = Ether(src="02:00:00:00:02:01", dst=ROUTER_MAC) / self._ip(self.dst, self.src) / TCP(
            sport=4420, dport=self.sport, flags=flags, seq=self.tseq, ack=self.seq) / data
        self.tseq += len(data) + (1 if "S" in flags else 0)
        return bytes(pkt)


def _connect_bytes(hostnqn=H1, subnqn=VOL1, qid=0, hdgst=False, ddgst=False) -> bytes:
    data = pdu.connect_data(b"\x11" * 16, 0xFFFF, subnqn, hostnqn)
    return pdu.capsule_cmd(pdu.connect_sqe(1, qid, 31, 30000), data, hdgst=hdgst, ddgst=ddgst)


def _open(f: Follower, c: Conn, now: float = 0.0):
    steps = []
    syn = c.host("S")
    steps.append(f.from_host(segment.parse(syn), syn, "s1", 1, now))
    sa = c.target("SA")
    steps.append(f.from_target(segment.parse(sa)))
    ack = c.host("A")
    steps.append(f.from_host(segment.parse(ack), ack, "s1", 1, now))
    ic = c.host("PA", pdu.icreq())
    steps.append(f.from_host(segment.parse(ic), ic, "s1", 1, now))
    resp = c.target("PA", pdu.icresp())
    steps.append(f.from_target(segment.parse(resp)))
    return [s.action for s in steps]


def _send(f: Follower, frame: bytes, now: float = 0.0):
    return f.from_host(segment.parse(frame), frame, "s1", 1, now)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("digests", [(False, False), (True, False), (True, True)])
def test_the_handshake_and_icreq_pass_and_the_connect_is_held_and_read(v6, digests):
    f, c = Follower(), Conn(v6=v6)
    assert _open(f, c) == ["pass"] * 5
    capsule = _connect_bytes(hdgst=digests[0], ddgst=digests[1])
    step = _send(f, c.host("PA", capsule))
    assert step.action == "connect", step
    assert (step.pending.connect.hostnqn, step.pending.connect.subnqn, step.pending.connect.qid) == (H1, VOL1, 0)
    frames = f.admit(step.pending)
    assert len(frames) == 1 and not f.pending


def test_a_connect_in_one_byte_segments_out_of_order_and_retransmitted_reads_the_same():
    f, c = Follower(), Conn()
    _open(f, c)
    capsule = _connect_bytes(qid=3)
    base = c.seq
    chunks = [(base + i, capsule[i:i + 1]) for i in range(len(capsule))]
    order = chunks[1:] + chunks[:1]            # the first byte last: everything waits for it
    steps = [_send(f, c.host("PA", data, seq=seq)) for seq, data in order[:50]]
    steps.append(_send(f, c.host("PA", order[10][1], seq=order[10][0])))   # a retransmission
    steps += [_send(f, c.host("PA", data, seq=seq)) for seq, data in order[50:]]
    assert {s.action for s in steps[:-1]} == {"hold"} and steps[-1].action == "connect"
    p = steps[-1].pending
    assert p.connect.qid == 3 and bytes(p.stream[ICREQ_BYTES:]) == capsule
    frames = f.admit(p)
    # released in stream order, each byte once, as few segments as fit
    segs = [segment.parse(fr) for fr in frames]
    assert b"".join(s.payload for s in segs) == capsule and len(segs) == 1
    assert segs[0].seq == base and segs[0].has(segment.PSH)


def test_the_icreq_and_connect_in_one_segment_are_held_together():
    f, c = Follower(), Conn()
    syn = c.host("S")
    _send(f, syn)
    f.from_target(segment.parse(c.target("SA")))
    step = _send(f, c.host("PA", pdu.icreq() + _connect_bytes()))
    assert step.action == "connect"


@pytest.mark.parametrize("name, stream, words", [
    ("plen lies", pdu.icreq()[:4] + (500).to_bytes(4, "little") + pdu.icreq()[8:], "ICReq"),
    ("hlen wrong", bytes([0, 0, 64, 0]) + (128).to_bytes(4, "little") + bytes(120), "ICReq"),
    ("a capsule first", _connect_bytes(), "ICReq"),
    ("not a connect", pdu.icreq() + pdu.capsule_cmd(pdu.identify(1, 1), b""), "Connect"),
    ("a huge capsule", pdu.icreq() + bytes([4, 0, 72, 72]) + (1 << 20).to_bytes(4, "little"), "not a Connect"),
    ("blank hostnqn", pdu.icreq() + bytes(_connect_bytes()[:72 + 512]) + bytes(512), "Connect"),
    ("not NUL-terminated", pdu.icreq() + _connect_bytes()[:72 + 512] + b"n" * 256 + bytes(256), "Connect"),
    ("TLS without policy", bytes.fromhex("160301") + bytes(200), "tls"),
])
def test_hostile_streams_get_their_documented_outcome(name, stream, words):
    f, c = Follower(), Conn()
    _send(f, c.host("S"))
    f.from_target(segment.parse(c.target("SA")))
    step = _send(f, c.host("PA", stream))
    if words == "tls":
        assert step.action == "tls"
        step = f.refuse(step.pending, "TLS refused")
    assert step.action == "refuse", (name, step)
    assert words.lower() in step.why.lower() or words == "tls", (name, step.why)
    assert not f.pending
    # both ends reset: the target at the first byte it has not seen, the host at its next expected byte
    (sw1, p1, to_target, through), (sw2, p2, to_host, straight) = step.resets
    t, h = segment.parse(to_target), segment.parse(to_host)
    assert through and not straight and (sw1, p1) == (sw2, p2) == ("s1", 1)
    assert t.has(segment.RST) and (t.src, t.dport) == ("10.1.0.1", 4420)
    assert h.has(segment.RST) and (h.src, h.sport, h.dst) == ("10.2.0.1", 4420, "10.1.0.1")
    assert h.eth_dst == HOST_MAC and h.eth_src == ROUTER_MAC
    assert h.seq == c.tseq                       # exactly the host's rcv_nxt (RFC 5961)


def test_bounds_per_host_and_held_bytes_and_time():
    f = Follower(held_bytes=4096, pending_per_host=2, connect_timeout_s=1.0)
    conns = [Conn(sport=40000 + i) for i in range(3)]
    steps = [_send(f, c.host("S")) for c in conns]
    assert [s.action for s in steps] == ["pass", "pass", "refuse"]
    assert "connections waiting" in steps[2].why and len(steps[2].resets) == 1
    c = conns[0]
    f.from_target(segment.parse(c.target("SA")))
    _send(f, c.host("PA", pdu.icreq()))
    big = _send(f, c.host("PA", bytes([4, 0, 72, 72]) + (2000).to_bytes(4, "little") + bytes(1992)))
    assert big.action in ("hold", "refuse")
    assert [p.key[1] for p in f.expired(5.0)] == [40001]


def test_a_segment_from_elsewhere_is_dropped_and_an_unknown_connection_is_reset():
    f, c = Follower(), Conn()
    syn = c.host("S")
    _send(f, syn)
    other = f.from_host(segment.parse(c.host("A")), c.host("A"), "s1", 2, 0.0)
    assert other.action == "drop"
    stray = Conn(sport=41000).host("PA", b"x" * 10)
    assert _send(f, stray).action == "unknown"
    rst = segment.parse(reset_sender(segment.parse(stray), stray))
    assert rst.has(segment.RST) and rst.dst == "10.1.0.1" and rst.dport == 41000


@pytest.mark.parametrize("v6", [False, True])
def test_built_segments_have_valid_checksums(v6):
    c = Conn(v6=v6)
    frame = c.host("PA", b"abc")
    seg = segment.parse(frame)
    for rev in (False, True):
        out = segment.reply(frame, seg, seq=123, ack=456, flags=segment.RST | segment.ACK, reverse=rev)
        chk = Ether(out)
        del chk[TCP].chksum          # scapy computes them again: the same bytes
        if not v6:
            del chk[IP].chksum
        assert bytes(chk) == out, (rev, Ether(out).summary())
        back = segment.parse(out)
        assert (back.seq, back.ack, back.payload) == (123, 456, b"")
        assert (back.src == seg.dst) is rev


def test_bad_frames_raise_bad_packet():
    from ryu_apps.packet.parse import BadPacket
    c = Conn()
    good = c.host("PA", b"abc")
    for bad in (good[:20], good[:14 + 20 + 10], bytes(Ether() / IP() / (b"x" * 20))):
        with pytest.raises(BadPacket):
            segment.parse(bad)


# -- flows ---------------------------------------------------------------------------------
def test_flows_stay_in_the_zoning_band_and_name_the_connection(topo):
    intent = _intent()
    base = base_flows(topo, listeners(topo, intent), 1000)
    assert set(base) == {"s1", "s2"}
    c = Admitted("10.1.0.1", 40000, "10.2.0.1", 4420, H1, VOL1, 0, "h1", "s1", 1, HOST_MAC, "s2", 1, 0.0)
    conn = connection_flows(c)
    for states in (base, conn):
        for st in states.values():
            for flow in st.flows.values():
                check_flow("nvme_zoning", flow)
    assert len(conn["s1"].flows) == 3 and len(conn["s2"].flows) == 1   # the pair, and the host's FIN/RST copies
    assert c.ident == "[10.1.0.1]:40000>[10.2.0.1]:4420"
