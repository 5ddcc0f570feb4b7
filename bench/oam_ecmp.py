"""OAM ECMP: time and probe copies to verify every leaf pair, side by side with MDA's probe count.

For each fabric (a leaf-spine or a fat-tree, built as a lab: one OVS bridge
per switch, one host namespace per leaf), the controller verifies every
ordered leaf pair ``--repeat`` times (one replicate probe per pair) and the
table shows:

* verify s: wall time of ``POST /v1/oam/ecmp/verify`` as the controller reports
  it (read routes, program replicate groups, launch, collect, classify), median
  of the runs; probe s: launch + collect part of it;
* probes / copies / reports: packet-outs (confirmation re-probes included; "re-probed"
  sums them over all runs), copies the switches forwarded on links, copies
  reported to the controller;
* MDA probes: what a Paris-traceroute multipath discovery (MDA) needs to
  discover the same path sets at 95 % confidence: at every hop (switch at a
  TTL) with k next hops it sends n_k = 6, 11, 16, 21, 27 ... probes (ruling
  out a (k+1)-th next hop), summed over the hops of every pair's path DAG;
  "branching only" counts the hops with k >= 2.  A lower bound: real MDA also
  spends probes to steer flow ids through each node.
* ratio: MDA probes / replicate probes.

Then the largest fabric that verified cleanly, and how the time grew with size.

Run: ``.venv/bin/python bench/oam_ecmp.py [--preset quick|default|large] [--repeat 3] [--fast]``.
``--fast`` raises the pacing limits (probe_rate 1000/s, controller packet-in budget
1000/s per switch, OVS controller rate limit 5000/s); the default keeps the
app's defaults (probe_rate 300/s).  Traffic: none besides the probes inside the
lab; the controller listens on loopback only.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ovs_scripts import kit  # noqa: E402
from ovs_scripts.lab import Lab, LabError  # noqa: E402
from ovs_scripts.topogen import fat_tree, leaf_spine  # noqa: E402

PRESETS = {
    "quick": [("leafspine", 4, 3), ("fattree", 4)],
    "default": [("leafspine", 4, 3), ("fattree", 4), ("leafspine", 8, 4), ("leafspine", 16, 4), ("fattree", 6),
                ("leafspine", 24, 6), ("leafspine", 32, 8)],
    "large": [("leafspine", 4, 3), ("fattree", 4), ("leafspine", 16, 4), ("fattree", 6), ("leafspine", 32, 8),
              ("leafspine", 48, 8), ("fattree", 8), ("leafspine", 64, 8)],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: dict | None = None, timeout: float = 600):
    return kit.request("POST" if body is not None else "GET", url, body, timeout=timeout).expect()


def converged(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gen = call(f"{url}/v1/health")["generation"]
        time.sleep(0.2)
        h = call(f"{url}/v1/health")
        if h["all_synced"] and h["generation"] == gen:
            return
    raise RuntimeError("the fabric did not converge")


def spec(entry, i: int, fast: bool) -> tuple[str, dict]:
    kind = entry[0]
    name, prefix = f"oamb{i}", f"ob{i}"
    ports = {"of_port": free_port(), "rest_port": free_port()}
    if kind == "leafspine":
        data = leaf_spine(entry[1], entry[2], name=name, prefix=prefix, **ports)
        label = f"leaf-spine {entry[1]}x{entry[2]}"
    else:
        data = fat_tree(entry[1], name=name, prefix=prefix, **ports)
        label = f"fat-tree k={entry[1]}"
    if fast:
        data["apps"]["oam_ecmp"] = {"probe_rate": 1000, "switch_rate": 5000}
        data["controller"].update(rate_limit=5000, burst_limit=1000)
    return label, data


def measure(entry, i: int, repeat: int, fast: bool, workdir: Path) -> dict:
    label, data = spec(entry, i, fast)
    path = workdir / f"{data['lab']['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.monotonic()
    lab = Lab.up(path, controller=True, timeout=900, rundir=workdir / "run")
    up_s = time.monotonic() - t0
    try:
        converged(lab.rest_url)
        runs = [call(f"{lab.rest_url}/v1/oam/ecmp/verify", {}) for _ in range(repeat)]
    finally:
        lab.down()
    last = runs[-1]
    t = last["totals"]
    topo_links = sum(1 for ln in data["links"] if not str(ln["a"]).startswith("h"))
    return {"fabric": label, "switches": len(data["switches"]), "links": topo_links,
            "pairs": t["pairs"], "paths": t["expected_paths"],
            "verify_s": statistics.median(r["timing"]["total_s"] for r in runs),
            "probe_s": statistics.median(r["timing"]["probe_s"] for r in runs),
            "probes": t["probes"], "reprobed": sum(r["totals"].get("reprobed", 0) for r in runs),
            "copies": t["copies"], "reports": t["reports"],
            "mda": t["mda_probes"], "mda_branching": t["mda_branching_probes"], "ratio": t["mda_ratio"],
            "clean": all(r["totals"]["ok"] == r["totals"]["pairs"] and not r["findings"] for r in runs),
            "notes": sorted({n for r in runs for n in r.get("notes", [])}), "lab_up_s": round(up_s, 1)}


def table(rows: list[dict]) -> str:
    heads = ["fabric", "switches", "links", "leaf pairs", "paths", "verify s", "probe s", "probes", "re-probed",
             "copies", "reports", "MDA probes", "MDA branching only", "ratio", "clean", "lab up s"]
    keys = ["fabric", "switches", "links", "pairs", "paths", "verify_s", "probe_s", "probes", "reprobed", "copies",
            "reports", "mda", "mda_branching", "ratio", "clean", "lab_up_s"]
    cells = [heads] + [[f"{r[k]:.3f}" if isinstance(r[k], float) and k.endswith("_s") and k != "lab_up_s"
                        else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) + 2 for i in range(len(heads))]
    return "\n".join("".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/oam_ecmp.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="raise the probe pacing and packet-in limits")
    args = ap.parse_args(argv)
    if args.fast:
        os.environ["FABRIC_PACKET_IN_RATE"] = "1000"  # the controller inherits it (config.get reads FABRIC_*)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="oam-bench-") as tmp:
        for i, entry in enumerate(PRESETS[args.preset]):
            try:
                row = measure(entry, i, args.repeat, args.fast, Path(tmp))
            except (LabError, RuntimeError, OSError) as exc:
                print(f"{entry}: failed: {exc}", file=sys.stderr)
                break
            rows.append(row)
            print(f"  {row['fabric']}: {row['pairs']} pairs in {row['verify_s']:.3f} s, clean={row['clean']}"
                  + (f" notes: {row['notes']}" if row["notes"] else ""), file=sys.stderr, flush=True)
    print(f"OAM ECMP verification of every leaf pair (median of {args.repeat} runs; "
          f"{'--fast pacing' if args.fast else 'default pacing: probe_rate 300/s'})")
    print(table(rows))
    clean = [r for r in rows if r["clean"]]
    if clean:
        big = max(clean, key=lambda r: (r["paths"], r["switches"]))
        print(f"largest fabric verified cleanly: {big['fabric']} ({big['switches']} switches, {big['pairs']} "
              f"leaf pairs, {big['paths']} paths) in {big['verify_s']:.2f} s")
        small = min(clean, key=lambda r: r["pairs"])
        if big is not small:
            print(f"growth: {big['pairs'] / small['pairs']:.0f}x the leaf pairs and "
                  f"{big['paths'] / small['paths']:.0f}x the paths took {big['verify_s'] / small['verify_s']:.1f}x "
                  f"the time ({1000 * small['verify_s'] / small['pairs']:.1f} -> "
                  f"{1000 * big['verify_s'] / big['pairs']:.1f} ms per pair); probe copies grow with the paths, "
                  f"MDA probes {big['mda'] / small['mda']:.0f}x")
    return 0 if rows and all(r["clean"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
