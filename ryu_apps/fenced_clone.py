"""Fenced clones: clone-to-parent address translation in OVS, with a fence that holds.

Launch together with the base fabric (whose forward table routes the translated packets)::

    ryu-manager --fabric-topology topologies/fenced_clone.yaml ryu_apps/fabric.py ryu_apps/fenced_clone.py

An application's components (``web``, ``app``, ``db``) are declared hosts; a
clone of it is a set of other declared hosts with their own MACs and
addresses, whose software still uses the parent's addresses.  A *fence*
(``ryu_apps/functions/fenced_clone/model.py``) maps each clone component to the
parent component it clones.  The switch a clone sits on then

* rewrites the source of everything the clone sends to its parent component's
  address and the destination, when it is a parent address of the same
  application, to the clone peer's own address (the fabric routes that);
* answers ARP (in the switch) and ND (here, from a metered packet-in) for
  parent addresses with the clone peer's MAC;
* drops everything else: spoofed sources, tagged frames, broadcast,
  multicast, other parent addresses, other clones, ARP/ND spoofing; traffic
  to addresses outside the application only when the fence's egress policy
  allows it, and then with the clone's own address as source.
* delivers to a clone's own address only fence traffic (it carries the
  fence's MAC) and, with egress allowed, packets from the allowed prefixes
  ("block in and out").

The flows are in ``ryu_apps/functions/fenced_clone/flows.py``.  REST: ``/v1/fences``.
"""

from __future__ import annotations

import time

from os_ken.lib import hub
from pydantic import ValidationError

from ryu_apps.fabric import neighbor_advertisement
from ryu_apps.framework import cookies
from ryu_apps.framework.app import FabricApp, FabricView, IntentError, PacketIn
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import PipelineError
from ryu_apps.framework.rest import ApiError, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.functions.fenced_clone.flows import (
    APP,
    K_ND,
    KIND_NAMES,
    compute_fence,
    fence_cookie_mask,
)
from ryu_apps.functions.fenced_clone.model import (
    Fence,
    FencedCloneIntent,
    FenceSpec,
    MemberSpec,
    intent_error_relative,
    link_local,
    resolve,
)
from ryu_apps.openflow import ofwire
from ryu_apps.packet import parse as pktparse

SYNC_WAIT_MAX = 30.0


class FencedClone(FabricApp):
    """The fenced clone app (``ryu_apps/fenced_clone.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = FencedCloneIntent

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: dict[tuple, dict[str, SwitchState]] = {}
        self._resolved_for = None
        self._resolved_list: list[Fence] = []
        self._by_name: dict[str, Fence] = {}
        self._by_fid: dict[int, Fence] = {}
        self.nd_answered: dict[str, int] = {}  # fence name -> neighbour advertisements sent for it
        self.nd_ignored: dict[str, int] = {}   # fence name -> solicitations not answered (spoofed, unknown)
        # a bad fence in the topology file (or in the saved intent) stops the controller, naming it
        try:
            self._fences()
        except IntentError as exc:
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field, exc.status) from None

    # -- computation (pure, memoised per fence) ---------------------------------
    def _fences(self) -> list[Fence]:
        """The current intent resolved against the topology (cached per intent object)."""
        if self._resolved_for is not self.intent:
            self._set_resolved(self.intent, resolve(self.core.topology, self.intent))
        return self._resolved_list

    def _set_resolved(self, intent: FencedCloneIntent, fences: list[Fence]) -> None:
        self._resolved_for, self._resolved_list = intent, fences
        self._by_name = {f.name: f for f in fences}
        self._by_fid = {f.fid: f for f in fences}

    @property
    def _resolved(self) -> dict[str, Fence]:
        self._fences()
        return self._by_name

    def compute(self, view: FabricView) -> dict[str, SwitchState]:
        rate = self.intent.nd_rate_per_clone
        out: dict[str, SwitchState] = {}
        for f in self._fences():
            key = (f, rate)
            states = self._cache.get(key)
            if states is None:
                states = self._cache[key] = compute_fence(f, rate)
            for switch, st in states.items():
                out.setdefault(switch, SwitchState()).merge(st)
        return out

    def _commit(self, candidate: FencedCloneIntent, states) -> None:
        self.core.commit_intent(self, candidate, states)
        keep = {(f, candidate.nd_rate_per_clone) for f in self._fences()}
        self._cache = {k: v for k, v in self._cache.items() if k in keep}

    # -- ND for parent addresses ----------------------------------------------------
    def packet_in(self, pkt: PacketIn) -> None:
        c = cookies.decode(pkt.cookie)
        if c.kind != K_ND:
            return
        self._fences()
        fence = self._by_fid.get(c.obj)
        if fence is None:
            return
        ns = pktparse.neighbor_solicitation(pkt.data)
        if ns.src.is_unspecified:
            return  # duplicate address detection: never claim an address for the clone
        if ns.hop_limit != 255:
            raise pktparse.BadPacket("neighbor solicitation with hop limit != 255")
        sender = next((m for m in fence.members
                       if m.clone.switch == pkt.switch and m.clone.port == pkt.in_port), None)
        ignored = self.nd_ignored
        if sender is None or ns.eth.src != sender.clone.mac:
            ignored[fence.name] = ignored.get(fence.name, 0) + 1
            return
        own = sender.clone.ipv6.ip if sender.clone.ipv6 else None
        if ns.src != own and ns.src != link_local(sender.clone.mac):
            # a spoofed source: the answer would be addressed to someone else
            ignored[fence.name] = ignored.get(fence.name, 0) + 1
            return
        target = str(ns.target)
        peer = next((m for m in fence.members if m.v6 and m.v6[0] == target), None)
        if peer is None:
            ignored[fence.name] = ignored.get(fence.name, 0) + 1
            return
        self.core.packet_out(pkt.switch, pkt.in_port, neighbor_advertisement(ns, peer.clone.mac))
        self.nd_answered[fence.name] = self.nd_answered.get(fence.name, 0) + 1

    # -- REST -------------------------------------------------------------------------
    def add_routes(self, api) -> None:
        tag = "fences"
        api.add("GET", "/v1/fences", self._list, "Fences: name, parent, members, egress, flow count", tag)
        api.add("POST", "/v1/fences", self._create,
                "Create a fence (?wait=1: answer once every switch holds it)", tag, body=FenceSpec, status=201)
        api.add("GET", "/v1/fences/{name}", self._get,
                "One fence: members, its flows per switch, live counters (?counters=0 skips the switch read)", tag)
        api.add("DELETE", "/v1/fences/{name}", self._delete, "Delete a fence: exactly its flows go", tag)
        api.add("POST", "/v1/fences/{name}/members", self._add_member, "Add a member (a clone component)",
                tag, body=MemberSpec, status=201)
        api.add("DELETE", "/v1/fences/{name}/members/{component}", self._remove_member,
                "Remove the member cloning a component", tag)

    def _spec_index(self, name: str) -> int:
        for i, f in enumerate(self.intent.fences):
            if f.name == name:
                return i
        raise ApiError(404, f"no fence named {name!r}; fences: {[f.name for f in self.intent.fences][:50]}")

    def _apply(self, candidate: FencedCloneIntent, index: int | None, r) -> dict:
        """Validate ``candidate`` completely, compute every switch, then commit (or change nothing)."""
        t0 = time.monotonic()
        try:
            candidate = FencedCloneIntent.model_validate(candidate.model_dump())
        except ValidationError as exc:
            raise validation_error(exc) from None
        try:
            fences = resolve(self.core.topology, candidate)
        except IntentError as exc:
            e = intent_error_relative(exc, index) if index is not None else exc
            raise ApiError(e.status, str(e), e.field) from None
        self._set_resolved(candidate, fences)  # compute() under try_intent reuses it
        t1 = time.monotonic()
        try:
            states = self.core.try_intent(self, candidate)
        except (StateConflict, PipelineError, IntentError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        versions = {n: p.version + 1 for n, p in self.core.programmers.items()}
        t2 = time.monotonic()
        self._commit(candidate, states)
        t3 = time.monotonic()
        out = {}
        if r.query.get("wait") in ("1", "true", "yes"):
            out["synced"], _ = self._wait_synced(versions, t3)
        out["seconds"] = {"validate": round(t1 - t0, 4), "compute": round(t2 - t1, 4),
                          "commit": round(t3 - t2, 4)}
        if "synced" in out:
            out["seconds"]["sync"] = round(time.monotonic() - t3, 4)
        return out

    def _wait_synced(self, versions: dict[str, int], t0: float) -> tuple[bool, float]:
        deadline = t0 + SYNC_WAIT_MAX
        while time.monotonic() < deadline:
            if all(p.synced_version >= versions[n] or (p.synced and p.version < versions[n])
                   for n, p in self.core.programmers.items() if p.is_connected):
                return True, round(time.monotonic() - t0, 4)
            hub.sleep(0.005)
        return False, round(time.monotonic() - t0, 4)

    def _create(self, r):
        spec: FenceSpec = r.body
        if any(f.name == spec.name for f in self.intent.fences):
            raise ApiError(409, f"name: a fence named {spec.name!r} already exists", "name")
        fences = list(self.intent.fences) + [spec]
        candidate = self.intent.model_copy(update={"fences": fences})
        extra = self._apply(candidate, len(fences) - 1, r)
        return 201, {**self._summary(spec.name), **extra}

    def _delete(self, r):
        name = r.params["name"]
        i = self._spec_index(name)
        fence = self._resolved.get(name)
        removed = self._flow_count(fence) if fence else 0
        fences = [f for j, f in enumerate(self.intent.fences) if j != i]
        extra = self._apply(self.intent.model_copy(update={"fences": fences}), None, r)
        return {"deleted": name, "flows_removed": removed, **extra}

    def _add_member(self, r):
        name = r.params["name"]
        i = self._spec_index(name)
        spec = self.intent.fences[i]
        members = list(spec.members) + [r.body]
        fences = list(self.intent.fences)
        fences[i] = spec.model_copy(update={"members": members})
        try:
            extra = self._apply(self.intent.model_copy(update={"fences": fences}), i, r)
        except ApiError as exc:
            # name the field relative to the member body where possible
            pre = f"members[{len(members) - 1}]"
            if exc.field and (exc.field == pre or exc.field.startswith(pre + ".")):
                rel = exc.field[len(pre) + 1:] or None
                msg = exc.message.replace(f"{exc.field}: ", f"{rel}: " if rel else "", 1)
                raise ApiError(exc.status, msg, rel) from None
            raise
        return 201, {**self._summary(name), **extra}

    def _remove_member(self, r):
        name, comp = r.params["name"], r.params["component"]
        i = self._spec_index(name)
        spec = self.intent.fences[i]
        members = [m for m in spec.members if m.component != comp]
        if len(members) == len(spec.members):
            raise ApiError(404, f"fence {name!r} has no member cloning {comp!r}; "
                                f"members: {[m.component for m in spec.members]}")
        fences = list(self.intent.fences)
        fences[i] = spec.model_copy(update={"members": members})
        extra = self._apply(self.intent.model_copy(update={"fences": fences}), i, r)
        return {**self._summary(name), **extra}

    def _list(self, r):
        return [self._summary(s.name, s) for s in self.intent.fences]

    def _get(self, r):
        name = r.params["name"]
        self._spec_index(name)
        return self._fence_json(name, counters=r.query.get("counters", "1") not in ("0", "false", "no"))

    # -- views ------------------------------------------------------------------------
    def _fence_states(self, fence: Fence) -> dict[str, SwitchState]:
        key = (fence, self.intent.nd_rate_per_clone)
        states = self._cache.get(key)
        if states is None:
            states = compute_fence(fence, self.intent.nd_rate_per_clone)
        return states

    def _flow_count(self, fence: Fence) -> int:
        return sum(len(st.flows) for st in self._fence_states(fence).values())

    def _summary(self, name: str, spec: FenceSpec | None = None) -> dict:
        spec = spec or self.intent.fences[self._spec_index(name)]
        fence = self._resolved.get(name)
        return {"name": name, "parent": list(spec.parent),
                "members": [self._member_json(m) for m in fence.members] if fence else [],
                "egress": spec.egress.model_dump(), "flows": self._flow_count(fence) if fence else 0,
                "cookie": f"{fence_cookie_hex(fence.fid)}/{fence_cookie_mask():#018x}" if fence else None,
                "metadata": f"{fence.fid:#x}" if fence else None, "mac": fence.mac if fence else None}

    @staticmethod
    def _member_json(m) -> dict:
        h = m.clone
        return {"component": m.component, "host": h.name, "mac": h.mac, "switch": h.switch, "port": h.port,
                "ipv4": {"parent": m.v4[0], "clone": m.v4[1]} if m.v4 else None,
                "ipv6": {"parent": m.v6[0], "clone": m.v6[1]} if m.v6 else None}

    def _fence_json(self, name: str, counters: bool) -> dict:
        out = self._summary(name)
        fence = self._resolved.get(name)
        if fence is None:
            return out
        flows = {}
        for switch, st in sorted(self._fence_states(fence).items()):
            flows[switch] = [{**f.to_dict(), "kind": KIND_NAMES.get(cookies.decode(f.cookie).kind)}
                             for f in sorted(st.flows.values(), key=lambda f: (f.table, -f.priority))]
        out["flows_by_switch"] = flows
        out["guards"] = [str(a) for a in fence.guards]
        if counters:
            out["counters"] = self._counters(fence, list(flows))
        return out

    def _counters(self, fence: Fence, switches: list[str]) -> dict:
        """Live packet counters of the fence's flows, summed per kind, read from each switch."""
        totals: dict[str, int] = {k: 0 for k in KIND_NAMES.values()}
        per_switch: dict[str, dict] = {}
        errors = {}
        cookie = fence_cookie_base(fence.fid)
        for sw in switches:
            prog = self.core.programmers.get(sw)
            ch = prog.channel if prog else None
            if ch is None:
                errors[sw] = "not connected"
                continue
            try:
                bodies = ch.multipart(lambda xid: ofwire.flow_stats_request(
                    xid, cookie=cookie, cookie_mask=fence_cookie_mask()))
            except Exception as exc:  # noqa: BLE001 - a read failure is reported, not raised
                errors[sw] = f"{type(exc).__name__}: {exc}"
                continue
            mine: dict[str, int] = {}
            for body in bodies:
                for stat in ofwire.parse_flow_stats(body):
                    kind = KIND_NAMES.get(cookies.decode(stat.cookie).kind, "other")
                    mine[kind] = mine.get(kind, 0) + stat.packet_count
                    totals[kind] = totals.get(kind, 0) + stat.packet_count
            per_switch[sw] = mine
        out = {"packets": totals, "by_switch": per_switch,
               "nd_answered": self.nd_answered.get(fence.name, 0), "nd_ignored": self.nd_ignored.get(fence.name, 0)}
        if errors:
            out["errors"] = errors
        return out


def fence_cookie_base(fid: int) -> int:
    """The fence's cookie with kind 0 (use with :func:`fence_cookie_mask`)."""
    return cookies.make(APP, 0, fid)


def fence_cookie_hex(fid: int) -> str:
    return f"{fence_cookie_base(fid):#018x}"

