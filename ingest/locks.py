"""One ingest per archive and source: a lock file beside a SQLite archive, an advisory lock
on PostgreSQL."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .database import StoreError, first_line, sqlite_path
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


# -- hand-over ------------------------------------------------------------------------------
#
# A run started with --wait-lock that finds the lock held queues up as the successor: it
# holds the "successor" lock from then on (one successor at a time, so a hand-over never
# uses more than two streams), and the "ready" lock once its connection delivered its
# first byte. The holder probes the "ready" lock. Both are flocks or session advisory
# locks, so they go with their process: a killed successor leaves no signal behind.


class _Signal:
    """One named lock a process can hold, and probe for another process holding it."""

    def try_take(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def held_elsewhere(self) -> bool:
        """True when another process holds it (a probe: takes and releases it if free)."""
        if self.try_take():
            self.release()
            return False
        return True


class _FileSignal(_Signal):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def try_take(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self._path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock


class _AdvisorySignal(_Signal):
    def __init__(self, engine: Engine, key: int) -> None:
        self._engine = engine
        self._key = key
        self._conn: sa.Connection | None = None

    def try_take(self) -> bool:
        if self._conn is not None:
            return True
        conn = self._engine.connect()
        try:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key})
            taken = bool(got.scalar())
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not taken:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            conn.commit()
        except sa.exc.DBAPIError:
            pass  # the session is gone, and its lock with it
        finally:
            conn.close()


LockFactory = Callable[[], AbstractContextManager[None]]


class HandoverLink:
    """The signals between the run holding the ingest lock and its successor.

    The holder asks :meth:`successor_ready`; a successor calls :meth:`queue_up`
    first, :meth:`announce` once its connection delivered its first byte, and
    :meth:`try_own` until it holds the ingest lock. :meth:`close` releases
    everything it still holds.
    """

    def __init__(self, successor: _Signal, ready: _Signal, take_lock: LockFactory) -> None:
        self._successor = successor
        self._ready = ready
        self._take_lock = take_lock
        self._owned = ExitStack()

    def successor_ready(self) -> bool:
        return self._ready.held_elsewhere()

    def queue_up(self) -> None:
        """Become the one successor, or raise :class:`LockHeld`."""
        if not self._successor.try_take():
            raise LockHeld(
                "another ingest holds the lock for this archive and source, and another "
                "run is already waiting to take over from it"
            )

    def announce(self) -> bool:
        """Tell the holder this successor's stream is live; False to try again later."""
        return self._ready.try_take()

    def withdraw(self) -> None:
        """The successor's stream is down: the holder must not hand over to it now."""
        self._ready.release()

    def try_own(self) -> bool:
        """Take the ingest lock if it is free; then the successor's signals are dropped."""
        try:
            self._owned.enter_context(self._take_lock())
        except LockHeld:
            return False
        self._ready.release()
        self._successor.release()
        return True

    def close(self) -> None:
        self._ready.release()
        self._successor.release()
        self._owned.close()


def handover_link(engine: Engine, source: str, take_lock: LockFactory) -> HandoverLink | None:
    """The hand-over signals of this archive and source (None: an archive without locks)."""
    if engine.dialect.name == "postgresql":
        try:
            with engine.connect() as conn:
                where = conn.execute(sa.text("SELECT current_database(), current_schema()")).one()
        except sa.exc.DBAPIError as exc:
            raise StoreError(f"database unusable: {first_line(exc)}") from None
        name = f"{where[0]}/{where[1]}/{source}"
        return HandoverLink(
            _AdvisorySignal(engine, lock_key(f"{name}#successor")),
            _AdvisorySignal(engine, lock_key(f"{name}#ready")),
            take_lock,
        )
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is None:
        return None
    base = _lock_path(path, source)
    return HandoverLink(
        _FileSignal(base.with_name(base.name + ".successor")),
        _FileSignal(base.with_name(base.name + ".ready")),
        take_lock,
    )
