"""The REST API: a small router on eventlet's WSGI server, with an OpenAPI document.

os-ken 2.x+ no longer ships ``os_ken.app.wsgi``; this replaces it.  Apps add
routes with :meth:`RestApi.add`; a route may name a pydantic model for its
body, which is validated before the handler runs.  Every error is JSON::

    {"error": "what is wrong", "field": "members[2].ipv4"}   # field when known

with 400 (malformed JSON, or JSON beyond the limits below), 401 (a token is
configured and the request lacks it), 404 (unknown resource), 405 (with an
``Allow`` header), 409 (conflict with existing state), 413 (body too large)
or 422 (invalid field).  Handlers raise :class:`ApiError`; anything else is a
500 with the exception's text, logged.

Security (:class:`RestSecurity`, from the ``rest-*`` options):

* ``rest-token-file``: every request but a read (GET) needs
  ``Authorization: Bearer <token>``; when REST listens on anything but
  loopback, reads need it too, and without a token REST refuses to start.
* ``rest-cert`` / ``rest-key``: HTTPS instead of HTTP.
* Limits: a body of at most :data:`MAX_BODY` bytes, nested at most
  :data:`MAX_DEPTH` levels, integers of at most :data:`MAX_INT_DIGITS` digits;
  at most :data:`MAX_CONNECTIONS` connections at once, an idle one closed after
  :data:`IDLE_TIMEOUT` s, any other stalled read or write after :data:`SOCKET_TIMEOUT` s.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError

from ryu_apps.framework.store import StoreConflict, StoreUnavailable

LOG = logging.getLogger(__name__)
MAX_BODY = 1 << 20
MAX_DEPTH = 32           # levels of nested objects/arrays in a request body
MAX_INT_DIGITS = 100     # digits of one integer in a request body
MAX_CONNECTIONS = 512    # connections served at once (each one green thread)
IDLE_TIMEOUT = 5.0       # seconds a connection may wait before (or between) requests
SOCKET_TIMEOUT = 10.0    # seconds any other read or write on a connection may stall
MIN_TOKEN_CHARS = 16
READ_METHODS = frozenset({"GET", "HEAD"})
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Payload Too Large", 422: "Unprocessable Entity", 500: "Internal Server Error",
            503: "Service Unavailable"}


class ApiError(Exception):
    """An error answered as JSON with an HTTP status (and extra response headers)."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers = headers or []

    def body(self) -> dict:
        out = {"error": self.message}
        if self.field:
            out["field"] = self.field
        return out


class RestConfigError(ValueError):
    """The REST options are unusable (REST does not start); the message names the option."""


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first pydantic error as a 422 naming the field."""
    first = exc.errors()[0]
    path = field_path(tuple(first["loc"]))
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    msg = first["msg"].removeprefix("Value error, ")
    more = f" ({exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return ApiError(422, f"{path}: {msg}{more}" if path else msg + more, path or None)


# -- request bodies -----------------------------------------------------------------


def _too_big_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ApiError(400, f"body has an integer of {digits} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"body has a number out of range ({text[:20]}{'...' if len(text) > 20 else ''})")
    return value


def _no_constant(name: str):
    raise ApiError(400, f"body has {name}, which is not JSON")


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def upsert_item(items: list[dict], key: str, item: dict) -> None:
    """Replace the element of ``items`` with ``item``'s ``key``, or append ``item`` (a REST PUT of
    one element of an intent's list)."""
    k = next((i for i, x in enumerate(items) if x[key] == item[key]), None)
    if k is None:
        items.append(item)
    else:
        items[k] = item


def remove_item(items: list[dict], key: str, value: str, missing: str) -> None:
    """Remove the element of ``items`` whose ``key`` is ``value`` (404 ``missing`` when none is)."""
    kept = [x for x in items if x[key] != value]
    if len(kept) == len(items):
        raise ApiError(404, missing)
    items[:] = kept


@dataclass(frozen=True)
class Raw:
    """A handler's answer that is not JSON: sent as ``body`` with ``content_type``."""

    content_type: str
    body: bytes


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, within the limits; ApiError 400 naming the problem otherwise."""
    try:
        data = json.loads(raw, parse_int=_too_big_int, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"body is nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if _depth(data) > MAX_DEPTH:
        raise ApiError(400, f"body is nested deeper than {MAX_DEPTH} levels")
    return data


@dataclass(frozen=True)
class PerParam:
    """A body whose model depends on a path parameter (``/v1/apps/{app}/intent``).

    ``models()`` maps each value of ``param`` to its model; the OpenAPI document
    lists one concrete path per value, each with its exact schema.  A value
    without a model gets the parsed JSON object (the handler answers 404).
    """

    param: str
    models: Callable[[], dict[str, type[BaseModel]]]


# -- security -----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (127.0.0.0/8, ::1) or ``localhost``?  Anything else is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _read_file(option: str, path: str) -> str:
    try:
        return open(path, encoding="utf-8").read()  # noqa: SIM115 - closed by refcount at once
    except (OSError, UnicodeDecodeError) as exc:
        raise RestConfigError(f"{option} {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None


@dataclass(frozen=True)
class RestSecurity:
    """Who may do what over REST, and whether it is HTTPS."""

    host: str = "127.0.0.1"
    token: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def reads_open(self) -> bool:
        """Reads need no token: none is configured, or REST listens on loopback only."""
        return self.token is None or self.loopback

    def needs_token(self, method: str) -> bool:
        return self.token is not None and (method.upper() not in READ_METHODS or not self.reads_open)

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"

    @classmethod
    def load(cls, host: str, token_file: str | None = None, cert: str | None = None,
             key: str | None = None) -> "RestSecurity":
        """Check the options and read the token; RestConfigError naming the option otherwise."""
        token = None
        if token_file:
            token = _read_file("rest-token-file", token_file).strip()
            if not token or any(c.isspace() for c in token):
                raise RestConfigError(f"rest-token-file {token_file}: must hold one token "
                                      f"(one line, no spaces); it holds {'nothing' if not token else 'several words'}")
            if len(token) < MIN_TOKEN_CHARS:
                raise RestConfigError(f"rest-token-file {token_file}: the token has {len(token)} characters; "
                                      f"at least {MIN_TOKEN_CHARS} are needed")
            try:
                if os.stat(token_file).st_mode & 0o077:
                    LOG.warning("rest-token-file %s is readable by other users (chmod 600 it)", token_file)
            except OSError:
                pass
        if not is_loopback(host) and token is None:
            raise RestConfigError(f"rest-host {host} is not a loopback address: REST would answer anyone who "
                                  f"reaches it; give rest-token-file (Authorization: Bearer) or listen on 127.0.0.1")
        if bool(cert) != bool(key):
            raise RestConfigError("rest-cert and rest-key go together: "
                                  + ("rest-key is missing" if cert else "rest-cert is missing"))
        if cert:
            for option, path in (("rest-cert", cert), ("rest-key", key)):
                _read_file(option, path)
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise RestConfigError(f"rest-cert {cert} / rest-key {key}: not a usable certificate and "
                                      f"key: {exc}") from None
        return cls(host, token, cert, key)

    @classmethod
    def from_config(cls, host: str | None = None) -> "RestSecurity":
        from ryu_apps.framework import config

        return cls.load(host if host is not None else config.get("rest-host"), config.get("rest-token-file"),
                        config.get("rest-cert"), config.get("rest-key"))

    def check(self, environ) -> None:
        """ApiError 401 unless the request may go on."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if not self.needs_token(method):
            return
        what = "reads and writes" if not self.reads_open else "writes"
        header = environ.get("HTTP_AUTHORIZATION")
        challenge = 'Bearer realm="fabric"'
        if not header or not header.strip():
            raise ApiError(401, f"no Authorization header: {what} need 'Authorization: Bearer <token>'",
                           headers=[("WWW-Authenticate", challenge)])
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise ApiError(401, f"Authorization scheme {scheme[:20]!r} is not accepted: "
                                "use 'Authorization: Bearer <token>'",
                           headers=[("WWW-Authenticate", challenge)])
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ApiError(401, "wrong token in 'Authorization: Bearer'" if given.strip()
                           else "no token after 'Authorization: Bearer'",
                           headers=[("WWW-Authenticate", f'{challenge}, error="invalid_token"')])


# -- routing ------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any


@dataclass
class Route:
    method: str
    path: str
    handler: Callable[[Request], Any]
    summary: str
    tag: str
    body: type[BaseModel] | PerParam | str | None = None  # a model, or "json" for any JSON object
    status: int = 200
    regex: re.Pattern | None = None
    also: tuple[int, ...] = ()  # other success statuses the handler may answer
    content_type: str = "application/json"  # of a success (a handler answering otherwise returns Raw)


class RestApi:
    """Routes, dispatch, validation, authentication and the OpenAPI document."""

    def __init__(self, title: str = "OVS fabric controller", version: str = "1",
                 security: RestSecurity | None = None):
        self.title, self.version = title, version
        self.security = security or RestSecurity()
        self.routes: list[Route] = []
        self._undeclared: set[tuple[str, str, int]] = set()
        self._param_values: list[tuple[str, str, Callable[[], list[str]]]] = []
        self.add("GET", "/v1/openapi.json", lambda r: self.openapi(), "This OpenAPI document", "meta")

    def add(self, method: str, path: str, handler, summary: str, tag: str = "core",
            body: type[BaseModel] | PerParam | str | None = None, status: int = 200,
            also: tuple[int, ...] = (), content_type: str = "application/json") -> None:
        """Route ``method path`` to ``handler``; ``status`` (and ``also``) are the success statuses it answers."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
        self.routes.append(Route(method.upper(), path, handler, summary, tag, body, status, regex, tuple(also),
                                 content_type))

    def param_values(self, prefix: str, values: Callable[[], list[str]]) -> None:
        """Document the values of the last path parameter of ``prefix`` (``/v1/switches/{name}``).

        Every route under ``prefix`` gets ``enum: values()`` for that parameter in the
        OpenAPI document (any other value is a 404, which 4XX covers).
        """
        param = re.findall(r"\{(\w+)\}", prefix)[-1]
        self._param_values.append((prefix, param, values))

    # -- WSGI ---------------------------------------------------------------
    def __call__(self, environ, start_response):
        headers = []
        try:
            self.security.check(environ)
            status, payload = self.dispatch(environ)
        except ApiError as exc:
            status, payload, headers = exc.status, exc.body(), exc.headers
        except StoreConflict as exc:  # another controller instance wrote first: nothing changed
            status, payload = 409, {"error": str(exc)}
        except StoreUnavailable as exc:  # no etcd quorum: nothing changed
            status, payload = 503, {"error": str(exc)}
        except Exception as exc:  # a bug: say so, keep serving
            LOG.exception("REST handler failed")
            status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(payload, Raw):  # not JSON: e.g. Prometheus' text format
            data, ctype = payload.body, payload.content_type
        else:
            data = b"" if status == 204 else (json.dumps(payload, indent=1, default=str) + "\n").encode()
            ctype = "application/json"
        start_response(f"{status} {_REASONS.get(status, '')}",
                       [("Content-Type", ctype), ("Content-Length", str(len(data))), *headers])
        return [data]

    def dispatch(self, environ) -> tuple[int, Any]:
        method = environ["REQUEST_METHOD"].upper()
        path = environ.get("PATH_INFO", "/").rstrip("/") or "/"
        allowed = []
        for route in self.routes:
            m = route.regex.match(path)
            if not m:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            params = m.groupdict()
            body = self._body(environ, route, params)
            result = route.handler(Request(method, path, params, query, body))
            status, payload = result if isinstance(result, tuple) else (route.status, result)
            if status not in (route.status, *route.also) and (route.method, route.path, status) not in self._undeclared:
                self._undeclared.add((route.method, route.path, status))
                LOG.error("REST %s %s answered %d, which its route does not declare (OpenAPI is wrong)",
                          route.method, route.path, status)
            return status, payload
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise ApiError(405, f"{method} not allowed on {path}; use {methods}", headers=[("Allow", methods)])
        raise ApiError(404, f"no resource at {path}")

    def _body(self, environ, route: Route, params: dict[str, str]):
        if route.body is None:
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if length > MAX_BODY:
            raise ApiError(413, f"body of {length} bytes is larger than {MAX_BODY}")
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        if not raw.strip():
            raise ApiError(400, "request body is empty; send a JSON object")
        data = parse_json(raw)
        model = route.body
        if isinstance(model, PerParam):
            model = model.models().get(params.get(model.param, ""), "json")
        if model == "json":
            if not isinstance(data, dict):
                raise ApiError(422, f"body must be a JSON object, not {type(data).__name__}")
            return data
        try:  # strict: the server takes what the schema says (no "true" for a number, no 1.5 for an int)
            return model.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            raise validation_error(exc) from None

    # -- OpenAPI ------------------------------------------------------------
    def openapi(self) -> dict:
        paths: dict[str, dict] = {}
        schemas: dict[str, Any] = {}
        error = {"description": "error", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
            "required": ["error"]}}}}
        sec = self.security

        def body_schema(model) -> dict:
            if model == "json":
                return {"type": "object"}
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas[name] = sub
            schemas[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        def param_schema(path: str, param: str) -> dict:
            for prefix, name, values in self._param_values:
                if name == param and (path + "/").startswith(prefix + "/"):
                    return {"type": "string", "enum": list(values())}
            return {"type": "string"}

        def operation(r: Route, path: str, model) -> None:
            media = r.content_type.split(";")[0]
            responses: dict[str, Any] = {str(s): {"description": "success", "content": {media: {}}}
                                         for s in (r.status, *r.also)}
            responses["4XX"] = error
            op: dict[str, Any] = {"summary": r.summary, "tags": [r.tag], "responses": responses}
            if sec.needs_token(r.method):
                op["security"] = [{"bearer": []}]
                responses["401"] = {**error, "description": "no or wrong 'Authorization: Bearer' token",
                                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}}
            params = re.findall(r"\{(\w+)\}", path)
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": param_schema(path, p)}
                                    for p in params]
            if model is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": body_schema(model)}}}
            paths.setdefault(path, {})[r.method.lower()] = op

        for r in self.routes:
            if isinstance(r.body, PerParam):  # one concrete path per value, each with its exact schema
                for value, model in sorted(r.body.models().items()):
                    operation(r, r.path.replace("{" + r.body.param + "}", value), model)
            else:
                operation(r, r.path, r.body)
        doc = {"openapi": "3.1.0", "info": {"title": self.title, "version": self.version},
               "paths": paths, "components": {"schemas": schemas}}
        if sec.token is not None:
            doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        return doc

    def serve(self, host: str, port: int, security: RestSecurity | None = None):
        """Start serving in a green thread; returns it.

        ``security`` defaults to the ``rest-*`` options; RestConfigError when they are unusable
        (e.g. a non-loopback ``host`` without a token), before anything listens.
        """
        import eventlet
        from eventlet import wsgi
        from eventlet.green import ssl as green_ssl
        from os_ken.lib import hub

        self.security = security if security is not None else RestSecurity.from_config(host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = eventlet.listen((host.strip("[]"), port), family=family)
        sec = self.security
        if sec.cert:
            ctx = green_ssl.GreenSSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(sec.cert, sec.key)
            sock = ctx.wrap_socket(sock, server_side=True)  # handshakes in each connection's green thread
        LOG.info("REST API on %s://%s:%d/v1/ (OpenAPI at /v1/openapi.json); %s", sec.scheme, host, port,
                 "no token" if sec.token is None else
                 ("token needed for writes" if sec.reads_open else "token needed for reads and writes"))
        return hub.spawn(wsgi.server, sock, self, log=_QuietLog(), max_size=MAX_CONNECTIONS,
                         keepalive=IDLE_TIMEOUT, socket_timeout=SOCKET_TIMEOUT, debug=False,
                         protocol=_protocol(wsgi.HttpProtocol))


def _protocol(base):
    """eventlet's HTTP protocol, with a failed TLS handshake logged in one line (not a traceback)."""

    class Protocol(base):
        def handle(self):
            try:
                super().handle()
            except ssl.SSLError as exc:
                LOG.info("REST: TLS with %s failed: %s", self.client_address, exc.reason or exc)

    return Protocol


def client_headers(token: str | None) -> dict[str, str]:
    """The headers a client sends: ``Authorization: Bearer`` when it has a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def read_token(path: str | os.PathLike | None) -> str | None:
    """A client's token from a token file (None without one)."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


class _QuietLog:
    def write(self, msg: str) -> None:
        LOG.debug(msg.rstrip())
