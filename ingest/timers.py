"""The clocks of one ingest run as a state machine: pure, fed facts and asked what is due.

The worker tells :class:`RunTimers` what happened (a connection opened or
closed, events arrived, a flush blocked behind the database, a stop was
asked for) with the monotonic time it happened at, and asks at each turn of
its loop what is due: the end of the run and with which outcome, a flush of
the partial batch, a progress record, and how long it may wait for the
next item. Nothing here reads a clock, sleeps or does I/O.

The rules:

- ``--max-events``: the run ends once that many events were received.
- A stop request (SIGTERM/SIGINT) ends the run as ``interrupted``.
- ``--max-runtime``: the run ends at the deadline, as ``unreachable`` if it
  never connected. It is checked before idleness.
- ``--until-idle``: the run ends once a connection has been open and silent
  for that long and nothing received is still queued. The idle clock runs
  only while connected (never while backing off), restarts with every
  arrival, and does not count time spent blocked behind the database.
- The partial batch is flushed every ``--flush-interval`` (a full batch is
  flushed at once, which restarts that interval); progress is recorded
  every ``--progress-interval``.
- Once the run must end, the database gets :data:`~ingest.retry.STOP_GRACE`
  seconds to take the pending batch (:meth:`RunTimers.give_up_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .retry import STOP_GRACE

POLL = 0.25
"""The longest wait for the next item, so that a stop request is seen promptly."""


@dataclass(frozen=True, slots=True)
class RunLimits:
    """The settings the timers follow, in seconds (``None``: no such limit)."""

    flush_interval: float = 1.0
    progress_interval: float = 10.0
    until_idle: float | None = None
    max_runtime: float | None = None
    max_events: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """The run must end: its outcome, and the error text that outcome carries, if any."""

    outcome: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """What one turn of the worker's loop must do."""

    stop: Stop | None = None
    flush: bool = False
    progress: bool = False


class RunTimers:
    """The flush, progress, idle, runtime and event-count rules of one run, started at ``start``."""

    def __init__(self, limits: RunLimits, start: float) -> None:
        self.limits = limits
        self.deadline = start + limits.max_runtime if limits.max_runtime is not None else None
        self._next_flush = start + limits.flush_interval
        self._next_progress = start + limits.progress_interval
        # When the idle clock started; None while not connected.
        self._idle_from: float | None = None
        self._received = 0
        self.ever_connected = False
        self._stopped_at: float | None = None

    # -- facts -------------------------------------------------------------------------

    def connected(self, now: float) -> None:
        """A stream connection opened."""
        self.ever_connected = True
        self._idle_from = now

    def disconnected(self) -> None:
        """The connection closed, or an attempt failed: the idle clock stops."""
        self._idle_from = None

    def received(self, now: float, total: int) -> None:
        """Something arrived (possibly a frame still incomplete); ``total`` events so far."""
        self._received = total
        if self._idle_from is not None:
            self._idle_from = now

    def blocked(self, seconds: float) -> None:
        """The loop spent ``seconds`` blocked behind the database: nothing was read then."""
        if self._idle_from is not None:
            self._idle_from += seconds

    def flushed(self, now: float) -> None:
        """A full batch was handed to the database at ``now``: the flush interval restarts."""
        self._next_flush = now + self.limits.flush_interval

    # -- answers -----------------------------------------------------------------------

    def stop(self, now: float, stopping: bool, queue_empty: bool) -> Stop | None:
        """Whether the run must end at ``now``, and how."""
        limits = self.limits
        if limits.max_events is not None and self._received >= limits.max_events:
            return Stop("max_events")
        if stopping:
            return Stop("interrupted")
        if self.deadline is not None and now >= self.deadline:
            if not self.ever_connected:
                return Stop(
                    "unreachable", f"the service could not be reached in {limits.max_runtime:g}s"
                )
            return Stop("max_runtime")
        idle_from = self._idle_from
        if (
            limits.until_idle is not None
            and idle_from is not None
            and now - idle_from >= limits.until_idle
            and queue_empty
        ):
            return Stop("idle")
        return None

    def due(self, now: float, stopping: bool = False, queue_empty: bool = True) -> Due:
        """What is due at ``now``; a due flush or progress record counts as done from ``now``."""
        stop = self.stop(now, stopping, queue_empty)
        if stop is not None:
            return Due(stop)
        flush = now >= self._next_flush
        if flush:
            self._next_flush = now + self.limits.flush_interval
        progress = now >= self._next_progress
        if progress:
            self._next_progress = now + self.limits.progress_interval
        return Due(None, flush, progress)

    def wait(self, now: float) -> float:
        """How long the loop may wait for the next item at ``now`` (0 to :data:`POLL`)."""
        wait = min(self._next_flush, self._next_progress) - now
        if self.deadline is not None:
            wait = min(wait, self.deadline - now)
        if self.limits.until_idle is not None and self._idle_from is not None:
            wait = min(wait, self._idle_from + self.limits.until_idle - now)
        return max(0.0, min(wait, POLL))

    def give_up_reason(self, now: float, stopping: bool) -> str | None:
        """Why waiting on the database should end at ``now``, if it should.

        A stop request or the end of ``--max-runtime`` leaves the database
        :data:`STOP_GRACE` seconds to take the pending batch; after that the
        run ends with a database error rather than hang.
        """
        if stopping:
            if self._stopped_at is None:
                self._stopped_at = now
            if now - self._stopped_at > STOP_GRACE:
                return (
                    f"the database did not take the pending batch within {STOP_GRACE:g}s "
                    "of stopping"
                )
        if self.deadline is not None and now > self.deadline + STOP_GRACE:
            return "the database did not take the pending batch before --max-runtime ran out"
        return None
