"""One programmer per switch: make the switch hold exactly the desired state.

The programmer is the only code that writes flows, groups and meters.  On
(re)connect it reads the switch's tables, diffs them against the desired state
and sends only the difference; afterwards it diffs each new desired state
against what it last wrote.  A restart with unchanged intent therefore sends
nothing, and flow counters and durations keep counting.

Order of a sync (Faucet's ``valve_flowreorder`` idea, made atomic with bundles):

1. meters and groups that are new or changed, then a barrier;
2. all flow changes in one atomic, ordered ONF bundle (deletes, adds, mods):
   the switch flips from the old table set to the new one at commit;
3. meters and groups nobody references any more, then a barrier.

Messages are encoded by :mod:`ryu_apps.openflow.ofwire` straight to bytes and sent
in large batches; replies the programmer waits for (flow/group/meter dumps,
barriers, bundle replies, errors) are taken off the wire by xid before os-ken
would parse them, so reading 100k flows does not build 100k Python objects.
"""

from __future__ import annotations

import functools
import itertools
import logging
import struct
import time
from dataclasses import dataclass, field

from os_ken.lib import hub
from os_ken.ofproto import ofproto_parser

from ryu_apps.framework.state import ActualState, Changes, LayeredState, SwitchState, Touched, apply_changes, diff, diff_touched
from ryu_apps.openflow import ofwire
from ryu_apps.openflow.ofdata import Group, Meter

LOG = logging.getLogger(__name__)

OFPT_ERROR, OFPT_EXPERIMENTER, OFPT_BARRIER_REPLY, OFPT_MULTIPART_REPLY = 1, 4, 21, 19
OFPMPF_REPLY_MORE = 1
SEND_CHUNK = 1 << 20
# An audit reads a switch's flows in this many slices by cookie (cookie & (N-1)): a switch
# answers a barrier only after the dump before it, so the controller's own change sent during
# an audit waits for one slice of a big switch's dump, not all of it (90k flows: 100-600 ms)
AUDIT_SLICES = 8
# xids the programmer uses: a range os-ken's own random xids rarely hit.
XID_BASE, XID_MASK = 0x7F000000, 0x00FFFFFF
_XIDS = itertools.count(1)


class ProgrammingError(RuntimeError):
    """The switch rejected part of a sync (the bundle was rolled back)."""


class NotMaster(ProgrammingError):
    """The switch takes this connection for a SLAVE (IS_SLAVE), or refused our MASTER request
    as stale: another controller instance masters it now (cluster mode)."""


# ---------------------------------------------------------------------------
# Taking our replies off the wire before os-ken parses them.

_waiters: dict[tuple[int, int], "_Waiter"] = {}
# Errors for programmer xids nobody waits on individually (bundle adds), by datapath.
# Kept only inside the xid window a sync has opened (:meth:`OFChannel.expect_errors`),
# at most STRAY_ERRORS_MAX per datapath, and dropped when the datapath disconnects.
_stray_errors: dict[int, list] = {}
_error_windows: dict[int, tuple[int, int]] = {}
STRAY_ERRORS_MAX = 1000
_installed = False


@dataclass
class _Waiter:
    event: object
    kind: str  # multipart | barrier | bundle
    bodies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    done: bool = False
    failed: str | None = None  # set when the channel died under the waiter


_TAKES = {OFPT_MULTIPART_REPLY: "multipart", OFPT_BARRIER_REPLY: "barrier", OFPT_EXPERIMENTER: "bundle",
          ofwire.OFPT_ROLE_REPLY: "role"}


def waiter_for(datapath, msg_type: int, xid: int) -> _Waiter | None:
    """The waiter that takes this message off the wire (os-ken never parses it), or None."""
    waiter = _waiters.get((id(datapath), xid))
    if waiter is not None and (msg_type == OFPT_ERROR or _TAKES.get(msg_type) == waiter.kind):
        return waiter
    return None


def awaits_dump(datapath, xid: int) -> bool:
    """A multipart reply the programmer takes off the wire and parses itself."""
    return waiter_for(datapath, OFPT_MULTIPART_REPLY, xid) is not None


def awaits_error(datapath, xid: int) -> bool:
    """An error for an xid inside the window of a bundle the programmer is sending now."""
    window = _error_windows.get(id(datapath))
    return window is not None and window[0] <= xid <= window[1]


def install_interceptor() -> None:
    """Route replies to programmer xids to their waiters (idempotent)."""
    global _installed
    if _installed:
        return
    original = ofproto_parser._MSG_PARSERS[ofwire.OFP_VERSION]

    def parse(datapath, version, msg_type, msg_len, xid, buf):
        waiter = waiter_for(datapath, msg_type, xid)
        if waiter is None:
            if msg_type == OFPT_ERROR and xid & ~XID_MASK == XID_BASE and len(buf) >= 12:
                window = _error_windows.get(id(datapath))
                if window is not None and window[0] <= xid <= window[1]:
                    kept = _stray_errors.setdefault(id(datapath), [])
                    if len(kept) < STRAY_ERRORS_MAX:
                        err_type, err_code = struct.unpack_from("!HH", buf, 8)
                        kept.append((xid, err_type, err_code, bytes(buf[12:76])))
                return None  # outside any open window: nobody will ask for it
            return original(datapath, version, msg_type, msg_len, xid, buf)
        data = bytes(buf[:msg_len])
        if msg_type == OFPT_ERROR:
            err_type, err_code = struct.unpack_from("!HH", data, 8) if len(data) >= 12 else (0, 0)
            waiter.errors.append((xid, err_type, err_code, data[12:76]))
            waiter.done = True
        elif msg_type == OFPT_MULTIPART_REPLY:
            mp_type, flags, body = ofwire.parse_multipart_reply(data)
            waiter.bodies.append(bytes(body))
            waiter.done = not flags & OFPMPF_REPLY_MORE
        else:  # the barrier, bundle or role reply it waits for
            if waiter.kind == "role":
                waiter.bodies.append(data)
            waiter.done = True
        if waiter.done:
            waiter.event.set()
        return None

    ofproto_parser._MSG_PARSERS[ofwire.OFP_VERSION] = parse
    _installed = True


class OFChannel:
    """Bytes out, waited-for replies in, for one connected datapath."""

    def __init__(self, datapath, timeout: float = 120.0):
        install_interceptor()
        self.datapath = datapath
        self.timeout = timeout

    def xid(self) -> int:
        return XID_BASE | (next(_XIDS) & XID_MASK)

    def expect_errors(self, first: int, last: int) -> None:
        """Keep errors for un-waited xids in [first, last] until :meth:`take_errors`."""
        _error_windows[id(self.datapath)] = (first, last)
        _stray_errors.pop(id(self.datapath), None)

    def take_errors(self, first: int, last: int) -> list:
        """Errors the switch sent for un-waited xids in [first, last]; closes the window."""
        key = id(self.datapath)
        if _error_windows.get(key) == (first, last):
            del _error_windows[key]
        errors = _stray_errors.pop(key, [])
        return [e for e in errors if first <= e[0] <= last]

    def close(self) -> None:
        """The connection is gone: fail every waiter on it now, drop what was kept for it."""
        key = id(self.datapath)
        for (dp_key, xid), waiter in list(_waiters.items()):
            if dp_key == key:
                waiter.failed = "switch disconnected"
                waiter.event.set()
        _stray_errors.pop(key, None)
        _error_windows.pop(key, None)

    def send(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        for off in range(0, len(view), SEND_CHUNK):
            if not self.datapath.send(bytes(view[off:off + SEND_CHUNK])):
                raise ConnectionError("switch connection closed while sending")

    def _arm(self, xid: int, kind: str) -> _Waiter:
        waiter = _Waiter(hub.Event(), kind)
        _waiters[(id(self.datapath), xid)] = waiter
        return waiter

    def _wait(self, xid: int, waiter: _Waiter) -> _Waiter:
        try:
            if not waiter.event.wait(timeout=self.timeout):
                raise TimeoutError(f"no reply to xid {xid:#x} within {self.timeout}s")
        finally:
            _waiters.pop((id(self.datapath), xid), None)
        if waiter.failed:
            raise ConnectionError(f"{waiter.failed} while waiting for xid {xid:#x}")
        return waiter

    def multipart(self, build) -> list[bytes]:
        """Send ``build(xid)`` (a multipart request) and return all reply bodies."""
        xid = self.xid()
        waiter = self._arm(xid, "multipart")
        self.send(build(xid))
        self._wait(xid, waiter)
        if waiter.errors:
            raise ProgrammingError(f"switch refused request: {_fmt_errors(waiter.errors)}")
        return waiter.bodies

    def role(self, role: int, generation: int) -> tuple[int, int]:
        """Ask for ``role`` (ofwire.OFPCR_ROLE_*) with ``generation``; the switch's (role, generation).

        Raises NotMaster when the switch refuses it as stale (a newer master exists).
        """
        xid = self.xid()
        waiter = self._arm(xid, "role")
        self.send(ofwire.role_request(xid, role, generation))
        self._wait(xid, waiter)
        if waiter.errors:
            _, err_type, code, _ = waiter.errors[0]
            if (err_type, code) == (ofwire.OFPET_ROLE_REQUEST_FAILED, ofwire.OFPRRFC_STALE):
                raise NotMaster(f"role request with generation {generation} refused as stale")
            raise ProgrammingError(f"role request refused: {_fmt_errors(waiter.errors)}")
        return ofwire.parse_role_reply(waiter.bodies[0])

    def round_trip(self, payload: bytes | bytearray, *, watch: list[int] = (), kind: str = "barrier",
                   final=None) -> list:
        """Send ``payload`` then a barrier (or ``final(xid)``); return errors for ``watch`` xids."""
        waiters = {x: self._arm(x, "none") for x in watch}
        xid = self.xid()
        end = self._arm(xid, kind)
        try:
            self.send(bytes(payload) + (final(xid) if final else ofwire.barrier_request(xid)))
            self._wait(xid, end)
        finally:
            for x in waiters:
                _waiters.pop((id(self.datapath), x), None)
        errors = list(end.errors)
        for w in waiters.values():
            errors.extend(w.errors)
        return errors


def _refused(what: str, errors) -> ProgrammingError:
    """The error for refusals ``errors``: NotMaster when the switch says we are its SLAVE."""
    if any((t, c) == (ofwire.OFPET_BAD_REQUEST, ofwire.OFPBRC_IS_SLAVE) for _, t, c, _ in errors):
        return NotMaster(f"{what}: the switch takes this controller for a SLAVE ({_fmt_errors(errors)})")
    return ProgrammingError(f"{what}: {_fmt_errors(errors)}")


def _fmt_errors(errors) -> str:
    return "; ".join(f"xid {x:#x} type {t} code {c}" for x, t, c, _ in errors[:5]) + (
        f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")


# ---------------------------------------------------------------------------


def read_actual(channel: OFChannel, between=None) -> ActualState:
    """Read every flow, group and meter of the switch into canonical form.

    ``between()``: called after each flow reply body is parsed (an audit sends the
    controller's own changes meanwhile); the flows are then read in :data:`AUDIT_SLICES`
    requests, one cookie slice each, every flow in exactly one of them."""
    actual = ActualState()
    slices = [(0, 0)] if between is None else [(k, AUDIT_SLICES - 1) for k in range(AUDIT_SLICES)]
    for cookie, mask in slices:
        request = functools.partial(ofwire.flow_stats_request, cookie=cookie, cookie_mask=mask)
        for body in channel.multipart(request):
            for st in ofwire.parse_flow_stats(body):
                actual.flows[st.identity] = st.body
            _pause()  # one reply body (at most 64 KiB) at a time: 160k flows would hold the hub ~1 s
            if between is not None:
                between()
    for body in channel.multipart(ofwire.group_desc_request):
        for g in ofwire.parse_group_desc(body):
            actual.groups[g.group_id] = g.key
    for body in channel.multipart(ofwire.meter_config_request):
        for m in ofwire.parse_meter_config(body):
            actual.meters[m.meter_id] = m.key
    return actual


def _leaving(changes: Changes, touched: Touched, desired) -> Changes:
    """``changes`` without what touches the entries in ``touched`` (another sync took them)."""
    if not len(touched):
        return changes
    idents = set()
    for key in touched.flows:
        flow = desired.flows.get(key) or touched.gone.get(key)
        if flow is not None:
            idents.add(ofwire.flow_identity(flow))
    gids, mids = touched.groups, touched.meters
    return Changes(
        meter_adds=[m for m in changes.meter_adds if m.meter_id not in mids],
        meter_mods=[m for m in changes.meter_mods if m.meter_id not in mids],
        group_adds=[g for g in changes.group_adds if g.group_id not in gids],
        group_mods=[g for g in changes.group_mods if g.group_id not in gids],
        flow_deletes=[i for i in changes.flow_deletes if i not in idents],
        flow_adds=[f for f in changes.flow_adds if ofwire.flow_identity(f) not in idents],
        flow_mods=[f for f in changes.flow_mods if ofwire.flow_identity(f) not in idents],
        group_deletes=[g for g in changes.group_deletes if g not in gids],
        meter_deletes=[m for m in changes.meter_deletes if m not in mids])


_bundle_ids = itertools.count(1)


def send_changes(channel: OFChannel, changes: Changes) -> None:
    """Apply ``changes`` in the safe order; raise ProgrammingError on any refusal."""
    # 1. new and changed meters and groups, before flows that use them
    buf, xids = bytearray(), []
    for meter in changes.meter_adds:
        x = channel.xid(); xids.append(x); buf += ofwire.meter_mod(meter, ofwire.OFPMC_ADD, x)
    for meter in changes.meter_mods:
        x = channel.xid(); xids.append(x); buf += ofwire.meter_mod(meter, ofwire.OFPMC_MODIFY, x)
    for group in changes.group_adds:
        x = channel.xid(); xids.append(x); buf += ofwire.group_mod(group, ofwire.OFPGC_ADD, x)
    for group in changes.group_mods:
        x = channel.xid(); xids.append(x); buf += ofwire.group_mod(group, ofwire.OFPGC_MODIFY, x)
    if buf:
        errors = channel.round_trip(buf, watch=xids)
        if errors:
            raise _refused("meter/group changes refused", errors)

    # 2. all flow changes in one atomic, ordered bundle
    n_flow = len(changes.flow_deletes) + len(changes.flow_adds) + len(changes.flow_mods)
    if n_flow:
        bid = next(_bundle_ids) & 0xFFFFFFFF
        flags = ofwire.ONF_BF_ATOMIC | ofwire.ONF_BF_ORDERED
        buf = bytearray()
        x = channel.xid()
        buf += ofwire.bundle_ctrl(bid, ofwire.ONF_BCT_OPEN_REQUEST, flags, x)
        first = x
        for ident in changes.flow_deletes:
            x = channel.xid()  # by the match bytes as read: works for fields we do not model too
            buf += ofwire.bundle_add(bid, flags, ofwire.delete_strict(ident, x), x)
        for flow in changes.flow_adds:
            x = channel.xid()
            buf += ofwire.bundle_add(bid, flags, ofwire.flow_mod(flow, ofwire.OFPFC_ADD, x), x)
        for flow in changes.flow_mods:
            x = channel.xid()
            buf += ofwire.bundle_add(bid, flags, ofwire.flow_mod(flow, ofwire.OFPFC_MODIFY_STRICT, x), x)
        last = x
        # A refused bundle add is reported by its xid and left out of the bundle,
        # so check for refusals (barrier) before committing, and discard if any.
        channel.expect_errors(first, last)
        try:
            errors = channel.round_trip(buf)
        finally:
            stray = channel.take_errors(first, last)
        errors += stray
        if errors:
            channel.round_trip(b"", kind="bundle", final=lambda xid: ofwire.bundle_ctrl(
                bid, ofwire.ONF_BCT_DISCARD_REQUEST, flags, xid))
            raise _refused("flow bundle discarded", errors)
        errors = channel.round_trip(b"", kind="bundle", final=lambda xid: ofwire.bundle_ctrl(
            bid, ofwire.ONF_BCT_COMMIT_REQUEST, flags, xid))
        if errors:
            raise _refused("flow bundle commit refused, nothing changed", errors)

    # 3. groups and meters no flow uses any more
    buf, xids = bytearray(), []
    for gid in changes.group_deletes:
        x = channel.xid(); xids.append(x); buf += ofwire.group_mod(Group(group_id=gid, type='all', buckets=()), ofwire.OFPGC_DELETE, x)
    for mid in changes.meter_deletes:
        x = channel.xid(); xids.append(x); buf += ofwire.meter_mod(Meter(meter_id=mid, bands=()), ofwire.OFPMC_DELETE, x)
    if buf:
        errors = channel.round_trip(buf, watch=xids)
        if errors:
            raise _refused("meter/group deletes refused", errors)


def _pause() -> None:
    hub.sleep(0)


class SwitchProgrammer:
    """Keeps one switch at the desired state; runs in its own green thread.

    The desired state is layered (:class:`LayeredState`, one layer per app part); the
    core replaces layers, and the programmer diffs only the entries those replacements
    touched against what it last wrote.  The full read-and-diff runs on (re)connect,
    after a failed sync, on a resync request, and on every audit (which also counts
    what it had to repair: drift made behind the controller's back).
    """

    def __init__(self, name: str, dpid: int):
        self.name = name
        self.dpid = dpid
        self.desired = LayeredState()
        self._touched = Touched()
        self._audit_touched: Touched | None = None  # what layers changed since a running audit began
        self.version = 0          # bumped on every new desired state
        self.synced_version = -1  # version the switch is known to hold
        self.actual: ActualState | None = None
        self.channel: OFChannel | None = None
        self.last_changes: dict[str, int] = {}
        self.last_sync_seconds = 0.0
        #: called with the duration of every sync that changed or confirmed the switch (metrics)
        self.on_synced = None
        self.last_error: str | None = None
        self.syncs = 0
        self.full_syncs = 0
        self.audits = 0
        self.audit_repairs = 0         # audits that found the switch differing from what was written
        self.audit_repaired: dict[str, int] = {}  # what those audits sent, summed
        self.last_audit: float | None = None
        self._audit_due = False
        self.connected_at: float | None = None
        # bumped whenever what we believe about the switch is void (reconnect, resync request);
        # a sync that started under an older epoch must not mark the switch synced
        self._epoch = 0
        self.connect_to_sync_seconds: float | None = None
        # cluster mode: the generation id this instance masters the switch with; each sync that
        # sends anything first re-asserts MASTER with it (a round trip), so an instance that lost
        # mastership without knowing is told so by the switch before it writes
        self.generation: int | None = None
        self.on_not_master = None   # called with why, when the switch says we are not its master
        self.not_master = 0
        self._kick = hub.Event()
        self._thread = hub.spawn(self._loop)

    # -- inputs -----------------------------------------------------------
    def set_layers(self, replacements: dict[tuple, SwitchState | None], check: bool = True) -> int:
        """Replace layers of the desired state (None removes one); returns entries touched."""
        touched = self.desired.replace(replacements, check=check)
        if touched:
            self._touched.update(touched)
            if self._audit_touched is not None:
                self._audit_touched.update(touched)
            self.version += 1
            self._kick.set()
        return len(touched)

    def connected(self, datapath) -> None:
        """A (re)connection: forget what we believed and read the switch."""
        self.channel = OFChannel(datapath)
        self._forget()
        self.connected_at = time.monotonic()
        self.connect_to_sync_seconds = None
        self._kick.set()

    def disconnected(self) -> None:
        if self.channel is not None:
            self.channel.close()  # a sync waiting on this channel fails now, not after its timeout
        self.channel = None
        self._forget()

    def _forget(self) -> None:
        self._epoch += 1
        self.actual = None
        self.synced_version = -1

    @property
    def is_connected(self) -> bool:
        return self.channel is not None

    @property
    def synced(self) -> bool:
        return self.channel is not None and self.synced_version == self.version

    def resync(self) -> None:
        """Re-read the switch and repair any drift (on request: the switch counts as unsynced)."""
        self._forget()
        self._kick.set()

    def audit(self) -> None:
        """Re-read the switch and repair drift, counting it; the switch stays synced meanwhile."""
        if self.channel is not None:
            self._audit_due = True
            self._kick.set()

    # -- the loop ---------------------------------------------------------
    def _loop(self) -> None:
        backoff = 0.5
        while True:
            self._kick.wait()
            self._kick.clear()
            channel = self.channel
            if channel is None or (self.synced_version == self.version and not self._audit_due):
                continue
            if self.attempt(channel):
                backoff = 0.5
            else:  # retry with backoff
                hub.sleep(backoff)
                backoff = min(backoff * 2, 10)
                self._kick.set()

    def attempt(self, channel: OFChannel) -> bool:
        """One sync; on any failure remember why and read the switch in full next time."""
        try:
            self.sync_once(channel)
            return True
        except NotMaster as exc:  # fenced by the switch: stop programming it, tell the core
            self.last_error = f"NotMaster: {exc}"
            self.not_master += 1
            LOG.warning("%s: %s; not programming it any more", self.name, exc)
            if self.channel is channel:
                self.channel = None
                self._forget()
            if self.on_not_master is not None:
                self.on_not_master(str(exc))
            return True
        except Exception as exc:  # keep the loop alive
            self.last_error = f"{type(exc).__name__}: {exc}"
            LOG.error("%s: sync failed: %s", self.name, self.last_error)
            self.actual = None
            return False

    def sync_once(self, channel: OFChannel) -> Changes:
        """Read the switch if needed, send the difference, remember the result."""
        start = time.monotonic()
        epoch = self._epoch
        audit, self._audit_due = self._audit_due, False
        full = self.actual is None or audit
        if full:
            routine = audit and self.actual is not None  # (else nothing is known about the switch)
            if routine:
                # the switch's 160k flows take seconds to parse: the controller's own changes
                # meanwhile go out at once (the dump was taken before them), not after the audit
                self._audit_touched = Touched()
                self._audit_touched.update(self._touched)  # (pending ones go out during the read too)
            try:
                actual = read_actual(channel, (lambda: self._sync_during_audit(channel, epoch)) if routine else None)
                if routine:  # what is still pending goes out as a sync too: the diff below finds drift only
                    self._sync_during_audit(channel, epoch)
                since, self._audit_touched = self._audit_touched, None
            finally:
                self._audit_touched = None
            if channel is not self.channel or epoch != self._epoch:
                self._kick.set()
                return Changes()
            if routine:
                self._keep_belief(actual, since)
            self.actual = actual
            # diff a consistent copy, giving the hub its turn now and then (100k flows take a
            # while): what changes meanwhile is in the new touched set, for the next sync
            snapshot = self.desired.snapshot()
            self._touched = Touched()
            version = self.version
            if routine:
                # the diff of a big switch takes a while too: the controller's own changes made
                # meanwhile go out at its pauses (against the live state), and the audit leaves
                # the entries they touched to them
                during = Touched()

                def pause() -> None:
                    _pause()
                    during.update(self._sync_during_audit(channel, epoch))

                changes = diff(snapshot, ActualState(dict(actual.flows), dict(actual.groups), dict(actual.meters)),
                               pause=pause)
                changes = _leaving(changes, during, self.desired)
            else:
                changes = diff(snapshot, self.actual, pause=_pause)
            if channel is not self.channel or epoch != self._epoch:
                self._kick.set()
                return Changes()
        else:
            touched, self._touched = self._touched, Touched()
            version = self.version  # what the diff below is computed from (it does not yield)
            changes = diff_touched(self.desired, self.actual, touched)
        if not changes.empty:
            self._send(channel, changes)
        if channel is not self.channel:
            raise ConnectionError("switch reconnected during sync")
        if epoch != self._epoch:  # a resync was asked for meanwhile: read the switch again
            self._kick.set()
            return changes
        apply_changes(self.actual, changes, pause=_pause)
        if channel is not self.channel or epoch != self._epoch:  # (the patch above may yield)
            self._kick.set()
            return changes
        self.synced_version = max(self.synced_version, version)  # (a sync during the audit's diff may be newer)
        self.last_error = None
        now = time.monotonic()
        if audit and changes.empty and self.syncs:  # a clean audit: counted as an audit, not a sync
            self.audits += 1
            self.last_audit = now
            LOG.debug("%s: audit found the switch as written", self.name)
            return changes
        self.syncs += 1
        self.full_syncs += full
        self.last_changes = changes.counts()
        if audit:
            self.audits += 1
            self.last_audit = now
            if not changes.empty:
                self.audit_repairs += 1
                for k, v in self.last_changes.items():
                    self.audit_repaired[k] = self.audit_repaired.get(k, 0) + v
                LOG.warning("%s: audit found drift made behind the controller's back, repaired: %s", self.name,
                            {k: v for k, v in self.last_changes.items() if v})
        self.last_sync_seconds = now - start
        if self.on_synced is not None:
            self.on_synced(self.last_sync_seconds)
        if self.connect_to_sync_seconds is None and self.connected_at is not None:
            self.connect_to_sync_seconds = now - self.connected_at
        LOG.info("%s: synced v%d in %.3fs%s: %s", self.name, version, self.last_sync_seconds,
                 " (full)" if full else "", {k: v for k, v in self.last_changes.items() if v} or "no changes")
        return changes

    def _send(self, channel: OFChannel, changes: Changes) -> None:
        if self.generation is not None:
            role, _ = channel.role(ofwire.OFPCR_ROLE_MASTER, self.generation)
            if role != ofwire.OFPCR_ROLE_MASTER:
                raise NotMaster(f"the switch answered our MASTER request with role {ofwire.ROLE_NAMES.get(role, role)}")
        send_changes(channel, changes)

    def _sync_during_audit(self, channel: OFChannel, epoch: int) -> Touched:
        """An incremental sync in the middle of an audit's read or diff (against what was last
        written); what it was asked to bring in line."""
        if not len(self._touched) or channel is not self.channel or epoch != self._epoch:
            return Touched()
        touched, self._touched = self._touched, Touched()
        version = self.version
        changes = diff_touched(self.desired, self.actual, touched)
        if not changes.empty:
            self._send(channel, changes)
        if channel is not self.channel or epoch != self._epoch:
            return touched
        apply_changes(self.actual, changes)
        self.synced_version = version
        self.syncs += 1
        self.last_changes = changes.counts()
        LOG.info("%s: synced v%d during an audit: %s", self.name, version,
                 {k: v for k, v in self.last_changes.items() if v} or "no changes")
        return touched

    def _keep_belief(self, read: ActualState, since: Touched) -> None:
        """In an audit's read, the entries the controller changed while it ran are taken as last
        written (the dump may predate the change): only what nobody here changed counts as drift."""
        belief = self.actual
        for key in since.flows:
            flow = self.desired.flows.get(key) or since.gone.get(key)
            if flow is None:
                continue
            ident = ofwire.flow_identity(flow)
            if ident in belief.flows:
                read.flows[ident] = belief.flows[ident]
            else:
                read.flows.pop(ident, None)
        for ids, have, mine in ((since.groups, read.groups, belief.groups), (since.meters, read.meters, belief.meters)):
            for i in ids:
                if i in mine:
                    have[i] = mine[i]
                else:
                    have.pop(i, None)

    def status(self) -> dict:
        return {"connected": self.is_connected, "synced": self.synced, "version": self.version,
                "syncs": self.syncs, "full_syncs": self.full_syncs, "last_changes": self.last_changes,
                "last_sync_seconds": round(self.last_sync_seconds, 4),
                "connect_to_sync_seconds": (None if self.connect_to_sync_seconds is None
                                            else round(self.connect_to_sync_seconds, 4)),
                "audits": self.audits, "audit_repairs": self.audit_repairs,
                **({"generation": self.generation, "not_master": self.not_master}
                   if self.generation is not None or self.not_master else {}),
                "last_error": self.last_error,
                **self.desired.summary()}
