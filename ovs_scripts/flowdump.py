"""``ovslab flows``: what is on a switch, by app and object, and how it differs from intent.

Reads the flows, groups and meters of one Open vSwitch bridge with
``ovs-ofctl -O OpenFlow13`` over the bridge's management socket
(``<rundir>/<bridge>.mgmt``), parses them with the ``ovs.flow`` parsers
(``OFPFlow`` for flows, its action decoders for group buckets, the generic
``KVParser`` for the rest; no regexes) and groups flows by the cookie layout of
:mod:`ryu_apps.framework.cookies` (app id | kind | object).

Public API::

    d = dump("s1", "/run/ovslab/demo")      # -> Dump (flows, groups, meters)
    d.by_app()["fabric"]                     # flows of one app
    d.by_object()[cookie]                    # flows of one object (one cookie)
    d.packets(app="fabric")                  # summed n_packets
    print(render(d, labels))                 # the human form of ``ovslab flows``
    delta = diff(d, None, desired_json)      # or diff("s1", rundir, desired_json)
    delta.missing, delta.unexpected, delta.different

Diff semantics.  Flows are compared by OVS itself: ``ovs-ofctl diff-flows
<desired file> <switch>`` normalises both sides through the real flow parser
and classifier, so ``nw_dst=10.0.0.1/32`` and ``ip,nw_dst=10.0.0.1`` are the
same flow and field order does not matter.  A ``-`` line is desired only, a
``+`` line on the switch only; a ``-`` and a ``+`` with the same table,
priority and match are one *different* flow (other actions, cookie or
timeouts).  Groups are normalised with ``ovs-ofctl parse-group`` (OVS's own
group parser and printer, no switch needed) and compared with the switch's
``dump-groups`` text printed by the same printer; meters, for which OVS has no
offline parser, are reduced to a canonical key order by :func:`canonical_meter`
on both sides.  Both are cheap (no scratch OVS instance) and exact for what
the lab programs.

Nothing here looks at the host's own OVS: a bridge is found either through a
running lab (:func:`ovs_scripts.lab.find_switch`) or through an explicit
``--rundir``/``--db``.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ovs.flow.kv import KVDecoders, KVParser
from ovs.flow.ofp import OFPFlow

from ovs_scripts import lab_apps  # noqa: F401 - names lab tools' flows too
from ryu_apps.framework import cookies

#: The program that talks to the switch; tests may point it elsewhere.
OFCTL = "ovs-ofctl"
#: OpenFlow version for everything but the group comparison (see _dump_groups).
OFP_VERSION = "OpenFlow13"
#: Seconds ovs-ofctl may wait for the switch; the subprocess gets a bit more.
OFCTL_TIMEOUT = 10
#: Seconds to wait for the controller's REST API.
HTTP_TIMEOUT = 5.0

#: A flow without an explicit priority has this one (and OVS omits it in dumps).
DEFAULT_PRIORITY = 32768
#: Flow-mod flags ovs-ofctl prints as bare words between the counters and the match.
_FLOW_FLAGS = frozenset({"send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts"})
#: Canonical order of meter flags and band keys (others follow, sorted).
_METER_FLAGS = ("kbps", "pktps", "burst", "stats")
_BAND_KEYS = ("type", "rate", "burst_size", "prec_level")


class FlowdumpError(RuntimeError):
    """A problem worth one line on stderr: bridge not found, ovs-ofctl or the controller failed."""


# --- running ovs-ofctl ----------------------------------------------------------------


def _ofctl(args: Sequence[str], ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess:
    """Run ``ovs-ofctl args``; raise FlowdumpError with its message unless the exit code is in ``ok``."""
    argv = [OFCTL, f"--timeout={OFCTL_TIMEOUT}", *args]
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=OFCTL_TIMEOUT + 5)
    except FileNotFoundError:
        raise FlowdumpError(f"{OFCTL} not found; install Open vSwitch (openvswitch-common)") from None
    except subprocess.TimeoutExpired:
        raise FlowdumpError(f"`{' '.join(argv)}` timed out after {OFCTL_TIMEOUT + 5} s") from None
    if cp.returncode not in tuple(ok):
        raise FlowdumpError(f"ovs-ofctl {_command(args)} failed: {_ofctl_message(cp)}")
    return cp


def _command(args: Sequence[str]) -> str:
    """The ovs-ofctl command word of ``args`` (``dump-flows``), skipping options and their values."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-O":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def _ofctl_message(cp: subprocess.CompletedProcess) -> str:
    """The line of ovs-ofctl's output that says what went wrong."""
    lines = [ln.strip() for ln in (cp.stderr or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("ovs-ofctl:"):
            return ln[len("ovs-ofctl:"):].strip()
    if lines:
        return lines[-1]
    return (cp.stdout or "").strip().splitlines()[-1] if (cp.stdout or "").strip() else f"exit status {cp.returncode}"


def mgmt_target(bridge: str, rundir: str) -> str:
    """The ovs-ofctl target for a bridge of the OVS instance whose run directory is ``rundir``.

    The ``unix:`` prefix matters: ``diff-flows`` takes any name starting with
    ``/`` for a file.
    """
    return f"unix:{os.path.join(rundir, bridge)}.mgmt"


def _check_bridge(bridge: str, rundir: str) -> None:
    if not rundir or not os.path.isdir(rundir):
        raise FlowdumpError(f"OVS run directory {rundir!r} does not exist")
    if not os.path.exists(os.path.join(rundir, f"{bridge}.mgmt")):
        raise FlowdumpError(f"bridge {bridge!r} not found: no {bridge}.mgmt in {rundir}")


def _body(text: str) -> list[str]:
    """The entry lines of an ovs-ofctl reply: no reply headers, no blank lines."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("OFPST_", "NXST_", "OFPT_", "NXT_", "ONFST_")):
            continue
        out.append(line.rstrip())
    return out


def _reply_version(text: str, default: str = OFP_VERSION) -> str:
    """``OpenFlow15`` from a reply header such as ``OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):``."""
    for line in text.splitlines():
        _, sep, rest = line.partition("(OF1.")
        if sep and rest[:1].isdigit():
            return f"OpenFlow1{rest[0]}"
    return default


# --- generic key-value helpers -------------------------------------------------------


def _lenient_kv(text: str) -> list:
    """ovs.flow KeyValues of an ovs-ofctl ``k=v,k:v,k(v),flag`` text, values left as text."""
    parser = KVParser(text, KVDecoders(default=lambda k, v: (k, v)))
    parser.parse()
    return parser.kv()


def _lenient_pairs(text: str) -> list[tuple[str, Any]]:
    """(key, value-string or True) pairs of an ovs-ofctl ``k=v,k:v,flag`` text, in order."""
    return [(kv.key, kv.value) for kv in _lenient_kv(text)]


def _kv_text(kv) -> str:
    """One key-value as it was written (``fields(ip_src)``, ``ip``, ``nw_dst=10.0.0.1``)."""
    meta = kv.meta
    if meta is None:
        return kv.key
    if meta.vpos == -1:  # a bare keyword such as ``ip``
        return meta.kstring
    return f"{meta.kstring}{meta.delim}{meta.vstring}{meta.end_delim}"


def _num(value: Any) -> Any:
    """int/float for numeric strings (``12``, ``0x1f``, ``0.5s``), else unchanged."""
    if not isinstance(value, str):
        return value
    s = value[:-1] if value.endswith("s") and value[:-1].replace(".", "", 1).isdigit() else value
    try:
        return int(s, 0)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return value


def _parse_actions(text: str) -> list[dict]:
    """Actions text -> OFPFlow's list of one-key dicts (``[{'output': {'port': 2}}]``)."""
    if not text:
        return []
    parser = KVParser(text, OFPFlow.action_decoders())
    parser.parse()
    return [{kv.key: kv.value} for kv in parser.kv()]


def _jsonable(value: Any) -> Any:
    """Plain JSON data from ovs.flow values (masks and addresses become their text)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _references(actions: Any) -> set[tuple[str, int]]:
    """``("group", 5)`` / ``("meter", 1)`` for every group or meter an action list uses, nested ones too."""
    refs: set[tuple[str, int]] = set()
    if isinstance(actions, dict):
        for key, val in actions.items():
            if key in ("group", "meter"):
                num = _num(val)
                if isinstance(num, int):
                    refs.add((key, num))
            else:
                refs |= _references(val)
    elif isinstance(actions, (list, tuple)):
        for item in actions:
            refs |= _references(item)
    return refs


# --- flows ------------------------------------------------------------------------------


def _app_name(cookie: int) -> str:
    c = cookies.decode(cookie)
    return "none" if c.app_id == 0 else c.app


def default_label(cookie: int) -> str:
    """``app/kind/object-hex`` (cookies.decode), used when the controller gives no name."""
    return "no cookie" if cookie == 0 else str(cookies.decode(cookie))


@dataclass
class FlowEntry:
    """One flow.  ``match`` holds the match fields (without priority) as OVS printed
    them (ints for numbers, True for ``ip``-like flags, text for addresses and
    masks); ``actions`` is OFPFlow's list of one-key dicts."""

    cookie: int
    table: int
    priority: int
    match: dict[str, Any]
    actions: list[dict]
    n_packets: int | None = None
    n_bytes: int | None = None
    duration: float | None = None
    idle_timeout: int | None = None
    hard_timeout: int | None = None
    match_text: str = ""
    actions_text: str = ""
    raw: str = ""
    parse_error: str | None = None
    ofp: OFPFlow | None = field(default=None, repr=False, compare=False)

    @property
    def app(self) -> str:
        return _app_name(self.cookie)

    @property
    def kind(self) -> int:
        return cookies.decode(self.cookie).kind

    @property
    def object(self) -> int:
        return cookies.decode(self.cookie).obj

    def text(self, stats: bool = True) -> str:
        """``table=0 priority=100 in_port=1 actions=output:2  n_packets=3 n_bytes=180``."""
        parts = [f"table={self.table}", f"priority={self.priority}"]
        if self.match_text:
            parts.append(self.match_text)
        if self.idle_timeout is not None:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout is not None:
            parts.append(f"hard_timeout={self.hard_timeout}")
        parts.append(f"actions={self.actions_text}")
        line = " ".join(parts)
        if stats and self.n_packets is not None:
            line += f"  n_packets={self.n_packets} n_bytes={self.n_bytes}"
        return line

    def to_json(self, labels: dict[int, str] | None = None) -> dict:
        return {
            "cookie": f"{self.cookie:#018x}",
            "app": self.app,
            "kind": self.kind,
            "object": f"{self.object:#014x}",
            "label": (labels or {}).get(self.cookie) or default_label(self.cookie),
            "table": self.table,
            "priority": self.priority,
            "match": _jsonable(self.match),
            "actions": _jsonable(self.actions),
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
            "duration": self.duration,
            "idle_timeout": self.idle_timeout,
            "hard_timeout": self.hard_timeout,
            "match_text": self.match_text,
            "actions_text": self.actions_text,
            "raw": self.raw,
        }


def _split_match(match_kv: list) -> tuple[int, dict[str, Any], str]:
    """(priority, match dict, match text) from the ovs.flow match key-values."""
    priority = DEFAULT_PRIORITY
    match: dict[str, Any] = {}
    texts = []
    for kv in match_kv:
        if kv.key == "priority":
            priority = int(kv.value)
            continue
        texts.append(_kv_text(kv))
        plain = kv.meta is None or isinstance(kv.value, (bool, int, float, str))
        match[kv.key] = kv.value if plain else kv.meta.vstring
    return priority, match, ",".join(texts)


def _parse_match(text: str) -> tuple[int, dict[str, Any], str]:
    if not text:
        return DEFAULT_PRIORITY, {}, ""
    parser = KVParser(text, OFPFlow.match_decoders())
    parser.parse()
    return _split_match(parser.kv())


def parse_flow(line: str) -> FlowEntry:
    """Parse one ``ovs-ofctl dump-flows`` line.

    OFPFlow takes the last space-separated word before ``actions=`` as the
    match; a flow with an empty match (priority 32768, which OVS does not
    print) would hand it a counter instead, so such a line gets its implicit
    ``priority=32768`` spelled out first.  A line OFPFlow cannot parse (an
    action newer than the ovs package) is kept with its counters and raw text.
    """
    raw = line.strip()
    head, sep, actions_text = raw.partition(" actions=")
    if not sep and raw.startswith("actions="):
        head, actions_text = "", raw[len("actions="):]
    words = head.split()
    parse_text = raw
    if not words or words[-1].endswith(",") or words[-1] in _FLOW_FLAGS:
        parse_text = f"{head} priority={DEFAULT_PRIORITY} actions={actions_text}".lstrip()
    try:
        flow = OFPFlow(parse_text)
    except Exception as exc:  # ovs.flow raises ValueError, ParseError and friends
        return _lenient_flow(raw, head, actions_text, exc)
    info = flow.info
    priority, match, match_text = _split_match(flow.match_kv)
    return FlowEntry(
        cookie=int(info.get("cookie", 0)),
        table=int(info.get("table", 0)),
        priority=priority,
        match=match,
        actions=flow.actions,
        n_packets=info.get("n_packets"),
        n_bytes=info.get("n_bytes"),
        duration=info.get("duration"),
        idle_timeout=int(info["idle_timeout"]) if "idle_timeout" in info else None,
        hard_timeout=int(info["hard_timeout"]) if "hard_timeout" in info else None,
        match_text=match_text,
        actions_text=actions_text,
        raw=raw,
        ofp=flow,
    )


def _lenient_flow(raw: str, head: str, actions_text: str, exc: Exception) -> FlowEntry:
    words = head.split()
    info_text, match_text = head, ""
    if words and not words[-1].endswith(",") and words[-1] not in _FLOW_FLAGS:
        info_text, _, match_text = head.rpartition(" ")
    try:
        info = {k: _num(v) for k, v in _lenient_pairs(info_text)}
        pairs = _lenient_pairs(match_text) if match_text else []
    except Exception:
        info, pairs = {}, []
    match = {k: _num(v) for k, v in pairs if k != "priority"}
    priority = next((int(_num(v)) for k, v in pairs if k == "priority"), DEFAULT_PRIORITY)
    texts = match_text.split(",", 1) if match_text.startswith("priority=") else ["", match_text]
    return FlowEntry(
        cookie=int(info.get("cookie", 0)),
        table=int(info.get("table", 0)),
        priority=priority,
        match=match,
        actions=[],
        n_packets=info.get("n_packets"),
        n_bytes=info.get("n_bytes"),
        duration=info.get("duration"),
        match_text=texts[1] if len(texts) > 1 else "",
        actions_text=actions_text,
        raw=raw,
        parse_error=f"{type(exc).__name__}: {exc}",
    )


def parse_flows(text: str) -> list[FlowEntry]:
    """Every flow of an ``ovs-ofctl dump-flows`` output."""
    return [parse_flow(line) for line in _body(text)]


def _flow_order(f: FlowEntry) -> tuple:
    return (f.table, -f.priority, f.match_text, f.cookie)


# --- groups -----------------------------------------------------------------------------


@dataclass
class Bucket:
    index: int
    bucket_id: int | None
    props: dict[str, Any]
    actions: list[dict]
    actions_text: str
    n_packets: int | None = None
    n_bytes: int | None = None

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "bucket_id": self.bucket_id,
            "props": _jsonable(self.props),
            "actions": _jsonable(self.actions),
            "actions_text": self.actions_text,
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
        }


@dataclass
class GroupEntry:
    group_id: int
    type: str
    props: dict[str, Any]
    buckets: list[Bucket]
    raw: str
    props_text: str = ""  # e.g. ``selection_method=hash,fields(ip_src,ip_dst)``
    n_packets: int | None = None
    n_bytes: int | None = None
    ref_count: int | None = None
    duration: float | None = None

    def references(self) -> set[tuple[str, int]]:
        return _references([b.actions for b in self.buckets])

    def to_json(self) -> dict:
        return {
            "group_id": self.group_id,
            "type": self.type,
            "props": _jsonable(self.props),
            "props_text": self.props_text,
            "buckets": [b.to_json() for b in self.buckets],
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
            "ref_count": self.ref_count,
            "duration": self.duration,
            "raw": self.raw,
        }


def parse_group(line: str) -> GroupEntry:
    """One ``dump-groups`` line: ``group_id=5,type=select,bucket=watch_port:2,actions=output:2,...``.

    Buckets are cut at the literal ``,bucket=`` (no action prints that text);
    a bucket's properties come before ``actions=`` and its actions are decoded
    with OFPFlow's action decoders.
    """
    raw = line.strip()
    chunks = raw.split(",bucket=")
    header = chunks[0]
    if header.startswith("bucket="):  # no group_id/type (not printed by OVS, but be tolerant)
        chunks, header = ["", header[len("bucket="):], *chunks[1:]], ""
    elif ",bucket=" not in raw and "bucket=" in header:
        header, _, first = header.partition("bucket=")
        chunks = [header.rstrip(","), first]
    kvs = _lenient_kv(header)
    props = {kv.key: _num(kv.value) for kv in kvs if kv.key not in ("group_id", "type")}
    props_text = ",".join(_kv_text(kv) for kv in kvs if kv.key not in ("group_id", "type"))
    values = {kv.key: kv.value for kv in kvs}
    buckets = []
    for index, chunk in enumerate(chunks[1:]):
        bucket_text, _, actions_text = chunk.partition("actions=")
        bprops = {k: _num(v) for k, v in _lenient_pairs(bucket_text.rstrip(","))} if bucket_text else {}
        bucket_id = bprops.pop("bucket_id", None)
        try:
            actions = _parse_actions(actions_text)
        except Exception:
            actions = []
        buckets.append(Bucket(index, bucket_id, bprops, actions, actions_text))
    return GroupEntry(
        group_id=int(_num(values.get("group_id", -1))),
        type=str(values.get("type", "")),
        props=props,
        buckets=buckets,
        raw=raw,
        props_text=props_text,
    )


def parse_groups(desc_text: str, stats_text: str = "") -> list[GroupEntry]:
    """Groups of ``dump-groups`` output, with counters of ``dump-group-stats`` output if given."""
    groups = [parse_group(line) for line in _body(desc_text)]
    by_id = {g.group_id: g for g in groups}
    for line in _body(stats_text):
        pairs = _lenient_pairs(line.strip())
        values = dict(pairs)
        group = by_id.get(_num(values.get("group_id")))
        if group is None:
            continue
        bucket = None
        for key, val in pairs:
            if key.startswith("bucket") and key[6:].isdigit():
                index = int(key[6:])
                bucket = group.buckets[index] if index < len(group.buckets) else None
                # ``bucket0:packet_count=3``: the first counter is the value
                key, _, val = str(val).partition("=")
            target_is_bucket = bucket is not None
            if key == "packet_count":
                if target_is_bucket:
                    bucket.n_packets = _num(val)
                else:
                    group.n_packets = _num(val)
            elif key == "byte_count":
                if target_is_bucket:
                    bucket.n_bytes = _num(val)
                else:
                    group.n_bytes = _num(val)
            elif key == "ref_count" and not target_is_bucket:
                group.ref_count = _num(val)
            elif key == "duration" and not target_is_bucket:
                group.duration = _num(val)
    return sorted(groups, key=lambda g: g.group_id)


# --- meters -----------------------------------------------------------------------------


@dataclass
class MeterEntry:
    meter_id: int
    flags: list[str]
    bands: list[dict[str, Any]]
    raw: str  # canonical add-meter form, see canonical_meter
    flow_count: int | None = None
    n_packets: int | None = None
    n_bytes: int | None = None
    duration: float | None = None

    def to_json(self) -> dict:
        return {
            "meter_id": self.meter_id,
            "flags": list(self.flags),
            "bands": _jsonable(self.bands),
            "flow_count": self.flow_count,
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
            "duration": self.duration,
            "raw": self.raw,
        }


def _meter_parts(text: str) -> tuple[int | None, list[str], list[dict[str, Any]]]:
    """Meter id, flags and bands of an add-meter text or a joined dump-meters block.

    Both ``meter=1,pktps,burst,bands=type=drop,rate=100,burst_size=25`` and
    ``meter=1 pktps burst bands= type=drop rate=100 burst_size=25`` give
    ``(1, ['pktps', 'burst'], [{'type': 'drop', 'rate': 100, 'burst_size': 25}])``;
    in the band list every ``type=`` starts a new band.
    """
    meter_id = None
    flags: list[str] = []
    bands: list[dict[str, Any]] = []
    in_bands = False
    # The kv parser splits on commas only: ``pktps burst`` would be one word.
    for key, val in _lenient_pairs(",".join(text.split())):
        if not in_bands:
            if key == "meter":
                meter_id = _num(val)
            elif key == "bands":
                in_bands = True
                if isinstance(val, str) and "=" in val:  # ``bands=type=drop``
                    k, _, v = val.partition("=")
                    bands.append({k: _num(v)})
            elif val is True:
                flags.append(key)
            continue
        if key == "type" or not bands:
            bands.append({})
        bands[-1][key] = _num(val)
    return meter_id, flags, bands


def canonical_meter(text: str) -> str:
    """A meter in one fixed add-meter spelling, so the desired and the dumped form compare equal.

    Flags in the order kbps, pktps, burst, stats; band keys in the order type,
    rate, burst_size, prec_level; bands sorted.  OVS keeps a meter exactly as
    configured (no defaults are filled in: it rejects a meter without kbps or
    pktps and a burst_size without the burst flag), so this is all the
    normalisation meters need.
    """
    meter_id, flags, bands = _meter_parts(text)
    order = {f: i for i, f in enumerate(_METER_FLAGS)}
    flag_text = sorted(set(flags), key=lambda f: (order.get(f, len(order)), f))
    korder = {k: i for i, k in enumerate(_BAND_KEYS)}
    band_texts = sorted(
        ",".join(f"{k}={v}" for k, v in sorted(b.items(), key=lambda kv: (korder.get(kv[0], len(korder)), kv[0])))
        for b in bands
    )
    return ",".join([f"meter={meter_id}", *flag_text, "bands=" + ",".join(band_texts)])


def _meter_blocks(text: str, start: str) -> list[str]:
    """dump-meters / meter-stats output -> one joined text per meter (blocks span lines)."""
    blocks: list[str] = []
    for line in _body(text):
        s = line.strip()
        if s.startswith(start):
            blocks.append(s)
        elif blocks:
            blocks[-1] += " " + s
    return blocks


def parse_meters(config_text: str, stats_text: str = "") -> list[MeterEntry]:
    """Meters of ``dump-meters`` output, with counters of ``meter-stats`` output if given."""
    meters = []
    for block in _meter_blocks(config_text, "meter="):
        meter_id, flags, bands = _meter_parts(block)
        if meter_id is None:
            continue
        meters.append(MeterEntry(meter_id, flags, bands, canonical_meter(block)))
    by_id = {m.meter_id: m for m in meters}
    for block in _meter_blocks(stats_text, "meter:"):
        meter = None
        band = None
        in_bands = False
        for key, val in _lenient_pairs(",".join(block.split())):
            val = _num(val)
            if key == "meter":
                meter = by_id.get(val)
            elif meter is None:
                break
            elif key == "bands":
                in_bands = True
            elif in_bands and key.isdigit():
                index = int(key)
                band = meter.bands[index] if index < len(meter.bands) else None
            elif in_bands and band is not None and key in ("packet_count", "byte_count"):
                band["n_packets" if key == "packet_count" else "n_bytes"] = val
            elif key == "flow_count":
                meter.flow_count = val
            elif key == "packet_in_count":
                meter.n_packets = val
            elif key == "byte_in_count":
                meter.n_bytes = val
            elif key == "duration":
                meter.duration = val
    return sorted(meters, key=lambda m: m.meter_id)


# --- the dump ---------------------------------------------------------------------------


@dataclass
class Dump:
    """Everything read from one bridge at one moment."""

    bridge: str
    flows: list[FlowEntry]
    groups: list[GroupEntry] = field(default_factory=list)
    meters: list[MeterEntry] = field(default_factory=list)
    rundir: str | None = None
    switch: str | None = None  # the name the user gave (a lab switch name), else the bridge
    #: OpenFlow version of the group text: OVS prints select-group
    #: ``selection_method``/``fields`` only in OpenFlow 1.5 replies.
    group_version: str = OFP_VERSION

    @classmethod
    def from_text(cls, flows: str, groups: str = "", group_stats: str = "", meters: str = "",
                  meter_stats: str = "", *, bridge: str = "", switch: str | None = None,
                  rundir: str | None = None) -> "Dump":
        """A Dump from saved ovs-ofctl outputs (dump-flows, dump-groups, dump-group-stats,
        dump-meters, meter-stats)."""
        return cls(
            bridge=bridge,
            flows=sorted(parse_flows(flows), key=_flow_order),
            groups=parse_groups(groups, group_stats),
            meters=parse_meters(meters, meter_stats),
            rundir=rundir,
            switch=switch or bridge,
            group_version=_reply_version(groups),
        )

    def by_app(self) -> dict[str, list[FlowEntry]]:
        """Flows per app name, apps in app-id order, flows by table then priority descending."""
        out: dict[str, list[FlowEntry]] = {}
        for f in sorted(self.flows, key=lambda f: (f.cookie >> cookies.APP_SHIFT, *_flow_order(f))):
            out.setdefault(f.app, []).append(f)
        return out

    def by_object(self) -> dict[int, list[FlowEntry]]:
        """Flows per cookie (one cookie = one object of one app), in cookie order."""
        out: dict[int, list[FlowEntry]] = {}
        for f in sorted(self.flows, key=lambda f: (f.cookie, *_flow_order(f))):
            out.setdefault(f.cookie, []).append(f)
        return out

    def _select(self, cookie: int | None, app: str | None) -> list[FlowEntry]:
        return [f for f in self.flows
                if (cookie is None or f.cookie == cookie) and (app is None or f.app == app)]

    def packets(self, cookie: int | None = None, app: str | None = None) -> int:
        """Summed n_packets of the flows with this cookie and/or of this app (all flows if neither)."""
        return sum(f.n_packets or 0 for f in self._select(cookie, app))

    def bytes(self, cookie: int | None = None, app: str | None = None) -> int:
        return sum(f.n_bytes or 0 for f in self._select(cookie, app))

    def apps(self) -> list[str]:
        return list(self.by_app())

    def references(self, flows: Iterable[FlowEntry] | None = None) -> set[tuple[str, int]]:
        """Groups and meters used by ``flows`` (default: all), following group chains."""
        refs = _references([f.actions for f in (self.flows if flows is None else flows)])
        groups = {g.group_id: g for g in self.groups}
        todo = [gid for kind, gid in refs if kind == "group"]
        while todo:
            group = groups.get(todo.pop())
            for ref in group.references() if group else ():
                if ref not in refs:
                    refs.add(ref)
                    if ref[0] == "group":
                        todo.append(ref[1])
        return refs

    def filter(self, app: str) -> "Dump":
        """Only ``app``'s flows, and the groups and meters those flows use."""
        flows = [f for f in self.flows if f.app == app]
        refs = self.references(flows)
        return Dump(
            bridge=self.bridge,
            flows=flows,
            groups=[g for g in self.groups if ("group", g.group_id) in refs],
            meters=[m for m in self.meters if ("meter", m.meter_id) in refs],
            rundir=self.rundir,
            switch=self.switch,
            group_version=self.group_version,
        )

    def to_json(self, labels: dict[int, str] | None = None) -> dict:
        return {
            "switch": self.switch or self.bridge,
            "bridge": self.bridge,
            "flows": [f.to_json(labels) for f in self.flows],
            "groups": [g.to_json() for g in self.groups],
            "meters": [m.to_json() for m in self.meters],
        }


def _dump_groups(target: str) -> tuple[str, str]:
    """(dump-groups text, its OpenFlow version).

    Asks for OpenFlow 1.5 when the bridge allows it (negotiated from
    ``-O OpenFlow13,OpenFlow15``): only 1.5 replies carry a select group's
    ``selection_method`` and ``fields``, so only then can --diff see them.  The
    lab's bridges speak 1.3 only, and then 1.3 it is.
    """
    cp = _ofctl(["-O", f"{OFP_VERSION},OpenFlow15", "--no-names", "dump-groups", target])
    return cp.stdout, _reply_version(cp.stdout)


def dump(bridge: str, rundir: str, *, switch: str | None = None) -> Dump:
    """Read flows, groups and meters (with counters) of ``bridge`` of the OVS instance in ``rundir``."""
    _check_bridge(bridge, rundir)
    target = mgmt_target(bridge, rundir)
    o = ["-O", OFP_VERSION, "--no-names"]
    flows = _ofctl([*o, "dump-flows", target]).stdout
    groups, _ = _dump_groups(target)
    group_stats = _ofctl([*o, "dump-group-stats", target]).stdout
    meters = _ofctl([*o, "dump-meters", target]).stdout
    meter_stats = _ofctl([*o, "meter-stats", target]).stdout
    return Dump.from_text(flows, groups, group_stats, meters, meter_stats,
                          bridge=bridge, switch=switch or bridge, rundir=rundir)


# --- diff -------------------------------------------------------------------------------


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
    extras = dict(_lenient_pairs(" ".join(words[1:]))) if len(words) > 1 else {}
    priority, match, match_text = _parse_match(match_text_in)
    try:
        actions = _parse_actions(actions_text)
    except Exception:
        actions = []
    flow = FlowEntry(
        cookie=int(_num(extras.get("cookie", 0))),
        table=table,
        priority=priority,
        match=match,
        actions=actions,
        idle_timeout=_num(extras["idle_timeout"]) if "idle_timeout" in extras else None,
        hard_timeout=_num(extras["hard_timeout"]) if "hard_timeout" in extras else None,
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
            apps=frozenset(_app_name(c) for c in cks),
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
    cp = _ofctl(["-O", version, "parse-group", text], ok=(0, 1))
    if cp.returncode != 0:
        raise FlowdumpError(f"desired group {text!r} does not parse: {_ofctl_message(cp)}")
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
        cp = _ofctl(["-O", OFP_VERSION, "--no-names", "parse-flows", path], ok=(0, 1))
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
            cookie = int(_num(dict(_lenient_pairs(head.rstrip(", "))).get("cookie", 0)))
            actions = _parse_actions(actions_text)
        except Exception:
            continue
        for ref in _references(actions):
            refs.setdefault(ref, set()).add(_app_name(cookie))
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
        cp = _ofctl(["-O", OFP_VERSION, "--no-names", "diff-flows", want_file, have], ok=(0, 1, 2))
        if cp.returncode == 1:
            raise FlowdumpError(f"ovs-ofctl diff-flows failed: {_ofctl_message(cp).replace(want_file, 'desired flows')}")
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
        meter_id = _meter_parts(text)[0]
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


# --- the controller's REST API ----------------------------------------------------------


#: How to reach the controller when it wants more than plain HTTP: ``token`` for
#: ``Authorization: Bearer`` (REST off loopback wants it for reads too), ``cafile`` to
#: verify an HTTPS controller.  Set from --rest-token-file / --rest-cacert.
REST_AUTH: dict[str, str | None] = {"token": None, "cafile": None}


def _get_json(url: str) -> Any:
    token, cafile = REST_AUTH["token"], REST_AUTH["cafile"]
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    ctx = ssl.create_default_context(cafile=cafile) if cafile and url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT, context=ctx) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        why = ""
        try:
            why = ": " + str(json.loads(exc.read().decode()).get("error"))
        except (ValueError, AttributeError, OSError):
            pass
        raise FlowdumpError(f"controller answered HTTP {exc.code} for {url}{why}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FlowdumpError(f"controller unreachable at {url}: {reason}") from None
    except ValueError as exc:
        raise FlowdumpError(f"controller sent invalid JSON for {url}: {exc}") from None


def fetch_labels(rest_url: str) -> dict[int, str]:
    """``GET <rest>/v1/cookies`` -> {cookie: "fabric host h1"}."""
    data = _get_json(f"{rest_url.rstrip('/')}/v1/cookies")
    if not isinstance(data, dict):
        raise FlowdumpError(f"{rest_url}/v1/cookies did not return an object")
    labels = {}
    for key, value in data.items():
        try:
            labels[int(str(key), 0)] = str(value)
        except ValueError:
            continue
    return labels


def fetch_desired(rest_url: str, switch: str) -> Any:
    """``GET <rest>/v1/switches/<switch>/desired``."""
    return _get_json(f"{rest_url.rstrip('/')}/v1/switches/{urllib.parse.quote(switch, safe='')}/desired")


# --- rendering --------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _object_label(cookie: int, app: str, labels: dict[int, str] | None) -> str:
    label = (labels or {}).get(cookie)
    if not label:
        return default_label(cookie)
    return label[len(app) + 1:] if label.startswith(app + " ") else label


def render(dump: Dump, labels: dict[int, str] | None = None) -> str:
    """The human form of ``ovslab flows``: flows per app and object, then groups and meters."""
    lines = []
    name = dump.switch or dump.bridge
    where = f"bridge {dump.bridge}" + (f" in {dump.rundir}" if dump.rundir else "")
    lines.append(f"{name} ({where}): {_plural(len(dump.flows), 'flow')}, "
                 f"{_plural(len(dump.groups), 'group')}, {_plural(len(dump.meters), 'meter')}, "
                 f"{dump.packets()} pkts")
    last_app = None
    for cookie, flows in sorted(dump.by_object().items(), key=lambda kv: (kv[0] >> cookies.APP_SHIFT, kv[0])):
        app = flows[0].app
        if app != last_app:
            lines.append("")
            last_app = app
        pkts = sum(f.n_packets or 0 for f in flows)
        lines.append(f"{app}  {_object_label(cookie, app, labels)}  "
                     f"({_plural(len(flows), 'flow')}, {pkts} pkts)  cookie={cookie:#018x}")
        for f in sorted(flows, key=_flow_order):
            lines.append(f"    {f.text()}")
    if dump.groups:
        lines += ["", "groups"]
        for g in dump.groups:
            head = f"  group {g.group_id}  {g.type}" + (f"  {g.props_text}" if g.props_text else "")
            stats = []
            if g.ref_count is not None:
                stats.append(_plural(g.ref_count, "ref"))
            if g.n_packets is not None:
                stats.append(f"{g.n_packets} pkts")
            lines.append(head + (f"  ({', '.join(stats)})" if stats else ""))
            for b in g.buckets:
                bprops = ",".join(f"{k}:{v}" for k, v in b.props.items())
                bid = b.bucket_id if b.bucket_id is not None else b.index
                text = f"      bucket {bid}" + (f"  {bprops}" if bprops else "") + f"  actions={b.actions_text}"
                if b.n_packets is not None:
                    text += f"  n_packets={b.n_packets} n_bytes={b.n_bytes}"
                lines.append(text)
    if dump.meters:
        lines += ["", "meters"]
        for m in dump.meters:
            stats = []
            if m.flow_count is not None:
                stats.append(_plural(m.flow_count, "flow"))
            if m.n_packets is not None:
                stats.append(f"{m.n_packets} pkts in")
            lines.append(f"  meter {m.meter_id}  {' '.join(m.flags)}" + (f"  ({', '.join(stats)})" if stats else ""))
            for i, band in enumerate(m.bands):
                conf = " ".join(f"{k}={v}" for k, v in band.items() if k not in ("n_packets", "n_bytes"))
                text = f"      band {i}  {conf}"
                if "n_packets" in band:
                    text += f"  n_packets={band['n_packets']} n_bytes={band.get('n_bytes')}"
                lines.append(text)
    return "\n".join(lines) + "\n"


def render_diff(result: Diff, switch: str, labels: dict[int, str] | None = None) -> str:
    """Summary line, then one block per difference."""
    lines = [result.summary(switch)]
    for what, entries in (("missing", result.missing), ("unexpected", result.unexpected),
                          ("different", result.different)):
        for e in entries:
            owner = ""
            if e.cookies:
                owner = "  [" + "; ".join(
                    f"{_app_name(c)} {_object_label(c, _app_name(c), labels)}" if c else "no cookie"
                    for c in e.cookies) + "]"
            elif e.apps:
                owner = "  [used by " + ", ".join(sorted(e.apps)) + "]"
            if what == "different":
                lines.append(f"  {what:<10}  {e.type:<5}  {e.key}{owner}")
                lines.append(f"      desired: {e.desired}")
                lines.append(f"      actual:  {e.actual}")
            else:
                lines.append(f"  {what:<10}  {e.type:<5}  {e.desired if what == 'missing' else e.actual}{owner}")
    return "\n".join(lines) + "\n"


# --- command line -----------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    switch: str
    bridge: str
    rundir: str
    rest_url: str | None
    lab: str | None = None


def _rundir_of_db(db: str) -> str:
    if db.startswith("unix:"):
        db = db[len("unix:"):]
    elif ":" in db.split("/", 1)[0]:
        raise FlowdumpError(f"--db {db!r}: only a unix:/path/db.sock socket locates the bridges' management sockets")
    return os.path.dirname(os.path.abspath(db))


def locate(ns: argparse.Namespace) -> Location:
    """Where the switch is: an explicit OVS instance (--rundir/--db) or a running lab."""
    switch = ns.switch
    rest = getattr(ns, "rest", None)
    rundir = getattr(ns, "rundir", None)
    db = getattr(ns, "db", None)
    if rundir or db:
        return Location(switch, switch, os.path.abspath(rundir) if rundir else _rundir_of_db(db), rest)
    not_found = f"no lab switch named {switch}; use --rundir or --db for other bridges"
    try:
        from ovs_scripts.lab import find_switch
    except ImportError as exc:
        raise FlowdumpError(f"{not_found} (lab support unavailable: {exc})") from None
    try:
        found = find_switch(switch)
    except Exception as exc:  # the lab module's own failure, reported in one line
        raise FlowdumpError(f"looking up lab switch {switch} failed: {exc}") from None
    if not found:
        raise FlowdumpError(not_found)
    lab, bridge, lab_rundir, lab_rest = found
    try:  # a bridge name was given: the controller knows the switch by its name
        from ovs_scripts.lab import switch_name
    except ImportError:
        switch_name = None
    name = (switch_name(switch) if switch_name else None) or switch
    return Location(name, bridge, lab_rundir, rest or lab_rest, lab)


def _labels_or_warn(rest_url: str | None) -> dict[int, str]:
    if not rest_url:
        return {}
    try:
        return fetch_labels(rest_url)
    except FlowdumpError as exc:
        print(f"ovslab flows: warning: no object names ({exc})", file=sys.stderr)
        return {}


def _check_app(app: str, present: Iterable[str]) -> None:
    known = set(cookies.APPS) | {"none"} | set(present)
    if app not in known:
        raise FlowdumpError(f"unknown app {app!r}; apps: {', '.join(sorted(known))}")


def _run(ns: argparse.Namespace) -> int:
    token_file = getattr(ns, "rest_token_file", None)
    REST_AUTH["token"] = None
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                REST_AUTH["token"] = f.read().strip() or None
        except OSError as exc:
            raise FlowdumpError(f"--rest-token-file {token_file}: {exc.strerror}") from None
    REST_AUTH["cafile"] = getattr(ns, "rest_cacert", None)
    loc = locate(ns)
    app = getattr(ns, "app", None)
    as_json = getattr(ns, "json", False)
    if getattr(ns, "diff", False):
        if not loc.rest_url:
            raise FlowdumpError("--diff needs the controller: give --rest URL (a lab switch has it already)")
        _check_bridge(loc.bridge, loc.rundir)
        desired = fetch_desired(loc.rest_url, loc.switch)
        result = diff(loc.bridge, loc.rundir, desired)
        if app:
            _check_app(app, [])
            result = result.filter(app)
        labels = _labels_or_warn(loc.rest_url)
        if as_json:
            doc = {"switch": loc.switch, "bridge": loc.bridge, "summary": result.summary(loc.switch),
                   **result.to_json(labels)}
            print(json.dumps(doc, indent=2))
        else:
            sys.stdout.write(render_diff(result, loc.switch, labels))
        return 0 if result.identical else 1
    snapshot = dump(loc.bridge, loc.rundir, switch=loc.switch)
    if app:
        _check_app(app, snapshot.apps())
        snapshot = snapshot.filter(app)
    labels = _labels_or_warn(loc.rest_url)
    if as_json:
        print(json.dumps(snapshot.to_json(labels), indent=2))
    else:
        sys.stdout.write(render(snapshot, labels))
    return 0


def cli_main(ns: argparse.Namespace) -> int:
    """``ovslab flows``: 0 ok (or no differences), 1 differences (--diff), 2 error."""
    try:
        return _run(ns)
    except FlowdumpError as exc:
        print(f"ovslab flows: {exc}", file=sys.stderr)
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options cli_main reads (for ``ovslab flows`` and ``python -m ovs_scripts.flowdump``)."""
    parser.add_argument("switch", help="lab switch name, or a bridge name with --rundir/--db")
    parser.add_argument("--app", help="only this app's flows (and the groups/meters they use)")
    parser.add_argument("--diff", action="store_true",
                        help="compare with the controller's desired state; exit 1 if different")
    parser.add_argument("--json", action="store_true", help="print JSON")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rundir", help="OVS run directory holding <bridge>.mgmt (any OVS instance)")
    where.add_argument("--db", help="unix:/path/db.sock of the OVS instance (its directory is the rundir)")
    parser.add_argument("--rest", help="controller REST URL (object names, --diff)")
    add_rest_auth_arguments(parser)
    return parser


def add_rest_auth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rest-token-file", help="file with the controller's REST token (needed when its "
                                                  "REST listens beyond loopback)")
    parser.add_argument("--rest-cacert", help="CA certificate to verify an https:// controller")


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="ovslab flows",
        description="Flows, groups and meters of an OVS bridge by app and object; --diff against the controller."))
    return cli_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
