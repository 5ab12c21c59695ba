"""A loopback HTTP server answering REST GETs from a table of JSON routes.

Each route is a function of the query string returning ``(status, headers,
body)``; ``refusals`` queues answers given before the route's own (a 429
with or without ``Retry-After``, a 401). Requests are recorded so tests can
check paths, query strings and headers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, dict[str, str], Any]
Route = Callable[[dict[str, str]], Answer]


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class RestServer:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.refusals: dict[str, list[Answer]] = {}
        self.requests: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(Seen(parts.path, query, headers))
                queued = server.refusals.get(parts.path)
                route = server.routes.get(parts.path)
                if queued:
                    status, extra, body = queued.pop(0)
                elif route is not None:
                    status, extra, body = route(query)
                else:
                    status, extra, body = 404, {}, {"code": "NOT_FOUND"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def paths(self) -> list[str]:
        return [seen.path for seen in self.requests]

    def __enter__(self) -> RestServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
