"""Flow programming: the framework side by side with the OVS limit.

For 1k, 10k and 100k distinct flows on one userspace bridge:

* framework: the controller (``ovs_scripts/bench_app.py`` computing the flows) programs
  the switch from the moment it connects until the atomic bundle is committed
  (read the empty switch, diff, encode, bundle, commit reply);
* OVS limit: ``ovs-ofctl --bundle add-flows`` of the very same flows (their
  ``ovs-ofctl`` text) into the same bridge after the table was emptied;
* no-change reconcile: the controller restarts with the same intent and
  reads back every flow, finds nothing to do, sends nothing.

Prints a table and the ratio framework / OVS limit (target: within 2x at 100k).
Run: ``make bench`` or ``.venv/bin/python bench/flow_programming.py [SIZES...]``.
Traffic: none; the only sockets are the lab's loopback/unix control channel.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ovs_scripts.bench_app import bench_flows  # noqa: E402
from ovs_scripts import kit  # noqa: E402
from ovs_scripts.lab import Lab  # noqa: E402
from ryu_apps.framework import (
    cookies,
    pipeline,  # noqa: E402
)

OF_PORT, REST_PORT = 16653, 18080


def topology(n: int) -> dict:
    return {"lab": {"name": "benchfp", "prefix": "bfp"},
            "controller": {"of_port": OF_PORT, "rest_port": REST_PORT},
            "switches": {"b1": {"dpid": 1}},
            "apps": {"bench": {"flows": n}}}


def rest(path: str):
    return kit.request("GET", f"http://127.0.0.1:{REST_PORT}{path}", timeout=30).expect()


def flow_count(lab: Lab) -> int:
    out = lab.ofctl("b1", "dump-aggregate").stdout
    return int(out.split("flow_count=")[1].split()[0])


def measure(n: int, workdir: Path) -> dict:
    path = workdir / f"bench-{n}.yaml"
    path.write_text(yaml.safe_dump(topology(n)))
    expected = n + len(pipeline.PIPELINE)  # plus the core's table-miss flows
    lab = Lab.up(path, controller=True, timeout=600, rundir=workdir / "run")
    try:
        sw = rest("/v1/switches/b1")
        health = rest("/v1/health")
        assert flow_count(lab) == expected, f"framework installed {flow_count(lab)} flows, expected {expected}"
        row = {"flows": n, "framework_s": sw["connect_to_sync_seconds"], "sync_s": sw["last_sync_seconds"],
               "compute_s": health["last_compute_seconds"]}

        lab.restart_controller(timeout=600)
        sw = rest("/v1/switches/b1")
        assert not any(sw["last_changes"].values()), f"no-change reconcile changed {sw['last_changes']}"
        row["reconcile_s"] = sw["connect_to_sync_seconds"]

        lab.stop_controller()
        lab.ofctl("b1", "del-flows")
        assert flow_count(lab) == 0
        text = "\n".join(str(f) for f in bench_flows(n, lambda blk: cookies.make("bench", 1, blk))) + "\n"
        flows_file = workdir / f"flows-{n}.txt"
        flows_file.write_text(text)
        start = time.monotonic()
        lab.ofctl("b1", "--bundle", "add-flows", str(flows_file), timeout=600)
        row["ofctl_s"] = time.monotonic() - start
        assert flow_count(lab) == n, "ovs-ofctl baseline did not install every flow"
        row["ratio"] = row["framework_s"] / row["ofctl_s"]
        return row
    finally:
        lab.down()


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1000, 10000, 100000]
    with tempfile.TemporaryDirectory(prefix="bench-fp-") as tmp:
        rows = [measure(n, Path(tmp)) for n in sizes]
    print()
    print("flow programming, one userspace OVS bridge (seconds; ratio = framework / ovs-ofctl --bundle)")
    print(f"{'flows':>8} {'framework':>10} {'(sync)':>8} {'compute':>8} {'ofctl':>8} {'ratio':>6} "
          f"{'no-change reconcile':>20}")
    for r in rows:
        print(f"{r['flows']:>8} {r['framework_s']:>10.3f} {r['sync_s']:>8.3f} {r['compute_s']:>8.3f} "
              f"{r['ofctl_s']:>8.3f} {r['ratio']:>6.2f} {r['reconcile_s']:>20.3f}")
    print("framework = switch connect -> bundle committed (read, diff, encode, send, commit);"
          " compute = the app's flows computed once at start")
    big = max(rows, key=lambda r: r["flows"])
    verdict = "within" if big["ratio"] <= 2 else "NOT within"
    print(f"at {big['flows']} flows the framework is {verdict} 2x of the OVS limit ({big['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
