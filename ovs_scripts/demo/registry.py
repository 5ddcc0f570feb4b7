"""The demo's scenario registry and its results: :class:`Scenario`, :func:`scenario`, :class:`Check`, :func:`table`.

A scenario is a name, a topology file and ``run(lab, check)``; ``check(description,
passed, detail)`` records one :class:`Row` and prints it as it happens, and
:func:`table` prints all rows at the end.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ovs_scripts.lab import Lab

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"


@dataclass
class Row:
    scenario: str
    check: str
    passed: bool
    detail: str = ""


class Check:
    """The ``check`` a scenario gets: ``check(description, passed, detail)`` records one row."""

    def __init__(self, scenario: str, rows: list[Row], out: TextIO):
        self.scenario = scenario
        self.rows = rows
        self.out = out

    def __call__(self, description: str, passed: bool, detail: str = "") -> bool:
        row = Row(self.scenario, description, bool(passed), str(detail))
        self.rows.append(row)
        say(self.out, f"  {'PASS' if row.passed else 'FAIL'}  {description}" + (f"  ({detail})" if detail else ""))
        return row.passed

    def note(self, text: str) -> None:
        """A measured figure, printed under the lab's header."""
        say(self.out, f"  ..    {text}")


RunFn = Callable[[Lab, Check], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    topology: str  # a file in topologies/ or a path
    run: RunFn
    summary: str = ""

    @property
    def path(self) -> Path:
        p = Path(self.topology)
        return p if p.is_absolute() else TOPOLOGIES / p


SCENARIOS: list[Scenario] = []


def register(sc: Scenario) -> Scenario:
    if any(s.name == sc.name for s in SCENARIOS):
        raise ValueError(f"scenario {sc.name!r} is registered twice")
    SCENARIOS.append(sc)
    return sc


def scenario(name: str, topology: str, summary: str = "") -> Callable[[RunFn], RunFn]:
    """Decorator: ``@scenario("chain3", "chain3.yaml")`` registers ``run(lab, check)``."""
    def deco(fn: RunFn) -> RunFn:
        register(Scenario(name, topology, fn, summary or (fn.__doc__ or "").strip().splitlines()[0]))
        return fn
    return deco


def say(out: TextIO, text: str = "") -> None:
    print(text, file=out, flush=True)


def select(names: Iterable[str] | None) -> list[Scenario]:
    """The registered scenarios named (all, in registration order, when ``names`` is empty)."""
    if not names:
        return list(SCENARIOS)
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def table(rows: list[Row]) -> str:
    """The check table printed at the end of ``make demo``."""
    heads = ("scenario", "check", "result", "detail")
    w0 = max([len(heads[0])] + [len(r.scenario) for r in rows]) + 2
    w1 = max([len(heads[1])] + [len(r.check) for r in rows]) + 2
    lines = [f"{heads[0]:<{w0}}{heads[1]:<{w1}}{heads[2]:<8}{heads[3]}"]
    for r in rows:
        lines.append(f"{r.scenario:<{w0}}{r.check:<{w1}}{'PASS' if r.passed else 'FAIL':<8}{r.detail}")
    return "\n".join(lines)


#: the base fabric's scenario modules (``ovs_scripts/demo/<name>.py``), in demo order
BUILTIN_SCENARIOS = ("chain3", "diamond", "tunnel")
#: function apps' scenario modules (ovs_scripts/scenarios/<name>.py), in demo order
FUNCTION_SCENARIOS = ("fenced_clone", "oam_ecmp", "multicast_standby", "cloud_router", "proxy_cluster",
                      "nvme_zoning")


def load_scenarios() -> None:
    """Import the scenario modules (each registers its scenarios): the built-in ones, then those of
    the function apps that exist."""
    for name in BUILTIN_SCENARIOS:
        importlib.import_module(f"ovs_scripts.demo.{name}")
    for name in FUNCTION_SCENARIOS:
        module = f"ovs_scripts.scenarios.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
