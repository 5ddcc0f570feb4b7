"""A bridge (or a :class:`Dump`) against the controller's desired state: :func:`diff` -> :class:`Diff`.

Flows are compared by OVS itself (``ovs-ofctl diff-flows``, after an offline
OpenFlow 1.3 round trip of the desired flows, :func:`as_installed`); groups are
normalised with ``ovs-ofctl parse-group``, meters with
:func:`~ovs_scripts.flowdump.meters.canonical_meter`.  See the package docstring.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ovs_scripts.flowdump import kv, ofctl
from ovs_scripts.flowdump.flows import FlowEntry, app_name, default_label, parse_match
from ovs_scripts.flowdump.groups import parse_group
from ovs_scripts.flowdump.meters import canonical_meter, meter_parts
from ovs_scripts.flowdump.ofctl import OFP_VERSION, FlowdumpError, error_message, mgmt_target
from ovs_scripts.flowdump.snapshot import Dump, dump


@dataclass
class DiffEntry:
    """One difference.  ``desired``/``actual`` are OVS-normalised texts (None when absent)."""

    type: str  # "flow", "group" or "meter"
    key: str  # what identifies it: "table=1 priority=10 arp", "group_id=5", "meter=1"
    desired: str | None
    actual: str | None
    cookies: tuple[int, ...] = ()  # flows: desired and/or actual cookie
    apps: frozenset[str] = frozenset()  # owning apps (groups/meters: apps whose flows use them)
    sort_key: tuple = ()

    def to_json(self, labels: dict[int, str] | None = None) -> dict:
        return {
            "type": self.type,
            "key": self.key,
            "desired": self.desired,
            "actual": self.actual,
            "cookies": [f"{c:#018x}" for c in self.cookies],
            "labels": [(labels or {}).get(c) or default_label(c) for c in self.cookies],
            "apps": sorted(self.apps),
        }


@dataclass
class Diff:
    missing: list[DiffEntry] = field(default_factory=list)  # desired, not on the switch
    unexpected: list[DiffEntry] = field(default_factory=list)  # on the switch, not desired
    different: list[DiffEntry] = field(default_factory=list)  # same identity, other content

    @property
    def identical(self) -> bool:
        return not (self.missing or self.unexpected or self.different)

    def __bool__(self) -> bool:
        """True when there are differences (like diff(1)'s exit status 1)."""
        return not self.identical

    def summary(self, switch: str) -> str:
        return (f"diff {switch}: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.different)} different")

    def filter(self, app: str) -> "Diff":
        """Only entries owned by ``app``."""
        def keep(entries: list[DiffEntry]) -> list[DiffEntry]:
            return [e for e in entries if app in e.apps]
        return Diff(keep(self.missing), keep(self.unexpected), keep(self.different))

    def to_json(self, labels: dict[int, str] | None = None) -> dict:
        return {
            "identical": self.identical,
            "missing": [e.to_json(labels) for e in self.missing],
            "unexpected": [e.to_json(labels) for e in self.unexpected],
            "different": [e.to_json(labels) for e in self.different],
        }


def _parse_diff_line(text: str) -> tuple[FlowEntry, str]:
    """A ``diff-flows`` line without its sign -> (flow, key text).

    ovs-ofctl prints ``[table=N ]<match incl. priority>[ cookie=X][ idle_timeout=N]
    [ hard_timeout=N][ importance=N] actions=<actions>``; the match has no spaces
    and may be empty (``table=3  actions=drop``).
    """
    head, sep, actions_text = text.partition(" actions=")
    if not sep and text.startswith("actions="):
        head, actions_text = "", text[len("actions="):]
    words = head.split(" ")
    table = 0
    if words and words[0].startswith("table="):
        table = int(words.pop(0)[len("table="):])
    match_text_in = words[0] if words else ""
    extras = dict(kv.lenient_pairs(" ".join(words[1:]))) if len(words) > 1 else {}
    priority, match, match_text = parse_match(match_text_in)
    try:
        actions = kv.parse_actions(actions_text)
    except Exception:
        actions = []
    flow = FlowEntry(
        cookie=int(kv.num(extras.get("cookie", 0))),
        table=table,
        priority=priority,
        match=match,
        actions=actions,
        idle_timeout=kv.num(extras["idle_timeout"]) if "idle_timeout" in extras else None,
        hard_timeout=kv.num(extras["hard_timeout"]) if "hard_timeout" in extras else None,
        match_text=match_text,
        actions_text=actions_text,
        raw=text.strip(),
    )
    key = " ".join(p for p in (f"table={table}", f"priority={priority}", match_text) if p)
    return flow, key


def parse_flow_diff(text: str) -> Diff:
    """Classify ``ovs-ofctl diff-flows DESIRED SWITCH`` output (pure).

    ``-`` lines are desired only, ``+`` lines on the switch only; a ``-`` and a
    ``+`` for the same table/priority/match are one *different* entry.
    """
    minus: dict[tuple, tuple[FlowEntry, str]] = {}
    plus: dict[tuple, tuple[FlowEntry, str]] = {}
    for line in text.splitlines():
        if not line or line[0] not in "-+":
            continue
        flow, key = _parse_diff_line(line[1:])
        ident = (flow.table, flow.priority, flow.match_text)
        (minus if line[0] == "-" else plus)[ident] = (flow, key)

    def entry(ident: tuple, want: FlowEntry | None, have: FlowEntry | None, key: str) -> DiffEntry:
        cks = tuple(dict.fromkeys(f.cookie for f in (want, have) if f is not None))
        return DiffEntry(
            type="flow",
            key=key,
            desired=want.raw if want else None,
            actual=have.raw if have else None,
            cookies=cks,
            apps=frozenset(app_name(c) for c in cks),
            sort_key=(0, ident[0], -ident[1], ident[2]),
        )

    result = Diff()
    for ident, (flow, key) in minus.items():
        if ident in plus:
            result.different.append(entry(ident, flow, plus[ident][0], key))
        else:
            result.missing.append(entry(ident, flow, None, key))
    for ident, (flow, key) in plus.items():
        if ident not in minus:
            result.unexpected.append(entry(ident, None, flow, key))
    for entries in (result.missing, result.unexpected, result.different):
        entries.sort(key=lambda e: e.sort_key)
    return result


def _compare_keyed(kind: str, desired: dict[int, str], actual: dict[int, str],
                   owners: dict[int, set[str]]) -> Diff:
    """Diff of two {id: normalised text} maps (groups or meters)."""
    result = Diff()
    label = "group_id" if kind == "group" else "meter"
    for ident in sorted(set(desired) | set(actual)):
        want, have = desired.get(ident), actual.get(ident)
        if want == have:
            continue
        e = DiffEntry(kind, f"{label}={ident}", want, have, apps=frozenset(owners.get(ident, ())),
                      sort_key=(1 if kind == "group" else 2, ident))
        if have is None:
            result.missing.append(e)
        elif want is None:
            result.unexpected.append(e)
        else:
            result.different.append(e)
    return result


def normalise_group(text: str, version: str = OFP_VERSION) -> str:
    """A group in OVS's own printed form (``ovs-ofctl parse-group``), as dump-groups prints it."""
    cp = ofctl.run(["-O", version, "parse-group", text], ok=(0, 1))
    if cp.returncode != 0:
        raise FlowdumpError(f"desired group {text!r} does not parse: {error_message(cp)}")
    for line in cp.stdout.splitlines():
        s = line.strip()
        if s.startswith("ADD "):
            return s[len("ADD "):]
    raise FlowdumpError(f"ovs-ofctl parse-group printed no group for {text!r}")


#: ``ovs-ofctl parse-flows`` prints flow-mod fields as ``key:value``; their add-flow names.
_FLOW_MOD_FIELDS = {"table": "table", "cookie": "cookie", "idle": "idle_timeout", "hard": "hard_timeout",
                    "importance": "importance"}


def flow_mod_to_add_flow(text: str) -> str | None:
    """``ADD``-line of ``ovs-ofctl parse-flows`` (after ``ADD ``) -> add-flow syntax; None if unsure.

    ``table:1 priority=10,udp cookie:0x5 idle:60 send_flow_rem actions=output:1``
    becomes ``table=1,priority=10,udp,cookie=0x5,idle_timeout=60,send_flow_rem,actions=output:1``.
    """
    head, sep, actions = text.partition(" actions=")
    if not sep:
        if not text.startswith("actions="):
            return None
        head, actions = "", text[len("actions="):]
    parts = []
    for token in head.split():
        key, colon, value = token.partition(":")
        if colon and "=" not in key and "," not in key:
            if key not in _FLOW_MOD_FIELDS:
                return None  # a flow-mod field this function does not know
            parts.append(f"{_FLOW_MOD_FIELDS[key]}={value}")
        else:
            parts.append(token)  # the match (with priority) or a flag such as send_flow_rem
    return ",".join([*parts, f"actions={actions}"])


def as_installed(flows: list[str]) -> list[str]:
    """The desired flows as an OpenFlow 1.3 switch will hold them.

    diff-flows parses a file as written, but a switch keeps what the OpenFlow
    1.3 encoding of it decodes to: ``mod_dl_src:X`` arrives as
    ``set_field:X->eth_src``, ``mod_vlan_vid`` on an untagged match as
    ``push_vlan`` plus ``set_field``.  ``ovs-ofctl parse-flows`` performs that
    encode/decode round trip offline; its flow-mods are turned back into
    add-flow lines.  When that is not possible (a flow OpenFlow 1.3 cannot
    express, an unknown printed field) the flows are returned unchanged and
    diff-flows compares them as written.
    """
    if not flows:
        return flows
    with tempfile.TemporaryDirectory(prefix="ovslab-flows-") as tmp:
        path = os.path.join(tmp, "desired.flows")
        with open(path, "w") as fh:
            fh.write("".join(f"{line}\n" for line in flows))
        cp = ofctl.run(["-O", OFP_VERSION, "--no-names", "parse-flows", path], ok=(0, 1))
    if cp.returncode != 0:
        return flows
    out = []
    for line in cp.stdout.splitlines():
        _, sep, rest = line.partition("): ADD ")
        if not sep:
            continue
        converted = flow_mod_to_add_flow(rest.strip())
        if converted is None:
            return flows
        out.append(converted)
    return out if len(out) == len(flows) else flows


def _desired_references(flow_texts: Iterable[str]) -> dict[tuple[str, int], set[str]]:
    """Which apps' desired flows use which group/meter (add-flow syntax)."""
    refs: dict[tuple[str, int], set[str]] = {}
    for text in flow_texts:
        head, sep, actions_text = text.partition("actions=")
        if not sep:
            continue
        try:
            cookie = int(kv.num(dict(kv.lenient_pairs(head.rstrip(", "))).get("cookie", 0)))
            actions = kv.parse_actions(actions_text)
        except Exception:
            continue
        for ref in kv.references(actions):
            refs.setdefault(ref, set()).add(app_name(cookie))
    return refs


def _load_desired(desired_json: Any) -> dict[str, list[str]]:
    if isinstance(desired_json, (str, bytes)):
        try:
            desired_json = json.loads(desired_json)
        except ValueError as exc:
            raise FlowdumpError(f"desired state is not JSON: {exc}") from None
    if not isinstance(desired_json, dict):
        raise FlowdumpError("desired state must be a JSON object with flows, groups and meters")
    out = {}
    for key in ("flows", "groups", "meters"):
        items = desired_json.get(key) or []
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise FlowdumpError(f"desired state: {key!r} must be a list of strings")
        out[key] = [i.strip() for i in items if i.strip()]
    return out


def diff(dump_or_bridge: Dump | str, rundir: str | None, desired_json: Any) -> Diff:
    """Compare a bridge (live, by name in ``rundir``) or a Dump snapshot with the desired state.

    ``desired_json`` is the controller's ``/v1/switches/<switch>/desired``
    document (dict or JSON text): ``{"flows": [add-flow text], "groups":
    [add-group text], "meters": [add-meter text]}``.
    """
    desired = _load_desired(desired_json)
    live = not isinstance(dump_or_bridge, Dump)
    snapshot = dump(dump_or_bridge, rundir) if live else dump_or_bridge

    with tempfile.TemporaryDirectory(prefix="ovslab-flowdiff-") as tmp:
        want_file = os.path.join(tmp, "desired.flows")
        with open(want_file, "w") as fh:
            fh.write("".join(f"{line}\n" for line in as_installed(desired["flows"])))
        if live:
            have = mgmt_target(snapshot.bridge, rundir)
        else:
            have = os.path.join(tmp, "switch.flows")
            with open(have, "w") as fh:
                fh.write("".join(f"{f.raw}\n" for f in snapshot.flows))
        cp = ofctl.run(["-O", OFP_VERSION, "--no-names", "diff-flows", want_file, have], ok=(0, 1, 2))
        if cp.returncode == 1:
            raise FlowdumpError(f"ovs-ofctl diff-flows failed: {error_message(cp).replace(want_file, 'desired flows')}")
    result = parse_flow_diff(cp.stdout)

    # Owners of groups and meters: the apps whose flows (desired or on the switch) use them.
    owners: dict[tuple[str, int], set[str]] = _desired_references(desired["flows"])
    for f in snapshot.flows:
        for ref in snapshot.references([f]):
            owners.setdefault(ref, set()).add(f.app)

    version = snapshot.group_version
    want_groups = {}
    for text in desired["groups"]:
        norm = normalise_group(text, version)
        want_groups[parse_group(norm).group_id] = norm
    have_groups = {g.group_id: g.raw for g in snapshot.groups}
    group_owners = {gid: apps for (kind, gid), apps in owners.items() if kind == "group"}
    groups = _compare_keyed("group", want_groups, have_groups, group_owners)

    want_meters = {}
    for text in desired["meters"]:
        meter_id = meter_parts(text)[0]
        if not isinstance(meter_id, int):
            raise FlowdumpError(f"desired meter {text!r} has no meter=<id>")
        want_meters[meter_id] = canonical_meter(text)
    have_meters = {m.meter_id: m.raw for m in snapshot.meters}
    meter_owners = {mid: apps for (kind, mid), apps in owners.items() if kind == "meter"}
    meters = _compare_keyed("meter", want_meters, have_meters, meter_owners)

    for part in (groups, meters):
        result.missing += part.missing
        result.unexpected += part.unexpected
        result.different += part.different
    return result
