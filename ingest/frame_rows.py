"""Frames straight to the rows the SQLite insert binds, in one pass for the usual frame.

The reference path is :func:`normalise_frame_stamped` (the
frame as an :class:`~ingest.events.Event` or a :class:`~ingest.events.Rejection`),
then :func:`ingest.prepare.sqlite_row`. Most frames need little of its care:
ASCII JSON without ``\\u`` escapes (so every string in it is ASCII and holds
no NUL), an id and a type, a time in the producer's usual form, identifiers
that are strings or absent, numbers that are finite floats or integers.
:func:`usual_row` makes such a frame's row in one function, with no
:class:`~ingest.events.Event` in between, and declines (None) every other
frame, which then takes the reference path. So the rows are the reference's
rows, frame for frame: ``tests/test_frame_rows.py`` holds the two to each
other over the real capture, the simulator's events and generated oddities.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import msgspec

from .events import MAX_DEPTH, MAX_FRAME_BYTES, Event, Rejection, normalise_stamped, peek_id, reject
from .fields import MAX_TEXT
from .prepare import NAN, sqlite_row
from .sse import Frame

_INT64 = 2**63
_fromiso = datetime.fromisoformat
_UTC = timezone.utc


def frame_rows(
    frames: Sequence[Frame], source: str, received_text: str
) -> tuple[list[tuple[Any, ...]], list[datetime], list[Rejection]]:
    """The rows of ``frames`` (received at ``received_text``, SQLite's text form) in
    arrival order, each event's time, and the frames that are rejected."""
    rows: list[tuple[Any, ...]] = []
    times: list[datetime] = []
    rejections: list[Rejection] = []
    for frame in frames:
        made = (
            None
            if frame.truncated_length is not None
            else usual_row(frame.data, source, received_text)
        )
        if made is None:
            reference = normalise_frame_stamped(frame)
            if isinstance(reference, Rejection):
                rejections.append(reference)
                continue
            event, stamp = reference
            rows.append(sqlite_row(event, source, received_text, stamp))
            times.append(event.occurred_at)
        else:
            rows.append(made[0])
            times.append(made[1])
    return rows, times, rejections


def normalise_frame(frame: Frame) -> Event | Rejection:
    """One frame as an event, or as a rejection with its reason."""
    made = normalise_frame_stamped(frame)
    if isinstance(made, Rejection):
        return made
    return made[0]


def normalise_frame_stamped(frame: Frame) -> tuple[Event, str] | Rejection:
    """:func:`normalise_frame`, with the event's time as the frame wrote it."""
    if frame.truncated_length is not None:
        rejection = reject(
            f"frame larger than {MAX_FRAME_BYTES} bytes", frame.data, peek_id(frame.data)
        )
        return rejection._replace(raw_length=frame.truncated_length)
    return normalise_stamped(frame.data)


class _Body(msgspec.Struct):
    """The fields of an envelope's ``data`` that give columns (absent and null alike)."""

    grantId: Any = None
    agentId: Any = None
    principalId: Any = None
    userId: Any = None
    dataPrincipalId: Any = None
    revokedBy: Any = None
    tokenId: Any = None
    method: Any = None
    percentage: Any = None
    pct: Any = None
    remaining: Any = None
    initial: Any = None


class _Envelope(msgspec.Struct):
    """An envelope's fields that give columns; ``data`` must be an object when present."""

    id: Any = None
    type: Any = None
    timestamp: Any = None
    createdAt: Any = None
    data: _Body | msgspec.UnsetType = msgspec.UNSET


_decode = msgspec.json.Decoder(_Envelope).decode
_NO_BODY = _Body()


def usual_row(
    data: str, source: str, received_text: str
) -> tuple[tuple[Any, ...], datetime] | None:
    """The row of a usual frame and the event's time; None for a frame the reference path
    must read."""
    if len(data) > MAX_FRAME_BYTES // 4 or not data.isascii() or "\\u" in data:
        return None
    if data.count("{") + data.count("[") > MAX_DEPTH:
        return None
    try:
        envelope = _decode(data)
    except msgspec.DecodeError:
        return None
    ident, kind, stamp = envelope.id, envelope.type, envelope.timestamp
    if stamp is None:
        stamp = envelope.createdAt
    if (
        type(ident) is not str or not 0 < len(ident) <= MAX_TEXT or ident.isspace()
        or type(kind) is not str or not 0 < len(kind) <= MAX_TEXT or kind.isspace()
        or type(stamp) is not str or len(stamp) != 24 or stamp[23] != "Z" or stamp[19] != "."
        or stamp[10] != "T" or stamp[4] != "-" or stamp[7] != "-" or stamp[13] != ":"
        or stamp[16] != ":"
    ):  # fmt: skip
        return None
    try:
        occurred = _fromiso(stamp)
    except ValueError:
        return None
    if occurred.tzinfo is not _UTC:
        return None
    body = _NO_BODY if envelope.data is msgspec.UNSET else envelope.data
    grant, agent, person, revoker, token, method = (
        body.grantId, body.agentId, body.principalId, body.revokedBy, body.tokenId, body.method
    )  # fmt: skip
    if not person:
        person = body.userId if person is None or type(person) is str else person
        if not person:
            person = body.dataPrincipalId if person is None or type(person) is str else person
    for value in (grant, agent, person, revoker, token, method):
        if value is not None and (type(value) is not str or len(value) > MAX_TEXT):
            return None
    share = body.percentage
    if share is None:
        share = body.pct
    share = NAN if share is None else _number(share)
    remaining = NAN if body.remaining is None else _number(body.remaining)
    initial = NAN if body.initial is None else _number(body.initial)
    if share is None or remaining is None or initial is None:
        return None
    return (
        ident, source, kind, f"{stamp[:10]} {stamp[11:23]}000", received_text, grant or "",
        agent or "", person or "", revoker or "", token or "", method or "", share, remaining,
        initial, data,
    ), occurred  # fmt: skip


def _number(value: Any) -> float | None:
    """A finite float, an integer or a numeric string as a float; None for anything the
    reference must read."""
    if type(value) is float:
        return value if value - value == 0.0 else None
    if type(value) is int:
        # Within 64 bits, where every JSON parser reads the integer exactly.
        return float(value) if -_INT64 <= value < _INT64 else None
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if number - number == 0.0 else None
    return None
