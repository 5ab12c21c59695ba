"""``grantex-archive export`` and ``verify-export``: audit files with a manifest to prove them."""

from __future__ import annotations

from pathlib import Path

import click

from queries import api
from queries.export import (
    DEFAULT_COLUMNS,
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
    check_combination,
    check_suffix,
    check_target,
    format_for,
    verify_export,
)
from queries.export.rederive import verify_against_archive
from queries.session import QueryError

from .copies import open_copy
from .copy_options import copy_options
from .errors import EXIT_INTERRUPTED, CliError, reported
from .options import check_db_url, check_window, parse_time
from .progress import progress_for
from .unix import silence_stdout


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
    the filters, the row count, each file's SHA-256, the archive's watermark
    and chain head, and which archive rows were read; `grantex-archive
    verify-export PATH` checks the files, and with --archive URL re-derives
    them from the archive. The file appears under
    PATH only once complete; Ctrl-C (exit 130) leaves nothing.

    \b
    Example:
      grantex-archive export -o revocations-q1.csv --type grant.revoked \\
          --agent-id ag_123 --since 2026-01-01 --until 2026-04-01
      grantex-archive export -o lake.parquet --partition-by day
    """
    spec = _spec(output, fmt, gz, columns, partition_by, force, safe_formulas)
    filters = Filters(
        types=types,
        since=parse_time(since, "--since"),
        until=parse_time(until, "--until"),
        source=source,
        grant_id=grant_id,
        agent_id=agent_id,
        principal_id=principal_id,
    )
    check_window(filters.since, filters.until)
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


def _spec(
    output: str,
    fmt: str | None,
    gz: bool,
    columns: str | None,
    partition_by: str | None,
    force: bool,
    safe_formulas: bool,
) -> ExportSpec:
    """The export the options ask for; options that do not go together are usage errors."""
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
    try:
        check_combination(spec)
        check_suffix(output, fmt, spec.fmt, spec.gzip)
    except SuffixError as exc:
        raise click.UsageError(str(exc)) from None
    return spec


def _export(
    spec: ExportSpec, filters: Filters, db_url: str, analytics_dir: Path | None, no_refresh: bool
) -> None:
    """Run the export and print its summary; errors become ``Error:`` lines."""
    output = spec.output
    copy = open_copy(db_url, analytics_dir, not no_refresh)
    progress = progress_for("Exporting", output != "-")
    try:
        result = api.export_archive(spec, filters, db_url, copy=copy, progress=progress)
    except ExportInterrupted as exc:
        raise CliError(str(exc), EXIT_INTERRUPTED) from None
    except OutputClosed:
        # `export -o - | head`: the reader has what it wanted.
        silence_stdout()
        return
    except ExportError as exc:
        raise CliError(str(exc)) from None
    except QueryError as exc:
        raise CliError(f"export failed: {exc}") from None
    finally:
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


@click.command("verify-export")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--archive",
    "archive_url",
    metavar="URL",
    help="Also re-derive the export from the archive it came from: the archive's hash chain "
    "must verify and still hold the manifest's chain head, and the same export made again "
    "from exactly the rows the export read must give the same files.",
)
def verify_export_command(path: Path, archive_url: str | None) -> None:
    """Check an export against its manifest, and with --archive against the archive.

    The manifest must be well formed and list exactly the files at PATH, and
    every file's SHA-256 and row count must match it. With --archive, the
    archive's hash chain must verify and still hold the head recorded in the
    manifest, and the export is re-derived: made again, in a private temporary
    directory, from the archive's rows that the export read (those sealed up
    to that head, not rows committed later), with the manifest's format,
    columns and filters; each file must come out with the same SHA-256 and
    row count. A manifest written before exports recorded their row bound
    cannot be re-derived: --archive then fails saying so. Exits 0 when everything
    matches, 1 naming what differs otherwise.

    \b
    Example:
      grantex-archive verify-export revocations-q1.csv --archive sqlite:///archive.db
    """
    if archive_url is not None:
        check_db_url(archive_url)
    try:
        record = verify_export(path)
        with reported():
            link = verify_against_archive(record, archive_url) if archive_url else None
    except VerifyError as exc:
        raise CliError(f"verification failed: {exc}") from None
    files = len(record["files"])
    derived = (
        ""
        if link is None
        else f"; the archive verifies and still holds link {link}, and the rows re-derived "
        "from it match"
    )
    click.echo(
        f"OK: {path} holds {record['rows']} rows in {files} file{'s' if files != 1 else ''}, "
        f"as its manifest says{derived}"
    )
    if link is None and "bound" not in record:
        click.echo(
            "Note: its manifest records no row bound, so its rows cannot be re-derived "
            "from the archive (--archive)",
            err=True,
        )
