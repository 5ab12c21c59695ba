"""Audit exports: round trips through csv, DuckDB and pyarrow; manifests; safe writing."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.events import normalise
from ingest.store import Received, Store
from tests.analytics_fixture import build_archive
from tests.conftest import cli_command, invoke, rows

COLUMNS = [
    "id", "type", "occurred_at", "source", "grant_id", "agent_id", "principal_id", "revoked_by",
    "token_id", "method", "percentage", "remaining", "initial", "channel", "data",
]  # fmt: skip

HOSTILE = [
    # Commas, quotes, newlines, CR, tabs, a leading '=', non-ASCII and emoji.
    {
        "id": "h1",
        "type": "grant.created",
        "createdAt": "2026-04-01T10:00:00.000Z",
        "data": {
            "grantId": 'G,"quoted"',
            "agentId": '=HYPERLINK("http://evil")',
            "principalId": "Zoë 🚀 名前",
            "scopes": ["a,b", "line1\nline2"],
        },
    },
    {
        "id": "h2",
        "type": "token.issued",
        "createdAt": "2026-04-01T10:00:00.123Z",
        "data": {"grantId": 'G,"quoted"', "tokenId": "+1 tab\there", "method": "@refresh"},
    },
    {
        "id": "h3",
        "type": "grant.revoked",
        "createdAt": "2026-04-01T10:00:00.123456Z",
        "data": {"grantId": "-G2\r\nnext", "revokedBy": ""},
    },
    {
        "id": "h4",
        "type": "budget.threshold",
        "createdAt": "2026-04-02T00:00:00Z",
        "data": {"grantId": "G-h4", "pct": 80, "remaining": "0.10", "note": "\u2028 separator"},
    },
]


# The analytics copy of each shared archive, refreshed by the first export.
COPIES: dict[str, Path] = {}


@pytest.fixture(scope="module")
def archive(module_archive_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The hand-built archive of test_reports plus hostile values, as a --db URL.

    Shared by the module's tests: exports only read the archive.
    """
    archive_url = module_archive_url
    build_archive(archive_url)
    store = Store.open(archive_url)
    received = datetime(2026, 4, 3, tzinfo=timezone.utc)
    store.write_batch(
        "acct-a", None, [Received(normalise(json.dumps(e)), received) for e in HOSTILE]
    )
    store.close()
    COPIES[archive_url] = tmp_path_factory.mktemp("copy")
    return archive_url


def export(archive: str, tmp_path: Path, *args: str) -> Any:
    copy = COPIES.get(archive, tmp_path / "copy")
    return invoke(["export", *args, "--db", archive, "--analytics-dir", str(copy)])


def iso(value: Any) -> str:
    value = value.astimezone(timezone.utc).replace(tzinfo=None)
    spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
    return value.isoformat(timespec=spec) + "Z"


def expected_rows(archive: str, where: str = "1 = 1", **params: Any) -> list[list[str]]:
    """What the CSV must hold, computed from the archive itself with Python."""
    out = []
    for row in rows(
        archive,
        "SELECT id, type, occurred_at, source, grant_id, agent_id, principal_id, revoked_by, "
        "token_id, method, percentage, remaining, initial, channel, payload FROM events "
        f"WHERE {where}",
        **params,
    ):
        when = datetime.fromisoformat(row[2]) if isinstance(row[2], str) else row[2]
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        cells = [row[0], row[1], when, *row[3:10]]
        cells += [None if v is None else repr(float(v)) for v in row[10:13]]
        cells.append(row[13])
        cells.append(json.loads(row[14])["data"])
        out.append(cells)
    out.sort(key=lambda r: (r[2], r[0]))
    for r in out:
        r[2] = iso(r[2])
    return out


def read_csv_rows(text: str) -> tuple[list[str], list[list[Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    return header, list(reader)


def normalised(cells: list[Any]) -> list[Any]:
    """A CSV row made comparable with expected_rows (data as parsed JSON)."""
    out: list[Any] = [c if c != "" else None for c in cells[:-1]]
    out.append(json.loads(cells[-1]))
    return out


def test_csv_round_trips_exactly(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "all.csv"
    result = export(archive, tmp_path, "-o", str(target))
    assert result.exit_code == 0, result.output
    raw = target.read_bytes()
    assert raw.startswith(b"id,type,occurred_at,source,")
    assert b"\r\n" in raw and raw.endswith(b"\r\n")
    header, body = read_csv_rows(raw.decode("utf-8"))
    assert header == COLUMNS
    want = expected_rows(archive)
    assert len(body) == len(want) == 33
    assert [normalised(r) for r in body] == want
    # The hostile values came back byte for byte.
    h1 = next(r for r in body if r[0] == "h1")
    assert h1[4:7] == ['G,"quoted"', '=HYPERLINK("http://evil")', "Zoë 🚀 名前"]
    h3 = next(r for r in body if r[0] == "h3")
    assert h3[4] == "-G2\r\nnext"
    assert h3[2] == "2026-04-01T10:00:00.123456Z"


def test_csv_reads_back_in_duckdb_and_marks_empty_strings(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "all.csv"
    assert export(archive, tmp_path, "-o", str(target)).exit_code == 0
    conn = duckdb.connect()
    got = conn.execute(
        f"SELECT id, grant_id, revoked_by, percentage FROM read_csv('{target}', header=true, "
        "all_varchar=true) ORDER BY occurred_at, id"
    ).fetchall()
    by_id = {r[0]: r for r in got}
    assert by_id["h3"][1] == "-G2\r\nnext"
    # NULL stays NULL (the store keeps an empty revokedBy as NULL; the
    # envelope in `data` keeps the "").
    assert by_id["h1"][2] is None
    assert by_id["h4"][3] == "80.0"


def test_jsonl_is_the_envelope_as_archived(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "all.jsonl"
    assert export(archive, tmp_path, "-o", str(target)).exit_code == 0
    lines = target.read_text(encoding="utf-8").splitlines()
    archived = {r[0]: r[1] for r in rows(archive, "SELECT id, payload FROM events")}
    assert len(lines) == len(archived)
    for line in lines:
        envelope = json.loads(line)
        assert line == archived[envelope["id"]]
    conn = duckdb.connect()
    assert conn.execute(f"SELECT count(*) FROM read_json('{target}')").fetchall() == [(33,)]
    # With --columns: objects, the payload embedded as JSON.
    picked = tmp_path / "picked.jsonl"
    assert (
        export(archive, tmp_path, "-o", str(picked), "--columns", "id,source,payload").exit_code
        == 0
    )
    first = json.loads(picked.read_text().splitlines()[0])
    assert list(first) == ["id", "source", "payload"]
    assert first["payload"] == json.loads(archived[first["id"]])


def test_parquet_has_typed_columns(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "all.parquet"
    assert export(archive, tmp_path, "-o", str(target)).exit_code == 0
    table = pq.read_table(target)
    assert table.column_names == COLUMNS
    occurred = table.schema.field("occurred_at").type
    assert str(occurred).startswith("timestamp[us, tz=")
    assert str(table.schema.field("percentage").type) == "double"
    records = table.to_pylist()
    want = expected_rows(archive)
    assert [r["id"] for r in records] == [w[0] for w in want]
    h1 = next(r for r in records if r["id"] == "h1")
    assert h1["principal_id"] == "Zoë 🚀 名前"
    assert h1["occurred_at"] == datetime(2026, 4, 1, 10, tzinfo=timezone.utc)
    assert json.loads(h1["data"])["scopes"] == ["a,b", "line1\nline2"]


@pytest.mark.parametrize(
    ("args", "where", "params"),
    [
        (["--type", "grant.revoked"], "type = 'grant.revoked'", {}),
        (
            ["--type", "grant.revoked", "--type", "anomaly.auto_revoked"],
            "type IN ('grant.revoked', 'anomaly.auto_revoked')",
            {},
        ),
        (
            ["--since", "2026-03-03", "--until", "2026-03-04"],
            "occurred_at >= :a AND occurred_at < :b",
            {"a": datetime(2026, 3, 3), "b": datetime(2026, 3, 4)},
        ),
        (["--source", "acct-b"], "source = 'acct-b'", {}),
        (["--grant-id", "G4"], "grant_id = 'G4'", {}),
        (
            ["--source", "acct-a", "--type", "token.issued", "--since", "2026-03-02T10:30Z"],
            "source = 'acct-a' AND type = 'token.issued' AND occurred_at >= :a",
            {"a": datetime(2026, 3, 2, 10, 30)},
        ),
    ],
)
def test_filters(
    archive: str, tmp_path: Path, args: list[str], where: str, params: dict[str, Any]
) -> None:
    if "postgresql" in archive:
        params = {k: v.replace(tzinfo=timezone.utc) for k, v in params.items()}
    target = tmp_path / "f.csv"
    assert export(archive, tmp_path, "-o", str(target), *args).exit_code == 0
    _, body = read_csv_rows(target.read_bytes().decode("utf-8"))
    want = expected_rows(archive, where, **params)
    assert want, "the filter should match something"
    assert [normalised(r) for r in body] == want


def test_agent_principal_and_grant_filters_follow_the_grants(archive: str, tmp_path: Path) -> None:
    def ids(*args: str) -> list[str]:
        target = tmp_path / "x.csv"
        assert export(archive, tmp_path, "-o", str(target), "--force", *args).exit_code == 0
        return [r[0] for r in read_csv_rows(target.read_bytes().decode("utf-8"))[1]]

    # A3: G9's events (its grant.revoked names no agent), the anomaly naming
    # A3 and the passport.renewed event carrying agentId A3.
    assert sorted(ids("--agent-id", "A3")) == ["e18", "e19", "e20", "e36"]
    # Every revocation for agent A1: G1 (developer) and G2 (no revokedBy).
    assert ids("--agent-id", "A1", "--type", "grant.revoked") == ["e04", "e07"]
    # G3: created, then listed in an anomaly.auto_revoked.
    assert ids("--grant-id", "G3") == ["e08", "e09"]
    # P2: G2 and G7, and nothing of P1.
    assert sorted(ids("--principal-id", "P2")) == ["e05", "e06", "e07", "e15", "e16", "e17"]


def test_an_empty_result_is_a_header(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "none.csv"
    result = export(archive, tmp_path, "-o", str(target), "--type", "no.such.type")
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == (",".join(COLUMNS) + "\r\n").encode()
    assert json.loads((tmp_path / "none.csv.manifest.json").read_text())["rows"] == 0
    assert invoke(["verify-export", str(target)]).exit_code == 0
    parquet = tmp_path / "none.parquet"
    assert export(archive, tmp_path, "-o", str(parquet), "--type", "no.such.type").exit_code == 0
    assert pq.read_table(parquet).num_rows == 0


def test_gzip_and_columns(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "revoked.csv.gz"
    result = export(
        archive, tmp_path, "-o", str(target), "--type", "grant.revoked",
        "--columns", "occurred_at,id,revoked_by,seq",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = gzip.decompress(target.read_bytes()).decode()
    header, body = read_csv_rows(text)
    assert header == ["occurred_at", "id", "revoked_by", "seq"]
    assert [r[1] for r in body] == ["e04", "e19", "e07", "e35", "e17", "h3"]
    assert invoke(["verify-export", str(target)]).exit_code == 0


@pytest.mark.parametrize(("by", "folder"), [("day", "occurred_date"), ("month", "occurred_month")])
def test_partitioned_parquet(archive: str, tmp_path: Path, by: str, folder: str) -> None:
    target = tmp_path / "lake.parquet"
    result = export(archive, tmp_path, "-o", str(target), "--partition-by", by)
    assert result.exit_code == 0, result.output
    parts = sorted(p.name for p in target.iterdir())
    if by == "day":
        assert parts[0] == "occurred_date=2026-03-01" and len(parts) == 7
    else:
        assert parts == ["occurred_month=2026-03", "occurred_month=2026-04"]
    # pyarrow and DuckDB read the directory as it is.
    dataset = ds.dataset(target, format="parquet", partitioning="hive")
    assert dataset.count_rows() == 33
    conn = duckdb.connect()
    counted = conn.execute(
        f"SELECT {folder}, count(*) FROM read_parquet('{target}/**/*.parquet', "
        f"hive_partitioning = true) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert sum(n for _, n in counted) == 33
    assert invoke(["verify-export", str(target)]).exit_code == 0


def test_verify_export_catches_tampering(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "all.csv"
    assert export(archive, tmp_path, "-o", str(target)).exit_code == 0
    assert invoke(["verify-export", str(target)]).output.startswith("OK: ")
    original = target.read_bytes()

    flipped = bytearray(original)
    flipped[200] ^= 0x01
    target.write_bytes(bytes(flipped))
    result = invoke(["verify-export", str(target)])
    assert result.exit_code == 1
    assert "SHA-256" in result.output

    # A row removed, and the manifest's hash forged to match: the count still differs.
    lines = original.split(b"\r\n")
    target.write_bytes(b"\r\n".join(lines[:5] + lines[6:]))
    manifest = tmp_path / "all.csv.manifest.json"
    record = json.loads(manifest.read_text())
    from queries.export import sha256_file

    record["files"][0]["sha256"] = sha256_file(target)
    manifest.write_text(json.dumps(record))
    result = invoke(["verify-export", str(target)])
    assert result.exit_code == 1
    assert "32 rows, the manifest says 33" in result.output

    target.unlink()
    result = invoke(["verify-export", str(target)])
    assert result.exit_code == 1 and "missing" in result.output


def test_verify_export_catches_a_missing_or_extra_partition(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "lake.parquet"
    assert export(archive, tmp_path, "-o", str(target), "--partition-by", "day").exit_code == 0
    extra = target / "occurred_date=2030-01-01"
    extra.mkdir()
    (extra / "data_0.parquet").write_bytes(b"PAR1")
    result = invoke(["verify-export", str(target)])
    assert result.exit_code == 1 and "not in the manifest" in result.output
    (extra / "data_0.parquet").unlink()
    extra.rmdir()
    victim = next(target.glob("occurred_date=2026-03-03/*.parquet"))
    victim.unlink()
    result = invoke(["verify-export", str(target)])
    assert result.exit_code == 1
    assert "missing" in result.output


def test_manifest_records_filters_and_watermark(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "q.csv"
    args = [
        "-o",
        str(target),
        "--type",
        "grant.revoked",
        "--since",
        "2026-03-02",
        "--until",
        "2026-03-05",
    ]
    assert export(archive, tmp_path, *args).exit_code == 0
    record = json.loads((tmp_path / "q.csv.manifest.json").read_text())
    assert record["filters"] == {
        "types": ["grant.revoked"],
        "since": "2026-03-02T00:00:00.000Z",
        "until": "2026-03-05T00:00:00.000Z",
    }
    assert record["rows"] == 4
    assert record["tool"] == "grantex-archive" and record["tool_version"]
    assert record["watermark"]["archive_seq"] == rows(archive, "SELECT max(seq) FROM events")[0][0]
    assert record["watermark"]["newest_occurred_at_included"] == "2026-03-04T00:00:00.000Z"
    (only,) = record["files"]
    assert only["path"] == "q.csv" and len(only["sha256"]) == 64 and only["rows"] == 4


def test_existing_files_need_force(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "a.csv"
    assert export(archive, tmp_path, "-o", str(target), "--type", "sso.login").exit_code == 0
    first = target.read_bytes()
    result = export(archive, tmp_path, "-o", str(target))
    assert result.exit_code == 1
    assert "exists (use --force" in result.output
    assert target.read_bytes() == first
    assert export(archive, tmp_path, "-o", str(target), "--force").exit_code == 0
    assert len(target.read_bytes()) > len(first)
    # Something that is not an export is never replaced, --force or not.
    other = tmp_path / "b.csv"
    other.write_text("keep me")
    for extra in ([], ["--force"]):
        result = export(archive, tmp_path, "-o", str(other), *extra)
        assert result.exit_code == 1
        assert "is not an export" in result.output
    assert other.read_text() == "keep me"


def test_safe_formulas(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "safe.csv"
    assert export(archive, tmp_path, "-o", str(target), "--safe-formulas").exit_code == 0
    _, body = read_csv_rows(target.read_bytes().decode("utf-8"))
    by_id = {r[0]: r for r in body}
    assert by_id["h1"][5] == '\'=HYPERLINK("http://evil")'
    assert by_id["h2"][8] == "'+1 tab\there"
    assert by_id["h2"][9] == "'@refresh"
    assert by_id["h3"][4] == "'-G2\r\nnext"
    assert by_id["e01"][4] == "G1"  # ordinary cells are untouched


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "'xml' is not one of"),
        (["--columns", "id,nope"], "unknown column 'nope'"),
        (["--gzip", "--format", "parquet"], "--gzip is for csv and jsonl"),
        (["--partition-by", "day"], "--partition-by needs --format parquet"),
        (["--since", "tomorrow"], "'tomorrow' is not an ISO 8601"),
    ],
)
def test_bad_flags(archive: str, tmp_path: Path, args: list[str], message: str) -> None:
    result = export(archive, tmp_path, "-o", str(tmp_path / "x.csv"), *args)
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert message in error


def test_stdout_export_matches_the_file(archive: str, tmp_path: Path) -> None:
    target = tmp_path / "f.csv"
    assert export(archive, tmp_path, "-o", str(target)).exit_code == 0
    proc = subprocess.run(
        [
            *cli_command(),
            "export",
            "-o",
            "-",
            "--db",
            archive,
            "--analytics-dir",
            str(tmp_path / "copy"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == target.read_bytes()


def test_report_csv_follows_the_export_rules(archive: str, tmp_path: Path) -> None:
    """report/sql -o file.csv and export write the same bytes for the same rows."""
    exported = tmp_path / "e.csv"
    assert export(archive, tmp_path, "-o", str(exported)).exit_code == 0
    query = (
        "SELECT id, type, occurred_at, source, grant_id, agent_id, principal_id, revoked_by, "
        "token_id, method, percentage, remaining, initial, channel, "
        "CAST(json_extract(payload, '$.data') AS VARCHAR) AS data "
        "FROM events ORDER BY occurred_at, id"
    )
    via_sql = tmp_path / "s.csv"
    result = invoke(
        [
            "sql",
            query,
            "-o",
            str(via_sql),
            "--db",
            archive,
            "--analytics-dir",
            str(tmp_path / "copy"),
        ]
    )
    assert result.exit_code == 0, result.output
    assert via_sql.read_bytes() == exported.read_bytes()


@pytest.mark.slow
def test_an_interrupted_export_leaves_no_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    migrate.upgrade(url)
    from ingest.simulator import generate_events

    store = Store.open(url)
    now = datetime.now(timezone.utc)
    batch = [
        Received(normalise(json.dumps(e)), now)
        for e in generate_events(5, datetime(2026, 1, 1, tzinfo=timezone.utc), 150_000, 1.0)
    ]
    store.write_batch("default", None, batch)
    store.close()
    assert invoke(["refresh", "--db", url]).exit_code == 0
    target = tmp_path / "out.csv"
    proc = subprocess.Popen(
        [*cli_command(), "export", "-o", str(target), "--db", url, "--no-refresh"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.csv.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, "export ended first"
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=30)
    assert not target.exists()
    assert not (tmp_path / "out.csv.manifest.json").exists()


def _exported(archive: str, tmp_path: Path, name: str, *args: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    target = tmp_path / name
    result = export(archive, tmp_path, "-o", str(target), *args)
    assert result.exit_code == 0, result.output
    assert invoke(["verify-export", str(target)]).exit_code == 0
    return target


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        return [
            {**row, "part": part.parent.name}
            for part in sorted(path.rglob("*.parquet"))
            for row in pq.read_table(part).to_pylist()
        ]
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("all.csv", []),
        ("all.csv.gz", []),
        ("picked.csv", ["--columns", "seq,id,occurred_at,payload", "--safe-formulas"]),
        ("all.jsonl", []),
        ("columns.jsonl.gz", ["--columns", "id,occurred_at,payload,data"]),
        ("all.parquet", []),
        ("days.parquet", ["--partition-by", "day"]),
        ("months.parquet", ["--partition-by", "month"]),
    ],
)
def test_slices_join_into_the_same_export(
    archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, args: list[str]
) -> None:
    """An export written in many time slices equals the one written in a single slice."""
    from queries.export import plan

    whole = _exported(archive, tmp_path / "whole", name, *args)
    monkeypatch.setattr(plan, "SLICE_ROWS", 2)
    sliced = _exported(archive, tmp_path / "sliced", name, *args)
    record = json.loads(Path(f"{sliced}.manifest.json").read_text())
    assert record["rows"] == 33
    if name.endswith(".parquet"):
        assert _parquet_rows(sliced) == _parquet_rows(whole)
        assert len(_parquet_rows(sliced)) == 33
    else:
        # Byte for byte: one header, one gzip stream, rows in order across slices.
        assert sliced.read_bytes() == whole.read_bytes()
        assert (
            json.loads(Path(f"{sliced}.manifest.json").read_text())["files"][0]["sha256"]
            == (json.loads(Path(f"{whole}.manifest.json").read_text())["files"][0]["sha256"])
        )


def test_slices_follow_the_hours_of_the_selected_rows(archive: str, tmp_path: Path) -> None:
    from queries.copy import AnalyticsCopy
    from queries.export import Filters, plan_export
    from queries.session import Session

    assert (
        invoke(["refresh", "--db", archive, "--analytics-dir", str(tmp_path / "c")]).exit_code == 0
    )
    session = Session(AnalyticsCopy(archive, tmp_path / "c"))
    try:
        where, params = Filters(types=("grant.revoked",)).where()
        plan = plan_export(session.conn, where, params, slice_rows=2)
        rows = session.conn.execute(
            f"SELECT occurred_at FROM events WHERE {where} ORDER BY occurred_at", params
        ).fetchall()
    finally:
        session.close()
    assert plan.rows == len(rows) == sum(s.rows for s in plan.slices)
    assert plan.slices[0].since is None and plan.slices[-1].until is None
    # Each slice starts on the hour where the previous one ends, and holds what it says.
    for before, after in zip(plan.slices, plan.slices[1:], strict=False):
        assert before.until == after.since and after.since.minute == 0  # type: ignore[union-attr]
    for part in plan.slices:
        inside = [
            r for (r,) in rows
            if (part.since is None or r >= part.since) and (part.until is None or r < part.until)
        ]  # fmt: skip
        assert len(inside) == part.rows


def test_progress_counts_the_rows_slice_by_slice(
    archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from queries.copy import AnalyticsCopy
    from queries.export import ExportSpec, Filters, plan, run_export
    from queries.session import Session

    monkeypatch.setattr(plan, "SLICE_ROWS", 5)
    copy = AnalyticsCopy(archive, tmp_path / "c")
    copy.refresh()
    seen: list[tuple[int, int]] = []
    session = Session(copy)
    try:
        spec = ExportSpec(output=str(tmp_path / "p.csv"), fmt="csv")
        result = run_export(session.conn, spec, Filters(), 0, lambda d, t: seen.append((d, t)))
    finally:
        session.close()
    assert result.rows == 33
    assert len(seen) > 3 and all(total == 33 for _, total in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 33


# --------------------------------------------------------------------------- one CSV writer

# The documented convention (README, docs/export.md): NULL is an empty field,
# unquoted; the empty string is "".
NULL_AND_EMPTY = b'a,b,c\r\n,"",x\r\n'


def _events_view(conn: duckdb.DuckDBPyConnection) -> None:
    """An ``events`` view of one event whose grant_id is NULL and agent_id the empty string."""
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(
        "CREATE VIEW events AS SELECT 1::BIGINT AS seq, 'e1' AS id, 'x.y' AS type, "
        "TIMESTAMPTZ '2026-03-01 12:00:00+00' AS occurred_at, "
        "TIMESTAMPTZ '2026-03-01 12:00:01+00' AS received_at, 's' AS source, "
        "NULL::VARCHAR AS grant_id, '' AS agent_id, '{\"data\":{}}' AS payload"
    )


def test_null_and_the_empty_string_in_csv_from_every_command(archive: str, tmp_path: Path) -> None:
    """export, report/sql and the rows other commands print write NULL and '' alike."""
    from queries.export import ExportSpec, Filters, run_export, write_query_csv
    from queries.render import Layout, write_rows

    conn = duckdb.connect()
    _events_view(conn)
    # export --format csv
    exported = tmp_path / "e.csv"
    spec = ExportSpec(output=str(exported), columns=("grant_id", "agent_id", "id"))
    assert run_export(conn, spec, Filters(), 1).rows == 1
    assert exported.read_bytes() == b'grant_id,agent_id,id\r\n,"",e1\r\n'
    # report and sql --format csv
    queried = tmp_path / "q.csv"
    write_query_csv(conn, "SELECT NULL::VARCHAR AS a, '' AS b, 'x' AS c", {}, queried)
    assert queried.read_bytes() == NULL_AND_EMPTY
    # rows that exist only in Python (status, EXPLAIN)
    out = io.StringIO(newline="")
    assert write_rows(out, "csv", ["a", "b", "c"], [[None, "", "x"]], Layout(crlf=True)) == 1
    assert out.getvalue().encode() == NULL_AND_EMPTY
    conn.close()
    # And through the command line, on a pipe (LF).
    result = invoke(["sql", "SELECT NULL::VARCHAR AS a, '' AS b, 'x' AS c", "--db", archive])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == NULL_AND_EMPTY.replace(b"\r\n", b"\n")
    # A reader that tells a quoted field from an empty one keeps the two apart.
    got = duckdb.sql(
        f"SELECT a, b FROM read_csv('{queried}', all_varchar=true, allow_quoted_nulls=false)"
    ).fetchall()
    assert got == [(None, "")]


def test_csv_rows_from_python_are_quoted_and_formatted_as_query_rows() -> None:
    from queries.render import Layout, write_rows

    values = [
        "a,b", 'q"x', "line\nx", " lead", "é", "NULL", None, "",
        1.5, True, datetime(2026, 3, 1, 12, tzinfo=timezone.utc), [1, "a"],
    ]  # fmt: skip
    out = io.StringIO(newline="")
    assert write_rows(out, "csv", [f"c{i}" for i in range(len(values))], [values], Layout()) == 1
    header, row = out.getvalue().split("\n", 1)
    assert header == ",".join(f"c{i}" for i in range(len(values)))
    assert row == (
        '"a,b","q""x","line\nx", lead,é,NULL,,"",1.5,true,2026-03-01T12:00:00.000Z,"[1,""a""]"\n'
    )


def test_sql_csv_writes_timestamps_with_and_without_a_time_zone(archive: str) -> None:
    query = (
        "SELECT TIMESTAMPTZ '2026-03-01 12:00:00.5+00' AS aware, "
        "TIMESTAMP '2026-03-01 12:00:00.000123' AS naive"
    )
    result = invoke(["sql", query, "--db", archive, "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert (
        result.stdout_bytes
        == b"aware,naive\n2026-03-01T12:00:00.500Z,2026-03-01T12:00:00.000123Z\n"
    )


# --------------------------------------------------------------------------- the schema, once


def test_every_archive_column_is_exportable(archive: str, tmp_path: Path) -> None:
    import pyarrow as pa

    from ingest.schema import events
    from queries.export import ALL_COLUMNS, DEFAULT_COLUMNS, TEXT_COLUMNS

    names = [c.name for c in events.columns]
    assert set(ALL_COLUMNS) == {*names, "data"}
    assert list(DEFAULT_COLUMNS) == COLUMNS  # the documented order
    assert {c.name for c in events.columns if isinstance(c.type, sa.String)} | {
        "data"
    } == TEXT_COLUMNS
    listing = ",".join(names)
    for name in ("every.csv", "every.parquet", "every.jsonl"):
        target = tmp_path / name
        result = export(archive, tmp_path, "-o", str(target), "--columns", listing)
        assert result.exit_code == 0, result.output
    header, body = read_csv_rows((tmp_path / "every.csv").read_bytes().decode("utf-8"))
    assert header == names and len(body) == 33
    first = json.loads((tmp_path / "every.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == names
    schema = pq.read_schema(tmp_path / "every.parquet")
    assert schema.names == names
    for column in events.columns:
        kind = schema.field(column.name).type
        if isinstance(column.type, sa.DateTime):
            assert pa.types.is_timestamp(kind) and kind.tz is not None, column.name
        elif isinstance(column.type, sa.String):
            assert pa.types.is_string(kind) or pa.types.is_large_string(kind), column.name
        elif isinstance(column.type, sa.Float):
            assert pa.types.is_floating(kind), column.name
        else:
            assert pa.types.is_integer(kind), column.name


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc),  # whole seconds
        datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc),  # whole milliseconds
        datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc),  # microseconds
        datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=timezone.utc),  # under a millisecond
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(2026, 3, 1, 1, 30, 0, 500, tzinfo=timezone(timedelta(hours=2))),  # not UTC
    ],
)
def test_sql_formats_a_timestamp_as_format_timestamp_does(value: datetime) -> None:
    from ingest.timestamps import format_timestamp
    from queries.export.columns import timestamp_text

    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("CREATE TABLE t (aware TIMESTAMPTZ, naive TIMESTAMP)")
    naive = value.astimezone(timezone.utc).replace(tzinfo=None)
    conn.execute("INSERT INTO t VALUES ($1, $2)", [value, naive])
    got = conn.execute(
        f"SELECT {timestamp_text('aware')}, {timestamp_text('naive')} FROM t"
    ).fetchall()
    conn.close()
    assert got == [(format_timestamp(value), format_timestamp(naive))]


# --------------------------------------------------------------------------- from Python


def test_export_from_python_matches_the_command(archive: str, tmp_path: Path) -> None:
    from queries.copy import AnalyticsCopy
    from queries.export import SuffixError, verify_export
    from queries.export import export as export_events
    from queries.session import Session

    window = ["--since", "2026-03-02", "--until", "2026-03-05"]
    by_cli = tmp_path / "cli.csv"
    assert (
        export(archive, tmp_path, "-o", str(by_cli), "--type", "grant.revoked", *window).exit_code
        == 0
    )
    session = Session(AnalyticsCopy(archive, COPIES.get(archive, tmp_path / "copy")))
    try:
        by_api = tmp_path / "api.csv"
        result = export_events(
            session.conn, str(by_api), types=["grant.revoked"], since="2026-03-02",
            until=datetime(2026, 3, 5, tzinfo=timezone.utc),
        )  # fmt: skip
        for bad in (
            {"output": str(tmp_path / "x.parquet"), "gzip": True},
            {"output": str(tmp_path / "x.csv"), "partition_by": "day"},
            {"output": "-", "fmt": "parquet"},
            {"output": str(tmp_path / "x.jsonl"), "safe_formulas": True},
            {"output": str(tmp_path / "x.csv"), "fmt": "jsonl"},
        ):
            with pytest.raises(SuffixError):
                export_events(session.conn, **bad)  # type: ignore[arg-type]
    finally:
        session.close()
    assert result.rows == 4 and result.manifest is not None
    assert by_api.read_bytes() == by_cli.read_bytes()
    verify_export(by_api)
    api_record = json.loads(result.manifest.read_text())
    cli_record = json.loads(Path(f"{by_cli}.manifest.json").read_text())
    for key in ("filters", "rows", "watermark"):
        assert api_record[key] == cli_record[key], key


# --------------------------------------------------------------------------- durability


def test_every_file_is_synced_before_its_rename_and_the_directory_after(
    archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    out = (tmp_path / "out").resolve()
    out.mkdir()
    assert export(archive, tmp_path, "-o", str(out / "warm.csv")).exit_code == 0
    monkeypatch.setattr(os, "fsync", recording)
    commands = {
        "e.csv": ["export", "-o", str(out / "e.csv")],
        "d.parquet": ["export", "-o", str(out / "d.parquet"), "--partition-by", "day"],
        "s.csv": ["sql", "SELECT 1 AS one", "-o", str(out / "s.csv")],
        "t.json": ["status", "-o", str(out / "t.json")],
        "u.csv": ["status", "-o", str(out / "u.csv")],
    }
    for name, args in commands.items():
        synced.clear()
        result = invoke([*args, "--db", archive, "--analytics-dir", str(tmp_path / "copy")])
        assert result.exit_code == 0, result.output
        last_dir = max(i for i, p in enumerate(synced) if p == str(out))
        staged = [i for i, p in enumerate(synced) if Path(p).name.startswith(f".{name}.")]
        assert staged and max(staged) < last_dir, (name, synced)
        if name == "d.parquet":
            parts = [p for p in synced if p.endswith("data_0.parquet")]
            assert len(parts) == len(list((out / name).rglob("*.parquet"))), synced
        if name.endswith((".csv", ".parquet")) and args[0] == "export":
            manifest = [i for i, p in enumerate(synced) if f".{name}.manifest.json." in p]
            assert manifest and max(manifest) < last_dir, (name, synced)
