"""Run one ingest from settings: take the lock, open the archive, run the worker.

This is the library entry point behind ``grantex-archive ingest``; a
notebook or another program can call :func:`run_ingest` the same way::

    from ingest.runner import run_ingest
    from ingest.settings import IngestSettings, Secret

    result = run_ingest(IngestSettings(db_url="sqlite:///archive.db",
                                       api_key=Secret("..."), until_idle=10))
    print(result.outcome, result.counts.inserted)

It returns a :class:`~ingest.worker.RunResult` or raises
:class:`~ingest.store.LockHeld` (another ingest holds this archive and
source) or :class:`~ingest.store.StoreError` (the archive cannot be used).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack

import sqlalchemy as sa

from .clock import SYSTEM, Clock
from .database import first_line
from .locks import LockHeld, handover_link
from .reader_process import ReaderChild, spawn
from .retry import opening_retry
from .settings import IngestSettings
from .signals import handle_signals
from .store import NotAnArchive, SchemaBehind, Store, StoreError, file_lock_for, sqlite_path
from .worker import RunResult, Worker

__all__ = ["open_with_retry", "run_ingest"]

log = logging.getLogger("grantex_archive")


def run_ingest(settings: IngestSettings, exit_codes: Mapping[str, int] | None = None) -> RunResult:
    """Take the lock, open (or create) the archive and run the worker.

    With ``wait_lock``, a lock another ingest holds makes this run its
    successor (:mod:`ingest.handover`) instead of raising :class:`LockHeld`.

    Signals are handled from the start, so SIGTERM while the database is
    still being retried also ends the run cleanly (outcome ``interrupted``).
    ``exit_codes`` (outcome to exit code) is recorded with the run.
    """
    stop = threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        reason.append(f"stopped by {signal.Signals(signum).name}")
        stop.set()

    with handle_signals(on_signal), ExitStack() as held:
        path = sqlite_path(settings.db_url)
        owned = True
        if path is not None:
            # A SQLite archive is locked before it is created or migrated,
            # so concurrent first runs cannot race on the schema.
            lock = functools.partial(file_lock_for, path, settings.source)
            owned = _take_lock(held, lock, settings.wait_lock is not None)
        child = _spawn_reader(settings)
        if child is not None:
            held.callback(child.close)
        store = open_with_retry(settings, stop)
        if store is None:
            return RunResult("interrupted", error=reason[0] if reason else None)
        held.callback(store.close)
        take_lock = functools.partial(store.lock, settings.source)
        if path is None:
            owned = _take_lock(held, take_lock, settings.wait_lock is not None)
        link = handover_link(store.engine, settings.source, take_lock)
        if link is not None:
            held.callback(link.close)
            if not owned:
                link.queue_up()
                log.info("another ingest holds the lock: reading, and waiting to take over")
        worker = Worker(
            settings,
            store,
            stop=stop,
            exit_codes=exit_codes,
            link=link,
            owned=owned,
            reader_child=child,
        )
        if reason:
            worker.stop_reason = reason[0]
        return worker.run()


def _spawn_reader(settings: IngestSettings) -> ReaderChild | None:
    """The run's reader process, started now so that it gets ready while the archive opens;
    None when the run reads on a thread, or when it cannot start (the worker then says why)."""
    if not settings.reader_process:
        return None
    try:
        return spawn()
    except OSError:
        return None


def _take_lock(
    held: ExitStack, lock: Callable[[], AbstractContextManager[None]], may_wait: bool
) -> bool:
    """Take the ingest lock into ``held``; False if another ingest holds it and ``may_wait``."""
    try:
        held.enter_context(lock())
    except LockHeld:
        if not may_wait:
            raise
        return False
    return True


def open_with_retry(
    settings: IngestSettings, stop: threading.Event, clock: Clock = SYSTEM
) -> Store | None:
    """Open (creating or upgrading) the archive, retrying while it is unreachable.

    Gives up with :class:`StoreError` after ``db_retry_timeout`` (or
    ``max_runtime`` when shorter); returns None if ``stop`` is set first.
    A database that is not an archive, or whose schema is newer, is not retried.
    """
    from . import migrate  # Alembic loads only for the commands that need it

    retry = opening_retry(clock.monotonic(), settings.db_retry_timeout, settings.max_runtime)
    while not stop.is_set():
        try:
            return migrate.open_archive(settings.db_url)
        except (SchemaBehind, NotAnArchive):
            raise
        except (StoreError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            message = first_line(exc) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
            delay = retry.after_failure(clock.monotonic())
            if delay is None:
                raise StoreError(f"database unusable: {message}") from None
            log.warning("database unusable, retrying in %.1fs: %s", delay, message)
            clock.wait(stop, delay)
    return None
