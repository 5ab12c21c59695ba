"""``grantex-archive report`` and ``sql``: named reports and ad-hoc SQL over the analytics views."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from queries import api
from queries.api import check_query, prepare_report, rows_of
from queries.render import render
from queries.reports import BY_VALUES, ReportError, get_report, load_reports
from queries.session import bare_statement

from ..timestamps import now_utc
from .copies import emit, open_copy, query_errors
from .copy_options import copy_options, output_options
from .errors import EXIT_INTERRUPTED, CliError
from .options import check_window, parse_time


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
    type=click.Choice(BY_VALUES),
    help="Group by calendar period (UTC), agent or revocation path, where the report allows.",
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
    UTC timestamps; a bare date means its midnight UTC. When the window holds
    time no connection covered (events the live service sent then are lost),
    a warning on stderr says how much, and JSON records carry it as
    "uncovered": {"gaps": N, "seconds": S}; `report ingest-coverage` lists the gaps.

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
    start = parse_time(since, "--since")
    end = parse_time(until, "--until")
    check_window(start, end)
    now = now_utc()
    try:
        sql, params = prepare_report(chosen.name, start, end, source, agent, by, limit, now)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from None
    copy = open_copy(db_url, analytics_dir, not no_refresh)
    with query_errors():
        uncovered = api.report_coverage(copy, chosen.name, start, end, source, now)
        api.emit(copy, sql, params, fmt, output, uncovered.json_fields)
    if uncovered.warning is not None:
        click.echo(f"warning: {uncovered.warning}", err=True)


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

    The views are events, grants, revocations, tokens, rejected_events,
    ingest_runs and ingest_connections (columns in docs/analytics.md);
    QUERY '-' reads standard input. Only SELECT (and EXPLAIN) runs: the
    archive cannot be changed from here.

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
        with query_errors():
            explain = check_query(copy, text)
            # The statement runs inside the query DuckDB is given.
            text = bare_statement(text)
            if explain:
                with rows_of(copy, text, bound) as (columns, rows):
                    render(columns, rows, fmt, output)
            else:
                emit(copy, text, bound, fmt, output)
    except KeyboardInterrupt:  # QueryInterrupted too: Ctrl-C during the query
        where = f"; nothing was written to {output}" if output not in (None, "-") else ""
        raise CliError(f"interrupted{where}", EXIT_INTERRUPTED) from None
