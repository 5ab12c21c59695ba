"""Checking an export against its archive: ``verify-export PATH --archive URL``.

First the archive's chain must still hold the head the manifest recorded, and
verify. Then the export is re-derived. The manifest says how the export was
made (format, columns, filters, partitioning, gzip) and, with its chain head
and row bound (``queries.export.bound``), exactly which archive rows it read.
The same export is written again, by the same machinery, into a private
temporary directory, from a fresh analytics copy of the archive narrowed to
those rows; each file's SHA-256 and row count must equal the manifest's. The
export is deterministic (rows ordered by occurred_at and the unique event id,
gzip without a time stamp, the same slices for the same rows), so equal rows
give equal bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import duckdb
import sqlalchemy as sa

from ingest.timestamps import TimestampError, parse_timestamp

from ..copy import (
    AnalyticsError,
    ArchiveSchemaError,
    ArchiveUnavailable,
    archive_read_engine,
    open_copy,
)
from ..session import QueryError, Session
from .bound import row_bound
from .run import EXPORT_MEMORY_LIMIT, run_export
from .spec import ExportError, ExportResult, ExportSpec, Filters, VerifyError, check_columns

# The differences named at most; the rest are counted.
SHOWN = 5
_TIMES = ("since", "until")
_TEXTS = ("source", "grant_id", "agent_id", "principal_id")


class NotRederivable(VerifyError):
    """The manifest does not record what re-deriving its rows needs (an older export)."""


@dataclass(frozen=True)
class Rederived:
    """The export made again from the archive: its rows and its files' entries."""

    rows: int
    files: list[dict[str, Any]]


def _columns(export: dict[str, Any]) -> tuple[str, ...] | None:
    given = export["columns_given"]
    if given is None:
        return None
    if not isinstance(given, list) or not given or not all(isinstance(c, str) for c in given):
        raise VerifyError(
            f"the manifest's 'export.columns_given' is not a list of columns: {given!r}"
        )
    try:
        check_columns(tuple(given))
    except ExportError as exc:
        raise VerifyError(f"the manifest's 'export.columns_given': {exc}") from None
    return tuple(given)


def _filters(recorded: Any) -> Filters:
    """The filters the manifest records, as the export applied them."""
    if not isinstance(recorded, dict):
        raise VerifyError(f"the manifest's 'filters' must be an object, not {recorded!r}")
    unknown = sorted(set(recorded) - {"types", *_TIMES, *_TEXTS})
    if unknown:
        raise VerifyError(f"the manifest's filter {unknown[0]!r} is not one this version knows")
    types = recorded.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise VerifyError(f"the manifest's 'filters.types' must be a list of types, not {types!r}")
    values: dict[str, Any] = {"types": tuple(types)}
    for key in _TIMES:
        if recorded.get(key) is not None:
            try:
                values[key] = parse_timestamp(str(recorded[key]))
            except TimestampError as exc:
                raise VerifyError(f"the manifest's 'filters.{key}': {exc}") from None
    for key in _TEXTS:
        if recorded.get(key) is not None:
            if not isinstance(recorded[key], str):
                raise VerifyError(f"the manifest's 'filters.{key}' must be text")
            values[key] = recorded[key]
    return Filters(**values)


def spec_of(record: dict[str, Any], output: str) -> tuple[ExportSpec, Filters]:
    """The export ``record`` (a checked manifest) describes, written to ``output`` this time.

    NotRederivable when the manifest predates what re-deriving needs.
    """
    export = record["export"]
    missing = [key for key in ("chain", "bound") if key not in record]
    if "columns_given" not in export:
        missing.append("export.columns_given")
    if missing:
        made = record.get("tool_version", "an older version")
        raise NotRederivable(
            f"the manifest records no {' or '.join(missing)} (it was written by grantex-archive "
            f"{made}): its rows cannot be re-derived from the archive; export again to get "
            "a manifest that can"
        )
    spec = ExportSpec(
        output=output,
        fmt=export["format"],
        gzip=export["gzip"],
        columns=_columns(export),
        partition_by=export["partition_by"],
        safe_formulas=bool(export.get("safe_formulas", False)),
    )
    return spec, _filters(record["filters"])


def rederive(record: dict[str, Any], db_url: str) -> Rederived:
    """Make the export ``record`` describes again from the archive at ``db_url``.

    Everything is written into a private temporary directory (a fresh
    analytics copy, then the export), removed afterwards. VerifyError when the
    manifest cannot be re-derived or the archive cannot be read.
    """
    work = Path(tempfile.mkdtemp(prefix="grantex-archive-rederive-"))
    try:
        (work / "export").mkdir()
        spec, filters = spec_of(record, str(work / "export" / record["export"]["path"]))
        result = _export_again(record, db_url, work / "copy", spec, filters)
    except (ArchiveUnavailable, ArchiveSchemaError):
        raise  # the database, not the export: the command line's exit 4
    except (AnalyticsError, QueryError, ExportError) as exc:
        raise VerifyError(f"re-deriving the rows from the archive failed: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Rederived(result.rows, result.files)


def _export_again(
    record: dict[str, Any], db_url: str, directory: Path, spec: ExportSpec, filters: Filters
) -> ExportResult:
    copy = open_copy(db_url, directory, refresh=True).copy
    session = Session(copy, memory_limit=EXPORT_MEMORY_LIMIT)
    engine = archive_read_engine(db_url)
    try:

        def work(conn: duckdb.DuckDBPyConnection) -> ExportResult:
            # Read after the copy: every row committed since the export is in a later link.
            rows = row_bound(engine, record["chain"], record["bound"])
            return run_export(conn, spec, filters, 0, rows=rows)

        return session.run(work)
    finally:
        engine.dispose()
        session.close()


def _label(path: str, partitioned: bool) -> str:
    if not partitioned:
        return path
    folder = PurePosixPath(path).parent.as_posix()
    return f"partition {folder}" if folder != "." else path


def differences(record: dict[str, Any], again: Rederived) -> list[str]:
    """What differs between the files the manifest lists and those re-derived, one line each."""
    partitioned = record["export"]["partition_by"] is not None
    held = {entry["path"]: entry for entry in record["files"]}
    derived = {entry["path"]: entry for entry in again.files}
    found: list[str] = []
    for path in sorted(set(held) | set(derived)):
        label = _label(path, partitioned)
        mine, theirs = held.get(path), derived.get(path)
        if mine is None and theirs is not None:
            found.append(
                f"{label}: the archive yields {theirs['rows']:,} rows, the export has no such file"
            )
        elif theirs is None and mine is not None:
            found.append(f"{label}: the archive yields no rows, the file holds {mine['rows']:,}")
        elif mine is not None and theirs is not None and mine["rows"] != theirs["rows"]:
            found.append(
                f"{label}: the archive yields {theirs['rows']:,} rows, "
                f"the file holds {mine['rows']:,}"
            )
        elif mine is not None and theirs is not None and mine["sha256"] != theirs["sha256"]:
            found.append(
                f"{label} differs from the rows the archive holds for this export "
                f"(SHA-256 {theirs['sha256']} re-derived, {mine['sha256']} in the file)"
            )
    return found


def check_rederived(record: dict[str, Any], db_url: str) -> Rederived:
    """Re-derive the export and compare; VerifyError naming what differs."""
    again = rederive(record, db_url)
    found = differences(record, again)
    if found:
        more = len(found) - SHOWN
        shown = "; ".join(found[:SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise VerifyError(f"the export differs from the rows the archive holds: {shown}")
    return again


def verify_against_archive(record: dict[str, Any], db_url: str) -> int:
    """Check an export against the archive it was made from; the chain link it was made at.

    The archive's chain must still hold the head the manifest recorded and
    verify, row by row; then the export is re-derived from the archive's rows
    (``queries.export.rederive``) and every file's SHA-256 and row count must
    equal the manifest's (which ``verify_export`` checked against the files).
    Raises VerifyError naming the first difference of the chain, or every
    file that differs.
    """
    chain = record.get("chain")
    if chain is None:
        raise VerifyError(
            "the manifest records no chain head: the export predates the hash chain, and its "
            "rows cannot be re-derived from the archive"
        )
    spec_of(record, record["export"]["path"])  # NotRederivable before the long checks
    n = _check_chain(chain, db_url)
    check_rederived(record, db_url)
    return n


def _check_chain(chain: dict[str, Any], db_url: str) -> int:
    """The archive still holds link ``chain["n"]`` with the recorded hash, and verifies."""
    from ingest.database import create_archive_engine
    from ingest.schema import chain_links
    from ingest.seal.archive import verify_archive

    n, recorded = int(chain["n"]), str(chain["hash"])
    engine = create_archive_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.select(chain_links.c.hash).where(chain_links.c.n == n)
            ).scalar()
        if stored is None and n > 0:
            raise VerifyError(
                f"the archive has no link {n}, the chain head this export was made at"
            )
        if stored is not None and stored != recorded:
            raise VerifyError(
                f"the archive's link {n} hashes to {str(stored)[:16]}..., the manifest recorded "
                f"{recorded[:16]}...: the archive's chain was rewritten after the export"
            )
        verdict = verify_archive(engine)
    finally:
        engine.dispose()
    if not verdict.ok:
        raise VerifyError(f"the archive does not match its chain: {verdict.problems[0]}")
    return n
