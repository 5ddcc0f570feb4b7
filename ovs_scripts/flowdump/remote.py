"""The controller's REST API as ``ovslab flows`` reads it: object names and desired state.

Requests go through :func:`ovs_scripts.kit.request`; every failure becomes one
:class:`~ovs_scripts.flowdump.ofctl.FlowdumpError` line.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from ovs_scripts import kit
from ovs_scripts.flowdump.ofctl import FlowdumpError

#: Seconds to wait for the controller's REST API.
HTTP_TIMEOUT = 5.0


#: How to reach the controller when it wants more than plain HTTP: ``token`` for
#: ``Authorization: Bearer`` (REST off loopback wants it for reads too), ``cafile`` to
#: verify an HTTPS controller.  Set from --rest-token-file / --rest-cacert.
REST_AUTH: dict[str, str | None] = {"token": None, "cafile": None}


def get_json(url: str) -> Any:
    """The JSON body of ``GET url`` with :data:`REST_AUTH`; FlowdumpError for anything but a 2xx with JSON."""
    token, cafile = REST_AUTH["token"], REST_AUTH["cafile"]
    try:
        reply = kit.request("GET", url, headers={"Authorization": f"Bearer {token}"} if token else None,
                            timeout=HTTP_TIMEOUT, cafile=cafile)
    except OSError as exc:  # urllib's URLError included
        reason = getattr(exc, "reason", exc)
        raise FlowdumpError(f"controller unreachable at {url}: {reason}") from None
    if not reply.ok:
        why = ""
        try:
            why = ": " + str(json.loads(reply.data.decode()).get("error"))
        except (ValueError, AttributeError):
            pass
        raise FlowdumpError(f"controller answered HTTP {reply.status} for {url}{why}")
    try:
        return json.loads(reply.data.decode())
    except ValueError as exc:
        raise FlowdumpError(f"controller sent invalid JSON for {url}: {exc}") from None


def fetch_labels(rest_url: str) -> dict[int, str]:
    """``GET <rest>/v1/cookies`` -> {cookie: "fabric host h1"}."""
    data = get_json(f"{rest_url.rstrip('/')}/v1/cookies")
    if not isinstance(data, dict):
        raise FlowdumpError(f"{rest_url}/v1/cookies did not return an object")
    labels = {}
    for key, value in data.items():
        try:
            labels[int(str(key), 0)] = str(value)
        except ValueError:
            continue
    return labels


def fetch_desired(rest_url: str, switch: str) -> Any:
    """``GET <rest>/v1/switches/<switch>/desired``."""
    return get_json(f"{rest_url.rstrip('/')}/v1/switches/{urllib.parse.quote(switch, safe='')}/desired")
