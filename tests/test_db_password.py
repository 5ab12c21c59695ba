"""A PostgreSQL password in the archive URL is never printed, whatever happens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import API_KEY

EXE = Path(sys.executable).with_name("grantex-archive")
PASSWORD = "secretpw"
UNREACHABLE = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"
BAD_PORT = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:notaport/x"

COMMANDS = [
    ["ingest", "--db-retry-timeout", "0"],
    ["ingest", "--db-retry-timeout", "0", "--log-format", "json"],
    ["status"],
    ["db", "upgrade"],
    ["db", "current"],
    ["refresh"],
    ["report", "top-agents"],
    ["sql", "SELECT 1"],
    ["export", "-o", "out.csv"],
]


def run(args: list[str], url: str, how: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRANTEX_API_KEY": API_KEY}
    env["GRANTEX_ARCHIVE_ANALYTICS_DIR"] = str(cwd / "copy")
    if how == "env":
        env["GRANTEX_ARCHIVE_DB"] = url
    else:
        args = [*args, "--db", url]
    return subprocess.run(
        [str(EXE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


CASES = [(args, "env") for args in COMMANDS]
CASES += [(["ingest", "--db-retry-timeout", "0"], "flag"), (["status"], "flag")]


@pytest.mark.parametrize(("args", "how"), CASES, ids=[f"{' '.join(a)}-{h}" for a, h in CASES])
def test_unreachable_database_errors_hide_the_password(
    args: list[str], how: str, tmp_path: Path
) -> None:
    result = run(args, UNREACHABLE, how, tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "database unusable" in result.stderr  # the error is there, in text or JSON
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [["ingest"], ["status"]], ids=["ingest", "status"])
def test_malformed_url_errors_hide_the_password(args: list[str], tmp_path: Path) -> None:
    result = run(args, BAD_PORT, "env", tmp_path)
    assert result.returncode != 0
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.postgres
def test_working_archive_output_hides_the_password(pg_archive: str, tmp_path: Path) -> None:
    """Start lines, `db upgrade` and `status` name the archive: without its password.

    The test server trusts local connections, so it ignores the password.
    """
    url = pg_archive.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)
    assert PASSWORD in url
    outputs = []
    for args in (
        ["db", "upgrade"],
        ["ingest", "--base-url", "http://127.0.0.1:1", "--max-runtime", "1"],
        [
            "ingest",
            "--base-url",
            "http://127.0.0.1:1",
            "--max-runtime",
            "1",
            "--log-format",
            "json",
        ],
        ["status"],
    ):
        result = run(args, url, "env", tmp_path)
        outputs.append(result.stdout + result.stderr)
    assert "archive=postgresql+psycopg://postgres:***@" in outputs[1]
    for output in outputs:
        assert PASSWORD not in output, output
