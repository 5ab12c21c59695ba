"""``export()``: an audit export from Python, on any DuckDB connection with the copy's views.

For a notebook or a script that has loaded the analytics copy's ``views.sql``::

    import duckdb
    from queries.export import export

    con = duckdb.connect()
    con.execute(open("grantex-archive.db.analytics/views.sql").read())
    export(con, "revocations-q1.csv", types=["grant.revoked"], since="2026-01-01")

It checks what the command line checks and writes the same files and
manifest as ``grantex-archive export``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb

from ingest.timestamps import parse_time_option

from .run import run_export
from .spec import (
    ExportError,
    ExportResult,
    ExportSpec,
    Filters,
    SuffixError,
    check_columns,
    check_suffix,
    format_for,
)


def check_combination(spec: ExportSpec) -> None:
    """SuffixError for options that do not go together (the command line's usage errors)."""
    if spec.gzip and spec.fmt == "parquet":
        raise SuffixError("--gzip is for csv and jsonl (Parquet compresses its columns)")
    if spec.partition_by and spec.fmt != "parquet":
        raise SuffixError("--partition-by needs --format parquet")
    if spec.output == "-" and spec.fmt == "parquet":
        raise SuffixError("Parquet cannot go to standard output: give a file")
    if spec.safe_formulas and spec.fmt != "csv":
        raise SuffixError("--safe-formulas is for csv")


def _time(value: datetime | str | None) -> datetime | None:
    return parse_time_option(value) if isinstance(value, str) else value


def export(
    conn: duckdb.DuckDBPyConnection,
    output: str,
    *,
    fmt: str | None = None,
    gzip: bool = False,
    columns: Sequence[str] | None = None,
    partition_by: str | None = None,
    force: bool = False,
    safe_formulas: bool = False,
    types: Sequence[str] = (),
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    source: str | None = None,
    grant_id: str | None = None,
    agent_id: str | None = None,
    principal_id: str | None = None,
) -> ExportResult:
    """Export the events the filters select to ``output``, with its manifest beside it.

    The format comes from ``output``'s name unless ``fmt`` says; times are
    datetimes or what ``--since`` takes (``2026-03-01``, ISO 8601). The
    manifest's watermark is the highest ``seq`` the views hold. Raises
    SuffixError for options that do not go together, TargetError when
    ``output`` may not be written, ExportError when writing failed.
    """
    chosen, gz = format_for(output, fmt)
    spec = ExportSpec(
        output=output,
        fmt=chosen,
        gzip=gzip or gz,
        columns=tuple(columns) if columns else None,
        partition_by=partition_by,
        force=force,
        safe_formulas=safe_formulas,
    )
    if spec.columns is not None:
        check_columns(spec.columns)
    check_combination(spec)
    check_suffix(output, fmt, spec.fmt, spec.gzip)
    filters = Filters(
        types=tuple(types),
        since=_time(since),
        until=_time(until),
        source=source,
        grant_id=grant_id,
        agent_id=agent_id,
        principal_id=principal_id,
    )
    if filters.since and filters.until and filters.until <= filters.since:
        raise ExportError("until must be later than since")
    (watermark,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0]
    return run_export(conn, spec, filters, int(watermark))
