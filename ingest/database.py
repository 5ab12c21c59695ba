"""Connecting to the archive: URLs, engines and the errors that say the database is unusable.

SQLite (a file, the default) and PostgreSQL are supported; every engine the
tool makes comes from :func:`create_archive_engine`, with the settings each
dialect needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class DatabaseURLError(ValueError):
    """The archive URL is malformed or names a database this tool cannot use."""


class StoreError(Exception):
    """The archive cannot be used."""


class SchemaBehind(StoreError):
    """The archive's schema is older than this version of the tool."""


class NotAnArchive(StoreError):
    """The database is not one this tool can use (e.g. a file that is not SQLite)."""


def create_archive_engine(url: str) -> Engine:
    """An engine for the archive, with the settings each dialect needs."""
    try:
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            # Only ingest writes, one batch at a time: a lock held longer
            # than this is an outage, handled by the retries above it.
            engine = sa.create_engine(parsed, connect_args={"timeout": 10})
            sa.event.listen(engine, "connect", sqlite_pragmas)
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


def safe_url(url: str) -> str:
    """``url`` with its password masked, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<invalid URL>"


def _hide_password(url: str, exc: Exception) -> str:
    """The error's text without the URL's password, which a malformed URL may echo."""
    text = str(exc)
    password = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    return text.replace(password, "***") if password else text


def sqlite_pragmas(dbapi_connection: Any, _record: Any = None) -> None:
    """The settings of every SQLite connection to an archive (the benchmarks use them too)."""
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


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: a driver's own error for a database error,
    without the SQL and background link SQLAlchemy adds; DuckDB and ADBC add context below."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
