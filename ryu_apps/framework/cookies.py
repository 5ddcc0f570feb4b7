"""Cookie layout: every flow names the app and the object that own it.

A 64-bit OpenFlow cookie is split as::

    63      56 55     48 47                                    0
    +---------+---------+---------------------------------------+
    |  app id |  kind   |              object id                |
    +---------+---------+---------------------------------------+

* ``app id``  (8 bits): which app owns the flow (``APPS`` below).
* ``kind``    (8 bits): the app's object type (a host, a fence, a probe ...).
* ``object``  (48 bits): the object, a stable hash of its name, or a small
  integer the app assigns.

So ``cookie=0x0101...`` in a flow dump reads "fabric app, host object", and
``ovs-ofctl del-flows br cookie=0x0101.../-1`` (or an OpenFlow delete with
``cookie_mask``) removes exactly one object's flows.  Object ids are derived
from names, not allocation order, so they are the same after a restart and a
restart with unchanged intent changes no cookie.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

APP_SHIFT = 56
KIND_SHIFT = 48
OBJECT_BITS = 48
OBJECT_MASK = (1 << OBJECT_BITS) - 1

#: Cookie mask selecting every flow of one app.
APP_MASK = 0xFF << APP_SHIFT
#: Cookie mask selecting every flow of one object kind of one app.
KIND_MASK = 0xFFFF << KIND_SHIFT
#: Cookie mask selecting exactly one object.
OBJECT_COOKIE_MASK = (1 << 64) - 1

#: Registered app ids.  Ids are part of the on-switch state: never reuse one.
APPS: dict[str, int] = {
    "core": 0x01,          # framework: table-miss, controller protection
    "fabric": 0x02,        # base fabric: forwarding, ECMP, ARP/ND
    "fenced_clone": 0x03,
    "multicast_standby": 0x04,
    "cloud_router": 0x05,
    "oam_ecmp": 0x06,
    "proxy_cluster": 0x07,
    "nvme_zoning": 0x08,
    "static_flows": 0x09,  # flows written through Ryu's ofctl_rest (/stats/flowentry)
}
#: Ids 0x70-0x7F are for lab and test apps (``register``), never for a fabric function.
LAB_APP_IDS = range(0x70, 0x80)
APP_NAMES = {v: k for k, v in APPS.items()}


class CookieError(ValueError):
    """A cookie field is out of range or an app is not registered."""


def register(app: str, ident: int) -> None:
    """Give a lab or test app (``ovs_scripts/bench_app.py``) a cookie id from LAB_APP_IDS."""
    if ident not in LAB_APP_IDS:
        raise CookieError(f"app {app!r}: lab app ids are {LAB_APP_IDS.start:#x}-{LAB_APP_IDS.stop - 1:#x}")
    if APPS.get(app, ident) != ident or APP_NAMES.get(ident, app) != app:
        raise CookieError(f"app {app!r} or id {ident:#x} is already registered")
    APPS[app] = ident
    APP_NAMES[ident] = app


def app_id(app: str) -> int:
    """The registered id of ``app``."""
    try:
        return APPS[app]
    except KeyError:
        raise CookieError(f"app {app!r} has no registered cookie id; add it to APPS") from None


def object_id(name: str) -> int:
    """A stable 48-bit object id for an object name (blake2b, not Python hash())."""
    digest = hashlib.blake2b(name.encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def make(app: str, kind: int, obj: int | str = 0) -> int:
    """Build a cookie from app name, kind (0-255) and object (int or name)."""
    if not 0 <= kind <= 0xFF:
        raise CookieError(f"cookie kind {kind} not in 0..255")
    if isinstance(obj, str):
        obj = object_id(obj)
    if not 0 <= obj <= OBJECT_MASK:
        raise CookieError(f"cookie object {obj} does not fit in {OBJECT_BITS} bits")
    return (app_id(app) << APP_SHIFT) | (kind << KIND_SHIFT) | obj


def app_cookie(app: str) -> tuple[int, int]:
    """(cookie, mask) selecting every flow of ``app``."""
    return app_id(app) << APP_SHIFT, APP_MASK


@dataclass(frozen=True)
class Cookie:
    """A decoded cookie."""

    app_id: int
    kind: int
    obj: int

    @property
    def app(self) -> str:
        return APP_NAMES.get(self.app_id, f"app-{self.app_id:#04x}")

    def __str__(self) -> str:
        return f"{self.app}/{self.kind}/{self.obj:#014x}"


def decode(cookie: int) -> Cookie:
    """Split a 64-bit cookie into app id, kind and object id."""
    return Cookie(cookie >> APP_SHIFT & 0xFF, cookie >> KIND_SHIFT & 0xFF, cookie & OBJECT_MASK)
