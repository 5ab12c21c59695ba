"""Migrations on SQLite and PostgreSQL, from the checkout and from an installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest import migrate
from tests.conftest import invoke, rows

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"events", "rejected_events", "ingest_runs", "ingest_connections", "alembic_version"}


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The alembic command from the checkout (alembic.ini at the root)."""
    env = dict(os.environ, GRANTEX_ARCHIVE_DB=url)
    return subprocess.run(
        [str(Path(sys.executable).with_name("alembic")), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_check_downgrade_upgrade_from_checkout(archive_url: str) -> None:
    up = alembic(archive_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert table_names(archive_url) >= TABLES
    check = alembic(archive_url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    down = alembic(archive_url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert table_names(archive_url) <= {"alembic_version"}
    again = alembic(archive_url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert table_names(archive_url) >= TABLES


def test_constraint_names_follow_the_naming_convention(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    engine = sa.create_engine(archive_url)
    inspector = sa.inspect(engine)
    assert {ix["name"] for ix in inspector.get_indexes("events")} >= {
        "ix_events_source_occurred_at",
        "ix_events_type_occurred_at",
        "ix_events_grant_id",
    }
    uniques = {uq["name"] for uq in inspector.get_unique_constraints("events")}
    assert "uq_events_id" in uniques
    engine.dispose()


def test_db_upgrade_and_current_commands(archive_url: str) -> None:
    result = invoke(["db", "current", "--db", archive_url])
    assert result.exit_code == 1
    assert "grantex-archive db upgrade" in result.output
    result = invoke(["db", "upgrade", "--db", archive_url])
    assert result.exit_code == 0, result.output
    assert f"at revision {migrate.head_revision()} (head)" in result.output
    result = invoke(["db", "current", "--db", archive_url])
    assert result.exit_code == 0
    assert result.output.strip() == f"{migrate.head_revision()} (head)"


def test_db_url_from_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    result = invoke(["db", "upgrade"], env={"GRANTEX_ARCHIVE_DB": url})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-env.db").exists()


def test_default_archive_is_in_the_working_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "db", "upgrade"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "GRANTEX_ARCHIVE_DB"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "grantex-archive.db").exists()


def test_schema_behind_head_is_never_migrated_by_ingest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        # An archive stamped with a revision this version does not know yet
        # stands in for "behind": ingest must refuse and name the fix.
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('0000')"))
    engine.dispose()
    result = invoke(
        ["ingest", "--db", url, "--base-url", "http://127.0.0.1:9", "--max-runtime", "1"]
    )
    assert result.exit_code == 4
    assert "Error:" in result.output
    assert rows(url, "SELECT version_num FROM alembic_version") == [("0000",)]


def test_empty_postgres_schema_needs_db_upgrade(pg_archive: str) -> None:
    result = invoke(
        ["ingest", "--db", pg_archive, "--base-url", "http://127.0.0.1:9", "--max-runtime", "1"]
    )
    assert result.exit_code == 4
    assert "grantex-archive db upgrade" in result.output


@pytest.mark.slow
def test_db_upgrade_from_an_installed_wheel(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = dist.glob("grantex_archive-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    url = f"sqlite:///{work / 'wheel.db'}"
    # Run from a directory without the checkout on sys.path.
    result = subprocess.run(
        [str(env_dir / "bin" / "grantex-archive"), "db", "upgrade", "--db", url],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"at revision {migrate.head_revision()} (head)" in result.stdout
    assert table_names(url) >= TABLES
    origin = subprocess.run(
        [str(python), "-c", "import migrations, ingest; print(migrations.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert str(env_dir) in origin.stdout


def test_0002_backfills_rejected_frames_written_by_0001(archive_url: str) -> None:
    import hashlib

    migrate.upgrade(archive_url, "0001")
    engine = sa.create_engine(archive_url)
    with engine.begin() as conn:
        for raw in ["{broken", "{broken", "caf\u00e9 [1,"]:
            conn.execute(
                sa.text(
                    "INSERT INTO rejected_events (source, received_at, reason, raw, raw_length) "
                    "VALUES ('s', '2026-03-01 12:00:00', 'invalid JSON', :raw, 7)"
                ),
                {"raw": raw},
            )
    engine.dispose()
    migrate.upgrade(archive_url)
    found = rows(archive_url, "SELECT raw, raw_sha256, repeats FROM rejected_events ORDER BY id")
    assert found == [
        (raw, hashlib.sha256(raw.encode()).hexdigest(), 0)
        for raw in ["{broken", "{broken", "caf\u00e9 [1,"]
    ]
    # Rows written before stay as they are; the next arrival counts on the first.
    from ingest.events import normalise
    from ingest.store import Received, Store

    store = Store.open(archive_url)
    try:
        item = normalise("{broken")
        store.write_batch("s", None, [Received(item, datetime(2026, 3, 2, tzinfo=timezone.utc))])
    finally:
        store.close()
    assert rows(archive_url, "SELECT repeats FROM rejected_events ORDER BY id") == [
        (1,),
        (0,),
        (0,),
    ]
    migrate.downgrade(archive_url, "0001")
    assert rows(archive_url, "SELECT count(*) FROM rejected_events") == [(3,)]
    migrate.upgrade(archive_url)
    assert rows(archive_url, "SELECT count(*) FROM rejected_events WHERE raw_sha256 IS NULL") == [
        (0,)
    ]


# Events as the live service names the person: principalId, userId (consent
# bundles), dataPrincipalId (DPDP); and values ingest would not take.
PEOPLE = [
    ("e1", "grant.created", {"grantId": "g1", "principalId": "alice"}, "alice"),
    ("e2", "consent_bundle.created", {"bundleId": "b1", "grantId": "g1", "userId": "bob"}, "bob"),
    ("e3", "dpdp.consent.created", {"recordId": "r1", "dataPrincipalId": "carol"}, "carol"),
    ("e4", "dpdp.erasure.completed", {"requestId": "q", "dataPrincipalId": 42}, "42"),
    ("e5", "consent_bundle.synced", {"bundleId": "b1", "accepted": True}, None),
    ("e6", "dpdp.consent.created", {"dataPrincipalId": "x" * 256}, None),
    ("e7", "consent_bundle.created", {"userId": "", "dataPrincipalId": "dave"}, "dave"),
    ("e8", "consent_bundle.created", {"userId": True}, None),
    ("e9", "grant.created", {"principalId": "erin", "userId": "not-her"}, "erin"),
    ("e10", "note", {"text": 'says "userId" in prose'}, None),
]


def test_0003_fills_principal_id_from_every_name_for_events_written_by_0001(
    archive_url: str,
) -> None:
    """Rows written before 0003 get principal_id as ingest now reads it, on both databases."""
    import json

    from ingest.events import Event, normalise

    migrate.upgrade(archive_url, "0001")
    engine = sa.create_engine(archive_url)
    with engine.begin() as conn:
        for event_id, event_type, data, _want in PEOPLE:
            payload = json.dumps(
                {"id": event_id, "type": event_type, "timestamp": "2026-03-01T12:00:00.000Z",
                 "data": data}
            )  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO events (id, source, type, occurred_at, received_at, "
                    "principal_id, payload) VALUES (:id, 's', :type, '2026-03-01 12:00:00', "
                    "'2026-03-01 12:00:01', :principal, :payload)"
                ),
                {
                    "id": event_id,
                    "type": event_type,
                    "principal": data.get("principalId"),
                    "payload": payload,
                },
            )
    engine.dispose()
    migrate.upgrade(archive_url)
    found = dict(rows(archive_url, "SELECT id, principal_id FROM events"))
    assert found == {event_id: want for event_id, _type, _data, want in PEOPLE}
    # Ingest reads the same rule (e6 is longer than 255 characters: ingest refuses the frame).
    for event_id, event_type, data, want in PEOPLE:
        event = normalise(json.dumps({"id": event_id, "type": event_type,
                                      "timestamp": "2026-03-01T12:00:00Z", "data": data}))  # fmt: skip
        if event_id == "e6":
            assert not isinstance(event, Event)
            assert "'data.dataPrincipalId' is longer than 255" in event.reason
        else:
            assert isinstance(event, Event) and event.principal_id == want, event_id
    # Downgrading clears what 0003 filled, and upgrading fills it again.
    migrate.downgrade(archive_url, "0002")
    assert dict(rows(archive_url, "SELECT id, principal_id FROM events WHERE principal_id "
                                  "IS NOT NULL")) == {"e1": "alice", "e9": "erin"}  # fmt: skip
    migrate.upgrade(archive_url)
    assert dict(rows(archive_url, "SELECT id, principal_id FROM events")) == found
