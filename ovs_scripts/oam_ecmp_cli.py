"""``python -m ovs_scripts.oam_ecmp_cli``: run ECMP verifications and inject faults from a shell.

::

    python -m ovs_scripts.oam_ecmp_cli verify [--lab LAB | --url URL] [--pair l1 l2]... [--one-way] [--json]
    python -m ovs_scripts.oam_ecmp_cli report [ID|latest] [--json]
    python -m ovs_scripts.oam_ecmp_cli expected | routes | sids        # JSON
    python -m ovs_scripts.oam_ecmp_cli fault remove-bucket l1 l2 13 --lab LAB
    python -m ovs_scripts.oam_ecmp_cli fault add-bucket s1 l2 3 --lab LAB
    python -m ovs_scripts.oam_ecmp_cli fault drop-port l1 13 --lab LAB
    python -m ovs_scripts.oam_ecmp_cli fault redirect-bucket l1 l2 13 1 --lab LAB
    python -m ovs_scripts.oam_ecmp_cli fault loop l2 s1 l3 s2 l4 --lab LAB
    python -m ovs_scripts.oam_ecmp_cli fault cut-link s3 l2 --lab LAB
    python -m ovs_scripts.oam_ecmp_cli heal --lab LAB            # undo every fault

The controller is found by ``--url`` or through a lab that is up (``--lab``,
or the only lab up under $OVSLAB_RUNDIR).  ``verify`` prints the table and
exits 0 when every pair took exactly its expected paths, 1 when there are
findings, 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import sys

from ovs_scripts import kit
from ovs_scripts import oam_ecmp_faults as faults
from ryu_apps.functions.oam_ecmp.model import render_table

TIMEOUT = 120


class CliError(Exception):
    pass


def _lab(name: str | None):
    from ovs_scripts import lab as labmod

    if name:
        return labmod.Lab.attach(name)
    labs = labmod.list_labs()
    if len(labs) != 1:
        raise CliError(f"name the lab with --lab ({'labs up: ' + ', '.join(labs) if labs else 'no lab is up'})")
    return labmod.Lab.attach(labs[0])


def _url(ns) -> str:
    if ns.url:
        return ns.url.rstrip("/")
    lab = _lab(ns.lab)
    if not lab.rest_url:
        raise CliError(f"lab {lab.name} runs without a controller")
    return lab.rest_url


def _call(url: str, method: str = "GET", body: dict | None = None):
    try:
        r = kit.request(method, url, body, timeout=TIMEOUT)
    except OSError as err:  # URLError is an OSError
        raise CliError(f"{method} {url}: {getattr(err, 'reason', err)}") from None
    if not r.ok:
        raise CliError(f"{method} {url}: {r.status} {r.error or ''}")
    return r.body


def cmd_verify(ns) -> int:
    body: dict = {"both_directions": not ns.one_way}
    if ns.pair:
        body["pairs"] = [list(p) for p in ns.pair]
    if ns.hop_budget:
        body["hop_budget"] = ns.hop_budget
    report = _call(f"{_url(ns)}/v1/oam/ecmp/verify", "POST", body)
    print(json.dumps(report, indent=1) if ns.json else render_table(report))
    return 0 if report["totals"]["ok"] == report["totals"]["pairs"] else 1


def cmd_report(ns) -> int:
    report = _call(f"{_url(ns)}/v1/oam/ecmp/reports/{ns.id}")
    print(json.dumps(report, indent=1) if ns.json else render_table(report))
    return 0


def cmd_get(ns) -> int:
    print(json.dumps(_call(f"{_url(ns)}/v1/oam/ecmp/{ns.cmd}"), indent=1))
    return 0


def cmd_fault(ns) -> int:
    lab = _lab(ns.lab)
    a = ns.args
    kind = ns.kind
    try:
        if kind == "remove-bucket":
            f = faults.remove_bucket(lab, a[0], a[1], int(a[2]))
        elif kind == "add-bucket":
            f = faults.add_bucket(lab, a[0], a[1], int(a[2]))
        elif kind == "drop-port":
            f = faults.drop_port(lab, a[0], int(a[1]))
        elif kind == "redirect-bucket":
            f = faults.redirect_bucket(lab, a[0], a[1], int(a[2]), int(a[3]))
        elif kind == "loop":
            f = faults.make_loop(lab, a[0], a[1:])
        else:
            f = faults.cut_link(lab, a[0], a[1])
    except faults.FaultError:
        raise
    except (IndexError, ValueError) as exc:
        raise CliError(f"fault {kind} {FAULT_ARGS[kind]}: {exc}") from None
    print(json.dumps(f.to_json()))
    return 0


def cmd_heal(ns) -> int:
    faults.heal_all(_lab(ns.lab))
    print("healed: every port forwards, every link is up, every switch re-read and repaired")
    return 0


FAULT_ARGS = {"remove-bucket": "SWITCH DEST PORT", "add-bucket": "SWITCH DEST PORT", "drop-port": "SWITCH PORT",
              "redirect-bucket": "SWITCH DEST OLD_PORT NEW_PORT", "loop": "DEST SWITCH SWITCH SWITCH...",
              "cut-link": "SWITCH SWITCH"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ovs_scripts.oam_ecmp_cli", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--lab", help="a lab that is up (default: the only one)")
        sp.add_argument("--url", help="controller REST URL instead of a lab, e.g. http://127.0.0.1:8080")

    v = sub.add_parser("verify", help="probe leaf pairs (default all) and print the findings")
    common(v)
    v.add_argument("--pair", nargs=2, action="append", metavar=("SRC", "DST"), help="a leaf pair (repeatable)")
    v.add_argument("--one-way", action="store_true", help="do not also probe DST -> SRC")
    v.add_argument("--hop-budget", type=int)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)
    r = sub.add_parser("report", help="a past verification report")
    common(r)
    r.add_argument("id", nargs="?", default="latest")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_report)
    for name, what in (("expected", "expected ECMP paths of every leaf pair"),
                       ("routes", "routes the replicate groups mirror"), ("sids", "the SID plan")):
        g = sub.add_parser(name, help=what)
        common(g)
        g.set_defaults(func=cmd_get)
    f = sub.add_parser("fault", help="inject a fault into a lab: " + "; ".join(f"{k} {v}" for k, v in
                                                                             FAULT_ARGS.items()))
    f.add_argument("kind", choices=sorted(FAULT_ARGS))
    f.add_argument("args", nargs="+")
    f.add_argument("--lab")
    f.set_defaults(func=cmd_fault)
    h = sub.add_parser("heal", help="undo every fault in a lab")
    h.add_argument("--lab")
    h.set_defaults(func=cmd_heal)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except (CliError, faults.FaultError) as exc:
        print(f"oam_ecmp: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # lab errors (LabError, CommandError) and the like: one line
        if type(exc).__name__ in ("LabError", "CommandError", "SandboxError"):
            print(f"oam_ecmp: {' | '.join(str(exc).split(chr(10)))}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
