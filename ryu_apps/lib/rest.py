"""The REST API: a small router on eventlet's WSGI server, with an OpenAPI document.

os-ken 2.x+ no longer ships ``os_ken.app.wsgi``; this replaces it.  Apps add
routes with :meth:`RestApi.add`; a route may name a pydantic model for its
body, which is validated before the handler runs.  Every error is JSON::

    {"error": "what is wrong", "field": "members[2].ipv4"}   # field when known

with 400 (malformed JSON), 404 (unknown resource), 405, 409 (conflict with
existing state), 413 (body too large) or 422 (invalid field).  Handlers raise
:class:`ApiError`; anything else is a 500 with the exception's text, logged.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

from pydantic import BaseModel, ValidationError

LOG = logging.getLogger(__name__)
MAX_BODY = 1 << 20
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            422: "Unprocessable Entity", 500: "Internal Server Error", 503: "Service Unavailable"}


class ApiError(Exception):
    """An error answered as JSON with an HTTP status."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        out = {"error": self.message}
        if self.field:
            out["field"] = self.field
        return out


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
    body: type[BaseModel] | str | None = None  # a model, or "json" for any JSON object
    status: int = 200
    regex: re.Pattern | None = None


class RestApi:
    """Routes, dispatch, validation and the OpenAPI document."""

    def __init__(self, title: str = "OVS fabric controller", version: str = "1"):
        self.title, self.version = title, version
        self.routes: list[Route] = []
        self.add("GET", "/v1/openapi.json", lambda r: self.openapi(), "This OpenAPI document", "meta")

    def add(self, method: str, path: str, handler, summary: str, tag: str = "core",
            body: type[BaseModel] | str | None = None, status: int = 200) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
        self.routes.append(Route(method.upper(), path, handler, summary, tag, body, status, regex))

    # -- WSGI ---------------------------------------------------------------
    def __call__(self, environ, start_response):
        try:
            status, payload = self.dispatch(environ)
        except ApiError as exc:
            status, payload = exc.status, exc.body()
        except Exception as exc:  # a bug: say so, keep serving
            LOG.exception("REST handler failed")
            status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        data = b"" if status == 204 else (json.dumps(payload, indent=1, default=str) + "\n").encode()
        start_response(f"{status} {_REASONS.get(status, '')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
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
            body = self._body(environ, route)
            result = route.handler(Request(method, path, m.groupdict(), query, body))
            if isinstance(result, tuple):
                return result
            return route.status, result
        if allowed:
            raise ApiError(405, f"{method} not allowed on {path}; use {', '.join(sorted(set(allowed)))}")
        raise ApiError(404, f"no resource at {path}")

    def _body(self, environ, route: Route):
        if route.body is None:
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if length > MAX_BODY:
            raise ApiError(413, f"body of {length} bytes is larger than {MAX_BODY}")
        raw = environ["wsgi.input"].read(length) if length else b""
        if not raw.strip():
            raise ApiError(400, "request body is empty; send a JSON object")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        if route.body == "json":
            if not isinstance(data, dict):
                raise ApiError(422, f"body must be a JSON object, not {type(data).__name__}")
            return data
        try:
            return route.body.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None

    # -- OpenAPI ------------------------------------------------------------
    def openapi(self) -> dict:
        paths: dict[str, dict] = {}
        schemas: dict[str, Any] = {}
        error = {"description": "error", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
            "required": ["error"]}}}}
        for r in self.routes:
            op: dict[str, Any] = {"summary": r.summary, "tags": [r.tag],
                                  "responses": {str(r.status): {"description": "success",
                                                                "content": {"application/json": {}}},
                                                "4XX": error}}
            params = re.findall(r"\{(\w+)\}", r.path)
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                    for p in params]
            if r.body == "json":
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"type": "object"}}}}
            elif r.body is not None:
                schema = r.body.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas[name] = sub
                schemas[r.body.__name__] = schema
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}}}
            paths.setdefault(r.path, {})[r.method.lower()] = op
        return {"openapi": "3.0.3", "info": {"title": self.title, "version": self.version},
                "paths": paths, "components": {"schemas": schemas}}

    def serve(self, host: str, port: int):
        """Start serving in a green thread; returns it."""
        import eventlet
        from eventlet import wsgi
        from os_ken.lib import hub

        sock = eventlet.listen((host, port))
        LOG.info("REST API on http://%s:%d/v1/ (OpenAPI at /v1/openapi.json)", host, port)
        return hub.spawn(wsgi.server, sock, self, log=_QuietLog(), max_size=64)


class _QuietLog:
    def write(self, msg: str) -> None:
        LOG.debug(msg.rstrip())
