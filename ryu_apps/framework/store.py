"""Where the controller keeps what must outlive it: apps' intent and learned state.

Two stores with one interface:

* :class:`LocalStore`, the default: one JSON file per name in the state dir (or
  nothing at all without one), for a single controller.
* :class:`EtcdStore`: etcd, through its HTTP/JSON gateway (``etcd3gw``), for a cluster
  of controllers.  etcd is then the single source of truth: every instance reads it at
  start, writes go through a transaction that compares the revision the writer last
  saw (a concurrent change is refused, never overwritten), and every instance watches
  it, so a change written by one reaches the others within milliseconds.

A value is a *record* (``name``: an app's intent, a runtime blob) or an *item* of a
collection (``name`` + ``key``: one learned client, one membership), each JSON text.
Collections let an app that learns 10k clients write one client per change instead of
10k.  Key layout in etcd, under ``/ovsfabric/<cluster>/``: ``r/<name>`` for records and
``i/<name>/<key>`` for items; the cluster's own keys (members, masters) live beside
them (see :mod:`ryu_apps.framework.cluster`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LOG = logging.getLogger(__name__)

#: etcd's default --max-txn-ops: a larger batch of items is written in several transactions
MAX_TXN_OPS = 128


class StoreError(RuntimeError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """No quorum or no endpoint answered: nothing was written (REST answers 503)."""


class StoreConflict(StoreError):
    """The value changed since the writer read it (another instance wrote first; REST 409)."""


@dataclass(frozen=True)
class Change:
    """A value another writer changed: ``text`` None when it was deleted."""

    name: str
    key: str | None      # None: the record ``name``; else an item of the collection ``name``
    text: str | None
    revision: int


#: a collection's journal is folded into its snapshot once it is larger than this and the snapshot
JOURNAL_MIN = 64 * 1024


class LocalStore:
    """One JSON file per record (``<dir>/<name>.json``); per collection a snapshot
    (``<dir>/<name>.items.json``) and a journal of the changes since (``<name>.items.log``, one
    JSON line per batch), folded into a new snapshot once it is larger than the last one.

    Files are replaced atomically (a restart finds the old or the new).  Without a
    directory nothing is kept.  There is no other writer, so nothing is ever watched.
    """

    kind = "local"

    def __init__(self, directory: str | os.PathLike | None):
        self.dir = Path(directory) if directory else None
        self._items: dict[str, dict[str, str]] = {}
        self._revs: dict[str, int] = {}
        self._journal: dict[str, int] = {}    # bytes in each collection's journal
        self._snapshot: dict[str, int] = {}   # bytes of its last snapshot

    @property
    def persistent(self) -> bool:
        return self.dir is not None

    def _write(self, filename: str, text: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{filename}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / filename)

    def get(self, name: str) -> str | None:
        if self.dir is None:
            return None
        path = self.dir / f"{name}.json"
        return path.read_text() if path.exists() else None

    def revision_of(self, name: str) -> int:
        """How many times ``name`` was written by this process (a version to compare against)."""
        return self._revs.get(name, 0)

    def put(self, name: str, text: str, expect: int | None = None, force: bool = False) -> int:
        if expect is not None and not force and expect != self.revision_of(name):
            raise StoreConflict(f"{name} is at revision {self.revision_of(name)}, not {expect}: "
                                f"it changed since it was read; read it again and retry")
        if self.dir is not None:
            self._write(f"{name}.json", text)
        self._revs[name] = self.revision_of(name) + 1
        return self._revs[name]

    def items(self, name: str) -> dict[str, str]:
        return dict(self._loaded(name))

    def _loaded(self, name: str) -> dict[str, str]:
        """The collection in memory: its snapshot, then the changes its journal holds since."""
        if name not in self._items:
            data: dict[str, str] = {}
            if self.dir is not None:
                snap, log = self.dir / f"{name}.items.json", self.dir / f"{name}.items.log"
                if snap.exists():
                    data = {k: json.dumps(v, separators=(",", ":")) for k, v in json.loads(snap.read_text()).items()}
                if log.exists():
                    for line in log.read_text().splitlines():
                        try:
                            change = json.loads(line)
                        except ValueError:
                            break  # a line cut short by a crash: the batch it held is lost, as a whole
                        for k, v in change.items():
                            if v is None:
                                data.pop(k, None)
                            else:
                                data[k] = json.dumps(v, separators=(",", ":"))
                    self._journal[name] = log.stat().st_size
            self._items[name] = data
        return self._items[name]

    def put_items(self, name: str, items: dict[str, str | None], expect: dict[str, str] | None = None) -> int:
        current = self._loaded(name)
        for key, text in (expect or {}).items():
            if current.get(key) != text:
                raise StoreConflict(f"{name}: {key} changed meanwhile")
        for key, text in items.items():
            if text is None:
                current.pop(key, None)
            else:
                current[key] = text
        if self.dir is not None:
            # a batch is one appended journal line (a collection of thousands of items costs a line
            # per change, not a rewrite); the snapshot is rewritten once the journal outgrows it
            line = "{" + ",".join(f"{json.dumps(k)}:{'null' if t is None else t}" for k, t in items.items()) + "}\n"
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / f"{name}.items.log", "a") as log:
                log.write(line)
            self._journal[name] = self._journal.get(name, 0) + len(line)
            if self._journal[name] > max(JOURNAL_MIN, self._snapshot.get(name, 0)):
                body = "{" + ",".join(f"{json.dumps(k)}:{current[k]}" for k in sorted(current)) + "}"
                self._write(f"{name}.items.json", body)
                os.truncate(self.dir / f"{name}.items.log", 0)
                self._snapshot[name], self._journal[name] = len(body), 0
        return 0

    def watch(self, callback: Callable[[Change], None]) -> None:
        """Nothing to watch: this process is the only writer."""

    def health(self) -> dict:
        return {"kind": self.kind, "dir": str(self.dir) if self.dir else None}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The end of etcd's range ``[prefix, end)`` holding every key that starts with ``prefix``."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdStore:
    """etcd v3 through its JSON gateway, with fail-over between the endpoints given.

    ``endpoints``: ``host:port`` of the cluster's client URLs.  ``cluster``: the key prefix
    this controller cluster owns (several clusters may share one etcd).  Every request
    has ``timeout`` seconds; when no endpoint answers in time the call raises
    :class:`StoreUnavailable` (a member without quorum times out its writes).
    """

    kind = "etcd"
    persistent = True

    def __init__(self, endpoints: list[str], cluster: str = "default", timeout: float = 1.5):
        from etcd3gw.client import Etcd3Client

        if not endpoints:
            raise StoreError("etcd store without endpoints")
        self.endpoints = list(endpoints)
        self.root = f"/ovsfabric/{cluster}/"
        self.timeout = timeout
        self._clients = []
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            if not host or not port.isdigit():
                raise StoreError(f"etcd endpoint {ep!r} is not host:port")
            # the API path is fixed (etcd >= 3.4 serves /v3/): no discovery round trip, which
            # would also pin a client to the first member that answered it
            self._clients.append(Etcd3Client(host=host.strip("[]"), port=int(port), timeout=timeout,
                                             api_path="/v3/"))
        self._current = 0
        self._callbacks: list[Callable[[Change], None]] = []
        self._own: dict[str, int] = {}        # key -> mod revision of our own last write of it
        self._revs: dict[str, int] = {}       # key -> last mod revision seen (read, written or watched)
        self.revision = 0                     # newest store revision seen
        self.applied = 0                      # every change up to this revision has been handled here
        self.last_write = 0                   # the revision of this instance's last write
        self.errors = 0
        self.last_error: str | None = None
        self.watch_restarts = 0

    # -- requests, with fail-over ------------------------------------------------
    def call(self, path: str, body: dict) -> dict:
        """POST ``body`` to ``/v3/<path>`` on the current endpoint, then the others in turn."""
        from etcd3gw import exceptions

        errors = []
        for i in range(len(self._clients)):
            idx = (self._current + i) % len(self._clients)
            client = self._clients[idx]
            try:
                out = client.post(client.get_url(path), json=body)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError) as exc:
                errors.append(f"{self.endpoints[idx]}: {type(exc).__name__}")
                continue
            except exceptions.Etcd3Exception as exc:
                # e.g. "etcdserver: request timed out" from a member without quorum
                errors.append(f"{self.endpoints[idx]}: {str(exc)[:200]}")
                continue
            self._current = idx
            header = out.get("header", {})
            if "revision" in header:
                self.revision = max(self.revision, int(header["revision"]))
            return out
        self.errors += 1
        self.last_error = "; ".join(errors)
        raise StoreUnavailable(f"etcd did not answer ({self.last_error}): nothing was written")

    def _record_key(self, name: str) -> str:
        return f"{self.root}r/{name}"

    def _item_prefix(self, name: str) -> str:
        return f"{self.root}i/{name}/"

    # -- records ----------------------------------------------------------------
    def get(self, name: str) -> str | None:
        key = self._record_key(name)
        kvs = self.call("kv/range", {"key": _b64(key)}).get("kvs", [])
        if not kvs:
            self._revs[key] = 0
            return None
        self._revs[key] = int(kvs[0].get("mod_revision", 0))
        return _unb64(kvs[0].get("value", ""))

    def revision_of(self, name: str) -> int:
        """The mod revision of record ``name`` last seen here (0: absent)."""
        return self._revs.get(self._record_key(name), 0)

    def put(self, name: str, text: str, expect: int | None = None, force: bool = False) -> int:
        """Write record ``name`` if its revision is still ``expect`` (default: the one last seen),
        or whatever it is with ``force``.

        Raises StoreConflict when another writer changed it meanwhile.
        """
        key = self._record_key(name)
        rev = self._revs.get(key, 0) if expect is None else expect
        out = self.call("kv/txn", {
            "compare": [] if force else [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": rev}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(text)}}],
        })
        if not out.get("succeeded"):
            raise StoreConflict(f"{name} was changed by another controller instance since this one read it "
                                f"(revision {rev}); read it again and retry")
        new = int(out["header"]["revision"])
        self._revs[key] = self._own[key] = new
        self.last_write = max(self.last_write, new)
        return new

    # -- collections ------------------------------------------------------------
    def items(self, name: str) -> dict[str, str]:
        prefix = self._item_prefix(name)
        out, start = {}, prefix
        while True:
            got = self.call("kv/range", {"key": _b64(start), "range_end": _b64(prefix_end(prefix)),
                                         "limit": 10000})
            kvs = got.get("kvs", [])
            for kv in kvs:
                key = _unb64(kv["key"])
                out[key[len(prefix):]] = _unb64(kv.get("value", ""))
                self._revs[key] = int(kv.get("mod_revision", 0))
            if not got.get("more") or not kvs:
                return out
            start = _unb64(kvs[-1]["key"]) + "\0"

    def put_items(self, name: str, items: dict[str, str | None], expect: dict[str, str] | None = None) -> int:
        """Write (text) and delete (None) items of ``name``; atomic up to MAX_TXN_OPS items.

        ``expect``: key -> the text that item must still have (compare-and-set; StoreConflict
        when another writer changed it; only for batches of one transaction).
        """
        prefix, rev = self._item_prefix(name), 0
        pairs = sorted(items.items())
        if expect and len(pairs) > MAX_TXN_OPS:
            raise StoreError(f"a conditional write of {len(pairs)} items is more than one transaction")
        for i in range(0, len(pairs), MAX_TXN_OPS):
            ops = []
            for key, text in pairs[i:i + MAX_TXN_OPS]:
                full = _b64(prefix + key)
                ops.append({"request_delete_range": {"key": full}} if text is None
                           else {"request_put": {"key": full, "value": _b64(text)}})
            compare = [{"key": _b64(prefix + k), "target": "VALUE", "result": "EQUAL", "value": _b64(v)}
                       for k, v in sorted((expect or {}).items())]
            out = self.call("kv/txn", {"compare": compare, "success": ops})
            if compare and not out.get("succeeded"):
                raise StoreConflict(f"{name}: {', '.join(sorted(expect))} changed meanwhile (another instance wrote it)")
            rev = int(out["header"]["revision"])
            for key, _ in pairs[i:i + MAX_TXN_OPS]:
                self._own[prefix + key] = self._revs[prefix + key] = rev
            self.last_write = max(self.last_write, rev)
        return rev

    # -- watching ---------------------------------------------------------------
    def watch(self, callback: Callable[[Change], None]) -> None:
        """Call ``callback`` for every record or item another writer changes (in a green thread)."""
        first = not self._callbacks
        self._callbacks.append(callback)
        if first:
            self.watch_range(self.root + "i/", prefix_end(self.root + "r/"), self._seen)  # i/... and r/...

    def watch_range(self, key: str, range_end: str, handler: Callable[[str, str | None, int, int], None],
                    start: int | None = None) -> None:
        """Call ``handler(key, text or None when deleted, mod revision, create revision)`` for every change of a key
        in ``[key, range_end)`` from revision ``start`` (default: the next after the newest seen),
        in a green thread that resumes on another endpoint when its member goes away."""
        from os_ken.lib import hub

        hub.spawn(self._watch_loop, key, range_end, handler, self.revision + 1 if start is None else start)

    #: a watch with no event for this long is re-created (a frozen or partitioned member stays silent)
    WATCH_IDLE = 20.0

    def _watch_loop(self, key: str, range_end: str, handler, start: int) -> None:
        from os_ken.lib import hub

        while True:
            client = self._clients[self._current]
            try:
                resp = client.session.post(client.get_url("watch"), stream=True,
                                           timeout=(self.timeout, self.WATCH_IDLE),
                                           json={"create_request": {"key": _b64(key), "range_end": _b64(range_end),
                                                                    "start_revision": start}})
                for line in resp.iter_lines(chunk_size=None):
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("canceled") and not result.get("compact_revision"):
                        raise StoreError(f"etcd cancelled the watch: {result.get('cancel_reason')}")
                    if result.get("compact_revision"):
                        # the history we missed is gone: whoever reads us must re-read everything
                        LOG.warning("etcd watch: revisions up to %s compacted", result["compact_revision"])
                        start = int(result["compact_revision"])
                        handler("*", None, start, 0)
                        break
                    for event in result.get("events", []):
                        kv = event["kv"]
                        rev = int(kv.get("mod_revision", 0))
                        start = max(start, rev + 1)
                        self.revision = max(self.revision, rev)
                        handler(_unb64(kv["key"]), None if event.get("type") == "DELETE"
                                else _unb64(kv.get("value", "")), rev, int(kv.get("create_revision", 0)))
            except Exception as exc:  # noqa: BLE001 - the member went away (or was idle): resume
                self.last_error = f"watch: {type(exc).__name__}: {exc}"[:300]
                if isinstance(exc, StoreError):
                    LOG.error("etcd watch on %s: %s", key, exc)
                    hub.sleep(1.0)
            self.watch_restarts += 1
            self._current = (self._current + 1) % len(self._clients)
            hub.sleep(0.05)

    def _seen(self, key: str, text: str | None, rev: int, create_rev: int = 0) -> None:
        try:
            self._handle(key, text, rev)
        finally:
            self.applied = max(self.applied, rev)

    def _handle(self, key: str, text: str | None, rev: int) -> None:
        if key == "*":
            self._emit(Change("*", None, None, rev))
            return
        if self._own.get(key) == rev:
            return  # our own write, already applied here
        self._revs[key] = 0 if text is None else rev
        rest = key[len(self.root):]
        if rest.startswith("r/"):
            self._emit(Change(rest[2:], None, text, rev))
        elif rest.startswith("i/"):
            name, _, item = rest[2:].partition("/")
            self._emit(Change(name, item, text, rev))

    def _emit(self, change: Change) -> None:
        for cb in list(self._callbacks):
            try:
                cb(change)
            except Exception:  # noqa: BLE001
                LOG.exception("store watcher failed on %s", change.name)

    def health(self) -> dict:
        """Each endpoint's answer (leader, raft term, revision) or why not."""
        members = {}
        for ep, client in zip(self.endpoints, self._clients):
            t0 = time.monotonic()
            try:
                st = client.post(client.get_url("maintenance/status"), json={})
                members[ep] = {"ok": True, "leader": st.get("leader") == st.get("header", {}).get("member_id"),
                               "raft_term": int(st.get("raftTerm", 0)),
                               "revision": int(st.get("header", {}).get("revision", 0)),
                               "ms": round(1000 * (time.monotonic() - t0), 1)}
            except Exception as exc:  # noqa: BLE001
                members[ep] = {"ok": False, "error": f"{type(exc).__name__}"}
        return {"kind": self.kind, "endpoints": members, "revision": self.revision, "errors": self.errors,
                "last_error": self.last_error, "watch_restarts": self.watch_restarts}
