"""A controller cluster on etcd: live members on leases, one master per switch.

Every instance connects to every switch (one Controller row per instance).  Which
instance masters a switch is decided through etcd, so that all instances agree and a
dead one is replaced within its lease's TTL:

* **Members.**  Each instance holds a lease (TTL ``ttl`` seconds, kept alive every
  ``ttl / 4``) and a key ``c/m/<member>`` on it saying which switches it is connected
  to.  An instance that dies (kill -9, a host gone) stops renewing; etcd deletes its
  keys when the lease runs out, and every instance sees that through its watch.
* **Masters.**  The master of a switch holds ``c/s/<switch>`` (on its lease).  The
  preferred master of a switch is the rendezvous-hash winner among the live members
  connected to it (:func:`preferred`): every instance computes the same choice, a
  member's death moves only the switches it mastered, and a new member takes over only
  the switches it now wins.  A free switch is claimed by its preferred member with a
  transaction that succeeds only if the key does not exist; a held switch whose
  preferred member is another connected instance is released by its holder, and the
  preferred member claims it.
* **Generation ids.**  The claim's etcd revision is the switch's generation id: it grows
  with every change of master, cluster-wide.  The master sends an OpenFlow
  ROLE_REQUEST MASTER with it; Open vSwitch demotes every other connection to SLAVE and
  refuses any later MASTER request with an older id.  An instance that lost its lease
  without noticing (frozen, cut off from etcd) is thereby fenced by the switch itself:
  its writes are refused (``IS_SLAVE``), its re-assertion is refused (``STALE``); it
  steps down and follows etcd again as a SLAVE.

* **App leaders.**  An app whose learning cannot be split per switch (multicast: a
  standby-path request crosses many switches; OAM: one verification reads and probes
  them all) has one leader among the live members, ``c/a/<app>``, chosen and claimed
  like a switch master (rendezvous hash over the live members, create-revision
  transaction, a move to a new member only after the hold-down).  The other instances
  relay that app's packet-ins to the leader, the leader's packet-outs to a switch go
  through its master, and the leader publishes what the app learned to etcd, from which
  every instance computes the same flows (:mod:`ryu_apps.framework.relay`).

This module only decides; the core (:mod:`ryu_apps.framework.core`) talks to the
switches through ``on_role(switch, generation)`` (None: not master any more) and
``on_master(switch, member, generation)`` (another instance masters it: be its SLAVE),
and to the apps through ``on_leader(app, generation)`` (None: not leader any more).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Callable, Iterable

from ryu_apps.framework.store import EtcdStore, StoreError, _b64, _unb64, prefix_end

LOG = logging.getLogger(__name__)


def _score(member: str, switch: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{member}\0{switch}".encode()).digest()[:8], "big")


def preferred(switch: str, members: Iterable[str]) -> str | None:
    """The rendezvous-hash (highest random weight) choice of master for ``switch``."""
    return max(members, key=lambda m: (_score(m, switch), m), default=None)


def assignment(connected: dict[str, Iterable[str]], switches: Iterable[str]) -> dict[str, str | None]:
    """Preferred master per switch, among the members connected to it (``member -> switches``)."""
    out = {}
    for sw in switches:
        out[sw] = preferred(sw, [m for m, sws in connected.items() if sw in set(sws)])
    return out


def leader_of(app: str, members: Iterable[str]) -> str | None:
    """The rendezvous-hash choice of leader for ``app`` among the live ``members``."""
    return preferred(f"app\0{app}", members)


class Cluster:
    """This instance's membership and the switches it masters (see the module docstring)."""

    #: seconds a member must have been live before switches are moved to it from a live master
    #: (a free switch is claimed at once): an instance that comes back from a freeze or a restart
    #: first follows as SLAVE, and flapping instances do not drag mastership around
    JOIN_HOLD = 5.0

    def __init__(self, store: EtcdStore, member: str, switches: Iterable[str], ttl: int,
                 on_role: Callable[[str, int | None], None],
                 on_master: Callable[[str, str, int], None] = lambda sw, member, gen: None,
                 info: dict | None = None, apps: Iterable[str] = (),
                 on_leader: Callable[[str, int | None], None] = lambda app, gen: None):
        self.store = store
        self.member = member
        self.switches = sorted(switches)
        self.ttl = max(1, int(ttl))
        self.on_role = on_role        # (switch, generation): we master it now; (switch, None): not any more
        self.on_master = on_master    # (switch, member, generation): another instance masters it
        self.info = dict(info or {})
        self.connected: set[str] = set()          # switches this instance has a channel to
        self.members: dict[str, dict] = {}        # live member -> its key's value
        self.masters: dict[str, tuple[str, int]] = {}   # switch -> (member, generation)
        self.mine: dict[str, int] = {}            # switches this instance masters -> generation
        self.apps = sorted(apps)                  # apps that run on one leader (the core sets them)
        self.on_leader = on_leader                # (app, generation): we lead it now; (app, None): not any more
        self.leaders: dict[str, tuple[str, int]] = {}   # app -> (member, generation)
        self.leading: dict[str, int] = {}         # apps this instance leads -> generation
        self.first_seen: dict[str, float] = {}    # member -> when this instance first saw it live
        self.lease: int | None = None
        self.lease_renewed: float | None = None   # monotonic time of the last successful keepalive
        self.counters = {"claims": 0, "releases": 0, "lost_lease": 0, "fenced": 0, "stale": 0,
                         "takeovers": 0, "store_errors": 0}
        self.events: list[dict] = []
        self._kick = None

    # -- keys -------------------------------------------------------------------
    @property
    def _mkey(self) -> str:
        return f"{self.store.root}c/m/{self.member}"

    def _skey(self, switch: str, kind: str = "s") -> str:
        return f"{self.store.root}c/{kind}/{switch}"

    def _holders(self, kind: str) -> dict[str, tuple[str, int]]:
        return self.masters if kind == "s" else self.leaders

    def _held(self, kind: str) -> dict[str, int]:
        return self.mine if kind == "s" else self.leading

    def _event(self, kind: str, **info) -> None:
        self.events.append({"time": round(time.time(), 3), "kind": kind, **info})
        del self.events[:-200]

    # -- start ------------------------------------------------------------------
    def start(self) -> None:
        """Join (lease, member key), read who masters what, then follow etcd in green threads.

        When etcd does not answer yet the instance starts as a member of nobody's cluster
        (no switch mastered) and keeps trying.
        """
        from os_ken.lib import hub

        self._kick = hub.Event()
        try:
            self._join()
            self._read_all()
        except StoreError as exc:
            self.counters["store_errors"] += 1
            LOG.warning("cluster: etcd not reachable at start (%s); retrying", exc)
        root = self.store.root + "c/"
        self.store.watch_range(root, prefix_end(root), self._changed)
        hub.spawn(self._keepalive_loop)
        hub.spawn(self._reconcile_loop)
        hub.spawn(self._probe_loop)
        self._kick.set()

    def _join(self) -> None:
        out = self.store.call("lease/grant", {"TTL": self.ttl})
        self.lease = int(out["ID"])
        self.lease_renewed = time.monotonic()
        self.first_seen[self.member] = self.lease_renewed
        self._put_member()
        LOG.info("cluster: %s joined with lease %x (TTL %d s)", self.member, self.lease, self.ttl)
        self._event("joined", lease=f"{self.lease:x}")

    def _put_member(self) -> None:
        value = json.dumps({**self.info, "connected": sorted(self.connected), "lease": self.lease}, sort_keys=True)
        self.store.call("kv/put", {"key": _b64(self._mkey), "value": _b64(value), "lease": self.lease})
        self.members[self.member] = json.loads(value)

    def _read_all(self) -> None:
        root = self.store.root + "c/"
        got = self.store.call("kv/range", {"key": _b64(root), "range_end": _b64(prefix_end(root))})
        members, masters, leaders = {}, {}, {}
        for kv in got.get("kvs", []):
            self._parse(kv_key(kv), kv_value(kv), int(kv.get("mod_revision", 0)),
                        int(kv.get("create_revision", 0)), members, masters, leaders)
        self.members, self.masters, self.leaders = members, masters, leaders
        for sw in list(self.mine):
            if self.masters.get(sw, ("", 0))[0] != self.member:
                self._lost(sw, "etcd says another instance masters it")
        for app in list(self.leading):
            if self.leaders.get(app, ("", 0))[0] != self.member:
                self._lost(app, "etcd says another instance leads it", "a")

    def _parse(self, key: str, value: str | None, mod_rev: int, create_rev: int, members: dict, masters: dict,
               leaders: dict) -> None:
        rest = key[len(self.store.root) + 2:]
        if rest.startswith("m/"):
            name = rest[2:]
            if value is None:
                members.pop(name, None)
                self.first_seen.pop(name, None)
            else:
                self.first_seen.setdefault(name, time.monotonic())
                try:
                    members[name] = json.loads(value)
                except ValueError:
                    members[name] = {}
        elif rest.startswith(("s/", "a/")):
            holders = masters if rest[0] == "s" else leaders
            name = rest[2:]
            if value is None:
                holders.pop(name, None)
            else:
                # the generation is the claim's revision (a put on the key by its holder keeps it)
                holders[name] = (value, create_rev or mod_rev)

    def _changed(self, key: str, value: str | None, rev: int, create_rev: int) -> None:
        """A watch event under ``c/``."""
        if key == "*":
            self._kick.set()
            return
        self._parse(key, value, rev, create_rev, self.members, self.masters, self.leaders)
        sw = key.rsplit("/", 1)[-1]
        if key.startswith(self.store.root + "c/a/"):
            holder = self.leaders.get(sw)
            if sw in self.leading and (holder is None or holder[0] != self.member):
                self._lost(sw, "etcd says another instance leads it" if holder else "its etcd key is gone", "a")
        elif key.startswith(self.store.root + "c/s/"):
            holder = self.masters.get(sw)
            if sw in self.mine and (holder is None or holder[0] != self.member):
                self._lost(sw, "etcd says another instance masters it" if holder else "its etcd key is gone")
            if holder is not None and holder[0] != self.member:
                self.on_master(sw, holder[0], holder[1])
        elif key == self._mkey and value is None and self.lease is not None:
            self._lost_lease("our member key was deleted (lease expired)")
        self._kick.set()

    # -- leases -----------------------------------------------------------------
    def _keepalive_loop(self) -> None:
        from os_ken.lib import hub

        while True:
            hub.sleep(self.ttl / 4)
            try:
                if self.lease is None:
                    self._join()
                    self._read_all()
                    self._kick.set()
                    continue
                out = self.store.call("lease/keepalive", {"ID": self.lease})
                ttl = int(out.get("result", {}).get("TTL", -1))
                if ttl <= 0:
                    self._lost_lease("etcd says the lease has expired")
                    continue
                self.lease_renewed = time.monotonic()
            except StoreError:
                self.counters["store_errors"] += 1

    #: seconds between probes of the other members' REST ports
    PROBE_EVERY = 0.1

    def _probe_loop(self) -> None:
        """A member whose process is gone (its REST port refuses connections, twice in a row:
        kill -9, a crash) need not hold its switches until its lease runs out: revoke its lease
        now and its switches move at once.  A member that is only slow or frozen accepts the
        connection (the kernel does) and keeps its lease until the TTL; and should a revoke hit
        a live instance, the switches refuse its stale generation and it steps down (fencing)."""
        import socket as _socket
        from urllib.parse import urlsplit

        from os_ken.lib import hub

        refused: dict[str, int] = {}
        while True:
            hub.sleep(self.PROBE_EVERY)
            for member, info in list(self.members.items()):
                if member == self.member or not info.get("rest") or not info.get("lease"):
                    continue
                url = urlsplit(info["rest"])
                try:
                    with _socket.create_connection((url.hostname, url.port), timeout=0.5):
                        refused.pop(member, None)
                except ConnectionRefusedError:
                    refused[member] = refused.get(member, 0) + 1
                except OSError:
                    refused.pop(member, None)  # slow or unreachable: the lease decides
                    continue
                if refused.get(member, 0) >= 2:
                    refused.pop(member, None)
                    LOG.warning("cluster: %s's REST port refuses connections (its process is gone): "
                                "revoking its lease %x", member, int(info["lease"]))
                    self._event("revoked", member=member, why="its REST port refuses connections")
                    self.counters["revoked"] = self.counters.get("revoked", 0) + 1
                    try:
                        self.store.call("kv/lease/revoke", {"ID": int(info["lease"])})
                    except StoreError:
                        self.counters["store_errors"] += 1

    def _lost_lease(self, why: str) -> None:
        """Our lease is gone (we were frozen or cut off longer than its TTL): we master nothing."""
        if self.lease is None:
            return
        LOG.warning("cluster: %s lost its lease: %s; stepping down from %s", self.member, why, sorted(self.mine))
        self.counters["lost_lease"] += 1
        self._event("lost_lease", why=why, switches=sorted(self.mine))
        self.lease = None
        self.members.pop(self.member, None)
        for sw in list(self.mine):
            self._lost(sw, "lease lost")
        for app in list(self.leading):
            self._lost(app, "lease lost", "a")

    def _lost(self, switch: str, why: str, kind: str = "s") -> None:
        if self._held(kind).pop(switch, None) is None:
            return
        if kind == "s":
            LOG.warning("cluster: %s is no longer master of %s: %s", self.member, switch, why)
            self._event("stepped_down", switch=switch, why=why)
            self.on_role(switch, None)
        else:
            LOG.warning("cluster: %s is no longer leader of %s: %s", self.member, switch, why)
            self._event("stepped_down", app=switch, why=why)
            self.on_leader(switch, None)

    def stale(self, switch: str, generation: int, why: str) -> None:
        """The switch refused our generation as stale: a newer master exists (we are its SLAVE)."""
        self.counters["stale"] += 1
        LOG.warning("cluster: %s: the switch refused generation %d as stale (%s); we are a SLAVE of %s",
                    switch, generation, why, self.masters.get(switch, ("?",))[0])
        self._event("stale", switch=switch, generation=generation, why=why)

    def fenced(self, switch: str, why: str) -> None:
        """The switch refused us (IS_SLAVE, STALE): someone newer masters it; step down and re-read."""
        self.counters["stale" if "stale" in why.lower() else "fenced"] += 1
        self._lost(switch, f"the switch refused us: {why}")
        self._event("fenced", switch=switch, why=why)
        if self._kick is not None:
            self._kick.set()

    # -- connections ----------------------------------------------------------------
    def set_connected(self, switch: str, up: bool) -> None:
        """This instance's channel to ``switch`` came (True) or went (False)."""
        if (switch in self.connected) == up:
            return
        (self.connected.add if up else self.connected.discard)(switch)
        if not up and switch in self.mine:
            # without a channel we cannot program it: let the next instance take it
            self._release(switch, "our channel to it is gone")
        try:
            if self.lease is not None:
                self._put_member()
        except StoreError:
            self.counters["store_errors"] += 1
        if self._kick is not None:
            self._kick.set()

    # -- deciding ------------------------------------------------------------------
    def _reconcile_loop(self) -> None:
        from os_ken.lib import hub

        while True:
            self._kick.wait(timeout=self.ttl)
            self._kick.clear()
            try:
                self.reconcile()
            except StoreError:
                self.counters["store_errors"] += 1
                hub.sleep(0.2)
                self._kick.set()

    def reconcile(self) -> None:
        """Claim the free switches we are preferred for; release the held ones another prefers."""
        if self.lease is None:
            return
        live = {m: info.get("connected", ()) for m, info in self.members.items()}
        live[self.member] = sorted(self.connected)
        want = assignment(live, self.switches)
        now = time.monotonic()
        settled = {m: sws for m, sws in live.items()
                   if m == self.member or now - self.first_seen.get(m, now) >= self.JOIN_HOLD}
        move_to = assignment(settled, self.switches)
        for sw in self.switches:
            holder = self.masters.get(sw)
            if holder is None:
                if want[sw] == self.member:
                    self._claim(sw)
            elif holder[0] == self.member:
                if sw not in self.mine:
                    # ours in etcd, but not here: this member restarted within its old lease's TTL
                    # (or a reply got lost); move the key onto our lease (its generation stays)
                    self._adopt(sw, holder[1])
                elif move_to[sw] not in (None, self.member):
                    self._release(sw, f"{move_to[sw]} is preferred and connected")
            elif holder[0] not in self.members and want[sw] == self.member:
                pass  # its lease will expire: etcd deletes the key and we claim it then
        # app leaders: among every live member (each has a channel to the switches it needs
        # or reaches them through their masters)
        alive = list(live)
        for app in self.apps:
            holder = self.leaders.get(app)
            if holder is None:
                if leader_of(app, alive) == self.member:
                    self._claim(app, "a")
            elif holder[0] == self.member:
                if app not in self.leading:
                    self._adopt(app, holder[1], "a")
                else:
                    best = leader_of(app, list(settled))
                    if best not in (None, self.member):
                        self._release(app, f"{best} is preferred", "a")

    def _claim(self, switch: str, kind: str = "s") -> None:
        key = _b64(self._skey(switch, kind))
        out = self.store.call("kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": _b64(self.member), "lease": self.lease}}],
            "failure": [{"request_range": {"key": key}}],
        })
        if not out.get("succeeded"):
            rng = out.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
            if rng:
                self._holders(kind)[switch] = (kv_value(rng[0]), int(rng[0].get("create_revision", 0)))
            return
        generation = int(out["header"]["revision"])
        self._holders(kind)[switch] = (self.member, generation)
        self.counters["claims"] += 1
        self._take(switch, generation, "claimed", kind)

    def _adopt(self, switch: str, generation: int, kind: str = "s") -> None:
        key = _b64(self._skey(switch, kind))
        out = self.store.call("kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": generation},
                        {"key": key, "target": "VALUE", "result": "EQUAL", "value": _b64(self.member)}],
            "success": [{"request_put": {"key": key, "value": _b64(self.member), "lease": self.lease}}]})
        if out.get("succeeded"):
            self._take(switch, generation, "its etcd key was ours (a restart within the lease)", kind)

    def _take(self, switch: str, generation: int, why: str, kind: str = "s") -> None:
        self._held(kind)[switch] = generation
        if kind == "a":
            self.counters["leaderships"] = self.counters.get("leaderships", 0) + 1
            LOG.info("cluster: %s leads %s (generation %d, %s)", self.member, switch, generation, why)
            self._event("leader", app=switch, generation=generation, why=why)
            self.on_leader(switch, generation)
            return
        self.counters["takeovers"] += 1
        LOG.info("cluster: %s masters %s (generation %d, %s)", self.member, switch, generation, why)
        self._event("master", switch=switch, generation=generation, why=why)
        self.on_role(switch, generation)

    def _release(self, switch: str, why: str, kind: str = "s") -> None:
        gen = self._held(kind).get(switch)
        self._lost(switch, why, kind)
        if gen is None or self.lease is None:
            return
        key = _b64(self._skey(switch, kind))
        try:  # only our own claim (a newer one is someone else's)
            self.store.call("kv/txn", {
                "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": gen}],
                "success": [{"request_delete_range": {"key": key}}]})
            self.counters["releases"] += 1
        except StoreError:
            self.counters["store_errors"] += 1

    def leave(self) -> None:
        """A clean stop: give up the lease at once (our switches move now, not after the TTL)."""
        if self.lease is None:
            return
        try:
            self.store.call("kv/lease/revoke", {"ID": self.lease})
        except StoreError:
            pass

    # -- reading --------------------------------------------------------------------
    def master_of(self, switch: str) -> tuple[str, int] | None:
        return self.masters.get(switch)

    def leader(self, app: str) -> str | None:
        """The member that leads ``app`` now (None: nobody, e.g. between a death and the claim)."""
        holder = self.leaders.get(app)
        return None if holder is None else holder[0]

    def rest_of(self, member: str) -> str | None:
        """A live member's REST base URL."""
        return (self.members.get(member) or {}).get("rest")

    def preferred_masters(self) -> dict[str, str | None]:
        """The master each switch should have among the live members connected to it."""
        live = {m: info.get("connected", ()) for m, info in self.members.items()}
        if self.lease is not None:
            live[self.member] = sorted(self.connected)
        return assignment(live, self.switches)

    def json(self) -> dict:
        now = time.monotonic()
        want = self.preferred_masters()
        return {"member": self.member, "ttl_seconds": self.ttl,
                "lease": None if self.lease is None else f"{self.lease:x}",
                "lease_renewed_seconds_ago": None if self.lease_renewed is None
                else round(now - self.lease_renewed, 2),
                "members": {m: {"connected": info.get("connected", []),
                                **{k: v for k, v in info.items() if k != "connected"},
                                "masters": sorted(sw for sw, (h, _) in self.masters.items() if h == m)}
                            for m, info in sorted(self.members.items())},
                "masters": {sw: {"member": h, "generation": g} for sw, (h, g) in sorted(self.masters.items())},
                "mine": dict(sorted(self.mine.items())), "counters": dict(self.counters),
                "leaders": {a: {"member": h, "generation": g} for a, (h, g) in sorted(self.leaders.items())},
                "leading": dict(sorted(self.leading.items())),
                "preferred": want,
                # every switch is mastered by its preferred member (after a join, the move waits
                # JOIN_HOLD seconds)
                "balanced": all(self.masters.get(sw, (None,))[0] == m for sw, m in want.items()),
                "join_hold_seconds": self.JOIN_HOLD,
                "events": self.events[-20:]}


def kv_key(kv: dict) -> str:
    return _unb64(kv["key"])


def kv_value(kv: dict) -> str:
    return _unb64(kv.get("value", ""))
