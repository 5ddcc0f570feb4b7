"""Fenced clones: the intent resolved against the topology, and the whole-intent checks (pure).

The intent (:mod:`ryu_apps.functions.fenced_clone.intent`) is checked in two
steps with one error type: the pydantic models check the shape and the address
syntax; :func:`validate` checks everything against the topology and the other
fences and raises :class:`IntentError` whose ``field`` is the JSON path of the
offending key (``fences[1].members[0].ipv4``) and whose ``status`` is 422 (the
request itself is wrong) or 409 (it conflicts with another fence).

The app's state is made of one part per fence (its name).  :func:`resolve_part`
resolves one fence of an intent that :func:`validate` accepted, without looking
at the other fences except where its flows need them: a fence that allows
egress guards the members of the other clones of its parent
(:func:`dependents` says which fences a change of one can touch).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ryu_apps.framework import cookies
from ryu_apps.framework.topology import Host, Topology
from ryu_apps.framework.view import IntentError
from ryu_apps.functions.fenced_clone.intent import (
    FencedCloneIntent,
    FenceSpec,
    IPAddr,
    IPNet,
    MemberSpec,
)


@dataclass(frozen=True, eq=False)
class Directory:
    """The topology's hosts indexed the way resolution looks them up (build once per topology)."""

    topology: Topology
    owners: Mapping[str, str]   # address (text) -> the host that has it
    macs: Mapping[str, str]     # MAC (lower case) -> host

    @classmethod
    def of(cls, topo: Topology) -> Directory:
        owners = {str(a): h.name for h in topo.hosts.values() for a in h.addresses}
        return cls(topo, owners, {h.mac.lower(): h.name for h in topo.hosts.values()})

    def clone_host(self, m: MemberSpec) -> Host | None:
        """The host a (valid) member names, by name or by address; None when it names none."""
        name = m.host or self.owners.get(m.ipv4 or "") or self.owners.get(m.ipv6 or "")
        return self.topology.hosts.get(name) if name else None


# ---------------------------------------------------------------------------
# Resolution against the topology


@dataclass(frozen=True)
class Member:
    """A member resolved: the parent component's host and the clone's host, per family."""

    component: str
    parent: Host
    clone: Host
    v4: tuple[str, str] | None  # (parent address, clone address), when both have IPv4
    v6: tuple[str, str] | None


@dataclass(frozen=True)
class Fence:
    """A fence resolved against the topology."""

    name: str
    fid: int                          # 48-bit object id: the cookie's object and the metadata value
    parent: tuple[Host, ...]
    members: tuple[Member, ...]
    egress: tuple[IPNet, ...]
    guards: tuple[IPAddr, ...] = ()   # addresses the egress must never reach (inside the allowed prefixes)

    def parent_addresses(self) -> list[IPAddr]:
        return [a for h in self.parent for a in h.addresses]

    @property
    def mac(self) -> str:
        """The fence's own source MAC: every packet translated inside the fence carries it.

        The destination switch delivers a packet to a clone's own address only when it
        carries its fence's MAC (or comes from an allowed egress prefix), so the fence MAC
        is what tells fence traffic from a parent or an outside host using the same
        addresses.  Locally administered unicast (``fe:`` + 40 bits of the fence id); no
        host can send it (every host and clone port is bound to its own MAC).
        """
        return fence_mac(self.fid)


def fence_id(name: str) -> int:
    """The fence's 48-bit id (cookie object and metadata value), from its name: stable across restarts."""
    return cookies.object_id(f"fence:{name}")


def fence_mac(fid: int) -> str:
    v = 0xFE0000000000 | (fid & 0xFFFFFFFFFF)
    return ":".join(f"{(v >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address the kernel derives from ``mac`` (fe80::/64, U/L bit flipped)."""
    b = [int(x, 16) for x in mac.split(":")]
    eui = [b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]]
    return ipaddress.IPv6Address(bytes([0xFE, 0x80, 0, 0, 0, 0, 0, 0] + eui))


def _err(msg: str, field: str, status: int = 422) -> IntentError:
    return IntentError(f"{field}: {msg}", field, status)


def _member_key(m: MemberSpec) -> str:
    """The key a member names its clone by (for error fields)."""
    return "host" if m.host else ("ipv4" if m.ipv4 else "ipv6")


def check_fence(d: Directory, spec: FenceSpec, where: str = "") -> tuple[list[Host], list[tuple[str, Host, Host]]]:
    """One fence against the topology alone (not other fences); ``where`` prefixes error fields.

    Returns the parent's hosts and (component, parent host, clone host) per member."""
    topo, owners = d.topology, d.owners
    pre = f"{where}." if where else ""
    parent: list[Host] = []
    seen = set()
    for i, comp in enumerate(spec.parent):
        h = topo.hosts.get(comp)
        if h is None:
            raise _err(f"unknown component {comp!r}: parent components are declared hosts "
                       f"(known: {', '.join(sorted(topo.hosts)[:20])}{' ...' if len(topo.hosts) > 20 else ''})",
                       f"{pre}parent[{i}]")
        if comp in seen:
            raise _err(f"component {comp!r} is listed twice", f"{pre}parent[{i}]")
        seen.add(comp)
        parent.append(h)
    members: list[tuple[str, Host, Host]] = []
    by_component: dict[str, int] = {}
    by_clone: dict[str, int] = {}
    for i, m in enumerate(spec.members):
        mw = f"{pre}members[{i}]"
        if m.component not in seen:
            raise _err(f"unknown component {m.component!r}: not in this fence's parent {sorted(seen)}",
                       f"{mw}.component")
        if m.component in by_component:
            raise _err(f"component {m.component!r} already has a clone in this fence "
                       f"(members[{by_component[m.component]}])", f"{mw}.component")
        clone_name = None
        if m.host is not None:
            if m.host not in topo.hosts:
                raise _err(f"unknown host {m.host!r}: a clone component is a declared host", f"{mw}.host")
            clone_name = m.host
        for fam in ("ipv4", "ipv6"):
            addr = getattr(m, fam)
            if addr is None:
                continue
            owner = owners.get(addr)
            if owner is None:
                raise _err(f"{addr} is not the address of a declared host", f"{mw}.{fam}")
            if clone_name is not None and owner != clone_name:
                raise _err(f"{addr} belongs to host {owner}, not {clone_name}", f"{mw}.{fam}")
            clone_name = owner
        clone = topo.hosts[clone_name]
        if clone_name in seen:
            raise _err(f"{clone_name} is a component of the parent; a clone needs its own host and addresses",
                       f"{mw}.{_member_key(m)}", 409)
        if clone_name in by_clone:
            raise _err(f"host {clone_name} is already the clone of "
                       f"{spec.members[by_clone[clone_name]].component} (members[{by_clone[clone_name]}])",
                       f"{mw}.{_member_key(m)}", 409)
        p = topo.hosts[m.component]
        if m.ipv4 and not p.ipv4:
            raise _err(f"parent component {p.name} has no IPv4 address to map {m.ipv4} to", f"{mw}.ipv4")
        if m.ipv6 and not p.ipv6:
            raise _err(f"parent component {p.name} has no IPv6 address to map {m.ipv6} to", f"{mw}.ipv6")
        if not (p.ipv4 and clone.ipv4) and not (p.ipv6 and clone.ipv6):
            raise _err(f"{clone_name} and parent component {p.name} share no address family", mw)
        by_component[m.component] = i
        by_clone[clone_name] = i
        members.append((m.component, p, clone))
    return parent, members


def _pair(parent, clone) -> tuple[str, str] | None:
    return (str(parent.ip), str(clone.ip)) if parent and clone else None


def resolve_fence(d: Directory, spec: FenceSpec, where: str = "") -> Fence:
    """One fence resolved against the topology alone (checked by :func:`check_fence`; no guards)."""
    parent, members = check_fence(d, spec, where)
    return Fence(spec.name, fence_id(spec.name), tuple(parent),
                 tuple(Member(c, p, h, _pair(p.ipv4, h.ipv4), _pair(p.ipv6, h.ipv6)) for c, p, h in members),
                 tuple(spec.egress.networks()))


def validate(d: Directory, intent: FencedCloneIntent) -> None:
    """Check the whole intent against the topology and across fences; raises IntentError naming the field.

    Linear in fences and members, and builds no flows and no address text (REST runs it on every change)."""
    names: dict[str, int] = {}
    fids: dict[int, str] = {}
    macs: dict[str, str] = {}
    clone_of: dict[str, str] = {}    # clone host -> its fence
    parents: list[list[Host]] = []
    for i, spec in enumerate(intent.fences):
        where = f"fences[{i}]"
        if spec.name in names:
            raise _err(f"a fence named {spec.name!r} already exists (fences[{names[spec.name]}])",
                       f"{where}.name", 409)
        parent, members = check_fence(d, spec, where)
        fid = fence_id(spec.name)
        if fid in fids:  # a 48-bit blake2b collision: astronomically unlikely, but never silent
            raise _err(f"fence name {spec.name!r} hashes to the same id as fence {fids[fid]!r}; rename it",
                       f"{where}.name", 409)
        mac = fence_mac(fid)
        host_mac = d.macs.get(mac)
        if host_mac is not None or mac in macs:
            raise _err(f"fence name {spec.name!r} gives fence MAC {mac}, already used by "
                       f"{'host ' + host_mac if host_mac else 'fence ' + repr(macs.get(mac))}; rename it",
                       f"{where}.name", 409)
        names[spec.name] = i
        fids[fid] = spec.name
        macs[mac] = spec.name
        for j, (_, _, clone) in enumerate(members):
            prev = clone_of.get(clone.name)
            if prev is not None:
                raise _err(f"host {clone.name} ({', '.join(map(str, clone.addresses))}) is already a clone "
                           f"in fence {prev!r}", f"{where}.members[{j}].{_member_key(spec.members[j])}", 409)
            clone_of[clone.name] = spec.name
        parents.append(parent)
    # a clone's host can never be a parent component of another fence (no clones of clones)
    for i, parent in enumerate(parents):
        for k, p in enumerate(parent):
            if p.name in clone_of:
                raise _err(f"component {p.name} is a clone in fence {clone_of[p.name]!r}; a fence's parent must "
                           f"be original components", f"fences[{i}].parent[{k}]", 409)


@dataclass
class Index:
    """What :func:`validate` checks across fences, for an intent it accepted: each fence's name,
    id, MAC, clone hosts and parent components.

    A REST change replaces, adds or removes one fence; :meth:`admits` checks that fence against
    the others' entries here in the size of the fence (not of the intent), and :meth:`update`
    follows the change.  :meth:`admits` is sound, not complete: True means :func:`validate` of
    the changed intent passes; False means run it (it names the field, as before).
    """

    names: set
    fids: dict          # fence id -> fence name
    macs: dict          # fence MAC -> fence name
    clones: dict        # clone host -> the fence it is a clone in
    parents: dict       # parent component -> {fence names whose parent lists it}

    @classmethod
    def of(cls, d: Directory, intent: FencedCloneIntent) -> Index:
        """The index of an intent :func:`validate` accepted."""
        index = cls(set(), {}, {}, {}, {})
        for spec in intent.fences:
            index._add(d, spec)
        return index

    def _add(self, d: Directory, spec: FenceSpec) -> None:
        fid = fence_id(spec.name)
        self.names.add(spec.name)
        self.fids[fid] = spec.name
        self.macs[fence_mac(fid)] = spec.name
        for m in spec.members:
            h = d.clone_host(m)
            if h is not None:
                self.clones[h.name] = spec.name
        for comp in spec.parent:
            self.parents.setdefault(comp, set()).add(spec.name)

    def _remove(self, d: Directory, spec: FenceSpec) -> None:
        fid = fence_id(spec.name)
        self.names.discard(spec.name)
        self.fids.pop(fid, None)
        self.macs.pop(fence_mac(fid), None)
        for m in spec.members:
            h = d.clone_host(m)
            if h is not None and self.clones.get(h.name) == spec.name:
                del self.clones[h.name]
        for comp in spec.parent:
            holders = self.parents.get(comp)
            if holders is not None:
                holders.discard(spec.name)
                if not holders:
                    del self.parents[comp]

    def admits(self, d: Directory, before: FenceSpec | None, after: FenceSpec | None) -> bool:
        """Does the intent stay valid when the fence ``before`` (None: a new one) becomes ``after``
        (None: deleted) and nothing else changes?  Linear in the two fences' sizes."""
        if after is None:
            return True  # fewer fences: every check across fences holds for a subset
        if before is not None and before.name != after.name:
            return False
        try:
            parent, members = check_fence(d, after)
        except IntentError:
            return False
        own = after.name
        if before is None:
            fid = fence_id(own)
            mac = fence_mac(fid)
            if own in self.names or fid in self.fids or mac in self.macs or mac in d.macs:
                return False
        for _, _, clone in members:
            if self.clones.get(clone.name, own) != own:
                return False  # already a clone in another fence
            if any(f != own for f in self.parents.get(clone.name, ())):
                return False  # another fence's parent component
        # a clone in another fence cannot be a parent component
        return all(self.clones.get(h.name, own) == own for h in parent)

    def update(self, d: Directory, before: FenceSpec | None, after: FenceSpec | None) -> None:
        """Follow the change :meth:`admits` accepted (or :func:`validate` did)."""
        if before is not None:
            self._remove(d, before)
        if after is not None:
            self._add(d, after)


def resolve(topo: Topology | Directory, intent: FencedCloneIntent) -> list[Fence]:
    """Every fence resolved, with its guards, after :func:`validate` (raises IntentError naming the field)."""
    d = topo if isinstance(topo, Directory) else Directory.of(topo)
    validate(d, intent)
    fences = [resolve_fence(d, spec, f"fences[{i}]") for i, spec in enumerate(intent.fences)]
    return [replace(f, guards=_guards(d, intent, f)) for f in fences]


def find(intent: FencedCloneIntent, name: str) -> int | None:
    """The index of the fence named ``name``, or None."""
    for i, spec in enumerate(intent.fences):
        if spec.name == name:
            return i
    return None


def resolve_part(d: Directory, intent: FencedCloneIntent, name: str) -> Fence | None:
    """The fence ``name`` of an intent :func:`validate` accepted, with its guards; None if there is none.

    Reads the other fences only for the guards of a fence that allows egress."""
    i = find(intent, name)
    if i is None:
        return None
    f = resolve_fence(d, intent.fences[i], f"fences[{i}]")
    return replace(f, guards=_guards(d, intent, f)) if f.egress else f


def dependents(intent: FencedCloneIntent, specs: Iterable[FenceSpec | None]) -> set[str]:
    """The fences whose state a change of the fences ``specs`` (before and after) can change.

    Those fences themselves, and every fence that allows egress and shares a parent
    component with one of them: its guards hold the other clones' member addresses."""
    specs = [s for s in specs if s is not None]
    names = {s.name for s in specs}
    comps = {c for s in specs for c in s.parent}
    return names | {g.name for g in intent.fences
                    if g.egress.policy == "allow" and not comps.isdisjoint(g.parent)}


def _guards(d: Directory, intent: FencedCloneIntent, f: Fence) -> tuple[IPAddr, ...]:
    """Protected destinations inside an allowing fence's egress prefixes.

    Protected: every parent address, and every member address of any other fence
    whose parent shares a component with this one (another clone of the same parent).
    Member parent addresses need no guard: translation takes them first.
    """
    if not f.egress:
        return ()
    comps = {h.name for h in f.parent}
    translated = {pair[0] for m in f.members for pair in (m.v4, m.v6) if pair}
    protected: set[IPAddr] = set()
    for a in f.parent_addresses():
        if str(a) not in translated:
            protected.add(a)
    for g in intent.fences:
        if g.name == f.name or comps.isdisjoint(g.parent):
            continue
        for m in g.members:
            h = d.clone_host(m)
            if h is not None:
                protected.update(h.addresses)
    return tuple(sorted((a for a in protected if any(a.version == n.version and a in n for n in f.egress)),
                        key=lambda a: (a.version, int(a))))


def intent_error_relative(exc: IntentError, index: int) -> IntentError:
    """The error of fence ``index`` with field paths relative to that fence (for REST bodies)."""
    pre = f"fences[{index}]"
    field = exc.field or ""
    if field == pre:
        rel = None
    elif field.startswith(pre + "."):
        rel = field[len(pre) + 1:]
    else:
        return exc
    msg = str(exc)
    if msg.startswith(field + ": "):
        msg = (f"{rel}: " if rel else "") + msg[len(field) + 2:]
    return IntentError(msg, rel, exc.status)
