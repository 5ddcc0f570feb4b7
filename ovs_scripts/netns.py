"""Thin wrappers over ``ip``, ``sysctl`` and ``ethtool`` for the lab builder.

Every function runs one command and raises :class:`CommandError` (naming the
command and its stderr) when it fails.  ``netns=None`` means the namespace of
the calling process; the lab itself never puts anything there, see
:mod:`ovs_scripts.lab`.

The ``*_exists`` / ``*_if_exists`` helpers make teardown idempotent: they
tolerate objects that are already gone.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence


class CommandError(RuntimeError):
    """A command failed; the message names the command and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"`{shlex.join(self.argv)}` failed (exit {returncode}): {self.stderr or 'no error output'}")


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command, capture its output; raise CommandError if ``check`` and it fails."""
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input, env=env)
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, -1, f"timed out after {timeout} s") from exc
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stderr or cp.stdout)
    return cp


def _ip(netns: str | None) -> list[str]:
    return ["ip", "-n", netns] if netns else ["ip"]


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so it runs inside ``netns`` (unchanged for None)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


# --- namespaces -----------------------------------------------------------------


def list_netns() -> list[str]:
    out = run(["ip", "-j", "netns", "list"]).stdout.strip()
    return [n["name"] for n in json.loads(out)] if out else []


def netns_exists(name: str) -> bool:
    return name in list_netns()


def add_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    link_up("lo", netns=name)


def del_netns_if_exists(name: str) -> bool:
    if not netns_exists(name):
        return False
    run(["ip", "netns", "del", name])
    return True


def netns_pids(name: str) -> list[int]:
    cp = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in cp.stdout.split()] if cp.returncode == 0 else []


def sysctl(netns: str | None, key: str | dict, value: str | int | None = None) -> None:
    """``sysctl -w key=value`` inside ``netns``; ``key`` may be a dict of several settings."""
    pairs = key if isinstance(key, dict) else {key: value}
    run(in_netns(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in pairs.items())]))


# --- links ----------------------------------------------------------------------


def list_links(netns: str | None = None) -> list[str]:
    cp = run([*_ip(netns), "-j", "link", "show"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return []
    return [l["ifname"] for l in json.loads(cp.stdout)]


def link_exists(name: str, netns: str | None = None) -> bool:
    return run([*_ip(netns), "link", "show", "dev", name], check=False).returncode == 0


def link_state(name: str, netns: str | None = None) -> dict | None:
    """``{"up": bool, "carrier": bool, "mtu": int, "mac": str}`` or None if missing."""
    cp = run([*_ip(netns), "-j", "link", "show", "dev", name], check=False)
    if cp.returncode != 0:
        return None
    info = json.loads(cp.stdout)[0]
    flags = info.get("flags", [])
    return {"up": "UP" in flags, "carrier": "LOWER_UP" in flags, "mtu": info.get("mtu"),
            "mac": info.get("address")}


def add_veth(name: str, peer: str, *, netns: str | None = None, peer_netns: str | None = None,
             mac: str | None = None, peer_mac: str | None = None) -> None:
    """Create a veth pair with each end directly in its namespace (never passing through ours)."""
    argv = [*_ip(None), "link", "add", name]
    if mac:
        argv += ["address", mac]
    if netns:
        argv += ["netns", netns]
    argv += ["type", "veth", "peer", "name", peer]
    if peer_mac:
        argv += ["address", peer_mac]
    if peer_netns:
        argv += ["netns", peer_netns]
    run(argv)


def add_bridge(name: str, netns: str | None = None) -> None:
    run([*_ip(netns), "link", "add", name, "type", "bridge"])


def del_link_if_exists(name: str, netns: str | None = None) -> bool:
    if netns and not netns_exists(netns):
        return False
    if not link_exists(name, netns):
        return False
    cp = run([*_ip(netns), "link", "del", "dev", name], check=False)
    if cp.returncode != 0 and link_exists(name, netns):
        raise CommandError([*_ip(netns), "link", "del", "dev", name], cp.returncode, cp.stderr)
    return True


def set_link(name: str, netns: str | None = None, **attrs: str | int) -> None:
    """``ip link set dev NAME k v ...`` (``master=ul0``, ``mtu=9000``, ``address=...``)."""
    argv = [*_ip(netns), "link", "set", "dev", name]
    for k, v in attrs.items():
        argv += [k, str(v)]
    run(argv)


def link_up(name: str, netns: str | None = None) -> None:
    run([*_ip(netns), "link", "set", "dev", name, "up"])


def link_down(name: str, netns: str | None = None) -> None:
    run([*_ip(netns), "link", "set", "dev", name, "down"])


def rename_link(name: str, new: str, netns: str | None = None) -> None:
    run([*_ip(netns), "link", "set", "dev", name, "name", new])


def move_link(name: str, netns: str, from_netns: str | None = None) -> None:
    run([*_ip(from_netns), "link", "set", "dev", name, "netns", netns])


def disable_ipv6(name: str, netns: str | None = None) -> None:
    sysctl(netns, f"net.ipv6.conf.{name}.disable_ipv6", 1)


def tx_checksum_off(name: str, netns: str | None = None) -> None:
    """``ethtool -K NAME tx off``: TCP through the userspace datapath needs full checksums."""
    run(in_netns(netns, ["ethtool", "-K", name, "tx", "off"]))


# --- addresses and routes -------------------------------------------------------


def add_addr(name: str, cidr: str, netns: str | None = None, *, nodad: bool = False) -> None:
    argv = [*_ip(netns), "addr", "add", cidr, "dev", name]
    if nodad:
        argv.append("nodad")
    run(argv)


def add_route(dest: str, via: str, netns: str | None = None, *, dev: str | None = None) -> None:
    family = ["-6"] if ":" in via else ["-4"]
    argv = ["ip", *family, *(["-n", netns] if netns else []), "route", "add", dest, "via", via]
    if dev:
        argv += ["dev", dev]
    run(argv)
