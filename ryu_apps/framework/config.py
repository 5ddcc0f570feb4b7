"""Controller options, registered on os-ken's global CONF.

Registered as command-line options when the process starts through
``ryu-manager`` / ``python -m ryu_apps.manager`` (they are known before the
command line is parsed).  Under plain ``osken-manager`` the same options are
read from ``--config-file`` (section ``[fabric]``) or from the environment
(``FABRIC_TOPOLOGY``, ``FABRIC_REST_PORT``, ...), because os-ken imports apps
only after it has parsed its command line.
"""

from __future__ import annotations

import os

from os_ken import cfg as osken_cfg
from oslo_config import cfg

CONF = osken_cfg.CONF

OPTS = [
    cfg.StrOpt("topology", help="lab topology YAML (switches, hosts, links, app intent)"),
    cfg.StrOpt("rest-host", default="127.0.0.1", help="REST API listen address (loopback by default)"),
    cfg.IntOpt("rest-port", default=8080, help="REST API listen port (0 disables the API)"),
    cfg.StrOpt("rest-token-file",
               help="file holding the REST token: writes (and, off loopback, reads) need "
                    "'Authorization: Bearer <token>'; required when rest-host is not loopback"),
    cfg.StrOpt("rest-cert", help="PEM certificate (chain) for HTTPS on the REST API (with rest-key)"),
    cfg.StrOpt("rest-key", help="PEM private key of rest-cert"),
    cfg.StrOpt("state-dir", help="where apps persist intent changed through REST"),
    cfg.FloatOpt("audit-interval", min=0,
                 help="seconds between audits of each switch (re-read, repair drift); 0 disables; "
                      "default: the topology's controller.audit_interval"),
    cfg.StrOpt("store", default="local", choices=["local", "etcd"],
               help="where intent and learned state live: local (the state dir) or etcd (a controller "
                    "cluster; every instance points at the same etcd and cluster id)"),
    cfg.StrOpt("etcd-endpoints", default="127.0.0.1:2379",
               help="comma-separated host:port client URLs of the etcd cluster (store=etcd)"),
    cfg.StrOpt("cluster-id", default="default", help="key prefix of this controller cluster in etcd"),
    cfg.StrOpt("member-id", help="this instance's name in the cluster (default: host name and pid)"),
    cfg.IntOpt("lease-ttl", default=2, min=1,
               help="seconds a dead instance keeps its switches (its etcd lease's TTL)"),
    cfg.IntOpt("packet-in-rate", default=200,
               help="packet-ins per second handled per switch; the rest are dropped and counted"),
]

ECHO_INTERVAL = 1.0  # seconds between echo requests to each switch
ECHO_MISSES = 4      # unanswered echo requests tolerated before the channel is closed

_registered = False


def register(cli: bool = False) -> None:
    """Register the [fabric] options (as CLI options when ``cli`` is set)."""
    global _registered
    if _registered:
        return
    from os_ken.base import app_manager  # noqa: F401  (os-ken's import order)
    from os_ken.controller import controller  # noqa: F401  registers ofp-listen-host

    group = cfg.OptGroup("fabric", title="fabric controller options")
    CONF.register_group(group)
    if cli:
        CONF.register_cli_opts(OPTS, group=group)
    else:
        CONF.register_opts(OPTS, group=group)
    # Loopback unless the operator asks otherwise: the OpenFlow parser can be
    # stalled by anyone who reaches the port (see README, "Hardening").
    CONF.set_default("ofp_listen_host", "127.0.0.1")
    # Echo keepalives (off in os-ken by default): a channel that stops answering is closed
    # after ECHO_INTERVAL * (ECHO_MISSES + 1) seconds, so a frozen switch is noticed and its
    # own reconnect is admitted (see ryu_apps/framework/admission.py).
    CONF.set_default("echo_request_interval", ECHO_INTERVAL)
    CONF.set_default("maximum_unreplied_echo_requests", ECHO_MISSES)
    _registered = True


def get(name: str):
    """A [fabric] option; FABRIC_<NAME> in the environment applies when it was not set."""
    register()
    attr = name.replace("-", "_")
    value = getattr(CONF.fabric, attr)
    default = {o.dest: o.default for o in OPTS}[attr]
    env = os.environ.get("FABRIC_" + attr.upper())
    if env is not None and value == default:
        return int(env) if isinstance(default, int) else env
    return value
