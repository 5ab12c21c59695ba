"""The stream reader in a process of its own, so that reading and writing use two cores.

Reading (HTTP, SSE framing, JSON, normalising, preparing SQLite rows and
their digests) is Python work, and so is most of the writer's: in
one process they take turns on one GIL. :class:`ProcessReader` runs the
reading in a child process (:mod:`ingest.reader_child`) and keeps
the interface of :class:`~ingest.reader.StreamReader`: the main thread reads
:attr:`~ProcessReader.queue` and answers :class:`~ingest.reader.NeedSince`.

Two pipes join them. The child sends what it reads on the data pipe (chunks
of prepared rows as ``marshal`` data, anything else pickled:
:mod:`ingest.reader_wire`); the parent's main thread reads it off the pipe
itself (:class:`PipeItems`) and commits each batch inline
(:class:`~ingest.batch_writer.InlineWriter`), so the ingest process has one
busy thread. The child writes through an :class:`~ingest.outbox.Outbox`, so it
goes on reading while the parent is held by a long commit. When the database
falls behind, the pipe and then the outbox fill, the child blocks in its send
and stops reading the socket: the same backpressure as with a reader thread.
The parent sends the job, the resume points, the writer's word on the keys and
the stop request on the control pipe.

Asked to stop, the child sends :class:`~ingest.reader.ReaderDone` after
everything it read before the request, even while its main thread waits in a
socket read; the parent takes all of it (:attr:`ProcessReader.ends_when_asked`).
The child ignores SIGINT and SIGTERM (the parent decides when reading
stops, and flushes first), lives in a session of its own, holds no database
connection, and ends at once when the control pipe closes, so a killed
ingest does not leave a stream connection behind it.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import math
import os
import queue
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

from .reader import (
    Preparation,
    QueueItem,
    ReaderDone,
    ReaderFailed,
)
from .reader_wire import FrameReader, decode
from .stream import StreamOptions

_STOP = ("stop", None)


@dataclass(frozen=True)
class ReaderJob:
    """Everything the child needs, sent on the control pipe (never on its command line)."""

    options: StreamOptions
    initial_since: datetime | None
    preparation: Preparation | None


@dataclass
class ReaderChild:
    """A reader process started before its job (:func:`spawn`), so that it starts Python and
    imports what it reads with while the ingest process opens the archive."""

    proc: subprocess.Popen[bytes]
    data: Connection
    control: Connection
    taken: bool = False
    """Whether a :class:`ProcessReader` took it (and ends it)."""

    def close(self, timeout: float = 1.0) -> None:
        """End the child if no reader took it: it exits when its control pipe closes."""
        if self.taken:
            return
        self.taken = True
        self.control.close()
        self.data.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn() -> ReaderChild:
    """Start a reader process, waiting for its job on the control pipe; OSError if it
    cannot be started."""
    data_read, data_write = os.pipe()
    _widen(data_write)
    control_read, control_write = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest.reader_child", str(data_write), str(control_read)],
            pass_fds=(data_write, control_read),
            stdin=subprocess.DEVNULL,
            env=_child_environment(),
            start_new_session=True,
        )
    except OSError:
        os.close(data_read)
        os.close(control_write)
        raise
    finally:
        os.close(data_write)
        os.close(control_read)
    return ReaderChild(
        proc, Connection(data_read, writable=False), Connection(control_write, readable=False)
    )


class ProcessReader:
    """The reader of one run, in a child process; the main thread reads :attr:`queue`.

    ``child`` is a reader process started already (:func:`spawn`); without one,
    :meth:`start` starts it.
    """

    def __init__(
        self,
        options: StreamOptions,
        stop: threading.Event,
        preparation: Preparation | None = None,
        child: ReaderChild | None = None,
    ) -> None:
        self._options = options
        self._stop = stop
        self._preparation = preparation
        self._child = child
        self.queue = PipeItems(stop, self._send, self._ended_early)
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: Connection | None = None
        self._control_lock = threading.Lock()

    @property
    def ends_when_asked(self) -> bool:
        """Whether the reader's end is still to come: asked to stop, the child sends it
        promptly, after everything it read before the request."""
        return not self.queue.ended

    def start(self, initial_since: datetime | None) -> None:
        """Give the child its job (starting it first if need be); its first connection asks
        for ``initial_since``."""
        child, self._child = self._child, None
        if child is None:
            try:
                child = spawn()
            except OSError as exc:
                text = f"cannot start the stream reader: {exc}"
                self.queue.put(ReaderDone(ReaderFailed(type(exc).__name__, text)))
                return
        child.taken = True
        self._proc, self._control = child.proc, child.control
        self.queue.attach(child.data)
        self._send(ReaderJob(self._options, initial_since, self._preparation))

    def answer(self, since: datetime | None) -> None:
        """The resume point the child asked for with :class:`~ingest.reader.NeedSince`."""
        self._send(("since", since))

    def correct_keys(self, row: int, key: int) -> None:
        """The writer's word: the row numbered ``row`` takes the key ``key``
        (:meth:`~ingest.key_guess.KeyGuess.correct`, in the child)."""
        self._send(("keys", (row, key)))

    def close(self, timeout: float) -> None:
        """End the child: at once, however it is blocked; killed after ``timeout``.

        Whatever the child held is taken by now or given up (the run ended).
        Closing the control pipe ends it even while it waits in a socket read
        or on a full data pipe.
        """
        self._send(_STOP)
        with self._control_lock:
            if self._control is not None:
                self._control.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self.queue.close()

    def _send(self, message: object) -> None:
        with self._control_lock:
            if self._control is None or self._control.closed:
                return
            with contextlib.suppress(OSError):
                self._control.send(message)

    def _ended_early(self, exc: BaseException) -> ReaderFailed:
        code = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(timeout=1.0)
        return ReaderFailed(
            "ReaderExited",
            f"the stream reader process ended unexpectedly (exit status {code}; "
            f"{type(exc).__name__})",
        )


class PipeItems:
    """What the reader process sends, read off the data pipe by the thread that asks for it
    (the worker's main thread), through the interface of the queue a reader thread fills:
    :meth:`get`, :meth:`get_nowait`, :meth:`empty`.

    No thread of the ingest process waits on the pipe for the main thread: one
    would wake for every chunk and take turns with the writer on the GIL. The
    pipe's buffer and the reader's outbox hold the chunks the reader is ahead;
    when both are full, the reader blocks (backpressure). ``send`` carries the stop request to the
    reader once it is set; ``ended_early`` says why the pipe closed before the
    reader said it was done.
    """

    def __init__(
        self,
        stop: threading.Event,
        send: Callable[[object], None],
        ended_early: Callable[[BaseException], ReaderFailed],
    ) -> None:
        self._stop = stop
        self._send = send
        self._ended_early = ended_early
        self._data: Connection | None = None
        self._frames = FrameReader(-1)
        self._poller = select.poll()
        self._pending: collections.deque[QueueItem] = collections.deque()
        self._stop_sent = False
        self._ended = False

    def attach(self, data: Connection) -> None:
        """Read from ``data`` from now on."""
        self._data = data
        self._frames = FrameReader(data.fileno())
        # One poll object for the run, not a selector per look (the loop looks often).
        self._poller.register(data.fileno(), select.POLLIN)

    def put(self, item: QueueItem) -> None:
        """An item of the ingest process's own (the reader could not start), read first."""
        self._pending.append(item)

    def get(self, block: bool = True, timeout: float | None = None) -> QueueItem:
        """The next item; :class:`queue.Empty` when none comes within ``timeout``."""
        if self._pending:
            return self._pending.popleft()
        if self._stop.is_set() and not self._stop_sent:
            self._stop_sent = True
            self._send(_STOP)
        data = self._data
        if data is None or self._ended:
            # Nothing more will come: wait as an empty queue would.
            if block:
                self._stop.wait(timeout)
            raise queue.Empty
        try:
            frames = self._frames
            if not frames.complete() and not self._ready(timeout if block else 0):
                raise queue.Empty
            item = decode(frames.next())
        except (EOFError, OSError) as exc:
            item = ReaderDone(self._ended_early(exc))
        if isinstance(item, ReaderDone):
            self.close()
        return item

    @property
    def ended(self) -> bool:
        """Nothing more will come: the reader's end was read, or the pipe closed."""
        return self._ended and not self._pending

    def get_nowait(self) -> QueueItem:
        return self.get(block=False)

    def empty(self) -> bool:
        if self._pending:
            return False
        if self._data is None or self._ended:
            return True
        try:
            return not self._frames.complete() and not self._ready(0)
        except (EOFError, OSError):
            return False  # the next get reports the end

    def _ready(self, timeout: float | None) -> bool:
        """Whether the pipe has something to read (or its end) within ``timeout`` seconds."""
        return bool(self._poller.poll(None if timeout is None else math.ceil(timeout * 1000)))

    def close(self) -> None:
        """Stop reading: the reader is done, or is being ended."""
        self._ended = True
        if self._data is not None:
            self._data.close()


PIPE_BYTES = 1024 * 1024
"""The data pipe's buffer, where Linux allows it: a chunk's message (a few hundred kB)
then crosses in one write and one read instead of many 64 kB ones, each of which makes
the receiving thread wait for the GIL again."""


def _widen(fd: int) -> None:
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, setsize, PIPE_BYTES)


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this package importable whatever the working directory."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
