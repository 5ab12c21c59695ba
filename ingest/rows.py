"""Events as the rows the store writes: the one encoding of an event for each database.

The hot path of an ingest: SQLite gets multi-row INSERTs of prepared tuples
(text times, empty strings and NaN for NULL, turned back by ``NULLIF`` in
the statement), PostgreSQL a staging table. The benchmarks build their rows
here too, so they measure the same encoding.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, NamedTuple

from .events import Event, Rejection
from .prepare import sqlite_row, sqlite_time
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


def sqlite_rows(entries: list[Received], source: str) -> list[tuple[Any, ...]]:
    """The rows the SQLite insert binds for these events (:func:`~ingest.prepare.sqlite_row`)."""
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    last_received: datetime | None = None
    received_text = ""
    for entry in entries:
        received_at = entry.received_at
        if received_at is not last_received:
            last_received, received_text = received_at, sqlite_time(received_at)
        append(sqlite_row(entry.item, source, received_text))  # type: ignore[arg-type]
    return rows


def plain_row(event: Event, source: str, received_text: str) -> tuple[Any, ...]:
    """One event in ``EVENT_COLUMNS`` order with None for NULL, as a plain INSERT binds it.

    SQLite's text form of the times (:func:`sqlite_time`); the benchmarks use
    it for the reference inserts they compare the product with.
    """
    # The bound row's '' and NaN are what the statement turns into NULL.
    return tuple(
        None if value == "" or value != value else value
        for value in sqlite_row(event, source, received_text)
    )
