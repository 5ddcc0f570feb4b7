"""Run the unit tests and each integration module in its own pytest process.

Why separate processes: a module that loads os-ken in-process gets eventlet's
monkey-patching, after which another module's plain threads (an HTTP server in
a thread, say) can stall.

Two phases, to keep ``make test`` well under 20 minutes on 2 cores:

1. :data:`SIDE_BY_SIDE`: the unit tests and the integration modules whose checks
   are about what happens, not how fast (no time bound in their assertions), two
   processes at a time; each one's output is printed when it ends.
2. every other integration module alone, its output streamed: failover times,
   outages and rates are measured on an otherwise idle machine.

Prints a closing total line ``total: N passed, M failed, K skipped``; exits
non-zero if any run failed.  ``--serial`` runs everything one at a time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: no assertion of theirs depends on timing: they may share the machine with one other run
SIDE_BY_SIDE = ("tests/unit", "tests/integration/test_flowdump.py", "tests/integration/test_lab.py",
                "tests/integration/test_tls.py", "tests/integration/test_fenced_clone_nd.py",
                "tests/integration/test_simulator_trace.py",
                "tests/integration/test_simulator_trace_cloud_router.py",
                "tests/integration/test_simulator_trace_fenced_clone.py",
                "tests/integration/test_simulator_trace_multicast_standby.py",
                "tests/integration/test_simulator_trace_oam_ecmp.py",
                "tests/integration/test_nvme_peers.py", "tests/integration/test_demo.py",
                "tests/integration/test_fabric.py", "tests/integration/test_control_channel.py",
                "tests/integration/test_manager_start.py", "tests/integration/test_operator_surface.py",
                "tests/integration/test_rest_hardening.py")
WORKERS = 2


def _pytest(target: str, extra: list[str], stream: bool) -> tuple[int, str]:
    """Run pytest on ``target``; (exit code, its last summary line).  Output streamed or printed at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, last = [], ""
    for line in proc.stdout:
        if stream:
            sys.stdout.write(line)
            sys.stdout.flush()
        else:
            lines.append(line)
        if re.search(r"\d+ (passed|failed|skipped|error)", line):
            last = line
    rc = proc.wait()
    if not stream:
        sys.stdout.write(f"== {target}\n{''.join(lines)}")
        sys.stdout.flush()
    return rc, last


def main(argv: list[str]) -> int:
    serial = "--serial" in argv
    extra = [a for a in argv if a != "--serial"]
    integration = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests/integration").glob("test_*.py"))]
    together = [t for t in ("tests/unit", *integration) if t in SIDE_BY_SIDE and not serial]
    alone = [t for t in ("tests/unit", *integration) if t not in together]
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    bad = []
    start = time.monotonic()

    def account(target: str, rc: int, last: str) -> None:
        for key, word in (("passed", "passed"), ("failed", "failed"), ("skipped", "skipped"), ("errors", "error")):
            m = re.search(rf"(\d+) {word}", last)
            if m:
                totals[key] += int(m.group(1))
        if rc not in (0, 5):
            bad.append(f"{target} (exit {rc})")

    if together:
        print(f"== side by side, {WORKERS} at a time: {', '.join(together)}", flush=True)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for target, (rc, last) in zip(together, pool.map(lambda t: _pytest(t, extra, False), together)):
                account(target, rc, last)
    for target in alone:
        print(f"== {target}", flush=True)
        account(target, *_pytest(target, extra, True))
    failed = totals["failed"] + totals["errors"]
    runs = len(together) + len(alone)
    print(f"\n{runs} pytest runs in {time.monotonic() - start:.0f} s" + (f"; failing: {', '.join(bad)}" if bad else ""))
    print(f"total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
