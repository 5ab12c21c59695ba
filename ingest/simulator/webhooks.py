"""Webhook deliveries, as the live service makes them, to one configured URL.

Every ``grant.created``, ``grant.revoked`` and ``token.issued`` the simulator emits
(after its backlog) becomes a delivery: a POST whose body is exactly the stream's JSON,
signed with ``X-Grantex-Signature-V2: sha256=HMAC(secret, "<ts>.<body>")`` (the
timestamp taken per attempt) and the legacy body-only ``X-Grantex-Signature``. Only a
2xx counts; a delivery is tried up to five times, 30, 60, 120 and 240 s apart
(multiplied by ``time_scale``), then marked failed. Deliveries are kept for the
simulator's ``/v1/webhooks/:id/deliveries``.

The schedule and the signatures are pure functions; :class:`Deliverer` is the thread
that follows the event log and the pool that sends.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from .config import SimulatorConfig
from .generator import EVENT_TYPES, TYPE_CODES
from .history import History
from .ids import UlidSource

USER_AGENT = "Grantex-Webhooks/0.1"
MAX_ATTEMPTS = 5
FIRST_RETRY_S = 30.0
REQUEST_TIMEOUT_S = 10.0
# The live service sends up to five deliveries at once.
CONCURRENCY = 5
_POLL_S = 0.05


def retry_delay(attempts: int, time_scale: float = 1.0) -> float | None:
    """Seconds from the ``attempts``-th failed attempt to the next; None: failed for good."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return FIRST_RETRY_S * float(2 ** (max(attempts, 1) - 1)) * time_scale


def sign_v2(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Grantex-Signature-V2``: HMAC-SHA256 over ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return "sha256=" + mac.hexdigest()


def sign_legacy(secret: str, body: bytes) -> str:
    """``X-Grantex-Signature``: HMAC-SHA256 over the body alone (no replay bound)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def delivery_headers(secret: str, body: bytes, now_s: float) -> dict[str, str]:
    """The headers of one delivery attempt made at unix time ``now_s``."""
    timestamp = str(int(now_s))
    return {
        "Content-Type": "application/json",
        "X-Grantex-Signature": sign_legacy(secret, body),
        "X-Grantex-Timestamp": timestamp,
        "X-Grantex-Signature-V2": sign_v2(secret, timestamp, body),
        "User-Agent": USER_AGENT,
    }


@dataclass
class Delivery:
    """One event's delivery to the webhook; times are unix milliseconds."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    payload: bytes
    created_ms: int
    status: str = "pending"  # pending, delivered or failed
    attempts: int = 0
    delivered_ms: int | None = None
    last_error: str | None = None


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    """POST ``body``; None on a 2xx answer, else what went wrong."""
    parts = urlsplit(url)
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection = connection_type(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return str(exc) or type(exc).__name__
    finally:
        connection.close()


def event_id(payload: bytes) -> str:
    """The ``id`` of a generated envelope, which always comes first: ``{"id":"evt_…"``."""
    return payload[7 : payload.index(b'"', 7)].decode("ascii")


class Deliverer:
    """Follows the event log from a cursor and delivers the webhook's types to its URL."""

    def __init__(
        self, config: SimulatorConfig, history: History, start_ms: int,
        wall: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        if config.webhook_url is None or config.webhook_secret is None:
            raise ValueError("a deliverer needs a webhook URL and secret")
        self.url = self._url = config.webhook_url
        self.types = config.webhook_types
        self._secret = config.webhook_secret
        self._scale = config.time_scale
        self._codes = frozenset(TYPE_CODES[name] for name in config.webhook_types)
        self._history = history
        self._wall = wall
        self._ids = UlidSource(random.Random(f"grantex-webhooks-{config.seed}"))
        self.webhook_id = "wh_" + self._ids(start_ms)
        self.created_ms = start_ms
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self._deliveries: list[Delivery] = []
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="grantex-sim-webhook")
        self._thread: threading.Thread | None = None

    def start(self, cursor: int) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(cursor,), name="grantex-sim-webhooks", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def deliveries(self) -> list[Delivery]:
        """A snapshot of every delivery so far, oldest first."""
        with self._lock:
            return [replace(d) for d in self._deliveries]

    def _run(self, cursor: int) -> None:
        history = self._history
        while not self._stopping.is_set():
            count = history.count
            if count > cursor:
                self._enqueue(cursor, count)
                cursor = count
            for delivery in self._take_due():
                self._pool.submit(self._attempt, delivery)
            with history.cond:
                if history.count <= cursor and not self._stopping.is_set():
                    history.cond.wait(_POLL_S)

    def _enqueue(self, lo: int, hi: int) -> None:
        history = self._history
        codes = self._codes
        now = time.monotonic()
        for index in range(lo, hi):
            if history.types[index] not in codes:
                continue
            start = history.offsets[index] + history.json_skip
            payload = bytes(history.buf[start : history.offsets[index + 1] - 2])
            created_ms = int(self._wall() * 1000)
            delivery = Delivery(
                "whd_" + self._ids(created_ms), self.webhook_id, event_id(payload),
                EVENT_TYPES[history.types[index]], payload, created_ms,
            )  # fmt: skip
            with self._lock:
                self._deliveries.append(delivery)
                heapq.heappush(self._due, (now, next(self._seq), delivery))

    def _take_due(self) -> list[Delivery]:
        now = time.monotonic()
        due: list[Delivery] = []
        with self._lock:
            while self._due and self._due[0][0] <= now:
                due.append(heapq.heappop(self._due)[2])
        return due

    def _attempt(self, delivery: Delivery) -> None:
        if self._stopping.is_set():
            return
        headers = delivery_headers(self._secret, delivery.payload, self._wall())
        error = post(self._url, delivery.payload, headers, REQUEST_TIMEOUT_S)
        with self._lock:
            delivery.attempts += 1
            delivery.last_error = error
            if error is None:
                delivery.status = "delivered"
                delivery.delivered_ms = int(self._wall() * 1000)
                return
            delay = retry_delay(delivery.attempts, self._scale)
            if delay is None:
                delivery.status = "failed"
                return
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), delivery))
