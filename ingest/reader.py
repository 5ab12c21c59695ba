"""The reading side of the ingest worker: a thread that streams, normalises and hands over.

:class:`StreamReader` runs :func:`~ingest.stream.stream_events` on a thread
of its own, normalises each chunk's frames there and puts them on a bounded
queue for the main thread. A full queue blocks it, and then the socket is
no longer read (backpressure). Before every reconnect but the first it puts
:class:`NeedSince` on the queue and waits for the main thread's
:meth:`~StreamReader.answer`: the resume point, given once everything
received is committed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx

from .events import Event, Rejection
from .frame_rows import frame_rows, normalise_frame
from .key_guess import KeyGuess
from .prepare import PreparedEvents, prepare_rows, sqlite_time
from .resume import latest_plausible
from .settings import IngestSettings
from .stream import (
    Chunk,
    Closed,
    Failed,
    Opened,
    Requested,
    StreamItem,
    StreamOptions,
    make_client,
)

if TYPE_CHECKING:
    from .store import Store

QUEUE_CHUNKS = 64
"""Chunks the reader may be ahead of the main thread."""

GC_THRESHOLDS = (50_000, 20, 100)
"""The collector's thresholds while a run reads and writes: the pipeline allocates many
short-lived tuples and makes no cycles worth chasing, and collecting the youngest
generation less often made decoding and normalising 15-25% faster."""

_POLL = 0.2  # how often a blocked reader looks at the stop request


@dataclass(frozen=True)
class NeedSince:
    """The reader is about to reconnect and waits for the resume point."""


@dataclass(frozen=True)
class Normalised:
    """A chunk's frames, normalised by the reader.

    Normalising there lets it overlap with the database's own work. When asked
    (a :class:`Preparation`), the reader also prepares the events for the
    archive's database (:mod:`ingest.prepare`): ``prepared`` then holds the
    chunk's events as rows, in arrival order, and ``items`` only its
    rejections. Otherwise ``items`` holds every frame's event or rejection, in
    arrival order, and ``prepared`` is None.
    """

    items: list[Event | Rejection]
    received_at: datetime
    prepared: PreparedEvents | None = None


@dataclass(frozen=True)
class Preparation:
    """What the reader prepares for the archive's database (``target``: ``sqlite`` or
    ``postgresql``): rows for ``source`` and ``channel``, their digests when ``digests``
    (the archive seals them; made from the keys a :class:`~ingest.key_guess.KeyGuess`
    guesses), and for PostgreSQL their ``COPY`` lines."""

    source: str
    channel: str = "stream"
    digests: bool = True
    target: str = "sqlite"


def preparation_for(settings: IngestSettings, store: Store) -> Preparation | None:
    """What the reader prepares for the writer (:mod:`ingest.prepare`): each event's row,
    its digest, and for PostgreSQL its ``COPY`` line."""
    if not store.prepares_rows:
        return None
    return Preparation(settings.source, "stream", digests=True, target=store.dialect)


def answer_or_stop(answers: queue.Queue[datetime | None], stop: threading.Event) -> datetime | None:
    """The main thread's answer to :class:`NeedSince`, or None once ``stop`` is set."""
    while not stop.is_set():
        try:
            return answers.get(timeout=_POLL)
        except queue.Empty:
            continue
    return None


class ReaderFailed(Exception):
    """An error of a reader in another process, carried over as its type's name and text."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(kind, text)
        self.kind = kind
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ReaderDone:
    """The reader has ended, on a stop request or with ``error``."""

    error: BaseException | None = None


QueueItem = Normalised | Requested | Opened | Closed | Failed | NeedSince | ReaderDone

StreamFunction = Callable[..., Iterator[StreamItem]]


def stream_options(settings: IngestSettings) -> StreamOptions:
    """The stream reader's part of the ingest settings."""
    return StreamOptions(
        base_url=settings.base_url,
        api_key=settings.api_key,
        types=settings.types,
        read_timeout=settings.read_timeout,
        connect_timeout=settings.connect_timeout,
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
    )


class StreamReader:
    """The reader thread of one run; the main thread reads :attr:`queue`."""

    ends_when_asked = False
    """Asked to stop, the thread ends only once its socket read returns: the worker
    takes what is queued then, without waiting."""

    def __init__(
        self,
        options: StreamOptions,
        stream: StreamFunction,
        stop: threading.Event,
        preparation: Preparation | None = None,
    ) -> None:
        self._options = options
        self._preparation = preparation
        self._stream = stream
        self._stop = stop
        self.queue: queue.Queue[QueueItem] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._answers: queue.Queue[datetime | None] = queue.Queue(maxsize=1)
        self._guess = KeyGuess()
        self._first_connect = True
        self._initial_since: datetime | None = None
        self._client: httpx.Client | None = None
        self._thread: threading.Thread | None = None

    def start(self, initial_since: datetime | None) -> None:
        """Start reading; the first connection asks for ``initial_since``."""
        self._initial_since = initial_since
        self._thread = threading.Thread(target=self._read, name="grantex-stream", daemon=True)
        self._thread.start()

    def answer(self, since: datetime | None) -> None:
        """The resume point the reader asked for with :class:`NeedSince`."""
        self._answers.put(since)

    def correct_keys(self, row: int, key: int) -> None:
        """The writer's word: the row numbered ``row`` takes the key ``key``
        (:meth:`~ingest.key_guess.KeyGuess.correct`)."""
        self._guess.correct(row, key)

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the thread; close the HTTP client if it has ended.

        The thread is a daemon that touches no database: one blocked in a
        socket read ends when the read returns, and must not delay the
        process's exit.
        """
        if self._thread is None:
            return
        self._thread.join(timeout=timeout)
        if self._client is not None and not self._thread.is_alive():
            self._client.close()

    def _since_for_connect(self) -> datetime | None:
        if self._first_connect:
            self._first_connect = False
            return self._initial_since
        self._put(NeedSince())
        return answer_or_stop(self._answers, self._stop)

    def _put(self, item: QueueItem) -> None:
        put_until_stopped(self.queue, item, self._stop)

    def _read(self) -> None:
        error: BaseException | None = None
        try:
            self._client = make_client(self._options)
            for item in self._stream(
                self._options, self._since_for_connect, self._stop, client=self._client
            ):
                if isinstance(item, Chunk):
                    self._put(decode_chunk(item, self._preparation, self._guess))
                else:
                    self._put(item)
        except BaseException as exc:  # handed to the main thread, which decides
            error = exc
        finally:
            self._put(ReaderDone(error))


def put_until_stopped(
    items: queue.Queue[QueueItem], item: QueueItem, stop: threading.Event
) -> None:
    """Put ``item`` on the queue, blocking while the main thread is behind (backpressure),
    but never past a stop request."""
    while True:
        try:
            items.put(item, timeout=_POLL)
            return
        except queue.Full:
            if stop.is_set():
                return


def decode_chunk(
    chunk: Chunk, preparation: Preparation | None, guess: KeyGuess | None = None
) -> Normalised:
    """A chunk's frames normalised, and its events prepared for the database when asked,
    numbered and with their digests by ``guess`` when it knows their keys."""
    if preparation is None:
        return Normalised([normalise_frame(frame) for frame in chunk.frames], chunk.received_at)
    received_at = chunk.received_at
    rows, times, rejections = frame_rows(chunk.frames, preparation.source, sqlite_time(received_at))
    first_row, first_key = guess.take(len(rows)) if guess is not None else (0, None)
    prepared = prepare_rows(
        rows,
        times,
        preparation.channel,
        latest_plausible(received_at),
        first_key=first_key if preparation.digests else None,
        target=preparation.target,
        first_row=first_row,
    )
    return Normalised(list[Event | Rejection](rejections), received_at, prepared)
