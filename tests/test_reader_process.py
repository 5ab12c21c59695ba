"""The stream read in a process of its own, and the SQLite rows the reader prepares."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ingest import migrate
from ingest.database import create_archive_engine
from ingest.events import Event, normalise
from ingest.prepare import prepare_events, summarise
from ingest.reader import Preparation, decode_chunk
from ingest.resume import latest_plausible
from ingest.rows import Received
from ingest.seal.archive import verify_archive
from ingest.seal.chain import digests_of, select_rows
from ingest.sse import Frame
from ingest.store import Store
from ingest.stream import Chunk
from tests.conftest import API_KEY, event_count, spawn
from tests.scripted_server import Reply, ScriptedServer, frame
from tests.test_ingest_cli import _wait_for
from tests.test_seal_bound import FRAMES

NOW = datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)

MORE = [
    # A duplicate with the same payload, and one whose payload differs (a conflict).
    FRAMES[0],
    FRAMES[1].replace("caf", "CAF"),
    # Dated more than a day after its arrival: archived, not a resume point.
    '{"id":"evt_far","type":"grant.created","timestamp":"2099-01-01T00:00:00Z","data":{}}',
    "not json",
]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(child) for child in (task / "children").read_text().split()]
    return out


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_the_reader_process_ends_with_a_killed_ingest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    event = '{"id":"evt_1","type":"grant.created","timestamp":"2026-12-01T10:00:00Z","data":{}}'
    with ScriptedServer([Reply(chunks=[frame(event)], hold=60)]) as server:
        proc = spawn(["ingest", "--db", url, "--base-url", server.base_url])
        try:
            _wait_for(lambda: event_count(url) == 1)
            [reader] = children(proc.pid)
            command = Path(f"/proc/{reader}/cmdline").read_bytes().replace(b"\0", b" ")
            assert b"ingest.reader_process" in command
            # The key goes over the control pipe, never on a command line.
            assert API_KEY.encode() not in command
            proc.kill()
            proc.wait(timeout=10)
            _wait_for(lambda: gone(reader), timeout=10)
        finally:
            proc.kill()
            proc.communicate()


def test_prepared_rows_store_what_events_store(tmp_path: Path) -> None:
    """The same frames written as events and as rows the reader prepared: the same rows,
    the same rejections, a chain that verifies and holds the digests of the rows read back."""
    items = [normalise(text) for text in FRAMES + MORE]
    events = [item for item in items if isinstance(item, Event)]
    rejected = [item for item in items if not isinstance(item, Event)]
    prepared = prepare_events(events, "default", NOW, "stream", latest_plausible(NOW))
    assert prepared.tails is not None
    tables: dict[str, list[object]] = {}
    for name in ("events", "rows"):
        path = tmp_path / f"{name}.db"
        url = f"sqlite:///{path}"
        migrate.upgrade(url)
        store = Store.open(url)
        try:
            store.write_batch("default", None, [Received(normalise(FRAMES[2]), NOW)])
            if name == "events":
                result = store.write_batch("default", None, [Received(i, NOW) for i in items])
            else:
                entries = [Received(item, NOW) for item in rejected]
                result = store.write_batch(
                    "default", None, entries, rows=prepared.rows, tails=prepared.tails
                )
        finally:
            store.close()
        assert (result.inserted, result.duplicates, result.conflicts) == (3, 3, 1)
        assert result.rejected == 2
        conn = sqlite3.connect(path)
        try:
            tables[name] = [
                conn.execute("SELECT * FROM events ORDER BY seq").fetchall(),
                conn.execute(
                    "SELECT reason, raw, event_id FROM rejected_events ORDER BY id"
                ).fetchall(),
            ]
        finally:
            conn.close()
        conn = sqlite3.connect(path)
        try:
            sealed = conn.execute(
                "SELECT digests FROM chain_links WHERE kind = 'events' ORDER BY n"
            )
            stored = b"".join(digests for (digests,) in sealed)
            _, read_back = digests_of("events", conn.execute(select_rows("events", "1 = 1")))
        finally:
            conn.close()
        assert stored == read_back
        engine = create_archive_engine(url)
        try:
            assert verify_archive(engine).ok
        finally:
            engine.dispose()
    assert tables["rows"] == tables["events"]


def test_a_chunk_is_decoded_into_rows_and_rejections() -> None:
    texts = [*FRAMES, MORE[2], MORE[3]]
    chunk = Chunk([Frame(text) for text in texts], NOW)
    decoded = decode_chunk(chunk, Preparation("default"))
    assert decoded.prepared is not None
    assert [row[0] for row in decoded.prepared.rows] == ["evt_b1", "evt_b2", "evt_b3", "evt_far"]
    assert [type(item).__name__ for item in decoded.items] == ["Rejection"]
    assert decoded.prepared.earliest == datetime(2026, 12, 1, 10, 0, 0, 500000, timezone.utc)
    assert decoded.prepared.newest == datetime(2026, 12, 1, 10, 0, 2, 123456, timezone.utc)
    assert [i for i, _ in decoded.prepared.implausible] == ["evt_far"]
    # Without a preparation (PostgreSQL) every item comes as it was normalised.
    plain = decode_chunk(chunk, None)
    assert plain.prepared is None and len(plain.items) == len(texts)


def test_a_cut_chunk_is_summarised_from_the_rows_it_keeps() -> None:
    events = [normalise(text) for text in FRAMES]
    assert all(isinstance(e, Event) for e in events)
    whole = prepare_events(events, "default", NOW, "stream", latest_plausible(NOW))  # type: ignore[arg-type]
    for keep in range(len(events) + 1):
        part = summarise(whole.rows[:keep], latest_plausible(NOW))
        kept = [e.occurred_at for e in events[:keep]]  # type: ignore[union-attr]
        assert part.earliest == (min(kept) if kept else None)
        assert part.newest == (max(kept) if kept else None)
        assert part.implausible == []
    far = summarise(whole.rows, NOW - timedelta(days=3))
    assert far.newest is None and len(far.implausible) == len(events)
