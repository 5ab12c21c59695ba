"""The retry policies as tables: delays, deadlines and caps, in milliseconds, without sleeping."""

from __future__ import annotations

import random

import pytest

from ingest.retry import (
    RETRY_AFTER_CAP,
    RETRY_FIELD_CAP,
    STOP_GRACE,
    Backoff,
    Doubling,
    Retry,
    database_retry,
    opening_retry,
    parse_retry_after,
    retry_field_delay,
)


class Extreme(random.Random):
    """Jitter at one end of its range: ``high`` for the longest delays, else the shortest."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@pytest.mark.parametrize(
    ("initial", "cap", "expected_ms"),
    [
        (0.5, 5.0, [500, 1000, 2000, 4000, 5000, 5000]),
        (0.25, 5.0, [250, 500, 1000, 2000, 4000, 5000, 5000]),
        (0.5, 60.0, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]),
        (1.0, 0.5, [500, 500]),
        (0.0, 5.0, [0, 0, 0]),
    ],
)
def test_delays_double_up_to_the_cap(initial: float, cap: float, expected_ms: list[int]) -> None:
    delays = Doubling(initial, cap)
    assert [ms(delays.delay(n)) for n in range(len(expected_ms))] == expected_ms


def test_a_long_outage_does_not_overflow_the_delay() -> None:
    assert Doubling(0.5, 60.0).delay(10_000) == 60.0
    backoff = Backoff(0.5, 60.0, Extreme(high=True))
    backoff.failures = 5000
    assert backoff.next_delay() == 60.0


@pytest.mark.parametrize(
    ("give_up_ms", "attempts", "failures_at_ms", "expected_ms"),
    [
        # Delays 250, 500, 1000... while the next attempt starts before the deadline.
        (10_000, None, [0, 250, 750, 1750, 3750], [250, 500, 1000, 2000, 4000]),
        # The attempt that would start after the deadline is not made.
        (10_000, None, [0, 250, 750, 1750, 3750, 7750], [250, 500, 1000, 2000, 4000, None]),
        # Starting exactly at the deadline is still allowed.
        (1000, None, [0, 500], [250, 500]),
        (1000, None, [0, 501], [250, None]),
        # A deadline already passed: no retry at all.
        (0, None, [1], [None]),
        # At most N attempts in all (N - 1 retries).
        (60_000, 3, [0, 250, 750], [250, 500, None]),
        (60_000, 1, [0], [None]),
    ],
)
def test_database_retries_end_at_the_deadline_or_the_attempts(
    give_up_ms: int,
    attempts: int | None,
    failures_at_ms: list[int],
    expected_ms: list[float | None],
) -> None:
    retry = Retry(Doubling(0.25, 5.0), give_up_ms / 1000, attempts)
    got = [ms(retry.after_failure(at / 1000)) for at in failures_at_ms]
    assert got == expected_ms


def test_a_stop_brings_the_deadline_forward_never_back() -> None:
    retry = Retry(Doubling(0.25, 5.0), 60.0)
    retry.stop_by(2.0)
    assert retry.give_up == 2.0
    retry.stop_by(30.0)
    assert retry.give_up == 2.0


@pytest.mark.parametrize(
    ("now", "timeout", "runtime_deadline", "stopping", "expected_give_up"),
    [
        # --db-retry-timeout from now.
        (100.0, 60.0, None, False, 160.0),
        # The end of --max-runtime bounds it...
        (100.0, 60.0, 130.0, False, 130.0),
        # ...leaving at least a second once it has passed.
        (100.0, 60.0, 90.0, False, 101.0),
        (100.0, 60.0, 100.5, False, 101.0),
        # A timeout shorter than the runtime left wins.
        (100.0, 5.0, 130.0, False, 105.0),
        # Stopping leaves STOP_GRACE.
        (100.0, 60.0, None, True, 100.0 + STOP_GRACE),
        (100.0, 5.0, None, True, 105.0),
        (100.0, 60.0, 103.0, True, 103.0),
    ],
)
def test_the_deadline_of_a_database_action_during_a_run(
    now: float,
    timeout: float,
    runtime_deadline: float | None,
    stopping: bool,
    expected_give_up: float,
) -> None:
    retry = database_retry(now, timeout, runtime_deadline=runtime_deadline, stopping=stopping)
    assert retry.give_up == expected_give_up
    assert retry.delays == Doubling(0.25, 5.0)


@pytest.mark.parametrize(
    ("timeout", "max_runtime", "expected_give_up"),
    [(60.0, None, 160.0), (60.0, 2.0, 102.0), (1.0, 30.0, 101.0), (60.0, 0.0, 100.0)],
)
def test_the_deadline_of_opening_the_archive(
    timeout: float, max_runtime: float | None, expected_give_up: float
) -> None:
    retry = opening_retry(100.0, timeout, max_runtime)
    assert retry.give_up == expected_give_up
    assert retry.delays == Doubling(0.5, 5.0)


@pytest.mark.parametrize("high", [False, True])
def test_backoff_jitter_is_the_upper_half_of_the_doubling_delay(high: bool) -> None:
    backoff = Backoff(0.5, 60.0, Extreme(high))
    got = [ms(backoff.next_delay()) for _ in range(9)]
    ceilings = [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
    assert got == (ceilings if high else [c / 2 for c in ceilings])


@pytest.mark.parametrize(
    ("steps", "expected_ms"),
    [
        # Refusals back off, or wait what Retry-After said (without backing off further).
        ([("refused", None), ("refused", None), ("refused", None)], [500, 1000, 2000]),
        ([("refused", None), ("refused", 7.0), ("refused", None)], [500, 7000, 1000]),
        ([("refused", 0.0)], [0]),
        # A connection that delivered frames resets the backoff and reconnects at once...
        (
            [("refused", None), ("refused", None), ("delivered", None), ("refused", None)],
            [500, 1000, 0, 500],
        ),
        # ...or after the retry: field.
        ([("delivered", 2.5)], [2500]),
        # One that delivered nothing backs off, at least for the retry: field.
        ([("empty", None), ("empty", None), ("empty", None)], [500, 1000, 2000]),
        ([("empty", 1.5), ("empty", 1.5)], [1500, 1500]),
        ([("empty", 0.2), ("empty", 0.2)], [500, 1000]),
        ([("empty", None), ("delivered", None), ("empty", None)], [500, 0, 500]),
    ],
)
def test_reconnect_delays(steps: list[tuple[str, float | None]], expected_ms: list[float]) -> None:
    backoff = Backoff(0.5, 60.0, Extreme(high=True))
    got = []
    for what, value in steps:
        if what == "refused":
            got.append(ms(backoff.after_refusal(value)))
        else:
            got.append(ms(backoff.after_connection(1 if what == "delivered" else 0, value)))
    assert got == expected_ms


@pytest.mark.parametrize(
    ("milliseconds", "expected"),
    [(2500, 2.5), (0, 0.0), (-5, 0.0), (60_000, 60.0), (3_600_000, RETRY_FIELD_CAP)],
)
def test_the_retry_field_is_clamped(milliseconds: int, expected: float) -> None:
    assert retry_field_delay(milliseconds) == expected


NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0.25", 0.25),
        ("-5", 0.0),
        ("100000", RETRY_AFTER_CAP),
        ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0),
        ("Wed, 31 Dec 2025 23:59:00 GMT", 0.0),
        ("Fri, 02 Jan 2026 00:00:00 GMT", RETRY_AFTER_CAP),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected
