"""Well-formed OpenFlow 1.3 messages a switch sends, with the place of every length field.

Shared by the unit test of :mod:`ryu_apps.openflow.ofguard` and the integration test
that sends the same shapes to the running controller.  Each sample is built
with its length fields recorded as ``(offset, width, minimum, label)``;
:func:`variants` derives the malformed ones: each length set to 0, to one
below its minimum, and to more than was sent.
"""

from __future__ import annotations

import struct

from ryu_apps.openflow import ofwire
from ryu_apps.openflow.ofdata import Ct, Flow, Match, Output

XID = 0x1234


class Msg:
    """A message under construction: bytes plus the length fields inside them."""

    def __init__(self):
        self.buf = bytearray()
        self.fields: list[tuple[int, int, int, str]] = []

    def put(self, data: bytes) -> int:
        off = len(self.buf)
        self.buf += data
        return off

    def length_at(self, off: int, width: int, minimum: int, label: str) -> None:
        self.fields.append((off, width, minimum, label))


def _header(m: Msg, typ: int, version: int = 4) -> None:
    m.put(struct.pack("!BBHI", version, typ, 0, XID))
    m.length_at(2, 2, 8, "header")


def _finish(m: Msg) -> tuple[bytes, list]:
    struct.pack_into("!H", m.buf, 2, len(m.buf))
    return bytes(m.buf), m.fields


def _match(m: Msg, in_port: int = 1) -> None:
    off = m.put(struct.pack("!HHIIxxxx", 1, 12, 0x80000004, in_port))  # OXM in_port, padded to 16
    m.length_at(off + 2, 2, 4, "match")
    m.length_at(off + 7, 1, 0, "oxm")


def _action_output(m: Msg, label: str = "action") -> None:
    off = m.put(struct.pack("!HHIH6x", 0, 16, 2, 0xFFFF))
    m.length_at(off + 2, 2, 8, label)


def hello() -> tuple[bytes, list]:
    m = Msg()
    _header(m, 0)
    off = m.put(struct.pack("!HHI", 1, 8, 0x12))  # version bitmap: 1.0 and 1.3
    m.length_at(off + 2, 2, 4, "hello element")
    return _finish(m)


def simple(typ: int, body: bytes) -> tuple[bytes, list]:
    m = Msg()
    _header(m, typ)
    m.put(body)
    return _finish(m)


def packet_in() -> tuple[bytes, list]:
    m = Msg()
    _header(m, 10)
    m.put(struct.pack("!IHBBQ", 0xFFFFFFFF, 60, 1, 0, 0x0204000000000001))
    _match(m)
    m.put(b"\0\0" + b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 46)
    return _finish(m)


def flow_removed() -> tuple[bytes, list]:
    m = Msg()
    _header(m, 11)
    m.put(struct.pack("!QHBBIIHHQQ", 1, 100, 0, 0, 1, 0, 0, 0, 1, 64))
    _match(m)
    return _finish(m)


def _flow_stats_entry(m: Msg) -> None:
    start = m.put(struct.pack("!HBxIIHHHH4xQQQ", 0, 0, 1, 0, 100, 0, 0, 0, 5, 1, 64))
    m.length_at(start, 2, 56, "flow stats entry")
    _match(m)
    # apply-actions: output, then an NX ct with one nested output
    inst = m.put(struct.pack("!HH4x", 4, 0))
    m.length_at(inst + 2, 2, 8, "instruction")
    _action_output(m)
    ct = ofwire.encode_actions((Ct(commit=True, zone=5, table=None, nat=""),))
    ct_off = m.put(ct)
    m.length_at(ct_off + 2, 2, 16, "nx ct action")
    m.length_at(ct_off + 24 + 2, 2, 8, "nested nat action")
    # a goto-table instruction too
    g = m.put(struct.pack("!HHB3x", 1, 8, 10))
    m.length_at(g + 2, 2, 8, "goto instruction")
    struct.pack_into("!H", m.buf, inst + 2, g - inst)
    struct.pack_into("!H", m.buf, start, len(m.buf) - start)


def multipart(mp_type: int, body_fn) -> tuple[bytes, list]:
    m = Msg()
    _header(m, 19)
    m.put(struct.pack("!HH4x", mp_type, 0))
    body_fn(m)
    return _finish(m)


def _group_desc(m: Msg) -> None:
    start = m.put(struct.pack("!HBxI", 0, 1, 7))  # select group 7
    m.length_at(start, 2, 8, "group desc entry")
    b = m.put(struct.pack("!HHII4x", 32, 1, 2, 0xFFFFFFFF))
    m.length_at(b, 2, 16, "bucket")
    _action_output(m, "bucket action")
    struct.pack_into("!H", m.buf, start, len(m.buf) - start)


def _meter_config(m: Msg) -> None:
    start = m.put(struct.pack("!HHI", 24, 0x5, 1))  # pktps|stats
    m.length_at(start, 2, 8, "meter config entry")
    b = m.put(struct.pack("!HHII4x", 1, 16, 200, 50))
    m.length_at(b + 2, 2, 16, "meter band")


def _group_stats(m: Msg) -> None:
    start = m.put(struct.pack("!H2xII4xQQII", 56, 7, 1, 0, 0, 1, 0) + struct.pack("!QQ", 0, 0))
    m.length_at(start, 2, 40, "group stats entry")


def _meter_stats(m: Msg) -> None:
    start = m.put(struct.pack("!IH6xIQQII", 1, 56, 0, 0, 0, 1, 0) + struct.pack("!QQ", 0, 0))
    m.length_at(start + 4, 2, 40, "meter stats entry")


def _table_features(m: Msg) -> None:
    start = m.put(struct.pack("!HB5x32sQQII", 0, 0, b"t0", 0, 0, 0, 1000))
    m.length_at(start, 2, 64, "table features entry")
    p = m.put(struct.pack("!HHHH", 0, 8, 1, 4))  # instructions property: goto_table id
    m.length_at(p + 2, 2, 4, "table features property")
    m.length_at(p + 6, 2, 4, "instruction id")
    struct.pack_into("!H", m.buf, start, len(m.buf) - start)


def _port_desc(m: Msg) -> None:
    m.put(struct.pack("!I4s6s2s16sIIIIIIII", 1, b"", b"\x02" * 6, b"", b"p1", 0, 0, 0, 0, 0, 0, 0, 0))


def queue_config() -> tuple[bytes, list]:
    m = Msg()
    _header(m, 23)
    m.put(struct.pack("!I4x", 1))
    q = m.put(struct.pack("!IIH6x", 1, 1, 32))
    m.length_at(q + 8, 2, 16, "queue")
    p = m.put(struct.pack("!HH4xH6x", 1, 16, 100))
    m.length_at(p + 2, 2, 16, "queue property")
    return _finish(m)


def bundle_reply() -> tuple[bytes, list]:
    m = Msg()
    _header(m, 4)
    m.put(struct.pack("!IIIHH", ofwire.ONF_EXPERIMENTER_ID, 2300, 1, ofwire.ONF_BCT_COMMIT_REPLY, 3))
    p = m.put(struct.pack("!HHI", 0xFFFF, 8, 0))  # an experimenter property
    m.length_at(p + 2, 2, 4, "bundle property")
    return _finish(m)


def packet_in2() -> tuple[bytes, list]:
    m = Msg()
    _header(m, 4)
    m.put(struct.pack("!II", 0x2320, 30))
    p = m.put(struct.pack("!HH", 0, 4 + 14) + b"\xff" * 14 + b"\0\0")  # NXPINT_PACKET
    m.length_at(p + 2, 2, 4, "packet-in2 property")
    return _finish(m)


def samples() -> dict[str, tuple[bytes, list]]:
    """Name -> (well-formed message, its length fields)."""
    return {
        "hello": hello(),
        "error": simple(1, struct.pack("!HH", 1, 2) + b"\0" * 16),
        "echo_request": simple(2, b"ping"),
        "features_reply": simple(6, struct.pack("!QIBB2xII", 0x21, 0, 254, 0, 0x4F, 0)),
        "get_config_reply": simple(8, struct.pack("!HH", 0, 0xFFFF)),
        "packet_in": packet_in(),
        "flow_removed": flow_removed(),
        "port_status": simple(12, struct.pack("!B7x", 2) + _port_desc_bytes()),
        "barrier_reply": simple(21, b""),
        "role_reply": simple(25, struct.pack("!I4xQ", 2, 1)),
        "get_async_reply": simple(27, b"\0" * 24),
        "queue_config": queue_config(),
        "bundle_reply": bundle_reply(),
        "packet_in2": packet_in2(),
        "mp_desc": multipart(0, lambda m: m.put(b"\0" * 1056)),
        "mp_flow": multipart(1, _flow_stats_entry),
        "mp_aggregate": multipart(2, lambda m: m.put(b"\0" * 24)),
        "mp_table": multipart(3, lambda m: m.put(b"\0" * 48)),
        "mp_port_stats": multipart(4, lambda m: m.put(b"\0" * 112)),
        "mp_queue": multipart(5, lambda m: m.put(b"\0" * 40)),
        "mp_group": multipart(6, _group_stats),
        "mp_group_desc": multipart(7, _group_desc),
        "mp_group_features": multipart(8, lambda m: m.put(b"\0" * 40)),
        "mp_meter": multipart(9, _meter_stats),
        "mp_meter_config": multipart(10, _meter_config),
        "mp_meter_features": multipart(11, lambda m: m.put(b"\0" * 16)),
        "mp_table_features": multipart(12, _table_features),
        "mp_port_desc": multipart(13, _port_desc),
        "mp_experimenter": multipart(0xFFFF, lambda m: m.put(struct.pack("!II", 0x2320, 1))),
    }


def _port_desc_bytes() -> bytes:
    m = Msg()
    _port_desc(m)
    return bytes(m.buf)


def variants(name: str, msg: bytes, fields: list) -> list[tuple[str, bytes]]:
    """Each length field set to 0, to one below its minimum, and beyond what was sent."""
    out = []
    for off, width, minimum, label in fields:
        fmt = "!H" if width == 2 else "!B"
        cur = struct.unpack_from(fmt, msg, off)[0]
        limit = 0xFFFF if width == 2 else 0xFF
        values = {"0": 0, "below": minimum - 1 if minimum > 1 else None,
                  "beyond": min(limit, cur + (len(msg) - off) + 8)}
        for kind, value in values.items():
            if value is None or value == cur or value < 0:
                continue
            buf = bytearray(msg)
            struct.pack_into(fmt, buf, off, value)
            out.append((f"{name} {label} length {kind} ({value})", bytes(buf)))
    return out


def issue_shapes() -> list[tuple[str, bytes]]:
    """The shapes named in the issue (and some like them)."""
    hello_msg = bytearray(hello()[0])
    struct.pack_into("!H", hello_msg, 10, 0)  # hello element length 0
    flow = Flow(table=0, priority=10, match=Match(), cookie=1, actions=(Output(2),))
    fm = bytearray(ofwire.flow_mod(flow, ofwire.OFPFC_ADD, XID))
    fm0 = bytearray(fm)
    struct.pack_into("!H", fm0, 58, 0)  # FLOW_MOD instruction length 0 (match is 8 bytes at 48)
    fmu = bytearray(fm)
    struct.pack_into("!H", fmu, 56, 0x77)  # unknown instruction type
    mpf = bytearray(samples()["mp_flow"][0])
    inst_off = 16 + 48 + 16
    struct.pack_into("!H", mpf, inst_off + 2, 0)  # flow-stats reply instruction length 0
    gd = bytearray(samples()["mp_group_desc"][0])
    struct.pack_into("!H", gd, 16 + 8, 0)  # group-desc bucket length 0
    return [("HELLO with hello element length 0", bytes(hello_msg)),
            ("FLOW_MOD with instruction length 0", bytes(fm0)),
            ("FLOW_MOD with unknown instruction type", bytes(fmu)),
            ("flow-stats reply with instruction length 0", bytes(mpf)),
            ("group-desc reply with bucket length 0", bytes(gd)),
            ("unknown version 9", bytes([9]) + bytes(hello()[0][1:])),
            ("unknown type 99", struct.pack("!BBHI", 4, 99, 8, XID))]


def all_malformed() -> list[tuple[str, bytes]]:
    out = list(issue_shapes())
    for name, (msg, fields) in samples().items():
        out += variants(name, msg, fields)
    return out
