"""Following NVMe/TCP connections the fabric has not admitted yet, up to their Connect (pure).

The zone table sends every segment of a connection to a listener that has no
admitted flow pair to the controller, both directions.  :class:`Follower`
keeps one :class:`Pending` record per connection and, per segment, says what
to do with it (:class:`Step`):

* the handshake, pure ACKs, the target's answers and the host's ICReq
  (stream bytes 0-127) are *passed* at once: they reach nothing but the
  target's NVMe/TCP layer, which needs them to answer the ICReq;
* every host segment carrying a byte past the ICReq is *held*: the Connect
  capsule is among them and must not reach the target before the decision;
* the host's bytes are put in order (out-of-order segments wait, bounded;
  retransmissions of held bytes are dropped, of passed bytes passed again),
  so a Connect split over many segments, or sharing one with the ICReq, reads
  the same; once the capsule is whole, :func:`~ryu_apps.functions.nvme_zoning.pdu.parse_connect`
  reads HOSTNQN, SUBNQN and QID and the step says ``connect``.

The caller (the app) decides and calls :meth:`Follower.admit` (the held
segments come back in stream order, to be released) or
:meth:`Follower.refuse` (the resets for both ends come back).  Anything
malformed, too big or too slow is refused with a reason: the follower never
waits on the wire.  Time is passed in; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ryu_apps.functions.nvme_zoning import pdu
from ryu_apps.functions.nvme_zoning.segment import ACK, FIN, PSH, RST, SYN, Segment, reply

#: the ICReq is the first 128 bytes of the host's stream
ICREQ_BYTES = pdu.HEADER_LEN[pdu.ICREQ]
#: the largest Connect capsule read: header, digest, SQE, 1024 bytes of data, digest (and slack)
CONNECT_MAX = 2048
#: pieces of the host's stream kept after a gap (each out-of-order segment is one)
MAX_PIECES = 2048
#: payload of each segment a released stream is cut into (below any MSS the lab's links give)
SEGMENT_BYTES = 1200
#: the ICReq's common header: type 0, flags 0, hlen 128, pdo 0, plen 128
ICREQ_HEADER = bytes([pdu.ICREQ, 0, ICREQ_BYTES, 0]) + ICREQ_BYTES.to_bytes(4, "little")
#: a TLS record's first bytes (handshake, version 3.x): NVMe/TCP TLS (TP 8011) starts with a ClientHello
TLS_HANDSHAKE = 0x16


@dataclass
class Pending:
    """One connection to a listener, from the host's SYN to the decision."""

    key: tuple[str, int, str, int]       # host address, host port, listener address, listener port
    started: float
    switch: str                          # the host's edge switch and port (where its segments were punted)
    in_port: int
    base: int                            # sequence number of the host's stream byte 0 (its ISN + 1)
    template: bytes                      # the host's last frame (headers only matter): resets are built from it
    tseg: Segment                        # its parse
    stream: bytearray = field(default_factory=bytearray)   # the host's bytes, in order, from 0
    early: dict[int, bytes] = field(default_factory=dict)   # offset -> bytes that came before a gap
    host_ack: int | None = None          # the last ACK number the host sent (its rcv_nxt)
    target_next: int | None = None       # the target's next sequence number (after its last byte)
    tls: bool = False
    connect: pdu.Connect | None = None

    @property
    def host_next(self) -> int:
        return (self.base + len(self.stream)) & 0xFFFFFFFF

    @property
    def held_from(self) -> int:
        """The first stream byte not passed: the ICReq passes as it comes, a TLS stream not at all."""
        return 0 if self.tls else min(len(self.stream), ICREQ_BYTES)

    @property
    def held_bytes(self) -> int:
        return len(self.stream) - self.held_from + sum(len(b) for b in self.early.values())


@dataclass(frozen=True)
class Step:
    """What to do with one punted segment.

    ``action``: ``pass`` (release it now), ``hold`` (keep it; the follower has it),
    ``drop`` (say nothing), ``connect`` (held; the Connect is whole: decide),
    ``tls`` (held; a TLS ClientHello: decide by policy), ``refuse`` (the
    connection is refused: send ``resets``), ``end`` (passed; the connection
    ended before a decision).
    """

    action: str
    pending: Pending | None = None
    why: str = ""
    resets: tuple[tuple[str, int, bytes, bool], ...] = ()   # (switch, port, frame, through the pipeline)


class Follower:
    """Every pending connection of one fabric; bounded per host and per switch."""

    def __init__(self, held_bytes: int = 16384, pending_per_host: int = 64, pending_per_switch: int = 4096,
                 connect_timeout_s: float = 5.0):
        self.held_limit, self.per_host, self.per_switch = held_bytes, pending_per_host, pending_per_switch
        self.timeout = connect_timeout_s
        self.pending: dict[tuple[str, int, str, int], Pending] = {}
        self._by_host: dict[str, int] = {}
        self._by_switch: dict[str, int] = {}

    def configure(self, held_bytes: int, pending_per_host: int, pending_per_switch: int,
                  connect_timeout_s: float) -> None:
        self.held_limit, self.per_host, self.per_switch = held_bytes, pending_per_host, pending_per_switch
        self.timeout = connect_timeout_s

    # -- bookkeeping -----------------------------------------------------------------
    def _add(self, p: Pending) -> None:
        self.pending[p.key] = p
        self._by_host[p.key[0]] = self._by_host.get(p.key[0], 0) + 1
        self._by_switch[p.switch] = self._by_switch.get(p.switch, 0) + 1

    def forget(self, key) -> Pending | None:
        """Drop ``key``'s record (decided or ended); its held segments go with it."""
        p = self.pending.pop(key, None)
        if p is not None:
            for d, k in ((self._by_host, p.key[0]), (self._by_switch, p.switch)):
                d[k] -= 1
                if not d[k]:
                    del d[k]
        return p

    # -- the host's segments ------------------------------------------------------------
    def from_host(self, seg: Segment, frame: bytes, switch: str, in_port: int, now: float) -> Step:
        """A host -> listener segment punted at the host's edge."""
        key = seg.key
        p = self.pending.get(key)
        if seg.has(SYN) and not seg.has(ACK):
            if p is not None:
                if p.base == (seg.seq + 1) & 0xFFFFFFFF:
                    return Step("pass", p)           # the SYN again (our SYN-ACK was lost)
                self.forget(key)                     # a new connection on the same ports
            if self._by_host.get(key[0], 0) >= self.per_host:
                return self._refuse_new(seg, frame, switch, in_port,
                                        f"{key[0]} has {self.per_host} connections waiting for their Connect")
            if self._by_switch.get(switch, 0) >= self.per_switch:
                return self._refuse_new(seg, frame, switch, in_port,
                                        f"{switch} has {self.per_switch} connections waiting for their Connect")
            if seg.payload:
                return self._refuse_new(seg, frame, switch, in_port, "data on a SYN (TCP Fast Open) is not read")
            p = Pending(key, now, switch, in_port, (seg.seq + 1) & 0xFFFFFFFF, frame, seg)
            self._add(p)
            return Step("pass", p)
        if p is None:
            return Step("unknown")
        if (switch, in_port) != (p.switch, p.in_port):
            return Step("drop", p, f"a segment of {_name(key)} from {switch}:{in_port}, not the host's port")
        if seg.has(RST):
            self.forget(key)
            return Step("end", p, "the host reset the connection")
        p.template, p.tseg = frame, seg
        if seg.has(ACK):
            p.host_ack = seg.ack
        if not seg.payload:
            if seg.has(FIN):
                self.forget(key)
                return Step("end", p, "the host closed the connection before its Connect")
            return Step("pass", p)
        off = (seg.seq - p.base) & 0xFFFFFFFF
        if off >= 0x80000000:
            return Step("drop", p, "bytes from before the connection's start")
        end = off + len(seg.payload)
        if end <= len(p.stream):  # every byte seen before: a retransmission
            if end <= ICREQ_BYTES and not p.tls:
                return Step("pass", p)            # of the ICReq (the target may have lost it)
            return Step("drop", p, "a retransmission of held bytes")     # the first copy is held
        if end > ICREQ_BYTES + CONNECT_MAX:
            return self.refuse(p, f"more than {ICREQ_BYTES + CONNECT_MAX} bytes before a complete Connect")
        if off > len(p.stream) and (p.held_bytes + len(seg.payload) > self.held_limit
                                    or len(p.early) >= MAX_PIECES):
            return self.refuse(p, "too many bytes out of order")
        self._take(p, off, seg.payload)
        why = self._check(p)
        if why:
            return self.refuse(p, why)
        if end <= ICREQ_BYTES and not p.tls:
            return Step("pass", p)                # the ICReq, checked as far as it has come
        if p.held_bytes > self.held_limit:
            return self.refuse(p, f"more than {self.held_limit} bytes held before a complete Connect")
        # held: as bytes of the stream, not as frames (a Connect in 1-byte segments costs its
        # bytes only; it is released as one segment)
        if p.tls:
            return Step("tls", p)
        return Step("connect" if p.connect is not None else "hold", p)

    def _take(self, p: Pending, off: int, data: bytes) -> None:
        """Put ``data`` at stream offset ``off``: appended when it continues the stream, kept for later
        when it comes after a gap, then whatever it completes."""
        if off > len(p.stream):
            p.early[off] = data
            return
        p.stream += data[len(p.stream) - off:]
        while p.early:
            nxt = min(p.early)
            if nxt > len(p.stream):
                break
            chunk = p.early.pop(nxt)
            p.stream += chunk[len(p.stream) - nxt:] if nxt + len(chunk) > len(p.stream) else b""

    def _check(self, p: Pending) -> str:
        """Read what the stream holds so far: why it is refused, or ''."""
        s = p.stream
        if not s or p.connect is not None:
            return ""
        if s[0] == TLS_HANDSHAKE:  # decided by the first byte: nothing of it passes unread
            p.tls = True
            return "neither an ICReq nor a TLS record" if len(s) >= 2 and s[1] != 0x03 else ""
        # the ICReq's common header is fixed (type 0, no flags, hlen 128, pdo 0, plen 128): checked
        # byte by byte, so not even its first bytes pass when they are something else
        n = min(len(s), 8)
        if bytes(s[:n]) != ICREQ_HEADER[:n]:
            return f"the first PDU does not start like an ICReq ({bytes(s[:n]).hex()})"
        if len(s) < ICREQ_BYTES + 8:
            return ""
        try:
            h = pdu.parse_header(bytes(s[ICREQ_BYTES:ICREQ_BYTES + 8]))
        except pdu.BadPDU as exc:
            return f"the PDU after the ICReq: {exc}"
        if h.type != pdu.CAPSULE_CMD:
            return f"the PDU after the ICReq is type {h.type}, not a command capsule (the Connect)"
        if h.plen > CONNECT_MAX:
            return f"a command capsule of {h.plen} bytes is not a Connect (at most {CONNECT_MAX})"
        if len(s) < ICREQ_BYTES + h.plen:
            return ""
        try:
            p.connect = pdu.parse_connect(bytes(s[ICREQ_BYTES:ICREQ_BYTES + h.plen]))
        except pdu.BadPDU as exc:
            return f"the first command is not a valid Connect: {exc}"
        if len(s) > ICREQ_BYTES + h.plen:
            # a host waits for the Connect's answer before its next command: bytes after it are not read
            return "bytes after the Connect before its answer"
        return ""

    # -- the target's segments -----------------------------------------------------------
    def from_target(self, seg: Segment) -> Step:
        """A listener -> host segment punted at the target's edge (its SYN-ACK, ICResp, ACKs)."""
        host_key = (seg.dst, seg.dport, seg.src, seg.sport)
        p = self.pending.get(host_key)
        if p is None:
            return Step("unknown")
        nxt = seg.seq + len(seg.payload) + (1 if seg.flags & (SYN | FIN) else 0)
        p.target_next = nxt & 0xFFFFFFFF
        if seg.has(RST):
            self.forget(host_key)
            return Step("end", p, "the target reset the connection")
        return Step("pass", p)

    # -- decisions -------------------------------------------------------------------------
    def admit(self, p: Pending) -> list[bytes]:
        """The connection is admitted: the held bytes as segments (in order, at most
        :data:`SEGMENT_BYTES` each, built on the host's last frame) to release; the record goes."""
        self.forget(p.key)
        held = bytes(p.stream[p.held_from:])
        ack = p.host_ack if p.host_ack is not None else p.tseg.ack
        return [reply(p.template, p.tseg, seq=p.base + p.held_from + i, ack=ack, flags=PSH | ACK,
                      payload=held[i:i + SEGMENT_BYTES]) for i in range(0, len(held), SEGMENT_BYTES)]

    def refuse(self, p: Pending, why: str) -> Step:
        """Refused: the held segments are dropped; a reset for the target (as if from the host, through
        the pipeline at the host's edge, at the first byte it has not received) and one for the host
        (straight out of its port, at the byte it expects next)."""
        self.forget(p.key)
        seg = p.tseg
        to_target = reply(p.template, seg, seq=p.base + p.held_from, ack=p.target_next or seg.ack, flags=RST | ACK)
        host_seq = p.target_next if p.target_next is not None else p.host_ack
        resets = [(p.switch, p.in_port, to_target, True)]
        if host_seq is not None:
            to_host = reply(p.template, seg, seq=host_seq, ack=p.host_next, flags=RST | ACK, reverse=True)
            resets.append((p.switch, p.in_port, to_host, False))
        return Step("refuse", p, why, tuple(resets))

    def _refuse_new(self, seg: Segment, frame: bytes, switch: str, in_port: int, why: str) -> Step:
        """A SYN refused before the target saw it: only the host gets a reset (RST|ACK of its SYN)."""
        to_host = reply(frame, seg, seq=0, ack=seg.seq + 1 + len(seg.payload), flags=RST | ACK, reverse=True)
        return Step("refuse", None, why, ((switch, in_port, to_host, False),))

    def expired(self, now: float) -> list[Pending]:
        """Connections past the Connect timeout (still pending: the caller refuses them)."""
        return [p for p in self.pending.values() if now - p.started > self.timeout]


def _name(key) -> str:
    return f"{key[0]}:{key[1]} -> {key[2]}:{key[3]}"


def reset_sender(seg: Segment, frame: bytes) -> bytes:
    """A reset for whoever sent ``seg`` (at the sequence number it expects next), to go straight
    back out of the port ``frame`` came in on."""
    nxt = seg.seq + len(seg.payload) + (1 if seg.flags & (SYN | FIN) else 0)
    if seg.has(ACK):
        return reply(frame, seg, seq=seg.ack, ack=nxt, flags=RST | ACK, reverse=True)
    return reply(frame, seg, seq=0, ack=nxt, flags=RST | ACK, reverse=True)
