"""NVMe/TCP codec: every PDU the peers send round-trips, every malformed input is a BadPDU naming
the fault, a byte stream is framed however it is cut, and random bytes raise nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ryu_apps.functions.nvme_zoning import pdu as P

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:0f8e1d2c-3b4a-5968-7a6b-5c4d3e2f1a0b"
SUBNQN = "nqn.2024-01.org.example:disk1"
HOSTID = bytes(range(16))


def connect_pdu(subnqn=SUBNQN, hostnqn=HOSTNQN, hdgst=False, ddgst=False, qid=0, cntlid=P.CNTLID_DYNAMIC,
                sqe=None, data=None) -> bytes:
    return P.capsule_cmd(sqe or P.connect_sqe(7, qid, 31, 120000),
                         P.connect_data(HOSTID, cntlid, subnqn, hostnqn) if data is None else data, hdgst, ddgst)


def patch(b: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(b)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


# -- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hdgst,ddgst,plen", [(False, False, 1096), (True, False, 1100), (False, True, 1100),
                                              (True, True, 1104)])
def test_connect_round_trip(hdgst, ddgst, plen):
    raw = connect_pdu(hdgst=hdgst, ddgst=ddgst)
    h = P.parse_header(raw)
    assert (h.type, h.hlen, h.plen, h.pdo) == (P.CAPSULE_CMD, 72, plen, 72 + (4 if hdgst else 0))
    assert bool(h.flags & P.HDGSTF) == hdgst and bool(h.flags & P.DDGSTF) == ddgst
    c = P.parse_connect(raw)
    assert c == P.Connect(cid=7, qid=0, sqsize=31, cattr=0, kato=120000, hostid=HOSTID, cntlid=0xFFFF,
                          subnqn=SUBNQN, hostnqn=HOSTNQN)


def test_connect_matches_linux_layout():
    """Byte positions as the protocol notes give them (and Linux/Wireshark read them)."""
    raw = connect_pdu(qid=3, cntlid=5)
    sqe, data = raw[8:72], raw[72:]
    assert (sqe[0], sqe[1], sqe[4], sqe[39]) == (0x7F, 0x40, 0x01, 0x01)
    assert struct.unpack_from("<QI", sqe, 24) == (0, 1024)
    assert struct.unpack_from("<HHHBxI", sqe, 40) == (0, 3, 31, 0, 120000)
    assert data[:16] == HOSTID and struct.unpack_from("<H", data, 16) == (5,)
    assert data[256:256 + len(SUBNQN) + 1] == SUBNQN.encode() + b"\0"
    assert data[512:512 + len(HOSTNQN) + 1] == HOSTNQN.encode() + b"\0"


@pytest.mark.parametrize("build,ptype,fields", [
    (lambda: P.icreq(hdgst=True, ddgst=False, maxr2t=3), P.ICREQ, P.ICParams(0, 0, True, False, 3)),
    (lambda: P.icresp(0, False, True, 32768), P.ICRESP, P.ICParams(0, 0, False, True, 32768)),
])
def test_ic_round_trip(build, ptype, fields):
    raw = build()
    assert len(raw) == 128
    p = P.parse_pdu(raw)
    assert p.type == ptype and P.parse_ic(p) == fields


@pytest.mark.parametrize("hdgst,ddgst", [(False, False), (True, True)])
@pytest.mark.parametrize("build,ptype,transfer,data", [
    (lambda h, d: P.h2c_data(3, 9, 4096, b"w" * 100, True, h, d), P.H2C_DATA, P.Transfer(3, 9, 4096, 100), b"w" * 100),
    (lambda h, d: P.c2h_data(4, 512, b"r" * 64, False, False, h, d), P.C2H_DATA, P.Transfer(4, 0, 512, 64), b"r" * 64),
    (lambda h, d: P.r2t(5, 1, 0, 131072, h), P.R2T, P.Transfer(5, 1, 0, 131072), b""),
])
def test_transfer_round_trip(build, ptype, transfer, data, hdgst, ddgst):
    p = P.parse_pdu(build(hdgst, ddgst))
    assert (p.type, P.parse_transfer(p), p.data) == (ptype, transfer, data)


def test_data_flags():
    assert P.parse_header(P.h2c_data(1, 1, 0, b"x")).flags == P.LAST_PDU
    assert P.parse_header(P.h2c_data(1, 1, 0, b"x", last=False)).flags == 0
    assert P.parse_header(P.c2h_data(1, 0, b"x", success=True)).flags == P.LAST_PDU | P.SUCCESS


@pytest.mark.parametrize("hdgst", [False, True])
def test_capsules_round_trip(hdgst):
    sqe = P.write(11, 1, 1 << 33, 8, in_capsule=True)
    p = P.parse_pdu(P.capsule_cmd(sqe, b"d" * 4096, hdgst, hdgst))
    assert (p.sqe, p.data) == (sqe, b"d" * 4096)
    raw = P.capsule_resp(P.cqe(11, P.SC_CONNECT_INVALID_PARAM | P.DNR, 0x10100, 5, 2, 7), hdgst)
    comp = P.parse_cqe(P.parse_pdu(raw).raw_header[8:])
    assert comp == P.Completion(11, 0x4182, 0x10100, 7, 5, 2)
    assert comp.result64 == 7 << 32 | 0x10100


def test_term_req_round_trip():
    bad = connect_pdu()[:72]
    p = P.parse_pdu(P.term_req(P.C2H_TERM, P.FES_INVALID_HEADER, 2, bad + bad))
    assert p.type == P.C2H_TERM and P.parse_term(p) == P.Term(1, 2, (bad + bad)[:128])


@pytest.mark.parametrize("sqe,want", [
    (P.property_get(1, P.PROP_CAP, 8), dict(opcode=0x7F, fctype=0x04, cdw10=1, cdw11=0x00)),
    (P.property_set(2, P.PROP_CC, 0x460001), dict(opcode=0x7F, fctype=0x00, cdw10=0, cdw11=0x14, cdw12=0x460001)),
    (P.identify(3, P.CNS_CONTROLLER), dict(opcode=0x06, cdw10=1, sgl_len=4096, sgl_type=0x5A)),
    (P.identify(3, P.CNS_NAMESPACE, nsid=1), dict(opcode=0x06, nsid=1, cdw10=0)),
    (P.get_log_page(4, P.LID_DISCOVERY, 3072, offset=1 << 32), dict(opcode=0x02, cdw10=0x70 | 767 << 16, cdw11=0,
                                                                    cdw12=0, cdw13=1, sgl_len=3072)),
    (P.set_features(5, P.FEAT_NUM_QUEUES, 0x30003), dict(opcode=0x09, cdw10=7, cdw11=0x30003)),
    (P.keep_alive(6), dict(opcode=0x18, sgl_len=0, sgl_type=0x5A)),
    (P.read(7, 1, 0x1_0000_0002, 256), dict(opcode=0x02, nsid=1, cdw10=2, cdw11=1, cdw12=255, sgl_len=131072,
                                             sgl_type=0x5A)),
    (P.write(8, 1, 16, 2, in_capsule=True), dict(opcode=0x01, cdw10=16, cdw12=1, sgl_len=1024, sgl_type=0x01)),
    (P.write(8, 1, 16, 256), dict(opcode=0x01, sgl_len=131072, sgl_type=0x5A)),
])
def test_sqe_builders(sqe, want):
    c = P.parse_sqe(sqe)
    assert c.flags == P.PSDT_SGL
    got = {k: getattr(c, k) for k in want}
    assert got == want


@pytest.mark.parametrize("entries", [
    [],
    [P.DiscoveryEntry(SUBNQN, "10.0.0.1", "4420")],
    [P.DiscoveryEntry(SUBNQN, "fd00::1", 4420, portid=2),
     P.DiscoveryEntry(P.DISCOVERY_NQN, "127.0.0.1", "8009", subtype=P.SUBTYPE_CURRENT_DISCOVERY)],
])
def test_discovery_log_round_trip(entries):
    page = P.discovery_log(entries, genctr=42)
    assert len(page) == 1024 * (1 + len(entries))
    assert struct.unpack_from("<QQH", page) == (42, len(entries), 0)
    assert P.discovery_numrec(page[:1024]) == len(entries)
    assert P.parse_discovery_log(page) == entries
    if entries:
        assert entries[0].adrfam == (P.ADRFAM_IPV6 if ":" in entries[0].traddr else P.ADRFAM_IPV4)
        assert page[1024] == P.TRTYPE_TCP


def test_identify_round_trip():
    info = P.ControllerInfo(9, SUBNQN)
    b = P.identify_controller(info)
    assert len(b) == 4096 and b[768:768 + len(SUBNQN)] == SUBNQN.encode()
    assert P.parse_identify_controller(b) == P.ControllerInfo(9, SUBNQN, serial="ofs-0009")
    assert (info.max_transfer, info.in_capsule) == (131072, 8192)
    assert P.parse_identify_namespace(P.identify_namespace(32768)) == (32768, 512)


# -- BadPDU: every way a PDU or a Connect is wrong ------------------------------------------------

CONNECT = connect_pdu()
CONNECT_DG = connect_pdu(hdgst=True, ddgst=True)
KA = P.capsule_cmd(P.keep_alive(1))


@pytest.mark.parametrize("raw,why", [
    (b"\x04\x00\x48", "3 bytes, a PDU header needs 8"),
    (bytes([8, 0, 24, 0]) + struct.pack("<I", 24), "unknown PDU type 8"),
    (bytes([0xFF, 0, 24, 0]) + struct.pack("<I", 24), "unknown PDU type 255"),
    (patch(CONNECT, 2, "B", 24), "hlen 24 != 72 for CapsuleCmd"),
    (patch(CONNECT, 4, "<I", 40), "plen 40 < hlen 72"),
    (patch(P.icreq(), 1, "B", P.HDGSTF), "digest flags on ICReq"),
    (patch(P.icreq(), 4, "<I", 129), "plen 129 > 128 for ICReq"),
    (patch(P.icreq(), 3, "B", 8), "pdo 8 on ICReq"),
    (patch(CONNECT, 3, "B", 0), "plen 1096 > header but pdo 0 for CapsuleCmd"),
    (patch(CONNECT, 3, "B", 40), "pdo 40 outside 72..1096"),
    (patch(P.capsule_cmd(P.keep_alive(1), b"x" * 100), 3, "B", 200), "pdo 200 outside 72..172"),
    (patch(P.capsule_resp(P.cqe(1)), 4, "<I", 28), "plen 28 != 24 for CapsuleResp"),
    (patch(KA, 1, "B", P.DDGSTF), "data digest flag without data"),
    (patch(KA, 1, "B", P.HDGSTF), "plen 72 leaves no room for the header digest"),
    (patch(P.capsule_resp(P.cqe(1)), 3, "B", 24), "pdo 24 on CapsuleResp"),
    (patch(P.h2c_data(1, 1, 0, b"x"), 1, "B", P.SUCCESS | P.LAST_PDU), "SUCCESS flag without LAST_PDU"),
    (patch(P.c2h_data(1, 0, b"x"), 1, "B", P.SUCCESS), "SUCCESS flag without LAST_PDU"),
    (P.term_req(P.C2H_TERM, 1)[:8] + bytes(16), None),       # a valid termination request
])
def test_bad_headers(raw, why):
    if why is None:
        P.parse_header(raw)
        return
    with pytest.raises(P.BadPDU, match=why):
        P.parse_pdu(raw)


@pytest.mark.parametrize("raw,why", [
    (CONNECT[:-1], "1095 bytes but plen 1096"),
    (CONNECT + b"\0", "1097 bytes but plen 1096"),
    (patch(CONNECT_DG, 10, "B", 0x12), "header digest mismatch"),
    (patch(CONNECT_DG, 72, "B", 0x12), "header digest mismatch"),
    (patch(CONNECT_DG, 600, "B", 0x12), "data digest mismatch"),
    (patch(CONNECT_DG, 1100, "B", 0x12), "data digest mismatch"),
])
def test_bad_pdus(raw, why):
    with pytest.raises(P.BadPDU, match=why):
        P.parse_connect(raw)


def test_header_digest_error_carries_its_fatal_error_status():
    with pytest.raises(P.BadPDU) as e:
        P.parse_pdu(patch(CONNECT_DG, 10, "B", 0x12))
    assert e.value.fes == P.FES_HEADER_DIGEST


def nqn_field(raw: bytes) -> bytes:
    return raw.ljust(256, b"\0")[:256]


def data_with(subnqn: bytes = SUBNQN.encode(), hostnqn: bytes = HOSTNQN.encode()) -> bytes:
    return HOSTID + bytes(240) + nqn_field(subnqn) + nqn_field(hostnqn) + bytes(256)


@pytest.mark.parametrize("raw,why", [
    (P.capsule_cmd(P.keep_alive(1)), "opcode 0x18 fctype 0x00, not a Fabrics Connect"),
    (P.capsule_cmd(P.property_get(1, 0)), "opcode 0x7f fctype 0x04, not a Fabrics Connect"),
    (P.icreq(), "ICReq, not a CapsuleCmd"),
    (connect_pdu(data=data_with()[:512]), "512 bytes of in-capsule data, a Connect carries 1024"),
    (P.capsule_cmd(patch(P.connect_sqe(1, 0, 31, 0), 24, "<QI3xB", 0, 512, 1), data_with()[:512]),
     "SGL type 0x01 length 512, not 1024 bytes in capsule"),
    (connect_pdu(sqe=patch(P.connect_sqe(1, 0, 31, 0), 24, "<QI3xB", 0, 1024, 0x5A)),
     "SGL type 0x5a length 1024, not 1024 bytes in capsule"),
    (connect_pdu(sqe=patch(P.connect_sqe(1, 0, 31, 0), 40, "<H", 1)), "record format 1"),
    (connect_pdu(data=data_with(subnqn=b"a" * 256)), "subnqn not NUL-terminated within its 256 bytes"),
    (connect_pdu(data=data_with(hostnqn=(HOSTNQN * 9).encode()[:300])), "hostnqn not NUL-terminated"),
    (connect_pdu(data=data_with(hostnqn=b"nqn.2024-01.org.example:" + b"h" * 226)), "hostnqn 250 bytes"),
    (connect_pdu(data=data_with(subnqn=b"")), "subnqn empty"),
    (connect_pdu(data=data_with(hostnqn=b"   ")), "hostnqn blank"),
    (connect_pdu(data=data_with(subnqn=b"nqn.2024-01.org.example:\xff\xfe")), "subnqn is not valid UTF-8"),
    (connect_pdu(data=data_with(subnqn=b"iqn.2024-01.org.example:disk1")), "subnqn not of the form"),
    (connect_pdu(data=data_with(hostnqn=b"nqn.2014-08.org.nvmexpress:uuid:not-a-uuid")), "hostnqn not of the form"),
    (connect_pdu(data=data_with(hostnqn=b"nqn.2024-01.org.example:a b")), "hostnqn contains whitespace"),
])
def test_bad_connects(raw, why):
    with pytest.raises(P.BadPDU, match=why):
        P.parse_connect(raw)


def test_nul_padding_after_the_name_is_not_read():
    c = P.parse_connect(connect_pdu(data=data_with(subnqn=SUBNQN.encode() + b"\0junk")))
    assert c.subnqn == SUBNQN


@pytest.mark.parametrize("nqn,why", [
    (SUBNQN, None),
    (HOSTNQN, None),
    (P.DISCOVERY_NQN, None),
    ("nqn.2014-08.com.example.storage:target-01_a.b", None),
    ("nqn.2024-01.org.example:日本", None),
    ("nqn.2024-01.org.example:" + "x" * 199, None),           # 223 bytes
    ("nqn.2024-01.org.example:" + "x" * 200, "224 bytes (at most 223)"),
    ("", "empty"),
    ("  ", "blank"),
    ("nqn.2024-01.org.example:a\tb", "whitespace or a control character"),
    ("nqn.2024-01.org.example:a\x01", "whitespace or a control character"),
    ("nqn.2024-01.org.example", "not of the form nqn.yyyy-mm.reverse.domain:name"),
    ("nqn.2024-01.example:x", "not of the form"),                  # one label is no reverse domain
    ("nqn.24-01.org.example:x", "not of the form"),
    ("nqn.2024-1.org.example:x", "not of the form"),
    ("nqn.2024-01.org.-example:x", "not of the form"),
    ("nqn.2024-01.org.example:", "not of the form"),
    ("nqn.2024-13.org.example:x", "month 13"),
    ("nqn.2024-00.org.example:x", "month 00"),
    ("nqn.2014-08.org.nvmexpress:host1", "uuid:<uuid>"),
    ("nqn.2014-08.org.nvmexpress:uuid:0f8e1d2c-3b4a-5968-7a6b-5c4d3e2f1a0", "uuid:<uuid>"),
    ("nqn.2014-08.org.nvmexpress.discovery:x", "uuid:<uuid>"),
    ("nqn.2024-01.org.example:\udcff", "not valid UTF-8"),
])
def test_check_nqn(nqn, why):
    got = P.check_nqn(nqn)
    assert (got is None) if why is None else (got is not None and why in got), got


def test_builders_refuse_what_cannot_be_encoded():
    with pytest.raises(ValueError):
        P.connect_data(HOSTID, 1, "x" * 257, HOSTNQN)
    with pytest.raises(ValueError):
        P.connect_data(b"short", 1, SUBNQN, HOSTNQN)
    with pytest.raises(ValueError):
        P.capsule_cmd(b"\0" * 63)
    with pytest.raises(ValueError):
        P.term_req(P.R2T, 1)


@pytest.mark.parametrize("raw,why", [
    (b"\0" * 100, "100 bytes, a discovery log page starts"),
    (P.discovery_log([P.DiscoveryEntry(SUBNQN, "10.0.0.1")] * 2)[:2048], "holds 1 of 2 records"),
    (patch(P.discovery_log([]), 16, "<H", 1), "record format 1"),
    (patch(P.discovery_log([P.DiscoveryEntry(SUBNQN, "10.0.0.1")]), 1024 + 512, "B", 0xFF), "not ASCII"),
])
def test_bad_discovery_logs(raw, why):
    with pytest.raises(P.BadPDU, match=why):
        P.parse_discovery_log(raw)


def test_discovery_log_skips_other_transports():
    page = bytearray(P.discovery_log([P.DiscoveryEntry(SUBNQN, "10.0.0.1"), P.DiscoveryEntry(SUBNQN, "10.0.0.2")]))
    page[1024] = 1                                              # RDMA
    assert [e.traddr for e in P.parse_discovery_log(bytes(page))] == ["10.0.0.2"]


# -- PDUStream -------------------------------------------------------------------------------------

def test_stream_connect_one_byte_at_a_time():
    s = P.PDUStream()
    stream = P.icreq() + CONNECT_DG
    out = []
    for i in range(len(stream)):
        out += s.feed(stream[i:i + 1])
    assert out == [P.icreq(), CONNECT_DG] and len(s) == 0
    assert P.parse_connect(out[1]).hostnqn == HOSTNQN


def test_stream_several_pdus_in_one_chunk_and_a_remainder():
    s = P.PDUStream()
    r2t = P.r2t(1, 2, 0, 4096)
    out = s.feed(P.icreq() + CONNECT + KA + r2t[:5])
    assert out == [P.icreq(), CONNECT, KA] and len(s) == 5
    assert s.feed(r2t[5:]) == [r2t] and len(s) == 0


@pytest.mark.parametrize("cuts", [[1, 7, 8, 9], [100, 1200], [1223], [8, 128, 136, 1224]])
def test_stream_any_cut(cuts):
    stream = P.icreq() + CONNECT
    s, out, last = P.PDUStream(), [], 0
    for c in cuts + [len(stream)]:
        out += s.feed(stream[last:c])
        last = c
    assert out == [P.icreq(), CONNECT]


def test_stream_limits_and_bad_headers():
    with pytest.raises(P.BadPDU, match="plen 1096 > 1000"):
        P.PDUStream(max_pdu=1000).feed(CONNECT[:8])
    s = P.PDUStream()
    assert s.feed(P.icreq() + bytes([8]) + bytes(7)) == [P.icreq()]     # the PDUs before a bad header first
    with pytest.raises(P.BadPDU, match="unknown PDU type 8"):
        s.feed(b"")
    assert s.head(8) == bytes([8]) + bytes(7)          # the offending header, for the termination request
    with pytest.raises(P.BadPDU, match="unknown PDU type 8"):
        P.PDUStream().feed(bytes([8]) + bytes(7))


# -- fuzz: nothing but BadPDU, whatever arrives -------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_parse_header(data):
    try:
        P.parse_header(data)
    except P.BadPDU:
        pass


@FUZZ
@given(st.binary(max_size=1200))
def test_fuzz_parse_connect_random(data):
    for raw in (data, CONNECT[:8] + data):
        try:
            P.parse_connect(raw)
        except P.BadPDU:
            pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(CONNECT_DG) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(CONNECT_DG)))
def test_fuzz_parse_connect_mutated(flips, cut):
    for base in (CONNECT, CONNECT_DG):
        raw = bytearray(base)
        for at, value in flips:
            raw[at % len(raw)] = value
        try:
            P.parse_connect(bytes(raw[:cut] if cut < 16 else raw))
        except P.BadPDU:
            pass


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_stream(chunks):
    s = P.PDUStream(max_pdu=4096)
    try:
        for c in [P.icreq()[:50]] + chunks:
            for raw in s.feed(c):
                P.parse_pdu(raw)
    except P.BadPDU:
        pass


@FUZZ
@given(st.binary(min_size=1024, max_size=3100))
def test_fuzz_discovery_log(data):
    try:
        P.parse_discovery_log(data)
    except P.BadPDU:
        pass
