"""The database side of the ingest worker: a thread that commits one batch at a time."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .key_guess import Guessed
from .store import ConnectionShare, Received, StoreError


@dataclass
class Batch:
    """What the worker hands over in one commit.

    ``entries`` are the events and rejections as received; when the reader
    prepares the events, they come as ``rows`` (with their ``digests``, one
    bytes per chunk, made from the keys ``guessed``, and for PostgreSQL their
    ``COPY`` ``lines``, None where not made, see :mod:`ingest.prepare`) and
    leave only the rejections in ``entries``. ``newest`` is the newest
    plausible event time in it (the resume point once committed);
    ``connections`` which connections its items came over, one share per
    stretch of items from one connection, in arrival order.
    """

    entries: list[Received] = field(default_factory=list)
    newest: datetime | None = None
    connections: list[ConnectionShare] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    guessed: Guessed = field(default_factory=Guessed)
    lines: list[bytes | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries) + len(self.rows)

    def came_over(self, connection_id: int | None, events: int, received_at: datetime) -> None:
        """The entries just added (``events`` of them events) arrived over ``connection_id``."""
        if connection_id is None:
            return
        shares = self.connections
        if shares and shares[-1].connection_id == connection_id:
            events += shares[-1].events
            shares.pop()
        shares.append(ConnectionShare(connection_id, events, received_at))


def committed(commit: Callable[[Batch], None], batch: Batch) -> StoreError | None:
    """Commit ``batch``; the error that stops the writer, if it fails (anything unexpected
    is reported as the database being unusable, not lost)."""
    try:
        commit(batch)
    except StoreError as exc:
        return exc
    except Exception as exc:
        return StoreError(f"database unusable: {type(exc).__name__}: {exc}")
    return None


class BatchWriter:
    """Commits batches on a thread of its own.

    The database does most of its work without the GIL (SQLite inside one
    multi-row statement, PostgreSQL on the other side of a socket), so
    committing one batch while the next is decoded and normalised uses both
    cores. At most one batch waits while another is written: a slow database
    blocks ``submit()``, which stops the reader (backpressure).
    """

    def __init__(
        self,
        commit: Callable[[Batch], None],
        give_up: Callable[[], str | None],
    ) -> None:
        self._commit = commit
        self._give_up = give_up
        self._jobs: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._done = threading.Condition()
        self._pending = 0
        self._error: StoreError | None = None
        self._thread = threading.Thread(target=self._run, name="grantex-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        self.check()
        with self._done:
            self._pending += 1
        while True:
            try:
                self._jobs.put(batch, timeout=0.2)
                return
            except queue.Full:
                self._check_waiting()

    def wait(self) -> None:
        """Until every submitted batch is committed; raises the writer's error."""
        with self._done:
            while self._pending and self._error is None:
                self._done.wait(0.2)
                if self._pending:
                    self._check_waiting()
        self.check()

    def close(self, timeout: float) -> None:
        """Let the thread finish what it holds (up to ``timeout``), then end it."""
        with contextlib.suppress(queue.Full):
            self._jobs.put(None, timeout=0.2)
        # A thread still stuck on the database is a daemon and ends with us.
        self._thread.join(timeout=timeout)

    def _check_waiting(self) -> None:
        self.check()
        reason = self._give_up()
        if reason is not None:
            raise StoreError(reason)
        if not self._thread.is_alive():
            raise StoreError("the database writer stopped unexpectedly")

    def check(self) -> None:
        """Raise the writer's error, if a batch could not be committed."""
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._error is None:
                    self._error = committed(self._commit, job)
            finally:
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()


class InlineWriter:
    """Commits each batch in the thread that submits it: :class:`BatchWriter`'s interface,
    for a run whose reading and decoding happen in another process.

    With the reader in a process of its own (:mod:`ingest.reader_process`), the
    ingest process has little to do besides writing: receiving a chunk and adding
    it to the batch. A writer thread would overlap only that little, and would pay
    for it on every statement: the threads take turns on the GIL, and a thread
    woken for every chunk contends for the core the writer runs on. Written
    inline, the one busy thread of the ingest process is the one that writes,
    while the reader process goes on decoding into the pipe; a slow database
    stops the reading of the pipe, and so the reader (backpressure).
    """

    def __init__(self, commit: Callable[[Batch], None]) -> None:
        self._commit = commit
        self._error: StoreError | None = None

    def submit(self, batch: Batch) -> None:
        self.check()
        self._error = committed(self._commit, batch)
        self.check()

    def wait(self) -> None:
        """Every submitted batch is committed already; raises the writer's error."""
        self.check()

    def close(self, timeout: float) -> None:
        """Nothing to end."""

    def check(self) -> None:
        """Raise the writer's error, if a batch could not be committed."""
        if self._error is not None:
            raise self._error
