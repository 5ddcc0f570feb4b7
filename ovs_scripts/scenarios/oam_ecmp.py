"""Demo scenarios of the OAM ECMP app: verify every leaf pair, inject faults, see them classified.

``python -m ovs_scripts.demo oam_ecmp oam_ecmp_fattree`` (part of ``make demo``).
"""

from __future__ import annotations

import time

from ovs_scripts import kit
from ovs_scripts import oam_ecmp_faults as faults
from ovs_scripts.demo import (
    Check,
    port_tx_packets,
    scenario,
    start_server,
    tcp,
    tcp_detail,
)
from ovs_scripts.lab import Lab
from ryu_apps.functions.oam_ecmp import model


def _verify(lab: Lab, **body) -> dict:
    return kit.rest(lab, "POST", "/v1/oam/ecmp/verify", body, timeout=120).expect()


def _get(lab: Lab, path: str):
    return kit.rest(lab, "GET", path).expect()


def _converged(lab: Lab, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gen = _get(lab, "/v1/health")["generation"]
        time.sleep(0.1)
        h = _get(lab, "/v1/health")
        if h["all_synced"] and h["generation"] == gen:
            return


def _classes(report: dict) -> dict[str, set]:
    out: dict[str, set] = {}
    for f in report["findings"]:
        out.setdefault(f["class"], set()).add((f.get("switch"), f.get("port")))
    return out


def _summary(report: dict) -> str:
    t = report["totals"]
    return (f"{t['ok']}/{t['pairs']} pairs ok; {t['probes']} probes, {t['copies']} copies, {t['reports']} reports "
            f"in {report['timing']['total_s']:.2f} s")


def _healthy(report: dict) -> bool:
    return report["totals"]["ok"] == report["totals"]["pairs"] and not report["findings"] and all(
        p["observed"] == p["expected"] for p in report["pairs"])


@scenario("oam_ecmp", "oam_ecmp_leafspine.yaml")
def oam_ecmp(lab: Lab, check: Check) -> None:
    """4x3 leaf-spine: probes (IPv4 and IPv6 data packets of each pair) verify every leaf pair; ten injected
    faults found and classified"""
    report = _verify(lab)
    check("healthy fabric: every leaf pair took exactly its 3 expected ECMP paths", _healthy(report),
          _summary(report))
    t = report["totals"]
    check.note(f"{t['pairs']} pairs verified with {t['probes']} probes; Paris-traceroute MDA would need "
               f"{t['mda_probes']} probes at 95 % ({t['mda_ratio']}x)")

    cases = [
        ("a bucket removed from l1's select group",
         lambda: faults.remove_bucket(lab, "l1", "l2", 13), model.MISSING, ("l1", 13)),
        ("l1 port 12 silently drops (bucket still points at it)",
         lambda: faults.drop_port(lab, "l1", 12), model.BLACK_HOLE, ("l1", 12)),
        ("s1 gets a bucket towards l3 for l2's traffic (longer path)",
         lambda: faults.add_bucket(lab, "s1", "l2", 3), model.SUBOPTIMAL, ("s1", 3)),
        ("l1's bucket for s3 points at host h1's port",
         lambda: faults.redirect_bucket(lab, "l1", "l2", 13, 1), model.BLACK_HOLE, ("l1", 1)),
        ("traffic for l2 loops s1>l3>s2>l4>s1",
         lambda: faults.make_loop(lab, "l2", ["s1", "l3", "s2", "l4"]), model.LOOP, ("s1", 3)),
        ("link s3-l2 cut", lambda: faults.cut_link(lab, "s3", "l2"), model.MISSING, ("l1", 13)),
        # faults behind the forward table's back (issue 9 section 3): traffic suffers, so must the probes
        ("s2 drops l2's traffic in table 0",
         lambda: faults.drop_at_ingress(lab, "s2", "l2"), model.BLACK_HOLE, ("l1", 12)),
        ("s2 drops l2's traffic from l1 only (a route scoped by in_port)",
         lambda: faults.drop_from_port(lab, "s2", "l2", 1), model.BLACK_HOLE, ("l1", 12)),
        ("s2's IPv4 route to l2 deleted",
         lambda: faults.delete_route(lab, "s2", "l2", 4), model.BLACK_HOLE, ("l1", 12)),
        ("l1's bucket for s3 gets weight 0 (OVS never picks it)",
         lambda: faults.zero_weight(lab, "l1", "l2", 13), model.MISSING, ("l1", 13)),
    ]
    for what, inject, cls, where in cases:
        fault = inject()
        if fault.kind == "cut_link":
            time.sleep(0.3)
            _converged(lab)
        report = _verify(lab, settle=1.0)
        got = _classes(report)
        first = next((f for f in report["findings"] if f["class"] == cls and (f["switch"], f["port"]) == where),
                     None)
        check(f"fault: {what} -> {cls} at {where[0]} port {where[1]}", first is not None,
              (first["detail"][:150] if first else f"found {sorted(got)}") + f"; {_summary(report)}")
        faults.heal(lab, [fault])
        time.sleep(0.3)
        _converged(lab)
    report = _verify(lab)
    check("after healing: every pair exactly its expected paths again", _healthy(report), _summary(report))

    # normal traffic still hashes over the select group's members
    start_server(lab, "h2")
    before = {p: port_tx_packets(lab, "l1", p) for p in (11, 12, 13)}
    res = tcp(lab, "h1", "fd00:6:2::1", flows=45, nbytes=500)
    used = {p: port_tx_packets(lab, "l1", p) - before[p] for p in (11, 12, 13)}
    check("normal traffic: 45 TCP flows h1 -> h2 spread over all 3 uplinks of l1",
          res.get("ok") == 45 and all(n > 15 for n in used.values()),
          tcp_detail(res, 45, 500) + f"; tx +{used[11]}/+{used[12]}/+{used[13]} pkts")
    check.note("report table of the last run:\n" + model.render_table(report).split("findings:")[0].rstrip())


@scenario("oam_ecmp_fattree", "oam_ecmp_fattree.yaml")
def oam_ecmp_fattree(lab: Lab, check: Check) -> None:
    """k=4 fat-tree (20 switches): every edge pair verified, a removed aggregation bucket found"""
    report = _verify(lab)
    check("healthy fat-tree: 56 edge pairs x 2 address families, 2 paths within a pod, 4 across", _healthy(report)
          and report["totals"]["pairs"] == 112, _summary(report))
    t = report["totals"]
    check.note(f"MDA would need {t['mda_probes']} probes for the same path sets ({t['mda_ratio']}x)")
    fault = faults.remove_bucket(lab, "a11", "e21", 12)
    report = _verify(lab, settle=1.0)
    hits = {tuple(f["pair"]) for f in report["findings"] if f["class"] == model.MISSING and f["switch"] == "a11"}
    # a11's next-hop group towards e21 (one group per destination switch): both pod-1 edges' traffic
    # to e21 crosses a11 and misses the member; traffic to every other edge uses other groups
    want = {("e11", "e21"), ("e12", "e21")}
    found = sorted({(f["class"], f["switch"], f["port"], tuple(f["pair"])) for f in report["findings"]})
    check("a11 loses its bucket to c2 towards e21: both pod-1 edges' pairs to e21 miss that member, no other pair",
          want <= hits and not hits - want and all(tuple(f["pair"]) in want for f in report["findings"]),
          _summary(report) + f"; found {found[:12]}")
    faults.heal(lab, [fault])
