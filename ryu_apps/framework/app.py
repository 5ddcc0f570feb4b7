"""The base class of every fabric app, and the view of the network apps compute on.

A fabric app is an os-ken app that computes, as pure data, what each switch
should hold for its intent (:meth:`FabricApp.compute`); it never sends flows
itself.  The shared core (:mod:`ryu_apps.framework.core`, an os-ken context every
fabric app declares) merges all apps' states per switch, checks them against
the pipeline and hands them to the switch programmers.
"""

from __future__ import annotations

from os_ken.base import app_manager
from os_ken.ofproto import ofproto_v1_3
from pydantic import BaseModel, ValidationError

from ryu_apps.framework import cookies
from ryu_apps.framework.state import SwitchState
from ryu_apps.framework.view import FabricView, IntentError, PacketIn  # noqa: F401 - re-exported


class FabricApp(app_manager.OSKenApp):
    """Subclass, set ``APP_NAME`` and ``IntentModel``, implement :meth:`compute`."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    APP_NAME = "fabric"
    #: pydantic model of the app's intent (the ``apps.<name>`` section of the topology)
    IntentModel: type[BaseModel] = BaseModel

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

    # -- what subclasses implement -------------------------------------------
    def compute(self, view: FabricView) -> dict[str, SwitchState]:
        """Desired state per switch name for the current intent and view (pure)."""
        return {}

    def packet_in(self, pkt: PacketIn) -> None:
        """A packet-in whose flow carried this app's cookie."""

    def add_routes(self, api) -> None:
        """Register REST routes on ``api`` (a :class:`ryu_apps.framework.rest.RestApi`)."""

    def intent_json(self) -> dict:
        return self.intent.model_dump(mode="json")

    def cookie(self, kind: int, obj: int | str = 0) -> int:
        return cookies.make(self.APP_NAME, kind, obj)
