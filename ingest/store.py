"""Every read and write the worker makes to the archive (schema in :mod:`ingest.schema`).

Nothing in this module knows about HTTP.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from .events import Event, Rejection, same_payload
from .files import LockBusy, file_lock
from .resume import MAX_CLOCK_SKEW
from .schema import EVENT_COLUMNS, events, ingest_connections, ingest_runs, rejected_events
from .timestamps import utc

if TYPE_CHECKING:
    from .journal import PendingRun


class DatabaseURLError(ValueError):
    """The archive URL is malformed or names a database this tool cannot use."""


class StoreError(Exception):
    """The archive cannot be used (exit code 4)."""


class SchemaBehind(StoreError):
    """The archive's schema is older than this version of the tool."""


class NotAnArchive(StoreError):
    """The database is not one this tool can use (e.g. a file that is not SQLite)."""


class LockHeld(Exception):
    """Another ingest holds the lock for this archive and source (exit code 75)."""


class Received(NamedTuple):
    """An item that arrived on the stream, stamped with when."""

    item: Event | Rejection
    received_at: datetime


@dataclass
class BatchResult:
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0


def create_archive_engine(url: str) -> Engine:
    """An engine for the archive, with the settings each dialect needs."""
    try:
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            # Only ingest writes, one batch at a time: a lock held longer
            # than this is an outage, handled by the retries above it.
            engine = sa.create_engine(parsed, connect_args={"timeout": 10})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        engine = sa.create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": 10,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
        sa.event.listen(engine, "connect", _postgres_settings)
        return engine
    except sa.exc.NoSuchModuleError:
        # A subclass of ArgumentError: caught first, for its hint.
        raise DatabaseURLError(
            f"unsupported database URL scheme {url.split(':', 1)[0]!r}: "
            "use sqlite:///FILE or postgresql+psycopg://..."
        ) from None
    except (sa.exc.ArgumentError, ValueError) as exc:
        # make_url raises ValueError for a port that is not a number.
        raise DatabaseURLError(f"invalid database URL: {_hide_password(url, exc)}") from None
    except ImportError as exc:
        raise DatabaseURLError(
            f"the database driver is not installed ({exc.name}): "
            "for PostgreSQL install grantex-archive[postgres]"
        ) from None


def _hide_password(url: str, exc: Exception) -> str:
    """The error's text without the URL's password, which a malformed URL may echo."""
    text = str(exc)
    password = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    return text.replace(password, "***") if password else text


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (reports, status) work while the worker writes;
    # NORMAL is durable across application crashes in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # A bigger page cache (16 MiB) and fewer WAL checkpoints keep index
    # maintenance off the disk; measured in BENCHMARKS.md.
    cursor.execute("PRAGMA cache_size=-16384")
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.close()


def _postgres_settings(dbapi_connection: Any, _record: Any) -> None:
    # A statement stuck behind a lock or a dead server must fail (and be
    # retried) rather than hang the worker.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '30s'")
        cursor.execute("SET statement_timeout = '120s'")
    dbapi_connection.commit()


def check_sqlite_location(url: str) -> None:
    """Raise :class:`DatabaseURLError` when a SQLite archive's directory does not exist."""
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    parent = path.parent
    if not parent.is_dir():
        raise DatabaseURLError(
            f"the directory of the archive {path} does not exist: "
            "create it first, or check the path"
        )


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and memory."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(database)


class Store:
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
            for name in _OPTIONAL_TEXT:
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
            self._rows_per_statement = _rows_per_statement(driver)
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
            cursor.execute(_PG_STAGING)
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
        self, source: str, run_id: int | None, batch: Sequence[Received]
    ) -> BatchResult:
        """Store one batch in one transaction: events insert-or-ignore, rejections appended.

        An id seen again with the same payload is a duplicate (a no-op); with a
        different payload the first one stays and the conflict is recorded as a
        rejection.
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
            if not same_payload(_payload(seen), item.payload):
                rejections.append((_conflict(item), entry.received_at))
                result.conflicts += 1
        try:
            self._write(source, run_id, fresh, rejections, result)
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
    ) -> None:
        with self.engine.begin() as conn:
            if fresh:
                self._insert(conn, source, list(fresh.values()), result, rejections)
            if rejections:
                self._record_rejections(conn, source, run_id, rejections)

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
            inserted = self._insert_sqlite(conn, _sqlite_rows(entries, source))
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

    # -- run records -----------------------------------------------------------

    def start_run(
        self,
        source: str,
        started_at: datetime,
        since: datetime | None,
        types: Sequence[str],
        base_url: str,
        pending: PendingRun | None = None,
    ) -> int:
        """Record a new run; first settle the runs of this source that never recorded an end.

        ``pending`` is a run's final record that the database refused when
        that run ended (see :mod:`ingest.journal`): it is applied as it
        was. Any other run still marked running was killed: it becomes
        ``abandoned``, with the counts of its last progress update.
        """
        with self.engine.begin() as conn:
            if pending is not None:
                conn.execute(
                    ingest_runs.update()
                    .where(
                        ingest_runs.c.id == pending.run_id,
                        ingest_runs.c.source == source,
                        ingest_runs.c.outcome == "running",
                    )
                    .values(**pending.values)
                )
                if pending.connection_id is not None and pending.connection_values:
                    conn.execute(
                        ingest_connections.update()
                        .where(
                            ingest_connections.c.id == pending.connection_id,
                            ingest_connections.c.run_id == pending.run_id,
                            ingest_connections.c.closed_at.is_(None),
                        )
                        .values(**pending.connection_values)
                    )
            # The caller holds this source's lock, so an earlier run still
            # marked running was killed before it could record its end.
            conn.execute(
                ingest_runs.update()
                .where(ingest_runs.c.source == source, ingest_runs.c.outcome == "running")
                .values(outcome="abandoned")
            )
            run_id = conn.execute(
                ingest_runs.insert().returning(ingest_runs.c.id),
                {
                    "source": source,
                    "started_at": started_at,
                    "since_requested": since,
                    "types": ",".join(types) or None,
                    "base_url": base_url,
                    "outcome": "running",
                },
            ).scalar_one()
        return int(run_id)

    def update_run(self, run_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(ingest_runs.update().where(ingest_runs.c.id == run_id).values(**values))

    def open_connection(
        self, run_id: int, opened_at: datetime, since: datetime | None, status_code: int | None
    ) -> int:
        with self.engine.begin() as conn:
            conn_id = conn.execute(
                ingest_connections.insert().returning(ingest_connections.c.id),
                {
                    "run_id": run_id,
                    "opened_at": opened_at,
                    "since_requested": since,
                    "status_code": status_code,
                },
            ).scalar_one()
        return int(conn_id)

    def close_connection(
        self, conn_id: int, closed_at: datetime, received: int, reason: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                ingest_connections.update()
                .where(ingest_connections.c.id == conn_id)
                .values(closed_at=closed_at, events=received, close_reason=reason[:2000])
            )

    def record_attempt(
        self,
        run_id: int,
        at: datetime,
        since: datetime | None,
        status_code: int | None,
        reason: str,
    ) -> None:
        """A connection attempt that never became a stream (refused, 429, 5xx)."""
        with self.engine.begin() as conn:
            conn.execute(
                ingest_connections.insert(),
                {
                    "run_id": run_id,
                    "opened_at": at,
                    "closed_at": at,
                    "since_requested": since,
                    "status_code": status_code,
                    "events": 0,
                    "close_reason": reason[:2000],
                },
            )

    # -- locking ---------------------------------------------------------------

    @contextmanager
    def lock(self, source: str) -> Iterator[None]:
        """Hold the one-ingest-per-archive-and-source lock, or raise :class:`LockHeld`."""
        if self.engine.dialect.name == "postgresql":
            with self._advisory_lock(source):
                yield
            return
        path = sqlite_path(self.engine.url.render_as_string(hide_password=False))
        if path is None:
            yield
            return
        with file_lock_for(path, source):
            yield

    @contextmanager
    def _advisory_lock(self, source: str) -> Iterator[None]:
        with self.engine.connect() as conn:
            where = conn.execute(sa.text("SELECT current_database(), current_schema()")).one()
            key = _lock_key(f"{where[0]}/{where[1]}/{source}")
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if not got:
                raise LockHeld(
                    f"another ingest is running for source {source!r} on this archive "
                    "(PostgreSQL advisory lock held)"
                )
            try:
                yield
            finally:
                try:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except sa.exc.DBAPIError:
                    # The session is gone, and its lock with it.
                    pass


def _rows_per_statement(connection: Any) -> int:
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


_PG_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS gxa_incoming (
    n integer, id text, source text, type text,
    occurred_at timestamptz, received_at timestamptz,
    grant_id text, agent_id text, principal_id text, revoked_by text, token_id text, method text,
    percentage double precision, remaining double precision, initial double precision,
    payload text
)
"""

_OPTIONAL_TEXT = ("grant_id", "agent_id", "principal_id", "revoked_by", "token_id", "method")
_NAN = float("nan")


def _sqlite_time(value: datetime) -> str:
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


def _sqlite_rows(entries: list[Received], source: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    last_received: datetime | None = None
    received_text = ""
    for item, received_at in entries:
        if received_at is not last_received:
            last_received, received_text = received_at, _sqlite_time(received_at)
        event: Event = item  # type: ignore[assignment]
        append(
            (
                event.id,
                source,
                event.type,
                _sqlite_time(event.occurred_at),
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


def _payload(entry: Received) -> str:
    item = entry.item
    assert isinstance(item, Event)
    return item.payload


def _conflict(event: Event) -> Rejection:
    from .events import reject

    return reject(
        f"conflicting duplicate: event {event.id} is already archived with a different payload",
        event.payload,
        event.id,
    )


def _lock_key(name: str) -> int:
    digest = hashlib.blake2b(f"grantex-archive:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def file_lock_for(archive: Path, source: str) -> AbstractContextManager[None]:
    """The ingest lock of a SQLite archive and source: a lock file beside the archive."""
    return _file_lock(_lock_path(archive, source))


def _lock_path(archive: Path, source: str) -> Path:
    safe = hashlib.blake2b(source.encode(), digest_size=6).hexdigest()
    return archive.with_name(f"{archive.name}.ingest-{safe}.lock")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    held = ExitStack()
    try:
        held.enter_context(file_lock(path, note_pid=True))
    except LockBusy:
        raise LockHeld(
            f"another ingest is running for this archive and source (lock file {path})"
        ) from None
    except OSError as exc:
        raise StoreError(
            f"cannot create the lock file {path}: {exc.strerror or exc} "
            "(the archive's directory must be writable)"
        ) from None
    with held:
        yield
