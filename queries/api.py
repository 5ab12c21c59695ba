"""Reports, SQL, status and exports as Python functions: what the commands run.

Every analytics command of ``grantex-archive`` is a thin layer over a
function here, so a notebook gets the same answers as the command line::

    import queries

    table = queries.report("revocations-by-actor", "sqlite:///archive.db", by="month")
    table.to_pandas()
    queries.query("SELECT type, count(*) AS n FROM events GROUP BY type", "sqlite:///archive.db")
    queries.status("sqlite:///archive.db").rows

Results are Arrow tables. Each call refreshes the analytics copy first
unless ``refresh=False``. Errors are typed: :class:`~queries.copy.AnalyticsError`
(and its subclasses) for the archive and the copy, :class:`~queries.session.QueryError`
for SQL, :class:`~queries.reports.ReportError` for a report's name or options,
:class:`~queries.export.ExportError` for exports.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ingest import files
from ingest.database import first_line
from ingest.schema import ingest_runs
from ingest.store import safe_url, sqlite_path
from ingest.timestamps import now_utc, utc

from .copy import (
    AnalyticsCopy,
    AnalyticsError,
    ArchiveMissing,
    ArchiveSchemaError,
    ArchiveUnavailable,
    RefreshResult,
    archive_read_engine,
    check_archive_exists,
)
from .export import (
    EXPORT_MEMORY_LIMIT,
    ExportResult,
    ExportSpec,
    Filters,
    ctrl_c_stops,
    run_export,
    write_query_csv,
)
from .render import OutputError, crlf_for, output_format, render, replace_output
from .reports import ReportError, get_report
from .session import QueryError, Session, bare_statement, check_read_only

if TYPE_CHECKING:
    import pyarrow

ProgressFn = Callable[[int, int], None]


class NoCopyYet(AnalyticsError):
    """``refresh=False`` was asked for, but the archive has no analytics copy yet."""


@dataclass(frozen=True)
class Opened:
    """An analytics copy ready to query, and what refreshing it did (None: not refreshed)."""

    copy: AnalyticsCopy
    refreshed: RefreshResult | None


def open_copy(
    db_url: str,
    analytics_dir: Path | None = None,
    refresh: bool = True,
    full: bool = False,
    progress: ProgressFn | None = None,
) -> Opened:
    """The analytics copy of the archive at ``db_url``, refreshed first unless ``refresh=False``."""
    check_archive_exists(db_url)
    copy = AnalyticsCopy(db_url, analytics_dir)
    if refresh:
        return Opened(copy, copy.refresh(full=full, progress=progress))
    if copy.manifest() is None:
        raise NoCopyYet(f"no analytics copy in {copy.directory} yet")
    return Opened(copy, None)


def prepare_report(
    name: str,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str | None = None,
    agent: str | None = None,
    by: str | None = None,
    limit: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of report ``name`` for a window and grouping."""
    chosen = get_report(name)
    if since is not None and until is not None and until <= since:
        raise ReportError("the window's end (until) must be later than its start (since)")
    params = chosen.parameters(since=since, until=until, source=source, agent=agent, by=by)
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
) -> pyarrow.Table:
    """Run the named report (``queries.reports.load_reports()`` lists them) as an Arrow table."""
    sql, params = prepare_report(name, since, until, source, agent, by, limit)
    copy = open_copy(db_url, analytics_dir, refresh).copy
    return _arrow(copy, sql, params)


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
    import duckdb

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


@contextmanager
def rows_of(
    copy: AnalyticsCopy, sql: str, params: dict[str, Any]
) -> Iterator[tuple[list[str], Iterator[tuple[Any, ...]]]]:
    """The columns and (streamed) rows of ``sql`` over the copy."""
    session = Session(copy, sandbox=True)
    try:
        yield session.stream(sql, params)
    finally:
        session.close()


def emit(
    copy: AnalyticsCopy,
    sql: str,
    params: dict[str, Any],
    fmt: str | None,
    output: str | None,
) -> None:
    """Write a query's rows as ``fmt`` to ``output`` (a path, or standard output for None/'-').

    A file appears whole or not at all. CSV goes through the export's writer.
    """
    chosen = output_format(fmt, output)
    if chosen != "csv":
        with rows_of(copy, sql, params) as (columns, rows):
            render(columns, rows, chosen, output)
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


# --------------------------------------------------------------------------- status

OK_OUTCOMES = ("idle", "max_runtime", "max_events", "interrupted")
"""The outcomes of runs that ended as they were asked to (exit code 0)."""


@dataclass(frozen=True)
class Status:
    """What the archive holds, how its runs went, and the analytics copy's state."""

    rows: list[tuple[str, str, Any]]
    """(section, name, value), as ``grantex-archive status`` prints them."""
    last_success: datetime | None
    """When the newest run that ended as asked finished."""
    refreshed: RefreshResult | None = None
    """What refreshing the copy first did (None: not refreshed)."""

    @property
    def age_minutes(self) -> float | None:
        if self.last_success is None:
            return None
        return (now_utc() - self.last_success).total_seconds() / 60


def status(
    db_url: str,
    analytics_dir: Path | None = None,
    refresh: bool = True,
    progress: ProgressFn | None = None,
) -> Status:
    """The archive's contents, its newest run and newest success, and the copy's freshness."""
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        raise ArchiveMissing(path)
    last_run, last_success = _runs(db_url)
    opened = open_copy(db_url, analytics_dir, refresh, progress=progress)
    copy = opened.copy
    counts = _fetch(
        copy,
        "SELECT type, count(*), min(occurred_at), max(occurred_at) FROM events "
        "GROUP BY type ORDER BY count(*) DESC, type",
    )
    rows: list[tuple[str, str, Any]] = [
        ("archive", "database", safe_url(db_url)),
        ("archive", "events", sum(int(c[1]) for c in counts)),
        ("archive", "first_occurred_at", min((c[2] for c in counts), default=None)),
        ("archive", "last_occurred_at", max((c[3] for c in counts), default=None)),
        (
            "archive",
            "rejected_frames",
            int(_fetch(copy, "SELECT count(*) FROM rejected_events")[0][0]),
        ),
    ]
    rows += [("events", event_type, int(count)) for event_type, count, _f, _l in counts]
    if last_run is not None:
        for key in ("id", "source", "started_at", "finished_at", "outcome", "exit_code"):
            rows.append(("last_run", key, last_run[key]))
        rows.append(("last_run", "inserted", last_run["inserted"]))
        if last_run["error"]:
            rows.append(("last_run", "error", last_run["error"]))
    else:
        rows.append(("last_run", "id", None))
    result = Status(rows, last_success, opened.refreshed)
    rows.append(("last_success", "finished_at", last_success))
    if result.age_minutes is not None:
        rows.append(("last_success", "age_minutes", round(result.age_minutes, 1)))
    manifest = copy.manifest()
    rows.append(("analytics", "directory", str(copy.directory)))
    rows.append(("analytics", "refreshed_at", manifest.refreshed_at if manifest else None))
    rows.append(("analytics", "events", manifest.events if manifest else 0))
    rows.append(("analytics", "size_bytes", copy.size_bytes()))
    return result


def _fetch(copy: AnalyticsCopy, sql: str) -> list[tuple[Any, ...]]:
    with rows_of(copy, sql, {}) as (_columns, rows):
        return list(rows)


def _runs(db_url: str) -> tuple[dict[str, Any] | None, datetime | None]:
    """The newest run, and when the newest run that ended as asked finished."""
    engine = archive_read_engine(db_url)
    try:
        with engine.connect() as conn:
            last = conn.execute(
                sa.select(ingest_runs).order_by(ingest_runs.c.started_at.desc()).limit(1)
            ).first()
            success = conn.execute(
                sa.select(sa.func.max(ingest_runs.c.finished_at)).where(
                    sa.or_(
                        ingest_runs.c.exit_code == 0,
                        sa.and_(
                            ingest_runs.c.exit_code.is_(None),
                            ingest_runs.c.finished_at.is_not(None),
                            ingest_runs.c.outcome.in_(OK_OUTCOMES),
                        ),
                    )
                )
            ).scalar()
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError) as exc:
        if _has_no_runs_table(engine):
            raise ArchiveSchemaError(
                "the archive has no grantex-archive schema (was it downgraded?): "
                "run `grantex-archive db upgrade`"
            ) from None
        raise ArchiveUnavailable(f"database unusable: {first_line(exc)}") from None
    finally:
        engine.dispose()
    return (dict(last._mapping) if last is not None else None), utc(success)


def _has_no_runs_table(engine: sa.Engine) -> bool:
    try:
        return not sa.inspect(engine).has_table(ingest_runs.name)
    except sa.exc.SQLAlchemyError:
        return False


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
            return session.run(
                lambda conn: run_export(
                    conn, spec, filters, manifest.watermark if manifest else 0, progress, stop
                )
            )
    finally:
        session.close()


__all__ = [
    "OK_OUTCOMES",
    "AnalyticsError",
    "NoCopyYet",
    "Opened",
    "QueryError",
    "ReportError",
    "Status",
    "check_query",
    "emit",
    "export_archive",
    "open_copy",
    "prepare_report",
    "query",
    "report",
    "rows_of",
    "status",
]
