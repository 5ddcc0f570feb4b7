"""``ovslab check``: every shipped topology passes; broken files fail with the message ``ovslab up`` gives.

``ovslab up`` runs the same checks before it builds anything, so the comparison runs it too:
it must fail at once, with the same lines, and leave nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ovs_scripts.check import INTENTS, check

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = sorted((REPO / "topologies").glob("*.yaml"))


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_every_shipped_topology_passes(path):
    assert check(path) == []


def _edit(name: str, edit) -> dict:
    data = yaml.safe_load((REPO / "topologies" / name).read_text())
    edit(data)
    return data


def _set(path: list, value):
    def edit(data):
        d = data
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


BROKEN = [
    ("unknown key in the topology", "diamond.yaml", _set(["lab", "colour"], "red"), "lab.colour"),
    ("a link to nowhere", "diamond.yaml", lambda d: d["links"].append(["s1", "nowhere"]), "nowhere"),
    ("an app that does not exist", "diamond.yaml", _set(["apps", "firewall"], {}), "apps.firewall: no such app"),
    ("a bad NQN", "nvme_zoning.yaml", _set(["apps", "nvme_zoning", "hosts", 0, "nqn"], "iqn.bad"),
     "apps.nvme_zoning.hosts.0.nqn"),
    ("a subsystem on an unknown host", "nvme_zoning.yaml", _set(["apps", "nvme_zoning", "subsystems", 0, "host"], "t9"),
     "apps.nvme_zoning.subsystems[0].host: no host named 't9'"),
    ("a proxy that is not a host", "proxy_cluster.yaml",
     _set(["apps", "proxy_cluster", "clusters", 0, "proxies"], [{"host": "p9"}]), "apps.proxy_cluster.clusters[0]"),
    ("a fabric option of the wrong type", "diamond.yaml", _set(["apps", "fabric"], {"router_mac": 5}),
     "apps.fabric.router_mac"),
]


@pytest.mark.parametrize("what, base, edit, words", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_files_fail_naming_what_is_wrong_as_ovslab_up_does(tmp_path, what, base, edit, words):
    path = tmp_path / base
    path.write_text(yaml.safe_dump(_edit(base, edit), sort_keys=False))
    errors = check(path)
    assert len(errors) == 1 and words in errors[0], errors
    env = dict(os.environ, OVSLAB_RUNDIR=str(tmp_path / "run"))
    cli = [sys.executable, "-m", "ovs_scripts.cli"]
    checked = subprocess.run([*cli, "check", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert checked.returncode == 1 and checked.stderr.strip() == errors[0], checked
    if os.geteuid() != 0:
        return
    up = subprocess.run([*cli, "up", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert up.returncode != 0 and errors[0] in up.stderr, up.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())   # nothing was built


def test_every_function_app_is_known_to_the_check():
    apps = {p.stem for p in (REPO / "ryu_apps").glob("*.py")} - {"__init__", "manager"}
    assert apps == set(INTENTS)
