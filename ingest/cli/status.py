"""``grantex-archive status`` and ``refresh``: what the archive holds, and its analytics copy."""

from __future__ import annotations

from pathlib import Path

import click

from queries import api
from queries.copy import AnalyticsCopy
from queries.render import render

from .copies import note_wait, query_errors, refresh_copy
from .copy_options import copy_location_options, copy_options, output_options
from .errors import EXIT_STALE, CliError, reported
from .options import check_db_url
from .progress import progress_for


@click.command()
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MINUTES",
    help="Exit 1 when the newest successful ingest finished longer ago than this.",
)
@click.option(
    "--digest-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Also show the newest digest file here and the files written per day.",
)
@output_options
@copy_options
def status(
    max_age: float | None,
    digest_dir: Path | None,
    fmt: str | None,
    output: str | None,
    db_url: str,
    analytics_dir: Path | None,
    no_refresh: bool,
) -> None:
    """Show what the archive holds, how its ingest runs went, and the copy's freshness.

    Rows are (section, name, value). Section coverage gives the time in the
    last 24 hours and 30 days no connection covered (uncovered_seconds_24h,
    gaps_24h, ..., per source as SOURCE.NAME when there are several; `report
    ingest-coverage` lists the gaps). Section last_reconcile is the newest
    `reconcile` run; open_findings counts per kind the findings of each
    source's newest completed run (`report reconciliation` lists every run).
    Section chain is the hash chain's newest link (`verify-archive` checks
    it) and the rows written before the chain that await `seal`; with
    --digest-dir also the newest digest file there (newest_digest_file, its
    time, the link it names, links_after_newest_digest: links written since)
    and, in section digest_files, the files written on each of the last 7
    UTC days (hourly while a command runs: up to 24 a day). Without
    --digest-dir, digest_files_checked is false.
    With --max-age, exits 1 when no ingest run finished successfully (exit
    code 0) within that many minutes: a check for a cron-driven worker.

    \b
    Example:
      grantex-archive status
      grantex-archive status --max-age 90 --format json || alert "archive is stale"
      grantex-archive status --digest-dir /mnt/worm/digests --format json
    """
    check_db_url(db_url)
    progress = progress_for("Refreshing the analytics copy", not no_refresh)
    try:
        with query_errors(), reported():
            result = api.status(
                db_url, analytics_dir, not no_refresh, progress, digest_dir=digest_dir
            )
    finally:
        if progress is not None:
            progress.done()
    if result.refreshed is not None:
        note_wait(result.refreshed)
    render(["section", "name", "value"], result.rows, fmt, output)
    if max_age is not None:
        age = result.age_minutes
        if age is None:
            raise CliError("no successful ingest run is recorded", EXIT_STALE)
        if age > max_age:
            raise CliError(
                f"the newest successful ingest finished {age:.0f} minutes ago "
                f"(--max-age {max_age:g})",
                EXIT_STALE,
            )


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
    check_db_url(db_url)
    copy = AnalyticsCopy(db_url, analytics_dir)
    result = refresh_copy(copy, full=full)
    what = "rebuilt" if result.rebuilt else "refreshed"
    click.echo(
        f"{what} {copy.directory}: {result.new_rows} new events"
        + (f", {result.rescued_rows} re-scanned" if result.rescued_rows else "")
        + f", {result.manifest.events} in all, in {result.seconds:.2f} s"
    )
