"""A pure-data model of OpenFlow 1.3 flows, groups and meters.

Everything here is frozen and hashable and holds no os-ken object, so the
desired state of a switch can be built, compared, hashed, diffed and pickled
cheaply.  :mod:`ryu_apps.openflow.ofwire` turns these objects into OpenFlow 1.3
wire bytes (and back).

Canonical forms
---------------
Two objects that mean the same thing to Open vSwitch compare equal and encode
to the same bytes:

* :class:`Match` normalises every value (MACs lower-case, IP addresses in
  :mod:`ipaddress` compressed form, ``value &= mask``, an all-ones mask means
  "no mask", an all-zeros mask means "no match on that field") and keeps its
  fields in one canonical order: OpenFlow-basic fields first by field number,
  then Nicira NXM_0, then NXM_1 fields.  That order puts every prerequisite
  before the fields that need it, which Open vSwitch requires (it checks
  prerequisites entry by entry while it parses a match, see ``nx_pull_raw``).
  Narrow fields follow OVS: a ``vlan_vid`` mask is clipped to 13 bits and
  ``0x1fff`` means exact; an ``ipv6_flabel`` mask covering its 20 bits means
  exact; ``ct_state`` is 8 bits and always carries a mask (``0x22`` is
  stored, encoded and echoed as ``0x22/0xff``).
* Prerequisites are checked when a :class:`Match` or :class:`Flow` is built
  (match fields, and set_field / move / dec_ttl / pop_vlan / ct against the
  match), so a flow that OVS would reject with BAD_PREREQ or
  MATCH_INCONSISTENT raises ``ValueError`` here instead.
* :class:`Group`: a ``select`` bucket built without a weight gets weight 1
  (what ``ovs-ofctl`` does); an explicit weight, 0 included, is kept exactly,
  so a group read from a switch (where weight 0 means "never picked") decodes,
  compares and encodes as the switch holds it.
* :class:`Meter`: ``burst`` is set whenever a band has a burst size.

All of this was checked against Open vSwitch 3.1 (flows/groups/meters
programmed with :mod:`ofwire` and read back byte-identical).

Field names are os-ken's OXM names (``ipv4_dst``, ``tcp_src``, ``reg0``,
``nw_ttl`` ...).  ``str(flow)`` gives the ``ovs-ofctl add-flow`` syntax of a
flow, using ovs-ofctl's field names.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

# ---------------------------------------------------------------------------
# OpenFlow 1.3 constants
# ---------------------------------------------------------------------------

OFPP_MAX = 0xFFFFFF00
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9
OFPP_NORMAL = 0xFFFFFFFA
OFPP_FLOOD = 0xFFFFFFFB
OFPP_ALL = 0xFFFFFFFC
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
OFPP_ANY = 0xFFFFFFFF

OFPG_MAX = 0xFFFFFF00
OFPG_ALL = 0xFFFFFFFC
OFPG_ANY = 0xFFFFFFFF

OFPM_MAX = 0xFFFF0000

OFPCML_MAX = 0xFFE5
OFPCML_NO_BUFFER = 0xFFFF

OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000

OFPTT_MAX = 0xFE
OFPTT_ALL = 0xFF

# ofp_flow_mod_flags
OFPFF_SEND_FLOW_REM = 1 << 0
OFPFF_CHECK_OVERLAP = 1 << 1
OFPFF_RESET_COUNTS = 1 << 2
OFPFF_NO_PKT_COUNTS = 1 << 3
OFPFF_NO_BYT_COUNTS = 1 << 4

# ofp_meter_flags
OFPMF_KBPS = 1 << 0
OFPMF_PKTPS = 1 << 1
OFPMF_BURST = 1 << 2
OFPMF_STATS = 1 << 3

# ofp_group_type
GROUP_TYPES = {"all": 0, "select": 1, "indirect": 2, "ff": 3}
GROUP_TYPE_NAMES = {v: k for k, v in GROUP_TYPES.items()}

# OXM classes
OFPXMC_NXM_0 = 0x0000
OFPXMC_NXM_1 = 0x0001
OFPXMC_OPENFLOW_BASIC = 0x8000
OFPXMC_ERICOXM_OF = 0x1000  # OVS extract-ofp-fields: "ERICOXM_OF_" is class 0x1000

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_RARP = 0x8035
ETH_TYPE_IPV6 = 0x86DD

_RESERVED_PORT_NAMES = {
    OFPP_IN_PORT: "IN_PORT",
    OFPP_TABLE: "TABLE",
    OFPP_NORMAL: "NORMAL",
    OFPP_FLOOD: "FLOOD",
    OFPP_ALL: "ALL",
    OFPP_CONTROLLER: "CONTROLLER",
    OFPP_LOCAL: "LOCAL",
    OFPP_ANY: "ANY",
}

_FLAG_NAMES = (
    (OFPFF_SEND_FLOW_REM, "send_flow_rem"),
    (OFPFF_CHECK_OVERLAP, "check_overlap"),
    (OFPFF_RESET_COUNTS, "reset_counts"),
    (OFPFF_NO_PKT_COUNTS, "no_packet_counts"),
    (OFPFF_NO_BYT_COUNTS, "no_byte_counts"),
)


def port_name(port: int) -> str:
    """ovs-ofctl spelling of an OpenFlow 1.3 port number."""
    return _RESERVED_PORT_NAMES.get(port, str(port))


# ---------------------------------------------------------------------------
# Match fields
# ---------------------------------------------------------------------------

class FieldSpec(NamedTuple):
    """Everything known about one match/set-field field."""

    name: str            # os-ken OXM name
    oxm_class: int       # OXM class used in matches and set_field (as OVS echoes it, OF1.3)
    oxm_field: int
    nbytes: int
    kind: str            # 'int' | 'mac' | 'ipv4' | 'ipv6'
    maskable: bool
    ofctl: str           # ovs-ofctl field name
    writable: bool       # may be the target of set_field / move
    move_class: int      # header OVS uses for this field in NXAST_REG_MOVE
    move_field: int
    max_value: int       # largest valid (unmasked) value
    full_mask: int       # a mask covering these bits means "no mask" (OVS mf_set())
    clip_mask: bool      # OVS stores mask & full_mask (vlan_vid), else the mask as given
    always_mask: bool    # OVS always reports a mask (ct_state: exact = mask 0xff)
    hex: bool            # format as hex in ovs-ofctl strings
    move_bits: int       # width of the field as a NXAST_REG_MOVE source/destination
    ofctl_move: str      # ovs-ofctl name in move:/set_field: (in_port_oxm for in_port)
    #: experimenter OXM (class 0xFFFF): the experimenter id that follows the header (0: none)
    experimenter: int = 0

    @property
    def bits(self) -> int:
        return self.nbytes * 8

    @property
    def order(self) -> tuple[int, int, int]:
        """Canonical OXM order: OpenFlow basic first, then NXM_0, NXM_1."""
        return (0 if self.oxm_class == OFPXMC_OPENFLOW_BASIC else 1, self.oxm_class, self.oxm_field)


def _spec(name, cls, num, nbytes, kind, maskable, ofctl, *, writable=True, move=None, max_value=None,
          full_mask=None, clip_mask=False, always_mask=False, hex_=False, move_bits=None,
          ofctl_move=None, experimenter=0) -> FieldSpec:
    all_ones = (1 << (nbytes * 8)) - 1
    mcls, mnum = move if move is not None else (cls, num)
    return FieldSpec(name, cls, num, nbytes, kind, maskable, ofctl, writable, mcls, mnum,
                     all_ones if max_value is None else max_value,
                     all_ones if full_mask is None else full_mask, clip_mask, always_mask, hex_,
                     nbytes * 8 if move_bits is None else move_bits, ofctl_move or ofctl, experimenter)


_B = OFPXMC_OPENFLOW_BASIC
_N0 = OFPXMC_NXM_0
_N1 = OFPXMC_NXM_1
_ERIC = OFPXMC_ERICOXM_OF
_EXP = 0xFFFF                   # OFPXMC_EXPERIMENTER
ONF_EXPERIMENTER = 0x4F4E4600   # ONF_EXPERIMENTER_ID ("ONF\0")

_FIELD_LIST = [
    # name, class, field, bytes, kind, maskable, ovs-ofctl name
    # set_field:in_port is sent as 16-bit NXM_OF_IN_PORT (OVS rejects the OXM one), see ofwire.
    _spec("in_port", _B, 0, 4, "int", False, "in_port", ofctl_move="in_port_oxm"),
    _spec("metadata", _B, 2, 8, "int", True, "metadata", hex_=True),
    _spec("eth_dst", _B, 3, 6, "mac", True, "eth_dst", move=(_N0, 1)),
    _spec("eth_src", _B, 4, 6, "mac", True, "eth_src", move=(_N0, 2)),
    _spec("eth_type", _B, 5, 2, "int", False, "dl_type", writable=False, move=(_N0, 3), hex_=True),
    _spec("vlan_vid", _B, 6, 2, "int", True, "vlan_vid", max_value=0x1FFF, full_mask=0x1FFF, clip_mask=True,
          hex_=True, move_bits=12),
    _spec("vlan_pcp", _B, 7, 1, "int", False, "vlan_pcp", max_value=7, move_bits=3),
    _spec("ip_dscp", _B, 8, 1, "int", False, "ip_dscp", max_value=63, move_bits=6),
    _spec("ip_ecn", _B, 9, 1, "int", False, "nw_ecn", max_value=3, move=(_N1, 28), move_bits=2),
    _spec("ip_proto", _B, 10, 1, "int", False, "nw_proto", writable=False, move=(_N0, 6)),
    _spec("ipv4_src", _B, 11, 4, "ipv4", True, "nw_src", move=(_N0, 7)),
    _spec("ipv4_dst", _B, 12, 4, "ipv4", True, "nw_dst", move=(_N0, 8)),
    _spec("tcp_src", _B, 13, 2, "int", True, "tcp_src", move=(_N0, 9)),
    _spec("tcp_dst", _B, 14, 2, "int", True, "tcp_dst", move=(_N0, 10)),
    _spec("udp_src", _B, 15, 2, "int", True, "udp_src", move=(_N0, 11)),
    _spec("udp_dst", _B, 16, 2, "int", True, "udp_dst", move=(_N0, 12)),
    _spec("icmpv4_type", _B, 19, 1, "int", False, "icmp_type", move=(_N0, 13)),
    _spec("icmpv4_code", _B, 20, 1, "int", False, "icmp_code", move=(_N0, 14)),
    _spec("arp_op", _B, 21, 2, "int", False, "arp_op", move=(_N0, 15)),
    _spec("arp_spa", _B, 22, 4, "ipv4", True, "arp_spa", move=(_N0, 16)),
    _spec("arp_tpa", _B, 23, 4, "ipv4", True, "arp_tpa", move=(_N0, 17)),
    _spec("arp_sha", _B, 24, 6, "mac", True, "arp_sha", move=(_N1, 17)),
    _spec("arp_tha", _B, 25, 6, "mac", True, "arp_tha", move=(_N1, 18)),
    _spec("ipv6_src", _B, 26, 16, "ipv6", True, "ipv6_src", move=(_N1, 19)),
    _spec("ipv6_dst", _B, 27, 16, "ipv6", True, "ipv6_dst", move=(_N1, 20)),
    _spec("ipv6_flabel", _B, 28, 4, "int", True, "ipv6_label", max_value=0xFFFFF, full_mask=0xFFFFF,
          move=(_N1, 27), hex_=True, move_bits=20),
    _spec("icmpv6_type", _B, 29, 1, "int", False, "icmpv6_type", move=(_N1, 21)),
    _spec("icmpv6_code", _B, 30, 1, "int", False, "icmpv6_code", move=(_N1, 22)),
    _spec("ipv6_nd_target", _B, 31, 16, "ipv6", True, "nd_target", move=(_N1, 23)),
    _spec("ipv6_nd_sll", _B, 32, 6, "mac", True, "nd_sll", move=(_N1, 24)),
    _spec("ipv6_nd_tll", _B, 33, 6, "mac", True, "nd_tll", move=(_N1, 25)),
    _spec("tunnel_id", _B, 38, 8, "int", True, "tun_id", move=(_N1, 16), hex_=True),
    # Ericsson extensions OVS has had since 2.11: with them a switch turns a neighbour
    # solicitation into an advertisement by itself (flags word, option type SLL -> TLL)
    _spec("nd_reserved", _ERIC, 1, 4, "int", False, "nd_reserved"),
    _spec("nd_options_type", _ERIC, 2, 1, "int", False, "nd_options_type"),
    # Nicira extensions (os-ken names, see os_ken/ofproto/nicira_ext.py)
    *[_spec(f"reg{i}", _N1, i, 4, "int", True, f"reg{i}", hex_=True) for i in range(8)],
    _spec("nw_ttl", _N1, 29, 1, "int", False, "nw_ttl"),
    # TCP flags (12 bits), matched with a mask: tcp_flags=(0x001, 0x001) is ovs-ofctl's +fin.  In
    # OpenFlow 1.3 OVS sends and reports it as the ONF experimenter OXM (ONFOXM_ET_TCP_FLAGS)
    _spec("tcp_flags", _EXP, 42, 2, "int", True, "tcp_flags", writable=False, max_value=0xFFF, full_mask=0xFFF,
          hex_=True, move=(_N1, 34), move_bits=12, experimenter=ONF_EXPERIMENTER),
    _spec("tun_ipv4_src", _N1, 31, 4, "ipv4", True, "tun_src"),
    _spec("tun_ipv4_dst", _N1, 32, 4, "ipv4", True, "tun_dst"),
    # OVS keeps 8 ct_state bits and always reports a mask: ct_state=0x22 -> 0x22/0xff.
    _spec("ct_state", _N1, 105, 4, "int", True, "ct_state", writable=False, hex_=True, max_value=0xFF,
          full_mask=0xFF, clip_mask=True, always_mask=True),
    _spec("ct_zone", _N1, 106, 2, "int", False, "ct_zone", writable=False),
    # ct_mark is not writable by a plain set_field (OVS rejects it): only inside
    # ct(commit,exec(set_field:V->ct_mark)), which this model spells Ct(mark=V).
    _spec("ct_mark", _N1, 107, 4, "int", True, "ct_mark", writable=False, hex_=True),
]

FIELDS: dict[str, FieldSpec] = {f.name: f for f in _FIELD_LIST}
#: (oxm_class, oxm_field) -> FieldSpec, for decoding matches and set_field.
FIELDS_BY_OXM: dict[tuple[int, int], FieldSpec] = {(f.oxm_class, f.oxm_field): f for f in _FIELD_LIST}
#: (class, field) of the NXAST_REG_MOVE header -> FieldSpec.
FIELDS_BY_MOVE: dict[tuple[int, int], FieldSpec] = {(f.move_class, f.move_field): f for f in _FIELD_LIST}

# --- prerequisites --------------------------------------------------------
# Each entry: list of (field, allowed values); all must hold.  These follow
# Open vSwitch (ovs-fields(7) "Prerequisites").

_IP_ANY = [("eth_type", (ETH_TYPE_IP, ETH_TYPE_IPV6))]
_IPV4 = [("eth_type", (ETH_TYPE_IP,))]
_IPV6 = [("eth_type", (ETH_TYPE_IPV6,))]
_ARP = [("eth_type", (ETH_TYPE_ARP, ETH_TYPE_RARP))]
_PREREQS: dict[str, list[tuple[str, tuple[int, ...]]]] = {
    "ip_dscp": _IP_ANY, "ip_ecn": _IP_ANY, "ip_proto": _IP_ANY, "nw_ttl": _IP_ANY,
    "ipv4_src": _IPV4, "ipv4_dst": _IPV4,
    "ipv6_src": _IPV6, "ipv6_dst": _IPV6, "ipv6_flabel": _IPV6,
    "tcp_src": _IP_ANY + [("ip_proto", (6,))], "tcp_dst": _IP_ANY + [("ip_proto", (6,))],
    "tcp_flags": _IP_ANY + [("ip_proto", (6,))],
    "udp_src": _IP_ANY + [("ip_proto", (17,))], "udp_dst": _IP_ANY + [("ip_proto", (17,))],
    "icmpv4_type": _IPV4 + [("ip_proto", (1,))], "icmpv4_code": _IPV4 + [("ip_proto", (1,))],
    "icmpv6_type": _IPV6 + [("ip_proto", (58,))], "icmpv6_code": _IPV6 + [("ip_proto", (58,))],
    "ipv6_nd_target": _IPV6 + [("ip_proto", (58,)), ("icmpv6_type", (135, 136))],
    "ipv6_nd_sll": _IPV6 + [("ip_proto", (58,)), ("icmpv6_type", (135,))],
    "ipv6_nd_tll": _IPV6 + [("ip_proto", (58,)), ("icmpv6_type", (136,))],
    "nd_reserved": _IPV6 + [("ip_proto", (58,)), ("icmpv6_type", (135, 136))],
    "nd_options_type": _IPV6 + [("ip_proto", (58,)), ("icmpv6_type", (135, 136))],
    "arp_op": _ARP, "arp_spa": _ARP, "arp_tpa": _ARP, "arp_sha": _ARP, "arp_tha": _ARP,
}
_ND_FIELDS = ("ipv6_nd_target", "ipv6_nd_sll", "ipv6_nd_tll", "nd_reserved", "nd_options_type")


def _fmt_allowed(name: str, allowed: tuple[int, ...]) -> str:
    spec = FIELDS[name]
    vals = "|".join(hex(v) if spec.hex else str(v) for v in allowed)
    return f"{name}={vals}"


def prereq_error(name: str, exact: dict[str, Any], vlan_present: bool) -> str | None:
    """Why ``name`` cannot be matched/written given the exact-match fields
    ``exact`` (name -> value); ``None`` if its prerequisites hold."""
    for pre, allowed in _PREREQS.get(name, ()):
        if exact.get(pre) not in allowed:
            return (f"{name} requires {_fmt_allowed(pre, allowed)}: "
                    f"missing prerequisite {pre}")
    if name in _ND_FIELDS and exact.get("icmpv6_code", 0) != 0:
        return f"{name} requires icmpv6_code=0 (or icmpv6_code not matched): prerequisite icmpv6_code"
    if name == "vlan_pcp" and not vlan_present:
        return ("vlan_pcp requires vlan_vid with OFPVID_PRESENT (0x1000) set in value and mask: "
                "missing prerequisite vlan_vid")
    return None


# --- value normalisation --------------------------------------------------

_MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}([:-][0-9a-fA-F]{1,2}){5}$")


def _mac_to_int(v: Any, what: str) -> int:
    if isinstance(v, str):
        if not _MAC_RE.match(v):
            raise ValueError(f"{what}: bad MAC address {v!r}")
        return int("".join(p.zfill(2) for p in re.split("[:-]", v)), 16)
    if isinstance(v, (bytes, bytearray)) and len(v) == 6:
        return int.from_bytes(v, "big")
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 48):
        return v
    raise ValueError(f"{what}: bad MAC address {v!r}")


def _mac_str(i: int) -> str:
    h = "%012x" % i
    return ":".join(h[k:k + 2] for k in range(0, 12, 2))


def _ip_to_int(v: Any, version: int, what: str) -> int:
    try:
        if isinstance(v, (bytes, bytearray)):
            if len(v) != (4 if version == 4 else 16):
                raise ValueError
            return int.from_bytes(v, "big")
        if isinstance(v, bool):
            raise ValueError
        addr = ipaddress.IPv4Address(v) if version == 4 else ipaddress.IPv6Address(v)
        return int(addr)
    except (ValueError, TypeError, OSError):
        raise ValueError(f"{what}: bad IPv{version} address {v!r}") from None


def _ip_str(i: int, version: int) -> str:
    return str(ipaddress.IPv4Address(i) if version == 4 else ipaddress.IPv6Address(i))


def _to_int(spec: FieldSpec, v: Any, what: str) -> int:
    kind = spec.kind
    if kind == "int":
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{what}: {spec.name} needs an int, got {v!r}")
        if not 0 <= v <= (1 << spec.bits) - 1:
            raise ValueError(f"{what}: {spec.name} value {v:#x} does not fit in {spec.bits} bits")
        return v
    if kind == "mac":
        return _mac_to_int(v, what)
    return _ip_to_int(v, 4 if kind == "ipv4" else 6, what)


def _from_int(spec: FieldSpec, i: int) -> Any:
    kind = spec.kind
    if kind == "int":
        return i
    if kind == "mac":
        return _mac_str(i)
    return _ip_str(i, 4 if kind == "ipv4" else 6)


def _fast_value(spec: FieldSpec, v: Any) -> Any | None:
    """Cheap normalisation of the common unmasked cases; None if not handled."""
    kind = spec.kind
    if kind == "int":
        if type(v) is int and 0 <= v <= spec.max_value and not spec.always_mask:
            return v
        return None
    if type(v) is not str:
        return None
    if kind == "ipv4":
        if "/" in v:
            return None
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, v))
        except OSError:
            return None
    if kind == "mac":
        if len(v) == 17 and _MAC_RE.match(v):
            return v.lower()
        return None
    return None


def normalize_field(name: str, value: Any, *, allow_mask: bool = True,
                    what: str = "Match") -> tuple[Any, Any] | None:
    """Normalise one field value to ``(value, mask_or_None)``.

    Returns ``None`` when the mask is all zeros (the field matches anything).
    Raises ``ValueError`` for an unknown field or a bad value.
    """
    spec = FIELDS.get(name)
    if spec is None:
        raise ValueError(f"{what}: unknown field {name!r}")
    if not isinstance(value, tuple):
        fast = _fast_value(spec, value)
        if fast is not None:
            return fast, None
    mask: Any = None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{what}: {name} expects value or (value, mask), got {value!r}")
        value, mask = value
    elif isinstance(value, str) and "/" in value and spec.kind in ("ipv4", "ipv6", "mac", "int"):
        if spec.kind in ("ipv4", "ipv6"):
            addr, _, plen = value.partition("/")
            if plen.isdigit():
                try:
                    net = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise ValueError(f"{what}: bad {name} prefix {value!r}") from None
                if net.version != (4 if spec.kind == "ipv4" else 6):
                    raise ValueError(f"{what}: {name} needs IPv{4 if spec.kind == 'ipv4' else 6}, "
                                     f"got {value!r}")
                value, mask = int(net.network_address), int(net.netmask)
            else:   # "value/mask" with an arbitrary (non-prefix) mask
                value, mask = addr, plen
        else:
            value, mask = value.split("/", 1)
            if spec.kind == "int":
                try:
                    value, mask = int(value, 0), int(mask, 0)
                except ValueError:
                    raise ValueError(f"{what}: bad {name} value/mask {value!r}") from None
    if spec.kind == "int" and isinstance(value, str):
        raise ValueError(f"{what}: {name} needs an int, got {value!r}")
    v = _to_int(spec, value, what)
    if spec.always_mask:
        m = spec.full_mask if mask is None else _to_int(spec, mask, what) & spec.full_mask
        if mask is not None and not allow_mask and m != spec.full_mask:
            raise ValueError(f"{what}: {name} cannot be masked here")
        if m == 0:
            return None
        if v & ~spec.full_mask:
            raise ValueError(f"{what}: {name} value {v:#x} is out of range (max {spec.max_value:#x})")
        return v & m, m
    if mask is not None:
        if not allow_mask:
            raise ValueError(f"{what}: {name} cannot be masked here")
        m = _to_int(spec, mask, what)
        if spec.clip_mask:
            m &= spec.full_mask
        if m & spec.full_mask == spec.full_mask:
            mask = None
        elif m == 0:
            return None
        else:
            if not spec.maskable:
                raise ValueError(f"{what}: {name} is not maskable (Open vSwitch rejects a mask on it)")
            v &= m
            mask = m
    if v > spec.max_value:
        raise ValueError(f"{what}: {name} value {v:#x} is out of range (max {spec.max_value:#x})")
    return _from_int(spec, v), (None if mask is None else _from_int(spec, mask))


def format_value(name: str, value: Any, mask: Any = None, *, ofctl: bool = False) -> str:
    """Text form of a field value: ``10.0.0.0/24``, ``0x5/0xff``, ``aa:bb:..``."""
    spec = FIELDS[name]
    if spec.kind == "int":
        if ofctl and name == "in_port":
            return port_name(value)
        if mask is not None:
            return f"{value:#x}/{mask:#x}"
        if name == "eth_type":
            return f"{value:#06x}"
        return f"{value:#x}" if spec.hex else str(value)
    if mask is None:
        return str(value)
    if spec.kind in ("ipv4", "ipv6"):
        plen = _prefix_len(spec, mask)
        if plen is not None:
            return f"{value}/{plen}"
    return f"{value}/{mask}"


def _prefix_len(spec: FieldSpec, mask: str) -> int | None:
    m = int(ipaddress.ip_address(mask))
    bits = spec.bits
    inv = ((1 << bits) - 1) ^ m
    if inv & (inv + 1):
        return None
    return bits - inv.bit_length()


# ---------------------------------------------------------------------------
# Match
# ---------------------------------------------------------------------------

_ORDER = {name: spec.order for name, spec in FIELDS.items()}


def _order_key(item: tuple) -> tuple:
    return _ORDER[item[0]]


class Match:
    """A frozen, hashable, canonical OpenFlow match.

    ``Match(in_port=1, eth_type=0x0800, ipv4_dst='10.0.0.0/24')``

    Values: ``int``; MAC / IPv4 / IPv6 as strings; ``(value, mask)`` tuples
    for masked fields; IP prefixes as ``'10.0.0.0/24'``.  ``fields`` is the
    tuple of ``(name, value, mask_or_None)`` in canonical OXM order.
    """

    __slots__ = ("fields", "_hash", "_wire")

    def __init__(self, **fields: Any) -> None:
        items = []
        for name, raw in fields.items():
            norm = normalize_field(name, raw)
            if norm is not None:
                items.append((name, norm[0], norm[1]))
        if len(items) > 1:
            items.sort(key=_order_key)
        fs = tuple(items)
        _check_match_prereqs(fs)
        object.__setattr__(self, "fields", fs)
        object.__setattr__(self, "_hash", hash(fs))
        object.__setattr__(self, "_wire", None)

    @classmethod
    def _from_fields(cls, fields: tuple, check: bool = True) -> "Match":
        """Build from already-normalised ``(name, value, mask)`` triples."""
        fs = tuple(sorted(fields, key=_order_key))
        if check:
            _check_match_prereqs(fs)
        self = object.__new__(cls)
        object.__setattr__(self, "fields", fs)
        object.__setattr__(self, "_hash", hash(fs))
        object.__setattr__(self, "_wire", None)
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Match":
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self):
        return (Match._from_fields, (self.fields, False))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Match:
            return NotImplemented
        return self is other or (self._hash == other._hash and self.fields == other.fields)

    def __ne__(self, other: object) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __hash__(self) -> int:
        return self._hash

    def __len__(self) -> int:
        return len(self.fields)

    def __bool__(self) -> bool:
        return bool(self.fields)

    def __contains__(self, name: object) -> bool:
        return any(f[0] == name for f in self.fields)

    def __iter__(self) -> Iterator[str]:
        return (f[0] for f in self.fields)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name``; ``(value, mask)`` if masked; ``default`` if absent."""
        for n, v, m in self.fields:
            if n == name:
                return v if m is None else (v, m)
        return default

    def __getitem__(self, name: str) -> Any:
        for n, v, m in self.fields:
            if n == name:
                return v if m is None else (v, m)
        raise KeyError(name)

    def items(self) -> tuple[tuple[str, Any], ...]:
        """``(name, value or (value, mask))`` pairs in canonical order."""
        return tuple((n, v if m is None else (v, m)) for n, v, m in self.fields)

    def replace(self, **changes: Any) -> "Match":
        """A new match with fields changed (``None`` removes a field)."""
        d = dict(self.items())
        for k, v in changes.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return Match(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able ``{name: value or "value/mask"}``."""
        return {n: (v if m is None else format_value(n, v, m)) for n, v, m in self.fields}

    def ofctl(self) -> str:
        """The match in ovs-ofctl syntax (``in_port=1,dl_type=0x0800,...``)."""
        return ",".join(f"{FIELDS[n].ofctl}={format_value(n, v, m, ofctl=True)}" for n, v, m in self.fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={(v if m is None else (v, m))!r}" for n, v, m in self.fields)
        return f"Match({inner})"

    __str__ = ofctl


def _exact_fields(fields: tuple) -> tuple[dict[str, Any], bool]:
    exact = {n: v for n, v, m in fields if m is None}
    vlan_present = False
    for n, v, m in fields:
        if n == "vlan_vid":
            vlan_present = bool(v & OFPVID_PRESENT) and (m is None or bool(m & OFPVID_PRESENT))
    return exact, vlan_present


def _check_match_prereqs(fields: tuple) -> None:
    if not fields:
        return
    exact = None
    for n, _v, _m in fields:
        if n in _PREREQS or n == "vlan_pcp":
            if exact is None:
                exact, vlan_present = _exact_fields(fields)
            err = prereq_error(n, exact, vlan_present)
            if err:
                raise ValueError(f"Match: {err}")


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------

def _check_u(name: str, v: Any, bits: int, lo: int = 0) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v < (1 << bits):
        raise ValueError(f"{name} must be an int in {lo}..{(1 << bits) - 1}, got {v!r}")


@dataclass(frozen=True, slots=True)
class Output:
    """OFPAT_OUTPUT.  For ``OFPP_CONTROLLER`` pass ``max_len`` explicitly
    (e.g. ``OFPCML_NO_BUFFER``); see :meth:`controller`."""

    port: int
    max_len: int = 0

    def __post_init__(self) -> None:
        _check_u("Output.port", self.port, 32)
        _check_u("Output.max_len", self.max_len, 16)
        if self.port == OFPP_ANY:
            raise ValueError("Output.port cannot be OFPP_ANY")

    @classmethod
    def controller(cls, max_len: int = OFPCML_NO_BUFFER) -> "Output":
        return cls(OFPP_CONTROLLER, max_len)

    def __str__(self) -> str:
        if self.port == OFPP_CONTROLLER:
            return f"controller:{self.max_len}"
        return f"output:{port_name(self.port)}"


@dataclass(frozen=True, slots=True)
class GroupAction:
    """OFPAT_GROUP."""

    group_id: int

    def __post_init__(self) -> None:
        _check_u("GroupAction.group_id", self.group_id, 32)
        if self.group_id > OFPG_MAX:
            raise ValueError(f"GroupAction.group_id {self.group_id:#x} is reserved")

    def __str__(self) -> str:
        return f"group:{self.group_id}"


@dataclass(frozen=True, slots=True)
class SetField:
    """OFPAT_SET_FIELD; ``field`` / ``value`` as in :class:`Match` (no mask)."""

    field: str
    value: Any

    def __post_init__(self) -> None:
        spec = FIELDS.get(self.field)
        if spec is None:
            raise ValueError(f"SetField: unknown field {self.field!r}")
        if not spec.writable:
            raise ValueError(f"SetField: {self.field} is not writable with set_field")
        if isinstance(self.value, tuple) or (isinstance(self.value, str) and "/" in self.value):
            raise ValueError(f"SetField: {self.field}: masked set_field is not supported")
        norm = normalize_field(self.field, self.value, allow_mask=False, what="SetField")
        assert norm is not None
        if self.field == "in_port" and 0xFF00 <= norm[0] < OFPP_MAX:
            raise ValueError("SetField: in_port is sent as 16-bit NXM_OF_IN_PORT; "
                             f"{norm[0]:#x} does not fit")
        if self.field == "vlan_vid" and not norm[0] & OFPVID_PRESENT:
            raise ValueError("SetField: vlan_vid must include OFPVID_PRESENT (0x1000); "
                             "Open vSwitch rejects it otherwise")
        object.__setattr__(self, "value", norm[0])

    def __str__(self) -> str:
        return f"set_field:{format_value(self.field, self.value, ofctl=True)}->{FIELDS[self.field].ofctl}"


@dataclass(frozen=True, slots=True)
class DecTtl:
    """OFPAT_DEC_NW_TTL."""

    def __str__(self) -> str:
        return "dec_ttl"


@dataclass(frozen=True, slots=True)
class PushVlan:
    """OFPAT_PUSH_VLAN."""

    ethertype: int = 0x8100

    def __post_init__(self) -> None:
        if self.ethertype not in (0x8100, 0x88A8):
            raise ValueError(f"PushVlan.ethertype must be 0x8100 or 0x88a8, got {self.ethertype!r}")

    def __str__(self) -> str:
        return f"push_vlan:{self.ethertype:#06x}"


@dataclass(frozen=True, slots=True)
class PopVlan:
    """OFPAT_POP_VLAN."""

    def __str__(self) -> str:
        return "pop_vlan"


@dataclass(frozen=True, slots=True)
class RegMove:
    """Nicira NXAST_REG_MOVE: copy ``n_bits`` from ``src[src_ofs:]`` to ``dst[dst_ofs:]``."""

    src: str
    dst: str
    n_bits: int
    src_ofs: int = 0
    dst_ofs: int = 0

    def __post_init__(self) -> None:
        for role, name in (("src", self.src), ("dst", self.dst)):
            if name not in FIELDS:
                raise ValueError(f"RegMove: unknown {role} field {name!r}")
        if not FIELDS[self.dst].writable:
            raise ValueError(f"RegMove: {self.dst} is not writable")
        for attr in ("n_bits", "src_ofs", "dst_ofs"):
            _check_u(f"RegMove.{attr}", getattr(self, attr), 16)
        if self.n_bits < 1:
            raise ValueError("RegMove.n_bits must be >= 1")
        for name, ofs in ((self.src, self.src_ofs), (self.dst, self.dst_ofs)):
            width = FIELDS[name].move_bits
            if ofs + self.n_bits > width:
                raise ValueError(f"RegMove: {name}[{ofs}..{ofs + self.n_bits - 1}] exceeds its {width} bits "
                                 f"(Open vSwitch: OFPBAC_BAD_SET_LEN)")

    @classmethod
    def whole(cls, src: str, dst: str) -> "RegMove":
        """Move a whole field (``move:src->dst``)."""
        if src not in FIELDS:
            raise ValueError(f"RegMove: unknown src field {src!r}")
        return cls(src, dst, FIELDS[src].move_bits)

    @staticmethod
    def _sub(name: str, ofs: int, n: int) -> str:
        spec = FIELDS[name]
        if ofs == 0 and n == spec.move_bits:
            return spec.ofctl_move
        if n == 1:
            return f"{spec.ofctl_move}[{ofs}]"
        return f"{spec.ofctl_move}[{ofs}..{ofs + n - 1}]"

    def __str__(self) -> str:
        return (f"move:{self._sub(self.src, self.src_ofs, self.n_bits)}"
                f"->{self._sub(self.dst, self.dst_ofs, self.n_bits)}")


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Nicira NXAST_RESUBMIT_TABLE: ``resubmit(in_port, table)``.

    ``table`` comes first so ``Resubmit(5)`` means ``resubmit(,5)``;
    keywords work in any order.
    """

    table: int
    in_port: int = OFPP_IN_PORT

    def __post_init__(self) -> None:
        _check_u("Resubmit.table", self.table, 8)
        if self.table == OFPTT_ALL:
            raise ValueError("Resubmit.table must be a real table (0..254)")
        _check_u("Resubmit.in_port", self.in_port, 32)
        if 0xFF00 <= self.in_port < OFPP_MAX:
            raise ValueError(f"Resubmit.in_port {self.in_port:#x} does not fit NXAST_RESUBMIT's 16 bits")

    def __str__(self) -> str:
        port = "" if self.in_port == OFPP_IN_PORT else port_name(self.in_port)
        return f"resubmit({port},{self.table})"


# NX_NAT flags
NX_NAT_F_SRC = 1 << 0
NX_NAT_F_DST = 1 << 1
NX_NAT_F_PERSISTENT = 1 << 2
NX_NAT_F_PROTO_HASH = 1 << 3
NX_NAT_F_PROTO_RANDOM = 1 << 4

_NAT_FLAG_WORDS = (("persistent", NX_NAT_F_PERSISTENT), ("hash", NX_NAT_F_PROTO_HASH),
                   ("random", NX_NAT_F_PROTO_RANDOM))


class NatSpec(NamedTuple):
    """Parsed ``nat`` argument of :class:`Ct`."""

    flags: int
    ip_min: str | None
    ip_max: str | None
    port_min: int | None
    port_max: int | None
    ipv6: bool

    def __str__(self) -> str:
        kind = "src" if self.flags & NX_NAT_F_SRC else "dst" if self.flags & NX_NAT_F_DST else ""
        s = kind
        if self.ip_min is not None:
            def b(a: str) -> str:
                return f"[{a}]" if self.ipv6 else a
            s += "=" + b(self.ip_min)
            if self.ip_max is not None:
                s += "-" + b(self.ip_max)
            if self.port_min is not None:
                s += f":{self.port_min}"
                if self.port_max is not None:
                    s += f"-{self.port_max}"
        words = [w for w, f in _NAT_FLAG_WORDS if self.flags & f]
        return ",".join([s] * bool(s) + words)


_NAT_RE = re.compile(
    r"^(?P<kind>src|dst)(=(?P<a1>\[[0-9a-fA-F:.]+\]|[0-9.]+)(-(?P<a2>\[[0-9a-fA-F:.]+\]|[0-9.]+))?"
    r"(:(?P<p1>\d+)(-(?P<p2>\d+))?)?)?$")


def parse_nat(nat: str) -> NatSpec:
    """Parse ``''``, ``'src'``, ``'dst=10.0.0.1-10.0.0.9:1000-2000,random'``,
    ``'src=[fd00::1]'`` (ovs-ofctl ``nat(...)`` argument syntax)."""
    parts = [p.strip() for p in nat.split(",")] if nat.strip() else []
    flags = 0
    ip_min = ip_max = None
    port_min = port_max = None
    ipv6 = False
    seen_kind = False
    for p in parts:
        word = dict(_NAT_FLAG_WORDS).get(p)
        if word is not None:
            flags |= word
            continue
        m = _NAT_RE.match(p)
        if not m or seen_kind:
            raise ValueError(f"Ct: bad nat argument {nat!r}")
        seen_kind = True
        flags |= NX_NAT_F_SRC if m["kind"] == "src" else NX_NAT_F_DST
        addrs = []
        for a in (m["a1"], m["a2"]):
            if a is None:
                addrs.append(None)
                continue
            v6 = a.startswith("[")
            try:
                ip = ipaddress.ip_address(a.strip("[]"))
            except ValueError:
                raise ValueError(f"Ct: bad nat address {a!r}") from None
            if (ip.version == 6) != v6:
                raise ValueError(f"Ct: IPv6 nat addresses need brackets: {a!r}")
            ipv6 = ip.version == 6
            if int(ip) == 0:
                raise ValueError(f"Ct: nat address {a!r} is unspecified")
            addrs.append(str(ip))
        ip_min, ip_max = addrs
        if ip_min is not None and ip_max is not None:
            if ipaddress.ip_address(ip_min).version != ipaddress.ip_address(ip_max).version:
                raise ValueError(f"Ct: nat range mixes IPv4 and IPv6: {nat!r}")
        if m["p1"] is not None:
            port_min = int(m["p1"])
            port_max = int(m["p2"]) if m["p2"] is not None else None
            for p_ in (port_min, port_max):
                if p_ is not None and not 1 <= p_ <= 0xFFFF:
                    raise ValueError(f"Ct: nat port out of range: {nat!r}")
    if flags & (NX_NAT_F_PROTO_HASH | NX_NAT_F_PROTO_RANDOM) == (NX_NAT_F_PROTO_HASH | NX_NAT_F_PROTO_RANDOM):
        raise ValueError("Ct: nat hash and random are exclusive")
    if flags & ~(NX_NAT_F_SRC | NX_NAT_F_DST) and not flags & (NX_NAT_F_SRC | NX_NAT_F_DST):
        raise ValueError("Ct: nat flags need src or dst")
    return NatSpec(flags, ip_min, ip_max, port_min, port_max, ipv6)


@dataclass(frozen=True, slots=True)
class Ct:
    """Nicira NXAST_CT: ``ct(commit,table=T,zone=Z,nat(...),exec(set_field:M->ct_mark))``.

    ``zone`` is an immediate 16-bit zone, ``table`` the recirculation table
    (``None``: no recirculation), ``nat`` ``None`` (no nat), ``''`` (plain
    ``nat``) or the ovs-ofctl nat argument, e.g. ``'src=10.0.0.1-10.0.0.9'``.
    ``mark`` (``None``: untouched) is the 32-bit ct_mark the committed
    connection gets, OVS's ``exec(set_field:M->ct_mark)`` (a full-mask set;
    needs ``commit``).  Nested actions go out as OVS itself encodes this text:
    the NAT action first, then the set_field.
    """

    commit: bool = False
    zone: int = 0
    table: int | None = None
    nat: str | None = None
    mark: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.commit, bool):
            raise ValueError("Ct.commit must be a bool")
        _check_u("Ct.zone", self.zone, 16)
        if self.table is not None:
            _check_u("Ct.table", self.table, 8)
            if self.table == OFPTT_ALL:
                raise ValueError("Ct.table must be 0..254 or None")
        if self.nat is not None:
            spec = parse_nat(self.nat)
            if spec.flags and not self.commit:
                # OVS: "CT action requires commit flag if actions other than
                # NAT without arguments are specified."
                raise ValueError("Ct: nat with arguments requires commit=True")
            object.__setattr__(self, "nat", str(spec))
        if self.mark is not None:
            _check_u("Ct.mark", self.mark, 32)
            if not self.commit:
                # the same OVS rule: exec(...) other than a plain nat needs commit
                raise ValueError("Ct: mark (exec(set_field:..->ct_mark)) requires commit=True")

    @property
    def nat_spec(self) -> NatSpec | None:
        return None if self.nat is None else parse_nat(self.nat)

    def __str__(self) -> str:
        # OVS's format_CT order: commit, table, zone, a leading nat, exec(...)
        args = []
        if self.commit:
            args.append("commit")
        if self.table is not None:
            args.append(f"table={self.table}")
        if self.zone:
            args.append(f"zone={self.zone}")
        if self.nat is not None:
            args.append(f"nat({self.nat})" if self.nat else "nat")
        if self.mark is not None:
            # ovs-ofctl prints ct_mark in hex, but a zero as plain 0
            args.append(f"exec(set_field:{self.mark:#x}->ct_mark)" if self.mark else "exec(set_field:0->ct_mark)")
        return f"ct({','.join(args)})"


@dataclass(frozen=True, slots=True)
class RawAction:
    """An action this model does not know, kept as its raw OpenFlow bytes
    (what :func:`ofwire.decode_actions` returns for unknown actions)."""

    data: bytes

    def __str__(self) -> str:
        return f"raw:{self.data.hex()}"


ACTION_TYPES = (Output, GroupAction, SetField, DecTtl, PushVlan, PopVlan, RegMove, Resubmit, Ct, RawAction)


def _norm_actions(actions: Any, where: str) -> tuple:
    if isinstance(actions, list):
        actions = tuple(actions)
    elif not isinstance(actions, tuple):
        actions = (actions,) if isinstance(actions, ACTION_TYPES) else tuple(actions)
    for a in actions:
        if not isinstance(a, ACTION_TYPES):
            raise ValueError(f"{where}: not an action: {a!r}")
    return actions


def _check_action_prereqs(match: Match, actions: tuple) -> None:
    """Open vSwitch's ofpacts_check: set_field/move/ct need their
    prerequisites in the match (else OFPBAC_MATCH_INCONSISTENT)."""
    exact = None
    vlan = False
    for a in actions:
        cls = a.__class__
        if cls is Output or cls is GroupAction or cls is Resubmit:
            continue
        if exact is None:
            exact, vlan = _exact_fields(match.fields)
        if cls is DecTtl:
            if exact.get("eth_type") not in (ETH_TYPE_IP, ETH_TYPE_IPV6):
                raise ValueError("Flow: dec_ttl requires eth_type=0x0800|0x86dd: missing prerequisite eth_type")
        elif cls is PushVlan:
            vlan = True
        elif cls is PopVlan:
            if not vlan:
                raise ValueError("Flow: pop_vlan needs a VLAN header: match vlan_vid with OFPVID_PRESENT "
                                 "(missing prerequisite vlan_vid)")
            vlan = False
        elif cls is SetField:
            if a.field in ("vlan_vid", "vlan_pcp"):
                if not vlan:
                    raise ValueError(f"Flow: set_field {a.field} needs a VLAN header: match vlan_vid "
                                     f"with OFPVID_PRESENT or push_vlan first")
                continue
            err = prereq_error(a.field, exact, vlan)
            if err:
                raise ValueError(f"Flow: set_field {err}")
        elif cls is RegMove:
            for name in (a.src, a.dst):
                if name == "vlan_vid":
                    continue
                if name == "vlan_pcp":
                    if not vlan:
                        raise ValueError(f"Flow: move {name} needs a VLAN header")
                    continue
                err = prereq_error(name, exact, vlan)
                if err:
                    raise ValueError(f"Flow: move {err}")
        elif cls is Ct:
            if exact.get("eth_type") not in (ETH_TYPE_IP, ETH_TYPE_IPV6):
                raise ValueError("Flow: ct requires eth_type=0x0800|0x86dd: missing prerequisite eth_type")
            cs = match.get("ct_state")
            if a.commit and cs is not None and cs[0] & 0x10:
                raise ValueError("Flow: ct(commit) cannot be used on a flow matching ct_state=+inv")
            spec = a.nat_spec
            if spec is not None and spec.ip_min is not None:
                want = ETH_TYPE_IPV6 if spec.ipv6 else ETH_TYPE_IP
                if exact.get("eth_type") != want:
                    raise ValueError(f"Flow: ct nat address family needs eth_type={want:#06x}")


# ---------------------------------------------------------------------------
# Flow
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Flow:
    """One OpenFlow 1.3 flow entry.

    ``actions`` is the apply-actions list; with no actions and no ``goto``
    the flow drops.  ``(table, priority, match)`` is the flow's identity in
    the switch (:attr:`key`).
    """

    table: int
    priority: int
    match: Match
    actions: tuple = ()
    goto: int | None = None
    meter: int | None = None
    write_metadata: tuple[int, int] | None = None
    cookie: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0
    flags: int = 0
    # ofwire's cache of the encoded (match, instructions); not part of the value.
    _wire: Any = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_u("Flow.table", self.table, 8)
        if self.table > OFPTT_MAX:
            raise ValueError("Flow.table must be 0..254")
        _check_u("Flow.priority", self.priority, 16)
        if self.match.__class__ is not Match:
            if isinstance(self.match, dict):
                object.__setattr__(self, "match", Match(**self.match))
            else:
                raise ValueError(f"Flow.match must be a Match, got {self.match!r}")
        if self.actions.__class__ is not tuple or self.actions:
            object.__setattr__(self, "actions", _norm_actions(self.actions, "Flow"))
        if self.goto is not None:
            _check_u("Flow.goto", self.goto, 8)
            if not self.table < self.goto <= OFPTT_MAX:
                raise ValueError(f"Flow.goto must be a later table ({self.table} < goto <= 254), got {self.goto}")
        if self.meter is not None:
            _check_u("Flow.meter", self.meter, 32, lo=1)
            if self.meter > OFPM_MAX:
                raise ValueError(f"Flow.meter {self.meter:#x} is reserved")
        if self.write_metadata is not None:
            wm = self.write_metadata
            if isinstance(wm, int) and not isinstance(wm, bool):
                wm = (wm, (1 << 64) - 1)
            if not isinstance(wm, tuple) or len(wm) != 2:
                raise ValueError("Flow.write_metadata must be (value, mask)")
            _check_u("Flow.write_metadata value", wm[0], 64)
            _check_u("Flow.write_metadata mask", wm[1], 64)
            wm = (wm[0] & wm[1], wm[1])
            if wm != self.write_metadata:
                object.__setattr__(self, "write_metadata", wm)
        _check_u("Flow.cookie", self.cookie, 64)
        if self.cookie == (1 << 64) - 1:
            raise ValueError("Flow.cookie 0xffffffffffffffff is reserved")
        _check_u("Flow.idle_timeout", self.idle_timeout, 16)
        _check_u("Flow.hard_timeout", self.hard_timeout, 16)
        _check_u("Flow.flags", self.flags, 16)
        if self.actions:
            _check_action_prereqs(self.match, self.actions)

    @property
    def key(self) -> tuple[int, int, Match]:
        """OpenFlow flow identity: ``(table, priority, match)``."""
        return (self.table, self.priority, self.match)

    def replace(self, **changes: Any) -> "Flow":
        return dataclasses.replace(self, **changes)

    def instruction_strings(self) -> list[str]:
        """Instructions in ovs-ofctl syntax, in Open vSwitch's order."""
        out = []
        if self.meter is not None:
            out.append(f"meter:{self.meter}")
        out.extend(str(a) for a in self.actions)
        if self.write_metadata is not None:
            v, m = self.write_metadata
            out.append(f"write_metadata:{v:#x}" if m == (1 << 64) - 1 else f"write_metadata:{v:#x}/{m:#x}")
        if self.goto is not None:
            out.append(f"goto_table:{self.goto}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "table": self.table,
            "priority": self.priority,
            "cookie": f"{self.cookie:#x}",
            "match": self.match.to_dict(),
            "actions": self.instruction_strings(),
        }
        if self.idle_timeout:
            d["idle_timeout"] = self.idle_timeout
        if self.hard_timeout:
            d["hard_timeout"] = self.hard_timeout
        if self.flags:
            d["flags"] = self.flags
        return d

    def __str__(self) -> str:
        parts = [f"table={self.table}", f"priority={self.priority}", f"cookie={self.cookie:#x}"]
        if self.idle_timeout:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout:
            parts.append(f"hard_timeout={self.hard_timeout}")
        for bit, name in _FLAG_NAMES:
            if self.flags & bit:
                parts.append(name)
        if self.match.fields:
            parts.append(self.match.ofctl())
        acts = self.instruction_strings()
        return ",".join(parts) + " actions=" + (",".join(acts) if acts else "drop")


# ---------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Bucket:
    """A group bucket."""

    actions: tuple = ()
    #: None: not given (a select group makes it 1, other types 0); an int is kept exactly, 0 included
    weight: int | None = None
    watch_port: int = OFPP_ANY
    watch_group: int = OFPG_ANY

    def __post_init__(self) -> None:
        if self.actions.__class__ is not tuple or self.actions:
            object.__setattr__(self, "actions", _norm_actions(self.actions, "Bucket"))
        if self.weight is not None:
            _check_u("Bucket.weight", self.weight, 16)
        _check_u("Bucket.watch_port", self.watch_port, 32)
        _check_u("Bucket.watch_group", self.watch_group, 32)

    def ofctl(self, group_type: str) -> str:
        parts = []
        if group_type == "select":
            parts.append(f"weight:{self.weight}")
        if self.watch_port != OFPP_ANY:
            parts.append(f"watch_port:{port_name(self.watch_port)}")
        if self.watch_group != OFPG_ANY:
            parts.append(f"watch_group:{self.watch_group}")
        acts = ",".join(str(a) for a in self.actions)
        parts.append(f"actions={acts}" if acts else "actions=drop")
        return "bucket=" + ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"actions": [str(a) for a in self.actions]}
        if self.weight:
            d["weight"] = self.weight
        if self.watch_port != OFPP_ANY:
            d["watch_port"] = self.watch_port
        if self.watch_group != OFPG_ANY:
            d["watch_group"] = self.watch_group
        return d


_GROUP_TYPE_ALIASES = {"fast_failover": "ff", "ff": "ff", "all": "all", "select": "select",
                       "indirect": "indirect"}


@dataclass(frozen=True, slots=True)
class Group:
    """An OpenFlow 1.3 group.  ``cookie`` is controller-side metadata only
    (OF1.3 groups have no cookie) and is never encoded."""

    group_id: int
    type: str = "all"
    buckets: tuple = ()
    cookie: int = 0

    def __post_init__(self) -> None:
        _check_u("Group.group_id", self.group_id, 32)
        if self.group_id > OFPG_MAX:
            raise ValueError(f"Group.group_id {self.group_id:#x} is reserved")
        t = _GROUP_TYPE_ALIASES.get(self.type)
        if t is None:
            raise ValueError(f"Group.type must be one of all|select|indirect|ff, got {self.type!r}")
        if t != self.type:
            object.__setattr__(self, "type", t)
        buckets = self.buckets
        if isinstance(buckets, Bucket):
            buckets = (buckets,)
        buckets = tuple(buckets)
        for b in buckets:
            if not isinstance(b, Bucket):
                raise ValueError(f"Group: not a Bucket: {b!r}")
        if any(b.weight is None for b in buckets):  # only an unspecified weight gets a default
            dflt = 1 if t == "select" else 0
            buckets = tuple(dataclasses.replace(b, weight=dflt) if b.weight is None else b for b in buckets)
        if t == "indirect" and len(buckets) != 1:
            raise ValueError("Group: an indirect group has exactly one bucket")
        if t == "ff":
            for b in buckets:
                if b.watch_port == OFPP_ANY and b.watch_group == OFPG_ANY:
                    raise ValueError("Group: fast-failover buckets need watch_port or watch_group")
        if buckets != self.buckets or buckets.__class__ is not self.buckets.__class__:
            object.__setattr__(self, "buckets", buckets)
        _check_u("Group.cookie", self.cookie, 64)

    @property
    def type_id(self) -> int:
        return GROUP_TYPES[self.type]

    def to_dict(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "type": self.type, "cookie": f"{self.cookie:#x}",
                "buckets": [b.to_dict() for b in self.buckets]}

    def __str__(self) -> str:
        """ovs-ofctl add-group syntax."""
        t = "fast_failover" if self.type == "ff" else self.type
        parts = [f"group_id={self.group_id}", f"type={t}"] + [b.ofctl(self.type) for b in self.buckets]
        return ",".join(parts)


# ---------------------------------------------------------------------------
# Meters
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MeterBand:
    """A drop band."""

    rate: int
    burst_size: int = 0

    def __post_init__(self) -> None:
        _check_u("MeterBand.rate", self.rate, 32, lo=1)
        _check_u("MeterBand.burst_size", self.burst_size, 32)


@dataclass(frozen=True, slots=True)
class Meter:
    """An OpenFlow 1.3 meter with drop bands.  ``burst`` (OFPMF_BURST) is
    forced on when any band has a burst size.  ``cookie`` is metadata only."""

    meter_id: int
    unit: str = "pktps"
    bands: tuple = ()
    burst: bool = False
    stats: bool = True
    cookie: int = 0

    def __post_init__(self) -> None:
        _check_u("Meter.meter_id", self.meter_id, 32, lo=1)
        if self.meter_id > OFPM_MAX:
            raise ValueError(f"Meter.meter_id {self.meter_id:#x} is reserved")
        if self.unit not in ("pktps", "kbps"):
            raise ValueError(f"Meter.unit must be 'pktps' or 'kbps', got {self.unit!r}")
        bands = self.bands
        if isinstance(bands, MeterBand):
            bands = (bands,)
        bands = tuple(bands)
        for b in bands:
            if not isinstance(b, MeterBand):
                raise ValueError(f"Meter: not a MeterBand: {b!r}")
        if bands != self.bands or bands.__class__ is not self.bands.__class__:
            object.__setattr__(self, "bands", bands)
        burst = bool(self.burst) or any(b.burst_size for b in bands)
        if burst is not self.burst:
            object.__setattr__(self, "burst", burst)
        object.__setattr__(self, "stats", bool(self.stats))
        _check_u("Meter.cookie", self.cookie, 64)

    @property
    def flags(self) -> int:
        f = OFPMF_KBPS if self.unit == "kbps" else OFPMF_PKTPS
        if self.burst:
            f |= OFPMF_BURST
        if self.stats:
            f |= OFPMF_STATS
        return f

    def to_dict(self) -> dict[str, Any]:
        return {"meter_id": self.meter_id, "unit": self.unit, "burst": self.burst, "stats": self.stats,
                "cookie": f"{self.cookie:#x}",
                "bands": [{"type": "drop", "rate": b.rate, "burst_size": b.burst_size} for b in self.bands]}

    def __str__(self) -> str:
        """ovs-ofctl add-meter syntax."""
        parts = [f"meter={self.meter_id}", self.unit]
        if self.burst:
            parts.append("burst")
        if self.stats:
            parts.append("stats")
        bands = []
        for b in self.bands:
            s = f"type=drop,rate={b.rate}"
            if self.burst:
                s += f",burst_size={b.burst_size}"
            bands.append(s)
        return ",".join(parts) + ",bands=" + ",".join(bands)


__all__ = [
    "OFPP_MAX", "OFPP_IN_PORT", "OFPP_TABLE", "OFPP_NORMAL", "OFPP_FLOOD", "OFPP_ALL",
    "OFPP_CONTROLLER", "OFPP_LOCAL", "OFPP_ANY", "OFPG_MAX", "OFPG_ALL", "OFPG_ANY", "OFPM_MAX",
    "OFPCML_MAX", "OFPCML_NO_BUFFER", "OFPVID_PRESENT", "OFPVID_NONE", "OFPTT_MAX", "OFPTT_ALL",
    "OFPFF_SEND_FLOW_REM", "OFPFF_CHECK_OVERLAP", "OFPFF_RESET_COUNTS", "OFPFF_NO_PKT_COUNTS",
    "OFPFF_NO_BYT_COUNTS", "OFPMF_KBPS", "OFPMF_PKTPS", "OFPMF_BURST", "OFPMF_STATS",
    "GROUP_TYPES", "FIELDS", "FieldSpec", "Match", "Output", "GroupAction", "SetField", "DecTtl",
    "PushVlan", "PopVlan", "RegMove", "Resubmit", "Ct", "RawAction", "NatSpec", "parse_nat",
    "Flow", "Bucket", "Group", "MeterBand", "Meter", "normalize_field", "format_value", "port_name",
    "NX_NAT_F_SRC", "NX_NAT_F_DST", "NX_NAT_F_PERSISTENT", "NX_NAT_F_PROTO_HASH", "NX_NAT_F_PROTO_RANDOM",
]
