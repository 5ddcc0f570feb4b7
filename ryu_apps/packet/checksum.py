"""The Internet checksum (RFC 1071), the one every packet builder and parser here uses."""

from __future__ import annotations

import struct


def inet_checksum(data: bytes) -> int:
    """One's-complement sum of 16-bit words, complemented (0 when ``data`` includes a valid checksum)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
