"""The archive reader's edge cases: no archive, a writer's lock, a schema gone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.simulator import Simulator, SimulatorConfig
from tests.analytics_fixture import build_archive
from tests.conftest import API_KEY, invoke, spawn, wait_for_events


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


COMMANDS = {
    "report": ["report", "event-volume"],
    "sql": ["sql", "SELECT count(*) FROM events"],
    "export": ["export", "-o", "{tmp}/out.csv"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["nope.db", "missing/dir/nope.db"])
def test_a_missing_archive_is_one_error_and_leaves_nothing_on_disk(
    tmp_path: Path, command: str, where: str
) -> None:
    before = _tree(tmp_path)
    target = tmp_path / where
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in COMMANDS[command]]
    result = invoke([*args, "--db", f"sqlite:///{target}"])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert line == (
        f"Error: no archive at {target}: create it with `grantex-archive ingest` "
        "(or an empty one with `grantex-archive db upgrade`)"
    )
    assert _tree(tmp_path) == before


def test_a_missing_archive_leaves_no_analytics_dir_given_either(tmp_path: Path) -> None:
    result = invoke(
        [
            "sql",
            "SELECT 1",
            "--db",
            f"sqlite:///{tmp_path / 'nope.db'}",
            "--analytics-dir",
            str(tmp_path / "a" / "copy"),
        ]
    )
    assert result.exit_code == 1
    assert _tree(tmp_path) == []


# A writer that holds the database exclusively for a moment, as SQLite does
# when the last connection of a process checkpoints and removes the WAL.
HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE ingest_runs SET source = source")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    conn.close()
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["sql", "SELECT count(*) AS n FROM events"],
        ["report", "event-volume"],
        ["status", "--no-refresh"],
    ],
    ids=["status", "sql", "report", "status-no-refresh"],
)
def test_readers_wait_for_a_writer_holding_the_sqlite_archive(
    sqlite_archive: str, tmp_path: Path, args: list[str]
) -> None:
    build_archive(sqlite_archive)
    assert invoke(["refresh", "--db", sqlite_archive]).exit_code == 0
    path = sqlite_archive.removeprefix("sqlite:///")
    # A separate process: SQLite's locks do not separate connections of one
    # process that use different copies of the library (ADBC bundles its own).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path, "1.0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = invoke([*args, "--db", sqlite_archive])
        waited = time.monotonic() - started
    finally:
        holder.communicate(timeout=30)
    assert result.exit_code == 0, result.output
    assert holder.returncode == 0
    assert "locked" not in result.output
    assert waited >= 0.5  # it did meet the lock, and waited instead of failing


@pytest.mark.slow
def test_report_sql_and_status_never_fail_while_ingest_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    config = SimulatorConfig(api_key=API_KEY, seed=31, backlog=20000, rate=2000.0)
    commands = [
        ["status"],
        ["sql", "SELECT count(*) AS n FROM events"],
        ["report", "event-volume"],
        ["report", "top-agents"],
        ["status", "--no-refresh"],
    ]
    failures: list[str] = []
    runs = 0
    with Simulator(config) as sim:
        worker = spawn(
            [
                "ingest",
                "--db",
                url,
                "--base-url",
                sim.base_url,
                "--since",
                sim.history_start.isoformat(),
                "--max-runtime",
                "120",
                "--log-format",
                "json",
            ]
        )
        try:
            wait_for_events(url, 2000)
            while runs < 40:
                assert worker.poll() is None, "ingest ended early"
                args = commands[runs % len(commands)]
                result = invoke([*args, "--db", url])
                runs += 1
                if result.exit_code != 0:
                    failures.append(f"{args}: {result.exit_code} {result.output.strip()}")
            assert worker.poll() is None, "ingest ended before the readers did"
        finally:
            worker.terminate()
            worker.communicate(timeout=30)
    assert failures == []
    assert runs == 40


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "SELECT count(*) FROM events"],
        ["report", "event-volume"],
        ["status"],
    ],
    ids=["sql", "report", "status"],
)
def test_after_a_downgrade_the_commands_point_to_db_upgrade(
    archive_url: str, tmp_path: Path, args: list[str]
) -> None:
    build_archive(archive_url)
    copy_dir = ["--analytics-dir", str(tmp_path / "copy")]
    assert invoke(["refresh", "--db", archive_url, *copy_dir]).exit_code == 0
    migrate.downgrade(archive_url, "base")
    result = invoke([*args, "--db", archive_url, *copy_dir])
    assert result.exit_code == 4, result.output
    (line,) = _error_lines(result.output)
    assert line == (
        "Error: the archive has no grantex-archive schema (was it downgraded?): "
        "run `grantex-archive db upgrade`"
    )


def test_a_schema_at_another_revision_points_to_db_upgrade(
    sqlite_archive: str, tmp_path: Path
) -> None:
    build_archive(sqlite_archive)
    engine = sa.create_engine(sqlite_archive)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    engine.dispose()
    result = invoke(["sql", "SELECT 1", "--db", sqlite_archive])
    assert result.exit_code == 4, result.output
    (line,) = _error_lines(result.output)
    assert line.startswith("Error: the archive's schema is at 0000, this version reads ")
    assert "run `grantex-archive db upgrade`" in line
