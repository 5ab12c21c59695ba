"""The analytics copy: incremental refresh, the trailing re-scan, rebuilds, concurrency."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.events import Event, normalise
from ingest.schema import events
from ingest.simulator import Simulator, SimulatorConfig, generate_events
from ingest.store import Received, Store
from queries.copy import AnalyticsCopy, AnalyticsError, default_directory, grant_files
from queries.copy import refresher as refresher_module
from queries.copy import trash as trash_module
from queries.session import Session
from tests.conftest import API_KEY, cli_command, invoke, spawn, wait_for_events

START = datetime(2026, 5, 1, tzinfo=timezone.utc)


def frames(seed: int, count: int, start: datetime = START) -> list[str]:
    return [
        json.dumps(e, separators=(",", ":"))
        for e in generate_events(seed, start, count, 2.0, "mixed")
    ]


def write(url: str, items: list[str], source: str = "default") -> None:
    store = Store.open(url)
    try:
        now = datetime.now(timezone.utc)
        store.write_batch(source, None, [Received(normalise(f), now) for f in items])
    finally:
        store.close()


def new_archive(url: str) -> None:
    migrate.upgrade(url)


def snapshot(copy: AnalyticsCopy) -> dict[str, Any]:
    """Everything the views show, in a comparable form."""
    session = Session(copy)
    try:
        conn = session.conn
        return {
            "events": conn.execute(
                "SELECT * EXCLUDE (received_at) FROM events ORDER BY seq"
            ).fetchall(),
            "grants": conn.execute("SELECT * FROM grants ORDER BY grant_id").fetchall(),
            "revocations": conn.execute("SELECT * FROM revocations ORDER BY grant_id").fetchall(),
            "rejected": conn.execute("SELECT count(*) FROM rejected_events").fetchall(),
        }
    finally:
        session.close()


def test_incremental_refreshes_equal_a_full_build(archive_url: str, tmp_path: Path) -> None:
    new_archive(archive_url)
    batches = frames(11, 6000)
    incremental = AnalyticsCopy(archive_url, tmp_path / "inc")
    # Grants span the batches: created in one, revoked or exhausted in the next.
    for start in range(0, 6000, 1500):
        write(archive_url, batches[start : start + 1500])
        result = incremental.refresh()
        assert result.new_rows == 1500
    assert incremental.manifest().grants_delta is not None  # type: ignore[union-attr]
    full = AnalyticsCopy(archive_url, tmp_path / "full")
    assert full.refresh().rebuilt
    got, want = snapshot(incremental), snapshot(full)
    assert len(want["events"]) == 6000
    assert len(want["grants"]) > 1000
    assert got == want


def test_compaction_and_delta_folding_keep_the_same_answers(
    sqlite_archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(refresher_module, "SMALL_SEGMENTS_MAX", 3)
    monkeypatch.setattr(grant_files, "DELTA_MIN_ROWS", 50)
    monkeypatch.setattr(grant_files, "DELTA_SHARE", 0.1)
    new_archive(sqlite_archive)
    items = frames(12, 2500)
    analytics = AnalyticsCopy(sqlite_archive, tmp_path / "copy")
    for start in range(0, 2500, 250):
        write(sqlite_archive, items[start : start + 250])
        analytics.refresh()
        manifest = analytics.manifest()
        assert manifest is not None
        assert len(manifest.segments) < 3
    full = AnalyticsCopy(sqlite_archive, tmp_path / "full")
    full.refresh()
    assert snapshot(analytics) == snapshot(full)
    # Retired files wait in trash/ for readers holding an older manifest.
    assert any((tmp_path / "copy" / "trash").iterdir())


def _insert_with_seq(url: str, seqs: list[int], prefix: str) -> None:
    rows = []
    for seq in seqs:
        event = normalise(
            json.dumps(
                {
                    "id": f"{prefix}{seq}",
                    "type": "sso.login",
                    "createdAt": "2026-05-01T00:00:00.000Z",
                    "data": {"principalId": "P1"},
                }
            )
        )
        assert isinstance(event, Event)
        rows.append(
            {
                "seq": seq,
                "id": event.id,
                "source": "default",
                "type": event.type,
                "occurred_at": event.occurred_at,
                "received_at": event.occurred_at,
                "payload": event.payload,
            }
        )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(events.insert(), rows)
    engine.dispose()


def test_rows_committed_out_of_seq_order_are_rescued(archive_url: str, tmp_path: Path) -> None:
    """Two PostgreSQL writers: seq 11-19 commit after 20-30 have been copied."""
    new_archive(archive_url)
    _insert_with_seq(archive_url, [*range(1, 11), *range(20, 31)], "a")
    analytics = AnalyticsCopy(archive_url, tmp_path / "copy")
    assert analytics.refresh().new_rows == 21
    _insert_with_seq(archive_url, list(range(11, 20)), "late")
    _insert_with_seq(archive_url, list(range(31, 36)), "b")
    result = analytics.refresh()
    assert (result.new_rows, result.rescued_rows) == (5, 9)
    session = Session(analytics)
    try:
        seqs = [r[0] for r in session.conn.execute("SELECT seq FROM events ORDER BY 1").fetchall()]
    finally:
        session.close()
    assert seqs == list(range(1, 36))
    # Nothing is fetched twice on the next refresh.
    again = analytics.refresh()
    assert (again.new_rows, again.rescued_rows) == (0, 0)


def test_the_rescan_window_covers_recent_refreshes_and_trailing_rows(
    sqlite_archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(refresher_module, "RESCAN_ROWS", 0)
    new_archive(sqlite_archive)
    analytics = AnalyticsCopy(sqlite_archive, tmp_path / "copy")
    _insert_with_seq(sqlite_archive, list(range(1, 11)), "a")
    analytics.refresh()
    _insert_with_seq(sqlite_archive, list(range(12, 21)), "b")
    analytics.refresh()
    # Seq 11 commits late; it is above the first refresh's watermark (10),
    # and that refresh is within RESCAN_SECONDS.
    _insert_with_seq(sqlite_archive, [11], "late")
    assert analytics.refresh().rescued_rows == 1
    # Once every refresh is older than the horizon, only RESCAN_ROWS counts.
    monkeypatch.setattr(refresher_module, "RESCAN_SECONDS", -1.0)
    _insert_with_seq(sqlite_archive, [*range(21, 25), *range(26, 30)], "c")
    analytics.refresh()
    _insert_with_seq(sqlite_archive, [25], "late")
    assert analytics.refresh().rescued_rows == 0
    monkeypatch.setattr(refresher_module, "RESCAN_ROWS", 10)
    assert analytics.refresh().rescued_rows == 1


def test_a_replaced_archive_or_a_damaged_copy_is_rebuilt(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    new_archive(url)
    write(url, frames(13, 300))
    analytics = AnalyticsCopy(url)
    assert analytics.directory == tmp_path / "a.db.analytics"
    assert analytics.refresh().rebuilt
    assert not analytics.refresh().rebuilt

    # The archive is replaced by another with as many events.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'a.db'}{suffix}").unlink(missing_ok=True)
    new_archive(url)
    write(url, frames(14, 300))
    result = analytics.refresh()
    assert result.rebuilt and result.reason and "replaced" in result.reason
    assert snapshot(analytics)["events"][0][1] == json.loads(frames(14, 1)[0])["id"]

    # A file the manifest lists goes missing.
    manifest = analytics.manifest()
    assert manifest is not None
    (analytics.directory / manifest.segments[0].file).unlink()
    assert analytics.refresh().rebuilt

    # A manifest cut short (or from another version) is rebuilt too.
    (analytics.directory / "MANIFEST.json").write_text('{"format": 1, "archi')
    result = analytics.refresh()
    assert result.rebuilt and result.reason and "damaged" in result.reason

    # A refresher killed mid-copy leaves a temporary file: the next one clears it.
    leftover = analytics.directory / "events" / "part-dead.parquet.tmp"
    leftover.write_bytes(b"PAR1")
    analytics.refresh()
    assert not leftover.exists()

    # The whole copy is deleted: nothing is lost.
    import shutil

    shutil.rmtree(analytics.directory)
    assert analytics.refresh().rebuilt
    assert len(snapshot(analytics)["events"]) == 300


def _count_everything(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM grants), "
        "(SELECT sum(tokens_issued) FROM grants)"
    ).fetchall()


@contextlib.contextmanager
def _session_across_a_compaction(
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: bool = False,
    trash: bool = False,
) -> Iterator[tuple[AnalyticsCopy, Session, dict[str, Any]]]:
    """A session opened over 200 events; then 200 more and a refresh that deletes its segment.

    With ``trash`` the segment only moves to trash/, as it does by default.
    """
    if not trash:
        monkeypatch.setattr(trash_module, "TRASH_SECONDS", 0.0)
    monkeypatch.setattr(refresher_module, "SMALL_SEGMENTS_MAX", 2)
    new_archive(url)
    items = frames(15, 400)
    write(url, items[:200])
    analytics = AnalyticsCopy(url, tmp_path / "copy")
    analytics.refresh()
    before = snapshot(analytics)
    session = Session(analytics, sandbox=sandbox)
    try:
        old_files = set(analytics.manifest().files())  # type: ignore[union-attr]
        write(url, items[200:])
        analytics.refresh()  # compacts: the first segment is retired and deleted
        assert any((tmp_path / "copy" / "trash").iterdir()) is trash
        gone = {name for name in old_files if not (tmp_path / "copy" / name).exists()}
        assert any(name.startswith("events/") for name in gone)
        yield analytics, session, before
    finally:
        session.close()


@pytest.mark.parametrize(("sandbox", "trash"), [(False, False), (True, False), (True, True)])
def test_a_session_keeps_reading_its_snapshot_after_a_refresh_deletes_its_files(
    sqlite_archive: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: bool,
    trash: bool,
) -> None:
    """Also in the analyst's sandbox, whose file checks resolve the descriptors' links."""
    with _session_across_a_compaction(sqlite_archive, tmp_path, monkeypatch, sandbox, trash) as (
        analytics,
        session,
        before,
    ):
        seen = session.run(_count_everything)
        rows = session.run(
            lambda conn: conn.execute("SELECT * FROM grants ORDER BY grant_id").fetchall()
        )
    assert seen[0][0] == 200
    assert rows == before["grants"]
    fresh = Session(analytics)
    try:
        assert fresh.run(_count_everything)[0][0] == 400
    finally:
        fresh.close()


@pytest.mark.parametrize("sandbox", [False, True])
def test_without_descriptors_a_reader_rereads_the_manifest_when_its_files_go(
    sqlite_archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: bool
) -> None:
    from queries import session as session_module

    monkeypatch.setattr(session_module, "FD_DIR", tmp_path / "no-proc")
    with _session_across_a_compaction(sqlite_archive, tmp_path, monkeypatch, sandbox) as (
        _,
        session,
        _,
    ):
        count = session.run(_count_everything)
    assert count[0][0] == 400


def test_a_held_refresh_lock_means_reading_the_copy_as_it_is(
    sqlite_archive: str, tmp_path: Path
) -> None:
    new_archive(sqlite_archive)
    write(sqlite_archive, frames(16, 100))
    analytics = AnalyticsCopy(sqlite_archive, tmp_path / "copy")
    (tmp_path / "copy").mkdir()
    fd = os.open(tmp_path / "copy" / ".refresh.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(AnalyticsError, match="another process is building"):
            analytics.refresh(wait=0.2)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
    analytics.refresh()
    write(sqlite_archive, frames(17, 50, START + timedelta(days=1)))
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        result = analytics.refresh(wait=0.2)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert result.waited and result.manifest.events == 100
    assert analytics.refresh().new_rows == 50


def test_views_sql_opens_the_copy_in_any_duckdb_session(
    sqlite_archive: str, tmp_path: Path
) -> None:
    new_archive(sqlite_archive)
    write(sqlite_archive, frames(18, 500))
    analytics = AnalyticsCopy(sqlite_archive, tmp_path / "copy")
    analytics.refresh()
    conn = duckdb.connect()
    conn.execute((tmp_path / "copy" / "views.sql").read_text())
    assert conn.execute("SELECT count(*) FROM events").fetchall() == [(500,)]
    assert conn.execute("SELECT count(*) > 0 FROM grants").fetchall() == [(True,)]
    # The Parquet files alone are a data-lake copy.
    lake = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{tmp_path / 'copy' / 'events'}/*.parquet')"
    )
    assert lake.fetchall() == [(500,)]


def test_default_directory_for_postgresql_hides_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = default_directory("postgresql+psycopg://user:s3cret@db.example/grantex")
    assert directory.parent == tmp_path / "grantex-archive"
    assert "s3cret" not in str(directory)
    same = default_directory("postgresql+psycopg://user:other@db.example/grantex")
    assert directory == same
    # The manifest names the archive without its password too.
    analytics = AnalyticsCopy("postgresql+psycopg://user:s3cret@db.example/grantex")
    assert analytics.identity == "postgresql+psycopg://user@db.example/grantex"


@pytest.mark.slow
def test_reports_run_while_ingest_and_refreshes_write(tmp_path: Path) -> None:
    """Reports in parallel with a live ingest and a refresher never hit a lock error."""
    url = f"sqlite:///{tmp_path / 'live.db'}"
    config = SimulatorConfig(api_key=API_KEY, seed=21, backlog=20000, rate=3000.0)
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
            env = dict(os.environ)
            procs: list[subprocess.Popen[str]] = []
            deadline = time.monotonic() + 12
            reports = ["event-volume", "revocations-by-actor", "top-agents", "grant-lifetime"]
            i = 0
            failures: list[str] = []
            # At least 12 s and two rounds, however loaded the machine is.
            while time.monotonic() < deadline or len(procs) < 10:
                batch = [
                    subprocess.Popen(
                        [*cli_command(), "refresh", "--db", url],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                ]
                for name in reports:
                    extra = ["--no-refresh"] if i % 3 == 2 and i > 0 else []
                    batch.append(
                        subprocess.Popen(
                            [*cli_command(), "report", name, "--db", url, *extra],
                            env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                    )
                for proc in batch:
                    _out, err = proc.communicate(timeout=120)
                    if proc.returncode != 0 or "lock" in err.lower():
                        failures.append(f"{proc.args}: {proc.returncode} {err.strip()}")
                procs += batch
                i += 1
            assert worker.poll() is None, "ingest ended early"
        finally:
            worker.terminate()
            worker.communicate(timeout=30)
    assert not failures, failures
    assert len(procs) >= 10
    assert worker.returncode == 0
    # Finally everything ingested is in the copy.
    result = invoke(["sql", "SELECT count(*) AS n FROM events", "--db", url, "--format", "json"])
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        archived = conn.execute(sa.text("SELECT count(*) FROM events")).scalar()
    engine.dispose()
    assert json.loads(result.output) == [{"n": archived}]


def test_a_refresher_killed_midway_leaves_a_usable_copy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    # Mid-copy: a segment is half written.
    analytics = _kill_a_full_refresh(url, seed=22, when_writing="events", timeout=30)
    # Readers still see the last complete copy, and the next refresh completes it.
    assert snapshot(analytics)["events"][-1][0] >= 20000
    analytics.refresh()
    assert len(snapshot(analytics)["events"]) == 40000
    assert not list(analytics.directory.glob("*/*.tmp"))


def _kill_a_full_refresh(url: str, seed: int, when_writing: str, timeout: float) -> AnalyticsCopy:
    """A copy of 20,000 events, 20,000 more archived, and a `refresh --full`
    SIGKILLed once it writes a temporary file under ``when_writing/``."""
    new_archive(url)
    items = frames(seed, 40000)
    write(url, items[:20000])
    analytics = AnalyticsCopy(url)
    analytics.refresh()
    write(url, items[20000:])
    proc = subprocess.Popen(
        [*cli_command(), "refresh", "--full", "--db", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not list((analytics.directory / when_writing).glob("*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, "refresh ended first"
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=30)
    return analytics


def _outside_the_manifest(analytics: AnalyticsCopy) -> list[str]:
    """Files of the copy that its manifest does not name (trash/ aside)."""
    manifest = analytics.manifest()
    assert manifest is not None
    named = set(manifest.files())
    found = []
    for path in analytics.directory.rglob("*"):
        name = path.relative_to(analytics.directory).as_posix()
        if path.is_dir() or name.startswith("trash/"):
            continue
        if name not in named and name not in ("MANIFEST.json", "views.sql", ".refresh.lock"):
            found.append(name)
    return sorted(found)


@pytest.mark.parametrize("then", ["refresh", "report"])
def test_a_killed_full_refresh_leaves_no_orphan_after_the_next_refresh(
    tmp_path: Path, then: str
) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    # The grants state is built after the new segment is complete: killed
    # then, the segment is finished but no manifest names it.
    analytics = _kill_a_full_refresh(url, seed=23, when_writing="grants", timeout=60)
    orphans = _outside_the_manifest(analytics)
    assert any(name.startswith("events/seq-") for name in orphans), orphans

    if then == "refresh":
        result = invoke(["refresh", "--db", url])
    else:
        result = invoke(["report", "event-volume", "--db", url])
    assert result.exit_code == 0, result.output
    assert _outside_the_manifest(analytics) == []
    # What was orphaned waits in trash/ like any retired file, then goes.
    assert {p.name.split("-", 1)[1] for p in (analytics.directory / "trash").iterdir()} >= {
        Path(name).name for name in orphans if not name.endswith(".tmp")
    }
    assert len(snapshot(analytics)["events"]) == 40000
