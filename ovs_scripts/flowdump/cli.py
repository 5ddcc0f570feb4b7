"""``ovslab flows`` (and ``python -m ovs_scripts.flowdump``): find the switch, dump or diff, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ovs_scripts.flowdump.compare import diff
from ovs_scripts.flowdump.ofctl import FlowdumpError, check_bridge
from ovs_scripts.flowdump.remote import REST_AUTH, fetch_desired, fetch_labels
from ovs_scripts.flowdump.rendering import render, render_diff
from ovs_scripts.flowdump.snapshot import dump
from ryu_apps.framework import cookies


@dataclass(frozen=True)
class Location:
    switch: str
    bridge: str
    rundir: str
    rest_url: str | None
    lab: str | None = None


def _rundir_of_db(db: str) -> str:
    if db.startswith("unix:"):
        db = db[len("unix:"):]
    elif ":" in db.split("/", 1)[0]:
        raise FlowdumpError(f"--db {db!r}: only a unix:/path/db.sock socket locates the bridges' management sockets")
    return os.path.dirname(os.path.abspath(db))


def locate(ns: argparse.Namespace) -> Location:
    """Where the switch is: an explicit OVS instance (--rundir/--db) or a running lab."""
    switch = ns.switch
    rest = getattr(ns, "rest", None)
    rundir = getattr(ns, "rundir", None)
    db = getattr(ns, "db", None)
    if rundir or db:
        return Location(switch, switch, os.path.abspath(rundir) if rundir else _rundir_of_db(db), rest)
    not_found = f"no lab switch named {switch}; use --rundir or --db for other bridges"
    try:
        from ovs_scripts.lab import find_switch
    except ImportError as exc:
        raise FlowdumpError(f"{not_found} (lab support unavailable: {exc})") from None
    try:
        found = find_switch(switch)
    except Exception as exc:  # the lab module's own failure, reported in one line
        raise FlowdumpError(f"looking up lab switch {switch} failed: {exc}") from None
    if not found:
        raise FlowdumpError(not_found)
    lab, bridge, lab_rundir, lab_rest = found
    try:  # a bridge name was given: the controller knows the switch by its name
        from ovs_scripts.lab import switch_name
    except ImportError:
        switch_name = None
    name = (switch_name(switch) if switch_name else None) or switch
    return Location(name, bridge, lab_rundir, rest or lab_rest, lab)


def _labels_or_warn(rest_url: str | None) -> dict[int, str]:
    if not rest_url:
        return {}
    try:
        return fetch_labels(rest_url)
    except FlowdumpError as exc:
        print(f"ovslab flows: warning: no object names ({exc})", file=sys.stderr)
        return {}


def _check_app(app: str, present: Iterable[str]) -> None:
    known = set(cookies.APPS) | {"none"} | set(present)
    if app not in known:
        raise FlowdumpError(f"unknown app {app!r}; apps: {', '.join(sorted(known))}")


def _run(ns: argparse.Namespace) -> int:
    token_file = getattr(ns, "rest_token_file", None)
    REST_AUTH["token"] = None
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                REST_AUTH["token"] = f.read().strip() or None
        except OSError as exc:
            raise FlowdumpError(f"--rest-token-file {token_file}: {exc.strerror}") from None
    REST_AUTH["cafile"] = getattr(ns, "rest_cacert", None)
    loc = locate(ns)
    app = getattr(ns, "app", None)
    as_json = getattr(ns, "json", False)
    if getattr(ns, "diff", False):
        if not loc.rest_url:
            raise FlowdumpError("--diff needs the controller: give --rest URL (a lab switch has it already)")
        check_bridge(loc.bridge, loc.rundir)
        desired = fetch_desired(loc.rest_url, loc.switch)
        result = diff(loc.bridge, loc.rundir, desired)
        if app:
            _check_app(app, [])
            result = result.filter(app)
        labels = _labels_or_warn(loc.rest_url)
        if as_json:
            doc = {"switch": loc.switch, "bridge": loc.bridge, "summary": result.summary(loc.switch),
                   **result.to_json(labels)}
            print(json.dumps(doc, indent=2))
        else:
            sys.stdout.write(render_diff(result, loc.switch, labels))
        return 0 if result.identical else 1
    snapshot = dump(loc.bridge, loc.rundir, switch=loc.switch)
    if app:
        _check_app(app, snapshot.apps())
        snapshot = snapshot.filter(app)
    labels = _labels_or_warn(loc.rest_url)
    if as_json:
        print(json.dumps(snapshot.to_json(labels), indent=2))
    else:
        sys.stdout.write(render(snapshot, labels))
    return 0


def cli_main(ns: argparse.Namespace) -> int:
    """``ovslab flows``: 0 ok (or no differences), 1 differences (--diff), 2 error."""
    try:
        return _run(ns)
    except FlowdumpError as exc:
        print(f"ovslab flows: {exc}", file=sys.stderr)
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options cli_main reads (for ``ovslab flows`` and ``python -m ovs_scripts.flowdump``)."""
    parser.add_argument("switch", help="lab switch name, or a bridge name with --rundir/--db")
    parser.add_argument("--app", help="only this app's flows (and the groups/meters they use)")
    parser.add_argument("--diff", action="store_true",
                        help="compare with the controller's desired state; exit 1 if different")
    parser.add_argument("--json", action="store_true", help="print JSON")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rundir", help="OVS run directory holding <bridge>.mgmt (any OVS instance)")
    where.add_argument("--db", help="unix:/path/db.sock of the OVS instance (its directory is the rundir)")
    parser.add_argument("--rest", help="controller REST URL (object names, --diff)")
    add_rest_auth_arguments(parser)
    return parser


def add_rest_auth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rest-token-file", help="file with the controller's REST token (needed when its "
                                                  "REST listens beyond loopback)")
    parser.add_argument("--rest-cacert", help="CA certificate to verify an https:// controller")


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="ovslab flows",
        description="Flows, groups and meters of an OVS bridge by app and object; --diff against the controller."))
    return cli_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
