"""A loopback stream that behaves like the live service: no replay, a steady event rate.

Events are emitted every ``interval`` seconds to every client connected at
that moment; ``since`` is ignored, and what is emitted while no client is
connected is gone. A client is subscribed when its request arrives, and the
response head goes out with its first event or keepalive (as the service
holds it back). :attr:`BroadcastServer.emitted` records each event's id with
the number of clients it went to.
"""

from __future__ import annotations

import json
import queue
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEEPALIVE = 1.0


class BroadcastServer:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.emitted: list[tuple[str, int]] = []
        self.requests = 0
        self._subscribers: set[queue.Queue[bytes]] = set()
        self._lock = threading.Lock()
        self._emitting = threading.Event()
        self._closed = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.serve(self)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._http.serve_forever, daemon=True),
            threading.Thread(target=self._emit, daemon=True),
        ]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> BroadcastServer:
        self._emitting.set()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_emitting()
        self._closed.set()
        self._http.shutdown()
        self._http.server_close()

    def stop_emitting(self) -> None:
        self._emitting.clear()

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        mine: queue.Queue[bytes] = queue.Queue()
        with self._lock:
            self.requests += 1
            self._subscribers.add(mine)
        try:
            first = self._next(mine)
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-cache")
            handler.end_headers()
            data = first
            while not self._closed.is_set():
                handler.wfile.write(data)
                handler.wfile.flush()
                data = self._next(mine)
        except OSError:
            pass  # the client went away
        finally:
            with self._lock:
                self._subscribers.discard(mine)

    def _next(self, mine: queue.Queue[bytes]) -> bytes:
        try:
            return mine.get(timeout=KEEPALIVE)
        except queue.Empty:
            return b": keepalive\n\n"

    def _emit(self) -> None:
        n = 0
        while not self._closed.wait(self.interval):
            if not self._emitting.is_set():
                continue
            n += 1
            frame = _frame(n)
            with self._lock:
                self.emitted.append((f"evt_{n:06d}", len(self._subscribers)))
                for subscriber in self._subscribers:
                    subscriber.put(frame)


def _frame(n: int) -> bytes:
    now = datetime.now(timezone.utc)
    envelope = {
        "id": f"evt_{n:06d}",
        "type": "grant.created",
        "createdAt": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "data": {"grantId": f"grnt_{n:06d}", "agentId": "ag_1", "principalId": "user_1"},
    }
    return b"data: " + json.dumps(envelope).encode() + b"\n\n"
