"""How the reader process's messages cross the data pipe (see :mod:`ingest.reader_process`).

Nearly all of the traffic is chunks of prepared events: lists of tuples of text,
numbers and bytes. Those go as :mod:`marshal` data, which both sides write and read
in about half the time pickle takes for the same rows (``marshal`` is safe here: the
pipe is private to the ingest process and the child it started). Their times travel
as whole microseconds since the epoch, exactly. Anything else (connection news, a
chunk with rejections, the end of the stream) is pickled. On the pipe, each message
is framed by its length (:data:`HEADER`), so that the reader can write many in one
system call and the ingest process read many in one.
"""

from __future__ import annotations

import marshal
import os
import pickle
import struct
from datetime import datetime, timedelta, timezone

from .prepare import PreparedEvents
from .reader import Normalised, QueueItem

_ROWS = b"M"
_PICKLED = b"P"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
MARSHAL_VERSION = 4
HEADER = struct.Struct("!I")
"""A message's frame on the pipe: its length in bytes (4 bytes, big-endian), then it."""


READ_BYTES = 1024 * 1024
"""What :class:`FrameReader` asks of the pipe at a time: all it holds, usually."""


def frame(message: bytes) -> bytes:
    """``message`` framed for the pipe."""
    return HEADER.pack(len(message)) + message


class FrameReader:
    """The messages on a pipe of frames, read in large pieces: one system call brings
    all the messages the pipe holds."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._at = 0

    def complete(self) -> bool:
        """Whether a whole message is read already."""
        buffer, at = self._buffer, self._at
        if len(buffer) - at < HEADER.size:
            return False
        size: int = HEADER.unpack_from(buffer, at)[0]
        return len(buffer) - at - HEADER.size >= size

    def next(self) -> memoryview:
        """The next message, read until it is whole (blocking); EOFError at the pipe's end."""
        while not self.complete():
            data = os.read(self._fd, READ_BYTES)
            if not data:
                raise EOFError("the pipe closed")
            rest = self._buffer[self._at :]
            self._buffer, self._at = (rest + data if rest else data), 0
        (size,) = HEADER.unpack_from(self._buffer, self._at)
        start = self._at + HEADER.size
        self._at = start + size
        return memoryview(self._buffer)[start : self._at]


def encode(item: QueueItem) -> bytes:
    """One message for the data pipe."""
    if type(item) is Normalised and item.prepared is not None and not item.items:
        p = item.prepared
        implausible = [(event_id, _micros(occurred)) for event_id, occurred in p.implausible]
        fields = (
            p.rows, p.digests, p.lines, _micros(item.received_at),
            _optional_micros(p.earliest), _optional_micros(p.newest), implausible,
            p.first_row, p.first_key,
        )  # fmt: skip
        return _ROWS + marshal.dumps(fields, MARSHAL_VERSION)
    return _PICKLED + pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)


def decode(message: bytes | memoryview) -> QueueItem:
    """The item :func:`encode` made ``message`` from."""
    body = memoryview(message)[1:]
    if message[:1] == _ROWS:
        (rows, digests, lines, received, earliest, newest, implausible, first_row,
         first_key) = marshal.loads(body)  # fmt: skip
        prepared = PreparedEvents(
            rows,
            digests,
            _optional_time(earliest),
            _optional_time(newest),
            [(event_id, _time(occurred)) for event_id, occurred in implausible],
            lines,
            first_row,
            first_key,
        )
        return Normalised([], _time(received), prepared)
    if message[:1] == _PICKLED:
        item: QueueItem = pickle.loads(body)
        return item
    raise ValueError(f"not a reader message (starts with {bytes(message[:1])!r})")


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _optional_micros(value: datetime | None) -> int | None:
    return None if value is None else _micros(value)


def _time(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def _optional_time(micros: int | None) -> datetime | None:
    return None if micros is None else _time(micros)
