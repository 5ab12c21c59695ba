"""The stream read in a process of its own, and the SQLite rows the reader prepares."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingest import migrate, reader_process, runner
from ingest.database import create_archive_engine
from ingest.events import Event, normalise
from ingest.prepare import prepare_events, summarise
from ingest.reader import Normalised, Preparation, ReaderDone, ReaderFailed, decode_chunk
from ingest.reader_process import ProcessReader
from ingest.resume import latest_plausible
from ingest.rows import Received
from ingest.runner import run_ingest
from ingest.seal.archive import verify_archive
from ingest.seal.chain import digests_of, select_rows
from ingest.settings import IngestSettings, Secret
from ingest.sse import Frame
from ingest.store import Store, StoreError
from ingest.stream import Chunk, StreamOptions
from tests.conftest import API_KEY, _fresh_schema, event_count, spawn
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
            assert b"ingest.reader_child" in command
            # The key goes over the control pipe, never on a command line.
            assert API_KEY.encode() not in command
            proc.kill()
            proc.wait(timeout=10)
            _wait_for(lambda: gone(reader), timeout=10)
        finally:
            proc.kill()
            proc.communicate()


def reader_children() -> list[int]:
    found = []
    for pid in children(os.getpid()):
        with contextlib.suppress(OSError):
            if b"ingest.reader_child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def test_a_reader_started_ahead_ends_with_a_run_that_never_began(tmp_path: Path) -> None:
    """The reader process starts before the archive opens; a run that ends there (an
    unreachable database) leaves no reader process behind, and the run says why."""
    settings = IngestSettings(
        db_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1",
        base_url="http://127.0.0.1:9",
        api_key=Secret(API_KEY),
        db_retry_timeout=0.5,
    )
    before = reader_children()
    with pytest.raises(StoreError, match="database unusable"):
        run_ingest(settings)
    assert reader_children() == before


def test_a_reader_started_ahead_reads_for_the_run(tmp_path: Path) -> None:
    """The run hands its job to the reader process it started before opening the archive."""
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    body = b"".join(frame(text) for text in FRAMES)
    with ScriptedServer([Reply(chunks=[body], hold=10)]) as server:
        settings = IngestSettings(
            db_url=url,
            base_url=server.base_url,
            api_key=Secret(API_KEY),
            until_idle=0.5,
            max_runtime=20.0,
        )
        started = []
        original = reader_process.spawn

        def spying() -> reader_process.ReaderChild:
            child = original()
            started.append(child)
            return child

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runner, "spawn", spying)
            result = run_ingest(settings)
    assert result.outcome == "idle" and result.counts.inserted == len(FRAMES)
    [child] = started
    assert child.taken and child.proc.returncode == 0
    assert reader_children() == []


COPY_HOSTILE = [
    # Text that COPY must escape: backslashes, tabs, newlines and carriage returns in the
    # payload (multi-line data, JSON escapes) and in a derived field.
    '{"id":"evt_c1","type":"grant.created","createdAt":"2026-12-01T10:00:03Z",\n\t"data":'
    '{"grantId":"g\\\\1\\t","note":"a\\nb\\\\c"}}\r',
    '{"id":"evt_c2","type":"budget.threshold","createdAt":"2026-12-01T10:00:04Z",'
    '"data":{"grantId":"g4","percentage":1e16,"remaining":0.1,"initial":-2.5}}',
]


def archive_pair(kind: str, tmp_path: Path, server: str | None) -> Iterator[tuple[str, str]]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}", f"sqlite:///{tmp_path / 'rows.db'}"
        return
    assert server is not None
    with _fresh_schema(server) as first, _fresh_schema(server) as second:
        yield first, second


def read_back(url: str) -> tuple[list[object], bytes, bytes]:
    engine = create_archive_engine(url)
    try:
        with engine.connect() as conn:
            stored = conn.exec_driver_sql(
                "SELECT id, source, type, occurred_at, received_at, grant_id, agent_id, "
                "principal_id, revoked_by, token_id, method, percentage, remaining, initial, "
                "payload, channel FROM events ORDER BY seq"
            ).all()
            rejected = conn.exec_driver_sql(
                "SELECT reason, raw, event_id FROM rejected_events ORDER BY id"
            ).all()
            sealed = conn.exec_driver_sql(
                "SELECT digests FROM chain_links WHERE kind = 'events' ORDER BY n"
            ).all()
            _, digests = digests_of(
                "events", conn.exec_driver_sql(select_rows("events", "1 = 1")).all()
            )
        assert verify_archive(engine).ok
    finally:
        engine.dispose()
    return [stored, rejected], b"".join(bytes(d) for (d,) in sealed), digests


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_prepared_rows_store_what_events_store(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same frames written as events and as rows the reader prepared: the same rows,
    the same rejections, a chain that verifies and holds the digests of the rows read back."""
    server = request.getfixturevalue("pg_server") if kind == "postgresql" else None
    items = [normalise(text) for text in FRAMES + COPY_HOSTILE + MORE]
    events = [item for item in items if isinstance(item, Event)]
    rejected = [item for item in items if not isinstance(item, Event)]
    bound = latest_plausible(NOW)
    prepared = prepare_events(events, "default", NOW, "stream", bound, first_key=2, target=kind)
    assert prepared.digests is not None and prepared.first_key == 2
    assert (prepared.lines is not None) == (kind == "postgresql")
    tables = []
    for pair in archive_pair(kind, tmp_path, server):
        for i, url in enumerate(pair):
            migrate.upgrade(url)
            store = Store.open(url)
            try:
                store.write_batch("default", None, [Received(normalise(FRAMES[2]), NOW)])
                if i == 0:
                    entries = [Received(item, NOW) for item in items]
                    result = store.write_batch("default", None, entries)
                else:
                    result = store.write_batch(
                        "default",
                        None,
                        [Received(item, NOW) for item in rejected],
                        rows=prepared.rows,
                        digests=prepared.digests,
                        first_key=prepared.first_key,
                        lines=prepared.lines or (),
                    )
            finally:
                store.close()
            assert (result.inserted, result.duplicates, result.conflicts) == (5, 3, 1)
            assert result.rejected == 2
            table, sealed, digests = read_back(url)
            assert sealed == digests
            tables.append(table)
    assert tables[1] == tables[0]


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


def test_a_reader_that_cannot_start_ends_the_run_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError("not allowed")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    options = StreamOptions(base_url="http://127.0.0.1:9", api_key=Secret("gx_test_key_123456"))
    reader = ProcessReader(options, threading.Event())
    reader.start(None)
    done = reader.queue.get(timeout=5)
    assert isinstance(done, ReaderDone) and isinstance(done.error, ReaderFailed)
    assert done.error.kind == "PermissionError"
    assert str(done.error) == "cannot start the stream reader: not allowed"
    reader.close(timeout=0.1)


def test_closing_the_reader_ends_a_child_blocked_in_a_socket_read_at_once() -> None:
    """A stream that sends nothing more: the child is in a socket read when the run ends."""
    with ScriptedServer([Reply(chunks=[frame(FRAMES[0])], hold=30)]) as server:
        options = StreamOptions(
            base_url=server.base_url, api_key=Secret(API_KEY), read_timeout=60.0
        )
        reader = ProcessReader(options, threading.Event(), Preparation("default"))
        reader.start(None)
        got: list[object] = []
        while not any(isinstance(item, Normalised) and item.prepared for item in got):
            got.append(reader.queue.get(timeout=15))
        proc = reader._proc
        assert proc is not None and proc.poll() is None
        started = time.monotonic()
        reader.close(timeout=10.0)
        elapsed = time.monotonic() - started
    # Not killed after the timeout: ended by the closed control pipe.
    assert proc.returncode == 0
    assert elapsed < 2.0
