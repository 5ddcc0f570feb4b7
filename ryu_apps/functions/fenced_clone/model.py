"""Fenced clones: the intent (what a user declares) and its resolution against the topology.

A *fence* holds one clone of an application.  The application (the *parent*)
is a list of components, each a declared lab host (``web``, ``app``, ``db``).
A clone component is another declared host with its own MAC and addresses;
a fence *member* says which parent component it clones::

    {"name": "shop-a",
     "parent": ["web", "app", "db"],
     "members": [{"component": "web", "host": "aweb"},
                 {"component": "db", "ipv4": "10.0.1.13", "ipv6": "fd00:fc::1:13"}],
     "egress": {"policy": "deny"}}

A member names its clone by ``host`` or by its addresses (``ipv4``/``ipv6``,
which must be the addresses of one declared host), or both (they must agree).

Validation happens in two steps with one error type: the pydantic models check
the shape and the address syntax; :func:`resolve` checks everything against
the topology and the other fences and raises :class:`IntentError` whose
``field`` is the JSON path of the offending key (``fences[1].members[0].ipv4``)
and whose ``status`` is 422 (the request itself is wrong) or 409 (it conflicts
with another fence).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ryu_apps.framework import cookies
from ryu_apps.framework.topology import Host, Topology
from ryu_apps.framework.view import IntentError

FENCE_NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _addr(v: str | None, version: int) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not an IPv{version} address (a string like "
                         f"{'10.0.1.11' if version == 4 else 'fd00::11'})")
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv{version} address") from None
    if a.version != version:
        raise ValueError(f"{v!r} is an IPv{a.version} address, not IPv{version}")
    return str(a)


class MemberSpec(_Strict):
    """One clone component: which parent component it clones, and which host it is."""

    component: str = Field(min_length=1, max_length=64)
    host: str | None = Field(default=None, min_length=1, max_length=64)
    ipv4: str | None = None
    ipv6: str | None = None

    @field_validator("ipv4", mode="before")
    @classmethod
    def _v4(cls, v):
        return _addr(v, 4)

    @field_validator("ipv6", mode="before")
    @classmethod
    def _v6(cls, v):
        return _addr(v, 6)

    @model_validator(mode="after")
    def _something(self):
        if self.host is None and self.ipv4 is None and self.ipv6 is None:
            raise ValueError("a member needs the clone's host name or its address (host, ipv4, ipv6)")
        return self


class EgressSpec(_Strict):
    """What a clone may reach outside its application: nothing (deny) or ``to`` prefixes (allow).

    Allowed packets leave with the clone's own address as source, never a parent address.
    Parent components and the members of other clones of the same parent stay unreachable
    whatever ``to`` says.
    """

    policy: Literal["deny", "allow"] = "deny"
    to: list[str] | None = None

    @field_validator("to", mode="before")
    @classmethod
    def _prefixes(cls, v):
        if v is None:
            return v
        if not isinstance(v, list):
            raise ValueError("to is a list of prefixes like [\"10.0.9.0/24\", \"fd00:9::/64\"]")
        out = []
        for i, p in enumerate(v):
            if not isinstance(p, str):
                raise ValueError(f"to[{i}]: {p!r} is not a prefix string")
            try:
                out.append(str(ipaddress.ip_network(p, strict=True)))
            except ValueError as exc:
                raise ValueError(f"to[{i}]: {p!r} is not a prefix: {exc}") from None
        return out

    @model_validator(mode="after")
    def _consistent(self):
        if self.policy == "deny" and self.to:
            raise ValueError("egress.to lists prefixes, but policy is deny; use policy allow")
        return self

    def networks(self) -> list[IPNet]:
        if self.policy == "deny":
            return []
        if self.to is None:
            return [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        return [ipaddress.ip_network(p) for p in self.to]


class FenceSpec(_Strict):
    """One fence: the parent's components, the clone's members, the egress policy."""

    name: str = Field(pattern=FENCE_NAME_RE)
    parent: list[str] = Field(min_length=1, max_length=256)
    members: list[MemberSpec] = Field(default_factory=list, max_length=256)
    egress: EgressSpec = EgressSpec()


class FencedCloneIntent(_Strict):
    """The ``apps.fenced_clone`` section of a topology file (and what REST changes)."""

    #: neighbour solicitations per second one clone port may send to the controller
    nd_rate_per_clone: int = Field(default=50, ge=1, le=10000)
    fences: list[FenceSpec] = Field(default_factory=list)


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


def _address_owner(topo: Topology) -> dict[str, str]:
    out = {}
    for h in topo.hosts.values():
        for a in h.addresses:
            out[str(a)] = h.name
    return out


def resolve_fence(topo: Topology, spec: FenceSpec, where: str = "", owners: dict | None = None) -> Fence:
    """One fence against the topology alone (not other fences); ``where`` prefixes error fields."""
    owners = _address_owner(topo) if owners is None else owners
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
    members: list[Member] = []
    by_component: dict[str, int] = {}
    by_clone: dict[str, int] = {}
    parent_names = {h.name for h in parent}
    for i, m in enumerate(spec.members):
        mw = f"{pre}members[{i}]"
        if m.component not in parent_names:
            raise _err(f"unknown component {m.component!r}: not in this fence's parent {sorted(parent_names)}",
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
        if clone_name in parent_names:
            raise _err(f"{clone_name} is a component of the parent; a clone needs its own host and addresses",
                       f"{mw}.{_member_key(m)}", 409)
        if clone_name in by_clone:
            raise _err(f"host {clone_name} is already the clone of "
                       f"{spec.members[by_clone[clone_name]].component} (members[{by_clone[clone_name]}])",
                       f"{mw}.{_member_key(m)}", 409)
        p = topo.hosts[m.component]
        v4 = (str(p.ipv4.ip), str(clone.ipv4.ip)) if p.ipv4 and clone.ipv4 else None
        v6 = (str(p.ipv6.ip), str(clone.ipv6.ip)) if p.ipv6 and clone.ipv6 else None
        if m.ipv4 and not p.ipv4:
            raise _err(f"parent component {p.name} has no IPv4 address to map {m.ipv4} to", f"{mw}.ipv4")
        if m.ipv6 and not p.ipv6:
            raise _err(f"parent component {p.name} has no IPv6 address to map {m.ipv6} to", f"{mw}.ipv6")
        if v4 is None and v6 is None:
            raise _err(f"{clone_name} and parent component {p.name} share no address family", mw)
        by_component[m.component] = i
        by_clone[clone_name] = i
        members.append(Member(m.component, p, clone, v4, v6))
    return Fence(spec.name, cookies.object_id(f"fence:{spec.name}"), tuple(parent), tuple(members),
                 tuple(spec.egress.networks()))


def resolve(topo: Topology, intent: FencedCloneIntent) -> list[Fence]:
    """Every fence resolved and checked against the others; raises IntentError naming the field."""
    owners = _address_owner(topo)
    fences: list[Fence] = []
    names: dict[str, int] = {}
    fids: dict[int, str] = {}
    macs: dict[str, str] = {}
    clone_of: dict[str, tuple[str, int, int]] = {}    # clone host -> (fence, fence index, member index)
    for i, spec in enumerate(intent.fences):
        where = f"fences[{i}]"
        if spec.name in names:
            raise _err(f"a fence named {spec.name!r} already exists (fences[{names[spec.name]}])",
                       f"{where}.name", 409)
        f = resolve_fence(topo, spec, where, owners)
        if f.fid in fids:  # a 48-bit blake2b collision: astronomically unlikely, but never silent
            raise _err(f"fence name {spec.name!r} hashes to the same id as fence {fids[f.fid]!r}; rename it",
                       f"{where}.name", 409)
        host_mac = next((h.name for h in topo.hosts.values() if h.mac.lower() == f.mac), None)
        if host_mac is not None or f.mac in macs:
            raise _err(f"fence name {spec.name!r} gives fence MAC {f.mac}, already used by "
                       f"{'host ' + host_mac if host_mac else 'fence ' + repr(macs.get(f.mac))}; rename it",
                       f"{where}.name", 409)
        names[spec.name] = i
        fids[f.fid] = spec.name
        macs[f.mac] = spec.name
        for j, m in enumerate(f.members):
            prev = clone_of.get(m.clone.name)
            if prev is not None:
                raise _err(f"host {m.clone.name} ({', '.join(map(str, m.clone.addresses))}) is already a clone "
                           f"in fence {prev[0]!r}", f"{where}.members[{j}].{_member_key(spec.members[j])}", 409)
            clone_of[m.clone.name] = (spec.name, i, j)
        fences.append(f)
    # a clone's host can never be a parent component of another fence (no clones of clones)
    for i, f in enumerate(fences):
        for k, p in enumerate(f.parent):
            if p.name in clone_of:
                other, fi, mj = clone_of[p.name]
                raise _err(f"component {p.name} is a clone in fence {other!r}; a fence's parent must be "
                           f"original components", f"fences[{i}].parent[{k}]", 409)
    return [_with_guards(f, fences) for f in fences]


def _with_guards(f: Fence, fences: list[Fence]) -> Fence:
    """Protected destinations inside an allowing fence's egress prefixes.

    Protected: every parent address, and every member address of any other fence
    whose parent shares a component with this one (another clone of the same parent).
    Member parent addresses need no guard: translation takes them first.
    """
    if not f.egress:
        return f
    comps = {h.name for h in f.parent}
    translated = {pair[0] for m in f.members for pair in (m.v4, m.v6) if pair}
    protected: set[IPAddr] = set()
    for a in f.parent_addresses():
        if str(a) not in translated:
            protected.add(a)
    for g in fences:
        if g is f or not comps & {h.name for h in g.parent}:
            continue
        for m in g.members:
            protected.update(m.clone.addresses)
    guards = tuple(sorted((a for a in protected if any(a.version == n.version and a in n for n in f.egress)),
                          key=lambda a: (a.version, int(a))))
    return Fence(f.name, f.fid, f.parent, f.members, f.egress, guards)


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
