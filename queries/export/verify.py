"""``verify-export``: check an export's files against its manifest, reading them back.

The manifest must be well formed and list exactly the files at PATH; each
file's SHA-256, and the rows read from it independently of the writer, must
match.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from .csvfile import sql_text
from .manifest import manifest_path, read_manifest, sha256_file
from .spec import VerifyError
from .target import tree_entries


def count_rows(path: Path, fmt: str, gz: bool) -> int:
    """Data rows in one export file, read back independently of the writer."""
    if fmt == "parquet":
        conn = duckdb.connect()
        try:
            return int(
                conn.execute(
                    f"SELECT sum(num_rows) FROM parquet_file_metadata('{sql_text(str(path))}')"
                ).fetchall()[0][0]
                or 0
            )
        finally:
            conn.close()
    opener: Callable[..., Any] = gzip.open if gz else open
    if fmt == "jsonl":
        with opener(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    with opener(path, "rb") as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        reader = csv.reader(text)
        next(reader, None)  # the header
        return sum(1 for _ in reader)


def _read_rows(path: Path, fmt: str, gz: bool) -> int:
    """``count_rows``, with a file that cannot be read as what it claims to be a VerifyError."""
    kind = f"{'gzip ' if gz else ''}{fmt}"
    try:
        return count_rows(path, fmt, gz)
    except (OSError, EOFError, ValueError, csv.Error, zlib.error, duckdb.Error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerifyError(f"{path} cannot be read as {kind}: {reason}") from None


def _check_listing(path: Path, manifest: Path, record: dict[str, Any]) -> None:
    """The manifest lists exactly the files at ``path``."""
    listed = [entry["path"] for entry in record["files"]]
    if record["export"]["partition_by"] is not None:
        if not path.is_dir():
            raise VerifyError(f"{path} is missing or not a directory")
        extra = sorted(set(tree_entries(path)) - set(listed))
        if extra:
            raise VerifyError(f"{path / extra[0]} is not in the manifest")
        return
    if not path.is_file():
        raise VerifyError(f"{path} is missing")
    if listed != [path.name]:
        raise VerifyError(
            f"{manifest} must list exactly {path.name}, and lists "
            f"{', '.join(map(repr, listed)) or 'no files'}"
        )


def verify_export(path: Path) -> dict[str, Any]:
    """Check an export against its manifest; raises VerifyError on any difference.

    The manifest must be well formed and list exactly the files at PATH (PATH
    itself for a file export; every file under the directory for a partitioned
    one); each file's SHA-256 and the rows read from it must match.
    """
    manifest = manifest_path(path)
    record = read_manifest(manifest)
    export = record["export"]
    if export["path"] != path.name:
        raise VerifyError(f"{manifest} describes {export['path']!r}, not {path.name!r}")
    _check_listing(path, manifest, record)
    partitioned = export["partition_by"] is not None
    total = 0
    for entry in record["files"]:
        target = path / entry["path"] if partitioned else path
        if target.is_symlink() or not target.is_file():
            raise VerifyError(f"{target} is missing")
        digest = sha256_file(target)
        if digest != entry["sha256"]:
            raise VerifyError(f"{target}: SHA-256 is {digest}, the manifest says {entry['sha256']}")
        rows = _read_rows(target, export["format"], export["gzip"])
        if rows != entry["rows"]:
            raise VerifyError(f"{target}: {rows} rows, the manifest says {entry['rows']}")
        total += rows
    if total != record["rows"]:
        raise VerifyError(f"{path}: {total} rows in all, the manifest says {record['rows']}")
    return dict(record)
