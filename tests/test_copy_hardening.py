"""The analytics copy's edge cases: no archive, a writer's lock, a schema gone or grown, a crash.

The copy's columns come from ``ingest.schema``; its files are synced before
a manifest names them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from ingest import migrate, schema
from ingest.events import normalise
from ingest.simulator import Simulator, SimulatorConfig
from ingest.store import Received
from queries.copy import (
    DERIVED_COLUMNS,
    GRANT_STATE_COLUMNS,
    MANIFEST,
    AnalyticsCopy,
    view_statements,
)
from queries.copy.columns import copy_columns, duckdb_type
from queries.copy.grant_state import combine_sql, grant_state_sql, merge_state_sql
from queries.copy.sql import empty_select, events_from
from queries.copy.transfer import duck_projection, typed_select
from queries.session import Session
from tests.analytics_fixture import MALFORMED, RECEIVED, build_archive
from tests.conftest import API_KEY, invoke, rows, spawn, wait_for_events


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
            # Each command four times over (more only adds time on a loaded CI machine).
            while runs < 20:
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
    assert runs == 20


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


# --------------------------------------------------------------------------- the schema, once


def _duck_type(kind: str) -> str:
    """DuckDB's own name for a type (TIMESTAMPTZ is TIMESTAMP WITH TIME ZONE)."""
    return str(duckdb.connect().execute(f"SELECT typeof(CAST(NULL AS {kind}))").fetchall()[0][0])


def _view_columns(session: Session, view: str) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in session.conn.execute(f"DESCRIBE {view}").fetchall()]


def test_every_archive_column_is_in_the_copy(archive: str, tmp_path: Path) -> None:
    """Each archive table the copy carries, column for column, typed as columns.py maps it."""
    analytics = AnalyticsCopy(archive, tmp_path / "copy")
    analytics.refresh()
    session = Session(analytics)
    try:
        for table in (schema.events, schema.rejected_events, schema.ingest_runs):
            want = [(c.name, _duck_type(duckdb_type(c))) for c in table.columns]
            got = _view_columns(session, table.name)
            # The events view adds the derived columns after the archive's.
            assert got[: len(want)] == want, table.name
            archived = rows(archive, f"SELECT * FROM {table.name} ORDER BY 1")
            copied = session.conn.execute(
                f"SELECT {', '.join(c.name for c in table.columns)} FROM {table.name} ORDER BY 1"
            ).fetchall()
            assert len(copied) == len(archived) > 0, table.name
        derived = [name for name, _ in _view_columns(session, "events")][len(schema.events.c) :]
        assert derived == [name for name, _, _ in DERIVED_COLUMNS]
    finally:
        session.close()
    # An empty copy's views have the same columns.
    empty = duckdb.connect()
    for statement in view_statements(tmp_path / "none", None):
        empty.execute(statement)
    derived_names = [name for name, _, _ in DERIVED_COLUMNS]
    for table, extra in (
        (schema.events, derived_names),
        (schema.rejected_events, []),
        (schema.ingest_runs, []),
    ):
        got = [str(r[0]) for r in empty.execute(f"DESCRIBE {table.name}").fetchall()]
        assert got == [c.name for c in table.columns] + extra


def test_the_copy_columns_derive_from_the_sqlalchemy_table() -> None:
    table = sa.Table(
        "events",
        sa.MetaData(),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("id", sa.String(255)),
        sa.Column("at", sa.DateTime(timezone=True)),
        sa.Column("local", sa.DateTime()),
        sa.Column("on_day", sa.Date()),
        sa.Column("count", sa.SmallInteger()),
        sa.Column("ratio", sa.Float()),
        sa.Column("amount", sa.Numeric(10, 2)),
        sa.Column("flag", sa.Boolean()),
        sa.Column("note", sa.Text()),
    )
    columns = copy_columns(table)
    assert columns == (
        ("seq", "BIGINT"),
        ("id", "VARCHAR"),
        ("at", "TIMESTAMPTZ"),
        ("local", "TIMESTAMP"),
        ("on_day", "DATE"),
        ("count", "BIGINT"),
        ("ratio", "DOUBLE"),
        ("amount", "DOUBLE"),
        ("flag", "BOOLEAN"),
        ("note", "VARCHAR"),
    )
    # The archive SELECT and the cast to the copy's types carry every column.
    select = typed_select("events", columns, "1 = 1", sqlite=True)
    assert "0 AS flag" in select and "'' AS note" in select and "NULL AS seq" in select
    projection = duck_projection(columns)
    assert "CAST(CAST(at AS TIMESTAMP) AS TIMESTAMPTZ) AS at" in projection
    assert "CAST(note AS VARCHAR) AS note" in projection
    # A type without a DuckDB counterpart is an error naming the column, not a silent gap.
    odd = sa.Table("t", sa.MetaData(), sa.Column("blob", sa.LargeBinary()))
    with pytest.raises(TypeError, match=r"t\.blob"):
        copy_columns(odd)


# Appends columns to ingest.schema before anything reads it, as an edit of
# ingest/schema.py would, then refreshes a copy made before the edit.
SCHEMA_EDIT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import sqlalchemy as sa
    from ingest import schema
    schema.events.append_column(sa.Column("note", sa.Text()))
    schema.ingest_runs.append_column(sa.Column("host", sa.String(64)))
    from queries.copy import AnalyticsCopy
    from queries.session import Session
    copy = AnalyticsCopy(sys.argv[1], Path(sys.argv[2]))
    result = copy.refresh()
    session = Session(copy)
    out = {
        "rebuilt": result.rebuilt,
        "reason": result.reason,
        "notes": session.conn.execute(
            "SELECT count(*) FILTER (WHERE note = 'n' || seq), count(*) FROM events"
        ).fetchall()[0],
        "hosts": session.conn.execute("SELECT list(host ORDER BY id) FROM ingest_runs").fetchall()[0],
        "state": session.conn.execute("SELECT count(*) FROM grants").fetchall()[0],
    }
    session.close()
    print(json.dumps(out))
    """
)


def test_a_column_added_to_the_schema_reaches_the_copy_and_its_views(
    archive: str, tmp_path: Path
) -> None:
    """ingest/schema.py and a migration are the only edits a new column needs."""
    analytics = AnalyticsCopy(archive, tmp_path / "copy")
    analytics.refresh()
    engine = sa.create_engine(archive)
    with engine.begin() as conn:  # what the new column's migration would do
        conn.execute(sa.text("ALTER TABLE events ADD COLUMN note TEXT"))
        conn.execute(sa.text("UPDATE events SET note = 'n' || seq"))
        conn.execute(sa.text("ALTER TABLE ingest_runs ADD COLUMN host VARCHAR(64)"))
        conn.execute(sa.text("UPDATE ingest_runs SET host = 'h' || id"))
        events_archived = conn.execute(sa.text("SELECT count(*) FROM events")).scalar()
    engine.dispose()
    proc = subprocess.run(
        [sys.executable, "-c", SCHEMA_EDIT, archive, str(tmp_path / "copy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # The copy made before the edit lacks the column: it is rebuilt, not mixed.
    assert out["rebuilt"] and "columns differ" in out["reason"]
    assert out["notes"] == [events_archived, events_archived]
    assert out["hosts"] == [["h1", "h2", "h3"]]
    assert out["state"][0] > 0


def _drop_column(path: Path, column: str) -> None:
    """Rewrite a Parquet file without one column, as an older version wrote it."""
    conn = duckdb.connect()
    tmp = path.with_name(path.name + ".old")
    conn.execute(
        f"COPY (SELECT * EXCLUDE ({column}) FROM read_parquet('{path}')) TO '{tmp}' (FORMAT parquet)"
    )
    os.replace(tmp, path)


def test_a_copy_written_with_fewer_columns_is_brought_up_to_date(
    archive: str, tmp_path: Path
) -> None:
    analytics = AnalyticsCopy(archive, tmp_path / "copy")
    analytics.refresh()
    manifest = analytics.manifest()
    assert manifest is not None
    # A small table written before the archive had ``repeats`` is copied again.
    _drop_column(analytics.directory / manifest.tables["rejected_events"]["file"], "repeats")
    result = analytics.refresh()
    assert not result.rebuilt
    refreshed = analytics.manifest()
    assert refreshed is not None
    assert refreshed.tables["rejected_events"] != manifest.tables["rejected_events"]
    assert refreshed.tables["ingest_runs"] == manifest.tables["ingest_runs"]
    # Segments without a column the archive has mean a rebuild.
    _drop_column(analytics.directory / refreshed.segments[0].file, "payload")
    result = analytics.refresh()
    assert result.rebuilt and result.reason and "columns differ" in result.reason
    session = Session(analytics)
    try:
        assert "payload" in [name for name, _ in _view_columns(session, "events")]
        assert "repeats" in [name for name, _ in _view_columns(session, "rejected_events")]
    finally:
        session.close()


def test_a_rejected_frame_arriving_again_reaches_the_copy(archive: str, tmp_path: Path) -> None:
    """Its row gains a repeat, not a new id: the marker counts repeats too."""
    analytics = AnalyticsCopy(archive, tmp_path / "copy")
    analytics.refresh()
    store = migrate.open_archive(archive)
    try:
        store.write_batch("acct-a", 2, [Received(normalise(f), RECEIVED) for f in MALFORMED])
    finally:
        store.close()
    analytics.refresh()
    session = Session(analytics)
    try:
        copied = session.conn.execute(
            "SELECT id, repeats FROM rejected_events ORDER BY id"
        ).fetchall()
    finally:
        session.close()
    assert copied == [
        tuple(r) for r in rows(archive, "SELECT id, repeats FROM rejected_events ORDER BY id")
    ]
    assert all(repeats == 1 for _, repeats in copied)


def test_the_grant_state_sql_yields_the_declared_columns() -> None:
    """The state the events give, and the state folds give, match GRANT_STATE_COLUMNS."""
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    want = [(name, _duck_type(kind)) for name, kind in GRANT_STATE_COLUMNS]
    fresh = grant_state_sql(events_from([]))
    for sql in (
        fresh,
        combine_sql(fresh),
        merge_state_sql(fresh, empty_select(GRANT_STATE_COLUMNS)),
    ):
        got = [(str(r[0]), str(r[1])) for r in conn.execute(f"DESCRIBE {sql}").fetchall()]
        assert got == want


# --------------------------------------------------------------------------- durable files


def test_every_file_a_manifest_names_is_synced_before_it(
    archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        steps.append(("rename", str(Path(src).resolve()), str(Path(dst).resolve())))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    analytics = AnalyticsCopy(archive, tmp_path / "copy")
    analytics.refresh()
    manifest = analytics.manifest()
    assert manifest is not None
    root = analytics.directory.resolve()
    (written,) = [i for i, s in enumerate(steps) if s[0] == "rename" and s[2].endswith(MANIFEST)]
    assert ("fsync", str(root)) in steps[written:]
    for name in [*manifest.files(), "views.sql"]:
        # Its data synced under the temporary name, renamed, its directory synced:
        # all before the manifest that names it is in place.
        (renamed,) = [
            i for i, s in enumerate(steps) if s[0] == "rename" and s[2] == str(root / name)
        ]
        source = steps[renamed][1]
        assert ("fsync", source) in steps[:renamed], name
        assert ("fsync", str((root / name).parent)) in steps[renamed:], name
        if name != "views.sql":
            assert renamed < written, name
