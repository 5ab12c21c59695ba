"""``grantex-archive reconcile``: what the service knows that the archive does not."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..logs import setup_logging
from ..reconcile import (
    ReconcileError,
    ReconcileSettings,
    ServiceAuthError,
    ServiceUnavailable,
    run_reconcile,
)
from ..settings import check_base_url, load_api_key
from .errors import EXIT_AUTH, EXIT_FAILED, EXIT_UNAVAILABLE, CliError, reported
from .options import check_db_url, db_option, service_options, source_option

_SERVICE_EXITS: tuple[tuple[type[ReconcileError], int], ...] = (
    (ServiceAuthError, EXIT_AUTH),
    (ServiceUnavailable, EXIT_UNAVAILABLE),
    (ReconcileError, EXIT_FAILED),
)


@click.command()
@db_option
@service_options
@source_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for each answer of the service.",
)
def reconcile(
    db_url: str, api_key_file: Path | None, base_url: str, source: str, timeout: float
) -> None:
    """Compare the service's own state with the archive and record what the archive lacks.

    Reads the service's grants (compliance export), consent bundles, DPDP
    consent records, budget allocations and webhook deliveries, honouring
    429 and Retry-After, and records the run and its findings in the
    archive: grants never seen created, revocations, bundle revocations and
    DPDP withdrawals not seen, allocations at least half spent without
    budget events, and delivered event ids the archive lacks. Findings are
    observations (endpoint and time), never events. Prints the findings per
    kind; `report reconciliation` and `status` show them later.

    \b
    Exit codes: 0 done (findings or not), 1 the service's answer was unusable,
    2 usage or configuration error, 3 credentials rejected, 4 database
    unusable, 69 service unreachable or rate limit never lifted, 75 another
    reconcile of this archive and source is running.

    \b
    Example (cron, after ingest):
      grantex-archive ingest --until-idle 60 && grantex-archive reconcile
    """
    check_db_url(db_url)
    with reported():
        api_key = load_api_key(api_key_file)
        settings = ReconcileSettings(
            db_url=db_url,
            base_url=check_base_url(base_url),
            api_key=api_key,
            source=source,
            timeout=timeout,
        )
    setup_logging("text", logging.WARNING, secrets=(api_key.reveal(),))
    try:
        with reported():
            result = run_reconcile(settings)
    except ReconcileError as exc:
        code = next(code for kind, code in _SERVICE_EXITS if isinstance(exc, kind))
        raise CliError(str(exc), code) from None
    limited = (
        f" ({result.rate_limited} rate-limited, {result.waited:.1f} s waited)"
        if result.rate_limited
        else ""
    )
    click.echo(
        f"reconcile run {result.run_id}: {result.observed} service records read "
        f"in {result.requests} requests{limited}, {len(result.findings)} findings"
    )
    for kind, count in result.counts().items():
        click.echo(f"  {kind}: {count}")
