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
import warnings

# os-ken runs on eventlet, which warns on import that it is deprecated: os-ken's choice, not
# the user's, and a dozen lines at the top of every controller log
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from ryu_apps.framework import config  # noqa: E402


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
    try:
        manager.main(args=args, prog="ryu-manager")
    except Exception as exc:
        # (imported only now: manager.main monkey-patches threads, and eventlet's patcher walks
        # every live object; pydantic models imported before it made it print a traceback)
        from ryu_apps.framework.rest import RestConfigError

        if not isinstance(exc, RestConfigError):
            raise
        print(f"ryu-manager: {exc}", file=sys.stderr, flush=True)  # one line naming the option
        os._exit(2)  # green threads (OpenFlow listener) must not keep the process alive


if __name__ == "__main__":
    main()
