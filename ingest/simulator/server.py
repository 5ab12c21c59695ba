"""The :class:`Simulator`: a local Grantex event producer, from start() to stop().

It generates the backlog, runs the HTTP server and the live generation thread, and
decides what each stream request gets, in the live service's order: route, API key,
injected failure, ``since``/``types``, the concurrent-stream limit, then the stream.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .config import SimulatorConfig, SimulatorStats
from .faults import FaultSchedule, fault_code
from .generator import Batch, EventFactory, spread_batches, spread_truth
from .handler import (
    STREAM_PATH,
    Server,
    StreamQuery,
    bearer_matches,
    parse_stream_query,
    send_json,
    stream_head,
)
from .history import History
from .ids import ms_to_datetime
from .rest import WINDOW_S, RestApi, send_answer
from .slots import Slot, SlotCounter
from .state import ServiceState
from .streaming import Conn, StreamClosed, Streamer
from .truth import GroundTruth
from .webhooks import Deliverer

# Upper bound on one live batch so a generator that fell behind cannot hold the GIL for long.
_MAX_LIVE_BATCH = 20_000


def due_live_events(elapsed_s: float, rate: float, produced: int, total: int | None) -> int | None:
    """How many live events to generate now, ``elapsed_s`` into live generation.

    None once ``total`` events are out (generation ends); 0 while the next one is not
    due yet; else the events due, at most ``_MAX_LIVE_BATCH`` and never past ``total``.
    """
    if total is not None and produced >= total:
        return None
    due = int(elapsed_s * rate) - produced
    if due <= 0:
        return 0
    room = min(due, _MAX_LIVE_BATCH)
    if total is not None:
        room = min(room, total - produced)
    return room


class Simulator:
    """A local Grantex event producer. Use as a context manager or start()/stop()."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._lock = threading.Lock()
        self._factory = EventFactory(config.seed, config.envelope, config.emit_ids)
        self._history = History(config.emit_ids)
        self._stopping = threading.Event()
        self._slots = SlotCounter(config.max_connections, config.slot_ttl, config.leaked_slots)
        self._open: dict[Slot, Conn] = {}
        self._streamer = Streamer(
            config, self._history, self._stopping, self.stats, self._lock, self._slots.touch
        )
        self._faults = FaultSchedule(config.fail_statuses, config.fail_always)
        self._started = False
        self._stopped = False
        self._server: Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._live_thread: threading.Thread | None = None
        self._deliverer: Deliverer | None = None
        self._state = ServiceState(self._history, self._factory.record_allocations())
        self._rest: RestApi | None = None
        self._sockets: set[socket.socket] = set()
        self._start_ms = 0
        self._history_start_ms = 0
        self._key = config.api_key.encode("utf-8")
        self.subscriptions: list[tuple[float, float]] = []
        """Each stream's (arrival, subscribed) in Unix seconds: what it could not see."""

    # -- lifecycle

    def start(self) -> Simulator:
        with self._lock:
            if self._started or self._stopped:
                raise RuntimeError("a simulator can be started only once")
            self._started = True
        cfg = self.config
        self._start_ms = time.time_ns() // 1_000_000
        span_ms = round(cfg.backlog_span * 1000) if cfg.backlog else 0
        self._history_start_ms = self._start_ms - span_ms
        if cfg.backlog:
            self._generate_backlog(cfg.backlog, span_ms)
        self._server = Server((cfg.host, cfg.port), self._handle_get, self._track)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="grantex-sim-http",
            daemon=True,
        )
        self._serve_thread.start()
        if cfg.webhook_url is not None:
            self._deliverer = Deliverer(cfg, self._history, self._start_ms)
            self._deliverer.start(self._history.count)
        window = WINDOW_S * cfg.time_scale
        self._rest = RestApi(self._state, self._deliverer, cfg.rest_rate_limit, window)
        if cfg.rate > 0 and cfg.total_events != 0:
            self._live_thread = threading.Thread(
                target=self._live_loop, name="grantex-sim-live", daemon=True
            )
            self._live_thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                self._stopping.set()
                return
            self._stopped = True
        self._stopping.set()
        with self._history.cond:
            self._history.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._server is not None:
            self._server.server_close()
        for thread in (self._live_thread, self._serve_thread):
            if thread is not None:
                thread.join(timeout=5)
        if self._deliverer is not None:
            self._deliverer.stop()
        deadline = time.monotonic() + 2
        while self.stats.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until stop() (from another thread) or Ctrl-C; always stops cleanly."""
        if not self._started:
            self.start()
        try:
            # Waiting in slices keeps the main thread responsive to KeyboardInterrupt.
            while not self._stopping.wait(0.25):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- introspection

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"

    @property
    def history_start(self) -> datetime:
        if not self._started:
            raise RuntimeError("simulator not started")
        return ms_to_datetime(self._history_start_ms)

    @property
    def event_count(self) -> int:
        """Number of well-formed events generated so far (backlog + live), without parsing."""
        return self._history.count

    def events(self) -> list[dict[str, Any]]:
        """Every well-formed envelope generated so far (backlog + live), in emission order.

        The dicts are parsed from the stored frames on each call, so this costs memory and
        time proportional to the history: for big backlogs prefer :attr:`event_count`.
        """
        history = self._history
        with history.cond:
            count = history.count
        return [history.envelope(i) for i in range(count)]

    def ledger(self) -> list[tuple[str, str, int, bool]]:
        """Every well-formed event so far as (id, type, emitted at in Unix ms, streamed).

        ``streamed`` is whether any stream connection was sent the event in full: an
        event never streamed was lost to every stream client (no client connected, a
        client still subscribing, a connection cut first).
        """
        history = self._history
        with history.cond:
            count = history.count
        rows = []
        for i in range(count):
            env = history.envelope(i)
            streamed = bool(history.streamed[i])
            rows.append((str(env["id"]), str(env["type"]), history.ts[i], streamed))
        return rows

    @property
    def webhook(self) -> Deliverer | None:
        """The webhook deliverer (its id, its deliveries), when a webhook URL is set."""
        return self._deliverer

    def backlog_truth(self) -> GroundTruth:
        """The ground truth of the backlog (revocations, token kinds), generated afresh."""
        if not self._started:
            raise RuntimeError("simulator not started")
        cfg = self.config
        span_ms = round(cfg.backlog_span * 1000) if cfg.backlog else 0
        return spread_truth(
            cfg.seed,
            cfg.envelope,
            self._history_start_ms,
            cfg.backlog,
            span_ms,
            max(cfg.backlog, 1),
        )

    # -- generation

    def _generate_backlog(self, count: int, span_ms: int) -> None:
        start_ms = self._history_start_ms
        for batch in spread_batches(self._factory, start_ms, count, span_ms, count, 8192):
            self._history.append(batch)

    def _live_loop(self) -> None:
        cfg = self.config
        rate = cfg.rate
        total = cfg.total_events
        factory = self._factory
        history = self._history
        started = time.monotonic()
        produced = 0
        while not self._stopping.is_set():
            room = due_live_events(time.monotonic() - started, rate, produced, total)
            if room is None:
                return
            if room == 0:
                wake_at = started + (produced + 1) / rate
                self._stopping.wait(max(0.0, wake_at - time.monotonic()))
                continue
            # Live timestamps never go backwards, so `since` can bisect the whole log.
            now = max(time.time_ns() // 1_000_000, history.last_ts, self._start_ms)
            batch = Batch()
            made = 0
            while made < room:
                # Without a cap, a grant's first token may go one past what is due, so
                # that slow rates still pair grant.created with its token.issued.
                made += factory.emit(now, room - made if total is not None else max(room - made, 2))
            factory.flush(batch)
            history.append(batch)
            produced += made

    # -- HTTP

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _handle_get(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one GET: an error response, or a stream until either side ends it."""
        url = urlsplit(handler.path)
        if self._rest is not None and self._rest.handles(url.path):
            self._answer_rest(handler, self._rest, url.path, url.query)
            return
        if url.path != STREAM_PATH:
            send_json(handler, 404, "NOT_FOUND", f"no route for GET {url.path}")
            return
        with self._lock:
            self.stats.requests += 1
        if not bearer_matches(handler.headers.get("Authorization"), self._key):
            send_json(handler, 401, "UNAUTHORIZED", "invalid or missing API key")
            return
        retry_after = self.config.retry_after
        fault = self._faults.next()
        if fault is not None:
            message = f"injected fault {fault}"
            send_json(handler, fault, fault_code(fault), message, retry_after)
            return
        try:
            query = parse_stream_query(url.query)
        except ValueError as exc:
            send_json(handler, 400, "BAD_REQUEST", f"invalid since: {exc}")
            return
        slot = self._admit()
        if slot is None:
            # The live service's refusal: no Retry-After, whatever the faults say.
            limit = self.config.max_connections
            message = f"Max {limit} concurrent SSE connections per developer"
            send_json(handler, 429, "TOO_MANY_CONNECTIONS", message)
            return
        handler.close_connection = True
        conn = Conn(handler.connection, stream_head(handler))
        with self._lock:
            self._open[slot] = conn
        try:
            self._stream(handler, conn, query)
        except (StreamClosed, OSError):
            pass
        finally:
            with self._lock:
                self.stats.active -= 1
                del self._open[slot]
            self._slots.release(slot)

    def _stream(self, handler: BaseHTTPRequestHandler, conn: Conn, query: StreamQuery) -> None:
        if self.config.replay == "none":
            arrived = time.time()
            if self.config.subscribe_delay > 0:
                # Not subscribed yet: what is emitted meanwhile never reaches this stream.
                self._stopping.wait(self.config.subscribe_delay)
            cursor = self._history.start_index(None, None)
            with self._lock:
                self.subscriptions.append((arrived, time.time()))
        else:
            last_id = handler.headers.get("Last-Event-ID")
            cursor = self._history.start_index(query.since_ms, last_id)
        if not self.config.hold_headers:
            conn.send(b"")
        self._streamer.run(conn, cursor, query.allowed)

    def _answer_rest(
        self, handler: BaseHTTPRequestHandler, api: RestApi, path: str, query: str
    ) -> None:
        with self._lock:
            self.stats.rest_requests += 1
        if not bearer_matches(handler.headers.get("Authorization"), self._key):
            send_json(handler, 401, "UNAUTHORIZED", "invalid or missing API key")
            return
        status, body, headers = api.answer(path, query)
        send_answer(handler, status, body, headers)

    def _admit(self) -> Slot | None:
        """Take one of the ``max_connections`` stream slots (the live service has five), if free."""
        slot = self._slots.acquire()
        with self._lock:
            if slot is None:
                self.stats.refused += 1
                return None
            self.stats.active += 1
            self.stats.connections += 1
            return slot

    def crash(self) -> int:
        """Cut every open stream as a crashing server would: their slots stay counted.

        The simulator keeps serving (as the restarted service); the cut streams' slots
        are free again only once the counter expires. Returns how many were cut.
        """
        with self._lock:
            cut = list(self._open.items())
        for slot, conn in cut:
            self._slots.leak(slot)
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        return len(cut)

    @property
    def slots_taken(self) -> int:
        """The stream counter now: open streams plus leaked slots not yet expired."""
        return self._slots.count
