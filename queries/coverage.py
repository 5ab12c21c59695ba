"""The stream's coverage: the gaps in a window, as the ``ingest-coverage`` report finds them.

The rules (what a connection covers, how spans merge, what counts as a gap)
are the report's SQL, ``queries/reports/ingest-coverage.sql``; this module
runs it for a window and sums the gaps, for the warning every other report
prints and for ``status``. The time "now" is a parameter, so callers and
tests choose the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ingest.timestamps import now_utc

from .copy import AnalyticsCopy
from .reports import get_report
from .session import rows_of

COVERAGE_REPORT = "ingest-coverage"
"""The report that lists the spans and gaps; the warning points to it."""

JSON_FIELD = "uncovered"
"""The field every JSON record of a report gains when its window holds a gap."""

STATUS_PERIODS: tuple[tuple[str, timedelta], ...] = (
    ("24h", timedelta(hours=24)),
    ("30d", timedelta(days=30)),
)
"""The windows, ending now, whose uncovered time ``status`` shows."""


@dataclass(frozen=True)
class Gap:
    """Time the stream of ``source`` was not covered by any connection, cut to a window."""

    source: str
    start: datetime
    end: datetime
    seconds: float
    cause: str
    webhook_events: int = 0
    """Events of the source the webhook receiver delivered first, occurred in [start, end)."""


@dataclass(frozen=True)
class Coverage:
    """The gaps of a window, for one source or all of them."""

    gaps: tuple[Gap, ...] = ()

    @property
    def seconds(self) -> float:
        """Uncovered seconds in the window, summed over the gaps (and sources)."""
        return sum(gap.seconds for gap in self.gaps)

    @property
    def webhook_events(self) -> int:
        """Events in the gaps that the webhook receiver caught, summed over the gaps."""
        return sum(gap.webhook_events for gap in self.gaps)

    @property
    def warning(self) -> str | None:
        """One line saying how much of the window is uncovered (and what the webhook
        receiver caught in it, when anything); None when none is."""
        if not self.gaps:
            return None
        caught = self.webhook_events
        receiver = (
            f" (the webhook receiver caught {caught} event{'s' if caught != 1 else ''} in them)"
            if caught
            else ""
        )
        return (
            f"{uncovered_text(len(self.gaps), self.seconds)} in this window{receiver}; "
            f"see report {COVERAGE_REPORT}"
        )

    def as_json(self) -> dict[str, Any]:
        """What JSON output carries: the number of gaps and their seconds."""
        return {"gaps": len(self.gaps), "seconds": round(self.seconds, 3)}

    @property
    def json_fields(self) -> dict[str, Any] | None:
        """The field a report's JSON records gain (``uncovered``); None when there is no gap."""
        return {JSON_FIELD: self.as_json()} if self.gaps else None


def uncovered_text(gaps: int, seconds: float) -> str:
    """``2 gaps totalling 38 s``: seconds whole from 10 up, to a tenth below."""
    amount = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"
    return f"{gaps} gap{'s' if gaps != 1 else ''} totalling {amount} s"


def gaps_sql() -> str:
    """The report's gap rows: source, start, end, seconds, cause and webhook events,
    in time order per source.

    The report counts a gap's webhook events over the whole gap; here they are
    counted over the gap as the window cuts it, so the warning speaks of the window.
    """
    body = get_report(COVERAGE_REPORT).sql.rstrip().rstrip(";")
    return (
        "SELECT t.source, t.start_at, t.end_at, t.seconds, t.cause, ("
        "SELECT count(*) FROM events e WHERE e.channel = 'webhook' AND e.source = t.source "
        "AND e.occurred_at >= t.start_at AND e.occurred_at < t.end_at) AS webhook_events "
        f"FROM ({body}\n) t WHERE t.kind = 'gap' ORDER BY t.source, t.start_at"
    )


def coverage_params(
    since: datetime | None, until: datetime | None, source: str | None, now: datetime
) -> dict[str, Any]:
    return {"since": since, "until": until, "source": source, "now": now}


def gaps_from_rows(rows: Sequence[Sequence[Any]]) -> Coverage:
    """The gap rows of :func:`gaps_sql` as a :class:`Coverage`."""
    return Coverage(
        tuple(
            Gap(str(source), start, end, float(seconds), str(cause), int(caught))
            for source, start, end, seconds, cause, caught in rows
        )
    )


def window_gaps(
    copy: AnalyticsCopy,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None = None,
    now: datetime | None = None,
) -> Coverage:
    """The gaps of ``source`` (every source when None) in [since, until), as of ``now``
    (default: the current time)."""
    params = coverage_params(since, until, source, now if now is not None else now_utc())
    with rows_of(copy, gaps_sql(), params) as (_, rows):
        return gaps_from_rows(list(rows))


def sources(copy: AnalyticsCopy) -> list[str]:
    """The sources that have ingest runs, in order."""
    with rows_of(copy, "SELECT DISTINCT source FROM ingest_runs ORDER BY source", {}) as (_, rows):
        return [str(row[0]) for row in rows]


def status_rows(
    by_period: Mapping[str, Coverage], names: Sequence[str]
) -> list[tuple[str, str, Any]]:
    """``status`` rows for the uncovered time of each period, per source when several.

    One source (or none): ``uncovered_seconds_24h``, ``gaps_24h`` ... Several:
    the same names prefixed with the source and a dot (``acct-a.gaps_24h``).
    """
    rows: list[tuple[str, str, Any]] = []
    several = len(names) > 1
    for source in names if several else [None]:
        prefix = f"{source}." if source is not None else ""
        for period, coverage in by_period.items():
            gaps = [g for g in coverage.gaps if source is None or g.source == source]
            seconds = round(float(sum(g.seconds for g in gaps)), 3)
            rows.append(("coverage", f"{prefix}uncovered_seconds_{period}", seconds))
            rows.append(("coverage", f"{prefix}gaps_{period}", len(gaps)))
    return rows


def status_coverage(copy: AnalyticsCopy, now: datetime) -> list[tuple[str, str, Any]]:
    """The rows ``status`` shows: uncovered time in the last 24 hours and 30 days."""
    by_period = {
        period: window_gaps(copy, since=now - length, now=now) for period, length in STATUS_PERIODS
    }
    return status_rows(by_period, sources(copy))
