"""Events prepared for the archive's database where they are decoded, not where they are written.

The writer's transaction is the one step of an ingest that cannot run in
parallel with anything else of the same archive. Two pieces of its work
depend only on the event, its source, its time of receipt and its channel,
so the stream reader does them as it decodes:

- the **row** the SQLite insert binds (:func:`sqlite_row`: text times, ``''``
  and NaN for NULL, made NULL again by the statement) and, for PostgreSQL,
  the same row as a line of ``COPY`` text (:func:`copy_lines`);
- the row's **digest** for the hash chain (:func:`event_digests`): its
  canonical form starts with ``seq``, which only the insert allocates, so the
  reader makes it from the key it guesses the row will take
  (:mod:`ingest.key_guess`), and the writer uses it when the insert gave that
  key; otherwise it remakes the digest from the row.

``docs/integrity.md`` defines the canonical form; ``ingest.seal.canonical`` is
its reference implementation, and tests hold these digests to it. This
module imports nothing heavier than the standard library, so a reader in a
process of its own starts quickly.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .events import Event
from .seal.canonical import NULL

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


def stamp_text(stamp: str | None) -> str | None:
    """The :func:`sqlite_time` text of an event time written in the producer's usual form
    (``2026-03-01T12:00:00.123Z``, as parsed already), by slicing; None for any other form.

    The checks pin the calendar form (not, say, an ISO week date of the same length),
    so the digits are those the parser read as year, month, day and time of day.
    """
    if (
        stamp is not None
        and len(stamp) == 24
        and stamp[23] == "Z"
        and stamp[19] == "."
        and stamp[10] == "T"
        and stamp[4] == "-"
        and stamp[7] == "-"
        and stamp[13] == ":"
        and stamp[16] == ":"
    ):
        return f"{stamp[:10]} {stamp[11:23]}000"
    return None


def sqlite_row(
    event: Event, source: str, received_text: str, stamp: str | None = None
) -> tuple[Any, ...]:
    """One event as the SQLite insert binds it (``EVENT_COLUMNS`` order); ``stamp`` is its
    time as the frame wrote it, when known (:func:`stamp_text`)."""
    return (
        event.id,
        source,
        event.type,
        stamp_text(stamp) or sqlite_time(event.occurred_at),
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
    """A chunk's events as the SQLite insert binds them (and, for PostgreSQL, their ``COPY``
    lines), with what the worker needs to know
    of their times, so that only plain rows cross from a reader process.

    ``digests`` are the rows' digests, concatenated, made from the keys guessed from
    ``first_key`` (None when not made); ``first_row`` is the first row's number
    (:mod:`ingest.key_guess`). ``earliest`` is the
    earliest event time, ``newest`` the newest plausible one (the resume point's
    candidate), ``implausible`` the ids and times of events dated past the bound.
    """

    rows: list[tuple[Any, ...]]
    digests: bytes | None
    earliest: datetime | None
    newest: datetime | None
    implausible: list[tuple[str, datetime]]
    lines: list[bytes] | None = None
    """For PostgreSQL: each row as a line of ``COPY ... FROM STDIN`` text."""
    first_row: int = 0
    first_key: int | None = None


def prepare_events(
    events: Sequence[Event],
    source: str,
    received_at: datetime,
    channel: str,
    bound: datetime,
    *,
    first_key: int | None = None,
    target: str = "sqlite",
    stamps: Sequence[str | None] = (),
    first_row: int = 0,
) -> PreparedEvents:
    """Rows of ``events`` that arrived at ``received_at`` (numbered from ``first_row``),
    with their digests when ``first_key``, the key guessed for the first of them, is
    known; ``bound`` is the latest plausible event time for them. For a ``postgresql``
    target the rows come with their ``COPY`` lines too. ``stamps`` are the events' times
    as their frames wrote them, when known (:func:`stamp_text`)."""
    received_text = sqlite_time(received_at)
    if stamps:
        rows = [
            sqlite_row(event, source, received_text, stamp)
            for event, stamp in zip(events, stamps, strict=True)
        ]
    else:
        rows = [sqlite_row(event, source, received_text) for event in events]
    times = [event.occurred_at for event in events]
    return prepare_rows(
        rows, times, channel, bound, first_key=first_key, target=target, first_row=first_row
    )


def prepare_rows(
    rows: list[tuple[Any, ...]],
    times: Sequence[datetime],
    channel: str,
    bound: datetime,
    *,
    first_key: int | None = None,
    target: str = "sqlite",
    first_row: int = 0,
) -> PreparedEvents:
    """:func:`prepare_events` for rows made already (:mod:`ingest.frame_rows`), with their
    events' ``times``."""
    newest = max(times, default=None)
    summary: tuple[datetime | None, datetime | None, list[tuple[str, datetime]]]
    if newest is not None and newest <= bound:
        summary = min(times), newest, []
    else:
        summary = _times(zip([row[ID] for row in rows], times, strict=True), bound)
    made = None
    if first_key is not None:
        keys = range(first_key, first_key + len(rows))
        made = event_digests(keys, rows, channel, ZERO[target])
    lines = copy_lines(rows) if target == "postgresql" else None
    return PreparedEvents(rows, made, *summary, lines, first_row, first_key if made else None)


def summarise(rows: list[tuple[Any, ...]], bound: datetime) -> PreparedEvents:
    """The times of prepared ``rows`` (read back from their text), e.g. for part of a chunk."""
    times = _times(((row[ID], stored_time(row[OCCURRED_AT])) for row in rows), bound)
    return PreparedEvents(rows, None, *times)


def _times(
    stamped: Iterable[tuple[str, datetime]], bound: datetime
) -> tuple[datetime | None, datetime | None, list[tuple[str, datetime]]]:
    """The earliest time, the newest plausible one (up to ``bound``) and the implausible
    ``(id, time)`` pairs among ``stamped``."""
    earliest = newest = None
    implausible = []
    for event_id, occurred in stamped:
        if earliest is None or occurred < earliest:
            earliest = occurred
        if occurred > bound:
            implausible.append((event_id, occurred))
        elif newest is None or occurred > newest:
            newest = occurred
    return earliest, newest, implausible


def stored_time(text: str) -> datetime:
    """A time in SQLite's text form (:func:`sqlite_time`), as an aware UTC datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)


DIGEST_SIZE = 32
"""Bytes in a row's digest (SHA-256)."""

ZERO = {"sqlite": 0.0, "postgresql": -0.0}
"""What :func:`event_digests` adds to a float, per database: ``+ 0.0`` makes ``-0.0`` into
``0.0``, as SQLite stores it; ``+ -0.0`` changes nothing, as PostgreSQL keeps it."""


def event_digests(
    keys: Sequence[int], rows: Sequence[Sequence[Any]], channel: str, zero: float = 0.0
) -> bytes:
    """The concatenated SHA-256 digests of the rows with these keys (``seq``), from the
    values the SQLite insert binds (:func:`sqlite_row`) or the PostgreSQL ``COPY`` carries
    (:func:`copy_lines`), each row's canonical form made in one formatting operation.

    What is stored is what was bound, but for what the statement and the column types
    change: ``''`` and NaN are NULL; a float in SQLite's ``REAL`` column that is a whole
    number is stored as an integer, so ``-0.0`` reads back as ``0.0`` there (``zero`` is
    added to every float: :data:`ZERO`). Times are in SQLite's text form. The netstrings
    of text the rows repeat (source, type, time of receipt, agent, principal, who revoked,
    method) are made once.
    """
    texts: dict[str, bytes] = {}
    times: dict[str, bytes] = {}
    # Lookups are a bound dict.get (a C call); only a text not seen yet calls Python.
    known, known_time = texts.get, times.get

    def text(value: str) -> bytes:
        data = value.encode()
        form = texts[value] = b"%d:%b," % (len(data), data)
        return form

    def time(value: str) -> bytes:
        form = times[value] = b"27:%bT%bZ," % (value[:10].encode(), value[11:].encode())
        return form

    chan = text(channel)
    out = []
    for seq, row in zip(keys, rows, strict=True):
        ident, source, kind, occurred, received, g, a, p, r, t, m, pct, rem, ini, payload = row
        number = b"%d" % seq
        ident_b = ident.encode()
        body = payload.encode()
        form = _FORM % (
            len(number), number, len(ident_b), ident_b, known(source) or text(source),
            known(kind) or text(kind), occurred[:10].encode(), occurred[11:].encode(),
            known_time(received) or time(received), chan, len(body), body,
            b"%d:%b," % (len(x := g.encode()), x) if g else NULL,
            (known(a) or text(a)) if a else NULL, (known(p) or text(p)) if p else NULL,
            (known(r) or text(r)) if r else NULL,
            b"%d:%b," % (len(y := t.encode()), y) if t else NULL,
            (known(m) or text(m)) if m else NULL,
            NULL if pct != pct else b"16:%b," % _pack(pct + zero).hex().encode(),
            NULL if rem != rem else b"16:%b," % _pack(rem + zero).hex().encode(),
            NULL if ini != ini else b"16:%b," % _pack(ini + zero).hex().encode(),
        )  # fmt: skip
        out.append(_sha256(form).digest())
    return b"".join(out)


def copy_lines(rows: Sequence[Sequence[Any]]) -> list[bytes]:
    """Each row (:func:`sqlite_row`) as a line of PostgreSQL ``COPY`` text: tab-separated,
    ``\\N`` for NULL (``''`` and NaN, as the SQLite statement reads them), times in UTC."""
    out = []
    for row in rows:
        ident, source, kind, occurred, received, g, a, p, r, t, m, pct, rem, ini, payload = row
        out.append(
            "\t".join(
                (
                    _copy_text(ident), _copy_text(source), _copy_text(kind),
                    occurred + "+00", received + "+00",
                    _copy_text(g) if g else NULL_COPY, _copy_text(a) if a else NULL_COPY,
                    _copy_text(p) if p else NULL_COPY, _copy_text(r) if r else NULL_COPY,
                    _copy_text(t) if t else NULL_COPY, _copy_text(m) if m else NULL_COPY,
                    NULL_COPY if pct != pct else repr(pct),
                    NULL_COPY if rem != rem else repr(rem),
                    NULL_COPY if ini != ini else repr(ini),
                    _copy_text(payload),
                )
            ).encode()
            + b"\n"
        )  # fmt: skip
    return out


NULL_COPY = "\\N"
"""NULL in ``COPY`` text."""


def _copy_text(value: str) -> str:
    """Text as ``COPY`` reads it: backslash, tab, newline and carriage return escaped."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


_FORM = b"5:event,%d:%b,%d:%b,%b%b27:%bT%bZ,%b%b%d:%b," + b"%b" * 9
"""An event row's canonical form (``docs/integrity.md``): the tag, ``seq``, the id, source,
type, both times, channel and payload, then the nine derived fields."""

_pack = struct.Struct(">d").pack
_sha256 = hashlib.sha256
