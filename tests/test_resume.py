"""The resume decision as a table: pure, no database, no clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ingest.resume import MAX_CLOCK_SKEW, overlap_since, plausible, resume_point

UTC = timezone.utc
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
MIN = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("stored", "committed", "explicit", "expected"),
    [
        # An empty archive without --since starts live.
        (None, None, None, None),
        # The newest stored event minus the overlap.
        (NOW - 10 * MIN, None, None, NOW - 15 * MIN),
        # A plausible event a little ahead of now is clamped to now.
        (NOW + 30 * MIN, None, None, NOW - 5 * MIN),
        # --since is the lower bound for the whole run...
        (None, None, NOW - 60 * MIN, NOW - 60 * MIN),
        # ...until this run has committed newer events.
        (None, NOW - 10 * MIN, NOW - 60 * MIN, NOW - 15 * MIN),
        (None, NOW - 70 * MIN, NOW - 60 * MIN, NOW - 60 * MIN),
    ],
)
def test_resume_point(
    stored: datetime | None,
    committed: datetime | None,
    explicit: datetime | None,
    expected: datetime | None,
) -> None:
    got = resume_point(
        now=NOW,
        overlap=300,
        newest_stored=stored,
        newest_committed=committed,
        explicit_since=explicit,
    )
    assert got == expected


def test_plausible_is_bounded_by_the_arrival_plus_the_skew() -> None:
    assert plausible(NOW + MAX_CLOCK_SKEW, NOW)
    assert not plausible(NOW + MAX_CLOCK_SKEW + timedelta(microseconds=1), NOW)
    assert plausible(datetime(1, 1, 1, tzinfo=UTC), NOW)


def test_overlap_at_the_start_of_time_does_not_overflow() -> None:
    earliest = datetime(1, 1, 1, tzinfo=UTC)
    assert overlap_since(earliest, 300) == earliest
    assert overlap_since(None, 300) is None
