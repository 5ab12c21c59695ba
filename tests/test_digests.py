"""Digest files: written by the real commands, chained, signed, and what they catch that the
chain alone cannot (a chain rewritten consistently). SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ingest import migrate
from ingest.events import normalise
from ingest.rows import Received
from ingest.seal.canonical import Link, encode_keys
from ingest.seal.chain import digests_of, select_rows
from ingest.seal.digests import DigestWriter, digest_files
from ingest.simulator import Simulator, SimulatorConfig
from ingest.store import Store
from ingest.timestamps import format_timestamp
from tests.conftest import API_KEY, invoke, rows

pytestmark = pytest.mark.timeout(120)


def write_keys(directory: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def ingest_twice(url: str, digests: Path, private: Path) -> None:
    """Two runs (two digest files), from one simulator's history."""
    config = SimulatorConfig(api_key=API_KEY, seed=8, backlog=400, rate=0)
    with Simulator(config) as sim:
        since = format_timestamp(sim.history_start)
        for count in ("150", "400"):
            result = invoke(
                ["ingest", "--db", url, "--base-url", sim.base_url, "--since", since,
                 "--max-events", count, "--digest-dir", str(digests),
                 "--signing-key", str(private)]
            )  # fmt: skip
            assert result.exit_code == 0, result.output


@pytest.fixture
def signed(archive_url: str, tmp_path: Path) -> tuple[str, Path, Path, Path]:
    migrate.upgrade(archive_url)
    digests = tmp_path / "digests"
    digests.mkdir()
    private, public = write_keys(tmp_path, "digest")
    ingest_twice(archive_url, digests, private)
    return archive_url, digests, public, tmp_path


def verify(url: str, digests: Path, public: Path | None = None) -> tuple[int, str]:
    args = ["verify-archive", "--db", url, "--digest-dir", str(digests)]
    if public is not None:
        args += ["--public-key", str(public)]
    result = invoke(args)
    return result.exit_code, result.output


def test_each_run_writes_a_signed_digest_file_chained_to_the_last(
    signed: tuple[str, Path, Path, Path],
) -> None:
    url, digests, public, _ = signed
    files = digest_files(digests)
    assert len(files) == 2
    first, second = (json.loads(path.read_bytes()) for path in files)
    assert first["previous"] is None and first["range"]["first_link"] == 1
    assert second["previous"]["file"] == files[0].name
    assert second["range"]["first_link"] == first["head"]["n"] + 1
    assert first["counts"]["events"] + second["counts"]["events"] == 400
    assert first["counts"]["runs"] == 1 and second["counts"]["runs"] == 1
    assert "signature" in second and len(second["key_id"]) == 64
    code, output = verify(url, digests, public)
    assert code == 0, output


def rewrite_from(url: str, seq: int) -> None:
    """What someone with write access to the database can do: change an event, then
    recompute its link and every later link and the head, consistently."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE events SET revoked_by = 'agent' WHERE seq = {seq}")
        links = conn.exec_driver_sql(
            "SELECT n, kind, keys, count, digests, created_at FROM chain_links ORDER BY n"
        ).all()
        prev = "0" * 64
        for n, kind, keys, count, _digests, created_at in links:
            _table, key = {"events": ("events", "seq"), "rejected": ("rejected_events", "id"),
                          "runs": ("ingest_runs", "id")}[kind]  # fmt: skip
            first, _, last = keys.partition("-")
            rows = conn.exec_driver_sql(
                select_rows(kind, f"{key} BETWEEN {first} AND {last or first}")
            ).all()
            found_keys, found = digests_of(kind, rows)
            link = Link(n, kind, prev, encode_keys(found_keys), count, found, created_at)
            conn.exec_driver_sql(
                "UPDATE chain_links SET prev = %s, digests = %s, hash = %s WHERE n = %s"
                if "postgresql" in url
                else "UPDATE chain_links SET prev = ?, digests = ?, hash = ? WHERE n = ?",
                (prev, found, link.hash(), n),
            )
            prev = link.hash()
        conn.exec_driver_sql(f"UPDATE chain_head SET hash = '{prev}'")
    engine.dispose()


def test_a_chain_rewritten_consistently_is_caught_only_by_the_digest_files(
    signed: tuple[str, Path, Path, Path],
) -> None:
    url, digests, public, _ = signed
    rewrite_from(url, 20)
    # The chain alone agrees with the forged rows...
    alone = invoke(["verify-archive", "--db", url])
    assert alone.exit_code == 0, alone.output
    # ...the digest files kept elsewhere do not.
    code, output = verify(url, digests, public)
    assert code == 1
    assert "the chain was rewritten up to link" in output


def test_an_edited_or_deleted_digest_file_is_named(signed: tuple[str, Path, Path, Path]) -> None:
    url, digests, public, _ = signed
    first, _second = digest_files(digests)
    original = first.read_bytes()
    first.write_bytes(original.replace(b'"format"', b'"format" '))
    code, output = verify(url, digests, public)
    assert code == 1 and f"digest file {first.name} was edited" in output
    first.write_bytes(original)
    assert verify(url, digests, public)[0] == 0
    first.unlink()
    code, output = verify(url, digests, public)
    assert code == 1 and f"digest file {first.name} is missing" in output


def test_a_digest_file_signed_with_another_key_is_refused(
    signed: tuple[str, Path, Path, Path],
) -> None:
    url, digests, public, tmp_path = signed
    other_private, _other_public = write_keys(tmp_path, "other")
    ingest_twice(url, digests, other_private)  # a third and fourth file, by another key
    code, output = verify(url, digests, public)
    assert code == 1 and "has a bad signature (not made by this key)" in output
    # Without the key the files still chain, and the links still match.
    assert verify(url, digests)[0] == 0


def test_bad_digest_options_are_usage_errors(sqlite_archive: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_archive)
    missing = tmp_path / "nowhere"
    result = invoke(["seal", "--db", sqlite_archive, "--digest-dir", str(missing)])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke(["seal", "--db", sqlite_archive, "--signing-key", str(tmp_path / "k")])
    assert result.exit_code == 2 and "--signing-key needs --digest-dir" in result.output
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("not a key")
    result = invoke(
        ["seal", "--db", sqlite_archive, "--digest-dir", str(tmp_path), "--signing-key",
         str(not_a_key)]
    )  # fmt: skip
    assert result.exit_code == 2 and "cannot read the signing key" in result.output
    assert "not a key" not in result.output.replace(str(not_a_key), "")


def test_an_export_records_the_chain_head_and_verify_export_checks_the_archive(
    signed: tuple[str, Path, Path, Path],
) -> None:
    url, _digests, _public, tmp_path = signed
    out = tmp_path / "events.csv"
    result = invoke(
        ["export", "-o", str(out), "--db", url, "--analytics-dir", str(tmp_path / "copy")]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(Path(f"{out}.manifest.json").read_text())
    ((n, head),) = rows(url, "SELECT n, hash FROM chain_head")
    assert record["chain"] == {"n": n, "hash": head}
    checked = invoke(["verify-export", str(out), "--archive", url])
    assert checked.exit_code == 0, checked.output
    assert f"the archive verifies and still holds link {n}" in checked.output
    # The chain rewritten consistently after the export: the recorded head no longer matches.
    rewrite_from(url, 30)
    checked = invoke(["verify-export", str(out), "--archive", url])
    assert checked.exit_code == 1
    assert "the archive's chain was rewritten after the export" in checked.output


def test_a_running_command_writes_a_digest_file_every_interval(
    sqlite_archive: str, tmp_path: Path
) -> None:
    """The hourly file, with the hour shortened: files while events are written, chained,
    each naming the head of its moment, and one more at the end."""
    migrate.upgrade(sqlite_archive)
    digests = tmp_path / "digests"
    digests.mkdir()
    store = Store.open(sqlite_archive)
    now = datetime.now(timezone.utc)
    try:
        with DigestWriter(store.engine, digests, interval=0.05):
            for batch in range(5):
                events = [
                    normalise(json.dumps({
                        "id": f"evt_{batch}_{i}", "type": "grant.created",
                        "timestamp": "2026-03-01T09:30:00Z", "data": {"grantId": f"g{i}"},
                    }))
                    for i in range(20)
                ]  # fmt: skip
                store.write_batch("default", None, [Received(e, now) for e in events])
                before = len(digest_files(digests))
                deadline = time.monotonic() + 30
                while len(digest_files(digests)) == before:
                    assert time.monotonic() < deadline, "no digest file within 30 s"
                    time.sleep(0.01)
    finally:
        store.close()
    documents = [json.loads(path.read_bytes()) for path in digest_files(digests)]
    assert len(documents) >= 6
    heads = [document["head"]["n"] for document in documents]
    assert heads == sorted(heads) and heads[-1] == 5
    assert sum(document["counts"]["events"] for document in documents) == 100
    code, output = verify(sqlite_archive, digests)
    assert code == 0, output
