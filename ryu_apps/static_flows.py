"""Static flows: what a Ryu user writes through ``ofctl_rest`` (``/stats/flowentry/...``), as intent.

Launch with the base fabric (and any function)::

    ryu-manager --fabric-topology topologies/diamond.yaml ryu_apps/fabric.py ryu_apps/static_flows.py

Ryu's ``ofctl_rest`` sent each write to the switch at once; here a write changes this app's
intent (validated, persisted, reconciled like every app's state), so a controller restart
keeps it and the programmer never removes it.  The flows are converted by os-ken's own
``ofctl_v1_3`` (what Ryu's app used: ``to_match``, ``to_actions``), then read into the
framework's flow model from their wire bytes.  See the intent module for what differs from Ryu.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Iterable

from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser
from pydantic import ValidationError

from ryu_apps.framework import cookies
from ryu_apps.framework.app import WHOLE, FabricApp, FabricView, IntentError
from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.pipeline import INGRESS, PipelineError
from ryu_apps.framework.rest import ApiError, validation_error
from ryu_apps.framework.state import StateConflict, SwitchState
from ryu_apps.functions.static_flows.intent import BASE_PRIORITY, StaticFlow, StaticFlowsIntent
from ryu_apps.openflow import ofwire
from ryu_apps.openflow.ofdata import Flow

LOG = logging.getLogger(__name__)
APP = "static_flows"
K_FLOW = 1


class _Dp:
    """What os-ken's ofctl_v1_3 converters need of a datapath (its OpenFlow 1.3 modules)."""

    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser
    id = 0


def to_flow(spec: StaticFlow) -> Flow:
    """``spec`` as a flow of this app (IntentError naming the field when it cannot be one)."""
    from os_ken.lib import ofctl_v1_3 as ofctl

    dp = _Dp()
    try:
        match = ofctl.to_match(dp, dict(spec.match))
        buf = bytearray()
        match.serialize(buf, 0)
        m = ofwire.decode_match(bytes(buf))
    except Exception as exc:  # noqa: BLE001 - os-ken raises whatever its parsers raise
        raise IntentError(f"match: {type(exc).__name__}: {exc}", "match") from None
    try:
        inst = ofctl.to_actions(dp, [dict(a) for a in spec.actions])
        buf = bytearray()
        for i in inst:
            i.serialize(buf, len(buf))
        decoded = ofwire.decode_instructions(bytes(buf))
    except Exception as exc:  # noqa: BLE001
        raise IntentError(f"actions: {type(exc).__name__}: {exc}", "actions") from None
    if decoded["write_actions"] is not None or decoded["clear_actions"] or decoded["unknown"] \
            or decoded["meter"] is not None or decoded["write_metadata"] is not None:
        raise IntentError("actions: only apply actions and GOTO_TABLE are taken (no write/clear actions, "
                          "meters or metadata: their ids and bits belong to the fabric's apps)", "actions")
    if any(type(a).__name__ in ("GroupAction", "RawAction") for a in decoded["actions"]):
        raise IntentError("actions: groups and unknown actions are not taken (group ids belong to the apps)",
                          "actions")
    obj = json.dumps([spec.priority, spec.match], sort_keys=True, default=str)
    return Flow(table=INGRESS, priority=BASE_PRIORITY + spec.priority, match=m, actions=tuple(decoded["actions"]),
                goto=decoded["goto"], cookie=cookies.make(APP, K_FLOW, obj))


class StaticFlows(FabricApp):
    """The static flows app (``ryu_apps/static_flows.py``)."""

    _CONTEXTS = {"fabric_core": FabricCore}
    APP_NAME = APP
    IntentModel = StaticFlowsIntent
    INPUTS = frozenset()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counters = {"added": 0, "modified": 0, "deleted": 0}
        try:
            self._check(self.intent)
        except IntentError as exc:
            raise IntentError(f"{self.core.topology.source}: apps.{APP}.{exc}", exc.field) from None

    def _check(self, intent: StaticFlowsIntent) -> None:
        seen = set()
        for i, spec in enumerate(intent.flows):
            if self.core.topology.switch_by_dpid(spec.dpid) is None:
                raise IntentError(f"flows[{i}].dpid: no switch with dpid {spec.dpid} ({spec.dpid:#x})",
                                  f"flows[{i}].dpid")
            if spec.key() in seen:
                raise IntentError(f"flows[{i}]: a flow with this dpid, priority and match appears twice",
                                  f"flows[{i}]")
            seen.add(spec.key())
            try:
                to_flow(spec)
            except IntentError as exc:
                raise IntentError(f"flows[{i}].{exc}", f"flows[{i}].{exc.field}") from None

    # -- the desired state (pure) -----------------------------------------------------
    def parts(self, intent: StaticFlowsIntent) -> Iterable[Hashable]:
        """One part per switch."""
        return tuple(self.core.topology.switches)

    def compute(self, view: FabricView, intent: StaticFlowsIntent, part: Hashable = WHOLE) -> dict[str, SwitchState]:
        out: dict[str, SwitchState] = {}
        for spec in intent.flows:
            sw = view.topology.switch_by_dpid(spec.dpid)
            if sw is None or part not in (WHOLE, sw.name):
                continue
            flow = to_flow(spec)
            st = out.setdefault(sw.name, SwitchState())
            st.add_flow(flow, APP)
            st.label(flow.cookie, f"static flow (ofctl_rest) priority {spec.priority} match {spec.match}")
        return out

    # -- the writes of Ryu's ofctl_rest (the framework's /stats routes call this) ---------------
    def ofctl_write(self, op: str, body) -> dict:
        """``POST /stats/flowentry/<op>`` with Ryu's body: the intent changes (or nothing does)."""
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object (Ryu's flow entry)")
        try:
            spec = StaticFlow.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        flows = list(self.intent.flows)
        if op == "add":
            flows = [f for f in flows if f.key() != spec.key()] + [spec]
        elif op in ("modify", "modify_strict"):
            hit = [i for i, f in enumerate(flows) if f.key() == spec.key()
                   or (op == "modify" and f.dpid == spec.dpid and _covers(spec.match, f.match))]
            if not hit:
                raise ApiError(404, "no static flow matches (modify changes the actions of existing flows)")
            for i in hit:
                flows[i] = flows[i].model_copy(update={"actions": spec.actions})
        elif op == "delete_strict":
            flows = [f for f in flows if f.key() != spec.key()]
        elif op == "delete":
            # non-strict: every flow of the switch whose match includes the given fields, whatever
            # its priority (as OpenFlow's non-strict delete)
            flows = [f for f in flows if not (f.dpid == spec.dpid and _covers(spec.match, f.match))]
        else:
            raise ApiError(404, f"no flowentry operation {op!r} (add, modify, modify_strict, delete, delete_strict)")
        candidate = StaticFlowsIntent(flows=flows)
        try:
            self._check(candidate)
            result = self.core.try_intent(self, candidate)
        except IntentError as exc:  # (named as in the write's own body)
            field = (exc.field or "").split(".", 1)[-1] if (exc.field or "").startswith("flows[") else exc.field
            raise ApiError(422, f"{field}: {str(exc).split(': ', 1)[-1]}" if field else str(exc), field) from None
        except (StateConflict, PipelineError) as exc:
            raise ApiError(409, f"refused, nothing changed: {exc}") from None
        self.core.commit_intent(self, candidate, result)
        self.counters[{"add": "added", "delete": "deleted", "delete_strict": "deleted"}.get(op, "modified")] += 1
        return {"static_flows": len(flows)}


def _covers(want: dict, have: dict) -> bool:
    """Ryu's non-strict match: every field of ``want`` is in ``have`` with the same value."""
    return all(k in have and str(have[k]) == str(v) for k, v in want.items())
