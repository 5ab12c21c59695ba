"""Coverage of the stream from ingest_connections: the ingest-coverage report, the
warning every other report gives, status's uncovered time, and a real reconnect.

The hand-built archive (``build``), seconds after T0; the answers follow from
the rules in the report's header:

acct-a
  run 1 (idle): connection 1, 200, requested 0 (first byte 20: coverage starts
  at the request), closed 100, 5 events.
  run 2 (abandoned, killed before the fix that closes its connections):
  connection 2, 200, requested 90 (overlaps connection 1), never closed, last
  seen 150: covers to 150, never to now.
  -> covered [0, 150]; gap [150, 188) 38 s "run 2 abandoned; next run 3 started".
  run 3 (max_runtime): connection 3, 200, [188, 250] "server closed the stream",
  10 events, one rejected frame received at 200; a 503 at 250.5 and a refused
  connection (no status, no byte) at 251.5; connection 6, 200, [272, 400],
  4 events.
  -> covered [188, 250]; gap [250, 272) 22 s "run 3 reconnect after: server
  closed the stream; 2 failed attempts (503, no response)"; covered [272, 400].
  run 4 (auth_failed): a 401 at 500, covering nothing.
  -> gap [400, now) "no ingest running since run 4 finished (auth_failed);
  1 failed attempt (401)".
acct-b
  run 5 (running): connection 8, 200, requested 300, open: covered [300, now).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

import queries
from benchmarks import analytics
from ingest import migrate
from ingest.events import normalise
from ingest.schema import ingest_connections, ingest_runs
from ingest.store import Received
from ingest.store_runs import ABANDONED_REASON, WAITING_REASON
from queries.coverage import Coverage, Gap, status_rows, uncovered_text
from tests.conftest import PG_URL, _pg_available, invoke
from tests.scripted_server import Reply, ScriptedServer, frame

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
NOW = T0 + timedelta(seconds=1000)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """These tests need PostgreSQL: unreachable is a failure here, never a skip."""
    problem = _pg_available()
    if problem is not None:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {problem}")
    return PG_URL


def at(t0: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else at_(t0, seconds)


def at_(t0: datetime, seconds: float) -> datetime:
    return t0 + timedelta(seconds=seconds)


# (id, source, started, finished, outcome)
RUNS = [
    (1, "acct-a", 0, 100, "idle"),
    (2, "acct-a", 90, None, "abandoned"),
    (3, "acct-a", 188, 400, "max_runtime"),
    (4, "acct-a", 500, 500.2, "auth_failed"),
    (5, "acct-b", 300, None, "running"),
]
# (id, run, requested, first byte, last seen, closed, status, events, close reason)
CONNECTIONS = [
    (1, 1, 0, 20, None, 100, 200, 5, "run ended: idle"),
    (2, 2, 90, 95, 150, None, 200, 0, None),
    (3, 3, 188, 189, None, 250, 200, 10, "server closed the stream"),
    (4, 3, 250.5, 250.5, None, 250.5, 503, 0, "HTTP 503"),
    (5, 3, 251.5, None, None, 251.5, None, 0, "cannot connect: ConnectError: refused"),
    (6, 3, 272, 273, None, 400, 200, 4, "run ended: max_runtime"),
    (7, 4, 500, 500, None, 500, 401, 0, "HTTP 401"),
    (8, 5, 300, 301, 900, None, 200, 0, None),
]


def event(n: int, when: datetime) -> str:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps({"id": f"evt_{n}", "type": "grant.created", "createdAt": stamp, "data": {}})


def insert(
    url: str,
    t0: datetime,
    runs: list[tuple[Any, ...]],
    connections: list[tuple[Any, ...]],
) -> None:
    """Write ``runs`` and ``connections`` (as RUNS and CONNECTIONS) to a migrated archive."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for rid, source, started, finished, outcome in runs:
                conn.execute(
                    ingest_runs.insert().values(
                        id=rid,
                        source=source,
                        started_at=at(t0, started),
                        finished_at=at(t0, finished),
                        outcome=outcome,
                    )
                )
            for cid, run, requested, first, seen, closed, status, events, reason in connections:
                conn.execute(
                    ingest_connections.insert().values(
                        id=cid,
                        run_id=run,
                        requested_at=at(t0, requested),
                        first_byte_at=at(t0, first),
                        last_seen_at=at(t0, seen),
                        closed_at=at(t0, closed),
                        status_code=status,
                        events=events,
                        close_reason=reason,
                    )
                )
    finally:
        engine.dispose()


def build(url: str, t0: datetime = T0) -> None:
    """The archive the module docstring describes, with times after ``t0``."""
    migrate.upgrade(url)
    insert(url, t0, RUNS, CONNECTIONS)
    store = migrate.open_archive(url)
    try:
        # Events at 160 and 200 (acct-a) for the other reports to show, and a
        # rejected frame received at 200.
        received = [Received(normalise(event(n, at_(t0, n))), at_(t0, n)) for n in (160, 200)]
        received.append(Received(normalise("{"), at_(t0, 200)))
        store.write_batch("acct-a", 3, received)
    finally:
        store.close()


def timeline(url: str, tmp: Any, **window: Any) -> list[tuple[Any, ...]]:
    table = queries.report(
        "ingest-coverage", url, analytics_dir=tmp / "copy", now=window.pop("now", NOW), **window
    )
    return [
        (
            r["source"],
            r["kind"],
            (r["start_at"] - T0).total_seconds(),
            (r["end_at"] - T0).total_seconds(),
            r["seconds"],
            r["runs"],
            r["connections"],
            r["failed_attempts"],
            r["events"],
            r["rejected"],
            r["cause"],
            r["webhook_events"],
        )
        for r in table.to_pylist()
    ]


RECONNECT = "run 3 reconnect after: server closed the stream; 2 failed attempts (503, no response)"
STOPPED = "no ingest running since run 4 finished (auth_failed); 1 failed attempt (401)"


def test_the_report_merges_connections_into_spans_and_names_each_gap_s_cause(
    archive_url: str, tmp_path: Any
) -> None:
    build(archive_url)
    # No event came by webhook: webhook_events is 0 for spans and gaps alike,
    # though the stream event at 160 lies in the first gap.
    assert timeline(archive_url, tmp_path) == [
        ("acct-a", "covered", 0, 150, 150, [1, 2], 2, 0, 5, 0, None, 0),
        ("acct-a", "gap", 150, 188, 38, [2, 3], None, 0, None, None, "run 2 abandoned; next run 3 started", 0),
        ("acct-a", "covered", 188, 250, 62, [3], 1, 0, 10, 1, None, 0),
        ("acct-a", "gap", 250, 272, 22, [3], None, 2, None, None, RECONNECT, 0),
        ("acct-a", "covered", 272, 400, 128, [3], 1, 0, 4, 0, None, 0),
        ("acct-a", "gap", 400, 1000, 600, [3], None, 1, None, None, STOPPED, 0),
        ("acct-b", "covered", 300, 1000, 700, [5], 1, 0, 0, 0, None, 0),
    ]  # fmt: skip
    # One source; and a later "now" only lengthens the gap and the open span.
    later = timeline(archive_url, tmp_path, source="acct-b", now=NOW + timedelta(seconds=50))
    assert [(r[1], r[2], r[3]) for r in later] == [("covered", 300, 1050)]


def catch(url: str, source: str, *seconds: float, t0: datetime = T0) -> None:
    """Events that occurred ``seconds`` after ``t0``, delivered by webhook 5 s later,
    written as ``receive`` writes them (the id follows from the time)."""
    store = migrate.open_archive(url)
    try:
        entries = [
            Received(normalise(event(100_000 + round(s * 1000), at_(t0, s))), at_(t0, s + 5))
            for s in seconds
        ]
        store.write_batch(source, None, entries, channel="webhook")
    finally:
        store.close()


def test_each_row_counts_the_events_the_webhook_receiver_delivered_first(
    archive_url: str, tmp_path: Any
) -> None:
    build(archive_url)
    # acct-a. Gap [150, 188): at its start (the span before holds only up to
    # its end), inside it, just before its end. Span [188, 250): at its start
    # (the new connection's first moment). Gap [250, 272): one; gap [400, now):
    # two. Before the first span, at now (the last gap's end) and after: no row
    # holds them.
    catch(archive_url, "acct-a", 150, 170, 187.5, 188, 255, 450, 999, -10, 1000, 1001)
    # The stream delivered evt_200 first: the webhook's copy is a duplicate.
    store = migrate.open_archive(archive_url)
    try:
        again = Received(normalise(event(200, at_(T0, 200))), at_(T0, 205))
        assert store.write_batch("acct-a", None, [again], channel="webhook").inserted == 0
    finally:
        store.close()
    catch(archive_url, "acct-b", 500)
    rows = timeline(archive_url, tmp_path)
    assert [(r[0], r[1], r[2], r[11]) for r in rows] == [
        ("acct-a", "covered", 0, 0),
        ("acct-a", "gap", 150, 3),
        ("acct-a", "covered", 188, 1),
        ("acct-a", "gap", 250, 1),
        ("acct-a", "covered", 272, 0),
        ("acct-a", "gap", 400, 2),
        ("acct-b", "covered", 300, 1),
    ]
    # The other columns are as without the receiver.
    others = [r[:11] for r in rows]
    assert others[1] == (
        "acct-a", "gap", 150, 188, 38, [2, 3], None, 0, None, None,
        "run 2 abandoned; next run 3 started",
    )  # fmt: skip
    assert others[2][8:10] == (10, 1)
    # Like events and rejected, the count is the whole row's when the window cuts it.
    since, until = T0 + timedelta(seconds=180), T0 + timedelta(seconds=260)
    cut = timeline(archive_url, tmp_path, since=since, until=until)
    assert [(r[1], r[2], r[3], r[11]) for r in cut] == [
        ("gap", 180, 188, 3),
        ("covered", 188, 250, 1),
        ("gap", 250, 260, 1),
    ]
    only_b = timeline(archive_url, tmp_path, source="acct-b")
    assert [(r[0], r[11]) for r in only_b] == [("acct-b", 1)]
    # The command line shows the column.
    listed = invoke(
        [
            *["report", "ingest-coverage", "--db", archive_url, "--source", "acct-a"],
            *["--analytics-dir", str(tmp_path / "copy"), "--format", "json"],
            *["--until", (T0 + timedelta(seconds=200)).isoformat()],
        ]
    )
    assert listed.exit_code == 0, listed.output
    assert [r["webhook_events"] for r in json.loads(listed.stdout)] == [0, 3, 1]
    # Every other report's warning counts those in its window only: 187.5 and 255.
    found = queries.coverage(
        archive_url, since=since, until=until, now=NOW, analytics_dir=tmp_path / "copy"
    )
    assert [(g.seconds, g.webhook_events) for g in found.gaps] == [(8.0, 1), (10.0, 1)]
    window = ["--since", since.isoformat(), "--until", until.isoformat()]
    volume = invoke(
        [
            *["report", "event-volume", "--db", archive_url, *window],
            *["--analytics-dir", str(tmp_path / "copy"), "--format", "json"],
        ]
    )
    assert volume.exit_code == 0, volume.output
    assert volume.stderr == (
        "warning: 2 gaps totalling 18 s in this window (the webhook receiver caught "
        "2 events in them); see report ingest-coverage\n"
    )
    assert {json.dumps(r["uncovered"]) for r in json.loads(volume.stdout)} == {
        json.dumps({"gaps": 2, "seconds": 18.0})
    }


def test_an_event_where_a_span_of_no_length_divides_a_gap_counts_once(
    archive_url: str, tmp_path: Any
) -> None:
    """Run 1 covers [0, 40]; a 200 connection at 60 closes as it opens (a span of
    no length, no row); run 2 covers [80, 100]. A webhook event at 60 is in the
    gap that starts there, not also in the missing span."""
    migrate.upgrade(archive_url)
    runs = [(1, "s", 0, 40, "idle"), (2, "s", 60, 100, "idle")]
    connections = [
        (1, 1, 0, 0, None, 40, 200, 1, "run ended: idle"),
        (2, 2, 60, 60, None, 60, 200, 0, "server closed the stream"),
        (3, 2, 80, 80, None, 100, 200, 1, "run ended: idle"),
    ]
    insert(archive_url, T0, runs, connections)
    catch(archive_url, "s", 50, 60, 90)
    rows = timeline(archive_url, tmp_path, now=T0 + timedelta(seconds=100))
    assert [(r[1], r[2], r[3], r[11]) for r in rows] == [
        ("covered", 0, 40, 0),
        ("gap", 40, 60, 1),
        ("gap", 60, 80, 1),
        ("covered", 80, 100, 1),
    ]


def test_the_window_cuts_rows_and_they_add_up_to_it(archive_url: str, tmp_path: Any) -> None:
    build(archive_url)
    since, until = T0 + timedelta(seconds=160), T0 + timedelta(seconds=260)
    rows = timeline(archive_url, tmp_path, since=since, until=until)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("acct-a", "gap", 160, 188, 28),
        ("acct-a", "covered", 188, 250, 62),
        ("acct-a", "gap", 250, 260, 10),
    ]
    # Counts stay those of the whole span; acct-b had not started yet.
    assert rows[1][8:10] == (10, 1)
    assert sum(r[4] for r in rows) == (until - since).total_seconds()
    # Time before a source's first span is no gap.
    early = timeline(archive_url, tmp_path, since=T0 - timedelta(days=1), until=T0)
    assert early == []


def test_coverage_from_python(archive_url: str, tmp_path: Any) -> None:
    build(archive_url)
    copy = tmp_path / "copy"
    since, until = T0 + timedelta(seconds=160), T0 + timedelta(seconds=260)
    found = queries.coverage(archive_url, since=since, until=until, now=NOW, analytics_dir=copy)
    assert found.gaps == (
        Gap("acct-a", since, T0 + timedelta(seconds=188), 28.0, "run 2 abandoned; next run 3 started"),
        Gap("acct-a", T0 + timedelta(seconds=250), until, 10.0, RECONNECT),
    )  # fmt: skip
    assert found.warning == "2 gaps totalling 38 s in this window; see report ingest-coverage"
    everything = queries.coverage(archive_url, now=NOW, analytics_dir=copy)
    assert [g.seconds for g in everything.gaps] == [38.0, 22.0, 600.0]
    assert queries.coverage(archive_url, source="acct-b", now=NOW, analytics_dir=copy) == (
        Coverage()
    )
    # A report's table carries it in its schema metadata; ingest-coverage's does not.
    table = queries.report(
        "event-volume", archive_url, since=since, until=until, now=NOW, analytics_dir=copy
    )
    assert json.loads(table.schema.metadata[b"uncovered"]) == {"gaps": 2, "seconds": 38.0}
    listed = queries.report("ingest-coverage", archive_url, now=NOW, analytics_dir=copy)
    assert b"uncovered" not in (listed.schema.metadata or {})


def test_status_shows_uncovered_time_in_the_last_24_hours_and_30_days(
    archive_url: str, tmp_path: Any
) -> None:
    build(archive_url)
    copy = tmp_path / "copy"

    def coverage_rows(now: datetime) -> dict[str, Any]:
        result = queries.status(archive_url, copy, now=now)
        return {name: value for section, name, value in result.rows if section == "coverage"}

    # 1000 s after T0 both windows hold every gap: 38 + 22 + 600 s of acct-a.
    assert coverage_rows(NOW) == {
        "acct-a.uncovered_seconds_24h": 660.0,
        "acct-a.gaps_24h": 3,
        "acct-a.uncovered_seconds_30d": 660.0,
        "acct-a.gaps_30d": 3,
        "acct-b.uncovered_seconds_24h": 0.0,
        "acct-b.gaps_24h": 0,
        "acct-b.uncovered_seconds_30d": 0.0,
        "acct-b.gaps_30d": 0,
    }
    # 30 days and 200 s after T0: the last 24 h are all gap; the 30 days start at
    # T0 + 200, inside the span [188, 250], so they hold the reconnect and the rest.
    later = coverage_rows(T0 + timedelta(days=30, seconds=200))
    assert later["acct-a.uncovered_seconds_24h"] == 86400.0
    assert later["acct-a.gaps_24h"] == 1
    assert later["acct-a.uncovered_seconds_30d"] == 22.0 + 30 * 86400 + 200 - 400
    assert later["acct-a.gaps_30d"] == 2
    assert later["acct-b.uncovered_seconds_30d"] == 0.0


def test_the_copy_follows_connections_updated_in_place(archive_url: str, tmp_path: Any) -> None:
    build(archive_url)
    before = timeline(archive_url, tmp_path)
    assert before[1][1:5] == ("gap", 150, 188, 38)
    # The next run closes the killed run's connection at its last activity, later.
    engine = sa.create_engine(archive_url)
    with engine.begin() as conn:
        conn.execute(
            ingest_connections.update()
            .where(ingest_connections.c.id == 2)
            .values(closed_at=T0 + timedelta(seconds=170), events=37)
        )
    engine.dispose()
    after = timeline(archive_url, tmp_path)
    assert after[0][1:10] == ("covered", 0, 170, 170, [1, 2], 2, 0, 42, 0)
    assert after[1][1:5] == ("gap", 170, 188, 18)


def test_a_running_run_between_attempts_a_request_awaiting_its_head_and_touching_spans(
    archive_url: str, tmp_path: Any
) -> None:
    """Source s: run 1 is running; its connection [0, 40] ended on a read timeout
    and a 503 at 41 followed. Source t: run 2's connection [0, 50] and run 3's
    [50, 80] touch, one span; run 3 then ended."""
    migrate.upgrade(archive_url)
    runs = [(1, "s", 0, None, "running"), (2, "t", 0, 50, "idle"), (3, "t", 50, 80, "idle")]
    connections = [
        (1, 1, 0, 1, None, 40, 200, 3, "read timeout"),
        (2, 1, 41, 41, None, 41, 503, 0, "HTTP 503"),
        (3, 2, 0, 0, None, 50, 200, 1, "run ended: idle"),
        (4, 3, 50, 50, None, 80, 200, 1, "run ended: idle"),
    ]
    insert(archive_url, T0, runs, connections)
    now = T0 + timedelta(seconds=100)
    rows = timeline(archive_url, tmp_path, now=now)
    assert [(r[0], r[1], r[2], r[3], r[5], r[10]) for r in rows] == [
        ("s", "covered", 0, 40, [1], None),
        ("s", "gap", 40, 100, [1], "run 1 reconnecting after: read timeout; 1 failed attempt (503)"),
        ("t", "covered", 0, 80, [2, 3], None),
        ("t", "gap", 80, 100, [3], "no ingest running since run 3 finished (idle)"),
    ]  # fmt: skip
    # A request sent at 60 whose response head has not come yet (no status):
    # the service has subscribed it, so it covers up to now.
    insert(archive_url, T0, [], [(5, 1, 60, None, None, None, None, 0, None)])
    rows = timeline(archive_url, tmp_path, now=now, source="s")
    assert [(r[1], r[2], r[3], r[10]) for r in rows] == [
        ("covered", 0, 40, None),
        ("gap", 40, 60, "run 1 reconnect after: read timeout; 1 failed attempt (503)"),
        ("covered", 60, 100, None),
    ]
    # The connections are a view for analyst SQL too.
    listed = invoke(
        [
            *["sql", "SELECT count(*) AS n FROM ingest_connections", "--db", archive_url],
            *["--analytics-dir", str(tmp_path / "copy")],
        ]
    )
    assert listed.stdout == "n\n5\n"


def test_requests_whose_runs_ended_waiting_for_their_head_cover_nothing_and_are_named(
    archive_url: str, tmp_path: Any
) -> None:
    """Run 1's connection [0, 50]; run 2 was stopped at 80 while its request of 61
    waited for its head; run 3, killed, was answered 503 at 92 and left a request of
    95 waiting (the next run closed it there); run 4 is running, its request of 121
    still waiting: it covers up to now. Neither ended request covers anything or
    counts as a failed attempt: the gap names their runs."""
    migrate.upgrade(archive_url)
    runs = [
        (1, "s", 0, 50, "idle"),
        (2, "s", 60, 80, "interrupted"),
        (3, "s", 90, 95, "abandoned"),
        (4, "s", 120, None, "running"),
    ]
    connections = [
        (1, 1, 0, 0, 50, 50, 200, 3, "run ended: idle"),
        (2, 2, 61, None, None, 80, None, 0, WAITING_REASON),
        (3, 3, 92, 92, None, 92, 503, 0, "HTTP 503"),
        (4, 3, 95, None, None, 95, None, 0, ABANDONED_REASON),
        (5, 4, 121, None, None, None, None, 0, None),
    ]
    insert(archive_url, T0, runs, connections)
    now = T0 + timedelta(seconds=200)
    rows = timeline(archive_url, tmp_path, now=now)
    assert [(r[1], r[2], r[3], r[5], r[7], r[10]) for r in rows] == [
        ("covered", 0, 50, [1], 0, None),
        ("gap", 50, 121, [1, 4], 1,
         "run 1 ended (idle); next run 4 started; "
         "run 2 ended while its request waited for the response head; "
         "run 3 ended while its request waited for the response head; 1 failed attempt (503)"),
        ("covered", 121, 200, [4], 0, None),
    ]  # fmt: skip
    if archive_url.startswith("sqlite"):
        # The benchmark's SQLite equivalent of the report says the same.
        path = archive_url.removeprefix("sqlite:///")
        expected = analytics.duckdb_rows(archive_url, tmp_path / "copy", now)["ingest-coverage"]
        conn = sqlite3.connect(path)
        try:
            params = {"now": now.strftime(analytics.TIME_FORMAT)}
            _, found = analytics.sqlite_query(conn, analytics.SQLITE_COVERAGE, 60, params)
        finally:
            conn.close()
        assert analytics.first_mismatch(expected, found) is None
        assert len(found) == 3


# --------------------------------------------------------------------------- the command line


def test_every_report_warns_on_stderr_and_json_carries_it(archive_url: str, tmp_path: Any) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    build(archive_url, t0)
    since, until = t0 + timedelta(seconds=160), t0 + timedelta(seconds=260)
    window = ["--since", since.isoformat(), "--until", until.isoformat()]
    args = ["--db", archive_url, "--analytics-dir", str(tmp_path / "copy"), *window]
    warning = "warning: 2 gaps totalling 38 s in this window; see report ingest-coverage\n"
    result = invoke(["report", "event-volume", *args, "--by", "day", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == warning
    records = json.loads(result.stdout)
    assert sum(r["events"] for r in records) == 2
    assert all(r["uncovered"] == {"gaps": 2, "seconds": 38.0} for r in records)
    # Only the field is added: the records are otherwise the same as with no gap.
    assert {k for r in records for k in r} == {"period", "type", "events", "uncovered"}
    jsonl = invoke(["report", "event-volume", *args, "--format", "jsonl"])
    assert jsonl.stderr == warning
    lines = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert lines and all(line["uncovered"]["gaps"] == 2 for line in lines)
    # CSV and tables are unchanged: the warning is on stderr only.
    as_csv = invoke(["report", "event-volume", *args, "--format", "csv"])
    assert as_csv.stderr == warning and "uncovered" not in as_csv.stdout
    # No gap for acct-b in the window; ingest-coverage lists the gaps instead.
    quiet = invoke(["report", "event-volume", *args, "--source", "acct-b", "--format", "json"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    listed = invoke(["report", "ingest-coverage", *args, "--format", "json"])
    assert listed.stderr == ""
    assert [r["seconds"] for r in json.loads(listed.stdout) if r["kind"] == "gap"] == [28.0, 10.0]


def test_status_command_shows_uncovered_time(archive_url: str, tmp_path: Any) -> None:
    """Rows placed relative to the real clock: a span 10 days ago, then one from
    3 h ago to 2 h 50 min ago by an abandoned run, then a running run since 2 h 40 min ago.

    Gaps: [10 d - 1 h ago, 3 h ago) and [2 h 50 min ago, 2 h 40 min ago) (600 s).
    24 h: 21 h + 600 s; 30 days: 10 d - 4 h + 600 s.
    """
    migrate.upgrade(archive_url)
    now = datetime.now(UTC)
    runs = [(1, now - timedelta(days=10), "idle"), (2, now - timedelta(hours=3), "abandoned")]
    runs.append((3, now - timedelta(minutes=160), "running"))
    engine = sa.create_engine(archive_url)
    with engine.begin() as conn:
        for rid, started, outcome in runs:
            conn.execute(
                ingest_runs.insert().values(
                    id=rid, source="default", started_at=started, outcome=outcome
                )
            )
        ends = [now - timedelta(days=10, hours=-1), now - timedelta(minutes=170), None]
        for (rid, started, _), end in zip(runs, ends, strict=True):
            conn.execute(
                ingest_connections.insert().values(
                    id=rid, run_id=rid, requested_at=started, status_code=200,
                    closed_at=end if rid == 1 else None, last_seen_at=end if rid == 2 else None,
                )
            )  # fmt: skip
    engine.dispose()
    result = invoke(["status", "--db", archive_url, "--analytics-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    as_json = invoke(
        ["status", "--db", archive_url, "--analytics-dir", str(tmp_path / "c"), "--format", "json"]
    )
    shown = {
        r["name"]: r["value"] for r in json.loads(as_json.stdout) if r["section"] == "coverage"
    }
    assert set(shown) == {"uncovered_seconds_24h", "gaps_24h", "uncovered_seconds_30d", "gaps_30d"}
    assert shown["gaps_24h"] == shown["gaps_30d"] == 2
    assert shown["uncovered_seconds_24h"] == pytest.approx(21 * 3600 + 600, abs=60)
    assert shown["uncovered_seconds_30d"] == pytest.approx(10 * 86400 - 4 * 3600 + 600, abs=60)
    assert "coverage,uncovered_seconds_24h," in result.stdout


@pytest.fixture
def migrated_url(archive_url: str) -> Iterator[str]:
    if archive_url.startswith("postgresql"):
        migrate.upgrade(archive_url)
    yield archive_url


def test_a_real_reconnect_gap_end_to_end(migrated_url: str, tmp_path: Any) -> None:
    """A loopback server sends two events and ends the stream, refuses the next
    attempt with 503 and Retry-After: 1, then streams again: one gap of about a
    second, caused by the reconnect, then, once the run has ended, the gap up to now.
    """
    base = datetime.now(UTC)
    replies = [
        Reply(chunks=[frame(event(1, base)), frame(event(2, base))]),
        Reply(status=503, headers={"Retry-After": "1"}),
        Reply(chunks=[frame(event(3, base))], hold=10, keepalive=0.2),
    ]
    with ScriptedServer(replies) as server:
        started = time.monotonic()
        result = invoke(
            [
                *["ingest", "--db", migrated_url, "--base-url", server.base_url],
                *["--until-idle", "1", "--max-runtime", "20"],
            ]
        )
        assert len(server.requests) == 3
        refused_for = server.requests[2].at - server.requests[1].at
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 20
    report = invoke(
        [
            *["report", "ingest-coverage", "--db", migrated_url],
            *["--analytics-dir", str(tmp_path / "c"), "--format", "json"],
        ]
    )
    assert report.exit_code == 0, report.output
    gaps = [r for r in json.loads(report.stdout) if r["kind"] == "gap"]
    assert len(gaps) == 2, gaps
    reconnect, trailing = gaps
    assert reconnect["cause"].startswith("run 1 reconnect after: ")
    assert reconnect["cause"].endswith("; 1 failed attempt (503)")
    assert reconnect["runs"] == [1]
    # About the second the server refused; the worker records some milliseconds on each side.
    assert refused_for >= 0.95
    assert 0.9 <= reconnect["seconds"] <= refused_for + 1.0
    assert trailing["cause"] == "no ingest running since run 1 finished (idle)"
    # Every other report says so.
    volume = invoke(["report", "event-volume", "--db", migrated_url, "--format", "json"])
    assert volume.stderr.startswith("warning: 2 gaps totalling ")


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("gaps", "seconds", "text"),
    [
        (1, 0.4, "1 gap totalling 0.4 s"),
        (2, 9.96, "2 gaps totalling 10.0 s"),
        (2, 38.2, "2 gaps totalling 38 s"),
        (3, 86400.0, "3 gaps totalling 86400 s"),
    ],
)
def test_uncovered_text(gaps: int, seconds: float, text: str) -> None:
    assert uncovered_text(gaps, seconds) == text


def test_status_rows_per_source_only_when_several() -> None:
    t = T0
    one = Coverage((Gap("a", t, t, 5.0, "x"), Gap("a", t, t, 2.5, "y")))
    assert status_rows({"24h": one}, ["a"]) == [
        ("coverage", "uncovered_seconds_24h", 7.5),
        ("coverage", "gaps_24h", 2),
    ]
    assert status_rows({"24h": Coverage()}, []) == [
        ("coverage", "uncovered_seconds_24h", 0),
        ("coverage", "gaps_24h", 0),
    ]
    two = Coverage((Gap("a", t, t, 5.0, "x"), Gap("b", t, t, 1.0, "y")))
    assert status_rows({"30d": two}, ["a", "b"]) == [
        ("coverage", "a.uncovered_seconds_30d", 5.0),
        ("coverage", "a.gaps_30d", 1),
        ("coverage", "b.uncovered_seconds_30d", 1.0),
        ("coverage", "b.gaps_30d", 1),
    ]
    assert Coverage().warning is None and Coverage().seconds == 0


def test_the_warning_names_webhook_catches_only_when_there_are_some() -> None:
    t = T0
    caught = Coverage((Gap("a", t, t, 5.0, "x", 1), Gap("b", t, t, 1.0, "y")))
    assert caught.webhook_events == 1
    assert caught.warning == (
        "2 gaps totalling 6.0 s in this window (the webhook receiver caught 1 event in them); "
        "see report ingest-coverage"
    )
    none = Coverage((Gap("a", t, t, 5.0, "x"),))
    assert none.warning == "1 gap totalling 5.0 s in this window; see report ingest-coverage"
