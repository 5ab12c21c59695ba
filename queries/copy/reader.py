"""Reading the archive: Arrow streams through ADBC, and a read-only SQLAlchemy engine.

The refresher reads the archive's rows as Arrow streams through the ADBC
driver for its database (SQLite or PostgreSQL), which DuckDB scans without
turning rows into Python objects. Commands that read the archive's small
tables directly use :func:`archive_read_engine`, which never writes.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import duckdb
import sqlalchemy as sa

from ingest.database import first_line
from ingest.store import sqlite_path

from .errors import (
    AnalyticsError,
    ArchiveMissing,
    ArchiveSchemaError,
    ArchiveUnavailable,
)

# How long a reader of a SQLite archive waits for a writer's lock (ingest
# holds one for a batch; closing its last connection checkpoints the WAL
# under an exclusive lock) before it gives up.
BUSY_TIMEOUT_SECONDS = 30.0


def check_archive_exists(db_url: str) -> None:
    """Raise ArchiveMissing for a SQLite URL whose file does not exist."""
    path = sqlite_path(db_url)
    if path is not None and not path.is_file():
        raise ArchiveMissing(path)


def archive_read_engine(db_url: str) -> sa.Engine:
    """An SQLAlchemy engine for reading the archive, never writing it.

    A SQLite file opens read-only, with a busy timeout: a read waits for a
    writer's lock instead of failing with "database is locked". Python's
    sqlite3 runs a SELECT outside any explicit transaction, each one a short
    WAL snapshot that never blocks the writer.
    """
    path = sqlite_path(db_url)
    if path is None:
        from ingest.store import create_archive_engine

        return create_archive_engine(db_url)
    check_archive_exists(db_url)
    return sa.create_engine(
        f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true",
        connect_args={"timeout": BUSY_TIMEOUT_SECONDS},
        poolclass=sa.pool.NullPool,
    )


def libpq_uri(db_url: str) -> str:
    """The libpq URI for an SQLAlchemy PostgreSQL URL (driver suffix dropped)."""
    url = sa.engine.make_url(db_url)
    auth = ""
    if url.username:
        auth = quote(url.username, safe="")
        if url.password is not None:
            auth += ":" + quote(str(url.password), safe="")
        auth += "@"
    host = url.host or ""
    if url.port:
        host += f":{url.port}"
    query = "&".join(
        f"{quote(k, safe='')}={quote(v if isinstance(v, str) else v[-1], safe='')}"
        for k, v in url.query.items()
    )
    return f"postgresql://{auth}{host}/{quote(url.database or '', safe='')}" + (
        f"?{query}" if query else ""
    )


def _driver(db_url: str) -> tuple[str, str, bool]:
    """The ADBC driver library, the URI it opens and whether the archive is SQLite."""
    path = sqlite_path(db_url)
    if path is not None:
        if not path.is_file():
            raise ArchiveMissing(path)
        import adbc_driver_sqlite

        return adbc_driver_sqlite._driver_path(), f"file:{quote(str(path.resolve()))}?mode=ro", True
    try:
        import adbc_driver_postgresql
    except ImportError:
        raise AnalyticsError(
            "reading a PostgreSQL archive needs its ADBC driver: install grantex-archive[postgres]"
        ) from None
    return adbc_driver_postgresql._driver_path(), libpq_uri(db_url), False


class ArchiveReader:
    """Arrow streams out of the archive through the ADBC driver for its database."""

    def __init__(self, db_url: str) -> None:
        import adbc_driver_manager as adbc

        self._adbc = adbc
        driver, uri, self.sqlite = _driver(db_url)
        try:
            self._db = adbc.AdbcDatabase(driver=driver, uri=uri)
            self._conn = adbc.AdbcConnection(self._db)
            if self.sqlite:
                # Without it SQLite fails at once where a writer holds a lock.
                # Each query runs in autocommit: its own short read snapshot.
                self._execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        except adbc.Error as exc:
            self.close()
            raise ArchiveUnavailable(f"database unusable: {first_line(exc)}") from None

    def _execute(self, sql: str) -> None:
        statement = self._adbc.AdbcStatement(self._conn)
        try:
            statement.set_sql_query(sql)
            statement.execute_update()
        finally:
            statement.close()

    def check_schema(self, duck: duckdb.DuckDBPyConnection) -> str:
        """The archive's schema revision; ArchiveSchemaError unless it is the one this version
        reads."""
        exists = (
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            if self.sqlite
            else "SELECT CAST(count(*) AS BIGINT) FROM (SELECT to_regclass('alembic_version') r) t "
            "WHERE r IS NOT NULL"
        )
        (tables,) = self.scalar_row(exists, duck)
        current = None
        if tables:
            found = self.rows("SELECT version_num FROM alembic_version", duck)
            current = str(found[0][0]) if found else None
        if current is None:
            raise ArchiveSchemaError(
                "the archive has no grantex-archive schema (was it downgraded?): "
                "run `grantex-archive db upgrade`"
            )
        from ingest.migrate import head_revision  # Alembic loads only when needed

        head = head_revision()
        if current != head:
            raise ArchiveSchemaError(
                f"the archive's schema is at {current}, this version reads {head}: "
                "run `grantex-archive db upgrade` (or upgrade grantex-archive if the "
                "archive is newer)"
            )
        return head

    def close(self) -> None:
        for handle in ("_conn", "_db"):
            with contextlib.suppress(Exception):
                getattr(self, handle).close()

    def stream(self, sql: str) -> ArchiveStream:
        """An object with ``__arrow_c_stream__`` for ``sql``; DuckDB scans it."""
        statement = self._adbc.AdbcStatement(self._conn)
        statement.set_sql_query(sql)
        if self.sqlite:
            statement.set_options(**{"adbc.sqlite.query.batch_rows": "16384"})
        try:
            handle, _ = statement.execute_query()
        except self._adbc.Error as exc:
            raise AnalyticsError(f"reading the archive failed: {first_line(exc)}") from None
        return ArchiveStream(handle, statement)

    def rows(self, sql: str, duck: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
        """Every row ``sql`` returns, read through ``duck``."""
        stream = self.stream(sql)
        try:
            return duck.from_arrow(stream).fetchall()
        finally:
            stream.close()

    def scalar_row(self, sql: str, duck: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
        """The first row ``sql`` returns (an aggregate's one row)."""
        return tuple(self.rows(sql, duck)[0])


class ArchiveStream:
    """Keeps the statement alive while DuckDB reads the stream."""

    def __init__(self, handle: Any, statement: Any) -> None:
        self._handle = handle
        self._statement = statement

    def __arrow_c_schema__(self) -> Any:
        # DuckDB binds with the schema, then scans the stream once.
        return self._handle.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: object = None) -> Any:
        return self._handle.__arrow_c_stream__(requested_schema)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._statement.close()
