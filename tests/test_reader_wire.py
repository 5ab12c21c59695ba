"""What crosses the reader process's data pipe comes out as it went in."""

from __future__ import annotations

import math
import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from ingest.events import normalise
from ingest.key_guess import KeyGuess
from ingest.prepare import PreparedEvents
from ingest.reader import NeedSince, Normalised, Preparation, ReaderDone, ReaderFailed, decode_chunk
from ingest.reader_wire import READ_BYTES, FrameReader, decode, encode, frame
from ingest.sse import Frame
from ingest.stream import Chunk, Closed, Opened
from tests.test_reader_process import COPY_HOSTILE, MORE
from tests.test_seal_bound import FRAMES

NOW = datetime(2026, 12, 1, 12, 0, 0, 250001, tzinfo=timezone.utc)

EVENTS = [*FRAMES, *COPY_HOSTILE, MORE[2]]
"""Negative zero, whole and fractional floats, NULLs, non-ASCII and COPY-hostile text,
and an event dated past the plausibility bound."""


def same_rows(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> bool:
    """Equal row for row, with NaN equal to NaN and -0.0 told from 0.0."""

    def key(value: object) -> object:
        if isinstance(value, float):
            return ("nan",) if math.isnan(value) else (value, math.copysign(1.0, value))
        return value

    return [tuple(map(key, row)) for row in a] == [tuple(map(key, row)) for row in b]


@pytest.mark.parametrize("target", ["sqlite", "postgresql"])
@pytest.mark.parametrize("offset", [None, 41])
def test_a_prepared_chunk_crosses_unchanged(target: str, offset: int | None) -> None:
    chunk = Chunk([Frame(text) for text in EVENTS], NOW)
    guess = KeyGuess()
    guess.take(7)
    if offset is not None:
        guess.correct(0, offset)
    sent = decode_chunk(chunk, Preparation("default", "stream", True, target), guess)
    assert sent.prepared is not None and not sent.items
    assert sent.prepared.first_row == 7
    assert sent.prepared.first_key == (None if offset is None else 48)
    assert (sent.prepared.digests is None) == (offset is None)
    assert sent.prepared.implausible  # the far-future event
    message = encode(sent)
    assert message[:1] == b"M"  # the fast form, not pickle
    got = decode(message)
    assert isinstance(got, Normalised) and got.prepared is not None
    assert got.items == [] and got.received_at == NOW
    assert got.received_at.tzinfo is timezone.utc
    p, q = sent.prepared, got.prepared
    assert same_rows(q.rows, p.rows)
    assert all(type(row) is tuple for row in q.rows)
    assert (q.digests, q.lines) == (p.digests, p.lines)
    assert (q.first_row, q.first_key) == (p.first_row, p.first_key)
    assert (q.earliest, q.newest, q.implausible) == (p.earliest, p.newest, p.implausible)
    for a, b in ((q.earliest, p.earliest), (q.newest, p.newest)):
        assert a is not None and b is not None and a.utcoffset() == b.utcoffset()


def test_times_cross_to_the_microsecond_far_from_now() -> None:
    for moment in (
        datetime(1970, 1, 1, tzinfo=timezone.utc) - timedelta(microseconds=1),
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
    ):
        sent = Normalised([], moment, PreparedEvents([], None, moment, moment, [("e", moment)]))
        got = decode(encode(sent))
        assert isinstance(got, Normalised) and got.prepared is not None
        assert got.received_at == moment
        assert (got.prepared.earliest, got.prepared.newest) == (moment, moment)
        assert got.prepared.implausible == [("e", moment)]


def test_an_empty_prepared_chunk_has_no_times() -> None:
    got = decode(encode(decode_chunk(Chunk([], NOW), Preparation("default"))))
    assert isinstance(got, Normalised) and got.prepared is not None
    assert got.prepared.rows == [] and got.prepared.earliest is got.prepared.newest is None


def test_everything_else_is_pickled() -> None:
    items = [
        # A chunk with a rejection keeps the rejection beside its rows.
        decode_chunk(Chunk([Frame(FRAMES[0]), Frame("not json")], NOW), Preparation("x")),
        Normalised([normalise(FRAMES[0])], NOW),
        NeedSince(),
        Opened(NOW, 200, NOW, NOW),
        Closed("end of stream", 3, NOW),
        ReaderDone(ReaderFailed("OSError", "no route")),
    ]
    for item in items:
        message = encode(item)  # type: ignore[arg-type]
        assert message[:1] == b"P"
        got = decode(message)
        if isinstance(item, ReaderDone):
            assert isinstance(got, ReaderDone) and isinstance(got.error, ReaderFailed)
            assert (got.error.kind, str(got.error)) == ("OSError", "no route")
        else:
            assert got == item


def test_a_message_of_no_known_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a reader message"):
        decode(b"Xjunk")


def test_frames_come_back_whole_however_the_pipe_cuts_them() -> None:
    """Messages written in pieces of every size, one larger than a read, come back whole
    and in order; a pipe that closes inside a frame is its end."""
    messages = [b"", b"x", bytes(range(256)) * 9, b"y" * (READ_BYTES + 12345), b"last"]
    stream = b"".join(frame(m) for m in messages) + frame(b"cut short")[:-3]
    read, write = os.pipe()
    reader = FrameReader(read)

    def writer() -> None:
        for at in range(0, len(stream), 7919):  # a prime: cuts fall everywhere
            os.write(write, stream[at : at + 7919])
        os.close(write)

    thread = threading.Thread(target=writer)
    thread.start()
    got = [bytes(reader.next()) for _ in messages]
    assert got == messages
    with pytest.raises(EOFError):
        reader.next()
    thread.join()
    os.close(read)
