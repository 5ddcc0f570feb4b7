"""A small NVMe/TCP host (initiator): a library for the NVMe-oF zoning tests and a CLI that prints JSON.

    python -m ovs_scripts.nvme_host discover --addr 127.0.0.1 [--port 8009] [--hostnqn H]
    python -m ovs_scripts.nvme_host connect --addr A [--port 4420] --subnqn S [--queues N]
    python -m ovs_scripts.nvme_host write-read --addr A --port P --hostnqn H --subnqn S --queues 4 --mib 64

It does what Linux's ``nvme connect`` does, on the real wire format
(:mod:`ryu_apps.functions.nvme_zoning.pdu`): per queue one TCP connection, ICReq/ICResp (header
and data digests on request), a Fabrics Connect (QID 0 for the admin queue, which gets the
CNTLID; QID 1..N naming it), then on the admin queue Property Set CC.EN=1 and a wait for
CSTS.RDY, Identify, Set Features (number of queues).  Large reads and writes are cut at the
controller's MDTS and spread over the I/O queues (one thread per queue, one command in flight
per queue); writes up to the in-capsule size go in the capsule, larger ones wait for R2T.

Errors: :class:`NvmeError` for an NVMe status (``.status``, Linux's spelling) or a termination
request from the target; ``ConnectionResetError`` when the connection is reset or closed under
a command (what a fabric refusing a Connect looks like); ``TimeoutError`` when nothing answers.

For hostile tests: :class:`Queue` sends any bytes and reads PDUs one by one, and
:func:`raw_connect_bytes` gives the exact bytes of ICReq + Connect, to be cut as a test likes.
Sockets are blocking; every wait is bounded by the timeout.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import random
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ryu_apps.functions.nvme_zoning import pdu as P

ADMIN_SQSIZE = 31           # 32 entries, as Linux (0's based on the wire)
IO_SQSIZE = 127
MAX_CHUNK = 1 << 20         # never more per command than this, whatever MDTS says
STATUS_NAMES = {
    P.SC_INVALID_OPCODE: "Invalid Command Opcode", P.SC_INVALID_FIELD: "Invalid Field in Command",
    P.SC_INTERNAL: "Internal Error", P.SC_INVALID_NS: "Invalid Namespace or Format",
    P.SC_CMD_SEQUENCE: "Command Sequence Error", P.SC_SGL_LENGTH: "Data SGL Length Invalid",
    P.SC_SGL_TYPE: "SGL Descriptor Type Invalid", P.SC_LBA_RANGE: "LBA Out of Range",
    P.SC_INVALID_LOG_PAGE: "Invalid Log Page", P.SC_CONNECT_CTRL_BUSY: "Connect Controller Busy",
    P.SC_CONNECT_INVALID_PARAM: "Connect Invalid Parameters", P.SC_CONNECT_INVALID_HOST: "Connect Invalid Host",
}


class NvmeError(Exception):
    """A command completed with an error ``status`` (SCT << 8 | SC, DNR 0x4000), or the target ended
    the connection with a termination request (``fes``)."""

    def __init__(self, message: str, status: int | None = None, fes: int | None = None, dw0: int = 0):
        super().__init__(message)
        self.status, self.fes, self.dw0 = status, fes, dw0


def new_hostnqn() -> str:
    return f"nqn.2014-08.org.nvmexpress:uuid:{uuid.uuid4()}"


def hostid_of(hostnqn: str) -> bytes:
    """The HOSTID a host sends: the UUID of a UUID-form NQN (as Linux), else one derived from the NQN."""
    tail = hostnqn.rsplit(":uuid:", 1)[-1]
    try:
        return uuid.UUID(tail).bytes
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, hostnqn).bytes


def raw_connect_bytes(subnqn: str | bytes, hostnqn: str | bytes, qid: int = 0, cntlid: int = P.CNTLID_DYNAMIC,
                      hostid: bytes | None = None, hdgst: bool = False, ddgst: bool = False, kato_ms: int = 0,
                      sqsize: int = ADMIN_SQSIZE, cid: int = 0) -> bytes:
    """The exact bytes a host sends to open a queue: ICReq, then the Connect capsule.

    NQNs given as bytes go in unchecked (hostile tests); the digests are those asked in the ICReq.
    """
    if hostid is None:
        hostid = hostid_of(hostnqn if isinstance(hostnqn, str) else hostnqn.decode("utf-8", "replace"))
    return P.icreq(hdgst=hdgst, ddgst=ddgst) + P.capsule_cmd(
        P.connect_sqe(cid, qid, sqsize, kato_ms), P.connect_data(hostid, cntlid, subnqn, hostnqn), hdgst, ddgst)


class Queue:
    """One NVMe/TCP connection: one queue (admin or I/O) of a controller.  Thread-safe per command."""

    def __init__(self, addr: str, port: int, hdgst: bool = False, ddgst: bool = False, timeout: float = 10.0,
                 trace: list | None = None):
        self.sock = socket.create_connection((addr, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hdgst, self.ddgst = hdgst, ddgst
        self.maxh2cdata = 4096
        self.stream = P.PDUStream()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.lock = threading.Lock()
        self._cids = itertools.count(1)
        #: (local port, "tx"|"rx", PDU type) of every PDU, when the caller passes a list
        self.trace = trace
        self.port = self.sock.getsockname()[1]

    # -- bytes and PDUs --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send raw bytes (whole PDUs or any piece of them)."""
        if self.trace is not None and len(data) >= P.COMMON_LEN:
            with_types = self._types(data)
            self.trace.extend((self.port, "tx", t) for t in with_types)
        self.sock.sendall(data)

    @staticmethod
    def _types(data: bytes) -> list[int]:
        out, off = [], 0
        while off + P.COMMON_LEN <= len(data):
            out.append(data[off])
            off += max(int.from_bytes(data[off + 4:off + 8], "little"), P.COMMON_LEN)
        return out

    def recv(self) -> P.PDU:
        """The next whole PDU from the target (a C2HTermReq raises NvmeError)."""
        while not self.inbox:
            try:
                # feed(b"") first: a bad header left behind the last PDUs raises now, not after a wait
                self.inbox.extend(self.stream.feed(b"") or self.stream.feed(self._read()))
            except P.BadPDU as e:
                self._protocol_error(e, self.stream.head())
        raw = self.inbox.popleft()
        try:
            p = P.parse_pdu(raw)
        except P.BadPDU as e:
            self._protocol_error(e, raw)
        if self.trace is not None:
            self.trace.append((self.port, "rx", p.type))
        if p.type == P.C2H_TERM:
            term = P.parse_term(p)
            self.close()
            raise NvmeError(f"target terminated the connection (FES {term.fes}, FEI {term.fei})", fes=term.fes)
        return p

    def _read(self) -> bytes:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionResetError("connection closed by the target")
        return data

    def _protocol_error(self, e: P.BadPDU, header: bytes):
        try:
            self.send(P.term_req(P.H2C_TERM, e.fes, e.fei, header))
        except OSError:
            pass
        self.close()
        raise NvmeError(f"bad PDU from the target: {e}", fes=e.fes)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- queue setup and commands ---------------------------------------------------------------

    def handshake(self) -> P.ICParams:
        """ICReq / ICResp; the digests in force are those the target enables."""
        self.send(P.icreq(hdgst=self.hdgst, ddgst=self.ddgst))
        p = self.recv()
        if p.type != P.ICRESP:
            raise NvmeError(f"{P.PDU_NAMES[p.type]} instead of ICResp")
        ic = P.parse_ic(p)
        self.hdgst, self.ddgst, self.maxh2cdata = ic.hdgst, ic.ddgst, max(ic.limit, 4096)
        return ic

    def connect(self, qid: int, subnqn: str, hostnqn: str, hostid: bytes, cntlid: int = P.CNTLID_DYNAMIC,
                sqsize: int = ADMIN_SQSIZE, kato_ms: int = 0) -> int:
        """Fabrics Connect of this queue; returns the CNTLID the target answers."""
        comp, _ = self.command(P.connect_sqe(0, qid, sqsize, kato_ms),
                               P.connect_data(hostid, cntlid, subnqn, hostnqn))
        return comp.dw0 & 0xFFFF

    def command(self, sqe: bytes, data: bytes = b"", read_len: int = 0) -> tuple[P.Completion, bytes]:
        """Run one command (its CID is filled in): ``data`` goes in the capsule when the SQE's SGL
        says so, else in H2CData after R2T; ``read_len`` bytes are expected back."""
        with self.lock:
            cid = next(self._cids) & 0xFFFF
            sqe = sqe[:2] + cid.to_bytes(2, "little") + sqe[4:]
            in_capsule = data if sqe[39] == P.SGL_IN_CAPSULE else b""
            self.send(P.capsule_cmd(sqe, in_capsule, self.hdgst, self.ddgst))
            buf = bytearray(read_len)
            while True:
                p = self.recv()
                if p.type == P.CAPSULE_RESP:
                    comp = P.parse_cqe(p.raw_header[P.COMMON_LEN:])
                    if comp.cid != cid:
                        raise NvmeError(f"completion for CID {comp.cid}, expected {cid}")
                    if comp.status:
                        name = STATUS_NAMES.get(comp.status & 0x7FF, "")
                        raise NvmeError(f"status 0x{comp.status:04x} {name}".rstrip(), comp.status, dw0=comp.dw0)
                    return comp, bytes(buf)
                t = P.parse_transfer(p) if p.type in (P.R2T, P.C2H_DATA) else None
                if t is None or t.cid != cid:
                    raise NvmeError(f"unexpected {P.PDU_NAMES[p.type]} while waiting for CID {cid}")
                if p.type == P.R2T:
                    if t.offset + t.length > len(data):
                        raise NvmeError(f"R2T for {t.offset}+{t.length} of {len(data)} bytes")
                    self._send_data(cid, t, data)
                else:
                    if t.offset + t.length > read_len:
                        raise NvmeError(f"C2HData at {t.offset}+{t.length} beyond {read_len} bytes")
                    buf[t.offset:t.offset + t.length] = p.data
                    if p.header.flags & P.SUCCESS:      # the target skipped the response capsule
                        return P.Completion(cid, 0), bytes(buf)

    def _send_data(self, cid: int, t: P.Transfer, data: bytes) -> None:
        end = t.offset + t.length
        for off in range(t.offset, end, self.maxh2cdata):
            chunk = data[off:min(off + self.maxh2cdata, end)]
            self.send(P.h2c_data(cid, t.ttag, off, chunk, off + len(chunk) == end, self.hdgst, self.ddgst))

    # admin helpers
    def property_get(self, offset: int, size: int = 4) -> int:
        return self.command(P.property_get(0, offset, size))[0].result64

    def property_set(self, offset: int, value: int, size: int = 4) -> None:
        self.command(P.property_set(0, offset, value, size))

    def enable(self, timeout: float = 10.0) -> None:
        """CC.EN = 1 (with 64/16-byte queue entries, as Linux writes it), then wait for CSTS.RDY."""
        cap = self.property_get(P.PROP_CAP, 8)
        self.property_set(P.PROP_CC, P.CC_EN | 6 << 16 | 4 << 20)
        deadline = time.monotonic() + min(timeout, max(((cap >> 24) & 0xFF) * 0.5, 0.5))
        while not self.property_get(P.PROP_CSTS) & P.CSTS_RDY:
            if time.monotonic() > deadline:
                raise TimeoutError("CSTS.RDY did not follow CC.EN")
            time.sleep(0.01)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Normal shutdown (CC.SHN = 1), waiting a bounded time for CSTS.SHST = complete."""
        self.property_set(P.PROP_CC, P.CC_EN | 6 << 16 | 4 << 20 | 1 << 14)
        deadline = time.monotonic() + timeout
        while (self.property_get(P.PROP_CSTS) >> 2) & 3 != 2 and time.monotonic() < deadline:
            time.sleep(0.01)


class Controller:
    """A connected controller: the admin queue, ``len(io)`` I/O queues and namespace 1's geometry."""

    def __init__(self, host: NvmeHost, subnqn: str, io_queues: int = 1, kato_ms: int = 0):
        self.host, self.subnqn = host, subnqn
        self.io: list[Queue] = []
        self.admin = host.queue()
        self._stop = threading.Event()
        self._ka: threading.Thread | None = None
        try:
            self.cntlid = self.admin.connect(0, subnqn, host.hostnqn, host.hostid, kato_ms=kato_ms)
            self.admin.enable(host.timeout)
            self.info = P.parse_identify_controller(
                self.admin.command(P.identify(0, P.CNS_CONTROLLER), read_len=P.IDENTIFY_LEN)[1])
            comp, _ = self.admin.command(P.set_features(0, P.FEAT_NUM_QUEUES, (io_queues - 1) * 0x10001))
            granted = min(comp.dw0 & 0xFFFF, comp.dw0 >> 16) + 1
            active = self.admin.command(P.identify(0, P.CNS_ACTIVE_NS), read_len=P.IDENTIFY_LEN)[1]
            self.nsid = int.from_bytes(active[:4], "little")
            if not self.nsid:
                raise NvmeError(f"{subnqn} has no active namespace")
            self.blocks, self.block_size = P.parse_identify_namespace(
                self.admin.command(P.identify(0, P.CNS_NAMESPACE, self.nsid), read_len=P.IDENTIFY_LEN)[1])
            for qid in range(1, min(io_queues, granted) + 1):
                q = host.queue()
                self.io.append(q)
                q.connect(qid, subnqn, host.hostnqn, host.hostid, self.cntlid, IO_SQSIZE)
        except BaseException:
            self.close()
            raise
        self.max_transfer = min(self.info.max_transfer, MAX_CHUNK)
        self.in_capsule = self.info.in_capsule
        if kato_ms:
            self._ka = threading.Thread(target=self._keep_alive, args=(kato_ms / 2000,), daemon=True)
            self._ka.start()

    def _keep_alive(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.keep_alive()
            except (OSError, NvmeError):
                return

    def keep_alive(self) -> None:
        self.admin.command(P.keep_alive(0))

    # -- I/O -----------------------------------------------------------------------------------

    def _spread(self, jobs: list, run) -> list:
        """Run ``run(queue, job)`` for every job, job i on I/O queue i mod N, the queues in parallel."""
        if not self.io:
            raise NvmeError("no I/O queue")
        n = min(len(self.io), len(jobs))
        per_queue = [jobs[i::n] for i in range(n)]
        if n <= 1:
            return [run(self.io[0], j) for j in jobs]
        with ThreadPoolExecutor(n) as ex:
            done = list(ex.map(lambda i: [run(self.io[i], j) for j in per_queue[i]], range(n)))
        return [done[i % n][i // n] for i in range(len(jobs))]

    def _chunks(self, lba: int, nbytes: int) -> list[tuple[int, int, int]]:
        """(offset, lba, nblocks) pieces of at most MDTS."""
        step = self.max_transfer // self.block_size
        total = nbytes // self.block_size
        return [(i * self.block_size, lba + i, min(step, total - i)) for i in range(0, total, step)]

    def write(self, lba: int, data: bytes) -> None:
        if len(data) % self.block_size:
            raise ValueError(f"{len(data)} bytes is not a whole number of {self.block_size}-byte blocks")

        def one(q: Queue, job: tuple[int, int, int]) -> None:
            off, slba, nb = job
            piece = data[off:off + nb * self.block_size]
            q.command(P.write(0, self.nsid, slba, nb, self.block_size, len(piece) <= self.in_capsule), piece)

        self._spread(self._chunks(lba, len(data)), one)

    def read(self, lba: int, nblocks: int) -> bytes:
        def one(q: Queue, job: tuple[int, int, int]) -> bytes:
            _, slba, nb = job
            return q.command(P.read(0, self.nsid, slba, nb, self.block_size), read_len=nb * self.block_size)[1]

        return b"".join(self._spread(self._chunks(lba, nblocks * self.block_size), one))

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every queue's connection (no shutdown handshake)."""
        self._stop.set()
        for q in self.io:
            q.close()
        self.admin.close()

    def disconnect(self) -> None:
        """Shut the controller down (CC.SHN) and close its queues, I/O queues first."""
        self._stop.set()
        try:
            if self._ka:
                self._ka.join(self.host.timeout)
            self.admin.shutdown()
        except (OSError, NvmeError):
            pass
        finally:
            self.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()


class NvmeHost:
    """A host (``hostnqn``) talking to one target address; digests as asked for every queue."""

    def __init__(self, addr: str, port: int = P.NVME_TCP_PORT, hostnqn: str | None = None, hdgst: bool = False,
                 ddgst: bool = False, hostid: bytes | None = None, timeout: float = 10.0, trace: list | None = None):
        self.addr, self.port = addr, port
        self.hostnqn = hostnqn or new_hostnqn()
        self.hostid = hostid or hostid_of(self.hostnqn)
        self.hdgst, self.ddgst, self.timeout, self.trace = hdgst, ddgst, timeout, trace

    def queue(self) -> Queue:
        """A new connection, ICReq/ICResp done."""
        q = Queue(self.addr, self.port, self.hdgst, self.ddgst, self.timeout, self.trace)
        try:
            q.handshake()
        except BaseException:
            q.close()
            raise
        return q

    def connect(self, subnqn: str, io_queues: int = 1, kato_ms: int = 0) -> Controller:
        return Controller(self, subnqn, io_queues, kato_ms)

    def discover(self) -> list[P.DiscoveryEntry]:
        """The discovery log page for this host, read as Linux does (header, then all of it)."""
        q = self.queue()
        try:
            q.connect(0, P.DISCOVERY_NQN, self.hostnqn, self.hostid)
            q.enable(self.timeout)
            q.command(P.identify(0, P.CNS_CONTROLLER), read_len=P.IDENTIFY_LEN)
            for _ in range(3):      # the log may change between the reads: GENCTR says so
                head = self._log(q, P.DLP_HEADER_LEN)
                n = min(P.discovery_numrec(head), 1000)
                page = self._log(q, P.DLP_HEADER_LEN + n * P.DLP_ENTRY_LEN)
                if page[:8] == head[:8] and P.discovery_numrec(page) == n:
                    entries = P.parse_discovery_log(page)
                    break
            else:
                raise NvmeError("the discovery log kept changing (or lists over 1000 records)")
            q.shutdown()
            return entries
        finally:
            q.close()

    @staticmethod
    def _log(q: Queue, length: int) -> bytes:
        return q.command(P.get_log_page(0, P.LID_DISCOVERY, length), read_len=length)[1]


# -- CLI ---------------------------------------------------------------------------------------

def _write_read(args) -> dict:
    n = args.mib << 20
    data = random.Random(args.seed).randbytes(n)
    host = NvmeHost(args.addr, args.port, args.hostnqn, args.hdgst, args.ddgst)
    with host.connect(args.subnqn, args.queues) as ctrl:
        if args.lba * ctrl.block_size + n > ctrl.blocks * ctrl.block_size:
            raise NvmeError(f"{args.mib} MiB at block {args.lba} do not fit {ctrl.blocks} blocks")
        t0 = time.monotonic()
        ctrl.write(args.lba, data)
        back = ctrl.read(args.lba, n // ctrl.block_size)
        seconds = time.monotonic() - t0
        return {"written_mib": args.mib, "sha256_written": hashlib.sha256(data).hexdigest(),
                "sha256_read": hashlib.sha256(back).hexdigest(), "seconds": round(seconds, 3),
                "mib_per_s": round(2 * args.mib / seconds, 1) if seconds else None,
                "io_queues": len(ctrl.io), "cntlid": ctrl.cntlid, "hostnqn": host.hostnqn}


def _connect(args) -> dict:
    host = NvmeHost(args.addr, args.port, args.hostnqn, args.hdgst, args.ddgst)
    with host.connect(args.subnqn, args.queues) as ctrl:
        return {"cntlid": ctrl.cntlid, "subnqn": ctrl.info.subnqn, "model": ctrl.info.model,
                "serial": ctrl.info.serial, "max_transfer": ctrl.max_transfer, "io_queues": len(ctrl.io),
                "blocks": ctrl.blocks, "block_size": ctrl.block_size, "hostnqn": host.hostnqn}


def _discover(args) -> list:
    host = NvmeHost(args.addr, args.port, args.hostnqn, args.hdgst, args.ddgst)
    return [{"subnqn": e.subnqn, "traddr": e.traddr, "trsvcid": e.trsvcid, "adrfam": e.adrfam,
             "subtype": e.subtype} for e in host.discover()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nvme_host", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, port in (("discover", P.DISCOVERY_PORT), ("connect", P.NVME_TCP_PORT), ("write-read", P.NVME_TCP_PORT)):
        p = sub.add_parser(name)
        p.add_argument("--addr", required=True)
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--hostnqn", help="default: a new nqn.2014-08.org.nvmexpress:uuid:<uuid>")
        p.add_argument("--hdgst", action="store_true", help="ask for header digests")
        p.add_argument("--ddgst", action="store_true", help="ask for data digests")
        if name != "discover":
            p.add_argument("--subnqn", required=True)
            p.add_argument("--queues", type=int, default=1, help="I/O queues (connections)")
        if name == "write-read":
            p.add_argument("--mib", type=int, default=8)
            p.add_argument("--lba", type=int, default=0)
            p.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.hostnqn and P.check_nqn(args.hostnqn):
        ap.error(f"--hostnqn: {P.check_nqn(args.hostnqn)}")
    run = {"discover": _discover, "connect": _connect, "write-read": _write_read}[args.cmd]
    try:
        out = run(args)
    except NvmeError as e:
        out = {"error": str(e), "kind": "NvmeError", "status": e.status, "fes": e.fes}
    except (OSError, TimeoutError) as e:
        out = {"error": str(e) or type(e).__name__, "kind": type(e).__name__}
    print(json.dumps(out), flush=True)
    return 2 if isinstance(out, dict) and "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
