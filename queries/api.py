"""Reports, SQL, status and exports as Python functions: what the commands run.

Every analytics command of ``grantex-archive`` is a thin layer over a
function here, so a notebook gets the same answers as the command line::

    import queries

    table = queries.report("revocations-by-actor", "sqlite:///archive.db", by="month")
    table.to_pandas()
    queries.query("SELECT type, count(*) AS n FROM events GROUP BY type", "sqlite:///archive.db")
    queries.status("sqlite:///archive.db").rows
    queries.coverage("sqlite:///archive.db", since=datetime(2026, 3, 1, tzinfo=timezone.utc)).gaps

Results are Arrow tables. Each call refreshes the analytics copy first
unless ``refresh=False``. Errors are typed: :class:`~queries.copy.AnalyticsError`
(and its subclasses) for the archive and the copy, :class:`~queries.session.QueryError`
for SQL, :class:`~queries.reports.ReportError` for a report's name or options,
:class:`~queries.export.ExportError` for exports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from ingest import files
from ingest.timestamps import now_utc

from .copy import (
    AnalyticsCopy,
    AnalyticsError,
    NoCopyYet,
    Opened,
    ProgressFn,
    open_copy,
)
from .coverage import COVERAGE_REPORT, JSON_FIELD, Coverage, Gap, window_gaps
from .export import (
    EXPORT_MEMORY_LIMIT,
    ExportResult,
    ExportSpec,
    Filters,
    bound_of,
    ctrl_c_stops,
    run_export,
    write_query_csv,
)
from .render import OutputError, crlf_for, output_format, render, replace_output
from .reports import ReportError, get_report
from .session import QueryError, Session, bare_statement, check_read_only, rows_of
from .status import OK_OUTCOMES, Status, status

if TYPE_CHECKING:
    import pyarrow


def prepare_report(
    name: str,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None = None,
    agent: str | None = None,
    by: str | None = None,
    limit: int | None = None,
    now: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of report ``name`` for a window and grouping.

    A report that needs the current time (``$now``: ingest-coverage) gets
    ``now``, by default the clock's.
    """
    chosen = get_report(name)
    if since is not None and until is not None and until <= since:
        raise ReportError("the window's end (until) must be later than its start (since)")
    params = chosen.parameters(since=since, until=until, source=source, agent=agent, by=by)
    if "$now" in chosen.sql:
        params["now"] = now if now is not None else now_utc()
    sql = chosen.statement(by)
    if limit is not None:
        sql = f"SELECT * FROM ({sql}) LIMIT {int(limit)}"
    return sql, params


def report(
    name: str,
    db_url: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None = None,
    agent: str | None = None,
    by: str | None = None,
    limit: int | None = None,
    analytics_dir: Path | None = None,
    refresh: bool = True,
    now: datetime | None = None,
) -> pyarrow.Table:
    """Run the named report (``queries.reports.load_reports()`` lists them) as an Arrow table.

    ``now`` (default: the current time) is when uncovered time ends. When the
    window holds time the stream was not covered for the report's sources,
    the table's schema metadata says so: ``b"uncovered"`` holds JSON
    ``{"gaps": N, "seconds": S}`` (:func:`report_coverage`).
    """
    now = now if now is not None else now_utc()
    sql, params = prepare_report(name, since, until, source, agent, by, limit, now)
    copy = open_copy(db_url, analytics_dir, refresh).copy
    table = _arrow(copy, sql, params)
    uncovered = report_coverage(copy, name, since, until, source, now)
    if not uncovered.gaps:
        return table
    metadata = dict(table.schema.metadata or {})
    metadata[JSON_FIELD.encode()] = json.dumps(uncovered.as_json()).encode()
    return table.replace_schema_metadata(metadata)


def coverage(
    db_url: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None = None,
    now: datetime | None = None,
    analytics_dir: Path | None = None,
    refresh: bool = True,
) -> Coverage:
    """The gaps in the stream's coverage within [since, until), as of ``now``.

    The gap rows of the ``ingest-coverage`` report (its header states the
    rules) for ``source``, or for every source when None.
    """
    copy = open_copy(db_url, analytics_dir, refresh).copy
    return window_gaps(copy, since, until, source, now)


def report_coverage(
    copy: AnalyticsCopy,
    name: str,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None = None,
    now: datetime | None = None,
) -> Coverage:
    """The gaps in report ``name``'s window for the sources it covers (``source``, or all).

    None are counted for ``ingest-coverage`` itself, which lists them.
    """
    if get_report(name).name == COVERAGE_REPORT:
        return Coverage()
    return window_gaps(copy, since, until, source, now)


def query(
    sql: str,
    db_url: str,
    params: Mapping[str, Any] | None = None,
    *,
    analytics_dir: Path | None = None,
    refresh: bool = True,
) -> pyarrow.Table:
    """Run one read-only statement (SELECT or EXPLAIN) over the analytics views."""
    copy = open_copy(db_url, analytics_dir, refresh).copy
    check_query(copy, sql)
    return _arrow(copy, bare_statement(sql), dict(params or {}))


def check_query(copy: AnalyticsCopy, sql: str) -> bool:
    """Refuse anything but one SELECT or EXPLAIN; True for an EXPLAIN."""
    session = Session(copy, sandbox=True)
    try:
        return check_read_only(sql, session.conn) == duckdb.StatementType.EXPLAIN
    finally:
        session.close()


def _arrow(copy: AnalyticsCopy, sql: str, params: dict[str, Any]) -> pyarrow.Table:
    session = Session(copy, sandbox=True)
    try:
        return session.run(lambda conn: conn.sql(sql, params=params).to_arrow_table())
    finally:
        session.close()


def emit(
    copy: AnalyticsCopy,
    sql: str,
    params: dict[str, Any],
    fmt: str | None,
    output: str | None,
    json_fields: Mapping[str, Any] | None = None,
) -> None:
    """Write a query's rows as ``fmt`` to ``output`` (a path, or standard output for None/'-').

    A file appears whole or not at all. CSV goes through the export's writer.
    ``json_fields`` are added to every record of JSON and JSON Lines output.
    """
    chosen = output_format(fmt, output)
    if chosen != "csv":
        with rows_of(copy, sql, params) as (columns, rows):
            render(columns, rows, chosen, output, json_fields)
        return
    session = Session(copy, sandbox=True)
    try:
        with tempfile.TemporaryDirectory(prefix="grantex-csv-", dir=session.scratch) as tmp:
            target = Path(tmp) / "rows.csv"
            crlf = crlf_for(output)
            session.run(lambda conn: write_query_csv(conn, sql, params, target, crlf=crlf))
            if output in (None, "-"):
                sys.stdout.flush()
                sink = sys.stdout.buffer
                with open(target, "rb") as handle:
                    shutil.copyfileobj(handle, sink)
                sink.flush()
            else:
                _publish(target, Path(str(output)))
    finally:
        session.close()


def _publish(written: Path, final: Path) -> None:
    """Put a file written elsewhere at ``final`` whole: copied into a locked temporary
    file beside it, synced, renamed, the directory synced."""
    files.remove_stale_temps(final)  # what a killed run left
    try:
        tmp, fd = files.locked_temp(final)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    try:
        try:
            with open(written, "rb") as src, open(fd, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
        replace_output(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


# --------------------------------------------------------------------------- export


def export_archive(
    spec: ExportSpec,
    filters: Filters,
    db_url: str,
    analytics_dir: Path | None = None,
    refresh: bool = True,
    progress: ProgressFn | None = None,
    copy: AnalyticsCopy | None = None,
) -> ExportResult:
    """Export the archived events ``filters`` pick as ``spec`` says, with its manifest.

    Ctrl-C (SIGINT) stops DuckDB and raises ``ExportInterrupted``; nothing is
    left at the output path.
    """
    if copy is None:
        copy = open_copy(db_url, analytics_dir, refresh).copy
    manifest = copy.manifest()
    session = Session(copy, memory_limit=EXPORT_MEMORY_LIMIT)
    try:
        with ctrl_c_stops(session.conn) as stop:
            watermark = manifest.watermark if manifest else 0

            def work(conn: duckdb.DuckDBPyConnection) -> ExportResult:
                # Read once the session holds its copy: the head covers every row in it.
                chain, bound = bound_of(conn, db_url)
                return run_export(conn, spec, filters, watermark, progress, stop, chain, bound)

            return session.run(work)
    finally:
        session.close()


__all__ = [
    "OK_OUTCOMES",
    "AnalyticsError",
    "Coverage",
    "Gap",
    "NoCopyYet",
    "Opened",
    "QueryError",
    "ReportError",
    "Status",
    "check_query",
    "coverage",
    "emit",
    "export_archive",
    "open_copy",
    "prepare_report",
    "query",
    "report",
    "report_coverage",
    "rows_of",
    "status",
]
