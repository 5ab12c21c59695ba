"""The reader process itself (``python -m ingest.reader_child``, started by
:func:`ingest.reader_process.spawn`): it reads the stream for the ingest process and
sends what it reads on the data pipe, through its :class:`~ingest.outbox.Outbox`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection

from .key_guess import KeyGuess
from .outbox import Outbox
from .reader import (
    GC_THRESHOLDS,
    NeedSince,
    ReaderDone,
    ReaderFailed,
    answer_or_stop,
    decode_chunk,
)
from .reader_process import ReaderJob
from .reader_wire import encode
from .stream import Chunk, StreamError, make_client, stream_events


def portable(error: BaseException | None) -> BaseException | None:
    """An error as the parent can unpickle it: the stream's own errors as they are,
    anything else by its type's name and text."""
    if error is None or type(error).__module__ == StreamError.__module__:
        return error
    return ReaderFailed(type(error).__name__, str(error))


def child_main(data_fd: int, control_fd: int) -> None:
    """Read the stream for the parent until it asks to stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    control = Connection(control_fd, writable=False)
    try:
        job: ReaderJob = control.recv()
    except (EOFError, OSError):
        # Started ahead of a run that ended before it began (a lock held, say).
        os._exit(0)
    ChildReader(job, Outbox(Connection(data_fd, readable=False)), control).run()


class ChildReader:
    """The reader process's job: its main thread reads, its control thread listens.

    ``busy`` is held from the moment a read's items are in hand until they are in
    the outbox. A stop request takes it, so the reader's end goes out after
    everything read before the request, even while the main thread waits in a
    socket read that may take long to return (a quiet live stream). When the
    control pipe closes (the ingest process is gone), ``parent_gone`` ends the
    process at once.
    """

    def __init__(
        self,
        job: ReaderJob,
        data: Outbox,
        control: Connection,
        parent_gone: Callable[[int], object] = os._exit,
    ) -> None:
        self.job = job
        self.parent_gone = parent_gone
        self.data = data
        self.control = control
        self.stop = threading.Event()
        self.busy = threading.Lock()
        self.answers: queue.Queue[datetime | None] = queue.Queue()
        self.guess = KeyGuess()
        self.first = True

    def run(self) -> None:
        threading.Thread(target=self.listen, name="grantex-control", daemon=True).start()
        job, data = self.job, self.data
        error: BaseException | None = None
        try:
            client = make_client(job.options)
            for item in stream_events(
                job.options, self.since_for_connect, self.stop, client=client
            ):
                with self.busy:
                    message = encode(
                        decode_chunk(item, job.preparation, self.guess)
                        if isinstance(item, Chunk)
                        else item
                    )
                    if not data.send(message):
                        break  # the end went out already
        except BaseException as exc:  # handed to the parent, which decides
            error = exc
        with contextlib.suppress(OSError):
            data.finish(encode(ReaderDone(portable(error))))
            data.close()

    def listen(self) -> None:
        try:
            while True:
                kind, value = self.control.recv()
                if kind == "stop":
                    self.stop.set()
                    with self.busy:
                        self.data.finish(encode(ReaderDone(None)))
                elif kind == "keys":
                    self.guess.correct(*value)
                else:
                    self.answers.put(value)
        except (EOFError, OSError):
            # The ingest process is gone: nothing here is worth keeping.
            self.parent_gone(0)

    def since_for_connect(self) -> datetime | None:
        if self.first:
            self.first = False
            return self.job.initial_since
        if not self.data.send(encode(NeedSince())):
            return None
        return answer_or_stop(self.answers, self.stop)


if __name__ == "__main__":
    child_main(int(sys.argv[1]), int(sys.argv[2]))
