"""The analytics commands: ``report``, ``sql``, ``status``, ``refresh`` and ``demo``.

Each refreshes the analytics copy first (unless ``--no-refresh``), then runs
DuckDB over it. Errors are one ``Error:`` line: exit 1 for SQL and copy
problems, 2 for bad usage, 4 when the archive's database cannot be reached.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click
import duckdb
import sqlalchemy as sa

from ingest.cli import (
    EXIT_CODES,
    EXIT_DATABASE,
    EXIT_LOCKED,
    CliError,
    _check_db_url,
    _safe,
    db_option,
)
from ingest.logs import setup_logging
from ingest.runner import run_ingest
from ingest.schema import ingest_runs
from ingest.settings import IngestSettings, Secret
from ingest.store import LockHeld, StoreError, sqlite_path
from ingest.timestamps import TimestampError, parse_timestamp

from .copy import (
    ENV_ANALYTICS_DIR,
    AnalyticsCopy,
    AnalyticsError,
    ArchiveSchemaError,
    ArchiveUnavailable,
    RefreshResult,
    archive_read_engine,
    check_archive_exists,
)
from .export import (
    DEFAULT_COLUMNS,
    EXPORT_MEMORY_LIMIT,
    FORMATS,
    PARTITIONS,
    ExportError,
    ExportInterrupted,
    ExportSpec,
    Filters,
    OutputClosed,
    SuffixError,
    TargetError,
    VerifyError,
    check_columns,
    check_suffix,
    check_target,
    ctrl_c_stops,
    format_for,
    run_export,
    verify_export,
    write_query_csv,
)
from .render import (
    OutputError,
    crlf_for,
    output_format,
    output_options,
    render,
    replace_output,
)
from .reports import PERIODS, ReportError, get_report, load_reports
from .session import (
    QueryError,
    Session,
    bare_statement,
    check_read_only,
    first_line,
)

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

EXIT_STALE = 1


def copy_location_options(func: F) -> F:
    """``--db`` and ``--analytics-dir``: which archive, and where its copy lives."""
    func = click.option(
        "--analytics-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=ENV_ANALYTICS_DIR,
        default=None,
        help=f"Where the analytics copy lives [default: beside a SQLite archive] "
        f"(env {ENV_ANALYTICS_DIR}).",
    )(func)
    return db_option(func)


def copy_options(func: F) -> F:
    """The copy's location, and ``--no-refresh`` for commands that refresh it first."""
    func = click.option(
        "--no-refresh",
        is_flag=True,
        help="Use the analytics copy as it is, without bringing it up to the archive first.",
    )(func)
    return copy_location_options(func)


def _parse_time(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        return parse_timestamp(text)
    except (TimestampError, ValueError):
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or timestamp (e.g. 2026-03-01 or "
            "2026-03-01T12:00:00Z)",
            param_hint=f"'{flag}'",
        ) from None


def open_copy(db_url: str, analytics_dir: Path | None, refresh: bool) -> AnalyticsCopy:
    """The copy for ``db_url``, refreshed unless told not to."""
    _check_db_url(db_url)
    try:
        check_archive_exists(db_url)
    except AnalyticsError as exc:
        raise CliError(str(exc)) from None
    copy = AnalyticsCopy(db_url, analytics_dir)
    if refresh:
        refresh_copy(copy)
    elif copy.manifest() is None:
        raise CliError(
            f"no analytics copy in {copy.directory} yet: run without --no-refresh "
            "(or `grantex-archive refresh`)"
        )
    return copy


def refresh_copy(copy: AnalyticsCopy, full: bool = False) -> RefreshResult:
    progress = _Progress("Refreshing the analytics copy") if sys.stderr.isatty() else None
    try:
        result = copy.refresh(full=full, progress=progress)
    except (ArchiveUnavailable, ArchiveSchemaError) as exc:
        raise CliError(str(exc), EXIT_DATABASE) from None
    except AnalyticsError as exc:
        raise CliError(str(exc)) from None
    finally:
        if progress is not None:
            progress.done()
    if result.waited:
        click.echo(
            "Note: another process is refreshing the analytics copy; "
            f"using it as of {result.manifest.refreshed_at}",
            err=True,
        )
    return result


class _Progress:
    """A single self-updating line on a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self.started < 0.5 and not self.shown:
            return
        self.shown = True
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        click.echo(f"\r{self.label}: {done:,} of {total:,} events{pct}", err=True, nl=False)

    def done(self) -> None:
        if self.shown:
            click.echo("", err=True)


@contextmanager
def _query(
    copy: AnalyticsCopy, sql: str, params: dict[str, Any]
) -> Iterator[tuple[list[str], Iterator[tuple[Any, ...]]]]:
    """The columns and (streamed) rows of ``sql``; DuckDB errors become ``Error:`` lines."""
    session = Session(copy, sandbox=True)
    try:
        yield session.stream(sql, params)
    except QueryError as exc:
        raise CliError(str(exc)) from None
    finally:
        session.close()


def emit(
    copy: AnalyticsCopy, sql: str, params: dict[str, Any], fmt: str | None, output: str | None
) -> None:
    """Print or write a query's rows; CSV goes through the export writer."""
    chosen = output_format(fmt, output)
    if chosen != "csv":
        with _query(copy, sql, params) as (columns, rows):
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
                final = Path(str(output))
                staged = final.with_name(f".{final.name}.{os.getpid()}.tmp")
                try:
                    shutil.move(str(target), staged)
                except OSError as exc:
                    staged.unlink(missing_ok=True)
                    raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
                replace_output(staged, final)
    except QueryError as exc:
        raise CliError(str(exc)) from None
    finally:
        session.close()


def _fetch(copy: AnalyticsCopy, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with _query(copy, sql, params) as (_columns, rows):
        return list(rows)


# --------------------------------------------------------------------------- report


def _list_reports(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    reports = load_reports()
    width = max(len(name) for name in reports)
    for name, report in reports.items():
        click.echo(f"{name.ljust(width)}  {report.summary}")
    ctx.exit(0)


@click.command()
@click.argument("name", required=False)
@click.option(
    "--list",
    "list_",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_reports,
    help="List the reports with a line on each, and exit.",
)
@click.option("--since", metavar="ISO", help="Start of the window (inclusive), UTC if no offset.")
@click.option("--until", metavar="ISO", help="End of the window (exclusive).")
@click.option("--source", metavar="S", help="Only this ingest source.")
@click.option("--agent", metavar="ID", help="Only this agent.")
@click.option(
    "--by",
    type=click.Choice([*PERIODS, "agent"]),
    help="Group by calendar period (UTC) or agent, where the report allows.",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.option("--describe", is_flag=True, help="Print what the report computes, and exit.")
@output_options
@copy_options
def report(
    name: str | None,
    since: str | None,
    until: str | None,
    source: str | None,
    agent: str | None,
    by: str | None,
    limit: int | None,
    describe: bool,
    fmt: str | None,
    output: str | None,
    db_url: str,
    analytics_dir: Path | None,
    no_refresh: bool,
) -> None:
    """Run the named report NAME over the archive (`report --list` names them all).

    Each report is a SQL file whose header states exactly what it computes
    (`report NAME --describe` prints it). Windows are [--since, --until) on
    UTC timestamps; a bare date means its midnight UTC.

    \b
    Example:
      grantex-archive report revocations-by-actor --since 2026-01-01 --by month
      grantex-archive report budget-exhaustion-rate --by agent --format csv -o budgets.csv
    """
    if name is None:
        raise click.UsageError("give a report NAME, or --list to see them")
    try:
        chosen = get_report(name)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    if describe:
        click.echo(f"{chosen.name}: {chosen.summary}\n\n{chosen.description}")
        click.echo(f"\nOptions: {', '.join('--' + o for o in chosen.options)}")
        if chosen.by:
            click.echo(f"--by: {', '.join(chosen.by)}")
        return
    start = _parse_time(since, "--since")
    end = _parse_time(until, "--until")
    if start is not None and end is not None and end <= start:
        raise click.BadParameter("must be later than --since", param_hint="'--until'")
    try:
        params = chosen.parameters(since=start, until=end, source=source, agent=agent, by=by)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    sql = chosen.statement(by)
    if limit is not None:
        sql = f"SELECT * FROM ({sql}) LIMIT {int(limit)}"
    copy = open_copy(db_url, analytics_dir, not no_refresh)
    emit(copy, sql, params, fmt, output)


# --------------------------------------------------------------------------- sql


@click.command("sql")
@click.argument("query", required=False)
@click.option(
    "-f",
    "--file",
    "sql_file",
    type=click.File("r"),
    help="Read the query from FILE ('-' for standard input).",
)
@click.option(
    "-p",
    "--param",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="Bind $NAME to VALUE (text; cast in SQL, e.g. $n::INTEGER).",
)
@output_options
@copy_options
def sql_command(
    query: str | None,
    sql_file: Any,
    params: Sequence[tuple[str, str]],
    fmt: str | None,
    output: str | None,
    db_url: str,
    analytics_dir: Path | None,
    no_refresh: bool,
) -> None:
    """Run one read-only SQL query (DuckDB dialect) over the analytics views.

    The views are events, grants, rejected_events and ingest_runs (columns in
    docs/analytics.md); QUERY '-' reads standard input. Only SELECT (and
    EXPLAIN) runs: the archive cannot be changed from here.

    \b
    Example:
      grantex-archive sql "SELECT type, count(*) FROM events GROUP BY type"
      grantex-archive sql "SELECT * FROM grants WHERE agent_id = \\$agent" -p agent ag_123
      echo "SELECT count(*) FROM grants" | grantex-archive sql -
    """
    if query is not None and sql_file is not None:
        raise click.UsageError("give QUERY or --file, not both")
    if query == "-":
        text = sys.stdin.read()
    elif query is not None:
        text = query
    elif sql_file is not None:
        text = sql_file.read()
    else:
        raise click.UsageError("give a QUERY, --file FILE, or '-' to read standard input")
    bound = {name: value for name, value in params}
    try:
        copy = open_copy(db_url, analytics_dir, not no_refresh)
        session = Session(copy, sandbox=True)
        try:
            kind = check_read_only(text, session.conn)
        except QueryError as exc:
            raise CliError(str(exc)) from None
        finally:
            session.close()
        # The statement runs inside the query DuckDB is given.
        text = bare_statement(text)
        if kind == duckdb.StatementType.EXPLAIN:
            with _query(copy, text, bound) as (columns, rows):
                render(columns, rows, fmt, output)
        else:
            emit(copy, text, bound, fmt, output)
    except KeyboardInterrupt:  # QueryInterrupted too: Ctrl-C during the query
        where = f"; nothing was written to {output}" if output not in (None, "-") else ""
        raise CliError(f"interrupted{where}", EXIT_INTERRUPTED) from None


# --------------------------------------------------------------------------- status


@click.command()
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MINUTES",
    help="Exit 1 when the newest successful ingest finished longer ago than this.",
)
@output_options
@copy_options
def status(
    max_age: float | None,
    fmt: str | None,
    output: str | None,
    db_url: str,
    analytics_dir: Path | None,
    no_refresh: bool,
) -> None:
    """Show what the archive holds, how its ingest runs went, and the copy's freshness.

    Rows are (section, name, value). With --max-age, exits 1 when no ingest
    run finished successfully (exit code 0) within that many minutes: a check
    for a cron-driven worker.

    \b
    Example:
      grantex-archive status
      grantex-archive status --max-age 90 --format json || alert "archive is stale"
    """
    _check_db_url(db_url)
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        raise CliError(f"no archive at {path}: run `grantex-archive ingest` first")
    last_run, last_success = _runs(db_url)
    copy = open_copy(db_url, analytics_dir, not no_refresh)
    rows: list[tuple[str, str, Any]] = []
    counts = _fetch(
        copy,
        "SELECT type, count(*), min(occurred_at), max(occurred_at) FROM events "
        "GROUP BY type ORDER BY count(*) DESC, type",
        {},
    )
    total = sum(int(c[1]) for c in counts)
    rows.append(("archive", "database", _safe(db_url)))
    rows.append(("archive", "events", total))
    rows.append(("archive", "first_occurred_at", min((c[2] for c in counts), default=None)))
    rows.append(("archive", "last_occurred_at", max((c[3] for c in counts), default=None)))
    rejected = _fetch(copy, "SELECT count(*) FROM rejected_events", {})
    rows.append(("archive", "rejected_frames", int(rejected[0][0])))
    for event_type, count, _first, _last in counts:
        rows.append(("events", event_type, int(count)))
    if last_run is not None:
        for key in ("id", "source", "started_at", "finished_at", "outcome", "exit_code"):
            rows.append(("last_run", key, last_run[key]))
        rows.append(("last_run", "inserted", last_run["inserted"]))
        if last_run["error"]:
            rows.append(("last_run", "error", last_run["error"]))
    else:
        rows.append(("last_run", "id", None))
    rows.append(("last_success", "finished_at", last_success))
    age = None
    if last_success is not None:
        age = (datetime.now(timezone.utc) - last_success).total_seconds() / 60
        rows.append(("last_success", "age_minutes", round(age, 1)))
    manifest = copy.manifest()
    rows.append(("analytics", "directory", str(copy.directory)))
    rows.append(("analytics", "refreshed_at", manifest.refreshed_at if manifest else None))
    rows.append(("analytics", "events", manifest.events if manifest else 0))
    rows.append(("analytics", "size_bytes", copy.size_bytes()))
    render(["section", "name", "value"], rows, fmt, output)
    if max_age is not None:
        if last_success is None:
            raise CliError("no successful ingest run is recorded", EXIT_STALE)
        if age is not None and age > max_age:
            raise CliError(
                f"the newest successful ingest finished {age:.0f} minutes ago "
                f"(--max-age {max_age:g})",
                EXIT_STALE,
            )


def _runs(db_url: str) -> tuple[dict[str, Any] | None, datetime | None]:
    engine = archive_read_engine(db_url)
    try:
        with engine.connect() as conn:
            last = conn.execute(
                sa.select(ingest_runs).order_by(ingest_runs.c.started_at.desc()).limit(1)
            ).first()
            success = conn.execute(
                sa.select(sa.func.max(ingest_runs.c.finished_at)).where(
                    ingest_runs.c.exit_code == 0
                )
            ).scalar()
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError) as exc:
        if _has_no_runs_table(engine):
            raise CliError(
                "the archive has no grantex-archive schema (was it downgraded?): "
                "run `grantex-archive db upgrade`",
                EXIT_DATABASE,
            ) from None
        raise CliError(f"database unusable: {first_line(exc)}", EXIT_DATABASE) from None
    finally:
        engine.dispose()
    if success is not None and success.tzinfo is None:
        success = success.replace(tzinfo=timezone.utc)
    return (dict(last._mapping) if last is not None else None), success


def _has_no_runs_table(engine: sa.Engine) -> bool:
    try:
        return not sa.inspect(engine).has_table(ingest_runs.name)
    except sa.exc.SQLAlchemyError:
        return False


# --------------------------------------------------------------------------- refresh


@click.command("refresh")
@click.option("--full", is_flag=True, help="Rebuild the copy from scratch.")
@copy_location_options
def refresh_command(full: bool, db_url: str, analytics_dir: Path | None) -> None:
    """Bring the analytics copy up to the archive (every analytics command does this too).

    Useful right after a cron ingest so that reports start warm, or with --full
    to rebuild a copy from scratch. The copy is a cache: deleting its directory
    loses nothing.

    \b
    Example:
      grantex-archive ingest --until-idle 60 && grantex-archive refresh
    """
    _check_db_url(db_url)
    copy = AnalyticsCopy(db_url, analytics_dir)
    result = refresh_copy(copy, full=full)
    what = "rebuilt" if result.rebuilt else "refreshed"
    click.echo(
        f"{what} {copy.directory}: {result.new_rows} new events"
        + (f", {result.rescued_rows} re-scanned" if result.rescued_rows else "")
        + f", {result.manifest.events} in all, in {result.seconds:.2f} s"
    )


# --------------------------------------------------------------------------- demo

HEADLINES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("event-volume", {}),
    ("revocations-by-actor", {}),
    ("budget-exhaustion-rate", {}),
    ("grant-lifetime", {}),
    ("top-agents", {"limit": 5}),
)


@click.command()
@click.option(
    "--db",
    "db_url",
    default="sqlite:///grantex-demo.db",
    show_default=True,
    metavar="URL",
    help="Demo archive (a SQLite file here is replaced).",
)
@click.option(
    "--events",
    "backlog",
    type=click.IntRange(min=1),
    default=50000,
    show_default=True,
    help="Events of history the simulator generates for the demo.",
)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="Random seed of the simulated history."
)
def demo(db_url: str, backlog: int, seed: int) -> None:
    """Run everything locally: a simulator, ingest until idle, then the headline reports.

    A fresh demo archive is filled from a local simulator with a realistic mix
    of events (thousands of grants), then the reports show what it holds.

    \b
    Example:
      grantex-archive demo --events 100000
    """
    from ingest.simulator import Simulator, SimulatorConfig

    _check_db_url(db_url)
    path = sqlite_path(db_url)
    if path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    key = "demo_" + secrets.token_hex(12)
    setup_logging("text", logging.INFO, secrets=(key,))
    config = SimulatorConfig(
        api_key=key, seed=seed, backlog=backlog, rate=0.0, keepalive=1.0, envelope="mixed"
    )
    with Simulator(config) as sim:
        click.echo(f"Simulator at {sim.base_url} with {backlog} events of history", err=True)
        settings = IngestSettings(
            db_url=db_url,
            base_url=sim.base_url,
            api_key=Secret(key),
            since=sim.history_start,
            until_idle=2.0,
            max_runtime=600.0,
            progress_interval=1.0,
        )
        try:
            result = run_ingest(settings, EXIT_CODES)
        except LockHeld as exc:
            raise CliError(str(exc), EXIT_LOCKED) from None
        except StoreError as exc:
            raise CliError(str(exc), EXIT_DATABASE) from None
    if EXIT_CODES[result.outcome] != 0:
        raise CliError(result.error or result.outcome, EXIT_CODES[result.outcome])
    copy = AnalyticsCopy(db_url)
    refreshed = refresh_copy(copy, full=True)
    click.echo(
        f"\nArchived {refreshed.manifest.events} events in {_safe(db_url)} "
        f"({result.counts.rejected} frames rejected); analytics copy in {copy.directory}"
    )
    fmt = "table" if sys.stdout.isatty() else "csv"
    for name, options in HEADLINES:
        chosen = get_report(name)
        sql = chosen.statement(None)
        if "limit" in options:
            sql = f"SELECT * FROM ({sql}) LIMIT {int(options['limit'])}"
        click.echo(f"\n== grantex-archive report {name}: {chosen.summary}")
        emit(copy, sql, chosen.parameters(), fmt, None)
    click.echo(
        f"\nThe demo archive is {_safe(db_url)}; try:\n"
        f"  grantex-archive report --list --db {db_url}\n"
        f'  grantex-archive sql "SELECT * FROM grants LIMIT 5" --db {db_url}'
    )


# --------------------------------------------------------------------------- export


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


@click.command("export")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="PATH",
    help="File to write ('-' for standard output); a directory with --partition-by.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="File format [default: from PATH's suffix (.csv .jsonl .ndjson .parquet, .gz); "
    "csv for '-']. A suffix that disagrees is refused.",
)
@click.option(
    "--type", "types", multiple=True, metavar="T", help="Only events of type T (repeatable)."
)
@click.option("--since", metavar="ISO", help="Events that occurred at or after this time.")
@click.option("--until", metavar="ISO", help="Events that occurred before this time.")
@click.option("--source", metavar="S", help="Only this ingest source.")
@click.option("--grant-id", metavar="ID", help="Only events about this grant.")
@click.option("--agent-id", metavar="ID", help="Only events of this agent or its grants.")
@click.option("--principal-id", metavar="ID", help="Only events of this principal or its grants.")
@click.option(
    "--columns",
    metavar="C1,C2,...",
    help=f"Columns, in this order [default: {', '.join(DEFAULT_COLUMNS)}; "
    "for jsonl the envelope as archived]. Also: seq, received_at, payload.",
)
@click.option(
    "--gzip", "gz", is_flag=True, help="Compress CSV or JSON Lines with gzip (PATH ends in .gz)."
)
@click.option(
    "--partition-by",
    type=click.Choice(sorted(PARTITIONS)),
    help="Parquet only: a directory of occurred_date=YYYY-MM-DD/ (or occurred_month=) parts.",
)
@click.option(
    "--safe-formulas",
    is_flag=True,
    help="CSV: prefix text cells starting with = + - @ tab or CR with ' so spreadsheets "
    "do not run them (changes the data; off by default).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a previous export of the same shape at PATH (with its manifest); "
    "nothing else is ever replaced.",
)
@copy_options
def export_command(
    output: str,
    fmt: str | None,
    types: tuple[str, ...],
    since: str | None,
    until: str | None,
    source: str | None,
    grant_id: str | None,
    agent_id: str | None,
    principal_id: str | None,
    columns: str | None,
    gz: bool,
    partition_by: str | None,
    safe_formulas: bool,
    force: bool,
    db_url: str,
    analytics_dir: Path | None,
    no_refresh: bool,
) -> None:
    """Export archived events for an audit, with a manifest that proves the file.

    Rows are ordered by occurred_at, then id; timestamps are ISO 8601 UTC with
    Z (typed UTC timestamps in Parquet). Beside PATH, PATH.manifest.json holds
    the filters, the row count, each file's SHA-256 and the archive's watermark;
    `grantex-archive verify-export PATH` checks them. The file appears under
    PATH only once complete; Ctrl-C (exit 130) leaves nothing.

    \b
    Example:
      grantex-archive export -o revocations-q1.csv --type grant.revoked \\
          --agent-id ag_123 --since 2026-01-01 --until 2026-04-01
      grantex-archive export -o lake.parquet --partition-by day
    """
    chosen, suffix_gz = format_for(output, fmt)
    spec = ExportSpec(
        output=output,
        fmt=chosen,
        gzip=gz or suffix_gz,
        columns=tuple(c.strip() for c in columns.split(",") if c.strip()) if columns else None,
        partition_by=partition_by,
        force=force,
        safe_formulas=safe_formulas,
    )
    try:
        if spec.columns is not None:
            check_columns(spec.columns)
    except ExportError as exc:
        raise click.BadParameter(str(exc), param_hint="'--columns'") from None
    if spec.gzip and spec.fmt == "parquet":
        raise click.UsageError("--gzip is for csv and jsonl (Parquet compresses its columns)")
    if partition_by and spec.fmt != "parquet":
        raise click.UsageError("--partition-by needs --format parquet")
    if output == "-" and (spec.fmt == "parquet"):
        raise click.UsageError("Parquet cannot go to standard output: give a file")
    if safe_formulas and spec.fmt != "csv":
        raise click.UsageError("--safe-formulas is for csv")
    try:
        check_suffix(output, fmt, spec.fmt, spec.gzip)
    except SuffixError as exc:
        raise click.UsageError(str(exc)) from None
    filters = Filters(
        types=types,
        since=_parse_time(since, "--since"),
        until=_parse_time(until, "--until"),
        source=source,
        grant_id=grant_id,
        agent_id=agent_id,
        principal_id=principal_id,
    )
    if filters.since and filters.until and filters.until <= filters.since:
        raise click.BadParameter("must be later than --since", param_hint="'--until'")
    if output != "-":
        try:
            # Before the refresh: a PATH that cannot be written fails at once.
            check_target(spec)
        except TargetError as exc:
            raise CliError(str(exc)) from None
    try:
        _export(spec, filters, db_url, analytics_dir, no_refresh)
    except KeyboardInterrupt:  # before the export began (refreshing the copy)
        raise CliError("interrupted", EXIT_INTERRUPTED) from None


def _export(
    spec: ExportSpec, filters: Filters, db_url: str, analytics_dir: Path | None, no_refresh: bool
) -> None:
    """Run the export and print its summary; errors become ``Error:`` lines."""
    output = spec.output
    copy = open_copy(db_url, analytics_dir, not no_refresh)
    manifest = copy.manifest()
    session = Session(copy, memory_limit=EXPORT_MEMORY_LIMIT)
    progress = _Progress("Exporting") if output != "-" and sys.stderr.isatty() else None
    try:
        with ctrl_c_stops(session.conn) as stop:
            result = session.run(
                lambda conn: run_export(
                    conn, spec, filters, manifest.watermark if manifest else 0, progress, stop
                )
            )
    except ExportInterrupted as exc:
        raise CliError(str(exc), EXIT_INTERRUPTED) from None
    except OutputClosed:
        # `export -o - | head`: the reader has what it wanted.
        _discard_stdout()
        return
    except ExportError as exc:
        raise CliError(str(exc)) from None
    except QueryError as exc:
        raise CliError(f"export failed: {exc}") from None
    finally:
        session.close()
        if progress is not None:
            progress.done()
    if output != "-":
        where = result.files[0]["path"] if len(result.files) == 1 else f"{len(result.files)} files"
        click.echo(
            f"Exported {result.rows} events to {output}"
            + (f" ({where})" if spec.partition_by else "")
            + f"; manifest {result.manifest}",
            err=True,
        )


def _discard_stdout() -> None:
    """Point standard output at /dev/null: the closing flush finds no broken pipe."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (tests run the CLI in-process)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


@click.command("verify-export")
@click.argument("path", type=click.Path(path_type=Path))
def verify_export_command(path: Path) -> None:
    """Check an export against its manifest: every file's SHA-256 and row count.

    The manifest must be well formed and list exactly the files at PATH. Exits 0
    when everything matches, 1 with the first difference otherwise.

    \b
    Example:
      grantex-archive verify-export revocations-q1.csv
    """
    try:
        record = verify_export(path)
    except VerifyError as exc:
        raise CliError(f"verification failed: {exc}") from None
    click.echo(
        f"OK: {path} holds {record['rows']} rows in {len(record['files'])} "
        f"file{'s' if len(record['files']) != 1 else ''}, as its manifest says"
    )


COMMANDS = (
    report,
    sql_command,
    status,
    refresh_command,
    export_command,
    verify_export_command,
    demo,
)
