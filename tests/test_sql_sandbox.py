"""Analyst SQL: the file sandbox, statement text, DuckDB's messages, Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from queries.copy import AnalyticsCopy
from queries.session import Session
from tests.analytics_fixture import REPORTS
from tests.conftest import API_KEY, cli_command, invoke, rows


def _one_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    return lines[0]


def _outside_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "outside.parquet"
    duckdb.connect().execute(f"COPY (SELECT 42 AS secret) TO '{path}' (FORMAT parquet)")
    return path


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_text('/proc/self/environ')",
        "SELECT * FROM read_blob('/proc/self/environ')",
        "SELECT * FROM read_csv('/proc/self/environ', sep = '=')",
        "SELECT * FROM read_text('/proc/self/fd/0')",
        "SELECT * FROM read_parquet('{outside}')",
        "SELECT * FROM '{outside}'",
        "SELECT * FROM read_text('{copy}/../../../etc/passwd')",
        "SELECT * FROM read_csv('https://example.invalid/x.csv')",
    ],
)
def test_sql_reads_no_file_outside_the_analytics_copy(
    archive: str, tmp_path: Path, query: str
) -> None:
    outside = _outside_parquet(tmp_path)
    copy_dir = Path(archive.removeprefix("sqlite:///") + ".analytics")
    text = query.format(outside=outside, copy=copy_dir)
    result = invoke(["sql", text, "--db", archive])
    assert result.exit_code == 1, result.output
    line = _one_error(result.output)
    assert "Permission Error" in line and "disabled by configuration" in line
    assert API_KEY not in result.output and "root:" not in result.output


@pytest.mark.parametrize(
    "statement",
    [
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "SET lock_configuration = false",
        "RESET allowed_directories",
        "SET allowed_directories = ['/']",
    ],
)
def test_the_sandbox_cannot_be_undone(archive: str, statement: str) -> None:
    result = invoke(["sql", statement, "--db", archive])
    assert result.exit_code == 1
    assert "read-only" in _one_error(result.output)
    # And were a statement to reach DuckDB, the configuration is locked.
    copy = AnalyticsCopy(archive)
    session = Session(copy, sandbox=True)
    try:
        with pytest.raises(duckdb.Error, match="locked"):
            session.conn.execute(statement)
        with pytest.raises(duckdb.PermissionException):
            session.conn.execute("SELECT * FROM read_text('/etc/passwd')")
    finally:
        session.close()


def test_reports_sql_status_and_export_work_in_and_beside_the_sandbox(
    archive: str, tmp_path: Path
) -> None:
    for name in REPORTS:
        for fmt in ("csv", "json"):
            result = invoke(["report", name, "--db", archive, "--format", fmt])
            assert result.exit_code == 0, (name, fmt, result.output)
    target = tmp_path / "volume.csv"
    result = invoke(["report", "event-volume", "--db", archive, "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text().startswith("period,type,events")
    result = invoke(
        ["sql", "SELECT count(*) AS n FROM events JOIN grants USING (grant_id)", "--db", archive]
    )
    assert result.exit_code == 0, result.output
    result = invoke(["sql", "SELECT sum(range) AS s FROM range(1000)", "--db", archive])
    assert result.output.splitlines() == ["s", "499500"]
    result = invoke(["sql", "SELECT * FROM ingest_runs", "--db", archive, "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output)
    assert invoke(["status", "--db", archive]).exit_code == 0
    # Export writes its files through DuckDB, outside the copy: not sandboxed.
    exported = tmp_path / "all.csv"
    result = invoke(["export", "-o", str(exported), "--db", archive])
    assert result.exit_code == 0, result.output
    assert exported.exists()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("select 1 as one -- a comment", {"one": 1}),
        ("select 1 as one;", {"one": 1}),
        ("select 1 as one ;; ", {"one": 1}),
        ("select 1 as one -- a comment; with a semicolon", {"one": 1}),
        ("select 1 as one; -- a comment after", {"one": 1}),
        ("select 1 as one /* a; block */ ;", {"one": 1}),
        ("select ';' as s, 'a -- b' as t;", {"s": ";", "t": "a -- b"}),
        ('select 2 as "x;y" -- end', {"x;y": 2}),
        ("/* leading */ select 3 as three\n-- trailing comment\n", {"three": 3}),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_sql_accepts_trailing_semicolons_and_comments(
    archive: str, query: str, expected: dict[str, object], fmt: str
) -> None:
    result = invoke(["sql", query, "--db", archive, "--format", fmt])
    assert result.exit_code == 0, result.output
    if fmt == "json":
        assert json.loads(result.output) == [expected]
    else:
        got = list(csv.reader(io.StringIO(result.output)))
        assert got == [list(expected), [str(v) for v in expected.values()]]


def test_sql_from_stdin_with_comments_and_a_semicolon(archive: str) -> None:
    text = "-- how many\nSELECT count(*) AS n -- all of them\nFROM events;\n-- done\n"
    result = invoke(["sql", "-", "--db", archive, "--format", "json"], input=text)
    assert result.exit_code == 0, result.output
    (archived,) = rows(archive, "SELECT count(*) FROM events")
    assert json.loads(result.output) == [{"n": archived[0]}]


def test_sql_explain_with_a_semicolon_and_comment(archive: str) -> None:
    result = invoke(["sql", "EXPLAIN SELECT count(*) FROM events; -- plan", "--db", archive])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "query",
    [
        "select 1; select 2",
        "select 1; -- fine so far\nselect 2",
        "select 1 /* ; */; delete from events",
    ],
)
def test_sql_still_takes_one_statement(archive: str, query: str) -> None:
    result = invoke(["sql", query, "--db", archive])
    assert result.exit_code == 1
    assert "one statement at a time, got 2" in _one_error(result.output)


@pytest.mark.parametrize(
    ("query", "hints"),
    [
        ("SELECT grant_idd FROM events", ["grant_idd", "Candidate bindings:", '"grant_id"']),
        ("SELECT * FROM evnts", ["evnts", 'Did you mean "events"?']),
    ],
)
def test_sql_errors_keep_duckdbs_hints_on_one_line(
    archive: str, query: str, hints: list[str]
) -> None:
    for fmt in ("csv", "json"):
        result = invoke(["sql", query, "--db", archive, "--format", fmt])
        assert result.exit_code == 1
        line = _one_error(result.output)
        for hint in hints:
            assert hint in line
        assert "^" not in line and "SELECT * FROM (" not in line


SLOW_QUERY = "SELECT sum(a.range * b.range) AS s FROM range(3000000) a, range(3000000) b"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_ctrl_c_during_a_query_exits_130_and_leaves_nothing(
    archive: str, tmp_path: Path, fmt: str
) -> None:
    assert invoke(["refresh", "--db", archive]).exit_code == 0
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / f"result.{fmt}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, GRANTEX_API_KEY=API_KEY, TMPDIR=str(scratch))
    proc = subprocess.Popen(
        [*cli_command(), "sql", SLOW_QUERY, "--db", archive, "--no-refresh", "-o", str(target)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell started in the background ignores SIGINT; a terminal does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Starting up takes about a second of CPU; the query then keeps both
    # threads busy for minutes. Past 3 s of CPU, DuckDB is running it.
    deadline = time.monotonic() + 60
    while _cpu_seconds(proc.pid) < 3.0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the query never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out == ""
    assert err.strip() == f"Error: interrupted; nothing was written to {target}"
    assert list(out_dir.iterdir()) == []
    assert list(scratch.iterdir()) == []
