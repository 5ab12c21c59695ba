"""The store on a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import pytest
import sqlalchemy as sa

from ingest.events import Event, Rejection, normalise
from ingest.journal import PendingRun
from ingest.resume import overlap_since
from ingest.schema import events, ingest_connections, ingest_runs
from ingest.store import ConnectionShare, LockHeld, Received, Store
from ingest.store_runs import ABANDONED_REASON, OpenConnection, abandoned_run_end
from ingest.timestamps import utc
from tests.conftest import rows

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def event(n: int, type_: str = "grant.created", at: datetime = T0, **data: object) -> Event:
    text = json.dumps(
        {
            "id": f"evt_{n}",
            "type": type_,
            "createdAt": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "data": {"grantId": f"g{n}", **data},
        }
    )
    result = normalise(text)
    assert isinstance(result, Event)
    return result


def received(*items: Event | Rejection) -> list[Received]:
    return [Received(item, T0 + timedelta(hours=1)) for item in items]


def test_insert_then_same_batch_again_is_a_no_op(store: Store, archive_url: str) -> None:
    batch = received(event(1), event(2), event(3))
    first = store.write_batch("default", None, batch)
    second = store.write_batch("default", None, batch)
    assert (first.inserted, first.duplicates) == (3, 0)
    assert (second.inserted, second.duplicates, second.conflicts) == (0, 3, 0)
    assert rows(archive_url, "SELECT id FROM events ORDER BY seq") == [
        ("evt_1",),
        ("evt_2",),
        ("evt_3",),
    ]
    assert rows(archive_url, "SELECT count(*) FROM rejected_events") == [(0,)]


def test_duplicates_inside_one_batch(store: Store, archive_url: str) -> None:
    result = store.write_batch("default", None, received(event(1), event(1), event(2)))
    assert (result.inserted, result.duplicates) == (2, 1)


def test_conflicting_duplicate_keeps_first_and_records_conflict(
    store: Store, archive_url: str
) -> None:
    original = event(1, agentId="ag_a")
    changed = event(1, agentId="ag_b")
    store.write_batch("default", None, received(original))
    result = store.write_batch("default", None, received(changed))
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 1, 1)
    [(payload,)] = rows(archive_url, "SELECT payload FROM events WHERE id = 'evt_1'")
    assert payload == original.payload
    [(reason, raw, event_id)] = rows(
        archive_url, "SELECT reason, raw, event_id FROM rejected_events"
    )
    assert reason.startswith("conflicting duplicate")
    assert raw == changed.payload
    assert event_id == "evt_1"


def test_conflict_inside_one_batch(store: Store, archive_url: str) -> None:
    result = store.write_batch(
        "default", None, received(event(1, agentId="a"), event(1, agentId="b"))
    )
    assert (result.inserted, result.conflicts) == (1, 1)


def test_typed_columns_and_utc_round_trip(store: Store, archive_url: str) -> None:
    threshold = event(
        5, "budget.threshold", at=T0 + timedelta(milliseconds=50), pct=80, remaining="20.00"
    )
    store.write_batch("default", None, received(threshold))
    engine = sa.create_engine(archive_url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(events)).one()
    engine.dispose()
    occurred = row.occurred_at if row.occurred_at.tzinfo else row.occurred_at.replace(tzinfo=UTC)
    assert occurred == T0 + timedelta(milliseconds=50)
    assert (row.percentage, row.remaining, row.initial) == (80.0, 20.0, None)
    assert row.grant_id == "g5"
    assert row.payload == threshold.payload
    assert row.seq == 1


def test_rejections_are_stored_with_reason_and_length(store: Store, archive_url: str) -> None:
    bad = normalise("{broken")
    assert isinstance(bad, Rejection)
    result = store.write_batch("acct-2", None, received(bad, event(1)))
    assert (result.inserted, result.rejected) == (1, 1)
    [(source, reason, raw, length)] = rows(
        archive_url, "SELECT source, reason, raw, raw_length FROM rejected_events"
    )
    assert (source, raw, length) == ("acct-2", "{broken", 7)
    assert reason.startswith("invalid JSON")


def test_seq_strictly_increases(store: Store, archive_url: str) -> None:
    for n in range(5):
        store.write_batch("default", None, received(event(n), event(n + 100)))
    seqs = [r[0] for r in rows(archive_url, "SELECT seq FROM events ORDER BY seq")]
    assert seqs == sorted(set(seqs)) and len(seqs) == 10


def test_newest_occurred_at_per_source_and_type(store: Store) -> None:
    store.write_batch(
        "a",
        None,
        received(event(1, at=T0), event(2, "token.issued", at=T0 + timedelta(minutes=5))),
    )
    store.write_batch("b", None, received(event(3, at=T0 + timedelta(hours=1))))
    assert store.newest_occurred_at("a") == T0 + timedelta(minutes=5)
    assert store.newest_occurred_at("a", ("grant.created",)) == T0
    assert store.newest_occurred_at("b") == T0 + timedelta(hours=1)
    assert store.newest_occurred_at("c") is None
    assert overlap_since(T0, 300) == T0 - timedelta(minutes=5)
    assert overlap_since(None, 300) is None


def test_run_and_connection_records(store: Store, archive_url: str) -> None:
    run_id = store.start_run("default", T0, None, ("grant.created",), "http://x")
    conn_id = store.open_connection(
        run_id, T0, T0 + timedelta(seconds=20), T0 - timedelta(minutes=5), 200
    )
    store.write_batch(
        "default",
        run_id,
        received(event(1), event(2)),
        [ConnectionShare(conn_id, 2, T0 + timedelta(seconds=25))],
    )
    store.close_connection(conn_id, T0 + timedelta(seconds=30), "end of stream")
    store.record_attempt(
        run_id, T0 + timedelta(seconds=31), T0 + timedelta(seconds=32), T0 + timedelta(seconds=33),
        None, 503, "HTTP 503",
    )  # fmt: skip
    store.record_attempt(
        run_id, T0 + timedelta(seconds=40), None, T0 + timedelta(seconds=41), None, None,
        "cannot connect: ConnectError",
    )  # fmt: skip
    store.update_run(run_id, outcome="idle", exit_code=0, received=2)
    assert rows(archive_url, "SELECT outcome, exit_code, received, types FROM ingest_runs") == [
        ("idle", 0, 2, "grant.created")
    ]
    assert connection_rows(archive_url) == [
        (T0, T0 + timedelta(seconds=20), T0 + timedelta(seconds=25), T0 + timedelta(seconds=30),
         200, 2, "end of stream"),
        (T0 + timedelta(seconds=31), T0 + timedelta(seconds=32), None,
         T0 + timedelta(seconds=33), 503, 0, "HTTP 503"),
        (T0 + timedelta(seconds=40), None, None, T0 + timedelta(seconds=41), None, 0,
         "cannot connect: ConnectError"),
    ]  # fmt: skip


class ConnectionRow(NamedTuple):
    requested_at: datetime
    first_byte_at: datetime | None
    last_seen_at: datetime | None
    closed_at: datetime | None
    status_code: int | None
    events: int
    close_reason: str | None


def connection_rows(url: str) -> list[ConnectionRow]:
    """Each connection's times (aware UTC), status, events and reason, in order."""
    c = ingest_connections.c
    query = sa.select(
        c.requested_at, c.first_byte_at, c.last_seen_at, c.closed_at, c.status_code, c.events,
        c.close_reason,
    ).order_by(c.id)  # fmt: skip
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(query).all()
    finally:
        engine.dispose()
    return [
        ConnectionRow(
            utc(row[0]) or T0, utc(row[1]), utc(row[2]), utc(row[3]), row[4], row[5], row[6]
        )
        for row in found
    ]


def run_rows(url: str) -> list[tuple[object, ...]]:
    """Each run's id, outcome and finished_at (aware UTC), in order."""
    r = ingest_runs.c
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.select(r.id, r.outcome, r.finished_at).order_by(r.id)).all()
    finally:
        engine.dispose()
    return [(row[0], row[1], utc(row[2])) for row in found]


def refuse(*_args: object) -> None:
    raise sa.exc.OperationalError("UPDATE", {}, Exception("disk I/O error"))


def test_each_batch_counts_its_connections_events_in_its_transaction(
    store: Store, archive_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch spanning a reconnect adds to both connections; a rolled-back one to neither."""
    run_id = store.start_run("default", T0, None, (), "http://x")
    first = store.open_connection(run_id, T0, T0, None, 200)
    second = store.open_connection(run_id, T0 + timedelta(seconds=9), T0 + timedelta(seconds=9),
                                   None, 200)  # fmt: skip
    bad = normalise("{broken")
    store.write_batch(
        "default", run_id, received(event(1), event(2), bad, event(3)),
        [ConnectionShare(first, 2, T0 + timedelta(seconds=5)),
         ConnectionShare(second, 1, T0 + timedelta(seconds=10))],
    )  # fmt: skip
    # An older arrival committed later does not move last_seen_at back;
    # a batch of rejected frames only shows the connection alive.
    store.write_batch("default", run_id, received(event(4)),
                      [ConnectionShare(first, 1, T0 + timedelta(seconds=4))])  # fmt: skip
    store.write_batch("default", run_id, received(normalise("{also broken")),
                      [ConnectionShare(second, 0, T0 + timedelta(seconds=12))])  # fmt: skip
    # The events insert, then the connections' count fails: neither stays.
    with monkeypatch.context() as patch:
        patch.setattr(Store, "count_connections", refuse)
        with pytest.raises(sa.exc.OperationalError):
            store.write_batch("default", run_id, received(event(5)),
                              [ConnectionShare(second, 1, T0 + timedelta(seconds=13))])  # fmt: skip
    counts = [(r[2], r[5]) for r in connection_rows(archive_url)]
    assert counts == [(T0 + timedelta(seconds=5), 3), (T0 + timedelta(seconds=12), 1)]
    assert rows(archive_url, "SELECT count(*) FROM events") == [(4,)]


def test_progress_marks_the_open_connection_alive(store: Store, archive_url: str) -> None:
    run_id = store.start_run("default", T0, None, (), "http://x")
    conn_id = store.open_connection(run_id, T0, T0 + timedelta(seconds=1), None, 200)
    store.record_progress(run_id, {"received": 7}, conn_id, T0 + timedelta(seconds=10))
    store.record_progress(run_id, {"received": 8}, None, T0 + timedelta(seconds=20))
    assert rows(archive_url, "SELECT received FROM ingest_runs") == [(8,)]
    assert connection_rows(archive_url)[0].last_seen_at == T0 + timedelta(seconds=10)
    # A progress record made while the close was queued: alive no later than closed.
    store.record_progress(run_id, {"received": 8}, conn_id, T0 + timedelta(seconds=31))
    store.close_connection(conn_id, T0 + timedelta(seconds=30), "end of stream")
    [closed] = connection_rows(archive_url)
    assert closed.last_seen_at == closed.closed_at == T0 + timedelta(seconds=30)


def test_a_killed_runs_connections_close_at_their_last_recorded_activity(
    store: Store, archive_url: str
) -> None:
    """Three killed runs: one seen alive, one connected only, one that never connected."""
    seen = store.start_run("default", T0, None, (), "http://x")
    refused_at = T0 + timedelta(seconds=1)
    store.record_attempt(seen, refused_at, None, refused_at, None, None, "cannot connect")
    alive = store.open_connection(seen, T0 + timedelta(seconds=2), T0 + timedelta(seconds=30),
                                  None, 200)  # fmt: skip
    store.write_batch("default", seen, received(event(1), event(2)),
                      [ConnectionShare(alive, 2, T0 + timedelta(seconds=40))])  # fmt: skip
    store.record_progress(seen, {"received": 2}, alive, T0 + timedelta(seconds=50))
    # Killed: the next run (holding the lock) finds it running.
    connected = store.start_run("default", T0 + timedelta(minutes=1), None, (), "http://x")
    store.open_connection(connected, T0 + timedelta(minutes=1, seconds=1),
                          T0 + timedelta(minutes=1, seconds=3), None, 200)  # fmt: skip
    never = store.start_run("default", T0 + timedelta(minutes=2), None, (), "http://x")
    other_source = store.start_run("other", T0, None, (), "http://x")
    last = store.start_run("default", T0 + timedelta(minutes=3), None, (), "http://x")
    assert connection_rows(archive_url) == [
        (refused_at, None, None, refused_at, None, 0, "cannot connect"),
        (T0 + timedelta(seconds=2), T0 + timedelta(seconds=30), T0 + timedelta(seconds=50),
         T0 + timedelta(seconds=50), 200, 2, ABANDONED_REASON),
        (T0 + timedelta(minutes=1, seconds=1), T0 + timedelta(minutes=1, seconds=3), None,
         T0 + timedelta(minutes=1, seconds=3), 200, 0, ABANDONED_REASON),
    ]  # fmt: skip
    runs = run_rows(archive_url)
    assert runs == [
        (seen, "abandoned", T0 + timedelta(seconds=50)),
        (connected, "abandoned", T0 + timedelta(minutes=1, seconds=3)),
        (never, "abandoned", T0 + timedelta(minutes=2)),
        (other_source, "running", None),
        (last, "running", None),
    ]


def test_a_pending_run_closes_its_connection_as_recorded(store: Store, archive_url: str) -> None:
    """A run whose end the database refused: the journal's values, not abandonment."""
    run_id = store.start_run("default", T0, None, (), "http://x")
    conn_id = store.open_connection(run_id, T0, T0 + timedelta(seconds=1), None, 200)
    store.write_batch("default", run_id, received(event(1)),
                      [ConnectionShare(conn_id, 1, T0 + timedelta(seconds=2))])  # fmt: skip
    end = T0 + timedelta(seconds=9)
    pending = PendingRun(
        run_id,
        {"finished_at": end, "outcome": "database_error", "received": 3},
        conn_id,
        {"closed_at": end, "close_reason": "run ended: database_error"},
    )
    store.start_run("default", T0 + timedelta(minutes=1), None, (), "http://x", pending)
    assert connection_rows(archive_url) == [
        (T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2), end, 200, 1,
         "run ended: database_error"),
    ]  # fmt: skip
    assert run_rows(archive_url)[0] == (run_id, "database_error", end)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        # (requested, first byte, last seen) -> the close time
        ((0, 30, 45), 45),
        ((0, 30, None), 30),
        ((0, None, None), 0),
    ],
)
def test_the_last_recorded_activity_of_an_open_connection(
    times: tuple[int, int | None, int | None], expected: int
) -> None:
    at = [None if t is None else T0 + timedelta(seconds=t) for t in times]
    assert at[0] is not None
    connection = OpenConnection(1, at[0], at[1], at[2])
    assert connection.last_activity == T0 + timedelta(seconds=expected)


def test_an_abandoned_run_ends_at_its_latest_connection_end_else_its_start() -> None:
    ends = [T0 + timedelta(seconds=5), T0 + timedelta(seconds=50), T0 + timedelta(seconds=7)]
    assert abandoned_run_end(T0, ends) == T0 + timedelta(seconds=50)
    assert abandoned_run_end(T0, []) == T0


def test_lock_is_exclusive_per_source(store: Store, archive_url: str) -> None:
    other = Store.open(archive_url)
    try:
        with store.lock("default"):
            with pytest.raises(LockHeld), other.lock("default"):
                pass
            # Another source is independent.
            with other.lock("second"):
                pass
        # Released: can be taken again.
        with other.lock("default"):
            pass
    finally:
        other.close()


def test_lock_is_released_when_holder_thread_ends(store: Store, archive_url: str) -> None:
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.lock("default"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5)
    other = Store.open(archive_url)
    try:
        with pytest.raises(LockHeld), other.lock("default"):
            pass
        release.set()
        thread.join(5)
        with other.lock("default"):
            pass
    finally:
        other.close()


def test_large_batch_with_duplicates_and_a_conflict(store: Store, archive_url: str) -> None:
    # 1200 rows: long multi-row statements plus a row-by-row remainder.
    store.write_batch("default", None, received(*[event(n) for n in range(600)]))
    batch = [event(n) for n in range(1200)]
    batch[10] = event(10, agentId="changed")
    result = store.write_batch("default", None, received(*batch))
    assert (result.inserted, result.duplicates, result.conflicts) == (600, 600, 1)
    assert rows(archive_url, "SELECT count(*), count(DISTINCT id) FROM events") == [(1200, 1200)]
    seqs = [r[0] for r in rows(archive_url, "SELECT seq FROM events ORDER BY id")]
    assert len(set(seqs)) == 1200
