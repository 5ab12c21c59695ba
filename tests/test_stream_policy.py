"""The stream's status policy and the httpx-sse behaviour it relies on, as tables."""

from __future__ import annotations

import pytest
from httpx_sse._decoders import SSEDecoder

from ingest.stream import ResponseDecision, decide_response

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("status", "content_type", "retry_after", "expected"),
    [
        (200, "text/event-stream", None, ResponseDecision("open")),
        (200, "text/event-stream; charset=utf-8", None, ResponseDecision("open")),
        (
            200,
            "text/html",
            None,
            ResponseDecision(
                "retry", problem="protocol error: expected text/event-stream, got 'text/html'"
            ),
        ),
        (401, "application/json", None, ResponseDecision("auth_failed")),
        (403, "application/json", "5", ResponseDecision("auth_failed")),
        (404, "application/json", None, ResponseDecision("endpoint_error")),
        (400, "application/json", "5", ResponseDecision("endpoint_error")),
        (408, "text/plain", None, ResponseDecision("retry")),
        (429, "application/json", None, ResponseDecision("retry")),
        (429, "application/json", "7", ResponseDecision("retry", 7.0)),
        (
            429,
            "application/json",
            "Thu, 01 Jan 2026 00:00:30 GMT",
            ResponseDecision("retry", 30.0),
        ),
        (503, "application/json", "0", ResponseDecision("retry", 0.0)),
        (502, "text/html", "soon", ResponseDecision("retry")),
        (504, "text/html", None, ResponseDecision("retry")),
    ],
)
def test_decide_response(
    status: int, content_type: str, retry_after: str | None, expected: ResponseDecision
) -> None:
    assert decide_response(status, content_type, retry_after, now=NOW) == expected


def test_a_retry_after_far_away_is_capped() -> None:
    decision = decide_response(429, "application/json", "86400", now=NOW)
    assert decision.action == "retry"
    assert decision.retry_after is not None and decision.retry_after < 86400


def test_the_httpx_sse_decoder_behaves_as_ingest_sse_relies_on() -> None:
    """ingest/sse.py feeds SSEDecoder lines and reads and writes its private
    ``_last_event_id``; an httpx-sse release that changes these fails here."""
    decoder = SSEDecoder()
    decoder._last_event_id = "carried"
    assert decoder.decode("data: a") is None
    assert decoder.decode("data: b") is None
    event = decoder.decode("")
    assert event is not None
    assert (event.event, event.data, event.id) == ("message", "a\nb", "carried")
    for line in ("id: 7", "event: custom", "retry: 2500", "data: x"):
        assert decoder.decode(line) is None
    event = decoder.decode("")
    assert event is not None
    assert (event.event, event.data, event.id, event.retry) == ("custom", "x", "7", 2500)
    assert decoder._last_event_id == "7"
    # An id holding NUL is ignored. A blank line after no data still dispatches
    # an event with empty data (the SSE specification dispatches nothing), so
    # ingest/sse.py drops such frames itself.
    assert decoder.decode("id: bad\x00id") is None
    assert decoder.decode(": keepalive") is None
    empty = decoder.decode("")
    assert empty is not None and empty.data == ""
    assert decoder._last_event_id == "7"
