"""The per-key stream counter behind the live service's five-stream cap.

The live service counts open streams in a Redis key per developer: every request
increments it (and refreshes its 300 s expiry), a refused request and a closed stream
decrement it (never below zero), and every keepalive refreshes the expiry. A crashed
server never decrements, so its streams' slots stay taken until nothing has touched the
key for the expiry time; while any live stream sends keepalives, that is never.

:class:`SlotCounter` is that counter with an injected clock, so its policy is tested
without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Slot:
    """One admitted stream's hold on the counter; a leaked slot is never given back."""

    __slots__ = ("leaked", "released")

    def __init__(self) -> None:
        self.leaked = False
        self.released = False


class SlotCounter:
    """At most ``limit`` streams per key; the count expires ``ttl`` seconds after a touch."""

    def __init__(
        self, limit: int, ttl: float, leaked: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.limit = limit
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._count = leaked
        self._touched = clock()

    @property
    def count(self) -> int:
        """The counter's value now (0 once it has expired)."""
        with self._lock:
            self._expire()
            return self._count

    def acquire(self) -> Slot | None:
        """Count one more stream, or None (and no change) when the cap is reached."""
        with self._lock:
            self._expire()
            self._count += 1
            self._touched = self._clock()
            if self._count > self.limit:
                self._count -= 1
                return None
            return Slot()

    def release(self, slot: Slot) -> None:
        """A stream ended normally: give its slot back, clamping the count at zero."""
        with self._lock:
            if slot.leaked or slot.released:
                return
            slot.released = True
            self._expire()
            self._count = max(0, self._count - 1)

    def touch(self) -> None:
        """A keepalive was sent: the count lives another ``ttl`` seconds."""
        with self._lock:
            self._expire()
            self._touched = self._clock()

    def leak(self, slot: Slot) -> None:
        """The server holding ``slot`` crashed: the count keeps it until it expires."""
        with self._lock:
            slot.leaked = True

    def _expire(self) -> None:
        if self._count and self._clock() - self._touched >= self.ttl:
            self._count = 0
