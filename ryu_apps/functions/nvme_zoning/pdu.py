"""NVMe/TCP on the wire: PDU framing, the commands the project's peers send, and the Connect the fabric reads.

Standard library only, plus ``crc32c`` for the digests (the fabric, the test target and the test
host all import it; no os-ken, no eventlet).  Sources: NVMe/TCP Transport 1.0, NVMe over Fabrics
1.1, NVMe Base 1.4; field for field what Linux (``include/linux/nvme-tcp.h``, ``nvme.h``) sends.
Every integer is little-endian.

A PDU (one per NVMe/TCP message, any number per TCP segment, split anywhere)::

    0      1      2      3      4           8                hlen     (+4)      pdo           plen
    | type | flags| hlen | pdo  |   plen    | PDU-specific   | [HDGST] | [pad] | data | [DDGST] |

* ``flags``: :data:`HDGSTF` a CRC32C of the ``hlen`` header bytes follows the header,
  :data:`DDGSTF` a CRC32C of the data ends the PDU, :data:`LAST_PDU` / :data:`SUCCESS` on data PDUs.
* ``pdo``: where the data starts (0 when the PDU carries none); ``plen``: the whole PDU.
* ICReq/ICResp (128 bytes, never digests) open a connection and enable the digests for the PDUs
  that follow.  A CapsuleCmd carries a 64-byte submission queue entry (SQE) and, for small
  writes and the Connect, the data "in capsule"; a CapsuleResp a 16-byte completion (CQE).
  Larger writes wait for R2T and send H2CData; reads come back as C2HData.

Each TCP connection is one NVMe queue: its first command is a Fabrics Connect (opcode 0x7F,
fctype 0x01) naming the queue (QID 0 = admin), the host and the subsystem::

    SQE  @0 opcode  @2 CID  @4 fctype  @24 SGL1 (16)  @40 RECFMT  @42 QID  @44 SQSIZE  @46 CATTR  @48 KATO
    data (1024, in capsule)  @0 HOSTID (16)  @16 CNTLID  @256 SUBNQN (256)  @512 HOSTNQN (256)

The parsers are strict and bounded: they raise :class:`BadPDU` (a ValueError naming what is wrong)
and nothing else on any input.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import crc32c as _crc32c

# -- PDU types, flags, sizes ----------------------------------------------------------------

ICREQ, ICRESP, H2C_TERM, C2H_TERM, CAPSULE_CMD, CAPSULE_RESP, H2C_DATA, C2H_DATA, R2T = 0, 1, 2, 3, 4, 5, 6, 7, 9
PDU_NAMES = {ICREQ: "ICReq", ICRESP: "ICResp", H2C_TERM: "H2CTermReq", C2H_TERM: "C2HTermReq",
             CAPSULE_CMD: "CapsuleCmd", CAPSULE_RESP: "CapsuleResp", H2C_DATA: "H2CData", C2H_DATA: "C2HData",
             R2T: "R2T"}
HDGSTF, DDGSTF, LAST_PDU, SUCCESS = 0x01, 0x02, 0x04, 0x08
HEADER_LEN = {ICREQ: 128, ICRESP: 128, H2C_TERM: 24, C2H_TERM: 24, CAPSULE_CMD: 72, CAPSULE_RESP: 24,
              H2C_DATA: 24, C2H_DATA: 24, R2T: 24}
#: PDUs whose data is located by ``pdo`` (termination requests put theirs right after the header)
_DATA_AT_PDO = (CAPSULE_CMD, H2C_DATA, C2H_DATA)
COMMON_LEN, DIGEST_LEN, SQE_LEN, CQE_LEN = 8, 4, 64, 16
#: a termination request carries at most this much of the offending PDU's header
MAX_TERM_DATA = 128
#: the default bound of :class:`PDUStream`: a 1 MiB data PDU and its header
DEFAULT_MAX_PDU = (1 << 20) + 128

NVME_TCP_PORT, DISCOVERY_PORT = 4420, 8009
DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
MAX_NQN_BYTES = 223
NQN_FIELD = 256
CONNECT_DATA_LEN = 1024
#: the CNTLID a host puts in an admin queue's Connect (dynamic controller model: the target picks)
CNTLID_DYNAMIC = 0xFFFF

# -- opcodes --------------------------------------------------------------------------------

FABRICS = 0x7F
PROPERTY_SET, CONNECT, PROPERTY_GET = 0x00, 0x01, 0x04                  # Fabrics fctype
GET_LOG_PAGE, IDENTIFY, SET_FEATURES, ASYNC_EVENT, KEEP_ALIVE = 0x02, 0x06, 0x09, 0x0C, 0x18  # admin
WRITE, READ = 0x01, 0x02                                                 # I/O (NVM command set)

#: SQE byte 1: PSDT = SGL, as Linux sets on every command it sends over a fabric
PSDT_SGL = 0x40
#: SGL descriptor type bytes: a Data Block at an offset in the capsule (Connect, small writes), and a
#: Transport SGL Data Block (the data moves in C2HData / H2CData PDUs; also "no data" with length 0)
SGL_IN_CAPSULE, SGL_TRANSPORT = 0x01, 0x5A

# properties (Fabrics Property Get/Set offsets), Identify CNS, features, log pages
PROP_CAP, PROP_VS, PROP_CC, PROP_CSTS = 0x00, 0x08, 0x14, 0x1C
CC_EN, CSTS_RDY = 0x01, 0x01
CNS_NAMESPACE, CNS_CONTROLLER, CNS_ACTIVE_NS = 0x00, 0x01, 0x02
IDENTIFY_LEN = 4096
FEAT_NUM_QUEUES, FEAT_ASYNC_EVENT, FEAT_KATO = 0x07, 0x0B, 0x0F
LID_DISCOVERY = 0x70

# completion status as Linux spells it: (SCT << 8) | SC, the phase bit dropped; DNR = do not retry
SC_SUCCESS, SC_INVALID_OPCODE, SC_INVALID_FIELD, SC_INTERNAL = 0x000, 0x001, 0x002, 0x006
SC_INVALID_NS, SC_CMD_SEQUENCE, SC_SGL_LENGTH, SC_SGL_TYPE, SC_LBA_RANGE = 0x00B, 0x00C, 0x00F, 0x011, 0x080
SC_INVALID_LOG_PAGE = 0x109
SC_CONNECT_CTRL_BUSY, SC_CONNECT_INVALID_PARAM, SC_CONNECT_INVALID_HOST = 0x181, 0x182, 0x184
DNR = 0x4000

# fatal error status of a termination request
FES_INVALID_HEADER, FES_SEQUENCE, FES_HEADER_DIGEST, FES_OUT_OF_RANGE, FES_LIMIT, FES_UNSUPPORTED = 1, 2, 3, 4, 5, 6


class BadPDU(ValueError):
    """Bytes that are not a well-formed NVMe/TCP PDU (or Connect); the message says what is wrong.

    ``fes``/``fei`` are what a termination request answering it carries (the fatal error status
    and, for a bad header field, its byte offset).
    """

    def __init__(self, message: str, fes: int = FES_INVALID_HEADER, fei: int = 0):
        super().__init__(message)
        self.fes, self.fei = fes, fei


def digest(data: bytes) -> bytes:
    """The 4-byte CRC32C digest of ``data`` as it goes on the wire (little-endian, like Linux)."""
    return _crc32c.crc32c(data).to_bytes(4, "little")


# -- the common header and whole PDUs -------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """The 8-byte common header of every PDU."""

    type: int
    flags: int
    hlen: int
    pdo: int
    plen: int

    @property
    def hdgst(self) -> int:
        """Bytes of header digest after the header (0 or 4)."""
        return DIGEST_LEN if self.flags & HDGSTF else 0

    @property
    def ddgst(self) -> int:
        """Bytes of data digest at the end (0 or 4)."""
        return DIGEST_LEN if self.flags & DDGSTF else 0


def parse_header(buf: bytes) -> Header:
    """The common header at the start of ``buf`` (8 bytes are enough), checked against its type."""
    if len(buf) < COMMON_LEN:
        raise BadPDU(f"{len(buf)} bytes, a PDU header needs {COMMON_LEN}")
    ptype, flags, hlen, pdo, plen = struct.unpack_from("<BBBBI", buf)
    if ptype not in HEADER_LEN:
        raise BadPDU(f"unknown PDU type {ptype}", fei=0)
    name, want = PDU_NAMES[ptype], HEADER_LEN[ptype]
    if hlen != want:
        raise BadPDU(f"hlen {hlen} != {want} for {name}", fei=2)
    if plen < hlen:
        raise BadPDU(f"plen {plen} < hlen {hlen}", fei=4)
    h = Header(ptype, flags, hlen, pdo, plen)
    if ptype in (ICREQ, ICRESP, H2C_TERM, C2H_TERM):
        # digests are negotiated by ICReq/ICResp and never apply to them or to termination requests
        if flags & (HDGSTF | DDGSTF):
            raise BadPDU(f"digest flags on {name}", fei=1)
        if pdo:
            raise BadPDU(f"pdo {pdo} on {name}", fei=3)
        limit = hlen if ptype in (ICREQ, ICRESP) else hlen + MAX_TERM_DATA
        if plen > limit:
            raise BadPDU(f"plen {plen} > {limit} for {name}", fei=4)
        return h
    if plen < hlen + h.hdgst:
        raise BadPDU(f"plen {plen} leaves no room for the header digest", fei=4)
    if ptype in _DATA_AT_PDO:
        if pdo == 0 and plen != hlen + h.hdgst:
            raise BadPDU(f"plen {plen} > header but pdo 0 for {name}", fei=3)
        if pdo == 0 and ptype != CAPSULE_CMD:
            raise BadPDU(f"{name} without data", fei=3)
        if pdo and not hlen + h.hdgst <= pdo <= plen - h.ddgst:
            raise BadPDU(f"pdo {pdo} outside {hlen + h.hdgst}..{plen - h.ddgst}", fei=3)
    else:
        if pdo:
            raise BadPDU(f"pdo {pdo} on {name}", fei=3)
        if plen != hlen + h.hdgst:
            raise BadPDU(f"plen {plen} != {hlen + h.hdgst} for {name}", fei=4)
    if flags & DDGSTF and pdo == 0:
        raise BadPDU("data digest flag without data", fei=1)
    if flags & SUCCESS and not (ptype == C2H_DATA and flags & LAST_PDU):
        raise BadPDU("SUCCESS flag without LAST_PDU on a C2HData", fei=1)
    return h


@dataclass(frozen=True)
class PDU:
    """A whole PDU, digests checked: its header fields, its ``hlen`` header bytes, its data."""

    header: Header
    raw_header: bytes
    data: bytes

    @property
    def type(self) -> int:
        return self.header.type

    @property
    def sqe(self) -> bytes:
        """The submission queue entry of a CapsuleCmd."""
        return self.raw_header[COMMON_LEN:COMMON_LEN + SQE_LEN]


def parse_pdu(pdu: bytes) -> PDU:
    """One whole PDU (exactly ``plen`` bytes), its digests verified when its flags say it has them."""
    h = parse_header(pdu)
    if len(pdu) != h.plen:
        raise BadPDU(f"{len(pdu)} bytes but plen {h.plen}", fei=4)
    if h.hdgst and bytes(pdu[h.hlen:h.hlen + DIGEST_LEN]) != digest(bytes(pdu[:h.hlen])):
        raise BadPDU("header digest mismatch", fes=FES_HEADER_DIGEST)
    start = h.pdo or h.hlen + h.hdgst
    end = h.plen - h.ddgst
    data = bytes(pdu[start:end])
    if h.ddgst and bytes(pdu[end:]) != digest(data):
        # the spec has no fatal error status for a data digest: Linux drops the connection
        raise BadPDU("data digest mismatch")
    return PDU(h, bytes(pdu[:h.hlen]), data)


class PDUStream:
    """Cuts a TCP byte stream into whole PDUs.

    ``feed`` returns the PDUs completed by ``data`` and keeps the rest.  A header that is bad or
    announces more than ``max_pdu`` bytes raises BadPDU; when whole PDUs came before it in the
    same call, those are returned first and the next call raises (``feed(b"")`` to ask at once),
    so a peer is answered in order: e.g. ICResp for its ICReq, then the termination request.
    """

    def __init__(self, max_pdu: int = DEFAULT_MAX_PDU):
        self.max_pdu = max_pdu
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= COMMON_LEN:
            try:
                h = parse_header(bytes(self._buf[:COMMON_LEN]))
                if h.plen > self.max_pdu:
                    raise BadPDU(f"plen {h.plen} > {self.max_pdu}", fes=FES_LIMIT, fei=4)
            except BadPDU:
                if out:
                    break               # the bad header stays at the front: the next feed raises
                raise
            if len(self._buf) < h.plen:
                break
            out.append(bytes(self._buf[:h.plen]))
            del self._buf[:h.plen]
        return out

    def head(self, n: int = MAX_TERM_DATA) -> bytes:
        """The first ``n`` bytes still buffered (after a BadPDU: the offending header)."""
        return bytes(self._buf[:n])

    def __len__(self) -> int:
        return len(self._buf)


# -- building PDUs --------------------------------------------------------------------------

def _pdu(ptype: int, specific: bytes, data: bytes = b"", flags: int = 0,
         hdgst: bool = False, ddgst: bool = False) -> bytes:
    hlen = HEADER_LEN[ptype]
    assert COMMON_LEN + len(specific) == hlen, (ptype, len(specific))
    hd = DIGEST_LEN if hdgst else 0
    at_pdo = bool(data) and ptype in _DATA_AT_PDO
    dd = DIGEST_LEN if ddgst and at_pdo else 0
    flags |= (HDGSTF if hd else 0) | (DDGSTF if dd else 0)
    pdo = hlen + hd if at_pdo else 0
    plen = hlen + hd + len(data) + dd
    head = struct.pack("<BBBBI", ptype, flags, hlen, pdo, plen) + specific
    return b"".join((head, digest(head) if hd else b"", data, digest(data) if dd else b""))


def _ic(ptype: int, pda: int, hdgst: bool, ddgst: bool, limit: int) -> bytes:
    return _pdu(ptype, struct.pack("<HBBI", 0, pda, (1 if hdgst else 0) | (2 if ddgst else 0), limit).ljust(120, b"\0"))


def icreq(hpda: int = 0, hdgst: bool = False, ddgst: bool = False, maxr2t: int = 0) -> bytes:
    """ICReq: PFV 0, the host's data alignment, the digests it wants, outstanding R2Ts (0's based)."""
    return _ic(ICREQ, hpda, hdgst, ddgst, maxr2t)


def icresp(cpda: int = 0, hdgst: bool = False, ddgst: bool = False, maxh2cdata: int = 131072) -> bytes:
    """ICResp: the digests the controller enables and the largest H2CData it accepts."""
    return _ic(ICRESP, cpda, hdgst, ddgst, maxh2cdata)


def capsule_cmd(sqe: bytes, data: bytes = b"", hdgst: bool = False, ddgst: bool = False) -> bytes:
    """A command capsule: the 64-byte SQE and its in-capsule data (if any)."""
    if len(sqe) != SQE_LEN:
        raise ValueError(f"an SQE is {SQE_LEN} bytes, not {len(sqe)}")
    return _pdu(CAPSULE_CMD, sqe, data, hdgst=hdgst, ddgst=ddgst)


def capsule_resp(cqe: bytes, hdgst: bool = False) -> bytes:
    """A response capsule: the 16-byte CQE."""
    if len(cqe) != CQE_LEN:
        raise ValueError(f"a CQE is {CQE_LEN} bytes, not {len(cqe)}")
    return _pdu(CAPSULE_RESP, cqe, hdgst=hdgst)


def h2c_data(cid: int, ttag: int, offset: int, data: bytes, last: bool = True,
             hdgst: bool = False, ddgst: bool = False) -> bytes:
    """H2CData: write data at ``offset`` of command ``cid``, answering the R2T tagged ``ttag``."""
    return _pdu(H2C_DATA, struct.pack("<HHII4x", cid, ttag, offset, len(data)), data,
                LAST_PDU if last else 0, hdgst, ddgst)


def c2h_data(cid: int, offset: int, data: bytes, last: bool = True, success: bool = False,
             hdgst: bool = False, ddgst: bool = False) -> bytes:
    """C2HData: read data at ``offset`` of command ``cid``; ``success`` stands in for the CapsuleResp."""
    flags = (LAST_PDU if last or success else 0) | (SUCCESS if success else 0)
    return _pdu(C2H_DATA, struct.pack("<HHII4x", cid, 0, offset, len(data)), data, flags, hdgst, ddgst)


def r2t(cid: int, ttag: int, offset: int, length: int, hdgst: bool = False) -> bytes:
    """R2T: the controller is ready for ``length`` bytes at ``offset`` of command ``cid``."""
    return _pdu(R2T, struct.pack("<HHII4x", cid, ttag, offset, length), hdgst=hdgst)


def term_req(ptype: int, fes: int, fei: int = 0, header: bytes = b"") -> bytes:
    """H2CTermReq or C2HTermReq (``ptype``): why the sender closes, with the offending PDU header."""
    if ptype not in (H2C_TERM, C2H_TERM):
        raise ValueError(f"not a termination request type: {ptype}")
    return _pdu(ptype, struct.pack("<HI10x", fes, fei), header[:MAX_TERM_DATA])


# -- reading PDU-specific headers ------------------------------------------------------------

@dataclass(frozen=True)
class ICParams:
    """ICReq/ICResp fields: ``pda`` is HPDA or CPDA, ``limit`` MAXR2T or MAXH2CDATA."""

    pfv: int
    pda: int
    hdgst: bool
    ddgst: bool
    limit: int


def parse_ic(p: PDU) -> ICParams:
    if p.type not in (ICREQ, ICRESP):
        raise BadPDU(f"{PDU_NAMES[p.type]} where an ICReq/ICResp was due", fes=FES_SEQUENCE)
    pfv, pda, dgst, limit = struct.unpack_from("<HBBI", p.raw_header, COMMON_LEN)
    return ICParams(pfv, pda, bool(dgst & 1), bool(dgst & 2), limit)


@dataclass(frozen=True)
class Command:
    """A submission queue entry: the fields every command has, and CDW10-15."""

    opcode: int
    flags: int
    cid: int
    nsid: int
    sgl_addr: int
    sgl_len: int
    sgl_type: int
    cdw10: int
    cdw11: int
    cdw12: int
    cdw13: int
    cdw14: int
    cdw15: int

    @property
    def fctype(self) -> int:
        """A Fabrics command's type (byte 4, where other commands have the NSID)."""
        return self.nsid & 0xFF


def parse_sqe(sqe: bytes) -> Command:
    if len(sqe) != SQE_LEN:
        raise BadPDU(f"an SQE is {SQE_LEN} bytes, not {len(sqe)}")
    opcode, flags, cid, nsid = struct.unpack_from("<BBHI", sqe)
    addr, length, stype = struct.unpack_from("<QI3xB", sqe, 24)
    return Command(opcode, flags, cid, nsid, addr, length, stype, *struct.unpack_from("<6I", sqe, 40))


@dataclass(frozen=True)
class Completion:
    """A completion queue entry; ``status`` without the phase bit (0 = success)."""

    cid: int
    status: int
    dw0: int = 0
    dw1: int = 0
    sqhd: int = 0
    sqid: int = 0

    @property
    def result64(self) -> int:
        """DW0 and DW1 as one value (an 8-byte Property Get)."""
        return self.dw0 | self.dw1 << 32


def parse_cqe(cqe: bytes) -> Completion:
    if len(cqe) != CQE_LEN:
        raise BadPDU(f"a CQE is {CQE_LEN} bytes, not {len(cqe)}")
    dw0, dw1, sqhd, sqid, cid, status = struct.unpack("<IIHHHH", cqe)
    return Completion(cid, status >> 1, dw0, dw1, sqhd, sqid)


@dataclass(frozen=True)
class Transfer:
    """An H2CData, C2HData or R2T: which command, transfer tag, where in its data, how much."""

    cid: int
    ttag: int
    offset: int
    length: int


def parse_transfer(p: PDU) -> Transfer:
    if p.type not in (H2C_DATA, C2H_DATA, R2T):
        raise BadPDU(f"{PDU_NAMES[p.type]} is not a data transfer PDU", fes=FES_SEQUENCE)
    t = Transfer(*struct.unpack_from("<HHII", p.raw_header, COMMON_LEN))
    if p.type != R2T and t.length != len(p.data):
        raise BadPDU(f"datal {t.length} != {len(p.data)} bytes of data", fei=16)
    if p.type == R2T and t.length == 0:
        raise BadPDU("R2T for 0 bytes", fei=16)
    return t


@dataclass(frozen=True)
class Term:
    """A termination request: fatal error status, field error information, offending header."""

    fes: int
    fei: int
    header: bytes


def parse_term(p: PDU) -> Term:
    if p.type not in (H2C_TERM, C2H_TERM):
        raise BadPDU(f"{PDU_NAMES[p.type]} is not a termination request", fes=FES_SEQUENCE)
    fes, fei = struct.unpack_from("<HI", p.raw_header, COMMON_LEN)
    return Term(fes, fei, p.data)


# -- submission and completion queue entries ---------------------------------------------------

def sgl_in_capsule(length: int) -> bytes:
    """SGL Data Block descriptor, subtype Offset: ``length`` bytes at offset 0 of the capsule data."""
    return struct.pack("<QI3xB", 0, length, SGL_IN_CAPSULE)


def sgl_transport(length: int) -> bytes:
    """Transport SGL Data Block: ``length`` bytes moved in data PDUs (0: the command has no data)."""
    return struct.pack("<QI3xB", 0, length, SGL_TRANSPORT)


def _sqe(opcode: int, cid: int, nsid: int = 0, sgl: bytes | None = None, *cdw: int) -> bytearray:
    b = bytearray(SQE_LEN)
    struct.pack_into("<BBHI", b, 0, opcode, PSDT_SGL, cid, nsid)
    b[24:40] = sgl if sgl is not None else sgl_transport(0)
    struct.pack_into(f"<{len(cdw)}I", b, 40, *cdw)
    return b


def connect_sqe(cid: int, qid: int, sqsize: int, kato_ms: int, cattr: int = 0) -> bytes:
    """Fabrics Connect for queue ``qid``; ``sqsize`` is 0's based (entries - 1), as on the wire."""
    b = _sqe(FABRICS, cid, CONNECT, sgl_in_capsule(CONNECT_DATA_LEN))
    struct.pack_into("<HHHBxI", b, 40, 0, qid, sqsize, cattr, kato_ms)
    return bytes(b)


def _field(value: str | bytes, size: int) -> bytes:
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > size:
        raise ValueError(f"{len(raw)} bytes do not fit a {size}-byte field")
    return raw.ljust(size, b"\0")


def connect_data(hostid: bytes, cntlid: int, subnqn: str | bytes, hostnqn: str | bytes) -> bytes:
    """The 1024-byte Connect data.  NQNs are NUL-padded; bytes go in as given (so tests can send
    what a well-behaved host would not: 256 bytes without a NUL, bad UTF-8)."""
    if len(hostid) != 16:
        raise ValueError("HOSTID is 16 bytes")
    return b"".join((bytes(hostid), struct.pack("<H", cntlid).ljust(240, b"\0"),
                     _field(subnqn, NQN_FIELD), _field(hostnqn, NQN_FIELD), bytes(256)))


def property_get(cid: int, offset: int, size: int = 4) -> bytes:
    """Fabrics Property Get of a 4- or 8-byte controller property (CAP is 8)."""
    b = _sqe(FABRICS, cid, PROPERTY_GET)
    struct.pack_into("<B3xI", b, 40, 1 if size == 8 else 0, offset)
    return bytes(b)


def property_set(cid: int, offset: int, value: int, size: int = 4) -> bytes:
    """Fabrics Property Set (CC is the one a host writes)."""
    b = _sqe(FABRICS, cid, PROPERTY_SET)
    struct.pack_into("<B3xIQ", b, 40, 1 if size == 8 else 0, offset, value)
    return bytes(b)


def identify(cid: int, cns: int, nsid: int = 0, cntid: int = 0) -> bytes:
    """Identify (4096 bytes come back): CNS 0 a namespace, 1 the controller, 2 the active NSIDs."""
    return bytes(_sqe(IDENTIFY, cid, nsid, sgl_transport(IDENTIFY_LEN), cns | cntid << 16))


def get_log_page(cid: int, lid: int, length: int, offset: int = 0, nsid: int = 0, lsp: int = 0,
                 rae: bool = False) -> bytes:
    """Get Log Page: ``length`` bytes (a multiple of 4) of log ``lid`` from byte ``offset``."""
    if length <= 0 or length % 4:
        raise ValueError("a log page read is a positive multiple of 4 bytes")
    numd = length // 4 - 1
    return bytes(_sqe(GET_LOG_PAGE, cid, nsid, sgl_transport(length),
                      lid | lsp << 8 | int(rae) << 15 | (numd & 0xFFFF) << 16, numd >> 16,
                      offset & 0xFFFFFFFF, offset >> 32))


def set_features(cid: int, fid: int, cdw11: int = 0, cdw12: int = 0) -> bytes:
    """Set Features ``fid`` (Number of Queues: ``cdw11`` = NCQR << 16 | NSQR, both 0's based)."""
    return bytes(_sqe(SET_FEATURES, cid, 0, None, fid, cdw11, cdw12))


def keep_alive(cid: int) -> bytes:
    return bytes(_sqe(KEEP_ALIVE, cid))


def read(cid: int, nsid: int, slba: int, nblocks: int, block_size: int = 512) -> bytes:
    """Read ``nblocks`` logical blocks from ``slba``; the data comes back in C2HData PDUs."""
    return bytes(_sqe(READ, cid, nsid, sgl_transport(nblocks * block_size),
                      slba & 0xFFFFFFFF, slba >> 32, nblocks - 1))


def write(cid: int, nsid: int, slba: int, nblocks: int, block_size: int = 512, in_capsule: bool = False) -> bytes:
    """Write ``nblocks`` from ``slba``: data in the capsule, or sent in H2CData after an R2T."""
    n = nblocks * block_size
    return bytes(_sqe(WRITE, cid, nsid, sgl_in_capsule(n) if in_capsule else sgl_transport(n),
                      slba & 0xFFFFFFFF, slba >> 32, nblocks - 1))


def cqe(cid: int, status: int = 0, dw0: int = 0, sqhd: int = 0, sqid: int = 0, dw1: int = 0) -> bytes:
    """A completion queue entry; ``status`` as Linux spells it (SCT << 8 | SC, DNR 0x4000), phase 0."""
    return struct.pack("<IIHHHH", dw0, dw1, sqhd, sqid, cid, (status << 1) & 0xFFFF)


# -- NQNs and the Connect ----------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_NQN = re.compile(rf"nqn\.\d{{4}}-(\d\d)\.({_LABEL}(?:\.{_LABEL})+):(.+)", re.DOTALL)
_UUID = re.compile(r"uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def check_nqn(s: str) -> str | None:
    """Why ``s`` is not a valid NQN, or None.

    Valid: ``nqn.yyyy-mm.<reverse domain>:<name>`` (at least two domain labels), the UUID form
    ``nqn.2014-08.org.nvmexpress:uuid:<uuid>``, and the discovery NQN; at most 223 bytes of UTF-8,
    no whitespace or control characters.
    """
    if not s:
        return "empty"
    if not s.strip():
        return "blank"
    try:
        n = len(s.encode())
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if n > MAX_NQN_BYTES:
        return f"{n} bytes (at most {MAX_NQN_BYTES})"
    if any(c.isspace() or not c.isprintable() for c in s):
        return "contains whitespace or a control character"
    if s == DISCOVERY_NQN:
        return None
    m = _NQN.fullmatch(s)
    if not m:
        return "not of the form nqn.yyyy-mm.reverse.domain:name"
    if not 1 <= int(m.group(1)) <= 12:
        return f"month {m.group(1)} in the date"
    domain = m.group(2).lower()
    if (domain == "org.nvmexpress" and not _UUID.fullmatch(m.group(3))) or domain.startswith("org.nvmexpress."):
        # names under nvmexpress.org are reserved: a host may use the UUID form, nothing else
        return "not of the form nqn.2014-08.org.nvmexpress:uuid:<uuid>"
    return None


@dataclass(frozen=True)
class Connect:
    """What a Fabrics Connect says: the queue (``qid`` 0 = admin), the host, the subsystem."""

    cid: int
    qid: int
    sqsize: int
    cattr: int
    kato: int
    hostid: bytes
    cntlid: int
    subnqn: str
    hostnqn: str


def _nqn_field(raw: bytes, name: str, offset: int) -> str:
    end = raw.find(b"\0")
    if end < 0:
        raise BadPDU(f"{name} not NUL-terminated within its {NQN_FIELD} bytes", fei=offset)
    # what follows the NUL is padding: the target reads up to the NUL as well, so both see one name
    try:
        s = raw[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise BadPDU(f"{name} is not valid UTF-8", fei=offset) from None
    why = check_nqn(s)
    if why:
        raise BadPDU(f"{name} {why}", fei=offset)
    return s


def parse_connect(pdu: bytes) -> Connect:
    """The Connect in one whole CapsuleCmd PDU (digests verified if present); BadPDU otherwise."""
    p = parse_pdu(pdu)
    if p.type != CAPSULE_CMD:
        raise BadPDU(f"{PDU_NAMES[p.type]}, not a CapsuleCmd", fes=FES_SEQUENCE)
    c = parse_sqe(p.sqe)
    if c.opcode != FABRICS or c.fctype != CONNECT:
        raise BadPDU(f"opcode 0x{c.opcode:02x} fctype 0x{c.fctype:02x}, not a Fabrics Connect", fei=8)
    if c.sgl_type != SGL_IN_CAPSULE or c.sgl_len != CONNECT_DATA_LEN:
        raise BadPDU(f"SGL type 0x{c.sgl_type:02x} length {c.sgl_len}, not {CONNECT_DATA_LEN} bytes in capsule",
                     fei=32)
    if len(p.data) != CONNECT_DATA_LEN:
        raise BadPDU(f"{len(p.data)} bytes of in-capsule data, a Connect carries {CONNECT_DATA_LEN}", fei=4)
    recfmt, qid, sqsize, cattr, kato = struct.unpack_from("<HHHBxI", p.sqe, 40)
    if recfmt != 0:
        raise BadPDU(f"record format {recfmt}", fei=48)
    d = p.data
    return Connect(c.cid, qid, sqsize, cattr, kato, d[:16], struct.unpack_from("<H", d, 16)[0],
                   _nqn_field(d[256:512], "subnqn", 256), _nqn_field(d[512:768], "hostnqn", 512))


# -- Identify data -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ControllerInfo:
    """The Identify Controller fields the peers use."""

    cntlid: int
    subnqn: str
    mdts: int = 5
    version: int = 0x10400
    cntrltype: int = 1
    nn: int = 1
    ioccsz: int = (SQE_LEN + 8192) // 16
    model: str = "ovs-fabric-suite NVMe/TCP"
    serial: str = ""
    kas: int = 10

    @property
    def max_transfer(self) -> int:
        """MDTS in bytes (4 KiB pages: CAP.MPSMIN is 0); MDTS 0 means no limit."""
        return 4096 << self.mdts if self.mdts else 1 << 30

    @property
    def in_capsule(self) -> int:
        """The most write data an I/O command capsule carries (IOCCSZ less the SQE)."""
        return max(self.ioccsz * 16 - SQE_LEN, 0)


def _ascii(s: str, size: int) -> bytes:
    """An NVMe "ASCII string": printable ASCII, space-padded, no NUL."""
    raw = s.encode("ascii")
    if len(raw) > size:
        raise ValueError(f"{s!r} does not fit {size} bytes")
    return raw.ljust(size, b" ")


def identify_controller(info: ControllerInfo) -> bytes:
    """The 4096-byte Identify Controller data structure (CNS 1) of a Fabrics controller."""
    b = bytearray(IDENTIFY_LEN)
    b[4:24] = _ascii(info.serial or f"ofs-{info.cntlid:04x}", 20)
    b[24:64] = _ascii(info.model, 40)
    b[64:72] = _ascii("0.1", 8)
    b[72] = 6                                                   # RAB
    b[77] = info.mdts
    struct.pack_into("<HI", b, 78, info.cntlid, info.version)
    b[111] = info.cntrltype                                     # 1 I/O, 2 discovery controller
    b[256 + 3] = 3                                              # AERL (0's based)
    b[261] = 0x04                                               # LPA: extended data for Get Log Page
    struct.pack_into("<H", b, 320, info.kas)                    # KAS, in 100 ms units
    b[512], b[513] = 0x66, 0x44                                 # SQES, CQES: 64 and 16 bytes
    struct.pack_into("<HI", b, 514, 128, info.nn)               # MAXCMD, NN
    struct.pack_into("<I", b, 536, 1 | 1 << 20)                 # SGLS: SGLs, offsets in the capsule
    b[768:1024] = _field(info.subnqn, NQN_FIELD)
    struct.pack_into("<IIHBB", b, 1792, info.ioccsz, CQE_LEN // 16, 0, 0, 1)  # IOCCSZ IORCSZ ICDOFF FCATT MSDBD
    return bytes(b)


def parse_identify_controller(b: bytes) -> ControllerInfo:
    if len(b) < IDENTIFY_LEN:
        raise BadPDU(f"{len(b)} bytes of Identify Controller data, not {IDENTIFY_LEN}")
    cntlid, version = struct.unpack_from("<HI", b, 78)
    subnqn = b[768:1024].split(b"\0", 1)[0].decode("utf-8", "replace")
    text = lambda lo, hi: b[lo:hi].decode("ascii", "replace").rstrip(" \0")  # noqa: E731
    return ControllerInfo(cntlid, subnqn, b[77], version, b[111], struct.unpack_from("<I", b, 516)[0],
                          struct.unpack_from("<I", b, 1792)[0], text(24, 64), text(4, 24),
                          struct.unpack_from("<H", b, 320)[0])


def identify_namespace(nblocks: int) -> bytes:
    """Identify Namespace (CNS 0): ``nblocks`` 512-byte logical blocks, one LBA format."""
    b = bytearray(IDENTIFY_LEN)
    struct.pack_into("<QQQ", b, 0, nblocks, nblocks, nblocks)  # NSZE NCAP NUSE
    b[128 + 2] = 9                                             # LBAF0: LBADS 2^9 = 512, no metadata
    return bytes(b)


def parse_identify_namespace(b: bytes) -> tuple[int, int]:
    """(blocks, block size) of an Identify Namespace structure."""
    if len(b) < IDENTIFY_LEN:
        raise BadPDU(f"{len(b)} bytes of Identify Namespace data, not {IDENTIFY_LEN}")
    lbads = b[128 + 4 * (b[26] & 0x0F) + 2]
    if not 9 <= lbads <= 16:
        raise BadPDU(f"LBA data size 2^{lbads}")
    return struct.unpack_from("<Q", b)[0], 1 << lbads


# -- the discovery log page (LID 0x70) -----------------------------------------------------------

TRTYPE_TCP = 3
ADRFAM_IPV4, ADRFAM_IPV6 = 1, 2
SUBTYPE_REFERRAL, SUBTYPE_NVME, SUBTYPE_CURRENT_DISCOVERY = 1, 2, 3
DLP_HEADER_LEN = DLP_ENTRY_LEN = 1024


@dataclass(frozen=True)
class DiscoveryEntry:
    """One record of the discovery log page: where a subsystem is reached.

    ``adrfam`` 0 means "from ``traddr``" (IPv6 when it has a colon); ``trsvcid`` is the TCP port.
    """

    subnqn: str
    traddr: str
    trsvcid: str = str(NVME_TCP_PORT)
    adrfam: int = 0
    subtype: int = SUBTYPE_NVME
    portid: int = 0

    def __post_init__(self):
        object.__setattr__(self, "trsvcid", str(self.trsvcid))
        if not self.adrfam:
            object.__setattr__(self, "adrfam", ADRFAM_IPV6 if ":" in self.traddr else ADRFAM_IPV4)


def discovery_log(entries: list[DiscoveryEntry], genctr: int = 1) -> bytes:
    """The whole discovery log page: a 1024-byte header (GENCTR, NUMREC, RECFMT) and one
    1024-byte TCP record per entry (TSAS: no security)."""
    out = [struct.pack("<QQH", genctr, len(entries), 0).ljust(DLP_HEADER_LEN, b"\0")]
    for e in entries:
        r = bytearray(DLP_ENTRY_LEN)
        # TRTYPE ADRFAM SUBTYPE TREQ (0: not specified) PORTID CNTLID (dynamic) ASQSZ
        struct.pack_into("<BBBBHHH", r, 0, TRTYPE_TCP, e.adrfam, e.subtype, 0, e.portid, CNTLID_DYNAMIC, 32)
        r[32:64] = _ascii(e.trsvcid, 32)
        r[256:512] = _field(e.subnqn, NQN_FIELD)
        r[512:768] = _ascii(e.traddr, 256)
        out.append(bytes(r))
    return b"".join(out)


def discovery_numrec(header: bytes) -> int:
    """NUMREC from (at least) the 1024-byte header: how many records the whole page has."""
    if len(header) < 16:
        raise BadPDU(f"{len(header)} bytes of discovery log header")
    return struct.unpack_from("<Q", header, 8)[0]


def parse_discovery_log(buf: bytes) -> list[DiscoveryEntry]:
    """The TCP records of a whole discovery log page (records of other transports are skipped)."""
    if len(buf) < DLP_HEADER_LEN:
        raise BadPDU(f"{len(buf)} bytes, a discovery log page starts with a {DLP_HEADER_LEN}-byte header")
    numrec, recfmt = struct.unpack_from("<QH", buf, 8)
    if recfmt != 0:
        raise BadPDU(f"discovery log record format {recfmt}")
    have = (len(buf) - DLP_HEADER_LEN) // DLP_ENTRY_LEN
    if have < numrec:
        raise BadPDU(f"discovery log page holds {have} of {numrec} records")
    out = []
    for i in range(numrec):
        r = buf[DLP_HEADER_LEN + i * DLP_ENTRY_LEN:DLP_HEADER_LEN + (i + 1) * DLP_ENTRY_LEN]
        trtype, adrfam, subtype, _treq, portid = struct.unpack_from("<BBBBH", r)
        if trtype != TRTYPE_TCP:
            continue
        try:
            subnqn = r[256:512].split(b"\0", 1)[0].decode("utf-8")
            # ASCII strings are space-padded by the spec; Linux's target pads with NULs
            trsvcid = r[32:64].decode("ascii").rstrip(" \0")
            traddr = r[512:768].decode("ascii").rstrip(" \0")
        except UnicodeDecodeError:
            raise BadPDU(f"discovery log record {i} is not ASCII/UTF-8") from None
        out.append(DiscoveryEntry(subnqn, traddr, trsvcid, adrfam, subtype, portid))
    return out
