"""Fenced clones: clone-to-parent address translation in OVS, with a fence that holds.

Launch together with the base fabric (whose forward table routes the translated packets)::

    ryu-manager --fabric-topology topologies/fenced_clone.yaml ryu_apps/fabric.py ryu_apps/fenced_clone.py

An application's components (``web``, ``app``, ``db``) are declared hosts; a
clone of it is a set of other declared hosts with their own MACs and
addresses, whose software still uses the parent's addresses.  A *fence*
(``ryu_apps/functions/fenced_clone/intent.py``) maps each clone component to the
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

On framework v2: the app's state is one part per fence (its name); a REST change
of one fence computes that fence (and the fences that allow egress and share a
parent component with it, whose guards list its members) and nothing else.  The
flows read no view input, so no port or switch event recomputes a fence.  The
whole intent's cross-fence checks are the stateless part ``CHECK``, computed with
every full recompute (startup, ``PUT /v1/apps/fenced_clone/intent``).  A change
over ``/v1/fences`` checks, before it computes anything, the one fence it changes
against an index of the others (``model.Index``: names, ids, MACs, clone hosts,
parent components; at 1000 fences 0.03 ms where the whole intent's checks take
25 ms), and runs the whole intent's checks only when that finds something to
refuse, so the refusal names the same field as ever.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable

from pydantic import ValidationError

from ryu_apps.fabric import neighbor_advertisement
from ryu_apps.framework import cookies
from ryu_apps.framework.app import WHOLE, FabricApp, FabricView, IntentError, PacketIn
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import PipelineError
from ryu_apps.framework.rest import ApiError, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.functions.fenced_clone.flows import (
    APP,
    K_ND,
    KIND_NAMES,
    compute_part,
    fence_cookie_mask,
)
from ryu_apps.functions.fenced_clone.intent import (
    FencedCloneIntent,
    FenceSpec,
    MemberSpec,
)
from ryu_apps.functions.fenced_clone.model import (
    Directory,
    Fence,
    Index,
    dependents,
    fence_id,
    intent_error_relative,
    link_local,
    resolve_fence,
    resolve_part,
    validate,
)
from ryu_apps.openflow import ofwire
from ryu_apps.packet import parse as pktparse

SYNC_WAIT_MAX = 30.0
#: the part with no state: the whole intent's checks across fences (no fence is named like it)
CHECK = "*checks"


class FencedClone(FabricApp):
    """The fenced clone app (``ryu_apps/fenced_clone.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = FencedCloneIntent
    #: a fence's flows depend on the intent and the declared topology only (flows.py)
    INPUTS = frozenset()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: the topology's hosts indexed for resolution (the topology never changes)
        self.directory = Directory.of(self.core.topology)
        self.nd_answered: dict[str, int] = {}  # fence name -> neighbour advertisements sent for it
        self.nd_ignored: dict[str, int] = {}   # fence name -> solicitations not answered (spoofed, unknown)
        # a bad fence in the topology file (or in the saved intent) stops the controller, naming it
        try:
            validate(self.directory, self.intent)
        except IntentError as exc:
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field, exc.status) from None
        #: (intent, its Index): a REST change checks the changed fence against the others' entries
        self._index = (self.intent, Index.of(self.directory, self.intent))

    # -- the desired state (pure) -----------------------------------------------------
    def _directory(self, view: FabricView) -> Directory:
        return self.directory if view.topology is self.directory.topology else Directory.of(view.topology)

    def parts(self, intent: FencedCloneIntent) -> Iterable[Hashable]:
        """One part per fence (its name), and :data:`CHECK`."""
        return (CHECK, *(f.name for f in intent.fences))

    def compute(self, view: FabricView, intent: FencedCloneIntent, part: Hashable = WHOLE) -> dict[str, SwitchState]:
        """The flows and meters of the fence ``part`` (pure).

        :data:`CHECK` holds nothing: it validates the whole intent (raises IntentError naming
        the field), so a whole-intent PUT is refused before anything changes.  ``WHOLE``:
        every fence at once (the union of the parts, for tests and tools).
        """
        d = self._directory(view)
        if part == CHECK:
            validate(d, intent)
            return {}
        if part == WHOLE:
            validate(d, intent)
            out: dict[str, SwitchState] = {}
            for spec in intent.fences:
                for switch, st in compute_part(d, intent, spec.name).items():
                    out.setdefault(switch, SwitchState()).merge(st)
            return out
        return compute_part(d, intent, part)

    def parts_changed(self, view: FabricView, intent, change) -> set:
        """No fence reads the view: a port or switch change touches none (INPUTS is empty)."""
        return set()

    # -- ND for parent addresses ----------------------------------------------------
    def _fence_by_id(self, fid: int) -> Fence | None:
        for i, spec in enumerate(self.intent.fences):
            if fence_id(spec.name) == fid:
                return resolve_fence(self.directory, spec, f"fences[{i}]")
        return None

    def on_packet_in(self, pkt: PacketIn) -> None:
        c = cookies.decode(pkt.cookie)
        if c.kind != K_ND:
            return
        fence = self._fence_by_id(c.obj)
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

    def _intent_index(self) -> Index:
        """The current intent's :class:`Index` (built again after the intent was replaced whole)."""
        intent, index = self._index
        if intent is not self.intent:
            index = Index.of(self.directory, self.intent)
            self._index = (self.intent, index)
        return index

    def _spec_index(self, name: str) -> int:
        for i, f in enumerate(self.intent.fences):
            if f.name == name:
                return i
        raise ApiError(404, f"no fence named {name!r}; fences: {[f.name for f in self.intent.fences][:50]}")

    def _apply(self, candidate: FencedCloneIntent, index: int | None, r, before: FenceSpec | None) -> tuple:
        """Validate ``candidate`` (fence ``index`` changed from ``before``; None: deleted), compute
        only the fences that change with it, then commit (or change nothing).

        Returns the answer's extra keys and the computed candidate."""
        t0 = time.monotonic()
        after = candidate.fences[index] if index is not None else None
        if after is not None:  # model_copy does not validate: the changed fence's shape once more
            try:
                FenceSpec.model_validate(after.model_dump())
            except ValidationError as exc:
                raise validation_error(exc, f"fences[{index}]") from None
        fences = self._intent_index()
        if not fences.admits(self.directory, before, after):
            # something to refuse (or a case the index does not decide): the whole intent's
            # checks name the first offending field, as they always did
            try:
                validate(self.directory, candidate)
            except IntentError as exc:
                e = intent_error_relative(exc, index) if index is not None else exc
                raise ApiError(e.status, str(e), e.field) from None
        t1 = time.monotonic()
        try:
            result = self.core.try_intent(self, candidate, parts=dependents(candidate, (before, after)))
        except (StateConflict, PipelineError, IntentError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        t2 = time.monotonic()
        self.core.commit_intent(self, candidate, result)
        fences.update(self.directory, before, after)
        self._index = (candidate, fences)
        t3 = time.monotonic()
        out = {}
        if r.query.get("wait") in ("1", "true", "yes"):
            connected = [s for s in self.core.topology.switches if self.core.is_connected(s)]
            out["synced"] = not self.core.wait_applied(connected, SYNC_WAIT_MAX)
        out["seconds"] = {"validate": round(t1 - t0, 4), "compute": round(t2 - t1, 4),
                          "commit": round(t3 - t2, 4)}
        if "synced" in out:
            out["seconds"]["sync"] = round(time.monotonic() - t3, 4)
        return out, result

    def _create(self, r):
        spec: FenceSpec = r.body
        if any(f.name == spec.name for f in self.intent.fences):
            raise ApiError(409, f"name: a fence named {spec.name!r} already exists", "name")
        fences = list(self.intent.fences) + [spec]
        candidate = self.intent.model_copy(update={"fences": fences})
        extra, result = self._apply(candidate, len(fences) - 1, r, None)
        return 201, {**self._summary(spec.name, _part_states(result, spec.name)), **extra}

    def _delete(self, r):
        name = r.params["name"]
        i = self._spec_index(name)
        removed = _flow_count(self._states(name))
        fences = [f for j, f in enumerate(self.intent.fences) if j != i]
        extra, _ = self._apply(self.intent.model_copy(update={"fences": fences}), None, r, self.intent.fences[i])
        return {"deleted": name, "flows_removed": removed, **extra}

    def _add_member(self, r):
        name = r.params["name"]
        i = self._spec_index(name)
        spec = self.intent.fences[i]
        members = list(spec.members) + [r.body]
        fences = list(self.intent.fences)
        fences[i] = spec.model_copy(update={"members": members})
        try:
            extra, result = self._apply(self.intent.model_copy(update={"fences": fences}), i, r, spec)
        except ApiError as exc:
            # name the field relative to the member body where possible
            pre = f"members[{len(members) - 1}]"
            if exc.field and (exc.field == pre or exc.field.startswith(pre + ".")):
                rel = exc.field[len(pre) + 1:] or None
                msg = exc.message.replace(f"{exc.field}: ", f"{rel}: " if rel else "", 1)
                raise ApiError(exc.status, msg, rel) from None
            raise
        return 201, {**self._summary(name, _part_states(result, name)), **extra}

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
        extra, result = self._apply(self.intent.model_copy(update={"fences": fences}), i, r, spec)
        return {**self._summary(name, _part_states(result, name)), **extra}

    def _list(self, r):
        counts = self._flow_counts()
        return [self._summary(s.name, flows=counts.get(fence_id(s.name), 0), spec=s) for s in self.intent.fences]

    def _get(self, r):
        name = r.params["name"]
        self._spec_index(name)
        return self._fence_json(name, counters=r.query.get("counters", "1") not in ("0", "false", "no"))

    # -- views ------------------------------------------------------------------------
    def _states(self, name: str) -> dict[str, SwitchState]:
        """The fence's state per switch, computed from the current intent (pure)."""
        return compute_part(self.directory, self.intent, name)

    def _flow_counts(self) -> dict[int, int]:
        """Flows per fence id in the switches' desired state (one pass, for the list)."""
        counts: dict[int, int] = {}
        mine = cookies.app_id(APP)
        for switch in self.core.topology.switches:
            for flow in self.core.desired_state(switch).flows.values():
                c = flow.cookie
                if c >> cookies.APP_SHIFT == mine:
                    obj = c & cookies.OBJECT_MASK
                    counts[obj] = counts.get(obj, 0) + 1
        return counts

    def _summary(self, name: str, states: dict[str, SwitchState] | None = None, flows: int | None = None,
                 spec: FenceSpec | None = None) -> dict:
        spec = spec or self.intent.fences[self._spec_index(name)]
        fence = resolve_fence(self.directory, spec)
        if flows is None:
            flows = _flow_count(self._states(name) if states is None else states)
        return {"name": name, "parent": list(spec.parent),
                "members": [self._member_json(m) for m in fence.members],
                "egress": spec.egress.model_dump(), "flows": flows,
                "cookie": f"{fence_cookie_hex(fence.fid)}/{fence_cookie_mask():#018x}",
                "metadata": f"{fence.fid:#x}", "mac": fence.mac}

    @staticmethod
    def _member_json(m) -> dict:
        h = m.clone
        return {"component": m.component, "host": h.name, "mac": h.mac, "switch": h.switch, "port": h.port,
                "ipv4": {"parent": m.v4[0], "clone": m.v4[1]} if m.v4 else None,
                "ipv6": {"parent": m.v6[0], "clone": m.v6[1]} if m.v6 else None}

    def _fence_json(self, name: str, counters: bool) -> dict:
        fence = resolve_part(self.directory, self.intent, name)
        states = self._states(name)
        out = self._summary(name, states)
        flows = {}
        for switch, st in sorted(states.items()):
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
            if not self.core.is_connected(sw):
                errors[sw] = "not connected"
                continue
            try:
                bodies = self.core.multipart(sw, lambda xid: ofwire.flow_stats_request(
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


def _part_states(result, name: str) -> dict[str, SwitchState]:
    """The state a computed candidate (``core.try_intent``) holds for the fence ``name``, per switch."""
    key = (APP, name)
    return {sw: layers[key] for sw, layers in result.layers.items() if layers.get(key) is not None}


def _flow_count(states: dict[str, SwitchState]) -> int:
    return sum(len(st.flows) for st in states.values())


def fence_cookie_base(fid: int) -> int:
    """The fence's cookie with kind 0 (use with :func:`fence_cookie_mask`)."""
    return cookies.make(APP, 0, fid)


def fence_cookie_hex(fid: int) -> str:
    return f"{fence_cookie_base(fid):#018x}"
