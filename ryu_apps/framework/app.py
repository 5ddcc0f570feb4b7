"""The base class of every fabric app.

A fabric app computes, as pure data, what each switch should hold for its intent
(:meth:`FabricApp.compute`); it never sends flows itself and registers no os-ken
handlers.  The core (:mod:`ryu_apps.framework.core`, the os-ken context
``fabric_core`` every fabric app declares) owns the switches: it calls the app's
hooks (``on_packet_in``, ``on_port_change``, ``on_switch_change``,
``on_stats_reply``), keeps each app's last state per part and switch, recomputes
only what an event made stale, and hands the result to the switch programmers.

What an app may call on the core is the small API listed in ``CORE_API`` (checked
by ``tests/unit/test_app_api.py``).
"""

from __future__ import annotations

import inspect
from typing import Hashable, Iterable

from os_ken.base import app_manager
from os_ken.ofproto import ofproto_v1_3
from pydantic import BaseModel, ValidationError

from ryu_apps.framework import cookies
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.view import (  # noqa: F401 - re-exported for apps
    WHOLE,
    FabricView,
    IntentError,
    PacketIn,
    PortChange,
    SwitchChange,
)

#: The core attributes and calls an app may use (everything else is the core's own business).
CORE_API = frozenset({
    "topology",          # the declared topology (read only)
    "view",              # view(): the FabricView apps compute on
    "invalidate",        # invalidate(app, parts=None): this app's state (parts) is stale
    "recompute_now",     # recompute_now(app, parts=None): compute and hand to the programmers now
    "try_intent",        # try_intent(app, candidate, parts=None): compute a candidate, change nothing
    "commit_intent",     # commit_intent(app, candidate, result): make it the intent, apply, persist
    "wait_applied",      # wait_applied(switches, timeout): why not yet, per switch
    "packet_out",        # packet_out(switch, port, data, in_port=None, table=None)
    "request_stats",     # request_stats(app, switch, build): reply to app.on_stats_reply
    "multipart",         # multipart(switch, build): an ofwire dump, bodies returned
    "is_connected",      # is_connected(switch)
    "all_synced",        # all_synced(switches=None): the switches hold their desired state
    "cluster_synced",    # cluster_synced(switches=None, revision=0): which do not yet, at their masters
    "desired_state",     # desired_state(switch): merged desired state (read only)
    "app_intent",        # app_intent(name): another app's intent, or None
    "compute_seconds",   # compute_seconds(app): its last recompute's duration
    "packet_in_counts",  # packet_in_counts(): the core's packet-in counters
    "generation",        # bumped on every applied recompute
    "compute_error",     # the last recompute's error, or None
    "persistent",        # the controller has a state dir
    "load_intent",       # load_intent(name): saved JSON (intent, or an app's runtime state)
    "save_intent",       # save_intent(name, data): JSON data or a pydantic model
    "data_plane",        # data_plane(switch): forwarding | dead | ... (liveness)
    "masters",           # masters(switch): this instance programs it (always true without a cluster)
    "leads",             # leads(app): this instance runs the app's learning and loops (CLUSTER = "leader")
    "clustered",         # the state is shared with other controller instances (etcd)
    "load_items",        # load_items(name): a collection of learned state, key -> JSON data
    "save_items",        # save_items(name, {key: data or None}): written before it is acted on
    "unregister",        # unregister(app): an app that failed to start leaves
})


class FabricApp(app_manager.OSKenApp):
    """Subclass, set ``APP_NAME`` and ``IntentModel``, implement :meth:`compute`."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    APP_NAME = "fabric"
    #: pydantic model of the app's intent (the ``apps.<name>`` section of the topology)
    IntentModel: type[BaseModel] = BaseModel
    #: the parts of the view :meth:`compute` reads (``ports``, ``switches``, ``channels``):
    #: an event that changes one of them dirties this app, and only the parts
    #: :meth:`parts_changed` names
    INPUTS: frozenset = frozenset({"ports", "switches"})
    #: set by the framework: an app whose compute(view) reads self.intent (the v1 contract)
    LEGACY = False
    #: in a controller cluster: ``"replicated"`` (every instance learns what its switches
    #: punt, and shares it through the store) or ``"leader"`` (one instance, the app's leader,
    #: gets every switch's packet-ins relayed to it, runs the app's loops and REST calls, and
    #: publishes what it learned; every instance computes flows from that).  See
    #: ``core.leads(app)`` and :meth:`on_leadership`.
    CLUSTER = "replicated"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.LEGACY = len(inspect.signature(cls.compute).parameters) == 2  # (self, view)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.core = kwargs["fabric_core"]
        self.app_id = cookies.app_id(self.APP_NAME)
        raw = self.core.topology.apps.get(self.APP_NAME, {})
        saved = self.core.load_intent(self.APP_NAME)
        try:
            self.intent = self.IntentModel.model_validate(saved if saved is not None else raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise IntentError(f"{self.core.topology.source}: apps.{self.APP_NAME}.{loc}: {first['msg']}") from None
        self.core.register(self)

    # -- the desired state (pure) ---------------------------------------------------
    def parts(self, intent) -> Iterable[Hashable]:
        """The parts the app's state is made of (fences, clients, channels...); default one."""
        return (WHOLE,)

    def compute(self, view: FabricView, intent, part: Hashable = WHOLE) -> dict[str, SwitchState]:
        """Desired state per switch of ``part`` for ``intent`` and ``view``.

        Pure: reads its arguments and the app's runtime state, changes nothing, no I/O.
        """
        return {}

    def parts_changed(self, view: FabricView, intent, change) -> Iterable[Hashable] | None:
        """Which parts a change of an input (a PortChange or SwitchChange) can affect; None: all."""
        return None

    # -- hooks the core calls (in the order the switch sent the messages) ------------
    def on_packet_in(self, pkt: PacketIn) -> None:
        """A packet-in whose flow carried this app's cookie (bounded, rate limited)."""
        self.packet_in(pkt)

    def packet_in(self, pkt: PacketIn) -> None:
        """v1 name of :meth:`on_packet_in`."""

    def on_port_change(self, change: PortChange) -> None:
        """A port of a declared switch changed (after the core put it into the view)."""

    def on_switch_change(self, change: SwitchChange) -> None:
        """A switch connected, disconnected, was declared dead or forwards again."""

    def on_stats_reply(self, switch: str, msg) -> None:
        """A reply to this app's ``core.request_stats`` (os-ken's parsed message)."""

    def on_intent_change(self) -> None:
        """The app's intent was replaced (a REST change here, or another instance's through the
        store); ``self.intent`` is the new one and its state is being applied."""

    def on_leadership(self, leading: bool) -> None:
        """A ``CLUSTER = "leader"`` app: this instance became (True) or stopped being its leader."""

    def on_store_change(self, change) -> None:
        """Another controller instance changed a value in the shared store (cluster mode): a
        :class:`ryu_apps.framework.store.Change` of runtime state (the app's intent is taken
        by the core itself).  ``change.name == "*"``: history was lost, re-read everything."""

    def add_routes(self, api) -> None:
        """Register REST routes on ``api`` (a :class:`ryu_apps.framework.rest.RestApi`)."""

    def intent_json(self) -> dict:
        return self.intent.model_dump(mode="json")

    def cookie(self, kind: int, obj: int | str = 0) -> int:
        return cookies.make(self.APP_NAME, kind, obj)
