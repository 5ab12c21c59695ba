"""The ingest worker: stream -> normalise -> batch -> store, with stopping rules.

Three threads, each with one job. The reader runs
:func:`~ingest.stream.stream_events`, normalises each chunk's frames and
hands them over a bounded queue; the main thread batches them, keeps the
clocks (flush interval, idle, runtime, progress) and the run records; the
:class:`BatchWriter` commits batches. When the database is slow the writer
falls behind, ``submit()`` blocks, the queue fills, the reader blocks and the
socket is no longer read: backpressure instead of unbounded buffering. Before
every reconnect the reader asks the main thread for the resume point, which
the main thread answers only after everything received is committed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import httpx
import sqlalchemy as sa

from .events import (
    MAX_FRAME_BYTES,
    Event,
    Rejection,
    normalise,
    peek_id,
    reject,
)
from .journal import PendingRun, journal_path, read_pending, write_pending
from .logs import Redactor
from .resume import MAX_CLOCK_SKEW, latest_plausible, resume_point
from .settings import IngestSettings
from .sse import Frame
from .store import Received, Store, StoreError
from .stream import (
    AuthenticationError,
    Chunk,
    Closed,
    Failed,
    Opened,
    StreamError,
    StreamItem,
    StreamOptions,
    make_client,
    stream_events,
)
from .timestamps import format_timestamp

log = logging.getLogger("grantex_archive.ingest")

OUTCOMES = (
    "idle",
    "max_runtime",
    "max_events",
    "interrupted",
    "unreachable",
    "auth_failed",
    "endpoint_error",
    "database_error",
    "failed",
)
"""How a run can end, as ``RunResult.outcome`` and ``ingest_runs.outcome`` record it.

The first four are the ends a run is asked for; the command line maps each
outcome to its exit code.
"""

QUEUE_CHUNKS = 64
STOP_GRACE = 10.0
"""Seconds the database gets to take the pending batch once the run must end."""


@dataclass(frozen=True)
class _NeedSince:
    """The reader is about to (re)connect and waits for the resume point."""


@dataclass(frozen=True)
class _Normalised:
    """A chunk's frames, normalised on the reader thread.

    Normalising there lets it overlap with the database's own work, which
    runs without the GIL.
    """

    items: list[Event | Rejection]
    received_at: datetime


@dataclass(frozen=True)
class _ReaderDone:
    error: BaseException | None = None


@dataclass
class RunCounts:
    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reconnects: int = 0
    first_occurred_at: datetime | None = None
    last_occurred_at: datetime | None = None
    newest_committed: datetime | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reconnects": self.reconnects,
            "first_occurred_at": self.first_occurred_at,
            "last_occurred_at": self.last_occurred_at,
        }


@dataclass
class RunResult:
    outcome: str
    counts: RunCounts = field(default_factory=RunCounts)
    error: str | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Worker:
    """One ingest run against one archive and source."""

    def __init__(
        self,
        settings: IngestSettings,
        store: Store,
        stream: Callable[..., Iterator[StreamItem]] = stream_events,
        stop: threading.Event | None = None,
        exit_codes: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = settings
        # The exit code each outcome gets from the caller, recorded with the run.
        self._exit_codes = exit_codes or {}
        self.store = store
        self._stream = stream
        self.stop = stop or threading.Event()
        self.stop_reason = ""
        # Error texts from the HTTP stack are stored and logged; they must
        # never carry the key.
        self._redact = Redactor((settings.api_key.reveal(),)).redact
        self._deadline: float | None = None
        self.counts = RunCounts()
        self._queue: queue.Queue[_QueueItem] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._answers: queue.Queue[datetime | None] = queue.Queue(maxsize=1)
        self._batch: list[Received] = []
        self._batch_newest: datetime | None = None
        self._run_id: int | None = None
        self._connection_id: int | None = None
        self._connection_events = 0
        self._connected = False
        self._ever_connected = False
        self._first_connect = True
        self._initial_since: datetime | None = None
        self._client: httpx.Client | None = None
        self._writer = BatchWriter(self._commit, self._give_up_reason)
        self._reader: threading.Thread | None = None
        self._stopped_at: float | None = None

    # -- the reader thread -------------------------------------------------------

    def _since_for_connect(self) -> datetime | None:
        if self._first_connect:
            self._first_connect = False
            return self._initial_since
        self._put(_NeedSince())
        while not self.stop.is_set():
            try:
                return self._answers.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _put(self, item: _QueueItem) -> None:
        # Blocks while the main thread is behind (backpressure), but never
        # past a stop request.
        while True:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self.stop.is_set():
                    return

    def _read(self) -> None:
        s = self.settings
        options = StreamOptions(
            base_url=s.base_url,
            api_key=s.api_key,
            types=s.types,
            read_timeout=s.read_timeout,
            connect_timeout=s.connect_timeout,
            backoff_initial=s.backoff_initial,
            backoff_max=s.backoff_max,
        )
        error: BaseException | None = None
        try:
            self._client = make_client(options)
            for item in self._stream(
                options, self._since_for_connect, self.stop, client=self._client
            ):
                if isinstance(item, Chunk):
                    normalised = [_normalise(frame) for frame in item.frames]
                    self._put(_Normalised(normalised, item.received_at))
                else:
                    self._put(item)
        except BaseException as exc:  # handed to the main thread, which decides
            error = exc
        finally:
            self._put(_ReaderDone(error))

    # -- the main thread -----------------------------------------------------------

    def resume_since(self) -> datetime | None:
        """The ``since`` for the next connection, read back from the archive."""
        s = self.settings
        return resume_point(
            now=_now(),
            overlap=s.overlap,
            newest_stored=None
            if s.since is not None
            else self.store.newest_occurred_at(s.source, s.types),
            newest_committed=self.counts.newest_committed,
            explicit_since=s.since,
        )

    def run(self) -> RunResult:
        with handle_signals(self.on_signal):
            result = self._run()
        # The reader is a daemon thread that touches no database; one blocked
        # in a socket read ends when the read returns, and must not delay
        # the exit (cron and systemd wait on it).
        if self._reader is not None:
            self._reader.join(timeout=0.2)
            if self._client is not None and not self._reader.is_alive():
                self._client.close()
        self._finish(result)
        return result

    def _run(self) -> RunResult:
        s = self.settings
        started = _now()
        journal = journal_path(s.db_url, s.source)
        pending = read_pending(journal)
        try:
            self._initial_since = self._with_db_retry(self.resume_since)
            self._run_id = self._with_db_retry(
                lambda: self.store.start_run(
                    s.source, started, self._initial_since, s.types, s.base_url, pending
                )
            )
        except StoreError as exc:
            return RunResult("database_error", self.counts, str(exc))
        if pending is not None:
            with contextlib.suppress(OSError):
                journal.unlink()
            log.info(
                "recorded the end of run %d, which the database refused when it ended",
                pending.run_id,
            )
        start = {
            "archive": _safe_url(s.db_url),
            "source": s.source,
            "since": format_timestamp(self._initial_since) if self._initial_since else "live",
            "types": ",".join(s.types) or "all",
            "run_id": self._run_id,
        }
        log.info(
            "ingest starting: archive=%s source=%s since=%s types=%s",
            start["archive"],
            start["source"],
            start["since"],
            start["types"],
            extra={"fields": start},
        )
        # The pipeline allocates many short-lived tuples; collecting the
        # youngest generation less often made decoding and normalising
        # 15-25% faster in the micro-benchmarks, and changes nothing else.
        gc_thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)
        self._reader = threading.Thread(target=self._read, name="grantex-stream", daemon=True)
        self._reader.start()
        try:
            return self._loop(time.monotonic())
        except StoreError as exc:
            return RunResult("database_error", self.counts, str(exc))
        except Exception as exc:  # recorded in ingest_runs, not lost in a traceback
            log.exception("ingest failed")
            return RunResult("failed", self.counts, self._redact(f"{type(exc).__name__}: {exc}"))
        finally:
            self.stop.set()
            # Every normal ending has waited for the writer already; after an
            # error it may be stuck on the database, and is not waited for.
            self._writer.close(timeout=1.0)
            gc.set_threshold(*gc_thresholds)

    def _loop(self, t0: float) -> RunResult:
        s = self.settings
        deadline = t0 + s.max_runtime if s.max_runtime is not None else None
        self._deadline = deadline
        next_flush = t0 + s.flush_interval
        next_progress = t0 + s.progress_interval
        idle_from: float | None = None
        last_counts = (0, t0)
        while True:
            now = time.monotonic()
            self._writer.check()
            if self.stop.is_set():
                self._drain()
                self._flush(wait=True)
                return RunResult("interrupted", self.counts, self.stop_reason or None)
            if deadline is not None and now >= deadline:
                self._flush(wait=True)
                if not self._ever_connected:
                    return RunResult(
                        "unreachable",
                        self.counts,
                        f"the service could not be reached in {s.max_runtime:g}s",
                    )
                return RunResult("max_runtime", self.counts)
            if (
                s.until_idle is not None
                and self._connected
                and idle_from is not None
                and now - idle_from >= s.until_idle
                and self._queue.empty()
            ):
                self._flush(wait=True)
                return RunResult("idle", self.counts)
            if now >= next_flush:
                blocked = self._flush()
                if idle_from is not None:
                    idle_from += blocked
                next_flush = now + s.flush_interval
            if now >= next_progress:
                last_counts = self._progress(now, last_counts)
                next_progress = now + s.progress_interval

            wait = min(next_flush, next_progress) - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            if s.until_idle is not None and self._connected and idle_from is not None:
                wait = min(wait, idle_from + s.until_idle - now)
            try:
                item = self._queue.get(timeout=max(0.0, min(wait, 0.25)))
            except queue.Empty:
                continue

            if type(item) is _Normalised:
                idle_from = time.monotonic()
                if self._take(item):
                    self._flush(wait=True)
                    return RunResult("max_events", self.counts)
                if len(self._batch) >= s.batch_size:
                    idle_from += self._flush()
                    next_flush = time.monotonic() + s.flush_interval
            elif isinstance(item, Opened):
                self._on_opened(item)
                idle_from = time.monotonic()
            elif isinstance(item, Closed):
                self._on_closed(item)
                idle_from = None
            elif isinstance(item, Failed):
                self._on_failed(item)
            elif isinstance(item, _NeedSince):
                # The resume point must cover everything received.
                self._flush(wait=True)
                self._answers.put(self._with_db_retry(self.resume_since))
            elif isinstance(item, _ReaderDone):
                self._flush(wait=True)
                return self._reader_done(item)

    def _take(self, chunk: _Normalised) -> bool:
        """Add a chunk to the batch; True once ``--max-events`` is reached."""
        limit = self.settings.max_events
        received_at = chunk.received_at
        # The plausibility bound once per chunk, not once per event.
        bound = latest_plausible(received_at)
        batch = self._batch
        for item in chunk.items:
            batch.append(Received(item, received_at))
            self._connection_events += 1
            if type(item) is Event:
                self.counts.received += 1
                occurred = item.occurred_at
                c = self.counts
                if c.first_occurred_at is None or occurred < c.first_occurred_at:
                    c.first_occurred_at = occurred
                if occurred > bound:
                    _warn_implausible(item, received_at)
                else:
                    if self._batch_newest is None or occurred > self._batch_newest:
                        self._batch_newest = occurred
                    if c.last_occurred_at is None or occurred > c.last_occurred_at:
                        c.last_occurred_at = occurred
                if limit is not None and c.received >= limit:
                    return True
        return False

    def _flush(self, wait: bool = False) -> float:
        """Hand the pending batch to the writer; with ``wait``, until all is committed.

        Returns the seconds spent blocked behind a slow database, during
        which nothing was read: the idle clock must not count them.
        """
        started = time.monotonic()
        if self._batch:
            batch, newest = self._batch, self._batch_newest
            self._batch, self._batch_newest = [], None
            self._writer.submit(batch, newest)
        if wait:
            self._writer.wait()
        return time.monotonic() - started

    def _commit(self, batch: list[Received], newest: datetime | None) -> None:
        """Runs on the writer thread: one batch, one transaction."""
        result = self._with_db_retry(
            lambda: self.store.write_batch(self.settings.source, self._run_id, batch)
        )
        c = self.counts
        c.inserted += result.inserted
        c.duplicates += result.duplicates
        c.rejected += result.rejected
        if newest is not None and (c.newest_committed is None or newest > c.newest_committed):
            c.newest_committed = newest

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if type(item) is _Normalised:
                self._take(item)

    def _on_opened(self, item: Opened) -> None:
        self._connected = True
        if self._ever_connected:
            self.counts.reconnects += 1
        self._ever_connected = True
        self._connection_events = 0
        assert self._run_id is not None
        run_id = self._run_id
        self._connection_id = self._with_db_retry(
            lambda: self.store.open_connection(run_id, item.at, item.since, item.status_code)
        )
        since = format_timestamp(item.since) if item.since else "live"
        log.info("connected: since=%s", since, extra={"fields": {"since": since}})

    def _on_closed(self, item: Closed) -> None:
        self._connected = False
        self._flush()
        if self._connection_id is not None:
            conn_id = self._connection_id
            self._with_db_retry(
                lambda: self.store.close_connection(
                    conn_id, item.at, self._connection_events, self._redact(item.reason)
                )
            )
            self._connection_id = None
        if item.reason != "stopped":
            log.warning(
                "disconnected after %d frames: %s",
                item.events,
                item.reason,
                extra={"fields": {"frames": item.events, "reason": self._redact(item.reason)}},
            )

    def _on_failed(self, item: Failed) -> None:
        self._connected = False
        self.counts.reconnects += 1
        assert self._run_id is not None
        run_id = self._run_id
        self._with_db_retry(
            lambda: self.store.record_attempt(
                run_id, item.at, item.since, item.status_code, self._redact(item.reason)
            )
        )
        log.warning(
            "connection failed: %s; retrying in %.1fs",
            item.reason,
            item.retry_in,
            extra={
                "fields": {
                    "status_code": item.status_code,
                    "reason": self._redact(item.reason),
                    "retry_in": round(item.retry_in, 3),
                }
            },
        )

    def _reader_done(self, item: _ReaderDone) -> RunResult:
        error = item.error
        if error is None or self.stop.is_set():
            # The reader ends on its own only when asked to stop.
            return RunResult("interrupted", self.counts, self.stop_reason or None)
        if isinstance(error, StreamError):
            outcome = "auth_failed" if isinstance(error, AuthenticationError) else "endpoint_error"
            return RunResult(outcome, self.counts, self._redact(str(error)))
        log.error("stream reader failed: %r", error)
        return RunResult("failed", self.counts, self._redact(f"{type(error).__name__}: {error}"))

    def _progress(self, now: float, last: tuple[int, float]) -> tuple[int, float]:
        c = self.counts
        rate = (c.received - last[0]) / max(now - last[1], 1e-9)
        lag = (_now() - c.last_occurred_at).total_seconds() if c.last_occurred_at else None
        log.info(
            "progress: received=%d inserted=%d duplicates=%d rejected=%d rate=%.0f/s lag=%s",
            c.received,
            c.inserted,
            c.duplicates,
            c.rejected,
            rate,
            f"{lag:.1f}s" if lag is not None else "n/a",
            extra={
                "fields": {
                    "received": c.received,
                    "inserted": c.inserted,
                    "duplicates": c.duplicates,
                    "rejected": c.rejected,
                    "events_per_second": round(rate, 1),
                    "lag_seconds": round(lag, 3) if lag is not None else None,
                }
            },
        )
        if self._run_id is not None:
            run_id = self._run_id
            # Keeps a killed run's row close to what it did.
            self._with_db_retry(lambda: self.store.update_run(run_id, **c.as_row()))
        return c.received, now

    def _finish(self, result: RunResult) -> None:
        c = self.counts
        now = _now()
        connection: tuple[int, dict[str, Any]] | None = None
        if self._connection_id is not None:
            conn_id = self._connection_id
            self._connection_id = None
            reason = f"run ended: {result.outcome}"
            closing = {"closed_at": now, "events": self._connection_events, "close_reason": reason}
            connection = (conn_id, closing)
            try:
                self._with_db_retry(
                    lambda: self.store.close_connection(
                        conn_id, now, self._connection_events, reason
                    ),
                    attempts=3,
                )
                connection = None
            except StoreError as exc:
                log.error("could not record the connection: %s", exc)
        if self._run_id is not None:
            run_id = self._run_id
            values = dict(
                c.as_row(),
                finished_at=now,
                outcome=result.outcome,
                exit_code=self._exit_codes.get(result.outcome),
                error=result.error,
            )
            try:
                self._with_db_retry(lambda: self.store.update_run(run_id, **values), attempts=3)
            except StoreError as exc:
                log.error("could not record the run: %s", exc)
                self._keep_pending(run_id, values, connection)
        log.info(
            "ingest finished: outcome=%s received=%d inserted=%d duplicates=%d "
            "rejected=%d reconnects=%d",
            result.outcome,
            c.received,
            c.inserted,
            c.duplicates,
            c.rejected,
            c.reconnects,
            extra={
                "fields": {
                    "outcome": result.outcome,
                    "exit_code": self._exit_codes.get(result.outcome),
                    "run_id": self._run_id,
                    "received": c.received,
                    "inserted": c.inserted,
                    "duplicates": c.duplicates,
                    "rejected": c.rejected,
                    "reconnects": c.reconnects,
                }
            },
        )

    def _keep_pending(
        self,
        run_id: int,
        values: dict[str, Any],
        connection: tuple[int, dict[str, Any]] | None,
    ) -> None:
        """Keep the run's final record on disk for the next run to apply."""
        path = journal_path(self.settings.db_url, self.settings.source)
        pending = PendingRun(
            run_id=run_id,
            values=values,
            connection_id=connection[0] if connection else None,
            connection_values=connection[1] if connection else None,
        )
        try:
            write_pending(path, pending)
        except OSError as exc:
            log.error("could not keep the run's record in %s either: %s", path, exc)
            return
        log.warning("kept the run's record in %s; the next run writes it to the archive", path)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop reading, flush, record the run, exit 0."""
        self.stop_reason = f"stopped by {signal.Signals(signum).name}"
        self.stop.set()

    def _give_up_reason(self) -> str | None:
        """Why waiting on the database should end now, if it should.

        A stop request or the end of --max-runtime leaves the database
        STOP_GRACE seconds to take the pending batch; after that the run
        ends with exit 4 rather than hang.
        """
        now = time.monotonic()
        if self.stop.is_set():
            if self._stopped_at is None:
                self._stopped_at = now
            if now - self._stopped_at > STOP_GRACE:
                return (
                    f"the database did not take the pending batch within {STOP_GRACE:g}s "
                    "of stopping"
                )
        if self._deadline is not None and now > self._deadline + STOP_GRACE:
            return "the database did not take the pending batch before --max-runtime ran out"
        return None

    def _with_db_retry(self, action: Callable[[], Any], attempts: int | None = None) -> Any:
        """Run a database action, retrying operational errors with backoff, then give up."""
        give_up = time.monotonic() + self.settings.db_retry_timeout
        if self._deadline is not None:
            # --max-runtime bounds the retries too.
            give_up = min(give_up, max(self._deadline, time.monotonic() + 1.0))
        if self.stop.is_set():
            give_up = min(give_up, time.monotonic() + STOP_GRACE)
        delay = 0.25
        tries = 0
        while True:
            tries += 1
            try:
                return action()
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                message = _db_message(exc)
                out_of_time = time.monotonic() + delay > give_up
                if out_of_time or (attempts is not None and tries >= attempts):
                    raise StoreError(f"database unusable: {message}") from None
                log.warning("database error, retrying in %.1fs: %s", delay, message)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                if self.stop.is_set():
                    give_up = min(give_up, time.monotonic() + STOP_GRACE)
            except sa.exc.DBAPIError as exc:
                # Not transient (a missing table, a permission): retrying
                # cannot help, and nothing uncommitted was acknowledged.
                raise StoreError(f"database unusable: {_db_message(exc)}") from None


class BatchWriter:
    """Commits batches on a thread of its own.

    The database does most of its work without the GIL (SQLite inside one
    multi-row statement, PostgreSQL on the other side of a socket), so
    committing one batch while the next is decoded and normalised uses both
    cores. At most one batch waits while another is written: a slow database
    blocks ``submit()``, which stops the reader (backpressure).
    """

    def __init__(
        self,
        commit: Callable[[list[Received], datetime | None], None],
        give_up: Callable[[], str | None],
    ) -> None:
        self._commit = commit
        self._give_up = give_up
        self._jobs: queue.Queue[tuple[list[Received], datetime | None] | None] = queue.Queue(
            maxsize=1
        )
        self._done = threading.Condition()
        self._pending = 0
        self._error: StoreError | None = None
        self._thread = threading.Thread(target=self._run, name="grantex-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: list[Received], newest: datetime | None) -> None:
        self.check()
        with self._done:
            self._pending += 1
        while True:
            try:
                self._jobs.put((batch, newest), timeout=0.2)
                return
            except queue.Full:
                self._check_waiting()

    def wait(self) -> None:
        """Until every submitted batch is committed; raises the writer's error."""
        with self._done:
            while self._pending and self._error is None:
                self._done.wait(0.2)
                if self._pending:
                    self._check_waiting()
        self.check()

    def close(self, timeout: float) -> None:
        """Let the thread finish what it holds (up to ``timeout``), then end it."""
        with contextlib.suppress(queue.Full):
            self._jobs.put(None, timeout=0.2)
        # A thread still stuck on the database is a daemon and ends with us.
        self._thread.join(timeout=timeout)

    def _check_waiting(self) -> None:
        self.check()
        reason = self._give_up()
        if reason is not None:
            raise StoreError(reason)
        if not self._thread.is_alive():
            raise StoreError("the database writer stopped unexpectedly")

    def check(self) -> None:
        """Raise the writer's error, if a batch could not be committed."""
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._error is None:
                    self._commit(*job)
            except StoreError as exc:
                self._error = exc
            except Exception as exc:  # reported to the main thread, not lost
                self._error = StoreError(f"database unusable: {type(exc).__name__}: {exc}")
            finally:
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()


_QueueItem = _Normalised | Opened | Closed | Failed | _NeedSince | _ReaderDone


def _warn_implausible(event: Event, received_at: datetime) -> None:
    log.warning(
        "event %s is dated %s, more than %s after it arrived (%s): archived, "
        "but not used as the resume point",
        event.id,
        format_timestamp(event.occurred_at),
        _skew_text(),
        format_timestamp(received_at),
    )


def _skew_text() -> str:
    hours = MAX_CLOCK_SKEW.total_seconds() / 3600
    return f"{hours:g} hours" if hours != 24 else "1 day"


def _normalise(frame: Frame) -> Event | Rejection:
    if frame.truncated_length is not None:
        rejection = reject(
            f"frame larger than {MAX_FRAME_BYTES} bytes", frame.data, peek_id(frame.data)
        )
        return rejection._replace(raw_length=frame.truncated_length)
    return normalise(frame.data)


def _db_message(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def _safe_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid URL>"


@contextmanager
def handle_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGTERM/SIGINT call ``handler`` once; a second one gets the default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def once(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        handler(signum, frame)

    previous = {sig: signal.signal(sig, once) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
