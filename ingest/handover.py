"""Hand-over between ingest runs: the rules, as pure state machines, and the worker's side.

A run started with ``--wait-lock SECONDS`` that finds another ingest holding
the lock for its archive and source becomes the *successor*: it connects,
keeps what arrives (up to :attr:`HoldLimits.events` events and
:attr:`HoldLimits.bytes` bytes), tries the lock every :data:`CHECK_INTERVAL`
and, once it holds it, writes what it kept and carries on as the owner. It
gives up with outcome ``locked`` when it kept too much or waited too long.

The run holding the lock looks for a successor whose connection has
delivered its first byte every :data:`CHECK_INTERVAL`; once it sees one it
keeps reading for :data:`OVERLAP` seconds, so that the two connections
overlap and nothing falls between them (the id absorbs the duplicates), then
ends with outcome ``handed_over``: within :data:`HANDOVER_WITHIN` of the
successor's first byte, its last batch included.

:class:`Succession` and :class:`HolderWatch` read no clock and do no I/O;
:class:`Handover` feeds them the worker's time and the lock signals
(:class:`~ingest.locks.HandoverLink`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from .batch_writer import Batch
from .database import StoreError
from .events import Event
from .locks import HandoverLink
from .prepare import PAYLOAD
from .timers import Stop

log = logging.getLogger("grantex_archive.ingest")

CHECK_INTERVAL = 0.5
"""How often the holder looks for a ready successor, and a successor tries the lock."""

OVERLAP = 2.0
"""How long the holder keeps reading after it saw a ready successor."""

HANDOVER_WITHIN = 10.0
"""The holder ends within this long of its successor's first byte."""

FIRST_BYTE_WAIT = 30.0
"""The longest the live service takes to a quiet stream's first byte (its keepalive
interval): a ``--wait-lock`` shorter than about twice this can run out before the
successor's stream is live, so that no hand-over can happen."""


@dataclass(frozen=True, slots=True)
class HoldLimits:
    """How long a successor waits for the lock, and how much it keeps meanwhile."""

    wait: float
    events: int
    bytes: int


class Succession:
    """A successor's rules from ``start``: when to try the lock, when to give up."""

    def __init__(self, limits: HoldLimits, start: float) -> None:
        self.limits = limits
        self.deadline = start + limits.wait
        self._next_try = start
        self.events = 0
        self.bytes = 0

    def held(self, events: int, size: int) -> None:
        """``events`` more events (``size`` bytes of frames) are kept, unwritten."""
        self.events += events
        self.bytes += size

    def try_due(self, now: float) -> bool:
        """Whether to try the lock at ``now``; a due try counts as made."""
        if now < self._next_try:
            return False
        self._next_try = now + CHECK_INTERVAL
        return True

    def give_up(self, now: float, connected: bool = True) -> Stop | None:
        """Why the successor must give up at ``now`` (outcome ``locked``), if it must.

        ``connected``: whether its own stream has delivered its first byte (the holder
        hands over only then)."""
        limits = self.limits
        if self.events > limits.events or self.bytes > limits.bytes:
            return Stop(
                "locked",
                f"gave up waiting for the lock: kept {self.events} events ({self.bytes} bytes) "
                f"while another ingest held it, over the limit of {limits.events} events or "
                f"{limits.bytes} bytes",
            )
        if now >= self.deadline and not connected:
            return Stop(
                "locked",
                f"gave up after --wait-lock {limits.wait:g}s: this run's stream delivered no "
                "byte in that time, so the ingest holding the lock could not hand over (the "
                f"live service sends the first byte with its first event or its "
                f"{FIRST_BYTE_WAIT:g} s keepalive: use a --wait-lock of "
                f"{2 * FIRST_BYTE_WAIT:g} s or more)",
            )
        if now >= self.deadline:
            return Stop(
                "locked",
                f"another ingest still held the lock after --wait-lock {limits.wait:g}s",
            )
        return None


class HolderWatch:
    """The holder's rules from ``start``: when to look for a successor, when to end."""

    def __init__(self, start: float) -> None:
        self._next_check = start
        self.seen_at: float | None = None

    def check_due(self, now: float) -> bool:
        """Whether to look for a ready successor at ``now``; a due look counts as made."""
        if self.seen_at is not None or now < self._next_check:
            return False
        self._next_check = now + CHECK_INTERVAL
        return True

    def successor_seen(self, now: float) -> None:
        if self.seen_at is None:
            self.seen_at = now

    def successor_gone(self) -> None:
        """The successor seen is no longer ready: look again, as before."""
        self.seen_at = None

    def stop(self, now: float) -> Stop | None:
        """``handed_over`` once the connections have overlapped for :data:`OVERLAP`."""
        if self.seen_at is not None and now >= self.seen_at + OVERLAP:
            return Stop("handed_over")
        return None


def batch_size(batch: Batch) -> tuple[int, int]:
    """A batch's events, and the bytes of its frames, as the successor's limits count them."""
    events = len(batch.rows)
    size = sum(len(row[PAYLOAD]) for row in batch.rows)
    for entry in batch.entries:
        item = entry.item
        if isinstance(item, Event):
            events += 1
            size += len(item.payload)
        else:
            size += item.raw_length
    return events, size


class Handover:
    """The worker's side of a hand-over: its turn in the loop, and the batches it holds.

    ``owned`` says whether the run holds the ingest lock (a successor does not
    until :meth:`turn` takes it). ``limits`` is None for a run without
    ``--wait-lock``.
    """

    def __init__(
        self, link: HandoverLink | None, owned: bool, limits: HoldLimits | None, start: float
    ) -> None:
        self._link = link
        self.owned = owned
        self._succession = Succession(limits, start) if limits is not None else None
        self._watch = HolderWatch(start)
        self._connected = False
        self._announced = False
        self.held: list[Batch] = []

    def hold(self, batch: Batch) -> None:
        """Keep a batch unwritten until the lock is taken."""
        assert self._succession is not None
        self.held.append(batch)
        self._succession.held(*batch_size(batch))

    def release(self) -> list[Batch]:
        """The batches held until now, to write, once the lock is taken."""
        if not self.owned or not self.held:
            return []
        held, self.held = self.held, []
        return held

    def drop(self) -> None:
        """The run ends without the lock: what it kept is not written (the holder has it)."""
        if self.held:
            events = sum(batch_size(batch)[0] for batch in self.held)
            self.held = []
            log.warning(
                "%d events kept while waiting for the lock are not written: the run "
                "holding the lock received them too",
                events,
            )

    def disconnected(self) -> None:
        """The successor's connection closed or failed: not ready until it reconnects."""
        self._connected = False
        if self._announced and self._link is not None and not self.owned:
            self._link.withdraw()
            self._announced = False

    def connected(self) -> None:
        """The successor's connection delivered its first byte: tell the holder."""
        self._connected = True
        self._announce()

    def _announce(self) -> None:
        # A try fails while the holder's probe holds the signal for an instant.
        if not self.owned and self._connected and not self._announced and self._link:
            self._announced = _safely(self._link.announce)

    def turn(self, now: float) -> Stop | None:
        """One turn of the loop: take the lock or give up, or look for a successor."""
        link = self._link
        if link is None:
            return None
        if not self.owned:
            succession = self._succession
            assert succession is not None
            self._announce()
            if succession.try_due(now) and _safely(link.try_own):
                self.owned = True
                log.info(
                    "took over the ingest lock; writing the %d events kept meanwhile",
                    succession.events,
                )
                return None
            return succession.give_up(now, self._connected)
        watch = self._watch
        if watch.check_due(now) and _safely(link.successor_ready):
            watch.successor_seen(now)
            log.info("a successor is reading the stream; handing over in %gs", OVERLAP)
        stop = watch.stop(now)
        if stop is not None and not _safely(link.successor_ready):
            # Killed, or its stream dropped, since it was seen: no hand-over.
            watch.successor_gone()
            log.warning("the successor is no longer reading the stream; carrying on")
            return None
        return stop


def _safely(signal: Callable[[], bool]) -> bool:
    """A lock signal's answer; False when the archive cannot answer now."""
    try:
        return signal()
    except (StoreError, sa.exc.SQLAlchemyError, OSError) as exc:
        log.warning("could not read the hand-over signals: %s", exc)
        return False
