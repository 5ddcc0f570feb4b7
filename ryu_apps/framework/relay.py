"""Messages between the instances of a controller cluster, over their REST APIs.

An app that runs on one leader (``CLUSTER = "leader"``: multicast standby, OAM ECMP)
learns from packet-ins of every switch and sends packet-outs into every switch, but
only a switch's master receives its packet-ins and may send to it.  So:

* a master that receives a packet-in for such an app, and does not lead the app,
  hands it to the leader;
* a leader's packet-out to a switch another instance masters goes to that master,
  which sends it.

Both travel as batches (``POST /v1/cluster/relay``, the REST token, the peer's address
from its etcd member key), one sender green thread per peer, so a burst (an IGMP
query to every host, an OAM probe round's reports) is a few HTTP requests, in order.
A batch that cannot be delivered is dropped and counted (a lost packet-in, like one a
switch's meter drops): the protocols above it retransmit (IGMP reports, standby
requests, OAM retries), and a peer that is gone loses its role within the lease's TTL.

Requests from other apps' REST routes that start work or read the leader's memory are
forwarded to the leader the same way (:func:`forward`).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import time
from collections import deque
from typing import Callable
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field

LOG = logging.getLogger(__name__)

#: entries queued per peer before new ones are dropped (a peer that does not answer)
QUEUE_LIMIT = 8192
#: entries and base64 bytes per request (the REST API takes bodies up to 1 MiB)
BATCH_ENTRIES = 512
BATCH_BYTES = 512 * 1024
#: the largest frame a relayed packet-in or packet-out may carry (base64 of 16 KiB)
MAX_DATA_CHARS = 4 * (16384 // 3 + 1)
PATH = "/v1/cluster/relay"


class RelayedPacketIn(BaseModel):
    """A packet-in a switch's master hands to an app's leader."""

    model_config = ConfigDict(extra="forbid")
    app: str = Field(min_length=1, max_length=64)
    switch: str = Field(min_length=1, max_length=64)
    in_port: int = Field(ge=0, le=0xFFFFFFFF)
    table: int = Field(ge=0, le=255)
    cookie: int = Field(ge=0, le=(1 << 64) - 1)
    data: str = Field(max_length=MAX_DATA_CHARS, description="the packet, base64")


class RelayedPacketOut(BaseModel):
    """A packet-out an app's leader asks a switch's master to send."""

    model_config = ConfigDict(extra="forbid")
    switch: str = Field(min_length=1, max_length=64)
    port: int = Field(ge=0, le=0xFFFFFFFF)
    in_port: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    table: int | None = Field(default=None, ge=0, le=254, description="resubmit to this table instead of output")
    data: str = Field(max_length=MAX_DATA_CHARS, description="the packet, base64")


class RelayBatch(BaseModel):
    """``POST /v1/cluster/relay``: what one instance hands another, in order."""

    model_config = ConfigDict(extra="forbid")
    sender: str = Field(min_length=1, max_length=128)
    packet_ins: list[RelayedPacketIn] = Field(default_factory=list, max_length=BATCH_ENTRIES)
    packet_outs: list[RelayedPacketOut] = Field(default_factory=list, max_length=BATCH_ENTRIES)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of a relayed packet; ValueError when ``text`` is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"data is not base64: {exc}") from None


class _Peer:
    def __init__(self):
        from os_ken.lib import hub

        self.queue: deque = deque()
        self.kick = hub.Event()
        self.conn: http.client.HTTPConnection | None = None
        self.url: str | None = None


class Relay:
    """Queues and senders towards the other members (see the module docstring)."""

    def __init__(self, member: str, url_of: Callable[[str], str | None], token: Callable[[], str | None]):
        self.member = member
        self.url_of = url_of
        self.token = token
        self.peers: dict[str, _Peer] = {}
        self.counters = {"packet_ins_sent": 0, "packet_outs_sent": 0, "batches": 0, "failed": 0,
                         "dropped_queue_full": 0, "packet_ins_received": 0, "packet_outs_received": 0,
                         "refused": 0, "bad": 0}
        self.last_error: str | None = None
        self.batch_ms: deque = deque(maxlen=256)

    # -- sending ------------------------------------------------------------------
    def packet_in(self, member: str, app: str, switch: str, in_port: int, table: int, cookie: int,
                  data: bytes) -> bool:
        """Hand a packet-in of ``app`` to ``member`` (its leader)."""
        return self._put(member, ("in", {"app": app, "switch": switch, "in_port": in_port, "table": table,
                                         "cookie": cookie, "data": encode(data)}))

    def packet_out(self, member: str, switch: str, port: int, data: bytes, in_port: int | None,
                   table: int | None = None) -> bool:
        """Ask ``member`` (the master of ``switch``) to send ``data`` out of ``port`` (or into ``table``)."""
        entry = {"switch": switch, "port": port, "in_port": in_port, "data": encode(data)}
        if table is not None:
            entry["table"] = table
        return self._put(member, ("out", entry))

    def _put(self, member: str, entry: tuple) -> bool:
        from os_ken.lib import hub

        if member == self.member:
            return False
        peer = self.peers.get(member)
        if peer is None:
            peer = self.peers[member] = _Peer()
            hub.spawn(self._sender, member, peer)
        if len(peer.queue) >= QUEUE_LIMIT:
            self.counters["dropped_queue_full"] += 1
            return False
        peer.queue.append(entry)
        peer.kick.set()
        return True

    def _sender(self, member: str, peer: _Peer) -> None:
        while True:
            peer.kick.wait()
            peer.kick.clear()
            while peer.queue:
                batch = {"sender": self.member, "packet_ins": [], "packet_outs": []}
                size = 0
                while peer.queue and len(batch["packet_ins"]) < BATCH_ENTRIES \
                        and len(batch["packet_outs"]) < BATCH_ENTRIES and size < BATCH_BYTES:
                    kind, entry = peer.queue.popleft()
                    batch["packet_ins" if kind == "in" else "packet_outs"].append(entry)
                    size += len(entry["data"]) + 100
                self._deliver(member, peer, batch)

    def _deliver(self, member: str, peer: _Peer, batch: dict) -> None:
        n_in, n_out = len(batch["packet_ins"]), len(batch["packet_outs"])
        body = json.dumps(batch, separators=(",", ":")).encode()
        t0 = time.monotonic()
        for attempt in (1, 2):  # a kept-alive connection the peer closed meanwhile: once more, fresh
            try:
                status, text = self._post(member, peer, body)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._close(peer)
                self.last_error = f"{member}: {type(exc).__name__}: {exc}"[:300]
                if attempt == 2:
                    break
                continue
            if status == 200:
                self.counters["batches"] += 1
                self.counters["packet_ins_sent"] += n_in
                self.counters["packet_outs_sent"] += n_out
                self.batch_ms.append(1000 * (time.monotonic() - t0))
                return
            self.last_error = f"{member}: HTTP {status}: {text[:200]}"
            break
        self.counters["failed"] += n_in + n_out
        LOG.info("relay to %s: %d packet-ins, %d packet-outs not delivered (%s)", member, n_in, n_out,
                 self.last_error)

    def _post(self, member: str, peer: _Peer, body: bytes) -> tuple[int, str]:
        url = self.url_of(member)
        if not url:
            raise ValueError(f"{member} has no REST address in etcd (gone?)")
        if peer.conn is None or peer.url != url:
            self._close(peer)
            parts = urlsplit(url)
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            peer.conn, peer.url = cls(parts.hostname, parts.port, timeout=2.0), url
        headers = {"Content-Type": "application/json"}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        peer.conn.request("POST", PATH, body=body, headers=headers)
        resp = peer.conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")

    @staticmethod
    def _close(peer: _Peer) -> None:
        if peer.conn is not None:
            try:
                peer.conn.close()
            except OSError:
                pass
        peer.conn = None

    def json(self) -> dict:
        ms = sorted(self.batch_ms)
        return {**self.counters, "queued": {m: len(p.queue) for m, p in sorted(self.peers.items())},
                "batch_ms_median": round(ms[len(ms) // 2], 2) if ms else None, "last_error": self.last_error}


def forward(url: str, method: str, path: str, query: dict, body: bytes | None, token: str | None,
            timeout: float) -> tuple[int, object]:
    """One REST request to another instance: (status, decoded JSON body).  Raises OSError
    when it does not answer."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + path + ("?" + urlencode(query) if query else ""), data=body,
                                 method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw.decode() or "null")
    except ValueError:
        return status, {"error": raw.decode(errors="replace")[:500]}
