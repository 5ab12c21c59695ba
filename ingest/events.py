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
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import orjson

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


class Event(NamedTuple):
    """One archived event: the envelope's identity, typed columns and the evidence.

    A named tuple rather than a dataclass: read-only, and cheap enough to
    build a hundred thousand times a second.
    """

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


class Rejection(NamedTuple):
    """A frame that could not be archived, and why."""

    reason: str
    raw: str
    raw_length: int
    event_id: str | None = None


def _storable(value: str) -> bool:
    # PostgreSQL text cannot hold NUL, and no database takes unpaired
    # surrogates (which JSON escapes like "\ud800" can produce).
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value and _storable(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
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
    kept = raw
    if length > RAW_CAP:
        # Cap in bytes, without splitting a character.
        kept = raw.encode("utf-8", "surrogateescape")[:RAW_CAP].decode("utf-8", "ignore")
    if not _storable(kept):
        # Undecodable bytes arrive as surrogate escapes: keep them as U+FFFD
        # (and NUL likewise) so every database accepts the text.
        kept = (
            kept.encode("utf-8", "surrogateescape")
            .decode("utf-8", "replace")
            .encode("utf-8", "surrogatepass")
            .decode("utf-8", "replace")
            .replace("\x00", "\ufffd")
        )
    if event_id is not None and not _storable(event_id):
        event_id = None
    return Rejection(reason, kept, length, event_id)


def _has_surrogates(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _loads(data: str) -> Any:
    """Parse JSON: orjson for speed, the standard library for what orjson refuses.

    orjson is strict RFC 8259; the standard library also takes NaN, huge
    numbers and escaped lone surrogates, which a producer may send. Only text
    that neither accepts is invalid.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _occurred_at(stamp: str) -> datetime:
    # Fast path for the usual "2026-03-01T12:00:00.000Z"; the regular
    # expression handles everything else (and Python 3.10's fromisoformat,
    # which refuses "Z").
    if len(stamp) > 19 and stamp[10] in "Tt":
        try:
            value = datetime.fromisoformat(stamp)
        except ValueError:
            return parse_timestamp(stamp)
        if value.tzinfo is timezone.utc:
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    return parse_timestamp(stamp)


def normalise(data: str) -> Event | Rejection:
    """Turn the ``data`` of one SSE frame into an :class:`Event` or a :class:`Rejection`.

    ``data`` is the frame's text with undecodable bytes kept as surrogate
    escapes (``bytes.decode("utf-8", "surrogateescape")``), so invalid UTF-8
    can be told apart from a literal U+FFFD.
    """
    if len(data) > MAX_FRAME_BYTES // 4 and _encoded_length(data) > MAX_FRAME_BYTES:
        return reject(f"frame larger than {MAX_FRAME_BYTES} bytes", data, peek_id(data))
    if _has_surrogates(data):
        try:
            envelope = json.loads(data)
        except ValueError:
            envelope = None
        return reject("invalid UTF-8 in frame", data, _peek_id(envelope))
    try:
        envelope = _loads(data)
    except ValueError as exc:
        return reject(f"invalid JSON: {exc}", data)
    if type(envelope) is not dict:
        return reject(f"JSON is not an object (got {type(envelope).__name__})", data)

    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        return reject("missing or empty 'id'", data)
    if not _storable(event_id):
        return reject("'id' holds characters that cannot be stored (NUL or lone surrogate)", data)
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        return reject("missing or empty 'type'", data, event_id)
    if not _storable(event_type):
        return reject(
            "'type' holds characters that cannot be stored (NUL or lone surrogate)", data, event_id
        )

    key = "timestamp"
    stamp = envelope.get(key)
    if stamp is None:
        key = "createdAt"
        stamp = envelope.get(key)
    if stamp is None:
        return reject("missing 'timestamp' or 'createdAt'", data, event_id)
    if not isinstance(stamp, str):
        return reject(f"unparseable {key}: not a string", data, event_id)
    try:
        occurred_at = _occurred_at(stamp)
    except TimestampError as exc:
        return reject(f"unparseable {key}: {exc}", data, event_id)

    body = envelope.get("data", _EMPTY)
    if type(body) is not dict:
        return reject(f"'data' is not an object (got {type(body).__name__})", data, event_id)
    if not body:
        return Event(event_id, event_type, occurred_at, data)

    get = body.get
    percentage = get("percentage")
    if percentage is None:
        percentage = get("pct")
    return Event(
        event_id,
        event_type,
        occurred_at,
        data,
        _text(get("grantId")),
        _text(get("agentId")),
        _text(get("principalId")),
        _text(get("revokedBy")),
        _text(get("tokenId")),
        _text(get("method")),
        _number(percentage),
        _number(get("remaining")),
        _number(get("initial")),
    )


_EMPTY: dict[str, Any] = {}


def _peek_id(envelope: Any) -> str | None:
    if isinstance(envelope, dict):
        value = envelope.get("id")
        if isinstance(value, str) and value:
            return value
    return None


def same_payload(first: str, second: str) -> bool:
    """Whether two envelopes carry the same content (whitespace and key order aside).

    Compared as canonical JSON, so ``1``, ``1.0`` and ``true`` stay different.
    """
    if first == second:
        return True
    try:
        return _canonical(first) == _canonical(second)
    except ValueError:
        return False


def _canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


_ID_IN_HEAD = re.compile(r'"id"\s*:\s*"([^"\\]{1,255})"')


def peek_id(head: str) -> str | None:
    """The event id from the start of a frame too large to parse, if it shows."""
    match = _ID_IN_HEAD.search(head[:4096])
    return match.group(1) if match else None
