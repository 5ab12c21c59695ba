"""The clocks the ingest run reads and waits on, injected so that policies can be tested.

:data:`SYSTEM` is the real one. :class:`ManualClock` stands still until it
is told to move (or is asked to sleep, which moves it at once), so a test
can drive the run's timers, the stream's backoff and the database retries
in milliseconds without waiting.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds for timers, aware UTC for records, and waiting."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""

    def now(self) -> datetime:
        """The wall-clock time, aware, in UTC."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``event`` is set; True if it is set."""


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if seconds > 0:
            return event.wait(seconds)
        return event.is_set()


SYSTEM = SystemClock()

EPOCH = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


class ManualClock:
    """A clock that moves only when told to; waiting moves it and is recorded.

    ``now()`` is ``start`` plus the monotonic seconds. Every ``sleep`` and
    every ``wait`` that is not cut short by its event appends its length to
    :attr:`sleeps`.
    """

    def __init__(self, start: datetime = EPOCH, monotonic: float = 0.0) -> None:
        self._start = start
        self._t = monotonic
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._t

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._t)

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self._t += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()
