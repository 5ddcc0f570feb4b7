"""Run the unit tests, then each integration module in its own pytest process.

Why separate processes: a module that loads os-ken in-process gets eventlet's
monkey-patching, after which another module's plain threads (an HTTP server in
a thread, say) can stall.  Prints each run's output and a closing total line
``total: N passed, M failed, K skipped``; exits non-zero if any run failed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    extra = argv
    runs = [["tests/unit"]] + [[str(p.relative_to(ROOT))] for p in sorted((ROOT / "tests/integration").glob("test_*.py"))]
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    bad = []
    start = time.monotonic()
    for target in runs:
        print(f"== {' '.join(target)}", flush=True)
        proc = subprocess.Popen([sys.executable, "-m", "pytest", *target, "-q", "-p", "no:cacheprovider", *extra],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last = ""
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if re.search(r"\d+ (passed|failed|skipped|error)", line):
                last = line
        rc = proc.wait()
        for key, word in (("passed", "passed"), ("failed", "failed"), ("skipped", "skipped"), ("errors", "error")):
            m = re.search(rf"(\d+) {word}", last)
            if m:
                totals[key] += int(m.group(1))
        if rc not in (0, 5):
            bad.append(f"{' '.join(target)} (exit {rc})")
    failed = totals["failed"] + totals["errors"]
    print(f"\n{len(runs)} pytest runs in {time.monotonic() - start:.0f} s" + (f"; failing: {', '.join(bad)}" if bad else ""))
    print(f"total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
