"""``ryu-manager`` starts clean: a user's first look at the controller log is its apps loading,
not a traceback (eventlet's patcher tripped over pydantic models imported before it) or a
dozen lines of eventlet's deprecation notice."""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_controller_starts_without_a_traceback(tmp_path):
    argv = [sys.executable, "-m", "ryu_apps.manager", "--fabric-topology", str(ROOT / "topologies" / "chain3.yaml"),
            "--fabric-rest-port", str(free_port()), "--ofp-tcp-listen-port", str(free_port()),
            "--fabric-state-dir", str(tmp_path), "ryu_apps.fabric"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("REST API on" in ln for ln in out):
            if sel.select(timeout=1):
                line = proc.stdout.readline()
                if not line:
                    break
                out.append(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = "".join(out)
    assert "REST API on" in text, text
    assert "Traceback" not in text and "Exception" not in text, text
    assert "Eventlet is deprecated" not in text, text
