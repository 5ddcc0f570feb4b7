"""The layers the README's architecture section draws, enforced: ``lint-imports`` with the
contracts in pyproject.toml (the product never imports the lab, the framework never imports a
function, function packages and the codec never import os-ken, app.py never imports core.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
