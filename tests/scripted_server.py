"""A loopback HTTP server that answers each stream request from a script.

Each :class:`Reply` says what one request gets: status, headers (after an
optional delay), body chunks (sent with a flush and an optional pause
between them) and what happens at the end (close the socket, or hold it
open, optionally sending keepalives).
Requests are recorded so tests can check paths, query strings and headers.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    chunks: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    pause: float = 0.0
    hold: float = 0.0
    keepalive: float = 0.0
    abort: bool = False
    content_type: str = "text/event-stream"
    head_delay: float = 0.0
    """Seconds before the status line and headers go out, as the live service
    holds them until its first event or keepalive."""
    error_body: bytes = b'{"message":"scripted","code":"SCRIPTED"}'
    """The body of a reply whose status is not 200."""


@dataclass
class Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float


class ScriptedServer:
    def __init__(self, replies: list[Reply], default: Reply | None = None) -> None:
        self.replies = list(replies)
        self.default = default or Reply(status=200, hold=30.0)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with server._lock:
                    server.requests.append(
                        Request(
                            parts.path,
                            parse_qs(parts.query),
                            {k.lower(): v for k, v in self.headers.items()},
                            time.monotonic(),
                        )
                    )
                    reply = server.replies.pop(0) if server.replies else server.default
                if reply.head_delay:
                    time.sleep(reply.head_delay)
                self.send_response(reply.status)
                if reply.status == 200:
                    self.send_header("Content-Type", reply.content_type)
                else:
                    self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.status != 200:
                    body = reply.error_body
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for chunk in reply.chunks:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        if reply.pause:
                            time.sleep(reply.pause)
                    if reply.abort:
                        # A hard reset, as a crashed proxy would do.
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                        return
                    end = time.monotonic() + reply.hold
                    while time.monotonic() < end and not server._stop.is_set():
                        step = reply.keepalive or 0.05
                        time.sleep(min(step, max(0.0, end - time.monotonic())))
                        if reply.keepalive:
                            self.wfile.write(b": keepalive\n\n")
                            self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def frame(data: str, eol: str = "\n", **fields: str) -> bytes:
    """One SSE frame: optional fields, then ``data:`` lines, then a blank line."""
    lines = [f"{name}: {value}" for name, value in fields.items()]
    lines += [f"data: {line}" for line in data.split("\n")]
    return (eol.join(lines) + eol + eol).encode()
