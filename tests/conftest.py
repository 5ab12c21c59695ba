from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from ingest import migrate
from ingest.cli import main
from ingest.store import Store

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # Started in the background (`cmd &` in a shell without job control), the test run
    # inherits SIGINT ignored, and every CLI process a test starts would too: the Ctrl-C
    # tests would then see their interrupt ignored. Handled here, it is reset to the
    # default at each exec, as in a run from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)

PG_URL = os.environ.get("GRANTEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
API_KEY = "gx_test_key_0123456789"


def _pg_available() -> str | None:
    try:
        engine = sa.create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_available()
    if problem is not None:
        message = f"PostgreSQL at {PG_URL} is unreachable: {problem}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return PG_URL


@dataclass
class PgSchema:
    url: str
    schema: str


@contextmanager
def _fresh_schema(server: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"gxa_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in server else "?"
    try:
        yield f"{server}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_archive(pg_server: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    with _fresh_schema(pg_server) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_archive_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like ``archive_url``, shared by the tests of one module that only read the archive."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('archive') / 'archive.db'}"
        return
    with _fresh_schema(request.getfixturevalue("pg_server")) as url:
        yield url


@pytest.fixture
def sqlite_archive(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'archive.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'archive.db'}"
    url: str = request.getfixturevalue("pg_archive")
    return url


@pytest.fixture
def store(archive_url: str) -> Iterator[Store]:
    """The store on a migrated archive (SQLite file and PostgreSQL schema)."""
    migrate.upgrade(archive_url)
    store = Store.open(archive_url)
    yield store
    store.close()


@pytest.fixture
def archive(sqlite_archive: str) -> str:
    """A SQLite archive holding the hand-built events of tests/analytics_fixture.py."""
    from tests.analytics_fixture import build_archive

    build_archive(sqlite_archive)
    return sqlite_archive


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-key"
    path.write_text(API_KEY + "\n")
    return path


def invoke(args: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> Result:
    """Run the real CLI in-process."""
    runner = CliRunner()
    full_env = {"GRANTEX_API_KEY": API_KEY}
    full_env.update(env or {})
    return runner.invoke(main, args, env=full_env, catch_exceptions=False, **kwargs)


def cli_command() -> list[str]:
    return [sys.executable, "-m", "ingest.cli"]


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Run the real CLI as a separate process (for signals and kills)."""
    full_env = dict(os.environ)
    full_env["GRANTEX_API_KEY"] = API_KEY
    full_env.update(env or {})
    return subprocess.Popen(
        [*cli_command(), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows(url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())
    finally:
        engine.dispose()


def event_count(url: str) -> int:
    """Events in the archive; 0 while it is still being created."""
    try:
        return int(rows(url, "SELECT count(*) FROM events")[0][0])
    except Exception:  # no file or no table yet
        return 0


def wait_for_events(url: str, at_least: int, timeout: float = 60.0) -> int:
    """Poll until the archive holds ``at_least`` events; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = event_count(url)
        if count >= at_least:
            return count
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} events after {timeout:g}s")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per core, up to 8.

    Many tests wait on a child process, a loopback server or a database
    rather than compute, so a core can serve two workers.
    """
    return min(8, 2 * (os.cpu_count() or 1))
