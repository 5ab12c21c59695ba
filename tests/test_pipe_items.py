"""The reader process's items read off the pipe by the main thread, and the inline writer.

With the reader in a process of its own, the ingest process runs one busy
thread: it reads the pipe (``PipeItems``) and commits each batch itself
(``InlineWriter``). These tests hold both to the queue and the writer thread
they stand in for: items in order, a timeout as an empty queue, the end of
the pipe as the reader's end, the stop request carried to the reader, and a
database error raised where the batch was submitted, then again on every call.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.batch_writer import Batch, BatchWriter, InlineWriter
from ingest.reader import NeedSince, Preparation, ReaderDone, ReaderFailed, decode_chunk
from ingest.reader_process import PipeItems, ProcessReader, ReaderChild
from ingest.reader_wire import encode, frame
from ingest.settings import IngestSettings, Secret
from ingest.sse import Frame
from ingest.store import Store, StoreError
from ingest.stream import Chunk, Opened
from ingest.worker import Worker
from tests.conftest import API_KEY

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def send(conn: Connection, message: bytes) -> None:
    """One message on the pipe, framed as the reader process frames it."""
    os.write(conn.fileno(), frame(message))


class Pipe:
    """A real pipe, as the reader process writes it, read through ``PipeItems``."""

    def __init__(self) -> None:
        read, write = os.pipe()
        self.reader = Connection(read, writable=False)
        self.writer = Connection(write, readable=False)
        self.stop = threading.Event()
        self.sent: list[object] = []
        self.items = PipeItems(self.stop, self.sent.append, self.ended_early)
        self.items.attach(self.reader)

    @staticmethod
    def ended_early(exc: BaseException) -> ReaderFailed:
        return ReaderFailed("ReaderExited", f"ended early: {type(exc).__name__}")


def test_items_come_in_order_and_a_timeout_is_an_empty_queue() -> None:
    pipe = Pipe()
    assert pipe.items.empty()
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        pipe.items.get(timeout=0.05)
    assert time.monotonic() - started >= 0.04
    with pytest.raises(queue.Empty):
        pipe.items.get_nowait()
    opened = Opened(since=None, status_code=200, requested_at=NOW, first_byte_at=NOW)
    send(pipe.writer, encode(NeedSince()))
    send(pipe.writer, encode(opened))
    assert not pipe.items.empty()
    assert pipe.items.get(timeout=1) == NeedSince()
    assert pipe.items.get_nowait() == opened
    assert pipe.items.empty()


def test_the_readers_end_closes_the_pipe_and_nothing_follows() -> None:
    pipe = Pipe()
    send(pipe.writer, encode(ReaderDone(None)))
    assert not pipe.items.ended  # the worker, stopping, waits for the end
    assert pipe.items.get(timeout=1) == ReaderDone(None)
    assert pipe.items.ended  # and then no longer
    assert pipe.reader.closed
    assert pipe.items.empty()
    with pytest.raises(queue.Empty):
        pipe.items.get(timeout=0.01)


def test_a_pipe_closed_without_a_word_is_the_reader_ending_early() -> None:
    pipe = Pipe()
    pipe.writer.close()
    done = pipe.items.get(timeout=1)
    assert isinstance(done, ReaderDone) and isinstance(done.error, ReaderFailed)
    assert done.error.kind == "ReaderExited" and "EOFError" in done.error.text
    assert pipe.items.ended


def test_the_stop_request_is_sent_to_the_reader_once() -> None:
    pipe = Pipe()
    with pytest.raises(queue.Empty):
        pipe.items.get_nowait()
    assert pipe.sent == []
    pipe.stop.set()
    for _ in range(3):
        with pytest.raises(queue.Empty):
            pipe.items.get_nowait()
    assert pipe.sent == [("stop", None)]


def test_an_item_of_the_ingest_process_comes_first() -> None:
    pipe = Pipe()
    send(pipe.writer, encode(NeedSince()))
    own = ReaderDone(ReaderFailed("PermissionError", "cannot start"))
    pipe.items.put(own)
    assert not pipe.items.empty()
    assert pipe.items.get(timeout=1) == own
    assert pipe.items.get(timeout=1) == NeedSince()


def test_the_inline_writer_commits_in_the_submitting_thread() -> None:
    threads: list[threading.Thread] = []
    writer = InlineWriter(lambda batch: threads.append(threading.current_thread()))
    writer.submit(Batch())
    writer.wait()
    writer.close(timeout=0.1)
    assert threads == [threading.current_thread()]


def test_the_inline_writers_error_is_raised_at_once_and_again() -> None:
    calls: list[Batch] = []

    def fail(batch: Batch) -> None:
        calls.append(batch)
        raise StoreError("database unusable: disk I/O error")

    writer = InlineWriter(fail)
    with pytest.raises(StoreError, match="disk I/O error"):
        writer.submit(Batch())
    for call in (writer.check, writer.wait, lambda: writer.submit(Batch())):
        with pytest.raises(StoreError, match="disk I/O error"):
            call()
    assert len(calls) == 1  # nothing more is written after an error


def test_an_unexpected_error_is_reported_as_the_writer_thread_reports_it() -> None:
    def broken(_batch: Batch) -> None:
        raise KeyError("seq")

    inline = InlineWriter(broken)
    with pytest.raises(StoreError) as inline_error:
        inline.submit(Batch())
    threaded = BatchWriter(broken, lambda: None)
    threaded.submit(Batch())
    with pytest.raises(StoreError) as threaded_error:
        threaded.wait()
    threaded.close(timeout=1.0)
    assert str(inline_error.value) == str(threaded_error.value)
    assert str(inline_error.value) == "database unusable: KeyError: 'seq'"


def test_a_run_with_a_reader_process_writes_inline(tmp_path: Path) -> None:
    migrate.upgrade(f"sqlite:///{tmp_path / 'a.db'}")
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        settings = IngestSettings(
            db_url=f"sqlite:///{tmp_path / 'a.db'}",
            base_url="http://127.0.0.1:9",
            api_key=Secret(API_KEY),
        )
        worker = Worker(settings, store)
        assert isinstance(worker._reader, ProcessReader)
        assert isinstance(worker._reader.queue, PipeItems)
        assert isinstance(worker._writer, InlineWriter)
        threaded = Worker(settings, store, stream=lambda *a, **k: iter(()))
        assert isinstance(threaded._writer, BatchWriter)
        threaded._writer.close(timeout=1.0)
    finally:
        store.close()


def chunk_message(first: int, count: int) -> bytes:
    """A reader process's message: ``count`` events from ``first``, prepared as it prepares
    them (rows, no digests: the writer makes those)."""
    frames = [
        Frame(
            data=f'{{"id":"evt_{n:08d}","type":"grant.created",'
            f'"createdAt":"2026-12-01T11:00:00Z","data":{{"grantId":"grnt_{n}"}}}}'
        )
        for n in range(first, first + count)
    ]
    return encode(decode_chunk(Chunk(frames, NOW), Preparation("default", digests=False)))


def test_a_stopped_run_stores_all_the_reader_process_read_before_its_end(tmp_path: Path) -> None:
    """Stopping, the worker waits for the reader's end and stores what comes before it,
    however late: here 300 events go out only once the stop request has come."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    migrate.upgrade(url)
    store = Store.open(url)
    data_read, data_write = os.pipe()
    control_read, control_write = os.pipe()
    data = Connection(data_write, readable=False)
    control = Connection(control_read, writable=False)
    stand_in = subprocess.Popen(["sleep", "60"])  # the process the worker ends at last
    child = ReaderChild(
        stand_in, Connection(data_read, writable=False), Connection(control_write, readable=False)
    )
    settings = IngestSettings(db_url=url, base_url="http://127.0.0.1:9", api_key=Secret(API_KEY))
    worker = Worker(settings, store, reader_child=child)
    asked: list[object] = []

    def reader_process() -> None:
        asked.append(control.recv())  # the job
        send(data, encode(Opened(None, 200, NOW, NOW)))
        send(data, chunk_message(0, 200))
        worker.stop.set()  # as a signal would
        asked.append(control.recv())  # the stop request
        for first in (200, 300, 400):
            send(data, chunk_message(first, 100))
        send(data, encode(ReaderDone(None)))

    thread = threading.Thread(target=reader_process, daemon=True)
    thread.start()
    try:
        result = worker.run()
    finally:
        stand_in.kill()
        stand_in.wait()
        store.close()
    thread.join(5)
    assert asked[1:] == [("stop", None)]
    assert result.outcome == "interrupted"
    assert (result.counts.received, result.counts.inserted) == (500, 500)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 500
    engine.dispose()
