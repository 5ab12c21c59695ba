"""Events prepared for a SQLite archive where they are decoded, not where they are written.

The writer's transaction is the one step of an ingest that cannot run in
parallel with anything else of the same archive. Two pieces of its work
depend only on the event, its source, its time of receipt and its channel,
so the stream reader does them as it decodes:

- the **row** the SQLite insert binds (:func:`sqlite_row`: text times, ``''``
  and NaN for NULL, made NULL again by the statement);
- the **tail** of the row's canonical form for the hash chain
  (:func:`event_tails`): every field after ``seq``, which only the insert
  allocates. The writer completes each digest with :func:`digests_from_tails`
  once it knows the keys: one SHA-256 per row.

``docs/integrity.md`` defines the canonical form; ``ingest.seal.canonical`` is
its reference implementation, and tests hold these digests to it. This
module imports nothing heavier than the standard library, so a reader in a
process of its own starts quickly.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .events import Event

NAN = float("nan")

ID, OCCURRED_AT, RECEIVED_AT, PAYLOAD = 0, 3, 4, 14
"""Positions in a row (``EVENT_COLUMNS`` order)."""


def sqlite_time(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (UTC), made without its per-row cost."""
    if value.tzinfo is not None and value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 (fastest on the hot path)
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def sqlite_row(event: Event, source: str, received_text: str) -> tuple[Any, ...]:
    """One event as the SQLite insert binds it (``EVENT_COLUMNS`` order)."""
    return (
        event.id,
        source,
        event.type,
        sqlite_time(event.occurred_at),
        received_text,
        event.grant_id or "",
        event.agent_id or "",
        event.principal_id or "",
        event.revoked_by or "",
        event.token_id or "",
        event.method or "",
        NAN if event.percentage is None else event.percentage,
        NAN if event.remaining is None else event.remaining,
        NAN if event.initial is None else event.initial,
        event.payload,
    )


@dataclass(frozen=True, slots=True)
class PreparedEvents:
    """A chunk's events as the SQLite insert binds them, with what the worker needs to know
    of their times, so that only plain rows cross from a reader process.

    ``tails`` are the rows' canonical tails (None when not made); ``earliest`` is the
    earliest event time, ``newest`` the newest plausible one (the resume point's
    candidate), ``implausible`` the ids and times of events dated past the bound.
    """

    rows: list[tuple[Any, ...]]
    tails: list[bytes] | None
    earliest: datetime | None
    newest: datetime | None
    implausible: list[tuple[str, datetime]]


def prepare_events(
    events: Sequence[Event],
    source: str,
    received_at: datetime,
    channel: str,
    bound: datetime,
    tails: bool = True,
) -> PreparedEvents:
    """Rows (and, with ``tails``, canonical tails) of ``events`` that arrived at
    ``received_at``; ``bound`` is the latest plausible event time for them."""
    received_text = sqlite_time(received_at)
    rows = [sqlite_row(event, source, received_text) for event in events]
    earliest = newest = None
    implausible = []
    for event in events:
        occurred = event.occurred_at
        if earliest is None or occurred < earliest:
            earliest = occurred
        if occurred > bound:
            implausible.append((event.id, occurred))
        elif newest is None or occurred > newest:
            newest = occurred
    made = event_tails(rows, channel) if tails else None
    return PreparedEvents(rows, made, earliest, newest, implausible)


def summarise(rows: list[tuple[Any, ...]], bound: datetime) -> PreparedEvents:
    """The times of prepared ``rows`` (read back from their text), e.g. for part of a chunk."""
    earliest = newest = None
    implausible = []
    for row in rows:
        occurred = stored_time(row[OCCURRED_AT])
        if earliest is None or occurred < earliest:
            earliest = occurred
        if occurred > bound:
            implausible.append((row[ID], occurred))
        elif newest is None or occurred > newest:
            newest = occurred
    return PreparedEvents(rows, None, earliest, newest, implausible)


def stored_time(text: str) -> datetime:
    """A time in SQLite's text form (:func:`sqlite_time`), as an aware UTC datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)


def event_tails(rows: Sequence[Sequence[Any]], channel: str) -> list[bytes]:
    """The canonical form of each row after its ``seq`` field, from the values the SQLite
    insert binds (:func:`sqlite_row`).

    What SQLite stores is what was bound, but for what the statement and the column types
    change: ``''`` and NaN are NULL; a float in a ``REAL`` column that is a whole number is
    stored as an integer, so ``-0.0`` reads back as ``0.0`` (hence ``+ 0.0``). Times are in
    SQLite's text form. The netstrings of text the rows repeat (source, type, time of
    receipt) are made once.
    """
    texts: dict[str, bytes] = {}
    times: dict[str, bytes] = {}

    def text(value: str) -> bytes:
        form = texts.get(value)
        if form is None:
            data = value.encode()
            form = texts[value] = b"%d:%b," % (len(data), data)
        return form

    def time(value: str) -> bytes:
        form = times.get(value)
        if form is None:
            form = times[value] = b"27:%bT%bZ," % (value[:10].encode(), value[11:].encode())
        return form

    chan = text(channel)
    out = []
    for row in rows:
        ident, source, kind, occurred, received, g, a, p, r, t, m, pct, rem, ini, payload = row
        ident_b = ident.encode()
        body = payload.encode()
        out.append(
            _TAIL_FORM
            % (
                len(ident_b), ident_b, text(source), text(kind),
                occurred[:10].encode(), occurred[11:].encode(), time(received), chan,
                len(body), body,
                _netstring(g) if g else NULL, _netstring(a) if a else NULL,
                _netstring(p) if p else NULL, _netstring(r) if r else NULL,
                _netstring(t) if t else NULL, _netstring(m) if m else NULL,
                NULL if pct != pct else b"16:%b," % _pack(pct + 0.0).hex().encode(),
                NULL if rem != rem else b"16:%b," % _pack(rem + 0.0).hex().encode(),
                NULL if ini != ini else b"16:%b," % _pack(ini + 0.0).hex().encode(),
            )
        )  # fmt: skip
    return out


def digests_from_tails(keys: Sequence[int], tails: Sequence[bytes]) -> bytes:
    """The concatenated SHA-256 digests of the rows with these keys (``seq``) and tails."""
    out = []
    for seq, tail in zip(keys, tails, strict=True):
        number = b"%d" % seq
        out.append(_sha256(b"5:event,%d:%b,%b" % (len(number), number, tail)).digest())
    return b"".join(out)


def _netstring(value: str) -> bytes:
    data = value.encode()
    return b"%d:%b," % (len(data), data)


NULL = b"~"
"""A NULL field (as ``ingest.seal.canonical.NULL``)."""

_TAIL_FORM = b"%d:%b,%b%b27:%bT%bZ,%b%b%d:%b," + b"%b" * 9
"""An event's canonical form after ``seq``: id, source, type, occurred_at, received_at,
channel, payload, then the nine derived fields."""

_pack = struct.Struct(">d").pack
_sha256 = hashlib.sha256
