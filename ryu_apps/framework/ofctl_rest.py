"""Ryu's ``ofctl_rest`` read side under ``/stats/...``, so a Ryu user's scripts keep working.

os-ken dropped ``ryu.app.ofctl_rest`` but kept its engine, ``os_ken.lib.ofctl_v1_3``: the
requests are built and the replies turned into Ryu's JSON shapes by that very library, so the
answers are the ones Ryu gave (``{"<dpid>": [...]}``, actions as ``"OUTPUT:2"``, matches with
``dl_dst``/``nw_src`` names).  What differs from Ryu, and why:

* only the switches of the topology answer, by decimal or ``0x`` hex dpid; another dpid is a 404;
* writes (``/stats/flowentry/add|modify|modify_strict|delete|delete_strict``, ``clear``) are the
  intent of the static flows app (``ryu_apps/static_flows.py``): validated, persisted, reconciled;
  a flow written straight to a switch would be removed by the programmer as one no app wants.
  Without that app they are refused (405, naming the reason);
* ``POST /stats/flow/<dpid>`` takes Ryu's filter body (``table_id``, ``out_port``, ``cookie``,
  ``cookie_mask``, ``match``), validated: a malformed one is a 400 naming the key, not a
  controller exception.
"""

from __future__ import annotations

import logging
from collections import deque

from ryu_apps.framework.rest import ApiError

LOG = logging.getLogger(__name__)

#: the reply events whose messages the waiters take (every multipart reply ofctl_v1_3 asks for)
REPLY_EVENTS = ("EventOFPDescStatsReply", "EventOFPFlowStatsReply", "EventOFPAggregateStatsReply",
                "EventOFPPortStatsReply", "EventOFPPortDescStatsReply", "EventOFPGroupDescStatsReply",
                "EventOFPMeterConfigStatsReply")
_FILTER_KEYS = {"table_id", "out_port", "out_group", "cookie", "cookie_mask", "match", "priority", "flags"}


class OfctlRest:
    """``/stats`` routes over the core's switches; ``waiters`` is what ofctl_v1_3 waits on."""

    def __init__(self, core):
        self.core = core
        self.waiters: dict[int, dict[int, tuple]] = {}
        self._recent: deque = deque(maxlen=256)   # (dpid, xid) of replies already taken

    def owns(self, msg) -> bool:
        """Is ``msg`` a reply to a ``/stats`` request (taken already, or still awaited)?"""
        key = (msg.datapath.id, msg.xid)
        return key in self._recent or msg.xid in self.waiters.get(msg.datapath.id, {})

    # -- replies (the core's handler calls this for every multipart reply) ---------------
    def take(self, msg) -> bool:
        """A multipart reply: hand it to the ofctl request waiting for it. True if one was."""
        per_dp = self.waiters.get(msg.datapath.id)
        if not per_dp or msg.xid not in per_dp:
            return False
        lock, msgs = per_dp[msg.xid]
        msgs.append(msg)
        self._recent.append((msg.datapath.id, msg.xid))
        if not msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            del per_dp[msg.xid]
            lock.set()
        return True

    # -- routes -----------------------------------------------------------------------
    def add_routes(self, api) -> None:
        tag = "ofctl_rest"
        api.add("GET", "/stats/switches", lambda r: self._switches(), "Ryu ofctl_rest: dpids of connected switches", tag)
        for kind, summary in (("desc", "switch description"), ("portdesc", "port descriptions"),
                              ("groupdesc", "group descriptions"), ("meterconfig", "meter configuration")):
            api.add("GET", f"/stats/{kind}/{{dpid}}", self._handler(kind), f"Ryu ofctl_rest: {summary}", tag)
        api.add("GET", "/stats/flow/{dpid}", self._handler("flow"), "Ryu ofctl_rest: flow entries", tag)
        api.add("POST", "/stats/flow/{dpid}", self._handler("flow"),
                "Ryu ofctl_rest: flow entries matching a filter body", tag, body="json")
        api.add("GET", "/stats/aggregateflow/{dpid}", self._handler("aggregateflow"),
                "Ryu ofctl_rest: aggregate flow statistics", tag)
        api.add("POST", "/stats/aggregateflow/{dpid}", self._handler("aggregateflow"),
                "Ryu ofctl_rest: aggregate flow statistics matching a filter body", tag, body="json")
        api.add("GET", "/stats/port/{dpid}", self._handler("port"), "Ryu ofctl_rest: port statistics", tag)
        api.add("GET", "/stats/port/{dpid}/{port}", self._handler("port"), "Ryu ofctl_rest: one port's statistics", tag)
        api.add("DELETE", "/stats/flowentry/clear/{dpid}", self._clear,
                "Ryu ofctl_rest: delete every static flow of a switch (405 without the static flows app)", tag)
        api.add("POST", "/stats/flowentry/{op}", self._write,
                "Ryu ofctl_rest write (add, modify, modify_strict, delete, delete_strict): the static flows "
                "app's intent (405 without that app)", tag, body="json")

    def _switches(self) -> list[int]:
        return sorted(sw.dpid for name, sw in self.core.topology.switches.items() if name in self.core.datapaths)

    def _dp(self, text: str):
        try:
            dpid = int(text, 0) if text.lower().startswith("0x") else int(text)
        except ValueError:
            raise ApiError(400, f"dpid: {text!r} is not a datapath id (decimal, or hex with 0x)", "dpid") from None
        sw = self.core.topology.switch_by_dpid(dpid)
        dp = self.core.datapaths.get(sw.name) if sw is not None else None
        if dp is None:
            raise ApiError(404, f"no connected switch with dpid {dpid} ({dpid:#x})")
        return dp

    def _handler(self, kind: str):
        def handle(r):
            from os_ken.lib import ofctl_v1_3 as ofctl

            dp = self._dp(r.params["dpid"])
            body = r.body if isinstance(r.body, dict) else None
            if body is not None:
                unknown = sorted(set(body) - _FILTER_KEYS)
                if unknown:
                    raise ApiError(400, f"{unknown[0]}: not a filter key of Ryu's ofctl_rest "
                                        f"({', '.join(sorted(_FILTER_KEYS))})", unknown[0])
                if "match" in body and not isinstance(body["match"], dict):
                    raise ApiError(400, "match: must be an object of match fields", "match")
            try:
                if kind == "desc":
                    return ofctl.get_desc_stats(dp, self.waiters)
                if kind == "portdesc":
                    return ofctl.get_port_desc(dp, self.waiters)
                if kind == "groupdesc":
                    return _group_desc(dp, ofctl.get_group_desc(dp, self.waiters, to_user=False))
                if kind == "meterconfig":
                    return ofctl.get_meter_config(dp, self.waiters)
                if kind == "flow":
                    return _flows(dp, ofctl.get_flow_stats(dp, self.waiters, body or {}, to_user=False))
                if kind == "aggregateflow":
                    return ofctl.get_aggregate_flow_stats(dp, self.waiters, body or {})
                port = r.params.get("port")
                return ofctl.get_port_stats(dp, self.waiters, port)
            except (ValueError, KeyError, TypeError) as exc:  # a filter os-ken cannot turn into a request
                raise ApiError(400, f"filter: {type(exc).__name__}: {exc}") from None
        return handle

    def _clear(self, r):
        dp = self._dp(r.params["dpid"])
        return self._writer().ofctl_write("delete", {"dpid": dp.id})

    def _writer(self):
        writer = next((a for a in self.core.apps.values() if hasattr(a, "ofctl_write")), None)
        if writer is None:
            raise ApiError(405, "ofctl_rest writes need the static flows app (ryu_apps/static_flows.py): flows "
                                "here are each app's computed state, and the programmer removes any flow no app wants")
        return writer

    def _write(self, r):
        # an app that takes the writes as its intent (ryu_apps/static_flows.py); without one, a flow
        # written straight to a switch would be removed by the programmer as a flow no app wants
        return self._writer().ofctl_write(r.params["op"], r.body)


# os-ken's ofctl_v1_3 formats the Nicira actions its ofctl_nicira_ext knows and fails on the others
# (resubmit, conjunction...) with an AttributeError; these two take its raw answer (to_user=False) and
# format every action it knows as it does, the others from their own fields


def _action(act) -> str:
    from os_ken.lib import ofctl_v1_3 as ofctl

    try:
        return ofctl.action_to_str(act)
    except AttributeError:
        name = type(act).__name__
        fields = {k: v for k, v in act.to_jsondict()[name].items()
                  if k not in ("len", "type", "experimenter", "subtype")}
        label = name.removeprefix("NXAction")
        return f"NX_{label.upper()}: {{" + ", ".join(f"{k}:{v}" for k, v in fields.items()) + "}"


def _actions(instructions) -> list:
    """os-ken's ``actions_to_str``, in its order, with :func:`_action` for each action."""
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    out: list = []
    for ins in instructions:
        if isinstance(ins, parser.OFPInstructionActions):
            if ins.type == ofp.OFPIT_APPLY_ACTIONS:
                out += [_action(a) for a in ins.actions]
            elif ins.type == ofp.OFPIT_WRITE_ACTIONS:
                if ins.actions:
                    out.append({"WRITE_ACTIONS": [_action(a) for a in ins.actions]})
            elif ins.type == ofp.OFPIT_CLEAR_ACTIONS:
                out.append("CLEAR_ACTIONS")
            else:
                out.append("UNKNOWN")
        elif isinstance(ins, parser.OFPInstructionGotoTable):
            out.append(f"GOTO_TABLE:{ins.table_id}")
        elif isinstance(ins, parser.OFPInstructionWriteMetadata):
            out.append(f"WRITE_METADATA:0x{ins.metadata:x}/0x{ins.metadata_mask:x}" if ins.metadata_mask
                       else f"WRITE_METADATA:0x{ins.metadata:x}")
        elif isinstance(ins, parser.OFPInstructionMeter):
            out.append(f"METER:{ins.meter_id}")
    return out


def _flows(dp, raw: dict) -> dict:
    from os_ken.lib import ofctl_v1_3 as ofctl

    flows = []
    for f in raw.get(dp.id, []):
        f = dict(f)
        f.pop("instructions", None)
        f["actions"] = _actions(f["actions"])
        f["match"] = ofctl.match_to_str(f["match"])
        flows.append(f)
    return {str(dp.id): flows}


def _group_desc(dp, raw: dict) -> dict:
    names = {dp.ofproto.OFPGT_ALL: "ALL", dp.ofproto.OFPGT_SELECT: "SELECT", dp.ofproto.OFPGT_INDIRECT: "INDIRECT",
             dp.ofproto.OFPGT_FF: "FF"}
    out = []
    for g in raw.get(dp.id, []):
        out.append({"buckets": [{**b, "actions": [_action(a) for a in b["actions"]]} for b in g["buckets"]],
                    "group_id": g["group_id"], "type": names.get(g["type"], g["type"])})
    return {str(dp.id): out}
