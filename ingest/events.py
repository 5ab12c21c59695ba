"""The event value object and the pure normalisation of one SSE frame.

``normalise()`` turns the text of a frame's ``data`` into either an
:class:`Event` (ready to store) or a :class:`Rejection` (kept in the
dead-letter table with a specific reason). It does no I/O and never raises on
bad input: the archive must keep everything it was sent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

MAX_FRAME_BYTES = 1024 * 1024
"""Frames larger than this are rejected instead of archived."""

RAW_CAP = 64 * 1024
"""How much of a rejected frame's text is kept in ``rejected_events.raw``."""

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$"
)


class TimestampError(ValueError):
    """A timestamp that is not ISO 8601."""


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp into an aware UTC datetime.

    Accepts ``Z``, numeric offsets (``+02:00``, ``+0200``), any number of
    fractional digits (truncated to microseconds) and a space instead of
    ``T``. A timestamp without an offset is taken as UTC.
    """
    match = _ISO_RE.match(text.strip())
    if match is None:
        raise TimestampError(f"not an ISO 8601 timestamp: {text[:64]!r}")
    year, month, day, hour, minute, second, frac, _zulu, sign, off_h, off_m = match.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if sign is not None:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        if offset >= timedelta(hours=24):
            raise TimestampError(f"offset out of range: {text[:64]!r}")
        tz = timezone(-offset if sign == "-" else offset)
    try:
        value = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro, tz
        )
    except ValueError as exc:
        raise TimestampError(f"{exc}: {text[:64]!r}") from None
    return value.astimezone(timezone.utc)


def format_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` and millisecond precision or better."""
    value = value.astimezone(timezone.utc)
    if value.microsecond % 1000:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Event:
    """One archived event: the envelope's identity, typed columns and the evidence."""

    id: str
    type: str
    occurred_at: datetime
    payload: str
    grant_id: str | None = None
    agent_id: str | None = None
    principal_id: str | None = None
    revoked_by: str | None = None
    token_id: str | None = None
    method: str | None = None
    percentage: float | None = None
    remaining: float | None = None
    initial: float | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A frame that could not be archived, and why."""

    reason: str
    raw: str
    raw_length: int
    event_id: str | None = None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _encoded_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def reject(reason: str, raw: str, event_id: str | None = None) -> Rejection:
    """Build a rejection, capping the kept text and recording its full length."""
    length = _encoded_length(raw)
    kept = raw if len(raw) <= RAW_CAP else raw[:RAW_CAP]
    # Undecodable bytes arrive as surrogate escapes; store them as U+FFFD so
    # every database accepts the text.
    if _has_surrogates(kept):
        kept = kept.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return Rejection(reason=reason, raw=kept, raw_length=length, event_id=event_id)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def normalise(data: str) -> Event | Rejection:
    """Turn the ``data`` of one SSE frame into an :class:`Event` or a :class:`Rejection`.

    ``data`` is the frame's text with undecodable bytes kept as surrogate
    escapes (``bytes.decode("utf-8", "surrogateescape")``), so invalid UTF-8
    can be told apart from a literal U+FFFD.
    """
    if len(data) > MAX_FRAME_BYTES // 4 and _encoded_length(data) > MAX_FRAME_BYTES:
        return reject(f"frame larger than {MAX_FRAME_BYTES} bytes", data)
    try:
        envelope = json.loads(data)
    except UnicodeEncodeError:
        return reject("invalid UTF-8 in frame", data)
    except ValueError as exc:
        if _has_surrogates(data):
            return reject("invalid UTF-8 in frame", data)
        return reject(f"invalid JSON: {exc}", data)
    if _has_surrogates(data):
        return reject("invalid UTF-8 in frame", data, _peek_id(envelope))
    if not isinstance(envelope, dict):
        return reject(f"JSON is not an object (got {type(envelope).__name__})", data)

    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        return reject("missing or empty 'id'", data)
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        return reject("missing or empty 'type'", data, event_id)

    key = "timestamp" if "timestamp" in envelope else "createdAt"
    stamp = envelope.get(key)
    if stamp is None:
        return reject("missing 'timestamp' or 'createdAt'", data, event_id)
    if not isinstance(stamp, str):
        return reject(f"unparseable {key}: not a string", data, event_id)
    try:
        occurred_at = parse_timestamp(stamp)
    except TimestampError as exc:
        return reject(f"unparseable {key}: {exc}", data, event_id)

    body = envelope.get("data", {})
    if not isinstance(body, dict):
        return reject(f"'data' is not an object (got {type(body).__name__})", data, event_id)

    percentage = body.get("percentage")
    if percentage is None:
        percentage = body.get("pct")
    return Event(
        id=event_id,
        type=event_type,
        occurred_at=occurred_at,
        payload=data,
        grant_id=_text(body.get("grantId")),
        agent_id=_text(body.get("agentId")),
        principal_id=_text(body.get("principalId")),
        revoked_by=_text(body.get("revokedBy")),
        token_id=_text(body.get("tokenId")),
        method=_text(body.get("method")),
        percentage=_number(percentage),
        remaining=_number(body.get("remaining")),
        initial=_number(body.get("initial")),
    )


def _peek_id(envelope: Any) -> str | None:
    if isinstance(envelope, dict):
        value = envelope.get("id")
        if isinstance(value, str) and value:
            return value
    return None


def same_payload(first: str, second: str) -> bool:
    """Whether two envelopes carry the same content (whitespace and key order aside)."""
    if first == second:
        return True
    try:
        return bool(json.loads(first) == json.loads(second))
    except ValueError:
        return False
