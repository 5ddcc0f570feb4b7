"""``ryu-manager``: os-ken's ``osken-manager`` with the fabric options known up front.

Ryu users keep their habit::

    ryu-manager --fabric-topology topologies/diamond.yaml ryu_apps/fabric.py

is ``osken-manager`` plus ``--fabric-*`` options on the command line, the
OpenFlow listener on 127.0.0.1:6653 by default, and app arguments that may be
file paths (``ryu_apps/fabric.py``) or module names (``ryu_apps.fabric``).
"""

from __future__ import annotations

import os
import sys

from ryu_apps.framework import config


def controller_command(topology_path: str, apps: list[str], *, of_port: int = 6653, rest_port: int = 8080,
                       state_dir: str | None = None, log_file: str | None = None, rest_host: str | None = None,
                       rest_token_file: str | None = None, rest_cert: str | None = None,
                       rest_key: str | None = None) -> list[str]:
    """The command line that starts the controller for a lab."""
    cmd = [sys.executable, "-m", "ryu_apps.manager",
           "--ofp-tcp-listen-port", str(of_port),
           "--fabric-topology", str(topology_path),
           "--fabric-rest-port", str(rest_port)]
    for option, value in (("state-dir", state_dir), ("rest-host", rest_host), ("rest-token-file", rest_token_file),
                          ("rest-cert", rest_cert), ("rest-key", rest_key)):
        if value:
            cmd += [f"--fabric-{option}", str(value)]
    if log_file:
        cmd += ["--log-file", str(log_file)]
    # a name is a fabric app in ryu_apps/ (``fabric``), a dotted module (a lab app) is taken as is
    return cmd + [app if "." in app else f"ryu_apps.{app}" for app in apps]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``ryu-manager`` and ``python -m ryu_apps.manager``."""
    config.register(cli=True)
    from os_ken.cmd import manager

    args = list(sys.argv[1:] if argv is None else argv)
    if "--ofp-tcp-listen-port" not in " ".join(args):
        args = ["--ofp-tcp-listen-port", "6653"] + args
    from ryu_apps.framework.rest import RestConfigError

    try:
        manager.main(args=args, prog="ryu-manager")
    except RestConfigError as exc:  # REST refused to start: one line naming the option, not a traceback
        print(f"ryu-manager: {exc}", file=sys.stderr, flush=True)
        os._exit(2)  # green threads (OpenFlow listener) must not keep the process alive


if __name__ == "__main__":
    main()
