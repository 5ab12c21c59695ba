"""What an ingest run records about itself: its row, its connections, its log lines.

:class:`RunRecord` keeps ``ingest_runs`` and ``ingest_connections`` up to
date as the run goes (start, each request as it goes out and what answered
it, progress, the end) and writes the matching log lines. A run whose end
the database refuses keeps its final record in the journal for the next run
to apply.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from .clock import Clock
from .journal import PendingRun, journal_path, read_pending, write_pending
from .settings import IngestSettings
from .store import Store, StoreError, safe_url
from .store_runs import WAITING_REASON
from .stream import Closed, Failed, Opened, Requested
from .timestamps import format_timestamp

log = logging.getLogger("grantex_archive.ingest")

T = TypeVar("T")


class Retrying(Protocol):
    """Runs a database action with the run's retries."""

    def __call__(self, action: Callable[[], T], attempts: int | None = None) -> T: ...


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

    def committed(
        self, inserted: int, duplicates: int, rejected: int, newest: datetime | None
    ) -> None:
        """Count a committed batch; ``newest`` is its newest plausible event time."""
        self.inserted += inserted
        self.duplicates += duplicates
        self.rejected += rejected
        if newest is not None and (self.newest_committed is None or newest > self.newest_committed):
            self.newest_committed = newest

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


class RunRecord:
    """The records of one run; every database write goes through ``retrying``."""

    def __init__(
        self,
        settings: IngestSettings,
        store: Store,
        counts: RunCounts,
        retrying: Retrying,
        redact: Callable[[str], str],
        clock: Clock,
        exit_codes: Mapping[str, int],
    ) -> None:
        self._settings = settings
        self._store = store
        self._counts = counts
        self._retrying = retrying
        self._redact = redact
        self._clock = clock
        self._exit_codes = exit_codes
        self.run_id: int | None = None
        self.connection_id: int | None = None
        """The row of the connection open now; the frames arriving come over it."""
        self.request_id: int | None = None
        """The row of the request waiting for its response head, if one is.

        Kept until its answer is written: a run that ends on a database error
        meanwhile still closes the row.
        """
        self._last_progress = (0, 0.0)

    def start(self, started_at: datetime, since: datetime | None) -> None:
        """Record the run's start (and the end of one the database refused last time)."""
        s = self._settings
        journal = journal_path(s.db_url, s.source)
        pending = read_pending(journal)
        self.run_id = self._retrying(
            lambda: self._store.start_run(s.source, started_at, since, s.types, s.base_url, pending)
        )
        if pending is not None:
            with contextlib.suppress(OSError):
                journal.unlink()
            log.info(
                "recorded the end of run %d, which the database refused when it ended",
                pending.run_id,
            )
        fields = {
            "archive": safe_url(s.db_url),
            "source": s.source,
            "since": format_timestamp(since) if since else "live",
            "types": ",".join(s.types) or "all",
            "run_id": self.run_id,
        }
        log.info(
            "ingest starting: archive=%s source=%s since=%s types=%s",
            fields["archive"],
            fields["source"],
            fields["since"],
            fields["types"],
            extra={"fields": fields},
        )

    def requested(self, item: Requested) -> None:
        """A request went out: its row exists before any answer, which may take 30 s."""
        run_id = self._run_id()
        self.request_id = self._retrying(
            lambda: self._store.request_connection(run_id, item.requested_at, item.since)
        )

    def opened(self, item: Opened, reconnect: bool) -> None:
        """A connection opened; ``reconnect`` if it is not the run's first."""
        if reconnect:
            self._counts.reconnects += 1
        run_id, request_id = self._run_id(), self.request_id
        self.connection_id = self._retrying(
            lambda: self._store.open_connection(
                run_id,
                item.requested_at,
                item.first_byte_at,
                item.since,
                item.status_code,
                request_id,
            )
        )
        self.request_id = None
        since = format_timestamp(item.since) if item.since else "live"
        log.info("connected: since=%s", since, extra={"fields": {"since": since}})

    def closed(self, item: Closed) -> None:
        if self.connection_id is not None:
            conn_id = self.connection_id
            reason = self._redact(item.reason)
            self._retrying(lambda: self._store.close_connection(conn_id, item.at, reason))
            self.connection_id = None
        if item.reason != "stopped":
            log.warning(
                "disconnected after %d frames: %s",
                item.events,
                item.reason,
                extra={"fields": {"frames": item.events, "reason": self._redact(item.reason)}},
            )

    def failed(self, item: Failed) -> None:
        """An attempt that did not become a stream; the last one when ``retry_in`` is None."""
        run_id, request_id = self._run_id(), self.request_id
        reason = self._redact(item.reason)
        self._retrying(
            lambda: self._store.record_attempt(
                run_id,
                item.requested_at,
                item.first_byte_at,
                item.closed_at,
                item.since,
                item.status_code,
                reason,
                request_id,
            )
        )
        self.request_id = None
        if item.retry_in is None:
            return  # the run ends with this error as its outcome, logged then
        self._counts.reconnects += 1
        log.warning(
            "connection failed: %s; retrying in %.1fs",
            item.reason,
            item.retry_in,
            extra={
                "fields": {
                    "status_code": item.status_code,
                    "reason": reason,
                    "retry_in": round(item.retry_in, 3),
                }
            },
        )

    def count_from(self, now: float) -> None:
        """The rate in the first progress record is measured from ``now``."""
        self._last_progress = (self._counts.received, now)

    def progress(self, now: float) -> None:
        """Log the counts and the rate since the last progress record; update the run's row."""
        c = self._counts
        last_received, last_at = self._last_progress
        self._last_progress = (c.received, now)
        rate = (c.received - last_received) / max(now - last_at, 1e-9)
        last = c.last_occurred_at
        lag = (self._clock.now() - last).total_seconds() if last else None
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
        if self.run_id is not None:
            run_id, conn_id, values = self.run_id, self.connection_id, c.as_row()
            # Keeps a killed run's rows close to what it did: its counts, and
            # the connection alive now (even if only keepalives came).
            seen_at = self._clock.now()
            self._retrying(lambda: self._store.record_progress(run_id, values, conn_id, seen_at))

    def finish(self, result: RunResult) -> None:
        """Record how the run ended (in the journal if the database refuses); log it."""
        now = self._clock.now()
        connection = self._close_connection(now, f"run ended: {result.outcome}")
        if self.run_id is not None:
            run_id = self.run_id
            values = dict(
                self._counts.as_row(),
                finished_at=now,
                outcome=result.outcome,
                exit_code=self._exit_codes.get(result.outcome),
                error=result.error,
            )
            try:
                self._retrying(lambda: self._store.update_run(run_id, **values), attempts=3)
            except StoreError as exc:
                log.error("could not record the run: %s", exc)
                self._keep_pending(run_id, values, connection)
        self._log_finished(result.outcome)

    def _close_connection(self, now: datetime, reason: str) -> tuple[int, dict[str, Any]] | None:
        """Close the row of the open connection, or of the request waiting for its head.

        Returns what could not be written, for the journal. At most one of
        the two is open: a request goes out only after the last connection
        closed.
        """
        if self.connection_id is not None:
            conn_id = self.connection_id
            self.connection_id = None
        elif self.request_id is not None:
            conn_id, reason = self.request_id, WAITING_REASON
            self.request_id = None
        else:
            return None
        try:
            self._retrying(lambda: self._store.close_connection(conn_id, now, reason), attempts=3)
            return None
        except StoreError as exc:
            log.error("could not record the connection: %s", exc)
            # Its events are in the database already: each batch counted its own.
            return conn_id, {"closed_at": now, "close_reason": reason}

    def _log_finished(self, outcome: str) -> None:
        c = self._counts
        log.info(
            "ingest finished: outcome=%s received=%d inserted=%d duplicates=%d "
            "rejected=%d reconnects=%d",
            outcome,
            c.received,
            c.inserted,
            c.duplicates,
            c.rejected,
            c.reconnects,
            extra={
                "fields": {
                    "outcome": outcome,
                    "exit_code": self._exit_codes.get(outcome),
                    "run_id": self.run_id,
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
        path = journal_path(self._settings.db_url, self._settings.source)
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

    def _run_id(self) -> int:
        assert self.run_id is not None, "the run's start is recorded first"
        return self.run_id
