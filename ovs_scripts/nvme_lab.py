"""NVMe/TCP in a lab: the host tool run in a host's namespace, background I/O, the target's Connect log.

Shared by ``tests/integration/test_nvme_zoning.py``, the ``nvme_zoning`` demo scenario and
``bench/nvme_zoning.py``: everything runs in the lab's namespaces, nothing in the root one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

PY = sys.executable

#: keeps I/O going over N queues until it fails or is told to stop (SIGTERM); one JSON line at the end
IO_LOOP = r"""
import json, os, signal, sys, time
from ovs_scripts.nvme_host import NvmeHost
addr, port, hostnqn, subnqn, queues, base = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    int(sys.argv[5]), int(sys.argv[6])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
ops, err, t_err = 0, None, None
data = os.urandom(64 * 1024)
try:
    ctrl = NvmeHost(addr, port, hostnqn, timeout=5).connect(subnqn, io_queues=queues)
    print(json.dumps({"connected": time.time()}), flush=True)
    while not stop:
        ctrl.write(base + ops % 64 * 128, data)
        assert ctrl.read(base + ops % 64 * 128, 128) == data, "read back differs"
        ops += 1
except Exception as exc:
    err, t_err = f"{type(exc).__name__}: {exc}", time.time()
print(json.dumps({"ops": ops, "error": err, "t_error": t_err}), flush=True)
"""


def host_tool(lab, host: str, *args: str, timeout: float = 120) -> dict | list:
    """``python -m ovs_scripts.nvme_host ARGS`` in ``host``'s namespace: its JSON (errors too)."""
    cp = lab.exec(host, [PY, "-m", "ovs_scripts.nvme_host", *args], check=False, timeout=timeout)
    try:
        return json.loads(cp.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"nvme_host {args} on {host}: rc {cp.returncode}: {cp.stdout} {cp.stderr}") from None


def target_connects(lab, target: str = "t1") -> list[dict]:
    """Every Connect the lab's target on ``target`` received, oldest first (from its log)."""
    path = lab.dir / f"nvme-{target}.log"
    out = []
    for ln in (path.read_text() if path.exists() else "").splitlines():
        if " connect {" in ln:
            out.append(json.loads(ln.split(" connect ", 1)[1]))
    return out


class IoLoop:
    """I/O from ``host`` to ``subnqn`` in the background (64 KiB writes, each read back);
    :meth:`result` stops it, or reports how it failed."""

    def __init__(self, lab, host: str, hostnqn: str, subnqn: str, addr: str, port: int = 4420, queues: int = 4,
                 base_lba: int = 0):
        self.proc = lab.popen(host, [PY, "-c", IO_LOOP, addr, str(port), hostnqn, subnqn, str(queues),
                                     str(base_lba)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        if not first.startswith('{"connected"'):
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise RuntimeError(f"I/O from {host} to {subnqn} did not start: {first} {err}")
        self.connected = json.loads(first)["connected"]

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float = 10) -> dict:
        """{"ops", "error", "t_error"}: stopped now if it still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])
