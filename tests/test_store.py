"""The store on a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ingest.events import Event, Rejection, normalise
from ingest.resume import overlap_since
from ingest.schema import events
from ingest.store import LockHeld, Received, Store
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
    conn_id = store.open_connection(run_id, T0, T0 - timedelta(minutes=5), 200)
    store.close_connection(conn_id, T0 + timedelta(seconds=3), 42, "end of stream")
    store.record_attempt(run_id, T0, None, 503, "HTTP 503")
    store.update_run(run_id, outcome="idle", exit_code=0, received=42)
    assert rows(archive_url, "SELECT outcome, exit_code, received, types FROM ingest_runs") == [
        ("idle", 0, 42, "grant.created")
    ]
    assert rows(
        archive_url,
        "SELECT status_code, events, close_reason FROM ingest_connections ORDER BY id",
    ) == [(200, 42, "end of stream"), (503, 0, "HTTP 503")]


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
