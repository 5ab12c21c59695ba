"""The real CLI against a real loopback SSE server, reading the archive back."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingest import migrate
from tests.conftest import API_KEY, event_count, invoke, rows, spawn
from tests.scripted_server import Reply, ScriptedServer, frame

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def archive_url(archive_url: str) -> str:
    """Both databases; PostgreSQL archives are migrated first, as an operator would."""
    if archive_url.startswith("postgresql"):
        migrate.upgrade(archive_url)
    return archive_url


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ev(n: int, type_: str = "grant.created", at: datetime | None = None, **data: object) -> str:
    at = at or T0 + timedelta(seconds=n)
    return json.dumps(
        {
            "id": f"evt_{n}",
            "type": type_,
            "createdAt": stamp(at),
            "data": {"grantId": f"g{n}", **data},
        },
        separators=(",", ":"),
    )


def ingest(url: str, server: ScriptedServer, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    args = ["ingest", "--db", url, "--base-url", server.base_url, *extra]
    if "--max-runtime" not in extra:
        args += ["--max-runtime", "20"]
    if "--until-idle" not in extra and "--max-events" not in extra:
        args += ["--until-idle", "0.5"]
    return invoke(args, env=env)


def ids(url: str) -> list[str]:
    return [r[0] for r in rows(url, "SELECT id FROM events ORDER BY seq")]


def test_live_frames_end_to_end(archive_url: str) -> None:
    # A capture of the live service's stream, keepalive comments included.
    body = (Path(__file__).parent / "data" / "live-capture.sse").read_bytes()
    with ScriptedServer([Reply(chunks=[body], hold=5, keepalive=0.1)]) as server:
        result = ingest(archive_url, server)
    assert result.exit_code == 0, result.output
    expected = [
        json.loads(line[6:])["id"]
        for line in body.decode().splitlines()
        if line.startswith("data: ")
    ]
    assert ids(archive_url) == expected
    stored = rows(archive_url, "SELECT payload FROM events ORDER BY seq")
    originals = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert [r[0] for r in stored] == originals


def test_the_full_capture_names_every_person(archive_url: str, tmp_path: Path) -> None:
    """The live service's full capture (94 events, 24 types) through the real CLI.

    The person is ``principalId`` in grant and token events, ``userId`` in
    consent-bundle events and ``dataPrincipalId`` in DPDP events, and all
    three land in ``principal_id``: here user_zed's two DPDP events
    (dpdp.consent.created, dpdp.erasure.completed) and user_frank's consent
    record are found by ``export --principal-id``, as their grants' events are.
    """
    body = (Path(__file__).parent / "data" / "live-capture-full.sse").read_bytes()
    frames = [
        json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")
    ]
    with ScriptedServer([Reply(chunks=[body], hold=5, keepalive=0.1)]) as server:
        result = ingest(archive_url, server)
    assert result.exit_code == 0, result.output
    assert ids(archive_url) == [f["id"] for f in frames]
    assert rows(archive_url, "SELECT count(*) FROM rejected_events") == [(0,)]
    named = {
        f["id"]: f["data"].get("principalId")
        or f["data"].get("userId")
        or f["data"].get("dataPrincipalId")
        for f in frames
    }
    stored = dict(rows(archive_url, "SELECT id, principal_id FROM events"))
    assert stored == named
    by_type = {
        (f["type"], stored[f["id"]])
        for f in frames
        if f["type"].startswith(("dpdp.", "consent_bundle."))
    }
    assert ("dpdp.erasure.completed", "user_zed") in by_type
    assert ("dpdp.consent.created", "user_frank") in by_type
    target = tmp_path / "zed.csv"
    exported = invoke(
        ["export", "-o", str(target), "--principal-id", "user_zed", "--db", archive_url,
         "--analytics-dir", str(tmp_path / "copy")]
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    types = {line.split(",")[1] for line in target.read_text().splitlines()[1:]}
    assert {"dpdp.consent.created", "dpdp.erasure.completed"} <= types


def test_every_framing_variant(sqlite_archive: str) -> None:
    multi_line = (
        '{"id":"evt_7","type":"grant.created",\n"createdAt":"2026-03-01T12:00:07Z",\n"data":{}}'
    )
    chunks = [
        b"\xef\xbb\xbf" + frame(ev(1)),
        frame(ev(2), eol="\r\n"),
        frame(ev(3), eol="\r"),
        frame(ev(4), event="grant.created", id="4"),
        b": a comment\n\n",
        b"retry: 100\n\n",
        b"id: 5\n\n",
        frame(ev(5))[:7],
        frame(ev(5))[7:],
        frame(ev(6), eol="\r\n")[:-1],
        b"\n",
        frame(multi_line),
        b'data:{"id":"evt_8","type":"x","createdAt":"2026-03-01T12:00:08Z","data":{}}\n\n',
    ]
    with ScriptedServer([Reply(chunks=chunks, pause=0.01, hold=5)]) as server:
        result = ingest(sqlite_archive, server)
    assert result.exit_code == 0, result.output
    assert ids(sqlite_archive) == [f"evt_{n}" for n in range(1, 9)]
    assert rows(sqlite_archive, "SELECT count(*) FROM rejected_events") == [(0,)]


def test_every_rejected_input_is_kept_with_a_reason(archive_url: str) -> None:
    big = json.dumps(
        {
            "id": "evt_big",
            "type": "x",
            "createdAt": "2026-03-01T12:00:00Z",
            "data": {"b": "x" * (1024 * 1024)},
        }
    )
    bad = [
        (b'data: {"id": "evt_x", broken\n\n', "invalid JSON"),
        (b"data: [1,2,3]\n\n", "JSON is not an object"),
        (
            frame(json.dumps({"type": "x", "createdAt": "2026-03-01T12:00:00Z", "data": {}})),
            "missing or empty 'id'",
        ),
        (
            frame(json.dumps({"id": "", "type": "x", "createdAt": "2026-03-01T12:00:00Z"})),
            "missing or empty 'id'",
        ),
        (
            frame(json.dumps({"id": "evt_t", "createdAt": "2026-03-01T12:00:00Z", "data": {}})),
            "missing or empty 'type'",
        ),
        (
            frame(json.dumps({"id": "evt_ts", "type": "x", "createdAt": "not-a-time", "data": {}})),
            "unparseable createdAt",
        ),
        (
            frame(
                json.dumps(
                    {
                        "id": "evt_d",
                        "type": "x",
                        "createdAt": "2026-03-01T12:00:00Z",
                        "data": "oops",
                    }
                )
            ),
            "'data' is not an object",
        ),
        (
            b'data: {"id":"evt_u","type":"x","createdAt":"2026-03-01T12:00:00Z",'
            b'"data":{"s":"\xff"}}\n\n',
            "invalid UTF-8",
        ),
        (frame(big), "frame larger than"),
    ]
    chunks = [frame(ev(1))] + [c for c, _ in bad] + [frame(ev(2))]
    with ScriptedServer([Reply(chunks=chunks, hold=5)]) as server:
        result = ingest(archive_url, server)
    assert result.exit_code == 0, result.output
    assert ids(archive_url) == ["evt_1", "evt_2"]
    stored = rows(
        archive_url, "SELECT reason, raw_length, event_id, run_id FROM rejected_events ORDER BY id"
    )
    assert len(stored) == len(bad)
    for (reason, _length, _event_id, run_id), (_chunk, expected) in zip(stored, bad, strict=False):
        assert reason.startswith(expected), (reason, expected)
        assert run_id == 1
    assert stored[-1][1] == len(big.encode())
    assert {r[2] for r in stored} >= {"evt_ts", "evt_d", "evt_u", "evt_t"}
    [(rejected,)] = rows(archive_url, "SELECT rejected FROM ingest_runs")
    assert rejected == len(bad)


def test_duplicates_and_conflicting_duplicates(archive_url: str) -> None:
    conflicting = ev(2, agentId="someone-else")
    replies = [
        Reply(chunks=[frame(ev(1)), frame(ev(2)), frame(ev(1))]),
        Reply(chunks=[frame(ev(1)), frame(conflicting), frame(ev(3))], hold=5),
    ]
    with ScriptedServer(replies) as server:
        result = ingest(archive_url, server)
    assert result.exit_code == 0, result.output
    assert ids(archive_url) == ["evt_1", "evt_2", "evt_3"]
    [(payload,)] = rows(archive_url, "SELECT payload FROM events WHERE id = 'evt_2'")
    assert payload == ev(2)
    [(reason, raw, event_id)] = rows(
        archive_url, "SELECT reason, raw, event_id FROM rejected_events"
    )
    assert reason.startswith("conflicting duplicate") and raw == conflicting and event_id == "evt_2"
    [(received, inserted, duplicates, rejected, reconnects)] = rows(
        archive_url, "SELECT received, inserted, duplicates, rejected, reconnects FROM ingest_runs"
    )
    assert (received, inserted, duplicates, rejected, reconnects) == (6, 3, 3, 1, 1)


def test_dropped_connection_mid_frame_resumes_with_overlap(sqlite_archive: str) -> None:
    # The reconnect delays are a table in tests/test_retry.py; this run
    # proves a real drop is followed by a real reconnect.
    first = frame(ev(1)) + frame(ev(2)) + frame(ev(3))[:20]
    replies = [
        Reply(chunks=[first], abort=True),
        Reply(chunks=[frame(ev(2)), frame(ev(3)), frame(ev(4))], hold=5),
    ]
    with ScriptedServer(replies) as server:
        result = ingest(sqlite_archive, server, "--overlap", "60")
        second = server.requests[1]
    assert result.exit_code == 0, result.output
    assert ids(sqlite_archive) == ["evt_1", "evt_2", "evt_3", "evt_4"]
    # Resume point: newest committed (evt_2 at T0+2s) minus the 60 s overlap.
    assert second.query["since"] == [stamp(T0 + timedelta(seconds=2) - timedelta(seconds=60))]
    connections = rows(
        sqlite_archive, "SELECT events, close_reason FROM ingest_connections ORDER BY id"
    )
    assert connections[0][0] == 2


def test_401_exits_3_fast_without_printing_the_key(sqlite_archive: str, key_file: Path) -> None:
    with ScriptedServer([Reply(status=401)] * 5) as server:
        started = time.monotonic()
        result = ingest(sqlite_archive, server, "--api-key-file", str(key_file))
        elapsed = time.monotonic() - started
        assert len(server.requests) == 1
        assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert result.exit_code == 3
    assert elapsed < 5
    assert API_KEY not in result.output
    assert "Error:" in result.output and "401" in result.output
    [(outcome, exit_code)] = rows(sqlite_archive, "SELECT outcome, exit_code FROM ingest_runs")
    assert (outcome, exit_code) == ("auth_failed", 3)


def test_404_is_a_configuration_error(sqlite_archive: str) -> None:
    with ScriptedServer([Reply(status=404)]) as server:
        result = ingest(sqlite_archive, server)
    assert result.exit_code == 2
    assert "404" in result.output


def test_until_idle_exits_once_caught_up(sqlite_archive: str) -> None:
    # The idle rules are a table in tests/test_timers.py and play out in
    # simulated time in tests/test_worker.py; this run proves the wiring,
    # with keepalive comments that must not count as activity.
    reply = Reply(chunks=[frame(ev(1)), frame(ev(2))], hold=30, keepalive=0.2)
    with ScriptedServer([reply]) as server:
        started = time.monotonic()
        result = ingest(sqlite_archive, server, "--until-idle", "1")
        elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert 1 <= elapsed < 10
    assert ids(sqlite_archive) == ["evt_1", "evt_2"]
    [(outcome,)] = rows(sqlite_archive, "SELECT outcome FROM ingest_runs")
    assert outcome == "idle"


def test_types_filter_is_sent_and_scopes_resume(sqlite_archive: str) -> None:
    with ScriptedServer([Reply(chunks=[frame(ev(1)), frame(ev(9, "token.issued"))], hold=5)]) as s1:
        assert ingest(sqlite_archive, s1).exit_code == 0
    with ScriptedServer([Reply(hold=5)]) as server:
        result = ingest(sqlite_archive, server, "--types", "grant.created", "--overlap", "0")
        request = server.requests[0]
    assert result.exit_code == 0, result.output
    assert request.query["types"] == ["grant.created"]
    # The newest grant.created is evt_1 (T0+1s), not the newer token.issued.
    assert request.query["since"] == [stamp(T0 + timedelta(seconds=1))]


def test_resume_with_overlap_across_two_runs(archive_url: str) -> None:
    with ScriptedServer([Reply(chunks=[frame(ev(n)) for n in range(1, 6)], hold=5)]) as s1:
        first = ingest(archive_url, s1)
        assert "since" not in s1.requests[0].query
    assert first.exit_code == 0, first.output
    late = ev(3)  # re-sent inside the overlap window
    with ScriptedServer([Reply(chunks=[frame(late), frame(ev(5)), frame(ev(6))], hold=5)]) as s2:
        second = ingest(archive_url, s2, "--overlap", "120")
        since = s2.requests[0].query["since"]
    assert second.exit_code == 0, second.output
    assert since == [stamp(T0 + timedelta(seconds=5) - timedelta(seconds=120))]
    assert ids(archive_url) == [f"evt_{n}" for n in range(1, 7)]
    runs = rows(archive_url, "SELECT inserted, duplicates FROM ingest_runs ORDER BY id")
    assert runs == [(5, 0), (1, 2)]


def test_explicit_since_overrides_resume(sqlite_archive: str) -> None:
    with ScriptedServer([Reply(chunks=[frame(ev(1))], hold=5)]) as s1:
        ingest(sqlite_archive, s1)
    with ScriptedServer([Reply(hold=5)]) as server:
        result = ingest(sqlite_archive, server, "--since", "2025-01-01T00:00:00+02:00")
        since = server.requests[0].query["since"]
    assert result.exit_code == 0
    assert since == ["2024-12-31T22:00:00.000Z"]


def test_max_events_stops_after_n(sqlite_archive: str) -> None:
    with ScriptedServer([Reply(chunks=[frame(ev(n)) for n in range(1, 11)], hold=5)]) as server:
        result = ingest(sqlite_archive, server, "--max-events", "4")
    assert result.exit_code == 0, result.output
    assert len(ids(sqlite_archive)) >= 4
    [(outcome, received)] = rows(sqlite_archive, "SELECT outcome, received FROM ingest_runs")
    assert outcome == "max_events" and received == 4


def test_service_unavailable_throughout_exits_69(sqlite_archive: str) -> None:
    # The --max-runtime rules are a table in tests/test_timers.py; this run
    # proves the wiring, end to end.
    with ScriptedServer([], default=Reply(status=503, headers={"Retry-After": "0.2"})) as server:
        started = time.monotonic()
        result = ingest(sqlite_archive, server, "--max-runtime", "2", "--until-idle", "1")
        elapsed = time.monotonic() - started
        attempts = len(server.requests)
    assert result.exit_code == 69, result.output
    assert "could not be reached in 2s" in result.output
    assert 2 <= elapsed < 8
    assert attempts >= 3
    [(outcome, exit_code)] = rows(sqlite_archive, "SELECT outcome, exit_code FROM ingest_runs")
    assert (outcome, exit_code) == ("unreachable", 69)


def test_brand_new_sqlite_archive_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with ScriptedServer([Reply(chunks=[frame(ev(1))], hold=5)]) as server:
        result = ingest(url, server)
    assert result.exit_code == 0, result.output
    assert rows(url, "SELECT version_num FROM alembic_version") == [(migrate.head_revision(),)]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"GRANTEX_API_KEY": ""}, "no API key"),
        (["--base-url", "ftp://example.com"], {}, "invalid base URL"),
        (["--base-url", "not a url"], {}, "invalid base URL"),
        (["--since", "yesterday"], {}, "ISO 8601"),
        (["--batch-size", "0"], {}, "--batch-size"),
        (["--api-key-file", "/nonexistent/key"], {}, "cannot read API key file"),
        (["--db", "nonsense://"], {}, "database"),
        (["--api-key", "sk_1"], {}, "No such option"),
        (["--until-idle", "-1"], {}, "--until-idle"),
        (["--max-backoff", "0.1"], {}, "--max-backoff"),
    ],
)
def test_configuration_errors_exit_2(
    sqlite_archive: str, args: list[str], env: dict[str, str], message: str
) -> None:
    full = ["ingest", "--db", sqlite_archive, "--max-runtime", "1", *args]
    result = invoke(full, env=env)
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output
    assert message in result.output


def test_unusable_database_exits_4() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    started = time.monotonic()
    result = invoke(
        ["ingest", "--db", url, "--base-url", "http://127.0.0.1:9", "--db-retry-timeout", "1"]
    )
    assert result.exit_code == 4
    assert result.output.count("Error:") == 1
    assert time.monotonic() - started < 20


def test_json_logs_and_no_secret_anywhere(sqlite_archive: str) -> None:
    with ScriptedServer([Reply(chunks=[frame(ev(1))], hold=5)]) as server:
        result = ingest(sqlite_archive, server, "--log-format", "json")
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    messages = [p["message"] for p in parsed]
    assert any(m.startswith("ingest starting") for m in messages)
    assert any(m.startswith("ingest finished") for m in messages)
    # Counts are fields of their own, not only words in the message.
    finished = next(p for p in parsed if p["message"].startswith("ingest finished"))
    assert finished["received"] == 1 and finished["inserted"] == 1
    assert (finished["duplicates"], finished["rejected"], finished["outcome"]) == (0, 0, "idle")
    started = next(p for p in parsed if p["message"].startswith("ingest starting"))
    assert started["source"] == "default"
    assert API_KEY not in result.output
    assert rows(
        sqlite_archive, "SELECT count(*) FROM ingest_runs WHERE base_url LIKE '%gx_test%'"
    ) == [(0,)]


def _wait_for(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_sigterm_commits_the_pending_batch_and_exits_0(archive_url: str) -> None:
    # SIGINT is handled the same way (tests/test_worker.py), as is the stop
    # grace of a stuck database.
    chunks = [frame(ev(n)) for n in range(1, 51)]
    with ScriptedServer([Reply(chunks=chunks, hold=60)]) as server:
        proc = spawn(
            [
                "ingest",
                "--db",
                archive_url,
                "--base-url",
                server.base_url,
                "--flush-interval",
                "600",
                "--batch-size",
                "100000",
            ]
        )
        try:
            _wait_for(lambda: len(server.requests) == 1)
            time.sleep(1.5)
            # Nothing is committed yet: the batch waits for size or interval.
            assert rows(archive_url, "SELECT count(*) FROM events") == [(0,)]
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert len(ids(archive_url)) == 50
    [(outcome, exit_code, finished)] = rows(
        archive_url, "SELECT outcome, exit_code, finished_at FROM ingest_runs"
    )
    assert (outcome, exit_code) == ("interrupted", 0)
    assert finished is not None
    assert "stopped by SIGTERM" in err or "ingest finished" in err


def test_second_ingest_on_same_archive_and_source_exits_75(archive_url: str) -> None:
    with ScriptedServer([], default=Reply(chunks=[frame(ev(1))], hold=60)) as server:
        proc = spawn(["ingest", "--db", archive_url, "--base-url", server.base_url])
        try:
            _wait_for(lambda: len(server.requests) >= 1)
            started = time.monotonic()
            result = ingest(archive_url, server)
            elapsed = time.monotonic() - started
            assert result.exit_code == 75, result.output
            assert elapsed < 5
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("Error: another ingest is running")
            # Another source on the same archive is not blocked.
            other = ingest(archive_url, server, "--source", "second-account")
            assert other.exit_code == 0, other.output
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_database_failing_mid_run_exits_4_keeping_what_was_committed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    chunks = [frame(ev(n)) for n in range(1, 4)]
    later = [frame(ev(n)) for n in range(4, 7)]
    with ScriptedServer(
        [Reply(chunks=chunks + [b": wait\n\n"] * 30 + later, pause=0.1, hold=30)]
    ) as server:
        proc = spawn(
            [
                "ingest",
                "--db",
                url,
                "--base-url",
                server.base_url,
                "--flush-interval",
                "0.2",
                "--db-retry-timeout",
                "2",
            ]
        )
        try:
            _wait_for(lambda: (tmp_path / "archive.db").exists() and event_count(url) == 3)
            conn = sqlite3.connect(tmp_path / "archive.db")
            conn.execute("ALTER TABLE events RENAME TO events_elsewhere")
            conn.commit()
            conn.close()
            _out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 4, err
    assert "Error: database unusable" in err
    assert API_KEY not in err
    assert rows(url, "SELECT count(*) FROM events_elsewhere") == [(3,)]


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:99999", "http://exa mple.com", "http://127.0.0.1:8080/?x=1", "mailto:x"],
)
def test_bad_base_urls_are_configuration_errors(sqlite_archive: str, base_url: str) -> None:
    result = invoke(
        ["ingest", "--db", sqlite_archive, "--base-url", base_url, "--max-runtime", "1"]
    )
    assert result.exit_code == 2, result.output
    assert "invalid base URL" in result.output


@pytest.mark.parametrize("key", ["SECRET\nNEWLINEPART", "SECRET'LEAKY PART", "sécret-ключ"])
def test_unusable_keys_exit_2_without_echoing(
    sqlite_archive: str, tmp_path: Path, key: str
) -> None:
    path = tmp_path / "odd-key"
    path.write_text(key)
    with ScriptedServer([Reply(chunks=[frame(ev(1))], hold=5)]) as server:
        result = ingest(sqlite_archive, server, "--api-key-file", str(path))
        assert server.requests == []
    assert result.exit_code == 2, result.output
    assert "not a valid key" in result.output
    for part in ("SECRET", "NEWLINEPART", "LEAKY", "sécret"):
        assert part not in result.output


def test_key_never_reaches_stored_rows_or_logs(sqlite_archive: str) -> None:
    replies = [
        Reply(status=503, headers={"Retry-After": "0"}),
        Reply(chunks=[frame(ev(1))], hold=5),
    ]
    with ScriptedServer(replies) as server:
        result = ingest(sqlite_archive, server, "--log-format", "json")
    assert result.exit_code == 0
    assert API_KEY not in result.output
    for table in ("ingest_runs", "ingest_connections", "rejected_events", "events"):
        dump = json.dumps(
            [list(map(str, r)) for r in rows(sqlite_archive, f"SELECT * FROM {table}")]
        )
        assert API_KEY not in dump, table


def test_future_dated_event_does_not_push_resume_past_now(sqlite_archive: str) -> None:
    future = ev(2, at=datetime(2099, 1, 1, tzinfo=UTC))
    with ScriptedServer([Reply(chunks=[frame(ev(1)), frame(future)], hold=5)]) as s1:
        assert ingest(sqlite_archive, s1).exit_code == 0
    with ScriptedServer([Reply(hold=5)]) as server:
        started = datetime.now(UTC)
        assert ingest(sqlite_archive, server, "--overlap", "60").exit_code == 0
        since = datetime.fromisoformat(server.requests[0].query["since"][0].replace("Z", "+00:00"))
    assert since <= started


def test_concurrent_first_runs_on_a_new_archive(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with ScriptedServer([], default=Reply(chunks=[frame(ev(1))], hold=8)) as server:
        procs = [
            spawn(
                [
                    "ingest",
                    "--db",
                    url,
                    "--base-url",
                    server.base_url,
                    "--until-idle",
                    "3",
                    "--max-runtime",
                    "20",
                ]
            )
            for _ in range(3)
        ]
        codes = sorted(p.wait(timeout=60) for p in procs)
        for p in procs:
            p.communicate()
    assert codes == [0, 75, 75], codes
    assert ids(url) == ["evt_1"]


def test_schema_from_a_newer_version_names_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    migrate.upgrade(url)
    engine_rows = rows(url, "SELECT version_num FROM alembic_version")
    assert engine_rows == [(migrate.head_revision(),)]
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    result = invoke(
        ["ingest", "--db", url, "--base-url", "http://127.0.0.1:9", "--max-runtime", "1"]
    )
    assert result.exit_code == 4
    assert "newer than this version" in result.output and "upgrade grantex-archive" in result.output


def test_reader_failing_at_start_ends_the_run(sqlite_archive: str) -> None:
    # httpx needs an extra package for SOCKS proxies: creating the client fails.
    with ScriptedServer([Reply(chunks=[frame(ev(1))], hold=5)]) as server:
        started = time.monotonic()
        result = ingest(sqlite_archive, server, env={"ALL_PROXY": "socks5://127.0.0.1:1"})
        elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert elapsed < 10
    [(outcome,)] = rows(sqlite_archive, "SELECT outcome FROM ingest_runs")
    assert outcome == "failed"


def test_json_logs_carry_the_error_too(sqlite_archive: str) -> None:
    with ScriptedServer([Reply(status=401)]) as server:
        result = ingest(sqlite_archive, server, "--log-format", "json")
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    # Every line is JSON, and the fatal error is said once.
    parsed = [json.loads(line) for line in lines]
    errors = [e for e in parsed if e["level"] == "error"]
    assert len(errors) == 1, lines
    assert "401" in errors[0]["message"] and errors[0]["exit_code"] == 3
    assert errors[0]["outcome"] == "auth_failed"
    assert API_KEY not in result.output
