"""Hand-over between ingest runs (``ingest --wait-lock``): the rules in milliseconds, the
lock signals on SQLite and PostgreSQL, and overlapping cron-style runs of the real CLI
against a stream that, like the live service, replays nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest.batch_writer import Batch
from ingest.events import normalise
from ingest.handover import (
    CHECK_INTERVAL,
    HANDOVER_WITHIN,
    OVERLAP,
    Handover,
    HolderWatch,
    HoldLimits,
    Succession,
    batch_size,
)
from ingest.locks import HandoverLink, LockHeld, handover_link
from ingest.runner import run_ingest
from ingest.settings import IngestSettings, Secret
from ingest.store import Received, Store
from ingest.timers import Stop
from tests.broadcast_server import BroadcastServer
from tests.conftest import API_KEY, _fresh_schema, _pg_available, invoke, rows, spawn
from tests.scripted_server import Reply, ScriptedServer, frame

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file or a PostgreSQL schema; PostgreSQL unreachable fails the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'archive.db'}"
        return
    from tests.conftest import PG_URL

    problem = _pg_available()
    if problem is not None:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {problem}")
    with _fresh_schema(PG_URL) as schema_url:
        yield schema_url


# -- the rules, as pure state machines -----------------------------------------------------


def test_a_successor_tries_the_lock_every_check_interval_until_its_wait_runs_out() -> None:
    succession = Succession(HoldLimits(wait=2.0, events=10, bytes=1000), start=0.0)
    tries = [ms for ms in range(0, 2000, 50) if succession.try_due(ms / 1000)]
    assert tries == [int(CHECK_INTERVAL * 1000) * k for k in range(4)]
    assert succession.give_up(1.999) is None
    stop = succession.give_up(2.0)
    assert stop is not None and stop.outcome == "locked"
    assert stop.error == "another ingest still held the lock after --wait-lock 2s"
    # A successor whose own stream never became live could not have been handed over to.
    quiet = succession.give_up(2.0, connected=False)
    assert quiet is not None and quiet.outcome == "locked"
    assert quiet.error is not None and "this run's stream delivered no byte" in quiet.error
    assert "use a --wait-lock of 60 s or more" in quiet.error


@pytest.mark.parametrize(
    ("held", "gives_up"),
    [([(10, 1000)], False), ([(10, 1000), (1, 0)], True), ([(1, 1001)], True)],
)
def test_a_successor_gives_up_past_its_limit_in_events_or_bytes(
    held: list[tuple[int, int]], gives_up: bool
) -> None:
    succession = Succession(HoldLimits(wait=60.0, events=10, bytes=1000), start=0.0)
    for events, size in held:
        succession.held(events, size)
    stop = succession.give_up(0.001)
    assert (stop is not None) is gives_up
    if stop is not None:
        assert stop.outcome == "locked"
        assert "over the limit of 10 events or 1000 bytes" in (stop.error or "")


def test_the_holder_looks_for_a_successor_and_ends_after_the_overlap() -> None:
    watch = HolderWatch(start=0.0)
    looks = [ms for ms in range(0, 1200, 100) if watch.check_due(ms / 1000)]
    assert looks == [0, 500, 1000]
    assert watch.stop(1.1) is None
    watch.successor_seen(1.1)
    watch.successor_seen(1.6)  # the first sighting counts
    assert not watch.check_due(1.6)  # no more looks once seen
    assert watch.stop(1.1 + OVERLAP - 0.001) is None
    assert watch.stop(1.1 + OVERLAP) == Stop("handed_over")
    # Seen at most one check interval late, it still ends well within the promise.
    assert CHECK_INTERVAL + OVERLAP < HANDOVER_WITHIN / 2


def test_a_batch_is_counted_in_events_and_frame_bytes() -> None:
    event = normalise(frame_text("evt_1"))
    rejection = normalise("not json")
    batch = Batch([Received(event, NOW), Received(rejection, NOW)])  # type: ignore[arg-type]
    assert batch_size(batch) == (1, len(event.payload) + len("not json"))  # type: ignore[union-attr]


class FakeLink:
    """The hand-over signals in memory: the lock is free once ``free`` is set."""

    def __init__(self) -> None:
        self.free = False
        self.ready_elsewhere = False
        self.announced = 0
        self.refuse_announce = 0

    def successor_ready(self) -> bool:
        return self.ready_elsewhere

    def announce(self) -> bool:
        if self.refuse_announce:
            self.refuse_announce -= 1
            return False
        self.announced += 1
        return True

    def try_own(self) -> bool:
        return self.free

    def withdraw(self) -> None:
        self.announced -= 1


def test_a_successor_holds_batches_until_it_takes_the_lock_then_releases_them() -> None:
    link = FakeLink()
    link.refuse_announce = 1  # the holder's probe had the signal for an instant
    handover = Handover(link, owned=False, limits=HoldLimits(5.0, 100, 10**6), start=0.0)  # type: ignore[arg-type]
    handover.connected()
    assert link.announced == 0
    first = Batch([Received(normalise(frame_text("evt_1")), NOW)])  # type: ignore[arg-type]
    handover.hold(first)
    assert handover.release() == []  # not owned yet
    assert handover.turn(0.0) is None
    assert link.announced == 1  # announced again on the next turn
    link.free = True
    assert handover.turn(0.1) is None  # not due before the check interval
    assert not handover.owned
    assert handover.turn(CHECK_INTERVAL) is None
    assert handover.owned
    assert handover.release() == [first]
    assert handover.release() == []


def test_an_owner_hands_over_once_a_successor_is_ready() -> None:
    link = FakeLink()
    handover = Handover(link, owned=True, limits=None, start=0.0)  # type: ignore[arg-type]
    assert handover.turn(0.0) is None
    link.ready_elsewhere = True
    assert handover.turn(0.2) is None  # looked at 0.0; next look at 0.5
    assert handover.turn(0.5) is None  # seen now
    assert handover.turn(0.5 + OVERLAP) == Stop("handed_over")


def test_an_owner_carries_on_when_the_successor_it_saw_goes_away() -> None:
    link = FakeLink()
    handover = Handover(link, owned=True, limits=None, start=0.0)  # type: ignore[arg-type]
    link.ready_elsewhere = True
    assert handover.turn(0.0) is None  # seen
    link.ready_elsewhere = False  # killed during the overlap
    assert handover.turn(OVERLAP) is None  # looked again before ending: no hand-over
    assert handover.turn(OVERLAP + 0.1) is None  # looks as before: nobody
    link.ready_elsewhere = True  # the next one
    seen = OVERLAP + 0.1 + CHECK_INTERVAL
    assert handover.turn(seen) is None
    assert handover.turn(seen + OVERLAP - 0.01) is None
    assert handover.turn(seen + OVERLAP) == Stop("handed_over")


def test_a_successor_whose_stream_drops_is_not_ready_until_it_reconnects() -> None:
    link = FakeLink()
    handover = Handover(link, owned=False, limits=HoldLimits(60.0, 100, 10**6), start=0.0)  # type: ignore[arg-type]
    handover.connected()
    assert link.announced == 1
    handover.disconnected()
    assert link.announced == 0
    assert handover.turn(0.0) is None
    assert link.announced == 0  # not announced again while disconnected
    handover.connected()
    assert link.announced == 1


def test_the_lock_signals_failing_mean_no_hand_over() -> None:
    class Broken(FakeLink):
        def successor_ready(self) -> bool:
            raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    handover = Handover(Broken(), owned=True, limits=None, start=0.0)  # type: ignore[arg-type]
    assert handover.turn(0.0) is None
    assert handover.turn(10.0) is None


def frame_text(event_id: str) -> str:
    return json.dumps(
        {
            "id": event_id,
            "type": "grant.created",
            "createdAt": "2026-12-01T12:00:00.000Z",
            "data": {"grantId": "grnt_1", "agentId": "ag_1", "principalId": "user_1"},
        }
    )


# -- the lock signals, on SQLite and PostgreSQL ----------------------------------------------


def links(url: str) -> tuple[Store, HandoverLink, HandoverLink, HandoverLink]:
    """The store and three runs' views of the hand-over signals (holder, two successors)."""
    from ingest import migrate

    migrate.upgrade(url)
    store = Store.open(url)
    made = [handover_link(store.engine, "default", lambda: store.lock("default")) for _ in range(3)]
    assert all(link is not None for link in made)
    return store, made[0], made[1], made[2]  # type: ignore[return-value]


def test_one_successor_at_a_time_and_the_holder_sees_it_ready(url: str) -> None:
    store, holder, successor, third = links(url)
    try:
        with store.lock("default"):
            assert not holder.successor_ready()
            successor.queue_up()
            with pytest.raises(LockHeld, match="already waiting to take over"):
                third.queue_up()
            assert not holder.successor_ready()  # queued, but its stream is not live yet
            assert successor.announce()
            assert holder.successor_ready()
            assert holder.successor_ready()  # probing does not take the signal away
            assert not successor.try_own()  # the holder still has the lock
        assert successor.try_own()
        assert not holder.successor_ready()  # an owner signals nothing
        third.queue_up()  # the next run may queue up behind the new owner
        with pytest.raises(LockHeld), store.lock("default"):
            pass
    finally:
        for link in (holder, successor, third):
            link.close()
        store.close()


def test_a_killed_successor_leaves_no_signal_behind(url: str) -> None:
    store, holder, _, third = links(url)
    code = (
        "import sys, time\n"
        "from ingest.store import Store\n"
        "from ingest.locks import handover_link\n"
        "store = Store.open(sys.argv[1])\n"
        "link = handover_link(store.engine, 'default', lambda: store.lock('default'))\n"
        "link.queue_up(); assert link.announce()\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert holder.successor_ready()
        with pytest.raises(LockHeld):
            third.queue_up()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        deadline = time.monotonic() + 5  # PostgreSQL notices the dead session
        while holder.successor_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not holder.successor_ready()
        third.queue_up()
    finally:
        child.kill()
        child.wait()
        holder.close()
        third.close()
        store.close()


# -- a successor that gives up ---------------------------------------------------------------


def settings(url: str, base_url: str, **kw: object) -> IngestSettings:
    values: dict[str, object] = {"read_timeout": 5.0, "max_runtime": 20.0}
    values.update(kw)
    return IngestSettings(db_url=url, base_url=base_url, api_key=Secret(API_KEY), **values)  # type: ignore[arg-type]


def test_a_successor_that_keeps_too_much_gives_up_and_says_so(url: str) -> None:
    body = b"".join(frame(frame_text(f"evt_{n}")) for n in range(20))
    from ingest import migrate

    migrate.upgrade(url)
    store = Store.open(url)
    try:
        with store.lock("default"), ScriptedServer([Reply(chunks=[body], hold=10)]) as server:
            result = run_ingest(
                settings(url, server.base_url, wait_lock=30.0, hold_events=5), {"locked": 75}
            )
        assert result.outcome == "locked"
        assert "over the limit of 5 events" in (result.error or "")
        assert rows(url, "SELECT count(*) FROM events") == [(0,)]
        assert rows(url, "SELECT outcome, exit_code FROM ingest_runs") == [("locked", 75)]
    finally:
        store.close()


def test_the_cli_exits_75_when_the_lock_is_not_freed_in_time(url: str) -> None:
    from ingest import migrate

    migrate.upgrade(url)
    store = Store.open(url)
    try:
        with store.lock("default"), ScriptedServer([], Reply(hold=10, keepalive=0.2)) as server:
            started = time.monotonic()
            out = invoke(["ingest", "--db", url, "--base-url", server.base_url, "--wait-lock", "1"])
            took = time.monotonic() - started
        assert out.exit_code == 75, out.output
        assert "another ingest still held the lock after --wait-lock 1s" in out.output
        assert "--wait-lock 1s is short" in out.output  # warned at the start
        assert 1.0 <= took < 8
        # Without --wait-lock a held lock still ends the run at once.
        with store.lock("default"):
            out = invoke(["ingest", "--db", url, "--base-url", server.base_url])
        assert out.exit_code == 75, out.output
    finally:
        store.close()


# -- overlapping cron-style runs against a stream that replays nothing ------------------------


def test_overlapping_cron_runs_hand_over_without_losing_an_event(url: str, tmp_path: Path) -> None:
    """Three runs of the cron line, each started while the previous one reads: every
    event emitted once the first run connected is stored once, every run exits 0,
    and ingest-coverage finds no gap up to the moment the stream stopped."""
    from ingest import migrate

    migrate.upgrade(url)
    with BroadcastServer(interval=0.02) as server:
        command = ["ingest", "--db", url, "--base-url", server.base_url,
                   "--max-runtime", "14", "--wait-lock", "8", "--flush-interval", "0.2"]  # fmt: skip
        runs = []
        for _ in range(3):
            runs.append(spawn(command))
            time.sleep(5.0)  # time for the previous hand-over, on a loaded machine too
        server.stop_emitting()
        until = datetime.now(timezone.utc)
        emitted = list(server.emitted)
        results = [run.communicate(timeout=30) for run in runs]
        # Read once every run has ended: on a loaded machine the last may connect late.
        requests = server.requests
    codes = [run.returncode for run in runs]
    assert codes == [0, 0, 0], [err[-2000:] for _, err in results]
    first_heard = next(i for i, (_, listeners) in enumerate(emitted) if listeners)
    expected = [event_id for event_id, _ in emitted[first_heard:]]
    stored = [r[0] for r in rows(url, "SELECT id FROM events ORDER BY id")]
    assert len(expected) > 100
    assert stored == expected  # every one, once, nothing missing
    assert not [e for e, listeners in emitted[first_heard:] if listeners == 0]
    assert requests == 3  # one connection per run: two streams at most, briefly
    runs_rows = rows(url, "SELECT outcome, exit_code FROM ingest_runs ORDER BY id")
    assert sorted(runs_rows) == [("handed_over", 0), ("handed_over", 0), ("max_runtime", 0)]
    handovers = rows(
        url, "SELECT r.finished_at, c.requested_at, c.first_byte_at FROM ingest_runs r "
        "JOIN ingest_runs n ON n.id = r.id + 1 JOIN ingest_connections c ON c.run_id = n.id "
        "ORDER BY r.id"
    )  # fmt: skip
    assert len(handovers) == 2
    for finished, requested, first_byte in (map(as_time, row) for row in handovers):
        # The successor connected before the holder ended, which it did within 10 s.
        assert requested < finished < first_byte + timedelta(seconds=HANDOVER_WITHIN)
    out = invoke(
        ["report", "ingest-coverage", "--db", url, "--analytics-dir", str(tmp_path / "copy"),
         "--until", until.isoformat(), "--format", "json"]
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    timeline = json.loads(out.stdout)
    assert [row["kind"] for row in timeline] == ["covered"], timeline


def as_time(value: object) -> datetime:
    """A timestamp column as an aware datetime (SQLite gives text, PostgreSQL datetimes)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def test_a_successor_killed_during_the_overlap_leaves_the_holder_reading(url: str) -> None:
    from ingest import migrate

    migrate.upgrade(url)
    with BroadcastServer(interval=0.02) as server:
        command = ["ingest", "--db", url, "--base-url", server.base_url, "--max-runtime", "30",
                   "--flush-interval", "0.2"]  # fmt: skip
        holder = spawn(command)
        lines: list[str] = []
        connected, seen = threading.Event(), threading.Event()

        def follow() -> None:
            assert holder.stderr is not None
            for line in holder.stderr:
                lines.append(line)
                if "connected: since=" in line:
                    connected.set()
                if "a successor is reading the stream" in line:
                    seen.set()

        threading.Thread(target=follow, daemon=True).start()
        assert connected.wait(30), "".join(lines)  # the holder first, however slow its start
        successor = spawn([*command, "--wait-lock", "20"])
        try:
            assert seen.wait(15), "".join(lines)
            successor.send_signal(signal.SIGKILL)  # within the holder's overlap
            successor.wait(timeout=10)
            time.sleep(OVERLAP + 2 * CHECK_INTERVAL)
            assert holder.poll() is None, "".join(lines)
            server.stop_emitting()
            emitted = list(server.emitted)
            time.sleep(0.5)
            holder.send_signal(signal.SIGTERM)
            assert holder.wait(timeout=15) == 0
        finally:
            for process in (holder, successor):
                process.kill()
                process.wait()
    assert any("no longer reading the stream; carrying on" in line for line in lines), lines
    first_heard = next(i for i, (_, listeners) in enumerate(emitted) if listeners)
    stored = [r[0] for r in rows(url, "SELECT id FROM events ORDER BY id")]
    assert stored == [event_id for event_id, _ in emitted[first_heard:]]
    # The killed successor's run stays "running", as any killed run does.
    outcomes = rows(url, "SELECT outcome FROM ingest_runs ORDER BY id")
    assert outcomes == [("interrupted",), ("running",)]
