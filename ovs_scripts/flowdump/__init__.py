"""``ovslab flows``: what is on a switch, by app and object, and how it differs from intent.

Reads the flows, groups and meters of one Open vSwitch bridge with
``ovs-ofctl -O OpenFlow13`` over the bridge's management socket
(``<rundir>/<bridge>.mgmt``), parses them with the ``ovs.flow`` parsers
(``OFPFlow`` for flows, its action decoders for group buckets, the generic
``KVParser`` for the rest; no regexes) and groups flows by the cookie layout of
:mod:`ryu_apps.framework.cookies` (app id | kind | object).

Public API (all importable from ``ovs_scripts.flowdump``)::

    d = dump("s1", "/run/ovslab/demo")      # -> Dump (flows, groups, meters)
    d.by_app()["fabric"]                     # flows of one app
    d.by_object()[cookie]                    # flows of one object (one cookie)
    d.packets(app="fabric")                  # summed n_packets
    print(render(d, labels))                 # the human form of ``ovslab flows``
    delta = diff(d, None, desired_json)      # or diff("s1", rundir, desired_json)
    delta.missing, delta.unexpected, delta.different
    fetch_desired(rest_url, "s1"), fetch_labels(rest_url)   # from the controller

The package, one module per topic:

============  =====================================================================
``ofctl``     running ``ovs-ofctl`` (the one subprocess; :data:`ofctl.OFCTL` names the
              program), :class:`FlowdumpError`, the bridge's management target
``kv``        generic key-value helpers over ``ovs.flow`` (no OpenFlow vocabulary)
``flows``     :class:`FlowEntry` and the dump-flows parser; owners from cookies
``groups``    :class:`GroupEntry` / :class:`Bucket` and the dump-groups parser
``meters``    :class:`MeterEntry`, the dump-meters parser, :func:`canonical_meter`
``snapshot``  :class:`Dump` (grouping by app and object, filters) and :func:`dump`
``compare``   :func:`diff` against the desired state -> :class:`Diff`
``remote``    the controller's REST API (object names, desired state) via :mod:`ovs_scripts.kit`
``rendering`` the human form of a dump and of a diff
``cli``       ``ovslab flows`` / ``python -m ovs_scripts.flowdump``
============  =====================================================================

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

import sys
import types

from ovs_scripts.flowdump import ofctl, remote
from ovs_scripts.flowdump.cli import Location, add_arguments, add_rest_auth_arguments, cli_main, locate, main
from ovs_scripts.flowdump.compare import (
    Diff,
    DiffEntry,
    as_installed,
    diff,
    flow_mod_to_add_flow,
    normalise_group,
    parse_flow_diff,
)
from ovs_scripts.flowdump.flows import DEFAULT_PRIORITY, FlowEntry, default_label, parse_flow, parse_flows
from ovs_scripts.flowdump.groups import Bucket, GroupEntry, parse_group, parse_groups
from ovs_scripts.flowdump.meters import MeterEntry, canonical_meter, parse_meters
from ovs_scripts.flowdump.ofctl import OFP_VERSION, FlowdumpError, mgmt_target
from ovs_scripts.flowdump.remote import REST_AUTH, fetch_desired, fetch_labels
from ovs_scripts.flowdump.rendering import render, render_diff
from ovs_scripts.flowdump.snapshot import Dump, dump

__all__ = [
    "ofctl", "OFCTL", "OFCTL_TIMEOUT", "HTTP_TIMEOUT",
    "FlowdumpError", "OFP_VERSION", "DEFAULT_PRIORITY", "mgmt_target",
    "FlowEntry", "parse_flow", "parse_flows", "default_label",
    "Bucket", "GroupEntry", "parse_group", "parse_groups",
    "MeterEntry", "parse_meters", "canonical_meter",
    "Dump", "dump",
    "Diff", "DiffEntry", "diff", "parse_flow_diff", "normalise_group", "flow_mod_to_add_flow", "as_installed",
    "REST_AUTH", "fetch_labels", "fetch_desired",
    "render", "render_diff",
    "Location", "locate", "cli_main", "add_arguments", "add_rest_auth_arguments", "main",
]



def _setting(module: types.ModuleType, name: str) -> property:
    """A package attribute that reads and sets ``module.name`` (where the code reading it lives)."""
    return property(lambda self: getattr(module, name), lambda self, value: setattr(module, name, value),
                    doc=f"{module.__name__}.{name}")


class _Package(types.ModuleType):
    """``flowdump.OFCTL = ...`` still points the tools elsewhere, as when this package was one module."""

    OFCTL = _setting(ofctl, "OFCTL")
    OFCTL_TIMEOUT = _setting(ofctl, "OFCTL_TIMEOUT")
    HTTP_TIMEOUT = _setting(remote, "HTTP_TIMEOUT")


sys.modules[__name__].__class__ = _Package
