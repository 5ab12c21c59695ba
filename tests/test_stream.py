"""The connection policy of stream_events(), with httpx.MockTransport standing in for HTTP.

The stream waits on a :class:`~ingest.clock.ManualClock`: backoff and
``Retry-After`` delays are recorded in ``clock.sleeps``, not slept.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from ingest.clock import EPOCH, ManualClock
from ingest.settings import Secret
from ingest.stream import (
    AuthenticationError,
    Backoff,
    Chunk,
    Closed,
    EndpointError,
    Failed,
    Opened,
    Requested,
    StreamItem,
    StreamOptions,
    parse_retry_after,
    stream_events,
)

KEY = "sk_live_secret_value"
SINCE = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def sse(*lines: str) -> bytes:
    return "".join(lines).encode()


class Script:
    """Answers requests in order; records them; stops the stream after the last one."""

    def __init__(self, *responses: Callable[[httpx.Request], httpx.Response]) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.stop = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) >= len(self.responses):
            self.stop.set()
        return self.responses[min(len(self.requests), len(self.responses)) - 1](request)


def ok(body: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _r: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=body
    )


def status(code: int, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _r: httpx.Response(code, headers=headers, json={"message": "no", "code": "X"})


def run(
    script: Script,
    since: Callable[[], datetime | None] = lambda: None,
    types: tuple[str, ...] = (),
    clock: ManualClock | None = None,
    with_requests: bool = False,
) -> list[StreamItem]:
    """The items the stream yields; without each attempt's :class:`Requested` unless asked."""
    options = StreamOptions(base_url="http://grantex.test", api_key=Secret(KEY), types=types)
    client = httpx.Client(transport=httpx.MockTransport(script))
    items: Iterator[StreamItem] = stream_events(
        options,
        since,
        script.stop,
        client=client,
        rng=random.Random(1),
        clock=clock or ManualClock(),
    )
    return [i for i in items if with_requests or not isinstance(i, Requested)]


def test_request_shape_headers_and_query() -> None:
    script = Script(ok(sse('data: {"a":1}\n\n')))
    items = run(
        script, since=lambda: SINCE, types=("grant.created", "grant.revoked"), with_requests=True
    )
    [request] = script.requests
    assert request.url.path == "/v1/events/stream"
    assert request.url.params["types"] == "grant.created,grant.revoked"
    assert request.url.params["since"] == "2026-03-01T12:00:00.000Z"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept"] == "text/event-stream"
    assert "last-event-id" not in request.headers
    kinds = [type(i) for i in items]
    assert kinds == [Requested, Opened, Chunk, Closed]


def test_each_attempt_yields_its_request_before_it_goes_out() -> None:
    """A run that ends while the head is held back still knows the request was made."""
    clock = ManualClock()
    script = Script(status(503), ok(b""))
    options = StreamOptions(base_url="http://grantex.test", api_key=Secret(KEY))
    client = httpx.Client(transport=httpx.MockTransport(script))
    items = stream_events(options, lambda: SINCE, script.stop, client=client, clock=clock)
    first = next(items)
    assert first == Requested(SINCE, EPOCH)
    assert script.requests == []
    rest = list(items)
    assert [type(i) for i in rest] == [Failed, Requested, Opened, Closed]
    failed, again, opened = rest[0], rest[1], rest[2]
    assert isinstance(failed, Failed) and isinstance(again, Requested)
    assert isinstance(opened, Opened)
    # The answer carries the same request time as the request it answers.
    assert failed.requested_at == first.requested_at
    assert opened.requested_at == again.requested_at > failed.closed_at


def test_no_since_means_live() -> None:
    script = Script(ok(b""))
    run(script)
    assert "since" not in script.requests[0].url.params


def run_until_raised(script: Script, clock: ManualClock) -> tuple[list[StreamItem], Exception]:
    """The items a stream yields before it raises, and what it raises."""
    options = StreamOptions(base_url="http://grantex.test", api_key=Secret(KEY))
    client = httpx.Client(transport=httpx.MockTransport(script))
    items: list[StreamItem] = []
    try:
        for item in stream_events(options, lambda: SINCE, script.stop, client=client, clock=clock):
            items.append(item)
    except Exception as exc:
        return items, exc
    raise AssertionError("the stream did not raise")


@pytest.mark.parametrize("code", [401, 403])
def test_auth_errors_are_fatal_and_do_not_leak_the_key(code: int) -> None:
    script = Script(status(code))
    with pytest.raises(AuthenticationError) as info:
        run(script)
    assert len(script.requests) == 1
    assert KEY not in str(info.value)
    assert str(code) in str(info.value)


@pytest.mark.parametrize(
    ("code", "error"),
    [(401, AuthenticationError), (403, AuthenticationError), (404, EndpointError)],
)
def test_a_fatal_answer_is_yielded_as_an_attempt_before_the_error(
    code: int, error: type[Exception]
) -> None:
    clock = ManualClock()

    def slow_refusal(request: httpx.Request) -> httpx.Response:
        clock.advance(1.5)  # the answer takes 1.5 s to come
        return status(code)(request)

    items, raised = run_until_raised(Script(slow_refusal), clock)
    assert isinstance(raised, error)
    [request, attempt] = items
    assert request == Requested(SINCE, EPOCH)
    assert isinstance(attempt, Failed)
    assert (attempt.status_code, attempt.retry_in, attempt.since) == (code, None, SINCE)
    assert attempt.reason == f'HTTP {code}: {{"message":"no","code":"X"}}'
    assert KEY not in attempt.reason
    assert attempt.requested_at == EPOCH
    assert attempt.first_byte_at == attempt.closed_at == EPOCH + timedelta(seconds=1.5)


@pytest.mark.parametrize("code", [400, 404, 410])
def test_client_errors_are_fatal(code: int) -> None:
    with pytest.raises(EndpointError):
        run(Script(status(code)))


def test_an_opened_stream_carries_when_it_was_requested_and_first_answered() -> None:
    """The service holds its headers until its first event: up to 30 s after the request."""
    clock = ManualClock()

    def late_headers(request: httpx.Request) -> httpx.Response:
        clock.advance(30.0)
        return ok(sse("data: a\n\n"))(request)

    items = run(Script(late_headers), clock=clock)
    opened = items[0]
    assert isinstance(opened, Opened)
    assert (opened.requested_at, opened.first_byte_at) == (
        EPOCH,
        EPOCH + timedelta(seconds=30),
    )


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_retryable_statuses_then_success(code: int) -> None:
    script = Script(status(code), ok(sse("data: x\n\n")))
    items = run(script, with_requests=True)
    assert [type(i) for i in items] == [Requested, Failed, Requested, Opened, Chunk, Closed]
    items = [i for i in items if not isinstance(i, Requested)]
    assert isinstance(items[0], Failed) and items[0].status_code == code


def test_retry_after_seconds_is_honoured() -> None:
    clock = ManualClock()
    script = Script(status(429, **{"Retry-After": "7"}), ok(b""))
    items = run(script, clock=clock)
    assert isinstance(items[0], Failed) and items[0].retry_in == 7.0
    assert clock.sleeps[0] == 7.0
    # The next attempt is made once the wait is over.
    assert isinstance(items[1], Opened)
    assert items[1].requested_at - items[0].closed_at == timedelta(seconds=7)
    assert [r.status_code for r in (items[0], items[1])] == [429, 200]


def test_retry_after_date_is_measured_on_the_clock() -> None:
    clock = ManualClock(start=datetime(2026, 1, 1, tzinfo=timezone.utc))
    script = Script(status(503, **{"Retry-After": "Thu, 01 Jan 2026 00:00:30 GMT"}), ok(b""))
    items = run(script, clock=clock)
    assert isinstance(items[0], Failed) and items[0].retry_in == 30.0
    assert clock.sleeps == [30.0]


def test_retry_after_is_clamped() -> None:
    assert parse_retry_after("100000") == 300.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_transport_error_is_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    clock = ManualClock()
    script = Script(refuse, ok(sse("data: x\n\n")))
    items = run(script, clock=clock)
    assert isinstance(items[0], Failed) and items[0].status_code is None
    assert "cannot connect" in items[0].reason
    # Refused: no byte came, and the attempt is over when the refusal came.
    assert (items[0].requested_at, items[0].first_byte_at, items[0].closed_at) == (
        EPOCH,
        None,
        EPOCH,
    )
    assert items[0].retry_in is not None


def test_wrong_content_type_is_a_retryable_protocol_error() -> None:
    script = Script(
        lambda _r: httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>"),
        ok(b""),
    )
    items = run(script)
    assert isinstance(items[0], Failed) and "protocol error" in items[0].reason


def test_clean_end_of_stream_reconnects_and_asks_for_since_each_time() -> None:
    calls: list[int] = []

    def since() -> datetime | None:
        calls.append(1)
        return SINCE

    script = Script(ok(sse("data: a\n\n")), ok(sse("data: b\n\n")))
    items = run(script, since=since)
    assert len(calls) == 2
    closed = [i for i in items if isinstance(i, Closed)]
    assert closed[0].reason == "end of stream"
    assert len(closed) == 2


def test_last_event_id_is_sent_after_the_server_sent_ids() -> None:
    script = Script(ok(sse("id: 41\ndata: a\n\nid: 42\ndata: b\n\n")), ok(b""))
    run(script)
    assert "last-event-id" not in script.requests[0].headers
    assert script.requests[1].headers["last-event-id"] == "42"


def test_retry_field_sets_the_reconnect_delay() -> None:
    clock = ManualClock()
    script = Script(ok(sse("retry: 2500\n\ndata: a\n\n")), ok(b""))
    run(script, clock=clock)
    assert clock.sleeps[0] == 2.5


def test_delivering_connection_resets_backoff() -> None:
    clock = ManualClock()
    script = Script(status(503), status(503), ok(sse("data: a\n\n")), ok(b""), ok(b""))
    run(script, clock=clock)
    # Two failures back off, the delivering connection reconnects at once
    # (no wait), the empty one backs off from the start again.
    assert len(clock.sleeps) == 3
    first, second, again = clock.sleeps
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0 and 0.25 <= again <= 0.5


def test_a_stop_during_the_backoff_ends_the_stream_without_another_attempt() -> None:
    script = Script(status(503), ok(b""))

    class Stopping(ManualClock):
        def wait(self, event: threading.Event, seconds: float) -> bool:
            event.set()
            return super().wait(event, seconds)

    items = run(script, clock=Stopping())
    assert [type(i) for i in items] == [Failed]
    assert len(script.requests) == 1


def test_keepalive_comments_are_not_activity() -> None:
    script = Script(ok(b": keepalive\n\n: keepalive\n\n"))
    items = run(script)
    assert [type(i) for i in items] == [Opened, Closed]


def test_backoff_is_capped_and_jittered() -> None:
    # The delays themselves are a table in tests/test_retry.py.
    backoff = Backoff(0.5, 60.0, random.Random(3))
    delays = [backoff.next_delay() for _ in range(12)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 60.0 for d in delays)
    assert delays[-1] >= 30.0
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_read_timeout_closes_the_connection_for_reconnect() -> None:
    class Stalling(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"data: a\n\n"
            raise httpx.ReadTimeout("stalled")

    script = Script(
        lambda _r: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Stalling()
        ),
        ok(b""),
    )
    items = run(script)
    closed = [i for i in items if isinstance(i, Closed)]
    assert "read timeout" in closed[0].reason
    assert closed[0].events == 1


def test_drop_mid_frame_keeps_complete_frames_only() -> None:
    class Dropping(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"data: whole\n\ndata: hal"
            raise httpx.RemoteProtocolError("peer closed connection")

    script = Script(
        lambda _r: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Dropping()
        ),
        ok(b""),
    )
    items = run(script)
    chunks = [i for i in items if isinstance(i, Chunk)]
    assert [f.data for c in chunks for f in c.frames] == ["whole"]
    closed = [i for i in items if isinstance(i, Closed)]
    assert "connection lost" in closed[0].reason


def test_last_event_id_survives_a_connection_without_ids() -> None:
    script = Script(
        ok(sse("id: abc\ndata: a\n\n")),
        ok(sse(": keepalive\n\n")),
        ok(sse("data: b\n\n")),
        ok(b""),
    )
    run(script)
    assert [r.headers.get("last-event-id") for r in script.requests] == [None, "abc", "abc", "abc"]


def test_a_frame_still_arriving_is_reported_as_activity() -> None:
    class Slow(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'data: {"id": "evt_1",'
            yield b' "type": "x"}\n\n'

    script = Script(
        lambda _r: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Slow()
        ),
        ok(b""),
    )
    items = run(script)
    chunks = [i for i in items if isinstance(i, Chunk)]
    assert [len(c.frames) for c in chunks] == [0, 1]
