"""docs/integrity.md is enough to check digest files, signatures included, with the standard
library alone: tests/independent_digests.py reports exactly what `verify-archive
--digest-dir` reports about them, on directories the real commands wrote and plain edits
then changed."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ingest import migrate
from ingest.seal.digests import digest_files, write_digest
from tests import independent_digests as idg
from tests.conftest import invoke
from tests.test_digests import ingest_twice, rewrite_from, write_keys

pytestmark = pytest.mark.timeout(180)


def product(url: str, digests: Path, public: Path | None) -> list[str]:
    """The digest-file differences `verify-archive` lists."""
    args = ["verify-archive", "--db", url, "--digest-dir", str(digests)]
    result = invoke(args + (["--public-key", str(public)] if public else []))
    listed = [line[2:] for line in result.output.splitlines() if line.startswith("  ")]
    found = [line for line in listed if "digest file" in line]
    assert (result.exit_code == 0) == (listed == []), result.output
    return found


def both(url: str, digests: Path, public: Path | None) -> list[str]:
    """What both checkers say, once they are shown to say the same."""
    raw = idg.public_key_from_pem(public.read_text()) if public else None
    database = url.removeprefix("sqlite:///")
    independent = idg.check(database, digests, raw)
    assert product(url, digests, public) == independent
    return independent


@pytest.fixture
def signed(sqlite_archive: str, tmp_path: Path) -> tuple[str, Path, Path, Path]:
    migrate.upgrade(sqlite_archive)
    digests = tmp_path / "digests"
    digests.mkdir()
    private, public = write_keys(tmp_path, "digest")
    ingest_twice(sqlite_archive, digests, private)
    return sqlite_archive, digests, public, private


def test_the_signature_check_is_ed25519() -> None:
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    message = b"grantex-archive digest"
    signature = key.sign(message)
    assert idg.ed25519_verify(public, message, signature)
    assert not idg.ed25519_verify(public, message + b".", signature)
    assert not idg.ed25519_verify(public, message, signature[:-1] + bytes([signature[-1] ^ 1]))
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert not idg.ed25519_verify(other, message, signature)


def test_an_untouched_directory_verifies_for_both(signed: tuple[str, Path, Path, Path]) -> None:
    url, digests, public, _ = signed
    assert both(url, digests, public) == []
    cli = subprocess.run(
        [sys.executable, "tests/independent_digests.py", url.removeprefix("sqlite:///"),
         str(digests), str(public)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0 and cli.stdout.endswith("verified\n"), cli.stderr


def test_edits_deletions_and_other_keys_are_named_alike(
    signed: tuple[str, Path, Path, Path],
) -> None:
    url, digests, public, _ = signed
    first, second = digest_files(digests)
    original = first.read_bytes()
    first.write_bytes(original.replace(b'"format"', b'"format" '))
    altered = (
        f"digest file {first.name} was altered (digest file {second.name} recorded another SHA-256)"
    )
    assert both(url, digests, public) == [
        f"digest file {first.name} was edited (it is not in its canonical form)",
        altered,
    ]
    document = json.loads(original)
    document["tool_version"] = "9.9.9"
    first.write_bytes(idg.canonical_json(document) + b"\n")
    assert both(url, digests, public) == [
        f"digest file {first.name} has a bad signature (not made by this key)",
        altered,
    ]
    first.unlink()
    assert both(url, digests, public) == [
        f"digest file {first.name} is missing (digest file {second.name} names it)"
    ]


def test_files_signed_by_another_key_and_a_rewritten_chain(
    signed: tuple[str, Path, Path, Path],
) -> None:
    url, digests, public, _ = signed
    other, _ = write_keys(digests.parent, "other")
    ingest_twice(url, digests, other)
    found = both(url, digests, public)
    assert len(found) == 2 and all("bad signature" in line for line in found)
    assert both(url, digests, None) == []
    rewrite_from(url, 20)
    found = both(url, digests, None)
    assert found and all("the chain was rewritten up to link" in line for line in found)


def test_links_long_after_the_newest_file(sqlite_archive: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_archive)
    digests = tmp_path / "digests"
    digests.mkdir()
    store = migrate.open_archive(sqlite_archive, create=False)
    try:
        write_digest(store.engine, digests, now=datetime.now(timezone.utc) - timedelta(hours=3))
    finally:
        store.close()
    empty = tmp_path / "unused"
    empty.mkdir()
    private, _public = write_keys(tmp_path, "key")
    ingest_twice(sqlite_archive, empty, private)  # links written without this directory
    found = both(sqlite_archive, digests, None)
    assert len(found) == 1 and "are in no digest file" in found[0]
