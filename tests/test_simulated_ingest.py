"""The real CLI against the simulator: whole lifecycles, faults, kills and resumes."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import queries
from ingest import migrate
from ingest.simulator import VIAS, Simulator, SimulatorConfig
from ingest.timestamps import format_timestamp, parse_event_time
from tests.conftest import API_KEY, invoke, rows, spawn, wait_for_events
from tests.simulated_truth import derive


@pytest.fixture
def archive_url(archive_url: str) -> str:
    if archive_url.startswith("postgresql"):
        migrate.upgrade(archive_url)
    return archive_url


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    options = getattr(request, "param", {})
    config = SimulatorConfig(api_key=API_KEY, seed=11, rate=0, keepalive=0.5, **options)
    with Simulator(config) as sim:
        yield sim


def catch_up(url: str, sim: Simulator, *extra: str) -> tuple[int, str]:
    result = invoke(
        [
            "ingest",
            "--db",
            url,
            "--base-url",
            sim.base_url,
            "--since",
            format_timestamp(sim.history_start),
            "--until-idle",
            "1.5",
            "--max-runtime",
            "60",
            *extra,
        ]
    )
    return result.exit_code, result.output


def archived(url: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in rows(url, "SELECT id, payload FROM events ORDER BY seq")]


@pytest.mark.parametrize("simulator", [{"backlog": 3000}], indirect=True)
def test_backlog_is_archived_exactly_once(archive_url: str, simulator: Simulator) -> None:
    code, output = catch_up(archive_url, simulator)
    assert code == 0, output
    expected = {e["id"]: e for e in simulator.events()}
    stored = archived(archive_url)
    assert len(stored) == len(expected) == 3000
    assert {event_id for event_id, _ in stored} == set(expected)
    for event_id, payload in stored:
        assert json.loads(payload) == expected[event_id]
    # Again: everything is a duplicate, nothing changes.
    code, output = catch_up(archive_url, simulator)
    assert code == 0, output
    assert len(archived(archive_url)) == 3000
    [(inserted, duplicates)] = rows(
        archive_url, "SELECT inserted, duplicates FROM ingest_runs WHERE id = 2"
    )
    assert (inserted, duplicates) == (0, 3000)


@pytest.mark.parametrize("simulator", [{"backlog": 6000}], indirect=True)
def test_the_archive_holds_every_revocation_path(archive_url: str, simulator: Simulator) -> None:
    """What the archived stream implies, by the producer notes' rules, is what happened."""
    code, output = catch_up(archive_url, simulator)
    assert code == 0, output
    events = [json.loads(payload) for _, payload in archived(archive_url)]
    assert len(events) == 6000
    derived = derive(events).revoked
    truth = simulator.backlog_truth().revocations
    assert {r.via for r in truth.values()} == set(VIAS)
    assert {
        grant_id: (parse_event_time(when), via, event_id)
        for grant_id, (when, via, event_id) in derived.items()
    } == {grant_id: (r.revoked_at, r.via, r.event_id) for grant_id, r in truth.items()}


@pytest.mark.parametrize("simulator", [{"backlog": 6000}], indirect=True)
def test_the_tokens_view_gives_every_token_its_true_kind(
    archive_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    """The kinds the analytics read from the ids are the ones the simulator issued."""
    code, output = catch_up(archive_url, simulator)
    assert code == 0, output
    truth = simulator.backlog_truth().token_kinds
    assert set(truth.values()) == {"exchange", "delegation", "refresh"}
    table = queries.query(
        "SELECT token_id, kind FROM tokens", archive_url, analytics_dir=tmp_path / "copy"
    )
    tokens, kinds = table.column("token_id").to_pylist(), table.column("kind").to_pylist()
    assert len(tokens) == len(set(tokens)) == len(truth)
    found = dict(zip(tokens, kinds, strict=True))
    assert found == truth


@pytest.mark.parametrize("simulator", [{"backlog": 6000}], indirect=True)
def test_the_revocations_view_is_what_happened(
    archive_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    """Every grant the simulator revoked, by every path, with its time, actor, path and event."""
    code, output = catch_up(archive_url, simulator)
    assert code == 0, output
    truth = simulator.backlog_truth().revocations
    table = queries.query(
        "SELECT grant_id, revoked_at, actor, via, event_id FROM revocations",
        archive_url,
        analytics_dir=tmp_path / "copy",
    )
    found = {row["grant_id"]: row for row in table.to_pylist()}
    assert len(found) == table.num_rows

    def seen_actor(actor: str, via: str) -> str:
        # The live grant.revoked does not say whether the developer or the
        # principal revoked the grant (nor does the cascade it starts).
        return "developer_or_principal" if via in ("direct", "cascade") else actor

    assert {
        grant_id: (row["revoked_at"], row["actor"], row["via"], row["event_id"])
        for grant_id, row in found.items()
    } == {
        g: (r.revoked_at, seen_actor(r.actor, r.via), r.via, r.event_id) for g, r in truth.items()
    }


@pytest.mark.parametrize("simulator", [{"backlog": 2000, "envelope": "documented"}], indirect=True)
def test_documented_envelope_typed_columns(sqlite_archive: str, simulator: Simulator) -> None:
    code, output = catch_up(sqlite_archive, simulator)
    assert code == 0, output
    counts = dict(rows(sqlite_archive, "SELECT type, count(*) FROM events GROUP BY type"))
    expected = Counter(e["type"] for e in simulator.events())
    assert counts == dict(expected)
    revoked = rows(
        sqlite_archive,
        "SELECT count(*) FROM events WHERE type = 'grant.revoked' AND revoked_by IS NULL",
    )
    assert revoked == [(0,)]
    thresholds = rows(
        sqlite_archive,
        "SELECT count(*) FROM events WHERE type = 'budget.threshold' AND percentage IS NULL",
    )
    assert thresholds == [(0,)]


@pytest.mark.parametrize("simulator", [{"backlog": 2000}], indirect=True)
def test_live_envelope_typed_columns(sqlite_archive: str, simulator: Simulator) -> None:
    code, output = catch_up(sqlite_archive, simulator)
    assert code == 0, output
    [(missing_pct,)] = rows(
        sqlite_archive,
        "SELECT count(*) FROM events WHERE type = 'budget.threshold' "
        "AND (percentage IS NULL OR remaining IS NULL)",
    )
    assert missing_pct == 0
    [(with_actor,)] = rows(
        sqlite_archive,
        "SELECT count(*) FROM events WHERE type = 'grant.revoked' AND revoked_by IS NOT NULL",
    )
    assert with_actor == 0


@pytest.mark.parametrize("simulator", [{"backlog": 1500}], indirect=True)
def test_types_filter_on_the_server(sqlite_archive: str, simulator: Simulator) -> None:
    code, output = catch_up(sqlite_archive, simulator, "--types", "grant.created,grant.revoked")
    assert code == 0, output
    types = {r[0] for r in rows(sqlite_archive, "SELECT DISTINCT type FROM events")}
    assert types == {"grant.created", "grant.revoked"}
    expected = sum(1 for e in simulator.events() if e["type"] in ("grant.created", "grant.revoked"))
    assert len(archived(sqlite_archive)) == expected


@pytest.mark.parametrize(
    "simulator", [{"backlog": 3000, "drop_every": 250, "malformed_every": 90}], indirect=True
)
def test_flapping_stream_with_malformed_frames_loses_nothing(
    archive_url: str, simulator: Simulator
) -> None:
    code, output = catch_up(archive_url, simulator, "--overlap", "0")
    assert code == 0, output
    assert {r[0] for r in archived(archive_url)} == {e["id"] for e in simulator.events()}
    reasons = [r[0] for r in rows(archive_url, "SELECT reason FROM rejected_events")]
    assert reasons, "malformed frames must be kept"
    assert all(not r.startswith("conflicting") for r in reasons)
    [(reconnects,)] = rows(archive_url, "SELECT reconnects FROM ingest_runs")
    assert reconnects >= 10


@pytest.mark.parametrize(
    "simulator",
    [{"backlog": 500, "fail_statuses": (429, 503, 503), "retry_after": 0.3}],
    indirect=True,
)
def test_rate_limited_then_served(sqlite_archive: str, simulator: Simulator) -> None:
    code, output = catch_up(sqlite_archive, simulator)
    assert code == 0, output
    assert len(archived(sqlite_archive)) == 500
    statuses = [
        r[0] for r in rows(sqlite_archive, "SELECT status_code FROM ingest_connections ORDER BY id")
    ]
    assert statuses[:4] == [429, 503, 503, 200]


@pytest.mark.parametrize("simulator", [{"backlog": 200}], indirect=True)
def test_wrong_key_exits_3(sqlite_archive: str, simulator: Simulator) -> None:
    result = invoke(
        ["ingest", "--db", sqlite_archive, "--base-url", simulator.base_url, "--max-runtime", "5"],
        env={"GRANTEX_API_KEY": "not-the-key"},
    )
    assert result.exit_code == 3
    assert "not-the-key" not in result.output


@pytest.mark.parametrize("simulator", [{"backlog": 120_000}], indirect=True)
def test_sigkill_mid_ingest_then_resume(archive_url: str, simulator: Simulator) -> None:
    since = format_timestamp(simulator.history_start)
    proc = spawn(
        [
            "ingest",
            "--db",
            archive_url,
            "--base-url",
            simulator.base_url,
            "--since",
            since,
            "--batch-size",
            "500",
        ]
    )
    try:
        wait_for_events(archive_url, 5000)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    [(partial,)] = rows(archive_url, "SELECT count(*) FROM events")
    assert 0 < partial < 120_000, "the kill must land mid-ingest"
    # The next run resumes through the overlap: nothing lost, nothing doubled.
    result = invoke(
        [
            "ingest",
            "--db",
            archive_url,
            "--base-url",
            simulator.base_url,
            "--until-idle",
            "1.5",
            "--max-runtime",
            "120",
        ]
    )
    assert result.exit_code == 0, result.output
    stored = [r[0] for r in rows(archive_url, "SELECT id FROM events")]
    assert len(stored) == len(set(stored)) == 120_000
    outcomes = rows(archive_url, "SELECT outcome FROM ingest_runs ORDER BY id")
    assert outcomes == [("abandoned",), ("idle",)]
    assert set(stored) == {e["id"] for e in simulator.events()}


def test_simulate_command_serves_until_terminated(tmp_path: Path) -> None:
    proc = spawn(["simulate", "--port", "0", "--backlog", "50", "--rate", "0"])
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        start = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        archive = f"sqlite:///{tmp_path / 'a.db'}"
        result = invoke(
            [
                "ingest",
                "--db",
                archive,
                "--base-url",
                url,
                "--since",
                start,
                "--until-idle",
                "1",
                "--max-runtime",
                "30",
            ]
        )
        assert result.exit_code == 0, result.output
        assert rows(archive, "SELECT count(*) FROM events") == [(50,)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


def test_simulate_rejects_bad_options() -> None:
    result = invoke(["simulate", "--port", "0", "--envelope", "weird"])
    assert result.exit_code == 2
    assert "Error:" in result.output


@pytest.mark.parametrize("simulator", [{"backlog": 150_000}], indirect=True)
def test_a_blocked_database_stops_the_reading_not_the_buffering(
    archive_url: str, simulator: Simulator
) -> None:
    import sqlalchemy as sa

    since = format_timestamp(simulator.history_start)
    proc = spawn(
        [
            "ingest",
            "--db",
            archive_url,
            "--base-url",
            simulator.base_url,
            "--since",
            since,
            "--until-idle",
            "2",
            "--max-runtime",
            "120",
        ]
    )
    engine = sa.create_engine(archive_url)
    try:
        wait_for_events(archive_url, 1)
        with engine.connect() as conn:
            # Hold the write lock: the worker's inserts wait behind it.
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.execute(sa.text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            time.sleep(3)
            sent_before = simulator.stats.events_sent
            time.sleep(2)
            sent_after = simulator.stats.events_sent
            conn.rollback()
        assert sent_after == sent_before, "the worker kept reading while it could not write"
        assert sent_before < 150_000
        proc.communicate(timeout=120)
    finally:
        proc.kill()
        engine.dispose()
    assert proc.returncode == 0
    assert rows(archive_url, "SELECT count(*) FROM events") == [(150_000,)]
