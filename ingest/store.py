"""Every read and write the worker makes to the archive (schema in :mod:`ingest.schema`).

Nothing in this module knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from .database import (
    DatabaseURLError,
    NotAnArchive,
    SchemaBehind,
    StoreError,
    check_sqlite_location,
    create_archive_engine,
    safe_url,
    sqlite_path,
)
from .events import Event, Rejection, same_payload
from .locks import LockHeld, file_lock_for, ingest_lock
from .resume import MAX_CLOCK_SKEW
from .rows import (
    OPTIONAL_TEXT,
    PG_STAGING,
    Received,
    payload_of,
    rows_per_statement,
    sqlite_rows,
)
from .schema import EVENT_COLUMNS, events, rejected_events
from .store_runs import ConnectionShare, RunRecords
from .timestamps import utc

__all__ = [
    "BatchResult",
    "ConnectionShare",
    "DatabaseURLError",
    "LockHeld",
    "NotAnArchive",
    "Received",
    "SchemaBehind",
    "Store",
    "StoreError",
    "check_sqlite_location",
    "create_archive_engine",
    "file_lock_for",
    "safe_url",
    "sqlite_path",
]


@dataclass
class BatchResult:
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0


class Store(RunRecords):
    """The archive: one engine, the worker's reads and writes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
        self._sqlite = dialect == "sqlite"
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        insert: Any = sqlite.insert if self._sqlite else postgresql.insert
        values: dict[str, Any] = {name: sa.bindparam(name) for name in EVENT_COLUMNS}
        if self._sqlite:
            # Python's sqlite3 binds None through its slow adapter lookup;
            # optional text goes in as '' (NULLIF makes it NULL, and the
            # normaliser never produces '') and optional floats as NaN, which
            # SQLite stores as NULL. Twice the insert rate on this schema.
            for name in OPTIONAL_TEXT:
                values[name] = sa.func.nullif(sa.bindparam(name), sa.literal_column("''"))
        statement = insert(events).values(values).on_conflict_do_nothing(index_elements=["id"])
        # Compiled once: the hot path hands rows straight to the driver's
        # executemany, skipping per-row parameter processing.
        compiled = statement.compile(dialect=engine.dialect)
        if compiled.positiontup is not None:
            assert tuple(compiled.positiontup) == EVENT_COLUMNS, compiled.positiontup
        self._insert_sql = str(compiled)
        self._multi_sql: tuple[int, str] | None = None
        self._rows_per_statement: int | None = None

    def _multi_row_sql(self, count: int) -> str:
        """The insert with ``count`` VALUES groups (one statement, one GIL round trip)."""
        if self._multi_sql is None or self._multi_sql[0] != count:
            head, _, rest = self._insert_sql.partition(" VALUES ")
            group, _, tail = rest.partition(" ON CONFLICT ")
            self._multi_sql = (
                count,
                f"{head} VALUES {', '.join([group] * count)} ON CONFLICT {tail}",
            )
        return self._multi_sql[1]

    def _insert_sqlite(self, conn: Connection, rows: list[tuple[Any, ...]]) -> int:
        # Multi-row statements cut the per-row overhead of executemany and
        # release the GIL for a whole chunk at a time.
        driver = conn.connection.driver_connection
        if self._rows_per_statement is None:
            self._rows_per_statement = rows_per_statement(driver)
        per = self._rows_per_statement
        cursor = driver.cursor()  # type: ignore[union-attr]
        inserted = 0
        full = len(rows) - len(rows) % per
        if full:
            sql = self._multi_row_sql(per)
            for start in range(0, full, per):
                chunk = rows[start : start + per]
                cursor.execute(sql, [value for row in chunk for value in row])
                inserted += cursor.rowcount
        if full < len(rows):
            # The remainder row by row: a statement per remainder size would
            # fill the driver's statement cache with large prepared programs.
            cursor.executemany(self._insert_sql, rows[full:])
            inserted += cursor.rowcount
        cursor.close()
        return inserted

    def _insert_postgres(self, conn: Connection, entries: list[Received], source: str) -> int:
        # COPY into a per-session temporary table, then one dialect-native
        # INSERT ... SELECT ... ON CONFLICT DO NOTHING, in arrival order.
        raw = conn.connection.driver_connection
        columns = ", ".join(EVENT_COLUMNS)
        with raw.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(PG_STAGING)
            with cursor.copy(f"COPY gxa_incoming (n, {columns}) FROM STDIN") as copy:
                for n, (item, received_at) in enumerate(entries):
                    event: Event = item  # type: ignore[assignment]
                    copy.write_row(
                        (
                            n,
                            event.id,
                            source,
                            event.type,
                            event.occurred_at,
                            received_at,
                            *event[4:13],
                            event.payload,
                        )
                    )
            cursor.execute(
                f"INSERT INTO events ({columns}) SELECT {columns} FROM gxa_incoming "
                "ORDER BY n ON CONFLICT (id) DO NOTHING"
            )
            inserted = cursor.rowcount
            cursor.execute("TRUNCATE gxa_incoming")
        return int(inserted)

    @classmethod
    def open(cls, url: str) -> Store:
        return cls(create_archive_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    # -- reads ---------------------------------------------------------------

    def newest_occurred_at(self, source: str, types: Sequence[str] = ()) -> datetime | None:
        """The newest plausible stored event time for a source (and type filter).

        This is the resume cursor. Events dated more than
        :data:`~ingest.resume.MAX_CLOCK_SKEW` after their arrival are passed
        over (see :mod:`ingest.resume`); the index on ``(source,
        occurred_at)`` is read backwards until a plausible one is found.
        """
        if self._sqlite:
            # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' text; datetime() shifts it.
            limit: Any = sa.func.datetime(
                events.c.received_at, f"+{int(MAX_CLOCK_SKEW.total_seconds())} seconds"
            )
        else:
            limit = events.c.received_at + sa.literal_column(
                f"interval '{int(MAX_CLOCK_SKEW.total_seconds())} seconds'", sa.Interval()
            )
        query = (
            sa.select(events.c.occurred_at)
            .where(events.c.source == source, events.c.occurred_at <= limit)
            .order_by(events.c.occurred_at.desc())
            .limit(1)
        )
        if types:
            query = query.where(events.c.type.in_(list(types)))
        with self.engine.connect() as conn:
            return utc(conn.execute(query).scalar())

    # -- writes --------------------------------------------------------------

    def write_batch(
        self,
        source: str,
        run_id: int | None,
        batch: Sequence[Received],
        connections: Sequence[ConnectionShare] = (),
    ) -> BatchResult:
        """Store one batch in one transaction: events insert-or-ignore, rejections appended.

        An id seen again with the same payload is a duplicate (a no-op); with a
        different payload the first one stays and the conflict is recorded as a
        rejection. ``connections`` says which connections the batch came over:
        their rows count its events in the same transaction.
        """
        result = BatchResult()
        fresh: dict[str, Received] = {}
        rejections: list[tuple[Rejection, datetime]] = []
        for entry in batch:
            item = entry.item
            if type(item) is Rejection:
                rejections.append((item, entry.received_at))
                continue
            assert type(item) is Event
            seen = fresh.get(item.id)
            if seen is None:
                fresh[item.id] = entry
                continue
            result.duplicates += 1
            if not same_payload(payload_of(seen), item.payload):
                rejections.append((_conflict(item), entry.received_at))
                result.conflicts += 1
        try:
            self._write(source, run_id, fresh, rejections, result, connections)
        except self._driver_error as exc:
            # The hot path talks to the driver directly; its errors are
            # translated so callers see SQLAlchemy's (retryable) classes.
            raise sa.exc.DBAPIError.instance(None, None, exc, self._driver_error) from exc
        result.rejected = len(rejections)
        return result

    def _write(
        self,
        source: str,
        run_id: int | None,
        fresh: dict[str, Received],
        rejections: list[tuple[Rejection, datetime]],
        result: BatchResult,
        connections: Sequence[ConnectionShare],
    ) -> None:
        with self.engine.begin() as conn:
            if fresh:
                self._insert(conn, source, list(fresh.values()), result, rejections)
            if rejections:
                self._record_rejections(conn, source, run_id, rejections)
            if connections:
                self.count_connections(conn, connections)

    def _record_rejections(
        self,
        conn: Connection,
        source: str,
        run_id: int | None,
        rejections: list[tuple[Rejection, datetime]],
    ) -> None:
        """Insert each frame not yet recorded for this source; count the others as repeats.

        The caller holds the source's ingest lock, so no other writer adds the
        same (source, raw_sha256) meanwhile.
        """
        seen: dict[str, tuple[int, datetime]] = {}
        new: dict[str, tuple[Rejection, datetime]] = {}
        for rejection, received_at in rejections:
            key = rejection.raw_sha256
            if key in new or key in seen:
                count, latest = seen.get(key, (0, received_at))
                seen[key] = (count + 1, max(latest, received_at))
            else:
                new[key] = (rejection, received_at)
        self._count_recorded(conn, source, new, seen)
        if new:
            conn.execute(
                rejected_events.insert(),
                [
                    {
                        "source": source,
                        "received_at": received_at,
                        "reason": rejection.reason,
                        "raw": rejection.raw,
                        "raw_length": rejection.raw_length,
                        "event_id": rejection.event_id,
                        "run_id": run_id,
                        "raw_sha256": rejection.raw_sha256,
                    }
                    for rejection, received_at in new.values()
                ],
            )
        for key, (count, latest) in seen.items():
            _add_repeats(conn, source, key, count, latest)

    @staticmethod
    def _count_recorded(
        conn: Connection,
        source: str,
        new: dict[str, tuple[Rejection, datetime]],
        seen: dict[str, tuple[int, datetime]],
    ) -> None:
        """Move frames already recorded for ``source`` from ``new`` to the repeats in ``seen``."""
        hashes = list(new)
        for start in range(0, len(hashes), 500):
            query = sa.select(rejected_events.c.raw_sha256, sa.func.min(rejected_events.c.id))
            query = query.where(
                rejected_events.c.source == source,
                rejected_events.c.raw_sha256.in_(hashes[start : start + 500]),
            ).group_by(rejected_events.c.raw_sha256)
            for key, _first in conn.execute(query):
                _rejection, received_at = new.pop(key)
                count, latest = seen.get(key, (0, received_at))
                seen[key] = (count + 1, max(latest, received_at))

    def _insert(
        self,
        conn: Connection,
        source: str,
        entries: list[Received],
        result: BatchResult,
        rejections: list[tuple[Rejection, datetime]],
    ) -> None:
        before = conn.exec_driver_sql("SELECT max(seq) FROM events").scalar() or 0
        if self._sqlite:
            inserted = self._insert_sqlite(conn, sqlite_rows(entries, source))
        else:
            inserted = self._insert_postgres(conn, entries, source)
        result.inserted = inserted
        if inserted == len(entries):
            return
        # Some ids were archived before: compare what is stored with what came.
        by_id = {entry.item.id: entry for entry in entries if type(entry.item) is Event}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            query = sa.select(events.c.id, events.c.payload).where(
                events.c.id.in_(ids[start : start + 500]), events.c.seq <= before
            )
            for event_id, payload in conn.execute(query):
                entry = by_id[event_id]
                item = entry.item
                assert type(item) is Event
                result.duplicates += 1
                if not same_payload(payload, item.payload):
                    rejections.append((_conflict(item), entry.received_at))
                    result.conflicts += 1

    def lock(self, source: str) -> AbstractContextManager[None]:
        """Hold the one-ingest-per-archive-and-source lock, or raise :class:`LockHeld`."""
        return ingest_lock(self.engine, source)


def _add_repeats(conn: Connection, source: str, key: str, count: int, latest: datetime) -> None:
    """Count ``count`` more arrivals of a recorded frame, the newest at ``latest``."""
    first = (
        sa.select(sa.func.min(rejected_events.c.id))
        .where(rejected_events.c.source == source, rejected_events.c.raw_sha256 == key)
        .scalar_subquery()
    )
    conn.execute(
        rejected_events.update()
        .where(rejected_events.c.id == first)
        .values(
            repeats=rejected_events.c.repeats + count,
            last_received_at=sa.case(
                (
                    sa.or_(
                        rejected_events.c.last_received_at.is_(None),
                        rejected_events.c.last_received_at < latest,
                    ),
                    latest,
                ),
                else_=rejected_events.c.last_received_at,
            ),
        )
    )


def _conflict(event: Event) -> Rejection:
    from .events import reject

    return reject(
        f"conflicting duplicate: event {event.id} is already archived with a different payload",
        event.payload,
        event.id,
    )
