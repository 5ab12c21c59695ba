"""The reader process's outbox, and the end it sends when asked to stop.

The outbox (``ingest.outbox``) lets the reader go on while the ingest process
is held by a long commit: messages are queued and written to the pipe, in
order, by a thread of their own. These tests hold it to that over a real
pipe: order, sends that return while nobody reads, a byte bound that blocks
the sender (backpressure), the last message, and a failed write raised where
the reader sends. The reader process's side (``ingest.reader_child.ChildReader``) is
run in this process on real pipes, with a scripted stream: asked to stop, it
sends its end after every chunk it read before the request, even while its
main thread waits in a read that does not return.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Any

import pytest

import ingest.reader_child
from ingest.outbox import Outbox
from ingest.reader import Normalised, Preparation, ReaderDone
from ingest.reader_child import ChildReader
from ingest.reader_process import ReaderJob
from ingest.reader_wire import FrameReader, decode
from ingest.settings import Secret
from ingest.sse import Frame
from ingest.stream import Chunk, Opened, StreamItem, StreamOptions
from tests.conftest import API_KEY

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
WAIT = 10.0  # seconds a step may take before the test fails; a pass never waits for it


class Reader:
    """The ingest process's end of the pipe."""

    def __init__(self, fd: int) -> None:
        self.conn = Connection(fd, writable=False)
        self.frames = FrameReader(fd)

    def recv_bytes(self) -> bytes:
        return bytes(self.frames.next())

    def poll(self, timeout: float) -> bool:
        return self.frames.complete() or self.conn.poll(timeout)

    def close(self) -> None:
        self.conn.close()


def pipe() -> tuple[Reader, Connection]:
    read, write = os.pipe()
    return Reader(read), Connection(write, readable=False)


def test_messages_arrive_in_order_and_close_writes_them_all() -> None:
    reader, writer = pipe()
    outbox = Outbox(writer)
    messages = [b"%d" % i * (1 + i % 7) for i in range(500)]
    for message in messages:
        assert outbox.send(message)
    got = [reader.recv_bytes() for _ in messages]
    outbox.close()
    assert got == messages
    assert outbox.queued == 0


def test_sends_return_while_nobody_reads_the_pipe() -> None:
    """The point of the outbox: 4 MB queued behind a pipe nobody reads (it holds at most
    1 MB), and every send returned; then all of it arrives, in order."""
    reader, writer = pipe()
    outbox = Outbox(writer, limit=8 * 1024 * 1024)
    messages = [bytes([i % 251]) * 65536 for i in range(64)]
    for message in messages:
        assert outbox.send(message)
    assert outbox.queued > 2 * 1024 * 1024  # the pipe could not have taken it
    assert [reader.recv_bytes() for _ in messages] == messages
    outbox.close()


def send_then_set(outbox: Outbox, message: bytes, done: threading.Event) -> None:
    outbox.send(message)
    done.set()


def test_a_full_outbox_blocks_the_sender_until_the_pipe_takes_some() -> None:
    reader, writer = pipe()
    outbox = Outbox(writer, limit=256 * 1024)
    big = b"x" * 65536
    # Fill the pipe (1 MB at most) and then the outbox: sends return until the bound.
    for sent in range(100):  # noqa: B007 (how many went through, used below)
        done = threading.Event()
        thread = threading.Thread(target=send_then_set, args=(outbox, big, done))
        thread.start()
        if not done.wait(1.0):
            break  # blocked: the bound holds
    else:
        pytest.fail("the outbox never blocked")
    assert outbox.queued >= 256 * 1024
    assert thread.is_alive()
    # The pipe takes some: the blocked send goes through (once the write under way ends).
    got = []
    while thread.is_alive() and len(got) <= sent:
        got.append(reader.recv_bytes())
        thread.join(0.5)
    assert not thread.is_alive() and done.is_set()
    while len(got) < sent + 1:
        got.append(reader.recv_bytes())
    assert got == [big] * (sent + 1)
    assert not reader.poll(0.1)
    outbox.close()


def test_the_last_message_goes_after_the_rest_and_later_ones_are_refused() -> None:
    reader, writer = pipe()
    outbox = Outbox(writer, limit=1024)
    assert outbox.send(b"a" * 2048)  # over the bound: one message always fits
    assert outbox.finish(b"end")  # the bound does not hold the last message back
    assert not outbox.send(b"late")
    assert not outbox.finish(b"again")
    outbox.close()
    assert reader.recv_bytes() == b"a" * 2048
    assert reader.recv_bytes() == b"end"
    assert not reader.poll(0.2)


def test_a_failed_write_is_raised_where_the_reader_sends() -> None:
    reader, writer = pipe()
    outbox = Outbox(writer)
    reader.close()  # the ingest process went away
    assert outbox.send(b"lost")
    with pytest.raises(BrokenPipeError):
        outbox.close()
    with pytest.raises(BrokenPipeError):
        outbox.send(b"more")
    assert outbox.queued == 0


# -- the reader process's side --------------------------------------------------------


def event_id(n: int) -> str:
    return f"evt_{n:06d}"


def chunk(n: int) -> Chunk:
    data = (
        f'{{"id":"{event_id(n)}","type":"grant.created","createdAt":"2026-12-01T11:00:00Z",'
        f'"data":{{"grantId":"grnt_{n}"}}}}'
    )
    return Chunk([Frame(data=data)], NOW)


class ScriptedRead:
    """A stream that yields ``chunks`` and then waits in its 'socket read' until released."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.reading = threading.Event()  # the main thread waits in the read
        self.release = threading.Event()
        self.after: list[Chunk] = []  # what the read returns once released

    def __call__(
        self, _options: StreamOptions, since: Callable[[], Any], stop: threading.Event, **_: Any
    ) -> Iterator[StreamItem]:
        since()
        yield Opened(None, 200, NOW, NOW)
        yield from self.chunks
        self.reading.set()
        self.release.wait(WAIT)
        yield from self.after


def run_child(
    monkeypatch: pytest.MonkeyPatch, stream: ScriptedRead
) -> tuple[Reader, Connection, threading.Thread]:
    monkeypatch.setattr(ingest.reader_child, "stream_events", stream)
    data_read, data_write = pipe()
    read, write = os.pipe()
    control_read, control_write = (
        Connection(read, writable=False),
        Connection(write, readable=False),
    )
    options = StreamOptions(base_url="http://127.0.0.1:9", api_key=Secret(API_KEY))
    job = ReaderJob(options, None, Preparation("default"))
    # The control pipe's end is the ingest process gone: here, the listener just ends.
    child = ChildReader(job, Outbox(data_write), control_read, parent_gone=lambda _code: None)
    thread = threading.Thread(target=child.run, daemon=True)
    thread.start()
    return data_read, control_write, thread


def read_until_end(data: Reader) -> tuple[list[str], ReaderDone]:
    ids: list[str] = []
    while data.poll(WAIT):
        item = decode(data.recv_bytes())
        if isinstance(item, ReaderDone):
            return ids, item
        if isinstance(item, Normalised):
            assert item.prepared is not None
            ids += [row[0] for row in item.prepared.rows]
    raise AssertionError("the reader's end never came")


def test_asked_to_stop_while_waiting_in_a_read_the_reader_ends_after_all_it_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = ScriptedRead([chunk(n) for n in range(300)])
    stream.after = [chunk(999)]  # read after the request: not sent after the end
    data, control, thread = run_child(monkeypatch, stream)
    assert stream.reading.wait(WAIT)
    control.send(("stop", None))
    ids, end = read_until_end(data)
    assert ids == [event_id(n) for n in range(300)]
    assert end.error is None
    stream.release.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert not data.poll(0.2)  # nothing after the end


def test_a_reader_that_ends_on_its_own_sends_its_end_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = ScriptedRead([chunk(n) for n in range(5)])
    stream.release.set()
    data, control, thread = run_child(monkeypatch, stream)
    ids, end = read_until_end(data)
    thread.join(WAIT)
    assert ids == [event_id(n) for n in range(5)]
    assert end.error is None
    control.send(("stop", None))  # a stop after the end adds nothing
    assert not data.poll(0.2)
