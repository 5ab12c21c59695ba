"""How the reader process's messages cross the data pipe (see :mod:`ingest.reader_process`).

Nearly all of the traffic is chunks of prepared events: lists of tuples of text,
numbers and bytes. Those go as :mod:`marshal` data, which both sides write and read
in about half the time pickle takes for the same rows (``marshal`` is safe here: the
pipe is private to the ingest process and the child it started). Their times travel
as whole microseconds since the epoch, exactly. Anything else (connection news, a
chunk with rejections, the end of the stream) is pickled.
"""

from __future__ import annotations

import marshal
import pickle
from datetime import datetime, timedelta, timezone

from .prepare import PreparedEvents
from .reader import Normalised, QueueItem

_ROWS = b"M"
_PICKLED = b"P"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
MARSHAL_VERSION = 4


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


def decode(message: bytes) -> QueueItem:
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
