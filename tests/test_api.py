"""The Python functions behind the commands give the commands' answers."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import queries
from queries.api import NoCopyYet
from queries.copy import ArchiveMissing
from queries.export import ExportSpec, Filters
from queries.reports import ReportError
from queries.session import QueryError
from tests.analytics_fixture import REPORTS
from tests.conftest import invoke


def _cli_rows(args: list[str]) -> list[list[str]]:
    result = invoke([*args, "--format", "csv"])
    assert result.exit_code == 0, result.output
    return list(csv.reader(io.StringIO(result.output)))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        from ingest.timestamps import format_timestamp

        return format_timestamp(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


@pytest.mark.parametrize("name", REPORTS)
def test_a_report_from_python_is_the_command_s(archive: str, name: str) -> None:
    table = queries.report(name, archive)
    cli = _cli_rows(["report", name, "--db", archive])
    assert cli[0] == table.column_names
    python_rows = [[_text(v) for v in row.values()] for row in table.to_pylist()]
    assert python_rows == cli[1:]


def test_report_options_and_errors(archive: str) -> None:
    since = datetime(2026, 3, 2, tzinfo=timezone.utc)
    narrowed = queries.report("event-volume", archive, since=since, by="day", limit=2)
    assert narrowed.num_rows <= 2
    assert (
        narrowed.to_pylist()
        == queries.report("event-volume", archive, since=since, by="day").to_pylist()[:2]
    )
    with pytest.raises(ReportError, match="no report"):
        queries.report("no-such-report", archive)
    with pytest.raises(ReportError, match="later"):
        queries.prepare_report("event-volume", since=since, until=since)


def test_query_is_read_only_and_takes_parameters(archive: str) -> None:
    table = queries.query(
        "SELECT count(*) AS n FROM events WHERE type = $t", archive, {"t": "grant.revoked"}
    )
    cli = _cli_rows(
        [
            "sql",
            "SELECT count(*) AS n FROM events WHERE type = $t",
            "-p",
            "t",
            "grant.revoked",
            "--db",
            archive,
        ]
    )
    assert [[str(table.column("n")[0].as_py())]] == cli[1:]
    with pytest.raises(QueryError):
        queries.query("DELETE FROM events", archive)


def test_status_rows_match_the_command(archive: str) -> None:
    result = queries.status(archive)
    rows = {(section, name): value for section, name, value in result.rows}
    cli = invoke(["status", "--db", archive, "--format", "json"])
    assert cli.exit_code == 0, cli.output
    printed = {(r["section"], r["name"]): r["value"] for r in json.loads(cli.output)}
    assert rows[("archive", "events")] == printed[("archive", "events")] > 0
    assert rows[("last_run", "outcome")] == printed[("last_run", "outcome")]
    assert set(rows) == set(printed)


def test_missing_archive_and_missing_copy_are_typed_errors(tmp_path: Path, archive: str) -> None:
    with pytest.raises(ArchiveMissing):
        queries.status(f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(NoCopyYet):
        queries.open_copy(archive, tmp_path / "elsewhere", refresh=False)


def test_export_from_python_writes_what_the_command_writes(archive: str, tmp_path: Path) -> None:
    ours = tmp_path / "ours.csv"
    result = queries.export_archive(
        ExportSpec(output=str(ours), fmt="csv"), Filters(types=("grant.revoked",)), archive
    )
    theirs = tmp_path / "theirs.csv"
    cli = invoke(["export", "-o", str(theirs), "--type", "grant.revoked", "--db", archive])
    assert cli.exit_code == 0, cli.output
    assert result.rows > 0
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_o_file_clears_what_a_killed_run_left(archive: str, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"out.{fmt}"
    stale = tmp_path / f".out.{fmt}.0badcafe.tmp"
    stale.write_text("half a result")
    unrelated = tmp_path / f".out.{fmt}.notours.tmp"
    unrelated.write_text("someone else's")
    result = invoke(["sql", "SELECT 1 AS one", "--db", archive, "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [
        unrelated.name
    ]
    assert target.exists()


def test_coverage_from_python_is_the_report_s_gaps(sqlite_archive: str) -> None:
    from tests.test_coverage import T0, build

    build(sqlite_archive)
    since, until = T0, T0 + timedelta(seconds=500)
    found = queries.coverage(sqlite_archive, since=since, until=until)
    cli = invoke(
        [
            *["report", "ingest-coverage", "--db", sqlite_archive, "--format", "json"],
            *["--since", since.isoformat(), "--until", until.isoformat()],
        ]
    )
    assert cli.exit_code == 0, cli.output
    gaps = [r for r in json.loads(cli.stdout) if r["kind"] == "gap"]
    assert [(_text(g.start), _text(g.end), g.seconds, g.cause) for g in found.gaps] == [
        (g["start_at"], g["end_at"], g["seconds"], g["cause"]) for g in gaps
    ]
    assert found.seconds == 38.0 + 22.0 + 100.0
