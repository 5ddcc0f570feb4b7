"""A GET-only JSON server on 127.0.0.1 standing in for the controller's REST API in tests."""

from __future__ import annotations

import http.server
import json
import threading

import pytest


class FakeController:
    """GET-only JSON server on 127.0.0.1 in a thread."""

    def __init__(self, routes: dict[str, object]):
        self.routes = routes
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                outer.requests.append(self.path)
                if self.path not in outer.routes:
                    self.send_error(404)
                    return
                body = json.dumps(outer.routes[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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
def controller():
    """``controller(routes)`` starts a FakeController; all are closed after the test."""
    servers = []

    def start(routes):
        servers.append(FakeController(routes))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
