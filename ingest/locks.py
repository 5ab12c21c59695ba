"""One ingest per archive and source: a lock file beside a SQLite archive, an advisory lock
on PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .database import StoreError, sqlite_path
from .files import LockBusy, file_lock


class LockHeld(Exception):
    """Another ingest holds the lock for this archive and source."""


@contextmanager
def ingest_lock(engine: Engine, source: str) -> Iterator[None]:
    """Hold the one-ingest-per-archive-and-source lock, or raise :class:`LockHeld`."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, source):
            yield
        return
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is None:
        yield
        return
    with file_lock_for(path, source):
        yield


@contextmanager
def _advisory_lock(engine: Engine, source: str) -> Iterator[None]:
    with engine.connect() as conn:
        where = conn.execute(sa.text("SELECT current_database(), current_schema()")).one()
        key = lock_key(f"{where[0]}/{where[1]}/{source}")
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


def lock_key(name: str) -> int:
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
