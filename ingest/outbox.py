"""The reader process's outbox: its messages, written to the data pipe by a thread of their own.

The ingest process does not read the pipe at an even pace. It takes a batch's
messages, then spends its time in the database, and now and then a commit runs
a WAL checkpoint that holds it for a tenth of a second or more. The pipe holds
about a megabyte (a few thousand events); without the outbox the reader blocks
in its write as soon as that is full, stops reading, and the time it spends
blocked is lost to both sides, since the ingest process, once it comes back,
drains the pipe faster than the reader refills it.

The outbox lets the reader go on through such a pause: :meth:`Outbox.send`
queues the message and returns, and the outbox's thread writes the messages
in order, blocking in the write (without the GIL) while the pipe is full.
The queue is bounded in bytes: once it holds ``limit`` bytes, :meth:`send`
blocks until a write ends, so a database that stays slow still stops the
reader and, through it, the stream (backpressure is kept).
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
from multiprocessing.connection import Connection

from .reader_wire import HEADER

OUTBOX_BYTES = 16 * 1024 * 1024
"""What the reader may hold unwritten: about 140 chunks of the usual stream, some
30,000 events, more than the reader makes while a checkpoint holds the writer."""


class Outbox:
    """Messages for ``conn``, written in the order given by a thread of their own, each
    framed by its length (:data:`~ingest.reader_wire.HEADER`), as many as are queued in
    one write.

    A failed write (the ingest process went away) is raised by the next
    :meth:`send` or by :meth:`close`; what was queued after it is dropped.
    :meth:`finish` queues the last message: the outbox takes none after it.
    """

    def __init__(self, conn: Connection, limit: int = OUTBOX_BYTES) -> None:
        self._conn = conn
        self._limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._closing = False
        self._finished = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._write_all, name="grantex-outbox", daemon=True)
        self._thread.start()

    def send(self, message: bytes) -> bool:
        """Queue ``message``; blocks while ``limit`` bytes wait (one message always fits).
        False, and ``message`` dropped, once the outbox is finished."""
        with self._cond:
            while self._queued >= self._limit and self._error is None and not self._finished:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._finished or self._closing:
                return False
            self._queue.append(message)
            self._queued += len(message)
            self._cond.notify_all()
            return True

    def finish(self, message: bytes) -> bool:
        """Queue ``message`` as the last one, after everything queued (whatever the limit);
        False if the outbox was finished already."""
        with self._cond:
            if self._finished or self._closing or self._error is not None:
                return False
            self._finished = True
            self._queue.append(message)
            self._queued += len(message)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """Write everything queued, then end the thread; raise a failed write's error."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    @property
    def queued(self) -> int:
        """Bytes queued and not yet written in full."""
        with self._cond:
            return self._queued

    def _write_all(self) -> None:
        fd = self._conn.fileno()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                # Everything queued in one system call: the thread takes the GIL
                # once for them all, not once per message.
                taken = list(itertools.islice(self._queue, _MESSAGES_PER_WRITE))
            parts: list[bytes] = []
            for message in taken:
                parts += (HEADER.pack(len(message)), message)
            try:
                write_all(fd, parts)
            except OSError as exc:
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._queued = 0
                    self._cond.notify_all()
                return
            with self._cond:
                for message in taken:
                    self._queue.popleft()
                    self._queued -= len(message)
                self._cond.notify_all()


_MESSAGES_PER_WRITE = 256
"""At most this many messages in one write (an ``os.writev`` takes at most 1024 parts)."""


def write_all(fd: int, parts: list[bytes]) -> None:
    """Write ``parts`` to ``fd`` in order, in as few system calls as it takes."""
    views = collections.deque(memoryview(part) for part in parts)
    while views:
        written = os.writev(fd, list(itertools.islice(views, 1024)))
        while written:
            first = views[0]
            if written >= len(first):
                written -= len(first)
                views.popleft()
            else:
                views[0] = first[written:]
                written = 0
