"""``ryu-manager``: os-ken's ``osken-manager`` with the fabric options known up front.

Ryu users keep their habit::

    ryu-manager --fabric-topology topologies/diamond.yaml ryu_apps/fabric.py

is ``osken-manager`` plus ``--fabric-*`` options on the command line, the
OpenFlow listener on 127.0.0.1:6653 by default, and app arguments that may be
file paths (``ryu_apps/fabric.py``) or module names (``ryu_apps.fabric``).
"""

from __future__ import annotations

import sys

from ryu_apps.lib import config


def controller_command(topology_path: str, apps: list[str], *, of_port: int = 6653, rest_port: int = 8080,
                       state_dir: str | None = None, log_file: str | None = None) -> list[str]:
    """The command line that starts the controller for a lab."""
    cmd = [sys.executable, "-m", "ryu_apps.manager",
           "--ofp-tcp-listen-port", str(of_port),
           "--fabric-topology", str(topology_path),
           "--fabric-rest-port", str(rest_port)]
    if state_dir:
        cmd += ["--fabric-state-dir", str(state_dir)]
    if log_file:
        cmd += ["--log-file", str(log_file)]
    return cmd + [f"ryu_apps.{app}" for app in apps]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``ryu-manager`` and ``python -m ryu_apps.manager``."""
    config.register(cli=True)
    from os_ken.cmd import manager

    args = list(sys.argv[1:] if argv is None else argv)
    if "--ofp-tcp-listen-port" not in " ".join(args):
        args = ["--ofp-tcp-listen-port", "6653"] + args
    manager.main(args=args, prog="ryu-manager")


if __name__ == "__main__":
    main()
