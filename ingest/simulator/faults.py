"""Fault injection: which requests fail, what malformed frames look like, how a drop cuts.

The decisions and the bytes are pure or deterministic here; the server only asks for
them. Injected failures answer with an error status (``fail_statuses`` for the first
requests, ``fail_always`` for every one); malformed frames cycle through
:data:`MALFORMED_KINDS`; a drop ends a connection mid-frame and mid-chunk.
"""

from __future__ import annotations

import random
import threading
import time
from http import HTTPStatus

from .ids import UlidSource, format_ms

MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_json",
    "not_object",
    "missing_id",
    "missing_type",
    "bad_timestamp",
    "data_not_object",
    "invalid_utf8",
)

_FAULT_CODES = {
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


def fault_code(status: int) -> str:
    """The JSON error ``code`` an injected failure status is answered with."""
    try:
        return _FAULT_CODES.get(status) or HTTPStatus(status).name
    except ValueError:
        return "ERROR"


class FaultSchedule:
    """Says which authorized stream requests fail: a deterministic count, no clock."""

    def __init__(self, fail_statuses: tuple[int, ...], fail_always: int | None) -> None:
        self._statuses = fail_statuses
        self._always = fail_always
        self._lock = threading.Lock()
        self._seq = 0

    def next(self) -> int | None:
        """The status to fail this request with, or None; ``fail_always`` uses no slot."""
        if self._always is not None:
            return self._always
        with self._lock:
            seq = self._seq
            self._seq += 1
        return self._statuses[seq] if seq < len(self._statuses) else None


_SSO_DATA = (
    '{"connectionId":"sso_01KJMNQ3FV0000000000000000","protocol":"saml",'
    '"sessionId":"sess_01KJMNQ3FV0000000000000001","email":"mallory@example.com"}'
)


def malformed_frame(kind: str, event_id: str, ms: int, envelope: str) -> bytes:
    """The SSE frame of one malformed event of ``kind`` (one of MALFORMED_KINDS)."""
    stamp = format_ms(ms)
    key = "timestamp" if envelope == "documented" else "createdAt"
    data = _SSO_DATA
    if kind == "invalid_json":
        return b'data: {"id": "evt_x", broken\n\n'
    if kind == "not_object":
        return b"data: [1,2,3]\n\n"
    if kind == "missing_id":
        body = f'{{"type":"sso.login","{key}":"{stamp}","data":{data}}}'
    elif kind == "missing_type":
        body = f'{{"id":"{event_id}","{key}":"{stamp}","data":{data}}}'
    elif kind == "bad_timestamp":
        body = f'{{"id":"{event_id}","type":"sso.login","{key}":"not-a-time","data":{data}}}'
    elif kind == "data_not_object":
        body = f'{{"id":"{event_id}","type":"sso.login","{key}":"{stamp}","data":"oops"}}'
    else:  # invalid_utf8
        prefix = f'data: {{"id":"{event_id}","type":"sso.login","{key}":"{stamp}","data":'
        return prefix.encode("ascii") + b'{"note":"\xff\xfe"}}\n\n'
    return f"data: {body}\n\n".encode("ascii")


class MalformedFrames:
    """Malformed frames for one simulator: ids from a seeded source, stamped with now."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._ids = UlidSource(random.Random(f"grantex-malformed-{seed}"))

    def next(self, envelope: str) -> bytes:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            seq = self._seq
            self._seq += 1
            event_id = "evt_" + self._ids(ms)
        # Kinds cycle simulator-wide so clients that reconnect often still meet them all.
        return malformed_frame(MALFORMED_KINDS[seq % len(MALFORMED_KINDS)], event_id, ms, envelope)


def torn_chunk(frame: bytes | bytearray) -> bytes:
    """What a drop sends of ``frame``: a chunk header promising all of it, then half.

    The cut is mid-chunk as well as mid-frame, so the client sees an incomplete body,
    exactly like a dropped TCP link.
    """
    half = frame[: len(frame) // 2]
    return b"%x\r\n" % len(frame) + half
