"""The table simulator unit tests have always imported from here: now
:mod:`ryu_apps.openflow.simulator` (one switch simulator for tests and models).

Kept as a thin re-export so existing tests work unchanged: ``run``, ``lookup``,
``field_matches``, ``Outcome``, ``Fabric``, ``MAX_STEPS``, and ``_walk``
(``run`` goes through it, so a test may still wrap it).
"""

from __future__ import annotations

from ryu_apps.openflow import simulator
from ryu_apps.openflow.simulator import Fabric, Outcome, field_matches, lookup

MAX_STEPS = simulator.MAX_HOPS


def run(state, pkt: dict, in_port: int) -> list[Outcome]:
    """Every place ``pkt`` arriving on ``in_port`` can end up (select groups fork)."""
    return _walk(state, 0, dict(pkt, in_port=in_port), [])


def _walk(state, table: int, pkt: dict, hit: list) -> list[Outcome]:
    """The walk from ``table`` (``hit``: flows already hit, unused by the simulator)."""
    return simulator.run(state, pkt, table=table)


__all__ = ["MAX_STEPS", "Fabric", "Outcome", "field_matches", "lookup", "run"]
