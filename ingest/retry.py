"""When to try again: the delays and deadlines of every retry in an ingest run, as pure policy.

Three things retry: the stream reader reconnecting (:class:`Backoff`, with
jitter, honouring the server's ``Retry-After`` header and ``retry:`` field),
the worker's database actions and the opening of the archive (both
:class:`Retry`: a deadline and, at the end of a run, a number of attempts).
All of them wait delays that double up to a cap (:class:`Doubling`). Nothing
here reads a clock or sleeps: callers pass the time and do the waiting.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import timezone

RETRY_AFTER_CAP = 300.0
"""The longest ``Retry-After`` honoured, in seconds."""

RETRY_FIELD_CAP = 60.0
"""The longest reconnect delay a ``retry:`` field can ask for, in seconds."""

STOP_GRACE = 10.0
"""Seconds the database gets to take the pending batch once the run must end."""

RUNTIME_GRACE = 1.0
"""Seconds a database action may still be retried when ``--max-runtime`` has run out."""

DB_DELAYS_IN_RUN = (0.25, 5.0)
"""The first and the longest delay between database retries during a run."""

DB_DELAYS_OPENING = (0.5, 5.0)
"""The first and the longest delay between attempts to open the archive."""

_MAX_DOUBLINGS = 64  # 2.0**64 times any initial delay is past every cap


@dataclass(frozen=True, slots=True)
class Doubling:
    """Delays that start at ``initial`` and double after each failure, up to ``cap``."""

    initial: float
    cap: float

    def delay(self, failures: int) -> float:
        """The delay after ``failures`` earlier consecutive failures."""
        return min(self.cap, self.initial * 2.0 ** min(failures, _MAX_DOUBLINGS))


class Backoff:
    """Capped exponential backoff with jitter ("equal jitter": half fixed, half random).

    The stream reader's reconnect policy: :meth:`after_refusal` for an
    attempt that did not become a stream, :meth:`after_connection` for a
    stream that ended.
    """

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._delays = Doubling(initial, maximum)
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = self._delays.delay(self.failures)
        self.failures += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0

    def after_refusal(self, retry_after: float | None) -> float:
        """The delay after a refused attempt: the server's ``Retry-After`` if it sent one."""
        return retry_after if retry_after is not None else self.next_delay()

    def after_connection(self, delivered: int, retry_field: float | None) -> float:
        """The delay after a stream ended that delivered ``delivered`` frames.

        A connection that delivered frames resets the backoff, so a flapping
        but working stream reconnects at once (or after the ``retry:`` the
        server asked for); one that delivered nothing backs off, for at least
        the ``retry:`` asked for.
        """
        if delivered:
            self.reset()
            return retry_field or 0.0
        return max(self.next_delay(), retry_field or 0.0)


def retry_field_delay(milliseconds: int) -> float:
    """A ``retry:`` field as the reconnect delay in seconds, clamped."""
    return min(max(milliseconds / 1000, 0.0), RETRY_FIELD_CAP)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date at Unix time ``now``), clamped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds: float = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return float(min(max(seconds, 0.0), RETRY_AFTER_CAP))


@dataclass(slots=True)
class Retry:
    """Retries of one action until a deadline (monotonic seconds) or a number of attempts."""

    delays: Doubling
    give_up: float
    attempts: int | None = None
    failures: int = 0

    def after_failure(self, now: float) -> float | None:
        """Record a failed attempt at ``now``: the delay before the next one, or None to give up.

        It gives up when the next attempt would start after the deadline or
        when the attempts are used up.
        """
        delay = self.delays.delay(self.failures)
        self.failures += 1
        if now + delay > self.give_up:
            return None
        if self.attempts is not None and self.failures >= self.attempts:
            return None
        return delay

    def stop_by(self, deadline: float) -> None:
        """Give up no later than ``deadline``."""
        self.give_up = min(self.give_up, deadline)


def database_retry(
    now: float,
    timeout: float,
    *,
    runtime_deadline: float | None = None,
    stopping: bool = False,
    attempts: int | None = None,
) -> Retry:
    """The retries of one database action during a run, started at ``now``.

    ``timeout`` is ``--db-retry-timeout``. The end of ``--max-runtime``
    bounds them too (leaving at least :data:`RUNTIME_GRACE`), and so does a
    stop request (:data:`STOP_GRACE`).
    """
    give_up = now + timeout
    if runtime_deadline is not None:
        give_up = min(give_up, max(runtime_deadline, now + RUNTIME_GRACE))
    if stopping:
        give_up = min(give_up, now + STOP_GRACE)
    return Retry(Doubling(*DB_DELAYS_IN_RUN), give_up, attempts)


def opening_retry(now: float, timeout: float, max_runtime: float | None) -> Retry:
    """The retries of opening the archive, started at ``now``: the shorter of the two limits."""
    if max_runtime is not None:
        timeout = min(timeout, max_runtime)
    return Retry(Doubling(*DB_DELAYS_OPENING), now + timeout)
