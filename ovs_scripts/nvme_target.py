"""A small NVMe/TCP target (controller side) for the NVMe-oF zoning tests and benchmark.

    python -m ovs_scripts.nvme_target --listen 127.0.0.1:4420 --subsystem nqn.2024-01.org.example:disk1=64
    python -m ovs_scripts.nvme_target --listen 127.0.0.1 --discovery \\
        --entry nqn.2024-01.org.example:disk1@127.0.0.1:4420        # or --entries-url URL

No NVMe/TCP target is packaged for Debian 12 and the kernel here has no nvmet, so this one speaks
the real wire format (:mod:`ryu_apps.functions.nvme_zoning.pdu`; checked against Wireshark):

* every ``--subsystem NQN=SIZE_MIB`` gets one RAM-backed namespace (NSID 1, 512-byte blocks);
* any host is admitted: the fabric does the zoning.  Each TCP connection is one queue: ICReq /
  ICResp (header and data digests as the host asks), then a Fabrics Connect.  A Connect of QID 0
  creates a controller (dynamic model: the target picks the CNTLID); a Connect of an I/O queue
  names that CNTLID and must come from the same host for the same subsystem;
* admin commands: Property Get/Set (CAP, VS 1.4, CC, CSTS: RDY follows CC.EN, a shutdown
  completes at once), Identify (controller, namespace, active namespace list), Set Features
  (number of queues, keep-alive timeout, async events), Keep Alive, Async Event Request (held,
  never completed: nothing happens here), Get Log Page (the discovery log, LID 0x70);
* I/O: Read (C2HData PDUs of up to 32 KiB, then the response capsule), Write (in the capsule up
  to 8 KiB, else R2T and H2CData), at most MDTS (128 KiB) per command;
* a malformed PDU gets a C2HTermReq naming the fault, then the connection is closed; closing the
  admin queue (or its keep-alive timeout, when KATO is set) ends the controller and its I/O queues.

``--discovery`` adds the discovery subsystem (``nqn.2014-08.org.nvmexpress.discovery``; the default
port becomes 8009).  Its log page lists what ``entries_for(hostnqn)`` returns: the ``--entry
NQN@ADDR:PORT`` list, or ``GET URL?hostnqn=...`` answering JSON ``[{"subnqn", "traddr",
"trsvcid"}]`` (``http://h:p/path`` or ``unix:/path/to.sock:/url/path``), so the zoning can decide.

Prints ``listening on ADDR:PORT`` per listener once ready; logs each Connect as
``connect {"peer":..., "hostnqn":..., "subnqn":..., "qid":..., "cntlid":..., "status":...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
import struct
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from ryu_apps.functions.nvme_zoning import pdu as P

LOG = logging.getLogger("nvme-target")
BLOCK = 512
MDTS = 5                        # 2^5 pages of 4 KiB: 128 KiB per command
MAX_TRANSFER = 4096 << MDTS
IN_CAPSULE = 8192               # write data an I/O command capsule may carry
MAXH2CDATA = 32 * 1024          # the largest H2CData PDU we accept (ICResp)
C2H_CHUNK = 32 * 1024           # read data per C2HData PDU
MQES = 127                      # queue entries, 0's based (CAP.MQES)
MAX_IO_QUEUES = 64
KATO_GRACE_S = 1.0              # slack on top of KATO before the admin queue is declared dead
#: CAP: MQES, CQR (contiguous queues), TO 1 (500 ms), CSS bit 37 (NVM command set), MPSMIN/MAX 0 (4 KiB)
CAP = MQES | 1 << 16 | 1 << 24 | 1 << 37
VS = 0x00010400                 # NVMe 1.4
EntriesFor = Callable[[str], list[P.DiscoveryEntry]]


class Subsystem:
    """An NVM subsystem with one RAM namespace (NSID 1)."""

    def __init__(self, nqn: str, size: int):
        self.nqn, self.data = nqn, bytearray(size)
        self.nblocks = size // BLOCK


@dataclass
class Ctrl:
    """A controller: made by an admin queue's Connect, ended when that queue closes."""

    cntlid: int
    subnqn: str
    hostnqn: str
    subsystem: Subsystem | None         # None: the discovery controller
    kato_ms: int = 0
    cc: int = 0
    csts: int = 0
    io_queues: int = MAX_IO_QUEUES
    queues: dict[int, Queue] = field(default_factory=dict)


class Target:
    """Subsystems, the optional discovery subsystem, and the live controllers."""

    def __init__(self, subsystems: dict[str, int], discovery: bool = False, entries_for: EntriesFor | None = None):
        self.subsystems = {nqn: Subsystem(nqn, size) for nqn, size in subsystems.items()}
        self.discovery = discovery
        self.entries_for: EntriesFor = entries_for or (lambda hostnqn: [])
        self.ctrls: dict[int, Ctrl] = {}
        self._cntlids = itertools.cycle(range(1, 0xFFF0))     # 0xFFF0.. are reserved
        self.servers: list[asyncio.Server] = []

    async def listen(self, addrs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Start a listener on each (host, port); returns the bound addresses (port 0 resolved)."""
        bound = []
        for host, port in addrs:
            srv = await asyncio.start_server(lambda r, w: Queue(self, r, w).run(), host, port, reuse_address=True)
            self.servers.append(srv)
            bound.append(srv.sockets[0].getsockname()[:2])
        return bound

    def close(self) -> None:
        for srv in self.servers:
            srv.close()

    def new_cntlid(self) -> int:
        for _ in range(0xFFF0):
            c = next(self._cntlids)
            if c not in self.ctrls:
                return c
        raise RuntimeError("no free controller id")


class _CmdError(Exception):
    """A command that completes with an error status (``why`` is logged)."""

    def __init__(self, status: int, why: str = "", dw0: int = 0):
        super().__init__(why)
        self.status, self.dw0 = status, dw0


def _status_error(status: int, why: str = "") -> _CmdError:
    """An error the host should not retry (DNR)."""
    return _CmdError(status | P.DNR, why)


class Queue:
    """One TCP connection = one NVMe queue (admin or I/O) of one controller."""

    def __init__(self, target: Target, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.t, self.reader, self.writer = target, reader, writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        self.stream = P.PDUStream()
        self.hdgst = self.ddgst = False
        self.ic_done = False
        self.ctrl: Ctrl | None = None
        self.qid = -1
        self.sqsize = MQES
        self.sqhd = 0
        self._ttags = itertools.count()
        self.pending: dict[int, list] = {}     # ttag -> [command, buffer, bytes received]

    # -- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                timeout = None
                if self.qid == 0 and self.ctrl and self.ctrl.kato_ms:
                    timeout = self.ctrl.kato_ms / 1000 + KATO_GRACE_S
                try:
                    data = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
                except asyncio.TimeoutError:
                    LOG.info("keep-alive timeout %s", json.dumps({"peer": self.peer, "cntlid": self.ctrl.cntlid}))
                    break
                if not data:
                    break
                raw = b""
                try:
                    pdus = self.stream.feed(data)
                    while pdus:         # then feed(b""): a bad header behind these PDUs raises now
                        for raw in pdus:
                            if not await self.handle(raw):
                                return
                        raw = b""
                        pdus = self.stream.feed(b"")
                except P.BadPDU as e:
                    await self.terminate(e, raw[:P.MAX_TERM_DATA] if raw else self.stream.head())
                    return
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    async def terminate(self, e: P.BadPDU, header: bytes) -> None:
        """C2HTermReq naming the fault, then close (the spec allows nothing else after it)."""
        LOG.warning("terminate %s", json.dumps({"peer": self.peer, "qid": self.qid, "fes": e.fes, "why": str(e)}))
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(P.term_req(P.C2H_TERM, e.fes, e.fei, header))
            await self.writer.drain()

    def close(self) -> None:
        ctrl = self.ctrl
        if ctrl is not None and ctrl.queues.get(self.qid) is self:
            del ctrl.queues[self.qid]
            LOG.info("disconnect %s", json.dumps({"peer": self.peer, "qid": self.qid, "cntlid": ctrl.cntlid,
                                                  "subnqn": ctrl.subnqn, "hostnqn": ctrl.hostnqn}))
            if self.qid == 0:
                # the admin queue ends the controller, and with it every I/O queue
                self.t.ctrls.pop(ctrl.cntlid, None)
                for q in list(ctrl.queues.values()):
                    q.writer.close()
        self.writer.close()

    def send(self, pdu: bytes) -> None:
        self.writer.write(pdu)

    def respond(self, cid: int, status: int = 0, dw0: int = 0, dw1: int = 0) -> None:
        self.sqhd = (self.sqhd + 1) % (self.sqsize + 1)
        self.send(P.capsule_resp(P.cqe(cid, status, dw0, self.sqhd, max(self.qid, 0), dw1), self.hdgst))

    def send_data(self, cid: int, data: bytes) -> None:
        """Read data in C2HData PDUs (the last one flagged), then the response capsule."""
        for off in range(0, len(data), C2H_CHUNK):
            chunk = data[off:off + C2H_CHUNK]
            self.send(P.c2h_data(cid, off, chunk, last=off + len(chunk) == len(data),
                                 hdgst=self.hdgst, ddgst=self.ddgst))
        self.respond(cid)

    # -- PDUs ------------------------------------------------------------------------------------

    async def handle(self, raw: bytes) -> bool:
        """Act on one whole PDU; False when the connection is to be closed."""
        p = P.parse_pdu(raw)
        if not self.ic_done:
            return self.handle_icreq(p)
        if p.type in (P.CAPSULE_CMD, P.H2C_DATA):
            if bool(p.header.hdgst) != self.hdgst:
                raise P.BadPDU("header digest flag differs from what ICReq negotiated", fei=1)
            if p.header.pdo and bool(p.header.ddgst) != self.ddgst:
                raise P.BadPDU("data digest flag differs from what ICReq negotiated", fei=1)
        if p.type == P.CAPSULE_CMD:
            await self.handle_command(raw, p)
        elif p.type == P.H2C_DATA:
            self.handle_h2c_data(p)
        elif p.type == P.H2C_TERM:
            term = P.parse_term(p)
            LOG.warning("host terminated %s", json.dumps({"peer": self.peer, "fes": term.fes, "fei": term.fei}))
            return False
        else:
            raise P.BadPDU(f"{P.PDU_NAMES[p.type]} from a host", fes=P.FES_SEQUENCE)
        return True

    def handle_icreq(self, p: P.PDU) -> bool:
        if p.type != P.ICREQ:
            raise P.BadPDU(f"{P.PDU_NAMES[p.type]} before ICReq", fes=P.FES_SEQUENCE)
        ic = P.parse_ic(p)
        if ic.pfv != 0:
            raise P.BadPDU(f"PDU format version {ic.pfv}", fes=P.FES_UNSUPPORTED, fei=8)
        if ic.pda != 0:
            # as Linux's target: no host data alignment (padding) is supported
            raise P.BadPDU(f"HPDA {ic.pda}", fes=P.FES_UNSUPPORTED, fei=10)
        self.hdgst, self.ddgst, self.ic_done = ic.hdgst, ic.ddgst, True
        self.send(P.icresp(0, ic.hdgst, ic.ddgst, MAXH2CDATA))
        return True

    async def handle_command(self, raw: bytes, p: P.PDU) -> None:
        cmd = P.parse_sqe(p.sqe)
        try:
            if self.ctrl is None:
                if (cmd.opcode, cmd.fctype) != (P.FABRICS, P.CONNECT):
                    raise _status_error(P.SC_CMD_SEQUENCE, "command before Connect")
                self.handle_connect(raw, cmd)
            elif cmd.opcode == P.FABRICS:
                self.handle_fabrics(cmd)
            elif self.qid == 0:
                await self.handle_admin(cmd)
            else:
                self.handle_io(cmd, p.data)
        except _CmdError as e:
            if str(e):
                LOG.info("command failed %s", json.dumps({"peer": self.peer, "qid": self.qid, "opcode": cmd.opcode,
                                                          "status": hex(e.status), "why": str(e)}))
            self.respond(cmd.cid, e.status, e.dw0)

    def handle_connect(self, raw: bytes, cmd: P.Command) -> None:
        """Admit the queue, or complete the Connect with Connect Invalid Parameters (and log why)."""
        entry = {"peer": self.peer}
        try:
            c = P.parse_connect(raw)
        except P.BadPDU as e:
            # a well-framed Connect whose fields are wrong: IATTR 1 + IPO (Linux's layout) for the NQNs
            iattr = 1 << 16 | e.fei if e.fei in (256, 512) else 0
            LOG.info("connect %s", json.dumps({**entry, "status": f"refused: {e}"}))
            raise _CmdError(P.SC_CONNECT_INVALID_PARAM | P.DNR, "", iattr) from None
        entry.update(hostnqn=c.hostnqn, subnqn=c.subnqn, qid=c.qid)
        try:
            ctrl = self.admit(c)
        except _CmdError as e:
            LOG.info("connect %s", json.dumps({**entry, "cntlid": c.cntlid, "status": f"refused: {e}"}))
            raise _CmdError(e.status, "", e.dw0) from None        # logged once, here
        self.ctrl, self.qid, self.sqsize = ctrl, c.qid, c.sqsize
        ctrl.queues[c.qid] = self
        LOG.info("connect %s", json.dumps({**entry, "cntlid": ctrl.cntlid, "status": "ok"}))
        self.respond(cmd.cid, 0, ctrl.cntlid)

    def admit(self, c: P.Connect) -> Ctrl:
        def invalid(why: str, sqe_offset: int | None = None, data_offset: int | None = None) -> _CmdError:
            dw0 = sqe_offset if sqe_offset is not None else (1 << 16 | data_offset if data_offset is not None else 0)
            return _CmdError(P.SC_CONNECT_INVALID_PARAM | P.DNR, why, dw0)

        if c.sqsize == 0 or c.sqsize > MQES:
            raise invalid(f"sqsize {c.sqsize}", sqe_offset=44)
        if c.subnqn == P.DISCOVERY_NQN and self.t.discovery:
            subsystem = None
            if c.qid != 0:
                raise invalid("the discovery controller has no I/O queues", sqe_offset=42)
        elif c.subnqn in self.t.subsystems:
            subsystem = self.t.subsystems[c.subnqn]
        else:
            raise invalid("no such subsystem", data_offset=256)
        if c.qid == 0:
            ctrl = Ctrl(self.t.new_cntlid(), c.subnqn, c.hostnqn, subsystem, c.kato)
            self.t.ctrls[ctrl.cntlid] = ctrl
            return ctrl
        ctrl = self.t.ctrls.get(c.cntlid)
        if ctrl is None or ctrl.subnqn != c.subnqn or ctrl.hostnqn != c.hostnqn:
            raise invalid(f"no controller {c.cntlid} of this host and subsystem", data_offset=16)
        if c.qid > ctrl.io_queues or c.qid in ctrl.queues:
            raise invalid(f"qid {c.qid} taken or beyond {ctrl.io_queues}", sqe_offset=42)
        return ctrl

    # -- admin and Fabrics commands ----------------------------------------------------------

    def handle_fabrics(self, cmd: P.Command) -> None:
        ctrl = self.ctrl
        assert ctrl is not None
        if cmd.fctype == P.CONNECT:
            raise _status_error(P.SC_CMD_SEQUENCE, "second Connect on a queue")
        if self.qid != 0:
            raise _status_error(P.SC_INVALID_OPCODE, "property access on an I/O queue")
        size8, offset = cmd.cdw10 & 7, cmd.cdw11
        if cmd.fctype == P.PROPERTY_GET:
            value = {P.PROP_CAP: CAP, P.PROP_VS: VS, P.PROP_CC: ctrl.cc, P.PROP_CSTS: ctrl.csts}.get(offset)
            if value is None:
                raise _status_error(P.SC_INVALID_FIELD, f"property 0x{offset:x}")
            self.respond(cmd.cid, 0, value & 0xFFFFFFFF, value >> 32 if size8 else 0)
        elif cmd.fctype == P.PROPERTY_SET:
            if offset != P.PROP_CC:
                raise _status_error(P.SC_INVALID_FIELD, f"property 0x{offset:x} is read-only")
            ctrl.cc = cmd.cdw12
            ready = P.CSTS_RDY if ctrl.cc & P.CC_EN else 0
            shutdown = 2 << 2 if (ctrl.cc >> 14) & 3 else 0       # SHN set: SHST = shutdown complete
            ctrl.csts = ready | shutdown
            self.respond(cmd.cid)
        else:
            raise _status_error(P.SC_INVALID_OPCODE, f"fctype 0x{cmd.fctype:02x}")

    async def handle_admin(self, cmd: P.Command) -> None:
        ctrl = self.ctrl
        assert ctrl is not None
        if cmd.opcode == P.KEEP_ALIVE:
            self.respond(cmd.cid)
        elif cmd.opcode == P.IDENTIFY:
            self.send_data(cmd.cid, self.identify(cmd)[:cmd.sgl_len])
        elif cmd.opcode == P.SET_FEATURES:
            fid = cmd.cdw10 & 0xFF
            if fid == P.FEAT_NUM_QUEUES:
                want = max(cmd.cdw11 & 0xFFFF, cmd.cdw11 >> 16) + 1
                ctrl.io_queues = min(want, MAX_IO_QUEUES)
                n = ctrl.io_queues - 1
                self.respond(cmd.cid, 0, n | n << 16)
            elif fid == P.FEAT_KATO:
                ctrl.kato_ms = cmd.cdw11
                self.respond(cmd.cid)
            elif fid == P.FEAT_ASYNC_EVENT:
                self.respond(cmd.cid)
            else:
                raise _status_error(P.SC_INVALID_FIELD, f"feature 0x{fid:02x}")
        elif cmd.opcode == P.ASYNC_EVENT:
            pass            # held until an event happens: none ever does here
        elif cmd.opcode == P.GET_LOG_PAGE:
            self.send_data(cmd.cid, await self.log_page(cmd))
        else:
            raise _status_error(P.SC_INVALID_OPCODE, f"admin opcode 0x{cmd.opcode:02x}")

    def identify(self, cmd: P.Command) -> bytes:
        ctrl = self.ctrl
        assert ctrl is not None
        cns, sub = cmd.cdw10 & 0xFF, ctrl.subsystem
        if cmd.sgl_type != P.SGL_TRANSPORT or cmd.sgl_len == 0:
            raise _status_error(P.SC_SGL_LENGTH, "identify without a data buffer")
        if cns == P.CNS_CONTROLLER:
            return P.identify_controller(P.ControllerInfo(
                ctrl.cntlid, ctrl.subnqn, MDTS, VS, 1 if sub else 2, 1 if sub else 0, (P.SQE_LEN + IN_CAPSULE) // 16))
        if sub is None:
            raise _status_error(P.SC_INVALID_FIELD, f"CNS {cns} on the discovery controller")
        if cns == P.CNS_NAMESPACE:
            if cmd.nsid != 1:
                raise _status_error(P.SC_INVALID_NS, f"nsid {cmd.nsid}")
            return P.identify_namespace(sub.nblocks)
        if cns == P.CNS_ACTIVE_NS:
            return struct.pack("<I", 1 if cmd.nsid < 1 else 0).ljust(P.IDENTIFY_LEN, b"\0")
        raise _status_error(P.SC_INVALID_FIELD, f"CNS {cns}")

    async def log_page(self, cmd: P.Command) -> bytes:
        ctrl = self.ctrl
        assert ctrl is not None
        lid = cmd.cdw10 & 0xFF
        length = ((cmd.cdw10 >> 16 | (cmd.cdw11 & 0xFFFF) << 16) + 1) * 4
        offset = cmd.cdw12 | cmd.cdw13 << 32
        if lid != P.LID_DISCOVERY or ctrl.subsystem is not None:
            raise _status_error(P.SC_INVALID_LOG_PAGE, f"log page 0x{lid:02x}")
        if length > MAX_TRANSFER:
            raise _status_error(P.SC_INVALID_FIELD, f"{length} bytes > MDTS")
        if cmd.sgl_type != P.SGL_TRANSPORT or cmd.sgl_len != length:
            raise _status_error(P.SC_SGL_LENGTH, f"SGL of {cmd.sgl_len} bytes for {length}")
        try:
            entries = await asyncio.to_thread(self.t.entries_for, ctrl.hostnqn)
            records = P.discovery_log(entries)[P.DLP_HEADER_LEN:]
        except Exception as exc:            # a lookup that fails says so instead of an empty list
            LOG.warning("discovery lookup failed for %s: %s", ctrl.hostnqn, exc)
            raise _CmdError(P.SC_INTERNAL, "discovery lookup failed") from None
        # GENCTR must change when the log does (a host re-reads then): a digest of the records
        page = P.discovery_log(entries, 1 + int.from_bytes(P.digest(records), "little"))
        return page[offset:offset + length].ljust(length, b"\0")

    # -- I/O commands --------------------------------------------------------------------------

    def _range(self, cmd: P.Command) -> tuple[Subsystem, int, int]:
        sub = self.ctrl.subsystem if self.ctrl else None
        if sub is None:
            raise _status_error(P.SC_INVALID_OPCODE, "I/O on the discovery controller")
        if cmd.nsid != 1:
            raise _status_error(P.SC_INVALID_NS, f"nsid {cmd.nsid}")
        slba, nlb = cmd.cdw10 | cmd.cdw11 << 32, (cmd.cdw12 & 0xFFFF) + 1
        if slba + nlb > sub.nblocks:
            raise _status_error(P.SC_LBA_RANGE, f"blocks {slba}+{nlb} beyond {sub.nblocks}")
        n = nlb * BLOCK
        if n > MAX_TRANSFER:
            raise _status_error(P.SC_INVALID_FIELD, f"{n} bytes > MDTS")
        if cmd.sgl_len != n:
            raise _status_error(P.SC_SGL_LENGTH, f"SGL of {cmd.sgl_len} bytes for {n}")
        return sub, slba * BLOCK, n

    def handle_io(self, cmd: P.Command, data: bytes) -> None:
        if cmd.opcode == P.READ:
            sub, start, n = self._range(cmd)
            self.send_data(cmd.cid, bytes(sub.data[start:start + n]))
        elif cmd.opcode == P.WRITE:
            sub, start, n = self._range(cmd)
            if cmd.sgl_type == P.SGL_IN_CAPSULE:
                if len(data) != n or n > IN_CAPSULE:
                    raise _status_error(P.SC_SGL_LENGTH, f"{len(data)} bytes in capsule for {n}")
                sub.data[start:start + n] = data
                self.respond(cmd.cid)
            elif cmd.sgl_type == P.SGL_TRANSPORT and not data:
                if len(self.pending) > self.sqsize:
                    raise P.BadPDU("more writes waiting for data than the queue holds", fes=P.FES_LIMIT)
                ttag = next(self._ttags) & 0xFFFF
                self.pending[ttag] = [cmd, bytearray(n), 0]
                self.send(P.r2t(cmd.cid, ttag, 0, n, self.hdgst))
            else:
                raise _status_error(P.SC_SGL_TYPE, f"SGL type 0x{cmd.sgl_type:02x}")
        else:
            raise _status_error(P.SC_INVALID_OPCODE, f"I/O opcode 0x{cmd.opcode:02x}")

    def handle_h2c_data(self, p: P.PDU) -> None:
        t = P.parse_transfer(p)
        entry = self.pending.get(t.ttag)
        if entry is None or entry[0].cid != t.cid:
            raise P.BadPDU(f"H2CData for ttag {t.ttag} cid {t.cid}, no such R2T", fei=8)
        cmd, buf, got = entry
        if t.length > MAXH2CDATA:
            raise P.BadPDU(f"H2CData of {t.length} bytes > {MAXH2CDATA}", fes=P.FES_LIMIT, fei=16)
        if t.offset != got or got + t.length > len(buf):
            raise P.BadPDU(f"H2CData at {t.offset}+{t.length}, expected {got} of {len(buf)}",
                           fes=P.FES_OUT_OF_RANGE, fei=12)
        buf[got:got + t.length] = p.data
        entry[2] = got + t.length
        if entry[2] == len(buf):
            del self.pending[t.ttag]
            sub, start, n = self._range(cmd)
            sub.data[start:start + n] = buf
            self.respond(cmd.cid)


# -- discovery entries from the command line or a URL ----------------------------------------------

def split_hostport(s: str, default_port: int) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT``, ``[V6]``, ``[V6]:PORT`` or a bare IPv6 address."""
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if s.count(":") == 1:
        host, port = s.split(":")
        return host, int(port)
    return s, default_port


def parse_entry(s: str) -> P.DiscoveryEntry:
    """``NQN@ADDR:PORT`` (the last ``@`` splits)."""
    nqn, at, addr = s.rpartition("@")
    if not at or P.check_nqn(nqn):
        raise ValueError(f"{s!r}: not NQN@ADDR:PORT ({P.check_nqn(nqn) or 'no @'})")
    host, port = split_hostport(addr, P.NVME_TCP_PORT)
    return P.DiscoveryEntry(nqn, host, str(port))


def url_entries(url: str, timeout: float = 5.0) -> EntriesFor:
    """``entries_for`` asking ``GET <url>?hostnqn=<nqn>`` (``http(s)://h:p/path`` or
    ``unix:/path/to.sock:/url/path``, over the proxy agent's controller client)."""
    from ryu_apps.functions.proxy_cluster.agent import Controller

    if url.startswith("unix:"):
        sock, sep, path = url[5:].partition(":/")
        base, path = "unix:" + sock, "/" + path if sep else "/"
    else:
        u = urllib.parse.urlsplit(url)
        base, path = f"{u.scheme}://{u.netloc}", (u.path or "/") + (f"?{u.query}" if u.query else "")
    client = Controller([base])

    def entries_for(hostnqn: str) -> list[P.DiscoveryEntry]:
        q = urllib.parse.urlencode({"hostnqn": hostnqn})
        status, body = client.get(f"{path}{'&' if '?' in path else '?'}{q}", timeout)
        if status != 200 or not isinstance(body, list):
            raise OSError(f"GET {path}: {status} {str(body)[:200]}")
        return [P.DiscoveryEntry(e["subnqn"], e["traddr"], str(e.get("trsvcid", P.NVME_TCP_PORT)),
                                 int(e.get("adrfam", 0)), int(e.get("subtype", P.SUBTYPE_NVME))) for e in body]

    return entries_for


def _subsystem_arg(s: str) -> tuple[str, int]:
    nqn, eq, size = s.rpartition("=")
    why = P.check_nqn(nqn) if eq else "no =SIZE_MIB"
    if why or not size.isdigit() or not 0 < int(size) <= 16384:
        raise argparse.ArgumentTypeError(f"{s!r}: NQN=SIZE_MIB ({why or 'size 1..16384 MiB'})")
    return nqn, int(size) << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nvme_target", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", action="append", default=[], metavar="ADDR[:PORT]",
                    help="listen address (repeatable; default 127.0.0.1, port 4420 or 8009 with --discovery)")
    ap.add_argument("--subsystem", action="append", default=[], type=_subsystem_arg, metavar="NQN=SIZE_MIB")
    ap.add_argument("--discovery", action="store_true", help="serve the discovery subsystem too")
    ap.add_argument("--entry", action="append", default=[], metavar="NQN@ADDR:PORT",
                    help="a discovery log entry (for every host)")
    ap.add_argument("--entries-url", help="GET URL?hostnqn=... returns the host's entries as JSON")
    ap.add_argument("--log", help="log file (default: stderr)")
    args = ap.parse_args(argv)
    if not args.subsystem and not args.discovery:
        ap.error("nothing to serve: give --subsystem and/or --discovery")
    logging.basicConfig(filename=args.log, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.entries_url:
        entries_for = url_entries(args.entries_url)
    else:
        try:
            static = [parse_entry(e) for e in args.entry]
        except ValueError as exc:
            ap.error(str(exc))
        entries_for = lambda hostnqn: static  # noqa: E731
    default_port = P.DISCOVERY_PORT if args.discovery else P.NVME_TCP_PORT
    addrs = [split_hostport(a, default_port) for a in args.listen or ["127.0.0.1"]]
    return asyncio.run(_serve(Target(dict(args.subsystem), args.discovery, entries_for), addrs))


async def _serve(target: Target, addrs: list[tuple[str, int]]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for host, port in await target.listen(addrs):
        print(f"listening on {f'[{host}]' if ':' in host else host}:{port}", flush=True)
    LOG.info("serving %s", json.dumps({"subsystems": sorted(target.subsystems), "discovery": target.discovery}))
    await stop.wait()
    target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
