"""The core's recompute loop: a burst of view events is coalesced (10 ms), an app's own
invalidate (a join, a learned client: the app paces itself) is recomputed on the hub's next turn."""

from __future__ import annotations

import time
from types import SimpleNamespace

from os_ken.lib import hub

from ryu_apps.framework.core import FabricCore
from ryu_apps.framework.view import FabricView, PortChange


class App:
    APP_NAME = "x"
    INPUTS = frozenset({"ports"})
    intent = None

    def parts_changed(self, view, intent, change):
        return {"p"}


def _core():
    app = App()
    computed: list = []
    core = SimpleNamespace(apps={"x": app}, dirty={}, _recompute=hub.Event(), _coalesce=False, _computing=False,
                           last_compute_seconds=0.0, compute_error=None)
    core.view = lambda: FabricView(None)
    core.invalidate = lambda a, parts=None: FabricCore.invalidate(core, a, parts)
    core.compute_app = lambda a, view, intent, parts: computed.append((time.monotonic(), parts))
    core.apply = lambda result: []
    return core, app, computed


def _delay(core, computed, fire) -> float:
    computed.clear()
    t0 = time.monotonic()
    fire()
    while not computed and time.monotonic() - t0 < 1:
        hub.sleep(0.0005)
    assert computed
    return computed[0][0] - t0


def test_app_invalidations_are_not_held_for_the_port_event_pause():
    core, app, computed = _core()
    loop = hub.spawn(FabricCore._recompute_loop, core)
    try:
        hub.sleep(0.001)
        app_delay = _delay(core, computed, lambda: FabricCore.invalidate(core, app, {"p"}))
        change = PortChange("s1", 1, "modify", False, False, False, True)
        view_delay = _delay(core, computed, lambda: FabricCore._view_changed(core, "ports", change))
        again = _delay(core, computed, lambda: FabricCore.invalidate(core, app, {"q"}))  # the flag was taken
    finally:
        hub.kill(loop)
    assert app_delay < 0.005 and again < 0.005, (app_delay, again)
    assert view_delay >= 0.009, view_delay
