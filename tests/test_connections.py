"""Connection records through the real CLI, a real loopback server and both databases.

Every attempt is a row in ``ingest_connections`` from the moment its
request goes out: when it was requested, when its first byte came (NULL when
none did), its status, its reason, the events committed over it and, for a
run killed mid-stream, where the next run closed it. The store's side of each rule is in tests/test_store.py, the
stream's and the worker's in tests/test_stream.py and tests/test_worker.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest import migrate
from ingest.store_runs import ABANDONED_REASON, WAITING_REASON
from tests.conftest import API_KEY, event_count, invoke, rows, spawn
from tests.scripted_server import Reply, ScriptedServer, frame
from tests.test_ingest_cli import ev, ingest
from tests.test_store import connection_rows, run_rows


@pytest.fixture
def archive_url(archive_url: str) -> str:
    """Both databases; PostgreSQL archives are migrated first, as an operator would."""
    if archive_url.startswith("postgresql"):
        migrate.upgrade(archive_url)
    return archive_url


@pytest.mark.parametrize("code", [401, 403])
def test_a_rejected_key_is_recorded_as_an_attempt(archive_url: str, code: int) -> None:
    """The answer's body is kept as the reason, with the key masked if the body echoes it."""
    body = f'{{"message":"key {API_KEY} is not valid","code":"UNAUTHORIZED"}}'.encode()
    with ScriptedServer([Reply(status=code, error_body=body)]) as server:
        result = ingest(archive_url, server)
    assert result.exit_code == 3, result.output
    [(requested, first_byte, last_seen, closed, status, events, reason)] = connection_rows(
        archive_url
    )
    assert (status, events, last_seen) == (code, 0, None)
    assert reason == f'HTTP {code}: {{"message":"key ******** is not valid","code":"UNAUTHORIZED"}}'
    assert first_byte is not None and closed is not None
    assert requested <= first_byte <= closed
    assert [r[1] for r in run_rows(archive_url)] == ["auth_failed"]
    [(reconnects,)] = rows(archive_url, "SELECT reconnects FROM ingest_runs")
    assert reconnects == 0


def test_the_first_byte_is_when_held_back_headers_arrived(archive_url: str) -> None:
    """The live service sends its headers with its first event; the request came first."""
    reply = Reply(head_delay=1.2, chunks=[frame(ev(1))], hold=5)
    with ScriptedServer([reply]) as server:
        result = ingest(archive_url, server, "--since", "2026-03-01")
    assert result.exit_code == 0, result.output
    [(requested, first_byte, last_seen, closed, status, events, reason)] = connection_rows(
        archive_url
    )
    assert first_byte is not None and last_seen is not None and closed is not None
    assert first_byte - requested >= timedelta(seconds=1.2)
    assert first_byte <= last_seen <= closed
    assert (status, events, reason) == (200, 1, "run ended: idle")


def test_a_refused_connection_has_no_first_byte_and_closes_at_once(archive_url: str) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke(
        ["ingest", "--db", archive_url, "--base-url", f"http://127.0.0.1:{port}",
         "--max-runtime", "1.5"]
    )  # fmt: skip
    assert result.exit_code == 69, result.output
    attempts = connection_rows(archive_url)
    assert len(attempts) >= 2
    for i, (requested, first_byte, last_seen, closed, status, events, reason) in enumerate(
        attempts
    ):
        assert (first_byte, last_seen, status, events) == (None, None, None, 0)
        assert closed is not None and timedelta(0) <= closed - requested < timedelta(seconds=1)
        assert reason is not None
        if i == len(attempts) - 1 and reason == WAITING_REASON:
            continue  # the run's end came between the last request and its refusal
        assert reason.startswith("cannot connect: ConnectError")
    # Every refusal is retried, and counted; an attempt the run's end cut is not.
    refused = sum(1 for attempt in attempts if attempt[6] != WAITING_REASON)
    [(outcome, reconnects)] = rows(archive_url, "SELECT outcome, reconnects FROM ingest_runs")
    assert (outcome, reconnects) == ("unreachable", refused)


def test_events_are_counted_per_connection_across_reconnects(archive_url: str) -> None:
    replies = [
        Reply(status=429),
        Reply(chunks=[frame(ev(1)), frame(ev(2))]),  # then the stream ends
        Reply(status=503),
        # A rejected frame shows the connection alive but is not an event.
        Reply(chunks=[frame(ev(3)), frame("{broken"), frame(ev(4)), frame(ev(5))], hold=5),
    ]
    with ScriptedServer(replies) as server:
        result = ingest(archive_url, server, "--since", "2026-03-01")
    assert result.exit_code == 0, result.output
    attempts = connection_rows(archive_url)
    assert [(r.status_code, r.events, r.close_reason) for r in attempts] == [
        (429, 0, 'HTTP 429: {"message":"scripted","code":"SCRIPTED"}'),
        (200, 2, "end of stream"),
        (503, 0, 'HTTP 503: {"message":"scripted","code":"SCRIPTED"}'),
        (200, 3, "run ended: idle"),
    ]
    assert sum(r.events for r in attempts) == event_count(archive_url) == 5
    assert rows(archive_url, "SELECT count(*) FROM rejected_events") == [(1,)]
    # Each attempt follows the last, and every one got an answer.
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.closed_at is not None and earlier.closed_at <= later.requested_at
    assert all(r.first_byte_at is not None for r in attempts)


def test_a_killed_runs_connection_is_closed_at_its_last_commit(archive_url: str) -> None:
    """SIGKILL after five events committed in several batches; the next run settles it."""
    chunks = [frame(ev(n)) for n in range(1, 6)]
    reply = Reply(chunks=chunks, pause=0.3, hold=60, keepalive=0.5)
    with ScriptedServer([reply]) as server:
        proc = spawn(
            ["ingest", "--db", archive_url, "--base-url", server.base_url,
             "--since", "2026-03-01", "--flush-interval", "0.1"]
        )  # fmt: skip
        with _reaped(proc):
            deadline = time.monotonic() + 30
            while _committed_over_connections(archive_url) < 5:
                assert time.monotonic() < deadline, "the events were not committed"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
    [killed] = connection_rows(archive_url)
    assert killed.closed_at is None, "the killed run could not close its connection"
    with ScriptedServer([Reply(hold=5)]) as server:
        result = ingest(archive_url, server)
    assert result.exit_code == 0, result.output
    killed, _next = connection_rows(archive_url)
    requested, first_byte, last_seen, closed, status, events, reason = killed
    assert events == event_count(archive_url) == 5
    assert last_seen is not None and closed == last_seen
    assert first_byte is not None and requested <= first_byte < last_seen
    assert (status, reason) == (200, ABANDONED_REASON)
    [(_, first_outcome, first_finished), second] = run_rows(archive_url)
    assert (first_outcome, first_finished) == ("abandoned", closed)
    assert second[1] == "idle"


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever happens in the block, the process is gone after it."""
    try:
        yield
    finally:
        proc.kill()
        proc.communicate()


def _committed_over_connections(url: str) -> int:
    try:
        return int(rows(url, "SELECT coalesce(sum(events), 0) FROM ingest_connections")[0][0])
    except Exception:  # no file or no table yet
        return 0


# The live service holds its response head until the first event or its 30 s
# keepalive; here nothing comes for a minute.
HELD_HEAD = Reply(head_delay=60, hold=60, keepalive=60)


def _waiting(url: str, server: ScriptedServer, after: int = 0) -> subprocess.Popen[str]:
    """An ingest whose request has gone out and waits for its head, its row written
    (after ``after`` rows of earlier runs)."""
    proc = spawn(["ingest", "--db", url, "--base-url", server.base_url, "--max-runtime", "90"])
    deadline = time.monotonic() + 30
    while _connection_count(url) <= after:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the request was not recorded"
        time.sleep(0.05)
    return proc


def _connection_count(url: str) -> int:
    try:
        return int(rows(url, "SELECT count(*) FROM ingest_connections")[0][0])
    except Exception:  # no file or no table yet
        return 0


def _coverage(url: str, analytics: Path) -> list[dict[str, Any]]:
    result = invoke(
        [
            *["report", "ingest-coverage", "--db", url],
            *["--analytics-dir", str(analytics), "--format", "json"],
        ]
    )
    assert result.exit_code == 0, result.output
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def test_a_request_waiting_for_its_head_is_recorded_and_closed_when_the_run_stops(
    archive_url: str, tmp_path: Path
) -> None:
    """Run 1 streams an event and ends; run 2's request waits for its head. It covers
    up to now while run 2 runs; SIGTERM closes its row, and the gap after names run 2."""
    with ScriptedServer([Reply(chunks=[frame(ev(1))], hold=5), HELD_HEAD]) as server:
        first = ingest(archive_url, server, "--since", "2026-03-01")
        assert first.exit_code == 0, first.output
        proc = _waiting(archive_url, server, after=1)
        with _reaped(proc):
            _streamed, waiting = connection_rows(archive_url)
            assert (waiting.first_byte_at, waiting.status_code, waiting.closed_at) == (
                None,
                None,
                None,
            )
            # The service has subscribed the request: covered up to now while run 2 runs.
            during = _coverage(archive_url, tmp_path / "during")
            assert [(r["kind"], r["runs"], r["cause"]) for r in during] == [
                ("covered", [1], None),
                ("gap", [1, 2], "run 1 ended (idle); next run 2 started"),
                ("covered", [2], None),
            ]
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        assert len(server.requests) == 2
    assert proc.returncode == 0, "a stop is a normal end"
    [_, (_, outcome, finished)] = run_rows(archive_url)
    assert outcome == "interrupted"
    _streamed, stopped = connection_rows(archive_url)
    assert (stopped.first_byte_at, stopped.status_code, stopped.events) == (None, None, 0)
    assert stopped.requested_at == waiting.requested_at
    assert (stopped.closed_at, stopped.close_reason) == (finished, WAITING_REASON)
    # Once run 2 has ended its request covers nothing: one gap since run 1's stream.
    after = _coverage(archive_url, tmp_path / "after")
    assert [(r["kind"], r["runs"], r["failed_attempts"], r["cause"]) for r in after] == [
        ("covered", [1], 0, None),
        (
            "gap",
            [1],
            0,
            "no ingest running since run 2 finished (interrupted); "
            "run 2 ended while its request waited for the response head",
        ),
    ]


def test_a_killed_run_s_waiting_request_is_closed_by_the_next_run_covering_nothing(
    archive_url: str, tmp_path: Path
) -> None:
    with ScriptedServer([HELD_HEAD]) as server:
        proc = _waiting(archive_url, server)
        with _reaped(proc):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
    [killed] = connection_rows(archive_url)
    assert killed.closed_at is None
    with ScriptedServer([Reply(status=503)], default=Reply(status=503)) as server:
        # Long enough for the reader process to start and be refused on a loaded machine.
        result = ingest(archive_url, server, "--max-runtime", "1.5")
    assert result.exit_code == 69, result.output
    settled, *refused = connection_rows(archive_url)
    if len(refused) > 1 and refused[-1].close_reason == WAITING_REASON:
        refused.pop()  # the run's end came between the last request and its answer
    assert refused and all(r.status_code == 503 for r in refused)
    assert (settled.first_byte_at, settled.last_seen_at, settled.status_code) == (None, None, None)
    assert (settled.closed_at, settled.close_reason) == (killed.requested_at, ABANDONED_REASON)
    [(_, first_outcome, first_finished), (_, second_outcome, _)] = run_rows(archive_url)
    assert (first_outcome, first_finished) == ("abandoned", killed.requested_at)
    assert second_outcome == "unreachable"
    # Neither run covered any time: no span, so no gap either (the archive starts at a span).
    assert _coverage(archive_url, tmp_path / "c") == []
