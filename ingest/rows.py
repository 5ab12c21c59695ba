"""Events as the rows the store writes: the one encoding of an event for each database.

The hot path of an ingest: SQLite gets multi-row INSERTs of prepared tuples
(text times, empty strings and NaN for NULL, turned back by ``NULLIF`` in
the statement), PostgreSQL a staging table. The benchmarks build their rows
here too, so they measure the same encoding.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Any, NamedTuple

from .events import Event, Rejection
from .schema import EVENT_COLUMNS


class Received(NamedTuple):
    """An item that arrived on the stream, stamped with when."""

    item: Event | Rejection
    received_at: datetime


def rows_per_statement(connection: Any) -> int:
    """Rows per multi-row INSERT: as many as the build's parameter limit allows, up to 500.

    Long statements keep SQLite's work in one call that runs without the
    GIL; SQLite before 3.32 (or a build with a low limit) allows 999
    parameters, enough for 64 rows.
    """
    limit = 999
    getlimit = getattr(connection, "getlimit", None)  # Python 3.11+
    if getlimit is not None:
        limit = getlimit(getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", 9))
    elif sqlite3.sqlite_version_info >= (3, 32, 0):
        limit = 32766
    return max(1, min(500, limit // len(EVENT_COLUMNS)))


PG_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS gxa_incoming (
    n integer, id text, source text, type text,
    occurred_at timestamptz, received_at timestamptz,
    grant_id text, agent_id text, principal_id text, revoked_by text, token_id text, method text,
    percentage double precision, remaining double precision, initial double precision,
    payload text
)
"""

OPTIONAL_TEXT = ("grant_id", "agent_id", "principal_id", "revoked_by", "token_id", "method")
_NAN = float("nan")


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


def sqlite_rows(entries: list[Received], source: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    last_received: datetime | None = None
    received_text = ""
    for item, received_at in entries:
        if received_at is not last_received:
            last_received, received_text = received_at, sqlite_time(received_at)
        event: Event = item  # type: ignore[assignment]
        append(
            (
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
                _NAN if event.percentage is None else event.percentage,
                _NAN if event.remaining is None else event.remaining,
                _NAN if event.initial is None else event.initial,
                event.payload,
            )
        )
    return rows


def payload_of(entry: Received) -> str:
    item = entry.item
    assert isinstance(item, Event)
    return item.payload


def plain_row(event: Event, source: str, received_text: str) -> tuple[Any, ...]:
    """One event in ``EVENT_COLUMNS`` order with None for NULL, as a plain INSERT binds it.

    SQLite's text form of the times (:func:`sqlite_time`); the benchmarks use
    it for the reference inserts they compare the product with.
    """
    return (
        event.id,
        source,
        event.type,
        sqlite_time(event.occurred_at),
        received_text,
        event.grant_id,
        event.agent_id,
        event.principal_id,
        event.revoked_by,
        event.token_id,
        event.method,
        event.percentage,
        event.remaining,
        event.initial,
        event.payload,
    )
