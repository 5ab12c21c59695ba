"""``grantex-archive demo``: a simulator, an ingest until idle, then the headline reports."""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

import click

from queries.api import prepare_report
from queries.copy import AnalyticsCopy
from queries.reports import get_report

from ..logs import setup_logging
from ..runner import run_ingest
from ..settings import IngestSettings, Secret
from ..store import safe_url, sqlite_path
from .copies import emit, refresh_copy
from .demo_gap import run_gap_demo
from .errors import EXIT_CODES, CliError, reported
from .options import check_db_url

HEADLINES: tuple[tuple[str, int | None], ...] = (
    ("event-volume", None),
    ("revocations-by-actor", None),
    ("budget-exhaustion-rate", None),
    ("token-issuance", 5),
    ("grant-lifetime", None),
    ("top-agents", 5),
)
"""The reports the demo shows, with a row limit where one is wanted."""


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
@click.option(
    "--gap/--no-gap",
    default=True,
    show_default=True,
    help="Then show a gap in a live stream being closed by the receiver and reconcile.",
)
def demo(db_url: str, backlog: int, seed: int, gap: bool) -> None:
    """Run everything locally: a simulator, ingest until idle, then the headline reports.

    A fresh demo archive is filled from a local simulator with a realistic mix
    of events (thousands of grants), then the reports show what it holds.
    Then (unless --no-gap) a simulator that behaves as the live service (no
    replay) streams to an ingest worker that is killed and restarted, sends
    its webhooks to `receive`, and is read back by `reconcile`: the reports
    show the gap and what closed it (about 30 s).

    \b
    Example:
      grantex-archive demo --events 100000
    """
    # The simulator (an HTTP server) loads only for the commands that serve events.
    from ..simulator import Simulator, SimulatorConfig

    check_db_url(db_url)
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
        with reported():
            result = run_ingest(settings, EXIT_CODES)
    if EXIT_CODES[result.outcome] != 0:
        raise CliError(result.error or result.outcome, EXIT_CODES[result.outcome])
    copy = AnalyticsCopy(db_url)
    refreshed = refresh_copy(copy, full=True)
    click.echo(
        f"\nArchived {refreshed.manifest.events} events in {safe_url(db_url)} "
        f"({result.counts.rejected} frames rejected); analytics copy in {copy.directory}"
    )
    fmt = "table" if sys.stdout.isatty() else "csv"
    for name, limit in HEADLINES:
        sql, params = prepare_report(name, limit=limit)
        click.echo(f"\n== grantex-archive report {name}: {get_report(name).summary}")
        emit(copy, sql, params, fmt, None)
    if gap:
        run_gap_demo(db_url, seed, fmt)
    click.echo(
        f"\nThe demo archive is {safe_url(db_url)}; try:\n"
        f"  grantex-archive report --list --db {db_url}\n"
        f'  grantex-archive sql "SELECT * FROM grants LIMIT 5" --db {db_url}'
    )
