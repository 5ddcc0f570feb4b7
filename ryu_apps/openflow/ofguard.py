"""A bounded structural check of every OpenFlow message before os-ken parses it.

os-ken's parsers walk nested lists (hello elements, instructions, actions,
buckets, bands, properties, queues...) by the length each element claims.  A
length of 0, or one that does not fit, makes several of them loop forever
(the CVE-2024-28732 / CVE-2024-34483..34489 family; os-ken 3.1.1 still loops
on some): one 16-byte message from any local process, or from a switch with a
bug, stops the whole controller.

:func:`check` walks a message the way os-ken would, but iteratively and
bounded: every loop advances by at least the minimal element size, and every
length is checked against the bytes that are really there.  It knows the
messages a switch sends (OpenFlow 1.3; HELLO and ERROR of any version, since
they arrive before version negotiation) and refuses everything else: unknown
versions and types, and controller-to-switch messages (FLOW_MOD and friends)
that a switch never sends.

:func:`install` puts the check in front of ``ofproto_parser.msg``, the one
function os-ken's receive loop (``Datapath._recv_loop``) calls for every
message of every version.  A refused message closes that connection only
(the rest of the buffer is dropped unparsed), is counted per switch and
message type (:func:`stats`, served in ``GET /v1/health`` as
``openflow_guard``) and logged in one line.  ERROR messages are also rate
limited per connection: a flood closes the connection the same way (errors
for the xids of a bundle the programmer is sending are not counted: a switch
refusing many of its adds is normal).
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque

LOG = logging.getLogger(__name__)

OFP_VERSION = 4
PARSED_VERSIONS = frozenset({1, 3, 4, 5, 6})  # versions os-ken has a parser for (1.0, 1.2-1.5)
NX_EXPERIMENTER_ID = 0x00002320
ONF_EXPERIMENTER_ID = 0x4F4E4600

#: ERROR messages per second per connection (token bucket), and the burst
ERROR_RATE, ERROR_BURST = 1000.0, 10000.0
MAX_DEPTH = 3  # nested actions (NX ct) deeper than this are refused

_HH = struct.Struct("!HH").unpack_from
_H = struct.Struct("!H").unpack_from
_I = struct.Struct("!I").unpack_from
_HEADER = struct.Struct("!BBHI").unpack_from


class Malformed(ValueError):
    """A message os-ken must not parse; the text says which field is wrong."""


TYPE_NAMES = {
    0: "HELLO", 1: "ERROR", 2: "ECHO_REQUEST", 3: "ECHO_REPLY", 4: "EXPERIMENTER",
    5: "FEATURES_REQUEST", 6: "FEATURES_REPLY", 7: "GET_CONFIG_REQUEST", 8: "GET_CONFIG_REPLY",
    9: "SET_CONFIG", 10: "PACKET_IN", 11: "FLOW_REMOVED", 12: "PORT_STATUS", 13: "PACKET_OUT",
    14: "FLOW_MOD", 15: "GROUP_MOD", 16: "PORT_MOD", 17: "TABLE_MOD", 18: "MULTIPART_REQUEST",
    19: "MULTIPART_REPLY", 20: "BARRIER_REQUEST", 21: "BARRIER_REPLY",
    22: "QUEUE_GET_CONFIG_REQUEST", 23: "QUEUE_GET_CONFIG_REPLY", 24: "ROLE_REQUEST",
    25: "ROLE_REPLY", 26: "GET_ASYNC_REQUEST", 27: "GET_ASYNC_REPLY", 28: "SET_ASYNC",
    29: "METER_MOD",
}
#: messages only a controller sends: a switch sending one is broken or not a switch
CONTROLLER_ONLY = frozenset({5, 7, 9, 13, 14, 15, 16, 17, 18, 20, 22, 24, 26, 28, 29})


def type_name(version: int, msg_type: int) -> str:
    name = TYPE_NAMES.get(msg_type, f"type{msg_type}")
    return name if version == OFP_VERSION else f"{name}(v{version})"


def _need(ok: bool, what) -> None:
    if not ok:
        raise Malformed(what() if callable(what) else what)


# -- elements ------------------------------------------------------------------


def _match(buf, off: int, end: int, where: str) -> int:
    """Check the ofp_match at ``off``; return the offset after its padding."""
    _need(end - off >= 4, f"{where}: match header truncated")
    mtype, mlen = _HH(buf, off)
    _need(mtype == 1, lambda: f"{where}: match type {mtype} is not OXM")
    _need(mlen >= 4, lambda: f"{where}: match length {mlen} < 4")
    padded = off + ((mlen + 7) & ~7)
    _need(padded <= end, lambda: f"{where}: match length {mlen} overruns its container ({end - off} bytes)")
    p, mend = off + 4, off + mlen
    while p < mend:  # advances >= 4
        _need(mend - p >= 4, f"{where}: OXM header truncated")
        hdr = _I(buf, p)[0]
        ln = hdr & 0xFF
        _need(p + 4 + ln <= mend, lambda: f"{where}: OXM {hdr:#010x} length {ln} overruns the match")
        if hdr >> 16 == 0xFFFF:
            _need(ln >= 4, lambda: f"{where}: experimenter OXM length {ln} < 4")
        elif hdr & 0x100:
            _need(ln >= 2 and ln % 2 == 0, lambda: f"{where}: masked OXM {hdr:#010x} length {ln} is odd")
        p += 4 + ln
    return padded


_ACTION_LEN = {0: 16, 11: 8, 12: 8, 15: 8, 16: 8, 17: 8, 18: 8, 19: 8, 20: 8, 21: 8, 22: 8,
               23: 8, 24: 8, 26: 8, 27: 8}
NXAST_LEARN, NXAST_CT, NXAST_CONTROLLER2 = 16, 35, 37
NXAC2PT_USERDATA = 3


def _actions(buf, off: int, end: int, where: str, depth: int = 0) -> None:
    while off < end:  # advances >= 8
        _need(end - off >= 8, lambda: f"{where}: action header truncated ({end - off} bytes left)")
        typ, ln = _HH(buf, off)
        _need(ln >= 8 and ln % 8 == 0, lambda: f"{where}: action type {typ} length {ln} (needs >= 8, multiple of 8)")
        _need(off + ln <= end, lambda: f"{where}: action type {typ} length {ln} overruns its list ({end - off} bytes)")
        if typ in _ACTION_LEN:
            _need(ln == _ACTION_LEN[typ], lambda: f"{where}: action type {typ} length {ln} != {_ACTION_LEN[typ]}")
        elif typ == 25:  # set_field: one OXM inside
            hdr = _I(buf, off + 4)[0]
            _need(8 + (hdr & 0xFF) <= ln, lambda: f"{where}: set_field OXM length {hdr & 0xFF} overruns the action")
        elif typ == 0xFFFF:
            if _I(buf, off + 4)[0] == NX_EXPERIMENTER_ID:
                _nx_action(buf, off, ln, where, depth)
        else:
            raise Malformed(f"{where}: unknown action type {typ}")
        off += ln


def _nx_action(buf, off: int, ln: int, where: str, depth: int) -> None:
    _need(ln >= 16, lambda: f"{where}: NX action length {ln} < 16")
    sub = _H(buf, off + 8)[0]
    if sub == NXAST_CT:  # nested actions after a 24-byte header
        _need(ln >= 24, lambda: f"{where}: NX ct action length {ln} < 24")
        _need(depth < MAX_DEPTH, f"{where}: actions nested deeper than {MAX_DEPTH}")
        _actions(buf, off + 24, off + ln, where + " ct", depth + 1)
    elif sub == NXAST_CONTROLLER2:
        # os-ken's walk: from 6 bytes after the subtype, header 4 + a size it computes
        base, blen, o = off + 10, ln - 10, 6
        while blen > o:  # advances >= 4 because every length >= 4
            _need(blen - o >= 4, f"{where}: controller2 property header truncated")
            ptype, plen = _HH(buf, base + o)
            _need(plen >= 4, lambda: f"{where}: controller2 property length {plen} < 4")
            size = 4
            if ptype == NXAC2PT_USERDATA:
                user = (plen - 4 + 3) // 4 * 4
                size = user + 4 if user > 4 and user % 8 == 0 else user
            o += 4 + size
    # learn specs always advance >= 2 bytes in os-ken; others are fixed structs


_INST_LEN = {1: 8, 2: 24, 6: 8}


def _instructions(buf, off: int, end: int, where: str) -> None:
    while off < end:  # advances >= 8
        _need(end - off >= 8, lambda: f"{where}: instruction header truncated ({end - off} bytes left)")
        typ, ln = _HH(buf, off)
        _need(ln >= 8 and ln % 8 == 0, lambda: f"{where}: instruction type {typ} length {ln} (needs >= 8, multiple of 8)")
        _need(off + ln <= end, lambda: f"{where}: instruction type {typ} length {ln} overruns its list ({end - off} bytes)")
        if typ in _INST_LEN:
            _need(ln == _INST_LEN[typ], lambda: f"{where}: instruction type {typ} length {ln} != {_INST_LEN[typ]}")
        elif typ in (3, 4, 5):
            _actions(buf, off + 8, off + ln, f"{where} instruction {typ}")
        else:
            raise Malformed(f"{where}: unknown instruction type {typ}")
        off += ln


def _props(buf, off: int, end: int, where: str, pad: int = 8) -> None:
    """A property list walked like os-ken's OFPPropBase.parse (step: length padded)."""
    while off < end:  # advances >= 8 (or to the end)
        _need(end - off >= 4, lambda: f"{where}: property header truncated ({end - off} bytes left)")
        ptype, plen = _HH(buf, off)
        _need(plen >= 4, lambda: f"{where}: property type {ptype} length {plen} < 4")
        _need(off + plen <= end, lambda: f"{where}: property type {ptype} length {plen} overruns ({end - off} bytes)")
        off += (plen + pad - 1) // pad * pad


def _id_list(buf, off: int, end: int, where: str) -> None:
    """Instruction/action ids of a table-features property: (type, len) steps."""
    while off < end:
        _need(end - off >= 4, f"{where}: id header truncated")
        typ, ln = _HH(buf, off)
        _need(ln >= 4, lambda: f"{where}: id type {typ} length {ln} < 4")
        _need(off + ln <= end, lambda: f"{where}: id type {typ} length {ln} overruns")
        off += ln


_TFPT_IDS = {0, 1, 4, 5, 6, 7}  # instructions(_miss), write/apply actions(_miss)


def _table_features_props(buf, off: int, end: int, where: str) -> None:
    while off < end:
        _need(end - off >= 4, lambda: f"{where}: property header truncated ({end - off} bytes left)")
        ptype, plen = _HH(buf, off)
        _need(plen >= 4, lambda: f"{where}: property type {ptype} length {plen} < 4")
        _need(off + plen <= end, lambda: f"{where}: property type {ptype} length {plen} overruns ({end - off} bytes)")
        if ptype in _TFPT_IDS:
            _id_list(buf, off + 4, off + plen, f"{where} property {ptype}")
        elif ptype in (0xFFFE, 0xFFFF):
            _need(plen >= 12, lambda: f"{where}: experimenter property length {plen} < 12")
        off += (plen + 7) // 8 * 8


# -- multipart bodies -------------------------------------------------------------


def _entries(buf, off: int, end: int, where: str, minimum: int, len_at: int = 0, body=None) -> None:
    """A list of entries each starting with (or holding at ``len_at``) its 16-bit length."""
    while off < end:  # advances >= minimum
        _need(end - off >= minimum, lambda: f"{where}: entry truncated ({end - off} bytes, needs {minimum})")
        ln = _H(buf, off + len_at)[0]
        _need(ln >= minimum, lambda: f"{where}: entry length {ln} < {minimum}")
        _need(off + ln <= end, lambda: f"{where}: entry length {ln} overruns the body ({end - off} bytes)")
        if body is not None:
            body(buf, off, off + ln, where)
        off += ln


def _fixed(size: int, single: bool):
    def check_(buf, off, end, where):
        n = end - off
        if single:
            _need(n == size, f"{where}: body is {n} bytes, expected {size}")
        else:
            _need(n % size == 0, f"{where}: body of {n} bytes is not a multiple of {size}")
    return check_


def _flow_stats(buf, off, end, where):
    def one(buf, s, e, w):
        after = _match(buf, s + 48, e, w)
        _instructions(buf, after, e, w)
    _entries(buf, off, end, where, 56, body=one)


def _group_desc(buf, off, end, where):
    def bucket(buf, s, e, w):
        _actions(buf, s + 16, e, w + " bucket")

    def one(buf, s, e, w):
        _entries(buf, s + 8, e, w + " buckets", 16, body=bucket)
    _entries(buf, off, end, where, 8, body=one)


def _meter_config(buf, off, end, where):
    def one(buf, s, e, w):
        _entries(buf, s + 8, e, w + " bands", 16, len_at=2)
    _entries(buf, off, end, where, 8, body=one)


def _table_features(buf, off, end, where):
    def one(buf, s, e, w):
        _table_features_props(buf, s + 64, e, w)
    _entries(buf, off, end, where, 64, body=one)


def _experimenter_mp(buf, off, end, where):
    n = end - off
    # os-ken steps through it 16 bytes at a time, re-slicing the rest each time
    _need(8 <= n <= 16, f"{where}: experimenter body of {n} bytes (accepted: 8..16)")


_MULTIPART = {
    0: ("desc", _fixed(1056, True)),
    1: ("flow", _flow_stats),
    2: ("aggregate", _fixed(24, True)),
    3: ("table", _fixed(24, False)),
    4: ("port_stats", _fixed(112, False)),
    5: ("queue", _fixed(40, False)),
    6: ("group", lambda b, o, e, w: _entries(b, o, e, w, 40)),
    7: ("group_desc", _group_desc),
    8: ("group_features", _fixed(40, True)),
    9: ("meter", lambda b, o, e, w: _entries(b, o, e, w, 40, len_at=4)),
    10: ("meter_config", _meter_config),
    11: ("meter_features", _fixed(16, True)),
    12: ("table_features", _table_features),
    13: ("port_desc", _fixed(64, False)),
    0xFFFF: ("experimenter", _experimenter_mp),
}


# -- messages ---------------------------------------------------------------------


def _hello(buf, n):
    off = 8
    while off < n:  # advances >= 4; os-ken steps by the element length, unpadded
        _need(n - off >= 4, f"HELLO: element header truncated ({n - off} bytes left)")
        typ, ln = _HH(buf, off)
        _need(ln >= 4, lambda: f"HELLO: element type {typ} length {ln} < 4")
        _need(off + ln <= n, lambda: f"HELLO: element type {typ} length {ln} overruns the message ({n - off} bytes)")
        off += ln


def _error(buf, n):
    _need(n >= 12, f"ERROR: length {n} < 12")
    etype = _H(buf, 8)[0]
    if etype == 0xFFFF:
        _need(n >= 16, f"ERROR: experimenter error length {n} < 16")
    elif etype == 0:  # HELLO_FAILED: os-ken's handler decodes the text as ASCII inside the receive loop
        _need(all(b < 0x80 for b in bytes(buf[12:n])), "ERROR: HELLO_FAILED text is not ASCII")


def _experimenter(buf, n):
    _need(n >= 16, f"EXPERIMENTER: length {n} < 16")
    exp, exp_type = struct.unpack_from("!II", buf, 8)
    if exp == ONF_EXPERIMENTER_ID and exp_type == 2300:  # bundle control (replies)
        _need(n >= 24, f"EXPERIMENTER: ONF bundle control length {n} < 24")
        _props(buf, 24, n, "ONF bundle control")
    elif exp == ONF_EXPERIMENTER_ID and exp_type == 2301:
        raise Malformed("EXPERIMENTER: ONF bundle add is never sent by a switch")
    elif exp == NX_EXPERIMENTER_ID and exp_type == 30:  # NXT_PACKET_IN2
        _props(buf, 16, n, "NXT_PACKET_IN2")
    elif exp == NX_EXPERIMENTER_ID and exp_type == 16:  # NXT_SET_PACKET_IN_FORMAT
        raise Malformed("EXPERIMENTER: NXT_SET_PACKET_IN_FORMAT is never sent by a switch")


def _exact(size, name):
    def check_(buf, n):
        _need(n == size, f"{name}: length {n}, expected {size}")
    return check_


def _packet_in(buf, n):
    _need(n >= 32, f"PACKET_IN: length {n} < 32")
    after = _match(buf, 24, n, "PACKET_IN")
    _need(after + 2 <= n, "PACKET_IN: no room for the 2 pad bytes after the match")


def _flow_removed(buf, n):
    _need(n >= 56, f"FLOW_REMOVED: length {n} < 56")
    _match(buf, 48, n, "FLOW_REMOVED")


def _multipart_reply(buf, n):
    _need(n >= 16, f"MULTIPART_REPLY: length {n} < 16")
    mp_type = _H(buf, 8)[0]
    entry = _MULTIPART.get(mp_type)
    _need(entry is not None, lambda: f"MULTIPART_REPLY: unknown body type {mp_type}")
    name, check_body = entry
    check_body(buf, 16, n, f"MULTIPART_REPLY {name}")


def _queue_config(buf, n):
    _need(n >= 16, f"QUEUE_GET_CONFIG_REPLY: length {n} < 16")

    def queue(buf, s, e, w):
        off = s + 16
        while off < e:  # advances >= 16
            _need(e - off >= 8, f"{w}: queue property header truncated")
            prop, ln = _HH(buf, off)
            _need(prop in (1, 2, 0xFFFF), lambda: f"{w}: unknown queue property {prop}")
            _need(ln >= 16, lambda: f"{w}: queue property {prop} length {ln} < 16")
            _need(off + ln <= e, lambda: f"{w}: queue property {prop} length {ln} overruns the queue")
            off += ln
    _entries(buf, 16, n, "QUEUE_GET_CONFIG_REPLY queue", 16, len_at=8, body=queue)


_CHECKS = {
    0: _hello, 1: _error, 2: lambda b, n: None, 3: lambda b, n: None, 4: _experimenter,
    6: _exact(32, "FEATURES_REPLY"), 8: _exact(12, "GET_CONFIG_REPLY"), 10: _packet_in,
    11: _flow_removed, 12: _exact(80, "PORT_STATUS"), 19: _multipart_reply,
    21: _exact(8, "BARRIER_REPLY"), 23: _queue_config, 25: _exact(24, "ROLE_REPLY"),
    27: _exact(32, "GET_ASYNC_REPLY"),
}


def check(buf) -> tuple[int, int]:
    """Check one whole message (``buf`` holds exactly it); return ``(version, type)``.

    Raises :class:`Malformed` naming the field that is wrong.  Bounded: every
    loop advances by at least its minimal element size.
    """
    n = len(buf)
    _need(n >= 8, f"message of {n} bytes is shorter than the OpenFlow header")
    version, msg_type, length, _xid = _HEADER(buf, 0)
    what = type_name(version, msg_type)
    _need(length >= 8, lambda: f"{what}: header length {length} < 8")
    _need(length == n, lambda: f"{what}: header length {length} but {n} bytes received")
    if version != OFP_VERSION:
        # before negotiation: HELLO (and an ERROR for a failed HELLO) have the same layout in all versions
        _need(version in PARSED_VERSIONS, lambda: f"{what}: unknown OpenFlow version {version}")
        _need(msg_type in (0, 1), lambda: f"{what}: only OpenFlow 1.3 is spoken here")
        _CHECKS[msg_type](buf, n)
        return version, msg_type
    if msg_type in CONTROLLER_ONLY:
        raise Malformed(f"{what}: a controller-to-switch message, never sent by a switch")
    fn = _CHECKS.get(msg_type)
    _need(fn is not None, lambda: f"unknown message type {msg_type}")
    fn(buf, n)
    return version, msg_type


# -- the hook in front of os-ken ----------------------------------------------------


class _Stats:
    """Refused messages: counts per switch (dpid, else peer host) and type, the last few."""

    MAX_KEYS = 256

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.total = 0
        self.error_floods = 0
        self.recent: deque = deque(maxlen=20)

    def add(self, who: str, what: str, peer, reason: str) -> None:
        self.total += 1
        key = f"{who}:{what}"
        if key not in self.counts and len(self.counts) >= self.MAX_KEYS:
            key = "other"
        self.counts[key] = self.counts.get(key, 0) + 1
        self.recent.append({"switch": who, "type": what, "peer": str(peer), "reason": reason[:200],
                            "at": round(time.time(), 3)})

    def json(self) -> dict:
        return {"refused": self.total, "error_floods": self.error_floods, "counts": dict(self.counts),
                "recent": list(self.recent)}


STATS = _Stats()
_installed = False


def stats() -> dict:
    return STATS.json()


def _who(datapath) -> str:
    dpid = getattr(datapath, "id", None)
    if dpid is not None:
        return f"dpid {dpid:#x}"
    addr = getattr(datapath, "address", None)
    return f"peer {addr[0]}" if isinstance(addr, tuple) and addr else f"peer {addr}"


class _ErrorBudget:
    __slots__ = ("tokens", "stamp")

    def __init__(self):
        self.tokens, self.stamp = ERROR_BURST, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(ERROR_BURST, self.tokens + (now - self.stamp) * ERROR_RATE)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def refuse(datapath, what: str, reason: str) -> None:
    """Count, log and close ``datapath``'s connection; later messages on it are dropped."""
    who = _who(datapath)
    STATS.add(who, what, getattr(datapath, "address", None), reason)
    LOG.warning("openflow guard: closing connection of %s (%s): malformed %s: %s",
                who, getattr(datapath, "address", None), what, reason)
    datapath._ofguard_refused = True
    try:
        datapath.close()  # DEAD_DISPATCHER: the receive loop ends after this buffer
    except Exception:  # noqa: BLE001 - closing must never raise into os-ken's loop
        LOG.exception("openflow guard: closing %s failed", who)


OFPT_ERROR, OFPT_MULTIPART_REPLY = 1, 19


def _never(datapath, xid: int) -> bool:
    return False


# Set by :func:`install` to the controller's own answers (the codec knows nothing of who sends):
#: is this multipart reply a dump someone parses with ofwire's bounded parsers already?
_awaited_dump = _never
#: is this error for an xid of a bundle being sent now (one per refused add is normal)?
_awaited_error = _never


def guarded(original):
    """``ofproto_parser.msg`` with :func:`check` in front of it."""

    def msg(datapath, version, msg_type, msg_len, xid, buf):
        if getattr(datapath, "_ofguard_refused", False):
            return None
        if msg_type == OFPT_MULTIPART_REPLY and version == 4 and _awaited_dump(datapath, xid):
            # a dump the programmer asked for: taken off the wire and parsed by ofwire's own bounded
            # parsers, never by os-ken, so the structural walk would only read 100k flows twice
            return original(datapath, version, msg_type, msg_len, xid, buf)
        try:
            check(buf)
        except Malformed as exc:
            refuse(datapath, type_name(version, msg_type), str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a bug in the check must not admit the message
            refuse(datapath, type_name(version, msg_type), f"guard error {type(exc).__name__}: {exc}")
            return None
        if msg_type == OFPT_ERROR and not _awaited_error(datapath, xid):
            budget = getattr(datapath, "_ofguard_errors", None)
            if budget is None:
                budget = datapath._ofguard_errors = _ErrorBudget()
            if not budget.take():
                STATS.error_floods += 1
                refuse(datapath, type_name(version, msg_type),
                       f"error flood: more than {ERROR_BURST:.0f} at {ERROR_RATE:.0f}/s")
                return None
        return original(datapath, version, msg_type, msg_len, xid, buf)

    msg.ofguard_original = original
    return msg


def set_awaited(awaited_dump=_never, awaited_error=_never) -> None:
    """Tell the guard which replies its caller takes off the wire itself (see :func:`install`)."""
    global _awaited_dump, _awaited_error
    _awaited_dump, _awaited_error = awaited_dump, awaited_error


def install(awaited_dump=_never, awaited_error=_never) -> None:
    """Put :func:`check` in front of os-ken's message parser (idempotent).

    ``awaited_dump(datapath, xid)`` and ``awaited_error(datapath, xid)`` say which replies
    the caller takes off the wire itself (the programmer's dumps and bundle errors).
    """
    global _installed
    set_awaited(awaited_dump, awaited_error)
    if _installed:
        return
    from os_ken.ofproto import ofproto_parser
    ofproto_parser.msg = guarded(ofproto_parser.msg)
    _installed = True
