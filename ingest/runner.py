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

import logging
import signal
import threading
from collections.abc import Mapping
from contextlib import nullcontext

import sqlalchemy as sa

from .clock import SYSTEM, Clock
from .database import first_line
from .retry import opening_retry
from .settings import IngestSettings
from .store import NotAnArchive, SchemaBehind, Store, StoreError, file_lock_for, sqlite_path
from .worker import RunResult, Worker, handle_signals

__all__ = ["open_with_retry", "run_ingest"]

log = logging.getLogger("grantex_archive")


def run_ingest(settings: IngestSettings, exit_codes: Mapping[str, int] | None = None) -> RunResult:
    """Take the lock, open (or create) the archive and run the worker.

    Signals are handled from the start, so SIGTERM while the database is
    still being retried also ends the run cleanly (outcome ``interrupted``).
    ``exit_codes`` (outcome to exit code) is recorded with the run.
    """
    stop = threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        reason.append(f"stopped by {signal.Signals(signum).name}")
        stop.set()

    with handle_signals(on_signal):
        path = sqlite_path(settings.db_url)
        # A SQLite archive is locked before it is created or migrated,
        # so concurrent first runs cannot race on the schema.
        with file_lock_for(path, settings.source) if path else nullcontext():
            store = open_with_retry(settings, stop)
            if store is None:
                return RunResult("interrupted", error=reason[0] if reason else None)
            try:
                with store.lock(settings.source) if path is None else nullcontext():
                    worker = Worker(settings, store, stop=stop, exit_codes=exit_codes)
                    if reason:
                        worker.stop_reason = reason[0]
                    return worker.run()
            finally:
                store.close()


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
