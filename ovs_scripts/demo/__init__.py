"""``make demo``: bring up each lab, drive it with real traffic, print what the data plane proved.

Usage::

    python -m ovs_scripts.demo                 # every scenario, in order
    python -m ovs_scripts.demo chain3 tunnel   # some of them
    python -m ovs_scripts.demo --list

Each scenario is a :class:`Scenario` in :data:`SCENARIOS`: a name, a topology
file and a function ``run(lab, check)`` that drives the lab that is up and
calls ``check(description, passed, detail)`` once per thing it verified.  A
new fabric function adds its scenario with the :func:`scenario` decorator::

    @scenario("fenced", "fenced.yaml", "fenced clones: ...")
    def fenced(lab, check):
        ...
        check("clone B cannot reach clone A", not reached, f"{sent} sent, 0 answered")

``check.note(text)`` prints a measured figure under the lab's header.

Every lab is torn down after its scenario (try/finally; also on Ctrl-C,
SIGTERM or any exception), and only a lab this run brought up: if a lab of
the same name (run directory), namespace prefix or controller port is already
in use, that scenario fails with the reason and the other lab is left alone.
Traffic only flows between hosts inside the lab's own namespaces.

Exit status: 0 if every check passed, 1 if any failed, 130 if interrupted.

The package (every name below is importable from ``ovs_scripts.demo``):

================  ==================================================================
``registry``      :class:`Scenario`, :func:`scenario`, :class:`Check` / :class:`Row`,
                  :func:`select`, the check :func:`table`, which modules hold scenarios
``drive``         what scenarios drive a lab with: :func:`ping`, :func:`tcp`,
                  :func:`start_server`, :func:`port_tx_packets`, :func:`rest`, ...
``runner``        :func:`run` (one lab per scenario, always torn down) and :func:`main`
``chain3``,       the base fabric's scenarios; the function apps' are in
``diamond``,      ``ovs_scripts/scenarios/<app>.py``
``tunnel``
================  ==================================================================
"""

from __future__ import annotations

from ovs_scripts.demo.drive import (
    ECHO_PORT,
    PY,
    addr,
    flow_snapshot,
    ping,
    ping_many,
    port_tx_packets,
    rest,
    start_server,
    tcp,
    tcp_detail,
    tunnel_neighbours,
    wait_for,
)
from ovs_scripts.demo.registry import (
    BUILTIN_SCENARIOS,
    FUNCTION_SCENARIOS,
    REPO,
    SCENARIOS,
    TOPOLOGIES,
    Check,
    Row,
    RunFn,
    Scenario,
    load_scenarios,
    register,
    scenario,
    select,
    table,
)
from ovs_scripts.demo.runner import main, run

__all__ = [
    "Scenario", "SCENARIOS", "RunFn", "register", "scenario", "select", "Check", "Row", "table",
    "BUILTIN_SCENARIOS", "FUNCTION_SCENARIOS", "load_scenarios", "REPO", "TOPOLOGIES",
    "PY", "ECHO_PORT", "ping", "ping_many", "start_server", "tcp", "tcp_detail", "port_tx_packets", "rest",
    "addr", "wait_for", "tunnel_neighbours", "flow_snapshot",
    "run", "main",
]

# Last: the scenario modules import names from this package.
load_scenarios()
