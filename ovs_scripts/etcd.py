"""An etcd cluster on loopback for a lab's controller cluster (Debian's ``etcd-server``).

Member ``i`` listens for clients on ``127.0.0.1:<base + 2i>`` and for its peers on
``<base + 2i + 1>``; its data lives in ``<lab dir>/etcd/m<i>`` (removed by ``ovslab
down`` with the run directory).  Raft is tuned for a loopback cluster: heartbeat
50 ms, election timeout 500 ms, so a lease's TTL can be 1-2 s and a dead controller
instance is replaced within about that (etcd's default, 100/1000 ms, would make
the shortest usable TTL 2 s).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

HEARTBEAT_MS = 50
ELECTION_MS = 500


def client_port(base: int, i: int) -> int:
    return base + 2 * i


def peer_port(base: int, i: int) -> int:
    return base + 2 * i + 1


def endpoints(base: int, members: int) -> list[str]:
    """``host:port`` client endpoints of the members (what ``--fabric-etcd-endpoints`` takes)."""
    return [f"127.0.0.1:{client_port(base, i)}" for i in range(members)]


def member_command(name: str, base: int, i: int, members: int, data_dir: Path, token: str,
                   state: str = "new") -> list[str]:
    """The ``etcd`` command line of member ``i`` (of ``members``)."""
    if shutil.which("etcd") is None:
        raise FileNotFoundError("etcd (Debian package etcd-server) is not installed")
    cluster = ",".join(f"{name}-m{j}=http://127.0.0.1:{peer_port(base, j)}" for j in range(members))
    client, peer = f"http://127.0.0.1:{client_port(base, i)}", f"http://127.0.0.1:{peer_port(base, i)}"
    return ["etcd", "--name", f"{name}-m{i}", "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", token,
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
            "--logger", "zap", "--log-level", "warn",
            # the lab's history is short-lived: keep an hour of revisions, then compact
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]


def healthy(endpoint: str, timeout: float = 1.0) -> tuple[bool, str]:
    """Does this member answer ``/health`` with ``"health": "true"`` (it has a leader and quorum)?"""
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=timeout) as resp:
            data = json.loads(resp.read().decode())
        return data.get("health") in (True, "true"), json.dumps(data)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))


def wait_healthy(eps: list[str], timeout: float = 20.0) -> None:
    """Wait until every member in ``eps`` is healthy; TimeoutError names the ones that are not."""
    deadline = time.monotonic() + timeout
    while True:
        bad = {}
        for ep in eps:
            ok, why = healthy(ep)
            if not ok:
                bad[ep] = why
        if not bad:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"etcd not healthy after {timeout:g} s: {bad}")
        time.sleep(0.1)
