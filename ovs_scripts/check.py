"""``ovslab check FILE``: a topology file and its apps' intent, checked without building anything.

Faucet users run ``check_faucet_config`` before they deploy; this is the same habit.  The
checks are the ones ``ovslab up`` runs before it builds anything (it calls :func:`check`
itself), and their messages are the ones the controller gives when it loads the file:

1. the topology (:func:`ryu_apps.framework.topology.load`: names, addresses, links, tunnels);
2. every app the file names is one this suite has;
3. each app's intent against its model (the message names ``apps.<app>.<field>``, as the
   app's constructor does);
4. what each function package can check against the topology without a controller
   (hosts a proxy cluster or a zoning names exist and have the addresses it needs, a fence's
   members, ...).

What only a running controller knows (OAM path planning over live links, a cloud router's
roles from learned clients) is checked when it computes, and shows in ``GET /v1/health``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from ovs_scripts.lab_apps import LAB_APPS
from ryu_apps.framework import topology as topo_mod
from ryu_apps.framework.topology import Topology, TopologyError
from ryu_apps.framework.view import IntentError


def _fenced_clone(topo: Topology, intent) -> None:
    from ryu_apps.functions.fenced_clone.model import Directory, validate

    validate(Directory.of(topo), intent)


def _validator(module: str) -> Callable:
    def run(topo: Topology, intent) -> None:
        importlib.import_module(module).validate(topo, intent)
    return run


#: app -> (module of its intent model, the model's class, a check against the topology or None)
INTENTS: dict[str, tuple[str, str, Callable | None]] = {
    "fabric": ("ryu_apps.functions.fabric.intent", "FabricIntent", None),
    "fenced_clone": ("ryu_apps.functions.fenced_clone.intent", "FencedCloneIntent", _fenced_clone),
    "multicast_standby": ("ryu_apps.functions.multicast_standby.intent", "MulticastIntent", None),
    "cloud_router": ("ryu_apps.functions.cloud_router.intent", "CloudRouterIntent", None),
    "oam_ecmp": ("ryu_apps.functions.oam_ecmp.intent", "OamIntent", None),
    "proxy_cluster": ("ryu_apps.functions.proxy_cluster.intent", "ProxyClusterIntent",
                      _validator("ryu_apps.functions.proxy_cluster.model")),
    "static_flows": ("ryu_apps.functions.static_flows.intent", "StaticFlowsIntent", None),
    "nvme_zoning": ("ryu_apps.functions.nvme_zoning.intent", "NvmeZoningIntent",
                    _validator("ryu_apps.functions.nvme_zoning.model")),
}


def check_topology(topo: Topology) -> list[str]:
    """The app checks (2-4 above) of a loaded topology: one message per problem, [] when fine."""
    errors = []
    for app, raw in topo.apps.items():
        if app in LAB_APPS:
            continue  # a lab tool: its own module checks its options when it starts
        spec = INTENTS.get(app)
        if spec is None:
            errors.append(f"{topo.source}: apps.{app}: no such app (apps: {', '.join(sorted(INTENTS))})")
            continue
        module, name, validator = spec
        model = getattr(importlib.import_module(module), name)
        try:
            intent = model.model_validate(raw if raw is not None else {})
        except ValidationError as exc:  # worded as FabricApp.__init__ words it
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            errors.append(f"{topo.source}: apps.{app}.{loc}: {first['msg']}")
            continue
        if validator is not None:
            try:
                validator(topo, intent)
            except IntentError as exc:
                errors.append(f"{topo.source}: apps.{app}.{exc}")
    return errors


def check(path: str | Path) -> list[str]:
    """Every problem of topology file ``path`` and its apps' intent ([] when it is fine)."""
    try:
        topo = topo_mod.load(path)
    except TopologyError as exc:
        return [str(exc)]
    return check_topology(topo)
