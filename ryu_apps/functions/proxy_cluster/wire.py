"""Proxy clusters on the wire: the agent's heartbeat datagram (standard library only: the agent imports it).

``PCHB1 <ok> <seq> <conns> <servers> <version> <why>``: ASCII, space separated,
at most :data:`MAX_BYTES`, in a UDP datagram from the proxy's own address to
its gateway, port :data:`HEARTBEAT_PORT`.  ``ok`` is 1 when HAProxy answered
its monitor-uri, ``conns`` the client connections established to the VIP on
the node (a drain is complete at 0), ``servers`` how many servers HAProxy's
checks find up, ``version`` the config version the agent runs, ``why`` (``-``
when empty) what is wrong.  The parsers are bounded and never trust a length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: UDP port of heartbeats (agent -> its gateway; never leaves the proxy's edge switch)
HEARTBEAT_PORT = 7700
UDP = 17
MAGIC = b"PCHB1"
#: the longest datagram: magic, 6 separators, seq (10), conns (9), servers (6), version and why (64 each)
MAX_BYTES = 170
#: ``why`` of a heartbeat whose HAProxy exited (the proxy leaves the hash at once, not after ``fall``)
WHY_EXITED = "haproxy-exited"
_FIELD = re.compile(rb"[A-Za-z0-9._:/-]{0,64}")


class BadHeartbeat(ValueError):
    """A punted datagram that is not a heartbeat this module wrote."""


@dataclass(frozen=True)
class Heartbeat:
    """What an agent says every interval."""

    ok: bool
    version: str = ""
    seq: int = 0
    why: str = ""
    conns: int = 0
    servers: int = 0

    def encode(self) -> bytes:
        """``PCHB1 <ok> <seq> <conns> <servers> <version> <why>``: ASCII, at most :data:`MAX_BYTES`."""
        why, version = (re.sub(r"[^A-Za-z0-9._:/-]", "_", v)[:64] for v in (self.why, self.version))
        return b" ".join((MAGIC, b"1" if self.ok else b"0", str(self.seq & 0xFFFFFFFF).encode(),
                          str(min(self.conns, 10**9 - 1)).encode(), str(min(self.servers, 10**6 - 1)).encode(),
                          version.encode() or b"-", why.encode() or b"-"))


def parse_payload(data: bytes) -> Heartbeat:
    """The heartbeat in a UDP payload, or BadHeartbeat naming what is wrong."""
    if len(data) > MAX_BYTES:
        raise BadHeartbeat(f"{len(data)} bytes (at most {MAX_BYTES})")
    parts = data.split(b" ")
    if len(parts) != 7 or parts[0] != MAGIC:
        raise BadHeartbeat("not a PCHB1 heartbeat")
    _, ok, seq, conns, servers, version, why = parts
    if ok not in (b"0", b"1") or not all(f.isdigit() and len(f) <= n for f, n in ((seq, 10), (conns, 9), (servers, 6))):
        raise BadHeartbeat("bad ok, seq, conns or servers field")
    if not (_FIELD.fullmatch(version) and _FIELD.fullmatch(why)):
        raise BadHeartbeat("bad version or why field")
    dash = lambda b: "" if b == b"-" else b.decode()  # noqa: E731
    return Heartbeat(ok == b"1", dash(version), int(seq), dash(why), int(conns), int(servers))


def parse_frame(frame: bytes) -> Heartbeat:
    """The heartbeat in a punted Ethernet frame (IPv4, UDP to :data:`HEARTBEAT_PORT`); bounded."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00":
        raise BadHeartbeat("not an untagged IPv4 frame")
    ihl = (frame[14] & 0x0F) * 4
    if frame[14] >> 4 != 4 or ihl < 20 or frame[23] != UDP or len(frame) < 14 + ihl + 8:
        raise BadHeartbeat("not IPv4/UDP")
    udp = 14 + ihl
    if int.from_bytes(frame[udp + 2:udp + 4], "big") != HEARTBEAT_PORT:
        raise BadHeartbeat("not to the heartbeat port")
    length = int.from_bytes(frame[udp + 4:udp + 6], "big")
    if length < 8 or udp + length > len(frame):
        raise BadHeartbeat("UDP length runs past the frame (truncated punt?)")
    return parse_payload(frame[udp + 8:udp + length])
