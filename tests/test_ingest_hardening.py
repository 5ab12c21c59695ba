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
    chunks = [
        frame(
            json.dumps(
                {
                    "id": f"evt_{n}",
                    "type": "grant.created",
                    "createdAt": f"2026-03-01T12:00:{n:02d}.000Z",
                    "data": {"grantId": f"g{n}"},
                }
            )
        )
        for n in range(count)
    ]
    with ScriptedServer([Reply(chunks=chunks, hold=5)]) as server:
        result = invoke(
            [
                "ingest",
                "--db",
                url,
                "--base-url",
                server.base_url,
                "--until-idle",
                "0.3",
                "--max-runtime",
                "10",
                "--since",
                "2026-03-01",
            ]
        )
    assert result.exit_code == 0, result.output


def test_downgrade_needs_confirmation_and_says_what_it_drops(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    _archive_with_events(archive_url, 3)
    refused = invoke(["db", "downgrade", "base", "--db", archive_url])
    assert refused.exit_code == 2
    assert refused.output.startswith("Error: not downgraded: this drops every table of ")
    assert "3 events, 0 rejected frames and 1 run records; pass --yes to confirm" in refused.output
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
