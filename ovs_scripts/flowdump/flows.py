"""Flows of ``ovs-ofctl dump-flows``: :class:`FlowEntry` and its parser.

A flow's owner comes from its cookie (:mod:`ryu_apps.framework.cookies`:
app id | kind | object); the lab's tool apps (:mod:`ovs_scripts.lab_apps`)
register their cookie ids on import, so their flows are named too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ovs.flow.kv import KVParser
from ovs.flow.ofp import OFPFlow

from ovs_scripts import lab_apps  # noqa: F401 - names lab tools' flows too
from ovs_scripts.flowdump import kv
from ovs_scripts.flowdump.ofctl import body_lines
from ryu_apps.framework import cookies

#: A flow without an explicit priority has this one (and OVS omits it in dumps).
DEFAULT_PRIORITY = 32768
#: Flow-mod flags ovs-ofctl prints as bare words between the counters and the match.
_FLOW_FLAGS = frozenset({"send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts"})


def app_name(cookie: int) -> str:
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
        return app_name(self.cookie)

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
            "match": kv.jsonable(self.match),
            "actions": kv.jsonable(self.actions),
            "n_packets": self.n_packets,
            "n_bytes": self.n_bytes,
            "duration": self.duration,
            "idle_timeout": self.idle_timeout,
            "hard_timeout": self.hard_timeout,
            "match_text": self.match_text,
            "actions_text": self.actions_text,
            "raw": self.raw,
        }


def split_match(match_kv: list) -> tuple[int, dict[str, Any], str]:
    """(priority, match dict, match text) from the ovs.flow match key-values."""
    priority = DEFAULT_PRIORITY
    match: dict[str, Any] = {}
    texts = []
    for item in match_kv:
        if item.key == "priority":
            priority = int(item.value)
            continue
        texts.append(kv.kv_text(item))
        plain = item.meta is None or isinstance(item.value, (bool, int, float, str))
        match[item.key] = item.value if plain else item.meta.vstring
    return priority, match, ",".join(texts)


def parse_match(text: str) -> tuple[int, dict[str, Any], str]:
    if not text:
        return DEFAULT_PRIORITY, {}, ""
    parser = KVParser(text, OFPFlow.match_decoders())
    parser.parse()
    return split_match(parser.kv())


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
    priority, match, match_text = split_match(flow.match_kv)
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
        info = {k: kv.num(v) for k, v in kv.lenient_pairs(info_text)}
        pairs = kv.lenient_pairs(match_text) if match_text else []
    except Exception:
        info, pairs = {}, []
    match = {k: kv.num(v) for k, v in pairs if k != "priority"}
    priority = next((int(kv.num(v)) for k, v in pairs if k == "priority"), DEFAULT_PRIORITY)
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
    return [parse_flow(line) for line in body_lines(text)]


def flow_order(f: FlowEntry) -> tuple:
    return (f.table, -f.priority, f.match_text, f.cookie)
