"""The human form of ``ovslab flows`` and of ``ovslab flows --diff``."""

from __future__ import annotations

from ovs_scripts.flowdump.compare import Diff
from ovs_scripts.flowdump.flows import app_name, default_label, flow_order
from ovs_scripts.flowdump.snapshot import Dump
from ryu_apps.framework import cookies


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
        for f in sorted(flows, key=flow_order):
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
                    f"{app_name(c)} {_object_label(c, app_name(c), labels)}" if c else "no cookie"
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
