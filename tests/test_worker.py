"""The worker's loop in simulated time: scripted stream items, a manual clock, a recording store.

:class:`Timeline` stands in for the reader's queue. It hands the worker
each scripted item at its time, moving the :class:`~ingest.clock.ManualClock`
forward instead of waiting, so idleness, runtime, flush and progress rules
play out in milliseconds through the real dispatcher. The database retries
wait on the same clock.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import signal
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any, cast

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.batch_writer import Batch, BatchWriter
from ingest.clock import ManualClock
from ingest.events import Event, normalise
from ingest.handover import Handover, HoldLimits
from ingest.locks import HandoverLink
from ingest.reader import NeedSince, Normalised, QueueItem, ReaderDone
from ingest.retry import STOP_GRACE
from ingest.runner import open_with_retry
from ingest.settings import IngestSettings, Secret
from ingest.store import BatchResult, ConnectionShare, Received, SchemaBehind, Store, StoreError
from ingest.store_runs import WAITING_REASON
from ingest.stream import AuthenticationError, Closed, Failed, Opened, Requested, StreamItem
from ingest.timers import POLL, RunLimits, RunTimers
from ingest.worker import RunResult, Worker, handle_signals

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
"""Events are dated T0 plus their number in seconds; the run starts an hour later."""
LIMIT = 3600.0  # simulated seconds after which a test has gone wrong

Action = Callable[[], None]


class Timeline(queue.Queue[QueueItem]):
    """The reader's queue, played from a script of ``(seconds, item or action)``.

    An action (e.g. a stop request) runs at its time and ends that wait;
    items are handed over in order once their time has come.
    """

    def __init__(self, clock: ManualClock, script: list[tuple[float, QueueItem | Action]]) -> None:
        super().__init__()
        self.clock = clock
        self.script = deque(script)

    def empty(self) -> bool:
        return not (self.script and self.script[0][0] <= self.clock.monotonic())

    def get(self, block: bool = True, timeout: float | None = None) -> QueueItem:
        now = self.clock.monotonic()
        assert now < LIMIT, "the run did not end"
        horizon = now + (timeout or 0.0) if block else now
        if self.script and self.script[0][0] <= horizon:
            at, entry = self.script.popleft()
            if at > now:
                self.clock.advance(at - now)
            if isinstance(
                entry, (Normalised, Requested, Opened, Closed, Failed, NeedSince, ReaderDone)
            ):
                return entry
            entry()
            raise queue.Empty
        self.clock.advance(horizon - now)
        raise queue.Empty


class RecordingStore:
    """Just enough of :class:`~ingest.store.Store`, noting when each call happened."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, str, Any]] = []
        self.events: list[str] = []
        self.newest: datetime | None = None
        self.fail_writes: BaseException | None = None
        self.shares: list[ConnectionShare] = []
        self.rows = 0  # connection rows written

    def note(self, name: str, value: Any = None) -> None:
        self.calls.append((self.clock.monotonic(), name, value))

    def times(self, name: str) -> list[float]:
        return [round(at, 3) for at, called, _ in self.calls if called == name]

    def newest_occurred_at(self, source: str, types: Any = ()) -> datetime | None:
        return self.newest

    def start_run(self, *args: Any) -> int:
        self.note("start_run")
        return 1

    def update_run(self, run_id: int, **values: Any) -> None:
        self.note("update_run", values)

    def record_progress(
        self, run_id: int, values: dict[str, Any], conn_id: int | None, seen_at: datetime
    ) -> None:
        self.note("record_progress", (conn_id, seen_at))

    def request_connection(self, run_id: int, requested_at: datetime, since: Any) -> int:
        self.rows += 1
        self.note("request_connection", self.rows)
        return self.rows

    def open_connection(self, *args: Any) -> int:
        self.note("open_connection", args[1:3])
        request_id: int | None = args[5] if len(args) > 5 else None
        if request_id is not None:
            self.note("completed", request_id)
            return request_id
        self.rows += 1
        return self.rows

    def close_connection(self, conn_id: int, at: datetime, reason: str) -> None:
        self.note("close_connection", (conn_id, reason))

    def record_attempt(self, *args: Any) -> None:
        self.note("record_attempt", args[5])
        if len(args) > 7 and args[7] is not None:
            self.note("completed", args[7])

    prepares_rows = False

    def write_batch(
        self,
        source: str,
        run_id: int | None,
        batch: list[Received],
        connections: list[ConnectionShare],
        rows: Any = (),
        digests: bytes = b"",
        first_key: int | None = None,
        lines: Any = (),
    ) -> BatchResult:
        assert not rows and not digests, "the worker sent rows to a store that does not take them"
        if self.fail_writes is not None:
            raise self.fail_writes
        self.shares += connections
        events = [r.item for r in batch if isinstance(r.item, Event)]
        self.events += [e.id for e in events]
        self.newest = max([e.occurred_at for e in events], default=self.newest)
        return BatchResult(inserted=len(events))


def quiet_stream(
    _options: Any, _since: Any, stop: threading.Event, client: Any = None
) -> Iterator[StreamItem]:
    """The reader's stream while the timeline plays: nothing, until the run ends."""
    stop.wait()
    return iter(())


def settings(tmp_path: Path, **values: Any) -> IngestSettings:
    return IngestSettings(
        db_url=f"sqlite:///{tmp_path / 'unused.db'}",
        base_url="http://grantex.test",
        api_key=Secret("gx_test_key"),
        **values,
    )


def make_worker(tmp_path: Path, **values: Any) -> tuple[Worker, RecordingStore, ManualClock]:
    clock = ManualClock(start=T0 + timedelta(hours=1))
    store = RecordingStore(clock)
    worker = Worker(
        settings(tmp_path, **values), cast(Store, store), stream=quiet_stream, clock=clock
    )
    # Batches are committed on the writer's own thread, at no fixed simulated
    # time: what the loop decides is when a batch is handed over.
    submit = worker._writer.submit

    def noting(batch: Batch) -> None:
        store.note("flush", len(batch.entries))
        submit(batch)

    worker._writer.submit = noting  # type: ignore[method-assign]
    return worker, store, clock


def simulate(
    tmp_path: Path, script: list[tuple[float, QueueItem | Action]], **values: Any
) -> tuple[RunResult, RecordingStore, ManualClock]:
    worker, store, clock = make_worker(tmp_path, **values)
    worker._reader.queue = Timeline(clock, script)
    return worker.run(), store, clock


def chunk(*numbers: int) -> Normalised:
    items = [
        normalise(
            json.dumps(
                {
                    "id": f"evt_{n}",
                    "type": "grant.created",
                    "createdAt": (T0 + timedelta(seconds=n)).isoformat(),
                    "data": {},
                }
            )
        )
        for n in numbers
    ]
    return Normalised(items, T0)


def opened() -> Opened:
    return Opened(None, 200, T0, T0)


def failed(retry_in: float = 1.0) -> Failed:
    return Failed("HTTP 503", 503, None, T0, T0, T0, retry_in)


# -- the rules of the loop, through the real dispatcher -----------------------------------


def test_until_idle_ends_the_run_once_caught_up(tmp_path: Path) -> None:
    result, store, clock = simulate(tmp_path, [(0.0, opened()), (0.0, chunk(1, 2))], until_idle=1.0)
    assert result.outcome == "idle"
    assert clock.monotonic() == pytest.approx(1.0)
    assert store.events == ["evt_1", "evt_2"]


def test_the_idle_clock_does_not_run_while_backing_off(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, failed()),
        (1.0, failed()),
        (2.0, opened()),
        (2.0, chunk(1)),
    ]
    result, store, clock = simulate(tmp_path, script, until_idle=0.5, max_runtime=20.0)
    assert result.outcome == "idle"
    assert clock.monotonic() == pytest.approx(2.5)
    assert store.events == ["evt_1"]
    assert store.times("record_attempt") == [0.0, 1.0]
    assert result.counts.reconnects == 2


def test_the_idle_clock_waits_for_a_frame_still_arriving(tmp_path: Path) -> None:
    pieces: list[tuple[float, QueueItem | Action]] = [
        (0.25 * n, Normalised([], T0)) for n in range(1, 13)
    ]
    script = [(0.0, opened()), *pieces, (3.25, chunk(1))]
    result, store, clock = simulate(tmp_path, script, until_idle=1.0)
    assert result.outcome == "idle"
    assert clock.monotonic() == pytest.approx(4.25)
    assert store.events == ["evt_1"]


def test_the_idle_clock_stops_when_the_connection_closes(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, opened()),
        (0.0, chunk(1)),
        (0.5, Closed("end of stream", 1, T0)),
    ]
    result, store, clock = simulate(tmp_path, script, until_idle=1.0, max_runtime=30.0)
    assert result.outcome == "max_runtime"
    assert clock.monotonic() == pytest.approx(30.0)
    # The close committed the batch before the connection's record.
    names = [name for _, name, _ in store.calls]
    assert names.index("flush") < names.index("close_connection")
    assert store.calls[names.index("close_connection")][2] == (1, "end of stream")
    assert [(s.connection_id, s.events) for s in store.shares] == [(1, 1)]


def test_max_runtime_ends_a_connected_run(tmp_path: Path) -> None:
    result, store, clock = simulate(
        tmp_path, [(0.0, opened()), (0.1, chunk(1))], until_idle=5.0, max_runtime=2.0
    )
    assert (result.outcome, result.error) == ("max_runtime", None)
    assert clock.monotonic() == pytest.approx(2.0)
    assert store.events == ["evt_1"]


def test_a_run_that_never_connects_is_unreachable_at_max_runtime(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [(0.3 * n, failed(0.3)) for n in range(20)]
    result, store, clock = simulate(tmp_path, script, until_idle=1.0, max_runtime=2.0)
    assert result.outcome == "unreachable"
    assert result.error == "the service could not be reached in 2s"
    assert clock.monotonic() == pytest.approx(2.0)
    assert len(store.times("record_attempt")) == 7


def test_a_partial_batch_is_flushed_at_the_interval(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [(0.0, opened()), (0.1, chunk(1, 2, 3))]
    result, store, _ = simulate(tmp_path, script, flush_interval=1.0, max_runtime=3.0)
    assert store.times("flush") == [1.0]
    assert result.counts.inserted == 3


def test_a_full_batch_is_flushed_at_once_and_restarts_the_interval(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, opened()),
        (0.5, chunk(1, 2, 3)),
        (1.2, chunk(4)),
    ]
    _, store, _ = simulate(tmp_path, script, batch_size=2, flush_interval=1.0, max_runtime=3.0)
    assert store.times("flush") == [0.5, 1.5]
    assert [value for _, name, value in store.calls if name == "flush"] == [3, 1]


def test_progress_is_recorded_at_its_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script: list[tuple[float, QueueItem | Action]] = [(0.0, opened()), (0.0, chunk(*range(1, 51)))]
    with caplog.at_level(logging.INFO, logger="grantex_archive.ingest"):
        result, store, _ = simulate(tmp_path, script, progress_interval=10.0, max_runtime=25.0)
    # Two progress records, each marking the open connection alive, then the final one.
    assert store.times("record_progress") == [10.0, 20.0]
    assert [value for _, name, value in store.calls if name == "record_progress"] == [
        (1, T0 + timedelta(hours=1, seconds=10)),
        (1, T0 + timedelta(hours=1, seconds=20)),
    ]
    assert store.times("update_run") == [25.0]
    progress = [r for r in caplog.records if r.getMessage().startswith("progress:")]
    assert len(progress) == 2
    assert "rate=5/s" in progress[0].getMessage() and "rate=0/s" in progress[1].getMessage()
    assert result.outcome == "max_runtime"


def test_max_events_stops_after_exactly_n(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [(0.0, opened()), (0.1, chunk(*range(1, 11)))]
    result, store, clock = simulate(tmp_path, script, max_events=4, max_runtime=30.0)
    assert result.outcome == "max_events"
    assert result.counts.received == 4
    assert store.events == ["evt_1", "evt_2", "evt_3", "evt_4"]
    assert clock.monotonic() == pytest.approx(0.1)


def test_a_stop_commits_the_pending_batch_and_what_was_queued(tmp_path: Path) -> None:
    worker, store, clock = make_worker(tmp_path, flush_interval=600.0)
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, opened()),
        *[(0.01 * n, chunk(n)) for n in range(1, 51)],
        (1.5, worker.stop.set),
        (1.5, chunk(51)),
        (1.5, chunk(52)),
    ]
    worker._reader.queue = Timeline(clock, script)
    worker.stop_reason = "stopped by SIGTERM"
    result = worker.run()
    assert (result.outcome, result.error) == ("interrupted", "stopped by SIGTERM")
    # Nothing was committed before the stop: the batch waits for size or interval.
    assert store.times("flush") == [1.5]
    assert store.events == [f"evt_{n}" for n in range(1, 53)]


def test_a_reconnect_gets_a_resume_point_covering_everything_received(tmp_path: Path) -> None:
    worker, store, clock = make_worker(tmp_path, flush_interval=600.0, overlap=60.0, until_idle=1.0)
    answers: list[datetime | None] = []
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, opened()),
        (0.1, chunk(1, 2)),
        (0.2, Closed("end of stream", 2, T0)),
        (0.2, NeedSince()),
        (0.7, opened()),
    ]
    worker._reader.queue = Timeline(clock, script)
    worker._reader.answer = answers.append  # type: ignore[method-assign,assignment]
    result = worker.run()
    assert result.outcome == "idle"
    assert store.events == ["evt_1", "evt_2"]
    # evt_2 (T0 + 2 s) was committed before the answer: it is the resume point, less the overlap.
    assert answers == [T0 + timedelta(seconds=2) - timedelta(seconds=60)]
    assert result.counts.reconnects == 1


def test_each_connection_is_credited_with_the_events_that_came_over_it(tmp_path: Path) -> None:
    """Each batch says which connection its entries came over, and when the newest arrived.

    Rejected frames show a connection alive but are not events.
    """
    later = Normalised([normalise("{broken"), *chunk(3).items], T0 + timedelta(seconds=9))
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, opened()),
        (0.1, chunk(1, 2)),
        (0.2, Closed("end of stream", 2, T0)),
        (0.3, opened()),
        (0.4, later),
        (0.5, Normalised([normalise("{also broken")], T0 + timedelta(seconds=10))),
    ]
    result, store, _ = simulate(tmp_path, script, flush_interval=600.0, max_runtime=2.0)
    assert result.outcome == "max_runtime"
    # The close hands over the first connection's part; the rest waits.
    assert store.times("flush") == [0.2, 2.0]
    first, second = (value for _, name, value in store.calls if name == "open_connection")
    assert first == second == (T0, T0)
    assert store.shares == [
        ConnectionShare(1, 2, T0),
        ConnectionShare(2, 1, T0 + timedelta(seconds=10)),
    ]


def requested() -> Requested:
    return Requested(None, T0)


def test_each_answer_completes_the_row_of_its_request(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, requested()),
        (0.5, failed()),
        (1.5, requested()),
        (2.0, opened()),
        (2.1, chunk(1, 2)),
    ]
    result, store, _ = simulate(tmp_path, script, flush_interval=0.5, max_runtime=3.0)
    assert result.outcome == "max_runtime"
    names = [(name, value) for _, name, value in store.calls if name != "flush"]
    assert names[1:5] == [
        ("request_connection", 1),
        ("record_attempt", 503),
        ("completed", 1),
        ("request_connection", 2),
    ]
    assert store.times("completed") == [0.5, 2.0]
    # The events are credited to the row the request wrote; the end closes it as run ended.
    assert [(s.connection_id, s.events) for s in store.shares] == [(2, 2)]
    assert ("close_connection", (2, "run ended: max_runtime")) in names


def test_a_request_still_waiting_when_the_run_ends_is_closed_with_its_reason(
    tmp_path: Path,
) -> None:
    """The head may take 30 s; progress does not mark the request alive meanwhile."""
    worker, store, clock = make_worker(tmp_path, progress_interval=1.0, max_runtime=60.0)
    stop = functools.partial(worker.on_signal, signal.SIGTERM, None)
    worker._reader.queue = Timeline(clock, [(0.0, requested()), (2.5, stop)])
    result = worker.run()
    assert (result.outcome, result.error) == ("interrupted", "stopped by SIGTERM")
    assert [v for _, name, v in store.calls if name == "record_progress"] == [
        (None, T0 + timedelta(hours=1, seconds=1)),
        (None, T0 + timedelta(hours=1, seconds=2)),
    ]
    assert [(at, v) for at, name, v in store.calls if name == "close_connection"] == [
        (2.5, (1, WAITING_REASON))
    ]
    assert store.times("open_connection") == store.times("record_attempt") == []


def test_a_batch_keeps_one_share_per_stretch_of_one_connection() -> None:
    batch = Batch()
    at = [T0 + timedelta(seconds=n) for n in range(5)]
    batch.came_over(1, 2, at[0])
    batch.came_over(1, 0, at[1])  # only rejected frames: alive, no events
    batch.came_over(2, 3, at[2])
    batch.came_over(None, 4, at[3])  # no connection recorded: nothing to credit
    batch.came_over(2, 1, at[4])
    assert batch.connections == [ConnectionShare(1, 2, at[1]), ConnectionShare(2, 4, at[4])]


def test_a_fatal_answer_is_recorded_as_an_attempt_and_ends_the_run(tmp_path: Path) -> None:
    refused = Failed('HTTP 401: {"code":"UNAUTHORIZED"}', 401, None, T0, T0, T0, None)
    error = AuthenticationError('the API rejected the credentials (HTTP 401: {"code":...})')
    script: list[tuple[float, QueueItem | Action]] = [(0.0, refused), (0.0, ReaderDone(error))]
    result, store, _ = simulate(tmp_path, script, max_runtime=30.0)
    assert result.outcome == "auth_failed"
    assert store.times("record_attempt") == [0.0]
    assert [v for _, name, v in store.calls if name == "record_attempt"] == [401]
    # No attempt follows it: not a reconnect.
    assert result.counts.reconnects == 0


def test_a_write_the_database_refuses_ends_the_run_as_a_database_error(tmp_path: Path) -> None:
    worker, store, clock = make_worker(tmp_path, until_idle=1.0)
    store.fail_writes = sa.exc.ProgrammingError("INSERT", {}, Exception("no such table: events"))
    worker._reader.queue = Timeline(clock, [(0.0, opened()), (0.0, chunk(1))])
    result = worker.run()
    assert result.outcome == "database_error"
    assert result.error == "database unusable: no such table: events"
    assert clock.sleeps == []


# -- database retries on the run's clock ---------------------------------------------------


def flaky(
    failures: int, error: type[sa.exc.DBAPIError] = sa.exc.OperationalError
) -> Callable[[], str]:
    left = [failures]

    def action() -> str:
        if left[0]:
            left[0] -= 1
            raise error("SELECT 1", {}, Exception("database is locked\nmore detail"))
        return "done"

    return action


def test_operational_errors_are_retried_with_doubling_delays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker, _, clock = make_worker(tmp_path)
    with caplog.at_level(logging.WARNING, logger="grantex_archive.ingest"):
        assert worker._with_db_retry(flaky(4)) == "done"
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0]
    assert "database error, retrying in 0.2s: database is locked" in caplog.text


@pytest.mark.parametrize(
    ("values", "stop", "attempts", "expected_sleeps"),
    [
        # --db-retry-timeout: no attempt starts after it.
        ({"db_retry_timeout": 2.0}, False, None, [0.25, 0.5, 1.0]),
        ({"db_retry_timeout": 60.0}, False, None, [0.25, 0.5, 1.0, 2.0, 4.0] + [5.0] * 10),
        # A stop request leaves STOP_GRACE.
        ({"db_retry_timeout": 60.0}, True, None, [0.25, 0.5, 1.0, 2.0, 4.0]),
        # The end of a run tries a few times only.
        ({"db_retry_timeout": 60.0}, False, 3, [0.25, 0.5]),
    ],
)
def test_database_retries_give_up(
    tmp_path: Path,
    values: dict[str, float],
    stop: bool,
    attempts: int | None,
    expected_sleeps: list[float],
) -> None:
    worker, _, clock = make_worker(tmp_path, **values)
    if stop:
        worker.stop.set()
    with pytest.raises(StoreError, match=r"^database unusable: database is locked$"):
        worker._with_db_retry(flaky(1000), attempts=attempts)
    assert clock.sleeps == expected_sleeps
    assert STOP_GRACE == 10.0


def test_a_stop_during_the_retries_shortens_them(tmp_path: Path) -> None:
    worker, _, clock = make_worker(tmp_path, db_retry_timeout=60.0)

    class StopsAfterTwo(ManualClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if len(self.sleeps) == 2:
                worker.stop.set()

    worker.clock = clock = StopsAfterTwo(start=T0)
    with pytest.raises(StoreError):
        worker._with_db_retry(flaky(1000))
    # Stopped at 0.75 s: 10 s of grace from then.
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0]


def test_errors_retrying_cannot_fix_are_not_retried(tmp_path: Path) -> None:
    worker, _, clock = make_worker(tmp_path)
    with pytest.raises(StoreError, match="database unusable: database is locked"):
        worker._with_db_retry(flaky(1, sa.exc.ProgrammingError))
    assert clock.sleeps == []


def test_a_locked_sqlite_archive_is_retried_until_it_is_free(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url, connect_args={"timeout": 0})
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    worker, _, _ = make_worker(tmp_path)

    class ReleasesTheLock(ManualClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if len(self.sleeps) == 3:
                holder.execute("ROLLBACK")

    worker.clock = clock = ReleasesTheLock(start=T0)

    def insert() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")

    try:
        worker._with_db_retry(insert)
    finally:
        holder.close()
        engine.dispose()
    assert clock.sleeps == [0.25, 0.5, 1.0]
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (1,)


@pytest.mark.parametrize(
    ("failures", "values", "expected_sleeps", "opens"),
    [
        (2, {}, [0.5, 1.0], True),
        (100, {"db_retry_timeout": 10.0}, [0.5, 1.0, 2.0, 4.0], False),
        # --max-runtime bounds it when shorter.
        (100, {"db_retry_timeout": 60.0, "max_runtime": 1.0}, [0.5], False),
    ],
)
def test_opening_the_archive_is_retried(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failures: int,
    values: dict[str, float],
    expected_sleeps: list[float],
    opens: bool,
) -> None:
    left = [failures]
    archive = object()

    def open_archive(url: str) -> object:
        if left[0]:
            left[0] -= 1
            raise StoreError("cannot open the archive: connection refused")
        return archive

    monkeypatch.setattr(migrate, "open_archive", open_archive)
    clock = ManualClock()
    if opens:
        assert open_with_retry(settings(tmp_path, **values), threading.Event(), clock) is archive
    else:
        with pytest.raises(StoreError, match="database unusable: cannot open the archive"):
            open_with_retry(settings(tmp_path, **values), threading.Event(), clock)
    assert clock.sleeps == expected_sleeps


def test_opening_the_archive_ends_on_a_stop_and_on_a_newer_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(url: str) -> object:
        raise StoreError("connection refused")

    monkeypatch.setattr(migrate, "open_archive", refuse)
    stop = threading.Event()

    class StopsWhileWaiting(ManualClock):
        def wait(self, event: threading.Event, seconds: float) -> bool:
            event.set()
            return super().wait(event, seconds)

    assert open_with_retry(settings(tmp_path), stop, StopsWhileWaiting()) is None

    def newer(url: str) -> object:
        raise SchemaBehind("newer than this version")

    monkeypatch.setattr(migrate, "open_archive", newer)
    clock = ManualClock()
    with pytest.raises(SchemaBehind):
        open_with_retry(settings(tmp_path), threading.Event(), clock)
    assert clock.sleeps == []


# -- the writer's grace and the signals ----------------------------------------------------


def test_a_stuck_database_write_is_given_up_when_the_grace_runs_out() -> None:
    release = threading.Event()
    reasons = iter([None, None, "the database did not take the pending batch within 10s"])

    def stuck(batch: Batch) -> None:
        release.wait()

    writer = BatchWriter(stuck, lambda: next(reasons, None))
    try:
        writer.submit(Batch())
        with pytest.raises(StoreError, match="did not take the pending batch"):
            writer.wait()
    finally:
        release.set()
        writer.close(timeout=1.0)


def test_the_writer_gives_up_on_the_runs_timers(tmp_path: Path) -> None:
    worker, _, clock = make_worker(tmp_path)
    assert worker._give_up_reason() is None
    worker._timers = RunTimers(RunLimits(max_runtime=5.0), clock.monotonic())
    worker.stop.set()
    assert worker._give_up_reason() is None
    clock.advance(STOP_GRACE + 0.001)
    reason = worker._give_up_reason()
    assert reason is not None and "within 10s of stopping" in reason


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_the_run_once(signum: signal.Signals) -> None:
    received: list[int] = []

    def handler(number: int, _frame: FrameType | None) -> None:
        received.append(number)

    before = signal.getsignal(signum)
    with handle_signals(handler):
        os.kill(os.getpid(), signum)
        assert received == [signum]
        # A second signal gets the default action (ends the process at once).
        assert signal.getsignal(signum) == signal.SIG_DFL
    assert signal.getsignal(signum) == before


def test_the_worker_records_the_signal_as_the_reason(tmp_path: Path) -> None:
    worker, _, _ = make_worker(tmp_path)
    worker.on_signal(signal.SIGINT, None)
    assert worker.stop.is_set()
    assert worker.stop_reason == "stopped by SIGINT"


# -- hand-over, through the real dispatcher -------------------------------------------------


@dataclass
class Signals:
    """The hand-over signals, set by the script's actions (:meth:`turn_on`)."""

    free: bool = False
    successor: bool = False
    announced: list[bool] = field(default_factory=list)

    def turn_on(self, name: str) -> Action:
        return lambda: setattr(self, name, True)

    def successor_ready(self) -> bool:
        return self.successor

    def announce(self) -> bool:
        self.announced.append(True)
        return True

    def withdraw(self) -> None:
        self.announced.append(False)

    def try_own(self) -> bool:
        return self.free


def simulate_handover(
    tmp_path: Path,
    script: list[tuple[float, QueueItem | Action]],
    signals: Signals,
    owned: bool,
    **values: Any,
) -> tuple[RunResult, RecordingStore, ManualClock]:
    worker, store, clock = make_worker(tmp_path, **values)
    worker._handover = Handover(
        cast(HandoverLink, signals),
        owned,
        HoldLimits(values["wait_lock"], 100_000, 1 << 26) if not owned else None,
        clock.monotonic(),
    )
    worker._reader.queue = Timeline(clock, script)
    return worker.run(), store, clock


def test_a_successor_writes_nothing_until_it_holds_the_lock(tmp_path: Path) -> None:
    signals = Signals()
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, opened()),
        (0.1, chunk(1, 2)),
        (2.0, chunk(3)),
        (3.0, signals.turn_on("free")),
        (4.0, chunk(4)),
    ]
    result, store, _ = simulate_handover(
        tmp_path, script, signals, owned=False, wait_lock=10.0, max_runtime=6.0
    )
    assert result.outcome == "max_runtime"
    assert signals.announced == [True]  # once its connection delivered its first byte
    flushes = store.times("flush")
    assert flushes and min(flushes) >= 3.0  # nothing written before the lock was taken
    assert min(flushes) <= 3.0 + 0.5 + 1.0  # then at the next try and the next flush
    assert store.events == ["evt_1", "evt_2", "evt_3", "evt_4"]


def test_a_successor_gives_up_after_waiting_and_writes_nothing(tmp_path: Path) -> None:
    script: list[tuple[float, QueueItem | Action]] = [(0.0, opened()), (0.1, chunk(1))]
    result, store, clock = simulate_handover(
        tmp_path, script, Signals(), owned=False, wait_lock=2.0, max_runtime=60.0
    )
    assert result.outcome == "locked"
    assert result.error == "another ingest still held the lock after --wait-lock 2s"
    assert clock.monotonic() == pytest.approx(2.0)
    assert store.events == []


def test_the_holder_keeps_reading_then_hands_over_within_ten_seconds(tmp_path: Path) -> None:
    signals = Signals()
    script: list[tuple[float, QueueItem | Action]] = [
        (0.0, opened()),
        (0.5, chunk(1)),
        (3.2, signals.turn_on("successor")),
        (4.0, chunk(2)),  # read during the overlap
    ]
    result, store, clock = simulate_handover(tmp_path, script, signals, owned=True, wait_lock=None)
    assert result.outcome == "handed_over"
    # Seen at the next look (every 0.5 s), ended 2 s later, each at a turn of the loop.
    assert 3.2 + 2.0 <= clock.monotonic() <= 3.2 + 0.5 + 2.0 + 2 * POLL < 3.2 + 10.0
    assert store.events == ["evt_1", "evt_2"]
    ((_, _, values),) = [call for call in store.calls if call[1] == "update_run"]
    assert values["outcome"] == "handed_over"
