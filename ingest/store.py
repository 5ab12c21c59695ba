"""Every read and write the worker makes to the archive (schema in :mod:`ingest.schema`).

Nothing in this module knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from itertools import chain
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
    rows_per_statement,
)
from .schema import CHANNELS, EVENT_COLUMNS, events
from .seal.chain import Sealer, max_key
from .store_fresh import BatchResult, Fresh, FreshRows, entries_as, fresh_entries, fresh_rows
from .store_rejections import conflict_of, record_rejections
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


class Store(RunRecords):
    """The archive: one engine, the worker's reads and writes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
        self._sqlite = dialect == "sqlite"
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._unique_violation: type[Exception] = self._driver_error
        if not self._sqlite:
            self._unique_violation = engine.dialect.loaded_dbapi.errors.UniqueViolation
        # Compiled once per channel: the hot path hands rows straight to the
        # driver's executemany, skipping per-row parameter processing.
        self._insert_sql = {channel: self._compile_insert(channel) for channel in CHANNELS}
        self._multi_sql: dict[str, tuple[int, str]] = {}
        self._rows_per_statement: int | None = None

    def _compile_insert(self, channel: str) -> str:
        """The one-row insert-or-ignore of an event that ``channel`` delivered."""
        insert: Any = sqlite.insert if self._sqlite else postgresql.insert
        values: dict[str, Any] = {name: sa.bindparam(name) for name in EVENT_COLUMNS}
        if self._sqlite:
            # Python's sqlite3 binds None through its slow adapter lookup;
            # optional text goes in as '' (NULLIF makes it NULL, and the
            # normaliser never produces '') and optional floats as NaN, which
            # SQLite stores as NULL. Twice the insert rate on this schema.
            for name in OPTIONAL_TEXT:
                values[name] = sa.func.nullif(sa.bindparam(name), sa.literal_column("''"))
        # The channel is part of the statement, not a value bound per row.
        values["channel"] = sa.literal_column(f"'{channel}'")
        statement = insert(events).values(values).on_conflict_do_nothing(index_elements=["id"])
        compiled = statement.compile(dialect=self.engine.dialect)
        if compiled.positiontup is not None:
            assert tuple(compiled.positiontup) == EVENT_COLUMNS, compiled.positiontup
        return str(compiled)

    def _multi_row_sql(self, channel: str, count: int) -> str:
        """The insert with ``count`` VALUES groups (one statement, one GIL round trip)."""
        cached = self._multi_sql.get(channel)
        if cached is None or cached[0] != count:
            head, _, rest = self._insert_sql[channel].partition(" VALUES ")
            group, _, tail = rest.partition(" ON CONFLICT ")
            cached = (count, f"{head} VALUES {', '.join([group] * count)} ON CONFLICT {tail}")
            self._multi_sql[channel] = cached
        return cached[1]

    def _insert_sqlite(self, conn: Connection, rows: list[tuple[Any, ...]], channel: str) -> int:
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
            sql = self._multi_row_sql(channel, per)
            for start in range(0, full, per):
                cursor.execute(sql, list(chain.from_iterable(rows[start : start + per])))
                inserted += cursor.rowcount
        if full < len(rows):
            # The remainder row by row: a statement per remainder size would
            # fill the driver's statement cache with large prepared programs.
            cursor.executemany(self._insert_sql[channel], rows[full:])
            inserted += cursor.rowcount
        cursor.close()
        return inserted

    def _insert_postgres(
        self, conn: Connection, entries: list[Received], source: str, channel: str
    ) -> int:
        # COPY into a per-session temporary table, then one dialect-native
        # INSERT ... SELECT ... ON CONFLICT DO NOTHING, in arrival order.
        raw = conn.connection.driver_connection
        columns = ", ".join(EVENT_COLUMNS)
        with raw.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(PG_STAGING)
            with cursor.copy(f"COPY gxa_incoming (n, {columns}) FROM STDIN") as copy:
                for n, entry in enumerate(entries):
                    event: Event = entry.item  # type: ignore[assignment]
                    copy.write_row(
                        (
                            n,
                            event.id,
                            source,
                            event.type,
                            event.occurred_at,
                            entry.received_at,
                            *event[4:13],
                            event.payload,
                        )
                    )
            # The channel (one of CHANNELS) is part of the statement, not copied per row.
            cursor.execute(
                f"INSERT INTO events ({columns}, channel) SELECT {columns}, '{channel}' "
                "FROM gxa_incoming ORDER BY n ON CONFLICT (id) DO NOTHING"
            )
            inserted = cursor.rowcount
            cursor.execute("TRUNCATE gxa_incoming")
        return int(inserted)

    def _copy_postgres_rows(self, conn: Connection, fresh: FreshRows, channel: str) -> int | None:
        """The events whose ``COPY`` lines the reader made, copied straight into ``events``:
        how many, or None when one of them was archived already (nothing is kept then;
        :meth:`_insert_postgres_rows` takes them).

        Most batches hold only new events, and a ``COPY`` into the table does half the
        server's work of staging them and moving them with ``INSERT ... SELECT ... ON
        CONFLICT``. A unique violation rolls back to a savepoint. Each row takes its
        ``seq`` as it is copied, in the order of the lines.
        """
        raw: Any = conn.connection.driver_connection
        assert fresh.lines is not None
        # Every line ends in a newline: joined with the channel's column, each starts
        # with it.
        lead = f"{channel}\t".encode()
        block = lead + lead.join(fresh.lines)
        with raw.cursor() as cursor:
            cursor.execute("SAVEPOINT gxa_copy")
            try:
                with cursor.copy(
                    f"COPY events (channel, {', '.join(EVENT_COLUMNS)}) FROM STDIN"
                ) as copy:
                    copy.write(block if raw.info.encoding == "utf-8" else block.decode())
            except self._unique_violation:
                cursor.execute("ROLLBACK TO SAVEPOINT gxa_copy")
                return None
            copied = cursor.rowcount
            cursor.execute("RELEASE SAVEPOINT gxa_copy")
        return int(copied)

    def _insert_postgres_rows(
        self, conn: Connection, fresh: FreshRows, channel: str
    ) -> list[tuple[int, str]]:
        """:meth:`_insert_postgres` for events whose ``COPY`` lines the reader made: the
        ``seq`` and id of each row inserted."""
        raw: Any = conn.connection.driver_connection
        assert fresh.lines is not None
        block = b"".join([b"%d\t%b" % (n, line) for n, line in enumerate(fresh.lines)])
        columns = ", ".join(EVENT_COLUMNS)
        with raw.cursor() as cursor:
            cursor.execute(PG_STAGING)
            with cursor.copy(f"COPY gxa_incoming (n, {columns}) FROM STDIN") as copy:
                # The lines are UTF-8; a connection in another encoding takes them as text.
                copy.write(block if raw.info.encoding == "utf-8" else block.decode())
            cursor.execute(
                f"INSERT INTO events ({columns}, channel) SELECT {columns}, '{channel}' "
                "FROM gxa_incoming ORDER BY n ON CONFLICT (id) DO NOTHING RETURNING seq, id"
            )
            keyed = [(int(seq), str(ident)) for seq, ident in cursor.fetchall()]
            cursor.execute("TRUNCATE gxa_incoming")
        return keyed

    @property
    def prepares_rows(self) -> bool:
        """Whether :meth:`write_batch` takes events as rows the reader prepared (every
        archive does; a stand-in store may not)."""
        return True

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "sqlite" if self._sqlite else "postgresql"

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
        channel: str = "stream",
        rows: Sequence[tuple[Any, ...]] = (),
        digests: bytes = b"",
        first_key: int | None = None,
        lines: Sequence[bytes | None] = (),
    ) -> BatchResult:
        """Store one batch in one transaction: events insert-or-ignore, rejections appended.

        An id seen again with the same payload is a duplicate (a no-op); with a
        different payload the first one stays and the conflict is recorded as a
        rejection. ``connections`` says which connections the batch came over:
        their rows count its events in the same transaction. ``channel`` (one
        of :data:`~ingest.schema.CHANNELS`) is recorded with the events this
        batch inserts; an event another channel delivered first keeps its own.
        ``rows`` are more events, prepared by the reader (:mod:`ingest.prepare`),
        with their ``digests`` (concatenated) when it made them from the keys it
        guessed from ``first_key`` (:mod:`ingest.key_guess`) and, for PostgreSQL,
        their ``COPY`` ``lines``; they follow the events among ``batch``. The
        result's ``next_key`` is the key the next event will take, as far as this
        batch tells.
        """
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}: expected one of {CHANNELS}")
        result = BatchResult()
        rejections: list[tuple[Rejection, datetime]] = []
        arrived: list[Received] = []
        for entry in batch:
            if type(entry.item) is Rejection:
                rejections.append((entry.item, entry.received_at))
            else:
                arrived.append(entry)
        fresh: Fresh
        if self._sqlite or rows:
            copy = not self._sqlite
            fresh = fresh_rows(
                arrived, source, rows, result, rejections, lines, copy, digests, first_key
            )
        else:
            fresh = fresh_entries(arrived, result, rejections)
        try:
            self._write(source, run_id, fresh, rejections, result, connections, channel)
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
        fresh: Fresh,
        rejections: list[tuple[Rejection, datetime]],
        result: BatchResult,
        connections: Sequence[ConnectionShare],
        channel: str,
    ) -> None:
        with self.engine.begin() as conn:
            # The chain head first: it orders this transaction after every other
            # sealing one, so the rows above the keys read now are this one's.
            sealer = Sealer(conn)
            if fresh:
                before = max_key(conn, "events")
                if isinstance(fresh, FreshRows) and self._sqlite:
                    result.inserted = self._insert_sqlite(conn, fresh.rows, channel)
                    if result.inserted < len(fresh):
                        self._compare_stored(conn, fresh.stored_as(), before, result, rejections)
                    result.next_key = sealer.events_bound(
                        before, fresh.rows, channel, result.inserted, *fresh.guessed
                    )
                elif (
                    isinstance(fresh, FreshRows)
                    and (copied := self._copy_postgres_rows(conn, fresh, channel)) is not None
                ):
                    result.inserted = copied
                    result.next_key = sealer.events_bound(
                        before, fresh.rows, channel, copied, *fresh.guessed
                    )
                elif isinstance(fresh, FreshRows):
                    keyed = self._insert_postgres_rows(conn, fresh, channel)
                    result.inserted = len(keyed)
                    if result.inserted < len(fresh):
                        self._compare_stored(conn, fresh.stored_as(), before, result, rejections)
                    result.next_key = sealer.events_returned(
                        keyed, fresh.rows, channel, *fresh.guessed
                    )
                else:
                    result.inserted = self._insert_postgres(conn, fresh, source, channel)
                    if result.inserted < len(fresh):
                        self._compare_stored(conn, entries_as(fresh), before, result, rejections)
                    sealer.rows_above("events", before)
            if rejections:
                before = max_key(conn, "rejected")
                record_rejections(conn, source, run_id, rejections)
                sealer.rows_above("rejected", before)
            if connections:
                self.count_connections(conn, connections)
            sealer.close()

    @staticmethod
    def _compare_stored(
        conn: Connection,
        arrived: dict[str, tuple[str, datetime]],
        before: int,
        result: BatchResult,
        rejections: list[tuple[Rejection, datetime]],
    ) -> None:
        """Some ids were archived before (``seq <= before``): compare what is stored with what
        came (``arrived``: id to payload and time of receipt)."""
        ids = list(arrived)
        for start in range(0, len(ids), 500):
            query = sa.select(events.c.id, events.c.payload).where(
                events.c.id.in_(ids[start : start + 500]), events.c.seq <= before
            )
            for event_id, stored in conn.execute(query):
                payload, received_at = arrived[event_id]
                result.duplicates += 1
                if not same_payload(stored, payload):
                    rejections.append((conflict_of(event_id, payload), received_at))
                    result.conflicts += 1

    def lock(self, source: str) -> AbstractContextManager[None]:
        """Hold the one-ingest-per-archive-and-source lock, or raise :class:`LockHeld`."""
        return ingest_lock(self.engine, source)
