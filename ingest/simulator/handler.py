"""HTTP plumbing of the simulator: the threaded server, its request handler, and the pure
pieces of answering a request (bearer check, query parsing, JSON error responses).

What a stream request gets is decided by the simulator (:mod:`.server`), which the
server calls back for every ``GET``; every other method is a 404 here.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple, cast
from urllib.parse import parse_qs

from .generator import TYPE_CODES
from .ids import parse_since_ms

STREAM_PATH = "/v1/events/stream"


class Server(ThreadingHTTPServer):
    """Serves each connection on its own daemon thread; ``on_get`` answers every GET."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        on_get: Callable[[Handler], None],
        track: Callable[[socket.socket, bool], None],
    ) -> None:
        self.on_get = on_get
        self.track = track  # told of each connection socket as it opens (True) and closes
        super().__init__(address, Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients vanishing mid-stream is routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "grantex-simulator/1.0"
    sys_version = ""

    @property
    def owner(self) -> Server:
        return cast(Server, self.server)

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner.track(self.connection, False)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.owner.on_get(self)

    def _not_found(self) -> None:
        # Drain a (small) request body first: closing with unread input makes the kernel
        # send RST, and the client could lose the 404 it is about to receive.
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 1 << 20:
            self.rfile.read(int(length))
        send_json(self, 404, "NOT_FOUND", f"no route for {self.command} {self.path}")

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_found

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True


def retry_after_text(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds as an integer, anything else as a float."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def send_json(
    handler: BaseHTTPRequestHandler, status: int, code: str, message: str,
    retry_after: float | None = None,
) -> None:  # fmt: skip
    """Answer with the live service's JSON error body and close the connection."""
    body = json.dumps({"message": message, "code": code}).encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Connection", "close")
    if retry_after is not None:
        handler.send_header("Retry-After", retry_after_text(retry_after))
    handler.end_headers()
    handler.wfile.write(body)
    handler.close_connection = True


def stream_head(handler: BaseHTTPRequestHandler) -> bytes:
    """The response head of an event stream (chunked, never cached or buffered)."""
    lines = (
        f"{handler.protocol_version} 200 OK",
        f"Server: {handler.version_string()}",
        f"Date: {handler.date_time_string()}",
        "Content-Type: text/event-stream",
        "Cache-Control: no-cache",
        "Transfer-Encoding: chunked",
        "Connection: close",
        "X-Accel-Buffering: no",
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def bearer_matches(header: str | None, key: bytes) -> bool:
    """Whether an Authorization header is ``Bearer <key>`` (scheme case-insensitive)."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), key)


class StreamQuery(NamedTuple):
    since_ms: int | None  # replay from this instant; None: no replay
    allowed: frozenset[int] | None  # type codes to send; None: every type


def parse_stream_query(query: str) -> StreamQuery:
    """The ``since`` and ``types`` parameters of a stream request.

    The last ``since`` counts (blank: no replay); ``types`` may repeat and hold
    comma-separated names, and unknown names match nothing. Raises ValueError for an
    unreadable ``since``.
    """
    params = parse_qs(query, keep_blank_values=True)
    since_ms: int | None = None
    if params.get("since") and params["since"][-1].strip():
        since_ms = parse_since_ms(params["since"][-1])
    allowed: frozenset[int] | None = None
    wanted = [t.strip() for v in params.get("types", []) for t in v.split(",") if t.strip()]
    if wanted:
        allowed = frozenset(TYPE_CODES[t] for t in wanted if t in TYPE_CODES)
        if len(allowed) == len(TYPE_CODES):
            allowed = None
    return StreamQuery(since_ms, allowed)
