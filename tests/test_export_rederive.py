"""``verify-export PATH --archive URL`` re-derives the export's rows from the archive.

On a real SQLite file and a real PostgreSQL schema: an export verifies
against its archive, also once more events arrived; an archive edited with
plain SQL, and a file edited together with its manifest, are caught; filters,
formats and partitions are re-derived byte for byte; rows committed after the
export (with a lower ``seq``) stay out, rows committed before it but missing
from the copy it read are recorded and stay out too.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ingest import migrate
from ingest.database import create_archive_engine
from ingest.events import normalise
from ingest.rows import Received
from ingest.schema import events
from ingest.seal.chain import Sealer
from ingest.store import Store
from tests.conftest import invoke, rows
from tests.test_integrity import execute

pytestmark = pytest.mark.timeout(180)

START = datetime(2026, 3, 1, 22, 0, tzinfo=timezone.utc)
TYPES = ("grant.created", "grant.revoked", "token.issued")


def frame(i: int) -> str:
    occurred = START + timedelta(hours=3 * i)
    stamp = occurred.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return json.dumps(
        {"id": f"evt_{i:05d}", "type": TYPES[i % 3], "createdAt": stamp,
         "data": {"grantId": f"g{i % 7}", "agentId": f"ag_{i % 4}"}},
        separators=(",", ":"),
    )  # fmt: skip


def write(url: str, first: int, count: int) -> None:
    """Events ``first`` .. ``first + count - 1``, stored and sealed as ``ingest`` stores them."""
    store = Store.open(url)
    try:
        batch = [Received(normalise(frame(i)), START) for i in range(first, first + count)]
        store.write_batch("default", None, batch)
    finally:
        store.close()


@pytest.fixture
def archive40(archive_url: str) -> str:
    """40 events over five days, in four sealed transactions."""
    migrate.upgrade(archive_url)
    for first in range(0, 40, 10):
        write(archive_url, first, 10)
    return archive_url


def export(url: str, out: Path, *args: str) -> dict[str, Any]:
    result = invoke(
        ["export", "-o", str(out), "--db", url, "--analytics-dir", str(out.parent / "copy"), *args]
    )
    assert result.exit_code == 0, result.output
    record: dict[str, Any] = json.loads(Path(f"{out}.manifest.json").read_text())
    return record


def verify(out: Path, url: str | None) -> tuple[int, str]:
    result = invoke(["verify-export", str(out), *(["--archive", url] if url else [])])
    return result.exit_code, result.output


def rewrite(out: Path, text: str) -> None:
    """Replace the file and update its manifest consistently, as a forger would."""
    out.write_bytes(text.encode())
    manifest = Path(f"{out}.manifest.json")
    record = json.loads(manifest.read_text())
    lines = text.count("\r\n") - 1
    record["files"][0].update(
        rows=lines, bytes=len(text.encode()), sha256=hashlib.sha256(text.encode()).hexdigest()
    )
    record["rows"] = lines
    manifest.write_text(json.dumps(record))


def test_an_export_is_re_derived_from_its_archive_also_after_more_events(
    archive40: str, tmp_path: Path
) -> None:
    out = tmp_path / "all.csv"
    record = export(archive40, out)
    assert record["rows"] == 40
    assert record["bound"] == {"max_seq": 40, "absent": ""}
    assert record["export"]["columns_given"] is None
    code, output = verify(out, archive40)
    assert code == 0, output
    n = record["chain"]["n"]
    assert output.startswith(f"OK: {out} holds 40 rows in 1 file, as its manifest says; ")
    assert f"the archive verifies and still holds link {n}, and the rows re-derived" in output
    write(archive40, 40, 15)  # arrived after the export
    code, output = verify(out, archive40)
    assert code == 0, output


def test_a_payload_edited_in_the_archive_is_named(archive40: str, tmp_path: Path) -> None:
    out = tmp_path / "all.csv"
    export(archive40, out)
    execute(archive40, "UPDATE events SET payload = replace(payload, 'g3', 'g9') WHERE seq = 4")
    code, output = verify(out, archive40)
    assert code == 1
    assert "Error: verification failed: the archive does not match its chain: " in output
    assert "seq 4" in output and "evt_00003" in output


def test_a_file_edited_with_its_manifest_is_caught_by_the_archive(
    archive40: str, tmp_path: Path
) -> None:
    """The case re-deriving exists for: the file and its manifest agree, the archive does not."""
    out = tmp_path / "revoked.csv"
    export(archive40, out, "--type", "grant.revoked")
    original = out.read_bytes().decode()
    lines = original.split("\r\n")
    assert len(lines) == 13 + 2  # header, 13 rows, the empty string after the last CRLF
    # A revocation removed: the file and its manifest agree, and verify so.
    rewrite(out, "\r\n".join(lines[:5] + lines[6:]))
    assert verify(out, None)[0] == 0
    code, output = verify(out, archive40)
    assert code == 1
    assert output == (
        "Error: verification failed: the export differs from the rows the archive holds: "
        "revoked.csv: the archive yields 13 rows, the file holds 12\n"
    )
    # The same number of rows, one of them changed.
    rewrite(out, original.replace("evt_00004", "evt_00404"))
    assert verify(out, None)[0] == 0
    code, output = verify(out, archive40)
    assert code == 1
    assert "revoked.csv differs from the rows the archive holds for this export (SHA-256 " in output


EXPORTS = {
    "type": ("t.csv", "--type", "token.issued", "--type", "grant.created"),
    "window": ("w.csv", "--since", "2026-03-02T10:00:00Z", "--until", "2026-03-04"),
    "agent": ("a.jsonl.gz", "--agent-id", "ag_1"),
    "columns": ("c.jsonl", "--columns", "seq,id,payload", "--source", "default"),
    "formulas": ("f.csv", "--safe-formulas", "--columns", "id,data,received_at"),
    "parquet": ("p.parquet", "--grant-id", "g2"),
    "days": ("days.parquet", "--partition-by", "day", "--since", "2026-03-02"),
    "months": ("months.parquet", "--partition-by", "month", "--type", "grant.revoked"),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_filters_formats_and_partitions_are_re_derived(
    archive40: str, tmp_path: Path, name: str
) -> None:
    target, *args = EXPORTS[name]
    out = tmp_path / target
    record = export(archive40, out, *args)
    assert 0 < record["rows"] < 40 or name in ("columns", "formulas")
    code, output = verify(out, archive40)
    assert code == 0, output


def test_a_partition_dropped_with_its_manifest_entry_is_named(
    archive40: str, tmp_path: Path
) -> None:
    out = tmp_path / "days"
    export(archive40, out, "--partition-by", "day", "--format", "parquet")
    manifest = Path(f"{out}.manifest.json")
    record = json.loads(manifest.read_text())
    gone = record["files"].pop(1)
    assert gone["path"] == "occurred_date=2026-03-02/data_0.parquet"
    record["rows"] -= gone["rows"]
    (out / gone["path"]).unlink()
    manifest.write_text(json.dumps(record))
    assert verify(out, None)[0] == 0
    code, output = verify(out, archive40)
    assert code == 1
    assert (
        f"partition occurred_date=2026-03-02: the archive yields {gone['rows']:,} rows, "
        "the export has no such file"
    ) in output


def gap_seq(url: str) -> int:
    """A ``seq`` value below the highest that no row holds: later ones are allocated above it."""
    (top,) = rows(url, "SELECT max(seq) FROM events")[0]
    if url.startswith("sqlite"):
        execute(url, f"UPDATE sqlite_sequence SET seq = {top + 3} WHERE name = 'events'")
    else:
        execute(url, f"SELECT setval(pg_get_serial_sequence('events', 'seq'), {top + 3})")
    write(url, 100, 1)  # seq top + 4: top + 1 .. top + 3 are free
    return int(top) + 2


def commit_late(url: str, seq: int, i: int) -> None:
    """Event ``i`` committed now with ``seq`` (below rows already stored), sealed as it commits."""
    engine = create_archive_engine(url)
    try:
        with engine.begin() as conn:
            sealer = Sealer(conn)
            item = normalise(frame(i))
            conn.execute(
                events.insert(),
                {"seq": seq, "id": item.id, "source": "default", "type": item.type,  # type: ignore[union-attr]
                 "occurred_at": item.occurred_at, "received_at": START,  # type: ignore[union-attr]
                 "payload": frame(i)},
            )  # fmt: skip
            sealer.rows_with_keys("events", [seq])
            sealer.close()
    finally:
        engine.dispose()


def test_a_row_committed_after_the_export_with_a_lower_seq_stays_out(
    archive40: str, tmp_path: Path
) -> None:
    gap = gap_seq(archive40)
    out = tmp_path / "created.csv"
    record = export(archive40, out, "--type", "grant.created")
    assert gap < record["bound"]["max_seq"]
    commit_late(archive40, gap, 45)  # a grant.created, which the export's filter selects
    assert rows(archive40, f"SELECT id FROM events WHERE seq = {gap}") == [("evt_00045",)]
    code, output = verify(out, archive40)
    assert code == 0, output


def test_a_row_committed_before_the_export_but_missing_from_its_copy_stays_out(
    archive40: str, tmp_path: Path
) -> None:
    """Read from a copy that lacks a row committed out of seq order: the manifest says so."""
    gap = gap_seq(archive40)
    out = tmp_path / "all.csv"
    export(archive40, out)  # the copy, now up to date
    commit_late(archive40, gap, 48)
    record = export(archive40, tmp_path / "stale.csv", "--no-refresh")
    assert record["rows"] == 41 and record["bound"]["absent"] == str(gap)
    code, output = verify(tmp_path / "stale.csv", archive40)
    assert code == 0, output
    # Refreshed, the copy fetches it: the next export holds it.
    assert export(archive40, tmp_path / "fresh.csv")["rows"] == 42


def test_a_late_commit_on_postgresql_while_the_export_runs_stays_out(
    pg_archive: str, tmp_path: Path
) -> None:
    """Two connections: one inserts an event and holds its transaction open while another
    writer commits rows with higher seq and the export runs; then it seals and commits."""
    migrate.upgrade(pg_archive)
    write(pg_archive, 0, 10)
    engine = create_archive_engine(pg_archive)
    inserted, export_done = threading.Event(), threading.Event()
    seqs: list[int] = []

    def late_writer() -> None:
        with engine.begin() as conn:
            item = normalise(frame(12))
            seqs.append(
                conn.execute(
                    events.insert().returning(events.c.seq),
                    {"id": item.id, "source": "default", "type": item.type,  # type: ignore[union-attr]
                     "occurred_at": item.occurred_at, "received_at": START,  # type: ignore[union-attr]
                     "payload": frame(12)},
                ).scalar_one()
            )  # fmt: skip
            inserted.set()
            assert export_done.wait(60)
            sealer = Sealer(conn)
            sealer.rows_with_keys("events", seqs)
            sealer.close()

    thread = threading.Thread(target=late_writer)
    thread.start()
    try:
        assert inserted.wait(30)
        write(pg_archive, 20, 5)  # committed with higher seq while the first is open
        out = tmp_path / "all.csv"
        record = export(pg_archive, out)
    finally:
        export_done.set()
        thread.join()
        engine.dispose()
    assert record["rows"] == 15 and seqs[0] < record["bound"]["max_seq"]
    assert rows(pg_archive, "SELECT count(*) FROM events") == [(16,)]
    code, output = verify(out, pg_archive)
    assert code == 0, output
    assert invoke(["verify-archive", "--db", pg_archive]).exit_code == 0


def test_a_manifest_without_a_row_bound_cannot_be_re_derived(
    archive40: str, tmp_path: Path
) -> None:
    out = tmp_path / "all.csv"
    export(archive40, out)
    manifest = Path(f"{out}.manifest.json")
    record = json.loads(manifest.read_text())
    del record["bound"], record["export"]["columns_given"]
    manifest.write_text(json.dumps(record))
    result = invoke(["verify-export", str(out)])
    assert result.exit_code == 0
    assert "Note: its manifest records no row bound, so its rows cannot be re-derived" in (
        result.output
    )
    code, output = verify(out, archive40)
    assert code == 1
    assert "the manifest records no bound or export.columns_given (it was written by " in output
    assert "its rows cannot be re-derived from the archive" in output


def test_an_archive_whose_schema_is_behind_is_a_database_error(
    sqlite_archive: str, tmp_path: Path
) -> None:
    migrate.upgrade(sqlite_archive)
    write(sqlite_archive, 0, 10)
    out = tmp_path / "all.csv"
    export(sqlite_archive, out)
    execute(sqlite_archive, "UPDATE alembic_version SET version_num = '0006'")
    result = invoke(["verify-export", str(out), "--archive", sqlite_archive])
    assert result.exit_code == 4, result.output
    assert "the archive's schema is at 0006" in result.output
