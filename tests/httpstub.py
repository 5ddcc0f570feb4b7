"""A recording HTTP server on 127.0.0.1 for REST client tests: any method, canned answers.

``stub({("GET", "/v1/x"): (200, {"a": 1}), ("PUT", "/v1/y"): (422, b"raw bytes")})``
answers each (method, path) with its status and body (data is sent as JSON,
bytes as they are); anything else is a 404 with a JSON error.  Every request
is recorded in ``requests`` as ``Seen(method, path, headers, body)``.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any, NamedTuple

import pytest


class Seen(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpStub:
    def __init__(self, routes: dict[tuple[str, str], tuple[int, Any]]):
        self.routes = routes
        self.requests: list[Seen] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append(Seen(self.command, self.path, dict(self.headers.items()),
                                           self.rfile.read(length) if length else b""))
                status, body = outer.routes.get((self.command, self.path),
                                                (404, {"error": f"no route {self.command} {self.path}"}))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Stub", "yes")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _answer  # noqa: N815 (http.server API)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def http_stub():
    """``http_stub(routes)`` starts an :class:`HttpStub`; all are closed after the test."""
    servers: list[HttpStub] = []

    def start(routes):
        servers.append(HttpStub(routes))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
