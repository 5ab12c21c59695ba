"""The run's timers as tables: facts at times in milliseconds, and what is due then.

Each script is a sequence of ``MS FACT`` steps separated by ``;``:

- ``connect``, ``disconnect``: a connection opened; closed (or an attempt failed)
- ``recv N``: something arrived, N events received in total
- ``block MS``: the loop was blocked behind the database for MS
- ``flushed``: a full batch was flushed
- ``stopping``: a stop was requested (it stays requested)
- ``busy``: items are still queued at the next check
- ``? WHAT``: ``due()`` answers WHAT: ``-`` (nothing), ``flush``, ``progress``,
  ``flush+progress`` or an outcome (the run ends)
- ``wait MS``: the loop may wait MS for the next item
"""

from __future__ import annotations

import pytest

from ingest.timers import POLL, Due, RunLimits, RunTimers, Stop

NO_TIMERS = {"flush_interval": 3600.0, "progress_interval": 3600.0}


def render(due: Due) -> str:
    if due.stop is not None:
        return due.stop.outcome
    parts = [name for name, on in (("flush", due.flush), ("progress", due.progress)) if on]
    return "+".join(parts) or "-"


def play(limits: RunLimits, script: str) -> None:
    timers = RunTimers(limits, 0.0)
    stopping = False
    busy = False
    for step in script.split(";"):
        at_text, fact, *args = step.split()
        now = int(at_text) / 1000
        if fact == "connect":
            timers.connected(now)
        elif fact == "disconnect":
            timers.disconnected()
        elif fact == "recv":
            timers.received(now, int(args[0]))
        elif fact == "block":
            timers.blocked(int(args[0]) / 1000)
        elif fact == "flushed":
            timers.flushed(now)
        elif fact == "stopping":
            stopping = True
        elif fact == "busy":
            busy = True
        elif fact == "?":
            got = render(timers.due(now, stopping, queue_empty=not busy))
            assert got == args[0], f"at {at_text} ms: {got} (expected {args[0]}) in {script!r}"
            busy = False
        elif fact == "wait":
            got_ms = round(timers.wait(now) * 1000, 3)
            assert got_ms == float(args[0]), f"wait at {at_text} ms: {got_ms} in {script!r}"
        else:
            raise AssertionError(f"unknown step {step!r}")


@pytest.mark.parametrize(
    ("limits", "script"),
    [
        # --until-idle: the run ends once a connection was silent that long.
        ({"until_idle": 1.0}, "0 connect; 999 ? -; 1000 ? idle"),
        # Every arrival restarts the idle clock, a frame still arriving too
        # (the count does not change then).
        ({"until_idle": 1.0}, "0 connect; 500 recv 3; 1499 ? -; 1500 ? idle"),
        ({"until_idle": 1.0}, "0 connect; 500 recv 0; 1000 recv 0; 1999 ? -; 2000 ? idle"),
        # The idle clock runs only while connected: not before the first
        # connection, not while backing off after a failure or a drop.
        ({"until_idle": 0.5}, "0 disconnect; 5000 ? -; 5000 connect; 5499 ? -; 5500 ? idle"),
        ({"until_idle": 0.5}, "0 connect; 300 disconnect; 9000 ? -; 9000 connect; 9500 ? idle"),
        ({"until_idle": 0.5}, "0 ? -; 60000 ? -"),
        # Time blocked behind the database is not idle time.
        ({"until_idle": 1.0}, "0 connect; 100 block 300; 1299 ? -; 1300 ? idle"),
        ({"until_idle": 1.0}, "0 block 300; 100 connect; 1100 ? idle"),
        # Nothing is idle while received items are still queued.
        ({"until_idle": 1.0}, "0 connect; 1000 busy; 1000 ? -; 1001 ? idle"),
        # Edge: --until-idle 0 ends as soon as the connection is open and nothing is queued.
        ({"until_idle": 0.0}, "0 ? -; 10 connect; 10 busy; 10 ? -; 10 ? idle"),
        # --max-runtime: the deadline, as "unreachable" when never connected.
        ({"max_runtime": 2.0}, "0 connect; 1999 ? -; 2000 ? max_runtime"),
        ({"max_runtime": 2.0}, "0 disconnect; 1999 ? -; 2000 ? unreachable"),
        ({"max_runtime": 2.0}, "100 connect; 200 disconnect; 2000 ? max_runtime"),
        ({"max_runtime": 0.0}, "0 ? unreachable"),
        # --max-runtime is checked before --until-idle.
        ({"until_idle": 0.5, "max_runtime": 1.0}, "0 connect; 1000 ? max_runtime"),
        ({"until_idle": 0.5, "max_runtime": 1.0}, "0 connect; 800 recv 1; 1000 ? max_runtime"),
        ({"until_idle": 1.0, "max_runtime": 1.0}, "0 connect; 1000 ? max_runtime"),
        # A stop request ends the run, before the deadline and idleness...
        ({"until_idle": 0.1, "max_runtime": 1.0}, "0 connect; 500 stopping; 2000 ? interrupted"),
        # ...but --max-events reached first wins.
        ({"max_events": 5}, "0 connect; 10 recv 5; 10 stopping; 10 ? max_events"),
        # --max-events counts events, not arrivals.
        (
            {"max_events": 5},
            "0 connect; 10 recv 4; 10 ? -; 20 recv 4; 20 ? -; 30 recv 6; 30 ? max_events",
        ),
        ({"max_events": None}, "0 connect; 10 recv 1000000; 10 ? -"),
        ({"max_events": 1}, "0 ? -; 0 recv 1; 0 ? max_events"),
    ],
)
def test_when_the_run_ends(limits: dict[str, object], script: str) -> None:
    play(RunLimits(**{**NO_TIMERS, **limits}), script)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limits", "script"),
    [
        # The partial batch is flushed every --flush-interval, from the start.
        ({"flush_interval": 1.0}, "999 ? -; 1000 ? flush; 1000 ? -; 1999 ? -; 2000 ? flush"),
        # A full batch flushed restarts the interval.
        ({"flush_interval": 1.0}, "600 flushed; 1000 ? -; 1599 ? -; 1600 ? flush"),
        # A late turn flushes once, and the next interval starts from it.
        ({"flush_interval": 1.0}, "3500 ? flush; 3501 ? -; 4499 ? -; 4500 ? flush"),
        # Edge: --flush-interval 0 flushes at every turn.
        ({"flush_interval": 0.0}, "0 ? flush; 0 ? flush; 7 ? flush"),
        # Progress every --progress-interval.
        ({"progress_interval": 10.0}, "9999 ? -; 10000 ? progress; 19999 ? -; 20000 ? progress"),
        # Both in one turn.
        (
            {"flush_interval": 1.0, "progress_interval": 2.0},
            "1000 ? flush; 2000 ? flush+progress; 3000 ? flush; 4000 ? flush+progress",
        ),
        # Nothing else is due once the run must end.
        ({"flush_interval": 1.0, "max_runtime": 1.0}, "0 connect; 1000 ? max_runtime"),
        # Flushing and progress go on while disconnected.
        ({"flush_interval": 1.0, "until_idle": 0.5}, "0 disconnect; 1000 ? flush; 2000 ? flush"),
    ],
)
def test_what_is_due(limits: dict[str, object], script: str) -> None:
    play(RunLimits(**{**NO_TIMERS, **limits}), script)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limits", "script"),
    [
        # Never longer than POLL, so a stop request is seen promptly.
        ({}, f"0 wait {POLL * 1000:g}"),
        # Until the next flush or progress record.
        ({"flush_interval": 1.0}, "900 wait 100; 1000 wait 0"),
        ({"progress_interval": 0.1}, "0 wait 100"),
        # Until the deadline.
        ({"max_runtime": 1.05}, "1000 wait 50"),
        # Until idleness, while connected only.
        ({"until_idle": 0.3}, "0 wait 250; 0 connect; 100 wait 200; 250 disconnect; 250 wait 250"),
        # Never negative.
        ({"flush_interval": 1.0}, "5000 wait 0"),
    ],
)
def test_how_long_the_loop_may_wait(limits: dict[str, object], script: str) -> None:
    play(RunLimits(**{**NO_TIMERS, **limits}), script)  # type: ignore[arg-type]


def test_an_unreachable_run_says_how_long_it_tried() -> None:
    # The deadline counts from the start of the run.
    timers = RunTimers(RunLimits(3600.0, 3600.0, max_runtime=1.5), start=100.0)
    assert timers.due(101.499) == Due()
    assert timers.due(101.5) == Due(Stop("unreachable", "the service could not be reached in 1.5s"))
    timers.connected(101.6)
    assert timers.due(101.6) == Due(Stop("max_runtime"))


@pytest.mark.parametrize(
    ("max_runtime", "steps", "expected"),
    [
        # No limit while running normally.
        (None, [(0, False), (3_600_000, False)], None),
        # A stop request leaves the database STOP_GRACE (10 s), counted from
        # when the stop was first seen.
        (None, [(5000, True), (15000, True)], None),
        (None, [(5000, True), (15001, True)], "within 10s of stopping"),
        (None, [(5000, True), (9000, True), (15001, True)], "within 10s of stopping"),
        # The end of --max-runtime leaves the same grace.
        (2.0, [(12000, False)], None),
        (2.0, [(12001, False)], "before --max-runtime ran out"),
        # Whichever ends first.
        (60.0, [(1000, True), (11001, True)], "within 10s of stopping"),
        (2.0, [(11000, True), (12001, True)], "before --max-runtime ran out"),
    ],
)
def test_how_long_the_database_may_hold_the_end_of_the_run(
    max_runtime: float | None, steps: list[tuple[int, bool]], expected: str | None
) -> None:
    timers = RunTimers(RunLimits(max_runtime=max_runtime), start=0.0)
    reason = None
    for at_ms, stopping in steps:
        reason = timers.give_up_reason(at_ms / 1000, stopping)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason
        assert "did not take the pending batch" in reason
