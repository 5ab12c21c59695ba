"""The ingest worker: stream -> normalise -> batch -> store, with stopping rules.

The reader runs :func:`~ingest.stream.stream_events` and normalises each chunk's
frames, in a process of its own (:class:`~ingest.reader_process.ProcessReader`, the
default) or on a thread (:class:`~ingest.reader.StreamReader`). The main thread
(:class:`Worker`) batches the chunks, asks :class:`~ingest.timers.RunTimers` what is
due (flush, progress, the end of the run) and keeps the run records
(:class:`~ingest.run_record.RunRecord`). Batches are committed inline with a reader
process (:class:`~ingest.batch_writer.InlineWriter`), else on a writer thread
(:class:`~ingest.batch_writer.BatchWriter`). When the database is slow, the pipe and
the reader's outbox (or the queue) fill, the reader blocks and the socket is no longer
read: backpressure instead of unbounded buffering. Before every reconnect the reader asks the main
thread for the resume point, answered once everything received is committed.
"""

from __future__ import annotations

import functools
import gc
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from types import FrameType
from typing import TypeVar

import sqlalchemy as sa

from .batch_writer import Batch, BatchWriter, InlineWriter
from .batching import take
from .clock import SYSTEM, Clock
from .database import first_line
from .handover import Handover, HoldLimits
from .locks import HandoverLink
from .logs import Redactor
from .reader import (
    GC_THRESHOLDS,
    NeedSince,
    Normalised,
    QueueItem,
    ReaderDone,
    ReaderFailed,
    StreamReader,
    preparation_for,
    stream_options,
)
from .reader_process import ProcessReader, ReaderChild
from .resume import resume_point
from .retry import STOP_GRACE, database_retry
from .run_record import RunCounts, RunRecord, RunResult
from .settings import IngestSettings
from .signals import handle_signals
from .store import Store, StoreError
from .stream import (
    AuthenticationError,
    Closed,
    Failed,
    Opened,
    Requested,
    StreamError,
    StreamItem,
    stream_events,
)
from .timers import POLL, RunLimits, RunTimers, Stop

__all__ = ["OUTCOMES", "STOP_GRACE", "RunCounts", "RunResult", "Worker", "handle_signals"]

log = logging.getLogger("grantex_archive.ingest")

T = TypeVar("T")

SWITCH_INTERVAL = 0.0001
"""Seconds a thread may hold the GIL while another waits for it, during a run."""

OUTCOMES = (
    "idle",
    "max_runtime",
    "max_events",
    "interrupted",
    "handed_over",
    "locked",
    "unreachable",
    "auth_failed",
    "endpoint_error",
    "database_error",
    "failed",
)
"""How a run can end, as ``RunResult.outcome`` and ``ingest_runs.outcome`` record it.

The first five are the ends a run is asked for or agrees to (``handed_over``:
a successor took over, see :mod:`ingest.handover`); ``locked`` is a
successor that gave up waiting for the lock. The command line maps each
outcome to its exit code.
"""


class Worker:
    """One ingest run against one archive and source.

    ``stream`` defaults to :func:`~ingest.stream.stream_events` waiting on
    ``clock``; ``exit_codes`` maps outcomes to the exit codes recorded with
    the run. ``link`` carries the hand-over signals; a run that does not
    hold the ingest lock yet (``owned`` False) is a successor. ``reader_child`` is a
    reader process started ahead (:func:`~ingest.reader_process.spawn`).
    """

    def __init__(
        self,
        settings: IngestSettings,
        store: Store,
        stream: Callable[..., Iterator[StreamItem]] | None = None,
        stop: threading.Event | None = None,
        exit_codes: Mapping[str, int] | None = None,
        clock: Clock = SYSTEM,
        link: HandoverLink | None = None,
        owned: bool = True,
        reader_child: ReaderChild | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.stop = stop or threading.Event()
        self.stop_reason = ""
        # Error texts from the HTTP stack are stored and logged; they must
        # never carry the key.
        self._redact = Redactor((settings.api_key.reveal(),)).redact
        self.counts = RunCounts()
        self._timers: RunTimers | None = None
        self._batch = Batch()
        limits = None
        if settings.wait_lock is not None:
            limits = HoldLimits(settings.wait_lock, settings.hold_events, settings.hold_bytes)
        self._handover = Handover(link, owned, limits, clock.monotonic())
        self._record = RunRecord(
            settings, store, self.counts, self._with_db_retry, self._redact, clock, exit_codes or {}
        )
        preparation = preparation_for(settings, store)
        options = stream_options(settings)
        self._reader: StreamReader | ProcessReader
        self._writer: BatchWriter | InlineWriter
        if stream is None and clock is SYSTEM and settings.reader_process:
            self._reader = ProcessReader(options, self.stop, preparation, reader_child)
            self._writer = InlineWriter(self._commit)
        else:
            self._writer = BatchWriter(self._commit, self._give_up_reason)
            stream = stream or functools.partial(stream_events, clock=clock)
            self._reader = StreamReader(options, stream, self.stop, preparation)

    def resume_since(self) -> datetime | None:
        """The ``since`` for the next connection, read back from the archive."""
        s = self.settings
        return resume_point(
            now=self.clock.now(),
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
        self._reader.close(timeout=0.2)
        self._record.finish(result)
        return result

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop reading, flush, record the run (outcome ``interrupted``)."""
        self.stop_reason = f"stopped by {signal.Signals(signum).name}"
        self.stop.set()

    def _run(self) -> RunResult:
        started = self.clock.now()
        try:
            since = self._with_db_retry(self.resume_since)
            self._record.start(started, since)
        except StoreError as exc:
            return RunResult("database_error", self.counts, str(exc))
        gc_thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        # The writer gives up the GIL for every statement and the commit, and
        # waits for it after each while the other threads run Python: by
        # default up to 5 ms a time, longer than most statements take.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._reader.start(since)
        try:
            return self._loop()
        except StoreError as exc:
            self._drain(store=False)  # what arrived meanwhile: received, not stored
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
            sys.setswitchinterval(switch_interval)

    # -- the main thread's loop ------------------------------------------------------------

    def _loop(self) -> RunResult:
        s = self.settings
        start = self.clock.monotonic()
        limits = RunLimits(
            s.flush_interval, s.progress_interval, s.until_idle, s.max_runtime, s.max_events
        )
        timers = self._timers = RunTimers(limits, start)
        self._record.count_from(start)
        items = self._reader.queue
        while True:
            now = self.clock.monotonic()
            self._writer.check()
            due = timers.due(now, self.stop.is_set(), items.empty())
            stop = due.stop or self._handover.turn(now)
            if stop is not None:
                return self._end(stop)
            if due.flush:
                timers.blocked(self._flush())
            if due.progress:
                self._record.progress(now)
            try:
                item = items.get(timeout=timers.wait(now))
            except queue.Empty:
                continue
            if type(item) is Normalised:
                self._on_chunk(item, timers)
            elif isinstance(item, ReaderDone):
                self._flush(wait=True)
                return self._reader_done(item)
            else:
                self._on_event(item, timers)

    def _on_chunk(self, chunk: Normalised, timers: RunTimers) -> None:
        timers.received(self.clock.monotonic(), self._take(chunk))
        if len(self._batch) >= self.settings.batch_size:
            timers.blocked(self._flush())
            timers.flushed(self.clock.monotonic())

    def _on_event(self, item: QueueItem, timers: RunTimers) -> None:
        """What the reader reports besides chunks and its end."""
        if isinstance(item, Requested):
            self._record.requested(item)
        elif isinstance(item, Opened):
            self._record.opened(item, reconnect=timers.ever_connected)
            self._handover.connected()
            timers.connected(self.clock.monotonic())
        elif isinstance(item, Closed):
            timers.disconnected()
            self._handover.disconnected()
            self._flush()
            self._record.closed(item)
        elif isinstance(item, Failed):
            timers.disconnected()
            self._handover.disconnected()
            self._record.failed(item)
        elif isinstance(item, NeedSince):
            # The resume point must cover everything received.
            self._flush(wait=True)
            self._reader.answer(self._with_db_retry(self.resume_since))

    def _end(self, stop: Stop) -> RunResult:
        self._drain(store=True)
        self._flush(wait=True)
        self._handover.drop()
        if stop.outcome == "interrupted":
            return RunResult("interrupted", self.counts, self.stop_reason or None)
        return RunResult(stop.outcome, self.counts, stop.error)

    def _reader_done(self, item: ReaderDone) -> RunResult:
        self._handover.drop()
        error = item.error
        if error is None or self.stop.is_set():
            # The reader ends on its own only when asked to stop.
            return RunResult("interrupted", self.counts, self.stop_reason or None)
        if isinstance(error, StreamError):
            outcome = "auth_failed" if isinstance(error, AuthenticationError) else "endpoint_error"
            return RunResult(outcome, self.counts, self._redact(str(error)))
        log.error("stream reader failed: %r", error)
        kind = error.kind if isinstance(error, ReaderFailed) else type(error).__name__
        return RunResult("failed", self.counts, self._redact(f"{kind}: {error}"))

    def _drain(self, store: bool) -> None:
        """Stop the reader and take what it read: up to its end when it sends that once asked
        (within :data:`STOP_GRACE`), else what it has handed over. With ``store``, each
        batch goes to the writer as it fills."""
        self.stop.set()
        items, clock = self._reader.queue, self.clock
        deadline = clock.monotonic() + STOP_GRACE
        while True:
            waiting = self._reader.ends_when_asked and clock.monotonic() < deadline
            try:
                item = items.get(timeout=POLL) if waiting else items.get_nowait()
            except queue.Empty:
                if waiting:
                    continue
                if self._reader.ends_when_asked:
                    log.warning("the reader did not end within %gs of stopping", STOP_GRACE)
                return
            if isinstance(item, ReaderDone):
                return
            if type(item) is Normalised:
                self._take(item)
                if store and len(self._batch) >= self.settings.batch_size:
                    self._flush()

    # -- batching --------------------------------------------------------------------------

    def _take(self, chunk: Normalised) -> int:
        """Add a chunk to the batch, up to ``--max-events``; returns the events received."""
        return take(
            chunk,
            self._batch,
            self.counts,
            self.settings.max_events,
            self._record.connection_id,
        )

    def _flush(self, wait: bool = False) -> float:
        """Hand the pending batch to the writer; with ``wait``, until all is committed.

        Returns the seconds spent blocked behind a slow database, during
        which nothing was read: the idle clock must not count them.
        """
        started = self.clock.monotonic()
        handover = self._handover
        for held in handover.release():
            self._writer.submit(held)
        if len(self._batch):
            batch, self._batch = self._batch, Batch()
            if handover.owned:
                self._writer.submit(batch)
            else:
                handover.hold(batch)
        if wait:
            self._writer.wait()
        return self.clock.monotonic() - started

    def _commit(self, batch: Batch) -> None:
        """Runs on the writer thread: one batch and its connections' counts, one transaction."""
        guessed = batch.guessed
        digests = b"".join(batch.digests) if guessed.first_key is not None else b""
        result = self._with_db_retry(
            lambda: self.store.write_batch(
                self.settings.source,
                self._record.run_id,
                batch.entries,
                batch.connections,
                rows=batch.rows,
                digests=digests,
                first_key=guessed.first_key,
                lines=batch.lines,
            )
        )
        correction = guessed.correction(result.next_key)
        if correction is not None:
            self._reader.correct_keys(*correction)
        self.counts.committed(result.inserted, result.duplicates, result.rejected, batch.newest)

    def _give_up_reason(self) -> str | None:
        """Why waiting on the database should end now, if it should (see RunTimers)."""
        if self._timers is None:
            return None
        return self._timers.give_up_reason(self.clock.monotonic(), self.stop.is_set())

    def _with_db_retry(self, action: Callable[[], T], attempts: int | None = None) -> T:
        """Run a database action, retrying operational errors with backoff, then give up."""
        clock = self.clock
        retry = database_retry(
            clock.monotonic(),
            self.settings.db_retry_timeout,
            runtime_deadline=self._timers.deadline if self._timers is not None else None,
            stopping=self.stop.is_set(),
            attempts=attempts,
        )
        while True:
            try:
                return action()
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                message = first_line(exc)
                delay = retry.after_failure(clock.monotonic())
                if delay is None:
                    raise StoreError(f"database unusable: {message}") from None
                log.warning("database error, retrying in %.1fs: %s", delay, message)
                clock.sleep(delay)
                if self.stop.is_set():
                    retry.stop_by(clock.monotonic() + STOP_GRACE)
            except sa.exc.DBAPIError as exc:
                # Not transient (a missing table, a permission): retrying
                # cannot help, and nothing uncommitted was acknowledged.
                raise StoreError(f"database unusable: {first_line(exc)}") from None
