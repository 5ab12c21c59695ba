"""The event value object and the pure normalisation of one SSE frame.

``normalise()`` turns the text of a frame's ``data`` into either an
:class:`Event` (ready to store) or a :class:`Rejection` (kept in the
dead-letter table with a specific reason). It does no I/O and never raises on
bad input: the archive must keep everything it was sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from .fields import MAX_TEXT as MAX_TEXT
from .fields import (
    TEXT_KEYS,
    OutOfRange,
    TooLong,
    Unstorable,
    number_field,
    shorten,
    storable,
    text_field,
)
from .timestamps import TimestampError, parse_event_time

MAX_FRAME_BYTES = 1024 * 1024
"""Frames larger than this are rejected instead of archived."""

RAW_CAP = 64 * 1024
"""How much of a rejected frame's text is kept in ``rejected_events.raw``."""

MAX_DEPTH = 64
"""Frames whose JSON nests deeper than this are rejected.

Real envelopes nest three or four levels. Every parser down the line (the
standard library's, DuckDB's) has a recursion limit of its own; refusing
depth here keeps one hostile frame from failing them later.
"""


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
    """A frame that could not be archived, and why.

    ``raw_sha256`` is the SHA-256 of the frame's full text as received: the
    same frame read again (through the resume overlap) is recorded once,
    with a repeat count.
    """

    reason: str
    raw: str
    raw_length: int
    event_id: str | None = None
    raw_sha256: str = ""


def _raw_bytes(text: str) -> bytes:
    """The bytes a frame's text came from (undecodable bytes are surrogate escapes).

    Text that did not come from bytes may hold other lone surrogates; those
    are encoded as they stand so that measuring and hashing never fail.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _encoded_length(text: str) -> int:
    return len(_raw_bytes(text))


def reject(reason: str, raw: str, event_id: str | None = None) -> Rejection:
    """Build a rejection, capping the kept text and recording its full length and hash."""
    encoded = _raw_bytes(raw)
    length = len(encoded)
    digest = hashlib.sha256(encoded).hexdigest()
    kept = raw
    if length > RAW_CAP:
        # Cap in bytes, without splitting a character.
        kept = encoded[:RAW_CAP].decode("utf-8", "ignore")
    if not storable(kept):
        # Undecodable bytes arrive as surrogate escapes: keep them as U+FFFD
        # (and NUL likewise) so every database accepts the text.
        kept = _raw_bytes(kept).decode("utf-8", "replace").replace("\x00", "\ufffd")
    if event_id is not None and (len(event_id) > MAX_TEXT or not storable(event_id)):
        event_id = None
    return Rejection(reason, kept, length, event_id, digest)


def _has_surrogates(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_decode_json = msgspec.json.Decoder().decode


def _loads(data: str) -> Any:
    """Parse JSON: msgspec for speed, the standard library for what msgspec refuses.

    msgspec is strict RFC 8259; the standard library also takes NaN, numbers
    beyond a float's range and escaped lone surrogates, which a producer may
    send. Only text that neither accepts is invalid.
    """
    try:
        return _decode_json(data)
    except msgspec.DecodeError:
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def too_deep(data: str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than ``limit``.

    Counting brackets settles almost every frame at C speed; only a frame
    with more brackets than ``limit`` is scanned (strings skipped).
    """
    if data.count("{") + data.count("[") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", data)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


_EMPTY: dict[str, Any] = {}


def normalise(data: str) -> Event | Rejection:
    """Turn the ``data`` of one SSE frame into an :class:`Event` or a :class:`Rejection`.

    ``data`` is the frame's text with undecodable bytes kept as surrogate
    escapes (``bytes.decode("utf-8", "surrogateescape")``), so invalid UTF-8
    can be told apart from a literal U+FFFD.
    """
    made = normalise_stamped(data)
    if isinstance(made, Rejection):
        return made
    return made[0]


def normalise_stamped(data: str) -> tuple[Event, str] | Rejection:
    """:func:`normalise`, with the event's time as the frame wrote it (``timestamp`` or
    ``createdAt``): the reader takes the stored text of the usual form from it
    (:func:`ingest.prepare.stamp_text`) instead of formatting the parsed time."""
    envelope = _envelope(data)
    if isinstance(envelope, Rejection):
        return envelope
    names = _id_and_type(envelope, data)
    if isinstance(names, Rejection):
        return names
    event_id, event_type = names
    stamped = _occurred_at(envelope, data, event_id)
    if isinstance(stamped, Rejection):
        return stamped
    stamp, occurred_at = stamped
    body = envelope.get("data", _EMPTY)
    if type(body) is not dict:
        return reject(f"'data' is not an object (got {type(body).__name__})", data, event_id)
    if not body:
        return Event(event_id, event_type, occurred_at, data), stamp
    get = body.get
    percentage = get("percentage")
    if percentage is None:
        percentage = get("pct")
    try:
        principal = text_field(get("principalId"))
        if principal is None:
            # Consent bundles name the person userId, DPDP events dataPrincipalId.
            principal = text_field(get("userId")) or text_field(get("dataPrincipalId"))
        return Event(
            event_id,
            event_type,
            occurred_at,
            data,
            text_field(get("grantId")),
            text_field(get("agentId")),
            principal,
            text_field(get("revokedBy")),
            text_field(get("tokenId")),
            text_field(get("method")),
            number_field(percentage),
            number_field(get("remaining")),
            number_field(get("initial")),
        ), stamp
    except Unstorable:
        # Rare: find which field, for the reason.
        return _unstorable(body, data, event_id)


def _envelope(data: str) -> dict[str, Any] | Rejection:
    """The frame's JSON object, or why there is none that can be kept."""
    if len(data) > MAX_FRAME_BYTES // 4 and _encoded_length(data) > MAX_FRAME_BYTES:
        return reject(f"frame larger than {MAX_FRAME_BYTES} bytes", data, peek_id(data))
    # Counting brackets settles almost every frame without a call.
    if data.count("{") + data.count("[") > MAX_DEPTH and too_deep(data):
        return reject(f"JSON nested deeper than {MAX_DEPTH} levels", data, peek_id(data))
    if _has_surrogates(data):
        try:
            envelope = json.loads(data)
        except (ValueError, RecursionError):
            envelope = None
        return reject("invalid UTF-8 in frame", data, _peek_id(envelope))
    try:
        envelope = _loads(data)
    except ValueError as exc:
        return reject(f"invalid JSON: {exc}", data)
    if type(envelope) is not dict:
        return reject(f"JSON is not an object (got {type(envelope).__name__})", data)
    return envelope


def _id_and_type(envelope: dict[str, Any], data: str) -> tuple[str, str] | Rejection:
    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        return reject("missing or empty 'id'", data)
    if not storable(event_id):
        return reject("'id' holds characters that cannot be stored (NUL or lone surrogate)", data)
    if len(event_id) > MAX_TEXT:
        return reject(f"'id' is longer than {MAX_TEXT} characters", data)
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        return reject("missing or empty 'type'", data, event_id)
    if not storable(event_type):
        return reject(
            "'type' holds characters that cannot be stored (NUL or lone surrogate)", data, event_id
        )
    if len(event_type) > MAX_TEXT:
        return reject(f"'type' is longer than {MAX_TEXT} characters", data, event_id)
    return event_id, event_type


def _occurred_at(
    envelope: dict[str, Any], data: str, event_id: str
) -> tuple[str, datetime] | Rejection:
    """``timestamp`` (the live service) or ``createdAt`` (the documented contract): as
    written, and parsed."""
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
        return stamp, parse_event_time(stamp)
    except TimestampError as exc:
        return reject(f"unparseable {key}: {exc}", data, event_id)


def _unstorable(body: dict[str, Any], data: str, event_id: str) -> Rejection:
    for key in TEXT_KEYS:
        try:
            text_field(body.get(key))
        except TooLong:
            return reject(f"'data.{key}' is longer than {MAX_TEXT} characters", data, event_id)
    pct = "percentage" if body.get("percentage") is not None else "pct"
    for key in (pct, "remaining", "initial"):
        try:
            number_field(body.get(key))
        except OutOfRange:
            value = body.get(key)
            return reject(
                f"'data.{key}' is out of range for a number: {shorten(value)}", data, event_id
            )
    raise AssertionError("no field is unstorable")  # pragma: no cover


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
    except (ValueError, RecursionError):
        return False


def _canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


_ID_IN_HEAD = re.compile(r'"id"\s*:\s*"([^"\\]{1,255})"')


def peek_id(head: str) -> str | None:
    """The event id from the start of a frame too large to parse, if it shows."""
    match = _ID_IN_HEAD.search(head[:4096])
    return match.group(1) if match else None
