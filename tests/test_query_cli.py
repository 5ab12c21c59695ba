"""The analytics commands as users run them: report, sql, status, refresh, demo."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest.schema import ingest_runs
from queries.reports import load_reports
from tests.analytics_fixture import REPORTS
from tests.conftest import cli_command, invoke, rows


def test_report_list_names_every_report_with_a_line() -> None:
    result = invoke(["report", "--list"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == REPORTS
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_every_report_file_states_what_it_computes() -> None:
    reports = load_reports()
    assert sorted(reports) == REPORTS
    for report in reports.values():
        assert len(report.description) > 100, report.name
        assert report.sql.lstrip().startswith("-- name:")


def test_report_describe(archive: str) -> None:
    result = invoke(["report", "budget-exhaustion-rate", "--describe"])
    assert result.exit_code == 0
    assert "median_seconds_to_exhaustion" in result.output


def test_unknown_report_lists_the_valid_ones(archive: str) -> None:
    result = invoke(["report", "nonsense", "--db", archive])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error == ["Error: no report named 'nonsense'; the reports are: " + ", ".join(REPORTS)]
    result = invoke(["report", "revocations", "--db", archive])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error == [
        "Error: no report named 'revocations'; did you mean revocations-by-actor or reconciliation? "
        "(`grantex-archive report --list` lists them all)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest-coverage", "--agent", "A1"], "report 'ingest-coverage' does not take --agent"),
        (["top-agents", "--by", "day"], "report 'top-agents' does not take --by"),
        (["event-volume", "--by", "agent"], "report 'event-volume' takes --by day|week|month"),
        (["event-volume", "--by", "year"], "'year' is not one of"),
        (["event-volume", "--since", "yesterday"], "'yesterday' is not an ISO 8601"),
        (["event-volume", "--since", "2026-03-02", "--until", "2026-03-01"], "later than --since"),
        (["event-volume", "--format", "xml"], "'xml' is not one of"),
        ([], "give a report NAME"),
    ],
)
def test_bad_report_flags_are_one_error_line_and_exit_2(
    archive: str, args: list[str], message: str
) -> None:
    result = invoke(["report", *args, "--db", archive])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output


def test_output_formats(archive: str, tmp_path: Path) -> None:
    base = ["report", "revocations-by-actor", "--db", archive, "--since", "2026-03-02"]
    base += ["--until", "2026-03-05"]
    # Not a terminal: CSV by default.
    as_csv = invoke(base)
    assert as_csv.exit_code == 0
    # LF line ends on a pipe; RFC 4180's CRLF is for files (tests/test_output.py).
    assert as_csv.stdout_bytes.startswith(
        b"actor,via,revocations,share\ndeveloper_or_principal,direct,2,0.4\n"
    )
    assert next(iter(csv.DictReader(io.StringIO(as_csv.output)))) == {
        "actor": "developer_or_principal",
        "via": "direct",
        "revocations": "2",
        "share": "0.4",
    }
    jsonl = invoke([*base, "--format", "jsonl"]).output.splitlines()
    assert json.loads(jsonl[0]) == {
        "actor": "developer_or_principal",
        "via": "direct",
        "revocations": 2,
        "share": 0.4,
    }
    assert len(jsonl) == 4
    table = invoke([*base, "--format", "table"]).output
    assert table.splitlines()[0].split() == ["actor", "via", "revocations", "share"]
    # The footer is for a terminal; this is a pipe.
    assert len(table.splitlines()) == 6 and "rows)" not in table
    markdown = invoke([*base, "--format", "markdown"]).output.splitlines()
    assert markdown[:3] == [
        "| actor | via | revocations | share |",
        "|---|---|---:|---:|",
        "| developer_or_principal | direct | 2 | 0.4 |",
    ]
    # -o FILE: the format follows the suffix, nothing on stdout.
    target = tmp_path / "out.json"
    result = invoke([*base, "-o", str(target)])
    assert result.exit_code == 0 and result.output == ""
    assert json.loads(target.read_text())[0]["actor"] == "developer_or_principal"
    assert not list(tmp_path.glob(".out.json*"))


def test_csv_tells_null_from_an_empty_string(archive: str) -> None:
    result = invoke(["sql", "SELECT '' AS empty, NULL AS missing, 'a' AS a", "--db", archive])
    assert result.stdout_bytes == b'empty,missing,a\n"",,a\n'


def test_timestamps_are_iso_utc_with_z(archive: str) -> None:
    query = "SELECT started_at FROM ingest_runs ORDER BY id"
    result = invoke(["sql", query, "--db", archive, "--format", "csv"])
    first = next(iter(csv.DictReader(io.StringIO(result.output))))
    assert first["started_at"] == "2026-03-02T00:00:00.000Z"


def test_sql_with_parameters_file_and_stdin(archive: str, tmp_path: Path) -> None:
    query = "SELECT grant_id, revoked_by FROM grants WHERE agent_id = $agent ORDER BY 1"
    result = invoke(["sql", query, "-p", "agent", "A3", "--db", archive, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"grant_id": "G9", "revoked_by": "developer_or_principal"}]
    script = tmp_path / "q.sql"
    script.write_text("SELECT count(*) AS n FROM events WHERE day = $day::DATE;\n")
    result = invoke(["sql", "-f", str(script), "-p", "day", "2026-03-04", "--db", archive])
    assert result.output == "n\n2\n"
    result = invoke(["sql", "-", "--db", archive], input="SELECT 40 + 2 AS answer")
    assert result.output == "answer\n42\n"


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM events",
        "INSERT INTO events SELECT * FROM events",
        "DROP VIEW events",
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO 'leak.csv'",
        "ATTACH 'other.db'",
        "INSTALL sqlite",
        "SET threads = 1",
        "SELECT 1; DELETE FROM events",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO 'leak.csv'",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN /* sneaky */ ANALYZE COPY (SELECT 1) TO 'leak.csv'",
    ],
)
def test_sql_refuses_anything_but_reading(archive: str, statement: str) -> None:
    before = rows(archive, "SELECT count(*) FROM events")
    result = invoke(["sql", statement, "--db", archive])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "read-only" in errors[0] or "one statement at a time" in errors[0]
    assert rows(archive, "SELECT count(*) FROM events") == before
    assert not Path("leak.csv").exists()


def test_sql_explains_a_select(archive: str) -> None:
    result = invoke(["sql", "EXPLAIN ANALYZE SELECT count(*) FROM events", "--db", archive])
    assert result.exit_code == 0, result.output
    assert "explain_key" in result.output.splitlines()[0] or "QUERY" in result.output


def test_sql_errors_are_duckdbs_first_line_and_exit_1(archive: str) -> None:
    result = invoke(["sql", "SELECT nope FROM events", "--db", archive])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: Binder Error:") and "nope" in line
    result = invoke(["sql", "SELEC 1", "--db", archive])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Parser Error:")
    result = invoke(["sql", "--db", archive])
    assert result.exit_code == 2


def test_no_refresh_needs_a_copy_and_the_env_var_moves_it(archive: str, tmp_path: Path) -> None:
    where = tmp_path / "elsewhere"
    env = {"GRANTEX_ARCHIVE_ANALYTICS_DIR": str(where)}
    result = invoke(["sql", "SELECT 1 AS one", "--db", archive, "--no-refresh"], env=env)
    assert result.exit_code == 1
    assert "no analytics copy" in result.output
    assert "run without --no-refresh" in result.output
    assert invoke(["sql", "SELECT 1 AS one", "--db", archive], env=env).exit_code == 0
    assert (where / "MANIFEST.json").exists()
    assert not Path(archive.removeprefix("sqlite:///") + ".analytics").exists()


def test_an_unwritable_analytics_dir_is_a_clear_error(archive: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke(["sql", "SELECT 1", "--db", archive, "--analytics-dir", str(blocker / "copy")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot write the analytics copy in {blocker / 'copy'}")
    assert "--analytics-dir" in result.output


def test_large_results_stream_to_a_file(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "big.jsonl"
    result = invoke(
        ["sql", "SELECT range AS n FROM range(25000)", "--db", archive, "-o", str(target)]
    )
    assert result.exit_code == 0, result.output
    lines = target.read_text().splitlines()
    assert len(lines) == 25000 and json.loads(lines[-1]) == {"n": 24999}


def test_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke(["report", "event-volume", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1
    assert "no archive at" in result.output


def test_unreachable_postgresql_exits_4(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/none"
    result = invoke(["report", "event-volume", "--db", url, "--analytics-dir", str(tmp_path)])
    assert result.exit_code == 4, result.output
    assert result.output.startswith("Error: database unusable")
    assert "hunter2" not in result.output


def test_status_and_max_age(archive: str) -> None:
    result = invoke(["status", "--db", archive, "--format", "json"])
    assert result.exit_code == 0, result.output
    status = {(r["section"], r["name"]): r["value"] for r in json.loads(result.output)}
    assert status[("archive", "events")] == 29
    assert status[("archive", "rejected_frames")] == 2
    assert status[("events", "grant.created")] == 8
    assert status[("archive", "first_occurred_at")] == "2026-03-01T00:00:00.000Z"
    assert status[("last_run", "id")] == 2
    assert status[("last_success", "finished_at")] == "2026-03-02T04:00:00.000Z"
    assert status[("analytics", "size_bytes")] > 0
    # The newest successful run ended in March 2026: stale for a 60-minute check.
    stale = invoke(["status", "--db", archive, "--max-age", "60"])
    assert stale.exit_code == 1
    assert "Error: the newest successful ingest finished" in stale.output
    engine = sa.create_engine(archive)
    with engine.begin() as conn:
        now = datetime.now(timezone.utc)
        conn.execute(
            ingest_runs.insert().values(
                source="acct-a",
                started_at=now - timedelta(minutes=5),
                finished_at=now - timedelta(minutes=4),
                outcome="idle",
                exit_code=0,
            )
        )
    engine.dispose()
    assert invoke(["status", "--db", archive, "--max-age", "60"]).exit_code == 0


def test_status_with_no_successful_run_fails_max_age(sqlite_archive: str) -> None:
    assert invoke(["db", "upgrade", "--db", sqlite_archive]).exit_code == 0
    result = invoke(["status", "--db", sqlite_archive, "--max-age", "5"])
    assert result.exit_code == 1
    assert "Error: no successful ingest run is recorded" in result.output


def test_refresh_command(archive: str, tmp_path: Path) -> None:
    result = invoke(["refresh", "--db", archive])
    assert result.exit_code == 0
    assert result.output.startswith("rebuilt ")
    result = invoke(["refresh", "--db", archive])
    assert "refreshed" in result.output and "0 new events, 29 in all" in result.output
    assert invoke(["refresh", "--full", "--db", archive]).output.startswith("rebuilt ")


def test_the_real_cli_process(archive: str) -> None:
    proc = subprocess.run(
        [*cli_command(), "report", "top-agents", "--db", archive, "--limit", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith("1,A1,4,")
    assert len(proc.stdout.splitlines()) == 2


def test_demo_runs_ingest_and_the_headline_reports(tmp_path: Path) -> None:
    archive = f"sqlite:///{tmp_path / 'demo.db'}"
    result = invoke(["demo", "--db", archive, "--events", "3000", "--no-gap"])
    assert result.exit_code == 0, result.output
    assert "Archived 3000 events" in result.output
    for name in ("event-volume", "revocations-by-actor", "budget-exhaustion-rate", "top-agents"):
        assert f"== grantex-archive report {name}" in result.output
    # A mixed stream: every kind of revocation actor shows up.
    for actor in ("developer", "principal", "system", "developer_or_principal"):
        assert f"\n{actor}," in result.output
    assert rows(archive, "SELECT count(*) FROM events") == [(3000,)]


@pytest.mark.timeout(180)
def test_demo_shows_a_gap_being_closed(tmp_path: Path) -> None:
    archive = f"sqlite:///{tmp_path / 'demo.db'}"
    result = invoke(["demo", "--db", archive, "--events", "500"])
    assert result.exit_code == 0, result.output
    for name in ("ingest-coverage", "webhook-catches", "reconciliation"):
        assert f"== grantex-archive report {name} --source live" in result.output
    # The killed worker left a gap in the live source's coverage...
    coverage = result.stdout.split("report ingest-coverage --source live")[1]
    assert "\nlive,gap," in coverage.split("\n==")[0]
    # ...which the receiver and reconcile closed in part.
    summary = re.search(
        r"Of the (\d+) events .*: (\d+) came by the stream, (\d+) by the receiver first .*, "
        r"(\d+) by the receiver alone .*, (\d+) are known from reconcile only, and (\d+) are lost",
        result.stdout,
    )
    assert summary, result.stdout
    total, stream, first, alone, reconciled, lost = map(int, summary.groups())
    assert total == stream + first + alone + reconciled + lost
    assert stream > 0 and alone > 0 and total > 150
    assert rows(archive, "SELECT count(*) FROM reconcile_runs WHERE outcome = 'completed'") == [
        (1,)
    ]
    runs = rows(archive, "SELECT outcome FROM ingest_runs WHERE source = 'live' ORDER BY id")
    assert runs == [("abandoned",), ("interrupted",)]
