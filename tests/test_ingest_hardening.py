"""Unsafe defaults and tracebacks of the ingest and db commands, each a clear error now."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ingest import migrate
from tests.conftest import API_KEY, cli_command, invoke, rows
from tests.scripted_server import Reply, ScriptedServer, frame
from tests.test_ingest_cli import ev
from tests.test_ingest_cli import ingest as run_ingest


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_missing_parent_directory_is_refused_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nope' / 'dir' / 'a.db'}"
    result = invoke(
        ["ingest", "--db", url, "--base-url", "http://127.0.0.1:9", "--max-runtime", "1"]
    )
    assert result.exit_code == 2
    assert result.output.startswith("Error: the directory of the archive ")
    assert "does not exist" in result.output
    upgrade = invoke(["db", "upgrade", "--db", url])
    assert upgrade.exit_code == 2
    assert "does not exist" in upgrade.output
    assert _files(tmp_path) == []


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not an archive\n" * 50)
    url = f"sqlite:///{notes}"
    for args in (
        ["ingest", "--db", url, "--base-url", "http://127.0.0.1:9", "--max-runtime", "5"],
        ["db", "upgrade", "--db", url],
        ["db", "current", "--db", url],
        ["db", "downgrade", "base", "--db", url, "--yes"],
    ):
        result = invoke(args)
        assert result.exit_code == 4, (args, result.output)
        assert result.output == f"Error: {notes} is not a usable archive: file is not a database\n"
    assert notes.read_text() == "my notes, not an archive\n" * 50


def test_archive_in_an_unwritable_directory_is_a_clear_error() -> None:
    # /proc refuses new files even to root, which ignores permission bits.
    proc = subprocess.run(
        [*cli_command(), "ingest", "--db", "sqlite:////proc/archive.db", "--max-runtime", "2"],
        env=dict(os.environ, GRANTEX_API_KEY=API_KEY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("Error: cannot create the lock file /proc/archive.db.ingest-")
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_since_takes_a_bare_date(sqlite_archive: str) -> None:
    with ScriptedServer([Reply(hold=5)]) as server:
        result = invoke(
            [
                "ingest",
                "--db",
                sqlite_archive,
                "--base-url",
                server.base_url,
                "--since",
                "2026-11-30",
                "--until-idle",
                "0.3",
                "--max-runtime",
                "10",
            ]
        )
        assert result.exit_code == 0, result.output
        assert server.requests[0].query["since"] == ["2026-11-30T00:00:00.000Z"]
    bad = invoke(["ingest", "--db", sqlite_archive, "--since", "2026-13-01"])
    assert bad.exit_code == 2
    assert "is not an ISO 8601 date or timestamp" in bad.output


def _archive_with_events(url: str, count: int) -> None:
    chunks = [frame(ev(n)) for n in range(count)]
    with ScriptedServer([Reply(chunks=chunks, hold=5)]) as server:
        result = run_ingest(url, server, "--since", "2026-03-01")
    assert result.exit_code == 0, result.output


def test_downgrade_needs_confirmation_and_says_what_it_drops(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    _archive_with_events(archive_url, 3)
    refused = invoke(["db", "downgrade", "base", "--db", archive_url])
    assert refused.exit_code == 2
    assert refused.output.startswith("Error: not downgraded: this drops every table of ")
    assert "3 events, 0 rejected frames and 1 run record; pass --yes to confirm" in refused.output
    assert rows(archive_url, "SELECT count(*) FROM events") == [(3,)]
    partial = invoke(["db", "downgrade", "0001", "--db", archive_url])
    assert partial.exit_code == 2
    assert "the 3 events stay" in partial.output
    done = invoke(["db", "downgrade", "base", "--db", archive_url, "--yes"])
    assert done.exit_code == 0, done.output
    with pytest.raises(Exception, match="events"):
        rows(archive_url, "SELECT count(*) FROM events")


def test_downgrade_on_a_terminal_takes_a_typed_confirmation(tmp_path: Path) -> None:
    """A real pseudo-terminal: the prompt, a wrong answer, then the right one."""
    import pty

    url = f"sqlite:///{tmp_path / 'a.db'}"
    migrate.upgrade(url)

    def run(answer: str) -> tuple[int, str]:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the real CLI on the terminal
            os.execvpe(
                cli_command()[0],
                [*cli_command(), "db", "downgrade", "base", "--db", url],
                dict(os.environ),
            )
        output = b""
        sent = False
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if not sent and b"to go on" in output:
                os.write(fd, answer.encode() + b"\n")
                sent = True
        _pid, status = os.waitpid(pid, 0)
        os.close(fd)
        return os.waitstatus_to_exitcode(status), output.decode(errors="replace")

    code, text = run("yes")
    assert code == 1 and "not downgraded" in text
    assert rows(url, "SELECT count(*) FROM events") == [(0,)]
    code, text = run("downgrade")
    assert code == 0, text
    assert "This drops every table" in text and "downgraded to base" in text


def test_a_run_ended_by_a_database_outage_gets_its_true_record_later(tmp_path: Path) -> None:
    import sqlite3
    import time

    from tests.conftest import event_count, spawn

    archive = tmp_path / "archive.db"
    url = f"sqlite:///{archive}"

    chunks = [frame(ev(n)) for n in range(1, 4)] + [b": wait\n\n"] * 20
    chunks += [frame(ev(n)) for n in range(4, 8)]
    renames = [
        ("events", "events_away"),
        ("ingest_runs", "runs_away"),
        ("ingest_connections", "connections_away"),
    ]
    with ScriptedServer([Reply(chunks=chunks, pause=0.1, hold=30)]) as server:
        proc = spawn(
            [
                "ingest",
                "--db",
                url,
                "--base-url",
                server.base_url,
                "--since",
                "2026-03-01",
                "--flush-interval",
                "0.2",
                "--db-retry-timeout",
                "2",
            ]
        )
        try:
            deadline = time.monotonic() + 30
            while event_count(url) < 3:
                assert time.monotonic() < deadline, "the first events never arrived"
                time.sleep(0.05)
            # The outage: the tables the run writes to are gone.
            conn = sqlite3.connect(archive)
            for old, new in renames:
                conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
            conn.commit()
            conn.close()
            _out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 4, err
    journal = list(tmp_path.glob("archive.db.run-*.json"))
    assert len(journal) == 1, err
    kept = json.loads(journal[0].read_text())
    # The connection's events are what its batches committed, counted in the database.
    assert set(kept["connection_values"]) == {"closed_at", "close_reason"}
    # The database comes back; the next run records how the first one really ended.
    conn = sqlite3.connect(archive)
    for old, new in renames:
        conn.execute(f"ALTER TABLE {new} RENAME TO {old}")
    conn.commit()
    conn.close()
    with ScriptedServer([Reply(hold=5)]) as server:
        result = invoke(
            ["ingest", "--db", url, "--base-url", server.base_url, "--until-idle", "0.3"]
        )
    assert result.exit_code == 0, result.output
    first = rows(
        url,
        "SELECT outcome, exit_code, received, inserted, finished_at IS NOT NULL, error "
        "FROM ingest_runs ORDER BY id",
    )[0]
    assert first[:5] == ("database_error", 4, 7, 3, 1)
    assert first[5].startswith("database unusable")
    assert rows(url, "SELECT count(*) FROM ingest_connections WHERE closed_at IS NULL") == [(0,)]
    # Seven events came over the first connection; the three committed before the outage count.
    assert rows(url, "SELECT events, close_reason FROM ingest_connections ORDER BY id") == [
        (3, "run ended: database_error"),
        (0, "run ended: idle"),
    ]
    assert not list(tmp_path.glob("archive.db.run-*.json"))


def test_journal_location_for_each_kind_of_archive(tmp_path: Path) -> None:
    from ingest.journal import PendingRun, journal_path, read_pending, write_pending

    beside = journal_path(f"sqlite:///{tmp_path / 'a.db'}", "prod", environ={})
    assert beside.parent == tmp_path and beside.name.startswith("a.db.run-")
    pg = "postgresql+psycopg://u:secretpw@db/grantex"
    state = journal_path(pg, "prod", environ={"GRANTEX_ARCHIVE_STATE_DIR": str(tmp_path)})
    assert state.parent == tmp_path and "secretpw" not in str(state)
    systemd = journal_path(pg, "prod", environ={"STATE_DIRECTORY": "/var/lib/gxa:/x"})
    assert systemd.parent == Path("/var/lib/gxa")
    home = journal_path(pg, "prod", environ={"HOME": "/home/op"})
    assert home.parent == Path("/home/op/.local/state/grantex-archive")
    assert journal_path(pg, "other", environ={"HOME": "/h"}) != journal_path(
        pg, "prod", environ={"HOME": "/h"}
    )
    # A round trip keeps times as times; an unreadable file is ignored.
    from datetime import datetime, timezone

    at = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    write_pending(state, PendingRun(7, {"finished_at": at, "received": 5, "outcome": "x"}))
    assert read_pending(state) == PendingRun(
        7, {"finished_at": at, "received": 5, "outcome": "x"}, None, {}
    )
    state.write_text("{not json")
    assert read_pending(state) is None


def test_a_source_label_longer_than_its_column_is_a_usage_error(archive_url: str) -> None:
    result = invoke(["ingest", "--db", archive_url, "--source", "s" * 256, "--max-runtime", "1"])
    assert result.exit_code == 2
    assert "'--source': must be at most 255 characters" in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+psycopg://u:secretpw@127.0.0.1:notaport/x", "invalid database URL"),
        ("mysql+nosuchdriver://u:secretpw@h/x", "unsupported database URL scheme"),
    ],
)
def test_malformed_database_urls_are_one_line_without_the_password(url: str, message: str) -> None:
    for args in (["ingest", "--db", url], ["db", "upgrade", "--db", url], ["status", "--db", url]):
        result = invoke(args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("Error: ") and message in result.output
        assert "secretpw" not in result.output
        assert len(result.output.strip().splitlines()) == 1
