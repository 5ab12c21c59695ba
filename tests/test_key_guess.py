"""The reader's guess of the keys its rows take, and the writer's check of it.

The reader makes each row's digest from the ``seq`` it guesses the row will take; the
writer uses those digests only when the insert gave exactly those keys, and otherwise
remakes them. Whatever the guesses, the chain verifies and holds the digests of the rows
as stored.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

import ingest.seal.chain
from ingest.database import create_archive_engine
from ingest.events import Event, normalise
from ingest.key_guess import Guessed, KeyGuess
from ingest.prepare import PreparedEvents, event_digests, prepare_events
from ingest.reader import Normalised, Preparation, StreamReader
from ingest.reader_process import ProcessReader
from ingest.resume import latest_plausible
from ingest.rows import Received
from ingest.runner import run_ingest
from ingest.seal.archive import verify_archive
from ingest.settings import IngestSettings, Secret
from ingest.store import Store
from ingest.stream import StreamOptions, stream_events
from tests.conftest import API_KEY
from tests.scripted_server import Reply, ScriptedServer, frame
from tests.test_reader_process import read_back

NOW = datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)


def event_text(n: int) -> str:
    return json.dumps(
        {
            "id": f"evt_{n:05d}",
            "type": "grant.created",
            "createdAt": f"2026-12-01T11:{n // 600 % 60:02d}:{n // 10 % 60:02d}.{n % 10}00Z",
            "data": {"grantId": f"grnt_{n}", "agentId": "ag_1", "percentage": n / 7},
        }
    )


def events(first: int, count: int) -> list[Event]:
    made = [normalise(event_text(n)) for n in range(first, first + count)]
    assert all(type(e) is Event for e in made)
    return made  # type: ignore[return-value]


# -- the guess and a batch's record of it: pure ---------------------------------------------


def test_rows_are_numbered_and_keyed_once_the_offset_is_known() -> None:
    guess = KeyGuess()
    assert guess.take(3) == (0, None)
    assert guess.take(2) == (3, None)
    guess.correct(3, 101)  # row 3 takes key 101
    assert guess.take(4) == (5, 103)
    assert guess.take(1) == (9, 107)


def test_a_correction_is_absolute_so_a_repeated_or_late_one_changes_nothing() -> None:
    guess = KeyGuess()
    guess.take(10)
    guess.correct(4, 50)
    guess.correct(4, 50)
    guess.correct(7, 53)  # the same offset, said of a later row
    assert guess.take(1) == (10, 56)


def test_a_batch_keeps_its_guess_only_over_rows_keyed_from_one_offset() -> None:
    whole = Guessed()
    whole.add(0, 3, 10)
    whole.add(3, 2, 13)
    whole.add(5, 0, None)  # a chunk of rejections only
    assert (whole.first_row, whole.next_row, whole.first_key) == (0, 5, 10)
    for row, key in ((3, 14), (4, 14), (3, None)):
        broken = Guessed()
        broken.add(0, 3, 10)
        broken.add(row, 2, key)
        assert broken.first_key is None and broken.next_row == row + 2


def test_the_writer_tells_the_reader_only_where_the_guess_misses() -> None:
    batch = Guessed()
    batch.add(0, 3, 10)
    assert batch.correction(13) is None
    assert batch.correction(15) == (3, 15)  # two keys went to someone else
    assert batch.correction(None) is None
    unknown = Guessed()
    unknown.add(0, 3, None)
    assert unknown.correction(13) == (3, 13)
    assert Guessed().correction(13) is None  # no rows: nothing to say


# -- the writer's check, on both databases ---------------------------------------------------


class Remade:
    """Counts the rows whose digests the writer made itself."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        original = ingest.seal.chain.event_digests

        def counting(keys: Sequence[int], rows: Sequence[Any], channel: str, zero: float) -> bytes:
            self.rows += len(keys)
            return original(keys, rows, channel, zero)

        monkeypatch.setattr(ingest.seal.chain, "event_digests", counting)


def sealed_digests(url: str) -> tuple[bytes, bytes]:
    """The digests the links hold, and those of the rows as stored (the chain verifies)."""
    _, links, stored = read_back(url)
    return links, stored


def write_prepared(store: Store, batch: list[Event], first_key: int | None) -> Any:
    prepared = prepare_events(
        batch,
        "default",
        NOW,
        "stream",
        latest_plausible(NOW),
        first_key=first_key,
        target=store.dialect,
    )
    return store.write_batch(
        "default",
        None,
        [],
        rows=prepared.rows,
        digests=prepared.digests or b"",
        first_key=prepared.first_key,
        lines=prepared.lines or (),
    )


def test_digests_made_from_the_right_keys_are_sealed_as_they_are(
    store: Store, archive_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remade = Remade(monkeypatch)
    store.write_batch("default", None, [Received(e, NOW) for e in events(0, 4)], channel="webhook")
    before = remade.rows
    result = write_prepared(store, events(100, 50), 5)
    assert (result.inserted, result.next_key) == (50, 55)
    result = write_prepared(store, events(150, 50), 55)
    assert (result.inserted, result.next_key) == (50, 105)
    assert remade.rows == before  # the reader's digests, as they came
    links, stored = sealed_digests(archive_url)
    assert links == stored


@pytest.mark.parametrize("first_key", [None, 1, 7, 4])
def test_digests_made_from_wrong_keys_are_remade(
    store: Store, archive_url: str, monkeypatch: pytest.MonkeyPatch, first_key: int | None
) -> None:
    """No guess, a guess that missed another writer's rows, one past them, and one that
    missed rows already archived: the writer remakes every digest, and the chain holds
    the stored rows' digests."""
    remade = Remade(monkeypatch)
    store.write_batch("default", None, [Received(e, NOW) for e in events(0, 4)], channel="webhook")
    before = remade.rows
    result = write_prepared(store, events(100, 50), first_key)
    assert (result.inserted, result.next_key) == (50, 55)
    assert remade.rows - before == 50
    # Some rows already archived: read back and sealed from the database. Keys may be
    # spent on the rows that were not inserted, on both databases.
    result = write_prepared(store, events(140, 20), 55)
    assert (result.inserted, result.duplicates) == (10, 10)
    with store.engine.connect() as conn:
        top = conn.exec_driver_sql("SELECT max(seq) FROM events").scalar_one()
    assert result.next_key == int(top) + 1
    links, stored = sealed_digests(archive_url)
    assert links == stored


def test_a_forged_digest_with_the_right_key_is_caught_by_verification(
    store: Store, archive_url: str
) -> None:
    """The writer takes the reader's digests on trust (they are made from the very rows it
    inserts); a wrong one, had it been made, would not pass unseen."""
    batch = events(0, 3)
    prepared = prepare_events(
        batch, "default", NOW, "stream", latest_plausible(NOW), first_key=1, target=store.dialect
    )
    assert prepared.digests is not None
    forged = prepared.digests[:32] + bytes(32) + prepared.digests[64:]
    store.write_batch(
        "default",
        None,
        [],
        rows=prepared.rows,
        digests=forged,
        first_key=1,
        lines=prepared.lines or (),
    )
    engine = create_archive_engine(archive_url)
    try:
        report = verify_archive(engine)
    finally:
        engine.dispose()
    assert not report.ok
    assert "evt_00001" in str(report.problems[0])


# -- a run: the reader's guesses take hold after the first batch ----------------------------


@pytest.mark.parametrize("reader_process", [False, True])
def test_a_run_seals_with_the_readers_digests_once_it_knows_the_keys(
    archive_url: str, monkeypatch: pytest.MonkeyPatch, reader_process: bool
) -> None:
    """An archive that holds another channel's rows and one of the stream's events: the
    run's first batch meets a duplicate, the writer corrects the reader's guess, and the
    chain verifies over every row. With the reader in this process, the writer remakes
    only the digests of the rows read before the correction."""
    from ingest import migrate

    migrate.upgrade(archive_url)
    store = Store.open(archive_url)
    try:
        store.write_batch(
            "default", None, [Received(e, NOW) for e in events(9000, 7)], channel="webhook"
        )
        store.write_batch("default", None, [Received(events(0, 1)[0], NOW)])
    finally:
        store.close()
    remade = Remade(monkeypatch)
    total = 2000
    chunks = [
        b"".join(frame(event_text(n)) for n in range(first, first + 20))
        for first in range(0, total, 20)
    ]
    with ScriptedServer([Reply(chunks=chunks, pause=0.005, hold=10)]) as server:
        result = run_ingest(
            IngestSettings(
                db_url=archive_url,
                base_url=server.base_url,
                api_key=Secret(API_KEY),
                since=datetime(2026, 12, 1, tzinfo=timezone.utc),
                max_events=total,
                batch_size=100,
                read_timeout=5.0,
                max_runtime=60.0,
                reader_process=reader_process,
            )
        )
    assert result.outcome == "max_events", result
    links, stored = sealed_digests(archive_url)
    assert links == stored
    engine = sa.create_engine(archive_url)
    try:
        with engine.connect() as conn:
            count = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
    finally:
        engine.dispose()
    assert count == 7 + total
    if not reader_process:
        assert remade.rows < total / 2, remade.rows


@pytest.mark.parametrize("in_process", [False, True])
def test_the_reader_keys_its_rows_from_the_writers_word(in_process: bool) -> None:
    """The reader numbers its rows from 0 and makes no digests until told a key; the rows
    it prepares after the word carry digests from the keys it implies (in a reader
    process, the word crosses the control pipe)."""
    first = b"".join(frame(event_text(n)) for n in range(3))
    later = b"".join(frame(event_text(n)) for n in range(3, 8))
    with ScriptedServer([Reply(chunks=[first, later], pause=0.5, hold=30)]) as server:
        options = StreamOptions(base_url=server.base_url, api_key=Secret(API_KEY))
        stop = threading.Event()
        reader: StreamReader | ProcessReader
        if in_process:
            reader = StreamReader(options, stream_events, stop, Preparation("default"))
        else:
            reader = ProcessReader(options, stop, Preparation("default"))
        reader.start(None)
        try:
            chunks: list[PreparedEvents] = []
            while len(chunks) < 2:
                item = reader.queue.get(timeout=15)
                if isinstance(item, Normalised) and item.prepared is not None:
                    chunks.append(item.prepared)
                    if len(chunks) == 1:
                        reader.correct_keys(3, 40)  # row 3 takes key 40
        finally:
            stop.set()
            reader.close(timeout=5.0)
    told, keyed = chunks
    assert (told.first_row, told.first_key, told.digests) == (0, None, None)
    assert (keyed.first_row, keyed.first_key) == (3, 40)
    assert [row[0] for row in keyed.rows] == [f"evt_{n:05d}" for n in range(3, 8)]
    assert keyed.digests == event_digests(range(40, 45), keyed.rows, "stream")


def test_new_events_are_copied_straight_into_the_table_and_a_duplicate_takes_the_staged_path(
    pg_archive: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a batch of new events goes in by one ``COPY`` into ``events``; one that
    holds an archived id (with the same payload, and with another) rolls back to its
    savepoint and is staged, and its duplicate and conflict are counted as before."""
    from ingest import migrate

    migrate.upgrade(pg_archive)
    store = Store.open(pg_archive)
    staged: list[int] = []
    original = Store._insert_postgres_rows

    def counting(self: Store, conn: Any, fresh: Any, channel: str) -> Any:
        staged.append(len(fresh))
        return original(self, conn, fresh, channel)

    monkeypatch.setattr(Store, "_insert_postgres_rows", counting)
    try:
        result = write_prepared(store, events(0, 30), None)
        assert (result.inserted, staged) == (30, [])
        again = events(20, 20)
        changed = again[0]._replace(payload=again[0].payload.replace("grnt_", "GRNT_"))
        result = write_prepared(store, [changed, *again[1:]], result.next_key)
        assert (result.inserted, result.duplicates, result.conflicts) == (10, 10, 1)
        assert staged == [20]
        result = write_prepared(store, events(40, 5), result.next_key)
        assert (result.inserted, staged) == (5, [20])
    finally:
        store.close()
    links, stored = sealed_digests(pg_archive)
    assert links == stored
