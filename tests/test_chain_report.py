"""``report chain`` (links and rows sealed per period) over the analytics copy's chain_links,
and ``status --digest-dir`` (the newest digest file, files per day): SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.schema import chain_links
from ingest.seal.chain import Sealer
from ingest.seal.digests import write_digest
from tests.conftest import invoke
from tests.test_verify_window import execute, write_batch

pytestmark = pytest.mark.timeout(120)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


# When each link of the archive below was written: the report counts by these.
WRITTEN = {
    1: _at("2026-03-01 10:00:00"),
    2: _at("2026-03-01 23:59:59.999999"),
    3: _at("2026-03-02 00:00:00"),
    4: _at("2026-03-02 08:00:00"),
    5: _at("2026-04-01 00:00:00"),
}


def build(url: str) -> None:
    """Links 1-3: events (10, 9, 10 rows); 4: two rejected frames; 5: a run record. The
    report counts links, not rows, so links 4 and 5 name rows the archive does not hold."""
    migrate.upgrade(url)
    write_batch(url, list(range(1, 11)))
    write_batch(url, [*range(20, 25), *range(26, 30)])
    write_batch(url, list(range(40, 50)))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        sealer = Sealer(conn)
        sealer.append("rejected", [1, 2], bytes(64))
        sealer.append("runs", [1], bytes(32))
        sealer.close()
        for n, at in WRITTEN.items():
            conn.execute(sa.update(chain_links).where(chain_links.c.n == n).values(created_at=at))
    engine.dispose()


@pytest.fixture
def archive(archive_url: str, tmp_path: Path) -> list[str]:
    build(archive_url)
    return ["--db", archive_url, "--analytics-dir", str(tmp_path / "copy")]


def run_json(*args: str) -> Any:
    result = invoke([*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def day(period: str, links: int, first: int, last: int, *counts: int) -> dict[str, Any]:
    events, rejected, runs = counts
    return {"period": period, "links": links, "first_link": first, "last_link": last,
            "events": events, "rejected_frames": rejected, "run_records": runs}  # fmt: skip


def test_links_and_rows_per_day(archive: list[str]) -> None:
    assert run_json("report", "chain", *archive) == [
        day("2026-03-01", 2, 1, 2, 19, 0, 0),
        day("2026-03-02", 2, 3, 4, 10, 2, 0),
        day("2026-04-01", 1, 5, 5, 0, 0, 1),
    ]
    window = ["--since", "2026-03-01T23:59:59.999999Z", "--until", "2026-04-01"]
    assert run_json("report", "chain", *archive, *window) == [
        day("2026-03-01", 1, 2, 2, 9, 0, 0),
        day("2026-03-02", 2, 3, 4, 10, 2, 0),
    ]
    assert run_json("report", "chain", *archive, "--by", "month") == [
        day("2026-03-01", 4, 1, 4, 29, 2, 0),
        day("2026-04-01", 1, 5, 5, 0, 0, 1),
    ]


def test_new_links_reach_the_copy_without_their_digests(
    archive: list[str], archive_url: str
) -> None:
    assert len(run_json("report", "chain", *archive)) == 3
    write_batch(archive_url, [60])  # written now: a day of its own
    rows = run_json("report", "chain", *archive)
    assert len(rows) == 4 and rows[-1]["first_link"] == 6 and rows[-1]["events"] == 1
    columns = run_json("sql", "SELECT * FROM chain_links ORDER BY n", *archive)[0]
    assert list(columns) == ["n", "kind", "count", "created_at"]
    # The copy appends new links; links gone from the archive make it copy them all again.
    execute(archive_url, "DELETE FROM chain_links WHERE n = 1")
    write_batch(archive_url, [61])
    copied = run_json("sql", "SELECT n FROM chain_links ORDER BY n", *archive)
    assert [row["n"] for row in copied] == [2, 3, 4, 5, 6, 7]


def _status(archive: list[str], *extra: str) -> dict[tuple[str, str], Any]:
    rows = run_json("status", *archive, *extra)
    return {(row["section"], row["name"]): row["value"] for row in rows}


def test_status_names_the_newest_digest_file(
    archive: list[str], archive_url: str, tmp_path: Path
) -> None:
    assert _status(archive)[("chain", "digest_files_checked")] is False
    digests = tmp_path / "digests"
    digests.mkdir()
    now = datetime.now(timezone.utc)
    engine = sa.create_engine(archive_url)
    for back in (timedelta(days=2, hours=1), timedelta(days=2), timedelta(minutes=5)):
        newest = write_digest(engine, digests, now=now - back)
    engine.dispose()
    write_batch(archive_url, [70])  # link 6, after the newest file
    found = _status(archive, "--digest-dir", str(digests))
    assert found[("chain", "digest_files_checked")] is True
    assert found[("chain", "digest_files")] == 3
    assert found[("chain", "newest_digest_file")] == str(newest)
    assert found[("chain", "newest_digest_link")] == 5
    assert found[("chain", "links_after_newest_digest")] == 1
    newest_at = now - timedelta(minutes=5)
    assert found[("chain", "newest_digest_at")].startswith(newest_at.strftime("%Y-%m-%dT%H:%M"))
    per_day = {name: value for (section, name), value in found.items() if section == "digest_files"}
    assert len(per_day) == 7 and sum(per_day.values()) == 3
    assert per_day[(now - timedelta(days=2)).date().isoformat()] >= 1
    assert per_day[newest_at.date().isoformat()] >= 1


def test_status_digest_dir_must_exist(archive: list[str], tmp_path: Path) -> None:
    result = invoke(["status", *archive, "--digest-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "Error: Invalid value for '--digest-dir'" in result.output
