"""OVSDB access for the lab, through ovsdbapp only.

Every write is an ovsdbapp transaction built from idempotent verbs
(``add_br``, ``add_port``, ``db_set``, ``db_create``) and committed in one
piece, one transaction per bridge with all its settings.  Readiness is read
back through ovsdbapp (``Interface.ofport``) instead of sleeping.

Two ovsdbapp details this module designs around:

* ``ovsdbapp.backend.ovs_idl.Backend`` keeps its connection in a *class*
  attribute that is set once: a second ``impl_idl.OvsdbIdl(...)`` in the same
  process silently talks to the first server.  :class:`Ovsdb` therefore makes
  a fresh subclass per connection.
* ``impl_idl``'s vsctl-style transaction increments ``Open_vSwitch.next_cfg``
  and needs the root row, which a fresh ``ovsdb-tool create`` database does
  not have.  :meth:`Ovsdb.init_root` creates it with ovsdbapp's plain
  :class:`~ovsdbapp.backend.ovs_idl.transaction.Transaction` (no next_cfg).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

# python-ovs imports eventlet (if installed) only to detect monkey patching;
# eventlet >= 0.37 warns on import.  Not ours to act on.
warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.backend.ovs_idl import transaction as ovs_transaction
from ovsdbapp.schema.open_vswitch import impl_idl

# ovsdbapp logs failed post-commit checks as tracebacks; the lab reports
# problems itself (wait_ofports), so keep library logging off the terminal.
for _name in ("ovsdbapp", "ovs"):
    logging.getLogger(_name).addHandler(logging.NullHandler())
    logging.getLogger(_name).propagate = False


class OvsdbError(RuntimeError):
    """An OVSDB operation failed or did not finish in time."""


@dataclass(frozen=True)
class PortConfig:
    """One port (with its single interface) on a bridge."""

    name: str
    ofport: int | None = None  # ofport_request
    type: str = ""  # "" (system/veth), internal, vxlan, geneve
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BridgeConfig:
    """Everything the lab sets on one bridge, committed in one transaction."""

    name: str
    datapath_type: str = "netdev"
    dpid: int | None = None
    fail_mode: str = "secure"
    protocols: tuple[str, ...] = ("OpenFlow13",)
    # target, e.g. unix:/run/ovslab/x/sw/controller.sock, or several (a controller cluster:
    # one Controller row per instance)
    controller: str | tuple[str, ...] | None = None
    controller_rate_limit: int | None = None
    controller_burst_limit: int | None = None
    # ms between reconnection attempts at most (OVS default 8000): the lab's
    # controller often starts after its switches, and may be restarted.
    controller_max_backoff: int | None = 1000
    ports: tuple[PortConfig, ...] = ()
    external_ids: dict[str, str] = field(default_factory=dict)


class Ovsdb:
    """An ovsdbapp connection to one OVSDB server (a lab sandbox's ``db.sock``)."""

    def __init__(self, remote: str, timeout: float = 10):
        self.remote = remote
        self.timeout = timeout
        try:
            idl = connection.OvsdbIdl.from_server(remote, "Open_vSwitch")
            conn = connection.Connection(idl, timeout=timeout)
            api_cls = type("LabOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self.api = api_cls(conn)
        except Exception as exc:  # noqa: BLE001 - ovsdbapp raises many kinds
            raise OvsdbError(f"cannot connect to OVSDB at {remote}: {exc}") from exc
        self._conn = conn

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.stop(timeout=5)

    def __enter__(self) -> "Ovsdb":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------

    def init_root(self) -> None:
        """Create the ``Open_vSwitch`` root row if the database has none (``ovs-vsctl init``)."""
        if self.api.tables["Open_vSwitch"].rows:
            return
        txn = ovs_transaction.Transaction(self.api, self.api.ovsdb_connection, check_error=True,
                                          log_errors=False)
        txn.add(self.api.db_create("Open_vSwitch"))
        self._commit(txn, "create the Open_vSwitch root row")

    def add_bridge(self, br: BridgeConfig) -> None:
        """Create one bridge with all its settings and ports in one transaction."""
        api = self.api
        other_config = {"disable-in-band": "true"}
        if br.dpid is not None:
            other_config["datapath-id"] = f"{br.dpid:016x}"
        cols: list[tuple] = [("fail_mode", br.fail_mode), ("protocols", list(br.protocols)),
                             ("other_config", other_config)]
        if br.external_ids:
            cols.append(("external_ids", dict(br.external_ids)))
        txn = api.create_transaction(check_error=True, log_errors=False)
        txn.add(api.add_br(br.name, may_exist=True, datapath_type=br.datapath_type))
        txn.add(api.db_set("Bridge", br.name, *cols))
        if br.controller:
            rows = []
            for target in ((br.controller,) if isinstance(br.controller, str) else br.controller):
                ctl_cols = {"target": target}
                if br.controller_rate_limit is not None:
                    ctl_cols["controller_rate_limit"] = br.controller_rate_limit
                if br.controller_burst_limit is not None:
                    ctl_cols["controller_burst_limit"] = br.controller_burst_limit
                if br.controller_max_backoff is not None:
                    ctl_cols["max_backoff"] = br.controller_max_backoff
                rows.append(txn.add(api.db_create("Controller", **ctl_cols)))
            txn.add(api.db_set("Bridge", br.name, ("controller", rows)))
        for p in br.ports:
            attrs: dict = {}
            if p.type:
                attrs["type"] = p.type
            if p.ofport is not None:
                attrs["ofport_request"] = p.ofport
            if p.options:
                attrs["options"] = dict(p.options)
            txn.add(api.add_port(br.name, p.name, may_exist=True, **attrs))
        self._commit(txn, f"create bridge {br.name}")

    def set_ssl(self, private_key: str, certificate: str, ca_cert: str) -> None:
        """Give the switch its TLS identity for ``ssl:`` controllers (``ovs-vsctl set-ssl``)."""
        txn = self.api.create_transaction(check_error=True, log_errors=False)
        ssl = txn.add(self.api.db_create("SSL", private_key=private_key, certificate=certificate,
                                         ca_cert=ca_cert))
        txn.add(self.api.db_set("Open_vSwitch", ".", ("ssl", ssl)))
        self._commit(txn, "set the SSL identity")

    def del_bridges(self, names: list[str] | None = None) -> list[str]:
        """Delete the named bridges (default: all) in one transaction; returns the names deleted."""
        existing = self.list_bridges()
        names = existing if names is None else [n for n in names if n in existing]
        if not names:
            return []
        txn = self.api.create_transaction(check_error=True, log_errors=False)
        for n in names:
            txn.add(self.api.del_br(n, if_exists=True))
        self._commit(txn, f"delete bridges {', '.join(names)}")
        return names

    def _commit(self, txn, what: str) -> None:
        try:
            txn.commit()
        except Exception as exc:  # noqa: BLE001
            raise OvsdbError(f"{self.remote}: cannot {what}: {exc}") from exc

    # -- reads -------------------------------------------------------------------

    def list_bridges(self) -> list[str]:
        return sorted(self.api.list_br().execute(check_error=True))

    def bridge(self, name: str) -> dict | None:
        rows = self.api.db_list("Bridge", [name], if_exists=True).execute(check_error=True)
        return rows[0] if rows else None

    def interfaces(self, bridge: str | None = None) -> dict[str, dict]:
        """Interface rows by name (only the bridge's when ``bridge`` is given)."""
        rows = self.api.db_list("Interface", columns=["name", "ofport", "ofport_request", "type",
                                                      "options", "error", "link_state"]).execute(check_error=True)
        names = None
        if bridge is not None:
            names = set(self.api.list_ifaces(bridge).execute(check_error=True)) | {bridge}
        out = {}
        for r in rows:
            if names is None or r["name"] in names:
                out[r["name"]] = {k: _scalar(v) for k, v in r.items()}
        return out

    def controllers(self, bridge: str) -> list[dict]:
        br = self.bridge(bridge)
        if not br or not br["controller"]:
            return []
        wanted = set(br["controller"])
        rows = self.api.db_list("Controller").execute(check_error=True)
        return [r for r in rows if r["_uuid"] in wanted]

    def wait_ofports(self, wanted: dict[str, int | None], timeout: float | None = None) -> dict[str, int]:
        """Wait until every interface in ``wanted`` has an ofport (equal to the wanted one, if given).

        Polls ovsdbapp's local replica (cheap; updated by its connection thread).
        Raises OvsdbError naming the interfaces that did not come up and their error column.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ifaces = self.interfaces()
            got = {n: ifaces.get(n, {}).get("ofport") for n in wanted}
            bad = {n: ofp for n, ofp in got.items()
                   if not isinstance(ofp, int) or ofp <= 0 or (wanted[n] is not None and ofp != wanted[n])}
            if not bad:
                return got  # type: ignore[return-value]
            if time.monotonic() > deadline:
                parts = []
                for n, ofp in bad.items():
                    err = ifaces.get(n, {}).get("error")
                    parts.append(f"{n} (ofport {ofp}, wanted {wanted[n]}{', error: ' + str(err) if err else ''})")
                raise OvsdbError(f"{self.remote}: interfaces not ready: {'; '.join(parts)}")
            time.sleep(0.05)


def _scalar(v):
    """ovsdbapp returns optional columns as 0/1-element lists; unwrap them."""
    if isinstance(v, list):
        return v[0] if len(v) == 1 else (None if not v else v)
    return v


__all__ = ["Ovsdb", "OvsdbError", "BridgeConfig", "PortConfig"]
