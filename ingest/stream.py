"""The Grantex event stream: connection loop, resume point, backoff and liveness.

:func:`stream_events` owns everything httpx-sse leaves to its user:
reconnecting, ``Last-Event-ID``, the ``retry:`` field, capped jittered
backoff, ``Retry-After``, which statuses are fatal, and the read timeout as
the liveness signal. It yields frames and connection events and knows
nothing about databases: the resume point comes from a callback.

Each connection attempt (:func:`_attempt`) asks :func:`decide_response`
what the response's head means and, for a stream, reads it (:func:`_read`).
How long to wait before the next attempt is the policy of
:mod:`ingest.retry`; the waiting itself goes through a
:class:`~ingest.clock.Clock`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime

import httpx

from . import retry
from .clock import SYSTEM, Clock
from .retry import RETRY_AFTER_CAP, RETRY_FIELD_CAP, Backoff, retry_field_delay
from .settings import Secret
from .sse import Control, Frame, FrameDecoder
from .timestamps import format_timestamp

log = logging.getLogger("grantex_archive.stream")

STREAM_PATH = "/v1/events/stream"


class StreamError(Exception):
    """The stream cannot be used and retrying will not help."""


class AuthenticationError(StreamError):
    """401/403: the API rejected the key."""


class EndpointError(StreamError):
    """404 or another client error: the URL or a parameter is wrong."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """The frames decoded from one network read."""

    frames: list[Frame]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Requested:
    """A connection attempt's request went out; its :class:`Opened` or :class:`Failed` follows.

    The live service may hold the response head back for up to 30 s, while
    it has subscribed the request already: the attempt is recorded from
    here, so that a run ending while it waits leaves a trace.
    """

    since: datetime | None
    requested_at: datetime


@dataclass(frozen=True, slots=True)
class Opened:
    """A stream connection was established (HTTP 200, event stream).

    ``requested_at`` is when the request went out, ``first_byte_at`` when
    the status and headers arrived. The live service holds its headers back
    until its first event or keepalive, up to 30 s, but subscribes as the
    request arrives: the connection covers time from ``requested_at``.
    """

    since: datetime | None
    status_code: int
    requested_at: datetime
    first_byte_at: datetime


@dataclass(frozen=True, slots=True)
class Closed:
    """An established connection ended."""

    reason: str
    events: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Failed:
    """A connection attempt that did not become a stream.

    ``first_byte_at`` is when the response's head arrived (None when nothing
    did: refused, timed out); ``closed_at`` when the attempt was over.
    ``retry_in`` is the wait before the next attempt, or None when there is
    none: :func:`stream_events` raises :class:`StreamError` right after.
    """

    reason: str
    status_code: int | None
    since: datetime | None
    requested_at: datetime
    first_byte_at: datetime | None
    closed_at: datetime
    retry_in: float | None


StreamItem = Chunk | Requested | Opened | Closed | Failed


@dataclass(frozen=True)
class StreamOptions:
    base_url: str
    api_key: Secret
    types: tuple[str, ...] = ()
    read_timeout: float = 90.0
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 5.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), clamped.

    ``now`` is the Unix time an HTTP date is measured from (default: the
    system clock's).
    """
    return retry.parse_retry_after(value, time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class ResponseDecision:
    """What to do with the answer to a connection attempt.

    ``action`` is ``"open"`` (read the stream), ``"retry"`` (after
    ``retry_after`` seconds when the server said, else the backoff),
    ``"auth_failed"`` or ``"endpoint_error"`` (both fatal: retrying cannot help).
    """

    action: str
    retry_after: float | None = None
    problem: str | None = None


def decide_response(
    status: int, content_type: str, retry_after: str | None, now: float | None = None
) -> ResponseDecision:
    """The status policy, as a pure function of what the response's head says.

    401/403 and other 4xx are fatal; 408, 429 and 5xx are retried, honouring
    ``Retry-After``; a 200 that is not an event stream (a proxy's error page)
    is retried with the backoff.
    """
    if status in (401, 403):
        return ResponseDecision("auth_failed")
    if status != 200:
        if status in (408, 429) or status >= 500:
            return ResponseDecision("retry", parse_retry_after(retry_after, now))
        return ResponseDecision("endpoint_error")
    if not content_type.startswith("text/event-stream"):
        return ResponseDecision(
            "retry", problem=f"protocol error: expected text/event-stream, got {content_type!r}"
        )
    return ResponseDecision("open")


def _status_reason(response: httpx.Response) -> str:
    # The body of an error (JSON message and code) helps the operator; it
    # never contains the key, but cap it anyway.
    try:
        body = response.read().decode("utf-8", "replace").strip()
    except httpx.HTTPError:
        body = ""
    detail = f": {body[:300]}" if body else ""
    return f"HTTP {response.status_code}{detail}"


def make_client(options: StreamOptions) -> httpx.Client:
    """The HTTP client for the stream: the read timeout is the liveness signal."""
    return httpx.Client(
        timeout=httpx.Timeout(
            connect=options.connect_timeout,
            read=options.read_timeout,
            write=options.connect_timeout,
            pool=options.connect_timeout,
        ),
        follow_redirects=True,
        headers={"User-Agent": "grantex-archive"},
    )


@dataclass(slots=True)
class _Link:
    """What carries over from one connection to the next."""

    last_event_id: str = ""
    retry_field: float | None = None


def stream_events(
    options: StreamOptions,
    since_for_connect: Callable[[], datetime | None],
    stop: threading.Event,
    client: httpx.Client | None = None,
    rng: random.Random | None = None,
    clock: Clock = SYSTEM,
) -> Iterator[StreamItem]:
    """Connect, read and reconnect until ``stop`` is set or a fatal error is raised.

    ``since_for_connect`` is called before every connection attempt and
    returns the ``since`` to ask for (the caller reads it back from what it
    has committed). Every attempt yields :class:`Requested` as its request
    goes out, then one :class:`Opened` or :class:`Failed` (unless ``stop``
    ends the run while it waits). A response that retrying cannot fix yields its
    :class:`Failed` (``retry_in`` None), then raises
    :class:`AuthenticationError` or :class:`EndpointError`.
    """
    own_client = client is None
    http = client or make_client(options)
    backoff = Backoff(options.backoff_initial, options.backoff_max, rng)
    link = _Link()
    try:
        while not stop.is_set():
            since = since_for_connect()
            if stop.is_set():
                return
            delay = yield from _attempt(http, options, since, link, backoff, stop, clock)
            if stop.is_set():
                return
            if delay > 0:
                clock.wait(stop, delay)
    finally:
        if own_client:
            http.close()


def _attempt(
    http: httpx.Client,
    options: StreamOptions,
    since: datetime | None,
    link: _Link,
    backoff: Backoff,
    stop: threading.Event,
    clock: Clock,
) -> Generator[StreamItem, None, float]:
    """One connection attempt and, if it becomes a stream, its reading.

    Returns the delay before the next attempt; raises :class:`StreamError`
    when there must be none.
    """
    url = options.base_url + STREAM_PATH
    requested_at = clock.now()
    first_byte_at: datetime | None = None
    yield Requested(since, requested_at)
    try:
        with http.stream(
            "GET", url, params=_params(options, since), headers=_headers(options, link)
        ) as response:
            first_byte_at = clock.now()
            status = response.status_code
            decision = decide_response(
                status,
                response.headers.get("content-type", ""),
                response.headers.get("Retry-After"),
                now=first_byte_at.timestamp(),
            )
            if decision.action == "open":
                yield Opened(since, status, requested_at, first_byte_at)
                delivered = yield from _read(response, options, link, stop, clock)
                return backoff.after_connection(delivered, link.retry_field)
            reason = decision.problem or _status_reason(response)
            delay = (
                backoff.after_refusal(decision.retry_after) if decision.action == "retry" else None
            )
            yield Failed(reason, status, since, requested_at, first_byte_at, clock.now(), delay)
            if decision.action == "auth_failed":
                raise AuthenticationError(f"the API rejected the credentials ({reason})")
            if decision.action == "endpoint_error":
                raise EndpointError(f"{url} answered {reason}")
            assert delay is not None
            return delay
    except httpx.TransportError as exc:
        delay = backoff.next_delay()
        reason = f"cannot connect: {type(exc).__name__}: {exc}".rstrip(": ")
        yield Failed(reason, None, since, requested_at, first_byte_at, clock.now(), delay)
        return delay


def _read(
    response: httpx.Response,
    options: StreamOptions,
    link: _Link,
    stop: threading.Event,
    clock: Clock,
) -> Generator[StreamItem, None, int]:
    """Read an open stream until it ends or ``stop`` is set; returns the frames delivered."""
    decoder = FrameDecoder(link.last_event_id)
    delivered = 0
    reason = "end of stream"
    try:
        for raw in response.iter_bytes():
            items = decoder.feed(raw)
            frames = [item for item in items if isinstance(item, Frame)]
            if decoder.retry is not None:
                link.retry_field = retry_field_delay(decoder.retry)
            link.last_event_id = decoder.last_event_id
            if frames:
                delivered += len(frames)
                yield Chunk(frames, clock.now())
            elif decoder.partial:
                # An event is still arriving: not idle.
                yield Chunk([], clock.now())
            if stop.is_set():
                reason = "stopped"
                break
    except httpx.ReadTimeout:
        reason = f"no data for {options.read_timeout:g}s (read timeout)"
    except httpx.TransportError as exc:
        reason = f"connection lost: {type(exc).__name__}: {exc}".rstrip(": ")
    decoder.close()
    yield Closed(reason, delivered, clock.now())
    return delivered


def _params(options: StreamOptions, since: datetime | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if options.types:
        params["types"] = ",".join(options.types)
    if since is not None:
        params["since"] = format_timestamp(since)
    return params


def _headers(options: StreamOptions, link: _Link) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {options.api_key.reveal()}",
        "Accept": "text/event-stream",
        "Cache-Control": "no-cache",
    }
    if link.last_event_id:
        headers["Last-Event-ID"] = link.last_event_id
    return headers


__all__ = [
    "RETRY_AFTER_CAP",
    "RETRY_FIELD_CAP",
    "AuthenticationError",
    "Backoff",
    "Chunk",
    "Closed",
    "Control",
    "EndpointError",
    "Failed",
    "Opened",
    "Requested",
    "StreamError",
    "StreamItem",
    "StreamOptions",
    "parse_retry_after",
    "stream_events",
]
