"""Where a run resumes: pure decisions over times, with no I/O and no clock of their own.

The cursor is data: the resume point is read back from what was committed.
Two rules keep one bad timestamp from moving it:

- An event dated more than :data:`MAX_CLOCK_SKEW` after it arrived is
  *implausible*. It is archived like any other, but never becomes the resume
  point: one event stamped year 9999 would otherwise make every later run
  ask for "now" and skip everything the producer could still replay.
- A plausible event dated after "now" (a producer clock slightly ahead) is
  clamped to now, so the look-back still covers what arrived since.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

MAX_CLOCK_SKEW = timedelta(days=1)
"""How far an event's own time may lie after its arrival and still count for resuming."""

_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def latest_plausible(received_at: datetime) -> datetime:
    """The latest event time that still counts for resuming, for what arrived at ``received_at``."""
    return received_at + MAX_CLOCK_SKEW


def plausible(occurred_at: datetime, received_at: datetime) -> bool:
    """Whether an event's time can serve as the resume point."""
    return occurred_at <= latest_plausible(received_at)


def overlap_since(newest: datetime | None, overlap: float) -> datetime | None:
    """The resume point: the newest stored event time minus the look-back window."""
    if newest is None:
        return None
    try:
        return newest - timedelta(seconds=overlap)
    except OverflowError:
        return _EARLIEST


def resume_point(
    *,
    now: datetime,
    overlap: float,
    newest_stored: datetime | None,
    newest_committed: datetime | None = None,
    explicit_since: datetime | None = None,
) -> datetime | None:
    """The ``since`` of the next connection.

    ``newest_stored`` is the newest plausible event time in the archive for
    this source and type filter; ``newest_committed`` the newest plausible
    one this run has committed; ``explicit_since`` the ``--since`` given.
    An explicit start stays the lower bound for the whole run, so a backfill
    that reconnects does not skip to newer stored events. None means "live".
    """
    if explicit_since is not None:
        if newest_committed is None:
            return explicit_since
        run_newest = overlap_since(min(newest_committed, now), overlap)
        assert run_newest is not None
        return max(explicit_since, run_newest)
    if newest_stored is None:
        return None
    return overlap_since(min(newest_stored, now), overlap)
