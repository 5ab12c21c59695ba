"""A copy records the schema revision it was built from; a migration since rebuilds it.

A migration may rewrite archived rows in place (0003 fills ``principal_id``),
which an incremental refresh, reading only ``seq`` above its watermark,
would never see.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from ingest.migrate import head_revision
from queries.copy import MANIFEST, AnalyticsCopy
from tests.conftest import invoke


def test_a_copy_from_before_a_migration_is_rebuilt_with_the_rewritten_rows(archive: str) -> None:
    copy = AnalyticsCopy(archive)
    first = copy.refresh()
    assert first.manifest.schema == head_revision()
    assert not copy.refresh().rebuilt  # nothing changed: built on

    # As an older version left it: no revision recorded; then a backfill.
    manifest_path = copy.directory / MANIFEST
    record = json.loads(manifest_path.read_text())
    del record["schema"]
    manifest_path.write_text(json.dumps(record))
    engine = sa.create_engine(archive)
    with engine.begin() as conn:
        (seq,) = conn.execute(sa.text("SELECT min(seq) FROM events")).one()
        conn.execute(
            sa.text("UPDATE events SET principal_id = 'backfilled' WHERE seq = :s"), {"s": seq}
        )
    engine.dispose()

    again = copy.refresh()
    assert again.rebuilt and again.manifest.schema == head_revision()
    result = invoke(
        ["sql", "SELECT principal_id FROM events ORDER BY seq LIMIT 1", "--db", archive,
         "--format", "csv", "--no-refresh"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["principal_id", "backfilled"]


def test_a_copy_built_from_another_revision_is_rebuilt(archive: str) -> None:
    copy = AnalyticsCopy(archive)
    copy.refresh()
    manifest_path = copy.directory / MANIFEST
    record = json.loads(manifest_path.read_text())
    record["schema"] = "0001"
    manifest_path.write_text(json.dumps(record))
    assert copy.refresh().rebuilt
    assert json.loads(manifest_path.read_text())["schema"] == head_revision()
